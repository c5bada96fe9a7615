"""Request signals: constraints, PII flag (Presidio pattern recognizers), token estimate, focus text.

Everything here runs offline: Presidio's pattern recognizers need no spaCy model.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any, Literal

from pydantic import BaseModel, Field

from pipelines.corpus.pii import MARGIN_CHARS, pieces_around

# Presidio's pattern scores: a phone number scores 0.4 without the context enhancer, an IP 0.6, an e-mail 0.5.
PII_MIN_SCORE = 0.4
CHARS_PER_TOKEN = 4.0
PII_CACHE_MAX_CHARS = 16_000
# A recognizer runs only where its trigger matches: each trigger is a necessary condition of every match the
# recognizer can make (so the flag is the same; tests/test_router_rules.py checks it on RouterBench), and
# most prompts skip the phone (1.2 ms) and IP (0.5 ms) recognizers. A phone number counts with 5+ digits
# split by punctuation or spaces (Presidio also takes German 4-digit numbers: "1640", a year to a reader;
# one with an extension, "1640 x5", is the exception: its fifth digit is the extension's, and it is missed);
# SSNs 9 digits; cards 13+ digits with single '-' or ' '; IBANs a country code and
# 2 digits; IPs a dotted quad or two colons with at most 4 hex digits between. Each trigger starts with a
# digit or a literal, which the regex engine skips to: on RouterBench prompts (1,500 characters) detection
# took 138-167 us per prompt when the IBAN and IP triggers began with a letter class and an optional hex run,
# and 63-74 us now (a /v1/route worker spent 8% of its CPU here under load).
# Recognizers read pieces of the text around their triggers' matches, of at most PII_PIECE_CHARS, and one
# that finds something stops there. Read whole, Presidio's e-mail pattern takes time quadratic in a run of
# word characters and dots: 77 s for 40,000 characters of `a.a.a.` and an address after them. The phone
# recognizer tries every digit group (phonenumbers, about 25 us a try and region), splits a run of digits
# and punctuation into numbers from the run's start, and rejects one right after a letter: its pieces
# begin at, and end just after, a character no number can hold (`_phone_pieces`). It reads at most
# PHONE_SCAN_CHARS of them, and a text with more, or with a run too long for one piece, counts as holding
# one (UNCHECKED_PHONE_NUMBER). Read whole, a 1 MB table of integers took 15 s, and one of 3-digit numbers
# hid a phone number after it: phonenumbers gave up after 65,535 tries (benchmarks/pii_signals.py).
PII_PIECE_CHARS, PII_MARGIN_CHARS, PHONE_SCAN_CHARS = 4_000, MARGIN_CHARS, 32_000
PHONE_MIN_DIGITS = 5  # to flag a prompt as private; redaction (pipelines/corpus/pii.py) wants 9
_DIGIT_RUN = re.compile(r"\d(?:[^A-Za-z\d]*\d){" + str(PHONE_MIN_DIGITS - 1) + ",}")


class Constraints(BaseModel):
    """What the caller demands of this one request."""

    max_cost_usd: float | None = Field(default=None, ge=0, description="cap on the predicted cost")
    latency_slo_s: float | None = Field(
        default=None, gt=0, description="drop models whose recent p95 exceeds"
    )
    privacy: Literal["allow_remote", "local_only"] = "allow_remote"
    expected_output_tokens: int = Field(default=256, ge=0, description="reserved in the context window")


@dataclass(frozen=True)
class Signals:
    """What the router knows about a request before predicting quality."""

    input_tokens: int
    tokens_needed: int
    pii: bool
    pii_entities: tuple[str, ...] = ()
    task: str | None = None
    task_probability: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_context(self, constraints: Constraints) -> dict[str, Any]:
        """The flat name -> value mapping that rules read (`$tokens_needed`, `privacy`, ...)."""
        ctx: dict[str, Any] = {
            "input_tokens": self.input_tokens,
            "tokens_needed": self.tokens_needed,
            "pii": self.pii,
            "pii_entities": ", ".join(self.pii_entities) or "none",
            "task": self.task,
            "task_probability": self.task_probability,
        }
        ctx.update(constraints.model_dump())
        ctx.update(self.extra)
        return ctx


def estimate_tokens(text: str, digits: bool = True) -> int:
    """A cheap tokenizer-free estimate: about four ASCII characters per token (English and code), a token
    for every digit (Llama's, SmolLM2's and Gemma's tokenizers split numbers into digits: at four characters
    a token, 4,759 characters of numeric CSV counted as 1,190 against SmolLM2's 4,730 and passed its
    2,048-token window; `digits=False` counts them as other characters, as the router's features do), and a
    token for every other character (BPE tokenizers give CJK characters one or more each)."""
    ascii_chars = len(text.encode("ascii", "ignore"))
    n_digits = sum(c.isdigit() for c in text if c.isascii()) if digits else 0
    return max(1, math.ceil((ascii_chars - n_digits) / CHARS_PER_TOKEN) + n_digits + len(text) - ascii_chars)


def focus_text(prompt: str) -> str:
    """The last turn of a prompt whose turns are joined by blank lines (few-shot examples come first).

    Embedders truncate long inputs, so a few-shot prompt would otherwise embed as its shared preamble.
    """
    blocks = [b for b in prompt.split("\n\n") if b.strip()]
    return blocks[-1].strip() if blocks else prompt


@cache
def _recognizers() -> tuple[tuple[Any, tuple[re.Pattern[str], ...]], ...]:
    from presidio_analyzer import Pattern
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        UsSsnRecognizer,
    )

    from pipelines.corpus.pii import phone_recognizer

    class AnyEmailRecognizer(EmailRecognizer):
        """E-mail addresses without the top-level-domain check: that check downloads the public suffix list
        (minutes of timeouts offline), and for privacy an address-shaped string is personal data anyway."""

        PATTERNS = [
            *EmailRecognizer.PATTERNS,
            Pattern("Email (any local part)", r"[^\s@<>()\[\],;:\"]+@\w[\w-]*(?:\.[\w-]+)+", 0.5),
        ]

        def validate_result(self, pattern_text: str) -> None:
            return None

    return (  # (recognizer, its triggers: it runs when one of them matches)
        (AnyEmailRecognizer(), (re.compile("@"),)),
        (phone_recognizer(), (_DIGIT_RUN,)),
        (CreditCardRecognizer(), (re.compile(r"\d(?:[\s\-]?\d){11,}"),)),
        # two letters, maybe a space or dash, two digits: written from the first digit back
        (IbanRecognizer(), (re.compile(r"\d(?:(?<=[A-Za-z]{2}\d)|(?<=[A-Za-z]{2}[ \-]\d))\d"),)),
        (IpRecognizer(), (re.compile(r"\d{1,3}(?:\.\d{1,3}){3}"), re.compile(r":[0-9A-Fa-f]{0,4}:"))),
        (UsSsnRecognizer(), (_DIGIT_RUN,)),
    )


def detect_pii(text: str, min_score: float = PII_MIN_SCORE) -> tuple[str, ...]:
    """Entity types (EMAIL_ADDRESS, PHONE_NUMBER, ...) that Presidio's pattern recognizers find in `text`.

    Remembered for the last distinct texts up to PII_CACHE_MAX_CHARS long (the phone recognizer alone
    takes milliseconds per prompt); the cache holds at most 2,048 of them.
    """
    if len(text) <= PII_CACHE_MAX_CHARS:
        return _detect_pii_cached(text, min_score)
    return _detect_pii(text, min_score)


@lru_cache(maxsize=2048)
def _detect_pii_cached(text: str, min_score: float) -> tuple[str, ...]:
    return _detect_pii(text, min_score)


def _detect_pii(text: str, min_score: float, gated: bool = True) -> tuple[str, ...]:
    """`gated`: each recognizer reads only the pieces of text around its triggers' matches, in order, and
    stops at its first finding; otherwise it reads the whole text (the reference the tests compare with)."""
    found: set[str] = set()
    spans: dict[re.Pattern[str], list[tuple[int, int]]] = {}  # the phone and SSN recognizers share a trigger
    for rec, triggers in _recognizers():
        phone = gated and "PHONE_NUMBER" in rec.supported_entities
        pieces = [text]
        if gated:
            for t in triggers:
                if t not in spans:
                    spans[t] = [(m.start(), m.end()) for m in t.finditer(text)]
            matched = sorted(m for t in triggers for m in spans[t])
            bounds = (
                _phone_pieces(text, matched)
                if phone
                else pieces_around(text, matched, PII_MARGIN_CHARS, PII_PIECE_CHARS)
            )
            if bounds is None:  # a run of digits and punctuation too long for one piece
                found.add("UNCHECKED_PHONE_NUMBER")
                continue
            pieces = [text[lo:hi] for lo, hi in bounds]
        read = 0
        for piece in pieces:
            if phone and read >= PHONE_SCAN_CHARS:  # more number-like text than it reads
                found.add("UNCHECKED_PHONE_NUMBER")
                break
            read += len(piece)
            results = rec.analyze(piece, rec.supported_entities, None)
            if kept := {r.entity_type for r in results if _kept(piece, r, min_score)}:
                found |= kept
                break
    return tuple(sorted(found))


def _kept(text: str, res: Any, min_score: float) -> bool:
    short = res.entity_type == "PHONE_NUMBER" and (
        sum(c.isdigit() for c in text[res.start : res.end]) < PHONE_MIN_DIGITS
    )
    return res.score >= min_score and not short


def _phone_pieces(text: str, matches: list[tuple[int, int]]) -> list[tuple[int, int]] | None:
    """(start, end) of the text around the phone trigger's matches, each piece starting at and ending just
    after a character that no phone-number candidate can hold (`_phone_breaks`: a newline, most letters):
    phonenumbers splits a run of digits and punctuation into candidates from the run's start, so a piece
    that began inside a run could read other numbers in it than the whole text does, and it checks the
    character before a candidate (a letter there rejects it), which the piece keeps. The run around each
    match is taken whole, and a span over PII_PIECE_CHARS is cut at its last such character; None where a
    piece has none (a run of number-like text longer than a piece)."""
    breaks, last_break = _phone_breaks()
    spans: list[list[int]] = []
    for lo, hi in matches:
        if spans and hi <= spans[-1][1]:  # inside the run already taken (the search below would be quadratic)
            continue
        if not spans or lo > spans[-1][1]:
            start = spans[-1][1] if spans else 0
            m = last_break.match(text, start, lo)
            lo = m.end() - 1 if m else start
        after = breaks.search(text, hi)
        hi = after.end() if after else len(text)
        if spans and lo <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], hi)
        else:
            spans.append([lo, hi])
    pieces = []
    for lo, hi in spans:
        while hi - lo > PII_PIECE_CHARS:
            m = last_break.match(text, lo + 1, lo + PII_PIECE_CHARS)
            if m is None:
                return None
            pieces.append((lo, m.end()))
            lo = m.end() - 1  # the break again: the next piece sees what precedes its first candidate
        pieces.append((lo, hi))
    return pieces


@cache
def _phone_breaks() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """A character no phone-number candidate can hold, and text up to the last one: any but those that
    phonenumbers' candidate pattern matches between or before digits, or that match a character of its
    source (its extension labels, "ext", "anexo", "int") under its flags (ignoring case: "ı" is an "i").
    A newline is one, as are most letters."""
    import phonenumbers.phonenumbermatcher as pm

    pattern = pm._PATTERN  # private: tests/test_router_rules.py checks the breaks against phonenumbers
    source = re.compile("[" + "".join(re.escape(c) for c in set(pattern.pattern)) + "]", pattern.flags)
    soft = {"\t"}
    for cp in range(0x10000):
        ch = chr(cp)
        if 0xD800 <= cp <= 0xDFFF:
            continue
        if source.fullmatch(ch) or pattern.fullmatch(f"1{ch}1") or pattern.fullmatch(f"{ch}1"):
            soft.add(ch)
    breaks = "[^\\d" + "".join(re.escape(c) for c in sorted(soft)) + "]"
    return re.compile(breaks), re.compile(".*" + breaks, re.DOTALL)


def request_signals(
    prompt: str,
    constraints: Constraints,
    task: str | None = None,
    task_probability: float | None = None,
    sent: str | None = None,
    sized: str | None = None,
) -> Signals:
    """`sent`: all the model will be sent, where that holds more than `prompt`; PII is sought in it.
    `sized`: the text whose size the request's is (default `sent`, else `prompt`)."""
    text = prompt if sent is None else sent
    tokens = estimate_tokens(text if sized is None else sized)
    entities = detect_pii(text)
    return Signals(
        input_tokens=tokens,
        tokens_needed=tokens + constraints.expected_output_tokens,
        pii=bool(entities),
        pii_entities=entities,
        task=task,
        task_probability=task_probability,
    )
