"""Reference scorers, one per task family; each returns a score in [0, 1].

- multiple choice: the choice letter extracted from free text ("The answer is (B).", "b", "B) house",
  or the text of exactly one option), exact match against the gold letter;
- extraction: SQuAD-style exact match and token F1 (the score is F1, max over the accepted answers);
- code: the generated function run against its tests in a sandboxed subprocess (`code_exec`);
- rag_answer: token F1 against a reference answer when there is one (RAGAS/TruLens run separately).
"""

from __future__ import annotations

import ast
import math
import re
import string
import textwrap
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import Any

from pipelines.bench.code_exec import run_tests
from pipelines.bench.outcomes import task_family


def _missing(v: Any) -> bool:
    """None, or the NaN pandas puts in an empty object cell."""
    return v is None or (isinstance(v, float) and math.isnan(v))


class ScoreError(ValueError):
    """The row cannot be scored (no reference, no tests); the runner records it in the `error` column."""


_OPTION = re.compile(r"^\s*\(?([A-H])[).:]\s*(.+?)\s*$", re.M)
# what follows a letter, or two, ruled out, not chosen: "A is wrong", "(B) is not it", "B and C are wrong"
_RULED_OUT = re.compile(
    r"[\)\]]?\s+(?i:is|was|are|were|seems?|would be)\s+(?i:not|wrong|incorrect|false|unlikely)\b"
)
_PAIR_RULED_OUT = re.compile(r"[\)\]]?\s+(?i:are|were|both)\s+(?i:not|wrong|incorrect|false|unlikely)\b")


# what comes before a letter or an option's text rejected, not chosen: "not A", "isn't B", "cannot be C",
# "neither A nor B", "definitely not D"; one word may stand between, not "only" ("not only A" is A), and
# on one line. Not "except": "all except C" names C, the answer to a NOT question
_NEGATED = re.compile(
    r"(?i:\bnot|n't|\bcannot[ \t]+be|\bneither|\bnor|\bnever)[ \t]+"
    r"(?:(?!(?i:only|just|merely|simply)\b)\w+[ \t]+)?[\(\[]?$"
)
NEGATION_REACH = 40  # characters looked at before a letter: a whole text before each one was quadratic


def parse_choices(prompt: str) -> dict[str, str]:
    """The options of the LAST question in a (few-shot) prompt: {"A": "dry palms", ...}."""
    blocks = [b for b in re.split(r"\n\s*\n", prompt) if _OPTION.search(b)]
    if not blocks:
        return {}
    return {m.group(1): m.group(2) for m in _OPTION.finditer(blocks[-1])}


def extract_choice(
    text: str, letters: Sequence[str] = "ABCD", options: dict[str, str] | None = None
) -> str | None:
    """The choice letter an answer commits to, or None when it commits to none (or to several)."""
    if not text:
        return None
    up = "".join(letters).upper()
    # a capital letter as a word, or a lower-case one only where it cannot be the article "a" ("b)", "b.")
    let = rf"(?:([{up}])\b|([{up.lower()}])(?=[\)\].:,]|\s*$))"
    t = text.strip()
    if len(set(re.findall(rf"^\s*\(?([{up}])\)", t, flags=re.M))) > 1:
        return None  # the answer echoes the option list ("A) 36 V\nB) 4 V"): no commitment
    # two letters offered together ("B, C", "B\nC", "(B) or (C)", "option B or option C") commit to neither:
    # each was read as the answer (a constant "A, B, C, D" scored 0.195 on ARC). Not a second letter ruled
    # out ("B, C is wrong") or the article ("B\nA wet palm ..."), nor a pair ruled out ("B and C are wrong")
    one = rf"[\(\[]?([{up}])[\)\]]?"
    joined = re.compile(rf"{one}\s*(?:,|/|&|\n|\bor\b|\band\b)\s*(?:(?i:option|choice)\s*)?{one}(?![\w'])")
    article = r"\s+(?!(?:or|and|is|was|because|since|would|as)\b)[a-z]"  # "A dog"; not "A or B"

    def offered(m: re.Match) -> bool:
        return (m[1] != m[2] and not _RULED_OUT.match(t, m.end())
                and not (m[2] == "A" and re.match(article, t[m.end():])))  # fmt: skip

    def pick(m: re.Match | None) -> str | None:
        if m is None:
            return None
        at = m.start(1) if m.group(1) else m.start(2)  # the letter, or the bracket before it
        with_another = joined.match(t, at - 1 if at and t[at - 1] in "([" else at)
        return None if with_another and offered(with_another) else (m.group(1) or m.group(2)).upper()

    def negated(start: int, end: int) -> bool:  # "not A"; "why not A?" proposes A
        before = _NEGATED.search(t, max(0, start - NEGATION_REACH), start) is not None
        return before and not re.match(r"[ )\]]*\?", t[end : end + 8])  # a bounded look: no copy of the rest

    def ruled_out(m: re.Match) -> bool:  # in steps 3, 4 and 6: "A is wrong", "not A", "B and C are wrong"
        pair = joined.match(t, m.start())  # a plural verb: "B, C is wrong" rules out C alone
        return (_RULED_OUT.match(t, m.end()) is not None or negated(m.start(), m.end())
                or (pair is not None and _PAIR_RULED_OUT.match(t, pair.end()) is not None))  # fmt: skip

    def stated(text: str) -> bool:  # step 5: an option's text, somewhere not rejected ("Not Kyle")
        low = t.lower()  # whole words: "soil" does not state "oil", nor "10" the option "1"
        found = re.finditer(r"(?<![a-z0-9])" + re.escape(text) + r"(?![a-z0-9])", low)  # CJK: no spaces
        return any(not negated(i.start(), i.end()) for i in found)

    # 1. the whole answer is a letter: "B", "(b)", "B.", "B)"
    if re.fullmatch(rf"[\(\[]?{let}[\)\]]?[.:,]?", t):
        return pick(re.fullmatch(rf"[\(\[]?{let}[\)\]]?[.:,]?", t))
    # 2. an explicit statement, the last "answer is" first: "Option A is wrong; the answer is D." is D
    said = list(re.finditer(rf"(?i:answer)\s*(?i:is|would be|:)?\s*:?\s*[\(\[]?{let}", t))
    if said:
        return pick(said[-1])
    if any(offered(m) for m in joined.finditer(t)):  # no statement to go by
        return None
    # 3. the answer starts with a marked letter: "B) house", "(C) ...", "D. impact", "B\n..."
    m = re.match(rf"[\(\[]?([{up}{up.lower()}])(?:[\)\]:.,]|\s*$|\s*\n)", t)
    if m and not ruled_out(m):
        return m.group(1).upper()
    # 4. "option C", "the correct choice is (B)"; not one ruled out ("Option A is wrong")
    named = re.finditer(rf"(?i:option|choice)\s*(?i:is|would be|:)?\s*:?\s*[\(\[]?{let}", t)
    m = next((m for m in named if not ruled_out(m)), None)
    if m:
        return pick(m)
    # 5. the text of exactly one option ("house", "wet palms"); an option inside another counts once
    if options:
        hits = {k for k, v in options.items() if k in up and v.strip() and stated(v.strip().lower())}
        hits = {k for k in hits if not any(k != o and options[k].lower() in options[o].lower() for o in hits)}
        if len(hits) == 1:
            return hits.pop()
    # 6. exactly one distinct capital letter in brackets or standing alone, "A" as an article excluded
    found = {m.group(1).upper() for m in re.finditer(rf"\(([{up}{up.lower()}])\)", t) if not ruled_out(m)}
    if not found:
        found = {m.group(1) for m in re.finditer(rf"\b([{up}])\b", t)
                 if not (m.group(1) == "A" and re.match(article, t[m.end():]))
                 and not ruled_out(m)}  # fmt: skip
    return found.pop() if len(found) == 1 else None


def score_multiple_choice(output: str, reference: str, prompt: str = "") -> float:
    if not isinstance(reference, str) or not reference.strip():
        raise ScoreError("multiple choice row has no gold letter")
    options = parse_choices(prompt)
    letters = "".join(sorted(options)) or "ABCD"
    return float(extract_choice(output, letters, options) == reference.strip().upper())


_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD normalisation (lower case, no punctuation, no articles, single spaces), except that numbers
    keep their sign and decimal point ("-5" is not "5", "3.5" not "35") and lose thousands separators
    ("1,000" is "1000"; another comma between digits parts them: "2,3" is not "23"), and Unicode
    punctuation (curly quotes, an ellipsis) goes too."""
    s = s.lower().replace("\u2212", "-")  # the minus sign is a hyphen-minus: "\u22125" is "-5"
    s = re.sub(r"(?<=\d)[\u2013\u2014](?=\d)", "-", s)  # a range in dashes "1990–2000" as in "1990-2000"
    # thousands separators, in Indian grouping too ("1,00,000" is 100000), then the 3-digit kind
    s = re.sub(r"\b\d{1,2}(?:,\d{2})+,\d{3}(?![\d,])", lambda m: m.group(0).replace(",", ""), s)
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)
    s = re.sub(r"(?<=\d),(?=\d)", " ", s)  # a list "2,3" or a decimal comma "3,14" is not 23 or 314
    s = re.sub(r"(?<=\d)\.(?=\d)", "\x00", s)
    s = re.sub(r"(?<![\w.])-\s?[$\u20ac\u00a3\u00a5](?=\d)", "-", s)  # "-$5" is -5, not 5
    s = re.sub(r"(?<![\w.])-(?=\d)", "\x01", s)
    s = re.sub(r"(?<=\d)-(?=\d)", " ", s)  # a range "3-5" is not the number 35
    s = re.sub(r"(?<=\d)[/:](?=\d)", " ", s)  # a fraction "1/2" or a time "3:30" is not 12 or 330
    s = "".join(ch for ch in s if ch not in _PUNCT and not unicodedata.category(ch).startswith("P"))
    s = s.replace("\x00", ".").replace("\x01", "-")
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    p, r = same / len(pred), same / len(ref)
    return 2 * p * r / (p + r)


def _refs(reference: Any) -> list[str]:
    refs = [reference] if isinstance(reference, str) else ([] if _missing(reference) else list(reference))
    refs = [r for r in refs if isinstance(r, str) and r.strip()]
    if not refs:
        raise ScoreError("row has no reference answer")
    if not any(normalize_answer(r) for r in refs):  # "The": an empty answer would match it
        raise ScoreError(f"the reference {refs[0]!r} has no word left to compare after normalisation")
    return refs


def _first_line(output: str) -> str:
    """Small models add explanations after the answer; the extraction answer is its first line."""
    lines = [x for x in output.strip().splitlines() if x.strip()]
    # "Answer:", "The answer is", "**Answer:**", "Final answer:"; not "Answerbank"
    label = r"^[*_\s]*(?:the\s+)?(?:final\s+)?answer(?![A-Za-z0-9])[*_]*\s*(?:is\b)?\s*:?[*_\s]*"
    first = re.sub(label, "", lines[0].strip(), flags=re.I) if lines else ""
    return first or (lines[1].strip() if len(lines) > 1 else "")  # "Answer:" on a line of its own


def score_extraction(output: str, reference: Any) -> dict[str, float]:
    refs, ans = _refs(reference), _first_line(output)
    return {"em": max(exact_match(ans, r) for r in refs), "f1": max(token_f1(ans, r) for r in refs)}


_FENCE = re.compile(r"^[ \t]*(?:```|~~~)([^\n`]*)\n(.*?)(^[ \t]*(?:```|~~~)|\Z)", re.S | re.M)
_PYTHON_TAGS = {"", "python", "py", "python3", "py3"}
_DEFINES = re.compile(r"^\s*(?:async\s+def|def|class|import|from)\s", re.M)


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def _longest_parsing_lines(text: str, limit: int = 60) -> str:
    """The longest run of whole lines of `text` that parses as Python: the code without the prose around
    it, or without the last line of an answer cut off at the token cap."""
    lines = text.splitlines()[:limit]
    for size in range(len(lines), 0, -1):
        for start in range(len(lines) - size + 1):
            code = textwrap.dedent("\n".join(lines[start : start + size]))
            if code.strip() and _parses(code):
                return code
    return text


def extract_code(output: str) -> str:
    """The code of the answer: its Python blocks joined (tagged as Python, or untagged and parsing as Python;
    not a shell line, a `>>>` session or printed output), else the whole text; where that does not parse
    (prose around unfenced code, a block cut off at the token cap) its longest run of lines that does. A whole
    block that does not parse is run as written where it defines something (dropping its bad lines passed
    code that cannot run), and left out where it does not (an example, `square(3) -> 9`)."""
    output = output.replace("\r\n", "\n")
    # Code Llama's own fence: "[PYTHON]" parses as Python (a list), so its [TESTS] block won over the code
    output = re.sub(r"^[ \t]*\[PYTHON\][ \t]*\n?", "```python\n", output, flags=re.M)
    output = re.sub(r"\n?^[ \t]*\[/PYTHON\][ \t]*$", "\n```", output, flags=re.M)
    fenced = [(tag.strip().lower(), textwrap.dedent(code), end) for tag, code, end in _FENCE.findall(output)]
    blocks = [
        (b, end) for tag, b, end in fenced
        if b.strip() and tag in _PYTHON_TAGS and not b.lstrip().startswith(">>>") and (tag or _parses(b))
        and (not end or _parses(b) or _DEFINES.search(b))
    ]  # fmt: skip
    code = "\n\n".join(b for b, _ in blocks) or output
    if _parses(code) or (blocks and all(end for _, end in blocks)):
        return code
    return _longest_parsing_lines(code)


def score_code(output: str, tests: Sequence[str] | None, timeout_s: float = 5.0) -> float:
    if tests is None or _missing(tests) or len(tests) == 0:  # a list, or a numpy array after parquet
        raise ScoreError("code row has no tests")
    return float(run_tests(extract_code(output), list(tests), timeout_s=timeout_s).passed_all)


def score_row(row: dict[str, Any], output: str) -> float:
    """The row's score in [0, 1] by its task family; raises ScoreError when it cannot be scored."""
    family = row.get("family") or task_family(row["task"])
    if family == "multiple_choice":
        return score_multiple_choice(output, row.get("reference") or "", row.get("prompt", ""))
    if family == "code":
        return score_code(output, row.get("tests"))
    if family in ("extraction", "rag_answer", "chat"):
        answers = row.get("answers")
        has_answers = answers is not None and not _missing(answers) and len(answers) > 0
        refs = answers if has_answers else row.get("reference")
        return score_extraction(output, refs)["f1"]
    raise ScoreError(f"no scorer for task family {family!r}")


JUDGE_PROMPT = """You grade an assistant's answer to a user's request.

Request:
{prompt}

Answer:
{answer}

How helpful, correct and complete is the answer? Reply with one integer from 1 (useless or wrong) to 10
(fully correct and helpful), and nothing else."""


def parse_rating(text: str, low: int = 1, high: int = 10) -> float:
    """The judge's rating as a score in [0, 1]: a number out of `high` ("8/10", "7.5 out of 10"), else one
    after a label ("Rating: 4 (misses 2 of 3 points)") or the text opens with ("8. Clear and right"), else
    its last number that ends it or follows a verb of rating (`rated`: "On a scale of 1 to 10, I give it 8",
    "I'd rate it 7 because"); no other number is a rating ("It contains 3 errors"), nor a scale's top ("1-10"
    alone); it must lie in [low, high]. A rating out of
    another scale, where it opens the text, follows a label or ends it ("2/5", "4 out of 5"), is read on
    that scale from 1: 2/5 is 0.25, not 2 out of 10."""
    text = text or ""
    # a signed number is none: "-3" is not 3, while "1-10" still reads 10
    number = r"(?<![\d.])(?<![^\d][-\u2212])(?<!^[-\u2212])(\d{1,3}(?:\.\d+)?)(?![\d.]?\d)"
    # a scale's top ("/10", "out of 10") is no rating: "-3/10", its rating signed, is none, not 10
    the_scale = re.compile(rf"{low}\s*(?:[-\u2013]|to)\s*{high}(?![\d.]?\d)")  # "1-10", "1 to 10"
    spans = [(m.start(), m.end()) for m in the_scale.finditer(text)]
    # nor a number of a scale: a reply of the scale alone ("1-10", "Rating: 1-10") is no 10 and no 1
    numbers = [
        m for m in re.finditer(r"(?<!/)(?<!/\s)(?<!out of )" + number, text)
        if not any(a <= m.start(1) < b for a, b in spans)
    ]  # fmt: skip
    every = [float(m.group(1)) for m in numbers]
    out_of = re.search(number + rf"\**\s*(?:/|out of)\s*{high}(?![\d.]?\d)", text)
    label = r"\b(?i:rating|score|grade)\**{0}*(?:[:=]|is\b){0}*\**{0}*"  # "Rating: 4", "my score is 7"
    # "Rating: -1 (scale 1-10)": the first label's rating is signed, so none ("Rating:\n- 8", a list, is 8)
    first = re.search(label.format(r"[ \t]") + r"([-\u2212]\d)?", text)
    if first and first.group(1):
        raise ScoreError(f"the judge gave a negative rating: {text[:80]!r}")
    opening = re.match(r"[^\w]*" + number, text) or re.search(label.format(r"\s") + number, text)
    if opening and any(a <= opening.start(1) < b for a, b in spans):
        opening = None  # "1-10: 6", "(1 to 10) 8": the scale, not a rating
    scaled = re.compile(number + r"\**\s*(?:/|out of)\s*(\d{1,3})(?![\d.]?\d)")
    if opening:  # the opening or labelled number, where a scale follows it
        other = scaled.match(text, opening.start(1))
    else:  # the last fraction, where it ends the text
        other = next(reversed(list(scaled.finditer(text))), None)
        other = other if other and _ENDS.fullmatch(text, other.end()) else None
    if not out_of and other:
        n, scale = float(other.group(1)), int(other.group(2))
        if scale > 1 and 1 <= n <= scale:
            return (n - 1) / (scale - 1)
        raise ScoreError(f"the judge gave no rating from 1 to {scale}: {text[:80]!r}")
    if out_of:
        candidates = [float(out_of.group(1))]
    elif opening:  # then the last in range: "0, no: 7" is 7
        candidates = [float(opening.group(1)), *every[::-1]]
    else:  # the last number that reads as a rating; "It contains 3 errors", "Step 1: check" have none
        candidates = [float(m.group(1)) for m in reversed(numbers) if rated(text, m)][:1]
    v = next((v for v in candidates if low <= v <= high), None)
    if v is not None:
        return (v - low) / (high - low)
    raise ScoreError(f"the judge gave no rating from {low} to {high}: {text[:80]!r}")


_RATED = re.compile(  # "I'd rate it", "I give this answer a", "deserves a", "Overall,", "this is an"
    r"(?i:\b(?:rate|rated|give|gave|giving|rating|score|scored|grade|deserves?|worth|overall)\b[,:]?"
    r"(?:\s+(?:it|this|that|the|answer|response|a|an|of|at|is|as|would|be))*\s*|\ban?\s+)$"
)
_ENDS = re.compile(r"[\s.!*)\]`\"'>,;]*(?:</\w+>[\s.!*)\]`\"'>,;]*)?")  # "7.", "**7**", "`9`", "<r>7</r>"


def rated(text: str, m: re.Match) -> bool:
    """Whether the number `m` reads as a rating where no label or scale says so: it ends the reply ("On a
    scale of 1 to 10, I give it 8") or follows a verb of rating ("I'd rate it 7 because")."""
    return _ENDS.fullmatch(text, m.end()) is not None or _RATED.search(text, 0, m.start()) is not None


class JudgeUnavailable(RuntimeError):
    """The judge gave no rating of its own: its call failed, or another model answered in its place (the
    gateway's fallback, perhaps the very model being judged). Not a scorer's verdict: the runner keeps the
    row as a failed call, so the next run asks again, and the error rate counts it."""


def judge_text(gateway: Any, judge: str, messages: list[dict[str, Any]], **options: Any) -> str:
    """The judge's reply, from the judge itself; JudgeUnavailable otherwise."""
    from pipelines.llm.gateway import GatewayError

    try:
        res = gateway.chat(judge, messages, **options)
    except GatewayError as e:
        raise JudgeUnavailable(f"{judge} did not answer: {e}") from None
    if res.fallback_used:
        raise JudgeUnavailable(f"{judge} did not answer; its fallback {res.model} did")
    return str(res.text)


class JudgeScorer:
    """`score_row` where a row has a reference or tests; an LLM judge through the gateway (a 1-10 rating,
    rescaled to [0, 1]) where it has neither, as for prompts from the service's prompt log. The judge should
    be a capable catalog model (`SM_JUDGE_MODEL`); a rating it fails to give marks that row only."""

    def __init__(self, gateway: Any, judge: str, max_tokens: int = 8) -> None:
        self.gateway, self.judge, self.max_tokens = gateway, judge, max_tokens

    def __call__(self, row: dict[str, Any], output: str) -> float:
        if not needs_judge(row):
            return score_row(row, output)
        from pipelines.bench.runner import build_messages  # the request as the model saw it, contexts too

        request = "\n\n".join(m["content"] for m in build_messages(row))
        text = JUDGE_PROMPT.format(prompt=request, answer=output.strip() or "(empty)")
        msgs = [{"role": "user", "content": text}]
        # a reply with no rating is a ScoreError, kept with the row (scorer errors are counted per model);
        # not asked again: a judge at temperature 0 would give the same reply every night
        return parse_rating(judge_text(self.gateway, self.judge, msgs, max_tokens=self.max_tokens))


def bench_scorer(settings: Any, gateway: Any) -> Any:
    """How a micro-bench run scores its rows, the CLI's as the asset's: with `SM_JUDGE_MODEL` a judge rates
    the rows with no reference, else `score_row` (such rows are errors)."""
    return JudgeScorer(gateway, settings.judge_model) if settings.judge_model else score_row


def needs_judge(row: dict[str, Any]) -> bool:
    def empty(v: Any) -> bool:
        return _missing(v) or (v.strip() == "" if isinstance(v, str) else len(v) == 0)

    return all(empty(row.get(k)) for k in ("reference", "answers", "tests"))
