"""HTTP plumbing for the service: OpenAI-shaped errors and size-limited, validated JSON bodies."""

import json
import logging
import math
import traceback
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from serving.security import MAX_BODY_BYTES

UNAUTHORIZED = "a valid API key is required (Authorization: Bearer <key>)"

if TYPE_CHECKING:
    from pipelines.llm.gateway import GatewayError

RETRY_AFTER_S = 10
log = logging.getLogger("stratmaster.serving")


class HTTPFailure(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        kind: str,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.headers, self.extra = headers or {}, extra or {}

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.kind, self.headers, **self.extra)


def error_response(status: int, message: str, kind: str, headers: dict[str, str] | None = None, **extra: Any):
    """OpenAI's error shape: {"error": {"message", "type", "code"}}; never a stack trace."""
    body = {"error": {"message": message, "type": kind, "code": status, **extra}}
    return JSONResponse(body, status_code=status, headers=headers)


async def read_body(request: Request, model: type[BaseModel]) -> Any:
    """Parse a JSON body into `model`, refusing oversized bodies (413) and invalid ones (400/422)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HTTPFailure(413, f"request body exceeds {MAX_BODY_BYTES} bytes", "request_too_large")
    raw = bytearray()
    async for part in request.stream():
        raw += part
        if len(raw) > MAX_BODY_BYTES:
            raise HTTPFailure(413, f"request body exceeds {MAX_BODY_BYTES} bytes", "request_too_large")
    try:
        data = json.loads(raw or b"null")
    except (ValueError, RecursionError):  # nested deeper than the parser's recursion limit
        raise HTTPFailure(400, "the body is not valid JSON", "invalid_request_error") from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in e.errors()[:10]
        )
        raise HTTPFailure(422, f"invalid request: {reasons}", "invalid_request_error") from None


# GatewayError messages of requests the model can never take (the gateway's own checks, a 400 upstream)


def upstream_failure(e: "GatewayError", retry_after_s: float = RETRY_AFTER_S) -> HTTPFailure:
    """A 400 when the request itself cannot be served (retrying will not help), else 503 with Retry-After:
    the gateway's cooldown, for which it benches a failed model (a client back sooner is refused again)."""
    from pipelines.llm.gateway import is_request_fault

    if is_request_fault(e):
        return HTTPFailure(400, f"the model cannot take this request: {e}", "invalid_request_error")
    # LiteLLM's text names deployments, fallbacks and upstream errors, and may quote the request: neither the
    # client nor the log gets it (the log may not hold a prompt); the gateway's span carries the error type
    log.warning("model call to %s failed after its fallbacks", str(e).split(":", 1)[0])
    return HTTPFailure(
        503, "the model call failed, its fallbacks too; retry later", "upstream_unavailable",
        {"Retry-After": str(max(1, math.ceil(retry_after_s)))},
    )  # fmt: skip


def engine_failure() -> HTTPFailure:
    return HTTPFailure(
        503, "a retrieval engine is not available; retry later", "engine_unavailable",
        {"Retry-After": str(RETRY_AFTER_S)},
    )  # fmt: skip


class BodyLimit:
    """ASGI middleware: 413 for a body over MAX_BODY_BYTES on every route, before any work. The /v1 handlers
    count as they read (`read_body`); the typed methods' bodies are read by BentoML, which set no limit (a
    7.6 MiB /route body took 100 s of PII detection before its 422)."""

    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:  # the server holds the body to its declared length
            if declared.isdigit() and int(declared) > self.max_bytes:
                return await self._refuse(scope, receive, send)
            return await self.app(scope, receive, send)
        body, more = bytearray(), True  # chunked: read it here, up to the limit, then hand it on whole
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return None  # the client left
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._refuse(scope, receive, send)
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        return await self.app(scope, replay, send)

    async def _refuse(self, scope: Any, receive: Any, send: Any) -> None:
        msg = f"request body exceeds {self.max_bytes} bytes"
        await error_response(413, msg, "request_too_large")(scope, receive, send)


class PlainErrorsAsJSON:
    """ASGI middleware: the outer router's plain-text 404 and 405 (a path the service does not have, a method
    its path does not take) in the error shape of every other failure, so a client parses one shape."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        held: tuple[int, dict] | None = None  # the status and headers of a plain 404/405, its body dropped

        async def reshape(message: Any) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] in (404, 405):
                headers = dict(message.get("headers") or [])
                if headers.get(b"content-type", b"").startswith(b"text/plain"):
                    held = message["status"], headers
                    return
            if held is None:
                return await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                status, headers = held
                allow = {"Allow": headers[b"allow"].decode()} if b"allow" in headers else {}
                asked = f"{scope['method']} {scope['path']}"
                text = f"no such path: {asked}" if status == 404 else f"method not allowed: {asked}"
                kind = "not_found" if status == 404 else "invalid_request_error"
                await error_response(status, text, kind, allow)(scope, receive, send)

        return await self.app(scope, receive, reshape)


INTERNAL_ERROR = "internal error; see the server log"


def _type_and_place(exc: BaseException) -> str:
    where = traceback.format_list(traceback.extract_tb(exc.__traceback__)[-3:])
    return f"{type(exc).__name__}, at:\n" + "".join(where).rstrip()


def log_unexpected(exc: BaseException) -> None:
    """An unexpected failure in a request, logged as its type and where it happened, not its message: a
    message may quote the request (OpenSearch's 400 quotes the query), and prompts never reach the log."""
    log.error("unhandled %s", _type_and_place(exc))


def _client_fault(exc: BaseException) -> bool:
    """A typed method's body that failed validation, or a BentoML error with a 4xx status: the client's
    mistake (the methods turn every failure of their own into a response, so none reaches BentoML)."""
    from pydantic import ValidationError

    status = getattr(getattr(exc, "error_code", None), "value", None)
    return isinstance(exc, ValidationError) or (isinstance(status, int) and 400 <= status < 500)


class TypeOnly(logging.Filter):
    """A log record's exception cut to its type and where it happened (`log_unexpected`'s form): the
    message and traceback text go. BentoML logs a typed method's invalid body with pydantic's error, which
    names an unexpected key as sent (`hide_input_in_errors` hides values only), and at ERROR: a client's
    mistake is logged at INFO instead, as its 4xx in the access log is, so that ERROR means the server's."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            # BentoML's app answered it with a 4xx; what reaches the server's own log escaped the app: a bug
            lowered = record.name == "bentoml._internal.server.http_app" and record.levelno > logging.INFO
            if lowered and _client_fault(record.exc_info[1]):
                record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
            try:
                message = record.getMessage()
            except Exception:  # arguments that do not fit the format: logging's own handler reports those
                message = str(record.msg)
            record.msg, record.args = f"{message}: {_type_and_place(record.exc_info[1])}", None
            record.exc_info = record.exc_text = None
        return True


def type_only_request_errors() -> None:
    """`TypeOnly` on the loggers that log a request's failure with its traceback: BentoML's HTTP app and
    the server's (uvicorn's "Exception in ASGI application")."""
    for name in ("bentoml._internal.server.http_app", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, TypeOnly) for f in logger.filters):
            logger.addFilter(TypeOnly())


class Unexpected:
    """ASGI middleware for the /v1 app: an unexpected failure is a 500 in the API's error shape and
    `log_unexpected`'s lines, and goes no further. Starlette's own handler for `Exception` answers, then
    raises it again, and the server logged that with its traceback, message (and so request text)
    included."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            log_unexpected(exc)
            if not started:  # else the server closes a response it sees unfinished
                await error_response(500, INTERNAL_ERROR, "server_error")(scope, receive, send)
