"""`stratmaster utility fit` on a slice of the RouterBench outcomes, and the leaderboard priors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from router_models.utility.cli import app
from router_models.utility.data import outcome_table_from_files
from router_models.utility.pipeline import DIAGNOSTIC_KEYS, SUMMARY_ROW_KEYS
from router_models.utility.posterior import load_posterior
from router_models.utility.priors import SNAPSHOT_PATH, alpha_priors, leaderboard_priors, load_priors


@pytest.fixture(scope="module")
def routerbench_slice(shared_data, tmp_path_factory):
    """80 prompts per task (3 tasks x 11 models), with some scores blanked as in the source."""
    rb = shared_data / "routerbench"
    prompts = pd.read_csv(rb / "prompts_train.csv", dtype={"prompt_id": str})
    outcomes = pd.read_csv(rb / "outcomes_train.csv", dtype={"prompt_id": str})
    keep = prompts.groupby("task").head(80)
    out = outcomes[outcomes["prompt_id"].isin(keep["prompt_id"])].copy()
    out.loc[out.index[:7], "score"] = np.nan
    d = tmp_path_factory.mktemp("rb")
    keep[["prompt_id", "task", "prompt"]].to_csv(d / "prompts_s.csv", index=False)
    out.to_csv(d / "outcomes_s.csv", index=False)
    return d / "prompts_s.csv", d / "outcomes_s.csv", int(out["score"].notna().sum())


def test_outcome_table_from_routerbench_files(routerbench_slice):
    p, o, n_scored = routerbench_slice
    table = outcome_table_from_files(p, o)
    assert len(table) == n_scored and table["score"].notna().all() and table["task"].notna().all()
    assert table["task"].nunique() == 3


def test_cli_fit_writes_netcdf_and_the_summary_shape(routerbench_slice, shared_data, tmp_path):
    p, o, _ = routerbench_slice
    out = tmp_path / "fit"
    # a good fit already at --out: a failed fit was written over it (its four files replaced, unflagged)
    out.mkdir()
    good = {"summary.json": '{"good": 1}', "utility_posterior.nc": "good", "quality_forest.png": "good"}
    for name, text in good.items():
        (out / name).write_text(text)
    args = ["fit", "--prompts", str(p), "--outcomes", str(o), "--priors",
            str(shared_data / "priors" / "arena_elo.csv"), "--out", str(out),
            "--draws", "150", "--tune", "200", "--chains", "2", "--sampler", "pymc"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1, res.output  # 300 draws fail the ESS check: written, but not a success
    assert {f.name: f.read_bytes() for f in out.iterdir()} == {k: v.encode() for k, v in good.items()}
    assert f"written to {out}.failed/" in " ".join(res.output.split())
    assert sorted(f.name for f in tmp_path.iterdir()) == ["fit", "fit.failed"]  # no staging folder left
    out = tmp_path / "fit.failed"
    assert f"summary_json: {out / 'summary.json'}" in res.output
    doc = json.loads((out / "summary.json").read_text())
    assert set(doc) == {"rows", "diagnostics", "checks"}
    assert set(doc["diagnostics"]) == set(DIAGNOSTIC_KEYS)
    assert doc["checks"]["ess_bulk"] is False and doc["checks"]["prior_predictive"] is True  # says it failed
    assert len(doc["rows"]) == 3 * 11 and all(list(r) == SUMMARY_ROW_KEYS for r in doc["rows"])
    gpt4 = [r for r in doc["rows"] if r["model"] == "gpt-4-1106-preview"]
    assert all(r["quality_p05"] <= r["quality_mean"] <= r["quality_p95"] for r in gpt4)
    assert all(r["cost_usd_mean"] > 0 for r in doc["rows"])
    assert doc["diagnostics"]["fit_seconds"] > 0 and doc["diagnostics"]["divergences"] >= 0
    assert "latency contributes 0" in res.output
    assert "the fit failed its checks (" in res.output and "ess_bulk" in res.output  # 300 draws: ESS < 400
    idata = load_posterior(out / "utility_posterior.nc")
    assert idata.posterior["quality"].sizes["model"] == 11
    for png in ("quality_forest.png", "calibration.png"):
        assert (out / png).stat().st_size > 1000


def test_snapshot_names_its_sources_and_covers_the_models(shared_data):
    snap = load_priors()
    assert SNAPSHOT_PATH.exists() and snap["source"].str.len().gt(0).all()
    arena = pd.read_csv(shared_data / "priors" / "arena_elo.csv")
    assert set(arena["model"]) <= set(snap["model"])
    assert {"smollm2-135m", "gemma3-270m"} <= set(snap["model"])
    assert snap.set_index("model").loc[["smollm2-135m", "gemma3-270m"], "arena_elo"].isna().all()


def test_shared_csv_overlays_snapshot_and_unknown_models_get_weak_priors(shared_data, tmp_path):
    shared = tmp_path / "elo.csv"
    mistral = "mistralai/mistral-7b-chat"
    pd.DataFrame({"model": ["claude-v2", "gemma3-270m", mistral, mistral],
                  "arena_elo": [1200, np.nan, 1300, np.nan],
                  "source": ["newer copy", "none", "mine", "blank"]}).to_csv(shared, index=False)  # fmt: skip
    pri = leaderboard_priors(shared, models=["brand-new-model"]).set_index("model")
    assert pri.loc["claude-v2", "arena_elo"] == 1200 and pri.loc["claude-v2", "source"] == "newer copy"
    assert pri.loc["gpt-4-1106-preview", "arena_elo"] == 1252  # the snapshot fills the rest
    assert pri.loc[mistral, "arena_elo"] == 1300  # a blank repeat undid it: the snapshot's 1006 was used
    assert np.isnan(pri.loc["brand-new-model", "arena_elo"])
    ap = alpha_priors(
        pri.reset_index(), ["gpt-4-1106-preview", "WizardLM/WizardLM-13B-V1.2", "brand-new-model"]
    )
    assert list(ap["has_figure"]) == [True, False, False]
    assert ap["alpha_sigma"].iloc[1] == ap["alpha_sigma"].iloc[2] > ap["alpha_sigma"].iloc[0]


def test_a_rerun_on_the_same_data_reads_the_fit_and_a_change_refits(routerbench_slice, shared_data, tmp_path):
    from router_models.utility.model import FitConfig
    from router_models.utility.pipeline import fit_posterior, register_posterior
    from router_models.utility.registry import read_current, registry_engine

    p, o, _ = routerbench_slice
    table = outcome_table_from_files(p, o)
    priors = load_priors(shared_data / "priors" / "arena_elo.csv")
    # 50 tuning steps leave NUTS at its maximum tree depth: 200 take half the time of 50 on this slice
    cfg = FitConfig(draws=50, tune=200, chains=2, sampler="pymc", prior_predictive_draws=20)
    url = f"sqlite:///{tmp_path / 'registry.sqlite'}"
    first = fit_posterior(table, priors, tmp_path / "fit", cfg, 1.0, 0.0, reuse=True)
    assert not first.checks["ess_bulk"]  # 2 x 50 draws: too few for a fit to use
    with pytest.raises(ValueError, match="failed its checks.*ess_bulk"):
        register_posterior(first, url)  # refused: the registry stays as it was
    assert not (tmp_path / "registry.sqlite").exists()
    first_id = register_posterior(first, url, allow_failed=True)
    stamp = (tmp_path / "fit" / "utility_posterior.nc").stat().st_mtime_ns
    again = fit_posterior(table, priors, tmp_path / "fit", cfg, 1.0, 0.0, reuse=True)
    assert again.fit.prior_check.get("reused") and any("reused" in n for n in again.notes)
    assert (tmp_path / "fit" / "utility_posterior.nc").stat().st_mtime_ns == stamp  # not written again
    pd.testing.assert_frame_equal(again.summary, first.summary)
    assert again.fit.diagnostics == first.fit.diagnostics
    # the prior predictive check is one of the checks; a reused fit keeps its report, not only "reused"
    assert again.checks == first.checks and "prior_predictive" in again.checks
    assert {k: v for k, v in again.fit.prior_check.items() if k != "reused"} == first.fit.prior_check
    assert register_posterior(again, url, allow_failed=True) == first_id  # the same fit stays current
    reseeded = FitConfig(**{**cfg.__dict__, "seed": 7})
    changed = fit_posterior(table, priors, tmp_path / "fit", reseeded, 1.0, 0.0, reuse=True)
    assert "reused" not in changed.fit.prior_check and changed.fit.fit_hash != first.fit.fit_hash
    assert register_posterior(changed, url, allow_failed=True) != first_id
    # the same fit with another cost weight: read, not refitted, but its utilities are new registry rows
    pricier = fit_posterior(table, priors, tmp_path / "fit", reseeded, 1000.0, 0.0, reuse=True)
    assert pricier.fit.prior_check.get("reused") and pricier.fit.fit_hash == changed.fit.fit_hash
    pricier_id = register_posterior(pricier, url, allow_failed=True)
    assert pricier_id not in (first_id, register_posterior(changed, url, allow_failed=True))
    rows = read_current(registry_engine(url)).set_index(["task", "model"])["utility_mean"].sort_index()
    assert np.allclose(rows, changed.summary.set_index(["task", "model"])["utility_mean"].sort_index())


def test_infinite_or_negative_numbers_and_out_of_range_scores_are_refused(routerbench_slice, tmp_path):
    """inf failed the fit with a sampler's or PyMC's traceback; a negative cost read as a free call; the
    RouterBench import took a score of 7 (an accuracy of 7.000), a repeated row and an orphan prompt."""
    from pipelines.bench.outcomes import routerbench_outcome_table

    p, o, _ = routerbench_slice
    table = pd.read_csv(o, dtype={"prompt_id": str})
    for value in ("inf", -1.0):
        cost = table["cost_usd"].astype(object).where(table.index != 4, value)
        with pytest.raises(ValueError, match="cost_usd .* is not a finite number >= 0"):
            outcome_table_from_files(p, _written(table.assign(cost_usd=cost), tmp_path / "bad.csv"))
    elo = pd.read_csv(SNAPSHOT_PATH)
    _written(elo.astype({"arena_elo": object}).assign(arena_elo="inf"), tmp_path / "elo.csv")
    with pytest.raises(ValueError, match="arena_elo must be a finite number"):
        load_priors(tmp_path / "elo.csv")
    rb = tmp_path / "rb"
    rb.mkdir()
    pd.read_csv(p).to_csv(rb / "prompts_train.csv", index=False)
    scored = table.dropna(subset=["score"])
    ghost = scored.head(1).assign(prompt_id="ghost")
    for broken, needle in ((table.assign(score=table["score"].where(table.index != 2, 7)), "outside"),
                           (pd.concat([table, scored.head(1)]), "pairs have several rows"),
                           (pd.concat([table, ghost]), "are not in")):  # fmt: skip
        broken.to_csv(rb / "outcomes_train.csv", index=False)
        with pytest.raises(ValueError, match=needle):
            routerbench_outcome_table(rb)


def test_bad_files_are_one_line_errors(routerbench_slice, tmp_path):
    """A blank model name, a non-numeric score or a missing priors file was a 24-134-line traceback or,
    for the priors, silently ignored."""
    p, o, _ = routerbench_slice
    table = pd.read_csv(o)
    for name, broken in {
        "blank": table.assign(model=table["model"].where(table.index != 3, "")),
        "text": table.assign(score=table["score"].astype(object).where(table.index != 5, "x")),
    }.items():
        path = tmp_path / f"{name}.csv"
        broken.to_csv(path, index=False)
        args = ["fit", "--prompts", str(p), "--outcomes", str(path), "--out", str(tmp_path)]
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert ("has no model" if name == "blank" else "score 'x' is not a number") in res.output
    # a repeated prompt counted its outcome rows twice; outcomes of prompts not in the file were dropped
    prompts = pd.read_csv(p)
    pd.concat([prompts, prompts.head(1)]).to_csv(tmp_path / "dup.csv", index=False)
    pd.concat([table, table.head(1).assign(prompt_id="ghost")]).to_csv(tmp_path / "ghost.csv", index=False)
    # repeated outcome rows were twice the evidence; a prompt with a blank task lost its rows unsaid
    scored = table.dropna(subset=["score"])
    pd.concat([table, scored.head(2)]).to_csv(tmp_path / "twice.csv", index=False)
    retried = pd.concat([scored.head(1).assign(score=np.nan), table])  # a failed call, then its scored retry
    assert len(outcome_table_from_files(p, _written(retried, tmp_path / "retried.csv"))) == len(
        outcome_table_from_files(p, o)
    )
    prompts.assign(task=prompts["task"].where(prompts.index != 0, " ")).to_csv(
        tmp_path / "notask.csv", index=False
    )
    cases = (
        (tmp_path / "dup.csv", o, "repeats prompt_id"),
        (p, tmp_path / "ghost.csv", "not in"),
        (p, tmp_path / "twice.csv", "2 (prompt_id, model) pairs have several rows"),
        (tmp_path / "notask.csv", o, "outcome rows have no task"),
    )
    for pr, oc, needle in cases:
        args = ["fit", "--prompts", str(pr), "--outcomes", str(oc), "--out", str(tmp_path)]
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2 and needle in res.output, res.output
    args = [
        "fit",
        "--outcomes",
        str(o),
        "--prompts",
        str(p),
        "--priors",
        "/no/such.csv",
        "--out",
        str(tmp_path),
    ]
    assert CliRunner().invoke(app, args).exit_code == 2
    (tmp_path / "a-file").write_text("")  # an --out that is a file failed only after the whole fit
    res = CliRunner().invoke(
        app, ["fit", "--prompts", str(p), "--outcomes", str(o), "--out", str(tmp_path / "a-file")]
    )
    assert res.exit_code == 2 and "is a file, not a folder" in res.output, res.output
    # a leaderboard figure that is no number, or a misnamed column, gave a weak prior unsaid
    for name, text in {
        "comma": 'model,arena_elo\ngpt-4-1106-preview,"1,050"\n',
        "column": "model,elo\nx,1000\n",
    }.items():
        (tmp_path / f"{name}.csv").write_text(text)
        args[args.index("--priors") + 1] = str(tmp_path / f"{name}.csv")
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2 and ("1,050" in res.output or "'arena_elo' column" in res.output), (
            res.output
        )
    # an empty or non-UTF-8 priors file: pandas' message, without the file's name
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "latin1.csv").write_bytes("model,arena_elo\ncaf\u00e9,1000\n".encode("latin-1"))
    for name in ("empty.csv", "latin1.csv"):
        args[args.index("--priors") + 1] = str(tmp_path / name)
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2 and f"{tmp_path / name}: " in res.output, res.output


def test_a_bad_setting_is_left_to_the_console_scripts_one_line_per_field(routerbench_slice, tmp_path):
    """`utility fit` caught a bad SM_ setting as any ValueError and printed pydantic's multi-line dump."""
    from pydantic import ValidationError

    p, o, _ = routerbench_slice
    args = ["fit", "--prompts", str(p), "--outcomes", str(o), "--out", str(tmp_path / "fit")]
    res = CliRunner().invoke(app, args, env={"SM_LAMBDA_COST": "-1"})
    assert isinstance(res.exception, ValidationError) and res.exception.title == "Settings"


def test_fit_inputs_in_memory_are_checked_as_files_are(tmp_path):
    """The asset hands the fit tables in memory, past the file reader's checks: an infinite cost failed
    inside PyMC's sampler ("Initial evaluation of model at starting point failed"), a negative one was
    counted as a free call; a priors row "m1 " lost m1's leaderboard prior, unsaid."""
    from router_models.utility.data import cell_data
    from router_models.utility.simulate import simulate_outcomes

    df, _ = simulate_outcomes(["t0"], ["gpt-4-1106-preview", "m1"], 5, seed=0, latency=True)
    cases = (("cost_usd", np.inf), ("cost_usd", -0.001), ("cost_usd", "1,050"), ("cost_usd", "$0.01"),
             ("latency_s", np.nan), ("latency_s", -np.inf))  # fmt: skip
    for col, value in cases:
        bad = df.assign(**{col: df[col].astype(object).where(df.index != 3, value)})
        if value is np.nan:  # blank: no observation, as before
            assert cell_data(bad).cells["latency_n"].sum() == cell_data(df).cells["latency_n"].sum() - 1
            continue
        with pytest.raises(ValueError, match=f"{col} must be a finite number >= 0 or blank: 1 rows"):
            cell_data(bad)
    elo = pd.read_csv(SNAPSHOT_PATH)
    first = elo["model"].iloc[0]
    _written(elo.assign(model=elo["model"].where(elo.index != 0, f" {first} ")), tmp_path / "elo.csv")
    table = alpha_priors(load_priors(tmp_path / "elo.csv"), [first], 0.5, 1.5)
    assert bool(table.set_index("model").loc[first, "has_figure"])


def test_the_registry_data_version_names_the_priors_too():
    """Two fits of the same outcomes on other leaderboard figures were registered with one data_version."""
    from router_models.utility.data import cell_data
    from router_models.utility.model import FitConfig, UtilityFit
    from router_models.utility.simulate import simulate_outcomes

    df, _ = simulate_outcomes(["t0"], ["gpt-4-1106-preview", "m1"], 5, seed=0)
    data = cell_data(df)

    def version(elo: float) -> str:
        priors = pd.DataFrame({"model": ["gpt-4-1106-preview", "m1"], "arena_elo": [elo, 1100.0],
                               "arena_name": "", "source": "", "snapshot": "x"})  # fmt: skip
        table = alpha_priors(priors, data.models, 0.5, 1.5)
        return UtilityFit(None, data, table, FitConfig(), {}, {}).data_version

    assert version(1252.0) == version(1252.0) != version(900.0)
    assert len(version(900.0)) <= 64  # the registry's column


def _written(df: pd.DataFrame, path):
    df.to_csv(path, index=False)
    return path


def test_an_out_that_cannot_be_written_or_one_chain_is_refused_before_the_fit(routerbench_slice, tmp_path):
    """An --out below a file failed only after the whole NUTS fit (hours at the default draws); one chain
    always failed r_hat's check, after the whole fit too."""
    p, o, _ = routerbench_slice
    (tmp_path / "a-file").write_text("")
    base = ["fit", "--prompts", str(p), "--outcomes", str(o), "--draws", "20", "--tune", "20"]
    res = CliRunner().invoke(app, [*base, "--chains", "2", "--out", str(tmp_path / "a-file" / "fit")])
    assert res.exit_code == 2 and "cannot write beside it" in res.output, res.output
    assert "outcome rows" not in res.output and len(res.output.strip().splitlines()) == 1  # no fit ran
    res = CliRunner().invoke(app, [*base, "--chains", "1", "--out", str(tmp_path / "fit")])
    assert res.exit_code == 2 and "--chains" in res.output, res.output
    # values --help allowed: a Rust panic (nutpie, no tuning) and an OverflowError, after the compile
    for extra, said in ((["--tune", "0"], "nutpie needs at least 1 tuning step, not 0"),
                        (["--seed", str(2**64)], "--seed"), (["--seed", "-1"], "--seed")):  # fmt: skip
        res = CliRunner().invoke(app, [*base, *extra, "--chains", "2", "--out", str(tmp_path / "fit")])
        assert res.exit_code == 2 and said in res.output and "Traceback" not in res.output, res.output
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a-file"]


def test_a_fit_that_passes_its_checks_replaces_the_previous_one(routerbench_slice, tmp_path, monkeypatch):
    """The move into --out once the checks pass (a fit that passes them takes minutes: the verdict is the
    only thing set here): the fit's files are replaced, other files in the folder and a .failed folder beside
    it are left alone."""
    from router_models.utility.pipeline import PosteriorArtifacts

    p, o, _ = routerbench_slice
    out = tmp_path / "fit"
    out.mkdir()
    (out / "summary.json").write_text('{"old": 1}')
    (out / "notes.txt").write_text("mine")
    (tmp_path / "fit.failed").mkdir()
    monkeypatch.setattr(PosteriorArtifacts, "failed_checks", property(lambda self: []))
    args = ["fit", "--prompts", str(p), "--outcomes", str(o), "--out", str(out),
            "--draws", "20", "--tune", "20", "--chains", "2", "--sampler", "pymc"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    names = {"utility_posterior.nc", "summary.json", "quality_forest.png", "calibration.png", "plots.json"}
    assert {f.name for f in out.iterdir()} == names | {"notes.txt"}  # plots.json: the fit the plots show
    assert set(json.loads((out / "summary.json").read_text())) == {"rows", "diagnostics", "checks"}
    assert sorted(f.name for f in tmp_path.iterdir()) == ["fit", "fit.failed"]
    assert (out / "notes.txt").read_text() == "mine"
    for name in names:  # readable by others, as a plain write leaves them (mkdtemp's folder is owner-only)
        assert (out / name).stat().st_mode & 0o044, name


def test_a_reused_fit_shows_its_own_plots_after_a_refit_stopped_midway(tmp_path, monkeypatch):
    """A refit stopped while drawing left the new fit's NetCDF beside the old fit's plots; the next run
    reused the NetCDF and kept the plots, so the asset showed one fit's figures with another's summary."""
    import hashlib

    import router_models.utility.pipeline as up
    from router_models.utility.model import FitConfig

    cfg = FitConfig(draws=50, tune=50, chains=2, cores=1, sampler="pymc", prior_predictive_draws=20)
    rng = np.random.default_rng(0)

    def table(rates: dict[str, float]) -> pd.DataFrame:
        return pd.DataFrame(
            {"prompt_id": f"{t}{i}", "task": t, "model": m, "score": float(rng.random() < rates[m]),
             "cost_usd": 0.001 if m == "a" else 0.0001, "latency_s": np.nan}
            for t in ("qa", "code") for m in ("a", "b") for i in range(20)
        )  # fmt: skip

    out = tmp_path / "fit"
    digest = lambda: [hashlib.sha256((out / f).read_bytes()).hexdigest() for f in ("quality_forest.png",)]  # noqa: E731
    up.fit_posterior(table({"a": 0.9, "b": 0.2}), None, out, cfg, 100.0, 0.0, reuse=True)
    first = digest()
    b = table({"a": 0.2, "b": 0.9})

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt("the run was terminated while drawing")

    monkeypatch.setattr(up, "forest_plot", stopped)
    with pytest.raises(KeyboardInterrupt):
        up.fit_posterior(b, None, out, cfg, 100.0, 0.0, reuse=True)
    monkeypatch.undo()
    art = up.fit_posterior(b, None, out, cfg, 100.0, 0.0, reuse=True)
    assert any("reused" in n for n in art.notes) and digest() != first  # B's NetCDF, drawn anew
    drawn = digest()
    stamp = (out / "quality_forest.png").stat().st_mtime_ns
    up.fit_posterior(b, None, out, cfg, 100.0, 0.0, reuse=True)
    assert digest() == drawn and (out / "quality_forest.png").stat().st_mtime_ns == stamp  # not drawn again


def test_outcomes_keep_their_own_task_when_the_prompts_have_none(tmp_path):
    """With a prompts file of no `task` column, the outcomes' own task was dropped before the join, and the
    error said the outcomes carried none."""
    (tmp_path / "p.csv").write_text("prompt_id,prompt\np1,q1\np2,q2\n")
    (tmp_path / "o.csv").write_text(
        "prompt_id,model,score,cost_usd,task\np1,m1,1,0.001,arc-challenge\np2,m1,0,0.001,winogrande\n"
    )
    table = outcome_table_from_files(tmp_path / "p.csv", tmp_path / "o.csv")
    assert sorted(table["task"]) == ["arc-challenge", "winogrande"]
    (tmp_path / "o.csv").write_text("prompt_id,model,score,cost_usd\np1,m1,1,0.001\n")
    with pytest.raises(ValueError, match="neither .*o.csv nor .*p.csv has a `task` column"):
        outcome_table_from_files(tmp_path / "p.csv", tmp_path / "o.csv")


def test_the_calibration_check_reads_prompts_the_fit_did_not_see(tmp_path):
    """The check compared each cell's rate with the posterior predictive of a fit that had seen the cell:
    nearly every cell was inside by construction. Here the prompts the check holds out are answered far
    better than the others, which a fit on the others cannot predict: in sample every cell passed."""
    from router_models.utility.model import FitConfig
    from router_models.utility.pipeline import fit_posterior, held_out

    rng = np.random.default_rng(0)
    ids = pd.Series([f"p{i}" for i in range(240)])
    held = held_out(ids, 0.2)
    assert 0.1 < held.mean() < 0.3 and held.equals(held_out(ids, 0.2))  # the same prompts every time
    rows = [
        {"prompt_id": pid, "task": task, "model": m, "cost_usd": 0.001, "latency_s": np.nan,
         "score": 1.0 if out else float(rng.random() < 0.4)}
        for pid, out in zip(ids, held, strict=True) for task in ("qa", "math") for m in ("a", "b")
    ]  # fmt: skip
    table = pd.DataFrame(rows)
    cfg = FitConfig(draws=200, tune=300, chains=2, sampler="pymc", prior_predictive_draws=20)
    art = fit_posterior(table, None, tmp_path / "fit", cfg, 1.0, 0.0)
    assert "calibration: " in art.notes[0] and "held out of a second fit" in art.notes[0]
    assert art.calibration["n"].sum() == 4 * held.sum()  # the held-out rows only
    assert (art.calibration["observed_rate"] == 1.0).all() and not art.calibration["calibrated"].any()
    assert not art.checks["calibration"]
    # in sample, as before: every cell inside
    insample = fit_posterior(
        table, None, tmp_path / "in", FitConfig(**{**cfg.__dict__, "holdout": 0.0}), 1.0, 0.0
    )
    assert insample.notes[0] == "calibration: in sample" and insample.checks["calibration"]
    # a reused fit keeps its held-out table (saved with the NetCDF), not one made again in sample
    again = fit_posterior(table, None, tmp_path / "fit", cfg, 1.0, 0.0, reuse=True)
    assert any("reused" in n for n in again.notes) and again.notes[0] == art.notes[0]
    pd.testing.assert_frame_equal(again.calibration, art.calibration, check_dtype=False)


def test_a_held_out_fit_that_fails_leaves_the_fit_and_checks_in_sample(tmp_path, monkeypatch):
    """The second fit was unguarded: raising there lost the finished fit; and held-out rows without a score
    (blanks in the source) made an empty table that failed the check."""
    import router_models.utility.pipeline as up
    from router_models.utility.model import FitConfig

    rng = np.random.default_rng(1)
    ids = pd.Series([f"q{i}" for i in range(60)])
    table = pd.DataFrame(
        [{"prompt_id": pid, "task": "qa", "model": m, "cost_usd": 0.001, "latency_s": np.nan,
          "score": float(rng.random() < 0.6)} for pid in ids for m in ("a", "b")]
    )  # fmt: skip
    cfg = FitConfig(draws=100, tune=200, chains=2, sampler="pymc", prior_predictive_draws=20)
    real, calls = up.fit_utility, []

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the sampler ran out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(up, "fit_utility", second_fails)
    art = up.fit_posterior(table, None, tmp_path / "fit", cfg, 1.0, 0.0)
    assert (
        art.notes[0]
        == "calibration: in sample (the held-out fit failed: RuntimeError: the sampler ran out of memory)"
    )
    assert (tmp_path / "fit" / "utility_posterior.nc").exists() and art.checks["calibration"]
    monkeypatch.setattr(up, "fit_utility", real)
    held = up.held_out(table["prompt_id"], cfg.holdout)
    blanked = table.assign(score=table["score"].where(~held))  # the held-out prompts' rows unscored
    art = up.fit_posterior(blanked, None, tmp_path / "blanked", cfg, 1.0, 0.0)
    assert art.notes[0] == "calibration: in sample" and len(art.calibration) == 2


def test_rows_without_a_score_are_counted_and_a_model_left_with_none_is_named(routerbench_slice, tmp_path):
    """Blank scores were dropped without a word, and a model whose scores were all blank left the fit so."""
    p, o, _ = routerbench_slice
    table = pd.read_csv(o, dtype={"prompt_id": str})
    gone = "claude-v2"
    table.loc[table["model"] == gone, "score"] = np.nan
    blank = int(table["score"].isna().sum())
    # --tune 0 is refused once the table is read, before any fit: the warning is all that runs
    args = ["fit", "--prompts", str(p), "--outcomes", str(_written(table, tmp_path / "o.csv")),
            "--tune", "0", "--out", str(tmp_path / "fit")]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "nutpie needs at least 1 tuning step" in res.output, res.output
    said = f"warning: {blank} rows of {tmp_path / 'o.csv'} have no score and are left out"
    said += f"; not fitted, no scored row: {gone}"
    assert said in res.stderr, res.stderr


def test_a_fit_replaces_the_one_at_out_whole_or_not_at_all(tmp_path, monkeypatch):
    """The fit's files replaced their namesakes one at a time: where one could not be (a permission, a full
    disk), --out held files of two fits (new plots beside the old posterior) and the new fit was deleted."""
    import os

    from router_models.utility import cli

    src, dest = tmp_path / ".staging", tmp_path / "out"
    src.mkdir(), dest.mkdir()
    for name in ("calibration.png", "summary.json", "utility_posterior.nc"):
        (src / name).write_text(f"new {name}")
        (dest / name).write_text(f"old {name}")
    (dest / "notes.txt").write_text("the user's")
    real, calls = os.replace, []

    def failing(a, b):  # the third new file cannot be written, once (a full disk, say)
        calls.append(b)
        if str(b).endswith("out/utility_posterior.nc") and calls.count(b) == 1:
            raise PermissionError(1, "Operation not permitted", str(b))
        real(a, b)

    monkeypatch.setattr(cli.os, "replace", failing)
    with pytest.raises(PermissionError):
        cli._move_files(src, dest)
    assert {p.name: p.read_text() for p in dest.iterdir()} == {
        "calibration.png": "old calibration.png", "summary.json": "old summary.json",
        "utility_posterior.nc": "old utility_posterior.nc", "notes.txt": "the user's",
    }  # fmt: skip
    assert {p.name: p.read_text() for p in src.iterdir()} == {
        n: f"new {n}" for n in ("calibration.png", "summary.json", "utility_posterior.nc")
    }
    monkeypatch.setattr(cli.os, "replace", real)
    cli._move_files(src, dest)  # and with nothing in the way, every file is the new fit's
    assert {p.name: p.read_text()[:3] for p in dest.iterdir()} == {
        "calibration.png": "new", "summary.json": "new", "utility_posterior.nc": "new", "notes.txt": "the",
    }  # fmt: skip
    assert not list(src.iterdir())


def test_a_table_without_costs_is_said_to_leave_cost_out_of_utility(tmp_path):
    """An outcome table whose cost column is missing (misnamed, say) made utility the quality alone, unsaid;
    a missing latency was said."""
    import router_models.utility.pipeline as up
    from router_models.utility.model import FitConfig

    rng = np.random.default_rng(2)
    table = pd.DataFrame(
        {"prompt_id": f"q{i}", "task": "qa", "model": m, "score": float(rng.random() < 0.6)}
        for i in range(30) for m in ("a", "b")
    )  # fmt: skip
    cfg = FitConfig(draws=50, tune=50, chains=2, cores=1, sampler="pymc", prior_predictive_draws=20)
    art = up.fit_posterior(table, None, tmp_path / "fit", cfg, 100.0, 0.0)
    assert "no cost observations (no cost_usd values): cost contributes 0 to utility" in art.notes, art.notes
    assert np.allclose(art.summary["utility_mean"], art.summary["quality_mean"])
