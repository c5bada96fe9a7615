"""The router: signals -> rules -> predictions -> constraints -> policy -> a decision that explains itself."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from router_models.router.decision import Candidate, Decision, explain
from router_models.router.features import CostModel, TaskClassifier, embed_prompts, make_features
from router_models.router.policies import Budget, MaxUtility
from router_models.router.predictors.base import Predictor, QualityPrediction
from router_models.router.rules import Exclusion, ModelInfo, Rule, apply_rules
from router_models.router.signals import Constraints, estimate_tokens, focus_text, request_signals

MAX_COST = "max_cost_usd"
NO_PREDICTION = "no_prediction"
EMBED_CACHE_SIZE = 4096  # distinct prompts whose embedding route() keeps (384 floats each)


@dataclass
class Router:
    models: list[str]
    predictor: Predictor
    task_clf: TaskClassifier
    cost_model: CostModel
    embedder: str
    metadata: dict[str, ModelInfo]
    rules: list[Rule]
    policy: MaxUtility | Budget
    strongest: str
    info: dict[str, Any] = field(default_factory=dict)  # training provenance, saved in the manifest
    # out-of-fold predicted quality and cost on the training prompts: what budget policies calibrate on
    reference: dict[str, np.ndarray] = field(default_factory=dict)
    _embeddings: OrderedDict[bytes, np.ndarray] = field(
        default_factory=OrderedDict, init=False, repr=False, compare=False
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def budget_policy(self, fraction: float) -> Budget:
        """A policy that spends on average at most `fraction` of the strongest model's cost."""
        if not self.reference:
            raise ValueError("this router has no reference predictions to calibrate a budget on")
        return Budget(fraction=fraction).calibrate(
            self.reference["mean"], self.reference["cost"], self.models, self.strongest
        )

    def warm_up(self, torch_threads: int | None = 1) -> None:
        """Load the embedder and the PII recognizers now, so the first request does not pay for it.

        `torch_threads` (None: leave torch and BLAS alone) sets the process's intra-op threads for serving.
        One prompt is too small a matrix product to share out across cores, and concurrent requests that each
        split theirs oversubscribe the CPU: on 2 busy shared cores one MiniLM embedding took 0.7-1.1 s with
        2 threads and 0.11-0.13 s with 1. Decisions do not change (tests/test_router_speed.py).
        """
        if torch_threads:
            if self.embedder.startswith("minilm"):
                import torch

                torch.set_num_threads(torch_threads)
            # the same for BLAS: one prompt's kNN product is tiny, and under concurrent requests OpenBLAS's
            # thread hand-offs made it 18% of a serving worker's samples (py-spy, benchmarks/serving.py)
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=torch_threads, user_api="blas")
        self.route("warm-up request")

    def embed(self, prompt: str) -> np.ndarray:
        """The (1, d) embedding route() uses: `embed_prompts`' value, kept for the last distinct prompts.

        Read-only: the array is shared with later calls for the same prompt.
        """
        key = hashlib.blake2b(f"{self.embedder}\x00{focus_text(prompt)}".encode(), digest_size=16).digest()
        with self._lock:
            emb = self._embeddings.get(key)
            if emb is not None:
                self._embeddings.move_to_end(key)
                return emb
        emb = embed_prompts([prompt], self.embedder)
        emb.flags.writeable = False
        with self._lock:
            self._embeddings[key] = emb
            while len(self._embeddings) > EMBED_CACHE_SIZE:
                self._embeddings.popitem(last=False)
        return emb

    def predict(
        self, prompts: Sequence[str], emb: np.ndarray | None = None
    ) -> tuple[QualityPrediction, np.ndarray, np.ndarray]:
        """Quality (mean, sd) and cost per prompt x model, plus the task probabilities.

        `emb`: the prompts' embeddings when the caller has them (`embed_prompts` computes them otherwise).
        """
        if emb is None:
            emb = embed_prompts(list(prompts), self.embedder)
        x, tokens = make_features(list(prompts), emb, self.task_clf)
        return self.predictor.predict(x), self.cost_model.predict(tokens, x.task_proba), x.task_proba

    def predict_frame(self, prompts: pd.DataFrame) -> pd.DataFrame:
        """prompt_id, model, predicted_score, predicted_sd, predicted_cost_usd for every prompt x model."""
        q, cost, _ = self.predict(prompts["prompt"].fillna("").astype(str).tolist())  # "" reads as NaN
        n, m = q.mean.shape
        return pd.DataFrame(
            {
                "prompt_id": np.repeat(prompts["prompt_id"].astype(str).to_numpy(), m),
                "model": np.tile(self.models, n),
                "predicted_score": q.mean.ravel(),
                "predicted_sd": q.sd.ravel(),
                "predicted_cost_usd": cost.ravel(),
            }
        )

    def route(
        self,
        prompt: str,
        constraints: Constraints | None = None,
        policy: MaxUtility | Budget | None = None,
        p95_latency_s: Mapping[str, float] | None = None,
        sent: str | None = None,
        sized_by_caller: bool = False,
    ) -> Decision:
        """Pick one model for `prompt`. `p95_latency_s`: the gateway's recent p95 per model, if known.
        `sent`: all the model will be sent where that is more than `prompt` (a RAG question with its sources):
        personal data is sought there too, as the model would see it, and its size sets the predicted costs
        and the context window needed, but where `sized_by_caller` (a caller that checks each model's window
        against `sent` by the model's own tokenizer, as the service does: this estimate is an upper bound
        for any tokenizer) the window rule sizes `prompt`."""
        t0 = time.perf_counter()
        constraints = constraints or Constraints()
        policy = policy or self.policy
        q, cost, proba = self.predict([prompt], self.embed(prompt))
        if sent is not None:  # quality follows the question, the price what is sent (its sources too)
            cost = self.cost_model.predict(np.array([estimate_tokens(sent, digits=False)], float), proba)
        mean, sd, cost = q.mean[0], q.sd[0], cost[0]
        top = int(proba[0].argmax())
        signals = request_signals(
            prompt, constraints, self.task_clf.classes[top], float(proba[0, top]), sent,
            sized=prompt if sized_by_caller else None,
        )  # fmt: skip
        ctx = signals.as_context(constraints)
        meta = {m: self._with_latency(m, p95_latency_s) for m in self.models}
        excluded: dict[str, Exclusion] = apply_rules(self.rules, meta, ctx)
        unknown = ~(np.isfinite(mean) & np.isfinite(sd) & np.isfinite(cost))  # a NaN won every argmax below
        for m in np.asarray(self.models)[unknown].tolist():
            excluded.setdefault(m, Exclusion(NO_PREDICTION, f"{m} has no finite predicted quality or cost"))
        if constraints.max_cost_usd is not None:
            for j, m in enumerate(self.models):
                if m not in excluded and cost[j] > constraints.max_cost_usd:
                    excluded[m] = Exclusion(
                        MAX_COST,
                        f"{m}'s predicted cost ${cost[j]:.5f} exceeds the ${constraints.max_cost_usd:g} cap",
                    )
        util = policy.utilities(mean, sd, cost)
        allowed = np.array([m not in excluded for m in self.models])
        candidates = [
            Candidate(
                m,
                float(mean[j]),
                float(sd[j]),
                float(cost[j]),
                float(util[j]),
                bool(allowed[j]),
                excluded[m].rule if m in excluded else None,
                excluded[m].reason if m in excluded else None,
            )
            for j, m in enumerate(self.models)
        ]
        finite = np.where(np.isfinite(util), util, -np.inf)
        pick = int(np.where(allowed, finite, -np.inf).argmax()) if allowed.any() else None
        free = candidates[int(finite.argmax())]
        chosen = candidates[pick] if pick is not None else None
        # a rule binds where the choice is worse for it: an excluded model tying with the pick changed nothing
        binds = free.excluded_by not in (None, NO_PREDICTION) and (pick is None or free.utility > util[pick])
        binding = free if binds else None
        text = explain(chosen, free, binding, policy.describe(), int(allowed.sum()), candidates)
        slo = constraints.latency_slo_s
        if chosen is not None and slo is not None and meta[chosen.model].p95_latency_s is None:
            text += f" No recent latency is known for {chosen.model}, so the {slo:g} s SLO was not checked."
        candidates.sort(key=lambda c: -c.utility if np.isfinite(c.utility) else np.inf)
        return Decision(
            model=chosen.model if chosen else None,
            candidates=candidates,
            binding=binding.excluded_by if binding else None,
            policy=policy.name,
            explanation=text,
            signals={**ctx, "pii_entities": list(signals.pii_entities)},
            decision_ms=(time.perf_counter() - t0) * 1000,
        )

    def _with_latency(self, model: str, live: Mapping[str, float] | None) -> ModelInfo:
        base = self.metadata.get(model, ModelInfo(model))
        p95 = (live or {}).get(model, base.p95_latency_s)
        return ModelInfo(model, base.privacy, base.context_window, p95)
