"""lm-eval-harness end to end against a local server; TruLens groundedness judged through our gateway."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines.bench.outcomes import OUTCOME_COLUMNS

pytestmark = pytest.mark.models


@pytest.fixture
def judge_calls(gateway, monkeypatch):
    """Counts the judge's calls into the real gateway (a spy: every call still goes to the local server)."""
    calls = []
    real = gateway.chat

    def spy(model, messages, **kw):
        calls.append(model)
        return real(model, messages, **kw)

    monkeypatch.setattr(gateway, "chat", spy)
    return calls


def test_lm_eval_task_runs_end_to_end_against_the_local_server(gateway):
    from pipelines.bench.lm_eval_run import run_lm_eval

    df = run_lm_eval(gateway.catalog.get("smollm2-135m"), "sm_arc_mini", limit=3)
    assert list(df.columns) == OUTCOME_COLUMNS and len(df) == 3
    assert list(df["prompt_id"]) == ["sm-arc-mini-q01", "sm-arc-mini-q02", "sm-arc-mini-q03"]
    assert df["score"].isin([0.0, 1.0]).all() and df["error"].isna().all()
    assert df["prompt"].str.contains("Answer with the letter only").all()  # the committed YAML's template


def test_unknown_lm_eval_task_names_the_known_ones(gateway):
    from pipelines.bench.lm_eval_run import run_lm_eval

    with pytest.raises(FileNotFoundError, match="sm_arc_mini"):
        run_lm_eval(gateway.catalog.get("smollm2-135m"), "no_such_task")


def test_trulens_groundedness_judges_through_the_gateway(gateway, judge_calls):
    from pipelines.bench.rag_scorers import trulens_groundedness

    rows = pd.DataFrame([{"contexts": ["The corpus is chunked into pieces of about 256 tokens."],
                          "answer": "Chunks are about 256 tokens long."}])  # fmt: skip
    s = trulens_groundedness(rows, gateway, judge="smollm2-135m")
    assert len(s) == 1 and (s.isna() | s.between(0, 1)).all()
    assert judge_calls and set(judge_calls) == {"smollm2-135m"}  # the judge went through our gateway


@pytest.mark.slow
def test_ragas_judges_through_the_gateway_and_scores_non_llm_metrics(gateway, judge_calls):
    from pipelines.bench.rag_scorers import ragas_scores

    rows = pd.DataFrame([{"question": "How large are the chunks?", "answer": "About 256 tokens.",
                          "contexts": ["The corpus is chunked into pieces of about 256 tokens."],
                          "reference": "About 256 tokens, with 32 tokens of overlap."}])  # fmt: skip
    # 128 tokens a judge call (the default is 512): the 135M judge rarely writes RAGAS's JSON, and its retries
    # ran to the limit (168 s of the suite)
    out = ragas_scores(rows, gateway, "smollm2-135m", metrics=("faithfulness", "rouge_l"), max_tokens=128)
    assert list(out.columns) == ["faithfulness", "rouge_l"]
    assert out.loc[0, "rouge_l"] == pytest.approx(6 / 11)  # LCS 3 of 3 predicted and 8 reference tokens
    f = out.loc[0, "faithfulness"]
    assert f != f or 0 <= f <= 1  # NaN when the 135M judge cannot produce RAGAS's JSON
    assert judge_calls and set(judge_calls) == {"smollm2-135m"}  # the judge went through our gateway


@pytest.mark.slow
def test_ragas_scores_rows_without_a_reference_on_the_metrics_that_need_none(gateway):
    """One row without a reference dropped the reference metrics for every row, and with only such metrics
    asked for, RAGAS raised (no metric left to run)."""
    from pipelines.bench.rag_scorers import ragas_scores

    rows = pd.DataFrame([{"question": "How large are the chunks?", "answer": "About 256 tokens.",
                          "contexts": ["Chunks are about 256 tokens."], "reference": "About 256 tokens."},
                         {"question": "Which engine?", "answer": "Tantivy.", "contexts": ["Tantivy indexes."],
                          "reference": None}])  # fmt: skip
    out = ragas_scores(rows, gateway, "smollm2-135m", metrics=("rouge_l", "bleu"))
    assert list(out.columns) == ["rouge_l", "bleu"] and out.loc[0, "rouge_l"] == pytest.approx(1.0)
    assert out.loc[1].isna().all()
