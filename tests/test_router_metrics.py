"""The router metrics agree with the reference script (../shared/tools/router_metrics.py) within 1e-6."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pandas as pd
import pytest

from pipelines.settings import REPO_ROOT
from router_models.router import metrics

REFERENCE = REPO_ROOT.parent / "shared" / "tools" / "router_metrics.py"


@pytest.fixture(scope="module")
def reference():
    if not REFERENCE.exists():
        pytest.skip(f"reference metrics script not found at {REFERENCE}")
    spec = importlib.util.spec_from_file_location("reference_router_metrics", REFERENCE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def outcomes(shared_data):
    o = pd.read_csv(shared_data / "routerbench" / "outcomes_train.csv", dtype={"prompt_id": str})
    keep = sorted(o["prompt_id"].unique())[::7]  # ~320 prompts, all three tasks, some missing scores
    return o[o["prompt_id"].isin(keep)].reset_index(drop=True)


def _noisy_predictions(outcomes: pd.DataFrame, noise: float, with_cost: bool, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pred = outcomes[["prompt_id", "model"]].copy()
    pred["predicted_score"] = outcomes["score"].fillna(0.5).to_numpy() * (1 - noise) + noise * rng.random(
        len(pred)
    )
    if with_cost:
        pred["predicted_cost_usd"] = outcomes["cost_usd"].to_numpy() * rng.uniform(0.7, 1.3, len(pred))
    return pred


def _assert_agree(ours: dict, ref: dict) -> None:
    for key, want in ref.items():
        got = ours[key]
        if isinstance(want, str):
            assert got == want, key
        elif math.isnan(want):
            assert math.isnan(got), key
        else:
            assert got == pytest.approx(want, abs=1e-6), key


@pytest.mark.parametrize("noise", [0.0, 0.6, 0.9, 1.0])
def test_summary_agrees_with_reference(reference, outcomes, noise):
    pred = _noisy_predictions(outcomes, noise, True, seed=int(noise * 10))
    _assert_agree(metrics.summary(pred, outcomes), reference.summary(pred, outcomes))


def test_without_predicted_costs_each_model_costs_its_mean(reference, outcomes):
    # the reference's own fallback trips over newer pandas, so it is given the mean costs explicitly
    pred = _noisy_predictions(outcomes, 0.7, False, seed=5)
    mean_cost = outcomes.groupby("model")["cost_usd"].mean()
    explicit = pred.assign(predicted_cost_usd=pred["model"].map(mean_cost))
    _assert_agree(metrics.summary(pred, outcomes), reference.summary(explicit, outcomes))


def test_constant_router_is_not_better_than_the_single_models(reference, outcomes):
    pred = outcomes[["prompt_id", "model", "cost_usd"]].rename(columns={"cost_usd": "predicted_cost_usd"})
    pred["predicted_score"] = (outcomes["model"] == "claude-v2").astype(float) * 1e6  # always claude-v2
    ours = metrics.summary(pred, outcomes)
    _assert_agree(ours, reference.summary(pred, outcomes))
    assert ours["gap_recovered"] <= 1e-9  # always one model: never above the single models' hull


def test_oracle_recovers_the_whole_gap(outcomes):
    s = metrics.summary(metrics.oracle_predictions(outcomes), outcomes)
    assert s["gap_recovered"] == pytest.approx(1.0)
    assert s["router_max_quality"] == pytest.approx(s["oracle_quality"])
    assert s["cost_ratio_to_match_best"] < 0.2


def test_hull_area_of_a_step():
    # one point at (1, 0.5) on [0, 2]: nothing below cost 1, then 0.5 -> area 0.25 (plus the ramp's half-step)
    area = metrics.hull_area([(1.0, 0.5)], 0.0, 2.0)
    assert 0.24 <= area <= 0.26
    # adding a dominated point changes nothing
    assert metrics.hull_area([(1.0, 0.5), (1.5, 0.4)], 0.0, 2.0) == pytest.approx(area)


def test_pareto_plot_writes_a_png(outcomes, tmp_path):
    pred = _noisy_predictions(outcomes, 0.5, True, seed=3)
    path = metrics.pareto_plot(pred, outcomes, tmp_path / "pareto.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_cost_near_floats_limit_is_evaluated_and_plotted_without_numpys_warnings(tmp_path):
    """A cost of 1e308 (finite, so accepted) printed numpy's and matplotlib's overflow warnings, with their
    source lines, among the figures."""
    import warnings

    outcomes = pd.DataFrame({"prompt_id": ["a", "a", "b", "b"], "model": ["x", "y", "x", "y"],
                             "score": [1.0, 0.0, 0.0, 1.0],
                             "cost_usd": [1e308, 0.001, 0.002, 0.001]})  # fmt: skip
    pred = metrics.oracle_predictions(outcomes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = metrics.summary(pred, outcomes)
        metrics.pareto_plot(pred, outcomes, tmp_path / "p.png")
    assert result["n_models"] == 2 and (tmp_path / "p.png").stat().st_size > 0
