"""Per-model L2 logistic regression on prompt features, with a Laplace (delta-method) sd."""

from __future__ import annotations

from typing import Any

import numpy as np

from router_models.router.predictors.base import Features, Predictor, QualityPrediction, register


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def soft_labels(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, 0/1 labels and weights whose weighted log loss is the cross-entropy against scores `y` in [0, 1]:
    a 0 or 1 score is its row once, a graded one its row twice."""
    graded = (y > 0) & (y < 1)
    xs = np.vstack([x, x[graded]])
    labels = np.r_[(y > 0).astype(int), np.zeros(int(graded.sum()), dtype=int)]
    weights = np.r_[np.where(graded, y, 1.0), 1.0 - y[graded]]
    return xs, labels, weights


@register
class Logistic(Predictor):
    """P(model m answers well | prompt) = sigmoid(w_m . [embedding, task probabilities, length] + b_m)."""

    name = "logistic"

    def __init__(self, c: float = 0.5) -> None:
        self.c = c

    def fit(self, x: Features, y: np.ndarray, models: list[str], tasks: np.ndarray | None = None) -> Logistic:
        from sklearn.linear_model import LogisticRegression

        self.models = list(models)
        xd = x.dense()
        x1 = np.hstack([xd, np.ones((len(xd), 1))])
        d = x1.shape[1]
        self.coef_ = np.zeros((len(models), d))
        self.cov_ = np.zeros((len(models), d, d), dtype=np.float32)
        for j in range(len(models)):
            rows = ~np.isnan(y[:, j])
            yj = y[rows, j]
            if len(yj) == 0 or yj.min() == yj.max():  # none, or one value only: a constant rate, no slope
                self.coef_[j, -1] = np.log((yj.sum() + 1) / (len(yj) - yj.sum() + 1))
                self.cov_[j] = np.eye(d, dtype=np.float32) * self.c
                continue
            # a graded score y is a soft label: the row once as a 1 weighing y, once as a 0 weighing 1 - y
            # (rounding it learned P(score >= 0.5): 0.45 against 0.55 became 0.005 against 0.995)
            xs, labels, weights = soft_labels(xd[rows], yj)
            clf = LogisticRegression(C=self.c, max_iter=2000).fit(xs, labels, sample_weight=weights)
            self.coef_[j, :-1], self.coef_[j, -1] = clf.coef_[0], clf.intercept_[0]
            p = _sigmoid(x1[rows] @ self.coef_[j])
            prec = (x1[rows] * (p * (1 - p))[:, None]).T @ x1[rows]
            prec[np.diag_indices(d)] += np.r_[np.full(d - 1, 1.0 / self.c), 1e-4]
            self.cov_[j] = np.linalg.inv(prec).astype(np.float32)
        return self

    def predict(self, x: Features) -> QualityPrediction:
        xd = x.dense()
        x1 = np.hstack([xd, np.ones((len(xd), 1))])
        p = _sigmoid(x1 @ self.coef_.T)
        cov = self._cov64()
        if len(x1) <= 16:  # a request's prompt: one batched product (17 us for one prompt; the loop: 73)
            var_logit = ((x1 @ cov) * x1).sum(2).T
        else:  # many prompts: a product per model (12 ms for 5,000; the batched one: 37)
            var_logit = np.stack([((x1 @ c) * x1).sum(1) for c in cov], axis=1)
        return QualityPrediction(p, p * (1 - p) * np.sqrt(np.maximum(var_logit, 0.0)))

    def _cov64(self) -> np.ndarray:
        """The covariances in float64, converted once (stored as float32; converting per call cost ~10 ms)."""
        cov64: np.ndarray | None = getattr(self, "cov64_", None)
        if cov64 is None or cov64.shape != self.cov_.shape:
            cov64 = self.cov64_ = self.cov_.astype(np.float64)
        return cov64

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"models": self.models, "c": self.c}, {"coef": self.coef_, "cov": self.cov_}

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> Logistic:
        self = cls(c=params["c"])
        self.models, self.coef_, self.cov_ = params["models"], arrays["coef"], arrays["cov"]
        return self
