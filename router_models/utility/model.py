"""The hierarchical utility model (STYLE.md item 5): build, prior predictive check, sample, diagnose.

Quality:  logit q[t, m] = mu + alpha[m] + beta[t] + gamma[t, m]
  alpha[m] ~ Normal(scaled leaderboard score, prior sd)   (weak prior where no figure)
  beta     ~ ZeroSumNormal(sigma_beta) over tasks
  gamma    = tau_gamma * ZeroSumNormal(1) over tasks and models   (partially pooled interaction)
  0/1 scores: Binomial(n, q) per cell; graded scores: a fractional-Bernoulli term per cell,
  S log q + (n - S) log(1 - q) with S the sum of its n scores.
Cost (and latency where present): log y ~ Normal(c[t, m], s[t, m]) per prompt with y > 0, c and log s
  pooled towards model + task effects (log s across models too); fitted from per-cell sufficient statistics
  (mean and sum of squares). The expected value is the positive share of the cell's rows (free calls count
  as 0) times the log-normal mean.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pandas as pd

from router_models.utility.data import CellData
from router_models.utility.priors import alpha_priors


@dataclass(frozen=True)
class FitConfig:
    # RouterBench with the micro-bench's 64 local rows (6 tasks, 13 models), 2026-12-03: 1000 tuning steps at
    # target_accept 0.9 gave r_hat 1.035 and ESS 204 (beta and model_level mixed slowly); 2000 at 0.95 with
    # 1000 draws, r_hat 1.005-1.010 over seeds (the check's limit is 1.01); with 2000 draws, 1.003 (ESS 1637),
    # and with 8 local rows 1.004 (ESS 1057)
    draws: int = 3000  # at target_accept 0.99 with 2,000, r_hat 1.012 in a CI run (the check's limit: 1.01)
    tune: int = 2000
    chains: int = 4
    cores: int | None = None  # threads (pymc: processes) for the chains; None: every CPU, one a chain at most
    progress: bool = False  # the sampler's progress bar (the CLI's on a terminal; a log has no use for it)
    seed: int = 20261130
    # measured on the RouterBench outcomes, 4 x (1000 + 1000), 2 cores: nutpie 40 CPU-s to compile and
    # 2.5 CPU-s to sample; PyMC's own NUTS 190 CPU-s to sample. nutpie it is.
    sampler: Literal["nutpie", "pymc"] = "nutpie"
    # 0.95 again since 2026-12-06 (it had gone to 0.99 and 0.995 against ~1 divergence in 12,000 draws, which
    # came from a funnel, removed in _lognormal_block). Two CI runs' demo data, 4 x 3,000 draws: 2 of 10 fits
    # (seeds 1-5) had 1 divergence with the diagonal mass matrix, none of 14 (seeds 1-6 and this one) with the
    # low-rank one below
    target_accept: float = 0.95
    # nutpie's low-rank modified mass matrix: on the demo's data ESS bulk min ~11,400 against ~4,300 with the
    # diagonal one (2,300 at 0.995), r_hat 1.0014-1.002, 47 s against 40 s a fit (pymc's sampler ignores it)
    low_rank_mass_matrix: bool = True
    prior_sd: float = 0.5
    weak_prior_sd: float = 1.5
    prior_predictive_draws: int = 500
    # the hierarchical task and task x model effects centred or not, both; None picks by the data
    # (centered_auto for the task x model effects, centered_tasks for the task effects)
    centered: bool | None = None
    # the share of prompts the calibration check holds out of a second fit (0: checked in sample)
    holdout: float = 0.2

    def __post_init__(self) -> None:
        if self.cores is not None and self.cores < 1:
            raise ValueError(f"FitConfig.cores must be 1 or more (or None: every CPU), not {self.cores}")
        if (
            self.sampler == "nutpie" and self.tune < 1
        ):  # a Rust panic after the compile ("early_end < num_tune")
            raise ValueError(f"nutpie needs at least 1 tuning step, not {self.tune}")
        if not 0 <= self.seed < 2**32:  # numpy's seed range: an OverflowError after the compile
            raise ValueError(f"the seed must lie in 0 to 2**32 - 1, not {self.seed}")

    def hash(self, priors_table: pd.DataFrame | None = None) -> str:
        """Everything that changes the posterior (not draws-independent settings like cores), the model's
        code included: an edited prior or likelihood must not reuse the old fit."""
        from router_models.utility.registry import code_version

        payload = {k: v for k, v in asdict(self).items() if k not in ("cores", "progress")}
        payload["code"] = code_version()
        if priors_table is not None:
            payload["priors"] = priors_table[["model", "alpha_mu", "alpha_sigma"]].round(9).values.tolist()
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _zerosum(pm, name: str, sigma, dims: tuple[str, ...], sizes: tuple[int, ...]):
    """ZeroSumNormal over every axis when each has more than one level; else pinned at zero. An effect over
    one level is the intercept's, and a task x model interaction with one task (or one model) is the model's
    (the task's) main effect: left free over the other axis, it competed with that effect and diluted the
    leaderboard prior on it (18 divergences on a one-task fit)."""
    if all(s > 1 for s in sizes):
        return pm.ZeroSumNormal(name, sigma=sigma, dims=dims, n_zerosum_axes=len(dims))
    import pytensor.tensor as pt

    return pm.Deterministic(name, pt.zeros(sizes), dims=dims)


def _lognormal_block(pm, pt, data: CellData, kind: str, coords_sizes: tuple[int, int]):
    """Log-normal cost or latency per (task, model); returns the expected value per cell.

    The cell location and log-sd are pooled towards model + task effects with fixed scales: enough
    to predict cells without observations, and no learned scale (hence no funnel between the levels) to
    slow NUTS. The model log-sd is pooled across models: with a free N(-1, 1) per model, a model with no
    rows drew log-sds whose exp(sd^2 / 2) put its expected cost at 1e10 to 1e30 USD.

    Where the cells hold few rows (median under 30) the levels are sampled non-centred (as offsets in sd
    units): with a day's micro-bench latencies (2 rows in each of 4 cells, no latency for RouterBench's 11
    models) the centred log-sds mixed at ESS 104 in 4,000 draws, the global level tied to 13 model levels
    that the data hardly moved.

    An observed cell's location is sampled as a z-score of its Normal conditional given the cell's mean log
    and its prior, and the mean log's marginal likelihood (loc integrated out) is a potential: exactly the
    same posterior, with no scale of z that follows the cell's log-sd. Sampled as loc itself, loc's width
    followed the cell's sd, a funnel where a 2-row cell's log-sd went low (about 1 divergence in 12,000
    draws of the demo's fit, 3 to 4 posterior sds low in a local model's log-sd); sampled as
    loc = mean - sd / sqrt(n) * z with loc's prior a potential, z's width followed 1 / sd instead, a funnel
    where the log-sds went high (1 divergence in a CI run of the demo's fit, the latency log-sds 2.7 to 3.5
    posterior sds high)."""
    cells = data.stat_cells(kind)
    center = float(np.average(cells[f"{kind}_logmean"], weights=cells[f"{kind}_n"]))
    nt, _ = coords_sizes
    c_t = _zerosum(pm, f"{kind}_task", 1.0, ("task",), (nt,))
    # the spread of a cell's log-costs is the task's more than the model's: on RouterBench every model's
    # log-sd is about -4.5 on Winogrande, -3.1 on ARC and -1 on MBPP (prompts of like length, or not); pooled
    # to the model's level alone, each Winogrande cell sat 5 prior sds from it, and NUTS diverged in the
    # tension (1 in 12,000 draws in a CI run of the demo's fit, at target_accept 0.99)
    ls_t = _zerosum(pm, f"{kind}_logsd_task", 1.0, ("task",), (nt,))

    def offset(name, dims):
        return pm.Normal(f"{kind}_{name}_z", 0.0, 1.0, dims=dims)

    if float(cells[f"{kind}_n"].median()) >= 30:
        c_m = pm.Normal(f"{kind}_model", center, 1.5, dims="model")  # RouterBench model log-costs: sd 1.4
        ls_g = pm.Normal(f"{kind}_logsd_global", -1.0, 1.0)
        ls_m = pm.Normal(f"{kind}_logsd_model", ls_g, 0.3, dims="model")
        ls = pm.Normal(f"{kind}_logsd", ls_m[None, :] + ls_t[:, None], 0.3, dims=("task", "model"))
    else:
        c_m = pm.Deterministic(f"{kind}_model", center + 1.5 * offset("model", "model"), dims="model")
        ls_g = pm.Deterministic(f"{kind}_logsd_global", -1.0 + offset("logsd_global", ()))
        ls_m = pm.Deterministic(f"{kind}_logsd_model", ls_g + 0.3 * offset("logsd_model", "model"),
                                dims="model")  # fmt: skip
        ls_z = ls_t[:, None] + 0.3 * offset("logsd", ("task", "model"))
        ls = pm.Deterministic(f"{kind}_logsd", ls_m[None, :] + ls_z, dims=("task", "model"))
    sd = pt.exp(ls)
    prior_loc = c_m[None, :] + c_t[:, None]
    ti, mi = cells["t"].to_numpy(), cells["m"].to_numpy()
    n = cells[f"{kind}_n"].to_numpy(dtype=float)
    # the cells' indices and counts stay in the fit's constant data: posterior.py reads which models
    # have latency rows from latency_m
    t_idx = pm.Data(f"{kind}_t", ti, dims=f"{kind}_cell")
    m_idx = pm.Data(f"{kind}_m", mi, dims=f"{kind}_cell")
    n_data = pm.Data(f"{kind}_n", n, dims=f"{kind}_cell")
    # loc | data is Normal (the cell's mean log with sd / sqrt(n), and its prior with sd 1): loc is drawn as a
    # z-score of that conditional and the mean log's marginal likelihood given the prior enters as a potential
    mean_log = cells[f"{kind}_logmean"].to_numpy()
    var_mean = sd[t_idx, m_idx] ** 2 / n_data
    loc_prior = prior_loc[t_idx, m_idx]
    post_var = var_mean / (var_mean + 1.0)
    z_obs = offset("loc_data", f"{kind}_cell")
    loc_obs = (mean_log + var_mean * loc_prior) / (var_mean + 1.0) + pt.sqrt(post_var) * z_obs
    pm.Potential(f"{kind}_mean_marginal",
                 pm.logp(pm.Normal.dist(loc_prior, pt.sqrt(var_mean + 1.0)), mean_log).sum())  # fmt: skip
    loc = pt.set_subtensor(prior_loc[ti, mi], loc_obs)
    free = np.ones(coords_sizes, dtype=bool)
    free[ti, mi] = False
    if free.any():  # cells without rows: their prior, non-centred
        fi, fm = np.nonzero(free)
        loc = pt.set_subtensor(loc[fi, fm], prior_loc[fi, fm] + offset("loc_free", f"{kind}_free_cell"))
    loc = pm.Deterministic(f"{kind}_loc", loc, dims=("task", "model"))
    multi = n >= 2
    if multi.any():  # sum of squared log deviations: sigma^2 * chi2(n - 1)
        nn = n[multi]
        ss = np.maximum(cells[f"{kind}_logss"].to_numpy()[multi], 1e-8 * nn)
        sd_c = sd[ti[multi], mi[multi]]
        pm.Gamma(f"{kind}_logss_obs", alpha=(nn - 1) / 2, beta=1 / (2 * sd_c**2), observed=ss)
    share = np.ones(coords_sizes)
    every = data.cells
    share[every["t"].to_numpy(), every["m"].to_numpy()] = every[f"{kind}_share"].to_numpy()
    return pm.Deterministic(f"{kind}_expected", share * pt.exp(loc + sd**2 / 2), dims=("task", "model"))


WELL_MEASURED_ROWS = 300  # rows that pin an effect down, for the choice of centred forms


def centered_auto(observed_n: pd.Series) -> bool:
    """The centred form where the cells pin their effects down: a median of 300 rows or more in at least 24
    observed cells. With fewer cells the spread of the task x model effects (tau_gamma) is loosely known
    and the centred form's funnel diverges, even with hundreds of rows a cell. Fits of data simulated from
    the model (seed 1, the default sampler settings), divergences centred / not: 3 tasks x 4 models x 200
    rows 491 / 0, x 400 rows 73 / 2; 3 x 11 x 300 rows 0 / 1; the demo's 43 cells (median 887) centred."""
    return len(observed_n) >= 24 and float(observed_n.median()) >= WELL_MEASURED_ROWS


def centered_tasks(cells: pd.DataFrame) -> bool:
    """The task effects centred where every task has 300 scored rows or more (or where the task x model
    effects are centred: `build_model`). Non-centred, a task effect the data fix makes its offset (beta /
    sigma_beta) follow the inverse of the scale, a funnel of its own: on the 10 x 13 bench data set (about
    2,500 rows a task), whose cells hold too few rows for the centred cell effects, that form diverged 0, 2, 7
    and 5 times in 12,000 draws over four seeds without leaderboard priors and 0, 1, 1 over three with them
    (sigma_beta 6-7 posterior sds high); the centred one in none of these seven, nor in the benchmark's own
    run. With a few rows in a task it is the centred form that diverges: 3 tasks x 4 models x 2 rows, 13-373
    against 0; 4 tasks of 500 rows a cell and 3 of 2 rows whose difficulties differ little (sigma_beta 0.1),
    514 against 0 (a review's simulation). Where the cell effects are centred the task effects stay centred as
    they were before this rule, a task of few rows among them or not; neither form is clean there (4 tasks of
    500 rows a cell and 2 of 2 rows, 6 models, 4 x 1,000 draws, two seeds at sigma_beta 0.1 and 0.8: centred
    51 divergences in one fit and none in three, non-centred 2-6 in each). The demo's tasks have thousands of
    rows each."""
    rows = cells.groupby("task")["n"].sum()
    return len(rows) > 0 and float(rows.min()) >= WELL_MEASURED_ROWS


def build_model(data: CellData, priors: pd.DataFrame | None, config: FitConfig | None = None):
    """The PyMC model for `data` with leaderboard `priors` (a `leaderboard_priors` table, or None)."""
    import pymc as pm
    import pytensor.tensor as pt

    config = config or FitConfig()
    nt, nm = len(data.tasks), len(data.models)
    observed_n = data.cells.loc[data.cells["n"] > 0, "n"]
    if config.centered is not None:
        centered_cells = centered_beta = config.centered
    else:
        centered_cells = centered_auto(observed_n)
        centered_beta = centered_cells or centered_tasks(data.cells)
    ap = alpha_priors(priors, data.models, config.prior_sd, config.weak_prior_sd)
    coords: dict[str, list[str] | np.ndarray] = {"task": data.tasks, "model": data.models}
    bc = data.binary_cells
    coords["cell"] = [f"{a}|{b}" for a, b in zip(bc["task"], bc["model"], strict=True)]
    for kind in ("cost", "latency"):
        sc = data.stat_cells(kind)
        coords[f"{kind}_cell"] = [f"{a}|{b}" for a, b in zip(sc["task"], sc["model"], strict=True)]
        seen = set(coords[f"{kind}_cell"])
        coords[f"{kind}_free_cell"] = [
            f"{a}|{b}" for a in data.tasks for b in data.models if f"{a}|{b}" not in seen
        ]
    gc = data.graded_cells
    coords["graded_cell"] = [f"{a}|{b}" for a, b in zip(gc["task"], gc["model"], strict=True)]
    with pm.Model(coords=coords) as model:
        alpha_mu = pm.Data("alpha_prior_mu", ap["alpha_mu"].to_numpy(), dims="model")
        alpha_sigma = pm.Data("alpha_prior_sigma", ap["alpha_sigma"].to_numpy(), dims="model")
        mu = pm.Normal("mu", 0.0, 1.5)
        # mu + alpha[m] is sampled directly (the data pin it down); alpha is recovered from it, which
        # avoids the ridge between the intercept and the model effects
        model_level = pm.Normal("model_level", mu + alpha_mu, alpha_sigma, dims="model")
        pm.Deterministic("alpha", model_level - mu, dims="model")
        sigma_beta = pm.HalfNormal("sigma_beta", 1.5)
        tau_gamma = pm.HalfNormal("tau_gamma", 1.0)
        if centered_beta:
            beta = _zerosum(pm, "beta", sigma_beta, ("task",), (nt,))
        else:
            beta = _zerosum(pm, "beta_z", 1.0, ("task",), (nt,)) * sigma_beta
            beta = pm.Deterministic("beta", beta, dims="task")
        if centered_cells:
            gamma = _zerosum(pm, "gamma", tau_gamma, ("task", "model"), (nt, nm))
        else:
            gamma = _zerosum(pm, "gamma_z", 1.0, ("task", "model"), (nt, nm)) * tau_gamma
            gamma = pm.Deterministic("gamma", gamma, dims=("task", "model"))
        logit_q = model_level[None, :] + beta[:, None] + gamma
        quality = pm.Deterministic("quality", pm.math.invlogit(logit_q), dims=("task", "model"))
        if len(bc):
            t_idx = pm.Data("cell_t", bc["t"].to_numpy(), dims="cell")
            m_idx = pm.Data("cell_m", bc["m"].to_numpy(), dims="cell")
            n_trials = pm.Data("n_trials", bc["n"].to_numpy(), dims="cell")
            pm.Binomial("successes", n=n_trials, p=quality[t_idx, m_idx],
                        observed=bc["score_sum"].round().astype(int).to_numpy(), dims="cell")  # fmt: skip
        if len(gc):
            # fractional Bernoulli: sum s log q + (1 - s) log(1 - q) over a cell's scores s in [0, 1]. A Beta
            # likelihood drew the mean of scores that are mostly exactly 0 or 1 (an F1, a judge's extremes)
            # towards 0.5: observed 0.82, posterior 0.68, every convergence check passing
            g_t = pm.Data("graded_t", gc["t"].to_numpy(), dims="graded_cell")
            g_m = pm.Data("graded_m", gc["m"].to_numpy(), dims="graded_cell")
            s_sum = pm.Data("graded_sum", gc["score_sum"].to_numpy(dtype=float), dims="graded_cell")
            n_g = pm.Data("graded_n", gc["n"].to_numpy(dtype=float), dims="graded_cell")
            lq = logit_q[g_t, g_m]  # log q = -softplus(-lq), log(1 - q) = -softplus(lq)
            pm.Potential("graded_score", -pt.sum(s_sum * pt.softplus(-lq) + (n_g - s_sum) * pt.softplus(lq)))
        for kind in ("cost", "latency"):
            if len(data.stat_cells(kind)):
                _lognormal_block(pm, pt, data, kind, (nt, nm))
    return model


def prior_predictive_check(model, data: CellData, draws: int = 500, seed: int = 0):
    """Sample the prior predictive; report whether the observed cell rates lie inside its 1-99% range.

    Returns (prior InferenceData, report dict)."""
    import pymc as pm

    with model, warnings.catch_warnings():
        # the graded cells' Potential has no prior predictive: the check reads the 0/1 cells only
        warnings.filterwarnings("ignore", "The effect of Potentials", UserWarning)
        prior = pm.sample_prior_predictive(draws=draws, random_seed=seed)
    report = {"draws": draws, "cells": 0, "observed_inside_prior_98": float("nan")}
    bc = data.binary_cells
    if len(bc) and "successes" in prior.prior_predictive:
        rates = (
            prior.prior_predictive["successes"].stack(s=("chain", "draw")).values
            / bc["n"].to_numpy()[:, None]
        )
        lo, hi = np.quantile(rates, [0.01, 0.99], axis=1)
        obs = bc["score_sum"].to_numpy() / bc["n"].to_numpy()
        report.update(cells=len(bc), observed_inside_prior_98=float(np.mean((obs >= lo) & (obs <= hi))))
    return prior, report


@dataclass
class UtilityFit:
    idata: object  # arviz.InferenceData with posterior, prior, sample_stats, observed/constant data
    data: CellData
    priors_table: pd.DataFrame  # alpha_priors output used by the fit
    config: FitConfig
    diagnostics: dict
    prior_check: dict

    @property
    def fit_hash(self) -> str:
        return fit_hash(self.data.data_hash, self.config.hash(self.priors_table))

    @property
    def data_version(self) -> str:
        """What the fit's data are: its outcome rows and the leaderboard priors it was given (the registry's
        data_version; the outcome rows' hash alone left two fits on other Elo figures the same version)."""
        priors = self.priors_table.to_csv(index=False, float_format="%.10g")
        return hashlib.sha256(f"{self.data.data_hash}:{priors}".encode()).hexdigest()


def fit_hash(data_hash: str, config_hash: str) -> str:
    return hashlib.sha256(f"{data_hash}:{config_hash}".encode()).hexdigest()


def diagnostics(idata, var_names: list[str]) -> dict:
    """r_hat max, ESS bulk min over the free variables and quality; divergences. A NaN (an element whose
    chains never moved) makes the figure NaN, which fails its check: it is not left out."""
    import arviz as az

    names = [v for v in var_names if v in idata.posterior]
    rhat = az.rhat(idata, var_names=names)
    ess = az.ess(idata, var_names=names, method="bulk")
    r_max = float(np.max([np.max(rhat[v].values) for v in names]))
    e_min = float(np.min([np.min(ess[v].values) for v in names]))
    div = int(idata.sample_stats["diverging"].sum()) if "diverging" in idata.sample_stats else 0
    return {"r_hat_max": r_max, "ess_bulk_min": e_min, "divergences": div}


def fit_utility(data: CellData, priors: pd.DataFrame | None, config: FitConfig | None = None) -> UtilityFit:
    """Build, check the prior predictive, sample with NUTS, diagnose. The one call an asset makes."""
    import pymc as pm

    config = config or FitConfig()
    start = time.perf_counter()
    model = build_model(data, priors, config)
    cores = min(config.cores if config.cores is not None else os.cpu_count() or 1, config.chains)
    prior, prior_report = prior_predictive_check(model, data, config.prior_predictive_draws, config.seed)
    kwargs: dict[str, object] = dict(
        draws=config.draws, tune=config.tune, chains=config.chains, cores=cores,
        random_seed=config.seed, target_accept=config.target_accept, progressbar=config.progress,
        nuts_sampler=config.sampler,
    )  # fmt: skip
    if config.sampler == "nutpie":
        # pymc passes neither cores nor its own thread count on to nutpie, which ran min(chains, CPUs) threads
        kwargs["nuts_sampler_kwargs"] = {
            "low_rank_modified_mass_matrix": config.low_rank_mass_matrix,
            "cores": cores,
        }
    with model:
        idata = pm.sample(**kwargs)
    # sample_prior_predictive leaves Potentials out, so an observed cell's location (and expected value)
    # drawn there is centred on its data: not its prior, and not kept
    data_centred = [f"{k}_{v}" for k in ("cost", "latency") for v in ("loc", "expected", "loc_data_z")]
    prior.prior = prior.prior.drop_vars([v for v in data_centred if v in prior.prior])
    idata.extend(prior)
    # the cells' cost and latency locations are deterministic now (their free variables are z-scores):
    # checked as themselves too
    names = [rv.name for rv in model.free_RVs] + ["quality", "cost_loc", "latency_loc"]
    diag = diagnostics(idata, names)
    diag["fit_seconds"] = time.perf_counter() - start
    diag["sampler"] = config.sampler
    ap = alpha_priors(priors, data.models, config.prior_sd, config.weak_prior_sd)
    return UtilityFit(idata, data, ap, config, diag, prior_report)
