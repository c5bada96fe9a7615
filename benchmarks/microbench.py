"""Micro-bench speed figures: runner throughput (calls/s) at concurrency 1, 2, 4 against the local servers,
and each scorer's cost per item.

    .venv/bin/python benchmarks/microbench.py [--calls 8] [--max-tokens 8] [--judge smollm2-135m]

Servers already up are reused; servers this script starts are stopped at the end. Prints figures only.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd

from pipelines.bench.code_exec import run_tests
from pipelines.bench.prompts import load_prompt_set
from pipelines.bench.runner import run_bench
from pipelines.bench.scorers import score_extraction, score_multiple_choice
from pipelines.llm import servers
from pipelines.llm.catalog import load_catalog
from pipelines.llm.gateway import Gateway
from pipelines.settings import Settings

WINO = ("The trophy doesn't fit into the brown suitcase because the _ is too large.\nA) trophy\nB) suitcase\n"
        'Print only a single choice  from "A" or "B" without explanation. Answer:')  # fmt: skip


def per_item_ms(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return 1000 * (time.perf_counter() - t0) / n


def throughput(gateway: Gateway, models: list[str], calls: int, max_tokens: int) -> None:
    prompts = pd.DataFrame({"prompt_id": [f"t{i}" for i in range(calls)], "task": "extraction",
                            "prompt": [f"Reply with one word: the sky's colour. ({i})" for i in range(calls)],
                            "reference": "blue"})  # fmt: skip
    print(f"runner throughput ({calls} prompts x {len(models)} models, max_tokens={max_tokens})")
    for conc in (1, 2, 4):
        with tempfile.TemporaryDirectory() as d:
            rep = run_bench(prompts.assign(prompt=prompts["prompt"] + f" [c{conc}]"), models, gateway, d,
                            concurrency=conc, max_tokens=max_tokens, progress=False)  # fmt: skip
        errors = sum(rep.errors_by_model.values())
        print(f"  concurrency {conc}: {rep.cells_run / rep.seconds:.2f} calls/s "
              f"({rep.cells_run} calls in {rep.seconds:.1f} s, {errors} errors)")  # fmt: skip


def scorer_costs(gateway: Gateway | None, judge: str | None) -> None:
    print("scorer cost per item")
    mc = per_item_ms(lambda: score_multiple_choice("The answer is (B).", "B", WINO), 2000)
    ex = per_item_ms(lambda: score_extraction("Port Ellis harbour", ["Port Ellis"]), 2000)
    print(f"  multiple choice (extract + EM): {mc:.3f} ms")
    print(f"  extraction (EM + F1):           {ex:.3f} ms")
    code, tests = "def square(n):\n    return n * n", ["assert square(3) == 9", "assert square(-2) == 4"]
    print(f"  code (sandboxed subprocess):    {per_item_ms(lambda: run_tests(code, tests), 10):.1f} ms")
    from pipelines.bench.rag_scorers import ragas_scores, trulens_groundedness

    demo = load_prompt_set("demo")
    rag = demo[demo["family"] == "rag_answer"].rename(columns={"prompt": "question"})
    rag = rag.assign(answer=rag["reference"])
    ragas_scores(rag.head(1), gateway, judge or "smollm2-135m", metrics=("rouge_l",))  # imports, warm-up
    t0 = time.perf_counter()
    ragas_scores(rag, gateway, judge or "smollm2-135m", metrics=("rouge_l", "bleu"))
    print(f"  RAGAS non-LLM (ROUGE-L + BLEU):  {1000 * (time.perf_counter() - t0) / len(rag):.1f} ms")
    if judge and gateway is not None:
        one = rag.head(2)
        t0 = time.perf_counter()
        f = ragas_scores(one, gateway, judge, metrics=("faithfulness",))
        print(f"  RAGAS faithfulness (judge {judge}): {(time.perf_counter() - t0) / len(one):.1f} s/item, "
              f"scores {f['faithfulness'].round(3).tolist()}")  # fmt: skip
        t0 = time.perf_counter()
        g = trulens_groundedness(one, gateway, judge)
        print(f"  TruLens groundedness (judge {judge}): {(time.perf_counter() - t0) / len(one):.1f} s/item, "
              f"scores {g.round(3).tolist()}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=8, help="prompts per concurrency level (x each model)")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--judge", default=None, help="also time RAGAS faithfulness and TruLens with this judge")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    settings = Settings()
    catalog = load_catalog(settings)
    started = []
    for e in catalog.local():
        if servers.status(e, settings).state == "down":  # "starting" may be a busy server that is not ours
            servers.start(e, settings)
            started.append(e)
    try:
        gateway = Gateway(settings, catalog)
        if not args.skip_throughput:
            throughput(gateway, [e.name for e in catalog.local()], args.calls, args.max_tokens)
        scorer_costs(gateway, args.judge)
    finally:
        for e in started:
            servers.stop(e, settings)


if __name__ == "__main__":
    main()
