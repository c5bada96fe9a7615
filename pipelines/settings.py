"""One settings object (env prefix SM_): every path, URL and backend choice lives here.

Nothing reads a global: callers build `Settings()` (or receive one) and pass it down.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


def _default_run_dir() -> Path:
    return REPO_ROOT / "runs"


def _default_shared_data() -> Path:
    return REPO_ROOT.parent / "shared" / "data"


class Settings(BaseSettings):
    """Workbench configuration; override any field with an `SM_<NAME>` environment variable. Secrets (the S3,
    OpenSearch and NebulaGraph passwords, the Qdrant API key, the registry URL) are `SecretStr`: masked in
    `repr`, `str` and dumps."""

    # allow_inf_nan: "inf" (or 1e999) is a float to pydantic; as a timeout or a price it breaks every call
    model_config = SettingsConfigDict(env_prefix="SM_", env_file=".env", extra="ignore", allow_inf_nan=False)

    run_dir: Path = Field(default_factory=_default_run_dir, description="models, logs, assets, PID files")
    shared_data_dir: Path = Field(default_factory=_default_shared_data)
    catalog_path: Path | None = Field(
        default=None, description="model catalog YAML; package default if unset"
    )
    model_cache_dir: Path | None = Field(
        default=None, description="assembled GGUF files; run_dir/models if unset"
    )

    # local model panel (llama.cpp servers)
    # an IPv4 address or a host name, no port (a port here, or IPv6, made every server URL invalid)
    local_host: str = Field(default="127.0.0.1", pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
    local_base_port: int = Field(default=8081, ge=1, le=65534)  # a model's port is this plus its offset
    local_threads: int = Field(default=2, ge=1)
    local_ctx: int = Field(default=2048, ge=256)
    # the engine of local models (pipelines/llm/servers.py): llama.cpp's llama-server (built by `make setup`;
    # unset binary: the one in the llama_cpp package, then PATH) serves `local_parallel` requests at once per
    # model, decoding them together, each with local_ctx tokens of context; llama-cpp-python's answers one at
    # a time.
    # "auto": llama-server where there is one, unless the catalog entry names a llama-cpp-python chat format
    # and no chat_template for llama-server.
    local_engine: Literal["auto", "llama-server", "llama-cpp-python"] = "auto"
    local_parallel: int = Field(default=2, ge=1)
    llama_server_bin: str = ""
    # llama-server keeps finished prompts' KV states in RAM for reuse by later prompts with the same start;
    # its own default cap is 8 GiB, a lot for a workbench beside other work (SmolLM2's full 2,048-token
    # state is about 45 MiB); 0 turns the cache off
    local_cache_ram_mib: int = Field(default=256, ge=0)
    # how llama.cpp's threads wait at their OpenMP barriers (pipelines.llm.servers.server_env): "auto" is
    # "short" where one server's threads take every core (spin `local_omp_spincount` times, then sleep), so
    # that a second busy server (or the embedder) does not make them spin against each other for long
    local_omp_wait_policy: Literal["auto", "default", "passive", "short"] = "auto"
    # 1,000: on a Sapphire Rapids VM 0.81x the time of 300 for a request alone and for two on one server,
    # 1.09x with both servers busy, where 3,000 took 1.4x and 30,000 4.1x (benchmarks/local_servers.py,
    # 2026-12-06)
    local_omp_spincount: int = Field(default=1000, ge=0)
    local_ready_timeout_s: float = Field(default=60.0, gt=0)
    # the stated CPU-hour price from which local models' $/1k tokens are derived
    cpu_hour_usd: float = Field(default=0.10, ge=0)

    # gateway
    request_timeout_s: float = Field(default=60.0, gt=0)
    num_retries: int = Field(default=1, ge=0)
    cooldown_s: float = Field(default=30.0, ge=0)

    # backends (embedded default | scale engine)
    object_store: Literal["local", "s3"] = "local"
    s3_endpoint: str = "127.0.0.1:9000"
    s3_bucket: str = "stratmaster"
    s3_secure: bool = False
    keyword_backend: Literal["tantivy", "opensearch"] = "tantivy"
    opensearch_url: str = "http://127.0.0.1:9200"
    vector_backend: Literal["qdrant_local", "qdrant_server"] = "qdrant_local"
    qdrant_url: str = "http://127.0.0.1:6333"
    graph_backend: Literal["ladybug", "nebula"] = "ladybug"
    nebula_address: str = "127.0.0.1:9669"
    # hybrid RAG: corpus, indexes, retrieval (pipelines/corpus, pipelines/index, pipelines/rag)
    corpus_dir: str | None = Field(default=None, description="folder or s3://bucket/prefix to ingest")
    # no default: MinIO's well-known root login was used wherever these were unset (`s3_store` says so)
    s3_access_key: str = ""
    s3_secret_key: SecretStr = SecretStr("")
    opensearch_index: str = "stratmaster-chunks"
    # OpenSearch's basic auth (user:pass@ in opensearch_url works too, but a URL is printed and reported)
    opensearch_user: str = ""
    opensearch_password: SecretStr | None = None
    # a PEM bundle of the CA that signed an https cluster's certificate (else certifi's public CAs)
    opensearch_ca_certs: str = ""
    qdrant_collection: str = "stratmaster_chunks"
    qdrant_api_key: SecretStr | None = None
    # a PEM bundle of the CA that signed an https Qdrant server's certificate (else certifi's public CAs)
    qdrant_ca_certs: str = ""
    # the Qdrant server searches exactly, as local mode does, rather than by its HNSW graph (approximate,
    # faster): the same ranking on both backends, at the cost of a scan per query
    qdrant_exact: bool = False
    nebula_user: str = "root"
    nebula_password: SecretStr = SecretStr("nebula")
    nebula_space: str = "stratmaster"
    pii_spacy_model: str = Field(default="blank", description="'blank' (pattern recognizers) or a spaCy NER")
    chunk_tokens: int = Field(default=192, ge=8, description="title + chunk fit MiniLM's 256 WordPieces")
    chunk_overlap: int = Field(default=32, ge=0)
    max_file_mb: float = Field(default=20.0, gt=0)
    embedder: str = Field(
        default="minilm-int8",
        description="minilm-int8 (MiniLM, int8 on OpenVINO) | minilm (MiniLM in bf16/fp32) | static, "
        "or a fine-tuned MiniLM folder (retrieval tune-embedder)",
    )
    rag_context_chars: int = Field(
        default=4000,
        ge=200,
        description="characters of retrieved text in a RAG prompt, shared by its sources",
    )
    fusion: Literal["convex", "rrf"] = "convex"
    hybrid_alpha: float = Field(default=0.8, ge=0, le=1, description="dense weight in the convex combination")
    rrf_k: int = Field(default=60, ge=1)
    graph_weight: float = Field(default=0.02, ge=0, description="the graph list's weight in hybrid_graph")
    retrieval_eval_dir: Path | None = Field(default=None, description="labelled BEIR folder; shared scifact")
    retrieval_eval_queries: int = Field(default=100, ge=1)
    retrieval_eval_distractors: int = Field(default=500, ge=0)
    retrieval_ndcg_floor: float = Field(
        default=0.70, ge=0, description="hybrid nDCG@10 floor on the eval sample (above 1: always fails)"
    )
    registry_url: SecretStr | None = Field(
        default=None, description="SQLAlchemy URL; SQLite in run_dir if unset"
    )

    # micro-bench: prompts per task in the stratified prompt set
    bench_per_task: int = Field(default=8, ge=1)
    prompt_log: bool = Field(default=True, description="the service logs chat prompts, PII-redacted")
    prompt_log_days: int = Field(
        default=7, ge=1, description="the prompt set samples this many days of the log"
    )
    judge_model: str | None = Field(
        default=None, description="catalog model that rates answers to prompts without a reference"
    )

    # utility model and router: micro-bench partitions of this many days are evidence (0: none)
    bench_evidence_days: int = Field(
        default=7, ge=0, description="micro-bench partitions of this many days are evidence (0: none)"
    )
    lambda_cost: float = Field(default=100.0, ge=0)
    lambda_latency: float = Field(default=0.01, ge=0)

    # serving: BentoML worker processes (each loads the router; a Python worker uses at most one core)
    service_workers: int = Field(default=1, ge=1)

    # tracing
    otel_exporter: Literal["console", "file", "otlp", "none"] = "file"
    otel_endpoint: str | None = None
    # share of traces kept, decided at the root and kept by its children (parent-based), so a trace is whole
    # or absent; at 1.0 the file exporter costs /v1/route about a tenth of its throughput (492 vs 550 req/s)
    otel_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    # the file exporter's spans.jsonl is rotated past this size, keeping this many older files
    otel_file_max_mb: int = Field(default=100, ge=1)
    otel_file_backups: int = Field(default=3, ge=0)

    @field_validator("s3_endpoint")
    @classmethod
    def _endpoint_without_scheme(cls, v: str) -> str:
        """The minio client takes host:port: "http://..." was its bare "path in endpoint is not allowed"."""
        if "://" in v:
            raise ValueError("host:port, without a scheme (SM_S3_SECURE=true for https)")
        return v

    @field_validator("chunk_overlap")
    @classmethod
    def _overlap_under_chunk(cls, v: int, info: ValidationInfo) -> int:
        """An overlap as long as the chunk failed every file of an ingest, recorded as skipped, exit 0."""
        tokens = info.data.get("chunk_tokens")
        if tokens is not None and v >= tokens:
            raise ValueError(f"must be less than chunk_tokens ({tokens})")
        return v

    @property
    def models_dir(self) -> Path:
        return self.model_cache_dir or self.run_dir / "models"

    @property
    def servers_dir(self) -> Path:
        return self.run_dir / "servers"

    @property
    def prompt_log_dir(self) -> Path:
        return self.run_dir / "prompt_log"

    @property
    def registry_sqlalchemy_url(self) -> str:
        """The registry URL, password included: for the engine, never for a log (`repr` masks it)."""
        if self.registry_url is not None:
            return self.registry_url.get_secret_value()
        return f"sqlite:///{self.run_dir / 'registry.sqlite'}"

    @property
    def embedded_engines(self) -> bool:
        """True when the chunk store and the indexes are files in run_dir (a snapshot can carry them)."""
        engines = (self.object_store, self.keyword_backend, self.vector_backend, self.graph_backend)
        return engines == ("local", "tantivy", "qdrant_local", "ladybug")

    @property
    def bentoml_home(self) -> Path:
        """BENTOML_HOME when set, else `run_dir/bentoml`: the models and Bentos of this workbench."""
        env = os.environ.get("BENTOML_HOME")
        return Path(env) if env else self.run_dir / "bentoml"

    def as_env(self) -> dict[str, str]:
        """These settings as SM_* variables, so a child process builds the same `Settings()`."""
        out = {}
        secrets = {k: v.get_secret_value() for k, v in self if isinstance(v, SecretStr)}
        for name, value in {**self.model_dump(mode="json"), **secrets}.items():
            if value is not None:
                out[f"SM_{name.upper()}"] = (
                    json.dumps(value) if isinstance(value, list | dict) else str(value)
                )
        return out
