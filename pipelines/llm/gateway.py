"""The gateway: the one entry point all code uses to call a model, a LiteLLM Router built from the catalog.

Model groups are catalog names; retries, timeouts, cooldowns and fallbacks (a local model down -> the other
local model) are LiteLLM's. Every call returns text, usage, cost, latency, time to first token, the model
that actually answered and whether a fallback happened.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch the cost map from the internet

import logging
import time
from collections import defaultdict, deque
from dataclasses import asdict, dataclass
from typing import Any

import litellm
from opentelemetry.trace import Status, StatusCode

from pipelines.llm.catalog import Catalog, ModelEntry, load_catalog
from pipelines.settings import Settings
from pipelines.tracing import tracer

litellm.suppress_debug_info = True
logging.getLogger("LiteLLM").setLevel(logging.ERROR)  # register_model warns about cache prices we do not use
litellm.drop_params = True
LOCAL_API_KEY = "sk-local-no-auth"  # llama.cpp servers take any key; the client insists on one


class GatewayError(RuntimeError):
    """A call failed for a reason the caller can act on; the message names the model and the cause."""


@dataclass
class ChatResult:
    text: str
    model: str
    requested_model: str
    fallback_used: bool
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_s: float
    ttft_s: float | None
    finish_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _params(entry: ModelEntry, settings: Settings) -> dict[str, Any]:
    p: dict[str, Any] = {
        "model": entry.litellm_model,
        "timeout": settings.request_timeout_s,
        "stream_timeout": settings.request_timeout_s,
        "max_retries": 0,  # retries are the Router's
    }
    if entry.api_base_env:
        p["api_base"] = f"os.environ/{entry.api_base_env}"  # LiteLLM resolves it, in-process and in the Proxy
    elif entry.api_base:
        p["api_base"] = entry.api_base
    if entry.api_key_env:
        p["api_key"] = f"os.environ/{entry.api_key_env}"
    elif entry.is_local_server or entry.provider == "vllm":
        p["api_key"] = LOCAL_API_KEY
    return p


def router_config(catalog: Catalog, settings: Settings, only_available: bool = True) -> dict[str, Any]:
    """The Router's model list and settings; also what `stratmaster gateway export` writes for the Proxy."""
    entries = catalog.available() if only_available else catalog.models
    model_list = [
        {
            "model_name": e.name,
            "litellm_params": _params(e, settings),
            "model_info": {"id": e.name, "privacy": e.privacy, "context_window": e.context_window},
        }
        for e in entries
    ]
    names = {e.name for e in entries}
    local = [e.name for e in entries if e.is_local_server]
    fallbacks = [{m: [o for o in local if o != m]} for m in local if len(local) > 1]
    # remote models fall back to the local panel, cheapest first: an answer beats an outage
    fallbacks += [{e.name: local} for e in entries if not e.is_local_server and local]
    return {
        "model_list": model_list,
        "router_settings": {
            "num_retries": settings.num_retries,
            "timeout": settings.request_timeout_s,
            "cooldown_time": settings.cooldown_s,
            "allowed_fails": 1,
            "fallbacks": [f for f in fallbacks if set(f) <= names],
        },
    }


def register_prices(catalog: Catalog) -> None:
    """Tell LiteLLM every catalog price so `completion_cost` works for local and self-hosted models too."""
    litellm.register_model(
        {
            e.litellm_model: {
                "input_cost_per_token": (e.cost_per_1k_input_usd or 0.0) / 1000,
                "output_cost_per_token": (e.cost_per_1k_output_usd or 0.0) / 1000,
                "max_input_tokens": e.context_window,
                "max_tokens": e.context_window,
                "litellm_provider": e.litellm_model.split("/", 1)[0],
                "mode": "chat",
            }
            for e in catalog.models
        }
    )


class Gateway:
    def __init__(self, settings: Settings | None = None, catalog: Catalog | None = None) -> None:
        self.settings = settings or Settings()
        self.catalog = catalog or load_catalog(self.settings)
        register_prices(self.catalog)
        cfg = router_config(self.catalog, self.settings)
        self._by_litellm = {e.litellm_model: e for e in self.catalog.models}
        self._router = litellm.Router(model_list=cfg["model_list"], **cfg["router_settings"])
        self._latencies: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=200))

    def _entry(self, name: str) -> ModelEntry:
        try:
            entry = self.catalog.get(name)
        except KeyError as e:
            raise GatewayError(str(e.args[0])) from None
        reason = entry.unavailable_reason()
        if reason:
            raise GatewayError(f"model {name!r} is unavailable: {reason}")
        return entry

    def _check(self, entry: ModelEntry, messages: list[dict[str, Any]], max_tokens: int) -> None:
        if not isinstance(messages, list) or not messages:
            raise GatewayError(
                f"{entry.name}: messages must be a non-empty list of {{role, content}} objects"
            )
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
                raise GatewayError(f"{entry.name}: message {i} needs a role of system, user or assistant")
            if not isinstance(m.get("content"), str) or not m["content"].strip():
                raise GatewayError(f"{entry.name}: message {i} has empty content")
        est = litellm.token_counter(model="gpt-3.5-turbo", messages=messages)
        if est + max_tokens > entry.context_window:
            raise GatewayError(
                f"{entry.name}: context overflow: about {est} prompt tokens + {max_tokens} to generate "
                f"exceed its context window of {entry.context_window}"
            )

    def chat(
        self,
        model: str,
        messages: list[dict[str, Any]],
        max_tokens: int = 256,
        temperature: float = 0.0,
        stream: bool = True,
        **kwargs: Any,
    ) -> ChatResult:
        """Call `model` (a catalog name) through the Router; streamed by default to measure TTFT."""
        entry = self._entry(model)
        self._check(entry, messages, max_tokens)
        with tracer().start_as_current_span(f"chat {model}") as span:
            span.set_attribute("gen_ai.operation.name", "chat")
            span.set_attribute("gen_ai.request.model", model)
            span.set_attribute("gen_ai.request.max_tokens", max_tokens)
            span.set_attribute("gen_ai.request.temperature", temperature)
            try:
                result = self._call(entry, messages, max_tokens, temperature, stream, **kwargs)
            except GatewayError as e:
                span.set_attribute("error.type", type(e).__name__)
                span.set_status(Status(StatusCode.ERROR, str(e)[:200]))
                raise
            span.set_attribute("gen_ai.system", self.catalog.get(result.model).provider)
            span.set_attribute("gen_ai.response.model", result.model)
            span.set_attribute("gen_ai.usage.input_tokens", result.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", result.output_tokens)
            span.set_attribute("stratmaster.cost_usd", result.cost_usd)
            span.set_attribute("stratmaster.fallback_used", result.fallback_used)
            if result.ttft_s is not None:
                span.set_attribute("stratmaster.ttft_s", result.ttft_s)
            return result

    def _call(
        self,
        entry: ModelEntry,
        messages: list[dict[str, Any]],
        max_tokens: int,
        temperature: float,
        stream: bool,
        **kwargs: Any,
    ) -> ChatResult:
        model = entry.name
        t0 = time.perf_counter()
        ttft: float | None = None
        try:
            resp = self._router.completion(
                model=model, messages=messages, max_tokens=max_tokens, temperature=temperature,
                stream=stream, **({"stream_options": {"include_usage": True}} if stream else {}), **kwargs,
            )  # fmt: skip
            if stream:
                chunks = []
                for chunk in resp:
                    if ttft is None and chunk.choices and chunk.choices[0].delta.content:
                        ttft = time.perf_counter() - t0
                    chunks.append(chunk)
                resp = litellm.stream_chunk_builder(chunks, messages=messages)
        except litellm.exceptions.ContextWindowExceededError as e:
            raise GatewayError(f"{model}: context overflow: {e.message}") from None
        except litellm.exceptions.BadRequestError as e:
            raise GatewayError(f"{model}: request refused: {e.message}") from None
        except Exception as e:  # timeouts, connection errors, every fallback exhausted
            kind = type(e).__name__
            raise GatewayError(f"{model}: call failed after retries and fallbacks ({kind}): {e}") from None
        latency = time.perf_counter() - t0
        if resp is None or not resp.choices:
            raise GatewayError(f"{model}: the server returned no choices")
        answered = self._answered(resp, entry)
        usage = getattr(resp, "usage", None)
        in_tok = int(getattr(usage, "prompt_tokens", 0) or 0)
        out_tok = int(getattr(usage, "completion_tokens", 0) or 0)
        e = self.catalog.get(answered)
        cost = (in_tok * (e.cost_per_1k_input_usd or 0) + out_tok * (e.cost_per_1k_output_usd or 0)) / 1000
        self._latencies[answered].append(latency)
        return ChatResult(
            text=resp.choices[0].message.content or "",
            model=answered,
            requested_model=model,
            fallback_used=answered != model,
            input_tokens=in_tok,
            output_tokens=out_tok,
            cost_usd=cost,
            latency_s=latency,
            ttft_s=ttft if stream else None,
            finish_reason=resp.choices[0].finish_reason,
        )

    def _answered(self, resp: Any, requested: ModelEntry) -> str:
        hidden = getattr(resp, "_hidden_params", {}) or {}
        model_id = hidden.get("model_id")
        if model_id in self.catalog.names():
            return str(model_id)
        served = getattr(resp, "model", None) or ""
        for name in self.catalog.names():
            if served == name or served.endswith("/" + name):
                return name
        return requested.name

    def recent_latency_p95(self, model: str) -> float | None:
        """p95 of this process's recent calls that `model` answered, for the router's latency rule."""
        lat = sorted(self._latencies.get(model, ()))
        return lat[int(0.95 * (len(lat) - 1))] if lat else None
