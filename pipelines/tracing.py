"""OpenTelemetry tracing: a tracer provider from settings (file, console, OTLP to Langfuse or a collector).

Spans carry GenAI semantic-convention attributes (model, tokens, cost), never prompt or answer text: a prompt
may hold PII, so no text is ever put on a span.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased

from pipelines.settings import Settings

TRACER_NAME = "stratmaster"
_lock = threading.Lock()
_configured: TracerProvider | None = None


class JsonlFileExporter(SpanExporter):
    """One JSON object per finished span, appended to a file (the embedded default).

    A file past `max_bytes` is renamed `<name>.1` (an older `.1` becomes `.2`, ... up to `backups`; the
    oldest is dropped) and a new one is started, so a long-running service keeps at most (backups + 1) x
    max_bytes of traces (a day of /v1/route load tests had grown one file to 1.2 GB). Not the standard
    library's RotatingFileHandler: that keeps its file open and sizes it by its own offset, so with several
    service workers appending to one file, a worker would go on writing into a file another had rotated away.
    Workers take an OS lock on the file's folder around rotating and appending: without it two rotating at
    once lost batches (4 processes, 6,000 spans: about 1,500 never written).
    """

    def __init__(self, path: Path, max_bytes: int = 100 * 2**20, backups: int = 3) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        path.parent.mkdir(parents=True, exist_ok=True)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(s.to_json(indent=None) + "\n" for s in spans)
        with _lock:
            folder = os.open(self.path.parent, os.O_RDONLY)
            try:
                fcntl.flock(folder, fcntl.LOCK_EX)  # released when the descriptor is closed
                self._rotate()
                with open(self.path, "a") as f:
                    f.write(lines)
            finally:
                os.close(folder)
        return SpanExportResult.SUCCESS

    def _rotate(self) -> None:
        try:
            if self.path.stat().st_size < self.max_bytes:
                return
        except FileNotFoundError:
            return
        for i in range(self.backups, 0, -1):  # os.replace drops what it overwrites: the oldest goes
            newer = self.path.with_name(f"{self.path.name}.{i - 1}") if i > 1 else self.path
            if newer.exists():
                os.replace(newer, self.path.with_name(f"{self.path.name}.{i}"))
        self.path.unlink(missing_ok=True)  # with no backups kept, the file starts again

    def shutdown(self) -> None:
        pass


def _otlp_exporter(settings: Settings) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    if not settings.otel_endpoint:
        raise ValueError(
            "SM_OTEL_EXPORTER=otlp needs SM_OTEL_ENDPOINT, e.g. http://HOST:3000/api/public/otel"
        )
    if not settings.otel_endpoint.startswith(("http://", "https://")):  # every export failed, a warning each
        raise ValueError(f"SM_OTEL_ENDPOINT needs http:// or https://, e.g. http://{settings.otel_endpoint}")
    headers = {}
    pk, sk = os.environ.get("LANGFUSE_PUBLIC_KEY"), os.environ.get("LANGFUSE_SECRET_KEY")
    if bool(pk) != bool(sk):  # one key alone sent no auth header at all, and Langfuse refused every export
        raise ValueError("set both LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY, or neither")
    if pk and sk:  # Langfuse's OTLP endpoint takes basic auth with the project keys
        headers["Authorization"] = "Basic " + base64.b64encode(f"{pk}:{sk}".encode()).decode()
    endpoint = settings.otel_endpoint.rstrip("/")
    if not endpoint.endswith("/v1/traces"):
        endpoint += "/v1/traces"
    return OTLPSpanExporter(endpoint=endpoint, headers=headers)


def sampler(settings: Settings) -> Sampler:
    """Keep `otel_sample_ratio` of the traces, chosen by trace id at the root; a span follows its parent."""
    return ParentBased(TraceIdRatioBased(settings.otel_sample_ratio))


def setup_tracing(settings: Settings, service_name: str = "stratmaster") -> TracerProvider | None:
    """Install the global tracer provider once per process; later calls return the same provider."""
    global _configured
    with _lock:
        if _configured is not None or settings.otel_exporter == "none":
            return _configured
        current = trace.get_tracer_provider()
        if isinstance(current, TracerProvider):
            provider = current  # an SDK provider is installed already (BentoML's, say): export from it too
            if settings.otel_sample_ratio < 1:  # its sampler, set by its owner, decides what is kept
                logging.getLogger(__name__).warning(
                    "SM_OTEL_SAMPLE_RATIO=%s not applied: a tracer provider with its own sampler was "
                    "installed before StratMaster's",
                    settings.otel_sample_ratio,
                )
        else:
            provider = TracerProvider(
                resource=Resource.create({"service.name": service_name}), sampler=sampler(settings)
            )
            trace.set_tracer_provider(provider)
        if settings.otel_exporter == "file":
            path = settings.run_dir / "traces" / "spans.jsonl"
            # batched: serialising and writing spans happens off the request path (12% of a /v1/route
            # worker's CPU when each span was written as it ended); flushed within a second and at exit.
            # Small batches: serialising one holds the GIL, and 512 spans at once (OTel's default) put
            # 15-30 ms on the requests waiting for it
            provider.add_span_processor(
                BatchSpanProcessor(
                    JsonlFileExporter(path, settings.otel_file_max_mb * 2**20, settings.otel_file_backups),
                    schedule_delay_millis=1000,
                    max_export_batch_size=64,
                )
            )
        elif settings.otel_exporter == "console":
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        else:
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(settings)))
        _configured = provider
        return provider


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def read_spans(path: Path) -> list[dict]:
    """The spans a file exporter wrote (for tests and notebooks)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
