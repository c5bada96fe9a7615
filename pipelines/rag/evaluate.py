"""Evaluate a retriever on a BEIR-layout folder: ingest it (incrementally), bring the indexes up to date
(an index already built for the same corpus is reused), run the queries one at a time, score them."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from pipelines.corpus.ingest import ingest_corpus
from pipelines.corpus.store import LocalStore
from pipelines.index.build import build_dense_index, build_graph_index, build_keyword_index
from pipelines.rag.metrics import load_qrels, load_queries, ndcg_at_10, percentiles_ms, recall_at_100
from pipelines.rag.retrieve import MODES, Retriever, open_retriever
from pipelines.settings import Settings


def default_index_dir(settings: Settings, corpus: str | Path) -> Path:
    corpus = Path(corpus).resolve()
    return (
        settings.run_dir / "retrieval" / f"{corpus.name}-{hashlib.sha1(str(corpus).encode()).hexdigest()[:8]}"
    )


def prepare_indexes(settings: Settings, corpus: str | Path, index_dir: Path, modes: tuple[str, ...],
                    progress: bool = False) -> dict:  # fmt: skip
    """Ingest `corpus` into index_dir/store and build the indexes `modes` need; returns the reports."""
    store = LocalStore(index_dir / "store")
    reports = {"ingest": ingest_corpus(settings, str(corpus), store=store).to_dict()}
    if any(m != "dense" for m in modes):
        reports["keyword"] = build_keyword_index(settings, index_dir, store).to_dict()
    if any(m != "bm25" for m in modes):
        reports["dense"] = build_dense_index(settings, index_dir, store, progress=progress).to_dict()
    if "hybrid_graph" in modes:
        reports["graph"] = build_graph_index(settings, index_dir, store).to_dict()
    return reports


def run_queries(retriever: Retriever, queries: dict[str, str], qids: list[str], mode: str,
                k: int = 100) -> tuple[dict[str, list[str]], list[float]]:  # fmt: skip
    run, latencies = {}, []
    for q in qids:
        t0 = time.perf_counter()
        run[q] = retriever.search_docs(queries[q], mode, k)
        latencies.append(time.perf_counter() - t0)
    return run, latencies


def score_run(run: dict[str, list[str]], qrels: dict[str, set[str]], latencies: list[float]) -> dict:
    return {"ndcg@10": round(ndcg_at_10(run, qrels), 4), "recall@100": round(recall_at_100(run, qrels), 4),
            "queries": len(run), **percentiles_ms(latencies)}  # fmt: skip


def evaluate(
    settings: Settings, corpus: str | Path, queries_path: str | Path, qrels_path: str | Path,
    retriever: str = "hybrid", index_dir: str | Path | None = None, progress: bool = False,
) -> dict:  # fmt: skip
    if retriever not in MODES:
        raise ValueError(f"unknown retriever {retriever!r}; choose one of {MODES}")
    index_dir = Path(index_dir) if index_dir else default_index_dir(settings, corpus)
    reports = prepare_indexes(settings, corpus, index_dir, (retriever,), progress)
    queries, qrels = load_queries(queries_path), load_qrels(qrels_path)
    qids = [q for q in qrels if q in queries]
    r = open_retriever(settings, index_dir, LocalStore(index_dir / "store"), modes=(retriever,))
    try:
        run, latencies = run_queries(r, queries, qids, retriever)
    finally:
        r.close()
    indexing = {k: {f: v.get(f) for f in ("added", "total", "seconds", "chunks_per_s")}
                for k, v in reports.items() if k != "ingest"}  # fmt: skip
    ingest = reports["ingest"]
    return {"retriever": retriever, **score_run(run, qrels, latencies), "index_dir": str(index_dir),
            "ingest": {k: ingest[k] for k in ("docs_total", "chunks_total", "chunks_written", "seconds")},
            "indexing": indexing}  # fmt: skip
