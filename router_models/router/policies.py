"""Policies: turn predicted quality and cost of the allowed candidates into one choice.

- `max_utility`: maximise mean - risk * sd - lambda * cost (lambda in quality points per USD).
- `budget`: the same with lambda calibrated on data so that the average spend is at most a stated fraction
  of the strongest model's cost ("spend at most 40% of gpt-4's cost"), not an opaque threshold.
The cascade policy lives in `cascade.py`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


def utility(mean: np.ndarray, sd: np.ndarray, cost: np.ndarray, lam: float, risk: float = 0.0) -> np.ndarray:
    return mean - risk * sd - lam * cost


def choose(util: np.ndarray, allowed: np.ndarray) -> int | None:
    """Index of the best allowed candidate (None when nothing is allowed)."""
    if not allowed.any():
        return None
    return int(np.where(allowed, util, -np.inf).argmax())


@dataclass
class MaxUtility:
    lambda_cost: float = 20.0
    risk: float = 0.0
    name: str = "max_utility"

    def utilities(self, mean: np.ndarray, sd: np.ndarray, cost: np.ndarray) -> np.ndarray:
        return utility(mean, sd, cost, self.lambda_cost, self.risk)

    def describe(self) -> str:
        return f"maximum expected utility (quality - {self.lambda_cost:.3g} x cost in USD)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Budget:
    """Spend on average at most `fraction` of what always calling `strongest` would cost."""

    fraction: float = 0.5
    strongest: str = ""
    lambda_cost: float = 0.0
    achieved_fraction: float | None = None
    name: str = "budget"

    def utilities(self, mean: np.ndarray, sd: np.ndarray, cost: np.ndarray) -> np.ndarray:
        return utility(mean, sd, cost, self.lambda_cost)

    def calibrate(self, mean: np.ndarray, cost: np.ndarray, models: list[str], strongest: str) -> Budget:
        """Least lambda whose choices over reference prompts (n, m) stay within the budget (bisection)."""
        self.strongest = strongest
        base = float(cost[:, models.index(strongest)].mean())
        target = self.fraction * base
        rows = np.arange(len(mean))

        def spend(lam: float) -> float:
            return float(cost[rows, (mean - lam * cost).argmax(1)].mean())

        lo, hi = 0.0, 1.0
        while spend(hi) > target and hi < 1e9:
            hi *= 4
        if spend(lo) <= target:
            hi = lo
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if spend(mid) <= target else (mid, hi)
        self.lambda_cost = hi
        # a strongest model that costs nothing has no fraction of its cost to speak of (0/0 was a NaN, which
        # the router's manifest.json then held: not JSON)
        self.achieved_fraction = spend(hi) / base if base > 0 else None
        return self

    def describe(self) -> str:
        text = (
            f"budget: at most {self.fraction:.0%} of {self.strongest}'s cost on average "
            f"(calibrated willingness to pay {self.lambda_cost:.3g} quality points per USD)"
        )
        if self.achieved_fraction is not None and self.achieved_fraction > self.fraction * 1.001:
            text += f"; unreachable: the cheapest choices spend {self.achieved_fraction:.1%} of its cost"
        return text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


POLICIES: dict[str, type] = {"max_utility": MaxUtility, "budget": Budget}


def policy_from_dict(d: dict[str, Any]) -> MaxUtility | Budget:
    d = dict(d)
    name = d.pop("name", "max_utility")
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}")
    return POLICIES[name](**d)
