"""Corpus and indexes: chunks in the object store, then keyword, dense and graph indexes over them."""

import json
from dataclasses import asdict

import dagster as dg
import pandas as pd

from assets.resources import SettingsResource, plain_metadata
from pipelines.corpus.ingest import EmptyCorpus, corpus_version, ingest_corpus
from pipelines.demo_corpus import write_demo_corpus
from pipelines.files import write_atomic
from pipelines.index.build import build_dense_index, build_graph_index, build_keyword_index
from pipelines.memo import fingerprint, forget, recall, remember, source_digest
from pipelines.rag.evaluate import evaluate_retrievers, retrieval_plot, write_beir_sample
from pipelines.settings import REPO_ROOT, Settings


def corpus_source(settings: Settings) -> str:
    """SM_CORPUS_DIR when set, else Python's reference topics written into the run directory."""
    return settings.corpus_dir or str(write_demo_corpus(settings.run_dir / "demo_corpus"))


def _index_result(report) -> dg.MaterializeResult:
    """The index's report as metadata, and the version of what it holds as its data version (the default, a
    run's id, changed on every rebuild and was the same for every asset of a run)."""
    md = plain_metadata(asdict(report))
    if report.chunks_per_s:
        md["chunks_per_s"] = report.chunks_per_s
    return dg.MaterializeResult(metadata=md, data_version=dg.DataVersion(report.version))


@dg.asset(group_name="corpus", kinds={"parquet", "presidio"})
def corpus_chunks(context: dg.AssetExecutionContext, settings: SettingsResource) -> dg.MaterializeResult:
    """Ingest the corpus (PII redacted before anything persists), chunk it, write parquet to the object store.
    Incremental: unchanged documents do no work; skipped files are listed with their reason."""
    s = settings.get()
    try:
        report = ingest_corpus(s, corpus_source(s))
    except EmptyCorpus as e:  # an empty or mistyped SM_CORPUS_DIR: the store and the indexes stay as they are
        raise dg.Failure(str(e)) from None
    context.log.info(f"ingest: {report.files_processed} processed, {report.files_unchanged} unchanged")
    skipped = pd.DataFrame(report.skipped or [], columns=["path", "reason"])
    return dg.MaterializeResult(
        data_version=dg.DataVersion(corpus_version(s)),  # from the manifest: no chunk is read
        metadata={
            "source": report.source,
            "store": report.store,
            "docs_total": report.docs_total,
            "chunks_total": report.chunks_total,
            "files_processed": report.files_processed,
            "files_unchanged": report.files_unchanged,
            "chunks_written": report.chunks_written,
            "skipped": dg.MetadataValue.md(skipped.to_markdown(index=False) if len(skipped) else "none"),
            "pii_redacted": dg.MetadataValue.json(report.pii_redacted),
            "seconds": round(report.seconds, 2),
        },
    )


@dg.asset(group_name="indexes", deps=[corpus_chunks], kinds={"tantivy"})
def keyword_index(settings: SettingsResource) -> dg.MaterializeResult:
    """BM25 over the chunks: tantivy on disk by default, OpenSearch by settings."""
    return _index_result(build_keyword_index(settings.get()))


@dg.asset(group_name="indexes", deps=[corpus_chunks], kinds={"qdrant"})
def dense_index(settings: SettingsResource) -> dg.MaterializeResult:
    """MiniLM embeddings in Qdrant (local mode by default, a server by URL)."""
    return _index_result(build_dense_index(settings.get(), progress=True))


@dg.asset(group_name="indexes", deps=[corpus_chunks], kinds={"ladybug"})
def knowledge_graph(settings: SettingsResource) -> dg.MaterializeResult:
    """Entities and relations per chunk with chunk->entity provenance (ladybug by default, NebulaGraph)."""
    return _index_result(build_graph_index(settings.get()))


# the settings that change what the retrieval evaluation measures (chunks, redaction, indexes, fusion);
# others (the bench, the router's lambdas, tracing) leave its figures as they are
RETRIEVAL_SETTINGS = (
    "chunk_tokens",
    "chunk_overlap",
    "max_file_mb",
    "pii_spacy_model",
    "embedder",
    "keyword_backend",
    "opensearch_url",
    "opensearch_index",
    "vector_backend",
    "qdrant_url",
    "qdrant_collection",
    "qdrant_exact",
    "graph_backend",
    "graph_weight",
    "fusion",
    "hybrid_alpha",
    "rrf_k",
)


@dg.asset(
    group_name="indexes",
    deps=[keyword_index, dense_index],
    check_specs=[dg.AssetCheckSpec("ndcg_floor", asset="retrieval_evaluation")],
    kinds={"tantivy", "qdrant"},
)
def retrieval_evaluation(context: dg.AssetExecutionContext, settings: SettingsResource):
    """Every retriever on a labelled sample of a BEIR folder (SciFact train claims by default: sampled
    queries, their relevant abstracts and random distractors), with the same index code as the corpus
    indexes. The check holds hybrid nDCG@10 above SM_RETRIEVAL_NDCG_FLOOR. Full-corpus figures:
    benchmarks/retrieval.py."""
    s = settings.get()
    src = s.retrieval_eval_dir or s.shared_data_dir / "scifact"
    if not (src / "corpus.jsonl").exists():
        raise dg.Failure(f"no labelled BEIR folder at {src}; set SM_RETRIEVAL_EVAL_DIR")
    out = s.run_dir / "retrieval_evaluation"
    sample = write_beir_sample(src, out / "sample", s.retrieval_eval_queries, s.retrieval_eval_distractors)
    modes = ("bm25", "dense", "hybrid", "hybrid_rrf")
    code = source_digest(*(REPO_ROOT / "pipelines" / d for d in ("corpus", "index", "rag")))
    from pipelines.index.embeddings import LazyEmbedder

    embedder = LazyEmbedder(s.embedder).name  # a fine-tuned folder by what it holds, not by its path
    fp = fingerprint(
        sample, modes, s.model_dump(mode="json", include=set(RETRIEVAL_SETTINGS)), embedder, code
    )
    png, summary_json = out / "retrieval.png", out / "summary.json"
    reused = recall(out / "fingerprint.json", fp) is not None and png.exists() and summary_json.exists()
    if reused:  # same sample, settings and retrieval code: the figures stand (latencies as measured then)
        rows = json.loads((out / "summary.json").read_text())["retrievers"]
    else:
        forget(out / "fingerprint.json")  # before the plot and summary are overwritten
        result = evaluate_retrievers(
            s, sample, sample / "queries.jsonl", sample / "qrels.tsv", modes, out / "index"
        )
        rows = result["retrievers"]
        retrieval_plot(rows, png, f"{src.name} sample: {rows[0]['queries']} queries")
        summary = {"source": str(src), "sample": str(sample), "retrievers": rows}
        write_atomic(out / "summary.json", json.dumps(summary, indent=1).encode())
        remember(out / "fingerprint.json", fp, summary=str(out / "summary.json"))
    context.log.info("\n" + pd.DataFrame(rows).to_string(index=False))
    by_mode = {r["retriever"]: r for r in rows}
    yield dg.MaterializeResult(
        metadata={
            **{f"{m} ndcg@10": r["ndcg@10"] for m, r in by_mode.items()},
            "table": dg.MetadataValue.md(pd.DataFrame(rows).to_markdown(index=False)),
            "plot": dg.MetadataValue.md(f"![retrieval]({png.as_uri()})"),
            "plot_path": dg.MetadataValue.path(str(png)),
            "reused": reused,
        },
        data_version=dg.DataVersion(fp[:16]),
    )
    hybrid = by_mode["hybrid"]["ndcg@10"]
    yield dg.AssetCheckResult(
        check_name="ndcg_floor",
        passed=bool(hybrid >= s.retrieval_ndcg_floor),
        metadata={"hybrid ndcg@10": float(hybrid), "floor": float(s.retrieval_ndcg_floor)},
    )
