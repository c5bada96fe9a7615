"""The service's prompt log as a micro-bench source: redacted before it is written, read back as `chat`
prompts, sampled only when a judge can rate the answers, and rated by a judge model through the gateway."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest

from pipelines.bench.prompt_log import PromptLog, PromptLogWriter, read_prompt_log
from pipelines.bench.prompts import build_prompt_set
from pipelines.bench.runner import collect_outcomes, run_bench
from pipelines.bench.scorers import JudgeScorer, ScoreError, parse_rating
from pipelines.corpus.pii import get_redactor
from pipelines.settings import Settings

SECRETS = ("jane.doe@example.com", "+1 415 555 0134", "4111 1111 1111 1111")
PII_PROMPT = f"Mail {SECRETS[0]} or call {SECRETS[1]}; my card is {SECRETS[2]}. Draft a polite reminder."


@pytest.fixture(scope="module")
def redact(tmp_path_factory):
    return get_redactor("blank", str(tmp_path_factory.mktemp("pii-cache"))).redact


def test_prompts_are_redacted_before_they_are_written_and_read_back_as_chat(tmp_path, redact):
    plog = PromptLog(tmp_path / "log", redact)
    rec = plog.append(PII_PROMPT, task="chat", model="smollm2-135m", chosen_by="router")
    plog.append(PII_PROMPT, task="chat", model="gemma3-270m", chosen_by="router")  # the same prompt again
    plog.append("Name three prime numbers.", task="gsm8k", model="gemma3-270m", chosen_by="request")
    raw = "".join(p.read_text() for p in (tmp_path / "log").glob("*.jsonl"))
    assert not any(s in raw for s in SECRETS) and "<EMAIL_ADDRESS>" in raw and "<CREDIT_CARD>" in raw
    assert {"EMAIL_ADDRESS", "CREDIT_CARD", "PHONE_NUMBER"} <= set(rec["redacted"])
    df, bad = read_prompt_log(tmp_path / "log")
    assert bad == 0 and len(df) == 2  # one row per distinct prompt
    assert set(df["task"]) == {"chat"} and df["reference"].isna().all()
    assert df["prompt_id"].str.startswith("log-").all() and rec["prompt_id"] in set(df["prompt_id"])


def test_a_prompt_the_routers_check_still_finds_personal_data_in_is_not_written(tmp_path, redact):
    """Ingest's redaction is narrower than the router's check (it must not damage papers): a prompt the
    router kept local for its SSN in spaces or its 8-digit phone number was written to the log in clear."""
    from router_models.router.signals import detect_pii

    plog = PromptLog(tmp_path / "log", redact, still_personal=detect_pii)
    for prompt in ("My SSN is 536 22 8761, fill in the form.", "Ring our office on 0301 2345."):
        assert detect_pii(prompt) and redact(prompt)[0] == prompt  # the router's PII, left by redaction
        assert plog.append(prompt) is None
    assert plog.append(PII_PROMPT)["prompt"].startswith("Mail <EMAIL_ADDRESS>")  # redacted: written
    df, _ = read_prompt_log(tmp_path / "log")
    assert len(df) == 1 and "8761" not in "".join(p.read_text() for p in (tmp_path / "log").glob("*"))


def test_a_long_prompt_is_redacted_before_it_is_cut(tmp_path, redact):
    """The log cut a long prompt to MAX_PROMPT_CHARS, then redacted it: an e-mail address or a phone number
    cut in two at the limit matched no recognizer, and its first part was written."""
    from pipelines.bench.prompt_log import MAX_PROMPT_CHARS

    plog = PromptLog(tmp_path / "log", redact)
    for tail in ("jane.doe@example.com", "+44 20 7946 0958"):
        pad = "Summarise these notes. " * ((MAX_PROMPT_CHARS - 12) // 23)
        prompt = pad + " " * (MAX_PROMPT_CHARS - 12 - len(pad)) + f"Contact {tail} today, please."
        rec = plog.append(prompt)
        assert len(rec["prompt"]) <= MAX_PROMPT_CHARS and rec["redacted"], rec["redacted"]
        assert "jane" not in rec["prompt"] and "7946" not in rec["prompt"] and "+44 20" not in rec["prompt"]


def test_the_writer_keeps_prompts_in_order_and_drops_what_overflows_its_queue(tmp_path):
    """The service's log writer: off the request path, bounded (a burst of long prompts while Presidio's
    engine is built must not hold them all in memory), each dropped prompt reported to the caller."""
    from pipelines.corpus.pii import Redactor

    def make_log() -> PromptLog:  # a new engine: seconds, so the burst below finds the writer busy
        return PromptLog(tmp_path / "log", Redactor("blank", str(tmp_path / "pii-cache")).redact)

    writer = PromptLogWriter(make_log, queue=4)
    accepted = [writer.submit(f"Question {i} from {SECRETS[0]}.", task="chat") for i in range(10)]
    assert accepted == [True] * 4 + [False] * 6
    deadline = time.monotonic() + 120
    while not writer.submit("Once the writer catches up the queue takes prompts again."):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    writer.close()
    df, bad = read_prompt_log(tmp_path / "log")
    assert bad == 0 and list(df["prompt"]) == [f"Question {i} from <EMAIL_ADDRESS>." for i in range(4)] + [
        "Once the writer catches up the queue takes prompts again."
    ]


def test_a_torn_line_is_skipped_and_counted_and_old_days_are_left_out(tmp_path, redact):
    log_dir = tmp_path / "log"
    PromptLog(log_dir, redact).append("What is the capital of Peru?")
    pasted = "Line one\u2028line two\x85line three"  # kept raw by the writer; splitlines() tore it apart
    PromptLog(log_dir, redact).append(pasted)
    today = next(log_dir.glob("*.jsonl"))
    with today.open("a") as f:
        f.write('{"prompt_id": "log-x", "prom')  # a crash mid-line (a full disk)
    PromptLog(log_dir, redact).append("Name three rivers.")  # was glued to the torn line, and lost with it
    with today.open("a") as f:  # as the old writer glued one: the record is read back
        glued = json.dumps({"prompt_id": "log-z", "prompt": "Glued."})
        f.write('{"prompt_id": "log-y", "prom' + glued + "\n")
    (log_dir / "2020-01-01.jsonl").write_text(json.dumps({"prompt_id": "log-old", "prompt": "old"}) + "\n")
    (log_dir / "notes.jsonl").write_text("not a day file\n")
    recent, bad = read_prompt_log(log_dir, days=7)
    assert bad == 1 and sorted(recent["prompt"]) == sorted(
        ["What is the capital of Peru?", pasted, "Name three rivers.", "Glued."]
    )
    everything, _ = read_prompt_log(log_dir)
    assert set(everything["prompt_id"]) == {*recent["prompt_id"], "log-old"}


def test_logged_prompts_join_the_prompt_set_only_when_a_judge_can_rate_them(tmp_path, redact, shared_data):
    s = Settings(run_dir=tmp_path, shared_data_dir=shared_data)
    plog = PromptLog(s.prompt_log_dir, redact)
    for i in range(5):
        plog.append(f"Write a haiku about the number {i}.")
    without = build_prompt_set(s, per_task=3)
    assert "chat" not in set(without["task"])
    with_judge = build_prompt_set(s.model_copy(update={"judge_model": "gemma3-270m"}), per_task=3)
    chat = with_judge[with_judge["task"] == "chat"]
    assert len(chat) == 3 and chat["prompt_id"].str.startswith("log-").all()
    assert (with_judge.groupby("task").size() <= 3).all()
    derived = with_judge[with_judge["prompt_id"].str.startswith("scifact-")]  # SciFact claims, gold chunks
    assert len(derived) >= 1 and derived["gold_chunk_ids"].map(len).min() >= 1


@pytest.mark.parametrize(
    ("text", "score"),
    [("8", 7 / 9), ("Rating: 10/10", 1.0), ("I'd give it a 1.", 0.0), ("**5** out of 10", 4 / 9),
     ("0, no: 7", 6 / 9), ("3.5", 2.5 / 9), ("eleven", None), ("", None), ("0/10", None), ("100", None),
     ("On a scale of 1 to 10, I give it 8", 7 / 9), ("8. Good, 2 slips", 7 / 9),
     ("2.5/10", 1.5 / 9), ("7.5 out of 10", 6.5 / 9), ("Rating: 4 (misses 2 of 3 points)", 3 / 9),
     ("Given a rating of 1 (poor) to 10 (excellent), I would give 6", 5 / 9),
     ("2/5", 1 / 4), ("Rating: 4 out of 5 (clear)", 3 / 4), ("I'd give it 5 out of 5.", 1.0), ("0/5", None),
     ("It covers 3/4 points; overall 7", 6 / 9), ("Covers 3/4. I give it 4/5", 3 / 4),
     ("Accuracy 3/4; Rating: 4/5", 3 / 4), ("Rating: -3", None), ("-8", None), ("I give it \u22125", None),
     ("On a scale of 1-10: 8", 7 / 9), ("8-9", 7 / 9),
     ("Rating: -3/10", None), ("Score: -2 out of 10", None), ("-8/10", None), ("Rating: -3 / 10", None),
     ("Rating: -1 (scale 1-10)", None), ("My score is \u22122, on 1 to 10", None),
     ("Rating: 7 (scale 1-10)", 6 / 9), ("Rating:\n- 8/10", 7 / 9), ("Score:\n\n- 7", 6 / 9),
     ("**Rating:** - 8", 7 / 9), ("Rating: 8; I'd never give a Rating: -1", 7 / 9),
     # a number that is no rating; the scale before the rating; a rating verb before it
     ("The user asked for 5 items", None), ("It contains 3 errors", None),
     ("Step 1: check. Step 2: ok", None),
     ("(1-10) 8", 7 / 9), ("1-10: 6", 5 / 9), ("1 to 10: 9", 8 / 9), ("I'd rate it 7 because", 6 / 9),
     ("1-10", None), ("Rating: 1-10", None), ("<rating>7</rating>", 6 / 9), ("Good answer: `9`", 8 / 9),
     ("Overall, 7. Minor issues.", 6 / 9), ("It deserves 9 points.", 8 / 9), ("6 (some errors)", 5 / 9),
     ("On a scale of 1 to 10, this is an 8 because it is accurate", 7 / 9),
     ("I give 7 because of 2 small errors.", 6 / 9),
     # a rating out of another scale at the end, in markup, quotes or a closing tag
     ("Good answer. <score>4/5</score>", 3 / 4), ("Overall I land on `4/5`", 3 / 4),
     ('Verdict "4/5"', 3 / 4)],
)  # fmt: skip
def test_judge_ratings_are_parsed_from_free_text(text, score):
    if score is None:
        with pytest.raises(ScoreError):
            parse_rating(text)
    else:
        assert parse_rating(text) == pytest.approx(score)


def test_rows_with_a_reference_are_scored_without_the_judge():
    judge = JudgeScorer(gateway=None, judge="unused")  # a judge call would fail on the missing gateway
    row = {"task": "extraction", "prompt": "Who?", "reference": "Ada Lovelace", "tests": None}
    assert judge(row, "Ada Lovelace") == 1.0
    code = {"task": "code", "prompt": "def f", "reference": None, "tests": ["assert f() == 1"]}
    assert judge(code, "def f():\n    return 1") == 1.0


@pytest.mark.models
def test_a_local_judge_rates_logged_prompts_through_the_gateway(gateway, tmp_path, redact):
    plog = PromptLog(tmp_path / "log", redact)
    for p in ("What is 2 + 2?", "Name a colour of the sky on a clear day."):
        plog.append(p)
    prompts, _ = read_prompt_log(tmp_path / "log")
    report = run_bench(prompts, ["smollm2-135m"], gateway, tmp_path / "out",
                       scorer=JudgeScorer(gateway, "gemma3-270m"), progress=False)  # fmt: skip
    df = collect_outcomes(tmp_path / "out", with_response=True)
    assert report.cells_run == 2 and len(df) == 2
    for r in df.itertuples():  # a rating in [0, 1], or a row marked because the judge gave none
        assert (0.0 <= r.score <= 1.0 and pd.isna(r.error)) or str(r.error).startswith("scorer: ")


def test_a_judge_that_cannot_answer_leaves_the_row_to_the_next_run(gateway, tmp_path, redact, monkeypatch):
    """A failed judge call was a scorer's error, so the cell counted as done: a judge outage dropped every
    judged row of the partition for good, and the error-rate check did not see it."""
    from pipelines.bench.runner import call_failed

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # the judge cannot be called
    plog = PromptLog(tmp_path / "log", redact)
    plog.append("What is 2 + 2?")
    prompts, _ = read_prompt_log(tmp_path / "log")
    judge = JudgeScorer(gateway, "gpt-4o-mini")
    first = run_bench(prompts, ["smollm2-135m"], gateway, tmp_path / "out", scorer=judge, progress=False)
    (row,) = collect_outcomes(tmp_path / "out").to_dict("records")
    assert str(row["error"]).startswith("judge: gpt-4o-mini did not answer") and pd.isna(row["score"])
    assert call_failed(pd.Series([row["error"]])).all()
    again = run_bench(prompts, ["smollm2-135m"], gateway, tmp_path / "out", scorer=judge, progress=False)
    assert first.cells_run == again.cells_run == 1  # asked again, not counted as done


def test_rag_questions_from_a_beir_corpus_carry_the_chunk_ids_ingest_gives(tmp_path):
    from pipelines.bench.rag_questions import beir_rag_questions
    from pipelines.corpus.ingest import ingest_corpus, load_chunks

    beir = tmp_path / "beir"
    beir.mkdir()
    docs = [
        {"_id": "d1", "title": "Aspirin", "text": "Aspirin lowers heart attack risk. Contact a@b.org."},
        {"_id": "d2", "title": "Statins", "text": "Statins reduce LDL cholesterol in most adults."},
        {"_id": "d3", "title": "Coffee", "text": "Coffee has no effect on bone density in this cohort."},
    ]
    (beir / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    queries = [
        {"_id": "1", "text": "Aspirin prevents heart attacks."},
        {"_id": "2", "text": "Statins raise LDL."},
        {"_id": "3", "text": "A claim about a missing document."},
    ]
    (beir / "queries_train.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (beir / "qrels_train.tsv").write_text("query-id\tcorpus-id\tscore\n1\td1\t1\n2\td2\t1\n3\tgone\t1\n")
    s = Settings(run_dir=tmp_path / "run")
    rows = beir_rag_questions(s, beir, n=10)
    assert sorted(rows["prompt_id"]) == ["beir-train-1", "beir-train-2"]  # query 3's document is missing
    assert set(rows["task"]) == {"rag_answer"} and rows["reference"].isna().all()
    ingest_corpus(s, str(beir), include="corpus.jsonl")
    stored = load_chunks(s).set_index("chunk_id")
    for r in rows.itertuples():
        assert len(r.gold_chunk_ids) == 1 and all(c in stored.index for c in r.gold_chunk_ids)
        assert r.contexts[0].endswith(stored.loc[r.gold_chunk_ids[0], "text"])
    assert "a@b.org" not in "".join(rows.loc[rows.prompt_id == "beir-train-1", "contexts"].iloc[0])


def test_a_long_prompt_of_blanks_is_logged_cut(tmp_path, redact):
    from pipelines.bench.prompt_log import MAX_PROMPT_CHARS

    rec = PromptLog(tmp_path / "log", redact).append(" " * (MAX_PROMPT_CHARS + 5) + "end")
    assert rec is not None and len(rec["prompt"]) <= MAX_PROMPT_CHARS
