"""rag_answer scorers: RAGAS (faithfulness, answer relevancy, context precision and recall, plus a non-LLM
ROUGE-L and BLEU) and TruLens groundedness, with the judge LLM going through our gateway and embeddings
through `pipelines.index.embeddings` -- never a direct provider call.

Input rows: question, answer, contexts (list of str), reference (str, optional). The judge should be a
capable model: RAGAS parses structured (JSON) judge output, which a 135M local model mostly fails to produce;
such rows come back NaN (RAGAS records the failure per row) rather than failing the run.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Sequence
from typing import Any

import pandas as pd

from pipelines.bench.scorers import judge_text
from pipelines.llm.gateway import Gateway
from pipelines.rag.answer import SENTENCE_BREAK

RAGAS_LLM_METRICS = ("faithfulness", "answer_relevancy", "context_precision", "context_recall")
RAGAS_NONLLM_METRICS = ("rouge_l", "bleu")


def _ragas_llm(gateway: Gateway, model: str, max_tokens: int):
    from langchain_core.outputs import Generation, LLMResult
    from ragas.llms.base import BaseRagasLLM

    class GatewayRagasLLM(BaseRagasLLM):
        """RAGAS's LLM interface over `Gateway.chat` (prompt text in, one completion out)."""

        def generate_text(self, prompt, n=1, temperature=0.01, stop=None, callbacks=None) -> LLMResult:
            msgs = [{"role": "user", "content": prompt.to_string()}]
            texts = [
                judge_text(gateway, model, msgs, max_tokens=max_tokens, temperature=temperature or 0.0)
                for _ in range(n)
            ]
            return LLMResult(generations=[[Generation(text=t) for t in texts]])

        async def agenerate_text(self, prompt, n=1, temperature=0.01, stop=None, callbacks=None) -> LLMResult:
            return await asyncio.to_thread(self.generate_text, prompt, n, temperature, stop, callbacks)

        def is_finished(self, response: LLMResult) -> bool:
            return True

    return GatewayRagasLLM()


def _ragas_embeddings(embedder_name: str):
    from ragas.embeddings.base import BaseRagasEmbeddings

    from pipelines.index.embeddings import get_embedder

    class ProjectEmbeddings(BaseRagasEmbeddings):
        """RAGAS's embeddings interface over the project's embedder."""

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return get_embedder(embedder_name).embed(list(texts)).tolist()

        def embed_query(self, text: str) -> list[float]:
            return self.embed_documents([text])[0]

        async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
            return await asyncio.to_thread(self.embed_documents, texts)

        async def aembed_query(self, text: str) -> list[float]:
            return await asyncio.to_thread(self.embed_query, text)

    return ProjectEmbeddings()


def ragas_scores(rows: pd.DataFrame, gateway: Gateway, judge: str, embedder: str = "minilm",
                 metrics: Sequence[str] = RAGAS_LLM_METRICS + RAGAS_NONLLM_METRICS,
                 max_tokens: int = 512) -> pd.DataFrame:  # fmt: skip
    """Per-row RAGAS metrics (columns named as in `metrics`, NaN where the judge failed on that row)."""
    os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
    from ragas import EvaluationDataset, evaluate
    from ragas.dataset_schema import EvaluationResult
    from ragas.metrics._answer_relevance import ResponseRelevancy
    from ragas.metrics._bleu_score import BleuScore
    from ragas.metrics._context_precision import LLMContextPrecisionWithReference
    from ragas.metrics._context_recall import LLMContextRecall
    from ragas.metrics._faithfulness import Faithfulness
    from ragas.metrics._rouge_score import RougeScore
    from ragas.run_config import RunConfig

    factories = {
        "faithfulness": lambda: Faithfulness(),
        "answer_relevancy": lambda: ResponseRelevancy(strictness=1),
        "context_precision": lambda: LLMContextPrecisionWithReference(),
        "context_recall": lambda: LLMContextRecall(),
        "rouge_l": lambda: RougeScore(rouge_type="rougeL"),
        "bleu": lambda: BleuScore(),
    }
    needs_ref = {"context_precision", "context_recall", "rouge_l", "bleu"}
    unknown = set(metrics) - set(factories)
    if unknown:
        raise ValueError(f"unknown RAGAS metric(s) {sorted(unknown)}; choose from {sorted(factories)}")
    has_ref = rows["reference"].notna() if "reference" in rows else pd.Series(False, index=rows.index)

    def run(part: pd.DataFrame, names: list[str], with_ref: bool) -> pd.DataFrame:
        objs = []
        for name in names:
            m = factories[name]()
            m.name = name
            objs.append(m)
        data = EvaluationDataset.from_list([
            {"user_input": r["question"], "response": r["answer"], "retrieved_contexts": list(r["contexts"]),
             **({"reference": r["reference"]} if with_ref else {})}
            for r in part.to_dict("records")
        ])  # fmt: skip
        config = RunConfig(max_workers=2, timeout=int(gateway.settings.request_timeout_s * 4), max_retries=1)
        result = evaluate(data, metrics=objs, llm=_ragas_llm(gateway, judge, max_tokens),
                          embeddings=_ragas_embeddings(embedder), raise_exceptions=False, show_progress=False,
                          run_config=config)  # fmt: skip
        assert isinstance(result, EvaluationResult)  # an Executor only with return_executor=True
        out = result.to_pandas().rename(columns=lambda c: c.split("(")[0])  # "rouge_l(mode=fmeasure)"
        return out[[c for c in names if c in out.columns]].set_axis(part.index)

    # rows with a reference get every metric, rows without one those that need none (NaN for the rest):
    # one row without a reference dropped the reference metrics for all, or left none to run
    parts = []
    for with_ref in (True, False):
        part = rows[has_ref == with_ref]
        names = [m for m in metrics if with_ref or m not in needs_ref]
        if len(part) and names:
            parts.append(run(part, names, with_ref))
    out = pd.concat(parts) if parts else pd.DataFrame(index=rows.index)
    chosen = [m for m in metrics if m in out.columns]
    return out.reindex(index=rows.index, columns=chosen).reset_index(drop=True)


def _split_sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(SENTENCE_BREAK, text) if s.strip()]


def trulens_provider(gateway: Gateway, judge: str, max_tokens: int = 256):
    """A TruLens LLM provider whose every judge call goes through `gateway`."""
    from pydantic import PrivateAttr
    from trulens.core.feedback.endpoint import Endpoint
    from trulens.feedback.llm_provider import LLMProvider
    from trulens.feedback.templates import rag as templates_rag

    class GatewayProvider(LLMProvider):
        _gateway: Any = PrivateAttr()

        def _create_chat_completion(self, prompt=None, messages=None, response_format=None, **kwargs) -> str:
            msgs = list(messages) if messages is not None else [{"role": "system", "content": prompt}]
            # TruLens's sentence splitting would download NLTK data or spend a judge call: split here instead
            if msgs and msgs[0].get("content") == templates_rag.Groundedness.sentences_splitter_prompt:
                return "\n".join(_split_sentences(msgs[-1]["content"]))
            msgs = [{"role": "user" if m["role"] == "system" and len(msgs) == 1 else m["role"],
                     "content": m["content"]} for m in msgs]  # fmt: skip
            temperature = float(kwargs.get("temperature", 0.0) or 0.0)
            return judge_text(self._gateway, judge, msgs, max_tokens=max_tokens, temperature=temperature)

    # tru_class_info is filled in by TruLens's own validator; its pydantic signature marks it required
    provider = GatewayProvider(model_engine=judge, endpoint=Endpoint(name=f"gateway-{judge}"))  # type: ignore[call-arg]
    provider._gateway = gateway
    return provider


def trulens_groundedness(rows: pd.DataFrame, gateway: Gateway, judge: str) -> pd.Series:
    """TruLens groundedness (0..1) of each answer in its contexts; NaN where the judge call failed."""
    from trulens.core.metric.metric import GroundednessConfigs

    provider = trulens_provider(gateway, judge)
    cfg = GroundednessConfigs(use_sent_tokenize=False, filter_trivial_statements=False)
    scores = []
    for r in rows.to_dict("records"):
        try:
            score, _ = provider.groundedness_measure_with_cot_reasons(
                source="\n\n".join(r["contexts"]), statement=r["answer"], groundedness_configs=cfg
            )
            scores.append(float(score))
        except Exception:  # the judge failing on one row marks that row only
            scores.append(float("nan"))
    return pd.Series(scores, name="trulens_groundedness")


def rag_rows_from_outcomes(outcomes: pd.DataFrame, prompts: pd.DataFrame) -> pd.DataFrame:
    """Join a run's rag_answer responses (collect_outcomes(..., with_response=True)) with their prompts."""
    if "response" not in outcomes.columns:
        raise ValueError("the outcomes carry no answers: collect them with_response=True")
    p = prompts[prompts["family"] == "rag_answer"][["prompt_id", "prompt", "contexts", "reference"]]
    df = outcomes[outcomes["error"].isna()].drop(columns=["prompt", "task"]).merge(p, on="prompt_id")
    return df.rename(columns={"prompt": "question", "response": "answer"})[
        ["prompt_id", "model", "question", "answer", "contexts", "reference"]
    ]
