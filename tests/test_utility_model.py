"""The Bayesian utility model on data simulated from known parameters (brief sampling)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from router_models.utility.data import cell_data
from router_models.utility.model import FitConfig, build_model, centered_auto, centered_tasks, fit_utility
from router_models.utility.plots import calibration_table, forest_plot
from router_models.utility.posterior import (
    PosteriorHashMismatch,
    UtilityPosterior,
    load_posterior,
    save_posterior,
)
from router_models.utility.priors import alpha_priors
from router_models.utility.simulate import simulate_outcomes

# pymc's C backend caches compiled code on disk, which makes repeated small fits cheaper than nutpie's JIT
QUICK = FitConfig(draws=250, tune=250, chains=2, prior_predictive_draws=100, sampler="pymc")
TASKS = [f"task{i}" for i in range(4)]
MODELS = [f"model{i}" for i in range(5)]


@pytest.fixture(scope="module")
def recovery():
    """4 tasks x 5 models, 80 prompts per cell, with latency; weak priors only (priors=None)."""
    df, truth = simulate_outcomes(TASKS, MODELS, 80, seed=11, latency=True)
    data = cell_data(df)
    return data, truth, fit_utility(data, None, QUICK)


def test_parameters_recovered_at_about_the_nominal_rate(recovery):
    data, truth, fit = recovery
    q = fit.idata.posterior["quality"].stack(s=("chain", "draw")).values  # task, model, s
    lo, hi = np.quantile(q, [0.05, 0.95], axis=-1)
    covered = (lo <= truth["quality"]) & (truth["quality"] <= hi)
    assert 0.7 <= covered.mean() <= 1.0, covered.mean()  # 20 cells, nominal 0.9
    assert (hi - lo).mean() < 0.25  # and the intervals are informative, not merely wide
    c = fit.idata.posterior["cost_expected"].stack(s=("chain", "draw")).values
    clo, chi = np.quantile(c, [0.05, 0.95], axis=-1)
    cost_cov = ((clo <= truth["cost_expected"]) & (truth["cost_expected"] <= chi)).mean()
    assert cost_cov >= 0.7, cost_cov
    assert fit.diagnostics["divergences"] <= 5
    assert fit.diagnostics["r_hat_max"] < 1.1


def test_prior_predictive_covers_the_data(recovery):
    _, _, fit = recovery
    assert fit.prior_check["cells"] == 20
    assert fit.prior_check["observed_inside_prior_98"] >= 0.9
    assert "quality" in fit.idata.prior and "cost_logsd" in fit.idata.prior
    # an observed cell's location is drawn given its data there (a Potential carries the rest): not kept
    assert "cost_loc" not in fit.idata.prior and "latency_expected" not in fit.idata.prior


def test_summary_utility_and_thompson_draw(recovery):
    data, _, fit = recovery
    post = UtilityPosterior(fit.idata, lambda_cost=100.0, lambda_latency=0.01)
    s = post.summary()
    assert len(s) == 20 and s["latency_in_utility"].all()
    assert (s["quality_p05"] <= s["quality_mean"]).all() and (s["quality_mean"] <= s["quality_p95"]).all()
    expect = s["quality_mean"] - 100.0 * s["cost_usd_mean"] - 0.01 * s["latency_s_mean"]
    np.testing.assert_allclose(s["utility_mean"], expect, rtol=1e-9, atol=1e-12)
    assert list(post.prior_table().columns) == ["task", "model", "quality_mean", "quality_sd"]
    d1, d2 = post.thompson_draw("task1", rng=1), post.thompson_draw("task1", rng=1)
    pd.testing.assert_frame_equal(d1, d2)
    assert list(d1["model"]) == MODELS and d1["quality"].between(0, 1).all()
    draws = np.stack([post.thompson_draw("task1", rng=i)["quality"].to_numpy() for i in range(200)])
    assert draws.std(0).min() > 0  # it samples the posterior, not the mean
    np.testing.assert_allclose(draws.mean(0), s[s["task"] == "task1"]["quality_mean"], atol=0.03)
    assert len(post.thompson_draw("a-task-never-seen", rng=0)) == len(MODELS)


def test_without_latency_the_term_is_zero_and_said(recovery):
    df, _ = simulate_outcomes(TASKS[:2], MODELS[:2], 5, seed=3)
    data = cell_data(df)
    assert not data.has_latency
    model = build_model(data, None, QUICK)
    assert "latency_expected" not in model.named_vars and "cost_expected" in model.named_vars


def test_calibration_table_and_forest_plot(recovery, tmp_path):
    data, _, fit = recovery
    cal = calibration_table(fit.idata, data)
    assert list(cal.columns[-4:]) == ["predicted_mean", "pred_p05", "pred_p95", "calibrated"]
    assert len(cal) == 20 and cal["calibrated"].mean() >= 0.75
    png = forest_plot(fit.idata, tmp_path / "forest.png")
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"


def test_netcdf_hash_roundtrip_and_refusal(recovery, tmp_path):
    data, _, fit = recovery
    path = save_posterior(fit, tmp_path / "post.nc")
    idata = load_posterior(path, expected_hash=fit.fit_hash)
    np.testing.assert_allclose(idata.posterior["quality"].values, fit.idata.posterior["quality"].values)
    with pytest.raises(PosteriorHashMismatch, match="refit"):
        load_posterior(path, expected_hash="0" * 64)
    # the hash moves with the data and with the configuration
    other = FitConfig(draws=301, tune=300, chains=2)
    assert other.hash(fit.priors_table) != fit.config.hash(fit.priors_table)
    df2, _ = simulate_outcomes(TASKS, MODELS, 80, seed=12)
    assert cell_data(df2).data_hash != data.data_hash


def test_prior_matters_with_few_observations_and_washes_out_with_many():
    """In one fit: pairs of models with identical data but opposite leaderboard figures, one pair with
    3 prompts per cell and one with 1,500; plus a model with no figure at all."""
    tasks = ["a", "b", "c"]
    models = ["few_high", "few_low", "many_high", "many_low", "nofigure"]
    elo = [1350.0, 950.0, 1350.0, 950.0, np.nan]
    priors = pd.DataFrame({"model": models, "arena_elo": elo})
    few, _ = simulate_outcomes(tasks, ["few_high"], 3, seed=5, alpha=np.array([0.0]))
    many, _ = simulate_outcomes(tasks, ["many_high"], 1500, seed=6, alpha=np.array([0.0]))
    nofig, _ = simulate_outcomes(tasks, ["nofigure"], 20, seed=7, alpha=np.array([0.5]))
    df = pd.concat([few, few.assign(model="few_low"), many, many.assign(model="many_low"), nofig])
    fit = fit_utility(cell_data(df), priors, QUICK)
    q = fit.idata.posterior["quality"].mean(("chain", "draw")).to_pandas()
    few_gap = float((q["few_high"] - q["few_low"]).mean())
    many_gap = float((q["many_high"] - q["many_low"]).abs().mean())
    assert few_gap > 0.1, few_gap  # with 3 prompts per cell the leaderboard moves the estimate
    assert many_gap < 0.02, many_gap  # with 1,500 it hardly does
    assert np.isfinite(q["nofigure"]).all()  # a missing prior works
    assert fit.priors_table.set_index("model").loc["nofigure", "alpha_sigma"] == QUICK.weak_prior_sd


def test_alpha_priors_scaling_and_weak_default():
    priors = pd.DataFrame({"model": ["a", "b"], "arena_elo": [1200.0, 1000.0], "source": ["x", "y"]})
    ap = alpha_priors(priors, ["a", "b", "c"]).set_index("model")
    assert ap.loc["a", "alpha_mu"] == pytest.approx(100 * np.log(10) / 400)
    assert ap.loc["b", "alpha_mu"] == pytest.approx(-ap.loc["a", "alpha_mu"])
    assert ap.loc["c", "alpha_mu"] == 0 and ap.loc["c", "alpha_sigma"] > ap.loc["a", "alpha_sigma"]
    assert not ap.loc["c", "has_figure"]
    assert (alpha_priors(None, ["a"])["alpha_sigma"] == 1.5).all()


def test_with_one_task_the_interaction_is_pinned_at_zero():
    """With one task the task x model interaction summed to zero over models only: a free per-model term
    beside the model effect (|gamma| drew up to 3.8 from its prior)."""
    import pymc as pm

    df, _ = simulate_outcomes(["only"], MODELS[:3], 20, seed=3)
    model = build_model(cell_data(df), None, QUICK)
    gamma = pm.draw(model["gamma"], draws=20, random_seed=1)
    assert np.all(gamma == 0.0)


def test_graded_scores_of_mostly_0_or_1_are_not_drawn_towards_one_half():
    """A Beta likelihood on F1-like scores (mostly exactly 0 or 1, clipped to 0.001 / 0.999) is U-shaped,
    and drew the cell's quality towards 0.5: observed 0.82, posterior 0.68, with every convergence check
    passing. The fractional-Bernoulli likelihood keeps the observed mean."""
    rng = np.random.default_rng(4)
    rows = []
    for model, p1 in (("m1", 0.82), ("m2", 0.3)):
        for i in range(60):
            rows.append(("mc", model, float(rng.random() < 0.7)))
            rows.append(("open", model, 0.5 if i % 20 == 0 else float(rng.random() < p1)))
    df = pd.DataFrame(rows, columns=["task", "model", "score"]).assign(
        prompt_id=lambda d: [f"{t}-{i // 2}" for i, t in enumerate(d["task"])],
        cost_usd=0.001,
        latency_s=np.nan,
    )
    data = cell_data(df)
    assert set(data.graded_cells["task"]) == {"open"} and len(data.binary_cells) == 2
    fit = fit_utility(data, None, QUICK)
    q = fit.idata.posterior["quality"].mean(("chain", "draw")).to_series()
    observed = df.groupby(["task", "model"])["score"].mean()
    for model in ("m1", "m2"):
        assert abs(q[("open", model)] - observed[("open", model)]) < 0.06, (model, q, observed)
    calib = calibration_table(fit.idata, data)
    assert calib["calibrated"].all()
    with pytest.raises(ValueError, match="0, 1"):
        cell_data(df.assign(score=df["score"] * 2))


def test_free_calls_and_a_model_without_rows_keep_costs_finite():
    """A $0 row was floored to 1e-9 USD in the logs: 2 free rows of 40 put the cell's expected cost at 70x
    the observed. A model with no rows drew log-sds whose expected cost reached 1e10 to 1e30 USD."""
    df, _ = simulate_outcomes(["t0", "t1"], ["m0", "m1", "m2"], 40, seed=1)
    cell = (df["task"] == "t0") & (df["model"] == "m0")
    df.loc[df.index[cell][:2], "cost_usd"] = 0.0
    data = cell_data(df, models=["new-model"])
    stats = data.cells.set_index(["task", "model"])
    assert stats.loc[("t0", "m0"), "cost_share"] == pytest.approx(38 / 40)
    assert stats.loc[("t0", "m0"), "cost_n"] == 38 and stats.loc[("t0", "new-model"), "cost_n"] == 0
    s = (
        UtilityPosterior(fit_utility(data, None, QUICK).idata, 1.0, 0.0)
        .summary()
        .set_index(["task", "model"])
    )
    observed = df.loc[cell, "cost_usd"].mean()
    assert 0.5 < s.loc[("t0", "m0"), "cost_usd_mean"] / observed < 2.0
    unseen = s.xs("new-model", level="model")["cost_usd_mean"]
    assert (unseen < 50 * df["cost_usd"].mean()).all(), unseen  # a wide prior's mean, not 1e10 USD


def test_models_without_latency_rows_pay_no_invented_latency_and_a_free_model_stays_free():
    """RouterBench's API models have costs and no latencies; the local models are free and slow on CPU.
    The API models were charged 45-59 s of latency drawn from a prior centred on the local ones, and the
    free model, on a task it had not answered, an expected cost of 9x the API models' mean."""
    rng = np.random.default_rng(5)
    rows = []
    for task in ("t0", "t1"):
        for model, p, cost, lat in (
            ("api1", 0.8, 1e-3, np.nan),
            ("api2", 0.7, 5e-4, np.nan),
            ("local", 0.5, 0, 10),
        ):
            if model == "local" and task == "t1":
                continue  # the local model never answered t1
            for i in range(40):
                latency = lat * rng.lognormal(0, 0.2) if lat == lat else np.nan
                rows.append((f"{task}-{i}", task, model, float(rng.random() < p), cost, latency))
    df = pd.DataFrame(rows, columns=["prompt_id", "task", "model", "score", "cost_usd", "latency_s"])
    data = cell_data(df)
    s = (
        UtilityPosterior(fit_utility(data, None, QUICK).idata, 100.0, 0.05)
        .summary()
        .set_index(["task", "model"])
    )
    assert s["latency_in_utility"].to_dict() == {k: k[1] == "local" for k in s.index}
    assert s.loc[("t0", "api1"), "latency_s_mean"] != s.loc[("t0", "api1"), "latency_s_mean"]  # NaN: unknown
    assert 5 < s.loc[("t0", "local"), "latency_s_mean"] < 20
    # api1's utility is its quality less its cost, with no latency term
    u = s.loc[("t0", "api1")]
    assert u["utility_mean"] == pytest.approx(u["quality_mean"] - 100.0 * u["cost_usd_mean"], abs=1e-9)
    assert s.loc[("t1", "local"), "cost_usd_mean"] == 0.0  # free wherever it was seen


def test_the_automatic_form_fits_a_few_well_measured_cells_without_divergences():
    """The centred form was chosen from a median of 30 rows a cell: on 12 cells of 200 rows, data drawn from
    the model itself, the fit diverged hundreds of times and failed its own check."""
    df, _ = simulate_outcomes([f"t{i}" for i in range(3)], [f"m{i}" for i in range(4)], 200, seed=1)
    fit = fit_utility(cell_data(df), None, FitConfig(draws=300, tune=500))
    # 0 when the sampler's numba code is compiled afresh, 1 when it comes from PyTensor's cache (the same
    # seed; the cached code rounds otherwise): far from the hundreds of the centred form either way
    assert fit.diagnostics["divergences"] <= 3


def test_cells_of_two_rows_fit_without_divergences():
    """A cell's log-location was sampled as itself: with 2 rows its posterior width followed the cell's
    log-sd, a funnel. On these 12 cells of 2 rows (costs and latencies) at target_accept 0.8 the fit diverged
    12 times in 1,600 draws (14, 32 and 50 in 4,000 on three simulated sets); the demo's fit, whose local
    models have 2 rows a cell, about once in 12,000 draws at 0.995, which failed its check in CI. The diagonal
    mass matrix, as then, so that the test sees the parametrization alone."""
    df, _ = simulate_outcomes(
        [f"t{i}" for i in range(3)], [f"m{i}" for i in range(4)], 2, seed=3, latency=True
    )
    fit = fit_utility(
        cell_data(df), None, FitConfig(draws=400, tune=400, target_accept=0.8, low_rank_mass_matrix=False)
    )
    assert fit.diagnostics["divergences"] <= 1  # 0 here; 1 allowed for the compiled code's rounding (above)


def test_task_effects_the_data_pin_down_are_sampled_centred():
    """Too few cells for the centred cell effects, but 1,500 rows a task: non-centred, the task effects the
    data fix made their offsets follow the inverse of their scale, a funnel (on these data 15 divergences in
    2,000 draws at target_accept 0.8, 76 in 4,000; 1-12 in 4,000 at the default settings over three simulated
    sets, r_hat up to 1.018), the centred form none."""
    df, _ = simulate_outcomes([f"t{i}" for i in range(4)], [f"m{i}" for i in range(3)], 500, seed=1)
    data = cell_data(df)
    assert not centered_auto(data.cells["n"]) and centered_tasks(data.cells)
    fit = fit_utility(
        data, None, FitConfig(draws=500, tune=500, target_accept=0.8, low_rank_mass_matrix=False)
    )
    assert "beta_z" not in fit.idata.posterior and "gamma_z" in fit.idata.posterior  # each its own form
    assert fit.diagnostics["divergences"] <= 1  # 0 here; 1 allowed for the compiled code's rounding


def test_a_task_of_few_rows_keeps_the_task_effects_non_centred_where_the_cells_are():
    """Which form is picked (nothing is sampled). Most tasks well measured, a few with 2 rows a cell, where
    the tasks differ little: centred, those tasks' effects funnel with the scale (514 divergences in 2,000
    draws against 0 non-centred, in a review's simulation of these data); a median of the tasks' rows had
    picked the centred form. Where the cell effects are centred, the task effects follow them, as before."""
    n = np.array([[500] * 3] * 4 + [[2] * 3] * 3)  # 4 tasks of 500 rows a cell, 3 of 2, over 3 models
    df, _ = simulate_outcomes(
        [f"t{i}" for i in range(7)], [f"m{i}" for i in range(3)], n, seed=1, sigma_beta=0.1
    )
    data = cell_data(df)
    assert not centered_tasks(data.cells)
    model = build_model(data, None, FitConfig())
    assert "beta_z" in {rv.name for rv in model.free_RVs}
    # 36 cells, a median of 500 rows: the cell effects centred, and the task effects with them
    n = np.array([[500] * 6] * 4 + [[2] * 6] * 2)
    df, _ = simulate_outcomes([f"t{i}" for i in range(6)], [f"m{i}" for i in range(6)], n, seed=1)
    data = cell_data(df)
    assert not centered_tasks(data.cells) and centered_auto(data.cells.loc[data.cells["n"] > 0, "n"])
    free = {rv.name for rv in build_model(data, None, FitConfig()).free_RVs}
    assert "beta" in free and "gamma" in free


def test_a_core_count_under_one_is_refused():
    df, _ = simulate_outcomes(["t0", "t1"], ["m0", "m1"], 5, seed=1)
    for cores in (0, -2):
        with pytest.raises(ValueError, match="cores must be 1 or more"):
            fit_utility(cell_data(df), None, FitConfig(cores=cores))


def test_a_parameter_whose_chains_never_moved_fails_the_r_hat_check():
    """r_hat max and ESS min left NaN out (np.nanmax): an element frozen in every chain, whose r_hat is
    NaN, passed as converged."""
    import arviz as az

    from router_models.utility.model import diagnostics
    from router_models.utility.pipeline import convergence_checks

    draws = np.random.default_rng(0).normal(size=(4, 500, 3))
    draws[:, :, 1] = 0.25  # stuck where it started, in every chain
    stats = {"diverging": np.zeros((4, 500), bool)}
    d = diagnostics(az.from_dict(posterior={"a": draws}, sample_stats=stats), ["a"])
    assert np.isnan(d["r_hat_max"]) and not convergence_checks(d)["r_hat"]
    fresh = np.random.default_rng(1).normal(size=(4, 500, 3))
    moving = diagnostics(az.from_dict(posterior={"a": fresh}, sample_stats=stats), ["a"])
    assert convergence_checks(moving)["r_hat"] and convergence_checks(moving)["ess_bulk"]
