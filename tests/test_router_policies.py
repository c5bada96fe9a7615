"""Budget policy and FrugalGPT cascade: the knob speaks in cost, the cascade pays for every model it calls."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from router_models.router.cascade import Cascade, agreement, calibrate, normalise_answer, simulate
from router_models.router.policies import Budget, MaxUtility, policy_from_dict

MODELS = ["cheap-a", "cheap-b", "strong"]


def test_budget_policy_spends_within_its_fraction_of_the_strongest_cost():
    rng = np.random.default_rng(0)
    n = 500
    mean = np.column_stack([rng.uniform(0.3, 0.8, n), rng.uniform(0.3, 0.8, n), rng.uniform(0.7, 0.95, n)])
    cost = np.column_stack([np.full(n, 0.0001), np.full(n, 0.0003), np.full(n, 0.005)])
    for frac in (0.1, 0.3, 0.6):
        pol = Budget(fraction=frac).calibrate(mean, cost, MODELS, "strong")
        choice = pol.utilities(mean, np.zeros_like(mean), cost).argmax(1)
        spend = cost[np.arange(n), choice].mean()
        assert spend <= frac * 0.005 + 1e-12
        assert pol.achieved_fraction == pytest.approx(spend / 0.005)
        assert f"{frac:.0%} of strong's cost" in pol.describe()
        assert "unreachable" not in pol.describe()
    # below what the cheapest model costs, no willingness to pay meets the budget: the policy says so
    tiny = Budget(fraction=0.01).calibrate(mean, cost, MODELS, "strong")
    assert tiny.achieved_fraction == pytest.approx(0.0001 / 0.005)
    assert "unreachable: the cheapest choices spend 2.0% of its cost" in tiny.describe()
    loose = Budget(fraction=1.0).calibrate(mean, cost, MODELS, "strong")
    assert loose.lambda_cost == 0.0  # no need to trade quality for cost
    again = policy_from_dict(pol.to_dict())
    assert isinstance(again, Budget) and again.lambda_cost == pol.lambda_cost
    assert isinstance(policy_from_dict({"name": "max_utility", "lambda_cost": 5.0}), MaxUtility)


def test_answers_normalise_to_choice_letters():
    assert [normalise_answer(a) for a in ["B", " (c) ", "A. the sun", "d)", "B\n"]] == [
        "B",
        "C",
        "A",
        "D",
        "B",
    ]
    assert normalise_answer("def f(x):\n   return  x") == "def f(x): return x"
    # "A chart" is choice A: 3 of the 4 RouterBench answers of that shape name option A ("A) a chart")
    assert [normalise_answer(a) for a in ["B\nBecause it is Paris.", "B Paris", "A chart"]] == ["B", "B", "A"]
    assert normalise_answer(float("nan")) == ""
    assert agreement(["A", "B", "A"]) == 0.5 and agreement(["A"]) == 0.0 and agreement(["A", ""]) == 0.0


def _table():
    # prompt 0: the cheap models agree and are right; 1: they disagree; 2: they agree and are wrong
    answers = np.array([["A", "A", "A"], ["A", "B", "C"], ["D", "D", "C"]])
    scores = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 1]], dtype=float)
    costs = np.array([[1, 2, 10]] * 3, dtype=float)
    return answers, scores, costs


def test_cascade_replay_pays_every_model_called():
    answers, scores, costs = _table()
    s, c = simulate(Cascade(MODELS, [1.0, 1.0]), MODELS, answers, scores, costs)
    np.testing.assert_array_equal(c, [3, 13, 3])  # stop after two agreeing answers, else pay the strong one
    np.testing.assert_array_equal(s, [1, 1, 0])
    s, c = simulate(Cascade(MODELS, [0.0, 1.0]), MODELS, answers, scores, costs)
    np.testing.assert_array_equal(c, [1, 1, 1])  # a zero first threshold accepts the cheapest answer


def test_cascade_run_executes_through_a_call_function():
    answers, _, costs = _table()
    recorded = {(m, p): answers[i, j] for i, p in enumerate(["p0", "p1"]) for j, m in enumerate(MODELS)}
    cascade = Cascade(MODELS, [1.0, 1.0])
    cost_of = lambda m, p, a: float(costs[0, MODELS.index(m)])  # noqa: E731
    r = cascade.run("p0", lambda m, p: recorded[(m, p)], cost_of)
    assert (r.model, r.called, r.cost_usd, r.checks) == ("cheap-b", ["cheap-a", "cheap-b"], 3.0, [0.0, 1.0])
    r = cascade.run("p1", lambda m, p: recorded[(m, p)], cost_of)
    assert r.model == "strong" and r.called == MODELS and r.cost_usd == 13.0


def test_calibration_respects_the_cost_cap(shared_data):
    rb = shared_data / "routerbench"
    ids = pd.read_csv(rb / "prompts_train.csv", usecols=["prompt_id"])["prompt_id"].astype(str)[::5].tolist()
    resp = pd.read_csv(rb / "responses_train.csv", dtype={"prompt_id": str})
    out = pd.read_csv(rb / "outcomes_train.csv", dtype={"prompt_id": str})
    models = sorted(out["model"].unique())
    piv = lambda df, col: df.pivot(index="prompt_id", columns="model", values=col).reindex(ids)[models]  # noqa: E731
    answers = piv(resp, "response").map(normalise_answer).to_numpy()
    scores, costs = piv(out, "score").fillna(0.0).to_numpy(), piv(out, "cost_usd").to_numpy()
    gpt4 = models.index("gpt-4-1106-preview")
    cap = 0.5 * np.nanmean(costs[:, gpt4])
    cascade, quality, spend = calibrate(models, answers, scores, costs, cap)
    assert spend <= cap
    s, c = simulate(cascade, models, answers, scores, costs)
    assert c.mean() == pytest.approx(spend) and s.mean() == pytest.approx(quality)
    assert (
        quality > scores[:, models.index("mistralai/mixtral-8x7b-chat")].mean()
    )  # beats a cheap model alone
