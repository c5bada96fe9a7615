"""The service over HTTP through `StratMaster.to_asgi()`: every endpoint, its errors, auth, PII routing.

Routers are tiny (a dozen RouterBench prompts per task, static embedder). One is trained on RouterBench
outcomes renamed to catalog models, so its panel overlaps the gateway's catalog; the other keeps RouterBench's
names, a panel the gateway cannot call. Tests marked `models` call the real local llama.cpp servers.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import tempfile
import time
from functools import cache

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="sm-prom-"))  # as `bentoml serve`
os.environ.setdefault("BENTOML_HOME", tempfile.mkdtemp(prefix="sm-bentoml-"))  # no stray models by tag

import httpx
import pandas as pd
import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from pipelines.llm.catalog import load_catalog
from pipelines.settings import Settings
from router_models.router.artifact import load_router
from router_models.router.cli import app as router_app
from router_models.router.signals import Constraints

KEYS = ("key-one", "key-two")
AUTH = {"Authorization": f"Bearer {KEYS[1]}"}
LOCAL = {"smollm2-135m", "gemma3-270m"}
PII_PROMPT = "Write one line to jane.doe@example.com confirming the meeting."
# RouterBench models renamed to catalog names, so the router's panel overlaps the gateway's catalog
CATALOG_PANEL = {
    "gpt-4-1106-preview": "gpt-4o",
    "gpt-3.5-turbo-1106": "gpt-4o-mini",
    "meta/llama-2-70b-chat": "gemma3-270m",
    "mistralai/mistral-7b-chat": "smollm2-135m",
}


def _closed_port() -> int:
    """A port nothing listens on: the local model servers are 'down' there."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(shared_data, out_dir, rename: dict[str, str] | None, per_task: int = 12):
    rb = shared_data / "routerbench"
    prompts = pd.read_csv(rb / "prompts_train.csv", dtype={"prompt_id": str})
    outcomes = pd.read_csv(rb / "outcomes_train.csv", dtype={"prompt_id": str})
    train = prompts.sample(frac=1.0, random_state=3).groupby("task").head(per_task)
    out = outcomes[outcomes.prompt_id.isin(train.prompt_id)]
    if rename:
        out = out[out.model.isin(rename)].assign(model=lambda d: d.model.map(rename))
    train[["prompt_id", "task", "prompt"]].to_csv(out_dir / "prompts.csv", index=False)
    out.to_csv(out_dir / "outcomes.csv", index=False)
    res = CliRunner().invoke(
        router_app,
        ["train", "--prompts", str(out_dir / "prompts.csv"), "--outcomes", str(out_dir / "outcomes.csv"),
         "--out", str(out_dir / "router"), "--embedder", "static"],
        env={"SM_RUN_DIR": str(out_dir / "run")},
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return out_dir / "router"


@pytest.fixture(scope="module")
def catalog_router(shared_data, tmp_path_factory):
    return _train(shared_data, tmp_path_factory.mktemp("catalog_router"), CATALOG_PANEL)


@cache
def _asgi_app():
    """One ASGI app per process (BentoML registers its metrics once); each lifespan makes a new service."""
    from serving.service import StratMaster

    return StratMaster.to_asgi()


class _Service:
    """The one running service instance, restarted when a test needs another environment."""

    def __init__(self) -> None:
        self.key: str | None = None
        self._client: TestClient | None = None
        self._mp: pytest.MonkeyPatch | None = None

    def get(self, key: str, env: dict[str, str]) -> TestClient:
        if self.key != key:
            self.close()
            self._mp = pytest.MonkeyPatch()
            for k in ("OPENAI_API_KEY", "SM_API_KEYS_FILE", "SM_ROUTER_DIR"):
                self._mp.delenv(k, raising=False)
            for k, v in env.items():
                self._mp.setenv(k, v)
            self._client = TestClient(_asgi_app(), raise_server_exceptions=False).__enter__()
            self.key = key
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.__exit__(None, None, None)
            self._mp.undo()
        self._client, self._mp, self.key = None, None, None


@pytest.fixture(scope="module")
def service():
    s = _Service()
    yield s
    s.close()


@pytest.fixture(scope="module")
def offline_env(catalog_router, tmp_path_factory) -> dict[str, str]:
    """Keys, the catalog router and local servers that are down (nothing listens on the port)."""
    return {
        "SM_ROUTER_DIR": str(catalog_router),
        "SM_API_KEYS": ",".join(KEYS),
        "SM_EMBEDDER": "static",
        "SM_RUN_DIR": str(tmp_path_factory.mktemp("svc_run")),
        "SM_LOCAL_BASE_PORT": str(_closed_port()),
        "SM_REQUEST_TIMEOUT_S": "5",
        "SM_NUM_RETRIES": "0",
    }


@pytest.fixture
def client(service, offline_env):
    return service.get("offline", offline_env)


def _no_trace(resp) -> None:
    assert "Traceback" not in resp.text and 'File "' not in resp.text


# -- health, auth, models ---------------------------------------------------------------------------------
def test_health_endpoints_are_open(client):
    assert client.get("/healthz").status_code == 200
    deadline = time.monotonic() + 60  # ready once the worker's start-up index opening has ended
    while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.get("/readyz").status_code == 200


def test_a_wrong_method_answers_in_openais_error_shape(client):
    """FastAPI's own 405 was {"detail": ...}: an OpenAI client could not read it."""
    r = client.get("/v1/chat/completions", headers=AUTH)
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error", r.text
    assert "POST" in r.headers["allow"]


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/v1/chat/completion", 404), ("POST", "/v1", 404), ("GET", "/nowhere", 404),
    ("GET", "/route", 405),
])  # fmt: skip
def test_an_unknown_path_or_a_method_outside_fastapi_answers_in_the_error_shape(client, method, path, status):
    """The outer router's 404 and 405 were plain text "Not Found" / "Method Not Allowed"."""
    r = client.request(method, path, headers=AUTH)
    assert r.status_code == status and r.json()["error"]["code"] == status, r.text
    assert f"{method} {path}" in r.json()["error"]["message"] or path.startswith("/v1/")  # FastAPI's own 404
    assert status == 404 or r.headers["allow"] == "POST"


def _live_timers() -> int:
    import asyncio
    import gc

    return sum(isinstance(o, asyncio.TimerHandle) and not o.cancelled() for o in gc.get_objects())


def test_answered_requests_leave_no_timeout_timer_behind(client):
    """BentoML's own middleware kept each request's timer (and its future, context and spans) for the whole
    traffic timeout, 300 s; serving/timeout.py cancels it once the answer is sent."""
    before = _live_timers()
    for _ in range(300):
        assert client.get("/livez").status_code == 200
    assert _live_timers() - before < 30


def test_the_request_timeout_still_answers_504():
    import asyncio

    from starlette.responses import PlainTextResponse

    from serving.timeout import TimeoutMiddleware

    async def slow(scope, receive, send):
        await asyncio.sleep(float(scope["path"].strip("/")))
        await PlainTextResponse("done")(scope, receive, send)

    c = TestClient(TimeoutMiddleware(slow, timeout=0.2))  # no lifespan: the app only speaks http
    assert c.get("/0").text == "done"
    r = c.get("/2")
    assert r.status_code == 504 and "0.2 seconds" in r.json()["error"]["message"], r.text
    assert r.json()["error"]["type"] == "timeout"  # OpenAI's error shape: the SDK reads error.message


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {KEYS[0]}"},
        {"Authorization": "Bearer "},
    ],
)
def test_every_api_endpoint_needs_a_valid_key(client, headers):
    for method, path, body in [
        ("GET", "/v1/models", None),
        ("GET", "/v1/models/router", None),
        ("POST", "/v1/route", {"prompt": "hi"}),
        (
            "POST",
            "/v1/chat/completions",
            {"model": "router", "messages": [{"role": "user", "content": "hi"}]},
        ),
    ]:
        r = client.request(method, path, json=body, headers=headers)
        assert r.status_code == 401, (path, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["type"] == "authentication_error"


def test_keys_come_from_a_file_and_compare_as_hashes(tmp_path, monkeypatch):
    from serving.security import ApiKeys

    f = tmp_path / "keys"
    f.write_text("# service keys\nfile-key\n")
    monkeypatch.setenv("SM_API_KEYS", "env-key")
    monkeypatch.setenv("SM_API_KEYS_FILE", str(f))
    keys = ApiKeys.from_env()
    assert keys.check("Bearer file-key") and keys.check("bearer env-key")
    assert not keys.check("Bearer file-key2") and not keys.check(None) and not keys.check("file-key")
    assert all(k not in repr(vars(keys)) for k in ("file-key", "env-key"))
    assert ApiKeys([]).check(None)  # no keys configured: auth is off
    f.write_text("# the keys were rotated out\n")  # set, but no key: auth went off with a warning only
    monkeypatch.delenv("SM_API_KEYS")
    with pytest.raises(ValueError, match="holds no key"):
        ApiKeys.from_env()
    monkeypatch.delenv("SM_API_KEYS_FILE")
    for empty in (" , ", ""):  # "" too: `docker run -e SM_API_KEYS=` with the host's variable unset
        monkeypatch.setenv("SM_API_KEYS", empty)
        with pytest.raises(ValueError, match="holds no key"):
            ApiKeys.from_env()
    monkeypatch.delenv("SM_API_KEYS")
    monkeypatch.setenv("SM_API_KEYS_FILE", "")
    with pytest.raises(ValueError, match="holds no key"):
        ApiKeys.from_env()


def test_models_lists_router_and_catalog_with_availability(client):
    r = client.get("/v1/models", headers=AUTH)
    assert r.status_code == 200
    data = {m["id"]: m for m in r.json()["data"]}
    assert {"router", "router:max_utility", "router:budget"} <= set(data)
    assert set(load_catalog().names()) <= set(data)
    assert data["smollm2-135m"]["stratmaster"]["available"] is True
    assert data["gpt-4o"]["stratmaster"] == {
        "privacy": "remote",
        "context_window": 128000,
        "available": False,
        "unavailable_reason": "OPENAI_API_KEY is not set",
    }


def test_one_model_is_retrieved_by_id_as_the_openai_sdk_asks(client):
    listed = {m["id"]: m for m in client.get("/v1/models", headers=AUTH).json()["data"]}
    for name in ("router", "router:budget", "smollm2-135m", "gpt-4o"):
        r = client.get(f"/v1/models/{name}", headers=AUTH)
        assert r.status_code == 200 and r.json() == listed[name], r.text
    budget = client.get("/v1/models/router:budget-0.25", headers=AUTH)  # any policy a chat request takes
    assert budget.status_code == 200 and budget.json() == {**listed["router"], "id": "router:budget-0.25"}
    assert client.get("/v1/models/", headers=AUTH).json()["data"] == list(listed.values())  # the list
    for unknown in ("gpt-5", "mistralai/mixtral-8x7b-chat", "router:nope", "router:budget-2"):
        r = client.get(f"/v1/models/{unknown}", headers=AUTH)
        assert r.status_code == 404, r.text
        error = r.json()["error"]
        assert error["code"] == "model_not_found" and error["param"] == "model"
        assert unknown in error["message"]


# -- /v1/route ------------------------------------------------------------------------------------------
def test_route_skips_panel_models_the_gateway_cannot_call(client):
    r = client.post("/v1/route", json={"prompt": "What is the capital of France?"}, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    cands = {c["model"]: c for c in body["routing"]["candidates"]}
    assert set(cands) == set(CATALOG_PANEL.values())
    assert body["model"] in LOCAL and body["routing"]["model"] == body["model"]
    for remote in ("gpt-4o", "gpt-4o-mini"):
        assert cands[remote]["excluded_by"] == "not_callable" and not cands[remote]["allowed"]
        assert "OPENAI_API_KEY" in cands[remote]["reason"]


def test_pii_prompt_is_routed_to_a_local_model_even_when_remote_is_callable(client, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")  # remote becomes callable; route only, no call
    plain = client.post("/v1/route", json={"prompt": "Write one line confirming the meeting."}, headers=AUTH)
    assert plain.status_code == 200
    assert all(c["allowed"] for c in plain.json()["routing"]["candidates"])
    r = client.post("/v1/route", json={"messages": [{"role": "user", "content": PII_PROMPT}]}, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] in LOCAL
    assert body["routing"]["signals"]["pii"] is True
    assert body["routing"]["signals"]["pii_entities"] == ["EMAIL_ADDRESS"]
    cands = {c["model"]: c for c in body["routing"]["candidates"]}
    assert cands["gpt-4o"]["excluded_by"] == cands["gpt-4o-mini"]["excluded_by"] == "pii_local_only"


def test_a_named_remote_model_keeps_the_rules_and_the_constraints(client, monkeypatch):
    """A request that named a catalog model skipped the rules: gpt-4o was sent a prompt with an e-mail
    address, a local_only request and one over its cost cap (a failed remote call fell back, so each got a
    200). The rules run first, whoever chose: a 422 that says which one, before any call."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")  # remote becomes callable; no call is made

    def chat(content: str, **constraints: object):
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": content}], "max_tokens": 8}
        return client.post("/v1/chat/completions", json={**body, "constraints": constraints}, headers=AUTH)

    r = chat(PII_PROMPT)
    assert r.status_code == 422 and "personal data (EMAIL_ADDRESS)" in r.text, r.text
    assert "jane.doe" not in r.text
    r = chat("2+2?", privacy="local_only")
    assert r.status_code == 422 and "gpt-4o is not a local model" in r.text, r.text
    r = chat("2+2?", max_cost_usd=0.0)
    assert r.status_code == 422 and "over max_cost_usd" in r.text, r.text


def test_route_policies_and_constraints(client):
    r = client.post("/v1/route", json={"prompt": "2+2?", "model": "router:max_utility"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["routing"]["policy"] == "max_utility"
    r = client.post("/v1/route", json={"prompt": "2+2?", "model": "router:budget-0.2"}, headers=AUTH)
    assert r.status_code == 200 and "20%" in r.json()["routing"]["explanation"]
    body = {"prompt": "2+2?", "constraints": {"privacy": "local_only"}}
    r = client.post("/v1/route", json=body, headers=AUTH)
    cands = {c["model"]: c for c in r.json()["routing"]["candidates"]}
    assert cands["gpt-4o"]["excluded_by"] == "local_only_requested"


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"prompt": "hi", "model": "router:nope"}, 400, "unknown routing policy"),
        ({"prompt": "hi", "model": "gpt-4o"}, 422, "'router' or 'router:<policy>'"),
        ({"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}, 422, "exactly one"),
        ({"prompt": "hi", "constraints": {"max_cost_usd": -1}}, 422, "constraints.max_cost_usd"),
        ({"prompt": "hi", "extra": 1}, 422, "extra"),
        ({"prompt": "x" * 8000, "constraints": {"privacy": "local_only"}}, 422, "No model can take"),
        # no length limit: a 500,000-character name came back whole in the error (and went into the span)
        ({"prompt": "hi", "model": "router:" + "x" * 500_000}, 422, "at most 200 characters"),
        # white space alone was routed (200) here, and refused on /v1/rag
        ({"prompt": " \n "}, 422, "`prompt` holds only white space"),
        ({"messages": [{"role": "user", "content": "  "}]}, 422, "content holds only white space"),
    ],
)
def test_route_errors_are_4xx_with_a_reason(client, body, status, needle):
    r = client.post("/v1/route", json=body, headers=AUTH)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]
    _no_trace(r)
    if status == 422 and "routing" in r.json()["error"]:  # the decision comes back with the refusal
        cands = {c["model"]: c["excluded_by"] for c in r.json()["error"]["routing"]["candidates"]}
        assert cands["smollm2-135m"] == cands["gemma3-270m"] == "context_window"


def test_a_typed_body_with_personal_data_in_a_key_leaves_it_out_of_the_log(client, caplog):
    """BentoML logs a typed method's invalid body with pydantic's error and traceback: the error names an
    unexpected key as sent (`hide_input_in_errors` hides only values), personal data included."""
    import logging

    with caplog.at_level(logging.INFO):
        r = client.post("/route", json={"prompt": "hi", PII_PROMPT: 1}, headers=AUTH)
    assert r.status_code == 400, r.text
    assert "ValidationError" in caplog.text and "jane" not in caplog.text
    # a client's mistake: logged at INFO, as its 400 in the access log is, not as the server's ERROR
    logged = [r for r in caplog.records if "ValidationError" in r.getMessage()]
    assert logged and all(r.levelno == logging.INFO for r in logged)


def test_only_bentoml_apps_4xx_is_logged_as_a_clients_mistake():
    """What reaches the server's own log (uvicorn's) escaped the app: a bug, at ERROR whatever its type."""
    import logging

    from pydantic import BaseModel, ValidationError

    from serving.http import TypeOnly

    class Body(BaseModel):
        prompt: str

    try:
        Body.model_validate({"prompt": 1})
    except ValidationError as e:
        exc_info = (type(e), e, e.__traceback__)
    levels = {}
    for name in ("bentoml._internal.server.http_app", "uvicorn.error"):
        record = logging.LogRecord(name, logging.ERROR, __file__, 1, "Exception", None, exc_info)
        TypeOnly().filter(record)
        levels[name] = record.levelno
    assert levels == {"bentoml._internal.server.http_app": logging.INFO, "uvicorn.error": logging.ERROR}


def test_typed_bentoml_route_gives_the_v1_decision_with_bentoml_errors(client):
    """POST /route is the typed `@bentoml.api` twin of /v1/route: same decision, BentoML's validation."""
    body = {"prompt": "What is the capital of France?"}
    typed, v1 = (
        client.post("/route", json=body, headers=AUTH),
        client.post("/v1/route", json=body, headers=AUTH),
    )
    assert typed.status_code == 200, typed.text
    assert typed.json()["model"] == v1.json()["model"] and typed.json()["chosen_by"] == v1.json()["chosen_by"]
    assert typed.json()["routing"]["candidates"] == v1.json()["routing"]["candidates"]
    assert client.post("/route", json=body).status_code == 401
    # checked before BentoML reads the body: with no key, the schema's 400 (and a traceback in the log)
    for path, bad in (("/route", {"prompt": 1}), ("/rag", {"question": ""})):
        r = client.post(path, json=bad)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
        assert r.json()["error"]["type"] == "authentication_error"
    # the first Authorization header counts, as in the method's own check; other methods are 405 as before
    valid, bad = ("authorization", AUTH["Authorization"]), ("authorization", "Bearer wrong")
    assert client.post("/route", json={"prompt": 1}, headers=[valid, bad]).status_code == 400
    assert client.post("/route", json={"prompt": 1}, headers=[bad, valid]).status_code == 401
    assert client.get("/route").status_code == 405
    for bad, needle in (({"prompt": "hi", "extra": 1}, "extra"), ({}, "exactly one")):
        r = client.post("/route", json=bad, headers=AUTH)
        assert r.status_code == 400 and needle in r.text, r.text
        _no_trace(r)
    r = client.post("/route", json={"prompt": "hi", "model": "router:nope"}, headers=AUTH)
    assert r.status_code == 400 and "unknown routing policy" in r.json()["error"]["message"], r.text
    # BentoML reads a typed method's body with no limit: 2 MiB of prompt was 27 s of PII detection, then 422
    for path in ("/route", "/rag"):
        big = (
            {"prompt": "call 415 555 0100 " * 120_000} if path == "/route" else {"question": "x" * (2 << 20)}
        )
        t0 = time.perf_counter()
        r = client.post(path, json=big, headers=AUTH)
        assert r.status_code == 413 and "exceeds" in r.json()["error"]["message"], r.text
        assert time.perf_counter() - t0 < 5


def test_a_typed_methods_failure_is_its_status_in_the_span(client, spans):
    """The typed methods caught their failure inside the request span, which recorded 200."""
    assert (
        client.post("/route", json={"prompt": "hi", "model": "router:nope"}, headers=AUTH).status_code == 400
    )
    assert dict(_named(spans, "request route").attributes)["http.response.status_code"] == 400
    assert client.post("/rag", json={"question": "x"}).status_code == 401
    assert dict(_named(spans, "request rag").attributes)["error.type"] == "authentication_error"


def test_typed_bentoml_rag_refuses_without_an_index(client):
    r = client.post("/rag", json={"question": "How tall is the Eiffel Tower?"}, headers=AUTH)
    assert r.status_code == 503 and int(r.headers["retry-after"]) > 0, r.text
    assert r.json()["error"]["type"] == "not_ready"
    _no_trace(r)
    assert client.post("/rag", json={"question": "x"}).status_code == 401


def test_a_panel_the_gateway_cannot_call_falls_back_to_a_local_model(shared_data, tmp_path):
    from serving.routing import ModelResolver, RoutingError

    router = load_router(_train(shared_data, tmp_path, None, per_task=6))
    resolver = ModelResolver(router, load_catalog())
    choice = resolver.resolve("router", PII_PROMPT, Constraints())
    assert choice.chosen_by == "panel_fallback" and choice.model in LOCAL
    assert choice.decision["binding"] == "panel_fallback"
    assert "has no model the gateway can call" in choice.decision["explanation"]
    # no local model takes 3,000 words either: a 422 whose decision chose nothing and says why, per model
    with pytest.raises(RoutingError) as e:
        resolver.resolve("router", "word " * 3000, Constraints())
    assert e.value.status == 422 and e.value.decision["model"] is None
    assert e.value.decision["explanation"] == str(e.value)
    assert all(f"{m}'s window (2048 tokens) is under the" in str(e.value) for m in LOCAL)
    # the request's latency SLO and cost cap hold for the fallback too: it called a model either rules out
    slow = dict.fromkeys(LOCAL, 9.0)
    assert resolver.resolve("router", PII_PROMPT, Constraints(latency_slo_s=10), slow).model in LOCAL
    for limits, said in ((Constraints(latency_slo_s=0.5), "recent p95 latency (9.00 s) breaks the 0.5 s SLO"),
                         (Constraints(max_cost_usd=0.0), "is over max_cost_usd ($0)")):  # fmt: skip
        with pytest.raises(RoutingError) as e:
            resolver.resolve("router", PII_PROMPT, limits, slow)
        assert e.value.status == 422 and all(f"{m}'s" in str(e.value) for m in LOCAL) and said in str(e.value)


def test_a_local_model_its_own_tokenizer_finds_too_small_is_not_chosen(shared_data, tmp_path):
    """1,224 Chinese characters: the router's estimate (a token each, + 256 to generate) fits SmolLM2's
    2,048-token window; SmolLM2's tokenizer counts about 2,000 and the gateway would refuse the call."""
    from pipelines.llm.gateway import Gateway
    from serving.routing import ModelResolver, RoutingError

    router = load_router(_train(shared_data, tmp_path, CATALOG_PANEL))
    gateway = Gateway(Settings(run_dir=tmp_path / "run"))
    prompt = "我们今天讨论了模型路由的成本和质量，以及如何在本地模型之间做出选择。" * 36
    # Gemma's recent p95 breaks the SLO: SmolLM2 is the one local candidate left
    args = ("router", prompt, Constraints(privacy="local_only", latency_slo_s=5.0), {"gemma3-270m": 9.0})
    estimated = ModelResolver(router, gateway.catalog).resolve(*args)
    assert estimated.model == "smollm2-135m"  # by the estimate alone: a call the gateway refuses
    assert estimated.decision["signals"]["tokens_needed"] == len(prompt) + 256
    with pytest.raises(RoutingError) as e:
        ModelResolver(router, gateway.catalog, gateway.own_prompt_tokens).resolve(*args)
    assert e.value.status == 422 and e.value.decision["model"] is None
    assert str(e.value).startswith("No model can take this request") and "context_window: " in str(e.value)
    cands = {c["model"]: c for c in e.value.decision["candidates"]}
    assert cands["smollm2-135m"]["excluded_by"] == "context_window" and not cands["smollm2-135m"]["allowed"]
    assert "smaller than the" in cands["smollm2-135m"]["reason"]
    assert cands["gemma3-270m"]["excluded_by"] == "latency_slo"
    # 30 turns of 34 characters: fits as one message; the gateway counts each turn's markers too
    from serving.routing import prompt_of

    sentence = "我们今天讨论了模型路由的成本和质量，以及如何在本地模型之间做出选择。"
    turns = prompt_of([{"role": "user", "content": sentence}] * 30)
    counted = ModelResolver(router, gateway.catalog, gateway.own_prompt_tokens)
    assert counted.resolve("router", turns, *args[2:]).model == "smollm2-135m"
    with pytest.raises(RoutingError, match="context_window"):
        counted.resolve("router", turns, *args[2:], turns=30)
    # remote models allowed but not callable (no key), Gemma too slow, SmolLM2 too small: the router's own
    # choice is dropped first, and the 422 says every reason
    with pytest.raises(RoutingError) as e:
        ModelResolver(router, gateway.catalog, gateway.own_prompt_tokens).resolve(
            "router", prompt, Constraints(latency_slo_s=5.0), {"gemma3-270m": 9.0}
        )
    assert e.value.decision["model"] is None and e.value.decision["binding"] == "not_callable"
    assert all(rule in str(e.value) for rule in ("not_callable", "latency_slo", "context_window"))
    # without the SLO, Gemma takes it wherever SmolLM2 ranked
    choice = ModelResolver(router, gateway.catalog, gateway.own_prompt_tokens).resolve(
        "router", prompt, Constraints(privacy="local_only")
    )
    assert choice.model == "gemma3-270m"


def test_a_rag_questions_sources_count_for_the_window(shared_data, tmp_path):
    """/v1/rag routed on the question alone: a long question whose sources overflowed SmolLM2's window was
    sent to it, and the gateway refused the call (a 400)."""
    from pipelines.llm.gateway import Gateway
    from pipelines.rag.answer import build_messages
    from pipelines.rag.retrieve import Hit
    from serving.routing import ModelResolver, RoutingError, prompt_of

    router = load_router(_train(shared_data, tmp_path, CATALOG_PANEL))
    gateway = Gateway(Settings(run_dir=tmp_path / "run"))
    resolver = ModelResolver(router, gateway.catalog, gateway.own_prompt_tokens)
    # 816 tokens by SmolLM2's count, 1,631 with 4 sources at the default 4,000 characters; 512 to generate
    question = "How does the router weigh the cost of a model against the quality of its answers? " * 47
    source = "Routing sends each prompt to the model with the best expected utility under constraints. " * 12
    hits = [Hit(f"d{i}#0", f"d{i}", 1.0, text=source) for i in range(4)]
    messages = build_messages(question, hits, 4000)
    sent, turns = prompt_of(messages), len(messages)
    local = Constraints(privacy="local_only", expected_output_tokens=512)
    slo = Constraints(privacy="local_only", expected_output_tokens=512, latency_slo_s=5.0)
    args = ("router", question, slo, {"gemma3-270m": 9.0})  # Gemma too slow: SmolLM2 is the one left
    assert resolver.resolve(*args).model == "smollm2-135m"  # the question alone fits
    assert "smaller than the" in resolver.overflow("smollm2-135m", sent, turns, args[2])
    assert resolver.overflow("smollm2-135m", question, 1, args[2]) is None
    with pytest.raises(RoutingError) as e:
        resolver.resolve(*args, turns=turns, sent=sent)
    assert e.value.status == 422 and "context_window" in str(e.value)
    assert resolver.resolve("router", question, local, turns=turns, sent=sent).model == "gemma3-270m"
    # Gemma's GGUF is not in this run folder: it has no count of its own, and the gateway's check counts by
    # gpt-3.5's tokenizer, as the service's resolver does (Gateway.prompt_tokens), which refused it: 2,048
    assert gateway.own_prompt_tokens("gemma3-270m", sent, turns) is None
    assert gateway.prompt_tokens("gemma3-270m", sent, turns) + 512 > 2048
    with pytest.raises(RoutingError) as e:
        ModelResolver(router, gateway.catalog, gateway.prompt_tokens).resolve(
            "router", question, local, turns=turns, sent=sent
        )
    assert e.value.status == 422 and "gemma3-270m's context window (2048 tokens)" in str(e.value)


def test_personal_data_in_a_rag_questions_sources_keeps_it_local(shared_data, tmp_path, monkeypatch):
    """/v1/rag routed on the question alone, and only the question was searched for personal data: sources
    holding an e-mail address (a corpus indexed without redaction, or with other settings) went to a remote
    model. The service now asks `exposes` and routes again on all it sends."""
    from pipelines.llm.gateway import Gateway
    from pipelines.rag.answer import build_messages
    from pipelines.rag.retrieve import Hit
    from serving.routing import ModelResolver, prompt_of

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")  # remote becomes callable; route only, no call
    router = load_router(_train(shared_data, tmp_path, CATALOG_PANEL))
    gateway = Gateway(Settings(run_dir=tmp_path / "run"))
    resolver = ModelResolver(router, gateway.catalog, gateway.own_prompt_tokens)
    question = "Which treatment reduced mortality in the trial, and by how much?"
    plain = "The trial randomised 400 patients; the treatment arm had 12% lower mortality at one year."
    private = "Results were sent to the trial lead, jane.doe@example.com, on the day the trial closed."
    clean = build_messages(question, [Hit(f"d{i}#0", f"d{i}", 1.0, text=plain) for i in range(2)], 4000)
    hits = [Hit("d0#0", "d0", 1.0, text=plain), Hit("d1#0", "d1", 1.0, text=private)]
    leaky = build_messages(question, hits)
    first = resolver.resolve("router", question, Constraints())
    assert first.model in {"gpt-4o", "gpt-4o-mini"}, first.model  # the question alone may go remote
    assert not resolver.exposes(first.model, prompt_of(clean))
    assert resolver.exposes(first.model, prompt_of(leaky))
    assert not resolver.exposes("smollm2-135m", prompt_of(leaky))
    again = resolver.resolve("router", question, Constraints(), turns=len(leaky), sent=prompt_of(leaky))
    assert again.model in LOCAL and again.decision["signals"]["pii_entities"] == ["EMAIL_ADDRESS"]
    cands = {c["model"]: c for c in again.decision["candidates"]}
    assert cands["gpt-4o"]["excluded_by"] == cands["gpt-4o-mini"]["excluded_by"] == "pii_local_only"
    same = resolver.resolve("router", question, Constraints(), turns=len(clean), sent=prompt_of(clean))
    assert same.model == first.model  # sources without personal data change nothing
    # a named model is not routed again: /v1/rag refuses it where its sources break the rules
    assert "personal data (EMAIL_ADDRESS)" in resolver.breaks_limits(
        "gpt-4o", prompt_of(leaky), Constraints(), {}
    )
    assert resolver.breaks_limits("gpt-4o", prompt_of(clean), Constraints(), {}) is None
    assert (
        resolver.breaks_limits("smollm2-135m", prompt_of(leaky), Constraints(privacy="local_only"), {})
        is None
    )
    slow = resolver.breaks_limits("gpt-4o", question, Constraints(latency_slo_s=2.0), {"gpt-4o": 3.5})
    assert slow == "gpt-4o's recent p95 latency (3.50 s) breaks the 2 s SLO"


# -- tracing -----------------------------------------------------------------------------------------------
@pytest.fixture
def spans():
    """Every span finished during the test, from the service's tracer provider (OTel's in-memory exporter)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider), "the service installs an SDK provider (exporter: file)"
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield memory
    memory.shutdown()


def _named(memory, name):
    found = [s for s in memory.get_finished_spans() if s.name == name]
    assert found, [s.name for s in memory.get_finished_spans()]
    return found[-1]


def _rag_where_search_raises(search, service, offline_env, monkeypatch, tmp_path) -> list:
    """/v1/rag and /rag answers of a service of its own (whose errors reach the test as they would the
    server) over a tiny real index whose keyword search is `search`."""
    from pipelines.index.keyword import TantivyIndex

    service.close()
    for k, v in offline_env.items():
        monkeypatch.setenv(k, v)
    _serve_a_tiny_index(tmp_path, monkeypatch)
    monkeypatch.setenv("SM_ROUTER_DIR", offline_env["SM_ROUTER_DIR"])
    monkeypatch.setattr(TantivyIndex, "search", search)
    key = {"Authorization": f"Bearer {KEYS[0]}"}
    with TestClient(_asgi_app(), raise_server_exceptions=True) as c:
        return [c.post(path, json={"question": PII_PROMPT}, headers=key) for path in ("/v1/rag", "/rag")]


def test_a_failed_retrieval_leaves_the_question_out_of_its_span_the_log_and_the_server(
    client, spans, service, offline_env, caplog, monkeypatch, tmp_path
):
    """A retrieval error's message went into the span's status (OpenTelemetry sets it from the exception by
    default) and, with its traceback, into the log: OpenSearch's 400 quotes the query it could not build, and
    with it the question's personal data. Starlette's handler for `Exception` answers, then raises the error
    again, and the server logged it whole ("Exception in ASGI application"); BentoML logged a typed method's
    failure whole too. The service, its router and a real index run; only the keyword engine's answer is
    OpenSearch's refusal (opensearch-py's own error), which no engine here gives."""
    import logging

    from opensearchpy.exceptions import RequestError

    def refusing(self, query, k=100):
        raise RequestError(400, "search_phase_execution_exception", f"failed to create query: {query}")

    with caplog.at_level(logging.ERROR):
        answers = _rag_where_search_raises(refusing, service, offline_env, monkeypatch, tmp_path)
    for r in answers:
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error", r.text
        _no_trace(r)
    assert caplog.text.count("unhandled RequestError") == 2 and "jane" not in caplog.text
    span = _named(spans, "retrieval")
    assert span.status.description == "RequestError" and "jane" not in json.dumps(span.to_json())


def test_only_a_connection_that_failed_counts_as_an_engine_outage():
    """The engines' clients wrap more than outages in their connection errors: qdrant-client a malformed
    answer (a pydantic error), opensearch-py any exception while sending. Those were 503 'retry later' with
    no traceback; an error raised while handling a connection error was one too."""
    import httpx
    import pydantic
    from opensearchpy.exceptions import ConnectionError as OSConnectionError
    from opensearchpy.exceptions import ConnectionTimeout, RequestError
    from qdrant_client.http.exceptions import ResponseHandlingException

    from pipelines.index.base import engine_unreachable

    try:
        pydantic.TypeAdapter(int).validate_python("high")
    except pydantic.ValidationError as e:
        malformed = e
    try:
        try:
            raise ConnectionRefusedError(111, "refused")
        except ConnectionRefusedError:
            raise KeyError("a bug while handling it") from None
    except KeyError as e:
        bug = e
    outages = [OSConnectionError("N/A", "refused", ConnectionRefusedError(111, "refused")),
               ConnectionTimeout("TIMEOUT", "read timed out", None),
               ResponseHandlingException(httpx.ConnectError("refused")), TimeoutError()]  # fmt: skip
    others = [ResponseHandlingException(malformed), OSConnectionError("N/A", "bug", KeyError("k")), bug,
              RequestError(400, "search_phase_execution_exception", "q"), FileNotFoundError()]  # fmt: skip
    assert [engine_unreachable(e) for e in outages] == [True] * 4
    assert [engine_unreachable(e) for e in others] == [False] * 5


def test_a_retrieval_engine_that_cannot_be_reached_is_a_503_with_retry_after(
    client, service, offline_env, caplog, monkeypatch, tmp_path
):
    """An engine's server gone after start-up (OpenSearch, Qdrant, Nebula) was a 500 with no Retry-After,
    logged as unhandled; one not up at start-up was already a 503. A real index and service run; only the
    keyword engine's answer is opensearch-py's own connection error, which no engine here gives."""
    import logging

    from opensearchpy.exceptions import ConnectionError as Unreachable

    def unreachable(self, query, k=100):
        raise Unreachable("N/A", "Connection refused", OSError(111, "Connection refused"))

    with caplog.at_level(logging.ERROR):
        answers = _rag_where_search_raises(unreachable, service, offline_env, monkeypatch, tmp_path)
    for r in answers:
        assert r.status_code == 503 and r.json()["error"]["type"] == "engine_unavailable", r.text
        assert r.headers["Retry-After"] == "10"
        _no_trace(r)
    assert caplog.text.count("a retrieval engine cannot be reached: ConnectionError") == 2
    assert "unhandled" not in caplog.text and "jane" not in caplog.text


def test_spans_record_no_free_text_the_client_sent_outside_the_body(client, spans):
    """A model name that is none was recorded as sent (gen_ai.request.model), and FastAPI's HTTP span
    recorded the query string and a 404's path: free text from the client, personal data perhaps."""
    chat = {"model": "jane.doe@example.com", "messages": [{"role": "user", "content": "hi"}]}
    assert client.post("/v1/chat/completions", json=chat, headers=AUTH).status_code == 404
    assert client.post("/v1/route?for=jane.doe%40example.com", json={"prompt": "hi"}, headers=AUTH).is_success
    assert client.get("/v1/jane.doe@example.com", headers=AUTH).status_code == 404
    assert client.post("/v1/route", json={"prompt": "hi"}, headers=AUTH).is_success
    found = [s.to_json() for s in spans.get_finished_spans()]
    assert not [s for s in found if "jane" in s]
    assert '"gen_ai.request.model": "other"' in _named(spans, "request chat.completions").to_json()
    http = [dict(s.attributes) for s in spans.get_finished_spans() if s.name.startswith("POST ")]
    assert len(http) == 2, http  # plain requests keep their HTTP span
    # a budget policy's fraction is recorded as sent only as a fraction: a card number was recorded whole
    for model, kept in (("router:budget-4111111111111111", False), ("router:budget-0.1555123456", False),
                        ("router:budget-0.25", True)):  # fmt: skip
        client.post("/v1/route", json={"prompt": "hi", "model": model}, headers=AUTH)
        recorded = dict(_named(spans, "route").attributes)["gen_ai.request.model"]
        assert recorded == (model if kept else "other"), (model, recorded)


def test_a_path_no_endpoint_has_is_no_metric_label(client, caplog):
    """BentoML's traffic metrics label a request by its path as sent: a 404 for any path (no key needed)
    put the path on the open /metrics, a new series each, and into BentoML's access log."""
    import logging

    from starlette.websockets import WebSocketDisconnect

    with caplog.at_level(logging.INFO):
        r = client.get("/jane.doe@example.com/x?y=jane")
        assert (
            r.status_code == 404
            and r.json()["error"]["message"] == "no such path: GET /jane.doe@example.com/x"
        )
        assert client.get("/v1/jane.doe@example.com").status_code == 404
        assert client.get("/static_content/jane.doe@example.com").status_code == 404
        with pytest.raises(WebSocketDisconnect):  # no endpoint takes a websocket: closed
            client.websocket_connect("/jane.doe@example.com/ws").__enter__()
        assert client.post("/v1/route", json={"prompt": "hi"}, headers=AUTH).is_success
        assert client.get("/v1/models", headers=AUTH).is_success
        assert client.get("/v1/models/jane.doe@example.com", headers=AUTH).status_code == 404
        assert client.get("/v1/models?who=jane.doe@example.com", headers=AUTH).is_success  # a query: hidden
        assert client.get("/v1/models/smollm2-135m", headers=AUTH).is_success
    metrics = client.get("/metrics").text
    assert [ln for ln in metrics.splitlines() if "jane" in ln] == []
    server_side = [r for r in caplog.records if not r.name.startswith("httpx")]  # not the test's client
    assert [r.getMessage() for r in server_side if "jane" in r.getMessage()] == []
    assert 'endpoint="/{unknown}"' in metrics and 'endpoint="/static_content/{file}"' in metrics
    assert 'endpoint="/v1/route"' in metrics and 'endpoint="/v1/models"' in metrics  # known paths as sent
    assert 'endpoint="/v1/models/{model_id}"' in metrics  # a parameter's template, not the id sent
    assert 'endpoint="/v1/models/smollm2-135m"' not in metrics


def test_route_spans_carry_the_decision_and_never_the_pii_prompt(client, spans):
    r = client.post("/v1/route", json={"messages": [{"role": "user", "content": PII_PROMPT}]}, headers=AUTH)
    assert r.status_code == 200
    request, route = _named(spans, "request route"), _named(spans, "route")
    assert route.parent.span_id == request.context.span_id
    attrs = dict(route.attributes)
    assert attrs["stratmaster.route.pii"] is True and attrs["stratmaster.route.model"] in LOCAL
    assert list(attrs["stratmaster.route.pii_entities"]) == ["EMAIL_ADDRESS"]
    assert attrs["gen_ai.request.model"] == "router" and attrs["stratmaster.route.chosen_by"] == "router"
    dumped = "".join(s.to_json() for s in spans.get_finished_spans())
    assert "jane.doe" not in dumped and "confirming the meeting" not in dumped
    body = {"prompt": "jane.doe@example.com", "model": "router:nope"}
    assert client.post("/v1/route", json=body, headers=AUTH).status_code == 400
    assert dict(_named(spans, "request route").attributes)["http.response.status_code"] == 400
    assert "jane.doe" not in "".join(s.to_json() for s in spans.get_finished_spans())


# -- /v1/chat/completions errors ---------------------------------------------------------------------------
MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("content", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (json.dumps({"model": "router", "messages": []}).encode(), 422, "messages"),
        (
            json.dumps({"model": "router", "messages": [{"role": "robot", "content": "x"}]}).encode(),
            422,
            "role",
        ),
        (json.dumps({"model": "router", "messages": MSG, "max_tokens": 0}).encode(), 422, "max_tokens"),
        # routed, then a 400 naming the model the router chose ("smollm2-135m: message 0 has empty content")
        (
            json.dumps({"model": "router", "messages": [{"role": "user", "content": " \t"}]}).encode(),
            422,
            "messages.0.content: Value error, a message's content holds only white space",
        ),
        # coerced: true was 1 token, "10" ten, "yes" a stream; a string format and the penalties were ignored
        (json.dumps({"model": "router", "messages": MSG, "max_tokens": True}).encode(), 422, "max_tokens"),
        (json.dumps({"model": "router", "messages": MSG, "stream": "yes"}).encode(), 422, "stream"),
        (json.dumps({"model": "router", "messages": MSG, "response_format": "json"}).encode(), 422, "'json'"),
        (
            json.dumps({"model": "router", "messages": MSG, "presence_penalty": 0.5}).encode(),
            422,
            "presence_penalty is not supported",
        ),
        (json.dumps({"model": "no-such-model", "messages": MSG}).encode(), 404, "unknown model"),
        (json.dumps({"model": "gpt-4o", "messages": MSG}).encode(), 400, "OPENAI_API_KEY is not set"),
        (json.dumps({"model": "router", "messages": MSG, "pad": "x" * (1 << 20)}).encode(), 413, "exceeds"),
        (
            b"[" * 100_000 + b"]" * 100_000,
            400,
            "not valid JSON",
        ),  # past the parser's recursion limit: was 500
        # 1e999 parses as inf: it passed validation, then no JSON response could carry it (500 after the call)
        (
            b'{"model": "router", "messages": [{"role": "user", "content": "hi"}], "constraints": '
            b'{"max_cost_usd": 1e999}}',
            422,
            "finite",
        ),  # fmt: skip
        # OpenAI options that would change the answer and cannot be honoured are refused, not ignored
        (json.dumps({"model": "router", "messages": MSG, "n": 2}).encode(), 422, "n:"),
        (
            json.dumps({"model": "router", "messages": MSG, "tools": [{"type": "function"}]}).encode(),
            422,
            "tools",
        ),
        (
            json.dumps(
                {"model": "router", "messages": MSG, "response_format": {"type": "json_object"}}
            ).encode(),
            422,
            "response_format",
        ),
        # the legacy functions were dropped, and logprobs asked for were never returned: both answered 200
        (
            json.dumps({"model": "router", "messages": MSG, "functions": [{"name": "f"}]}).encode(),
            422,
            "functions",
        ),
        (json.dumps({"model": "router", "messages": MSG, "logprobs": True}).encode(), 422, "logprobs"),
        # a text part of null (or an object) was sent to the model as the text "None"
        (
            json.dumps(
                {
                    "model": "router",
                    "messages": [{"role": "user", "content": [{"type": "text", "text": None}]}],
                }
            ).encode(),
            422,
            "needs a `text` string",
        ),  # fmt: skip
        (json.dumps({"model": "router", "messages": MSG, "stop": ["a", ""]}).encode(), 422, "stop"),
        (json.dumps({"model": "router", "messages": MSG, "stop": ""}).encode(), 422, "stop"),  # was sent on
        # a misspelt constraint was ignored: the prompt could reach a remote model the caller meant to exclude
        (
            json.dumps(
                {"model": "router", "messages": MSG, "constraints": {"privacy_mode": "local_only"}}
            ).encode(),
            422,
            "privacy_mode",
        ),
    ],
)
def test_chat_errors_are_4xx_with_a_reason(client, content, status, needle):
    r = client.post(
        "/v1/chat/completions", content=content, headers={**AUTH, "content-type": "application/json"}
    )
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]
    _no_trace(r)


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_failure_is_503_with_retry_after(client, stream):
    body = {"model": "smollm2-135m", "messages": MSG, "max_tokens": 2, "stream": stream}
    r = client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert r.status_code == 503, r.text
    assert int(r.headers["retry-after"]) >= Settings().cooldown_s  # the gateway benches the model that long
    assert r.json()["error"]["type"] == "upstream_unavailable"
    assert "litellm" not in r.text.lower() and "fallback to" not in r.text.lower()  # LiteLLM's own text
    _no_trace(r)


def test_without_a_router_model_router_is_a_404_not_an_outage(service, offline_env):
    """It was a 503 with Retry-After while /readyz said 200: the openai SDK retried for 20 s."""
    c = service.get("no router", {k: v for k, v in offline_env.items() if k != "SM_ROUTER_DIR"})
    chat = {"model": "router", "messages": MSG}
    for r in (c.post("/v1/route", json={"prompt": "hi"}, headers=AUTH),
              c.post("/v1/chat/completions", json=chat, headers=AUTH)):  # fmt: skip
        assert r.status_code == 404 and "retry-after" not in r.headers, r.text
        assert "no router is loaded" in r.json()["error"]["message"]


def test_rag_without_an_index_is_503_and_validates_first(client):
    r = client.post("/v1/rag", json={"question": "How tall is the Eiffel Tower?"}, headers=AUTH)
    assert r.status_code == 503 and int(r.headers["retry-after"]) > 0, r.text
    assert "index" in r.json()["error"]["message"]
    _no_trace(r)
    r = client.post("/v1/rag", json={"question": "x", "mode": "hybrid_graph"}, headers=AUTH)
    assert r.status_code == 422 and "mode" in r.json()["error"]["message"]
    r = client.post("/v1/rag", json={"question": " \n "}, headers=AUTH)  # was answered from 4 random sources
    assert r.status_code == 422 and "only white space" in r.json()["error"]["message"], r.text
    assert client.post("/v1/rag", json={"question": "x"}).status_code == 401
    r = client.post("/v1/rag", json={"question": "x", "model": "y" * 500_000}, headers=AUTH)
    assert r.status_code == 422 and len(r.content) < 2000, r.text[:300]  # was 404 quoting the name whole


# -- real local models ----------------------------------------------------------------------------------
BRIDGE = "The Golden Gate Bridge in San Francisco opened in 1937."


def _indexed(run, model_settings, texts: dict[str, str]):
    """`texts` (file name -> text) ingested and indexed (keyword + dense, static embedder) under `run`."""
    from pipelines.corpus.ingest import ingest_corpus
    from pipelines.index.build import build_dense_index, build_keyword_index

    docs = run / "docs"
    docs.mkdir()
    for name, text in texts.items():
        (docs / name).write_text(text)
    settings = model_settings.model_copy(update={"run_dir": run, "embedder": "static"})
    ingest_corpus(settings, str(docs))
    build_keyword_index(settings)
    build_dense_index(settings)
    return run


@pytest.fixture(scope="module")
def indexed_run_dir(model_settings, tmp_path_factory):
    """Two small documents ingested and indexed in the default places."""
    tower = "The Eiffel Tower in Paris is 330 metres tall and was finished in 1889."
    return _indexed(
        tmp_path_factory.mktemp("svc_live_run"), model_settings, {"tower.txt": tower, "bridge.txt": BRIDGE}
    )


def live_env(catalog_router, model_settings, indexed_run_dir) -> dict[str, str]:
    """The service on the real local models, the catalog router and the indexed run directory."""
    return {
        "SM_ROUTER_DIR": str(catalog_router),
        "SM_API_KEYS": KEYS[0],
        "SM_EMBEDDER": "static",
        "SM_RUN_DIR": str(indexed_run_dir),
        "SM_MODEL_CACHE_DIR": str(model_settings.model_cache_dir),
        "SM_LOCAL_BASE_PORT": str(model_settings.local_base_port),
        "SM_REQUEST_TIMEOUT_S": "60",
    }


@pytest.fixture
def live(service, catalog_router, model_settings, local_servers, indexed_run_dir):
    return service.get("live", live_env(catalog_router, model_settings, indexed_run_dir))


LIVE_AUTH = {"Authorization": f"Bearer {KEYS[0]}"}


@pytest.mark.models
def test_chat_with_router_answers_a_pii_prompt_locally(live):
    body = {"model": "router", "messages": [{"role": "user", "content": PII_PROMPT}], "max_tokens": 4}
    r = live.post("/v1/chat/completions", json=body, headers=LIVE_AUTH)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "chat.completion" and out["model"] in LOCAL
    assert isinstance(out["choices"][0]["message"]["content"], str)
    assert out["usage"]["completion_tokens"] >= 1 and out["usage"]["prompt_tokens"] > 0
    sm = out["stratmaster"]
    assert sm["chosen_by"] == "router" and sm["routing"]["signals"]["pii"] is True
    assert sm["routing"]["model"] == sm["requested_model"]
    metrics = live.get("/metrics").text
    assert f'stratmaster_routed_requests_total{{chosen_by="router",model="{out["model"]}"}}' in metrics
    assert "stratmaster_model_latency_seconds_bucket" in metrics


@pytest.mark.models
def test_chat_streams_server_sent_events(live):
    body = {"model": "smollm2-135m", "messages": MSG, "max_tokens": 4, "stream": True}
    with live.stream("POST", "/v1/chat/completions", json=body, headers=LIVE_AUTH) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert all(e["object"] == "chat.completion.chunk" and e["model"] == "smollm2-135m" for e in events)
    assert events[0]["stratmaster"]["chosen_by"] == "request" and events[0]["stratmaster"]["routing"] is None
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert events[-1]["usage"]["completion_tokens"] >= 1
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert text.strip()


@pytest.mark.models
def test_a_pii_chat_is_answered_locally_and_its_text_is_in_no_span(live, spans):
    for stream in (False, True):
        body = {"model": "router", "messages": [{"role": "user", "content": PII_PROMPT}], "max_tokens": 3,
                "stream": stream}  # fmt: skip
        r = live.post("/v1/chat/completions", json=body, headers=LIVE_AUTH)
        assert r.status_code == 200, r.text
        answer = r.text
        request, route = _named(spans, "request chat.completions"), _named(spans, "route")
        chat = [s for s in spans.get_finished_spans() if s.name.startswith("chat ")][-1]
        assert route.parent.span_id == chat.parent.span_id == request.context.span_id
        req, llm = dict(request.attributes), dict(chat.attributes)
        assert req["gen_ai.request.model"] == "router" and req["stratmaster.stream"] is stream
        assert req["gen_ai.response.model"] in LOCAL
        assert dict(route.attributes)["stratmaster.route.pii"] is True
        assert llm["gen_ai.request.model"] in LOCAL and llm["gen_ai.usage.output_tokens"] >= 1
        assert llm["gen_ai.usage.input_tokens"] > 0 and llm["stratmaster.cost_usd"] > 0
        assert req["gen_ai.usage.output_tokens"] == llm["gen_ai.usage.output_tokens"]
    dumped = "".join(s.to_json() for s in spans.get_finished_spans())
    assert "jane.doe" not in dumped and "example.com" not in dumped and "confirming the meeting" not in dumped
    assert answer  # the (streamed) answer text is in the response, and only there


@pytest.mark.models
def test_chat_prompts_are_logged_redacted_for_the_micro_bench(live, indexed_run_dir):
    from pipelines.bench.prompt_log import read_prompt_log

    too_long = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Never logged. " * 3000}]}
    assert live.post("/v1/chat/completions", json=too_long, headers=LIVE_AUTH).status_code == 400
    ssn = {
        "model": "router",
        "max_tokens": 2,
        "messages": [{"role": "user", "content": "My SSN is 536 22 8761."}],
    }
    assert live.post("/v1/chat/completions", json=ssn, headers=LIVE_AUTH).status_code == 200
    body = {"model": "router", "messages": [{"role": "user", "content": PII_PROMPT}], "max_tokens": 2}
    assert live.post("/v1/chat/completions", json=body, headers=LIVE_AUTH).status_code == 200
    log_dir = indexed_run_dir / "prompt_log"
    deadline = time.monotonic() + 60  # written off the request path; the first write builds Presidio
    while time.monotonic() < deadline and not any(
        "EMAIL_ADDRESS" in p.read_text() for p in log_dir.glob("*")
    ):
        time.sleep(0.5)
    raw = "".join(p.read_text() for p in log_dir.glob("*.jsonl"))
    assert "<EMAIL_ADDRESS> confirming the meeting" in raw and "jane.doe" not in raw
    assert "Never logged." not in raw  # a prompt the model refused is no sample (written in order: before)
    assert "8761" not in raw  # personal data to the router, which ingest's redaction leaves: not written
    rows, bad = read_prompt_log(log_dir)
    assert bad == 0 and "Write one line to <EMAIL_ADDRESS> confirming the meeting." in set(rows["prompt"])


class _ViaTestClient(httpx.BaseTransport):
    """An httpx transport that hands each request to the ASGI test client (the SDK needs an httpx.Client)."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        r = self.client.request(
            request.method, str(request.url), headers=dict(request.headers), content=request.read()
        )
        headers = [(k, v) for k, v in r.headers.items() if k.lower() != "content-encoding"]
        return httpx.Response(r.status_code, headers=headers, content=r.content)


@pytest.mark.models
def test_the_openai_sdk_works_unchanged(live):
    import openai

    transport = _ViaTestClient(live)
    sdk = openai.OpenAI(
        base_url="http://testserver/v1", api_key=KEYS[0], http_client=httpx.Client(transport=transport)
    )
    out = sdk.chat.completions.create(model="router", messages=MSG, max_tokens=3)
    assert out.model in LOCAL and out.usage.completion_tokens >= 1
    assert out.model_extra["stratmaster"]["routing"]["model"] == out.stratmaster["requested_model"]
    stream = sdk.chat.completions.create(model="router:max_utility", messages=MSG, max_tokens=3, stream=True)
    chunks = list(stream)
    assert chunks and all(c.model in LOCAL for c in chunks)
    assert chunks[0].model_extra["stratmaster"]["routing"]["policy"] == "max_utility"
    assert [m.id for m in sdk.models.list()][:1] == ["router"]
    assert sdk.models.retrieve("router:budget").id == "router:budget"
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("gpt-5")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url="http://testserver/v1", api_key="wrong", http_client=httpx.Client(transport=transport)
        ).models.list()


@pytest.mark.models
def test_rag_answers_with_citations_and_chunks(live):
    body = {"question": "How tall is the Eiffel Tower?", "k": 2, "max_tokens": 16}
    r = live.post("/v1/rag", json=body, headers=LIVE_AUTH)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["chunks"][0]["doc_id"] == "tower.txt" and out["chunks"][0]["scores"]
    assert set(out["citations"]) <= {c["chunk_id"] for c in out["chunks"]}
    assert out["citations_by"] in ("model", "overlap", "none")
    assert out["model"] in LOCAL and out["stratmaster"]["chosen_by"] == "router"
    assert isinstance(out["answer"], str) and out["stratmaster"]["usage"]["input_tokens"] > 20
    r = live.post("/v1/rag", json={"question": "zzqxv", "mode": "bm25"}, headers=LIVE_AUTH)
    assert r.status_code == 200 and r.json()["chunks"] == [] and r.json()["model"] is None, r.text  # was ""
    r = live.post("/rag", json=body, headers=LIVE_AUTH)  # the typed method reads the model's stream too
    assert r.status_code == 200 and r.json()["model"] in LOCAL and r.json()["chunks"], r.text


@pytest.mark.models
def test_rag_counts_its_sources_when_it_routes(live, gateway):
    """The router chose on the question alone: a long one that fit SmolLM2's window, its sources not, was
    sent to SmolLM2, which refused it (a 400). SmolLM2 is now dropped with its reason; Gemma, over the
    request's cost cap, was out already: a 422 naming both rules, and no model is called."""
    from pipelines.rag.answer import build_messages
    from pipelines.rag.retrieve import Hit
    from serving.routing import prompt_of

    # Chinese: the router's estimate (a token a character) is under SmolLM2's own count (about two)
    question = "埃菲尔铁塔有多高？它是哪一年建成的？设计师最初的计划和最后的高度相比有什么不同？" * 14
    body = {"question": question, "k": 2, "mode": "hybrid"}
    probe = live.post("/v1/rag", json={**body, "model": "smollm2-135m", "max_tokens": 1}, headers=LIVE_AUTH)
    assert probe.status_code == 200 and probe.json()["chunks"], probe.text
    hits = [Hit(**c) for c in probe.json()["chunks"]]
    messages = build_messages(question, hits, Settings().rag_context_chars)  # as the service sends them
    alone = gateway.own_prompt_tokens("smollm2-135m", question)
    sent = gateway.own_prompt_tokens("smollm2-135m", prompt_of(messages), len(messages))
    assert sent - alone > 20, (alone, sent)
    reserve = 2048 - (sent + alone) // 2  # SmolLM2's window takes the question alone, not with its sources
    constraints = {"privacy": "local_only", "expected_output_tokens": reserve}
    route = live.post("/v1/route", json={"prompt": question, "constraints": constraints}, headers=LIVE_AUTH)
    cost = {c["model"]: c["cost_usd"] for c in route.json()["routing"]["candidates"]}
    assert cost["smollm2-135m"] < cost["gemma3-270m"], cost
    constraints["max_cost_usd"] = (cost["smollm2-135m"] + cost["gemma3-270m"]) / 2
    route = live.post("/v1/route", json={"prompt": question, "constraints": constraints}, headers=LIVE_AUTH)
    assert route.status_code == 200 and route.json()["model"] == "smollm2-135m", route.text
    body = {**body, "max_tokens": reserve, "constraints": constraints}
    r = live.post("/v1/rag", json=body, headers=LIVE_AUTH)
    assert r.status_code == 422, r.text
    said = r.json()["error"]["message"]
    assert said.startswith("No model can take this request") and "context_window" in said, said
    assert "max_cost_usd" in said and "smollm2-135m's context window (2048 tokens)" in said, said
    assert "needed for the question with its sources" in said, said


@pytest.mark.models
def test_rag_sends_sources_with_personal_data_only_to_a_local_model(
    service, catalog_router, model_settings, local_servers, tmp_path
):
    """/v1/rag routed on the question alone: a source holding personal data went with the question to the
    remote model chosen for it. The service now routes again on all it sends. Here a phone number of 8 digits:
    ingest's redaction keeps it (it wants 9, as shorter runs in papers are mostly measurements), the router's
    check counts it (5 are enough to keep a prompt local)."""
    intake = "At night the patient reaches the duty nurse on 030 12345."
    run = _indexed(tmp_path, model_settings, {"intake.txt": intake, "bridge.txt": BRIDGE})
    env = {**live_env(catalog_router, model_settings, run), "OPENAI_API_KEY": "sk-test-not-used"}
    client = service.get("live, remote callable", env)  # route only: no remote model is called
    question = "Which treatment reduced mortality in the trial, and by how much?"
    alone = client.post("/v1/route", json={"prompt": question}, headers=LIVE_AUTH).json()
    assert alone["model"] in {"gpt-4o", "gpt-4o-mini"}, alone["routing"]["explanation"]
    body = {"question": question, "k": 2, "mode": "dense", "max_tokens": 4}  # both documents
    r = client.post("/v1/rag", json=body, headers=LIVE_AUTH)
    assert r.status_code == 200, r.text
    out = r.json()
    assert any("030 12345" in c["text"] for c in out["chunks"]), out["chunks"]  # as ingest kept it
    assert out["model"] in LOCAL and out["stratmaster"]["chosen_by"] == "router"
    routing = out["stratmaster"]["routing"]
    # before: gpt-4o was called (and, with this key, failed over to a local model)
    assert routing["model"] == out["model"] and not out["stratmaster"]["fallback_used"]
    assert routing["signals"]["pii_entities"] == ["PHONE_NUMBER"]
    cands = {c["model"]: c for c in routing["candidates"]}
    assert cands["gpt-4o"]["excluded_by"] == cands["gpt-4o-mini"]["excluded_by"] == "pii_local_only"


def test_each_worker_serves_rag_from_its_own_copy_of_the_local_qdrant_folder(tmp_path):
    """Qdrant's local mode locks its folder to one client: a second worker opening the same index failed
    every /v1/rag with 503 (SM_SERVICE_WORKERS=2). worker_index_dir gives each its own copy."""
    from pipelines.corpus.ingest import ingest_corpus
    from pipelines.corpus.store import LocalStore
    from pipelines.index.build import build_dense_index, build_keyword_index
    from pipelines.rag.retrieve import open_retriever
    from pipelines.settings import Settings
    from serving.artifacts import worker_index_dir

    settings = Settings(run_dir=tmp_path / "run", embedder="static")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "tower.txt").write_text("The Eiffel Tower in Paris is 330 metres tall.")
    (docs / "bridge.txt").write_text("The Golden Gate Bridge in San Francisco opened in 1937.")
    store, ix = LocalStore(tmp_path / "store"), tmp_path / "ix"
    ingest_corpus(settings, str(docs), store=store)
    build_keyword_index(settings, ix, store)
    build_dense_index(settings, ix, store)

    assert worker_index_dir(ix, 1) == ix
    first = open_retriever(settings, ix, store, modes=("hybrid",))
    try:
        with pytest.raises(RuntimeError, match="already open in another process"):
            open_retriever(settings, ix, store, modes=("hybrid",))
        copies = [worker_index_dir(ix, 2) for _ in range(2)]
        assert len({*copies, ix}) == 3
        for d in copies:
            r = open_retriever(settings, d, store, modes=("hybrid",))
            try:
                assert r.search("How tall is the Eiffel Tower?", k=1)[0].doc_id == "tower.txt"
            finally:
                r.close()
    finally:
        first.close()


def _serve_a_tiny_index(tmp_path, monkeypatch) -> None:
    """Indexes of one document in tmp_path/run, and the environment for a service to open them at start-up."""
    from pipelines.corpus.ingest import ingest_corpus
    from pipelines.index.build import build_dense_index, build_keyword_index
    from pipelines.index.embeddings import get_embedder
    from pipelines.settings import Settings

    run = tmp_path / "run"
    settings = Settings(run_dir=run, embedder="static")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "tower.txt").write_text("The Eiffel Tower in Paris is 330 metres tall.")
    ingest_corpus(settings, str(docs))
    build_keyword_index(settings)
    build_dense_index(settings)
    get_embedder.cache_clear()
    for k, v in {"SM_RUN_DIR": str(run), "SM_EMBEDDER": "static", "SM_API_KEYS": KEYS[0]}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("SM_ROUTER_DIR", raising=False)


def _wait_until(predicate, timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.1)
    return predicate()


def test_a_worker_opens_the_indexes_at_start_up_not_in_its_first_rag_request(tmp_path, monkeypatch):
    """The first /v1/rag of each worker paid for opening the indexes and loading the query embedder
    (seconds, with MiniLM): with two workers, the second one's first answer was the slowest of a load test."""
    from pipelines.index.embeddings import get_embedder
    from serving.service import StratMaster

    _serve_a_tiny_index(tmp_path, monkeypatch)
    svc = StratMaster.inner()
    frozen = gc.get_freeze_count()  # start-up froze what it loaded
    _wait_until(svc.__is_ready__)  # /readyz
    # ready only once the indexes are open (no request came): load is not sent while they still take CPU
    assert svc._retriever is not None, "ready, yet the indexes are not open"
    assert get_embedder.cache_info().currsize == 1  # and the query embedder loaded
    assert gc.get_freeze_count() > frozen  # and both left the collector's sight, as start-up's objects do
    try:
        assert svc._retriever.search("How tall is the Eiffel Tower?", k=1)[0].doc_id == "tower.txt"
    finally:
        svc._retriever.close()


def test_readyz_waits_for_every_worker(tmp_path, monkeypatch):
    """BentoML answers /readyz from whichever worker takes the request. With SM_SERVICE_WORKERS=2, one ready
    worker said 200 while its sibling was still opening its indexes (and got its share of the traffic).
    Here two service instances play workers 1 and 2 (the index `bentoml serve` gives each); the real
    two-worker `bentoml serve` marking itself ready is checked in test_serving_bundle.py."""
    from bentoml._internal.context import server_context

    from serving.readiness import Readiness
    from serving.service import StratMaster

    _serve_a_tiny_index(tmp_path, monkeypatch)
    monkeypatch.setenv("SM_SERVICE_WORKERS", "2")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the workers mark themselves ready
    monkeypatch.setattr(server_context, "worker_index", 1)  # as `bentoml serve` sets it in worker 1
    first = StratMaster.inner()
    workers = [first]
    try:
        assert _wait_until(lambda: first._readiness._ready), "worker 1 never opened its indexes"
        assert not first.__is_ready__()  # worker 2 has not started
        monkeypatch.setattr(server_context, "worker_index", 2)
        workers.append(StratMaster.inner())
        assert _wait_until(lambda: all(w.__is_ready__() for w in workers))
        Readiness(2, 2)  # worker 2 died and circus started another in its place: not ready until it opens
        assert not first.__is_ready__()
    finally:
        for w in workers:
            if w._retriever is not None:
                w._retriever.close()


def test_openai_request_forms_are_read_as_openai_means_them():
    """null temperature and stream, text content parts and the developer role are valid OpenAI requests
    that were refused with 422; a validation error quotes no input (BentoML logs a typed method's error)."""
    from pydantic import ValidationError

    from serving.schemas import ChatRequest, RagRequest

    parts = [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]
    req = ChatRequest.model_validate({
        "model": "router", "temperature": None, "stream": None, "stop": "###", "n": 1,
        "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": parts}],
    })  # fmt: skip
    assert req.message_dicts() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi\nthere"},
    ]
    assert not req.stream and req.sampling() == (0.0, {"stop": ["###"]})
    assert ChatRequest.model_validate({"model": "m", "messages": MSG}).sampling() == (0.0, {})
    with pytest.raises(ValidationError, match="only text content parts"):
        ChatRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}
        )
    with pytest.raises(ValidationError) as e:
        RagRequest.model_validate({"question": f"My card is 4111 1111 1111 1111. {'x' * 4000}"})
    assert "4111" not in str(e.value)


def test_routing_reserves_the_tokens_the_request_may_generate():
    """model=router reserved 256 output tokens whatever max_tokens said: a long prompt with max_tokens=50
    was refused as too long for every local model, and max_tokens=8000 was routed to a 2,048-token one."""
    from serving.schemas import ChatRequest, RagRequest

    chat = ChatRequest.model_validate({"model": "router", "messages": MSG, "max_tokens": 50})
    assert chat.routing_constraints().expected_output_tokens == 50
    default = ChatRequest.model_validate({"model": "router", "messages": MSG}).routing_constraints()
    assert default.expected_output_tokens == Constraints().expected_output_tokens
    mine = {
        "model": "router",
        "messages": MSG,
        "max_tokens": 50,
        "constraints": {"expected_output_tokens": 9},
    }
    # a smaller reserve than max_tokens chose models the gateway then refused (a 400, "context overflow")
    assert ChatRequest.model_validate(mine).routing_constraints().expected_output_tokens == 50
    mine["constraints"] = {"expected_output_tokens": 80}  # a larger one stands
    assert ChatRequest.model_validate(mine).routing_constraints().expected_output_tokens == 80
    rag = RagRequest.model_validate({"question": "q", "max_tokens": 1000})
    assert rag.routing_constraints().expected_output_tokens == 1000


@pytest.mark.models
@pytest.mark.parametrize("spec", ["2.3", "2.4"])
def test_a_client_that_leaves_a_stream_closes_the_model_call_and_ends_the_spans(client, gateway, spans, spec):
    """Starlette neither resumes nor closes a body whose client left: the llama.cpp slot kept generating
    for nobody and the request and model spans stayed open (the client gone before the first event: forever).
    ASGI 2.3 servers say so by a disconnect message, 2.4 ones by an OSError from send."""
    import contextlib

    import anyio
    from starlette.requests import ClientDisconnect

    from pipelines.tracing import tracer
    from serving.routing import Choice
    from serving.sse import chat_response
    from serving.streaming import ChatStream

    messages = [{"role": "user", "content": "Count from 1 to 300, one number per line."}]
    stream = ChatStream(gateway, "smollm2-135m", messages, 400, 0.0)
    response = chat_response(
        stream, Choice("smollm2-135m", "request", None), tracer().start_span("request t")
    )
    sent = []

    async def receive():
        if spec == "2.3":
            return {"type": "http.disconnect"}  # gone at once
        await anyio.sleep(3600)

    async def send(message):
        sent.append(message)
        if spec == "2.4" and message["type"] == "http.response.body":
            raise OSError("the client left")  # after the first event

    with contextlib.suppress(ClientDisconnect):
        anyio.run(response, {"type": "http", "asgi": {"spec_version": spec}}, receive, send)
    assert stream._call._ended and stream._call.result is None  # closed, not read to the end
    _named(spans, "request t")  # ended
    model = dict(_named(spans, "chat smollm2-135m").attributes)
    assert model["stratmaster.stream_closed_early"] is True
    assert not any(m.get("more_body") is False for m in sent)  # the stream never reached its end


@pytest.mark.models
def test_a_client_that_leaves_a_plain_chat_stops_the_model(live, spans):
    """The call ran in a worker thread nothing cancelled: the llama.cpp slot wrote 400 tokens for nobody."""
    import anyio

    count = [{"role": "user", "content": "Count from 1 to 300, one number per line."}]
    body = {"model": "smollm2-135m", "max_tokens": 400, "messages": count}
    raw = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
               (b"authorization", LIVE_AUTH["Authorization"].encode())]  # fmt: skip
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/chat/completions",
             "raw_path": b"/v1/chat/completions", "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 5000), "server": ("testserver", 80)}  # fmt: skip
    asked, sent = [], []

    # the body, then a disconnect 0.3 s later: uvicorn's receive waits for one and returns it at once (no
    # await) once the client has gone. Greedy as it is, the model sometimes stops by itself after 77 tokens
    # (llama.cpp's sums differ with what else its server holds): about 0.8 s, which a 1 s disconnect missed
    async def receive():
        asked.append(time.monotonic())
        if len(asked) == 1:
            return {"type": "http.request", "body": raw, "more_body": False}
        if time.monotonic() < asked[0] + 0.3:
            await anyio.sleep(asked[0] + 0.3 - time.monotonic())
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    t0 = time.monotonic()
    live.portal.call(live.app, scope, receive, send)
    took = time.monotonic() - t0
    assert sent[0]["status"] == 499, (took, sent[0])  # 200: the model finished before the client left
    model = dict(_named(spans, "chat smollm2-135m").attributes)
    assert model["stratmaster.stream_closed_early"] is True and took < 4, took  # 400 tokens: 4-5 s


@pytest.mark.models
def test_the_callers_stop_strings_reach_the_model(live):
    body = {"model": "smollm2-135m", "messages": MSG, "max_tokens": 24}
    r = live.post("/v1/chat/completions", json=body, headers=LIVE_AUTH)
    full = r.json()["choices"][0]["message"]["content"]
    words = full.split()
    assert len(words) >= 4, full
    stop = words[3]
    r = live.post("/v1/chat/completions", json={**body, "stop": [stop]}, headers=LIVE_AUTH)
    cut = r.json()["choices"][0]["message"]["content"]
    assert r.status_code == 200 and stop not in cut and full.startswith(cut.strip()) and len(cut) < len(full)
