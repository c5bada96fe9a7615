"""RAG questions derived from a labelled corpus in BEIR layout (SciFact by default), with gold chunk ids.

Each query with relevance judgements becomes a `rag_answer` prompt: the question asks what the sources say
about the query (a SciFact claim), the contexts are the chunks of its relevant documents, and
`gold_chunk_ids` names them: the ids ingest gives those chunks (same parser, PII redaction and chunker), so
a RAG run over an ingested copy of the corpus can be checked against them. There is no reference answer:
the bench rates these answers with the judge model (`scorers.JudgeScorer`), and RAGAS can score them.
"""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

from pipelines.settings import Settings

TASK = "rag_answer"
QUESTION = "What do the sources say about this claim: does the evidence support or contradict it?\n{claim}"


def beir_rag_questions(settings: Settings, beir_dir: str | Path, n: int = 20, seed: int = 0,
                       split: str = "train", max_chunks: int = 3) -> pd.DataFrame:  # fmt: skip
    """`n` queries of `split` (drawn with `seed`) whose relevant documents are all in the corpus."""
    from pipelines.bench.prompts import _frame
    from pipelines.corpus.ingest import chunk_rows
    from pipelines.corpus.parsers import parse_file
    from pipelines.rag.metrics import load_qrels, load_queries

    beir_dir = Path(beir_dir)
    queries = load_queries(beir_dir / f"queries_{split}.jsonl")
    qrels = load_qrels(beir_dir / f"qrels_{split}.tsv")
    corpus = beir_dir / "corpus.jsonl"
    docs, _ = parse_file(corpus.name, corpus.read_bytes())
    by_id = {d.doc_id: d for d in docs}
    qids = sorted(q for q, rel in qrels.items() if q in queries and rel and rel <= by_id.keys())
    random.Random(seed).shuffle(qids)
    rows = []
    for q in qids[:n]:
        gold = chunk_rows(settings, [by_id[d] for d in sorted(qrels[q])])[:max_chunks]
        rows.append({
            "prompt_id": f"{beir_dir.name}-{split}-{q}", "task": TASK,
            "prompt": QUESTION.format(claim=queries[q]), "reference": None, "tests": None,
            "contexts": [f"{r['title']}: {r['text']}" if r["title"] else r["text"] for r in gold],
            "gold_chunk_ids": [r["chunk_id"] for r in gold],
        })  # fmt: skip
    return _frame(rows)
