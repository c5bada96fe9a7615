"""The gateway against the real local llama.cpp servers (no mocks)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from conftest import free_port_pair, free_ports
from typer.testing import CliRunner

from pipelines.llm import servers
from pipelines.llm.catalog import Catalog, ModelEntry, load_catalog
from pipelines.llm.gateway import Gateway, GatewayError
from pipelines.settings import Settings
from serving.routing import has_system

pytestmark = pytest.mark.models
HELLO = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
PENALTY_PROMPTS = [
    [{"role": "user", "content": text}]
    for text in ("Write a short poem about the sea.", "Write a long story about a cat and a dog.")
]


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_chat_through_the_gateway_returns_text_usage_cost_latency(gateway, name):
    r = gateway.chat(name, HELLO, max_tokens=16)
    assert r.text.strip(), "empty answer"
    assert r.model == name and not r.fallback_used
    assert r.input_tokens > 5 and 0 < r.output_tokens <= 16
    assert r.cost_usd > 0
    assert 0 < r.ttft_s <= r.latency_s
    assert "<start_of_turn>" not in r.text and "<|im_start|>" not in r.text  # chat templates applied


def test_local_models_are_not_called_through_an_environments_proxy(
    local_servers, model_settings, monkeypatch
):
    """With HTTP_PROXY set (as on a corporate machine), every call to the local servers went to the proxy and
    failed: "no connection to the model server"."""
    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # nothing listens there
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    gw = Gateway(model_settings, local_servers)
    assert gw.chat("smollm2-135m", HELLO, max_tokens=4).output_tokens > 0
    assert "".join(gw.stream("smollm2-135m", HELLO, max_tokens=4))


def test_the_proxy_bypass_keeps_the_users_no_proxy_list(monkeypatch):
    """Its first form wrote each spelling from its own value: NO_PROXY=internal.corp alone gained a no_proxy
    without it, which clients read first (internal.corp went to the proxy); `*` gained hosts and stopped
    meaning every host."""
    import urllib.request

    from pipelines.llm.gateway import bypass_proxy

    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setenv("NO_PROXY", "internal.corp")
    bypass_proxy("127.0.0.1")
    assert os.environ["no_proxy"] == os.environ["NO_PROXY"] == "internal.corp,127.0.0.1,localhost"
    assert urllib.request.proxy_bypass_environment("internal.corp")
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.delenv("no_proxy")
    bypass_proxy("127.0.0.1")
    assert os.environ["NO_PROXY"] == "*" and "no_proxy" not in os.environ


def test_prompt_tokens_counts_a_remote_models_chat_as_the_window_check_does(tmp_path):
    """Where a model has no tokenizer of its own (a remote one), the check counts the messages by gpt-3.5's;
    the service's resolver counted their joined text so and added 8 tokens a turn, 422 more than the check
    for 101 messages: it refused chats the gateway takes."""
    import litellm

    from serving.routing import prompt_of

    gw = Gateway(Settings(run_dir=tmp_path / "run"))
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"def f{i}(x):\n    return x * {i}"}
             for i in range(101)]  # fmt: skip
    checked = int(litellm.token_counter(model="gpt-3.5-turbo", messages=turns))
    counted = gw.prompt_tokens("llama-3-70b-vllm", prompt_of(turns), len(turns))
    assert counted is not None and abs(counted - checked) <= len(turns) * 0.1, (counted, checked)
    assert gw.own_prompt_tokens("llama-3-70b-vllm", prompt_of(turns), len(turns)) is None
    assert gw.prompt_tokens("no-such-model", "hi") is None


def test_non_streamed_call_has_usage_too(gateway):
    r = gateway.chat("smollm2-135m", HELLO, max_tokens=8, stream=False)
    assert r.output_tokens > 0 and r.ttft_s is None


@pytest.mark.parametrize("model", ["smollm2-135m", "gemma3-270m"])
def test_the_window_check_counts_the_prompt_the_server_reads(gateway, model):
    """It counted 8 tokens a turn, short of what the servers' chat templates add (a default system prompt
    where the caller gives none): 14 tokens for SmolLM2 and 22 for Gemma, so a max_tokens that passed the
    check could run past the window."""
    entry = gateway.catalog.get(model)
    for messages in (
        [{"role": "user", "content": "Name a prime number between 10 and 20."}],
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a colour."},
         {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another <|im_end|> one?"}],
        [{"role": "user", "content": "Name a colour."}, {"role": "system", "content": "Answer briefly."}],
    ):  # fmt: skip
        served = gateway.chat(model, messages, max_tokens=1, stream=False).input_tokens
        assert gateway._prompt_tokens(entry, messages) == served, messages
        # the service's router counts the joined prompt: never less, and, where the request opens with a
        # system message, no default one (it had routed away from prompts the gateway would take). A system
        # message further in is one template's and not the other's: counted as none, so at most over
        joined, system = "\n\n".join(m["content"] for m in messages), has_system(messages)
        routed = gateway.own_prompt_tokens(model, joined, len(messages), system)
        assert routed is not None and served <= routed, (routed, served)
        if system or all(m["role"] != "system" for m in messages):
            assert routed <= served + 4 * len(messages), (routed, served)


def test_unknown_model_names_the_catalog(gateway):
    with pytest.raises(GatewayError, match="unknown model 'gpt-17'.*smollm2-135m"):
        gateway.chat("gpt-17", HELLO)


@pytest.mark.parametrize("messages", [[], [{"role": "user", "content": "   "}], [{"content": "hi"}]])
def test_empty_or_malformed_messages_are_refused(gateway, messages):
    with pytest.raises(GatewayError, match="smollm2-135m"):
        gateway.chat("smollm2-135m", messages)


@pytest.mark.parametrize("max_tokens", [-1, 0, None, 2.5, True])
def test_max_tokens_must_be_a_whole_number_of_at_least_one(gateway, max_tokens):
    """-1 reached llama-server as "no limit" (2,010 tokens in 60 s); None was a TypeError."""
    with pytest.raises(GatewayError, match="max_tokens must be a whole number"):
        gateway.chat("smollm2-135m", HELLO, max_tokens=max_tokens)


def test_recent_latency_p95_is_the_nearest_rank(model_settings):
    """The index was rounded down: of two calls the faster was the p95, and one 20 s stall in ten calls
    left the p95 at 0.2 s, so the latency rule never saw it."""
    from pipelines.llm.gateway import LATENCY_WINDOW_S

    gw = Gateway(model_settings)
    gw._latencies["smollm2-135m"].append((time.monotonic() - LATENCY_WINDOW_S - 1, 60.0))  # too old to count
    assert gw.recent_latency_p95("smollm2-135m") is None
    for i, lat in enumerate([0.1, 5.0, *[0.2] * 8, 20.0]):
        gw._latencies["smollm2-135m"].append((time.monotonic(), lat))
        if i == 1:
            assert gw.recent_latency_p95("smollm2-135m") == 5.0
    assert gw.recent_latency_p95("smollm2-135m") == 20.0


def test_context_overflow_is_a_clear_error(gateway):
    long = [{"role": "user", "content": "word " * 5000}]
    t0 = time.perf_counter()
    with pytest.raises(GatewayError, match="smollm2-135m: context overflow"):
        gateway.chat("smollm2-135m", long)
    assert time.perf_counter() - t0 < 5


def test_an_overflow_the_model_server_finds_says_its_sizes_and_nothing_of_litellm(gateway, model_settings):
    """A catalog whose window is larger than the server's (SM_LOCAL_CTX) passes the gateway's own check and
    overflows on the server: the error carried LiteLLM's text, deployments and fallbacks named."""
    entries = [e.model_copy(update={"context_window": 8192}) for e in gateway.catalog.models]
    wide = Gateway(model_settings.model_copy(update={"num_retries": 0}), Catalog(models=entries))
    digits = [{"role": "user", "content": "Sum: " + " ".join(f"{i:010d}" for i in range(300))}]
    with pytest.raises(GatewayError, match=r"context overflow: \d+ prompt tokens for a context of 2048") as e:
        wide.chat("smollm2-135m", digits, max_tokens=8)
    assert "litellm" not in str(e.value).lower() and "fallback" not in str(e.value).lower()


def test_the_window_check_counts_with_the_models_own_tokenizer(gateway):
    """gpt-3.5's tokenizer counted this Chinese prompt at 2,170 tokens, and Gemma's 2,048-token window
    refused it; Gemma's own tokenizer reads it as about 1,100. Digits, which gpt-3.5 reads three a token,
    are a token each to SmolLM2: the gateway now refuses them itself, with no call."""
    chinese = [{"role": "user", "content": "阿司匹林可以降低心脏病发作的风险和中风的风险。" * 60}]
    assert 900 < gateway._prompt_tokens(gateway.catalog.get("gemma3-270m"), chinese) < 1300
    r = gateway.chat("gemma3-270m", chinese, max_tokens=4)
    assert r.model == "gemma3-270m" and r.input_tokens < 1300
    digits = [{"role": "user", "content": "Sum: " + " ".join(f"{i:010d}" for i in range(300))}]
    with pytest.raises(GatewayError, match="smollm2-135m: context overflow: about 3"):
        gateway.chat("smollm2-135m", digits, max_tokens=8)


def test_unavailable_model_says_which_variable(gateway, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(GatewayError, match="gpt-4o.*OPENAI_API_KEY is not set"):
        gateway.chat("gpt-4o", HELLO)


def test_a_hanging_server_times_out_with_the_model_named(model_settings):
    """A TCP server that accepts and never answers: the call fails within the timeout, naming the model."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(srv.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    entry = ModelEntry(name="stuck", litellm_model="hosted_vllm/stuck", provider="vllm", privacy="local",
                       context_window=4096, cost_per_1k_input_usd=0.001, cost_per_1k_output_usd=0.001,
                       api_base=f"http://127.0.0.1:{port}/v1")  # fmt: skip
    gw = Gateway(model_settings.model_copy(update={"request_timeout_s": 2, "num_retries": 0}),
                 Catalog(models=[entry]))  # fmt: skip
    t0 = time.perf_counter()
    try:
        with pytest.raises(GatewayError, match="stuck: call failed.*Timeout"):
            gw.chat("stuck", HELLO)
    finally:
        stop.set()
        for c in held:
            c.close()
        srv.close()
    assert time.perf_counter() - t0 < 15


@contextlib.contextmanager
def _quoting_server(status: int):
    """An HTTP server that answers every POST with `status` and an error body quoting the request, as
    pydantic/FastAPI errors do."""
    import http.server
    import json

    class Quoting(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            out = json.dumps({"error": {"message": f"cannot serve {body.decode()}"}}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quoting)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield ModelEntry(
            name="quoting", litellm_model="hosted_vllm/quoting", provider="vllm", privacy="local",
            context_window=4096, cost_per_1k_input_usd=0.001, cost_per_1k_output_usd=0.001,
            api_base=f"http://127.0.0.1:{srv.server_address[1]}/v1",
        )  # fmt: skip
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_stream_the_server_cuts_short_is_an_error_not_a_whole_answer(model_settings):
    """A server whose stream closed after one chunk, with no finish reason and no [DONE]: LiteLLM ended it
    as if the model had stopped, and the service told its client "finish_reason": "stop" for half an
    answer. A stream that ends with its finish reason is an answer."""
    import http.server
    import json

    def chunk(delta: dict, finish: str | None) -> bytes:
        body = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
        return f"data: {json.dumps(body)}\n\n".encode()

    class Streams(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the body ends where the connection closes

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self.wfile.write(chunk({"role": "assistant", "content": "Hello"}, None))
            if self.server.whole:
                self.wfile.write(chunk({}, "length") + b"data: [DONE]\n\n")

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Streams)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        entry = ModelEntry(
            name="cut", litellm_model="openai/cut", provider="vllm", privacy="local", context_window=4096,
            cost_per_1k_input_usd=0.001, cost_per_1k_output_usd=0.001, api_base=f"http://127.0.0.1:{srv.server_address[1]}/v1",
        )  # fmt: skip
        gw = Gateway(model_settings.model_copy(update={"num_retries": 0}), Catalog(models=[entry]))
        srv.whole = False
        with pytest.raises(
            GatewayError, match="cut: the stream broke after it started .it ended with no finish"
        ):
            gw.chat("cut", HELLO, max_tokens=8, stream=True)
        srv.whole = True
        r = gw.chat("cut", HELLO, max_tokens=8, stream=True)
        assert (r.text, r.finish_reason) == ("Hello", "length")
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("status", [413, 422])
def test_a_request_the_server_cannot_process_is_refused_not_an_outage(model_settings, status):
    """A 422 was 'answered 400' and a 413 a failed call (the service's client was told to retry later).
    Through LiteLLM's `openai/` client (the local models' own), a 422 came back as None: 'no choices',
    streamed or not, an outage to the caller."""
    with _quoting_server(status) as served:
        for prefix in ("hosted_vllm", "openai"):
            entry = served.model_copy(update={"litellm_model": f"{prefix}/quoting"})
            gw = Gateway(model_settings.model_copy(update={"num_retries": 0}), Catalog(models=[entry]))
            for stream in (False, True):
                with pytest.raises(
                    GatewayError, match=f"quoting: request refused: the model server answered {status}$"
                ):
                    gw.chat("quoting", HELLO, stream=stream)


def test_a_model_that_refuses_a_request_its_fallback_answers_is_not_booked_as_slow(gateway, model_settings):
    """A model whose server refused the request itself (a 400: its own context overflow, a parameter only it
    rejects) was booked as a request that timed out when a fallback answered: the latency rule then kept a
    fast, healthy model out for 5 minutes. A model down still is (an outage)."""
    for status, slow in ((400, False), (503, True)):
        with _quoting_server(status) as remote:  # a remote model falls back to the local panel
            catalog = Catalog(models=[remote, *gateway.catalog.local()])
            gw = Gateway(model_settings.model_copy(update={"num_retries": 0}), catalog)
            for stream in (False, True):
                r = gw.chat("quoting", HELLO, max_tokens=4, stream=stream)
                assert r.fallback_used and r.model in {e.name for e in gateway.catalog.local()}, r
            p95 = gw.recent_latency_p95("quoting")
            assert (p95 is not None and p95 >= model_settings.request_timeout_s) is slow, (status, p95)


def test_an_upstream_error_that_quotes_the_prompt_reaches_no_message_or_span(model_settings):
    """A 503 whose body quotes the request (as pydantic/FastAPI errors do) went verbatim into the error the
    caller (a service's client) got, and into the span's status and an exception event with its stack."""
    secret = "my SSN is 078-05-1120"
    memory = _memory_spans(model_settings)
    with _quoting_server(503) as entry:
        gw = Gateway(model_settings.model_copy(update={"num_retries": 0}), Catalog(models=[entry]))
        for stream in (False, True):
            with pytest.raises(GatewayError) as e:
                gw.chat("quoting", [{"role": "user", "content": f"Hello, {secret}."}], stream=stream)
            assert "quoting: call failed" in str(e.value) and "078-05-1120" not in str(e.value)
    spans = [s for s in memory.get_finished_spans() if s.name == "chat quoting"]
    assert len(spans) == 2 and all(s.status.description for s in spans)
    assert "078-05-1120" not in "".join(s.to_json() for s in spans)


def test_killed_server_falls_back_to_the_other_model_and_status_tells(gateway, model_settings, caplog):
    from router_models.cli import app

    shared, gateway = gateway, Gateway(model_settings, gateway.catalog)  # its own Router
    smol = gateway.catalog.get("smollm2-135m")
    pid = servers.status(smol, model_settings).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        if servers.status(smol, model_settings).state == "down":
            break
        time.sleep(0.1)
    try:
        with caplog.at_level("WARNING", logger="pipelines.llm.gateway"):
            r = gateway.chat("smollm2-135m", HELLO, max_tokens=8)
        assert r.fallback_used and r.model == "gemma3-270m" and r.requested_model == "smollm2-135m"
        assert r.text.strip()
        # the failure the fallback hid is in the log (a broken API key had left no line), by model and type
        assert any(m.startswith("a call to smollm2-135m failed (") for m in caplog.messages), caplog.messages
        # the model that failed counts as timed out; the stand-in's time holds the failure's, so it is not
        # booked. Once benched, a call falls back at once: the dead model's time was the stand-in's, so the
        # latency rule saw it fast
        timeout = model_settings.request_timeout_s
        assert gateway.recent_latency_p95("smollm2-135m") == max(r.latency_s, timeout)
        assert gateway.recent_latency_p95("gemma3-270m") is None
        again = gateway.chat("smollm2-135m", HELLO, max_tokens=8)
        assert again.model == "gemma3-270m" and again.latency_s < timeout
        assert gateway.recent_latency_p95("smollm2-135m") >= timeout
        env = {
            "SM_RUN_DIR": str(model_settings.run_dir),
            "SM_LOCAL_BASE_PORT": str(model_settings.local_base_port),
        }
        res = CliRunner().invoke(app, ["models", "status", "--json"], env=env)
        assert res.exit_code == 3, res.output
        states = {row["name"]: row["state"] for row in __import__("json").loads(res.stdout)}
        assert states == {"smollm2-135m": "down", "gemma3-270m": "up"}
    finally:
        servers.start(smol, model_settings)
    assert servers.status(smol, model_settings).state == "up"
    # the session's gateway calls the same endpoint, so it shares this deployment's cooldown (LiteLLM's
    # Routers hear each other's failures); wait until it answers again, so later tests (test_bench_runner
    # when run after this file) do not get gemma by fallback
    deadline = time.monotonic() + model_settings.cooldown_s + 15
    while shared.chat("smollm2-135m", HELLO, max_tokens=2).fallback_used and time.monotonic() < deadline:
        time.sleep(1)
    assert not shared.chat("smollm2-135m", HELLO, max_tokens=2).fallback_used


def test_a_server_killed_a_moment_ago_starts_again(local_servers, model_settings):
    """status() says down once the PID is gone, while the dying server's threads may still hold its port:
    start() waits for the port to be free instead of calling it taken by another program."""
    smol = local_servers.get("smollm2-135m")
    os.kill(servers.status(smol, model_settings).pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while servers.status(smol, model_settings).state != "down" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert servers.start(smol, model_settings).state == "up"


def test_two_starts_at_once_run_one_tracked_server(model_settings, tmp_path):
    """Two `models up` at once both launched a server; the loser's PID overwrote the winner's in the PID
    file, both failed, and the winner ran untracked (status "down", `models down` could not stop it)."""
    import subprocess
    import sys

    env = {**os.environ, "SM_RUN_DIR": str(tmp_path), "SM_LOCAL_BASE_PORT": str(free_port_pair()),
           "SM_MODEL_CACHE_DIR": str(model_settings.model_cache_dir)}  # fmt: skip
    up = [sys.executable, "-m", "pipelines.cli", "models", "up", "smollm2-135m"]
    procs = [subprocess.Popen(up, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in "ab"]
    outs = [p.communicate(timeout=180)[0].decode() for p in procs]
    mine = Settings(run_dir=tmp_path, local_base_port=int(env["SM_LOCAL_BASE_PORT"]),
                    model_cache_dir=model_settings.model_cache_dir)  # fmt: skip
    smol = load_catalog(mine).get("smollm2-135m")
    try:
        assert [p.returncode for p in procs] == [0, 0], outs
        st = servers.status(smol, mine)
        assert st.state == "up" and st.pid is not None
    finally:
        assert servers.stop(smol, mine).detail == "stopped"
    port = servers.port_of(smol, mine)
    with socket.socket() as sock:  # nothing is left listening once the tracked server is stopped
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_a_server_left_on_an_old_port_is_said_and_moved(model_settings, tmp_path, monkeypatch):
    """With SM_LOCAL_BASE_PORT changed under a running server, status said "starting" for ever and `up`
    waited for the new port, while the gateway called it; a PID file that is no record crashed all three.
    Where another program held the new port, `up` stopped the working server first, then failed; a pid no
    process can have was an OverflowError in all three; behind an HTTP_PROXY no server was ever ready."""
    old = Settings(
        run_dir=tmp_path, local_base_port=free_port_pair(), model_cache_dir=model_settings.model_cache_dir
    )
    new = old.model_copy(update={"local_base_port": free_port_pair()})
    smol_old, smol_new = load_catalog(old).get("smollm2-135m"), load_catalog(new).get("smollm2-135m")
    pid_file = old.servers_dir / "smollm2-135m.pid"
    try:
        servers.start(smol_old, old)
        assert pid_file.exists()
        moved = servers.status(smol_new, new)
        assert moved.state == "moved" and str(servers.port_of(smol_old, old)) in moved.detail
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # a dead proxy: loopback is not sent there
        monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
        assert servers.healthy(servers.port_of(smol_old, old), "127.0.0.1")
        with socket.socket() as holder:  # another program on the new port
            holder.bind(("127.0.0.1", servers.port_of(smol_new, new)))
            holder.listen()
            with pytest.raises(servers.ServerError, match="is taken by another program"):
                servers.start(smol_new, new)
            assert servers.status(smol_old, old).state == "up"  # still serving where it was
        assert servers.start(smol_new, new).state == "up"  # the old server stopped, a new one on the new port
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", servers.port_of(smol_old, old))) != 0
    finally:
        servers.stop(smol_new, new)
        servers.stop(smol_old, old)
    for text in (
        "12345",
        "[1]",
        '{"pid": "abc", "port": 1}',
        '{"port": 1}',
        '{"pid": 99999999999, "port": 1}',
    ):
        pid_file.write_text(text)
        assert servers.status(smol_new, new).state == "down" and servers.stop(smol_new, new).state == "down"
    import subprocess

    other = subprocess.Popen(["sleep", "60"])  # a live process, not ours: named so, and left alone
    try:
        for call, said in ((servers.status, "is now another program's"), (servers.stop, "was not running")):
            pid_file.write_text(json.dumps({"pid": other.pid, "start_ticks": 1, "port": 1}))
            assert said in call(smol_new, new).detail
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_a_server_not_ready_in_time_is_stopped_not_left_coming_up(model_settings, tmp_path):
    """`models up` said the start failed (and rounded a 0.3 s timeout to "0s"), yet the server came up
    seconds later, unseen. The timeout is 0.05 s: with its GGUF in the page cache, SmolLM2's server was
    ready within 0.3 s once (CI, 2026-12-04), and the start did not fail."""
    hasty = Settings(run_dir=tmp_path, local_base_port=free_port_pair(), local_ready_timeout_s=0.05,
                     model_cache_dir=model_settings.model_cache_dir)  # fmt: skip
    smol = load_catalog(hasty).get("smollm2-135m")
    try:
        with pytest.raises(servers.ServerError, match=r"not ready .* after 0\.05s .*stopped it"):
            servers.start(smol, hasty)
        assert servers.status(smol, hasty).state == "down"
        time.sleep(3)  # the model loads in about 1 s: had it been left, it would answer now
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", servers.port_of(smol, hasty))) != 0
    finally:
        servers.stop(smol, hasty)


# -- Gateway.stream: the public streaming call (what the service's SSE path uses) -----------------------


@pytest.fixture
def fresh(local_servers, model_settings):
    """A Gateway of its own Router (the kill test above may leave smollm2's endpoint in cooldown a while)."""
    return Gateway(model_settings, local_servers)


def _memory_spans(model_settings):
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from pipelines.tracing import setup_tracing

    provider = setup_tracing(model_settings.model_copy(update={"otel_exporter": "file"}))
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return memory


def test_stream_yields_deltas_then_the_accounting_chat_gives(fresh, model_settings):
    memory = _memory_spans(model_settings)
    call = fresh.stream("smollm2-135m", HELLO, max_tokens=16)
    assert (call.model, call.requested_model, call.fallback_used) == ("smollm2-135m", "smollm2-135m", False)
    assert call.result is None
    pieces = list(call)
    r = call.result
    assert len(pieces) >= 2 and "".join(pieces) == r.text and r.text.strip()
    assert r.input_tokens > 5 and 0 < r.output_tokens <= 16
    assert r.cost_usd == pytest.approx(fresh.cost_usd("smollm2-135m", r.input_tokens, r.output_tokens))
    assert r.cost_usd > 0 and 0 < r.ttft_s <= r.latency_s
    assert fresh.recent_latency_p95("smollm2-135m") is not None
    same = fresh.chat("smollm2-135m", HELLO, max_tokens=16)  # greedy decoding: the same answer
    assert (same.text, same.input_tokens, same.output_tokens) == (r.text, r.input_tokens, r.output_tokens)
    spans = [s for s in memory.get_finished_spans() if s.name == "chat smollm2-135m"]
    attrs = dict(spans[0].attributes)
    assert attrs["stratmaster.stream"] is True and attrs["gen_ai.response.model"] == "smollm2-135m"
    assert attrs["gen_ai.usage.output_tokens"] == r.output_tokens
    assert attrs["stratmaster.ttft_s"] == pytest.approx(r.ttft_s)
    with pytest.raises(GatewayError, match="already been read"):
        iter(call)
    # the first text arrives before the caller reads: TTFT is the server's, not the reader's pace (read
    # 3 s late, TTFT was over 3 s)
    late = fresh.stream("smollm2-135m", HELLO, max_tokens=16)
    time.sleep(3)
    assert "".join(late) == r.text and late.ttft_s < 3


def test_local_models_run_on_llama_server_with_parallel_slots_and_gemma_keeps_its_chat_format(
    gateway, model_settings
):
    """Both local models are served by llama.cpp's llama-server with local_parallel slots of local_ctx tokens
    each. Gemma's catalog entry names llama-cpp-python's `snoozy` chat format: llama-server gets the same
    prompt from snoozy.jinja, and the format's stop string goes with every request."""
    import httpx
    from llama_cpp.llama_chat_format import format_snoozy

    smol, gemma = gateway.catalog.get("smollm2-135m"), gateway.catalog.get("gemma3-270m")
    st = servers.status(smol, model_settings)
    assert (st.state, st.detail) == ("up", f"llama-server, {model_settings.local_parallel} parallel")
    props = httpx.get(f"http://{model_settings.local_host}:{st.port}/props", timeout=10).json()
    assert props["total_slots"] == model_settings.local_parallel
    assert props["default_generation_settings"]["n_ctx"] == min(smol.context_window, model_settings.local_ctx)
    # SmolLM2's repeats are penalised (llama-server's own default is off); Gemma's are not (catalog.yaml)
    penalty = props["default_generation_settings"]["params"]["repeat_penalty"]
    assert penalty == pytest.approx(smol.local.repeat_penalty) and penalty > 1.0
    # its prompt cache is capped by the setting, not by llama-server's own 8 GiB default
    argv = Path(f"/proc/{st.pid}/cmdline").read_bytes().decode().split("\0")
    assert argv[argv.index("--cache-ram") + 1] == str(model_settings.local_cache_ram_mib)
    # and it waits at its OpenMP barriers as server_env says (a short spin where its threads take every core)
    raw = Path(f"/proc/{st.pid}/environ").read_bytes().decode().split("\0")
    environ = dict(v.split("=", 1) for v in raw if v)
    for var in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        assert environ.get(var) == servers.server_env(model_settings).get(var), var
    gst = servers.status(gemma, model_settings)
    assert gst.detail == st.detail
    gprops = httpx.get(f"http://{model_settings.local_host}:{gst.port}/props", timeout=10).json()
    assert gprops["default_generation_settings"]["params"]["repeat_penalty"] == 1.0
    for messages in (
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a prime."},
         {"role": "assistant", "content": "7"}, {"role": "user", "content": "Another one?"}],
    ):  # fmt: skip
        url = f"http://{model_settings.local_host}:{gst.port}/apply-template"
        assert httpx.post(url, json={"messages": messages}, timeout=10).json()["prompt"] == (
            format_snoozy(messages).prompt
        )
    question = [{"role": "user", "content": "What is the capital of France?"}]
    for extra in ({}, {"stop": ["\n\n"]}):  # a caller's stop strings add to the format's, not replace them
        answer = gateway.chat("gemma3-270m", question, max_tokens=48, temperature=0.0, **extra)
        assert answer.text.strip() and "###" not in answer.text and answer.output_tokens < 48
    without = model_settings.model_copy(update={"llama_server_bin": ""})
    cmd, engine = servers.command(smol, Path("m.gguf"), 1, without)
    assert Path(cmd[0]).name == "llama-server" and engine == st.detail  # the one built with llama-cpp-python
    python_only = gemma.model_copy(update={"local": gemma.local.model_copy(update={"chat_template": None})})
    assert servers.command(python_only, Path("m.gguf"), 1, without)[1] == "llama-cpp-python"
    with pytest.raises(servers.ServerError, match="chat format 'snoozy'"):
        forced = without.model_copy(update={"local_engine": "llama-server"})
        servers.command(python_only, Path("m.gguf"), 1, forced)
    missing = without.model_copy(update={"llama_server_bin": "/nonexistent"})
    with pytest.raises(servers.ServerError, match="no such executable"):
        servers.command(smol, Path("m.gguf"), 1, missing)
    metrics = httpx.get(f"http://{model_settings.local_host}:{st.port}/metrics", timeout=10).text
    assert "llamacpp:prompt_tokens_total" in metrics


def test_the_catalogs_repeat_penalty_reaches_llama_cpp_pythons_server_too(model_settings, tmp_path):
    """llama-cpp-python's server has no repeat-penalty option and applies 1.1 to every request that names
    none; the gateway sends the catalog's with each request, so Gemma (1.0) answers as on llama-server."""
    import httpx

    python = model_settings.model_copy(
        update={"local_engine": "llama-cpp-python", "run_dir": tmp_path, "local_base_port": free_port_pair()}
    )
    catalog = load_catalog(python)
    gemma = catalog.get("gemma3-270m")
    assert gemma.local is not None and gemma.local.repeat_penalty == 1.0
    st = servers.start(gemma, python)
    try:
        assert st.detail == "llama-cpp-python"
        url = f"http://{python.local_host}:{st.port}/v1/chat/completions"

        def direct(messages, **extra) -> str:
            body = {"messages": messages, "max_tokens": 48, "temperature": 0, "stop": ["###"], **extra}
            return httpx.post(url, json=body, timeout=60).json()["choices"][0]["message"]["content"]

        # a prompt whose answer the server's own default penalty changes (which one does varies with the
        # CPU's floating point: a short answer with no repeated token is the same either way)
        pairs = [(m, direct(m), direct(m, repeat_penalty=1.0)) for m in PENALTY_PROMPTS]
        messages, _, without = next(((m, a, b) for m, a, b in pairs if a != b), (None, None, None))
        assert messages is not None, "no prompt shows the server's default penalty"
        answer = Gateway(python, catalog).chat("gemma3-270m", messages, max_tokens=48, temperature=0.0)
        assert answer.text == without
    finally:
        servers.stop(gemma, python)


def test_a_model_server_starts_without_the_environments_secrets(monkeypatch):
    """llama-server was given the whole environment: every provider key and the workbench's own secrets."""
    secrets = {"OPENAI_API_KEY": "sk-1", "SM_API_KEYS": "k", "SM_S3_SECRET_KEY": "s", "HF_TOKEN": "t",
               "SM_OPENSEARCH_PASSWORD": "p", "SM_REGISTRY_URL": "postgresql://u:p@db/r", "PGPASSWORD": "p",
               "MYSQL_PWD": "p", "X_APIKEY": "k", "DATABASE_URL": "postgresql://u:p@db/r",
               "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Basic x",
               "SM_OPENSEARCH_URL": "https://u:p@os"}  # fmt: skip
    kept = {"TOKENIZERS_PARALLELISM": "false", "KEYBOARD": "uk", "LLAMA_ARG_API_KEY": "port-key"}
    for k, v in {**secrets, **kept}.items():
        monkeypatch.setenv(k, v)
    env = servers.server_env(Settings())
    assert not set(secrets) & set(env)
    assert env["PATH"] == os.environ["PATH"] and all(env[k] == v for k, v in kept.items())


def test_servers_spin_briefly_where_one_servers_threads_take_every_core(monkeypatch):
    for var in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(servers.os, "cpu_count", lambda: 2)

    def policy(**kw) -> tuple[str | None, str | None]:
        env = servers.server_env(Settings(**kw))
        return env.get("OMP_WAIT_POLICY"), env.get("GOMP_SPINCOUNT")

    assert policy(local_threads=2) == (None, "1000") and policy(local_threads=1) == (None, None)
    assert policy(local_threads=2, local_omp_spincount=300) == (None, "300")
    assert policy(local_threads=2, local_omp_wait_policy="default") == (None, None)
    assert policy(local_threads=1, local_omp_wait_policy="passive") == ("passive", None)
    monkeypatch.setenv("OMP_WAIT_POLICY", "active")  # the user's own choice stays, and rules the spin
    assert policy(local_threads=2) == ("active", None)


def test_concurrent_streams_both_get_their_whole_answer(fresh):
    """A second request does not cut the first stream off (llama-cpp-python's server default did): both get
    all their tokens. llama-server decodes them together, which is not bit-identical to one at a time, so the
    texts are not compared word for word."""
    story = [{"role": "user", "content": "Write a long story about a dragon."}]
    alone = fresh.chat("smollm2-135m", story, max_tokens=48, temperature=0.0)
    assert alone.output_tokens == 48
    results: dict[int, object] = {}

    def call(i: int) -> None:
        try:
            results[i] = fresh.chat("smollm2-135m", story, max_tokens=48, temperature=0.0)
        except Exception as e:  # noqa: BLE001 -- the assertion below names it
            results[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.2)  # the first is streaming when the second arrives
    for t in threads:
        t.join(120)
    for i in range(2):
        r = results[i]
        assert not isinstance(r, Exception), f"call {i}: {r!r}"
        assert (r.model, r.fallback_used, r.output_tokens) == ("smollm2-135m", False, 48)
        assert len(r.text.split()) >= 20


def test_stream_refuses_before_the_first_byte(fresh):
    with pytest.raises(GatewayError, match="unknown model 'gpt-17'"):
        fresh.stream("gpt-17", HELLO)
    with pytest.raises(GatewayError, match="smollm2-135m: context overflow"):
        fresh.stream("smollm2-135m", [{"role": "user", "content": "word " * 5000}])


def test_stream_closed_early_ends_its_span(fresh, model_settings):
    memory = _memory_spans(model_settings)
    with fresh.stream("gemma3-270m", HELLO, max_tokens=64) as call:
        first = next(iter(call))
    assert first and call.result is None
    spans = [s for s in memory.get_finished_spans() if s.name == "chat gemma3-270m"]
    assert spans and spans[-1].attributes["stratmaster.stream_closed_early"] is True
    assert fresh.chat("gemma3-270m", HELLO, max_tokens=4).output_tokens > 0  # the server is still fine


def test_a_stream_dropped_unread_ends_its_span_and_frees_its_connection(fresh, model_settings):
    memory = _memory_spans(model_settings)
    call = fresh.stream("gemma3-270m", HELLO, max_tokens=64)
    resp = call._resp
    del call  # a caller that failed before reading it
    spans = [s for s in memory.get_finished_spans() if s.name == "chat gemma3-270m"]
    assert spans and spans[-1].attributes["stratmaster.stream_closed_early"] is True
    assert resp.completion_stream is None  # LiteLLM's close() lets go of the HTTP stream


def test_a_reader_that_breaks_out_of_its_loop_ends_the_stream_at_once(fresh, model_settings):
    """The object held its generator, whose frame holds the object: a reader that broke out of its loop and
    returned, with no `with` or close(), left the model writing and the span open until the cyclic GC ran."""
    import gc

    memory = _memory_spans(model_settings)

    def first_words(n: int) -> tuple[list[str], object]:
        words, call = [], fresh.stream("gemma3-270m", HELLO, max_tokens=64)
        for text in call:
            words.append(text)
            if len(words) == n:
                break
        return words, call._resp

    gc.disable()  # no collector to rescue a cycle
    try:
        words, resp = first_words(2)
        spans = [s for s in memory.get_finished_spans() if s.name == "chat gemma3-270m"]
        assert len(words) == 2 and spans and spans[-1].attributes["stratmaster.stream_closed_early"] is True
        assert resp.completion_stream is None  # its HTTP stream let go of
    finally:
        gc.enable()


def _processing(gateway, model_settings, model: str) -> float:
    """Requests the model's llama-server is working on (its Prometheus gauge)."""
    import httpx

    port = servers.status(gateway.catalog.get(model), model_settings).port
    text = httpx.get(f"http://{model_settings.local_host}:{port}/metrics", timeout=10).text
    return float(
        next(ln.split()[-1] for ln in text.splitlines() if ln.startswith("llamacpp:requests_processing"))
    )


def test_closing_a_stream_another_thread_reads_stops_the_model(fresh, model_settings):
    """A service whose client left a plain chat closes the call from its own thread while a worker reads
    it: LiteLLM's generator could not be closed under the reader, which read on to the answer's end, and
    the server wrote its 1,000 tokens for nobody. Now the reader stops at its next chunk and the server's
    response is closed (LiteLLM's own close of its wrapper left that to the cyclic GC)."""
    count = [{"role": "user", "content": "Count from 1 to 500, one number per line."}]
    call, got = fresh.stream("smollm2-135m", count, max_tokens=1000), []
    reader = threading.Thread(target=lambda: got.extend(call))
    reader.start()
    while len(got) < 3 and reader.is_alive():
        time.sleep(0.01)
    call.close()
    reader.join(timeout=2)
    assert not reader.is_alive() and call.result is None, len(got)
    deadline = time.monotonic() + 2
    while _processing(fresh, model_settings, "smollm2-135m") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processing(fresh, model_settings, "smollm2-135m") == 0
    assert fresh.chat("smollm2-135m", HELLO, max_tokens=4).output_tokens > 0  # the server is still fine


def test_a_slow_reader_does_not_make_the_model_slow_to_the_latency_rule(local_servers, model_settings):
    """A streamed call's whole time was booked to the model: a client reading 250 ms a delta made a model
    that answers in well under a second look slow enough to break a latency SLO. Such a call is not booked
    (its last chunks waited in the buffer: the server's pace is unknown); one read as it comes is."""
    gw = Gateway(model_settings, local_servers)  # a gateway of its own: no other call booked
    story = [{"role": "user", "content": "Tell me a long story about a dragon who learns to read."}]
    with gw.stream("smollm2-135m", story, max_tokens=12) as call:
        for _ in call:
            time.sleep(0.25)  # 12 tokens take the server well under a second, even on a busy machine
    assert call.result is not None and call.result.output_tokens >= 8
    assert gw.recent_latency_p95("smollm2-135m") is None
    read = gw.chat("smollm2-135m", story, max_tokens=12)  # streamed too, read as it comes
    assert gw.recent_latency_p95("smollm2-135m") == read.latency_s


def test_stream_falls_back_to_the_other_local_model(fresh, model_settings):
    """smollm2's address points at a closed port: the Router falls back to gemma before streaming."""
    closed = free_ports()  # nothing listens there; outside the ephemeral range, no connection takes it
    smol = fresh.catalog.get("smollm2-135m").model_copy(update={"api_base": f"http://127.0.0.1:{closed}/v1"})
    gw = Gateway(model_settings, Catalog(models=[smol, fresh.catalog.get("gemma3-270m")]))
    call = gw.stream("smollm2-135m", HELLO, max_tokens=8)
    assert call.fallback_used and call.model == "gemma3-270m" and call.requested_model == "smollm2-135m"
    text = "".join(call)
    r = call.result
    assert r.text == text and r.model == "gemma3-270m" and r.fallback_used and r.output_tokens > 0
    assert r.cost_usd == pytest.approx(gw.cost_usd("gemma3-270m", r.input_tokens, r.output_tokens))


def test_a_dead_endpoint_cools_down_only_its_own_gateways_model(fresh, model_settings):
    """LiteLLM's Routers hear each other's failures and cool down by deployment id: a Gateway whose smollm2
    points at a closed port must not send another Gateway's healthy smollm2 to gemma (it did while the id
    was the bare name)."""
    closed = free_ports()  # nothing listens there; outside the ephemeral range, no connection takes it
    smol = fresh.catalog.get("smollm2-135m").model_copy(update={"api_base": f"http://127.0.0.1:{closed}/v1"})
    broken = Gateway(model_settings, Catalog(models=[smol, fresh.catalog.get("gemma3-270m")]))
    for _ in range(3):  # more failures than allowed_fails: the broken deployment is cooled down
        assert broken.chat("smollm2-135m", HELLO, max_tokens=2).fallback_used
    r = fresh.chat("smollm2-135m", HELLO, max_tokens=2)
    assert (r.model, r.fallback_used) == ("smollm2-135m", False)


def test_a_fallback_keeps_the_answering_models_stop_strings_next_to_the_callers(fresh, model_settings):
    """LiteLLM lets a caller's `stop` replace the deployment's: when smollm2 is down and gemma answers a call
    that brought its own stop list, gemma still gets its chat format's `###`, streamed and not."""
    closed = free_ports()  # nothing listens there; outside the ephemeral range, no connection takes it
    smol = fresh.catalog.get("smollm2-135m").model_copy(update={"api_base": f"http://127.0.0.1:{closed}/v1"})
    gw = Gateway(model_settings, Catalog(models=[smol, fresh.catalog.get("gemma3-270m")]))
    question = [{"role": "user", "content": "What is the capital of France?"}]
    for stream in (True, False):
        r = gw.chat("smollm2-135m", question, max_tokens=48, stream=stream, stop=["\n\n"])
        assert r.fallback_used and r.model == "gemma3-270m"
        assert r.text.strip() and "###" not in r.text and r.output_tokens < 48


def test_cached_prompt_tokens_cost_what_litellm_says():
    """Every prompt token was charged the full input price: with OpenAI's automatic prompt cache (1,536 of
    2,000 tokens) gpt-4o-mini's call was booked 47% above LiteLLM's own figure."""
    import litellm
    from litellm.types.utils import PromptTokensDetailsWrapper, Usage

    from pipelines.llm.gateway import Gateway

    gw = Gateway()
    usage = Usage(prompt_tokens=2000, completion_tokens=100, total_tokens=2100,
                  prompt_tokens_details=PromptTokensDetailsWrapper(cached_tokens=1536))  # fmt: skip
    inp, out = litellm.cost_calculator.generic_cost_per_token("gpt-4o-mini", usage, "openai")
    assert gw.cost_usd("gpt-4o-mini", 2000, 100, cached_tokens=1536) == pytest.approx(inp + out)
    assert gw.cost_usd("gpt-4o-mini", 2000, 100) > inp + out  # uncached: the full price
    local = gw.cost_usd("smollm2-135m", 2000, 100)  # no cache price known: cached tokens cost the same
    assert gw.cost_usd("smollm2-135m", 2000, 100, cached_tokens=1536) == pytest.approx(local)


def test_failures_logged_after_their_call_took_its_record_are_dropped():
    """A stream that breaks midway is logged (from a thread of LiteLLM's) after its call took its record: such
    records, each an exception with its traceback, were kept for good in a long-running service. A call still
    failing over keeps every failure, however long it waits between them."""
    from pipelines.llm.gateway import CALL_KEY, _FailureLog

    log = _FailureLog()
    log.DONE = 2

    def fail(call: str) -> None:
        meta = {CALL_KEY: call, "model_group": "m"}
        log.log_failure_event({"litellm_params": {"metadata": meta}, "exception": ValueError()}, None, 0, 0)

    fail("slow")
    fail("taken")
    assert [m for m, _ in log.pop("taken")] == ["m"]
    fail("taken")  # its stream broke after the call read: dropped
    fail("slow")
    assert len(log) == 1 and len(log.pop("slow")) == 2 and len(log) == 0
    log.pop("a")  # the oldest done ids go (DONE of them kept): a late failure of "taken" would be kept now
    fail("taken")
    assert len(log) == 1
