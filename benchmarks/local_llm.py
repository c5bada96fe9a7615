"""The local models' weights as shipped against the weights served (the catalog's `cpu_bf16` or
`no_bf16_type` copy and `flash_attn`), in the same run: prompt evaluation and generation speed, and perplexity
as the check that the served model is the same model.

    .venv/bin/python benchmarks/local_llm.py [--prompt-tokens 1000] [--gen-tokens 64] [--types Q4_0,IQ4_NL]

`--types` also measures copies of the shipped weights in other llama.cpp file types (written to a temporary
folder, lossy ones included), so that a faster kernel's cost in perplexity is seen in the same run.

Prompt speed is measured on ~1,000 tokens of this README (the size of a RAG prompt with four chunks), best
of three; generation is greedy from a 200-token prompt; perplexity is over 3,500 tokens of Python's
reference topics (`pydoc_data.topics`) in 512-token windows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from llama_cpp import Llama  # noqa: E402

from pipelines.llm.catalog import load_catalog  # noqa: E402
from pipelines.llm.weights import quantize_file, shipped_path, weights_path  # noqa: E402
from pipelines.settings import Settings  # noqa: E402


def measure(path: Path, threads: int, flash_attn: bool, prompt_tokens: int, gen_tokens: int) -> dict:
    def load(logits_all: bool) -> Llama:  # logits for every token (perplexity) slow prompt evaluation down
        return Llama(str(path), n_ctx=2048, n_threads=threads, n_threads_batch=threads, flash_attn=flash_attn,
                     logits_all=logits_all, verbose=False)  # fmt: skip

    llm = load(False)
    toks = llm.tokenize((ROOT / "README.md").read_text()[:12000].encode())[:prompt_tokens]
    times = []
    for _ in range(3):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(toks)
        times.append(time.perf_counter() - t0)
    llm.reset()
    llm.eval(toks[:200])
    t0 = time.perf_counter()
    for _ in range(gen_tokens):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    gen_s = time.perf_counter() - t0
    del llm
    import pydoc_data.topics

    llm = load(True)

    text = " ".join(list(pydoc_data.topics.topics.values())[:40])
    ref = llm.tokenize(text.encode())[:3584]
    nll = []
    for s in range(0, len(ref) - 1, 512):
        seg = ref[s : s + 512]
        llm.reset()
        llm.eval(seg)
        logits = np.array(llm.scores[: len(seg) - 1], dtype=np.float64)
        logits -= logits.max(1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        nll += list(-logp[np.arange(len(seg) - 1), seg[1:]])
    return {"prompt_tok_s": len(toks) / min(times), "gen_tok_s": gen_tokens / gen_s,
            "perplexity": float(np.exp(np.mean(nll)))}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompt-tokens", type=int, default=1000)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--types", default="", help="other llama.cpp file types to measure, e.g. Q4_0,IQ4_NL")
    args = ap.parse_args()
    types = [t.strip().upper() for t in args.types.split(",") if t.strip()]
    scratch = tempfile.TemporaryDirectory(prefix="local_llm_")
    settings = Settings()
    print(f"{'model':14s} {'weights':36s} {'flash':5s} {'prompt tok/s':>12s} {'gen tok/s':>9s} {'ppl':>7s}")
    for entry in load_catalog(settings).local():
        shipped, served = shipped_path(entry, settings), weights_path(entry, settings)
        variants = [(shipped, False), (served, bool(entry.local.flash_attn))]
        for t in types:
            copy = Path(scratch.name) / f"{shipped.stem}.{t}.gguf"
            quantize_file(shipped, copy, t)
            variants.append((copy, bool(entry.local.flash_attn)))
        rows = []
        for path, fa in dict.fromkeys(variants):
            r = measure(path, settings.local_threads, fa, args.prompt_tokens, args.gen_tokens)
            rows.append((path, r))
            print(f"{entry.name:14s} {path.name[:36]:36s} {str(fa):5s} {r['prompt_tok_s']:12.0f} "
                  f"{r['gen_tok_s']:9.0f} {r['perplexity']:7.3f}", flush=True)  # fmt: skip
        for path, r in rows[1:]:
            prompt, gen = (r[k] / rows[0][1][k] for k in ("prompt_tok_s", "gen_tok_s"))
            print(f"{'':14s} {path.name[:36]} / shipped: prompt x{prompt:.2f}, generation x{gen:.2f}")
    scratch.cleanup()


if __name__ == "__main__":
    main()
