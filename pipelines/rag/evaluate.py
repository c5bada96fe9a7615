"""Evaluate a retriever on a BEIR-layout folder: ingest it (incrementally), bring the indexes up to date
(an index already built for the same corpus is reused), run the queries one at a time, score them."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

from pipelines.corpus.ingest import ingest_corpus
from pipelines.corpus.store import LocalStore
from pipelines.files import save_figure, write_atomic
from pipelines.index.build import build_dense_index, build_graph_index, build_keyword_index
from pipelines.rag.metrics import load_qrels, load_queries, ndcg_at_10, percentiles_ms, recall_at_100
from pipelines.rag.retrieve import MODES, Retriever, open_retriever
from pipelines.settings import Settings


def default_index_dir(settings: Settings, corpus: str | Path) -> Path:
    corpus = Path(corpus).resolve()
    return (
        settings.run_dir / "retrieval" / f"{corpus.name}-{hashlib.sha1(str(corpus).encode()).hexdigest()[:8]}"
    )


def evaluation_settings(settings: Settings, index_dir: str | Path) -> Settings:
    """`settings` whose server-side index names (OpenSearch index, Qdrant collection, NebulaGraph space) are
    this evaluation's own, suffixed with its folder's name: the embedded engines live in `index_dir`, but a
    server keeps one index per name, and an evaluation that synced the production names made the production
    index hold only its sample (and the next index build undid it). The suffix holds a hash of the folder's
    full path too: two evaluations in folders of one name (`/a/idx`, `/b/idx`) shared one server index.
    Idempotent."""
    folder = Path(index_dir).resolve()
    name = re.sub(r"[^a-z0-9]+", "_", folder.name.lower()).strip("_") or "default"
    tag = f"{name}_{hashlib.sha1(str(folder).encode()).hexdigest()[:8]}"
    server = {  # the embedded engines keep their names: their folder is the evaluation's already
        "opensearch_index": (settings.keyword_backend == "opensearch", f"-eval-{tag}"),
        "qdrant_collection": (settings.vector_backend == "qdrant_server", f"_eval_{tag}"),
        "nebula_space": (settings.graph_backend == "nebula", f"_eval_{tag}"),
    }
    names = {field: getattr(settings, field) for field in server}
    return settings.model_copy(
        update={f: names[f] + sfx for f, (on, sfx) in server.items() if on and not names[f].endswith(sfx)}
    )


def prepare_indexes(settings: Settings, corpus: str | Path, index_dir: Path, modes: tuple[str, ...],
                    progress: bool = False, ingested: dict | None = None) -> dict:  # fmt: skip
    """Ingest `corpus` into index_dir/store (unless the caller just did: `ingested`, its report) and build
    the indexes `modes` need; returns the reports. Pass `evaluation_settings(settings, index_dir)`, as the
    retriever opened on these indexes must be."""
    store = LocalStore(index_dir / "store")
    reports = {"ingest": ingested or ingest_corpus(settings, str(corpus), store=store).to_dict()}
    if any(m != "dense" for m in modes):
        reports["keyword"] = build_keyword_index(settings, index_dir, store).to_dict()
    if any(m != "bm25" for m in modes):
        reports["dense"] = build_dense_index(settings, index_dir, store, progress=progress).to_dict()
    if "hybrid_graph" in modes:
        reports["graph"] = build_graph_index(settings, index_dir, store).to_dict()
    return reports


def ranked_docs(settings: Settings, corpus: str | Path, index_dir: Path, queries: dict[str, str],
                qids: list[str], mode: str = "bm25", k: int = 100) -> dict[str, list[str]]:  # fmt: skip
    """Each query's top `k` document ids by one retriever, its indexes built (or reused) first."""
    settings = evaluation_settings(settings, index_dir)
    prepare_indexes(settings, corpus, index_dir, (mode,))
    r = open_retriever(settings, index_dir, LocalStore(index_dir / "store"), modes=(mode,))
    try:
        return run_queries(r, queries, qids, mode, k)[0]
    finally:
        r.close()


def load_labels(queries_path: str | Path, qrels_path: str | Path) -> tuple[dict, dict, list[str]]:
    """Queries, qrels, and the qrels' query ids that have a query; a ValueError when none has one."""
    queries, qrels = load_queries(queries_path), load_qrels(qrels_path)
    qids = [q for q in qrels if q in queries]
    if not qids:
        raise ValueError(
            f"no query of {qrels_path} ({len(qrels)} with a relevant document) is in {queries_path}: "
            "qrels are tab-separated lines of query-id, corpus-id, score"
        )
    return queries, qrels, qids


def run_queries(retriever: Retriever, queries: dict[str, str], qids: list[str], mode: str,
                k: int = 100) -> tuple[dict[str, list[str]], list[float]]:  # fmt: skip
    run, latencies = {}, []
    for q in qids:
        t0 = time.perf_counter()
        run[q] = retriever.search_docs(queries[q], mode, k)
        latencies.append(time.perf_counter() - t0)
    return run, latencies


def score_run(run: dict[str, list[str]], qrels: dict[str, set[str]], latencies: list[float]) -> dict:
    # the means are over every qrels query, as the reference metrics take them: one without text scores 0
    return {"ndcg@10": round(ndcg_at_10(run, qrels), 4), "recall@100": round(recall_at_100(run, qrels), 4),
            "queries": len(run), "qrels_queries": len(qrels), **percentiles_ms(latencies)}  # fmt: skip


def evaluate(
    settings: Settings, corpus: str | Path, queries_path: str | Path, qrels_path: str | Path,
    retriever: str = "hybrid", index_dir: str | Path | None = None, progress: bool = False,
    ingested: dict | None = None,
) -> dict:  # fmt: skip
    if retriever not in MODES:
        raise ValueError(f"unknown retriever {retriever!r}; choose one of {MODES}")
    index_dir = Path(index_dir) if index_dir else default_index_dir(settings, corpus)
    queries, qrels, qids = load_labels(queries_path, qrels_path)  # before the indexing: a bad file fails fast
    settings = evaluation_settings(settings, index_dir)
    reports = prepare_indexes(settings, corpus, index_dir, (retriever,), progress, ingested)
    r = open_retriever(settings, index_dir, LocalStore(index_dir / "store"), modes=(retriever,))
    try:
        run, latencies = run_queries(r, queries, qids, retriever)
    finally:
        r.close()
    indexing = {k: {f: v.get(f) for f in ("added", "total", "seconds", "chunks_per_s")}
                for k, v in reports.items() if k != "ingest"}  # fmt: skip
    ingest = reports["ingest"]
    return {"retriever": retriever, **score_run(run, qrels, latencies), "index_dir": str(index_dir),
            "ingest": {**{k: ingest[k] for k in ("docs_total", "chunks_total", "chunks_written", "seconds")},
                       "skipped": len(ingest.get("skipped", []))},
            "indexing": indexing}  # fmt: skip


def write_beir_sample(src: str | Path, out: str | Path, n_queries: int = 100, n_distractors: int = 500,
                      seed: int = 0, split: str = "train") -> Path:  # fmt: skip
    """A small BEIR folder from a large one: `n_queries` sampled queries with all their relevant documents
    plus `n_distractors` random others. Deterministic for a seed; rewritten only when its inputs change.
    Scores on a sample are higher than on the full corpus (fewer distractors): use it for floors, not for
    the benchmark table (benchmarks/retrieval.py runs the full corpus)."""
    import json
    import random

    from pipelines.corpus.parsers import parse_file
    from pipelines.memo import fingerprint

    src, out = Path(src), Path(out)
    sources = ("corpus.jsonl", f"queries_{split}.jsonl", f"qrels_{split}.tsv")
    content = fingerprint(*(src / n for n in sources))  # by content: an edit in place is a new sample
    stamp = f"{src.resolve()}|{n_queries}|{n_distractors}|{seed}|{split}|{content[:16]}"
    if (out / "sample.txt").exists() and (out / "sample.txt").read_text() == stamp:
        return out
    queries, qrels = load_queries(src / f"queries_{split}.jsonl"), load_qrels(src / f"qrels_{split}.tsv")
    rng = random.Random(seed)
    qids = sorted(q for q in qrels if q in queries)
    qids = sorted(rng.sample(qids, min(n_queries, len(qids))))
    relevant = set().union(*(qrels[q] for q in qids))
    # read as ingest reads it: a malformed line is dropped and a repeated _id keeps its first record
    parsed, _ = parse_file("corpus.jsonl", (src / "corpus.jsonl").read_bytes())
    docs = {d.doc_id: {"_id": d.doc_id, "title": d.title, "text": d.text} for d in parsed}
    others = sorted(set(docs) - relevant)
    keep = sorted(relevant & set(docs)) + rng.sample(others, min(n_distractors, len(others)))
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "corpus.jsonl": "".join(json.dumps(docs[d]) + "\n" for d in keep),
        "queries.jsonl": "".join(json.dumps({"_id": q, "text": queries[q]}) + "\n" for q in qids),
        "qrels.tsv": "query-id\tcorpus-id\tscore\n"
        + "".join(f"{q}\t{d}\t1\n" for q in qids for d in sorted(qrels[q])),
        "sample.txt": stamp,
    }
    # the old stamp goes first: a write stopped half-way left it beside new files, which a later call for
    # the old sample then took as its own; each file is atomic, and sample.txt, last, marks the folder whole
    (out / "sample.txt").unlink(missing_ok=True)
    for name, text in files.items():
        write_atomic(out / name, text.encode("utf-8"))
    return out


def evaluate_retrievers(settings: Settings, corpus: str | Path, queries_path: str | Path,
                        qrels_path: str | Path, modes: tuple[str, ...], index_dir: Path,
                        progress: bool = False) -> dict:  # fmt: skip
    """Every retriever in `modes` on one BEIR folder (indexes built once): one row of metrics each."""
    queries, qrels, qids = load_labels(queries_path, qrels_path)
    settings = evaluation_settings(settings, index_dir)
    reports = prepare_indexes(settings, corpus, index_dir, modes, progress)
    r = open_retriever(settings, index_dir, LocalStore(index_dir / "store"), modes=modes)
    rows = []
    try:
        for mode in modes:
            run, latencies = run_queries(r, queries, qids, mode)
            rows.append({"retriever": mode, **score_run(run, qrels, latencies)})  # over every qrels query
    finally:
        r.close()
    return {"retrievers": rows, "indexing": reports}


def retrieval_plot(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """nDCG@10 and Recall@100 per retriever, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["retriever"] for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(1.4 * len(rows) + 2, 3.6))
    for off, metric in ((-0.2, "ndcg@10"), (0.2, "recall@100")):
        bars = ax.bar([i + off for i in x], [r[metric] for r in rows], width=0.4, label=metric)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(list(x), names)
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(loc="lower right")
    return save_figure(fig, path)
