"""A routing decision that explains itself (DESIGN.md "Routing decision")."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class Candidate:
    model: str
    quality_mean: float
    quality_sd: float
    cost_usd: float
    utility: float
    allowed: bool
    excluded_by: str | None = None  # rule or constraint name
    reason: str | None = None


@dataclass
class Decision:
    model: str | None  # None: no candidate satisfies the rules and constraints
    candidates: list[Candidate]
    binding: str | None  # the rule or constraint that changed the choice, if any
    policy: str
    explanation: str
    signals: dict[str, Any] = field(default_factory=dict)
    decision_ms: float | None = None

    def chosen(self) -> Candidate | None:
        return next((c for c in self.candidates if c.model == self.model), None)

    def to_dict(self) -> dict[str, Any]:
        """`dataclasses.asdict`'s value, built field by field: asdict deep-copies every value it meets (3% of
        a /v1/route worker's CPU under load); the candidates' fields and the signals are flat."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["candidates"] = [dict(vars(c)) for c in self.candidates]
        d["signals"] = {k: v.copy() if isinstance(v, list | dict) else v for k, v in self.signals.items()}
        return d


def _fmt(c: Candidate) -> str:
    return f"{c.model} (quality {c.quality_mean:.2f} ± {c.quality_sd:.2f}, ${c.cost_usd:.5f})"


def explain(
    chosen: Candidate | None,
    unconstrained: Candidate | None,
    binding: Candidate | None,
    policy: str,
    n_allowed: int,
    candidates: list[Candidate] | None = None,
) -> str:
    """One readable sentence: what was chosen, by which policy, and what bound the choice. When nothing was
    chosen, every rule that excluded a model, with one of its reasons (the preferred model's rule alone said
    `pii_local_only` where the local models had been dropped by their context window)."""
    if chosen is None:
        by_rule: dict[str, list[Candidate]] = {}
        for c in candidates or ([binding] if binding else []):
            if c.excluded_by:
                by_rule.setdefault(c.excluded_by, []).append(c)
        why = "; ".join(
            f"{rule}: {len(cs)} model(s), e.g. {cs[0].reason}" if len(cs) > 1 else f"{rule}: {cs[0].reason}"
            for rule, cs in by_rule.items()
        )
        return f"No model can take this request: every candidate is excluded by a rule or constraint ({why})."
    head = f"Chose {_fmt(chosen)} by {policy}"
    if binding is not None and unconstrained is not None:
        return (
            f"{head}; the preferred {unconstrained.model} was ruled out by {binding.excluded_by} "
            f"({binding.reason}), leaving {n_allowed} candidate(s)."
        )
    return f"{head}; no rule or constraint bound the choice ({n_allowed} candidate(s) allowed)."
