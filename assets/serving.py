"""The bundle: BentoML models from the materialized router, registry, indexes and catalog, then the Bento.

Models and Bentos live in `BENTOML_HOME` (default `run_dir/bentoml`); `make serve` serves the latest Bento.
The work is `python -m serving.bundle` in a subprocess: nothing imports `serving` (DESIGN.md), and BentoML's
process-wide state (its model store, its config) never leaks into the Dagster process.
"""

import json
import os
import subprocess
import sys

import dagster as dg

from assets.resources import SettingsResource
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
    inst = context.instance
    labels = {
        "router": asset_versions(inst, [ROUTER]),
        "registry": asset_versions(inst, [REGISTRY]),
        "index": asset_versions(inst, INDEX),
    }
    out = run_bundle(settings.get(), "models", "--labels", json.dumps(labels))
    tags = out["tags"]
    context.log.info(f"models in {out['home']}: {tags}")
    return dg.MaterializeResult(
        metadata={
            **{f"{kind}_tag": tag for kind, tag in tags.items()},
            "bentoml_home": out["home"],
        }
    )


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
    info = run_bundle(
        settings.get(), "build", "--models", json.dumps(model_tags), "--labels", json.dumps(upstream)
    )
    context.log.info(f"built {info['tag']} in {info['path']}")
    return dg.MaterializeResult(
        metadata={
            "tag": info["tag"],
            "path": info["path"],
            "size_mb": round(info["size_bytes"] / 2**20, 2),
            "models": ", ".join(info["models"]),
            **upstream,
            "serve": f"BENTOML_HOME={info['home']} bentoml serve {info['tag']} --host 127.0.0.1 --port 3001",
        }
    )
