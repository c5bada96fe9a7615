"""The service's spans: request -> route -> retrieval -> LLM call, with GenAI semantic-convention attributes.

Spans carry model names, token counts, cost, policy and PII entity *types*; never prompt, message, question
or answer text, and never an exception message (a validation message could quote input).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, Status, StatusCode

from pipelines.tracing import tracer
from serving.http import HTTPFailure


class RequestSpan:
    """The request's span; `detach()` hands ending it to a stream that outlives the handler."""

    def __init__(self, span: Span) -> None:
        self.span = span
        self.detached = False

    def detach(self) -> Span:
        self.detached = True
        return self.span


@contextmanager
def request_span(endpoint: str) -> Iterator[RequestSpan]:
    # BentoML's HTTP span comes from its own provider, unsampled unless its `tracing.sample_rate` is set; a
    # child of an unsampled span is dropped, so ours then starts a trace of its own, linked to BentoML's
    parent = trace.get_current_span().get_span_context()
    unsampled = parent.is_valid and not parent.trace_flags.sampled
    span = tracer().start_span(
        f"request {endpoint}",
        context=Context() if unsampled else None,
        links=[Link(parent)] if unsampled else None,
        attributes={"stratmaster.endpoint": endpoint},
    )
    handle = RequestSpan(span)
    try:
        with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
            yield handle
        span.set_attribute("http.response.status_code", 200)
    except HTTPFailure as e:
        span.set_attribute("http.response.status_code", e.status)
        span.set_attribute("error.type", e.kind)
        if e.status >= 500:
            span.set_status(Status(StatusCode.ERROR, e.kind))
        raise
    except Exception as e:
        span.set_attribute("error.type", type(e).__name__)
        span.set_status(Status(StatusCode.ERROR, type(e).__name__))
        raise
    finally:
        if not handle.detached:
            span.end()


# a budget's fraction in (0, 1] with at most 4 decimals: a run of digits ("budget-4111111111111111", refused
# as a policy) may be a card or phone number
_ROUTER_NAME = re.compile(r"router(?::(?:max_utility|budget(?:-(?:0?\.\d{1,4}|1(?:\.0{1,4})?))?))?")


def model_attribute(requested: str, known: Collection[str]) -> str:
    """The requested model as a span records it: a catalog or router name as sent, anything else "other"
    (a misspelt name is free text from the request, and may be personal data)."""
    return requested if requested in known or _ROUTER_NAME.fullmatch(requested) else "other"


@contextmanager
def route_span(requested: str) -> Iterator[Span]:
    with tracer().start_as_current_span(
        "route", record_exception=False, set_status_on_exception=False
    ) as span:
        span.set_attribute("gen_ai.request.model", requested)
        yield span


def set_route(span: Span, model: str, chosen_by: str, decision: dict[str, Any] | None) -> None:
    span.set_attribute("stratmaster.route.model", model)
    span.set_attribute("stratmaster.route.chosen_by", chosen_by)
    if not decision:
        return
    signals = decision.get("signals") or {}
    span.set_attribute("stratmaster.route.policy", str(decision.get("policy") or ""))
    span.set_attribute("stratmaster.route.binding", str(decision.get("binding") or ""))
    span.set_attribute("stratmaster.route.candidates", len(decision.get("candidates") or []))
    span.set_attribute("stratmaster.route.pii", bool(signals.get("pii")))
    span.set_attribute("stratmaster.route.pii_entities", [str(e) for e in signals.get("pii_entities") or []])
    if signals.get("task"):
        span.set_attribute("stratmaster.route.task", str(signals["task"]))
    if decision.get("decision_ms") is not None:
        span.set_attribute("stratmaster.route.decision_ms", float(decision["decision_ms"]))


def set_usage(span: Span, model: str, input_tokens: int, output_tokens: int, cost_usd: float) -> None:
    span.set_attribute("gen_ai.response.model", model)
    span.set_attribute("gen_ai.usage.input_tokens", int(input_tokens))
    span.set_attribute("gen_ai.usage.output_tokens", int(output_tokens))
    span.set_attribute("stratmaster.cost_usd", float(cost_usd))


class TracedRetriever:
    """A retriever whose `search` is a `retrieval` span (mode, k, hits; not the question)."""

    def __init__(self, retriever: Any) -> None:
        self._retriever = retriever

    def search(self, question: str, mode: str = "hybrid", k: int = 4) -> list[Any]:
        # the status of a failure is its type: its message may quote the question (OpenSearch's 400 does)
        with tracer().start_as_current_span(
            "retrieval", record_exception=False, set_status_on_exception=False
        ) as span:
            span.set_attribute("stratmaster.retrieval.mode", mode)
            span.set_attribute("stratmaster.retrieval.k", k)
            try:
                hits = self._retriever.search(question, mode=mode, k=k)
            except Exception as e:
                span.set_attribute("error.type", type(e).__name__)
                span.set_status(Status(StatusCode.ERROR, type(e).__name__))
                raise
            span.set_attribute("stratmaster.retrieval.hits", len(hits))
            return hits
