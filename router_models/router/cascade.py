"""FrugalGPT cascade: call cheap models first, stop when a check of the answers passes a calibrated threshold.

The check is answer agreement: after the i-th call (i >= 1), the share of earlier answers that agree with
the latest one (multiple-choice letters compared as letters, free text after normalising whitespace and
case). The final model of the chain always answers. Thresholds are calibrated on an outcome table that
carries each model's answer (`responses_train.csv`), paying for every model called; `run` executes a cascade
live through any `call(model, prompt) -> answer` function (the gateway's), under the request's rules and
constraints when given the router's decision for the prompt.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from router_models.router.decision import Decision

_CHOICE = re.compile(r"^\s*\(?([A-Ea-e])\)?(?:[.:)\s]|$)")


def normalise_answer(text: Any) -> str:
    """Comparable form of an answer: the choice letter when it starts with one, else squashed lower text."""
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return ""
    s = str(text).strip()
    m = _CHOICE.match(s)
    if m and len(s) <= 40:
        return m.group(1).upper()
    return " ".join(s.lower().split())


def agreement(answers: Sequence[str]) -> float:
    """Share of the earlier answers equal to the latest one (0.0 for a single or empty latest answer)."""
    if len(answers) < 2 or not answers[-1]:
        return 0.0
    return sum(a == answers[-1] for a in answers[:-1]) / (len(answers) - 1)


@dataclass
class CascadeResult:
    model: str
    answer: str
    called: list[str]
    cost_usd: float
    checks: list[float] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # model -> why the request's rules ruled it out
    stopped_by: str | None = None  # "max_cost_usd" where the cap stopped an escalation the check asked for


class CascadeRefused(ValueError):
    """No model of the chain may take the request (its rules and constraints rule them all out)."""


@dataclass
class Cascade:
    chain: list[str]
    thresholds: list[float]  # one per non-final step; step 0 passes only if its threshold is <= 0
    name: str = "cascade"

    def describe(self) -> str:
        steps = " -> ".join(self.chain)
        return f"FrugalGPT cascade {steps} (escalate when answer agreement < {self.thresholds})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def run(
        self,
        prompt: str,
        call: Callable[[str, str], str],
        cost_of: Callable[[str, str, str], float] | None = None,
        decision: Decision | None = None,
    ) -> CascadeResult:
        """Call the chain's models in turn until a check passes. `decision`: the router's decision for this
        prompt and request (`Router.route(prompt, constraints, ...)`): models it does not allow (personal
        data and remote models, `local_only`, context windows, the latency SLO, the cost cap; a model not in
        its panel) are skipped, the last allowed model answers, and an escalation whose predicted cost would
        take the predicted spend past `max_cost_usd` is not made (the answer in hand stands)."""
        steps, skipped, predicted, cap = list(enumerate(self.chain)), {}, {}, None
        if decision is not None:
            allowed = {c.model for c in decision.candidates if c.allowed}
            why = {c.model: f"{c.excluded_by}: {c.reason}" for c in decision.candidates if not c.allowed}
            skipped = {m: why.get(m, "not in the router's panel") for m in self.chain if m not in allowed}
            steps = [(i, m) for i, m in steps if m in allowed]
            predicted = {c.model: c.cost_usd for c in decision.candidates}
            cap = decision.signals.get("max_cost_usd")
            if not steps:
                reasons = "; ".join(f"{m}: {r}" for m, r in skipped.items())
                raise CascadeRefused(f"no model of the cascade may take this request ({reasons})")
        answers: list[str] = []
        called: list[str] = []
        checks: list[float] = []
        raw = ""
        cost = spend = 0.0
        stopped_by = None
        for k, (i, model) in enumerate(steps):
            if k > 0 and cap is not None and spend + predicted[model] > cap:
                stopped_by = "max_cost_usd"
                break
            raw = call(model, prompt)
            called.append(model)
            answers.append(normalise_answer(raw))
            cost += cost_of(model, prompt, raw) if cost_of else 0.0
            spend += predicted.get(model, 0.0)
            if k == len(steps) - 1:
                break
            checks.append(agreement(answers))
            if checks[-1] >= self.thresholds[i] and (k > 0 or self.thresholds[i] <= 0):
                break
        return CascadeResult(called[-1], raw, called, cost, checks, skipped, stopped_by)


def simulate(
    cascade: Cascade, models: list[str], answers: np.ndarray, scores: np.ndarray, costs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-prompt (score, cost) of a cascade replayed on recorded answers (n, m); every call is paid."""
    n = len(answers)
    cols = [models.index(m) for m in cascade.chain]
    done = np.zeros(n, dtype=bool)
    score = np.zeros(n)
    cost = np.zeros(n)
    for i, j in enumerate(cols):
        live = ~done
        cost[live] += np.nan_to_num(costs[live, j])
        score[live] = np.nan_to_num(scores[live, j])
        if i == len(cols) - 1:
            break
        if i == 0:
            stop = np.full(n, cascade.thresholds[0] <= 0)
        else:
            prev = answers[:, cols[:i]]
            last = answers[:, j]
            agree = ((prev == last[:, None]).sum(1) / i) * (last != "")
            stop = agree >= cascade.thresholds[i]
        done |= live & stop
    return score, cost


def candidate_cascades(models: list[str], mean_cost: np.ndarray, max_cheap: int = 3) -> list[Cascade]:
    """Chains of 2-3 cheap models (cost order), maybe ending in a dearer one, with agreement thresholds."""
    order = [models[j] for j in np.argsort(mean_cost)]
    cheap = order[: max(2, len(order) // 2 + 1)]
    out = []
    for k in range(2, max_cheap + 1):
        for combo in itertools.combinations(cheap, k):
            for final in [None, *order]:
                if final in combo:
                    continue
                chain = [*combo, final] if final else list(combo)
                for th in (0.5, 1.0):
                    out.append(Cascade(chain, [1.0] + [th] * (len(chain) - 2)))
    return out


def calibrate(
    models: list[str], answers: np.ndarray, scores: np.ndarray, costs: np.ndarray, max_cost: float
) -> tuple[Cascade, float, float] | None:
    """The candidate cascade of highest mean score whose mean cost stays within `max_cost` on these data."""
    best: tuple[Cascade, float, float] | None = None
    for cascade in candidate_cascades(models, np.nanmean(costs, axis=0)):
        s, c = simulate(cascade, models, answers, scores, costs)
        q, spend = float(s.mean()), float(c.mean())
        if spend <= max_cost and (best is None or q > best[1] or (q == best[1] and spend < best[2])):
            best = (cascade, q, spend)
    return best


def plurality(answers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of (n, k) normalised answers: the column of a model giving the most common non-empty answer,
    and how many of the k models gave it (0 when every answer is empty)."""
    n, k = answers.shape
    same = (answers[:, :, None] == answers[:, None, :]) & (answers[:, None, :] != "")
    votes = same.sum(2)  # for each model, how many models gave its answer
    col = votes.argmax(1)
    return col, votes[np.arange(n), col]


@dataclass
class ProbeRouter:
    """Answer-aware routing: pay a few cheap 'probe' models, then accept their plurality answer or send the
    prompt on to the model worth its cost, judged by how far the probes agree (per task).

    For a willingness to pay `lam` (quality points per USD) and each task, it compares routing directly (the
    best model for the task) with probing first, on the training data; after probing, it accepts or
    escalates per (task, number of agreeing probes). All rates are Beta(1, 1)-smoothed training means.
    """

    models: list[str]
    probes: list[str]
    n_tasks: int
    rates_: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (T, k+1, m + 1): models, then accept
    share_: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (T, k+1): P(agree level | task)
    direct_: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (T, m): model rates per task
    cost_: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (T, m): mean cost per task

    def _cols(self) -> list[int]:
        return [self.models.index(p) for p in self.probes]

    def fit(
        self, tasks: np.ndarray, answers: np.ndarray, scores: np.ndarray, costs: np.ndarray
    ) -> ProbeRouter:
        cols = self._cols()
        k, m = len(cols), len(self.models)
        pcol, agree = plurality(answers[:, cols])
        accepted = scores[np.arange(len(scores)), np.array(cols)[pcol]]
        self.rates_ = np.zeros((self.n_tasks, k + 1, m + 1))
        self.share_ = np.zeros((self.n_tasks, k + 1))
        self.direct_ = np.zeros((self.n_tasks, m))
        self.cost_ = np.zeros((self.n_tasks, m))
        for t in range(self.n_tasks):
            rows = tasks == t
            self.direct_[t] = (scores[rows].sum(0) + 1) / (rows.sum() + 2)
            self.cost_[t] = np.nanmean(costs[rows], 0) if rows.any() else np.nanmean(costs, 0)
            for a in range(k + 1):
                cell = rows & (agree == a)
                self.share_[t, a] = (cell.sum() + 0.5) / (rows.sum() + 0.5 * (k + 1))
                self.rates_[t, a, :m] = (scores[cell].sum(0) + 1) / (cell.sum() + 2)
                self.rates_[t, a, m] = (accepted[cell].sum() + 1) / (cell.sum() + 2)
        return self

    def plan(self, lam: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per task: probe or not, the direct model; per (task, agreement): accept (-1) or a model to call."""
        cols = self._cols()
        probe_cost = self.cost_[:, cols].sum(1)
        value_direct = self.direct_ - lam * self.cost_
        direct = value_direct.argmax(1)
        step = self.rates_[:, :, :-1] - lam * self.cost_[:, None, :]
        step[:, :, cols] = -np.inf  # a probe's answer is already in hand: accept it instead of paying again
        after = np.concatenate([step, self.rates_[:, :, -1:]], axis=2)  # accepting costs nothing more
        action = after.argmax(2)
        value_probe = (self.share_ * after.max(2)).sum(1) - lam * probe_cost
        probe = value_probe > value_direct.max(1)
        action = np.where(action == len(self.models), -1, action)
        return probe, direct, action

    def simulate(
        self, lam: float, tasks: np.ndarray, answers: np.ndarray, scores: np.ndarray, costs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-prompt (score, cost) at willingness to pay `lam`; probes and escalations are all paid."""
        probe, direct, action = self.plan(lam)
        cols = np.array(self._cols())
        rows = np.arange(len(tasks))
        pcol, agree = plurality(answers[:, cols])
        costs = np.nan_to_num(costs)
        act = action[tasks, agree]
        escalate = np.where(act >= 0, act, 0)
        probed_score = np.where(act >= 0, scores[rows, escalate], scores[rows, cols[pcol]])
        probed_cost = costs[:, cols].sum(1) + np.where(act >= 0, costs[rows, escalate], 0.0)
        direct_score, direct_cost = scores[rows, direct[tasks]], costs[rows, direct[tasks]]
        use = probe[tasks]
        return np.where(use, probed_score, direct_score), np.where(use, probed_cost, direct_cost)
