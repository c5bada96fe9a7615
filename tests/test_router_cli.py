"""train -> predict -> evaluate through the `router` sub-app on a small RouterBench slice; artifact checks."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from router_models.router.artifact import ArtifactError, load_router
from router_models.router.cli import app
from router_models.router.signals import Constraints

runner = CliRunner()


@pytest.fixture(scope="module")
def slices(shared_data, tmp_path_factory):
    """Train: 60 prompts per task; test: 25 other prompts per task, given without their task label."""
    rb = shared_data / "routerbench"
    prompts = pd.read_csv(rb / "prompts_train.csv", dtype={"prompt_id": str})
    outcomes = pd.read_csv(rb / "outcomes_train.csv", dtype={"prompt_id": str})
    shuffled = prompts.sample(frac=1.0, random_state=2)
    train = shuffled.groupby("task").head(60)
    test = shuffled.drop(train.index).groupby("task").head(25)
    d = tmp_path_factory.mktemp("router_cli")
    train[["prompt_id", "task", "prompt"]].to_csv(d / "train_prompts.csv", index=False)
    outcomes[outcomes.prompt_id.isin(train.prompt_id)].to_csv(d / "train_outcomes.csv", index=False)
    test[["prompt_id", "prompt"]].to_csv(d / "test_prompts.csv", index=False)
    outcomes[outcomes.prompt_id.isin(test.prompt_id)].to_csv(d / "test_outcomes.csv", index=False)
    return d


@pytest.fixture(scope="module")
def trained(slices):
    out = slices / "router"
    res = runner.invoke(
        app,
        [
            "train",
            "--prompts",
            str(slices / "train_prompts.csv"),
            "--outcomes",
            str(slices / "train_outcomes.csv"),
            "--out",
            str(out),
            "--embedder",
            "static",
        ],
        env={"SM_RUN_DIR": str(slices / "run")},
    )
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout)


def test_train_writes_a_versioned_artifact(trained):
    out, info = trained
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["predictor"] == "stack"
    assert len(manifest["models"]) == 11 == len(info["models"])
    assert set(manifest["files"]) >= {"predictor.npz", "rules.yaml"}
    assert manifest["policy"]["name"] == "budget" and manifest["strongest"] == "gpt-4-1106-preview"


def test_predict_then_evaluate_round_trip(trained, slices):
    out, _ = trained
    preds = slices / "predictions.csv"
    res = runner.invoke(
        app,
        ["predict", "--router", str(out), "--prompts", str(slices / "test_prompts.csv"), "--out", str(preds)],
    )
    assert res.exit_code == 0, res.output
    df = pd.read_csv(preds)
    assert list(df.columns) == ["prompt_id", "model", "predicted_score", "predicted_cost_usd"]
    assert len(df) == 75 * 11 and df.groupby("prompt_id").size().eq(11).all()
    assert df["predicted_score"].between(0, 1).all() and (df["predicted_cost_usd"] > 0).all()

    plot = slices / "pareto.png"
    res = runner.invoke(
        app,
        [
            "evaluate",
            "--router",
            str(out),
            "--prompts",
            str(slices / "test_prompts.csv"),
            "--outcomes",
            str(slices / "test_outcomes.csv"),
            "--plot",
            str(plot),
        ],
    )
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout, parse_constant=pytest.fail)  # strict JSON: NaN is null
    for key in ("aiq", "gap_recovered", "cost_ratio_to_match_best", "aiq_oracle", "best_single"):
        assert key in result
    assert result["n_prompts"] == 75 and result["aiq_oracle"] > result["aiq_single_models_hull"]
    assert result["aiq"] > 0 and np.isfinite(result["gap_recovered"])
    assert plot.stat().st_size > 1000


def test_loaded_router_routes_and_explains(trained):
    router = load_router(trained[0])
    d = router.route("Write a function to reverse a linked list in Python.", Constraints(max_cost_usd=0.001))
    assert d.model is not None and d.policy == "budget"
    assert all(c.cost_usd <= 0.001 for c in d.candidates if c.allowed)
    assert d.explanation.startswith("Chose ") and len(d.candidates) == 11
    tight, loose = router.budget_policy(0.1), router.budget_policy(0.9)
    assert tight.lambda_cost > loose.lambda_cost and tight.achieved_fraction <= 0.1 + 1e-9
    assert router.route("Is the sky blue? A) yes B) no", policy=tight).policy == "budget"


def test_tampered_or_foreign_artifacts_are_refused(trained, tmp_path):
    with pytest.raises(ArtifactError, match="not a router artifact"):
        load_router(tmp_path)
    out, _ = trained
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in out.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="format version 99"):
        load_router(copy)


def test_train_refuses_a_single_model_panel(slices, tmp_path):
    o = pd.read_csv(slices / "train_outcomes.csv")
    o[o.model == "claude-v2"].to_csv(tmp_path / "one.csv", index=False)
    res = runner.invoke(
        app,
        [
            "train",
            "--prompts",
            str(slices / "train_prompts.csv"),
            "--outcomes",
            str(tmp_path / "one.csv"),
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert res.exit_code == 2 and "at least two models" in res.output


def test_train_takes_a_model_scored_once_and_refuses_scores_off_the_unit_scale(slices, tmp_path):
    """One scored outcome left a calibration fold without a row for that model (a numpy error); scores of 1
    to 10 trained a router that predicted 2.9 to 4.7; a word in a prior table was a traceback."""
    o = pd.read_csv(slices / "train_outcomes.csv", dtype={"prompt_id": str})
    once = o.assign(
        score=o["score"].where((o.model != "claude-v2") | (o.index == o.index[o.model == "claude-v2"][0]))
    )
    (tmp_path / "prior.csv").write_text(
        "task,model,quality_mean,quality_sd\narc-challenge,claude-v2,high,0.1\n"
    )

    def train(outcomes: pd.DataFrame, *extra: str):
        outcomes.to_csv(tmp_path / "o.csv", index=False)
        args = ["train", "--prompts", str(slices / "train_prompts.csv"), "--embedder", "static",
                "--outcomes", str(tmp_path / "o.csv"), "--out", str(tmp_path / "r")]  # fmt: skip
        return runner.invoke(app, [*args, *extra], env={"SM_RUN_DIR": str(tmp_path)})

    res = train(once)
    assert res.exit_code == 0 and "claude-v2" in json.loads(res.stdout)["models"], res.output
    for res, needle in [
        (train(o.assign(score=o["score"] * 10)), "outcome column 'score' needs numbers in [0, 1]"),
        (train(o.assign(cost_usd=-o["cost_usd"])), "is not a finite number >= 0"),
        (train(o, "--prior-table", str(tmp_path / "prior.csv")), "'quality_mean' needs numbers in [0, 1]"),
    ]:
        said = " ".join(re.sub("[│─╭╮╰╯]", " ", res.output).split())
        assert res.exit_code == 2 and needle in said, res.output


def test_bad_inputs_are_one_line_errors_not_tracebacks(trained, slices, tmp_path):
    out, _ = trained
    o = pd.read_csv(slices / "test_outcomes.csv", dtype={"prompt_id": str})
    p = pd.read_csv(slices / "test_prompts.csv", dtype={"prompt_id": str})

    def evaluate(outcomes: pd.DataFrame, prompts: pd.DataFrame = p, *extra: str):
        outcomes.to_csv(tmp_path / "o.csv", index=False)
        prompts.to_csv(tmp_path / "p.csv", index=False)
        args = ["evaluate", "--router", str(out), "--prompts", str(tmp_path / "p.csv")]
        return runner.invoke(app, [*args, "--outcomes", str(tmp_path / "o.csv"), *extra])

    def predict(router, prompts):
        return runner.invoke(app, ["predict", "--router", str(router), "--prompts", str(prompts),
                                   "--out", str(tmp_path / "x.csv")])  # fmt: skip

    no_cost = o.assign(cost_usd=o["cost_usd"].where(o.index % 7 != 0))  # AIQ changed from run to run
    ghost = pd.concat([o, o.head(1).assign(prompt_id="ghost-1")])  # was dropped without a word
    (tmp_path / "empty.csv").write_text("")
    (comma := tmp_path / "comma.csv").write_text("prompt_id,prompt\np1,Hello, world\np2,Bye, now\n")
    cases = [
        (evaluate(no_cost), "scored outcome rows have no cost_usd"),
        (evaluate(ghost), "prompt_ids of"),
        (evaluate(pd.concat([o, o.head(2)])), "repeats 2 (prompt_id, model) pairs"),
        (evaluate(o.drop(columns="score")), "needs the columns ['score']"),
        (evaluate(o, pd.concat([p, p.head(1)])), "repeats prompt_id"),
        (predict(tmp_path, slices / "test_prompts.csv"), "not a router artifact"),
        (predict(out, tmp_path / "empty.csv"), "empty.csv"),
        # a word for a number or a blank id were tracebacks; an unquoted comma shifted ids into an index
        (evaluate(o.astype({"score": object}).assign(score=o["score"].where(o.index != 3, "yes"))), "'yes'"),
        (evaluate(o.assign(prompt_id=o["prompt_id"].where(o.index != 5, ""))), "has no prompt_id"),
        (predict(out, comma), "more fields than the header"),
        (evaluate(o, p, "--plot", str(tmp_path / "pareto.xyz")), "expected one of .png"),
    ]
    for res, needle in cases:
        assert res.exit_code == 2, res.output  # a traceback exits with 1
        said = " ".join(re.sub("[│─╭╮╰╯]", " ", res.output).split())  # typer's error box wraps the message
        assert needle in said, res.output


def test_prompt_ids_come_back_as_written(trained, tmp_path):
    """pandas read 007 as 7.0: predictions no longer matched the caller's ids (an NA id is refused above)."""
    out, _ = trained
    (tmp_path / "p.csv").write_text("prompt_id,prompt\n007,What is 2+2?\n1e3,Name a prime.\n0.50,Say hi.\n")
    res = runner.invoke(app, ["predict", "--router", str(out), "--prompts", str(tmp_path / "p.csv"),
                              "--out", str(tmp_path / "pred.csv")])  # fmt: skip
    assert res.exit_code == 0, res.output
    pred = pd.read_csv(tmp_path / "pred.csv", dtype=str, keep_default_na=False)
    assert list(dict.fromkeys(pred["prompt_id"])) == ["007", "1e3", "0.50"]
    assert oct((tmp_path / "pred.csv").stat().st_mode & 0o777) != oct(0o600)  # mkstemp's owner-only mode


def test_an_empty_prompt_is_predicted_like_any_other(trained, tmp_path):
    """An empty prompt reads from CSV as NaN; predict, evaluate and train failed on it with a traceback."""
    pd.DataFrame({"prompt_id": ["a", "b"], "prompt": ["", "Ünïcødé 你好: what is 2+2?"]}).to_csv(
        tmp_path / "p.csv", index=False
    )
    res = runner.invoke(app, ["predict", "--router", str(trained[0]), "--prompts", str(tmp_path / "p.csv"),
                              "--out", str(tmp_path / "x.csv")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert pd.read_csv(tmp_path / "x.csv").groupby("prompt_id").size().to_dict() == {"a": 11, "b": 11}


def test_a_posterior_prior_table_trains_the_stack_and_other_predictors_refuse_it(slices, tmp_path):
    outcomes = pd.read_csv(slices / "train_outcomes.csv", dtype={"prompt_id": str})
    tasks = pd.read_csv(slices / "train_prompts.csv", dtype={"prompt_id": str})[["prompt_id", "task"]]
    cells = outcomes.merge(tasks, on="prompt_id").groupby(["task", "model"])["score"]
    table = cells.agg(quality_mean="mean", quality_sd="std").reset_index()
    table.to_csv(tmp_path / "prior.csv", index=False)

    def train(predictor: str, *extra: str):
        args = ["train", "--prompts", str(slices / "train_prompts.csv"), "--embedder", "static",
                "--outcomes", str(slices / "train_outcomes.csv"), "--predictor", predictor,
                "--out", str(tmp_path / predictor), "--prior-table", str(tmp_path / "prior.csv")]  # fmt: skip
        return runner.invoke(app, [*args, *extra], env={"SM_RUN_DIR": str(tmp_path)})

    res = train("stack", "--prior-is-posterior")
    assert res.exit_code == 0, res.output
    stack = load_router(tmp_path / "stack").predictor
    assert any(getattr(p, "used_prior_table_", False) for p in stack.fitted_)
    res = train("knn")
    assert res.exit_code == 2 and "--prior-table is used by the `bayes` predictor" in res.output
