from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pipelines.tracing import read_spans, setup_tracing


@pytest.mark.models
def test_gateway_span_has_genai_attributes_and_no_prompt_text(local_servers, model_settings):
    from pipelines.llm.gateway import Gateway

    gateway = Gateway(model_settings, local_servers)  # its own Router: no cooldowns left by other tests
    provider = setup_tracing(model_settings.model_copy(update={"otel_exporter": "file"}))
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    secret = "my card is 4111 1111 1111 1111 and mail jane.doe@example.com"
    r = gateway.chat("smollm2-135m", [{"role": "user", "content": secret}], max_tokens=8)
    spans = [s for s in memory.get_finished_spans() if s.name == "chat smollm2-135m"]
    assert spans, [s.name for s in memory.get_finished_spans()]
    attrs = dict(spans[-1].attributes)
    assert attrs["gen_ai.request.model"] == "smollm2-135m"
    assert attrs["gen_ai.response.model"] == r.model
    assert attrs["gen_ai.usage.output_tokens"] == r.output_tokens
    assert attrs["stratmaster.cost_usd"] == pytest.approx(r.cost_usd)
    dumped = spans[-1].to_json()
    # the card's groups with their spaces: a bare "4111" turns up in random ids (service.instance.id)
    assert r.text.strip(), "the model said nothing: no answer to look for in the span"
    for leak in ("4111 1111", "jane.doe@", r.text.strip()[:20]):
        assert leak not in dumped, leak


def test_file_exporter_writes_jsonl(tmp_path):
    from opentelemetry.sdk.trace import TracerProvider

    from pipelines.tracing import JsonlFileExporter

    path = tmp_path / "spans.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonlFileExporter(path)))
    t = provider.get_tracer("t")
    with t.start_as_current_span("outer"), t.start_as_current_span("inner"):
        pass
    names = [s["name"] for s in read_spans(path)]
    assert names == ["inner", "outer"]


def test_file_exporter_rotates_and_keeps_the_newest_files(tmp_path):
    from opentelemetry.sdk.trace import TracerProvider

    from pipelines.tracing import JsonlFileExporter

    path = tmp_path / "spans.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonlFileExporter(path, max_bytes=2000, backups=2)))
    t = provider.get_tracer("t")
    for i in range(60):
        with t.start_as_current_span(f"span-{i}"):
            pass
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["spans.jsonl", "spans.jsonl.1", "spans.jsonl.2"]
    assert all(p.stat().st_size < 2000 + 1500 for p in tmp_path.iterdir())  # one span past the limit at most
    kept = [
        s["name"] for f in ("spans.jsonl.2", "spans.jsonl.1", "spans.jsonl") for s in read_spans(tmp_path / f)
    ]
    assert kept == [f"span-{i}" for i in range(60 - len(kept), 60)]  # the newest spans, in order, none twice
    assert 6 < len(kept) < 60


@pytest.mark.parametrize("ratio", [0.0, 0.25, 1.0])
def test_the_sample_ratio_keeps_that_share_of_whole_traces(ratio):
    from opentelemetry.sdk.trace import TracerProvider

    from pipelines.settings import Settings
    from pipelines.tracing import sampler

    memory = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler(Settings(otel_sample_ratio=ratio)))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    t = provider.get_tracer("t")
    for _ in range(2000):
        with t.start_as_current_span("request"), t.start_as_current_span("route"):
            pass
    spans = memory.get_finished_spans()
    roots = [s for s in spans if s.parent is None]
    assert len(spans) == 2 * len(roots)  # a kept request keeps its child; a dropped one drops both
    assert len(roots) / 2000 == pytest.approx(ratio, abs=0.04)


def test_a_sample_ratio_outside_0_1_is_refused():
    from pydantic import ValidationError

    from pipelines.settings import Settings

    with pytest.raises(ValidationError, match="otel_sample_ratio"):
        Settings(otel_sample_ratio=1.5)


def test_a_sample_ratio_that_cannot_apply_is_said(monkeypatch, caplog):
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    import pipelines.tracing as tracing
    from pipelines.settings import Settings

    theirs = TracerProvider()  # installed by someone else first (BentoML's, say), with its own sampler
    monkeypatch.setattr(tracing, "_configured", None)
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: theirs)
    with caplog.at_level("WARNING", logger="pipelines.tracing"):
        assert setup_tracing(Settings(otel_exporter="console", otel_sample_ratio=0.1)) is theirs
    assert "SM_OTEL_SAMPLE_RATIO=0.1 not applied" in caplog.text


def _export_spans(path: str, worker: int, n: int) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    from pipelines.tracing import JsonlFileExporter

    provider = TracerProvider()
    exporter = JsonlFileExporter(Path(path), max_bytes=5000, backups=1000)  # room for every span
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    for i in range(n):
        with provider.get_tracer("t").start_as_current_span(f"w{worker}-{i}"):
            pass


def test_workers_sharing_one_span_file_lose_no_span_when_it_rotates(tmp_path):
    """Service workers are processes appending to one file; two rotating at once lost whole batches."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    path = str(tmp_path / "spans.jsonl")
    workers = [ctx.Process(target=_export_spans, args=(path, w, 400)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    names = [s["name"] for f in tmp_path.iterdir() for s in read_spans(f)]
    assert len(list(tmp_path.glob("spans.jsonl.*"))) > 10  # it rotated, many times
    assert sorted(names) == sorted(f"w{w}-{i}" for w in range(4) for i in range(400))


def test_the_otlp_exporter_posts_to_langfuses_path_with_its_basic_auth(monkeypatch, tmp_path):
    """A real OTLP/HTTP export to a local HTTP server standing where Langfuse would: its path and auth.
    An endpoint without a scheme, or one Langfuse key alone, failed every export with a warning each."""
    import base64
    import http.server
    import threading

    from opentelemetry.sdk.trace import TracerProvider

    from pipelines.settings import Settings
    from pipelines.tracing import _otlp_exporter

    seen: list[tuple[str, str, int]] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.path, self.headers.get("Authorization", ""), len(body)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-1")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-2")
    url = f"http://127.0.0.1:{srv.server_address[1]}/api/public/otel"
    try:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_otlp_exporter(Settings(otel_endpoint=url + "/"))))
        with provider.get_tracer("t").start_as_current_span("request"):
            pass
        provider.shutdown()
    finally:
        srv.shutdown()
        srv.server_close()
    (path, auth, size), *_ = seen
    assert path == "/api/public/otel/v1/traces" and size > 0
    assert auth == "Basic " + base64.b64encode(b"pk-lf-1:sk-lf-2").decode()
    with pytest.raises(ValueError, match="http:// or https://"):
        _otlp_exporter(Settings(otel_endpoint="127.0.0.1:4318"))
    monkeypatch.delenv("LANGFUSE_SECRET_KEY")
    with pytest.raises(ValueError, match="both LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY"):
        _otlp_exporter(Settings(otel_endpoint=url))
