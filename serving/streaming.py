"""Streamed chat through the gateway's LiteLLM Router: the text deltas, then what a ChatResult would hold.

The gateway's `chat` streams internally but returns one result; SSE needs the deltas as they arrive.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipelines.llm.gateway import Gateway, GatewayError


@dataclass
class StreamStats:
    model: str
    requested_model: str
    fallback_used: bool
    input_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    ttft_s: float | None = None
    finish_reason: str | None = None


class ChatStream:
    """Opens the stream eagerly (so a failed call is a GatewayError before any byte is sent)."""

    def __init__(
        self,
        gateway: Gateway,
        model: str,
        messages: list[dict[str, Any]],
        max_tokens: int,
        temperature: float,
    ) -> None:
        entry = gateway._entry(model)
        gateway._check(entry, messages, max_tokens)
        self._t0 = time.perf_counter()
        try:
            self._resp = gateway._router.completion(
                model=model, messages=messages, max_tokens=max_tokens, temperature=temperature,
                stream=True, stream_options={"include_usage": True},
            )  # fmt: skip
            self._it = iter(self._resp)
            self._first = next(self._it, None)
        except Exception as e:  # connection errors, timeouts, every fallback exhausted
            raise GatewayError(
                f"{model}: call failed after retries and fallbacks ({type(e).__name__})"
            ) from None
        answered = gateway._answered(self._resp, entry)
        self.stats = StreamStats(answered, model, answered != model)
        self._gateway = gateway

    def deltas(self) -> Iterator[str]:
        """Text pieces as they arrive; `stats` is complete once this is exhausted."""
        chunk = self._first
        rest = self._it
        while chunk is not None:
            usage = getattr(chunk, "usage", None)
            if usage:
                self.stats.input_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
                self.stats.output_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
            if chunk.choices:
                choice = chunk.choices[0]
                if choice.finish_reason:
                    self.stats.finish_reason = choice.finish_reason
                text = choice.delta.content if choice.delta else None
                if text:
                    if self.stats.ttft_s is None:
                        self.stats.ttft_s = time.perf_counter() - self._t0
                    yield text
            chunk = next(rest, None)
        self.stats.latency_s = time.perf_counter() - self._t0
        self._gateway._latencies[self.stats.model].append(self.stats.latency_s)
