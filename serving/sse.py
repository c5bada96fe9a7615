"""Server-sent events of a streamed chat, OpenAI's `chat.completion.chunk` shape plus StratMaster's routing.

The first event carries the routing decision, the last the usage and cost; a stream that breaks after it
started says so in-band (the HTTP status is already sent). The request span ends with the stream, and when
the client leaves, before the first event or midway, the response closes the model's stream (a llama.cpp
slot stops generating for nobody) and ends the spans: Starlette neither resumes nor closes a body whose
client left, so a generator's own `finally` would wait for the garbage collector, or never run.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
from opentelemetry.trace import Span, Status, StatusCode
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from serving.metrics import record_call
from serving.routing import Choice
from serving.streaming import ChatStream
from serving.tracing import set_usage

log = logging.getLogger("stratmaster.serving")


class _ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that calls `on_close` however it ends: read to the end, client gone, cancelled."""

    def __init__(self, content: Iterator[str], on_close: Any, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):  # runs even when the request's task is being cancelled
                await run_in_threadpool(self._on_close)


def chat_response(stream: ChatStream, choice: Choice, span: Span) -> StreamingResponse:
    """The SSE response; when it ends, however, it closes the model stream and ends the request span."""

    def finish() -> None:
        stream.close()  # idempotent; ends the gateway's span when the client left early
        s = stream.stats
        set_usage(span, s.model, s.input_tokens, s.output_tokens, s.cost_usd)
        span.end()

    return _ClosingStreamingResponse(_events(stream, choice, span), finish, media_type="text/event-stream")


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
