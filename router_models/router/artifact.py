"""A trained router on disk: a directory with manifest.json, numpy arrays and the rules it was trained with.

No pickle: every fitted part is plain JSON plus .npz arrays, so an artifact can be inspected and loaded by
a newer version of the code. `FORMAT_VERSION` changes when the layout does; older layouts are refused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import zipfile
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipelines.files import publish_mode, swap_in
from router_models.router.features import CostModel, TaskClassifier
from router_models.router.policies import policy_from_dict
from router_models.router.predictors.base import PREDICTORS, get_predictor
from router_models.router.router import Router
from router_models.router.rules import ModelInfo, Rule

FORMAT = "stratmaster-router"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_MANIFEST_KEYS = ("files", "predictor", "predictor_params", "models", "strongest", "embedder", "task_classes",
                  "policy", "metadata")  # fmt: skip


class ArtifactError(ValueError):
    """The directory is not a router artifact this code can load."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_router(router: Router, out_dir: str | Path) -> Path:
    """Write the artifact into a temporary sibling, then swap it in: a reader never sees half a router."""
    out_dir = Path(out_dir)
    check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    publish_mode(tmp)
    try:
        params, arrays = router.predictor.get_state()
        np.savez_compressed(tmp / "predictor.npz", allow_pickle=False, **arrays)
        np.savez_compressed(tmp / "task_classifier.npz", allow_pickle=False, **router.task_clf.arrays())
        np.savez_compressed(
            tmp / "cost_model.npz", coef=router.cost_model.coef, floor=router.cost_model.floor
        )
        rules = [{k: v for k, v in asdict(r).items() if v or k != "when"} for r in router.rules]
        (tmp / "rules.yaml").write_text(yaml.safe_dump({"version": 1, "rules": rules}, sort_keys=False))
        files = ["predictor.npz", "task_classifier.npz", "cost_model.npz", "rules.yaml"]
        if router.reference:
            np.savez_compressed(tmp / "reference.npz", allow_pickle=False, **router.reference)
            files.append("reference.npz")
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "predictor": router.predictor.name,
            "predictor_params": params,
            "models": router.models,
            "strongest": router.strongest,
            "embedder": router.embedder,
            "task_classes": router.task_clf.classes,
            "policy": router.policy.to_dict(),
            "metadata": {m: asdict(i) for m, i in router.metadata.items()},
            "training": router.info,
            "files": {f: _sha256(tmp / f) for f in files},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=float))
        swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def check_replaceable(out_dir: Path) -> None:
    """An ArtifactError unless `out_dir` is free for a router: missing, empty, or a router (of any format
    version); any other folder with a manifest.json was deleted."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        try:
            read_manifest(out_dir, any_version=True)
        except ArtifactError as e:
            raise ArtifactError(f"refusing to overwrite {out_dir}: {e}") from None


def read_manifest(path: str | Path, any_version: bool = False) -> dict[str, Any]:
    """The manifest of a router artifact this code can load (of any format version where `any_version`),
    else an ArtifactError."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as e:  # no file, not UTF-8, not JSON
        raise ArtifactError(f"{path} is not a router artifact (no readable {MANIFEST}): {e}") from e
    if not isinstance(manifest, dict):
        raise ArtifactError(
            f"{path} is not a router artifact: its {MANIFEST} is a JSON {type(manifest).__name__}"
        )
    if manifest.get("format") != FORMAT:
        found = manifest.get("format")
        raise ArtifactError(
            f"{path} is not a router artifact: its {MANIFEST} has format {found!r}, not {FORMAT!r}"
        )
    if any_version:
        return manifest
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: artifact format version {manifest.get('format_version')} cannot be loaded by this code "
            f"(version {FORMAT_VERSION}); retrain with `stratmaster router train`"
        )
    lacking = [k for k in _MANIFEST_KEYS if k not in manifest]
    if lacking or not isinstance(manifest["files"], dict):
        why = f"no {lacking}" if lacking else "'files' is not an object"
        raise ArtifactError(
            f"{path}: its {MANIFEST} is damaged ({why}); retrain with `stratmaster router train`"
        )
    return manifest


REQUIRED_FILES = ("predictor.npz", "task_classifier.npz", "cost_model.npz", "rules.yaml")


def load_router(path: str | Path) -> Router:
    path = Path(path)
    manifest = read_manifest(path)
    try:
        return _load_checked(path, manifest)
    except (KeyError, TypeError, AttributeError, zipfile.BadZipFile) as e:  # ArtifactErrors pass through
        # the manifest has no checksum of its own: a hand edit reached a constructor as a traceback
        raise ArtifactError(
            f"{path}: its {MANIFEST} does not describe a router this code can load "
            f"({type(e).__name__}: {e}); undo the edit or retrain"
        ) from None


def _load_checked(path: Path, manifest: dict[str, Any]) -> Router:
    unlisted = [f for f in REQUIRED_FILES if f not in manifest["files"]]
    if unlisted:  # read below by name: a file the manifest does not list was loaded unchecked
        raise ArtifactError(f"{path}: its {MANIFEST} lists no checksum for {', '.join(unlisted)}; retrain")
    for name, digest in manifest["files"].items():
        if not (path / name).exists() or _sha256(path / name) != digest:
            raise ArtifactError(f"{path / name} is missing or differs from the manifest's checksum")
    get_predictor("global_mean")  # make sure the registry is populated
    if manifest["predictor"] not in PREDICTORS:
        raise ArtifactError(f"{path}: unknown predictor {manifest['predictor']!r}")
    with np.load(path / "predictor.npz") as z:
        arrays = {k: z[k] for k in z.files}
    predictor = PREDICTORS[manifest["predictor"]].from_state(manifest["predictor_params"], arrays)
    with np.load(path / "task_classifier.npz") as z:
        task_clf = TaskClassifier(manifest["task_classes"], z["coef"], z["intercept"])
    with np.load(path / "cost_model.npz") as z:
        cost_model = CostModel(z["coef"], z["floor"])
    if cost_model.coef.shape[0] != 1 + len(manifest["task_classes"]):
        raise ArtifactError(f"{path}: the cost model predates this code's layout; retrain the router")
    if list(predictor.models) != list(manifest["models"]) or cost_model.coef.shape[1] != len(
        predictor.models
    ):
        # out of step, it loaded and then failed in route(): a 500 in the service
        raise ArtifactError(f"{path}: its {MANIFEST}'s models are not the predictor's and cost model's")
    rules = [Rule(**r) for r in yaml.safe_load((path / "rules.yaml").read_text())["rules"]]
    reference = {}
    if "reference.npz" in manifest["files"]:
        with np.load(path / "reference.npz") as z:
            reference = {k: z[k] for k in z.files}
    metadata = {m: ModelInfo(**v) for m, v in manifest["metadata"].items()}
    return Router(
        models=manifest["models"],
        predictor=predictor,
        task_clf=task_clf,
        cost_model=cost_model,
        embedder=manifest["embedder"],
        metadata=metadata,
        rules=rules,
        policy=policy_from_dict(manifest["policy"]),
        strongest=manifest["strongest"],
        info=manifest.get("training", {}),
        reference=reference,
    )
