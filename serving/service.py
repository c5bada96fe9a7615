"""StratMaster's BentoML service: an OpenAI-compatible chat API whose `model="router"` picks the model.

Endpoints (DESIGN.md "Service contract"): POST /v1/chat/completions (JSON or SSE), POST /v1/route,
POST /v1/rag, GET /v1/models; BentoML's own GET /healthz, /livez, /readyz (`__is_ready__`: the
catalog has a model and every worker's start-up index opening has ended) and /metrics.
The /v1 routes are a FastAPI app whose handlers are methods of the service class (BentoML binds `self`):
OpenAI's wire format and error shape. The typed `@bentoml.api` methods `route` and `rag` (POST /route,
POST /rag) are the same decisions for BentoML clients (`bentoml.SyncHTTPClient(url).route(...)`):
BentoML validates their bodies (400 in its shape); their other failures answer in the /v1 error shape.

Artifacts (router, registry snapshot, index snapshot, catalog) are BentoML models loaded by tag
(`serving.artifacts`; a Bento pins the versions it was built with); GET /v1/artifacts says which were loaded.
Spans: request -> route -> retrieval -> LLM call (`serving.tracing`), exported as `SM_OTEL_EXPORTER` says.
Chat prompts go to the prompt log (`pipelines.bench.prompt_log`, PII-redacted first; `SM_PROMPT_LOG=false`
turns it off), which the micro-bench samples as real prompts.
Configuration from the environment: `SM_<KIND>_TAG`, `SM_API_KEYS` or `SM_API_KEYS_FILE`,
`SM_MAX_REQUEST_BYTES`, and every `pipelines.settings.Settings` field.
"""

import asyncio
import gc
import json
import logging
import os
import threading
import time
import uuid
from typing import Any

import bentoml
from bentoml._internal.context import server_context
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection

from pipelines.bench.prompt_log import PromptLog, PromptLogWriter
from pipelines.index.base import engine_unreachable
from pipelines.llm.catalog import load_catalog
from pipelines.settings import Settings
from pipelines.tracing import setup_tracing
from router_models.router.artifact import load_router
from serving.artifacts import MODEL_NAMES, default_tag, load_artifacts, model_ref, worker_index_dir
from serving.http import (
    INTERNAL_ERROR,
    RETRY_AFTER_S,
    UNAUTHORIZED,
    BodyLimit,
    HTTPFailure,
    PlainErrorsAsJSON,
    Unexpected,
    engine_failure,
    error_response,
    log_unexpected,
    read_body,
    type_only_request_errors,
    upstream_failure,
)
from serving.metrics import record_call, record_prompt_log_dropped
from serving.openapi import json_body
from serving.paths import PathAsSent, path_label
from serving.paths import install as hide_unknown_paths
from serving.readiness import Readiness
from serving.routing import Choice, ModelResolver, RoutingError, has_system, prompt_of
from serving.schemas import ChatRequest, RagAnswer, RagRequest, RouteDecision, RouteRequest
from serving.security import ApiKeys
from serving.timeout import install as install_timeout
from serving.tracing import (
    TracedRetriever,
    model_attribute,
    request_span,
    route_span,
    set_route,
    set_usage,
)

install_timeout()  # before BentoML builds the app: a request timeout that frees its timer (see the module)
type_only_request_errors()  # no request text in the log by way of an exception's message
hide_unknown_paths()  # from BentoML's metrics, spans and access log, before it builds the app

log = logging.getLogger("stratmaster.serving")


def _untraced(scope: Any) -> bool:
    """FastAPI's HTTP span records the path and query string as sent: not for a request with a query (no
    endpoint takes one), to a path that is no endpoint's (a 404's path is free text from the client) or to
    one whose route takes a parameter (`/v1/models/{model_id}`: the id is the client's text too)."""
    return bool(scope.get("query_string")) or path_label(api.routes, scope) != scope["path"]


# FastAPI's own telemetry keeps its HTTP server span; its per-operation spans (fastapi.dependencies,
# fastapi.endpoint) made a route request's 3 spans 5 and said nothing the service's own spans do not. Its
# logs would record an exception's message, which may quote the request.
api = FastAPI(title="StratMaster", version="1", docs_url=None, redoc_url=None,
              telemetry={"operation_spans": False, "logs": False, "exclude": _untraced})  # fmt: skip


# Routing a prompt this short takes about 2 ms of CPU: done on the event loop it costs less than the hop to
# a worker thread and the GIL hand-offs back (8 concurrent users: 270 -> 328 req/s, p50 25.5 -> 20.8 ms);
# longer prompts (PII detection grows with the text) go to the thread pool so they never stall the loop.
INLINE_ROUTE_CHARS = 4000
# prompts queued for the prompt log's one writer (Presidio takes seconds on a long one); past it they drop,
# counted by stratmaster_prompt_log_dropped
PROMPT_LOG_QUEUE = 64


async def _client_gone(request: Request, every_s: float = 0.25) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(every_s)


@api.exception_handler(HTTPFailure)
async def _failure(_: Request, exc: HTTPFailure) -> JSONResponse:
    return exc.response()


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own 404 and 405 in OpenAI's error shape too (they were {"detail": ...} and plain text)."""
    kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
    return error_response(exc.status_code, str(exc.detail), kind, dict(exc.headers or {}))


api.add_middleware(Unexpected)  # inside Starlette's error handler, which re-raises


@bentoml.service(name="stratmaster", traffic={"timeout": 300}, workers=Settings().service_workers)
@bentoml.asgi_app(api, path="/v1")
class StratMaster:
    # declared when in the store: `bentoml build` pins the versions these name into the Bento
    router_model = model_ref("router")
    registry_model = model_ref("registry")
    index_model = model_ref("index")
    catalog_model = model_ref("catalog")

    def __init__(self) -> None:
        self.settings = Settings()
        setup_tracing(self.settings)
        self.art = load_artifacts(self.settings, getattr(StratMaster, "bento", None))
        if self.art.index_embedder and "SM_EMBEDDER" not in os.environ:  # queries embed as the index did
            self.settings = self.settings.model_copy(update={"embedder": self.art.index_embedder})
        from pipelines.llm.gateway import Gateway  # imported here: `bentoml build` needs no LiteLLM

        self.gateway = Gateway(self.settings, load_catalog(self.settings, self.art.catalog_path))
        self.keys = KeyRequired.current = ApiKeys.from_env()
        self.router = load_router(self.art.router_dir) if self.art.router_dir else None
        if self.router is None:
            log.warning(
                "no router (no model %s, no SM_ROUTER_DIR): model='router' is refused, catalog names work",
                default_tag("router"),
            )
        else:
            self.router.warm_up()
        self.registry_rows: Any = None  # a DataFrame when a registry snapshot is loaded
        if self.art.registry_dir is not None:
            import pandas as pd

            self.registry_rows = pd.read_csv(self.art.registry_dir / "registry.csv")
            self.registry_fit = json.loads((self.art.registry_dir / "fit.json").read_text())
        self.resolver = ModelResolver(self.router, self.gateway.catalog, self.gateway.prompt_tokens)
        logged = self.settings.prompt_log
        self._prompt_log = PromptLogWriter(self._open_prompt_log, PROMPT_LOG_QUEUE) if logged else None
        self._retriever: Any = None
        self._retriever_lock = threading.Lock()
        # open the indexes now, beside start-up, rather than in each worker's first /v1/rag (seconds: MiniLM,
        # BM25, the graph, a worker's copy of the local Qdrant folder); without indexes, /v1/rag tries again.
        # /readyz waits for it, in every worker (serving.readiness): until then the opening takes CPU from
        # requests (a load test that started at once measured it still running 30 s in) and a /v1/rag would
        # wait for it
        self._readiness = Readiness(self.settings.service_workers, server_context.worker_index)
        threading.Thread(target=self._preopen_retriever, name="open-indexes", daemon=True).start()
        # Everything loaded so far (torch, Presidio, LiteLLM's tables, the router) lives as long as the
        # worker: move it out of the collector's sight, so a full collection under load walks only what
        # requests allocate (/v1/route under wrk, 8 users, timer fix in place: p99 472 -> 72 ms)
        gc.collect()
        gc.freeze()

    def __is_ready__(self) -> bool:
        return self._readiness.all_ready() and bool(self.gateway.catalog.available())

    # -- helpers -------------------------------------------------------------------------------------
    def _authorize(
        self, request: HTTPConnection
    ) -> None:  # a FastAPI request, or a typed method's ctx.request
        if not self.keys.check(request.headers.get("authorization")):
            raise HTTPFailure(401, UNAUTHORIZED, "authentication_error", {"WWW-Authenticate": "Bearer"})

    def _p95(self) -> dict[str, float]:
        out = {}
        for m in self.gateway.catalog.names():
            p = self.gateway.recent_latency_p95(m)
            if p is not None:
                out[m] = p
        return out

    def _model_attribute(self, model: str) -> str:
        return model_attribute(model, self.gateway.catalog.names())

    async def _choose(
        self,
        model: str,
        prompt: str,
        constraints: Any,
        turns: int = 1,
        sent: str | None = None,
        system: bool = False,
    ) -> Choice:
        """`sent`: the text the model will be sent, where it is more than `prompt`; `system`: whether the
        messages hold a system message (ModelResolver.resolve)."""
        with route_span(self._model_attribute(model)) as span:
            try:
                args = (model, prompt, constraints, self._p95(), turns, sent, system)
                # in bytes: a long Chinese prompt may be tokenized for the window check (ms), off the loop
                if len((prompt if sent is None else sent).encode()) <= INLINE_ROUTE_CHARS:
                    choice = self.resolver.resolve(*args)
                else:
                    choice = await run_in_threadpool(self.resolver.resolve, *args)
            except RoutingError as e:  # the request's own: a 4xx, no retry
                span.set_attribute("error.type", "invalid_request_error")
                raise HTTPFailure(
                    e.status,
                    str(e),
                    "invalid_request_error",
                    extra={"routing": e.decision} if e.decision else {},
                ) from None
            set_route(span, choice.model, choice.chosen_by, choice.decision)
            return choice

    def _log_prompt(self, prompt: str, choice: Choice) -> None:
        """Queue `prompt` for the prompt log, which redacts it before writing; the micro-bench samples it."""
        if self._prompt_log is None:
            return
        task = ((choice.decision or {}).get("signals") or {}).get("task")
        if not self._prompt_log.submit(prompt, task, choice.model, choice.chosen_by):  # the writer is behind
            record_prompt_log_dropped()

    def _open_prompt_log(self) -> PromptLog:
        from pipelines.corpus.pii import get_redactor
        from router_models.router.signals import detect_pii

        s = self.settings
        redact = get_redactor(s.pii_spacy_model, str(s.run_dir / "cache")).redact
        return PromptLog(s.prompt_log_dir, redact, still_personal=detect_pii)  # what the router calls PII

    async def _open_stream(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """The model stream `fn(*args, **kwargs)` opens (`Gateway.stream`, `ChatStream`) in a worker thread;
        a GatewayError becomes the HTTP failure it stands for. A stream that opens after this request was
        cancelled (its timeout) is closed."""
        from pipelines.llm.gateway import GatewayError

        opened: list[Any] = []

        def call() -> Any:
            opened.append(fn(*args, **kwargs))
            return opened[-1]

        try:
            return await run_in_threadpool(call)  # a cancellation waits for the thread, then raises here
        except GatewayError as e:
            raise upstream_failure(e, self.settings.cooldown_s) from None
        except BaseException:
            for stream in opened:
                stream.close()
            raise

    async def _read_to_end(self, request: Request, call: Any) -> Any:
        """The result of an opened model stream (`Gateway.stream`), read in a worker thread. The stream is
        closed when the client leaves or this request is cancelled (its timeout), so the model server stops
        writing for nobody: a non-streamed chat kept a llama.cpp slot generating after its client had gone."""
        from pipelines.llm.gateway import GatewayError

        reader = asyncio.ensure_future(run_in_threadpool(call.read))
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            await asyncio.wait({reader, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not reader.done():
                raise HTTPFailure(499, "the client closed the request", "client_closed")
            try:
                return reader.result()
            except GatewayError as e:  # the stream broke after it started
                raise upstream_failure(e, self.settings.cooldown_s) from None
        finally:
            gone.cancel()
            if not reader.done():
                call.close()  # safe from this thread: the reader stops at its next chunk, with a GatewayError
                reader.add_done_callback(lambda t: t.cancelled() or t.exception())  # that nobody awaits

    # -- endpoints -----------------------------------------------------------------------------------
    @api.post("/chat/completions", openapi_extra=json_body(ChatRequest))
    async def chat_completions(self, request: Request):
        with request_span("chat.completions") as rs:
            self._authorize(request)
            req: ChatRequest = await read_body(request, ChatRequest)
            rs.span.set_attribute("gen_ai.request.model", self._model_attribute(req.model))
            rs.span.set_attribute("stratmaster.stream", bool(req.stream))
            messages = req.message_dicts()
            prompt = prompt_of(messages)
            choice = await self._choose(
                req.model, prompt, req.routing_constraints(), len(req.messages), system=has_system(messages)
            )
            temperature, options = req.sampling()
            if req.stream:  # the gateway's `chat <model>` span is this request span's child
                from serving.sse import chat_response
                from serving.streaming import ChatStream

                stream = await self._open_stream(
                    ChatStream,
                    self.gateway,
                    choice.model,
                    messages,
                    req.token_budget(),
                    temperature,
                    **options,
                )
                self._log_prompt(prompt, choice)  # a prompt the model refused is no sample for the bench
                return chat_response(stream, choice, rs.detach())
            call = await self._open_stream(
                self.gateway.stream, choice.model, messages, req.token_budget(), temperature, **options
            )
            self._log_prompt(prompt, choice)
            res = await self._read_to_end(request, call)
            set_usage(rs.span, res.model, res.input_tokens, res.output_tokens, res.cost_usd)
        record_call(res.model, choice.chosen_by, res.latency_s, res.output_tokens, _fallback(choice, res))
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": res.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": res.text},
                    "finish_reason": res.finish_reason or "stop",
                }
            ],
            "usage": {
                "prompt_tokens": res.input_tokens,
                "completion_tokens": res.output_tokens,
                "total_tokens": res.input_tokens + res.output_tokens,
            },
            "stratmaster": {
                "routing": choice.decision,
                "chosen_by": choice.chosen_by,
                "requested_model": res.requested_model,
                "fallback_used": res.fallback_used,
                "cost_usd": res.cost_usd,
                "latency_s": res.latency_s,
                "ttft_s": res.ttft_s,
            },
        }

    async def _route(self, req: RouteRequest) -> RouteDecision:
        messages = [m.model_dump() for m in req.messages or []]
        prompt = req.prompt if req.prompt is not None else prompt_of(messages)
        choice = await self._choose(
            req.model, prompt, req.constraints, max(len(messages), 1), system=has_system(messages)
        )
        assert choice.decision is not None  # RouteRequest admits only router models: the router decided
        return RouteDecision(model=choice.model, chosen_by=choice.chosen_by, routing=choice.decision)

    @api.post("/route", openapi_extra=json_body(RouteRequest))
    async def v1_route(self, request: Request):
        with request_span("route") as rs:
            self._authorize(request)
            req: RouteRequest = await read_body(request, RouteRequest)
            rs.span.set_attribute("gen_ai.request.model", self._model_attribute(req.model))
            # serialised by pydantic: FastAPI's jsonable_encoder over the decision's nested dict was a fifth
            # of the request's CPU under load (py-spy, 8 users)
            decision = await self._route(req)
            return Response(decision.model_dump_json(), media_type="application/json")

    @bentoml.api
    async def route(self, req: RouteRequest, /, ctx: bentoml.Context) -> RouteDecision:
        """The routing decision for a prompt or messages: which model, chosen by what, and why."""
        try:  # outside the span: request_span records the failure's status
            with request_span("route") as rs:
                rs.span.set_attribute("gen_ai.request.model", self._model_attribute(req.model))
                self._authorize(ctx.request)
                return await self._route(req)
        except HTTPFailure as e:
            return _typed_error(ctx, e)
        except Exception as e:  # BentoML logged it whole, message (which may quote the request) included
            log_unexpected(e)
            return _typed_error(ctx, HTTPFailure(500, INTERNAL_ERROR, "server_error"))

    def _preopen_retriever(self) -> None:
        try:
            self.gateway.warm_up()  # the local models' tokenizers, which size each prompt: not in a request
            self._open_retriever(quiet=True)
        except HTTPFailure:
            log.info("no retrieval indexes yet: /v1/rag opens them when they exist")
        else:
            # the indexes and the query embedder were loaded after start-up's freeze: out of the collector's
            # sight with the rest (left in it, /v1/route p99 at 8 users was 138 ms on 2026-12-01)
            gc.collect()
            gc.freeze()
        finally:
            self._readiness.mark_ready()  # whatever happened: /v1/route and chat need no index

    def _open_retriever(self, quiet: bool = False) -> Any:
        """The hybrid retriever over the indexes in `SM_INDEX_DIR` (default run_dir/index), opened once."""
        with self._retriever_lock:
            if self._retriever is None:
                from pipelines.rag.retrieve import open_retriever

                try:
                    store = None
                    if self.art.store_dir is not None:
                        from pipelines.corpus.store import LocalStore

                        store = LocalStore(self.art.store_dir)
                    index_dir = self.art.index_dir or self.settings.run_dir / "index"
                    if self.settings.vector_backend == "qdrant_local":
                        index_dir = worker_index_dir(index_dir, self.settings.service_workers)
                    r = open_retriever(self.settings, index_dir, store, modes=("hybrid",))
                    if r.chunks.empty:
                        r.close()
                        raise LookupError("no chunks in the store")
                    if r.dense is not None:  # load the query embedder now (int8 MiniLM calibrates once: 18 s)
                        self._check_embedding(r.dense)
                    self._retriever = r
                except Exception as e:  # no index yet, an engine down: the client can retry later
                    if not quiet:
                        log.error("cannot open the retrieval indexes: %s", type(e).__name__)
                    raise HTTPFailure(
                        503, "the retrieval index is not available (build the indexes first)",
                        "not_ready", {"Retry-After": str(RETRY_AFTER_S)},
                    ) from None  # fmt: skip
            return self._retriever

    def _check_embedding(self, dense: Any) -> None:
        """Queries must be embedded as the index's chunks were: a warning when this process's embedder gives
        the probe texts other vectors than the index recorded (int8 MiniLM calibrated on another CPU, say)."""
        from pipelines.index.vector import SAME_VECTORS

        cos = dense.probe_cosine()
        if cos is None:
            dense.embedder.embed(["warm-up"])
        elif cos < SAME_VECTORS:
            log.warning(
                "the query embedder %s is not the embedding the index was built with (probe cosine %.4f): "
                "dense retrieval will be worse; build the index on this machine", dense.embedder.name, cos,
            )  # fmt: skip

    async def _rag(self, req: RagRequest, rs: Any, request: Request) -> RagAnswer:
        """pipelines.rag.answer.answer, with the model's stream closed when the client leaves."""
        from pipelines.rag.answer import answer_from, build_messages, no_answer

        rs.span.set_attribute("gen_ai.request.model", self._model_attribute(req.model))
        constraints = req.routing_constraints()
        choice = await self._choose(req.model, req.question, constraints)
        retriever: Any = TracedRetriever(await run_in_threadpool(self._open_retriever))
        try:
            hits = await run_in_threadpool(retriever.search, req.question, req.mode, req.k)
        except Exception as e:  # an engine's server gone since start-up: 503, as one not up at start-up
            if not engine_unreachable(e):
                raise
            log.error("a retrieval engine cannot be reached: %s", type(e).__name__)
            raise engine_failure() from None
        chars = self.settings.rag_context_chars
        if hits:
            messages = build_messages(req.question, hits, chars)
            if choice.chosen_by == "request":  # a named model: the rules hold for the sources it is sent too
                why = await run_in_threadpool(
                    self.resolver.breaks_limits, choice.model, prompt_of(messages), constraints, self._p95()
                )
                if why:
                    raise HTTPFailure(422, f"{why} (with the question's sources); name another model or use "
                                      "'router'", "invalid_request_error")  # fmt: skip
            else:  # routed on the question: its sources may not fit the window,
                sent, turns = prompt_of(messages), len(messages)  # or hold personal data it did not
                why = await run_in_threadpool(
                    self.resolver.overflow, choice.model, sent, turns, constraints, has_system(messages)
                )
                exposed = why is None and await run_in_threadpool(self.resolver.exposes, choice.model, sent)
                if why is not None or exposed:  # routed again on all it sends (a second route span)
                    choice = await self._choose(
                        req.model, req.question, constraints, turns, sent, has_system(messages)
                    )
            call = await self._open_stream(self.gateway.stream, choice.model, messages, req.max_tokens)
            a = answer_from(req.question, hits, await self._read_to_end(request, call), req.mode, chars)
        else:
            a = no_answer(req.question, choice.model, req.mode)
        if a.model:
            usage = a.usage or {}
            set_usage(rs.span, a.model, usage.get("input_tokens") or 0, usage.get("output_tokens") or 0,
                      a.cost_usd or 0.0)  # fmt: skip
            record_call(a.model, choice.chosen_by, a.latency_s, int(usage.get("output_tokens") or 0),
                        _fallback(choice, a))  # fmt: skip
        return RagAnswer(
            answer=a.text,
            citations=a.citations,
            citations_by=a.citations_by,
            chunks=[h.to_dict() for h in a.chunks],
            model=a.model or None,
            stratmaster={
                "routing": choice.decision,
                "chosen_by": choice.chosen_by,
                "requested_model": a.requested_model,
                "fallback_used": a.fallback_used,
                "mode": req.mode,
                "cost_usd": a.cost_usd,
                "latency_s": a.latency_s,
                "usage": a.usage,
            },
        )

    @api.post("/rag", openapi_extra=json_body(RagRequest))
    async def v1_rag(self, request: Request):
        with request_span("rag") as rs:
            self._authorize(request)
            req: RagRequest = await read_body(request, RagRequest)
            return (await self._rag(req, rs, request)).model_dump()

    @bentoml.api
    async def rag(self, req: RagRequest, /, ctx: bentoml.Context) -> RagAnswer:
        """An answer from retrieved chunks, citing their ids, with the chunks, scores and provenance."""
        try:  # outside the span: request_span records the failure's status
            with request_span("rag") as rs:
                self._authorize(ctx.request)
                return await self._rag(req, rs, ctx.request)
        except HTTPFailure as e:
            return _typed_error(ctx, e)
        except Exception as e:  # as in route
            log_unexpected(e)
            return _typed_error(ctx, HTTPFailure(500, INTERNAL_ERROR, "server_error"))

    def _model_cards(self) -> list[dict[str, Any]]:
        """OpenAI's model objects: the router's policies (where a router is loaded), then the catalog's."""
        data: list[dict[str, Any]] = []
        if self.router is not None:
            for name in ("router", "router:max_utility", "router:budget"):
                data.append(
                    {
                        "id": name,
                        "object": "model",
                        "created": 0,
                        "owned_by": "stratmaster",
                        "stratmaster": {"router_panel": self.router.models},
                    }
                )
        for e in self.gateway.catalog.models:
            reason = e.unavailable_reason()
            data.append(
                {
                    "id": e.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": e.provider,
                    "stratmaster": {
                        "privacy": e.privacy,
                        "context_window": e.context_window,
                        "available": reason is None,
                        "unavailable_reason": reason,
                    },
                }
            )
        return data

    @api.get("/models")
    async def models(self, request: Request):
        self._authorize(request)
        return {"object": "list", "data": self._model_cards()}

    @api.get("/models/{model_id:path}")
    async def model(self, model_id: str, request: Request):
        """One model object, as the OpenAI SDK's `models.retrieve(id)` asks (ids may hold a '/'); any policy
        a chat request takes (`router:budget-0.25`) is one; `/v1/models/` is the list, as before."""
        self._authorize(request)
        cards = {card["id"]: card for card in self._model_cards()}
        if not model_id:
            return {"object": "list", "data": list(cards.values())}
        if model_id in cards:
            return cards[model_id]
        if self.router is not None and model_id.startswith("router:"):
            try:
                self.resolver.policy(model_id.partition(":")[2])
                return {**cards["router"], "id": model_id}
            except RoutingError:
                pass
        raise HTTPFailure(
            404, f"The model {model_id!r} does not exist; GET /v1/models lists them", "invalid_request_error",
            extra={"param": "model", "code": "model_not_found"},
        )  # fmt: skip

    @api.get("/artifacts")
    async def list_artifacts(self, request: Request):
        """Which model tag (or development folder) each artifact came from, with the model's labels."""
        self._authorize(request)
        sources = self.art.sources
        return {kind: sources.get(kind) for kind in MODEL_NAMES}

    @api.get("/registry")
    async def registry_snapshot(self, request: Request, task: str | None = None):
        """The utility registry snapshot shipped with the service: posterior quality, cost and utility."""
        self._authorize(request)
        if self.registry_rows is None:
            raise HTTPFailure(404, "no registry snapshot is loaded (model stratmaster-registry)", "not_found")
        rows = self.registry_rows if task is None else self.registry_rows[self.registry_rows.task == task]
        if task is not None and rows.empty:  # a misspelt task read as one with no rows (200, [])
            known = ", ".join(sorted(map(str, self.registry_rows.task.unique())))[:2000]
            raise HTTPFailure(404, f"no task {task[:200]!r} in the registry snapshot; its tasks: {known}",
                              "not_found")  # fmt: skip
        cols = ["task", "model", "quality_mean", "quality_p05", "quality_p95", "cost_usd_mean"]
        cols.append("utility_mean")
        data = json.loads(rows[[c for c in cols if c in rows.columns]].to_json(orient="records"))
        return {"fit": self.registry_fit, "rows": data}


class KeyRequired:
    """ASGI middleware: 401 for a typed method's request (POST /route, /rag) without a valid key, before
    BentoML reads its body. BentoML validates that body before the method's own key check runs: a caller
    with no key got the schema's 400 and wrote a traceback to the server's log. The keys are the service
    instance's (`current`, set as it starts: the app, and this middleware, outlive a lifespan's instance);
    before there is one, the method's own check stands."""

    PATHS = {"/route": "route", "/rag": "rag"}
    current: ApiKeys | None = None

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        endpoint, keys = None, KeyRequired.current
        if scope["type"] == "http" and scope.get("method") == "POST" and keys is not None:
            path, root = scope.get("path", ""), scope.get("root_path", "")
            endpoint = self.PATHS.get(path.removeprefix(root) if root and path.startswith(root) else path)
        if endpoint is not None and keys is not None:
            # the first Authorization header, as the method's own check reads it (Starlette's Headers.get)
            authorization = next((v for k, v in scope.get("headers") or [] if k == b"authorization"), None)
            if not keys.check(authorization.decode("latin-1") if authorization is not None else None):
                try:
                    with request_span(endpoint):  # recorded as the method's own refusal was
                        raise HTTPFailure(
                            401, UNAUTHORIZED, "authentication_error", {"WWW-Authenticate": "Bearer"}
                        )
                except HTTPFailure as e:
                    return await e.response()(scope, receive, send)
        return await self.app(scope, receive, send)


StratMaster.add_asgi_middleware(PathAsSent)  # type: ignore[attr-defined]  # a bentoml Service by now
StratMaster.add_asgi_middleware(BodyLimit)  # type: ignore[attr-defined]
StratMaster.add_asgi_middleware(KeyRequired)  # type: ignore[attr-defined]
StratMaster.add_asgi_middleware(PlainErrorsAsJSON)  # type: ignore[attr-defined]


def _typed_error(ctx: bentoml.Context, e: HTTPFailure) -> Any:
    """A typed method's failure as the /v1 error body and headers (BentoML applies ctx's status last)."""
    ctx.response.status_code = e.status
    return e.response()


def _fallback(choice: Choice, res: Any) -> str | None:
    if res.fallback_used:
        return "gateway"
    return "panel" if choice.chosen_by == "panel_fallback" else None
