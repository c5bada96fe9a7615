"""Retrieval benchmark on a BEIR folder (default: ../shared/data/scifact, train claims): nDCG@10 and
Recall@100 for bm25, dense, hybrid (convex), hybrid_rrf and hybrid_graph; indexing throughput (chunks/s)
and per-query latency p50/p95. Indexes are built once under $SM_RUN_DIR/bench/<corpus> (runs/bench/<corpus>
by default) and reused (incremental: an interrupted embedding run resumes where it stopped).

    .venv/bin/python benchmarks/retrieval.py [--corpus DIR] [--queries Q.jsonl] [--qrels Q.tsv]
        [--retrievers bm25,dense,hybrid,hybrid_rrf,hybrid_graph] [--tune] [--finetune-folds K]

--tune sweeps the convex weight alpha (and the RRF k) on the given queries (tune on train claims only) and
prints the best; the default alpha lives in settings (SM_HYBRID_ALPHA). --finetune-folds K scores MiniLM
fine-tuned on the queries (pipelines/index/finetune.py) by K-fold cross-validation over them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.corpus.store import LocalStore  # noqa: E402
from pipelines.rag.evaluate import (  # noqa: E402
    evaluation_settings,
    prepare_indexes,
    ranked_docs,
    run_queries,
    score_run,
)
from pipelines.rag.metrics import load_qrels, load_queries, ndcg_at_10, query_folds  # noqa: E402
from pipelines.rag.retrieve import open_retriever  # noqa: E402
from pipelines.settings import Settings  # noqa: E402


def tune(retriever, queries, qids, qrels) -> dict:
    """Sweep alpha for the convex combination and k for RRF on cached per-retriever lists."""
    from pipelines.index.base import doc_id_of
    from pipelines.rag.fusion import convex, rrf

    lists = {q: retriever.lists(queries[q], "hybrid") for q in qids}

    def score(fuse) -> float:
        run = {q: list(dict.fromkeys(doc_id_of(c) for c, _ in fuse(lists[q]))) for q in qids}
        return ndcg_at_10(run, qrels)

    out = {}
    for norm in ("minmax", "tmm"):
        for a in [x / 20 for x in range(0, 21)]:
            w = {"bm25": 1 - a, "dense": a}
            out[f"convex {norm} alpha={a:.2f}"] = round(score(lambda ls, w=w, n=norm: convex(ls, w, n)), 4)
    for k in (10, 30, 60, 100):
        out[f"rrf k={k}"] = round(score(lambda ls, k=k: rrf(ls, k=k)), 4)
    return out


def embedding_speed(settings: Settings, index_dir: Path, n: int) -> None:
    """MiniLM on the same `n` chunks: torch fp32, torch in bf16 where the CPU has it, OpenVINO at that
    precision, and OpenVINO int8 (the default embedder): chunks/s of each, ratios to torch at the same
    precision, and how close each one's vectors are to fp32's."""
    from pipelines.corpus.ingest import load_chunks
    from pipelines.index.embeddings import MiniLMEmbedder
    from pipelines.index.vector import embed_passages

    chunks = load_chunks(settings, LocalStore(index_dir / "store")).head(n)
    runs = []
    for kw in ({"precision": "fp32", "backend": "torch"}, {"backend": "torch"}, {}, {"precision": "int8"}):
        e = MiniLMEmbedder(**kw)
        embed_passages(e, chunks.head(32))  # warm-up
        t0 = time.perf_counter()
        vecs = embed_passages(e, chunks)
        runs.append((f"{e.backend} {e.precision}", len(chunks) / (time.perf_counter() - t0), vecs))
    ref, same = runs[0], runs[1]
    print(f"MiniLM on {len(chunks)} chunks:")
    for name, rate, vecs in runs:
        cos = float((vecs * ref[2]).sum(1).mean())
        print(f"  {name:<16} {rate:6.1f} chunks/s  x{rate / ref[1]:.2f} of torch fp32, "
              f"x{rate / same[1]:.2f} of {same[0]}, mean cosine to fp32 {cos:.5f}")  # fmt: skip


def finetune_cv(settings: Settings, corpus: Path, index_dir: Path, queries: dict, qrels: dict, qids: list,
                folds: int, epochs: int, lr: float, modes: tuple[str, ...],
                negatives: int = 0, precision: str = "int8",
                base_runs: dict | None = None) -> dict[str, float]:  # fmt: skip
    """K-fold over the queries: fine-tune MiniLM on the other folds' queries (with a BM25 hard negative per
    pair drawn from the top `negatives` when > 0), index the corpus with it run in `precision` (int8 |
    float), score this fold's queries;
    nDCG@10 of the pooled out-of-fold runs (every query scored by a model that saw neither it nor a query
    sharing a relevant document with it: `query_folds`). Models and
    their collections stay under index_dir and are reused. Each fold's figures are printed as it ends,
    beside the stock model's on the same queries where `base_runs` (mode -> run) holds them."""
    from pipelines.corpus.ingest import load_chunks
    from pipelines.index.finetune import (
        MANIFEST,
        finetune_minilm,
        hard_negatives,
        set_precision,
        training_pairs,
    )

    store = LocalStore(index_dir / "store")
    chunks = load_chunks(settings, store)
    ranked = ranked_docs(settings, corpus, index_dir, queries, qids, "bm25", negatives) if negatives else {}
    fold = query_folds(qrels, qids, folds)  # a query's twins (sharing a relevant document) in its fold
    runs: dict[str, dict] = {m: {} for m in modes if m != "bm25"}  # the modes the embedder changes
    for f in range(folds):
        test = [q for q in qids if fold[q] == f]
        neg = f"-neg{negatives}" if negatives else ""
        model_dir = index_dir / "finetuned" / f"minilm-e{epochs}-lr{lr:g}{neg}-fold{f}of{folds}-bydoc"
        if not (model_dir / MANIFEST).exists():
            train = {q: qrels[q] for q in qids if fold[q] != f}
            hard = hard_negatives(chunks, queries, train, ranked, depth=negatives) if negatives else None
            finetune_minilm(training_pairs(chunks, queries, train), model_dir, epochs=epochs, lr=lr,
                            negatives=hard)  # fmt: skip
        set_precision(model_dir, precision)  # the same weights run either way
        tuned = settings.model_copy(update={"embedder": str(model_dir)})
        rep = prepare_indexes(tuned, corpus, index_dir, ("dense",), progress=True)["dense"]
        if rep["added"]:
            print(f"fold {f + 1}/{folds}: indexed {rep['added']} chunks, {rep['chunks_per_s']} chunks/s")
        r = open_retriever(tuned, index_dir, store, modes=tuple(runs))
        try:
            for mode in runs:
                runs[mode].update(run_queries(r, queries, test, mode)[0])
        finally:
            r.close()
        figures, truth = [], {q: qrels[q] for q in test}
        for mode, run in runs.items():
            tuned = ndcg_at_10({q: run[q] for q in test}, truth)
            stock = (base_runs or {}).get(mode)
            was = f"{ndcg_at_10({q: stock[q] for q in test}, truth):.4f} -> " if stock else ""
            figures.append(f"{mode} {was}{tuned:.4f}")
        print(f"fold {f + 1}/{folds}: {len(test)} queries, nDCG@10 {'; '.join(figures)}", flush=True)
    return {mode: round(ndcg_at_10(run, {q: qrels[q] for q in run}), 4) for mode, run in runs.items()}


def main() -> None:
    base = Settings()
    data = base.shared_data_dir / "scifact"
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=data)
    p.add_argument("--queries", type=Path, default=data / "queries_train.jsonl")
    p.add_argument("--qrels", type=Path, default=data / "qrels_train.tsv")
    p.add_argument("--index-dir", type=Path, default=None)
    p.add_argument("--retrievers", default="bm25,dense,hybrid,hybrid_rrf,hybrid_graph")
    p.add_argument("--tune", action="store_true")
    p.add_argument("--embed-speed", type=int, default=400, metavar="N",
                   help="time MiniLM on N chunks: torch fp32, torch and OpenVINO in bf16 where the CPU "
                        "has it, OpenVINO int8 (0: skip)")  # fmt: skip
    p.add_argument(
        "--finetune-folds",
        type=int,
        default=0,
        metavar="K",
        help="also score MiniLM fine-tuned on the queries, by K-fold cross-validation (0: skip)",
    )
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--finetune-lr", type=float, default=3e-5)
    p.add_argument("--finetune-negatives", type=int, default=10, metavar="DEPTH",
                   help="a hard negative per pair from BM25's top DEPTH (0: in-batch only)")  # fmt: skip
    p.add_argument("--finetune-precision", choices=("int8", "float"), default="int8")
    args = p.parse_args()
    if not (args.corpus / "corpus.jsonl").exists():
        sys.exit(f"no BEIR corpus at {args.corpus}")
    modes = tuple(args.retrievers.split(","))
    index_dir = args.index_dir or base.run_dir / "bench" / args.corpus.name
    settings = evaluation_settings(base, index_dir)  # a server backend's own names, not production's
    t0 = time.perf_counter()
    reports = prepare_indexes(settings, args.corpus, index_dir, modes, progress=True)
    print(
        json.dumps({"indexing": reports, "seconds": round(time.perf_counter() - t0, 1)}, default=str)[:3000]
    )
    queries, qrels = load_queries(args.queries), load_qrels(args.qrels)
    qids = [q for q in qrels if q in queries]
    r = open_retriever(settings, index_dir, LocalStore(index_dir / "store"), modes=modes)
    rows, base_runs = [], {}
    try:
        if args.tune:
            print(json.dumps(tune(r, queries, qids, qrels), indent=1))
        for mode in modes:
            run, lat = run_queries(r, queries, qids, mode)
            base_runs[mode] = run
            rows.append({"retriever": mode, **score_run(run, qrels, lat)})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        r.close()
    print("\n| retriever | nDCG@10 | Recall@100 | p50 ms | p95 ms |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['retriever']} | {row['ndcg@10']:.4f} | {row['recall@100']:.4f} | "
              f"{row['query_p50_ms']:.1f} | {row['query_p95_ms']:.1f} |")  # fmt: skip
    for name, rep in reports.items():
        if name != "ingest":
            print(
                f"{name} index: {rep['added']} chunks added in {rep['seconds']} s "
                f"({rep['chunks_per_s']} chunks/s)"
            )
    if args.finetune_folds:
        base = {row["retriever"]: row["ndcg@10"] for row in rows}
        cv = finetune_cv(settings, args.corpus, index_dir, queries, qrels, qids, args.finetune_folds,
                         args.finetune_epochs, args.finetune_lr, modes, args.finetune_negatives,
                         args.finetune_precision, base_runs)  # fmt: skip
        print(f"\nMiniLM fine-tuned on the other folds' queries ({args.finetune_folds}-fold CV, "
              f"{args.finetune_epochs} epochs, lr {args.finetune_lr:g}, hard negatives from BM25's top "
              f"{args.finetune_negatives}, run in {args.finetune_precision}); nDCG@10, "
              "same queries:")  # fmt: skip
        for mode, nd in cv.items():
            print(f"  {mode}: {nd:.4f} (base model {base.get(mode, float('nan')):.4f})")
    if args.embed_speed and "dense" in reports:
        embedding_speed(settings, index_dir, args.embed_speed)
    ing = reports["ingest"]
    print(
        f"ingest: {ing['docs_total']} docs, {ing['chunks_total']} chunks, {ing['seconds']} s, "
        f"PII {ing['pii_redacted']}"
    )


if __name__ == "__main__":
    main()
