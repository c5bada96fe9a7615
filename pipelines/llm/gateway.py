"""The gateway: the one entry point all code uses to call a model, a LiteLLM Router built from the catalog.

Model groups are catalog names; retries, timeouts, cooldowns and fallbacks (a local model down -> the other
local model) are LiteLLM's. Every call returns text, usage, cost, latency, time to first token, the model
that actually answered and whether a fallback happened.
"""

from __future__ import annotations

import os
import re

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch the cost map from the internet

import atexit
import contextlib
import hashlib
import json
import logging
import math
import threading
import time
import weakref
from collections import OrderedDict, defaultdict, deque
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import litellm

# imported now, not by LiteLLM's AsyncHTTPHandler.__del__ at garbage collection: an import from a finalizer
# waited on the import lock for ever (a pytest process of the service tests hung there, idle, 10 minutes)
import litellm.llms.custom_httpx.aiohttp_transport  # noqa: F401
from litellm.integrations.custom_logger import CustomLogger
from opentelemetry.trace import Span, Status, StatusCode

from pipelines.llm.catalog import Catalog, ModelEntry, load_catalog
from pipelines.llm.weights import vocab_file
from pipelines.settings import Settings
from pipelines.tracing import tracer

log = logging.getLogger(__name__)
litellm.suppress_debug_info = True
logging.getLogger("LiteLLM").setLevel(logging.ERROR)  # register_model warns about cache prices we do not use
# the Router logs each failed fallback at ERROR with the upstream's text, which may quote the prompt (a log
# never holds one); the gateway reports failures itself, by type and status. LITELLM_LOG=DEBUG shows them.
if not os.environ.get("LITELLM_LOG"):
    logging.getLogger("LiteLLM Router").setLevel(logging.CRITICAL)
litellm.drop_params = True
LOCAL_API_KEY = "sk-local-no-auth"  # llama.cpp servers take any key; the client insists on one
LATENCY_WINDOW_S = 300.0  # the router's latency rule sees calls this recent


class _FailureLog(CustomLogger):
    """The failures of each gateway call's attempts (the requested model's, then its fallbacks'), by the
    call's id in LiteLLM's metadata: LiteLLM calls this in the caller's thread before the Router falls back.
    A call answered by a fallback learns whether its model failed for an outage, or refused the request."""

    DONE = 10_000  # the ids of the last calls that took their records

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._failures: dict[str, list[tuple[str | None, BaseException | None]]] = {}
        self._done: OrderedDict[str, None] = OrderedDict()

    def log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        meta = (kwargs.get("litellm_params") or {}).get("metadata") or {}
        call = meta.get(CALL_KEY)
        with self._lock:
            # a stream that breaks midway is logged from a thread of LiteLLM's after its call took its record:
            # kept, each such record (an exception and its traceback) would stay for good
            if call is not None and call not in self._done:
                self._failures.setdefault(call, []).append((meta.get("model_group"), kwargs.get("exception")))

    def pop(self, call: str) -> list[tuple[str | None, BaseException | None]]:
        """The call's failures; a failure logged for it from now on is dropped."""
        with self._lock:
            self._done[call] = None
            if len(self._done) > self.DONE:
                self._done.popitem(last=False)
            return self._failures.pop(call, [])

    def __len__(self) -> int:
        return len(self._failures)


CALL_KEY = "stratmaster_call"
_FAILURES = _FailureLog()
litellm.callbacks.append(_FAILURES)


class GatewayError(RuntimeError):
    """A call failed for a reason the caller can act on; the message names the model and the cause."""


# what a GatewayError says where the request itself can never be served as sent (the gateway's own checks,
# a 400 from the model server): retrying will not help. Any other failure is an outage a retry may outlast
REQUEST_FAULTS = (
    "context overflow", "request refused", "messages must", "needs a role", "has empty content",
    "max_tokens must",
)  # fmt: skip


def is_request_fault(e: GatewayError) -> bool:
    return any(f in str(e) for f in REQUEST_FAULTS)


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
    elif entry.is_local_server or entry.provider == "vllm" or entry.api_base or entry.api_base_env:
        # a self-hosted endpoint that names no key variable gets a placeholder: left without one, LiteLLM
        # sent the environment's OPENAI_API_KEY to whatever server the catalog points at
        p["api_key"] = LOCAL_API_KEY
    if entry.local is not None:
        if entry.local.stop:  # the chat format's own stop strings (catalog.py)
            p["stop"] = list(entry.local.stop)
        # the catalog's repeat penalty with every request: llama-cpp-python's server has no such option and
        # would apply its own 1.1 to every model (Gemma's "###" stop included)
        p["extra_body"] = {"repeat_penalty": entry.local.repeat_penalty}
    return p


def deployment_id(name: str, params: dict[str, Any]) -> str:
    """`name@<hash of the endpoint>`. Every LiteLLM Router hears every Router's failures (it registers its
    failure callback in LiteLLM's global list) and cools deployments down by this id: with the bare name, a
    Gateway whose smollm2 pointed at a dead port sent every other Gateway's smollm2 to gemma for 30 s. The
    hash covers the call's target (an environment variable's name, never a key's value)."""
    target = {k: params.get(k) for k in ("model", "api_base", "api_key")}
    if not str(target["api_key"] or "").startswith("os.environ/"):
        target["api_key"] = None
    return f"{name}@{hashlib.sha256(json.dumps(target, sort_keys=True).encode()).hexdigest()[:12]}"


def router_config(catalog: Catalog, settings: Settings, only_available: bool = True) -> dict[str, Any]:
    """The Router's model list and settings; also what `stratmaster gateway export` writes for the Proxy."""
    entries = catalog.available() if only_available else catalog.models
    model_list = []
    for e in entries:
        params = _params(e, settings)
        info = {"id": deployment_id(e.name, params), "privacy": e.privacy, "context_window": e.context_window}
        model_list.append({"model_name": e.name, "litellm_params": params, "model_info": info})
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
            "disable_cooldowns": settings.cooldown_s == 0,  # LiteLLM reads a cooldown of 0 as 5 s
            "allowed_fails": 1,
            "fallbacks": [f for f in fallbacks if set(f) <= names],
        },
    }


def _cache_read_price(litellm_model: str) -> float | None:
    """LiteLLM's price per cached prompt token, under the model's own name or the provider's bare one (the
    catalog's registration of `openai/gpt-4o-mini` carries no cache price; `gpt-4o-mini` does)."""
    for key in (litellm_model, litellm_model.split("/", 1)[-1]):
        price = litellm.model_cost.get(key, {}).get("cache_read_input_token_cost")
        if price is not None:
            return float(price)
    return None


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


# a chat template's markers per turn (ChatML: "<|im_start|>user\n" ... "<|im_end|>\n" is 5), rounded up
CHAT_TOKENS_PER_MESSAGE = 8


_VOCAB_LOCK = threading.Lock()


class _Vocab:
    """A GGUF's tokenizer alone, through llama.cpp's C API: the vocabulary only (0.4 s, no weights), no
    context, and nothing done to the process's output. `Llama(vocab_only=True, verbose=False)` pointed
    stdout and stderr at /dev/null while it loaded: every thread's output was lost meanwhile, and a thread
    that moved those descriptors during the load (pytest's capture does) found them moved back."""

    def __init__(self, path: str) -> None:
        import llama_cpp
        import llama_cpp._logger  # its log callback prints to stderr what its logger's level lets through

        log, level = llama_cpp._logger.logger, llama_cpp._logger.logger.level
        # the loader's notes (Gemma's: "control-looking token ... not control-type") are no tokenizer's
        # business; a file it cannot load is the ValueError below
        log.setLevel(logging.CRITICAL)
        try:
            llama_cpp.llama_backend_init()
            params = llama_cpp.llama_model_default_params()
            params.vocab_only = True
            self._model = llama_cpp.llama_model_load_from_file(path.encode(), params)
        finally:
            log.setLevel(level)
        self._lib = llama_cpp
        if not self._model:
            raise ValueError(f"llama.cpp could not read the vocabulary of {path}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)

    def count(self, text: str, special: bool = False) -> int:
        """Tokens in `text`, without BOS; special-token text ("<|im_start|>") read as text (the server's count
        of a message's content), or as the special token where `special` (a rendered chat template's)."""
        if not self._model:
            raise ValueError("this tokenizer is closed")
        data = text.encode()
        # with no room for tokens, llama_tokenize answers minus the number it would write
        return abs(int(self._lib.llama_tokenize(self._vocab, data, len(data), None, 0, False, special)))

    def adds_bos(self) -> bool:
        return bool(self._lib.llama_vocab_get_add_bos(self._vocab))

    def chat_template(self) -> str | None:
        """The GGUF's own chat template (what llama-server renders a chat with), if it has one."""
        raw = self._lib.llama_model_chat_template(self._model, None) if self._model else None
        return raw.decode() if raw else None

    def close(self) -> None:
        model, self._model = self._model, None
        if model:
            self._lib.llama_model_free(model)


def _load_vocab(path: str) -> _Vocab | None:
    try:
        vocab = _Vocab(path)
    except Exception as e:  # noqa: BLE001 - an unreadable GGUF: None, remembered (not a load per request)
        log.warning("cannot read the tokenizer of %s (%s): prompts for it are sized by estimate", path, e)
        return None
    atexit.register(vocab.close)  # before llama_cpp's module is torn down
    return vocab


# path -> (the file's identity when read, its tokenizer or None): one entry a file
_VOCABS: dict[str, tuple[tuple[int, ...], _Vocab | None]] = {}


def _vocab(path: str) -> _Vocab | None:
    """A local model's tokenizer, loaded once per version of the file (threads sizing their first prompts at
    once wait for the one load); None when the file cannot be read. A file replaced since (one still being
    written at the first request, a new quantization) is read again; an unreadable one is remembered until
    then. A replaced tokenizer is not closed (a thread may be counting with it): freed at exit."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _VOCAB_LOCK:
        known = _VOCABS.get(path)
        if known is None or known[0] != stamp:
            known = _VOCABS[path] = (stamp, _load_vocab(path))
        return known[1]


_PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def bypass_proxy(host: str) -> None:
    """The local model servers are never called through an HTTP proxy of the environment: with HTTP_PROXY
    set, every call to them failed ("no connection to the model server"). Adds them to NO_PROXY, which the
    HTTP clients under LiteLLM honour; remote providers keep the proxy."""
    have = [
        h.strip() for v in ("NO_PROXY", "no_proxy") for h in os.environ.get(v, "").split(",") if h.strip()
    ]
    if "*" in have or not any(os.environ.get(v) for v in _PROXY_VARIABLES):  # nothing to bypass
        return
    # one list, in both spellings: clients read the lower-case one first, and it must keep the user's hosts
    merged = ",".join(dict.fromkeys([*have, host, "127.0.0.1", "localhost"]))
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = merged


class Gateway:
    def __init__(self, settings: Settings | None = None, catalog: Catalog | None = None) -> None:
        self.settings = settings or Settings()
        self.catalog = catalog or load_catalog(self.settings)
        bypass_proxy(self.settings.local_host)
        register_prices(self.catalog)
        cfg = router_config(self.catalog, self.settings)
        self._by_litellm = {e.litellm_model: e for e in self.catalog.models}
        self._router = litellm.Router(model_list=cfg["model_list"], **cfg["router_settings"])
        # the Router hooks itself into LiteLLM's global callback lists: unhook it when this gateway goes, or
        # every Gateway made (a Dagster asset's, a test's) stays alive with it
        weakref.finalize(self, self._router.discard)
        self._fallbacks = {k: v for f in cfg["router_settings"]["fallbacks"] for k, v in f.items()}
        # (when, seconds) of recent calls per model, for the router's latency rule
        self._latencies: dict[str, deque[tuple[float, float]]] = defaultdict(lambda: deque(maxlen=200))
        self._templates: dict[tuple[str, int], Any] = {}  # compiled chat templates, by model and tokenizer

    def entry(self, name: str) -> ModelEntry:
        """The catalog entry of `name`; a GatewayError when the catalog has none or it is unavailable."""
        try:
            entry = self.catalog.get(name)
        except KeyError as e:
            raise GatewayError(str(e.args[0])) from None
        reason = entry.unavailable_reason()
        if reason:
            raise GatewayError(f"model {name!r} is unavailable: {reason}")
        return entry

    def _with_stops(self, entry: ModelEntry, kwargs: dict[str, Any]) -> dict[str, Any]:
        """A caller's `stop` replaces a deployment's in LiteLLM: keep each chat format's stop strings too,
        for the requested model and for every model the Router may fall back to (as per-request fallback
        targets that carry their own stop lists)."""
        if kwargs.get("stop") is None:
            return kwargs
        caller = [kwargs["stop"]] if isinstance(kwargs["stop"], str) else list(kwargs["stop"])

        def stops(e: ModelEntry) -> list[str]:
            return list(dict.fromkeys([*caller, *(e.local.stop if e.local is not None else [])]))

        out = {**kwargs, "stop": stops(entry)}
        if entry.name in self._fallbacks and "fallbacks" not in kwargs:
            targets = [{"model": t, "stop": stops(self.catalog.get(t))} for t in self._fallbacks[entry.name]]
            out["fallbacks"] = [{entry.name: targets}]
        return out

    def _check(self, entry: ModelEntry, messages: list[dict[str, Any]], max_tokens: int) -> None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            # llama-server reads -1 as "no limit" (2,010 tokens, 60 s, for a caller's typo)
            raise GatewayError(f"{entry.name}: max_tokens must be a whole number >= 1, not {max_tokens!r}")
        if not isinstance(messages, list) or not messages:
            raise GatewayError(
                f"{entry.name}: messages must be a non-empty list of {{role, content}} objects"
            )
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
                raise GatewayError(f"{entry.name}: message {i} needs a role of system, user or assistant")
            if not isinstance(m.get("content"), str) or not m["content"].strip():
                raise GatewayError(f"{entry.name}: message {i} has empty content")
        est = self._prompt_tokens(entry, messages)
        if est + max_tokens > entry.context_window:
            raise GatewayError(
                f"{entry.name}: context overflow: about {est} prompt tokens + {max_tokens} to generate "
                f"exceed its context window of {entry.context_window}"
            )

    def warm_up(self) -> None:
        """Load what sizing a prompt needs (each local model's tokenizer, 0.4 s each), before any request."""
        for entry in self.catalog.local():
            self._prompt_tokens(entry, [{"role": "user", "content": "warm"}])

    def _prompt_tokens(self, entry: ModelEntry, messages: list[dict[str, Any]]) -> int:
        """The prompt's size: by the local model's own tokenizer where its GGUF is at hand, else gpt-3.5's
        count (LiteLLM's tokenizer for a named model may be fetched from a hub: not on a request's path).
        gpt-3.5's count of a Chinese prompt was 2.5x Gemma's own: one filling 41% of its window was refused.
        """
        own = self._own_tokens(entry, messages)
        return _gpt35_tokens(messages) if own is None else own

    def _own_tokens(self, entry: ModelEntry, messages: list[dict[str, Any]]) -> int | None:
        """The prompt's size by the model's own tokenizer; None where the gateway has none (a remote model, a
        GGUF not at hand or unreadable)."""
        if not entry.is_local_server:
            return None
        try:
            path = vocab_file(entry, self.settings)
            vocab = _vocab(str(path)) if path is not None else None
        except Exception:  # noqa: BLE001 - a GGUF it cannot find: the estimate, as for a remote model
            return None
        if vocab is None:
            return None
        # the prompt as the server renders it: its template's markers and any default system prompt it adds
        # (SmolLM2's and Gemma's, 14 and 22 tokens past an estimate of 8 a turn: a max_tokens that passed the
        # check ran past the window)
        template = self._template(entry, vocab)
        if template is not None:
            try:
                text = template.render(
                    messages=messages, add_generation_prompt=True, bos_token="", eos_token=""
                )
                return vocab.count(text, special=True) + vocab.adds_bos()
            except Exception:  # noqa: BLE001 - a template that refuses these messages: the estimate below
                pass
        text = sum(vocab.count(m["content"]) for m in messages)
        return text + CHAT_TOKENS_PER_MESSAGE * (len(messages) + 1)  # each turn's markers, the reply's start

    def _template(self, entry: ModelEntry, vocab: _Vocab) -> Any:
        """The compiled chat template the model's server renders (the catalog's file, else the GGUF's), or
        None; compiled once a tokenizer."""
        key = (entry.name, id(vocab))
        if key not in self._templates:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            try:
                path = entry.local.template_path() if entry.local else None
                source = path.read_text() if path else vocab.chat_template()
                env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
                self._templates[key] = env.from_string(source) if source else None
            except Exception:  # noqa: BLE001 - a template jinja cannot read: the estimate
                self._templates[key] = None
        return self._templates[key]

    def own_prompt_tokens(self, model: str, prompt: str, turns: int = 1, system: bool = False) -> int | None:
        """What the window check counts for `turns` messages whose texts, joined, are `prompt` (`system`:
        one of them a system message, where a chat template adds no default one), by `model`'s own
        tokenizer; None where the gateway has no such tokenizer: the router's estimate stands."""
        if model not in self.catalog.names():
            return None
        shape = [{"role": "system", "content": "-"}] if system and turns > 1 else []
        one = self._own_tokens(self.catalog.get(model), [*shape, {"role": "user", "content": prompt}])
        return None if one is None else one + CHAT_TOKENS_PER_MESSAGE * (max(turns, 1) - 1 - len(shape))

    def prompt_tokens(self, model: str, prompt: str, turns: int = 1, system: bool = False) -> int | None:
        """What the window check counts, as `own_prompt_tokens`, or by gpt-3.5's tokenizer where the model
        has none at hand (a remote model, a GGUF not found), as the check does (its 3 tokens a message; the
        joined text's blank lines stand for the rest); None for a model the catalog does not name."""
        own = self.own_prompt_tokens(model, prompt, turns, system)
        if own is not None or model not in self.catalog.names():
            return own
        return _gpt35_tokens([{"role": "user", "content": prompt}]) + 3 * (max(turns, 1) - 1)

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
        if stream:
            return self.stream(model, messages, max_tokens, temperature, **kwargs).read()
        entry = self.entry(model)
        self._check(entry, messages, max_tokens)
        # the span's error is _span_error's alone: an exception event would carry the raw text and stack
        with tracer().start_as_current_span(f"chat {model}", record_exception=False) as span:
            _span_request(span, model, max_tokens, temperature, stream=False)
            try:
                result = self._call(entry, messages, max_tokens, temperature, **kwargs)
            except GatewayError as e:
                _span_error(span, e)
                raise
            self._span_result(span, result)
            return result

    def stream(
        self,
        model: str,
        messages: list[dict[str, Any]],
        max_tokens: int = 256,
        temperature: float = 0.0,
        **kwargs: Any,
    ) -> StreamedChat:
        """Open a streamed call to `model`: iterate the returned object for text deltas; its `result` is
        the ChatResult (usage, cost, latency, TTFT, answering model, fallback) once the stream is read.

        The call is opened eagerly: validation, retries, fallbacks and the wait for the first chunk happen
        here, so a failure is a GatewayError before the caller has sent anything to its own client. The span
        `chat <model>` starts now and ends when the stream is exhausted, fails or is closed.
        """
        entry = self.entry(model)
        self._check(entry, messages, max_tokens)
        kwargs, call = self._tagged(self._with_stops(entry, kwargs))
        span = tracer().start_span(f"chat {model}")
        _span_request(span, model, max_tokens, temperature, stream=True)
        t0 = time.perf_counter()
        try:
            resp = self._router.completion(
                model=model, messages=messages, max_tokens=max_tokens, temperature=temperature,
                stream=True, stream_options={"include_usage": True}, **kwargs,
            )  # fmt: skip
            if resp is None:
                raise GatewayError(_UNPROCESSABLE.format(model=model))
            chunks = iter(resp)
            head = [next(chunks, None)]
            if head[0] is None:
                raise GatewayError(f"{model}: the server returned an empty stream")
            # read up to the first text here, so TTFT is the server's, not the consumer's pace of reading
            while head[-1] is not None and not _delta_text(head[-1]):
                head.append(next(chunks, None))
            ttft = time.perf_counter() - t0 if head[-1] is not None else None
        except Exception as e:  # timeouts, connection errors, refusals, every fallback exhausted
            err = _failure(model, e)
            _span_error(span, err)
            span.end()
            raise err from None
        finally:
            outage = _settle(model, call)
        answered = self._answered(resp, entry)
        return StreamedChat(self, entry, answered, messages, span, resp, chunks, head, t0, ttft, outage)

    def _call(
        self,
        entry: ModelEntry,
        messages: list[dict[str, Any]],
        max_tokens: int,
        temperature: float,
        **kwargs: Any,
    ) -> ChatResult:
        """One non-streamed call."""
        kwargs, call = self._tagged(self._with_stops(entry, kwargs))
        t0 = time.perf_counter()
        try:
            resp = self._router.completion(
                model=entry.name, messages=messages, max_tokens=max_tokens, temperature=temperature,
                stream=False, **kwargs,
            )  # fmt: skip
        except Exception as e:
            raise _failure(entry.name, e) from None
        finally:
            outage = _settle(entry.name, call)
        latency = time.perf_counter() - t0
        if resp is None:
            raise GatewayError(_UNPROCESSABLE.format(model=entry.name))
        if not isinstance(resp, litellm.ModelResponse) or not resp.choices:
            raise GatewayError(f"{entry.name}: the server returned no choices")
        return self._result(entry, resp, resp, latency, None, outage=outage)

    @staticmethod
    def _tagged(kwargs: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """`kwargs` with a call id in LiteLLM's metadata: `_FAILURES` files the attempts' failures by it."""
        call = os.urandom(8).hex()
        return {**kwargs, "metadata": {**(kwargs.get("metadata") or {}), CALL_KEY: call}}, call

    def _result(
        self,
        requested: ModelEntry,
        source: Any,
        resp: Any,
        latency: float,
        ttft: float | None,
        book: bool = True,
        outage: bool = True,
    ) -> ChatResult:
        """A ChatResult from a complete response; `source`, what LiteLLM returned, knows who answered.
        `book=False`: the latency is not the model's to book (a stream its reader held up). `outage`: where
        a fallback answered, whether the requested model failed for an outage (or was benched), not for
        refusing the request."""
        answered = self._answered(source, requested)
        usage = getattr(resp, "usage", None)
        in_tok = int(getattr(usage, "prompt_tokens", 0) or 0)
        out_tok = int(getattr(usage, "completion_tokens", 0) or 0)
        details = getattr(usage, "prompt_tokens_details", None)  # OpenAI's (and LiteLLM's) cached share
        cached = int(getattr(details, "cached_tokens", 0) or 0)
        now = time.monotonic()
        if answered == requested.name:
            if book:
                self._latencies[answered].append((now, latency))
        elif outage:  # it failed (or was benched): as slow as a request that timed out. The stand-in's time
            # holds that failure's (a 3 s hang booked to it would exclude it too): not its own, not booked.
            # One that refused the request (its own context overflow, a 400) is not slow: nothing is booked
            self._latencies[requested.name].append((now, max(latency, self.settings.request_timeout_s)))
        choice = resp.choices[0]
        return ChatResult(
            text=choice.message.content or "",
            model=answered,
            requested_model=requested.name,
            fallback_used=answered != requested.name,
            input_tokens=in_tok,
            output_tokens=out_tok,
            cost_usd=self.cost_usd(answered, in_tok, out_tok, cached),
            latency_s=latency,
            ttft_s=ttft,
            finish_reason=choice.finish_reason,
        )

    def cost_usd(self, model: str, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> float:
        """What a call with these token counts costs at the catalog price of `model`. Prompt tokens the
        provider read from its cache cost its cache-read price, from LiteLLM's price table where it knows
        one (OpenAI caches prompts over 1,024 tokens by itself: at the full price a RAG call was 47% high)."""
        e = self.catalog.get(model)
        cached = min(max(cached_tokens, 0), input_tokens)
        cache_read = _cache_read_price(e.litellm_model)
        cached_price = 1000 * cache_read if cache_read is not None else e.cost_per_1k_input_usd or 0.0
        return e.cost_usd(input_tokens - cached, output_tokens) + cached * cached_price / 1000

    def _span_result(self, span: Span, result: ChatResult) -> None:
        span.set_attribute("gen_ai.system", self.catalog.get(result.model).provider)
        span.set_attribute("gen_ai.response.model", result.model)
        span.set_attribute("gen_ai.usage.input_tokens", result.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", result.output_tokens)
        span.set_attribute("stratmaster.cost_usd", result.cost_usd)
        span.set_attribute("stratmaster.fallback_used", result.fallback_used)
        if result.ttft_s is not None:
            span.set_attribute("stratmaster.ttft_s", result.ttft_s)
        if result.finish_reason:
            span.set_attribute("gen_ai.response.finish_reasons", [result.finish_reason])

    def _answered(self, resp: Any, requested: ModelEntry) -> str:
        hidden = getattr(resp, "_hidden_params", {}) or {}
        name = str(hidden.get("model_id") or "").partition("@")[0]
        if name in self.catalog.names():
            return name
        served = getattr(resp, "model", None) or ""
        for name in self.catalog.names():
            if served == name or served.endswith("/" + name):
                return name
        return requested.name

    def recent_latency_p95(self, model: str) -> float | None:
        """p95 of this process's calls to `model` in the last LATENCY_WINDOW_S (its last 200 at most), for the
        router's latency rule; a call it failed counts as one that timed out, a stream its reader held up
        not at all. None without such calls: the router then uses the figure it was trained with, so a
        model that failed is tried again in time."""
        since = time.monotonic() - LATENCY_WINDOW_S
        calls = tuple(self._latencies.get(model, ()))  # one C-level copy: other threads append meanwhile
        lat = sorted(s for t, s in calls if t >= since)
        return lat[math.ceil(0.95 * len(lat)) - 1] if lat else None  # nearest rank: 2 calls give the slower


class StreamedChat:
    """A streamed call that `Gateway.stream` opened: iterating it yields the text deltas as they arrive.

    `model`, `requested_model` and `fallback_used` are known from the start; `result` (a ChatResult, with
    usage counted as `Gateway.chat` counts it) once the stream has been read to its end. A stream that
    breaks midway raises GatewayError (fallbacks cannot apply once text has been sent). Read it once.
    """

    def __init__(
        self,
        gateway: Gateway,
        entry: ModelEntry,
        answered: str,
        messages: list[dict[str, Any]],
        span: Span,
        resp: Any,
        chunks: Iterator[Any],
        head: list[Any],
        t0: float,
        ttft_s: float | None,
        outage: bool = True,
    ) -> None:
        self.model = answered
        self.requested_model = entry.name
        self.fallback_used = answered != entry.name
        self.result: ChatResult | None = None
        self.ttft_s = ttft_s  # up to the first text chunk, read by Gateway.stream (None: no text at all)
        # (time waiting for the server, time the reader spent before asking) of the last few text chunks
        self._paces: deque[tuple[float, float]] = deque(maxlen=4)
        self._returned = time.perf_counter()
        self._gateway, self._entry, self._messages = gateway, entry, messages
        self._span, self._resp, self._chunks, self._head, self._t0 = span, resp, chunks, head, t0
        self._outage = outage
        # the wrappers that read the server's stream, held now: the Router's generator frame ends with it
        self._streams = _inner_streams(resp) or [resp]
        # a weak reference: the generator's frame holds this object, so a strong one made a cycle, and a
        # reader that broke out of its loop and dropped both left the server writing till the cyclic GC ran
        self._gen: weakref.ref[Generator[str, None, None]] | None = None
        self._ended, self._end_lock = False, threading.Lock()
        self._closed = threading.Event()  # set by `close`: a read under way stops at its next chunk

    def __iter__(self) -> Iterator[str]:
        if self._gen is not None or self._ended:
            raise GatewayError(f"{self.requested_model}: this stream has already been read")
        gen = self._deltas()
        self._gen = weakref.ref(gen)
        return gen

    def read(self) -> ChatResult:
        """Read the stream to its end: the answer's ChatResult (GatewayError when it breaks; a `close` from
        another thread ends the read early, with an error or with the answer so far)."""
        for _ in self:
            pass
        if self.result is None:
            raise GatewayError(f"{self.requested_model}: the stream was closed before its end")
        return self.result

    def close(self) -> None:
        """Stop reading: release the connection and end the span (nothing to do once the stream ended).
        Safe from another thread while one is reading (a server whose client left): that read stops at its
        next chunk, or at its timeout where the server sends none, and releases the connection."""
        self._closed.set()
        ref, self._gen = self._gen, None
        gen = ref() if ref is not None else None
        if gen is not None:
            # "generator already executing" when a thread is reading it: that read stops at its next chunk
            # and releases the response itself (LiteLLM's wrapper cannot close a generator under way)
            with contextlib.suppress(ValueError):
                gen.close()  # its `finally` ends the span
        self._end(GeneratorExit())

    def __enter__(self) -> StreamedChat:
        return self

    def __del__(self) -> None:
        # dropped unread (a caller that raised before reading it): free the connection and end the span now,
        # not when the span's exporter never hears of it. One half read is closed by its generator's own end.
        if not getattr(self, "_ended", True):
            with contextlib.suppress(Exception):
                self._end(GeneratorExit())

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _deltas(self) -> Generator[str, None, None]:
        chunks: list[Any] = []
        outcome: BaseException | None = None
        try:
            head = self._head
            chunk = head.pop(0)
            while chunk is not None:
                if self._closed.is_set():
                    raise GeneratorExit  # closed from another thread while this one read
                chunks.append(chunk)
                text = _delta_text(chunk)
                if text:
                    yield text
                if head:
                    chunk = head.pop(0)
                    continue
                try:
                    asked = time.perf_counter()
                    chunk = next(self._chunks, None)
                    returned, reading = time.perf_counter(), asked - self._returned
                    if chunk is not None and _delta_text(chunk):
                        self._paces.append((returned - asked, reading))
                    self._returned = returned
                except Exception as e:
                    raise _failure(self.requested_model, e, midway=True) from None
            if self._closed.is_set():  # closed between two reads: the stream was cut, the answer not done
                raise GeneratorExit
            if _cut_short(self._streams):
                cut = "it ended with no finish reason"
                raise GatewayError(f"{self.requested_model}: the stream broke after it started ({cut})")
            latency = time.perf_counter() - self._t0
            built = litellm.stream_chunk_builder(chunks, messages=self._messages)
            if built is None or not built.choices:
                raise GatewayError(f"{self.requested_model}: the server returned no choices")
            # a reader slower than the server finds its last chunks waiting in the buffer (it waits less for
            # them than it spends on each): the time is the reader's, not the model's, and llama-server's
            # own timings are not in what LiteLLM passes on
            kept_up = sum(w for w, _ in self._paces) >= sum(r for _, r in self._paces)
            self.result = self._gateway._result(
                self._entry, self._resp, built, latency, self.ttft_s, kept_up, self._outage
            )
        except BaseException as e:  # GeneratorExit too: the consumer stopped reading (client gone)
            outcome = e
            if isinstance(e, GeneratorExit) and self._closed.is_set():
                return  # the reader of a closed stream: its loop ends, `read` says it was closed
            raise
        finally:
            self._end(outcome)
            if self.result is None:  # the response `close` could not release while this thread read it
                _close_response(self._resp)

    def _end(self, outcome: BaseException | None) -> None:
        with self._end_lock:  # the reading thread and a closing one may both get here
            if self._ended:
                return
            self._ended = True
        if self.result is not None:
            self._gateway._span_result(self._span, self.result)
        else:
            _close_response(self._resp)  # frees the HTTP connection of a stream nobody will read to its end
            if isinstance(outcome, GeneratorExit):
                self._span.set_attribute("stratmaster.stream_closed_early", True)
            elif outcome is not None:
                _span_error(self._span, outcome)
        self._span.end()


def _cut_short(streams: list[Any]) -> bool:
    """Whether LiteLLM's stream wrapper that answered (the first of `streams`: a fallback's, else the
    model's) ended with no chunk that gave a finish reason: a server whose connection closed midway,
    cleanly. LiteLLM then ends the stream as if the model had stopped ("stop"), and the client was told the
    answer was whole. (None, or a wrapper of another kind, says nothing: False.)"""
    answered = streams[0] if streams else None
    return getattr(answered, "received_finish_reason", "") is None and not getattr(
        answered, "intermittent_finish_reason", None
    )


def _gpt35_tokens(messages: list[dict[str, Any]]) -> int:
    return int(litellm.token_counter(model="gpt-3.5-turbo", messages=messages))


def _inner_streams(resp: Any) -> list[Any]:
    """The streams the Router's fallback wrapper `resp` reads (the model's, and a fallback's once it has
    one), from its generator's suspended frame; none where it is running in another thread or ended."""
    gen = getattr(resp, "_sync_generator", None)
    frame = getattr(gen, "gi_frame", None)
    if frame is None or getattr(gen, "gi_running", True):
        return []
    found = (frame.f_locals.get(name) for name in ("fallback_response", "model_response"))
    return [s for s in found if s is not None]


def _close_response(resp: Any) -> None:
    """Close LiteLLM's stream and the model server's responses under it. The Router's fallback wrapper
    reads them in a generator whose own close leaves their HTTP connections open (the server writing on)
    till the cyclic GC runs: they are found in its suspended frame and closed too. A frame another thread
    is running is left to that thread, which calls this again when it stops."""
    inner = _inner_streams(resp)
    for stream in (resp, *inner, *(getattr(r, "completion_stream", None) for r in inner)):
        close = getattr(stream, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):
                close()


def _delta_text(chunk: Any) -> str | None:
    choices = getattr(chunk, "choices", None)
    delta = choices[0].delta if choices else None
    return delta.content if delta is not None else None


REQUEST_FAULT_STATUSES = (400, 413, 422)
# LiteLLM's OpenAI client, under `drop_params`, answers a second 422 in a row (llama-cpp-python's server
# validating a request: a role it does not know) with None, and its Router books that as a success
_UNPROCESSABLE = "{model}: request refused: the model server answered 422"


def _settle(model: str, call: str) -> bool:
    """Log each failed attempt of a call (by model, type and status: an upstream's text may quote the
    prompt) and say whether `model` failed for an outage (`_outage`). A broken API key whose calls a fallback
    answered had left no line in any log."""
    failures = _FAILURES.pop(call)
    for m, e in failures:
        if e is not None:
            status = getattr(e, "status_code", None)
            said = f", status {status}" if status else ""
            log.warning("a call to %s failed (%s%s)", m, type(e).__name__, said)
    return _outage(model, failures)


def _outage(model: str, failures: list[tuple[str | None, BaseException | None]]) -> bool:
    """Whether `model` failed its call for an outage: a failure of its own that is no request fault, or none
    at all (benched, it was not called)."""
    own = [e for m, e in failures if m == model]
    return not own or any(e is None or not _refused(e) for e in own)


def _refused(e: BaseException) -> bool:
    """Whether the model server refused the request itself (its context overflow, a 400, 413 or 422): another
    try will not help, and the server is not down."""
    status = getattr(e, "status_code", None)
    return isinstance(e, litellm.exceptions.BadRequestError) or status in REQUEST_FAULT_STATUSES


def _failure(model: str, e: BaseException, midway: bool = False) -> GatewayError:
    """The caller-facing error for what LiteLLM raised: names the model and the cause."""
    if isinstance(e, GatewayError):
        return e
    # a 400's text from LiteLLM names deployments and fallbacks and may quote the request: the caller (and a
    # service's client) gets what the model server said in its own fields, never that text
    if isinstance(e, litellm.exceptions.ContextWindowExceededError):
        # llama-server's words: "request (3340 tokens) exceeds the available context size (2048 tokens)"
        sizes = re.search(r"(?:request \(|n_prompt_tokens\W+)(\d+).*?(?:size \(|n_ctx\W+)(\d+)", str(e))
        said = f"{sizes[1]} prompt tokens for a context of {sizes[2]}" if sizes else "the prompt does not fit"
        return GatewayError(f"{model}: context overflow: {said}")
    status = getattr(e, "status_code", None)
    if _refused(e):  # the request itself (a 422 from a validating server, a 413 body)
        return GatewayError(f"{model}: request refused: the model server answered {status or 400}")
    # nor the text of any other failure: an upstream's error body may quote the prompt; its type and status
    cause = type(e).__name__ + (f", status {status}" if status else "")
    if isinstance(e, litellm.RouterRateLimitError):
        cause += ": benched after failing, as its fallbacks were"
    elif "Connection error" in str(e):  # LiteLLM's own words for a refused or dropped connection
        cause += ": no connection to the model server"
    if midway:
        return GatewayError(f"{model}: the stream broke after it started ({cause})")
    return GatewayError(f"{model}: call failed after retries and fallbacks ({cause})")


def _span_request(span: Span, model: str, max_tokens: int, temperature: float, stream: bool) -> None:
    span.set_attribute("gen_ai.operation.name", "chat")
    span.set_attribute("gen_ai.request.model", model)
    span.set_attribute("gen_ai.request.max_tokens", max_tokens)
    span.set_attribute("gen_ai.request.temperature", temperature)
    span.set_attribute("stratmaster.stream", stream)


def _span_error(span: Span, e: BaseException) -> None:
    span.set_attribute("error.type", type(e).__name__)
    span.set_status(Status(StatusCode.ERROR, str(e)[:200]))
