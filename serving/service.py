"""StratMaster's BentoML service: an OpenAI-compatible chat API whose `model="router"` picks the model.

Endpoints (DESIGN.md "Service contract"): POST /v1/chat/completions (JSON or SSE), POST /v1/route,
POST /v1/rag, GET /v1/models; BentoML's own GET /healthz, /livez, /readyz (`__is_ready__`) and /metrics.
The /v1 routes are a FastAPI app whose handlers are methods of the service class (BentoML binds `self`).

Configuration from the environment: `SM_ROUTER_DIR` (a router artifact directory), `SM_API_KEYS` or
`SM_API_KEYS_FILE`, `SM_MAX_REQUEST_BYTES`, and every `pipelines.settings.Settings` field.
"""

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import bentoml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from pipelines.llm.gateway import Gateway, GatewayError
from pipelines.settings import Settings
from router_models.router.artifact import load_router
from serving.http import RETRY_AFTER_S, HTTPFailure, error_response, read_body, upstream_failure
from serving.metrics import record_call
from serving.routing import Choice, ModelResolver, RoutingError, prompt_of
from serving.schemas import ChatRequest, RagRequest, RouteRequest
from serving.security import ApiKeys
from serving.streaming import ChatStream

log = logging.getLogger("stratmaster.serving")

api = FastAPI(title="StratMaster", version="1", docs_url=None, redoc_url=None)


@api.exception_handler(HTTPFailure)
async def _failure(_: Request, exc: HTTPFailure) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.kind, exc.headers, **exc.extra)


@api.exception_handler(Exception)
async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled %s in a request", type(exc).__name__, exc_info=exc)
    return error_response(500, "internal error; see the server log", "server_error")


@bentoml.service(name="stratmaster", traffic={"timeout": 300})
@bentoml.asgi_app(api, path="/v1")
class StratMaster:
    def __init__(self) -> None:
        self.settings = Settings()
        self.gateway = Gateway(self.settings)
        self.keys = ApiKeys.from_env()
        router_dir = os.environ.get("SM_ROUTER_DIR")
        self.router = load_router(router_dir) if router_dir else None
        if self.router is None:
            log.warning("SM_ROUTER_DIR is not set: model='router' is refused, catalog names still work")
        else:
            self.router.warm_up()
        self.resolver = ModelResolver(self.router, self.gateway.catalog)
        self._retriever: Any = None
        self._retriever_lock = threading.Lock()

    def __is_ready__(self) -> bool:
        return bool(self.gateway.catalog.available())

    # -- helpers -------------------------------------------------------------------------------------
    def _authorize(self, request: Request) -> None:
        if not self.keys.check(request.headers.get("authorization")):
            raise HTTPFailure(
                401,
                "a valid API key is required (Authorization: Bearer <key>)",
                "authentication_error",
                {"WWW-Authenticate": "Bearer"},
            )

    def _p95(self) -> dict[str, float]:
        out = {}
        for m in self.gateway.catalog.names():
            p = self.gateway.recent_latency_p95(m)
            if p is not None:
                out[m] = p
        return out

    async def _choose(self, model: str, prompt: str, constraints: Any) -> Choice:
        try:
            return await run_in_threadpool(self.resolver.resolve, model, prompt, constraints, self._p95())
        except RoutingError as e:
            kind = "invalid_request_error" if e.status < 500 else "not_ready"
            raise HTTPFailure(
                e.status, str(e), kind, extra={"routing": e.decision} if e.decision else {}
            ) from None

    # -- endpoints -----------------------------------------------------------------------------------
    @api.post("/chat/completions")
    async def chat_completions(self, request: Request):
        self._authorize(request)
        req: ChatRequest = await read_body(request, ChatRequest)
        messages = req.message_dicts()
        choice = await self._choose(req.model, prompt_of(messages), req.constraints)
        if req.stream:
            try:
                stream = await run_in_threadpool(
                    ChatStream, self.gateway, choice.model, messages, req.token_budget(), req.temperature
                )
            except GatewayError as e:
                raise upstream_failure(e) from None
            return StreamingResponse(self._sse(stream, choice), media_type="text/event-stream")
        try:
            res = await run_in_threadpool(
                self.gateway.chat, choice.model, messages, req.token_budget(), req.temperature
            )
        except GatewayError as e:
            raise upstream_failure(e) from None
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

    def _sse(self, stream: ChatStream, choice: Choice) -> Iterator[str]:
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
            err = {
                "error": {"message": "the model stream failed", "type": "upstream_unavailable", "code": 503}
            }
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
            stratmaster={**meta, "latency_s": s.latency_s, "ttft_s": s.ttft_s},
        )
        yield "data: [DONE]\n\n"

    @api.post("/route")
    async def route(self, request: Request):
        self._authorize(request)
        req: RouteRequest = await read_body(request, RouteRequest)
        prompt = (
            req.prompt if req.prompt is not None else prompt_of([m.model_dump() for m in req.messages or []])
        )
        choice = await self._choose(req.model, prompt, req.constraints)
        return {"model": choice.model, "chosen_by": choice.chosen_by, "routing": choice.decision}

    def _open_retriever(self) -> Any:
        """The hybrid retriever over the indexes in `SM_INDEX_DIR` (default run_dir/index), opened once."""
        with self._retriever_lock:
            if self._retriever is None:
                from pipelines.rag.retrieve import open_retriever

                try:
                    index_dir = os.environ.get("SM_INDEX_DIR") or None
                    r = open_retriever(self.settings, index_dir, modes=("hybrid",))
                    if r.chunks.empty:
                        r.close()
                        raise LookupError("no chunks in the store")
                    self._retriever = r
                except Exception as e:  # no index yet, an engine down: the client can retry later
                    log.error("cannot open the retrieval indexes: %s", type(e).__name__)
                    raise HTTPFailure(
                        503, "the retrieval index is not available (build the indexes first)",
                        "not_ready", {"Retry-After": str(RETRY_AFTER_S)},
                    ) from None  # fmt: skip
            return self._retriever

    @api.post("/rag")
    async def rag(self, request: Request):
        from pipelines.rag.answer import answer

        self._authorize(request)
        req: RagRequest = await read_body(request, RagRequest)
        choice = await self._choose(req.model, req.question, req.constraints)
        retriever = await run_in_threadpool(self._open_retriever)
        try:
            a = await run_in_threadpool(
                answer, req.question, retriever, self.gateway, choice.model, req.k, req.mode, req.max_tokens
            )
        except GatewayError as e:
            raise upstream_failure(e) from None
        if a.model:
            out_tokens = int(a.usage.get("output_tokens") or 0)
            record_call(a.model, choice.chosen_by, a.latency_s, out_tokens, _fallback(choice, a))
        return {
            "answer": a.text,
            "citations": a.citations,
            "chunks": [h.to_dict() for h in a.chunks],
            "model": a.model,
            "stratmaster": {
                "routing": choice.decision,
                "chosen_by": choice.chosen_by,
                "requested_model": a.requested_model,
                "fallback_used": a.fallback_used,
                "mode": req.mode,
                "cost_usd": a.cost_usd,
                "latency_s": a.latency_s,
                "usage": a.usage,
            },
        }

    @api.get("/models")
    async def models(self, request: Request):
        self._authorize(request)
        data = []
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
        return {"object": "list", "data": data}


def _fallback(choice: Choice, res: Any) -> str | None:
    if res.fallback_used:
        return "gateway"
    return "panel" if choice.chosen_by == "panel_fallback" else None
