"""The only Dagster code: thin assets over `pipelines` and `router_models`, and the single Definitions."""

from assets.definitions import defs

__all__ = ["defs"]
