"""Rules as data (rules.yaml) over model metadata (catalog, then models.yaml): they run before predictions."""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

_OPS = {
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
    "in": lambda a, b: a in b,
    "not_in": lambda a, b: a not in b,
}


class RuleError(ValueError):
    """A rules file that cannot be read or uses an unknown operator."""


@dataclass
class ModelInfo:
    """What rules may read about a model."""

    name: str
    privacy: str = "remote"
    context_window: int | None = None
    p95_latency_s: float | None = None

    def __post_init__(self) -> None:
        # fail closed: a privacy left blank (YAML null, a manifest's null) passed every privacy rule, as a
        # condition on a missing value never holds; an unknown p95 is None, so that the SLO note says so
        self.privacy = self.privacy or "remote"
        if self.p95_latency_s is not None and not math.isfinite(self.p95_latency_s):
            self.p95_latency_s = None

    def field(self, name: str) -> Any:
        return getattr(self, name, None)


def _load_yaml(path: Path | None, default: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text() if path else resources.files(__package__).joinpath(default).read_text()
        return yaml.safe_load(text) or {}
    except (OSError, yaml.YAMLError) as e:
        raise RuleError(f"cannot read {path or default}: {e}") from e


def model_metadata(
    models: Iterable[str], extra_path: Path | None = None, settings: Any = None
) -> dict[str, ModelInfo]:
    """Privacy and context window per model: the gateway catalog first (`settings`' catalog; by default the
    environment's), then this package's models.yaml."""
    table = _load_yaml(extra_path, "models.yaml").get("models", {})
    catalog: dict[str, Any] = {}
    try:
        from pipelines.llm.catalog import load_catalog

        catalog = {m.name: m for m in load_catalog(settings).models}
    except Exception:  # noqa: BLE001 - the catalog is optional here; models.yaml still applies
        catalog = {}
    out = {}
    for name in models:
        if name in catalog:
            entry = catalog[name]
            out[name] = ModelInfo(name, privacy=entry.privacy, context_window=entry.context_window)
        else:
            meta = table.get(name) or {}  # a name with nothing under it reads as no metadata
            out[name] = ModelInfo(name, meta.get("privacy") or "remote", meta.get("context_window"))
    return out


@dataclass
class Rule:
    name: str
    drop: dict[str, dict[str, Any]]
    because: str
    when: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for cond in self.drop.values():
            for op in cond:
                if op not in _OPS:
                    raise RuleError(f"rule {self.name}: unknown operator {op!r}; use one of {sorted(_OPS)}")

    def fires(self, ctx: Mapping[str, Any]) -> bool:
        return all(ctx.get(k) == v for k, v in self.when.items())

    def drops(self, model: ModelInfo, ctx: Mapping[str, Any]) -> tuple[bool, Any]:
        """Whether every drop condition holds for `model`, and the model field value of the last one."""
        value = None
        for fname, cond in self.drop.items():
            value = model.field(fname)
            for op, operand in cond.items():
                if isinstance(operand, str) and operand.startswith("$"):
                    operand = ctx.get(operand[1:])
                if value is None or operand is None or not _OPS[op](value, operand):
                    return False, value
        return True, value


def load_rules(path: Path | None = None) -> list[Rule]:
    raw = _load_yaml(path, "rules.yaml")
    try:
        return [Rule(**r) for r in raw.get("rules", [])]
    except TypeError as e:
        raise RuleError(f"bad rule in {path or 'rules.yaml'}: {e}") from e


@dataclass
class Exclusion:
    rule: str
    reason: str


def apply_rules(
    rules: list[Rule], models: Mapping[str, ModelInfo], ctx: Mapping[str, Any]
) -> dict[str, Exclusion]:
    """model -> the first rule that drops it (models absent from the result stay candidates)."""
    excluded: dict[str, Exclusion] = {}
    for rule in rules:
        if not rule.fires(ctx):
            continue
        for name, info in models.items():
            if name in excluded:
                continue
            hit, value = rule.drops(info, ctx)
            if hit:
                reason = rule.because.format_map(_Fmt({**ctx, "model": name, "value": value}))
                excluded[name] = Exclusion(rule.name, reason)
    return excluded


class _Fmt(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"
