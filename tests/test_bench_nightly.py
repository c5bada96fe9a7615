"""The functions behind the benchmark-results asset checks and metadata, and the RouterBench import."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipelines.bench.cli import app
from pipelines.bench.nightly import (
    accuracy_metadata,
    check_error_rate,
    check_not_empty,
    check_scores_in_range,
    recent_outcomes,
)
from pipelines.bench.outcomes import OUTCOME_COLUMNS, read_table, write_table
from pipelines.bench.runner import _commit, collect_outcomes
from pipelines.settings import Settings


def _table(scores, errors):
    n = len(scores)
    return pd.DataFrame({"prompt_id": [f"p{i}" for i in range(n)], "task": ["winogrande"] * n, "prompt": "x",
                         "model": ["m1", "m2"] * (n // 2), "score": scores, "cost_usd": 0.0, "latency_s": 1.0,
                         "ttft_s": 0.5, "input_tokens": 1, "output_tokens": 1, "error": errors,
                         "run_id": "r"})[OUTCOME_COLUMNS]  # fmt: skip


def test_checks_pass_on_a_clean_partition_and_fail_on_a_bad_one():
    good = _table([1.0, 0.0, 1.0, 1.0], [None] * 4)
    assert (
        check_error_rate(good).passed and check_not_empty(good).passed and check_scores_in_range(good).passed
    )
    bad = _table([1.0, math.nan, 1.5, 0.0], [None, "GatewayError: timeout", None, None])
    er = check_error_rate(bad)
    assert not er.passed and er.metadata["error_rate"] == 0.25 and er.metadata["error_rate/m2"] == 0.5
    assert not check_scores_in_range(bad).passed and check_scores_in_range(bad).metadata["out_of_range"] == 1
    assert not check_not_empty(good.iloc[:0]).passed


def test_the_utility_models_evidence_is_the_answered_rows_of_the_last_days_each_once(tmp_path):
    s = Settings(run_dir=tmp_path)
    assert recent_outcomes(s, 7).empty  # no micro-bench run yet

    def day(name, scores, errors):
        rows = _table(scores, errors).assign(run_id=f"bench-{name}").to_dict("records")
        _commit([{**r, "response": "A"} for r in rows], tmp_path / "bench" / name)

    day("2026-11-20", [1.0, 1.0], [None, None])  # 11 days before the newest: too old
    day("2026-11-28", [0.0, 0.0, 1.0, 1.0], [None, None, None, None])
    day(
        "2026-12-01",
        [1.0, math.nan, math.nan, 0.5],
        [None, "GatewayError: timeout", "scorer: no rating", None],
    )
    (tmp_path / "bench" / "prompt_set.parquet").touch()  # not a partition
    df = recent_outcomes(s, 7)
    got = {(r.prompt_id, r.model): (r.score, r.run_id) for r in df.itertuples()}
    assert got == {  # p0: the newest day's answer; p1, p2: the call failed or went unscored on 12-01
        ("p0", "m1"): (1.0, "bench-2026-12-01"),
        ("p1", "m2"): (0.0, "bench-2026-11-28"),
        ("p2", "m1"): (1.0, "bench-2026-11-28"),
        ("p3", "m2"): (0.5, "bench-2026-12-01"),
    }
    assert list(df.columns) == OUTCOME_COLUMNS
    assert set(recent_outcomes(s, 1)["run_id"]) == {"bench-2026-12-01"}
    assert recent_outcomes(s, 0).empty


def test_a_scorer_error_is_no_failed_call_and_unscored_answers_fail_the_range_check():
    judged = _table([math.nan] * 4, ["scorer: ScoreError: no rating"] * 4)
    assert check_error_rate(judged).passed and check_error_rate(judged).metadata["error_rate"] == 0.0
    unscored = check_scores_in_range(judged)
    assert not unscored.passed and "none of 4 answers" in unscored.description
    failed = _table([math.nan] * 4, ["GatewayError: timeout"] * 4)  # no answer: the error-rate check says so
    assert check_scores_in_range(failed).passed and not check_error_rate(failed).passed


def test_plain_metadata_keeps_numpy_scalars():
    import numpy as np

    from assets.resources import plain_metadata

    md = plain_metadata({"a": np.int64(3), "b": np.float32(0.5), "c": np.bool_(True), "d": "x", "e": [1]})
    assert md == {"a": 3, "b": 0.5, "c": True, "d": "x"} and type(md["c"]) is bool and type(md["a"]) is int
    # a figure that has none (R-hat of chains that never moved, a gate's ratio past its cap) is null, not NaN
    none = plain_metadata({"r_hat_max": float("nan"), "gain": np.float64(np.inf)})
    assert none == {"r_hat_max": None, "gain": None}


def test_accuracy_metadata_is_per_task_and_model():
    md = accuracy_metadata(_table([1.0, 0.0, 1.0, 1.0], [None] * 4))
    assert md["accuracy/winogrande/m1"] == 1.0 and md["accuracy/winogrande/m2"] == 0.5
    assert "| winogrande" in md["accuracy_table"]


def test_import_routerbench_cli_writes_the_outcome_table(shared_data, tmp_path):
    out = tmp_path / "rb.parquet"
    r = CliRunner().invoke(app, ["import-routerbench", str(shared_data / "routerbench"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    df = read_table(out)
    assert list(df.columns) == OUTCOME_COLUMNS and df["model"].nunique() == 11
    assert df["score"].between(0, 1).all() and "11 models" in r.output and "arc-challenge" in r.output
    given = pd.read_csv(shared_data / "routerbench" / "outcomes_train.csv")
    unscored = int(given["score"].isna().sum())  # were dropped without a word
    assert unscored > 0 and len(df) == len(given) - unscored
    assert f"({unscored} rows without a score left out)" in r.output, r.output
    r = CliRunner().invoke(app, ["import-routerbench", str(tmp_path)])
    assert r.exit_code == 2 and "not found" in r.output
    # a repeated prompt_id joined its outcome rows twice; a word for a score was written, then a traceback
    bad = tmp_path / "bad"
    bad.mkdir()
    prompts = pd.read_csv(shared_data / "routerbench" / "prompts_train.csv", dtype=str).head(5)
    outcomes = pd.read_csv(shared_data / "routerbench" / "outcomes_train.csv", dtype={"prompt_id": str})
    outcomes = outcomes[outcomes["prompt_id"].isin(prompts["prompt_id"])]
    for name, (p, o) in {
        "repeats prompt_id": (pd.concat([prompts, prompts.head(1)]), outcomes),
        "score 'yes' is not a number": (prompts, outcomes.astype({"score": object}).assign(score="yes")),
        "score 7.0 is outside [0, 1]": (prompts, outcomes.assign(score=7.0)),  # was np.float64(7.0)
    }.items():
        p.to_csv(bad / "prompts_train.csv", index=False)
        o.to_csv(bad / "outcomes_train.csv", index=False)
        r = CliRunner().invoke(app, ["import-routerbench", str(bad), "--out", str(bad / "o.parquet")])
        assert r.exit_code == 2 and name in r.output and not (bad / "o.parquet").exists(), r.output
    # a row with a field too many shifted every column (an error blaming the outcomes); an empty prompts
    # file was pandas' message alone; no prompt column, or no scored row, wrote a table, exit 0
    shifted = prompts.assign(prompt="One line.", reference="A").to_csv(index=False).splitlines()
    shifted[1] += ",extra"
    for name, (text, o) in {
        "prompts_train.csv: a row has more fields": ("\n".join(shifted) + "\n", outcomes),
        "prompts_train.csv: No columns": ("", outcomes),
        "no prompt column": (prompts.drop(columns="prompt").to_csv(index=False), outcomes),
        "no scored outcome row": (prompts.to_csv(index=False), outcomes.assign(score=None)),
    }.items():
        (bad / "prompts_train.csv").write_text(text)
        o.to_csv(bad / "outcomes_train.csv", index=False)
        r = CliRunner().invoke(app, ["import-routerbench", str(bad), "--out", str(bad / "o.parquet")])
        assert r.exit_code == 2 and name in r.output and not (bad / "o.parquet").exists(), (name, r.output)
    # no cost column imported a table of empty costs (exit 0), which `router train` refused; an --out that is
    # an input file replaced it; an --out that is a folder named a temporary file
    prompts.to_csv(bad / "prompts_train.csv", index=False)
    outcomes.drop(columns="cost_usd").to_csv(bad / "outcomes_train.csv", index=False)
    r = CliRunner().invoke(app, ["import-routerbench", str(bad), "--out", str(bad / "o.parquet")])
    assert r.exit_code == 2 and "outcomes_train.csv: no cost_usd column" in r.output, r.output
    outcomes.to_csv(bad / "outcomes_train.csv", index=False)
    given = (bad / "outcomes_train.csv").read_bytes()
    r = CliRunner().invoke(app, ["import-routerbench", str(bad), "--out", str(bad / "outcomes_train.csv")])
    assert r.exit_code == 2 and "is one of the files it imports" in r.output, r.output
    assert (bad / "outcomes_train.csv").read_bytes() == given
    (bad / "o.csv").mkdir()
    r = CliRunner().invoke(app, ["import-routerbench", str(bad), "--out", str(bad / "o.csv")])
    assert r.exit_code == 2 and f"{bad / 'o.csv'} is a folder, not a file" in r.output, r.output


def test_rag_rows_join_a_runs_answers_with_their_contexts():
    from pipelines.bench.prompts import load_prompt_set
    from pipelines.bench.rag_scorers import rag_rows_from_outcomes

    prompts = load_prompt_set("demo")
    out = _table([0.5, 0.5], [None, "GatewayError: down"]).assign(
        prompt_id=["demo-rag-001", "demo-rag-002"], task="rag_answer", response=["It falls back.", None]
    )
    rows = rag_rows_from_outcomes(out, prompts)
    assert len(rows) == 1  # the error row has no answer to judge
    r = rows.iloc[0]
    assert r["answer"] == "It falls back." and r["question"].startswith("What does the gateway do")
    assert len(r["contexts"]) == 2 and r["reference"] == "It falls back to the other local model."
    with pytest.raises(ValueError, match="with_response=True"):
        rag_rows_from_outcomes(out.drop(columns="response"), prompts)


def test_rescore_gives_stored_answers_todays_scores_without_calling_a_model(tmp_path, monkeypatch):
    """A partition kept the scores its scorer gave on the day it ran: after a scorer fix, the evidence of the
    last 7 days still held the old ones (a re-materialization resumes, and answered cells are not run)."""
    import json

    from pipelines.bench.prompts import load_prompt_set
    from pipelines.bench.runner import rescore

    prompts = [
        {
            "prompt_id": "mc",
            "task": "arc-challenge",
            "prompt": "Pick one.\nA. red\nB. blue",
            "reference": "B",
        },
        {"prompt_id": "ex", "task": "extraction", "prompt": "Capital of France?", "reference": "Paris"},
        {"prompt_id": "chat", "task": "chat", "prompt": "Name a colour."},  # a judge rated it
        {"prompt_id": "down", "task": "extraction", "prompt": "Capital of Peru?", "reference": "Lima"},
    ]
    pfile = tmp_path / "prompts.jsonl"
    pfile.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    base = {"model": "m", "cost_usd": 0.0, "latency_s": 1.0, "ttft_s": 0.5, "input_tokens": 1,
            "output_tokens": 1, "run_id": "bench-2026-12-01", "prompt": ""}  # fmt: skip
    stored = [  # the scores and errors an older scorer gave
        {"prompt_id": "mc", "task": "arc-challenge", "score": 0.0, "error": None, "response": "B"},
        {"prompt_id": "ex", "task": "extraction", "score": math.nan,
         "error": "scorer: ScoreError: old bug", "response": "Paris."},
        {"prompt_id": "chat", "task": "chat", "score": 0.7, "error": None, "response": "Blue."},
        {"prompt_id": "down", "task": "extraction", "score": math.nan,
         "error": "GatewayError: timeout", "response": None},
        {"prompt_id": "gone", "task": "extraction", "score": 0.0, "error": None, "response": "x"},
    ]  # fmt: skip
    folder = tmp_path / "bench" / "2026-12-01"
    _commit([{**base, **r} for r in stored], folder)
    monkeypatch.setenv("SM_RUN_DIR", str(tmp_path / "run"))
    r = CliRunner().invoke(app, ["rescore", str(folder), "--prompt-set", str(pfile)])
    assert r.exit_code == 0, r.output
    assert (
        "2 scores changed, 0 unchanged" in r.output
        and "1 for a judge, 1 without an answer, 1 whose" in r.output
    )
    got = collect_outcomes(folder).set_index("prompt_id")
    assert got.loc["mc", "score"] == 1.0 and got.loc["ex", "score"] == 1.0 and pd.isna(got.loc["ex", "error"])
    assert got.loc["chat", "score"] == 0.7 and got.loc["gone", "score"] == 0.0  # left as they were
    assert got.loc["down", "error"] == "GatewayError: timeout"
    assert rescore(load_prompt_set(pfile), folder)["changed"] == 0  # a second pass finds nothing to change
    r = CliRunner().invoke(app, ["rescore", str(tmp_path / "nope"), "--prompt-set", str(pfile)])
    assert r.exit_code == 2 and "no bench run folder" in r.output
    r = CliRunner().invoke(app, ["rescore", str(folder)], env={"SM_RUN_DIR": str(tmp_path / "fresh")})
    assert r.exit_code == 2 and "no prompt set at" in r.output and "--prompt-set" in r.output, r.output
    r = CliRunner().invoke(app, ["rescore", str(tmp_path / "bench"), "--prompt-set", str(pfile)])  # not a run
    assert (
        r.exit_code == 2 and "no bench run folder" in r.output and not (tmp_path / "bench" / ".lock").exists()
    )


def test_rescore_rewrites_the_runs_table_and_refuses_another_sets_run_and_a_damaged_part(
    tmp_path, monkeypatch
):
    """`bench rescore OUT.parts` changed the folder's scores and left the --out table `bench run` had written
    from it with the old ones; a run of another prompt set exited 0 having rescored nothing; a damaged part
    was a pyarrow traceback."""
    import json

    monkeypatch.setenv("SM_RUN_DIR", str(tmp_path / "run"))
    pfile = tmp_path / "prompts.jsonl"
    mc = {"prompt_id": "mc", "task": "arc-challenge", "prompt": "Pick.\nA. red\nB. blue", "reference": "B"}
    pfile.write_text(json.dumps(mc) + "\n")
    base = {"task": "arc-challenge", "cost_usd": 0.0, "latency_s": 1.0, "ttft_s": 0.5, "input_tokens": 1,
            "output_tokens": 1, "run_id": "r", "prompt": "", "score": 0.0, "error": None,
            "response": "B"}  # fmt: skip
    folder = tmp_path / "out.csv.parts"
    _commit(
        [{**base, "prompt_id": "mc", "model": "m"}, {**base, "prompt_id": "mc", "model": "other"}], folder
    )
    write_table(collect_outcomes(folder).iloc[:1], tmp_path / "out.csv")  # `bench run --models m`
    r = CliRunner().invoke(app, ["rescore", str(folder), "--prompt-set", str(pfile)])
    assert r.exit_code == 0 and "out.csv rewritten" in r.output, r.output
    table = read_table(tmp_path / "out.csv")
    assert table[["prompt_id", "model", "score"]].values.tolist() == [["mc", "m", 1.0]]  # its cell, rescored

    other = tmp_path / "other.jsonl"
    other.write_text(
        json.dumps({"prompt_id": "x", "task": "extraction", "prompt": "?", "reference": "y"}) + "\n"
    )
    r = CliRunner().invoke(app, ["rescore", str(folder), "--prompt-set", str(other)])
    assert r.exit_code == 2 and "none of its rows answers a prompt of the prompt set" in r.output, r.output

    part = sorted(folder.glob("part-*.parquet"))[-1]
    part.write_bytes(part.read_bytes()[:100])
    r = CliRunner().invoke(app, ["rescore", str(folder), "--prompt-set", str(pfile)])
    assert r.exit_code == 2 and part.name in r.output and "not a readable part" in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    # a parquet file with other columns was read as a part: a KeyError's traceback
    pd.DataFrame({"prompt_id": ["mc"], "model": ["m"]}).to_parquet(part)
    r = CliRunner().invoke(app, ["rescore", str(folder), "--prompt-set", str(pfile)])
    assert r.exit_code == 2 and f"{part.name}: not a part of a bench run (it lacks task" in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)


def test_the_nightly_bench_rescores_the_partitions_the_refit_reads(tmp_path):
    """`bench rescore` was by hand: after a scorer fix, the nightly refit read the old scores of the last
    SM_BENCH_EVIDENCE_DAYS days. Today's partition rescores the others in that window, not older ones."""
    from pipelines.bench.nightly import recent_outcomes, rescore_recent

    settings = Settings(run_dir=tmp_path, bench_evidence_days=3)
    mc = {
        "prompt_id": "mc",
        "task": "arc-challenge",
        "prompt": "Pick one.\nA. red\nB. blue",
        "reference": "B",
    }
    prompts = pd.DataFrame([mc])
    base = {"prompt_id": "mc", "task": "arc-challenge", "model": "m", "cost_usd": 0.0, "latency_s": 1.0,
            "ttft_s": 0.5, "input_tokens": 1, "output_tokens": 1, "prompt": "", "error": None,
            "response": "Not A. B."}  # fmt: skip
    for day, score in (("2026-11-20", 0.0), ("2026-12-02", 0.0), ("2026-12-03", 0.0), ("2026-12-04", 1.0)):
        _commit([{**base, "score": score, "run_id": f"bench-{day}"}], tmp_path / "bench" / day)
    assert rescore_recent(settings, prompts, "2026-12-04") == {"2026-12-02": 1, "2026-12-03": 1}
    scores = {
        d: collect_outcomes(tmp_path / "bench" / d)["score"].tolist() for d in ("2026-12-02", "2026-11-20")
    }
    assert scores == {"2026-12-02": [1.0], "2026-11-20": [0.0]}  # outside the window: left as it was
    assert recent_outcomes(settings, 3)["score"].tolist() == [1.0]
    assert rescore_recent(settings, prompts, "2026-12-04") == {"2026-12-02": 0, "2026-12-03": 0}
