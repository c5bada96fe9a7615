"""Prometheus metrics beside BentoML's own, served on its /metrics endpoint."""

from __future__ import annotations

from functools import cache
from typing import Any

import bentoml

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


@cache
def metrics() -> dict[str, Any]:
    """Created on first use (BentoML's metrics client is configured when the server starts)."""
    return {
        "routed": bentoml.metrics.Counter(
            name="stratmaster_routed_requests",
            documentation="Requests by the model that answered and how it was chosen",
            labelnames=["model", "chosen_by"],
        ),
        "fallbacks": bentoml.metrics.Counter(
            name="stratmaster_fallbacks",
            documentation="Requests answered by a fallback model (kind: gateway or panel)",
            labelnames=["kind"],
        ),
        "latency": bentoml.metrics.Histogram(
            name="stratmaster_model_latency_seconds",
            documentation="End-to-end model call latency by the model that answered",
            labelnames=["model"],
            buckets=LATENCY_BUCKETS,
        ),
        "tokens_s": bentoml.metrics.Histogram(
            name="stratmaster_output_tokens_per_second",
            documentation="Output tokens per second by the model that answered",
            labelnames=["model"],
            buckets=(1, 5, 10, 25, 50, 100, 200, 400, 800),
        ),
        "prompt_log_dropped": bentoml.metrics.Counter(
            name="stratmaster_prompt_log_dropped",
            documentation="Chat prompts not written to the prompt log because its writer was behind",
        ),
    }


def record_call(
    model: str, chosen_by: str, latency_s: float, output_tokens: int, fallback: str | None
) -> None:
    m = metrics()
    m["routed"].labels(model=model, chosen_by=chosen_by).inc()
    m["latency"].labels(model=model).observe(latency_s)
    if latency_s > 0 and output_tokens:
        m["tokens_s"].labels(model=model).observe(output_tokens / latency_s)
    if fallback:
        m["fallbacks"].labels(kind=fallback).inc()


def record_prompt_log_dropped() -> None:
    metrics()["prompt_log_dropped"].inc()
