"""The bundle: BentoML models made from materialized artifacts, and the Bento built over them.

Four models, each a folder copied into the BentoML model store under a fixed name:
`stratmaster-router` (a router artifact), `stratmaster-registry` (the current utility fit: rows as CSV plus
the fit record), `stratmaster-index` (keyword, dense and graph indexes plus the chunk store, when they are
the embedded engines) and `stratmaster-catalog` (the model catalog YAML). Their labels name the asset
versions they came from. The Bento is built by the `bentoml build` CLI in a subprocess so its BENTOML_HOME
is exactly the one given, whatever this process has loaded before.

The Dagster assets call this module as a command (DESIGN: nothing imports `serving`), with the settings as
SM_* variables; each command prints one JSON object on its last stdout line:

    python -m serving.bundle models [--labels '{"router": {...}, "registry": {...}, "index": {...}}']
    python -m serving.bundle build --models '{"router": TAG, ...}' [--labels '{...}']
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

import bentoml
import yaml
from bentoml._internal.models import ModelStore

from pipelines.corpus.ingest import MANIFEST
from pipelines.index.build import building
from pipelines.settings import REPO_ROOT, Settings
from serving.artifacts import MODEL_NAMES, TAG_ENV

BENTOFILE = REPO_ROOT / "bentofile.yaml"


def model_store(home: Path) -> ModelStore:
    (home / "models").mkdir(parents=True, exist_ok=True)
    return ModelStore(str(home / "models"))


def _label(v: Any) -> str:
    return str(v)  # BentoML labels are strings


def create_model(
    kind: str,
    fill: Any,
    home: Path,
    labels: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> str:
    """Create model `MODEL_NAMES[kind]` in `home`'s store; `fill(path)` writes its files. Returns the tag."""
    with bentoml.models.create(
        MODEL_NAMES[kind],
        labels={"kind": kind, **{k: _label(v) for k, v in (labels or {}).items()}},
        metadata=metadata or {},
        _model_store=model_store(home),
    ) as m:
        fill(Path(m.path))
    return str(m.tag)


def _copy_tree(src: Path, dst: Path, *skip: str) -> None:
    ignore = shutil.ignore_patterns(".lock", "*.tmp", *skip)
    shutil.copytree(src.resolve(), dst, dirs_exist_ok=True, ignore=ignore)


def _copy_corpus(store_dir: Path, dst: Path, tries: int = 5) -> None:
    """The store's manifest and the chunk files it names, nothing else (the utility posteriors and the name
    key stay home). An ingest that commits meanwhile sweeps the chunk files of the manifest read: the copy
    starts again from the new one (a copy of the whole folder failed on a swept file, or mixed commits)."""
    for attempt in range(tries):
        try:
            manifest = (store_dir / MANIFEST).read_bytes()
        except FileNotFoundError:
            raise LookupError(f"no corpus in {store_dir}: materialize the corpus asset first") from None
        files = json.loads(manifest).get("files", {}).values()
        keys = sorted({f["chunk_key"] for f in files if f.get("chunk_key") and not f.get("skipped")})
        shutil.rmtree(dst / PurePosixPath(MANIFEST).parent, ignore_errors=True)
        try:
            for key in keys:
                (dst / key).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(store_dir / key, dst / key)
        except FileNotFoundError:
            if attempt == tries - 1:
                raise
            continue
        (dst / MANIFEST).parent.mkdir(parents=True, exist_ok=True)
        (dst / MANIFEST).write_bytes(manifest)
        return


# -- the four snapshots ------------------------------------------------------------------------------------
def snapshot_router(router_dir: Path, home: Path, labels: dict[str, Any] | None = None) -> str:
    from router_models.router.artifact import load_router, read_manifest

    router_dir = Path(router_dir).resolve()
    load_router(router_dir)  # refuse a broken artifact here rather than in the service
    manifest = read_manifest(router_dir)
    meta = {k: manifest.get(k) for k in ("created_at", "predictor", "models", "embedder", "strongest")}
    return create_model(
        "router",
        lambda p: _copy_tree(router_dir, p),
        home,
        {"artifact": router_dir.name, **(labels or {})},
        meta,
    )


def snapshot_registry(settings: Settings, home: Path, labels: dict[str, Any] | None = None) -> str:
    """The registry's current fit as `registry.csv` and `fit.json` (a consistent read of one fit)."""
    from router_models.utility.registry import list_fits, read_current, registry_engine

    engine = registry_engine(settings.registry_sqlalchemy_url)
    try:
        rows = read_current(engine)  # one statement: the rows of one fit, which names itself
        fits = list_fits(engine)  # every fit ever registered, the current one's among them
    finally:
        engine.dispose()
    if rows.empty:
        raise LookupError("the model registry has no current fit: materialize utility_posterior first")
    fit_id = str(rows["fit_id"].iloc[0])
    fit = fits[fits.fit_id == fit_id].iloc[0].to_dict()
    fit = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in fit.items()}

    def fill(p: Path) -> None:
        rows.to_csv(p / "registry.csv", index=False)
        (p / "fit.json").write_text(json.dumps(fit, indent=1, default=str))

    meta = {"fit_id": fit_id, "rows": len(rows), "data_version": fit["data_version"]}
    return create_model("registry", fill, home, {"fit_id": fit_id, **(labels or {})}, meta)


def snapshot_index(settings: Settings, home: Path, labels: dict[str, Any] | None = None) -> str:
    """`index/` (keyword, qdrant, graph) and `store/` (chunks, manifest) copied from run_dir.

    With scale engines the data lives in the engines; the model then records only which engines to use.
    """
    from pipelines.index.embeddings import LazyEmbedder
    from pipelines.index.finetune import read_manifest

    index_dir, store_dir = settings.run_dir / "index", settings.run_dir / "store"
    embedded = settings.embedded_engines
    tuned = read_manifest(settings.embedder)  # None unless the embedder is a fine-tuned model's folder
    if embedded and not (index_dir / "keyword").is_dir():
        raise LookupError(f"no keyword index in {index_dir}: materialize the index assets first")
    engines = {
        "object_store": settings.object_store,
        "keyword_backend": settings.keyword_backend,
        "vector_backend": settings.vector_backend,
        "graph_backend": settings.graph_backend,
        "embedder": LazyEmbedder(settings.embedder).name if tuned else settings.embedder,  # as it runs
    }

    def fill(p: Path) -> None:
        if embedded:
            for part in ("keyword", "qdrant", "graph"):
                with building(index_dir, part):  # no build of it half-way: a copy failed on files it removed
                    if (index_dir / part).is_dir():
                        _copy_tree(index_dir / part, p / "index" / part)
            # the chunks alone (the store also holds the utility posteriors, one NetCDF per refit: 16 of a
            # 27 MB model); the store's secret stays home
            _copy_corpus(store_dir, p / "store")
        shipped = dict(engines)
        if tuned:  # a fine-tuned embedder travels with the index; the service resolves it in the model
            _copy_tree(Path(settings.embedder), p / "embedder")
            shipped["embedder"] = "embedder"
        (p / "engines.json").write_text(json.dumps({**shipped, "embedded": embedded}, indent=1))

    return create_model("index", fill, home, {"embedded": str(embedded).lower(), **(labels or {})}, engines)


def snapshot_catalog(settings: Settings, home: Path, labels: dict[str, Any] | None = None) -> str:
    from pipelines.llm.catalog import load_catalog

    if settings.catalog_path is not None:
        text = Path(settings.catalog_path).read_text()
    else:
        text = resources.files("pipelines.llm").joinpath("catalog.yaml").read_text()
    names = load_catalog(settings).names()  # validates the file before it is shipped

    def fill(p: Path) -> None:
        (p / "catalog.yaml").write_text(text)

    return create_model("catalog", fill, home, labels, {"models": names})


# -- the Bento ------------------------------------------------------------------------------------------
@dataclass
class BentoInfo:
    tag: str
    path: Path
    size_bytes: int
    models: list[str]
    labels: dict[str, str] = field(default_factory=dict)


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def read_bento(home: Path, tag: str) -> BentoInfo:
    """A built Bento's tag, folder, size (its own files plus its models') and models, from bento.yaml."""
    name, _, version = tag.partition(":")
    path = home / "bentos" / name / version
    info = yaml.safe_load((path / "bento.yaml").read_text())
    entries = [*(info.get("models") or []), *(m for svc in info.get("services") or [] for m in svc["models"])]
    models = sorted({str(m["tag"]) for m in entries})
    size = _dir_size(path)
    for m in models:
        mname, _, mversion = m.partition(":")
        mpath = home / "models" / mname / mversion
        if mpath.is_dir():
            size += _dir_size(mpath)
    return BentoInfo(tag, path, size, models, {str(k): str(v) for k, v in (info.get("labels") or {}).items()})


def build_bento(
    home: Path,
    model_tags: dict[str, str],
    labels: dict[str, Any] | None = None,
    build_ctx: Path = REPO_ROOT,
    timeout_s: float = 600,
) -> BentoInfo:
    """`bentoml build` of `bentofile.yaml` with BENTOML_HOME=`home`, pinning the service to `model_tags`."""
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    env.update({TAG_ENV[kind]: tag for kind, tag in model_tags.items()})
    cmd = [str(Path(sys.executable).with_name("bentoml")), "build", "-f", str(BENTOFILE), "-o", "tag"]
    for k, v in {**{f"{kind}_model": t for kind, t in model_tags.items()}, **(labels or {})}.items():
        cmd += ["--label", f"{k}={_label(v)}"]
    proc = subprocess.run(
        [*cmd, str(build_ctx)], env=env, cwd=build_ctx, capture_output=True, text=True, timeout=timeout_s
    )
    found = re.search(r"__tag__:(\S+)", proc.stdout)
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout)[-2000:]
        raise RuntimeError(f"bentoml build failed (exit {proc.returncode}):\n{tail}")
    return read_bento(home, found.group(1))


# -- the command the assets run -----------------------------------------------------------------------
def snapshot_all(settings: Settings, home: Path, labels: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The four models from `settings.run_dir`'s current router, registry fit, indexes and catalog."""
    return {
        "router": snapshot_router(settings.run_dir / "router" / "current", home, labels.get("router")),
        "registry": snapshot_registry(settings, home, labels.get("registry")),
        "index": snapshot_index(settings, home, labels.get("index")),
        "catalog": snapshot_catalog(settings, home, labels.get("catalog")),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.bundle", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("models", help="snapshot the materialized artifacts into the BentoML model store")
    m.add_argument("--labels", default="{}", help="JSON: labels per model kind")
    b = sub.add_parser("build", help="build the Bento pinned to the given model tags")
    b.add_argument("--models", required=True, help="JSON: model tag per kind")
    b.add_argument("--labels", default="{}", help="JSON: labels of the Bento")
    args = p.parse_args(argv)
    settings = Settings()
    home = settings.bentoml_home
    try:
        if args.command == "models":
            out: dict[str, Any] = {
                "home": str(home),
                "tags": snapshot_all(settings, home, json.loads(args.labels)),
            }
        else:
            tags = json.loads(args.models)
            if sorted(tags) != sorted(MODEL_NAMES):
                raise LookupError(f"--models must name a tag for each of {sorted(MODEL_NAMES)}")
            info = build_bento(home, tags, json.loads(args.labels))
            out = {"home": str(home), "tag": info.tag, "path": str(info.path), "size_bytes": info.size_bytes,
                   "models": info.models}  # fmt: skip
    except (LookupError, OSError, RuntimeError, ValueError) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
