"""Review fixes in the Dagster layer: run config reaching nested resources, overrides checked when built,
the utility summary's object-store copy, the router's code digest and deps, the reports' fingerprint, the
model panel gating the bench, and the new-documents sensor asking again after a failed ingest run."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pandas as pd
import pytest

from assets import definitions, sensors
from assets.resources import SettingsResource
from assets.sensors import new_documents_sensor
from pipelines.settings import REPO_ROOT


class FakeGateway:
    """Stands for pipelines.llm.gateway.Gateway: records the settings it was built with."""

    def __init__(self, settings, catalog=None):
        self.settings = settings


def _settings_config(**overrides: str) -> dict:
    return {"resources": {"settings": {"config": {"overrides": overrides}}}}


def _panel(rows: list[dict], seen: list):
    def check(gateway):
        seen.append(gateway.settings)
        return rows

    return check


def test_run_config_overrides_reach_the_gateway(tmp_path, monkeypatch):
    """GatewayResource captured the module's SettingsResource as built: a launch's overrides reached every
    asset but the gateway (its timeout stayed 60 s)."""
    import assets.models

    monkeypatch.delenv("SM_REQUEST_TIMEOUT_S", raising=False)
    monkeypatch.setattr("pipelines.llm.gateway.Gateway", FakeGateway)
    seen: list = []
    monkeypatch.setattr(
        assets.models, "panel_check", _panel([{"model": "m", "ok": True, "latency_s": 0.1}], seen)
    )
    job = definitions.defs.resolve_job_def("models_job")
    config = _settings_config(request_timeout_s="5", run_dir=str(tmp_path))
    assert job.execute_in_process(run_config=config, instance=dg.DagsterInstance.ephemeral()).success
    assert [s.request_timeout_s for s in seen] == [5.0] and seen[0].run_dir == tmp_path
    seen.clear()  # no run config: the environment's settings, as before
    assert job.execute_in_process(instance=dg.DagsterInstance.ephemeral()).success
    assert seen[0].request_timeout_s == 60.0


def test_overrides_are_checked_when_the_resource_is_built(tmp_path):
    """A misspelt key was dropped silently (Settings ignores extra keys), and a bad value failed only inside
    the first step, as a wrapped pydantic traceback."""
    with pytest.raises(
        ValueError, match=r"^unknown setting in overrides: 'run_dri' \(did you mean 'run_dir'\?\)$"
    ):
        SettingsResource(overrides={"run_dri": "/tmp/elsewhere"})
    with pytest.raises(ValueError) as bad:
        SettingsResource(overrides={"bench_per_task": "0", "lambda_cost": "cheap"})
    message = str(bad.value)
    assert "\n" not in message and "bench_per_task='0'" in message and "lambda_cost='cheap'" in message
    assert SettingsResource(overrides={"run_dir": str(tmp_path)}).get().run_dir == tmp_path
    assert SettingsResource(overrides={"RUN_DIR": str(tmp_path)}).get().run_dir == tmp_path  # any case

    # in run config: the run fails as its resources are built, before any step starts
    @dg.asset
    def reads_settings(settings: SettingsResource) -> None:
        settings.get()

    defs = dg.Definitions(
        assets=[reads_settings], resources={"settings": SettingsResource.configure_at_launch()}
    )
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        run_config=_settings_config(bench_per_tsk="3"),
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not result.success and not [e for e in result.all_events if e.event_type_value == "STEP_START"]
    failure = next(e for e in result.all_events if e.event_type_value == "RESOURCE_INIT_FAILURE")
    assert "did you mean 'bench_per_task'?" in str(failure.event_specific_data.error.to_string())


def test_a_bad_sm_variable_fails_the_run_as_it_starts_and_is_named_as_one(tmp_path, monkeypatch):
    """With no override the environment was not checked: SM_LAMBDA_COST=cheap failed inside the first step,
    as a pydantic traceback; with an override it was blamed on the overrides."""
    monkeypatch.setenv("SM_LAMBDA_COST", "cheap")

    @dg.asset
    def reads_settings(settings: SettingsResource) -> None:
        settings.get()

    defs = dg.Definitions(
        assets=[reads_settings], resources={"settings": SettingsResource.configure_at_launch()}
    )
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )
    assert not result.success and not [e for e in result.all_events if e.event_type_value == "STEP_START"]
    failure = next(e for e in result.all_events if e.event_type_value == "RESOURCE_INIT_FAILURE")
    assert "invalid settings: SM_LAMBDA_COST='cheap'" in failure.event_specific_data.error.to_string()
    with pytest.raises(ValueError) as bad:
        SettingsResource(overrides={"run_dir": str(tmp_path), "bench_per_task": "abc"})
    assert str(bad.value).startswith("invalid settings: ") and "\n" not in str(bad.value)
    assert "SM_LAMBDA_COST='cheap'" in str(bad.value) and "overrides: bench_per_task='abc'" in str(bad.value)
    from assets.resources import check_overrides

    # a secret in run config was stored in Dagster's run storage and shown in its UI: refused, never printed
    for key in ("s3_secret_key", "REGISTRY_URL"):
        with pytest.raises(
            ValueError, match=rf"set {key.lower()} \(SM_{key.upper()}\) in the environment"
        ) as bad:
            check_overrides({key: "postgresql://u:sekrit@db/r"})
        assert "sekrit" not in str(bad.value)


def _fitted(out_dir, tag: str, lambda_cost: float, utility: float):
    """A utility fit's artifacts as fit_posterior returns them, its NetCDF already written: fit hash `tag`
    x 64, a summary of one utility, and diagnostics that fail the checks (nothing is registered: the
    registry is not what these tests are about)."""
    from router_models.utility.pipeline import PosteriorArtifacts

    summary = pd.DataFrame({"task": ["qa"], "model": ["m"], "utility_mean": [utility]})
    (out_dir / "summary.json").write_text(json.dumps({"rows": summary.to_dict("records")}))
    diagnostics = {"r_hat_max": 2.0, "ess_bulk_min": 10.0, "divergences": 0, "fit_seconds": 1.0}
    fit = SimpleNamespace(fit_hash=tag * 64, diagnostics=diagnostics, prior_check={"cells": 0})
    art = PosteriorArtifacts(fit, summary, pd.DataFrame({"calibrated": [True]}), lambdas=(lambda_cost, 0.0))
    names = {"netcdf": "utility_posterior.nc", "summary_json": "summary.json", "forest_png": "forest.png"}
    art.paths = {name: out_dir / file for name, file in names.items()}
    return art


def _no_inputs(monkeypatch, fake_fit) -> None:
    """utility_posterior with `fake_fit` for the fit and no outcomes or priors to read."""
    import assets.utility

    monkeypatch.setattr(assets.utility, "fit_posterior", fake_fit)
    monkeypatch.setattr(assets.utility, "build_priors", lambda *a: None)
    monkeypatch.setattr(
        assets.utility, "evidence_outcomes", lambda s: (pd.DataFrame(), pd.DataFrame({"model": []}))
    )


def test_a_lambda_change_reaches_the_stored_summary_and_the_data_version(tmp_path, monkeypatch):
    """summary.json's copy in the object store was keyed by the fit hash (no lambdas) and written once:
    after a lambda change the store kept the old utilities, and the asset's data version stayed the same."""
    import assets.utility

    def fake_fit(outcomes, priors, out_dir, lambda_cost, lambda_latency, reuse):
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "utility_posterior.nc").write_bytes(b"the same fit")
        return _fitted(out_dir, "f", lambda_cost, utility=1.0 - lambda_cost / 1000)

    _no_inputs(monkeypatch, fake_fit)

    def run(lambda_cost: str):
        res = {"settings": SettingsResource(overrides={"run_dir": str(tmp_path), "lambda_cost": lambda_cost})}
        result = dg.materialize([assets.utility.utility_posterior], resources=res)
        (event,) = result.asset_materializations_for_node("utility_posterior")
        return event.tags["dagster/data_version"]

    first, second = run("100"), run("5")
    assert first != second
    stored = {
        json.loads(p.read_text())["rows"][0]["utility_mean"] for p in tmp_path.glob("store/utility/*/*.json")
    }
    assert stored == {0.9, 0.995}  # each lambda's summary kept
    assert len(list(tmp_path.glob("store/utility/*/utility_posterior.nc"))) == 1  # one fit, stored once
    assert run("5") == second


def test_two_refits_at_once_each_archive_their_own_fit(tmp_path, monkeypatch):
    """Two runs (the queue starts two at once) share run_dir/utility: one archived the other's NetCDF under
    its own fit's hash, for good (a key in the store is not written again)."""
    import threading
    import time

    import assets.utility

    def fake_fit(outcomes, priors, out_dir, lambda_cost, lambda_latency, reuse):
        out_dir.mkdir(parents=True, exist_ok=True)
        tag = "a" if lambda_cost == 100 else "b"
        (out_dir / "utility_posterior.nc").write_bytes(f"fit {tag}".encode())
        time.sleep(0.5)  # the other run writes its fit meanwhile, if it may
        return _fitted(out_dir, tag, lambda_cost, utility=0.5)

    _no_inputs(monkeypatch, fake_fit)

    def run(lambda_cost: str) -> None:
        res = {"settings": SettingsResource(overrides={"run_dir": str(tmp_path), "lambda_cost": lambda_cost})}
        dg.materialize([assets.utility.utility_posterior], resources=res)

    runs = [threading.Thread(target=run, args=(lam,)) for lam in ("100", "5")]
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    stored = {p.parent.name[0]: p.read_bytes() for p in tmp_path.glob("store/utility/*/utility_posterior.nc")}
    assert stored == {"a": b"fit a", "b": b"fit b"}


def test_the_router_code_digest_covers_what_training_imports_from_pipelines(monkeypatch):
    """The digest covered router_models/router and the embedders only: an edit of task_family (the Bayes
    predictor's prior) or of the embedder's bf16/fp32 choice kept a stale router."""
    import assets.router

    covered: set[Path] = set()
    real = assets.router.source_digest

    def spy(*paths, patterns=("*.py",)):
        for p in map(Path, paths):
            covered.update([p] if p.is_file() else (f for pat in patterns for f in p.rglob(pat)))
        return real(*paths, patterns=patterns)

    monkeypatch.setattr(assets.router, "source_digest", spy)
    assets.router._router_inputs(pd.DataFrame({"model": ["smollm2-135m"]}), SettingsResource().get())
    # what training and evaluation import (the embedders and the Bayes prior's task_family load lazily:
    # named here)
    code = (
        "import sys, router_models.router.train, router_models.router.evaluation,"
        " router_models.router.predictors, router_models.router.artifact, pipelines.index.embeddings,"
        " pipelines.bench.outcomes\n"
        "print('\\n'.join(m.__file__ for n, m in sys.modules.items() if n.split('.')[0] == 'pipelines'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    imported = {Path(line).resolve() for line in out.stdout.split()}
    # files.py says how artifacts are written, not what they hold; the package __init__ files are empty
    ignored = {REPO_ROOT / "pipelines" / "files.py"} | {p for p in imported if p.name == "__init__.py"}
    assert REPO_ROOT / "pipelines" / "hardware.py" in imported
    assert imported - ignored <= {p.resolve() for p in covered}


def test_a_table_being_written_leaves_the_reports_fingerprint_alone(tmp_path, monkeypatch):
    """bench/*.parquet matched the hidden temp file of an atomic write: one left over re-ran the notebooks
    and changed the fingerprint for good."""
    import assets.reports

    ran: list = []

    def fake_notebooks(out, params, env=None):
        out.mkdir(parents=True, exist_ok=True)
        (out / "utility.html").write_text("<html></html>")
        ran.append(out)
        return [SimpleNamespace(name="utility", html=out / "utility.html", figures=[], seconds=1.0)]

    monkeypatch.setattr(assets.reports, "run_notebooks", fake_notebooks)
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "prompt_set.parquet").write_bytes(b"table")
    res = {"settings": SettingsResource(overrides={"run_dir": str(tmp_path)})}

    def reused() -> bool:
        result = dg.materialize([assets.reports.reports], resources=res)
        return result.asset_materializations_for_node("reports")[0].metadata["reused"].value

    assert not reused() and reused()
    (tmp_path / "bench" / ".prompt_set.parquet.k2j4x.parquet").write_bytes(b"half a table")
    assert reused() and len(ran) == 1
    (tmp_path / "bench" / "prompt_set.parquet").write_bytes(b"another table")
    assert not reused()


def test_the_model_panel_check_gates_the_nightly_bench(tmp_path, monkeypatch):
    """every_local_model_answers was blocking but nothing depended on model_panel: it gated nothing."""
    import assets.models
    import pipelines.bench.nightly

    monkeypatch.setattr("pipelines.llm.gateway.Gateway", FakeGateway)
    benched: list = []

    def fake_bench(settings, prompts, partition):
        benched.append(partition)
        raise dg.Failure("the bench itself is not tested here")

    monkeypatch.setattr(pipelines.bench.nightly, "run_benchmark_partition", fake_bench)
    (tmp_path / "bench").mkdir()
    pd.DataFrame({"prompt_id": ["p1"]}).to_parquet(tmp_path / "bench" / "prompt_set.parquet")
    job = definitions.defs.resolve_job_def("nightly_bench")
    assert dg.AssetKey("model_panel") in job.asset_layer.executable_asset_keys

    def run(rows: list[dict]):
        monkeypatch.setattr(assets.models, "panel_check", _panel(rows, []))
        return job.execute_in_process(
            partition_key="2026-11-29",
            asset_selection=[dg.AssetKey("model_panel"), dg.AssetKey("benchmark_results")],
            run_config=_settings_config(run_dir=str(tmp_path)),
            instance=dg.DagsterInstance.ephemeral(),
            raise_on_error=False,
        )

    down = run([{"model": "a", "ok": True, "latency_s": 0.1}, {"model": "b", "ok": False, "latency_s": 0.2}])
    assert not down.success and benched == []
    up = run([{"model": "a", "ok": True, "latency_s": 0.1}, {"model": "b", "ok": True, "latency_s": 0.2}])
    assert not up.success and benched == ["2026-11-29"]  # the panel answered: the bench ran (and failed)


def test_the_sensor_asks_again_when_the_ingest_run_it_requested_failed(tmp_path):
    """The cursor took the new file states when the run was requested: if that run failed, later ticks saw
    no change and the indexes stayed stale."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("Alpha.")
    res = {"settings": SettingsResource(overrides={"corpus_dir": str(docs), "run_dir": str(tmp_path)})}

    @dg.op
    def ingest(context: dg.OpExecutionContext) -> None:
        if context.run.tags.get("fail"):
            raise RuntimeError("ingest failed")

    @dg.job
    def ingest_job():
        ingest()

    with dg.instance_for_test() as instance:

        def tick(cursor):
            ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources=res)
            return new_documents_sensor.evaluate_tick(ctx)

        def launched(run_key: str, fail: bool) -> None:
            tags = {"dagster/run_key": run_key, **({"fail": "yes"} if fail else {})}
            ingest_job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)

        first = tick(None)
        launched(first.run_requests[0].run_key, fail=False)
        (docs / "b.md").write_text("Beta.")
        added = tick(first.cursor)
        (req,) = added.run_requests
        launched(req.run_key, fail=True)
        cursor, keys = added.cursor, [req.run_key]
        for n in range(1, 10):
            again = tick(cursor)
            cursor = again.cursor
            if not again.run_requests:
                break
            (retry,) = again.run_requests
            assert retry.run_key not in keys and retry.tags["stratmaster/added"] == "1"
            assert retry.tags["stratmaster/changes"].startswith(f"retry {n} of failed run")
            assert retry.tags["stratmaster/changes"].endswith("1 added: b.md")
            keys.append(retry.run_key)
            launched(retry.run_key, fail=True)
        assert len(keys) > 1, again.skip_message  # the failed run was asked for again
        # a run that keeps failing is not asked for every minute
        assert len(keys) == 1 + sensors.MAX_RETRIES
        assert f"failed {sensors.MAX_RETRIES + 1} times" in again.skip_message
        (docs / "c.md").write_text("Gamma.")  # a new change is a new request
        changed = tick(cursor)
        assert changed.run_requests[0].tags["stratmaster/changes"] == "1 added: c.md"

        # a run that succeeded, or a cursor saved before the last request was kept: nothing to ask again
        launched(changed.run_requests[0].run_key, fail=False)
        assert "no document changed" in tick(changed.cursor).skip_message
        launched(changed.run_requests[0].run_key, fail=True)  # a later run with that key failed
        old = json.loads(changed.cursor)
        del old["requested"]
        assert tick(json.dumps(old)).skip_message == f"no document changed in {docs}"
        assert tick(changed.cursor).run_requests


def test_corpus_index_and_table_data_versions_name_their_content(tmp_path, shared_data):
    """They were the run's id: every rebuild a new version though nothing changed, one version for every
    asset of a run, and the Bento's index labels (which read them) told nothing of what it held."""
    from assets import bench, rag
    from pipelines.index.base import content_version

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, topic in enumerate(["tantivy indexes", "qdrant vectors", "ladybug graphs"]):
        (corpus / f"d{i}.md").write_text(f"# Note {i}\n\nThe service keeps its {topic} under the run folder.")
    overrides = {"run_dir": str(tmp_path / "run"), "corpus_dir": str(corpus)}
    res = {"settings": SettingsResource(overrides=overrides)}
    # prompt_set: its RAG rows hold lists, which pandas cannot hash (the asset failed on its data version)
    keys = ["corpus_chunks", "keyword_index", "knowledge_graph", "routerbench_outcomes", "prompt_set"]

    def versions() -> dict[str, str]:
        assets = [rag.corpus_chunks, rag.keyword_index, rag.knowledge_graph, bench.routerbench_outcomes,
                  bench.prompt_set]  # fmt: skip
        result = dg.materialize(assets, resources=res)
        return {k: result.asset_materializations_for_node(k)[0].tags["dagster/data_version"] for k in keys}

    first = versions()
    assert len(set(first.values())) == len(keys), first
    assert versions() == first  # nothing changed: the same versions
    (corpus / "d1.md").write_text("# Note 1\n\nThe service keeps its vectors elsewhere now.")
    changed = versions()
    assert all(changed[k] != first[k] for k in keys[:3]) and changed[keys[3]] == first[keys[3]], changed
    assert content_version(["a#1"], "minilm") != content_version(["a#1"], "static")
    dense = {}  # the embedder counts in the dense index's version: another embedder embeds every chunk anew
    for embedder in ("static", "minilm", "static"):
        resources = {"settings": SettingsResource(overrides={**overrides, "embedder": embedder})}
        result = dg.materialize([rag.dense_index], resources=resources, selection=[rag.dense_index])
        version = result.asset_materializations_for_node("dense_index")[0].tags["dagster/data_version"]
        assert dense.setdefault(embedder, version) == version
    assert dense["static"] != dense["minilm"], dense
