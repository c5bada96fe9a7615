"""Stacking: a weighted average of other predictors' means, with their sds and disagreement as the sd."""

from __future__ import annotations

from typing import Any

import numpy as np

from router_models.router.predictors.base import (
    PREDICTORS,
    Features,
    Predictor,
    QualityPrediction,
    get_predictor,
    register,
)

DEFAULT_MEMBERS = ("logistic", "bayes")


@register
class Stack(Predictor):
    name = "stack"

    def __init__(
        self,
        members: tuple[str, ...] | list[str] = DEFAULT_MEMBERS,
        weights: list[float] | None = None,
        member_options: dict[str, dict[str, Any]] | None = None,
    ):
        """`member_options` are keyword arguments for members by name (the `bayes` member's prior table)."""
        self.members = list(members)
        w = np.asarray(weights if weights is not None else [1.0] * len(self.members), dtype=np.float64)
        self.weights = (w / w.sum()).tolist()
        self.member_options = member_options or {}

    def fit(self, x: Features, y: np.ndarray, models: list[str], tasks: np.ndarray | None = None) -> Stack:
        self.models = list(models)
        self.fitted_ = [
            get_predictor(m, **self.member_options.get(m, {})).fit(x, y, models, tasks) for m in self.members
        ]
        return self

    def predict(self, x: Features) -> QualityPrediction:
        preds = [p.predict(x) for p in self.fitted_]
        w = np.asarray(self.weights)[:, None, None]
        means = np.stack([p.mean for p in preds])
        mean = (w * means).sum(0)
        var = (w * (np.stack([p.sd for p in preds]) ** 2 + (means - mean) ** 2)).sum(0)
        return QualityPrediction(mean, np.sqrt(var))

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        params: dict[str, Any] = {
            "models": self.models,
            "members": self.members,
            "weights": self.weights,
            "member_params": [],
        }
        arrays: dict[str, np.ndarray] = {}
        for i, p in enumerate(self.fitted_):
            mp, ma = p.get_state()
            params["member_params"].append(mp)
            arrays.update({f"m{i}__{k}": v for k, v in ma.items()})
        return params, arrays

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> Stack:
        self = cls(params["members"], params["weights"])
        self.models = params["models"]
        self.fitted_ = []
        for i, (name, mp) in enumerate(zip(self.members, params["member_params"], strict=True)):
            prefix = f"m{i}__"
            ma = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
            self.fitted_.append(PREDICTORS[name].from_state(mp, ma))
        return self
