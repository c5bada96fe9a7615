"""Server-sent events of a streamed chat, OpenAI's `chat.completion.chunk` shape plus StratMaster's routing.

The first event carries the routing decision, the last the usage and cost; a stream that breaks after it
started says so in-band (the HTTP status is already sent). The request span ends with the stream.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

from opentelemetry.trace import Span, Status, StatusCode

from serving.metrics import record_call
from serving.routing import Choice
from serving.streaming import ChatStream
from serving.tracing import set_usage

log = logging.getLogger("stratmaster.serving")


def chat_events(stream: ChatStream, choice: Choice, span: Span) -> Iterator[str]:
    """The SSE events; ends the request span when the stream ends (or the client leaves)."""
    try:
        yield from _events(stream, choice, span)
    finally:
        stream.close()  # idempotent; ends the gateway's span when the client left early
        s = stream.stats
        set_usage(span, s.model, s.input_tokens, s.output_tokens, s.cost_usd)
        span.end()


def _events(stream: ChatStream, choice: Choice, span: Span) -> Iterator[str]:
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        chunk = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": stream.stats.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return f"data: {json.dumps(chunk)}\n\n"

    meta = {
        "routing": choice.decision,
        "chosen_by": choice.chosen_by,
        "requested_model": stream.stats.requested_model,
        "fallback_used": stream.stats.fallback_used,
    }
    yield event({"role": "assistant", "content": ""}, stratmaster=meta)
    try:
        for text in stream.deltas():
            yield event({"content": text})
    except Exception as e:  # the stream broke after it started: say so in-band, no trace
        log.error("stream from %s failed: %s", stream.stats.model, type(e).__name__)
        span.set_attribute("error.type", type(e).__name__)
        span.set_status(Status(StatusCode.ERROR, type(e).__name__))
        err = {"error": {"message": "the model stream failed", "type": "upstream_unavailable", "code": 503}}
        yield f"data: {json.dumps(err)}\n\n"
        return
    s = stream.stats
    fb = "gateway" if s.fallback_used else ("panel" if choice.chosen_by == "panel_fallback" else None)
    record_call(s.model, choice.chosen_by, s.latency_s, s.output_tokens, fb)
    usage = {
        "prompt_tokens": s.input_tokens,
        "completion_tokens": s.output_tokens,
        "total_tokens": s.input_tokens + s.output_tokens,
    }
    yield event(
        {},
        s.finish_reason or "stop",
        usage=usage,
        stratmaster={
            **meta,
            "cost_usd": s.cost_usd,
            "latency_s": s.latency_s,
            "ttft_s": s.ttft_s,
        },
    )
    yield "data: [DONE]\n\n"
