"""The router trained on the outcome tables (RouterBench and the recent micro-bench), and its cross-validated
evaluation with the seed's gate: on RouterBench's panel, and on the micro-bench's own models and prompts."""

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import dagster as dg

from assets.resources import SettingsResource, evidence_metadata, plain_metadata
from pipelines.bench.nightly import recent_outcomes
from pipelines.bench.outcomes import add_evidence, load_routerbench, write_table
from pipelines.files import write_atomic
from pipelines.memo import fingerprint, forget, recall, remember, source_digest
from pipelines.settings import Settings
from router_models.router.artifact import MANIFEST, save_router
from router_models.router.evaluation import crossval_evaluation, micro_bench_evaluation, utility_gate
from router_models.router.rules import load_rules, model_metadata
from router_models.router.train import train_router

PREDICTOR = "stack"
ROUTER_CODE = Path(__file__).resolve().parent.parent / "router_models" / "router"
# what training and evaluation import from outside router_models/router and what changes their result: the
# prompt embedders and the bf16/fp32 choice they make (hardware.py), and the outcome helpers (add_evidence,
# check_unique_prompt_ids, and task_family / TASK_FAMILY behind the Bayes predictor's prior). Not
# pipelines/files.py (how files are written, not what), nor the catalog code (model_metadata's result is
# in the fingerprint)
PIPELINES = ROUTER_CODE.parent.parent / "pipelines"
TRAINING_CODE = (
    PIPELINES / "index" / "embeddings.py",
    PIPELINES / "hardware.py",
    PIPELINES / "bench" / "outcomes.py",
    PIPELINES / "corpus" / "pii.py",  # the PII flag's phone recognizer and pieces
)


def _router_inputs(outcomes, s: Settings) -> tuple:
    """What train_router copies into the artifact besides the tables: its code, the rules (rules.yaml) and
    each model's privacy and context window (the catalog of these settings, then models.yaml)."""
    meta = model_metadata(sorted(outcomes["model"].unique()), settings=s)
    code = source_digest(ROUTER_CODE, *TRAINING_CODE, patterns=("*.py", "*.yaml"))
    return code, [asdict(r) for r in load_rules()], {name: asdict(m) for name, m in meta.items()}


def _routerbench(s: Settings):
    # rows without a score keep their cost: the metrics count them as 0 and still pay for them
    return load_routerbench(s.shared_data_dir / "routerbench")


def _micro_bench(s: Settings):
    """The micro-bench's answered rows of the last SM_BENCH_EVIDENCE_DAYS days: the local models' outcomes."""
    return recent_outcomes(s, s.bench_evidence_days)


def _posterior_prior(s: Settings) -> tuple[dict, str, Any]:
    """The utility model's current fit (the registry's task x model quality) as the stacked predictor's
    `bayes` prior, taken as it is: that posterior already saw these outcomes. No fit yet: no prior. Also its
    fit id, and the table itself: what the router's fingerprint holds (a fit registered again with other
    utility weights has a new id and the same quality table, which trains the same router)."""
    from router_models.router.predictors.bayes import PRIOR_COLUMNS
    from router_models.utility.registry import read_current, registry_engine

    rows = read_current(registry_engine(s.registry_sqlalchemy_url))
    if rows.empty:
        return {}, "none", "none"
    table = rows[PRIOR_COLUMNS].sort_values(["task", "model"]).reset_index(drop=True)
    return (
        {"member_options": {"bayes": {"prior_table": table, "update_prior": False}}},
        str(rows["fit_id"].iloc[0]),
        table,
    )


def _publish(version_dir: Path, current: Path) -> None:
    """Point `current` at the new version atomically (a symlink swapped by rename)."""
    tmp = current.with_name(f".{current.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(version_dir.name)
    tmp.replace(current)


# it reads the registry's current fit (`_posterior_prior`), which model_registry writes after each fit
# that passes its checks; declared on utility_posterior, so that a fit failing them (model_registry then
# not materialized) does not skip the router: it trains on the new bench data with the last good prior
@dg.asset(group_name="router", kinds={"scikit-learn"}, deps=["benchmark_results", "utility_posterior"])
def router(context: dg.AssetExecutionContext, settings: SettingsResource) -> dg.MaterializeResult:
    """A router over RouterBench's panel and the micro-bench's models (the local ones: what the gateway can
    call here), trained on both outcome tables: task classifier, cost model, stacked quality predictor (its
    Bayesian member's prior: the utility model's registered fit) and a budget policy calibrated out of fold.
    Versioned directory; `runs/router/current` points at the latest."""
    s = settings.get()
    local = _micro_bench(s)
    prompts, outcomes = _routerbench(s)
    prompts, outcomes = add_evidence(prompts, outcomes, local)
    params, prior_fit, prior_table = _posterior_prior(s)
    root = s.run_dir / "router"
    fp = fingerprint(prompts, outcomes, PREDICTOR, prior_table, *_router_inputs(outcomes, s))
    last = recall(root / "fingerprint.json", fp)
    if (
        last is not None
        and (Path(last["path"]) / MANIFEST).exists()
        and (root / "current").resolve() == Path(last["path"]).resolve()
    ):
        context.log.info(f"inputs and code unchanged: keeping {last['path']}")
        return dg.MaterializeResult(metadata={**last, "reused": True}, data_version=dg.DataVersion(fp[:16]))
    cache = s.run_dir / "cache" / "embeddings"
    r = train_router(
        prompts, outcomes, predictor=PREDICTOR, predictor_params=params, cache_dir=cache, settings=s
    )
    version = time.strftime("%Y%m%dT%H%M%S")
    path = save_router(r, root / version)
    _publish(path, root / "current")
    context.log.info(f"router saved to {path}")
    md = {
        "path": str(path),
        "models": len(r.models),
        "prompts": r.info["n_prompts"],
        "predictor": PREDICTOR,
        "strongest": r.strongest,
        "policy": r.policy.describe(),
        "prior_fit": prior_fit,
        **evidence_metadata(local),
    }
    remember(root / "fingerprint.json", fp, **md)
    return dg.MaterializeResult(metadata={**md, "reused": False}, data_version=dg.DataVersion(fp[:16]))


MICRO_CHECK = "beats_best_single_model_micro_bench"


@dg.asset(
    group_name="router",
    deps=[router],
    check_specs=[
        dg.AssetCheckSpec("beats_best_single_model", asset="router_evaluation"),
        dg.AssetCheckSpec(MICRO_CHECK, asset="router_evaluation"),
    ],
)
def router_evaluation(settings: SettingsResource):
    """5-fold cross-validated AIQ, gap recovered and cost to match the best single model, with a Pareto plot:
    on RouterBench's panel, and on the micro-bench's models and prompts (each fold held out of a router
    trained on RouterBench and the other folds). Without the utility posterior as prior: it saw every fold.
    The checks are the seed's gate on each: >= 5% more utility
    than the best single model at <= 80% of its cost."""
    s = settings.get()
    prompts, outcomes = _routerbench(s)
    local = _micro_bench(s)
    out = s.run_dir / "router_evaluation"
    fp = fingerprint(prompts, outcomes, local, PREDICTOR, s.lambda_cost, *_router_inputs(outcomes, s))
    doc = recall(out / "fingerprint.json", fp)
    reused = doc is not None and (out / "summary.json").exists() and (out / "pareto.png").exists()
    if not reused:
        forget(out / "fingerprint.json")  # before the plots are overwritten
        cache = s.run_dir / "cache" / "embeddings"
        pred, result = crossval_evaluation(
            prompts, outcomes, PREDICTOR, cache_dir=cache, plot_path=out / "pareto.png"
        )
        result["gate"] = utility_gate(pred, outcomes, s.lambda_cost)
        micro = micro_bench_evaluation(
            prompts, outcomes, local, PREDICTOR, cache_dir=cache, plot_path=out / "pareto_micro_bench.png"
        )
        if micro is not None:
            micro_pred, table, result["micro_bench"] = micro
            result["micro_bench"]["gate"] = utility_gate(micro_pred, table, s.lambda_cost)
        write_table(pred, out / "predictions.parquet")
        write_atomic(out / "summary.json", json.dumps(result, indent=1, default=str).encode())
        remember(out / "fingerprint.json", fp, summary=str(out / "summary.json"))
    result = json.loads((out / "summary.json").read_text())
    gate, micro = result.pop("gate"), result.pop("micro_bench", None)
    metadata = {
        **plain_metadata({k: v for k, v in result.items() if k != "pareto_png"}),
        **_plot_metadata("pareto", result["pareto_png"]),
        **evidence_metadata(local),
        "reused": reused,
    }
    if micro is not None:
        shown = {f"micro_bench_{k}": v for k, v in micro.items() if k != "pareto_png"}
        metadata.update(plain_metadata(shown))
        metadata.update(_plot_metadata("pareto_micro_bench", micro["pareto_png"]))
    yield dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(fp[:16]))
    yield dg.AssetCheckResult(
        check_name="beats_best_single_model", passed=gate["passed"], metadata=plain_metadata(gate)
    )
    if micro is None:
        why = "the micro-bench has no two models that answered the same two prompts in the window"
        yield dg.AssetCheckResult(check_name=MICRO_CHECK, passed=False, metadata={"reason": why})
    else:
        g = micro["gate"]
        yield dg.AssetCheckResult(check_name=MICRO_CHECK, passed=g["passed"], metadata=plain_metadata(g))


def _plot_metadata(name: str, png: str) -> dict:
    return {
        name: dg.MetadataValue.md(f"![{name}]({Path(png).as_uri()})"),
        f"{name}_path": dg.MetadataValue.path(png),
    }
