"""Cost-quality metrics of a router on an outcome table, by the same definitions as RouterBench.

Predictions are a table (prompt_id, model, predicted_score[, predicted_cost_usd]). For each willingness to
pay `lam`, every prompt goes to argmax(predicted_score - lam * predicted_cost); the realised (mean cost,
mean score) pairs trace the router's curve.

- AIQ: area under the upper convex hull of that curve over [cheapest, costliest single model] mean cost,
  divided by that range.
- gap recovered: (AIQ - AIQ of the single models' hull) / (AIQ of the per-prompt oracle - same).
- cost to match the best single model: the least mean cost at which the router reaches its quality.

`tests/test_router_metrics.py` checks agreement with `../shared/tools/router_metrics.py`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.files import save_figure
from router_models.router.predictors.base import numbers_in

LAMBDAS = np.concatenate([[0.0], np.geomspace(1e-2, 1e6, 400)])
_GRID_POINTS = 2001


def hull_area(points: Iterable[tuple[float, float]], lo: float, hi: float) -> float:
    """Area under the non-decreasing upper convex hull of (cost, quality) points on [lo, hi], over hi - lo;
    NaN where there is no such range (hi <= lo: every single model costs the same), as in the reference."""
    xs, ys = upper_hull(points)
    if not hi > lo:
        return float("nan")
    grid = np.linspace(lo, hi, _GRID_POINTS)
    yg = np.interp(grid, xs, ys, left=np.nan, right=ys[-1])
    yg = np.where(np.isnan(yg), 0.0, yg)  # below the cheapest point nothing is reached
    return float(np.trapezoid(yg, grid) / (hi - lo))


def upper_hull(points: Iterable[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """The non-decreasing upper convex hull of (cost, quality) points, as its corners' costs and qualities:
    between two corners, mixing them reaches the straight line in cost (not in log cost)."""
    pts = sorted({(float(c), float(q)) for c, q in points})
    bad = [p for p in pts if not np.isfinite(p).all()]
    if bad:  # NaN compares false both ways: where it sorts, and so the hull, would change from run to run
        raise ValueError(f"{len(bad)} cost-quality points are not finite numbers, e.g. {bad[0]}")
    hull: list[tuple[float, float]] = []
    for p in pts:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    return np.array([h[0] for h in hull]), np.maximum.accumulate(np.array([h[1] for h in hull]))


def check_outcomes(outcomes: pd.DataFrame, complete: bool = True) -> pd.DataFrame:
    """The outcome table with its scores (0 to 1) and costs (0 or more) as numbers, else a ValueError naming
    what is wrong with it; training and the metrics share it. A scored row without a cost, a repeated
    (prompt, model) pair and, where `complete` (the metrics), a prompt x model pair without a costed row are
    refused: their NaN costs made the hull's order, and so AIQ, change from one run to the next."""
    missing = [c for c in ("prompt_id", "model", "score", "cost_usd") if c not in outcomes]
    if missing:
        raise ValueError(f"the outcome table needs the columns {missing}")
    for col, lo, hi in (("score", 0.0, 1.0), ("cost_usd", 0.0, np.inf)):
        outcomes = outcomes.assign(**{col: numbers_in(outcomes, col, lo, hi, "outcome", empty_ok=True)})
    if not outcomes["score"].notna().any():
        raise ValueError("the outcome table has no scored row")
    repeated = outcomes.duplicated(["prompt_id", "model"])
    if repeated.any():
        first = outcomes.loc[repeated, ["prompt_id", "model"]].iloc[0].tolist()
        raise ValueError(
            f"the outcome table repeats {int(repeated.sum())} (prompt_id, model) pairs: {first}, ..."
        )
    no_cost = outcomes["score"].notna() & outcomes["cost_usd"].isna()
    if no_cost.any():
        first = outcomes.loc[no_cost, ["prompt_id", "model"]].iloc[0].tolist()
        raise ValueError(f"{int(no_cost.sum())} scored outcome rows have no cost_usd, e.g. {first}")
    if complete:
        costs = outcomes.pivot(index="prompt_id", columns="model", values="cost_usd")
        if costs.shape[1] < 2:
            raise ValueError(
                f"the metrics need at least two models in the outcome table, found {list(costs)}"
            )
        holes = np.argwhere(costs.isna().to_numpy())
        if len(holes):
            first = [costs.index[holes[0][0]], costs.columns[holes[0][1]]]
            raise ValueError(
                f"{len(holes)} of the {costs.size} prompt x model pairs have no outcome row with a cost_usd, "
                f"e.g. {first}: the metrics need every model's outcome on every prompt"
            )
    return outcomes


def _matrices(outcomes: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    scores = outcomes.pivot(index="prompt_id", columns="model", values="score").fillna(0.0)
    costs = outcomes.pivot(index="prompt_id", columns="model", values="cost_usd")
    return scores, costs


def router_points(
    predictions: pd.DataFrame, outcomes: pd.DataFrame, lams: np.ndarray = LAMBDAS
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """For each willingness to pay in `lams`, the router's realised (mean cost, mean score) and the same
    means as its own predictions put them (an operating point chosen on the latter saw no outcome)."""
    scores, costs = _matrices(outcomes)
    ps = predictions.pivot(index="prompt_id", columns="model", values="predicted_score")
    ps = ps.reindex(index=scores.index, columns=scores.columns)
    if "predicted_cost_usd" in predictions:
        pc = predictions.pivot(index="prompt_id", columns="model", values="predicted_cost_usd")
        pc = pc.reindex(index=scores.index, columns=scores.columns)
    else:
        pc = pd.DataFrame([costs.mean()] * len(scores), index=scores.index)[scores.columns]
    s_val, c_val = ps.fillna(-1e9).to_numpy(), pc.fillna(1e9).to_numpy()  # a missing prediction loses
    idx = np.arange(len(scores))
    realised, predicted = [], []
    for lam in lams:
        with np.errstate(over="ignore"):  # a cost near float's limit is an infinite one here
            choice = (s_val - lam * c_val).argmax(1)
        realised.append((costs.to_numpy()[idx, choice].mean(), scores.to_numpy()[idx, choice].mean()))
        # over the choices that have a prediction (the fill-ins above only rank)
        predicted.append((_mean(pc.to_numpy()[idx, choice]), _mean(ps.to_numpy()[idx, choice])))
    return realised, predicted


def _mean(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else float("nan")


def router_curve(
    predictions: pd.DataFrame, outcomes: pd.DataFrame, lams: np.ndarray = LAMBDAS
) -> list[tuple[float, float]]:
    """Realised (mean cost, mean score) of the router for each willingness to pay in `lams`."""
    return router_points(predictions, outcomes, lams)[0]


def oracle_predictions(outcomes: pd.DataFrame) -> pd.DataFrame:
    """The per-prompt oracle as a router: it knows every score and cost."""
    orc = outcomes.rename(columns={"score": "predicted_score", "cost_usd": "predicted_cost_usd"})
    return orc.fillna({"predicted_score": 0.0})


def single_models(outcomes: pd.DataFrame) -> dict[str, tuple[float, float]]:
    scores, costs = _matrices(outcomes)
    return {m: (float(costs[m].mean()), float(scores[m].mean())) for m in scores.columns}


def summary(predictions: pd.DataFrame, outcomes: pd.DataFrame) -> dict[str, float | str]:
    """AIQ, gap recovered, cost to match the best single model and the reference points, as one dict."""
    outcomes = check_outcomes(outcomes)
    scores, _ = _matrices(outcomes)
    singles = single_models(outcomes)
    best = max(singles, key=lambda m: singles[m][1])
    cheap = min(singles, key=lambda m: singles[m][0])
    lo, hi = singles[cheap][0], max(v[0] for v in singles.values())
    pts = router_curve(predictions, outcomes)
    aiq = hull_area(pts, lo, hi)
    aiq_singles = hull_area(list(singles.values()), lo, hi)
    aiq_oracle = hull_area(router_curve(oracle_predictions(outcomes), outcomes), lo, hi)
    best_c, best_q = singles[best]
    gap = aiq_oracle - aiq_singles  # none when the oracle is on the single models' hull
    reach = [c for c, q in pts if q >= best_q - 1e-9]
    cost_at_best = min(reach) if reach else float("nan")
    return {
        "aiq": aiq,
        "aiq_single_models_hull": aiq_singles,
        "aiq_oracle": aiq_oracle,
        "gap_recovered": (aiq - aiq_singles) / gap if gap > 0 else float("nan"),
        "best_single": best,
        "best_single_quality": best_q,
        "best_single_cost": best_c,
        "oracle_quality": float(scores.to_numpy().max(1).mean()),
        "router_max_quality": max(q for _, q in pts),
        "router_cost_to_match_best": cost_at_best,
        # as the reference has it: infinite where the best model costs nothing and the router does not
        "cost_ratio_to_match_best": _ratio(cost_at_best, best_c) if reach else float("nan"),
        "n_prompts": int(len(scores)),
        "n_models": int(scores.shape[1]),
    }


def _ratio(a: float, b: float) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 is NaN and x/0 infinite, without a warning
        return float(np.float64(a) / np.float64(b))


PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def pareto_plot(predictions: pd.DataFrame, outcomes: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Router curve, single models and the oracle in the cost-quality plane, written atomically as a PNG (or
    an SVG or PDF, by the suffix)."""
    outcomes = check_outcomes(outcomes)
    if Path(path).suffix.lower() not in PLOT_SUFFIXES:
        raise ValueError(f"{path}: a plot is written as one of {', '.join(PLOT_SUFFIXES)}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    with np.errstate(over="ignore"):  # a cost near float's limit (1e308) reaches the log scale's edge
        draw_pareto(ax, predictions, outcomes, title)
        return save_figure(fig, path, dpi=120)


def draw_pareto(ax: Any, predictions: pd.DataFrame, outcomes: pd.DataFrame, title: str = "") -> None:
    """`pareto_plot`'s drawing on a matplotlib Axes. Cost is on a log scale, or a symmetric log scale where a
    model or an operating point costs nothing (a log scale cannot place 0, and left those points out)."""
    singles = single_models(outcomes)
    router = sorted(set(router_curve(predictions, outcomes)))
    oracle = sorted(set(router_curve(oracle_predictions(outcomes), outcomes)))
    ax.plot(*zip(*router, strict=True), "-o", ms=3, label="router")
    ax.plot(*zip(*oracle, strict=True), "--", color="grey", label="per-prompt oracle")
    for name, (c, q) in singles.items():
        ax.scatter([c], [q], color="black", s=18)
        ax.annotate(name.split("/")[-1], (c, q), fontsize=7, xytext=(3, 3), textcoords="offset points")
    costs = [c for c, _ in [*router, *oracle, *singles.values()]]
    if min(costs) > 0:
        ax.set_xscale("log")
        ax.set_xlabel("mean cost per prompt (USD, log scale)")
    elif max(costs) > 0:  # linear up to the least cost above 0, log beyond it
        ax.set_xscale("symlog", linthresh=min(c for c in costs if c > 0))
        ax.set_xlim(left=0.0)
        ax.set_xlabel("mean cost per prompt (USD, log scale above the least cost, linear below: 0 shown)")
    else:  # nothing costs anything: one column at 0
        ax.set_xlim(-1.0, 1.0)
        ax.set_xticks([0.0])
        ax.set_xlabel("mean cost per prompt (USD: every model and operating point costs 0)")
    ax.set_ylabel("mean quality")
    ax.set_title(title or "Router cost-quality curve")
    ax.legend(loc="best")  # "lower right" hid a dear, weak model (claude-v2 on RouterBench)
