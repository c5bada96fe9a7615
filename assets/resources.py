"""Dagster resources: thin wrappers that build library objects from settings (never at import time)."""

import numbers
from functools import cached_property
from typing import TYPE_CHECKING, Any

import dagster as dg
import numpy as np

from pipelines.settings import Settings

if TYPE_CHECKING:  # litellm takes seconds to import: only runs that use the gateway pay for it
    from pipelines.llm.gateway import Gateway


def plain_metadata(d: dict) -> dict:
    """The numbers, booleans and strings of `d` as python types Dagster stores (numpy scalars converted:
    numpy's int64, float32 and bool_ were dropped)."""
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, str):
            out[k] = v
        elif isinstance(v, bool | np.bool_):
            out[k] = bool(v)
        elif isinstance(v, numbers.Integral):
            out[k] = int(v)
        elif isinstance(v, numbers.Real):
            out[k] = float(v)
    return out


class SettingsResource(dg.ConfigurableResource):
    """Workbench settings: SM_* environment variables, then any field named in `overrides`."""

    overrides: dict[str, str] = {}

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
