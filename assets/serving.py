"""The bundle: BentoML models from the materialized router, registry, indexes and catalog, then the Bento.

Models and Bentos live in `BENTOML_HOME` (default `run_dir/bentoml`); `make serve` serves the latest Bento.
"""

import dagster as dg

from assets.resources import SettingsResource
from serving.bundle import (
    MODEL_NAMES,
    bentoml_home,
    build_bento,
    snapshot_catalog,
    snapshot_index,
    snapshot_registry,
    snapshot_router,
)

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


@dg.asset(
    group_name="serving",
    deps=[ROUTER, REGISTRY, *INDEX],
    kinds={"bentoml"},
)
def bento_models(context: dg.AssetExecutionContext, settings: SettingsResource) -> dg.MaterializeResult:
    """BentoML models stratmaster-router, -registry, -index and -catalog, copied from the materialized assets;
    each model's labels name the asset versions (Dagster data version and run) it was made from."""
    s = settings.get()
    home = bentoml_home(s)
    inst = context.instance
    tags = {
        "router": snapshot_router(s.run_dir / "router" / "current", home, asset_versions(inst, [ROUTER])),
        "registry": snapshot_registry(s, home, asset_versions(inst, [REGISTRY])),
        "index": snapshot_index(s, home, asset_versions(inst, INDEX)),
        "catalog": snapshot_catalog(s, home),
    }
    context.log.info(f"models in {home}: {tags}")
    return dg.MaterializeResult(
        metadata={
            **{f"{kind}_tag": tag for kind, tag in tags.items()},
            "bentoml_home": str(home),
        }
    )


@dg.asset(group_name="serving", deps=[bento_models], kinds={"bentoml"})
def bento(context: dg.AssetExecutionContext, settings: SettingsResource) -> dg.MaterializeResult:
    """`bentoml build` of bentofile.yaml pinned to the models `bento_models` just made; the Bento's labels
    name those model tags and the asset versions inside them."""
    s = settings.get()
    home = bentoml_home(s)
    event = context.instance.get_latest_materialization_event(bento_models.key)
    md = event.asset_materialization.metadata if event and event.asset_materialization else {}
    model_tags = {kind: str(md[f"{kind}_tag"].value) for kind in MODEL_NAMES if f"{kind}_tag" in md}
    if len(model_tags) != len(MODEL_NAMES):
        raise LookupError("bento_models has not recorded the four model tags: materialize it first")
    upstream = asset_versions(context.instance, [ROUTER, REGISTRY, bento_models.key])
    info = build_bento(home, model_tags, upstream)
    context.log.info(f"built {info.tag} in {info.path}")
    return dg.MaterializeResult(
        metadata={
            "tag": info.tag,
            "path": str(info.path),
            "size_mb": round(info.size_bytes / 2**20, 2),
            "models": ", ".join(info.models),
            **upstream,
            "serve": f"BENTOML_HOME={home} bentoml serve {info.tag} --host 127.0.0.1 --port 3001",
        }
    )
