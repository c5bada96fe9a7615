"""K-fold cross-validation of predictors, grouped by prompt (a prompt's outcomes stay in one fold)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from router_models.router.features import CostModel, TaskClassifier, make_features
from router_models.router.metrics import summary
from router_models.router.predictors.base import Features, get_predictor
from router_models.router.train import panel, task_labels

TRUE_TASK = "task_mean_label"  # the per-task mean that is told the true task label: a baseline only


MAX_COPIES = 10  # prompts one question id may hold: a larger group is a dataset's or a task's name


def question_groups(prompts: pd.DataFrame) -> np.ndarray:
    """A label per prompt that its copies share: the source's question id where the table has one
    (RouterBench asks 7 questions twice, with few-shot contexts of other lengths), else the text. An id
    shared by more than MAX_COPIES prompts names no question (a dataset name in every row put all prompts
    in one fold, leaving the others nothing to train on): those prompts are grouped by their text."""
    text = "text:" + prompts["prompt"].astype(str).str.strip()
    if "source_id" not in prompts:
        return text.to_numpy()
    sid = prompts["source_id"].astype("string").str.strip().fillna("")
    question = sid.ne("") & sid.map(sid.value_counts()).le(MAX_COPIES)
    return np.where(question, "id:" + sid, text)


def fold_ids(n: int, folds: int, seed: int = 0, groups: Any = None) -> np.ndarray:
    """A fold per row; rows of one group (`groups`: a label per row, question_groups') share a fold, so a
    question asked twice is never trained on in one copy and tested in the other."""
    if groups is None:
        return np.random.default_rng(seed).permutation(n) % folds
    codes, uniques = pd.factorize(pd.Series(list(groups)).astype(str))
    return (np.random.default_rng(seed).permutation(len(uniques)) % folds)[codes]


def cross_val_predictions(
    predictor: str,
    prompts: pd.DataFrame,
    outcomes: pd.DataFrame,
    emb: np.ndarray,
    folds: int = 5,
    seed: int = 0,
    params: dict[str, Any] | None = None,
    held_out: set[str] | None = None,
) -> pd.DataFrame:
    """Out-of-fold predictions (prompt_id, model, predicted_score, predicted_sd, predicted_cost_usd).

    `emb` holds one embedding row per prompt of `prompts` (same order). The task classifier and cost model
    are refitted on each training fold; `task_mean_label` instead uses the test prompts' true task labels.
    With `held_out`, only those prompts are split into folds and predicted; the others are always trained on.
    """
    position = {pid: i for i, pid in enumerate(prompts["prompt_id"].astype(str))}
    aligned, models, y, cost = panel(prompts, outcomes)
    emb = emb[[position[pid] for pid in aligned["prompt_id"]]]
    texts = aligned["prompt"].astype(str).tolist()
    labels = np.array(task_labels(aligned))
    groups = question_groups(aligned)
    if held_out is None:
        fold = fold_ids(len(aligned), folds, seed, groups=groups)
    else:
        test = aligned["prompt_id"].isin(held_out).to_numpy()
        fold = np.full(len(aligned), -1)
        fold[test] = fold_ids(int(test.sum()), folds, seed, groups=groups[test])
    out = []
    for f in range(folds):
        te = np.where(fold == f)[0]
        # a copy of a tested question is not trained on (held_out: one outside the held-out prompts either)
        tr = np.where((fold != f) & ~np.isin(groups, groups[te]))[0]
        if len(te) == 0:
            continue
        clf = TaskClassifier.fit(emb[tr], labels[tr].tolist())
        x_tr, tok_tr = make_features([texts[i] for i in tr], emb[tr], clf)
        x_te, tok_te = make_features([texts[i] for i in te], emb[te], clf)
        tasks_tr = np.array([clf.classes.index(t) for t in labels[tr]])
        name = predictor
        if predictor == TRUE_TASK:
            name = "task_mean"
            onehot = np.array([[float(t == c) for c in clf.classes] for t in labels[te]])
            x_te = Features(x_te.emb, onehot, x_te.log_tokens, x_te.task_names)
        fitted = get_predictor(name, **(params or {})).fit(x_tr, y[tr], models, tasks_tr)
        q = fitted.predict(x_te)
        c = CostModel.fit(tok_tr, tasks_tr, len(clf.classes), cost[tr]).predict(tok_te, x_te.task_proba)
        m = len(models)
        out.append(
            pd.DataFrame(
                {
                    "prompt_id": np.repeat(aligned["prompt_id"].to_numpy()[te], m),
                    "model": np.tile(models, len(te)),
                    "predicted_score": q.mean.ravel(),
                    "predicted_sd": q.sd.ravel(),
                    "predicted_cost_usd": c.ravel(),
                    "fold": f,
                }
            )
        )
    return pd.concat(out, ignore_index=True)


def fold_summaries(pred: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    """The metrics on each test fold separately (for a spread) and pooled over all folds (row 'all')."""
    outcomes = outcomes.assign(prompt_id=outcomes["prompt_id"].astype(str))
    rows = []
    for f, part in pred.groupby("fold"):
        o = outcomes[outcomes["prompt_id"].isin(set(part["prompt_id"]))]
        rows.append({"fold": str(f), **summary(part, o)})
    o = outcomes[outcomes["prompt_id"].isin(set(pred["prompt_id"]))]
    rows.append({"fold": "all", **summary(pred, o)})
    return pd.DataFrame(rows)
