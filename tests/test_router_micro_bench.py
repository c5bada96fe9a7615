"""The micro-bench as router evidence: its models join the panel, and its prompts are evaluated out of fold.

The "local" outcome table here is two RouterBench models' real outcomes on a handful of prompts under new
names, as the micro-bench's rows for the local models would be: a slice of RouterBench trains beside it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.bench.outcomes import add_evidence
from router_models.router.crossval import cross_val_predictions
from router_models.router.evaluation import local_panel, micro_bench_evaluation, utility_gate
from router_models.router.features import embed_prompts
from router_models.router.metrics import summary
from router_models.router.signals import Constraints
from router_models.router.train import train_router

LOCAL = {"mistralai/mistral-7b-chat": "smollm2-135m", "WizardLM/WizardLM-13B-V1.2": "gemma3-270m"}


@pytest.fixture(scope="module")
def tables(shared_data):
    """RouterBench's 60 prompts per task for the public panel; 24 others answered by the 2 "local" models."""
    rb = shared_data / "routerbench"
    prompts = pd.read_csv(rb / "prompts_train.csv", dtype={"prompt_id": str})
    outcomes = pd.read_csv(rb / "outcomes_train.csv", dtype={"prompt_id": str})
    sample = prompts.groupby("task").sample(n=68, random_state=1)
    public = sample.groupby("task").head(60)
    bench = sample[~sample["prompt_id"].isin(public["prompt_id"])]
    local = outcomes[outcomes["prompt_id"].isin(bench["prompt_id"]) & outcomes["model"].isin(list(LOCAL))]
    local = local.assign(model=local["model"].map(LOCAL), latency_s=1.0)
    local = local.merge(bench[["prompt_id", "task", "prompt"]], on="prompt_id")
    public_outcomes = outcomes[outcomes["prompt_id"].isin(public["prompt_id"])]
    return public.reset_index(drop=True), public_outcomes.reset_index(drop=True), local.reset_index(drop=True)


def test_add_evidence_joins_prompts_and_models_with_the_newer_row_winning(tables):
    prompts, outcomes, local = tables
    newer = local.iloc[:1].assign(score=1 - local["score"].iloc[0])
    p, o = add_evidence(prompts, outcomes, pd.concat([local, newer], ignore_index=True))
    assert len(p) == len(prompts) + local["prompt_id"].nunique() and p["prompt_id"].is_unique
    assert set(o["model"]) == set(outcomes["model"]) | set(LOCAL.values())
    assert not o.duplicated(["prompt_id", "model"]).any()
    row = o[(o["prompt_id"] == newer["prompt_id"].iloc[0]) & (o["model"] == newer["model"].iloc[0])]
    assert row["score"].tolist() == newer["score"].tolist()
    same = add_evidence(prompts, outcomes, local.iloc[:0])
    assert same[0] is prompts and same[1] is outcomes


def test_local_panel_keeps_prompts_every_model_answered(tables):
    local = tables[2]
    one_missing = local.drop(index=local.index[0])
    assert local_panel(one_missing)["prompt_id"].nunique() == local["prompt_id"].nunique() - 1
    assert local_panel(local[local["model"] == "smollm2-135m"]).empty  # one model: nothing to choose


def test_the_router_over_both_panels_sends_personal_data_to_the_better_local_model(tables):
    r = train_router(*add_evidence(*tables))
    assert set(LOCAL.values()) < set(r.models) and r.metadata["smollm2-135m"].p95_latency_s == 1.0
    d = r.route("Reply to ana@example.org: what is 17 times 3?", Constraints())
    assert d.model in LOCAL.values() and d.binding == "pii_local_only"
    local = {c.model: c for c in d.candidates if c.allowed}
    assert set(local) == set(LOCAL.values())
    assert d.model == max(local, key=lambda m: local[m].utility)


def test_held_out_prompts_are_predicted_once_and_never_from_their_own_outcomes(tables):
    prompts, outcomes, local = tables
    all_prompts, all_outcomes = add_evidence(prompts, outcomes, local)
    emb = embed_prompts(all_prompts["prompt"].tolist(), "static")
    ids = set(local["prompt_id"])
    pred = cross_val_predictions("bayes", all_prompts, all_outcomes, emb, folds=4, held_out=ids)
    assert set(pred["prompt_id"]) == ids and not pred.duplicated(["prompt_id", "model"]).any()
    # flip one held-out prompt's local outcomes: its own predictions must not move
    target = sorted(ids)[0]
    flipped = all_outcomes.copy()
    rows = (flipped["prompt_id"] == target) & flipped["model"].isin(LOCAL.values())
    flipped.loc[rows, "score"] = 1 - flipped.loc[rows, "score"]
    again = cross_val_predictions("bayes", all_prompts, flipped, emb, folds=4, held_out=ids)
    mine, theirs = (p[p["prompt_id"] == target].sort_values("model") for p in (pred, again))
    np.testing.assert_allclose(mine["predicted_score"], theirs["predicted_score"])


def test_micro_bench_evaluation_scores_the_router_on_the_local_panel(tables, tmp_path):
    prompts, outcomes, local = tables
    pred, table, result = micro_bench_evaluation(
        prompts, outcomes, local, predictor="bayes", plot_path=tmp_path / "micro.png"
    )
    assert result["n_prompts"] == local["prompt_id"].nunique() and result["n_models"] == 2
    assert result["best_single"] in LOCAL.values() and (tmp_path / "micro.png").stat().st_size > 0
    assert set(table["model"]) == set(LOCAL.values())
    assert result["aiq"] == summary(pred, table)["aiq"] and result["folds"] == 5
    assert 0 <= result["aiq_single_models_hull"] <= result["aiq_oracle"] <= 1
    gate = utility_gate(pred, table, lambda_cost=100.0)
    assert gate["best_single"] == result["best_single"] and gate["router_min_cost_ratio"] > 0
    assert gate["passed"] == (gate["utility_gain"] >= 0.05 and gate["router_cost_ratio"] <= 0.8)
    assert micro_bench_evaluation(prompts, outcomes, local.iloc[:0]) is None


def test_gap_recovered_is_nan_when_the_oracle_is_on_the_single_models_hull(tables):
    local = local_panel(tables[2])
    same = local.assign(score=local["prompt_id"].map(local.groupby("prompt_id")["score"].max()))
    pred = same.rename(columns={"score": "predicted_score", "cost_usd": "predicted_cost_usd"})
    assert np.isnan(summary(pred, same)["gap_recovered"])


def two_models(scores: dict[str, list[int]]) -> pd.DataFrame:
    """An outcome table of a cheap model (0.001 USD a prompt) and a strong one (0.01) with these scores."""
    price = {"cheap": 0.001, "strong": 0.01}
    return pd.DataFrame(
        {"prompt_id": str(i), "model": m, "score": float(s), "cost_usd": price[m]}
        for m, row in scores.items()
        for i, s in enumerate(row)
    )


def test_the_gate_also_reports_the_single_model_of_highest_utility():
    """At lambda 100 the strongest model's utility is far below the cheap one's: beating it by 5% passed the
    gate while no operating point came near the cheap model; the comparison with that model is reported."""
    scores = {"cheap": [1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "strong": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0]}
    table = two_models(scores)
    pred = table.rename(columns={"score": "predicted_score", "cost_usd": "predicted_cost_usd"})
    gate = utility_gate(pred, table, lambda_cost=100.0)
    assert gate["best_single"] == "strong" and gate["passed"] and gate["utility_gain"] > 5
    assert gate["best_single_by_utility"] == "cheap"
    assert gate["best_single_by_utility_utility"] == pytest.approx(0.7 - 0.1)
    assert not gate["passed_against_best_by_utility"]  # nothing the router does costs <= 80% of cheap's
    loose = utility_gate(pred, table, lambda_cost=0.0)  # without a price on cost both readings agree
    assert (
        loose["best_single_by_utility"] == "strong"
        and loose["utility_gain"] == loose["utility_gain_over_best_by_utility"]
    )


def test_the_gate_judges_the_operating_point_the_predictions_choose_not_the_best_in_hindsight():
    """The gate took the router's best realised point over every willingness to pay: a choice made after
    seeing the outcomes. The router's predictions put its point at lambda_cost (all cheap, which fails on
    two prompts); the point at lambda 0 happens to be the oracle's. Only the former is gated on."""
    scores = {"cheap": [1] * 8 + [0, 0], "strong": [1] * 10}
    table = two_models(scores)
    guess = {"cheap": [0.95] * 8 + [0.88, 0.88], "strong": [0.9] * 10}
    pred = table.assign(
        predicted_score=[g for m in scores for g in guess[m]], predicted_cost_usd=table["cost_usd"]
    )
    gate = utility_gate(pred, table, lambda_cost=10.0)
    assert gate["best_single"] == "strong" and gate["best_single_utility"] == pytest.approx(0.9)
    assert gate["router_quality"] == pytest.approx(0.8) and gate["router_cost_ratio"] == pytest.approx(0.1)
    assert gate["utility_gain"] == pytest.approx((0.79 - 0.9) / 0.9) and not gate["passed"]
    assert gate["utility_gain_hindsight"] == pytest.approx((0.972 - 0.9) / 0.9)


def test_a_missing_prediction_does_not_sink_the_gates_operating_point():
    """The fill-ins that rank a missing prediction last (score -1e9, cost 1e9) went into the predicted
    means: one prompt without a prediction put every point's predicted cost near 1e8, none under the cap,
    and the gate failed with NaN; a base model without predicted costs made the cap NaN."""
    scores = {"cheap": [1] * 8 + [0, 0], "strong": [1] * 10}
    table = two_models(scores)
    pred = table.rename(columns={"score": "predicted_score", "cost_usd": "predicted_cost_usd"})
    whole = utility_gate(pred, table, lambda_cost=10.0)
    assert whole["passed"] and np.isfinite(whole["utility_gain"])
    gappy = utility_gate(pred[pred["prompt_id"] != "9"], table, lambda_cost=10.0)
    assert np.isfinite(gappy["utility_gain"]) and gappy["router_cost_ratio"] <= 0.8
    no_cost = pred.assign(predicted_cost_usd=pred["predicted_cost_usd"].where(pred["model"] != "strong"))
    assert np.isfinite(utility_gate(no_cost, table, lambda_cost=10.0)["utility_gain"])
