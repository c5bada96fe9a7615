"""Streamed chat for SSE: the gateway's public `Gateway.stream`, with the figures the service reports.

`Gateway.stream` opens the call (validation, retries, fallbacks and the first chunk happen before any byte
is sent, so a failure is still an HTTP error) and owns the accounting: usage, cost, latency, TTFT and the
OTel span are those `Gateway.chat` would give. This wrapper only keeps the shape the service reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipelines.llm.gateway import Gateway


@dataclass
class StreamStats:
    model: str
    requested_model: str
    fallback_used: bool
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    ttft_s: float | None = None
    finish_reason: str | None = None


class ChatStream:
    """Opens the stream eagerly (a failed call raises GatewayError here, before any byte is sent)."""

    def __init__(
        self,
        gateway: Gateway,
        model: str,
        messages: list[dict[str, Any]],
        max_tokens: int,
        temperature: float,
        **options: Any,  # the caller's stop strings
    ) -> None:
        self._call = gateway.stream(model, messages, max_tokens, temperature, **options)
        self.stats = StreamStats(self._call.model, self._call.requested_model, self._call.fallback_used)

    def deltas(self) -> Iterator[str]:
        """Text pieces as they arrive; `stats` is complete once this is exhausted.

        Closing this iterator early (the client went away) closes the model stream and ends its span.
        """
        try:
            yield from self._call
        finally:
            self._call.close()
        r = self._call.result
        if r is not None:
            self.stats.input_tokens, self.stats.output_tokens = r.input_tokens, r.output_tokens
            self.stats.cost_usd, self.stats.latency_s = r.cost_usd, r.latency_s
            self.stats.ttft_s, self.stats.finish_reason = r.ttft_s, r.finish_reason

    def close(self) -> None:
        self._call.close()
