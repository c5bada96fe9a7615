"""Rank fusion: reciprocal-rank fusion and the convex combination of normalised scores (Bruch et al. 2022,
"An Analysis of Fusion Functions for Hybrid Retrieval": a tuned convex combination beats RRF in and out of
domain). Lists are {chunk_id: score}; the result is a list of (chunk_id, fused score), best first."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pipelines.index.base import ScoredChunk

# Theoretical score floors for theoretical-min-max normalisation: BM25 >= 0, cosine >= -1 (Bruch et al.).
THEORETICAL_MIN = {"bm25": 0.0, "dense": -1.0, "graph": 0.0}


def rrf(lists: Mapping[str, Sequence[ScoredChunk]], k: int = 60,
        weights: Mapping[str, float] | None = None) -> list[tuple[str, float]]:  # fmt: skip
    fused: dict[str, float] = {}
    for name, hits in lists.items():
        w = 1.0 if weights is None else weights.get(name, 0.0)
        if w == 0:  # as in `convex`: a list of weight 0 adds no chunk
            continue
        for rank, h in enumerate(hits, 1):
            fused[h.chunk_id] = fused.get(h.chunk_id, 0.0) + w / (k + rank)
    return sorted(fused.items(), key=lambda kv: -kv[1])


def normalise(name: str, hits: Sequence[ScoredChunk], method: str = "tmm") -> dict[str, float]:
    """Scores to [0, 1]: `minmax` over the list, or `tmm` from the theoretical floor to the list's best."""
    if not hits:
        return {}
    scores = [h.score for h in hits]
    hi = max(scores)
    lo = THEORETICAL_MIN.get(name, 0.0) if method == "tmm" else min(scores)
    span = hi - lo
    return {h.chunk_id: (h.score - lo) / span if span > 0 else 1.0 for h in hits}


def convex(lists: Mapping[str, Sequence[ScoredChunk]], weights: Mapping[str, float],
           method: str = "tmm") -> list[tuple[str, float]]:  # fmt: skip
    """sum_i w_i * norm_i(score); a chunk missing from a list gets 0 for it (its normalised floor)."""
    fused: dict[str, float] = {}
    for name, hits in lists.items():
        w = weights.get(name, 0.0)
        if w == 0:
            continue
        for cid, s in normalise(name, hits, method).items():
            fused[cid] = fused.get(cid, 0.0) + w * s
    return sorted(fused.items(), key=lambda kv: -kv[1])
