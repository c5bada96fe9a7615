"""Dagster resources: thin wrappers that build library objects from settings (never at import time)."""

import difflib
import numbers
from functools import cached_property
from typing import TYPE_CHECKING, Any

import dagster as dg
import numpy as np
import pydantic

from pipelines.settings import Settings

if TYPE_CHECKING:  # litellm takes seconds to import: only runs that use the gateway pay for it
    from pipelines.llm.gateway import Gateway


def plain_metadata(d: dict) -> dict:
    """The numbers, booleans and strings of `d` as python types Dagster stores (numpy scalars converted:
    numpy's int64, float32 and bool_ were dropped); a number that is not finite (NaN where a figure has
    none) is None, as the figures' JSON has null."""
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, str):
            out[k] = v
        elif isinstance(v, bool | np.bool_):
            out[k] = bool(v)
        elif isinstance(v, numbers.Integral):
            out[k] = int(v)
        elif isinstance(v, numbers.Real):
            out[k] = float(v) if np.isfinite(float(v)) else None
    return out


_SECRETS = frozenset(n for n, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation))


def check_overrides(overrides: dict[str, str]) -> None:
    """A ValueError (one line) for a key Settings has no field for, or a value it refuses, in the overrides
    or in an SM_* variable: Settings ignores unknown keys, so a misspelt override was dropped silently, and
    a bad value (an SM_* one even with no override) failed only in the first step that read the settings,
    as a wrapped pydantic traceback."""
    fields = set(Settings.model_fields)
    unknown = sorted(k for k in overrides if k.lower() not in fields)  # Settings reads names in any case
    if unknown:

        def hint(key: str) -> str:
            near = difflib.get_close_matches(key.lower().removeprefix("sm_"), fields, n=1)
            return f"{key!r}" + (f" (did you mean {near[0]!r}?)" if near else "")

        raise ValueError(f"unknown setting in overrides: {', '.join(map(hint, unknown))}")
    given_secrets = sorted(k.lower() for k in overrides if k.lower() in _SECRETS)
    if given_secrets:  # run config is stored with the run (Dagster's run storage) and shown in its UI
        names = ", ".join(f"{k} (SM_{k.upper()})" for k in given_secrets)
        raise ValueError(f"secrets are not taken from run config, which Dagster stores: set {names} in the "
                         "environment")  # fmt: skip
    try:
        Settings(**overrides)  # type: ignore[arg-type]  # strings, converted as SM_* variables are
    except pydantic.ValidationError as e:
        given = {k.lower() for k in overrides}

        def where(loc: tuple) -> str:
            name = ".".join(map(str, loc))
            return f"overrides: {name}" if loc and str(loc[0]) in given else f"SM_{name.upper()}"

        def value(r: Any) -> str:  # a secret's value is never printed
            return "'***'" if r["loc"] and str(r["loc"][0]) in _SECRETS else repr(r.get("input"))

        bad = [f"{where(r['loc'])}={value(r)}: {r['msg']}" for r in e.errors()]
        raise ValueError(f"invalid settings: {'; '.join(bad)}") from None


class SettingsResource(dg.ConfigurableResource):
    """Workbench settings: SM_* environment variables, then any field named in `overrides` (checked when the
    resource is built: at definition, or at launch for run config)."""

    overrides: dict[str, str] = {}

    def __init__(self, **data: Any):
        # Dagster builds the resource again at launch with the run config's values: they are checked too
        check_overrides(dict(data.get("overrides") or {}))
        super().__init__(**data)

    def get(self) -> Settings:
        fields: dict[str, Any] = dict(self.overrides)  # strings, converted as SM_* variables are
        return Settings(**fields)


class GatewayResource(dg.ConfigurableResource):
    settings: SettingsResource

    @cached_property
    def _gateway(self) -> "Gateway":
        from pipelines.llm.gateway import Gateway

        return Gateway(self.settings.get())

    def get(self) -> "Gateway":
        return self._gateway


def evidence_metadata(local) -> dict:
    """What an asset took from the micro-bench (an outcome table): its rows and models."""
    return {
        "micro_bench_rows": len(local),
        "micro_bench_models": ", ".join(sorted(local["model"].unique())) or "none",
    }
