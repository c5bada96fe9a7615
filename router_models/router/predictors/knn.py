"""kNN over prompt embeddings: each model's success rate among the nearest training prompts, as a Beta."""

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


def neighbour_counts(
    query: np.ndarray, ref: np.ndarray, y0: np.ndarray, mask: np.ndarray, k: int, exclude_self: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted successes and trials per model among the k most similar reference rows (cosine)."""
    sims = query @ ref.T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    k = min(k, ref.shape[0] - int(exclude_self))
    idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    w = np.take_along_axis(sims, idx, 1).clip(min=0.0) + 1e-3  # closer neighbours count a little more
    w = w / w.mean(1, keepdims=True)
    succ = np.einsum("nk,nkm->nm", w, y0[idx])
    trials = np.einsum("nk,nkm->nm", w, mask[idx])
    return succ, trials


@register
class KNN(Predictor):
    """Beta(kappa * prior, kappa * (1 - prior)) updated by the k nearest training prompts' outcomes."""

    name = "knn"

    def __init__(self, k: int = 40, kappa: float = 4.0) -> None:
        self.k, self.kappa = k, kappa

    def fit(self, x: Features, y: np.ndarray, models: list[str], tasks: np.ndarray | None = None) -> KNN:
        self.models = list(models)
        self.emb_ = x.emb.astype(np.float32)
        self.y_ = y.astype(np.float32)
        y0, mask = observed(y)
        self.prior_ = (y0.sum(0) + 1) / (mask.sum(0) + 2)
        return self

    def predict(self, x: Features) -> QualityPrediction:
        y0, mask = observed(self.y_)
        succ, trials = neighbour_counts(x.emb, self.emb_, y0, mask, self.k)
        mean, sd = beta_posterior(succ, trials, self.kappa * self.prior_, self.kappa * (1 - self.prior_))
        return QualityPrediction(mean, sd)

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        params = {"models": self.models, "k": self.k, "kappa": self.kappa}
        return params, {"emb": self.emb_, "y": self.y_, "prior": self.prior_}

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> KNN:
        self = cls(k=params["k"], kappa=params["kappa"])
        self.models = params["models"]
        self.emb_, self.y_, self.prior_ = arrays["emb"], arrays["y"], arrays["prior"]
        return self
