"""Prompt sets: validation with line numbers, named sets, stratified sampling, the RouterBench source."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipelines.bench.cli import app
from pipelines.bench.prompts import (
    PromptSetError,
    asserts_from_prompt,
    build_prompt_set,
    counts_per_task,
    load_prompt_set,
    read_prompt_file,
    routerbench_prompts,
    stratified_sample,
)
from pipelines.settings import Settings

GOOD = {"prompt_id": "p1", "task": "extraction", "prompt": "Q?", "reference": "a"}


def _jsonl(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("line3", "message"),
    [
        ('{"prompt_id": "p3", "task": "chat", "prompt": "hi"', r":3: not valid JSON"),
        ({"prompt_id": "p3", "task": "chat"}, r":3: missing or empty field 'prompt'"),
        (
            {"prompt_id": "p1", "task": "chat", "prompt": "dup"},
            r":3: duplicate prompt_id 'p1' \(first on line 1\)",
        ),
        (
            {"prompt_id": "p3", "task": "code", "prompt": "x", "tests": "assert 1"},
            r":3: field 'tests' must be",
        ),
        ([1, 2], r":3: expected an object"),
    ],
)
def test_malformed_jsonl_is_refused_with_its_line_number(tmp_path, line3, message):
    path = _jsonl(tmp_path / "p.jsonl", [GOOD, {**GOOD, "prompt_id": "p2"}, line3])
    with pytest.raises(PromptSetError, match=message):
        read_prompt_file(path)


def test_malformed_csv_is_refused_with_its_line_number(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('prompt_id,task,prompt,reference\np1,chat,"two\nlines",x\np2,chat,,x\n')
    with pytest.raises(PromptSetError, match=r"p\.csv:4: missing or empty field 'prompt'"):
        read_prompt_file(path)
    (tmp_path / "h.csv").write_text("id,task,prompt\n1,chat,hi\n")
    with pytest.raises(PromptSetError, match=r"h\.csv:1: header lacks column\(s\) prompt_id"):
        read_prompt_file(tmp_path / "h.csv")


def test_excel_csv_long_prompts_and_latin1_files(tmp_path):
    """A UTF-8-BOM CSV (Excel) lacked prompt_id, a prompt over 128 KiB and a Latin-1 file were tracebacks."""
    long = "word " * 40_000
    (tmp_path / "x.csv").write_bytes(f'\ufeffprompt_id,task,prompt\np1,chat,"{long}"\n'.encode())
    rows = read_prompt_file(tmp_path / "x.csv")
    assert rows["prompt_id"].tolist() == ["p1"] and len(rows["prompt"][0]) == len(long)
    (tmp_path / "l.jsonl").write_bytes(b'{"prompt_id": "p1", "task": "chat", "prompt": "caf\xe9"}\n')
    with pytest.raises(PromptSetError, match=r"l\.jsonl:1: not UTF-8 text"):
        read_prompt_file(tmp_path / "l.jsonl")
    (tmp_path / "l.csv").write_bytes(b"prompt_id,task,prompt\np1,chat,caf\xe9\n")
    with pytest.raises(PromptSetError, match=r"l\.csv: not UTF-8 text"):
        read_prompt_file(tmp_path / "l.csv")


def test_cli_refuses_a_malformed_prompt_file_naming_the_line(tmp_path):
    path = _jsonl(tmp_path / "bad.jsonl", [GOOD, "not json"])
    r = CliRunner().invoke(app, ["run", "--prompt-set", str(path), "--out", str(tmp_path / "o.csv")])
    assert r.exit_code == 2
    assert "bad.jsonl:2: not valid JSON" in r.output
    r = CliRunner().invoke(app, ["run", "--prompt-set", "no-such-set", "--out", str(tmp_path / "o.csv")])
    assert r.exit_code == 2 and "neither a file nor a known name" in r.output


def test_good_files_load_with_lists_and_families(tmp_path):
    rows = [GOOD, {"prompt_id": "c1", "task": "mbpp", "prompt": "f", "tests": ["assert 1"]},
            {"prompt_id": "r1", "task": "rag_answer", "prompt": "q", "contexts": ["c1", "c2"]}]  # fmt: skip
    df = read_prompt_file(_jsonl(tmp_path / "ok.jsonl", rows))
    assert list(df["family"]) == ["extraction", "code", "rag_answer"]
    assert df.loc[1, "tests"] == ["assert 1"] and df.loc[2, "contexts"] == ["c1", "c2"]
    csv_path = tmp_path / "ok.csv"
    csv_path.write_text('prompt_id,task,prompt,tests\nc1,code,f,"[""assert 1""]"\n')
    assert read_prompt_file(csv_path).loc[0, "tests"] == ["assert 1"]


def test_an_unknown_task_needs_its_family_named(tmp_path):
    """A task name that is no known task nor family (a typo: `arc_challenge`) was scored as chat, unsaid."""
    rows = [GOOD, {"prompt_id": "p2", "task": "arc_challenge", "prompt": "Q? A) x B) y", "reference": "A"}]
    with pytest.raises(PromptSetError, match=r":2: task 'arc_challenge' is no known task .* give the row"):
        read_prompt_file(_jsonl(tmp_path / "typo.jsonl", rows))
    rows[1]["family"] = "multiple_choice"  # a task of one's own, scored as the family it names
    assert read_prompt_file(_jsonl(tmp_path / "own.jsonl", rows))["family"].tolist() == [
        "extraction", "multiple_choice",
    ]  # fmt: skip
    (tmp_path / "own.csv").write_text("prompt_id,task,prompt,family\np1,legal-qa,Q?,chat\np2,chat,hi,\n")
    assert read_prompt_file(tmp_path / "own.csv")["family"].tolist() == ["chat", "chat"]
    with pytest.raises(PromptSetError, match="family 'mcq' is none of"):
        read_prompt_file(_jsonl(tmp_path / "f.jsonl", [{**GOOD, "family": "mcq"}]))
    r = CliRunner().invoke(app, ["run", "--prompt-set", "demo", "--max-tokens", "-5", "--out", "o.csv"])
    assert r.exit_code == 2 and "--max-tokens" in r.output  # every call failed, and the run exited 0


def test_demo_set_has_every_scorable_family_with_what_it_needs(tmp_path):
    df = load_prompt_set("demo")
    df.to_parquet(tmp_path / "p.parquet")  # one type per column: the prompt_set asset can be parquet
    back = pd.read_parquet(tmp_path / "p.parquet")
    assert list(back.loc[back["prompt_id"] == "demo-extract-004", "answers"].iloc[0]) == ["12", "twelve"]
    assert back["reference"].dropna().map(lambda r: isinstance(r, str)).all()
    assert set(df["family"]) == {"code", "extraction", "rag_answer"}
    assert df[df["family"] == "code"]["tests"].map(len).min() >= 3
    assert df[df["family"] == "rag_answer"]["contexts"].notna().all()


def test_stratified_sample_is_balanced_and_reproducible():
    df = pd.DataFrame({"prompt_id": [f"p{i}" for i in range(60)], "task": ["a"] * 40 + ["b"] * 15 + ["c"] * 5,
                       "prompt": "x"})  # fmt: skip
    s1 = stratified_sample(df, size=21, seed=7)
    assert counts_per_task(s1) == {"a": 7, "b": 7, "c": 5}  # a small task gives all it has
    assert s1.equals(stratified_sample(df, size=21, seed=7))
    shuffled = df.sample(frac=1, random_state=3)  # the same prompts in another order: the same sample
    assert s1.equals(stratified_sample(shuffled, size=21, seed=7))
    assert not s1.equals(stratified_sample(df, size=21, seed=8))
    assert counts_per_task(stratified_sample(df, per_task=3)) == {"a": 3, "b": 3, "c": 3}


def test_mbpp_tests_come_from_assert_lines_in_the_prompt():
    p = "Write f.\nYour code should pass these tests:\nassert f(1) == 2\n  assert f(0) == 1\nnot assert x"
    assert asserts_from_prompt(p) == ["assert f(1) == 2", "assert f(0) == 1"]


def test_routerbench_source_keeps_only_scorable_rows(shared_data):
    df = routerbench_prompts(shared_data / "routerbench")
    # MBPP prompts in the shared slice carry no tests: only ARC and Winogrande rows with a gold letter remain
    assert set(df["task"]) == {"arc-challenge", "winogrande"}
    assert df["reference"].isin(list("ABCDE")).all()
    ps = build_prompt_set(Settings(shared_data_dir=shared_data), per_task=5, seed=0)
    counts = counts_per_task(ps)
    assert counts["arc-challenge"] == counts["winogrande"] == counts["code"] == 5
    assert ps.equals(build_prompt_set(Settings(shared_data_dir=shared_data), per_task=5, seed=0))


def test_lm_eval_names_an_unknown_task_before_starting_a_server(tmp_path):
    """An unknown task was found out only after the model's server had been started for it."""
    env = {"SM_RUN_DIR": str(tmp_path / "run")}
    r = CliRunner().invoke(app, ["lm-eval", "--task", "nosuch", "--out", str(tmp_path / "o.csv")], env=env)
    assert r.exit_code == 2 and "no lm-eval task 'nosuch'" in r.output and "sm_arc_mini" in r.output
    assert not (tmp_path / "run" / "servers").exists()  # no server's PID file or log


def test_a_csv_table_keeps_text_that_reads_like_a_missing_value(tmp_path):
    """'NA', 'None', 'null' are text in a prompt, an answer or an id (an answer 'None' came back missing and
    a prompt 'NA' was routed as an empty one); in a number column they, and a blank, are no value."""
    from pipelines.bench.outcomes import read_table, write_table

    df = pd.DataFrame({
        "prompt_id": ["NA", "2", "3"], "model": ["m", "m", "null"], "prompt": ["None", "NA", ""],
        "answer": ["None", "null", "x"], "score": [None, 1.0, 0.0], "error": [None, None, "boom"],
    })  # fmt: skip
    back = read_table(write_table(df, tmp_path / "t.csv")).to_dict("records")
    assert [r["prompt_id"] for r in back] == ["NA", "2", "3"] and back[2]["model"] == "null"
    assert [r["answer"] for r in back] == ["None", "null", "x"] and back[1]["prompt"] == "NA"
    assert pd.isna(back[2]["prompt"]) and pd.isna(back[0]["error"]) and back[2]["error"] == "boom"
    (tmp_path / "u.csv").write_text("prompt_id,model,score,cost_usd\n1,m,NA,0.1\n2,m,N/A,null\n3,m,0.5,\n")
    from pipelines.bench.outcomes import load_routerbench

    rb = tmp_path / "rb"  # the RouterBench files are read so too
    rb.mkdir()
    (rb / "prompts_train.csv").write_text(
        "prompt_id,task,prompt,reference\n1,arc-challenge,NA,None\n2,mbpp,x,\n"
    )
    (rb / "outcomes_train.csv").write_text("prompt_id,model,score,cost_usd\n1,m,1,0.1\n")
    prompts = load_routerbench(rb)[0].to_dict("records")
    assert (
        prompts[0]["prompt"] == "NA"
        and prompts[0]["reference"] == "None"
        and pd.isna(prompts[1]["reference"])
    )
    assert routerbench_prompts(rb, scorable_only=False)["prompt"].tolist() == ["NA", "x"]
    u = read_table(tmp_path / "u.csv")
    assert u["score"].isna().tolist() == [True, True, False] and u["cost_usd"].isna().tolist() == [
        False,
        True,
        True,
    ]


@pytest.mark.parametrize(
    ("ref", "gold"), [("(B)", "B"), ("B)", "B"), ("b.", "B"), (" B ", "B"), ("[A]", "A")]
)
def test_a_multiple_choice_reference_is_read_as_its_letter(tmp_path, ref, gold):
    """A gold letter written "(B)" or "B." was kept as written: every answer, the right one too, scored 0."""
    from pipelines.bench.scorers import score_row

    row = {"prompt_id": "q", "task": "arc-challenge", "prompt": "Which is wet?\nA) sand\nB) water\nAnswer:"}
    (tmp_path / "p.jsonl").write_text(json.dumps({**row, "reference": ref}) + "\n")
    got = read_prompt_file(tmp_path / "p.jsonl").iloc[0].to_dict()
    assert got["reference"] == gold and score_row(got, f"The answer is {gold}.") == 1.0


@pytest.mark.parametrize("ref", ["E", "water", "AB"])
def test_a_multiple_choice_reference_that_is_none_of_the_options_is_refused(tmp_path, ref):
    row = {"prompt_id": "q", "task": "arc-challenge", "prompt": "Which is wet?\nA) sand\nB) water\nAnswer:"}
    (tmp_path / "p.jsonl").write_text(json.dumps({**row, "reference": ref}) + "\n")
    with pytest.raises(PromptSetError, match=r"p.jsonl:1: a multiple-choice reference must be one of the "
                                             r"prompt's options A, B, got"):  # fmt: skip
        read_prompt_file(tmp_path / "p.jsonl")


def test_an_answers_field_joins_the_reference_and_must_be_a_list_of_strings(tmp_path):
    """An `answers` field was copied as it came and scored alone: the reference "Paris" scored 0.67 against
    "Paris, France", and an `answers` of 5 failed every scoring of the row."""
    from pipelines.bench.scorers import score_row

    rows = [{**GOOD, "prompt": "Capital of France?", "reference": "Paris", "answers": ["Paris, France"]},
            {**GOOD, "prompt_id": "p2", "answers": ["b", "a"]}]  # fmt: skip
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = read_prompt_file(tmp_path / "p.jsonl").to_dict("records")
    assert [r["answers"] for r in got] == [["Paris", "Paris, France"], ["a", "b"]]
    assert [r["reference"] for r in got] == ["Paris", "a"]
    assert score_row(got[0], "Paris") == score_row(got[0], "Paris, France") == 1.0
    (tmp_path / "p.jsonl").write_text(json.dumps({**GOOD, "answers": 5}) + "\n")
    with pytest.raises(PromptSetError, match="p.jsonl:1: field 'answers' must be a list of strings"):
        read_prompt_file(tmp_path / "p.jsonl")
    (tmp_path / "p.csv").write_text('prompt_id,task,prompt,reference,answers\np1,extraction,Q?,a,"[""b""]"\n')
    assert read_prompt_file(tmp_path / "p.csv").iloc[0]["answers"] == ["a", "b"]


def test_a_field_of_another_type_is_named_as_such(tmp_path):
    (tmp_path / "p.jsonl").write_text(json.dumps({**GOOD, "prompt_id": 7}) + "\n")
    with pytest.raises(PromptSetError, match="p.jsonl:1: field 'prompt_id' must be a string, got int"):
        read_prompt_file(tmp_path / "p.jsonl")
