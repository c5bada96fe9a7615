"""How much retrieved text a RAG prompt needs: prompt size and how the answers change per budget of source
characters (`SM_RAG_CONTEXT_CHARS`, shared by the sources, each cut to its share), in one run.

    .venv/bin/python benchmarks/rag_context.py [--questions 40] [--budgets 1000,1500,2000,4000]

For each of the serving bench's RAG questions, the demo index (`make demo`) gives 4 hybrid hits once; each
setting then shows them to SmolLM2 (greedy, 64 tokens out, through the gateway, as `/v1/rag` does) and the
script prints, per setting, means over the questions of:
- prompt tokens (what RAG latency on 2 cores follows: `benchmarks/serving.py --phases rag` measures it);
- agreement: ROUGE-L F1 (rouge-score, the scorer behind `pipelines.bench.rag_scorers`' rouge_l) of the
  answer against the answer given the 4 chunks whole, i.e. how far cutting the sources changes what the
  model says;
- coverage: the share of the question's content words found in the shown sources;
- grounding: the share of the answer's content words found in the shown sources.
SmolLM2's server runs from a scratch run folder (local ports from 8331) and is stopped afterwards.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rouge_score.rouge_scorer import RougeScorer  # noqa: E402  (the scorer RAGAS's rouge_l uses)
from tqdm import tqdm  # noqa: E402

from pipelines.index.base import IndexMissing  # noqa: E402
from pipelines.llm import servers  # noqa: E402
from pipelines.llm.catalog import load_catalog  # noqa: E402
from pipelines.llm.gateway import Gateway  # noqa: E402
from pipelines.rag.answer import _content_words, _shown, build_messages  # noqa: E402
from pipelines.rag.retrieve import open_retriever  # noqa: E402
from pipelines.settings import Settings  # noqa: E402

PORT = 8331


def share(words: set[str], text_words: set[str]) -> float:
    return len(words & text_words) / len(words) if words else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=40)
    ap.add_argument("--budgets", default="1000,1500,2000,4000", help="SM_RAG_CONTEXT_CHARS values")
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    spec = importlib.util.spec_from_file_location("serving_bench", ROOT / "benchmarks" / "serving.py")
    serving_bench = sys.modules["serving_bench"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serving_bench)  # for its RAG questions

    settings = Settings(local_base_port=PORT)
    questions = serving_bench.rag_questions()[: args.questions]
    try:
        retriever = open_retriever(settings, modes=("hybrid",))
    except IndexMissing as e:
        sys.exit(f"{e} (this bench reads `make demo`'s run folder)")
    hits = {q: retriever.search(q, mode="hybrid", k=4) for q in questions}
    retriever.close()
    budgets = [("whole", 10**6)] + [(f"{b} chars", int(b)) for b in args.budgets.split(",")]
    with tempfile.TemporaryDirectory(prefix="sm-bench-rag-context-") as run_dir:
        scratch = Settings(run_dir=Path(run_dir), model_cache_dir=Settings().models_dir,
                           local_base_port=PORT, local_ready_timeout_s=180)  # fmt: skip
        entry = next(e for e in load_catalog(scratch).local() if e.name.startswith("smollm2"))
        servers.start(entry, scratch)
        try:
            gateway = Gateway(settings)
            rows: dict[str, list[tuple[int, str, list[str]]]] = {}
            for name, budget in budgets:
                out = rows[name] = []
                for q in tqdm(questions, desc=name, leave=False):
                    msgs = build_messages(q, hits[q], budget)
                    r = gateway.chat(entry.name, msgs, max_tokens=args.max_tokens)
                    out.append((r.input_tokens, r.text, _shown(hits[q], budget)))
        finally:
            servers.stop(entry, scratch)
    whole = [text for _, text, _ in rows["whole"]]
    rouge = RougeScorer(["rougeL"])
    print(f"\nRAG context settings: {len(questions)} questions, k=4 hybrid, {entry.name} greedy, "
          f"{args.max_tokens} tokens out (means)")  # fmt: skip
    print(f"{'setting':<16}{'prompt tok':>11}{'agreement':>11}{'coverage':>10}{'grounding':>11}")
    for name, out in rows.items():
        tokens = statistics.mean(t for t, _, _ in out)
        agree = statistics.mean(
            rouge.score(ref, text)["rougeL"].fmeasure for (_, text, _), ref in zip(out, whole, strict=True)
        )
        cover = statistics.mean(
            share(_content_words(q), _content_words(" ".join(s)))
            for q, (_, _, s) in zip(questions, out, strict=True)
        )
        ground = statistics.mean(
            share(_content_words(text), _content_words(" ".join(s))) for _, text, s in out
        )
        print(f"{name:<16}{tokens:>11.0f}{agree:>11.3f}{cover:>10.3f}{ground:>11.3f}")


if __name__ == "__main__":
    main()
