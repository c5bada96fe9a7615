"""Scorers on tricky outputs, and the code sandbox killing what must be killed (all pure, no models)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from pipelines.bench.code_exec import run_tests
from pipelines.bench.scorers import (
    ScoreError,
    exact_match,
    extract_choice,
    extract_code,
    parse_choices,
    score_code,
    score_extraction,
    score_multiple_choice,
    score_row,
    token_f1,
)

WINO = (
    "He never comes to my home, but I always go to his house because the _ is bigger.\nA) home\nB) house\n"
    'Print only a single choice  from "A" or "B" without explanation. Answer:\nB\n\n'
    "Kyle doesn't wear leg warmers to bed, while Logan almost always does. _ is more likely to live in a "
    "colder climate.\nA) Kyle\nB) Logan\n"
    'Print only a single choice  from "A" or "B" without explanation. Answer:'
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is (B).", "B"),
        ("b", "B"),
        ("(c)", "C"),
        ("D.", "D"),
        ("answer: c", "C"),
        ("ANSWER IS d", "D"),
        ("B) wet palms", "B"),
        ("C\nBecause oil reduces friction.", "C"),
        ("I think it is B because wet palms slip.", "B"),
        ("The correct option is (A) dry palms", "A"),
        ("wet palms", "B"),  # the text of exactly one option
        ("A fold happens when plates converge.", None),  # "A" as an article is no answer
        ("the answer is a dog", None),
        ("A or B", None),  # commits to two letters
        ("A) dry palms\nB) wet palms", None),  # echoes the options
        ("", None),
        ("E", None),  # not one of the offered letters
        ("Option A is wrong here; the correct answer is D.", "D"),  # the first mention won before
        ("Choice C is tempting, but the answer is B.", "B"),
        ("A because dry palms rub harder", "A"),  # read as the article "a": only the gold letter A lost
        ("A would be the one", "A"),
        ("D. Option A is wrong because dry palms do not rub.", "D"),  # the option mention won before
        ("Option A is wrong.", None),  # ruling a letter out commits to none
        ("Option A is incorrect, B is right.", "B"),
        ("(A) is not it; (C) works", "C"),
        # two letters offered together commit to none: each scored as the gold answer (and a constant
        # "A, B, C, D" scored 0.195 on ARC)
        ("B, C", None),
        ("B\nC", None),
        ("(B) or (C)", None),
        ("The answer is B or C", None),
        ("Option B or option C", None),
        ("A, B, C, D", None),
        ("B/C", None),
        ("B and C are wrong; the answer is D.", "D"),
        # ... but letters named while reasoning leave a stated answer, or a leading one, as it was
        ("The answer is D. Options A, B and C are incorrect.", "D"),
        ("The answer is C (not A or B).", "C"),
        ("Comparing A and B, the answer is B.", "B"),
        ("The answer is B, C is wrong.", "B"),
        ("The answer is (B), as (A) and (C) don't apply", "B"),
        ("B\nA wet palm rubs less.", "B"),
    ],
)
def test_extract_choice_on_tricky_outputs(text, expected):
    options = {
        "A": "dry palms",
        "B": "wet palms",
        "C": "palms covered with oil",
        "D": "palms covered with lotion",
    }
    assert extract_choice(text, "ABCD", options) == expected


def test_choices_come_from_the_last_question_of_a_few_shot_prompt():
    assert parse_choices(WINO) == {"A": "Kyle", "B": "Logan"}
    assert score_multiple_choice("Logan", "B", WINO) == 1.0
    assert score_multiple_choice("The answer is (A).", "B", WINO) == 0.0
    assert score_multiple_choice("C", "B", WINO) == 0.0  # C is not offered in a two-way question


def test_routerbench_prompts_parse_to_their_options(shared_data):
    import pandas as pd

    p = pd.read_csv(shared_data / "routerbench" / "prompts_train.csv").groupby("task").head(30)
    mc = p[p["task"].isin(["arc-challenge", "winogrande"])]
    for prompt, task, ref in zip(mc["prompt"], mc["task"], mc["reference"], strict=True):
        opts = parse_choices(prompt)
        # Winogrande offers two options; ARC three to five (its 1,024 prompts here: 1,016 with four)
        assert len(opts) == 2 if task == "winogrande" else 3 <= len(opts) <= 5, prompt[-300:]
        assert sorted(opts) == list("ABCDE"[: len(opts)]), prompt[-300:]
        if isinstance(ref, str):
            assert ref in opts


def test_extraction_exact_match_and_f1():
    assert exact_match("The Lisbon.", "lisbon") == 1.0
    assert token_f1("port ellis harbour", "Port Ellis") == pytest.approx(0.8)
    assert token_f1("", "x") == 0.0
    s = score_extraction("Answer: Northwind Traders\nIt issued the invoice.", ["Northwind Traders"])
    assert s == {"em": 1.0, "f1": 1.0}
    assert score_extraction("twelve mugs", ["12", "twelve"])["f1"] == pytest.approx(2 / 3)
    with pytest.raises(ScoreError):
        score_extraction("x", None)
    # numbers keep their sign, decimal point and ranges; thousands separators and Unicode punctuation go
    assert exact_match("-5", "5") == exact_match("3.5", "35") == exact_match("3-5", "35") == 0.0
    assert (
        exact_match("1,000", "1000")
        == exact_match("\u201cNorthwind Traders\u201d", "Northwind Traders")
        == 1.0
    )
    assert exact_match("Lisbon\u2026", "Lisbon") == 1.0
    with pytest.raises(ScoreError, match="no word left"):  # an empty answer matched the reference "The"
        score_extraction("", ["The"])


def test_extract_code_from_fences_or_plain_text():
    out = "Sure!\n```python\ndef f(x):\n    return x\n```\nThat is all."
    assert extract_code(out) == "def f(x):\n    return x\n"
    assert extract_code("def g():\n    return 1") == "def g():\n    return 1"
    assert "def h" in extract_code("```\ndef h():\n    pass")  # unterminated fence


@pytest.mark.parametrize("bad", ["print(square(4)", "x = = 1", "  y = 2", "s = 'open"])
def test_a_whole_block_that_does_not_parse_fails(bad):
    """The lines that did not parse were dropped from any block, so code that cannot run passed its tests;
    only a block cut off at the token cap is cut to the lines that parse."""
    tests = ["assert square(3) == 9"]
    assert score_code(f"```python\n{SQUARE}\n{bad}\n```", tests) == 0.0
    assert score_code(f"```python\n{SQUARE}\n{bad}", tests) == 1.0  # cut off: its last line is lost
    example = f"```python\n{SQUARE}\n```\nExample:\n```python\nsquare(3) -> 9\n```"  # defines nothing
    assert score_code(example, tests) == 1.0


SQUARE = "def square(n):\n    return n * n"


@pytest.mark.parametrize(
    "out",
    [f"```python\n{SQUARE}\n```\nExample:\n```\n>>> square(3)\n9\n```",  # a doctest session
     f"```python\n{SQUARE}\n```\nRun it with:\n```bash\npython square.py\n```",  # a shell line
     f"```python\n{SQUARE}\nprint(square(4))\n```\nOutput:\n```\n16\nDone.\n```",  # printed output
     f"Here's the function:\n\n{SQUARE}", f"{SQUARE}\n\nThis returns the square of n.",  # prose, no fence
     f"```python\n{SQUARE}\n\n# Test\nprint(square(",  # cut off at the token cap
     f"~~~python3\n{SQUARE}\n~~~", "  ```python\n  " + SQUARE.replace("\n", "\n  ") + "\n  ```"],
)  # fmt: skip
def test_a_right_function_passes_whatever_surrounds_it(out):
    """Every fenced block was run as Python, whatever its language, and text around unfenced code too."""
    assert score_code(out, ["assert square(3) == 9", "assert square(-4) == 16"]) == 1.0
    assert score_code(out.replace("n * n", "n + n"), ["assert square(3) == 9"]) == 0.0


def test_an_answer_label_on_a_line_of_its_own_or_inside_a_word():
    assert score_extraction("Answer:\nLisbon", ["Lisbon"])["em"] == 1.0
    assert score_extraction("Answerbank", ["Answerbank"])["em"] == 1.0


def test_code_passes_and_fails_by_its_tests():
    tests = ["assert square(3) == 9", "assert square(-2) == 4"]
    ok = run_tests("def square(n):\n    return n * n", tests)
    assert (ok.passed, ok.total, ok.status, ok.passed_all) == (2, 2, "ok", True)
    bad = run_tests("def square(n):\n    return n + n", tests)
    assert bad.passed == 0 and bad.status == "failed" and "AssertionError" in bad.detail
    syntax = run_tests("def square(n) return", tests)
    assert syntax.passed == 0 and "SyntaxError" in syntax.detail


def test_code_scorer_kills_an_infinite_loop():
    t0 = time.perf_counter()
    r = run_tests("def f():\n    while True:\n        pass\nf()", ["assert True"], timeout_s=2)
    assert r.status in ("timeout", "killed") and not r.passed_all
    assert time.perf_counter() - t0 < 10


def test_code_scorer_stops_a_memory_hog():
    hog = "def f():\n    xs = []\n    while True:\n        xs.append(bytearray(50 << 20))\n"
    r = run_tests(hog, ["f()"], timeout_s=10, memory_mb=256)
    assert not r.passed_all and "MemoryError" in r.detail
    # a hog that swallows MemoryError and keeps going is still stopped by the time limit
    stubborn = (
        "while True:\n    try:\n        x = bytearray(1 << 34)\n    except MemoryError:\n        pass\n"
    )
    assert run_tests(stubborn, ["assert True"], timeout_s=2).status in ("timeout", "killed")


def test_generated_code_runs_outside_this_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = "import os\nopen('escaped.txt', 'w').write('x')\nMARK = os.getpid()"
    r = run_tests(
        code, ["import os\nassert MARK == os.getpid()", "import os\nassert 'SECRET' not in os.environ"]
    )
    assert r.passed_all
    assert not Path(tmp_path / "escaped.txt").exists()  # it wrote inside its own temp dir only


def test_generated_code_cannot_outlive_its_timeout_flood_memory_or_fake_a_pass(tmp_path):
    """A grandchild that left the process group kept run_tests waiting on its pipe (20 s, or forever) and
    outlived it; a print loop filled the caller's memory through the pipe; a printed result line passed."""
    from pipelines.bench.code_exec import namespace_prefix

    mark = tmp_path / "survivor.txt"
    escape = (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(8)\n"
        f"    open({str(mark)!r}, 'w').write('alive')\n    os._exit(0)\ntime.sleep(60)\n"
    )
    t0 = time.perf_counter()
    r = run_tests(escape, ["assert True"], timeout_s=1)
    assert r.status == "timeout" and time.perf_counter() - t0 < 8  # did not wait for the grandchild
    time.sleep(max(0.0, 10 - (time.perf_counter() - t0)))  # past the moment it would have written
    if namespace_prefix():  # without one, a root child may fork and outlive the kill (stated in code_exec)
        assert not mark.exists()
    flood = run_tests("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", ["assert True"])
    assert flood.status == "crashed" and "File too large" in flood.detail  # the 1 MiB output cap
    fake = "import os\nprint('\\n__RESULT__' + '{\"passed\": 1, \"errors\": []}')\nos._exit(0)\n"
    forged = run_tests(fake, ["assert missing()"])
    assert forged.status == "crashed" and not forged.passed_all


def test_generated_code_has_no_network_where_namespaces_are_allowed():
    from pipelines.bench.code_exec import namespace_prefix

    if not namespace_prefix():
        pytest.skip("unshare may not make namespaces here")
    probe = "import socket\ns = socket.create_connection(('127.0.0.1', 9), timeout=1)"
    r = run_tests("x = 1", [probe])
    assert r.passed == 0 and ("unreachable" in r.detail or "OSError" in r.detail or "refused" in r.detail)


def test_score_row_dispatches_by_family_and_refuses_unscorable_rows():
    mc = {"task": "winogrande", "prompt": WINO, "reference": "B"}
    assert score_row(mc, "(B)") == 1.0
    code = {"task": "code", "prompt": "", "tests": ["assert inc(1) == 2"]}
    assert score_row(code, "```python\ndef inc(x):\n    return x + 1\n```") == 1.0
    assert (
        score_row({"task": "mbpp", "prompt": "", "tests": None}.copy() | {"tests": ["assert 0"]}, "") == 0.0
    )
    with pytest.raises(ScoreError, match="no tests"):
        score_row({"task": "mbpp", "prompt": "", "tests": None}, "def f(): pass")
    with pytest.raises(ScoreError, match="gold letter"):
        score_row({"task": "arc-challenge", "prompt": WINO, "reference": None}, "A")
    assert not math.isnan(score_row({"task": "rag_answer", "reference": "Lisbon"}, "Lisbon"))
    import numpy as np  # list columns come back from parquet as arrays

    row = {"task": "extraction", "reference": "12", "answers": np.array(["12", "twelve"])}
    assert score_row(row, "twelve") == 1.0
    assert score_row({"task": "code", "tests": np.array(["assert 1"])}, "x = 1") == 1.0
    with pytest.raises(ScoreError):  # an empty cell read back by pandas is NaN, not None
        score_row({"task": "extraction", "reference": math.nan, "answers": math.nan}, "x")


@pytest.mark.parametrize(
    "text",
    ["The answer is not A.", "Not A", "It isn't A", "The answer cannot be A", "It is definitely not A",
     "The answer is neither A nor B", "Not Kyle", "It is not Kyle."],
)  # fmt: skip
def test_a_letter_or_an_option_the_answer_rejects_is_not_its_choice(text):
    """A letter or an option's text after a negation was read as the answer: "Not A" scored 1 for gold A."""
    assert extract_choice(text, "AB", parse_choices(WINO)) is None
    assert score_multiple_choice(text, "A", WINO) == 0.0


@pytest.mark.parametrize(
    ("text", "expected"), [("B, not A", "B"), ("Not A but B", "B"), ("I would not say A. B", "B"),
                           ("Not Kyle but Logan", "B")],
)  # fmt: skip
def test_the_letter_left_when_another_is_rejected_is_the_choice(text, expected):
    assert extract_choice(text, "AB", parse_choices(WINO)) == expected


NOT_A_MAMMAL = "Which of these is NOT a mammal?\nA) dog\nB) cat\nC) trout\nD) whale"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("All except C are mammals.", "C"), ("All of them except trout are mammals", "C"), ("Not only A", "A"),
     ("Not just (A)", "A"), ("A is not correct\nB", "B"), ("Why not B?", "B"),
     ("I don't think A is right. B", "B")],
)  # fmt: skip
def test_except_only_a_line_break_or_a_question_do_not_reject_a_letter(text, expected):
    """The negation check's first form took "except C" (the answer to a NOT question), "not only A", a "not"
    on the line before, and "why not B?" as rejections."""
    assert extract_choice(text, "ABCD", parse_choices(NOT_A_MAMMAL)) == expected


def test_an_answer_label_in_markdown_or_a_final_answer_is_not_scored_as_the_answer():
    """Only a line starting "Answer:" lost its label: "**Answer:** Paris" scored F1 0.667, "The final answer
    is Paris." 0.4."""
    for out in ("**Answer:** Paris", "**Answer**: Paris", "Final answer: Paris", "The final answer is Paris.",
                "*Answer*: Paris", "__Answer__: Paris"):  # fmt: skip
        assert score_extraction(out, "Paris") == {"em": 1.0, "f1": 1.0}, out


def test_a_comma_between_digits_joins_them_only_as_a_thousands_separator():
    """ "2,3" matched "23" and "3,14" matched "314": the comma went as punctuation, the digits joined."""
    for pred, ref in (("2,3", "23"), ("3,14", "314"), ("1,5", "15"), ("12,34", "1234")):
        assert exact_match(pred, ref) == 0.0, (pred, ref)
    assert exact_match("2,3", "2, 3") == 1.0
    assert exact_match("1,000,000", "1000000") == exact_match("1,000", "1000") == 1.0
    assert exact_match("\u22125", "-5") == 1.0 and exact_match("\u22125", "5") == 0.0  # a minus sign
    assert exact_match("1,00,000", "100000") == exact_match("Rs 10,00,000", "Rs 1000000") == 1.0  # Indian
    assert (
        exact_match("1990\u20132000", "1990-2000") == 1.0 and exact_match("1990\u20132000", "19902000") == 0.0
    )


def test_code_llamas_python_tags_fence_its_code():
    """Unfenced, the longest run of lines that parsed was kept, and "[PYTHON]" and "[TESTS]" parse as
    Python lists: Code Llama's [TESTS] block of asserts ran without its function (NameError)."""
    out = (
        "[PYTHON]\ndef remove_elements(a, b):\n    return [x for x in a if x not in b]\n[/PYTHON]\n"
        "[TESTS]\n# Test case 1:\nassert remove_elements([], []) == []\n"
        "# Test case 2:\nassert remove_elements([1, 2, 3], [2]) == [1, 3]\n[/TESTS]\n"
    )
    tests = ["assert remove_elements([1, 2, 3], [2]) == [1, 3]"]
    assert score_code(out, tests) == 1.0
    assert score_code(out.replace("not in b", "in b"), tests) == 0.0


@pytest.mark.parametrize(
    ("text", "options"),
    [("10", {"A": "1", "B": "5", "C": "28", "D": "7"}), ("70", {"A": "1", "B": "5", "C": "28", "D": "7"}),
     ("soil", {"A": "oil", "B": "water", "C": "sand", "D": "ice"}),
     ("nice try", {"A": "oil", "B": "water", "C": "sand", "D": "ice"})],
)  # fmt: skip
def test_an_options_text_inside_another_word_is_not_that_option(text, options):
    """The option's text was found anywhere: "10" stated option "1", "soil" stated "oil"."""
    assert extract_choice(text, "ABCD", options) is None
    assert extract_choice(f"It is {options['C']}.", "ABCD", options) == "C"


def test_a_fraction_a_time_or_a_negative_amount_keeps_its_digits_apart():
    """ "/" and ":" went as punctuation: "1/2" matched "12" and "3:30" "330"; "-$5" lost its sign."""
    for pred, ref in (("1/2", "12"), ("3:30", "330"), ("-$5", "5")):
        assert exact_match(pred, ref) == 0.0, (pred, ref)
    assert exact_match("1/2", "1/2") == exact_match("3:30 pm", "3:30 PM") == exact_match("-$5", "-5") == 1.0


@pytest.mark.parametrize(
    "text", ["(B) and (C) are incorrect. D", "B, C are wrong. D is right", "B and C are wrong, so D"]
)
def test_the_letter_left_when_a_pair_is_ruled_out_is_the_choice(text):
    """A pair ruled out only stopped the two letters counting as offered together: the answer's opening
    letter (B) was still its choice, or no letter was."""
    assert extract_choice(text, "ABCD") == "D"


@pytest.mark.parametrize(
    "text", ["B, C is wrong", "B\nC is wrong because it ignores friction.", "B\n\nC is incorrect since"]
)
def test_a_second_letter_ruled_out_alone_leaves_the_first(text):
    assert extract_choice(text, "ABCD") == "B"


def test_an_option_in_a_script_without_spaces_is_still_found():
    assert (
        extract_choice("\u7b54\u6848\u662f\u5317\u4eac", "AB", {"A": "\u4e0a\u6d77", "B": "\u5317\u4eac"})
        == "B"
    )
