"""Where the service's artifacts come from: BentoML models by tag, or development directories.

Each kind (router, registry, index, catalog) is a BentoML model with a fixed name. Its tag is, first,
`SM_<KIND>_TAG` when set; else the exact version the Bento was built with when the service runs from a Bento;
else `<name>:latest`. Development overrides take precedence over models: `SM_ROUTER_DIR` (a router artifact
folder; the `to_asgi()` tests use it), `SM_INDEX_DIR` and `SM_CATALOG_PATH`. A kind with neither is absent:
no router means `model="router"` is refused, no index means the settings' run_dir indexes are used.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bentoml
from bentoml._internal.models import ModelStore
from bentoml.exceptions import NotFound

from pipelines.settings import Settings

log = logging.getLogger("stratmaster.serving")

MODEL_NAMES = {
    "router": "stratmaster-router",
    "registry": "stratmaster-registry",
    "index": "stratmaster-index",
    "catalog": "stratmaster-catalog",
}
TAG_ENV = {kind: f"SM_{kind.upper()}_TAG" for kind in MODEL_NAMES}


def default_tag(kind: str) -> str:
    return os.environ.get(TAG_ENV[kind]) or f"{MODEL_NAMES[kind]}:latest"


@dataclass
class Artifacts:
    router_dir: Path | None = None
    registry_dir: Path | None = None
    index_dir: Path | None = None
    store_dir: Path | None = None
    catalog_path: Path | None = None
    index_embedder: str | None = None  # the embedder the index snapshot was built with
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)


def pinned_tags(bento: Any) -> dict[str, str]:
    """kind -> exact model tag recorded in the Bento the service was loaded from (empty when not a Bento)."""
    if bento is None:
        return {}
    by_name = {v: k for k, v in MODEL_NAMES.items()}
    out = {}
    for m in bento.info.all_models:
        kind = by_name.get(m.tag.name)
        if kind:
            out[kind] = str(m.tag)
    return out


def _model(kind: str, pinned: dict[str, str]) -> Any | None:
    tag = os.environ.get(TAG_ENV[kind]) or pinned.get(kind) or f"{MODEL_NAMES[kind]}:latest"
    home = os.environ.get("BENTOML_HOME")
    try:
        if home:  # the store BENTOML_HOME names now, not the one BentoML configured at its first use
            models = Path(home) / "models"
            return bentoml.models.get(tag, _model_store=ModelStore(str(models))) if models.is_dir() else None
        return bentoml.models.get(tag)
    except NotFound:
        return None


def model_ref(kind: str) -> Any | None:
    """The service's `BentoModel` declaration for `kind` when that model is in the store, else None: `bentoml
    build` pins what the bundle made, and `bentoml serve` in development (no models yet) does not try to
    fetch a missing one from BentoCloud."""
    return bentoml.models.BentoModel(default_tag(kind)) if _model(kind, {}) is not None else None


def load_artifacts(settings: Settings, bento: Any = None) -> Artifacts:
    pinned = pinned_tags(bento)
    a = Artifacts()
    models = {kind: _model(kind, pinned) for kind in MODEL_NAMES}
    for kind, m in models.items():
        if m is not None:
            a.sources[kind] = {"tag": str(m.tag), "labels": dict(m.info.labels)}

    def override(kind: str, env: str, value: str | None) -> bool:
        if value:
            a.sources[kind] = {"dir": value, "env": env}
            log.info("%s from %s=%s (development override of the model tag)", kind, env, value)
        return bool(value)

    if not override("router", "SM_ROUTER_DIR", os.environ.get("SM_ROUTER_DIR")):
        a.router_dir = Path(models["router"].path) if models["router"] is not None else None
    else:
        a.router_dir = Path(os.environ["SM_ROUTER_DIR"])
    if models["registry"] is not None:
        a.registry_dir = Path(models["registry"].path)
    if override("index", "SM_INDEX_DIR", os.environ.get("SM_INDEX_DIR")):
        a.index_dir = Path(os.environ["SM_INDEX_DIR"])
    elif models["index"] is not None and (Path(models["index"].path) / "index").is_dir():
        a.index_dir = Path(models["index"].path) / "index"
        a.store_dir = Path(models["index"].path) / "store"
        engines = Path(models["index"].path) / "engines.json"
        if engines.exists():
            a.index_embedder = json.loads(engines.read_text()).get("embedder")
            if a.index_embedder and (Path(models["index"].path) / a.index_embedder).is_dir():
                a.index_embedder = str(Path(models["index"].path) / a.index_embedder)  # shipped in the model
    if override("catalog", "SM_CATALOG_PATH", str(settings.catalog_path) if settings.catalog_path else None):
        a.catalog_path = settings.catalog_path
    elif models["catalog"] is not None:
        a.catalog_path = Path(models["catalog"].path) / "catalog.yaml"
    return a


def worker_index_dir(index_dir: Path, workers: int) -> Path:
    """The index folder this worker serves from. Qdrant's local mode locks its folder to one client, so with
    several workers each one reads its own copy of `qdrant/` (read-only here), made in a temporary folder
    that links the other engines' shared files and goes when the worker exits. A Qdrant server needs none.
    """
    if workers <= 1 or not (index_dir / "qdrant").is_dir():
        return index_dir
    tmp = Path(tempfile.mkdtemp(prefix=f"sm-index-{os.getpid()}-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    for entry in index_dir.iterdir():
        if entry.name == "qdrant":
            shutil.copytree(entry, tmp / "qdrant")
        else:
            (tmp / entry.name).symlink_to(entry.resolve())
    return tmp
