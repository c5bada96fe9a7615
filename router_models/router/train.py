"""Train a router on our own outcome tables: the candidate models are those the outcome table holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.bench.outcomes import check_unique_prompt_ids
from router_models.router.features import (
    ROUTER_EMBEDDER,
    CostModel,
    TaskClassifier,
    embed_prompts,
    make_features,
)
from router_models.router.metrics import check_outcomes
from router_models.router.policies import Budget
from router_models.router.predictors.base import get_predictor
from router_models.router.router import Router
from router_models.router.rules import load_rules, model_metadata

DEFAULT_PREDICTOR = "stack"
NO_TASK = "all"


def panel(
    prompts: pd.DataFrame, outcomes: pd.DataFrame
) -> tuple[pd.DataFrame, list[str], np.ndarray, np.ndarray]:
    """Align prompts with outcomes: (prompts in row order, models, scores, costs); NaN where unseen."""
    for col in ("prompt_id", "prompt"):
        if col not in prompts:
            raise ValueError(f"prompts table needs a {col!r} column")
    prompts = prompts.assign(prompt_id=prompts["prompt_id"].astype(str))
    check_unique_prompt_ids(prompts, "the prompts table")
    outcomes = check_outcomes(outcomes, complete=False)  # a model need not have seen every prompt
    outcomes = outcomes.assign(
        prompt_id=outcomes["prompt_id"].astype(str), model=outcomes["model"].astype(str)
    )
    if "task" not in prompts and "task" in outcomes:
        prompts = prompts.merge(
            outcomes.groupby("prompt_id")["task"].first().reset_index(), on="prompt_id", how="left"
        )
    scored = outcomes.dropna(subset=["score"])
    # the panel is the models scored on these prompts: one scored only on prompts left out would be kept with
    # no evidence, priced at $0 and chosen
    scored = scored[scored["prompt_id"].isin(prompts["prompt_id"])]
    if scored.empty:  # "a router needs at least two models, found []" said nothing of the cause
        raise ValueError(
            "no scored outcome row has a prompt_id of the prompts table: are they the same prompts?"
        )
    prompts = prompts[prompts["prompt_id"].isin(scored["prompt_id"])].reset_index(drop=True)
    models = sorted(scored["model"].unique())
    if len(models) < 2:
        raise ValueError(f"a router needs at least two models in the outcome table, found {models}")
    if prompts.empty:
        raise ValueError("no prompt of the prompts table has a scored outcome")
    ids = prompts["prompt_id"]
    y = scored.pivot_table(index="prompt_id", columns="model", values="score", aggfunc="mean")
    c = outcomes.pivot_table(index="prompt_id", columns="model", values="cost_usd", aggfunc="mean")
    return (
        prompts,
        models,
        y.reindex(index=ids, columns=models).to_numpy(),
        c.reindex(index=ids, columns=models).to_numpy(),
    )


MIN_COMMON = 20  # prompts every model answered, below which the strongest model is judged on shrunk means


def strongest_model(y: np.ndarray, models: list[str]) -> str:
    """The model of highest mean score on the prompts every model answered (means over other prompts for
    each model are not comparable: a model scored on 3 easy prompts beat GPT-4 on 120); with fewer than
    MIN_COMMON such prompts, on each model's mean shrunk toward the table's by MIN_COMMON prompts' weight."""
    common = ~np.isnan(y).any(axis=1)
    if common.sum() >= MIN_COMMON:
        return models[int(y[common].mean(axis=0).argmax())]
    seen = ~np.isnan(y)
    shrunk = (np.nansum(y, axis=0) + MIN_COMMON * np.nanmean(y)) / (seen.sum(axis=0) + MIN_COMMON)
    return models[int(shrunk.argmax())]


def blank_prompts(prompts: pd.DataFrame) -> pd.Series:
    """Which prompts are empty or whitespace only (an empty CSV cell reads as NaN)."""
    return (
        prompts["prompt"].fillna("").astype(str).str.strip().eq("")
        if "prompt" in prompts
        else pd.Series(False, index=prompts.index)
    )


def task_labels(prompts: pd.DataFrame) -> list[str]:
    if "task" not in prompts:
        return [NO_TASK] * len(prompts)
    return prompts["task"].fillna(NO_TASK).astype(str).tolist()


def train_router(
    prompts: pd.DataFrame,
    outcomes: pd.DataFrame,
    predictor: str = DEFAULT_PREDICTOR,
    embedder: str = ROUTER_EMBEDDER,
    budget_fraction: float = 0.5,
    predictor_params: dict[str, Any] | None = None,
    cache_dir: Path | None = None,
    rules_path: Path | None = None,
    models_path: Path | None = None,
    settings: Any = None,
) -> Router:
    """Fit the task classifier, the cost model and the quality predictor; calibrate the budget policy.

    Task labels are used in training only: at prediction time the classifier's probabilities stand in.
    Blank prompts are left out (their outcomes would teach the predictor nothing about a prompt but noise)
    and counted in `info["n_blank_prompts"]`.
    """
    blank = blank_prompts(prompts)
    if len(prompts) and blank.all():
        raise ValueError("every prompt of the prompts table is blank")
    prompts, models, y, cost = panel(prompts[~blank], outcomes)
    texts = prompts["prompt"].fillna("").astype(str).tolist()  # an empty prompt reads from CSV as NaN
    labels = task_labels(prompts)
    emb = embed_prompts(texts, embedder, cache_dir)
    task_clf = TaskClassifier.fit(emb, labels)
    x, tokens = make_features(texts, emb, task_clf)
    tasks = np.array([task_clf.classes.index(t) for t in labels])
    cost_model = CostModel.fit(tokens, tasks, len(task_clf.classes), cost)
    fitted = get_predictor(predictor, **(predictor_params or {})).fit(x, y, models, tasks)
    quality = np.nanmean(y, axis=0)
    strongest = strongest_model(y, models)
    oof = None
    if len(x) >= 30:  # out-of-fold predictions calibrate the budget policy without in-sample optimism
        from router_models.router.crossval import cross_val_predictions  # crossval imports this module

        pred = cross_val_predictions(predictor, prompts, outcomes, emb, folds=3, params=predictor_params)
        wide = pred.pivot(index="prompt_id", columns="model", values="predicted_score")
        oof = wide.reindex(index=prompts["prompt_id"].to_numpy(), columns=models).to_numpy(dtype=np.float64)
    ref = oof if oof is not None else fitted.predict(x).mean
    ref_cost = cost_model.predict(tokens, x.task_proba)
    policy = Budget(fraction=budget_fraction).calibrate(ref, ref_cost, models, strongest)
    metadata = model_metadata(models, models_path, settings)  # privacy and windows from settings' catalog
    if "latency_s" in outcomes:
        lat = outcomes.dropna(subset=["latency_s"]).groupby("model")["latency_s"].quantile(0.95)
        for m, v in lat.items():
            if m in metadata:
                metadata[m].p95_latency_s = float(v)
    info = {
        "n_prompts": len(prompts),
        "n_blank_prompts": int(blank.sum()),
        "n_outcomes": int((~np.isnan(y)).sum()),
        "tasks": sorted(set(labels)),
        "model_quality": {m: float(q) for m, q in zip(models, quality, strict=True)},
        "model_mean_cost_usd": {m: float(v) for m, v in zip(models, np.nanmean(cost, axis=0), strict=True)},
    }
    return Router(
        models,
        fitted,
        task_clf,
        cost_model,
        embedder,
        metadata,
        load_rules(rules_path),
        policy,
        strongest,
        info,
        reference={"mean": ref, "cost": ref_cost},
    )
