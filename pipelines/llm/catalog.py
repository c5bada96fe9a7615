"""Model catalog: typed entries from YAML package data (or a file named in settings)."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipelines.settings import Settings

Privacy = Literal["local", "open_weights_remote", "remote"]


class CatalogError(ValueError):
    """The catalog file is missing, not YAML, or an entry breaks the schema."""


# llama.cpp file types a served copy of 4-bit weights may have: each is finer than any 4-bit type's step
CopyType = Literal["BF16", "F16", "Q8_0"]


# a misspelt key (`stops:`, `cost_per_1k_input:`) was dropped without a word; prices are finite numbers
_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


class LocalServing(BaseModel):
    model_config = _STRICT

    weights: str
    port_offset: int = Field(ge=0)
    chat_format: str | None = None  # llama-cpp-python chat format; None uses the GGUF's own template
    # the same format for llama-server: a Jinja chat template file next to this module, and the stop
    # strings that llama-cpp-python's handler would have added (sent with every request to the model)
    chat_template: str | None = None
    stop: list[str] = Field(default_factory=list)
    # Serve a BF16 copy of the shipped weights where `cpu_bf16` is set and the CPU computes bf16 natively,
    # and a copy in `no_bf16_type` otherwise, when set (pipelines/llm/weights.py)
    cpu_bf16: bool = False
    no_bf16_type: CopyType | None = None
    flash_attn: bool = False
    # the repeat penalty: llama-server's default for requests that set none (its own default: 1.0, off), and
    # sent with every request by the gateway (llama-cpp-python's server would otherwise apply 1.1)
    repeat_penalty: float = Field(default=1.0, ge=1.0)
    throughput_tokens_s: dict[Literal["input", "output"], float]

    @model_validator(mode="after")
    def _throughputs(self) -> LocalServing:  # they price the model: a zero divided, a negative was a price
        t = self.throughput_tokens_s
        if set(t) != {"input", "output"} or min(t.values()) <= 0:
            raise ValueError("throughput_tokens_s needs input and output, both > 0 tokens/s")
        return self

    @model_validator(mode="after")
    def _template_exists(self) -> LocalServing:
        path = self.template_path()
        if path is not None and not path.is_file():
            raise ValueError(f"chat_template {self.chat_template!r} is not a file in {path.parent}")
        return self

    def template_path(self) -> Path | None:
        return Path(__file__).with_name(self.chat_template) if self.chat_template else None


class ModelEntry(BaseModel):
    model_config = _STRICT

    name: str = Field(pattern=r"^[A-Za-z0-9._:-]+$")
    litellm_model: str
    provider: str
    privacy: Privacy
    context_window: int = Field(gt=0)
    cost_per_1k_input_usd: float | None = Field(default=None, ge=0)
    cost_per_1k_output_usd: float | None = Field(default=None, ge=0)
    api_base: str | None = None
    api_base_env: str | None = None
    api_key_env: str | None = None
    leaderboard: dict[str, str | None] = Field(default_factory=dict)
    local: LocalServing | None = None

    @model_validator(mode="after")
    def _priced(self) -> ModelEntry:
        if self.local is None and (self.cost_per_1k_input_usd is None or self.cost_per_1k_output_usd is None):
            raise ValueError(f"{self.name}: a non-local model needs cost_per_1k_input_usd and _output_usd")
        return self

    def cost_usd(self, input_tokens: float, output_tokens: float) -> float:
        """What a call of these token counts costs at this entry's catalog prices."""
        inp, out = self.cost_per_1k_input_usd or 0.0, self.cost_per_1k_output_usd or 0.0
        return (input_tokens * inp + output_tokens * out) / 1000

    @property
    def is_local_server(self) -> bool:
        return self.local is not None

    def unavailable_reason(self) -> str | None:
        """Why this entry cannot be called now (a missing variable), or None."""
        for var in (self.api_key_env, self.api_base_env):
            if var and not os.environ.get(var):
                return f"{var} is not set"
        return None


class Catalog(BaseModel):
    model_config = _STRICT

    models: list[ModelEntry]

    @model_validator(mode="after")
    def _unique(self) -> Catalog:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate model names: {', '.join(dupes)}")
        offsets = [m.local.port_offset for m in self.local() if m.local is not None]
        if shared := sorted({o for o in offsets if offsets.count(o) > 1}):
            raise ValueError(f"local models share port_offset {shared[0]}: each server needs its own port")
        return self

    def get(self, name: str) -> ModelEntry:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"unknown model {name!r}; the catalog has: {', '.join(self.names())}")

    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def local(self) -> list[ModelEntry]:
        return [m for m in self.models if m.is_local_server]

    def available(self) -> list[ModelEntry]:
        return [m for m in self.models if m.unavailable_reason() is None]


def load_catalog(settings: Settings | None = None, path: Path | None = None) -> Catalog:
    """Load and validate the catalog; local models get prices derived from the CPU-hour price."""
    settings = settings or Settings()
    path = path or settings.catalog_path
    try:
        if path is None:
            text = resources.files("pipelines.llm").joinpath("catalog.yaml").read_text()
            where = "package catalog.yaml"
        else:
            text = Path(path).read_text()
            where = str(path)
    except OSError as e:
        raise CatalogError(f"cannot read model catalog {path}: {e}") from e
    except UnicodeDecodeError as e:  # a ValueError, not an OSError: it was a traceback
        raise CatalogError(f"model catalog {path} is not UTF-8 text: {e}") from e
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CatalogError(f"model catalog {where} is not valid YAML: {e}") from e
    if not isinstance(raw, dict) or "models" not in raw:
        raise CatalogError(f"model catalog {where} needs a top-level 'models:' list")
    try:
        catalog = Catalog.model_validate(raw)
    except ValidationError as e:
        raise CatalogError(f"model catalog {where} is invalid:\n{e}") from e
    for m in catalog.local():
        assert m.local is not None
        if not 0 < settings.local_base_port + m.local.port_offset <= 65535:
            raise CatalogError(
                f"{m.name}: port_offset {m.local.port_offset} puts its server past port 65535 "
                f"(SM_LOCAL_BASE_PORT {settings.local_base_port})"
            )
        m.api_base = (
            m.api_base or f"http://{settings.local_host}:{settings.local_base_port + m.local.port_offset}/v1"
        )
        per_token_s = settings.cpu_hour_usd / 3600.0
        if m.cost_per_1k_input_usd is None:
            m.cost_per_1k_input_usd = 1000 * per_token_s / m.local.throughput_tokens_s["input"]
        if m.cost_per_1k_output_usd is None:
            m.cost_per_1k_output_usd = 1000 * per_token_s / m.local.throughput_tokens_s["output"]
    return catalog
