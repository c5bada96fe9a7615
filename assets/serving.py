"""The bundle: BentoML models from the materialized router, registry, indexes and catalog, then the Bento.

Models and Bentos live in `BENTOML_HOME` (default `run_dir/bentoml`); `make serve` serves the latest Bento.
The work is `python -m serving.bundle` in a subprocess: nothing imports `serving` (DESIGN.md), and BentoML's
process-wide state (its model store, its config) never leaks into the Dagster process.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from assets.resources import SettingsResource
from pipelines.memo import fingerprint, recall, remember, source_digest
from pipelines.settings import REPO_ROOT, Settings

MODEL_KINDS = ("router", "registry", "index", "catalog")
ROUTER, REGISTRY = dg.AssetKey("router"), dg.AssetKey("model_registry")
INDEX = [dg.AssetKey(k) for k in ("corpus_chunks", "keyword_index", "dense_index", "knowledge_graph")]


def asset_versions(instance: dg.DagsterInstance, keys: list[dg.AssetKey]) -> dict[str, str]:
    """`<asset>_version` (data version) and `<asset>_run` (run id) of each key's latest materialization."""
    out = {}
    for key in keys:
        event = instance.get_latest_materialization_event(key)
        name = key.to_user_string().replace("/", "_")
        if event is None or event.asset_materialization is None:
            out[f"{name}_version"] = "unmaterialized"
            continue
        tags = event.asset_materialization.tags or {}
        out[f"{name}_version"] = str(tags.get("dagster/data_version", "unknown"))[:16]
        out[f"{name}_run"] = event.run_id[:8]
    return out


def run_bundle(settings: Settings, *args: str, timeout_s: float = 900) -> dict:
    """`python -m serving.bundle ARGS` with `settings` as SM_* variables; its JSON answer, or a Failure."""
    env = {**os.environ, **settings.as_env()}
    cmd = [sys.executable, "-m", "serving.bundle", *args]
    proc = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise dg.Failure(f"serving.bundle {args[0]} failed (exit {proc.returncode}): {tail}")
    return json.loads(lines[-1])


@dg.asset(
    group_name="serving",
    deps=[ROUTER, REGISTRY, *INDEX],
    kinds={"bentoml"},
)
def bento_models(context: dg.AssetExecutionContext, settings: SettingsResource) -> dg.MaterializeResult:
    """BentoML models stratmaster-router, -registry, -index and -catalog, copied from the materialized assets;
    each model's labels name the asset versions (Dagster data version and run) it was made from."""
    s = settings.get()
    inst = context.instance
    labels = {
        "router": asset_versions(inst, [ROUTER]),
        "registry": asset_versions(inst, [REGISTRY]),
        "index": asset_versions(inst, INDEX),
    }
    fp = _models_fingerprint(s)
    record = s.run_dir / "bundle" / "models.json"
    out = recall(record, fp) if fp else None
    reused = out is not None and all(_stored(out["home"], tag) for tag in out["tags"].values())
    if not reused:
        out = run_bundle(s, "models", "--labels", json.dumps(labels))
        if fp:
            remember(record, fp, **out)
    assert out is not None
    tags = out["tags"]
    context.log.info(f"models in {out['home']}{' (unchanged, reused)' if reused else ''}: {tags}")
    return dg.MaterializeResult(
        metadata={
            **{f"{kind}_tag": tag for kind, tag in tags.items()},
            "bentoml_home": out["home"],
            "reused": reused,
        },
        data_version=dg.DataVersion(fp[:16]) if fp else None,
    )


def _stored(home: str, tag: str) -> bool:
    name, _, version = tag.partition(":")
    return (Path(home) / "models" / name / version).is_dir() or (
        Path(home) / "bentos" / name / version
    ).is_dir()


# the settings the four models are made from (serving/bundle.py); the rest (the bench, the router's lambdas,
# tracing, the service's workers) is read by the service when it runs, not shipped in a model
BUNDLE_SETTINGS = ("run_dir", "object_store", "keyword_backend", "vector_backend", "graph_backend",
                   "embedder", "catalog_path", "registry_url", "opensearch_index", "qdrant_collection",
                   "nebula_space")  # fmt: skip


def _models_fingerprint(s: Settings) -> str | None:
    """What the four models are made of: the router artifact, the registry's current fit, the chunks (by
    the ingest manifest's content hashes: the embedded indexes follow from the chunks, the settings and the
    code, and their files change when an engine merely opens them), the catalog, the settings and the code.
    None with scale engines, whose content lives in the engines: the snapshot then only names them.
    (Not the labels: unchanged content keeps the models, whose labels name the runs that made it.)"""
    from pipelines.index.embeddings import LazyEmbedder
    from router_models.utility.registry import current_fit_id, registry_engine

    if not s.embedded_engines:
        return None
    engine = registry_engine(s.registry_sqlalchemy_url)
    try:
        fit_id = current_fit_id(engine)
    finally:
        engine.dispose()
    catalog = s.catalog_path or REPO_ROOT / "pipelines" / "llm" / "catalog.yaml"
    code = source_digest(*(REPO_ROOT / d for d in ("serving", "pipelines/index", "pipelines/corpus")))
    chunks = s.run_dir / "store" / "corpus" / "manifest.json"
    return fingerprint(
        (s.run_dir / "router" / "current").resolve(), fit_id, chunks, Path(catalog),
        s.model_dump(mode="json", include=set(BUNDLE_SETTINGS)), LazyEmbedder(s.embedder).name,
        str(s.bentoml_home), code,
    )  # fmt: skip


def bento_code() -> str:
    """A digest of the code and data files bentofile.yaml ships: the service and both libraries (a change
    in, say, the RAG pipeline or a chat template is a new Bento, though no model changed)."""
    folders = (REPO_ROOT / d for d in ("serving", "pipelines", "router_models"))
    return source_digest(*folders, patterns=("*.py", "*.yaml", "*.jinja", "*.jsonl", "*.csv"))


@dg.asset(group_name="serving", deps=[bento_models], kinds={"bentoml"})
def bento(context: dg.AssetExecutionContext, settings: SettingsResource) -> dg.MaterializeResult:
    """`bentoml build` of bentofile.yaml pinned to the models `bento_models` just made; the Bento's labels
    name those model tags and the asset versions inside them."""
    event = context.instance.get_latest_materialization_event(bento_models.key)
    md = event.asset_materialization.metadata if event and event.asset_materialization else {}
    model_tags = {kind: str(md[f"{kind}_tag"].value) for kind in MODEL_KINDS if f"{kind}_tag" in md}
    if len(model_tags) != len(MODEL_KINDS):
        raise LookupError("bento_models has not recorded the four model tags: materialize it first")
    upstream = asset_versions(context.instance, [ROUTER, REGISTRY, bento_models.key])
    s = settings.get()
    lock = REPO_ROOT / "requirements.lock"
    fp = fingerprint(model_tags, REPO_ROOT / "bentofile.yaml", lock, bento_code())
    record = s.run_dir / "bundle" / "bento.json"
    info = recall(record, fp)
    reused = info is not None and _stored(info["home"], info["tag"])
    if not reused:
        info = run_bundle(s, "build", "--models", json.dumps(model_tags), "--labels", json.dumps(upstream))
        remember(record, fp, **info)
    assert info is not None
    context.log.info(f"{'kept' if reused else 'built'} {info['tag']} in {info['path']}")
    return dg.MaterializeResult(
        metadata={
            "tag": info["tag"],
            "path": info["path"],
            "size_mb": round(info["size_bytes"] / 2**20, 2),
            "models": ", ".join(info["models"]),
            **upstream,
            "reused": reused,
            "serve": f"BENTOML_HOME={info['home']} bentoml serve {info['tag']} --host 127.0.0.1 --port 3001",
        },
        data_version=dg.DataVersion(fp[:16]),
    )
