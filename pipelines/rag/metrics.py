"""Retrieval metrics with the same definitions as the reference (`shared/tools/retrieval_metrics.py`):
binary relevance (qrels score > 0), nDCG@10 and Recall@100 averaged over every query in the qrels."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def _lines(path: str | Path):
    """The file's lines, read as UTF-8 with or without a BOM; other bytes are a ValueError naming the file."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            yield from f
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def load_queries(path: str | Path) -> dict[str, str]:
    """BEIR queries (.jsonl of {"_id", "text"}); a malformed line, or an `_id` again with another text (the
    last was kept, unsaid), is a ValueError naming it."""
    queries: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for i, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        try:
            j = json.loads(line)
            qid, text = j["_id"], j["text"]
            if isinstance(qid, bool) or not isinstance(qid, (str, int)) or not isinstance(text, str):
                raise TypeError(
                    f"_id must be a string or an integer and text a string, got {qid!r:.40}, {text!r:.40}"
                )
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path} line {i}: not a JSON object with _id and text ({e!r})") from None
        if queries.setdefault(str(qid), text) != text:
            raise ValueError(f"{path} line {i}: _id {str(qid)!r:.60} again (line {first_line[str(qid)]}), "
                             "with another text")  # fmt: skip
        first_line.setdefault(str(qid), i)
    return queries


def load_qrels(path: str | Path) -> dict[str, set[str]]:
    """BEIR qrels TSV (query-id, corpus-id, score) with or without its header row; a score may be written
    `1.0` (it was dropped as a header). Any other line that is not three tab-separated fields with a finite
    score is a ValueError naming it: skipped, it dropped a judged query and raised the score."""
    qrels: dict[str, set[str]] = {}
    for i, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        parts = line.rstrip("\r\n").split("\t")
        try:
            score = float(parts[2]) if len(parts) == 3 else math.nan
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            if i == 1:
                continue  # the header
            raise ValueError(f"{path} line {i}: not query-id, corpus-id and a finite score, tab-separated")
        if score > 0:
            qrels.setdefault(parts[0], set()).add(parts[1])
    return qrels


def query_folds(qrels: dict[str, set[str]], qids: list[str], folds: int) -> dict[str, int]:
    """A cross-validation fold for each query, queries that share a relevant document in one fold: SciFact
    asks of one abstract a claim and its negation, or the same sentence with another number, and a model
    trained on one twin was tested on the other (57% of the train claims share an abstract with a claim in
    another fold of a split by query id). Groups (connected by shared documents) are dealt to folds, largest
    first, each to the fold with the fewest queries: folds of near-equal size, the same for the same qrels."""
    parent = {q: q for q in qids}

    def root(q: str) -> str:
        while parent[q] != q:
            parent[q] = parent[parent[q]]
            q = parent[q]
        return q

    first: dict[str, str] = {}  # a document -> the first query it is relevant to
    for q in qids:
        for d in sorted(qrels.get(q, ())):
            if d in first:
                parent[root(q)] = root(first[d])
            else:
                first[d] = q
    groups: dict[str, list[str]] = {}
    for q in qids:
        groups.setdefault(root(q), []).append(q)
    sizes = [0] * folds
    out: dict[str, int] = {}
    for members in sorted(groups.values(), key=lambda g: (-len(g), min(g))):
        f = sizes.index(min(sizes))
        sizes[f] += len(members)
        out.update(dict.fromkeys(members, f))
    return out


def ndcg_at_10(run: dict[str, list[str]], qrels: dict[str, set[str]]) -> float:
    tot = 0.0
    for q, rel in qrels.items():
        dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(run.get(q, [])[:10]) if d in rel)
        idcg = sum(1 / math.log2(i + 2) for i in range(min(len(rel), 10)))
        tot += dcg / idcg
    return tot / len(qrels) if qrels else 0.0


def recall_at_100(run: dict[str, list[str]], qrels: dict[str, set[str]]) -> float:
    if not qrels:
        return 0.0
    return sum(len(set(run.get(q, [])[:100]) & rel) / len(rel) for q, rel in qrels.items()) / len(qrels)


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {"query_p50_ms": 0.0, "query_p95_ms": 0.0}
    ms = np.asarray(seconds) * 1000
    return {"query_p50_ms": round(float(np.percentile(ms, 50)), 2),
            "query_p95_ms": round(float(np.percentile(ms, 95)), 2)}  # fmt: skip
