"""Baselines: the global mean per model, and the mean per task x model mixed by task probabilities."""

from __future__ import annotations

from typing import Any

import numpy as np

from router_models.router.predictors.base import (
    Features,
    Predictor,
    QualityPrediction,
    beta_posterior,
    observed,
    register,
)


@register
class GlobalMean(Predictor):
    """Every prompt gets each model's overall success rate (Beta(1, 1) posterior)."""

    name = "global_mean"

    def fit(
        self, x: Features, y: np.ndarray, models: list[str], tasks: np.ndarray | None = None
    ) -> GlobalMean:
        self.models = list(models)
        y0, mask = observed(y)
        self.mean_, self.sd_ = beta_posterior(y0.sum(0), mask.sum(0))
        return self

    def predict(self, x: Features) -> QualityPrediction:
        n = len(x)
        return QualityPrediction(np.tile(self.mean_, (n, 1)), np.tile(self.sd_, (n, 1)))

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"models": self.models}, {"mean": self.mean_, "sd": self.sd_}

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> GlobalMean:
        self = cls()
        self.models, self.mean_, self.sd_ = params["models"], arrays["mean"], arrays["sd"]
        return self


def mixture(proba: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> QualityPrediction:
    """Mean and sd of a mixture over tasks: proba (n, T), mean and sd (T, m)."""
    mu = proba @ mean
    second = proba @ (sd**2 + mean**2)
    return QualityPrediction(mu, np.sqrt(np.maximum(second - mu**2, 0.0)))


def task_tables(
    y: np.ndarray, tasks: np.ndarray, n_tasks: int, prior_strength: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """Per task x model Beta posterior, shrunk to the global rate by `prior_strength` pseudo-counts."""
    y0, mask = observed(y)
    glob = (y0.sum(0) + 1) / (mask.sum(0) + 2)
    mean = np.zeros((n_tasks, y.shape[1]))
    sd = np.zeros_like(mean)
    for t in range(n_tasks):
        rows = tasks == t
        mean[t], sd[t] = beta_posterior(
            y0[rows].sum(0), mask[rows].sum(0), prior_strength * glob, prior_strength * (1 - glob)
        )
    return mean, sd


@register
class TaskMean(Predictor):
    """Per task x model success rate, weighted by the task classifier's probabilities for the prompt.

    Given one-hot task probabilities (the true label) this is the 'per-task mean' baseline.
    """

    name = "task_mean"

    def fit(self, x: Features, y: np.ndarray, models: list[str], tasks: np.ndarray | None = None) -> TaskMean:
        if tasks is None:
            raise ValueError("task_mean needs the training prompts' task labels")
        self.models = list(models)
        self.mean_, self.sd_ = task_tables(y, tasks, x.task_proba.shape[1])
        return self

    def predict(self, x: Features) -> QualityPrediction:
        return mixture(x.task_proba, self.mean_, self.sd_)

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"models": self.models}, {"mean": self.mean_, "sd": self.sd_}

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> TaskMean:
        self = cls()
        self.models, self.mean_, self.sd_ = params["models"], arrays["mean"], arrays["sd"]
        return self
