"""The research notebooks run top to bottom under papermill on small but real assets, through the `reports`
asset; a missing asset stops a notebook with an error that names it; the kernel is this interpreter.

The session fixture builds a run folder the way the assets do, with the same library calls on a RouterBench
slice (a few models, a few dozen prompts per task), a short utility fit, a micro-bench partition of the real
local panel, and a few reference topics indexed for retrieval."""

from __future__ import annotations

import json
import re
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from pipelines.reports import NOTEBOOKS, NOTEBOOKS_DIR, NotebookError, run_notebook
from pipelines.settings import Settings

MODELS = ["gpt-4-1106-preview", "mistralai/mistral-7b-chat", "zero-one-ai/Yi-34B-Chat"]
PER_TASK = 40
PREDICTOR = "logistic"  # the asset's "stack" takes minutes to fit; the notebooks read any predictor


def _routerbench_slice(shared_data: Path, dest: Path) -> Path:
    """prompts_train.csv / outcomes_train.csv restricted to PER_TASK prompts per task and MODELS."""
    from pipelines.bench.outcomes import load_routerbench

    prompts, outcomes = load_routerbench(shared_data / "routerbench")
    prompts = prompts[prompts.groupby("task").cumcount() < PER_TASK]
    outcomes = outcomes[outcomes["prompt_id"].isin(prompts["prompt_id"]) & outcomes["model"].isin(MODELS)]
    dest.mkdir(parents=True)
    prompts.to_csv(dest / "prompts_train.csv", index=False)
    outcomes.to_csv(dest / "outcomes_train.csv", index=False)
    return dest


@pytest.fixture(scope="session")
def report_inputs(shared_data, gateway, tmp_path_factory):
    """Settings whose run folder holds every asset file the notebooks read."""
    from pipelines.bench.nightly import recent_outcomes
    from pipelines.bench.outcomes import (
        add_evidence,
        load_routerbench,
        routerbench_outcome_table,
        write_table,
    )
    from pipelines.bench.prompts import build_prompt_set
    from pipelines.bench.runner import run_bench
    from pipelines.corpus.ingest import ingest_corpus
    from pipelines.demo_corpus import write_demo_corpus
    from pipelines.index.build import build_dense_index, build_keyword_index
    from pipelines.rag.evaluate import evaluate_retrievers, write_beir_sample
    from router_models.router.artifact import save_router
    from router_models.router.evaluation import crossval_evaluation, micro_bench_evaluation, utility_gate
    from router_models.router.train import train_router
    from router_models.utility.model import FitConfig
    from router_models.utility.pipeline import fit_posterior
    from router_models.utility.priors import leaderboard_priors

    root = tmp_path_factory.mktemp("reports")
    shared = root / "shared"
    _routerbench_slice(shared_data, shared / "routerbench")
    (shared / "priors").mkdir()
    shutil.copy(shared_data / "priors" / "arena_elo.csv", shared / "priors" / "arena_elo.csv")
    s = Settings(run_dir=root / "run", shared_data_dir=shared)
    cache = s.run_dir / "cache" / "embeddings"

    # bench: routerbench_outcomes, and one micro-bench partition of the real local panel (benchmark_results)
    table = routerbench_outcome_table(shared / "routerbench")
    write_table(table, s.run_dir / "bench" / "routerbench_outcomes.parquet")
    prompts = build_prompt_set(s, per_task=1)
    prompts = prompts[prompts["task"].isin(["arc-challenge", "winogrande", "extraction"])]
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    run_bench(prompts, [e.name for e in gateway.catalog.local()], gateway, s.run_dir / "bench" / day,
              run_id=f"bench-{day}", max_tokens=12, progress=False)  # fmt: skip

    # router and router_evaluation
    rb_prompts, rb_outcomes = load_routerbench(shared / "routerbench")
    local = recent_outcomes(s, s.bench_evidence_days)
    router = train_router(*add_evidence(rb_prompts, rb_outcomes, local), predictor=PREDICTOR, cache_dir=cache)
    version = save_router(router, s.run_dir / "router" / "v1")
    (s.run_dir / "router" / "current").symlink_to(version.name)
    out = s.run_dir / "router_evaluation"
    pred, result = crossval_evaluation(rb_prompts, rb_outcomes, PREDICTOR, folds=3, cache_dir=cache,
                                       plot_path=out / "pareto.png")  # fmt: skip
    result["gate"] = utility_gate(pred, rb_outcomes, s.lambda_cost)
    micro_pred, micro_table, result["micro_bench"] = micro_bench_evaluation(
        rb_prompts, rb_outcomes, local, PREDICTOR, folds=3, cache_dir=cache, plot_path=out / "micro.png"
    )
    result["micro_bench"]["gate"] = utility_gate(micro_pred, micro_table, s.lambda_cost)
    (out / "summary.json").write_text(json.dumps(result, default=str))
    pred.to_parquet(out / "predictions.parquet", index=False)

    # leaderboard_priors and utility_posterior (a short fit)
    write_table(leaderboard_priors(shared / "priors" / "arena_elo.csv", MODELS),
                s.run_dir / "utility" / "leaderboard_priors.csv")  # fmt: skip
    quick = FitConfig(draws=100, tune=200, chains=1, prior_predictive_draws=50, sampler="pymc")
    fit_posterior(table, leaderboard_priors(shared / "priors" / "arena_elo.csv"), s.run_dir / "utility",
                  config=quick, lambda_cost=s.lambda_cost, lambda_latency=s.lambda_latency)  # fmt: skip

    # corpus_chunks, keyword_index, dense_index over a few reference topics; a retrieval evaluation
    ingest_corpus(s, str(write_demo_corpus(root / "corpus", limit=6)))
    build_keyword_index(s)
    build_dense_index(s)
    sample = write_beir_sample(shared_data / "scifact", root / "beir", n_queries=8, n_distractors=30)
    ev = evaluate_retrievers(s, sample, sample / "queries.jsonl", sample / "qrels.tsv",
                             ("bm25", "dense", "hybrid"), root / "beir_index")  # fmt: skip
    (s.run_dir / "retrieval_evaluation").mkdir()
    (s.run_dir / "retrieval_evaluation" / "summary.json").write_text(
        json.dumps({"source": str(shared_data / "scifact"), "retrievers": ev["retrievers"]})
    )
    return s


@pytest.fixture(scope="session")
def materialized_reports(report_inputs):
    """The `reports` asset materialized on the fixture's run folder."""
    import dagster as dg

    from assets.reports import reports
    from assets.resources import SettingsResource

    s = report_inputs
    res = SettingsResource(overrides={"run_dir": str(s.run_dir), "shared_data_dir": str(s.shared_data_dir)})
    result = dg.materialize([reports], resources={"settings": res})
    assert result.success
    mats = result.asset_materializations_for_node("reports")
    assert mats[0].metadata["reused"].value is False
    again = dg.materialize([reports], resources={"settings": res})  # nothing changed: nothing re-executed
    assert again.asset_materializations_for_node("reports")[0].metadata["reused"].value is True
    return s.run_dir / "reports", mats[0].metadata


def outputs_text(executed: Path) -> str:
    """What the notebook printed and displayed (not its source): streams, text and markdown outputs."""
    nb = nbformat.read(executed, as_version=4)
    parts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            parts.append(o.get("text", ""))
            data = o.get("data", {})
            parts += [data.get(k, "") for k in ("text/plain", "text/markdown")]
    return "\n".join(parts)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_through_the_reports_asset(materialized_reports, name):
    out, metadata = materialized_reports
    html = out / name / f"{name}.html"
    assert html.exists() and html.stat().st_size > 10_000
    pngs = sorted((out / name / "figures").glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert metadata[f"{name}_pngs"].value == len(pngs)
    assert metadata[f"{name}_html"].value == html.as_uri()
    executed = nbformat.read(out / name / f"{name}.ipynb", as_version=4)
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert not list(out.glob(f".{name}.*")), "temporary or failed copies left behind"


def test_notebooks_show_what_the_assets_hold(materialized_reports):
    out, _ = materialized_reports
    shown = {n: outputs_text(out / n / f"{n}.ipynb") for n in NOTEBOOKS}
    assert "labelled queries sampled from" in shown["retrieval"]
    assert "hybrid" in shown["retrieval"] and "rank" in shown["retrieval"]
    assert "micro-bench partitions: 20" in shown["benchmarks"]  # today's partition of the local panel
    assert "smollm2-135m" in shown["benchmarks"] and "Yi-34B-Chat" in shown["benchmarks"]
    assert "fit `" in shown["utility"]
    assert re.search(r"This fit failed its checks \([^)]*ess_bulk", shown["utility"])  # 100 draws: said
    assert "saved without its calibration table" not in shown["utility"]  # the table saved with the fit
    assert "Chose " in shown["router"] and "pii_local_only" in shown["router"]
    assert "task_mean_label" in shown["router"] and "per-prompt oracle" in shown["router"]


@pytest.mark.parametrize(
    ("name", "asset"), [("router", "router_evaluation"), ("benchmarks", "benchmark_results")]
)
def test_a_missing_asset_stops_the_notebook_with_its_name(tmp_path, name, asset):
    with pytest.raises(NotebookError, match=f"materialize {asset}"):
        run_notebook(NOTEBOOKS_DIR / f"{name}.ipynb", tmp_path / "out", {"run_dir": str(tmp_path / "empty")})
    assert (tmp_path / "out" / f".{name}.failed" / f"{name}.ipynb").exists()
    assert not (tmp_path / "out" / name).exists()


def test_kernel_is_this_interpreter_and_a_failure_keeps_the_last_good_report(tmp_path):
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    params = nbformat.v4.new_code_cell("fail = False")
    params.metadata["tags"] = ["parameters"]
    body = "\n".join([
        "import sys", "print(sys.executable, sys.prefix)", "%matplotlib inline",
        "import matplotlib.pyplot as plt", "plt.plot([1, 2]); plt.show()", "assert not fail, 'asked to fail'",
    ])  # fmt: skip
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    path = tmp_path / "probe.ipynb"
    nbformat.write(nb, path)
    rep = run_notebook(path, tmp_path / "out", {})
    printed = nbformat.read(rep.notebook, as_version=4).cells[-1].outputs[0]["text"].split()
    assert printed == [sys.executable, sys.prefix]  # the venv's interpreter, not whatever `python3` is
    assert len(rep.figures) == 1 and rep.html.exists()
    with pytest.raises(NotebookError, match="AssertionError: asked to fail"):
        run_notebook(path, tmp_path / "out", {"fail": True})
    assert rep.html.exists() and len(rep.figures) == 1  # the last good report is still in place
    assert pd.Series([p.name for p in (tmp_path / "out").iterdir()]).str.contains("tmp").sum() == 0


def test_the_kernel_builds_the_callers_settings(tmp_path):
    """The reports asset's settings (a Dagster resource's overrides) reach the notebooks' Settings(): the
    utility notebook once computed utilities at the default lambda_cost, not the asset's."""
    from pipelines.settings import Settings

    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    nb.cells = [nbformat.v4.new_code_cell(
        "from pipelines.settings import Settings\ns = Settings()\nprint(s.lambda_cost, s.hybrid_alpha)"
    )]  # fmt: skip
    nbformat.write(nb, tmp_path / "probe.ipynb")
    settings = Settings(lambda_cost=5.0, hybrid_alpha=0.3)
    rep = run_notebook(tmp_path / "probe.ipynb", tmp_path / "out", {}, env=settings.as_env())
    assert nbformat.read(rep.notebook, as_version=4).cells[-1].outputs[0]["text"].split() == ["5.0", "0.3"]
