"""Tables and folders `router train | predict | evaluate` must refuse with a one-line error (exit code 2),
on a small RouterBench slice: each was accepted, or was a traceback, before."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from router_models.router import metrics
from router_models.router.artifact import ArtifactError, load_router
from router_models.router.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def tables(shared_data):
    """Train: 20 prompts per task; test: 10 other prompts per task, with their outcome rows."""
    rb = shared_data / "routerbench"
    prompts = pd.read_csv(rb / "prompts_train.csv", dtype={"prompt_id": str})[["prompt_id", "task", "prompt"]]
    outcomes = pd.read_csv(rb / "outcomes_train.csv", dtype={"prompt_id": str})
    shuffled = prompts.sample(frac=1.0, random_state=3)
    train = shuffled.groupby("task").head(20)
    test = shuffled.drop(train.index).groupby("task").head(10)
    return {
        "train": (train, outcomes[outcomes.prompt_id.isin(train.prompt_id)].reset_index(drop=True)),
        "test": (test, outcomes[outcomes.prompt_id.isin(test.prompt_id)].reset_index(drop=True)),
    }


def _said(res) -> str:
    assert res.exit_code == 2, res.output  # a traceback exits with 1, an accepted table with 0
    return " ".join(re.sub("[│─╭╮╰╯]", " ", res.output).split())  # typer's error box wraps the message


def _train(tables, tmp_path, out, prompts=None, outcomes=None):
    p, o = tables["train"]
    (p if prompts is None else prompts).to_csv(tmp_path / "tp.csv", index=False)
    (o if outcomes is None else outcomes).to_csv(tmp_path / "to.csv", index=False)
    args = ["train", "--prompts", str(tmp_path / "tp.csv"), "--outcomes", str(tmp_path / "to.csv"),
            "--out", str(out), "--embedder", "static", "--predictor", "global_mean"]  # fmt: skip
    return runner.invoke(app, args, env={"SM_RUN_DIR": str(tmp_path / "run")})


@pytest.fixture(scope="module")
def router(tables, tmp_path_factory):
    d = tmp_path_factory.mktemp("router_errors")
    res = _train(tables, d, d / "router")
    assert res.exit_code == 0, res.output
    return d / "router"


def _evaluate(router, tables, tmp_path, outcomes):
    p, _ = tables["test"]
    p[["prompt_id", "prompt"]].to_csv(tmp_path / "p.csv", index=False)
    outcomes.to_csv(tmp_path / "o.csv", index=False)
    args = ["evaluate", "--router", str(router), "--prompts", str(tmp_path / "p.csv")]
    return runner.invoke(app, [*args, "--outcomes", str(tmp_path / "o.csv")])


def test_evaluate_refuses_an_outcome_table_missing_prompt_model_pairs(router, tables, tmp_path):
    """Missing rows were NaN costs: the hull sorted NaN points, and AIQ changed from one run to the next."""
    _, o = tables["test"]
    gaps = o.drop(index=o.index[::9])
    said = _said(_evaluate(router, tables, tmp_path, gaps))
    assert f"{len(o) - len(gaps)} of the {len(o)} prompt x model pairs have no outcome row" in said
    with pytest.raises(ValueError, match="no outcome row with a cost_usd"):
        metrics.summary(o.rename(columns={"score": "predicted_score"}), gaps)
    with pytest.raises(ValueError, match="not finite numbers"):
        metrics.hull_area([(1.0, 0.5), (np.nan, 0.7), (2.0, 0.6)], 0.0, 2.0)


def test_train_does_not_replace_a_folder_that_is_not_a_router(router, tables, tmp_path):
    """A folder with any manifest.json was deleted; an older router's folder is still replaced."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.json").write_text(json.dumps({"name": "my model", "files": ["weights.bin"]}))
    (foreign / "weights.bin").write_bytes(b"precious")
    assert "refusing to overwrite" in _said(_train(tables, tmp_path, foreign))
    assert sorted(f.name for f in foreign.iterdir()) == ["manifest.json", "weights.bin"]
    (tmp_path / "notes.txt").write_text("precious")  # a file: moved away and deleted by the next save
    assert "refusing to overwrite" in _said(_train(tables, tmp_path, tmp_path / "notes.txt"))
    assert (tmp_path / "notes.txt").read_text() == "precious"
    old = tmp_path / "old"
    shutil.copytree(router, old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "format_version": 0}))
    res = _train(tables, tmp_path, old)
    assert res.exit_code == 0, res.output
    assert load_router(old).models == load_router(router).models


def test_train_refuses_a_model_scored_without_costs(tables, tmp_path):
    """It was trained as free, and manifest.json held a bare NaN."""
    _, o = tables["train"]
    free = o.assign(cost_usd=o["cost_usd"].where(o["model"] != "claude-v2"))
    assert "scored outcome rows have no cost_usd" in _said(
        _train(tables, tmp_path, tmp_path / "r", outcomes=free)
    )
    assert not (tmp_path / "r").exists()


def test_evaluate_refuses_scores_and_costs_out_of_range(router, tables, tmp_path):
    _, o = tables["test"]
    cases = [
        (o.assign(score=o["score"] * 10), "outcome column 'score' needs numbers in [0, 1]"),
        (o.assign(cost_usd=-o["cost_usd"]), "is not a finite number >= 0"),
    ]
    for outcomes, needle in cases:
        assert needle in _said(_evaluate(router, tables, tmp_path, outcomes))


def test_evaluate_refuses_outcomes_sharing_fewer_than_two_models_with_the_router(router, tables, tmp_path):
    """Upper-cased names matched none of the router's models; one model gave a null AIQ and a warning."""
    _, o = tables["test"]
    upper = o.assign(model=o["model"].str.upper())
    assert "shares 0 models with the router" in _said(_evaluate(router, tables, tmp_path, upper))
    one = o[o["model"] == "claude-v2"]
    assert "at least two models" in _said(_evaluate(router, tables, tmp_path, one))


def _predict(router, tmp_path):
    args = ["predict", "--router", str(router), "--prompts", str(tmp_path / "p.csv")]
    return runner.invoke(app, [*args, "--out", str(tmp_path / "x.csv")])


def test_a_malformed_manifest_is_an_artifact_error(router, tables, tmp_path):
    """`[]` was an AttributeError, a manifest without `files` a KeyError."""
    manifest = json.loads((router / "manifest.json").read_text())
    p, _ = tables["test"]
    p.to_csv(tmp_path / "p.csv", index=False)
    for content, needle in [
        ([], "is a JSON list"),
        ({k: v for k, v in manifest.items() if k != "files"}, "['files']"),
    ]:
        bad = tmp_path / f"bad{len(content)}"
        shutil.copytree(router, bad)
        (bad / "manifest.json").write_text(json.dumps(content))
        with pytest.raises(ArtifactError, match=re.escape(needle)):
            load_router(bad)
        assert needle in _said(_predict(bad, tmp_path))


def test_a_file_the_manifest_does_not_check_or_models_out_of_step_are_artifact_errors(router, tmp_path):
    """Only the files the manifest listed were checked: with rules.yaml left out of it, an emptied rules.yaml
    (no PII rule) loaded; a manifest whose models were not the predictor's loaded and failed in route()."""
    manifest = json.loads((router / "manifest.json").read_text())
    unlisted = {**manifest, "files": {k: v for k, v in manifest["files"].items() if k != "rules.yaml"}}
    for name, content, needle in [
        ("unlisted", unlisted, "lists no checksum for rules.yaml"),
        ("nothing", {**manifest, "files": {}}, "lists no checksum for predictor.npz, task_classifier.npz"),
        ("models", {**manifest, "models": manifest["models"][:-1]}, "models are not the predictor's"),
    ]:
        bad = tmp_path / name
        shutil.copytree(router, bad)
        if name != "models":  # the PII rule gone from a file no checksum covers
            (bad / "rules.yaml").write_text("version: 1\nrules: []\n")
        (bad / "manifest.json").write_text(json.dumps(content))
        with pytest.raises(ArtifactError, match=re.escape(needle)):
            load_router(bad)


def test_train_refuses_repeated_prompt_ids_and_pairs_like_evaluate(tables, tmp_path):
    p, o = tables["train"]
    said = _said(_train(tables, tmp_path, tmp_path / "r", prompts=pd.concat([p, p.head(1)])))
    assert f"repeats prompt_id {p['prompt_id'].iloc[0]!r}" in said
    said = _said(_train(tables, tmp_path, tmp_path / "r", outcomes=pd.concat([o, o.head(2)])))
    assert "repeats 2 (prompt_id, model) pairs" in said
    assert not (tmp_path / "r").exists()


def test_evaluate_always_draws_its_plot_and_prints_its_figures_when_it_cannot(router, tables, tmp_path):
    """The Pareto plot was drawn only with --plot, and a --plot that could not be written lost the figures."""
    p, o = tables["test"]
    p[["prompt_id", "prompt"]].to_csv(tmp_path / "p.csv", index=False)
    o.to_csv(tmp_path / "o.csv", index=False)
    args = ["evaluate", "--router", str(router), "--prompts", str(tmp_path / "p.csv"),
            "--outcomes", str(tmp_path / "o.csv")]  # fmt: skip
    res = runner.invoke(app, args, env={"SM_RUN_DIR": str(tmp_path / "run")})
    assert res.exit_code == 0, res.output
    drawn = tmp_path / "run" / "router_eval" / f"{router.name}.png"
    assert json.loads(res.stdout)["plot"] == str(drawn) and drawn.stat().st_size > 1000
    (tmp_path / "a-file").write_text("")
    res = runner.invoke(app, [*args, "--plot", str(tmp_path / "a-file" / "pareto.png")])
    assert res.exit_code == 2 and "the Pareto plot was not written" in res.stderr, res.output
    assert json.loads(res.stdout)["aiq"] > 0
    res = runner.invoke(app, args, env={"SM_RUN_DIR": str(tmp_path / "a-file")})  # not asked for: a warning
    assert res.exit_code == 0 and "warning: the Pareto plot was not written" in res.stderr, res.output
    assert json.loads(res.stdout)["plot"] is None


def test_models_of_one_mean_cost_are_an_error_not_a_null_aiq_nor_a_nan_manifest(router, tables, tmp_path):
    """Every model at one price (local models the catalog prices at 0): evaluate printed null AIQ and gap
    with a RuntimeWarning and exit 0, and train wrote `"achieved_fraction": NaN` into manifest.json."""
    _, o = tables["test"]
    res = _evaluate(router, tables, tmp_path, o.assign(cost_usd=0.001))
    assert res.exit_code == 2 and json.loads(res.stdout)["aiq"] is None, res.output
    assert res.stderr.strip() == (
        f"error: AIQ and gap recovered are undefined for {tmp_path / 'o.csv'}: they integrate over the range "
        f"of the single models' mean costs, and all {o['model'].nunique()} cost $0.001 a prompt"
    )
    _, t = tables["train"]
    res = _train(tables, tmp_path, tmp_path / "free", outcomes=t.assign(cost_usd=0.0))
    assert res.exit_code == 0, res.output
    text = (tmp_path / "free" / "manifest.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"manifest.json holds {c}, which is not JSON"))


def test_a_best_model_that_costs_nothing_gives_no_infinity_in_json():
    """The router reaching the best model's quality only at a cost, where that model costs nothing: the cost
    ratio is infinite (as in the reference) and came with a RuntimeWarning, evaluate printed `Infinity`
    (not JSON), and the gate's ratios were infinite or NaN with warnings."""
    import warnings

    from router_models.router.cli import finite_or_null
    from router_models.router.evaluation import utility_gate

    rows = [
        {"prompt_id": str(i), "model": m, "score": float(s), "cost_usd": c}
        for i in range(20)
        for m, s, c in (("free", i < 12, 0.0), ("paid", i >= 10, 0.01))
    ]
    table = pd.DataFrame(rows)
    pred = table.rename(columns={"score": "predicted_score", "cost_usd": "predicted_cost_usd"})
    pred.loc[pred["model"] == "free", "predicted_cost_usd"] = 0.02  # the router thinks the free one dear
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = metrics.summary(pred, table)
        gate = utility_gate(pred, table, lambda_cost=100.0)
    assert result["best_single"] == "free" and result["cost_ratio_to_match_best"] == np.inf
    shown = json.dumps(finite_or_null(result), allow_nan=False)
    assert json.loads(shown)["cost_ratio_to_match_best"] is None
    assert finite_or_null({"a": float("nan"), "b": 0.5, "c": "x"}) == {"a": None, "b": 0.5, "c": "x"}
    assert np.isnan(gate["router_cost_ratio"]) and np.isnan(gate["router_min_cost_ratio"])


def test_the_pareto_plot_shows_models_and_points_that_cost_nothing(router, tables):
    """A log cost axis cannot place 0: models priced at 0 and the router's free points were left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p, o = tables["test"]
    free = o.assign(cost_usd=o["cost_usd"].where(~o["model"].isin(["mistralai/mistral-7b-chat"]), 0.0))
    pred = load_router(router).predict_frame(p)
    fig, ax = plt.subplots()
    try:
        metrics.draw_pareto(ax, pred, free)
        fig.canvas.draw()
        (x0, x1), points = ax.get_xlim(), [*metrics.single_models(free).values()]
        assert x0 <= 0.0 and all(x0 <= c <= x1 for c, _ in points)
        assert np.isfinite(ax.transData.transform(points)).all()  # on a log axis (0, q) is not finite
    finally:
        plt.close(fig)
    fig, ax = plt.subplots()
    try:  # nothing costs anything: no axis of negative costs around 0
        metrics.draw_pareto(ax, pred, o.assign(cost_usd=0.0))
        assert ax.get_xscale() == "linear" and list(ax.get_xticks()) == [0.0]
        assert "every model and operating point costs 0" in ax.get_xlabel()
    finally:
        plt.close(fig)


def test_a_folder_given_for_a_file_is_a_usage_error(router, tmp_path, monkeypatch, capsys):
    """It exited 1, a failure's code, where the same mistake with other paths exits 2; a folder without a
    table's suffix said its path twice and not that it was a folder."""
    from router_models.cli import main

    (tmp_path / "prompts.csv").mkdir()
    argv = ["stratmaster", "router", "predict", "--router", str(router), "--prompts",
            str(tmp_path / "prompts.csv"), "--out", str(tmp_path / "pred.csv")]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2 and "prompts.csv: a folder, not a .parquet" in capsys.readouterr().err
    (tmp_path / "prompts").mkdir()
    monkeypatch.setattr("sys.argv", [a.replace("prompts.csv", "prompts") for a in argv])
    with pytest.raises(SystemExit) as exit_:
        main()
    said = capsys.readouterr().err
    assert (
        exit_.value.code == 2
        and said == f"error: {tmp_path / 'prompts'}: a folder, not a .parquet or .csv file\n"
    )


def test_train_says_how_many_outcome_rows_its_prompts_left_out(tables, tmp_path):
    """Outcome rows of prompts not in --prompts were dropped without a word (evaluate refuses them)."""
    p, o = tables["train"]
    res = _train(tables, tmp_path, tmp_path / "r", prompts=p.iloc[5:])
    assert res.exit_code == 0 and json.loads(res.stdout)["n_prompts"] == len(p) - 5, res.output
    rows = int(o["prompt_id"].isin(set(p["prompt_id"].iloc[:5])).sum())
    assert (
        res.stderr
        == f"warning: {rows} outcome rows of 5 prompt_ids not in {tmp_path / 'tp.csv'} were left out\n"
    )
    res = _train(tables, tmp_path, tmp_path / "r")
    assert res.exit_code == 0 and res.stderr == "", res.output


def test_blank_prompts_are_left_out_of_training_and_said_in_predict(tables, tmp_path):
    """Blank prompts trained the router as "" without a word (their outcomes taught it noise); now train
    leaves them out and says so, predict still answers for them and says so, and all blank is an error."""
    p, o = tables["train"]
    blanked = p.copy()
    blanked.iloc[:2, blanked.columns.get_loc("prompt")] = None  # an empty CSV cell
    blanked.iloc[2:5, blanked.columns.get_loc("prompt")] = "  \n\t"
    res = _train(tables, tmp_path, tmp_path / "blank", prompts=blanked)
    assert res.exit_code == 0 and json.loads(res.stdout)["n_prompts"] == len(p) - 5, res.output
    ids = ", ".join(p["prompt_id"].iloc[:5])
    assert f"warning: 5 blank prompts in {tmp_path / 'tp.csv'} (prompt_id {ids}) are left out" in res.stderr
    assert load_router(tmp_path / "blank").info["n_blank_prompts"] == 5
    assert _train(tables, tmp_path, tmp_path / "rest", prompts=p.iloc[5:]).exit_code == 0
    queries = tables["test"][0][["prompt_id", "prompt"]]
    same = [load_router(tmp_path / d).predict_frame(queries) for d in ("blank", "rest")]
    pd.testing.assert_frame_equal(*same)  # trained on the same prompts: the blank ones taught it nothing
    blanked[["prompt_id", "prompt"]].to_csv(tmp_path / "q.csv", index=False)
    args = ["predict", "--router", str(tmp_path / "rest"), "--prompts", str(tmp_path / "q.csv")]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "pred.csv")])
    assert res.exit_code == 0 and "5 blank prompts" in res.stderr and "routed on no signal" in res.stderr
    assert len(pd.read_csv(tmp_path / "pred.csv")) == len(p) * len(load_router(tmp_path / "rest").models)
    res = _train(tables, tmp_path, tmp_path / "none", prompts=p.assign(prompt=" "))
    assert "every prompt of the prompts table is blank" in _said(res)


def test_train_finds_an_out_it_cannot_write_and_a_bad_setting_before_training(tables, tmp_path, monkeypatch,
                                                                              capsys):  # fmt: skip
    """An --out under a file trained first, then failed on `File exists` (exit 1); a malformed SM_ setting
    was pydantic's four-line dump, not the console script's one line."""
    import router_models.router.train as training
    from router_models.cli import main

    p, o = tables["train"]
    p.to_csv(tmp_path / "tp.csv", index=False)
    o.to_csv(tmp_path / "to.csv", index=False)
    (tmp_path / "a-file").write_text("")
    trained = []
    monkeypatch.setattr(training, "train_router", lambda *a, **k: trained.append(1))
    base = ["stratmaster", "router", "train", "--prompts", str(tmp_path / "tp.csv"), "--outcomes",
            str(tmp_path / "to.csv"), "--embedder", "static", "--predictor", "global_mean",
            "--out"]  # fmt: skip
    for out, env, said in (
        (tmp_path / "a-file" / "r", {}, "a-file is a file, not a folder"),
        (
            tmp_path / "r",
            {"SM_LOCAL_THREADS": "abc"},
            "error: SM_LOCAL_THREADS: Input should be a valid integer",
        ),
    ):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setattr("sys.argv", [*base, str(out)])
        with pytest.raises(SystemExit) as exit_:
            main()
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and said in err and len(err.strip().splitlines()) == 1, err
    assert not trained


def test_file_errors_are_one_line_and_a_prior_table_must_name_the_models(tables, tmp_path):
    """An empty prompts file was a 7-line usage box; a --prior-table naming none of the outcomes' models
    was ignored without a word (the manifest said used_prior_table: false)."""
    (tmp_path / "empty.csv").write_text("")
    res = _train(tables, tmp_path, tmp_path / "r", prompts=pd.DataFrame())
    assert res.exit_code == 2 and res.stderr.startswith("error: ") and len(res.stderr.splitlines()) == 1, (
        res.output
    )
    p, o = tables["train"]
    p.to_csv(tmp_path / "tp.csv", index=False)
    o.to_csv(tmp_path / "to.csv", index=False)
    models = sorted(o["model"].unique())
    for names, code in ((["x-" + m for m in models], 2), (models[:3], 0)):
        table = pd.DataFrame({"task": "arc", "model": names, "quality_mean": 0.5, "quality_sd": 0.1})
        table.to_csv(tmp_path / "prior.csv", index=False)
        args = ["train", "--prompts", str(tmp_path / "tp.csv"), "--outcomes", str(tmp_path / "to.csv"),
                "--out", str(tmp_path / "rp"), "--embedder", "static", "--predictor", "bayes",
                "--prior-table", str(tmp_path / "prior.csv")]  # fmt: skip
        res = runner.invoke(app, args, env={"SM_RUN_DIR": str(tmp_path / "run")})
        assert res.exit_code == code, res.output
        assert (
            "names none of the outcome table's models" if code else f"no rows for {len(models) - 3} models"
        ) in (res.stderr)
    # a (task, model) pair of several rows was averaged without a word
    table = pd.DataFrame({"task": "arc", "model": [models[0], models[0]], "quality_mean": [0.5, 0.99],
                          "quality_sd": [0.1, 0.01]})  # fmt: skip
    table.to_csv(tmp_path / "prior.csv", index=False)
    res = runner.invoke(app, args, env={"SM_RUN_DIR": str(tmp_path / "run")})
    assert res.exit_code == 2 and f"1 (task, model) pairs have several rows: [('arc', '{models[0]}')]" in (
        res.stderr
    ), res.output


def test_a_model_scored_only_on_prompts_left_out_is_not_in_the_panel(tables, tmp_path):
    """A model whose outcomes were all on prompts outside --prompts was kept with no evidence: predicted
    quality 0.5 at $0, chosen under any cost cap, and NaN in manifest.json."""
    p, o = tables["train"]
    keep = p.iloc[5:]
    lone = "claude-v1"
    o = o[(o["model"] != lone) | ~o["prompt_id"].isin(keep["prompt_id"])]  # claude-v1: the 5 left-out only
    res = _train(tables, tmp_path, tmp_path / "r", prompts=keep, outcomes=o)
    assert res.exit_code == 0, res.output
    assert lone not in json.loads(res.stdout)["models"] and len(json.loads(res.stdout)["models"]) == 10
    json.loads((tmp_path / "r" / "manifest.json").read_text(), parse_constant=pytest.fail)  # no NaN
    # and said: a model with no score on these prompts (a column left blank) was dropped without a word
    assert f"scores 1 model on none of these prompts: not candidates: {lone}" in res.stderr, res.stderr


def test_the_strongest_model_is_judged_on_prompts_every_model_answered(tables, tmp_path):
    """'Strongest' was the best mean over each model's own prompts: a model kept on 3 prompts it got right
    beat GPT-4 on 60, and the default budget policy (half the strongest model's cost) always chose the
    cheapest model."""
    p, o = tables["train"]
    lucky = "mistralai/mistral-7b-chat"
    right = o[(o["model"] == lucky) & (o["score"] == 1.0)]["prompt_id"].iloc[:3]
    sparse = o[(o["model"] != lucky) | o["prompt_id"].isin(right)]
    res = _train(tables, tmp_path, tmp_path / "r", outcomes=sparse)
    assert res.exit_code == 0, res.output
    assert load_router(tmp_path / "r").strongest == "gpt-4-1106-preview"
    assert "gpt-4-1106-preview's cost" in json.loads(res.stdout)["policy"]


def test_a_source_id_shared_by_every_prompt_names_no_question(tables, tmp_path):
    """A dataset's name as source_id put every prompt in one fold of the budget calibration's
    cross-validation, leaving the others nothing to train on (sklearn: 'Found array with 0 sample(s)')."""
    from router_models.router.crossval import fold_ids, question_groups

    p, _ = tables["train"]
    res = _train(tables, tmp_path, tmp_path / "r", prompts=p.assign(source_id="mybench"))
    assert res.exit_code == 0, res.output
    by_task = p.assign(source_id=p["task"])  # three names, one per task: each fold would lack a task
    assert pd.Series(fold_ids(len(p), 3, groups=question_groups(by_task))).nunique() == 3
    assert (question_groups(by_task) == question_groups(p[["prompt"]])).all()


def test_train_names_prompts_and_outcomes_that_share_no_id(tables, tmp_path):
    """Outcomes of other prompts (or a prompts file with a header only) were "a router needs at least two
    models in the outcome table, found []", though the table held 11."""
    p, o = tables["train"]
    test_prompts, _ = tables["test"]
    for prompts in (test_prompts, p.iloc[:0]):
        said = _said(_train(tables, tmp_path, tmp_path / "r", prompts=prompts, outcomes=o))
        assert "no scored outcome row has a prompt_id of the prompts table" in said, said


def test_evaluate_says_what_it_counts_as_0_and_which_models_it_judges_without(router, tables, tmp_path):
    """A model's blank scores counted as 0 and a router model missing from the outcomes was left out of the
    judging, both without a word: GPT-4 blank made Mixtral the 'best single model'. They still count as the
    reference metrics count them (../shared/tools: a missing score is 0), and are said."""
    _, o = tables["test"]
    strong = "gpt-4-1106-preview"
    blank = o.assign(score=o["score"].where(o["model"] != strong))
    res = _evaluate(router, tables, tmp_path, blank)
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    rows = int((o["model"] == strong).sum())
    assert f"{rows} outcome rows of {tmp_path / 'o.csv'} have no score and count as 0 ({strong} {rows})" in (
        res.stderr
    )
    assert result["unscored_rows"] == rows and result["best_single"] != strong
    assert result["aiq_single_models_hull"] == pytest.approx(
        metrics.summary(o[["prompt_id", "model"]].assign(predicted_score=0.0), blank.fillna({"score": 0.0}))[
            "aiq_single_models_hull"
        ]
    )
    res = _evaluate(router, tables, tmp_path, o[o["model"] != strong])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["router_models_not_in_outcomes"] == [strong]
    assert f"1 model of the router's not in the outcome table: judged without them: {strong}" in res.stderr
    res = _evaluate(router, tables, tmp_path, o)
    assert res.exit_code == 0 and res.stderr == "", res.stderr
    assert json.loads(res.stdout)["unscored_rows"] == 0


def test_a_hand_edited_manifest_or_a_damaged_array_is_one_line(router, tables, tmp_path):
    """The manifest has no checksum of its own: a policy of an unknown kind, a model entry with a key too
    many and a truncated predictor.npz (its checksum updated) were tracebacks (TypeError, BadZipFile)."""
    import hashlib

    manifest = json.loads((router / "manifest.json").read_text())
    model = manifest["models"][0]
    policy = {**manifest, "policy": {"kind": "zzz"}}
    metadata = {
        **manifest,
        "metadata": {**manifest["metadata"], model: {**manifest["metadata"][model], "x": 1}},
    }
    tables["test"][0].to_csv(tmp_path / "p.csv", index=False)
    for name, content in (("policy", policy), ("metadata", metadata), ("npz", manifest)):
        bad = tmp_path / name
        shutil.copytree(router, bad)
        if name == "npz":
            data = (bad / "predictor.npz").read_bytes()
            (bad / "predictor.npz").write_bytes(data[: len(data) // 2])
            files = {**content["files"], "predictor.npz": hashlib.sha256(data[: len(data) // 2]).hexdigest()}
            content = {**content, "files": files}
        (bad / "manifest.json").write_text(json.dumps(content))
        with pytest.raises(ArtifactError, match="does not describe a router this code can load"):
            load_router(bad)
        assert "undo the edit or retrain" in _said(_predict(bad, tmp_path))


def test_an_out_that_cannot_be_written_is_named_as_given(router, tables, tmp_path):
    """The error named the temporary file beside it ('/proc/.x.csv.sqc3k963.csv'), and predict exited 1
    where train exited 2."""
    tables["test"][0].to_csv(tmp_path / "p.csv", index=False)
    args = ["predict", "--router", str(router), "--prompts", str(tmp_path / "p.csv"), "--out", "/proc/x.csv"]
    said = _said(runner.invoke(app, args))
    assert "'/proc/x.csv'" in said and ".x.csv." not in said, said
    said = _said(_train(tables, tmp_path, "/proc/x"))
    assert "'/proc/x'" in said and ".x." not in said, said
    (tmp_path / "afile").write_text("")  # mkdir's "File exists" named the --out, not the file in the way
    args = ["predict", "--router", str(router), "--prompts", str(tmp_path / "p.csv")]
    said = _said(runner.invoke(app, [*args, "--out", str(tmp_path / "afile" / "x.csv")]))
    assert f"{tmp_path / 'afile'} is a file, not a folder" in said, said


def test_what_train_predict_and_evaluate_said_nothing_of(router, tables, tmp_path):
    """Prompts without a task trained a router with no task classifier; a header-only prompts file wrote a
    header-only predictions file; a refused --out suffix left the folders it named made; an outcome score
    off the unit scale was refused without naming the file."""
    p, o = tables["train"]
    res = _train(tables, tmp_path, tmp_path / "r", prompts=p.drop(columns="task"))
    assert res.exit_code == 0 and "has a task column: the router learns no task classifier" in res.stderr
    untasked = p.assign(task=p["task"].where(p.index % 50 != 0))  # blank cells: a task class "all", unsaid
    res = _train(tables, tmp_path, tmp_path / "r", prompts=untasked)
    n = int(untasked["task"].isna().sum())
    assert res.exit_code == 0 and f"warning: {n} rows of {tmp_path / 'tp.csv'} have no task" in res.stderr
    p.iloc[:0].to_csv(tmp_path / "none.csv", index=False)
    args = ["predict", "--router", str(router), "--prompts", str(tmp_path / "none.csv")]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "pred.csv")])
    assert res.exit_code == 0 and "holds no prompt" in res.stderr, res.output
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "a" / "b" / "pred.txt")])
    assert "expected a .parquet or .csv file" in _said(res) and not (tmp_path / "a").exists()
    # an --out that was the prompts file was replaced by the predictions, exit 0; a folder named a temp file
    p.head(3).to_csv(tmp_path / "three.csv", index=False)
    given = (tmp_path / "three.csv").read_bytes()
    args = ["predict", "--router", str(router), "--prompts", str(tmp_path / "three.csv")]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "." / "three.csv")])
    assert res.exit_code == 2 and "is the --prompts file" in _said(res), res.output
    assert (tmp_path / "three.csv").read_bytes() == given
    (tmp_path / "folder.csv").mkdir()
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "folder.csv")])
    assert res.exit_code == 2 and f"{tmp_path / 'folder.csv'} is a folder, not a file" in _said(res), (
        res.output
    )
    test_o = tables["test"][1]
    said = _said(_evaluate(router, tables, tmp_path, test_o.assign(score=test_o["score"] * 10)))
    assert f"{tmp_path / 'o.csv'}: outcome column 'score' needs numbers in [0, 1]" in said, said


def test_the_per_token_price_is_learned_from_within_a_task(router, tables):
    """The cost model was fitted on the task classifier's soft probabilities, where prompt lengths barely vary
    within a task: GPT-4's price per input token came out as 0 and a 28k-token prompt was priced below
    GPT-3.5's. Fitted on each prompt's own task, it is the list price's order (GPT-4 $0.01 per 1k input
    tokens, GPT-3.5 $0.001), and a long prompt costs what it should."""
    r = load_router(router)
    per_1k = dict(zip(r.models, r.cost_model.coef[0], strict=True))
    assert 0.007 < per_1k["gpt-4-1106-preview"] < 0.013, per_1k
    assert 0.0005 < per_1k["gpt-3.5-turbo-1106"] < 0.0015, per_1k
    long = pd.DataFrame({"prompt_id": ["long"], "prompt": ["Summarise the quarterly filing below. " * 3000]})
    cost = r.predict_frame(long).set_index("model")["predicted_cost_usd"]
    assert cost["gpt-4-1106-preview"] > 0.14 and cost["gpt-4-1106-preview"] > 5 * cost["gpt-3.5-turbo-1106"]
    from router_models.router.signals import Constraints

    d = r.route(long["prompt"][0], Constraints(max_cost_usd=0.05))  # GPT-4 would bill about $0.29
    gpt4 = next(c for c in d.candidates if c.model == "gpt-4-1106-preview")
    assert d.model != gpt4.model and gpt4.excluded_by is not None, d.explanation
