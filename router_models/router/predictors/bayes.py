"""Bayesian predictor: task x model prior (the utility model's posterior when given), updated by neighbours.

For a prompt, the prior on model m's quality is the mixture over tasks (weighted by the task classifier) of
task x model Beta distributions; it is then updated by the outcomes of the k nearest training prompts, so
the posterior mean and sd are closed-form Beta moments.

The prior table has columns task, model, quality_mean, quality_sd (the utility model's registry rows). When
it is absent, each task x model rate is a Beta posterior on the training outcomes of that task, shrunk to
the model's overall rate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from router_models.router.predictors.base import (
    Features,
    Predictor,
    QualityPrediction,
    numbers_in,
    observed,
    register,
)
from router_models.router.predictors.baselines import mixture, task_tables
from router_models.router.predictors.knn import neighbour_counts

PRIOR_COLUMNS = ["task", "model", "quality_mean", "quality_sd"]


def prior_from_table(
    table: pd.DataFrame, task_names: list[str], models: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T, m) prior means and sds from a task x model table, plus a mask of the cells the table covers.

    A task missing from the table falls back to its family (pipelines.bench.outcomes.TASK_FAMILY), then to
    the model's average over the table's tasks.
    """
    from pipelines.bench.outcomes import task_family

    missing = set(PRIOR_COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"prior table lacks columns {sorted(missing)}; expected {PRIOR_COLUMNS}")
    for col in ("quality_mean", "quality_sd"):
        table = table.assign(**{col: numbers_in(table, col, 0.0, 1.0, "prior table")})
    cells = table.groupby(["task", "model"])[["quality_mean", "quality_sd"]].mean()
    per_model = table.groupby("model")[["quality_mean", "quality_sd"]].mean()
    mean = np.full((len(task_names), len(models)), np.nan)
    sd = np.full_like(mean, np.nan)
    for i, t in enumerate(task_names):
        for j, m in enumerate(models):
            for key in ((t, m), (task_family(t), m)):
                if key in cells.index:
                    mean[i, j], sd[i, j] = cells.loc[key]
                    break
            else:
                if m in per_model.index:
                    mean[i, j], sd[i, j] = per_model.loc[m]
    return mean, sd, ~np.isnan(mean)


def update_with_outcomes(
    prior_mean: np.ndarray, prior_sd: np.ndarray, y: np.ndarray, tasks: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Conjugate update of moment-matched Beta priors by the training outcomes of each task."""
    y0, mask = observed(y)
    mu = prior_mean.clip(0.01, 0.99)
    var = np.minimum(prior_sd.clip(1e-3) ** 2, mu * (1 - mu) * 0.99)
    nu = mu * (1 - mu) / var - 1
    a, b = mu * nu, (1 - mu) * nu
    for t in range(prior_mean.shape[0]):
        rows = tasks == t
        s, n = y0[rows].sum(0), mask[rows].sum(0)
        a[t], b[t] = a[t] + s, b[t] + n - s
    mean = a / (a + b)
    return mean, np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))


@register
class BayesTaskPrior(Predictor):
    """Task-mixture Beta prior (strength at most `kappa` pseudo-prompts, less where the task x model rate is
    unsure) updated by the k nearest prompts."""

    name = "bayes"

    def __init__(
        self,
        k: int = 60,
        kappa: float = 12.0,
        prior_table: pd.DataFrame | None = None,
        update_prior: bool = True,
    ) -> None:
        """`update_prior=False` takes the table's cells as they are: for a table that is already a posterior
        over the training outcomes (the utility model's registry rows), which must not be counted twice."""
        self.k, self.kappa, self.prior_table, self.update_prior = k, kappa, prior_table, update_prior

    def fit(
        self, x: Features, y: np.ndarray, models: list[str], tasks: np.ndarray | None = None
    ) -> BayesTaskPrior:
        if tasks is None:
            raise ValueError("the Bayesian predictor needs the training prompts' task labels")
        self.models = list(models)
        n_tasks = x.task_proba.shape[1]
        fallback_mean, fallback_sd = task_tables(y, tasks, n_tasks)
        self.used_prior_table_ = False
        if self.prior_table is not None:
            pm, psd, covered = prior_from_table(self.prior_table, x.task_names, self.models)
            um, usd = np.where(covered, pm, 0.5), np.where(covered, psd, 0.3)
            if self.update_prior:
                um, usd = update_with_outcomes(um, usd, y, tasks)
            self.task_mean_ = np.where(covered, um, fallback_mean)
            self.task_sd_ = np.where(covered, usd, fallback_sd)
            self.used_prior_table_ = bool(covered.any())
        else:
            self.task_mean_, self.task_sd_ = fallback_mean, fallback_sd
        self.emb_ = x.emb.astype(np.float32)
        self.y_ = y.astype(np.float32)
        return self

    def predict(self, x: Features) -> QualityPrediction:
        prior = mixture(x.task_proba, self.task_mean_, self.task_sd_)
        y0, mask = self._observed()
        succ, trials = neighbour_counts(x.emb, self.emb_, y0, mask, self.k)
        mu = prior.mean.clip(1e-3, 1 - 1e-3)
        # the prior's strength: `kappa` pseudo-prompts of spread within a task, weakened by how unsure the
        # task x model rate itself is (its sd: few rows behind it, or an unsure task): never stronger
        spread = mu * (1 - mu) / (self.kappa + 1) + prior.sd**2
        kappa = np.clip(mu * (1 - mu) / spread - 1, 0.5, self.kappa)
        a = kappa * mu + succ
        b = kappa * (1 - mu) + trials - succ
        mean = a / (a + b)
        return QualityPrediction(mean, np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1))))

    def _observed(self) -> tuple[np.ndarray, np.ndarray]:
        """The training outcomes with NaN -> 0 and their mask, computed once per fitted predictor."""
        cached: tuple[np.ndarray, np.ndarray, np.ndarray] | None = getattr(self, "observed_", None)
        if cached is None or cached[0] is not self.y_:
            cached = self.observed_ = (self.y_, *observed(self.y_))
        return cached[1], cached[2]

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        params = {
            "models": self.models,
            "k": self.k,
            "kappa": self.kappa,
            "used_prior_table": self.used_prior_table_,
        }
        arrays = {"task_mean": self.task_mean_, "task_sd": self.task_sd_, "emb": self.emb_, "y": self.y_}
        return params, arrays

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> BayesTaskPrior:
        self = cls(k=params["k"], kappa=params["kappa"])
        self.models, self.used_prior_table_ = params["models"], params["used_prior_table"]
        self.task_mean_, self.task_sd_ = arrays["task_mean"], arrays["task_sd"]
        self.emb_, self.y_ = arrays["emb"], arrays["y"]
        return self
