"""Matrix-factorisation router in the style of RouteLLM's best one, trained on pointwise outcomes.

logit(prompt p, model m) = w . (v_m * (W x_p)) + b_m: a learned model embedding v_m meets a projection of
the prompt's features. A small ensemble (different seeds) gives the sd. Trained with torch; predicting
needs numpy only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from router_models.router.predictors.base import Features, Predictor, QualityPrediction, observed, register


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


@register
class MatrixFactorisation(Predictor):
    name = "mf"

    def __init__(
        self, dim: int = 16, epochs: int = 200, lr: float = 0.02, weight_decay: float = 1e-3, n_seeds: int = 3
    ) -> None:
        self.dim, self.epochs, self.lr, self.weight_decay, self.n_seeds = (
            dim,
            epochs,
            lr,
            weight_decay,
            n_seeds,
        )

    def _fit_one(self, xd: np.ndarray, y0: np.ndarray, mask: np.ndarray, seed: int) -> dict[str, np.ndarray]:
        import torch

        torch.set_num_threads(1)  # tiny matrices: threads only add contention
        torch.manual_seed(seed)
        n_models = y0.shape[1]
        proj = torch.nn.Linear(xd.shape[1], self.dim, bias=False)
        v = torch.nn.Parameter(torch.randn(n_models, self.dim) * 0.1 + 1.0)
        w = torch.nn.Parameter(torch.randn(self.dim) * 0.1)
        base = (y0.sum(0) + 1) / (mask.sum(0) + 2)
        b = torch.nn.Parameter(torch.tensor(np.log(base / (1 - base)), dtype=torch.float32))
        params = [*proj.parameters(), v, w, b]
        opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        xt = torch.tensor(xd, dtype=torch.float32)
        yt, mt = torch.tensor(y0, dtype=torch.float32), torch.tensor(mask, dtype=torch.float32)
        # early stopping on a held-out sixth of the prompts: the right epoch count depends on the data size
        val = torch.tensor(np.random.default_rng(seed).random(len(xd)) < 1 / 6)
        m_tr, m_val = mt * (~val)[:, None], mt * val[:, None]
        loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")
        best, best_state = float("inf"), None
        for epoch in range(self.epochs):
            opt.zero_grad()
            logits = (proj(xt)[:, None, :] * v[None, :, :]) @ w + b
            losses = loss_fn(logits, yt)
            (losses * m_tr).sum().div(m_tr.sum()).backward()
            opt.step()
            if epoch % 5 == 4 and m_val.sum() > 0:
                val_loss = float((losses.detach() * m_val).sum() / m_val.sum())
                if val_loss < best:
                    best, best_state = val_loss, [p.detach().clone() for p in params]
        if best_state is not None:
            with torch.no_grad():
                for p, saved in zip(params, best_state, strict=True):
                    p.copy_(saved)
        return {
            "proj": proj.weight.detach().numpy().copy(),
            "v": v.detach().numpy().copy(),
            "w": w.detach().numpy().copy(),
            "b": b.detach().numpy().copy(),
        }

    def fit(
        self, x: Features, y: np.ndarray, models: list[str], tasks: np.ndarray | None = None
    ) -> MatrixFactorisation:
        self.models = list(models)
        y0, mask = observed(y)
        # the scores as they are: BCE takes graded ones as soft targets (rounding them at 0.5 learned
        # P(score >= 0.5), not the expected score the other predictors and the utility policy speak of)
        members = [self._fit_one(x.dense(), y0 * mask, mask, seed) for seed in range(self.n_seeds)]
        self.weights_ = {k: np.stack([m[k] for m in members]) for k in members[0]}
        return self

    def predict(self, x: Features) -> QualityPrediction:
        xd = x.dense()
        ws = self.weights_
        probs = []
        for s in range(ws["proj"].shape[0]):
            h = xd @ ws["proj"][s].T  # (n, dim)
            logits = (h[:, None, :] * ws["v"][s][None]) @ ws["w"][s] + ws["b"][s]
            probs.append(_sigmoid(logits))
        p = np.stack(probs)
        return QualityPrediction(p.mean(0), np.maximum(p.std(0), 0.01))

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        params = {
            "models": self.models,
            "dim": self.dim,
            "epochs": self.epochs,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "n_seeds": self.n_seeds,
        }
        return params, dict(self.weights_)

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> MatrixFactorisation:
        models = params["models"]
        self = cls(**{k: v for k, v in params.items() if k != "models"})
        self.models, self.weights_ = models, {k: arrays[k] for k in ("proj", "v", "w", "b")}
        return self
