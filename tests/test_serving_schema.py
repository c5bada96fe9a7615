"""Schemathesis against the service's own OpenAPI document (BentoML's /docs.json): no input gives a 5xx.

The service runs in-process (`StratMaster.to_asgi()`), with the real local model servers, a tiny router and a
two-document index, so valid requests go all the way to a model. Token budgets are cut to a few tokens so
each generated call stays short; everything else is as schemathesis generates it.
"""

from __future__ import annotations

import os
import tempfile
import time

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="sm-prom-"))  # as `bentoml serve`
os.environ.setdefault("BENTOML_HOME", tempfile.mkdtemp(prefix="sm-bentoml-"))  # an empty model store

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from test_serving_service import (  # noqa: F401  (fixtures)
    KEYS,
    catalog_router,
    indexed_run_dir,
    live_env,
    service,
)

AUTH = {"Authorization": f"Bearer {KEYS[0]}"}
MAX_TOKENS = 4


@pytest.fixture(scope="module")
def live_client(service, catalog_router, model_settings, local_servers, indexed_run_dir):  # noqa: F811
    """The service once /readyz says so, as a deployment probes it: the worker opens the indexes and loads
    the query embedder as it starts (int8 MiniLM calibrates on its first use, about 20 s), and /readyz is
    503 until then, which this test counted as a server error when it ran before any test had loaded it."""
    client = service.get("schema", live_env(catalog_router, model_settings, indexed_run_dir))
    deadline = time.monotonic() + 300
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the service was not ready within 300 s"
        time.sleep(0.5)
    return client


def _short(body):
    """Cap the tokens a generated chat or RAG call may generate (the one change made to a generated case)."""
    if isinstance(body, dict) and isinstance(body.get("messages") or body.get("question"), list | str):
        for key in ("max_tokens", "max_completion_tokens"):
            v = body.get(key)
            if isinstance(v, int) and not isinstance(v, bool) and v > MAX_TOKENS:
                body[key] = MAX_TOKENS
        if "max_tokens" not in body and "max_completion_tokens" not in body:
            body["max_tokens"] = MAX_TOKENS
    return body


def _call(client, case):
    case.body = _short(case.body)
    kwargs = case.as_transport_kwargs(base_url="http://testserver", headers=AUTH)
    return client.request(
        kwargs["method"],
        kwargs["url"],
        headers=kwargs.get("headers"),
        params=kwargs.get("params"),
        content=kwargs.get("data"),
        json=kwargs.get("json"),
    )


@pytest.mark.models
def test_no_generated_request_gets_a_server_error(live_client):
    # schemathesis' pytest plugin (`from_fixture`) does not run on pytest 9, so each operation's strategy is
    # driven by hypothesis directly: the same generated cases, positive and negative
    schema = schemathesis.openapi.from_dict(live_client.get("/docs.json").json())
    operations = [r.ok() for r in schema.get_all_operations()]
    paths = {op.path for op in operations}
    assert {"/v1/chat/completions", "/v1/route", "/v1/rag", "/v1/models"} <= paths
    seen: dict[int, int] = {}
    for op in operations:
        if op.path == "/metrics":  # Prometheus text, no inputs
            continue

        strategy = op.as_strategy(GenerationMode.POSITIVE)
        if op.method.upper() == "POST":
            strategy = strategy | op.as_strategy(GenerationMode.NEGATIVE)

        @given(case=strategy)
        @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)  # fmt: skip
        def check(case):
            response = _call(live_client, case)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            assert response.status_code < 500, (
                case.as_curl_command(),
                response.status_code,
                response.text[:300],
            )
            assert "Traceback" not in response.text

        check()
    assert 200 in seen and any(400 <= s < 500 for s in seen), seen  # both valid and invalid inputs were sent
