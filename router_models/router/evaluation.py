"""Cross-validated router evaluation and the seed's quality gate, as plain functions the assets call."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.bench.outcomes import add_evidence
from router_models.router.crossval import cross_val_predictions
from router_models.router.features import ROUTER_EMBEDDER, embed_prompts
from router_models.router.metrics import LAMBDAS, pareto_plot, router_points, single_models, summary


def crossval_evaluation(
    prompts: pd.DataFrame,
    outcomes: pd.DataFrame,
    predictor: str = "stack",
    folds: int = 5,
    embedder: str = ROUTER_EMBEDDER,
    cache_dir: Path | None = None,
    plot_path: Path | None = None,
    held_out: pd.DataFrame | None = None,
    title: str = "",
) -> tuple[pd.DataFrame, dict]:
    """Out-of-fold predictions for every prompt x model, their metrics, and (optionally) a Pareto plot.

    With `held_out` (a complete outcome table of some of the prompts), only its prompts are predicted, each
    by a router trained on everything else, and the metrics are over its prompts and models."""
    emb = embed_prompts(prompts["prompt"].fillna("").astype(str).tolist(), embedder, cache_dir)
    ids = None if held_out is None else set(held_out["prompt_id"].astype(str))
    pred = cross_val_predictions(predictor, prompts, outcomes, emb, folds=folds, held_out=ids)
    judged = outcomes if held_out is None else held_out
    result = summary(pred, judged)
    result.update(predictor=predictor, folds=folds, embedder=embedder)
    if plot_path is not None:
        title = title or f"{predictor}, {folds}-fold CV"
        result["pareto_png"] = str(pareto_plot(pred, judged, plot_path, title))
    return pred, result


def local_panel(local: pd.DataFrame) -> pd.DataFrame:
    """The scored rows of an outcome table (the micro-bench's) restricted to the prompts every one of its
    models answered: a complete prompt x model table the metrics can use, or an empty one."""
    rows = local.dropna(subset=["score"]).drop_duplicates(["prompt_id", "model"], keep="last")
    models = rows["model"].nunique()
    answered = rows.groupby("prompt_id")["model"].nunique()
    rows = rows[rows["prompt_id"].isin(answered.index[answered == models])]
    if models < 2 or rows["prompt_id"].nunique() < 2:
        return rows.iloc[:0]
    return rows[["prompt_id", "model", "score", "cost_usd"]].reset_index(drop=True)


def micro_bench_evaluation(
    prompts: pd.DataFrame,
    outcomes: pd.DataFrame,
    local: pd.DataFrame,
    predictor: str = "stack",
    folds: int = 5,
    embedder: str = ROUTER_EMBEDDER,
    cache_dir: Path | None = None,
    plot_path: Path | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict] | None:
    """The router's choice among the micro-bench's models on the micro-bench's prompts, out of fold: each
    fold's prompts are held out of a router trained on everything else (RouterBench and the other folds).
    Returns (predictions, the complete local outcome table, metrics), or None when the micro-bench has fewer
    than two models or two prompts that all its models answered."""
    table = local_panel(local)
    if table.empty:
        return None
    folds = min(folds, table["prompt_id"].nunique())
    pred, result = crossval_evaluation(
        *add_evidence(prompts, outcomes, local), predictor, folds, embedder, cache_dir, plot_path,
        held_out=table, title=f"{predictor} on the micro-bench, {folds}-fold CV",
    )  # fmt: skip
    return pred, table, result


def utility_gate(
    predictions: pd.DataFrame,
    outcomes: pd.DataFrame,
    lambda_cost: float,
    max_cost_fraction: float = 0.8,
    min_gain: float = 0.05,
) -> dict:
    """The seed's gate: the router beats the best single model's utility (quality - lambda_cost * cost) by
    at least `min_gain` (relative) at no more than `max_cost_fraction` of that model's cost.

    The router's operating point is chosen as a deployed router would choose it, on its own predictions:
    the willingness to pay whose predicted utility is highest among those whose predicted spend stays within
    the cost cap (at `lambda_cost` itself where the cap does not bind). Its realised utility and cost are
    judged. The best point in hindsight, chosen on the outcomes, is reported beside it (`*_hindsight`), not
    gated on. The best single model is the one of highest quality (RouterBench's, and this project's,
    sense); the same comparison with the single model of highest utility is reported beside it
    (`*_by_utility`): at a high lambda_cost the best model's utility is far below a cheaper model's, and
    beating it says less."""
    singles = single_models(outcomes)
    best = max(singles, key=lambda m: singles[m][1])
    best_cost, best_q = singles[best]
    best_u = best_q - lambda_cost * best_cost
    lams = np.union1d(LAMBDAS, [lambda_cost])
    realised, predicted = router_points(predictions, outcomes, lams)
    if "predicted_cost_usd" in predictions:
        predicted_cost = predictions.groupby("model")["predicted_cost_usd"].mean()
    else:
        predicted_cost = pd.Series({m: c for m, (c, _) in singles.items()})

    def versus(base: str, base_u: float) -> tuple[float, float, float, float, float]:
        """The router at the operating point its predictions choose within max_cost_fraction of base's
        cost: realised cost, quality, utility, gain; and the gain of the best point in hindsight."""
        base_cost = singles[base][0]
        expected = float(predicted_cost.get(base, np.nan))
        cap = max_cost_fraction * (expected if np.isfinite(expected) else base_cost)
        within = [i for i, (c, _) in enumerate(predicted) if c <= cap]
        hindsight = [(c, q) for c, q in realised if c <= max_cost_fraction * base_cost]

        def gain(u: float) -> float:
            return (u - base_u) / abs(base_u) if base_u else float("nan")

        best_hindsight = max((q - lambda_cost * c for c, q in hindsight), default=float("nan"))
        if not within:
            return (*(float("nan"),) * 4, gain(best_hindsight))
        i = max(within, key=lambda i: predicted[i][1] - lambda_cost * predicted[i][0])
        cost, quality = realised[i]
        u = quality - lambda_cost * cost
        # the cap binds on the realised spend too: a point that overspends fails
        g = gain(u) if cost <= max_cost_fraction * base_cost else float("nan")
        return cost, quality, u, g, gain(best_hindsight)

    cost, quality, router_u, gain, gain_hindsight = versus(best, best_u)
    by_u = max(singles, key=lambda m: singles[m][1] - lambda_cost * singles[m][0])
    u_cost, u_q = singles[by_u]
    *_, gain_by_u, gain_by_u_hindsight = versus(by_u, u_q - lambda_cost * u_cost)
    curve = realised
    return {
        "best_single": best,
        "best_single_utility": best_u,
        "router_utility": router_u,
        "router_quality": quality,
        "router_cost_ratio": cost / best_cost if np.isfinite(cost) and best_cost > 0 else float("nan"),
        # the least the router spends (at its highest price of quality), as a fraction of the best's cost
        "router_min_cost_ratio": min(c for c, _ in curve) / best_cost if best_cost > 0 else float("nan"),
        "utility_gain": gain,
        "passed": bool(np.isfinite(gain) and gain >= min_gain),
        "utility_gain_hindsight": gain_hindsight,
        "best_single_by_utility": by_u,
        "best_single_by_utility_utility": u_q - lambda_cost * u_cost,
        "utility_gain_over_best_by_utility": gain_by_u,
        "passed_against_best_by_utility": bool(np.isfinite(gain_by_u) and gain_by_u >= min_gain),
        "utility_gain_over_best_by_utility_hindsight": gain_by_u_hindsight,
    }
