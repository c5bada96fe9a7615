"""One predictor contract: for each prompt, every model's predicted quality (mean and sd).

Costs are predicted beside it by `CostModel` (the same for every predictor). A name -> class registry lets
config pick a predictor; each one saves itself as JSON-able parameters plus numpy arrays (no pickle).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np


@dataclass
class Features:
    """Prompt features every predictor receives: embeddings (L2-normalised) and task probabilities."""

    emb: np.ndarray  # (n, d)
    task_proba: np.ndarray  # (n, n_tasks), rows sum to 1
    log_tokens: np.ndarray  # (n,)
    task_names: list[str] = field(default_factory=list)  # the columns of task_proba

    def __len__(self) -> int:
        return len(self.emb)

    def take(self, idx: np.ndarray) -> Features:
        return Features(self.emb[idx], self.task_proba[idx], self.log_tokens[idx], self.task_names)

    def dense(self) -> np.ndarray:
        """Embedding, task probabilities and standardised length side by side (for linear models)."""
        z = ((self.log_tokens - 5.5) / 1.5)[:, None]
        return np.hstack([self.emb, self.task_proba, z]).astype(np.float64)


@dataclass
class QualityPrediction:
    mean: np.ndarray  # (n, m) predicted probability that the model's answer is right / expected score
    sd: np.ndarray  # (n, m) uncertainty of that mean


class Predictor(ABC):
    """Fit on a prompts x models score matrix (NaN where unobserved); predict mean and sd per cell."""

    name: ClassVar[str]
    models: list[str]

    @abstractmethod
    def fit(
        self, x: Features, y: np.ndarray, models: list[str], tasks: np.ndarray | None = None
    ) -> Predictor:
        """`tasks` (training labels as task indices) may be used in training only, never to predict."""

    @abstractmethod
    def predict(self, x: Features) -> QualityPrediction: ...

    @abstractmethod
    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON-able parameters and named arrays that `from_state` rebuilds the fitted predictor from."""

    @classmethod
    @abstractmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> Predictor: ...


PREDICTORS: dict[str, type[Predictor]] = {}


def register(cls: type[Predictor]) -> type[Predictor]:
    PREDICTORS[cls.name] = cls
    return cls


def get_predictor(name: str, **params: Any) -> Predictor:
    from router_models.router import predictors as _  # noqa: F401 - importing registers the built-ins

    if name not in PREDICTORS:
        raise ValueError(f"unknown predictor {name!r}; choose one of {sorted(PREDICTORS)}")
    return PREDICTORS[name](**params)


def beta_posterior(successes: np.ndarray, trials: np.ndarray, a0: Any = 1.0, b0: Any = 1.0):
    """Mean and sd of Beta(a0 + s, b0 + n - s): the uncertainty about a success rate."""
    a, b = a0 + successes, b0 + trials - successes
    mean = a / (a + b)
    sd = np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    return mean, sd


def observed(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Score matrix with NaN -> 0 and the mask of observed cells."""
    mask = ~np.isnan(y)
    return np.where(mask, y, 0.0), mask.astype(np.float64)


def numbers_in(table: Any, col: str, lo: float, hi: float, what: str, empty_ok: bool = False) -> Any:
    """`table[col]` as numbers, each in [lo, hi] (empty cells too where `empty_ok`); else a ValueError that
    names the table, the column and the first bad value."""
    import pandas as pd

    values = pd.to_numeric(table[col], errors="coerce")
    missing = values.isna() & (table[col].notna() if empty_ok else True)
    bad = table[col][missing | (values < lo) | (values > hi)]
    if len(bad):
        empty = " (or empty)" if empty_ok else ""
        raise ValueError(f"{what} column {col!r} needs numbers in [{lo:g}, {hi:g}]{empty}: "
                         f"{len(bad)} rows are not, the first {str(bad.iloc[0])!r}")  # fmt: skip
    return values
