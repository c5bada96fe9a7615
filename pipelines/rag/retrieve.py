"""Hybrid retrieval over the three indexes: BM25, dense, their fusion, and graph expansion.

Modes: `bm25`, `dense`, `hybrid` (fusion chosen by settings: the tuned convex combination by default, or
RRF), `hybrid_rrf`, `hybrid_convex`, `hybrid_graph` (hybrid plus chunks reached through the knowledge
graph: query entities -> related entities -> chunks that mention them). Every hit carries its text, its
source, the fused score and each retriever's own score and rank: the provenance of the result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from pipelines.index.base import ScoredChunk, doc_id_of
from pipelines.index.keyword import normalised
from pipelines.rag.fusion import convex, rrf
from pipelines.settings import Settings

MODES = ("bm25", "dense", "hybrid", "hybrid_rrf", "hybrid_convex", "hybrid_graph")
# Score normalisation for the convex combination, chosen with the chunk size and alpha on SciFact's 809 train
# claims (benchmarks/retrieval.py --tune, 2026-12-03): theoretical-min-max (BM25 from 0, cosine from -1) with
# alpha 0.8 and 192-token chunks gave hybrid nDCG@10 0.7493, against 0.7388 for min-max at alpha 0.5 with
# 256-token chunks (the default before; paired difference +0.0106, se 0.0044, +0.0118 and +0.0094 on the two
# halves of the claims). At 256 tokens the two normalisations tied (0.7385 and 0.7388). Recall@100 fell from
# 0.9582 to 0.9464. hybrid_graph: graph weight 0.02 gave 0.7502 (0.1, the default before: 0.7371).
NORMALISATION = "tmm"
# the deepest list search_docs asks for: OpenSearch refuses a search past index.max_result_window (10,000 by
# default), and every backend is asked as deep, so that they rank alike
MAX_DEPTH = 10_000


@dataclass
class Hit:
    chunk_id: str
    doc_id: str
    score: float
    title: str = ""
    text: str = ""
    source: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class Retriever:
    def __init__(self, chunks: pd.DataFrame, keyword=None, dense=None, graph=None,
                 settings: Settings | None = None, depth: int = 200) -> None:  # fmt: skip
        self.settings = settings or Settings()
        self.keyword, self.dense, self.graph, self.depth = keyword, dense, graph, depth
        self.chunks = chunks.set_index("chunk_id", drop=False)

    def close(self) -> None:
        _close(self.dense, self.graph)

    def lists(self, query: str, mode: str, depth: int | None = None) -> dict[str, list[ScoredChunk]]:
        """Each retriever's own ranked list for `query` (only those the mode needs)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
        depth = depth or self.depth
        query = query.encode("utf-8", "replace").decode()  # a lone surrogate ("\ud800") is no character
        query = normalised(query)  # "ＤＮＡ" is DNA to every retriever, as to the keyword index's analysis
        # nothing to match ("", "???", a zero-width space): the dense index ranked every chunk 0.0 in its
        # order, or gave confident hits for punctuation
        blank = not any(ch.isalnum() for ch in query)
        out: dict[str, list[ScoredChunk]] = {}
        if mode != "dense":
            out["bm25"] = [] if blank else self._need(self.keyword, "keyword").search(query, depth)
        if mode != "bm25":
            out["dense"] = [] if blank else self._need(self.dense, "dense").search(query, depth)
        if mode == "hybrid_graph":
            from pipelines.index.graph import graph_search

            graph = self._need(self.graph, "graph")
            out["graph"] = [] if blank else graph_search(graph, query, len(self.chunks), depth)
        return out

    @staticmethod
    def _need(backend, what: str):
        if backend is None:
            raise RuntimeError(f"this retriever has no {what} index")
        return backend

    def fuse(self, lists: dict[str, list[ScoredChunk]], mode: str) -> list[tuple[str, float]]:
        s = self.settings
        if mode in ("bm25", "dense"):
            return [(h.chunk_id, h.score) for h in lists[mode]]
        if mode == "hybrid_rrf" or (mode in ("hybrid", "hybrid_graph") and s.fusion == "rrf"):
            # hybrid_graph is hybrid plus the graph's list: BM25 and dense weigh the same in both
            return rrf(lists, k=s.rrf_k, weights={"bm25": 1.0, "dense": 1.0, "graph": s.graph_weight})
        weights = {"bm25": 1 - s.hybrid_alpha, "dense": s.hybrid_alpha, "graph": s.graph_weight}
        return convex(lists, weights, NORMALISATION)

    def search(self, query: str, mode: str = "hybrid", k: int = 10) -> list[Hit]:
        """The `k` best chunks. An index that changed after this retriever loaded its chunk table (a server
        engine that a later ingest updated) can name chunks the table lacks: they have no text to show or
        cite, and are left out."""
        _check_k(k)
        lists = self.lists(query, mode, max(self.depth, k))
        known = [(cid, score) for cid, score in self.fuse(lists, mode) if cid in self.chunks.index]
        return self._hits(known[:k], lists)

    def _hits(self, fused: list[tuple[str, float]], lists: dict[str, list[ScoredChunk]]) -> list[Hit]:
        ranks = {n: {h.chunk_id: (r, h.score) for r, h in enumerate(hs, 1)} for n, hs in lists.items()}
        hits = []
        for cid, score in fused:
            row = self.chunks.loc[cid]
            hits.append(Hit(
                chunk_id=cid, doc_id=doc_id_of(cid), score=float(score),
                title=str(row["title"] or ""), text=str(row["text"]), source=str(row["source"]),
                scores={n: rs[cid][1] for n, rs in ranks.items() if cid in rs},
                ranks={n: rs[cid][0] for n, rs in ranks.items() if cid in rs},
            ))  # fmt: skip
        return hits

    def search_docs(self, query: str, mode: str = "hybrid", k: int = 100) -> list[str]:
        """Document ids, best first (a document ranks by its best chunk): what BEIR evaluation scores. Each
        list goes deeper (twice as deep a time) until its chunks name `k` documents, it runs dry or it is
        MAX_DEPTH deep, so a corpus of many chunks a document still gets `k`."""
        _check_k(k)
        depth = min(max(self.depth, k), MAX_DEPTH)
        while True:
            lists = self.lists(query, mode, depth)
            docs = list(dict.fromkeys(doc_id_of(c) for c, _ in self.fuse(lists, mode)))
            if len(docs) >= k or depth == MAX_DEPTH or all(len(hits) < depth for hits in lists.values()):
                return docs[:k]
            depth = min(depth * 2, MAX_DEPTH)


def _check_k(k: int) -> None:
    if k < 1:  # a negative k cut the list's tail off (known[:-1]); 0 was a panic in tantivy
        raise ValueError(f"k must be 1 or more, got {k}")


def open_retriever(settings: Settings, index_dir: str | Path | None = None, store=None,
                   modes: tuple[str, ...] = MODES) -> Retriever:  # fmt: skip
    """A retriever over the indexes built by pipelines.index.build (only those the modes need); an embedded
    index not built there is an IndexMissing (a FileNotFoundError)."""
    from pipelines.corpus.ingest import load_chunks

    keyword = dense = graph = None
    try:
        if any(m != "dense" for m in modes):
            from pipelines.index.keyword import open_keyword_index

            keyword = open_keyword_index(settings, index_dir, must_exist=True)
        if any(m != "bm25" for m in modes):
            from pipelines.index.vector import open_dense_index

            dense = open_dense_index(settings, index_dir, must_exist=True)
        if "hybrid_graph" in modes:
            from pipelines.index.graph import open_graph

            graph = open_graph(settings, index_dir, must_exist=True)
        chunks = load_chunks(settings, store)
    except BaseException:  # what opened closes: a local index's lock outlived a failed open in this process
        _close(dense, graph)
        raise
    return Retriever(chunks, keyword, dense, graph, settings)


def _close(*backends) -> None:
    for backend in backends:
        if backend is not None and hasattr(backend, "close"):
            backend.close()
