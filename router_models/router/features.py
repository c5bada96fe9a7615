"""Prompt features (cached embeddings of the focus text), the task classifier and the cost model."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipelines.files import atomic_path
from router_models.router import ROUTER_EMBEDDER
from router_models.router.predictors.base import Features
from router_models.router.signals import estimate_tokens, focus_text


def embed_prompts(
    prompts: Sequence[str], embedder: str = ROUTER_EMBEDDER, cache_dir: Path | None = None
) -> np.ndarray:
    """Embeddings of each prompt's last turn; with `cache_dir`, reused across runs for the same texts."""
    from pipelines.index.embeddings import get_embedder

    texts = [focus_text(p) for p in prompts]
    path = None
    if cache_dir is not None:
        digest = hashlib.sha256("\x00".join([embedder, *texts]).encode()).hexdigest()[:20]
        path = Path(cache_dir) / f"emb-{embedder}-{len(texts)}-{digest}.npy"
        if path.exists():
            return np.load(path)
    emb = get_embedder(embedder).embed(texts, progress=len(texts) > 500)
    if path is not None:
        with atomic_path(path, suffix=".npy") as tmp:  # a name of its own: two runs at once share none
            np.save(tmp, emb)
    return emb


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


class TaskClassifier:
    """Multinomial logistic regression from the prompt embedding to the task label, with probabilities."""

    def __init__(self, classes: list[str], coef: np.ndarray, intercept: np.ndarray) -> None:
        self.classes, self.coef, self.intercept = classes, coef, intercept

    @classmethod
    def fit(cls, emb: np.ndarray, labels: Sequence[str], c: float = 4.0) -> TaskClassifier:
        classes = sorted(set(labels))
        if len(classes) == 1:
            return cls(classes, np.zeros((1, emb.shape[1])), np.zeros(1))
        from sklearn.linear_model import LogisticRegression

        y = np.array([classes.index(t) for t in labels])
        clf = LogisticRegression(C=c, max_iter=2000).fit(emb, y)
        coef, intercept = clf.coef_, clf.intercept_
        if len(classes) == 2:  # sklearn keeps one row for two classes: make it a two-column softmax
            coef, intercept = np.vstack([-coef / 2, coef / 2]), np.r_[-intercept / 2, intercept / 2]
        return cls(classes, coef, intercept)

    def predict_proba(self, emb: np.ndarray) -> np.ndarray:
        return _softmax(emb @ self.coef.T + self.intercept)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef, "intercept": self.intercept}


class CostModel:
    """Per model, cost = a * input tokens + sum over tasks of P(task) * b_task, with a, b >= 0 (NNLS).

    That is the shape of a price list: a per-token input price plus the typical output bill of each task,
    so a short prompt is never predicted dearer than a long one of the same task. It is fitted on each
    training prompt's own task (one-hot), then predicts with the classifier's probabilities: fitted on those
    soft probabilities, the per-token price was barely identified (prompt lengths vary little within a
    task), GPT-4's came out at 0 to 0.0027 $ per 1k tokens against its list price's 0.01, and a 28k-token
    prompt was priced below GPT-3.5's.
    """

    def __init__(self, coef: np.ndarray, floor: np.ndarray) -> None:
        self.coef, self.floor = coef, floor

    @staticmethod
    def design(tokens: np.ndarray, task_proba: np.ndarray) -> np.ndarray:
        return np.hstack([tokens[:, None] / 1000.0, task_proba])

    @classmethod
    def fit(cls, tokens: np.ndarray, tasks: np.ndarray, n_tasks: int, cost: np.ndarray) -> CostModel:
        """`tasks`: each prompt's task, as an index into the classifier's classes (`n_tasks` of them)."""
        from scipy.optimize import nnls

        x = cls.design(tokens, np.eye(n_tasks)[tasks])
        coef = np.zeros((x.shape[1], cost.shape[1]))
        floor = np.zeros(cost.shape[1])
        for j in range(cost.shape[1]):
            rows = ~np.isnan(cost[:, j])
            if rows.any():
                coef[:, j] = nnls(x[rows], cost[rows, j])[0]
                floor[j] = cost[rows, j].min()
        return cls(coef, floor)

    def predict(self, tokens: np.ndarray, task_proba: np.ndarray) -> np.ndarray:
        return np.maximum(self.design(tokens, task_proba) @ self.coef, self.floor)


def make_features(
    prompts: Sequence[str], emb: np.ndarray, task_clf: TaskClassifier
) -> tuple[Features, np.ndarray]:
    """Predictor features and the raw token estimates for a batch of prompts."""
    # the estimate routers were trained on (digits at four a token): a trained artifact keeps its inputs
    tokens = np.array([estimate_tokens(p, digits=False) for p in prompts], dtype=np.float64)
    proba = task_clf.predict_proba(emb)
    return Features(emb, proba, np.log1p(tokens), list(task_clf.classes)), tokens
