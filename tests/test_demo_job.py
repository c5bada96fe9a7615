"""The demo path end to end: the `demo` job (`make demo` materializes it first) on a fresh run folder with the
real local models, checks and all; then the same job again, which must do no needless work; then the summary
`stratmaster demo` prints from what the job materialized.

The retrieval evaluation samples fewer SciFact claims than the demo's default, and the corpus is the first
DEMO_TOPICS of the demo's Python reference topics (embedding all of them is most of a minute and a half here);
everything else is the demo's.
Before the job, as `make demo` does, the fixture runs today's micro-bench partition with the real local models
(on fewer prompts: two per RouterBench task), whose answers the utility model takes as evidence; the notebook
reports are the demo's last step, which test_notebooks runs.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest
from conftest import free_port_pair
from rich.console import Console

from assets.definitions import defs
from assets.resources import GatewayResource, SettingsResource
from assets.router import MICRO_CHECK

pytestmark = [pytest.mark.slow, pytest.mark.models]
DEMO_TOPICS = 16
BENCH_PER_TASK = 2


def _materialize(overrides: dict[str, str], instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    job = defs.resolve_job_def("demo")
    settings = SettingsResource(overrides=overrides)
    return job.execute_in_process(
        instance=instance, resources={"settings": settings, "gateway": GatewayResource(settings=settings)}
    )


def _metadata(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    out = {}
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        out[mat.asset_key.to_user_string()] = {k: v.value for k, v in mat.metadata.items()}
    return out


@pytest.fixture(scope="module")
def demo_runs(model_settings, shared_data, tmp_path_factory):
    """The model servers (the micro-bench partition starts them, as `make demo` has), stopped after."""
    from pipelines.demo_corpus import write_demo_corpus
    from pipelines.llm import servers
    from pipelines.llm.catalog import load_catalog
    from pipelines.settings import Settings

    run = tmp_path_factory.mktemp("demo_run")
    corpus = write_demo_corpus(tmp_path_factory.mktemp("demo_corpus"), limit=DEMO_TOPICS)
    overrides = {
        "run_dir": str(run),
        "corpus_dir": str(corpus),
        "shared_data_dir": str(shared_data),
        "model_cache_dir": str(model_settings.models_dir),
        "local_base_port": str(free_port_pair()),
        "retrieval_eval_queries": "12",
        "retrieval_eval_distractors": "60",
    }
    mp = pytest.MonkeyPatch()
    mp.setenv("BENTOML_HOME", str(run / "bentoml"))
    for k, v in overrides.items():  # what `stratmaster demo` reads: the environment, as in `make demo`
        mp.setenv(f"SM_{k.upper()}", v)
    instance = dg.DagsterInstance.ephemeral()
    try:
        from pipelines.bench.nightly import run_benchmark_partition
        from pipelines.bench.prompts import build_prompt_set

        s = Settings(**overrides)
        prompts = build_prompt_set(s, per_task=BENCH_PER_TASK)
        prompts = prompts[prompts["task"].isin(["arc-challenge", "winogrande"])]
        bench = run_benchmark_partition(s, prompts, dt.datetime.now(dt.UTC).date().isoformat())
        first = _materialize(overrides, instance)
        second = _materialize(overrides, instance)
        console = Console(record=True, width=200)
        from pipelines.demo import _figures

        _figures(console, Settings())
        summary = console.export_text()
    finally:
        settings = Settings(**overrides)
        for entry in load_catalog(settings).local():
            servers.stop(entry, settings)
        mp.undo()
    return {"run": run, "first": first, "second": second, "summary": summary, "bench": bench}


def test_the_demo_job_materializes_every_asset_and_passes_every_check(demo_runs):
    """Every check but the gate on the micro-bench's own prompts, which four prompts and two models of 135M
    and 270M parameters may fail: test_the_router_learns_from_the_micro_bench... checks it was evaluated."""
    first = demo_runs["first"]
    assert first.success
    job_assets = {k.to_user_string() for k in defs.resolve_job_def("demo").asset_layer.executable_asset_keys}
    assert set(_metadata(first)) == job_assets
    checks = [c for c in first.get_asset_check_evaluations() if c.check_name != MICRO_CHECK]
    assert {c.check_name for c in checks} >= {"ndcg_floor", "beats_best_single_model", "r_hat", "calibration"}
    assert all(c.passed for c in checks), [c.check_name for c in checks if not c.passed]
    run = demo_runs["run"]
    assert (run / "router" / "current" / "manifest.json").exists()
    assert any((run / "bentoml" / "bentos" / "stratmaster").iterdir())
    prefix = _metadata(first)["utility_posterior"]["object_store_prefix"].removeprefix("local:")
    assert (run / "store" / prefix / "utility_posterior.nc").stat().st_size > 0  # the object store's copy
    assert _metadata(first)["routerbench_outcomes"]["unscored_rows_left_out"] > 0  # were left out unsaid


def test_the_utility_posterior_takes_the_micro_benchs_answers_as_evidence(demo_runs, shared_data):
    from pipelines.bench.outcomes import routerbench_outcome_table

    bench, meta = demo_runs["bench"], _metadata(demo_runs["first"])["utility_posterior"]
    local = sorted(bench["model"].unique())
    assert len(bench) == 2 * BENCH_PER_TASK * len(local) and bench["error"].isna().all()
    assert meta["micro_bench_rows"] == len(bench) and meta["micro_bench_models"] == ", ".join(local)
    import arviz as az

    fitted = az.from_netcdf(demo_runs["run"] / "utility" / "utility_posterior.nc").constant_data
    trials = dict(zip(fitted["cell"].values.tolist(), fitted["n_trials"].values.tolist(), strict=True))
    for model in local:  # the local models' cells are their bench answers, beside RouterBench's 11 models
        for task in ("arc-challenge", "winogrande"):
            assert trials[f"{task}|{model}"] == ((bench["model"] == model) & (bench["task"] == task)).sum()
    public = routerbench_outcome_table(shared_data / "routerbench")
    assert sum(trials.values()) == len(public) + len(bench)


def test_the_router_learns_from_the_micro_bench_and_is_judged_on_it(demo_runs):
    from router_models.router.artifact import load_router
    from router_models.router.signals import Constraints

    bench, meta = demo_runs["bench"], _metadata(demo_runs["first"])
    local = sorted(bench["model"].unique())
    router = load_router(demo_runs["run"] / "router" / "current")
    assert set(local) < set(router.models) and len(router.models) == 11 + len(local)  # RouterBench's 11
    assert meta["router"]["micro_bench_rows"] == len(bench)
    assert meta["router"]["prior_fit"] == meta["model_registry"]["fit_id"]  # the utility posterior as prior
    decision = router.route(
        "Mail jane.doe@example.com: which is heavier, a kilo of lead or of wool?", Constraints()
    )
    assert decision.model in local and decision.binding == "pii_local_only"
    evaluation = meta["router_evaluation"]
    assert evaluation["micro_bench_n_prompts"] == bench["prompt_id"].nunique()
    assert evaluation["micro_bench_n_models"] == len(local) and evaluation["micro_bench_best_single"] in local
    assert evaluation["pareto_micro_bench_path"].endswith(".png")
    [check] = [c for c in demo_runs["first"].get_asset_check_evaluations() if c.check_name == MICRO_CHECK]
    assert check.metadata["best_single"].value in local


def test_a_second_run_does_no_needless_work(demo_runs):
    first, second = _metadata(demo_runs["first"]), _metadata(demo_runs["second"])
    assert demo_runs["second"].success and set(second) == set(first)
    assert first["corpus_chunks"]["files_processed"] == DEMO_TOPICS
    assert second["corpus_chunks"]["files_processed"] == 0 and second["corpus_chunks"]["chunks_written"] == 0
    for index in ("keyword_index", "dense_index", "knowledge_graph"):
        assert second[index]["added"] == 0 and second[index]["deleted"] == 0, index
    for asset in ("router", "router_evaluation", "retrieval_evaluation", "bento_models", "bento"):
        assert second[asset]["reused"] is True, asset
    assert "reused the posterior" in second["utility_posterior"]["notes"]
    assert second["model_registry"]["fit_id"] == first["model_registry"]["fit_id"]
    assert second["bento"]["tag"] == first["bento"]["tag"]


def test_the_summary_prints_the_figures_and_where_the_plots_are(demo_runs):
    text = demo_runs["summary"]
    assert "Retrieval (12 labelled queries" in text and "hybrid nDCG@10" in text
    assert "gap recovered" in text and "Pareto plot" in text
    assert "on the micro-bench (4 prompts, 2 local models" in text
    assert "Utility posterior: 39 task x model cells" in text  # 3 RouterBench tasks x (11 + 2 local models)
    assert str(demo_runs["run"] / "utility" / "quality_forest.png") in text
