"""Rules and constraints: PII never reaches a remote model, constraints always hold, explanations name them.

The router here is real (rules from the package YAML, Presidio, the static embedder) with a fixed-rate
predictor whose rates the tests choose, so that every score ordering can be tried.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipelines.corpus.pii import pieces_around
from router_models.router.cascade import Cascade, CascadeRefused
from router_models.router.features import CostModel, TaskClassifier
from router_models.router.policies import MaxUtility
from router_models.router.predictors.baselines import GlobalMean
from router_models.router.router import Router
from router_models.router.rules import ModelInfo, Rule, RuleError, apply_rules, load_rules
from router_models.router.signals import (
    _DIGIT_RUN,
    PII_MARGIN_CHARS,
    PII_MIN_SCORE,
    PII_PIECE_CHARS,
    Constraints,
    _detect_pii,
    _phone_breaks,
    _phone_pieces,
    detect_pii,
)

PANEL = [
    ModelInfo("remote-strong", "remote", 128_000),
    ModelInfo("remote-cheap", "remote", 16_000),
    ModelInfo("open-remote", "open_weights_remote", 32_000),
    ModelInfo("local-small", "local", 512),
    ModelInfo("local-big", "local", 8_192),
]
NAMES = [m.name for m in PANEL]
STATIC_DIM = 64
PLAIN = "Which gas do plants absorb from the air? A) oxygen B) carbon dioxide C) helium D) neon"


def make_router(means, costs, panel=PANEL, lam: float = 0.0) -> Router:
    names = [m.name for m in panel]
    means = np.asarray(means, dtype=float)
    predictor = GlobalMean.from_state({"models": names}, {"mean": means, "sd": np.full(len(names), 0.05)})
    coef = np.zeros((2, len(names)))  # rows: per 1k input tokens, then the one task ("all")
    coef[1] = costs  # a fixed cost per model, whatever the prompt's length
    return Router(
        models=names,
        predictor=predictor,
        task_clf=TaskClassifier(["all"], np.zeros((1, STATIC_DIM)), np.zeros(1)),
        cost_model=CostModel(coef, np.zeros(len(names))),
        embedder="static",
        metadata={m.name: m for m in panel},
        rules=load_rules(),
        policy=MaxUtility(lambda_cost=lam),
        strongest=names[0],
    )


def test_email_prompt_goes_local_even_when_remote_models_score_best():
    router = make_router([0.99, 0.98, 0.97, 0.10, 0.20], [0.0001, 0.0, 0.0, 0.01, 0.01])
    d = router.route(f"Draft a reply to jane.doe@example.com about the invoice. {PLAIN}")
    assert d.model == "local-big"
    assert d.binding == "pii_local_only"
    assert "personal data" in d.explanation and "EMAIL_ADDRESS" in d.explanation
    assert {c.model for c in d.candidates if c.allowed} == {"local-small", "local-big"}


def test_a_decision_as_a_dict_is_what_dataclasses_asdict_gives_and_shares_nothing():
    from dataclasses import asdict

    router = make_router([0.99, 0.98, 0.97, 0.10, 0.20], [0.0001, 0.0, 0.0, 0.01, 0.01])
    d = router.route(f"Draft a reply to jane.doe@example.com about the invoice. {PLAIN}")
    out = d.to_dict()
    assert out == asdict(d) and out["signals"]["pii_entities"] == ["EMAIL_ADDRESS"]
    out["signals"]["pii_entities"].append("changed")
    out["candidates"][0]["model"] = "changed"
    assert d.signals["pii_entities"] == ["EMAIL_ADDRESS"] and d.candidates[0].model != "changed"


def test_pii_with_no_local_model_is_refused_not_sent_remote():
    panel = [m for m in PANEL if m.privacy != "local"]
    router = make_router([0.9, 0.8, 0.7], [0.001, 0.001, 0.001], panel=panel)
    d = router.route("My card is 4111 1111 1111 1111, is that enough for the booking?")
    assert d.model is None
    assert d.binding == "pii_local_only"
    assert "No model" in d.explanation and "pii_local_only" in d.explanation


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    email=st.emails(),
    means=st.lists(st.floats(0, 1), min_size=5, max_size=5),
    costs=st.lists(st.floats(0, 0.01), min_size=5, max_size=5),
)
def test_any_email_address_never_reaches_a_remote_model(email, means, costs):
    router = make_router(means, costs)
    d = router.route(f"Please write to {email} and ask about the delivery date.")
    assert d.model is None or router.metadata[d.model].privacy == "local"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    means=st.lists(st.floats(0, 1), min_size=5, max_size=5),
    costs=st.lists(st.floats(0, 0.01), min_size=5, max_size=5),
    p95=st.lists(st.one_of(st.none(), st.floats(0.05, 20)), min_size=5, max_size=5),
    max_cost=st.one_of(st.none(), st.floats(0, 0.01)),
    slo=st.one_of(st.none(), st.floats(0.1, 10)),
    privacy=st.sampled_from(["allow_remote", "local_only"]),
    pii=st.booleans(),
    long_prompt=st.booleans(),
    lam=st.floats(0, 1000),
)
def test_constraints_always_respected(means, costs, p95, max_cost, slo, privacy, pii, long_prompt, lam):
    router = make_router(means, costs, lam=lam)
    prompt = (
        PLAIN + (" Call me on +1 212 555 0198." if pii else "") + (" and more" * 400 if long_prompt else "")
    )
    c = Constraints(max_cost_usd=max_cost, latency_slo_s=slo, privacy=privacy)
    latencies = {n: v for n, v in zip(NAMES, p95, strict=True) if v is not None}
    d = router.route(prompt, c, p95_latency_s=latencies)
    allowed = [cand for cand in d.candidates if cand.allowed]
    for cand in allowed:
        info = router.metadata[cand.model]
        if pii or privacy == "local_only":
            assert info.privacy == "local"
        if max_cost is not None:
            assert cand.cost_usd <= max_cost
        if slo is not None and cand.model in latencies:
            assert latencies[cand.model] <= slo
        assert info.context_window >= d.signals["tokens_needed"]
    if d.model is None:
        assert not allowed
    else:
        assert d.model in {cand.model for cand in allowed}
        assert d.chosen().utility == max(cand.utility for cand in allowed)  # the policy's best allowed


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    order=st.permutations(NAMES),
    length=st.integers(1, 5),
    thresholds=st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=4, max_size=4),
    replies=st.lists(st.sampled_from("AB"), min_size=5, max_size=5),
    costs=st.lists(st.floats(0, 0.01), min_size=5, max_size=5),
    max_cost=st.one_of(st.none(), st.floats(0, 0.02)),
    privacy=st.sampled_from(["allow_remote", "local_only"]),
    pii=st.booleans(),
)
def test_a_cascade_under_a_decision_calls_only_allowed_models_within_the_cap(
    order, length, thresholds, replies, costs, max_cost, privacy, pii
):
    """The cascade took no request constraints: a prompt with personal data went to every model of its
    chain, remote ones included, and escalations paid past the cost cap."""
    router = make_router([0.5] * 5, costs)
    prompt = PLAIN + (" Call me on +1 212 555 0198." if pii else "")
    d = router.route(prompt, Constraints(max_cost_usd=max_cost, privacy=privacy))
    cascade = Cascade(list(order[:length]), thresholds[: length - 1])
    reply = dict(zip(NAMES, replies, strict=True))
    allowed = {c.model: c.cost_usd for c in d.candidates if c.allowed}
    try:
        r = cascade.run(prompt, lambda m, p: reply[m], decision=d)
    except CascadeRefused as e:
        assert not set(cascade.chain) & set(allowed), e
        assert all(m in str(e) for m in cascade.chain)
        return
    assert set(r.called) <= set(allowed) and r.answer == reply[r.model] == reply[r.called[-1]]
    assert set(r.skipped) == set(cascade.chain) - set(allowed)
    if pii or privacy == "local_only":
        assert all(router.metadata[m].privacy == "local" for m in r.called)
    if max_cost is not None:
        assert sum(allowed[m] for m in r.called) <= max_cost + 1e-12
    if r.stopped_by == "max_cost_usd":
        rest = [m for m in cascade.chain if m in allowed and m not in r.called]
        assert sum(allowed[m] for m in r.called) + allowed[rest[0]] > max_cost


def test_a_cascade_stops_escalating_at_the_cost_cap_and_skips_what_the_rules_rule_out():
    router = make_router([0.5] * 5, [0.004, 0.001, 0.002, 0.0, 0.0])
    cascade = Cascade(["remote-cheap", "open-remote", "remote-strong"], [1.0, 1.0])
    reply = {"remote-cheap": "A", "open-remote": "B", "remote-strong": "A"}  # they disagree: escalate
    r = cascade.run(PLAIN, lambda m, p: reply[m])
    assert r.called == cascade.chain and r.stopped_by is None
    d = router.route(PLAIN, Constraints(max_cost_usd=0.005))
    r = cascade.run(PLAIN, lambda m, p: reply[m], decision=d)
    assert r.called == ["remote-cheap", "open-remote"] and r.stopped_by == "max_cost_usd" and r.answer == "B"
    email = f"Forward this to jane.doe@example.com. {PLAIN}"
    r = Cascade(["remote-cheap", "local-big", "remote-strong"], [1.0, 1.0]).run(
        email, lambda m, p: "A", decision=router.route(email)
    )
    assert r.called == ["local-big"] and set(r.skipped) == {"remote-cheap", "remote-strong"}
    assert r.skipped["remote-strong"].startswith("pii_local_only: ")
    with pytest.raises(CascadeRefused, match="no model of the cascade may take this request"):
        cascade.run(email, lambda m, p: "A", decision=router.route(email))


def test_explanation_names_the_binding_cost_cap():
    router = make_router([0.95, 0.6, 0.5, 0.3, 0.4], [0.005, 0.0005, 0.0004, 0.0001, 0.0002])
    d = router.route(PLAIN, Constraints(max_cost_usd=0.001))
    assert d.model == "remote-cheap"
    assert d.binding == "max_cost_usd"
    assert (
        "max_cost_usd" in d.explanation
        and "remote-strong" in d.explanation
        and "remote-cheap" in d.explanation
    )


def test_explanation_names_the_binding_latency_slo_and_local_only():
    router = make_router([0.95, 0.6, 0.5, 0.3, 0.4], [0.001] * 5)
    d = router.route(PLAIN, Constraints(latency_slo_s=1.0), p95_latency_s={"remote-strong": 3.2})
    assert (d.model, d.binding) == ("remote-cheap", "latency_slo")
    assert "3.20 s" in d.explanation and "latency_slo" in d.explanation
    d = router.route(PLAIN, Constraints(privacy="local_only"))
    assert (d.model, d.binding) == ("local-big", "local_only_requested")


def test_no_binding_when_the_preferred_model_is_allowed():
    router = make_router([0.95, 0.6, 0.5, 0.3, 0.4], [0.001] * 5)
    d = router.route(PLAIN, Constraints(max_cost_usd=1.0))
    assert d.model == "remote-strong" and d.binding is None
    assert "no rule or constraint bound" in d.explanation


def test_context_window_rule_drops_small_models():
    router = make_router([0.1, 0.1, 0.1, 0.9, 0.2], [0.001] * 5)
    d = router.route(PLAIN + " filler" * 600)  # ~1,000 tokens + 256 reserved > local-small's 512
    assert d.model != "local-small"
    assert d.binding == "context_window"
    # at four characters a token, 300 CJK characters counted as 75 tokens and passed; BPE gives each one 1+
    d = router.route("请总结这段文字。" * 40)
    assert d.model != "local-small" and d.binding == "context_window" and d.signals["input_tokens"] >= 320
    # and every digit is a token to SmolLM2's tokenizer: 1,000 characters of numbers counted as 250
    d = router.route("Sum these: " + ",".join(f"{i * 7919 % 10**6:06d}" for i in range(143)))
    assert d.model != "local-small" and d.binding == "context_window" and d.signals["input_tokens"] >= 858


def test_a_refusal_names_every_rule_that_excluded_a_model():
    """PII sent the remote models away and a long prompt the local ones: the refusal named pii_local_only
    alone, so the caller could not tell that a shorter prompt would have been served."""
    router = make_router([0.9, 0.8, 0.7, 0.95, 0.6], [0.001] * 5)
    long_answer = Constraints(expected_output_tokens=8000)  # more than local-big's 8,192 with the prompt
    d = router.route("Reply to jane.doe@example.com: " + PLAIN + " filler" * 300, long_answer)
    assert d.model is None and d.binding == "context_window"  # the preferred model's rule, local-small's
    assert "pii_local_only: " in d.explanation and "context_window: " in d.explanation, d.explanation


def test_an_slo_that_cannot_be_checked_is_said_so():
    """RouterBench outcomes carry no latency: with no recent p95 for a model, the SLO cannot drop it, and
    the explanation said nothing bound the choice."""
    router = make_router([0.95, 0.6, 0.5, 0.3, 0.4], [0.001] * 5)
    d = router.route(PLAIN, Constraints(latency_slo_s=0.5))
    assert d.model == "remote-strong"
    assert "No recent latency is known for remote-strong, so the 0.5 s SLO was not checked." in d.explanation
    d = router.route(PLAIN, Constraints(latency_slo_s=0.5), p95_latency_s={"remote-strong": 0.2})
    assert d.model == "remote-strong" and "not checked" not in d.explanation


def test_pattern_recognizers_find_pii_and_leave_plain_text_alone():
    assert detect_pii("write to jane.doe@example.com") == ("EMAIL_ADDRESS",)
    assert "CREDIT_CARD" in detect_pii("card 4111 1111 1111 1111")
    assert "IBAN_CODE" in detect_pii("pay to GB82 WEST 1234 5698 7654 32")
    assert detect_pii(PLAIN) == ()
    assert detect_pii("def add(a, b):\n    return a + b  # 2024 is a year, 3.14159 is pi") == ()


def test_rules_are_data_and_bad_operators_are_refused(tmp_path):
    (tmp_path / "rules.yaml").write_text(
        "rules:\n  - name: no_open\n    drop: {privacy: {eq: open_weights_remote}}\n    because: nope\n"
    )
    rules = load_rules(tmp_path / "rules.yaml")
    out = apply_rules(rules, {m.name: m for m in PANEL}, {})
    assert set(out) == {"open-remote"} and out["open-remote"].rule == "no_open"
    with pytest.raises(RuleError, match="unknown operator"):
        Rule(name="x", drop={"privacy": {"like": "local"}}, because="")


def test_pii_triggers_skip_recognizers_without_changing_a_flag(shared_data):
    """Each trigger is a necessary condition of its recognizer's matches: gated and ungated detection agree
    on every RouterBench prompt and on PII written the ways the recognizers accept."""
    texts = pd.read_csv(shared_data / "routerbench" / "prompts_train.csv")["prompt"].tolist()
    texts += [
        "call +49 333333", "tel (030) 111", "ring 555-0134 now", "ssn 123-45-6789", "ssn 123 45 6789",
        "card 4111-1111-1111-1111", "card 4111111111111111", "iban GB82 WEST 1234 5698 7654 32",
        "GB 82 WEST 1234 5698 7654 32", "host ::1", "fe80::1%eth0", "ip 10.0.0.1", "mail a@b.co",
        "x = a[1::2]", "write to jane.doe@example.com",
    ]  # fmt: skip
    gated = [_detect_pii(t, PII_MIN_SCORE) for t in texts]
    assert gated == [_detect_pii(t, PII_MIN_SCORE, gated=False) for t in texts]
    assert sum(bool(g) for g in gated[-15:]) >= 10  # the crafted texts do exercise the recognizers


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet="0123456789 -.()/+:@abcfGBxe\n", max_size=40))
@example("1640")  # a valid German number to Presidio, under the trigger's five digits: no phone number
def test_pii_triggers_agree_on_generated_digit_and_punctuation_strings(text):
    assert _detect_pii(text, PII_MIN_SCORE) == _detect_pii(text, PII_MIN_SCORE, gated=False)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 30_000), st.integers(1, 3_000)), max_size=12),
    st.integers(0, 30_000),
    st.integers(1, PII_MARGIN_CHARS),
)
def test_pii_pieces_hold_every_short_span_that_meets_a_trigger_match(matches, at, width):
    """A recognizer's match overlaps one of its trigger's: every span up to PII_MARGIN_CHARS long that does
    lies whole in one piece, and no piece is longer than PII_PIECE_CHARS."""
    text = "x" * 34_000
    spans = sorted({(lo, min(lo + n, len(text))) for lo, n in matches})
    pieces = pieces_around(text, spans, PII_MARGIN_CHARS, PII_PIECE_CHARS)
    assert all(hi - lo <= PII_PIECE_CHARS for lo, hi in pieces)
    lo, hi = at, at + width
    if any(a < hi and lo < b for a, b in spans):
        assert any(a <= lo and hi <= b for a, b in pieces), (lo, hi)


PHONE_ALPHABET = "0123456789 -.x()/+\n\tabcextnio,;:#~\u30fc\uff58\u0131\u0130\u017f\u1c81\u1c82"


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=PHONE_ALPHABET, max_size=60))
def test_no_phone_number_candidate_holds_a_break(text):
    """`_phone_breaks` are characters phonenumbers' candidate pattern never takes in: a piece cut just after
    one reads the numbers the whole text does."""
    import phonenumbers.phonenumbermatcher as pm

    breaks, _ = _phone_breaks()
    for m in pm._PATTERN.finditer(text):
        assert not breaks.search(m.group()), m.group()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["1920x1080", "12 345", "x", "ext", "\n", "be", ". ", "(415)"]), max_size=3_000)
)
def test_phone_pieces_start_and_end_after_a_break_and_cover_the_triggers(words):
    text = " ".join(words)
    matches = [(m.start(), m.end()) for m in _DIGIT_RUN.finditer(text)]
    pieces = _phone_pieces(text, matches)
    if pieces is None:  # a run with no break for a whole piece
        return
    breaks, _ = _phone_breaks()
    for lo, hi in pieces:
        assert hi - lo <= PII_PIECE_CHARS
        assert lo == 0 or breaks.fullmatch(text[lo]), (lo, text[lo - 5 : lo + 5])  # kept: it is context
        assert hi == len(text) or breaks.fullmatch(text[hi - 1]), (hi, text[hi - 5 : hi + 5])
    for a, b in matches:
        assert any(lo <= a and b <= hi for lo, hi in pieces) or any(lo <= a < hi for lo, hi in pieces), (a, b)


def test_pii_after_a_long_table_of_numbers_is_not_missed():
    """Read whole, Presidio's phone recognizer gives up after 65,535 tries (phonenumbers' max_tries): a phone
    number after a table of 100,000 3-digit numbers was not found, and the prompt could go to a remote model.
    Pieces are read each afresh; past PHONE_SCAN_CHARS of number-like text without a phone number, the text
    counts as holding one, as does a run of numbers too long for one piece."""
    rng = np.random.default_rng(0)
    rows = ["; ".join(str(v) for v in rng.integers(100, 1000, size=10)) for _ in range(10_000)]
    phone = "\nReach me at (415) 555-2671 today."
    assert detect_pii("\n".join(rows) + phone) == ("UNCHECKED_PHONE_NUMBER",)
    assert detect_pii(" ".join(rows) + phone) == ("UNCHECKED_PHONE_NUMBER",)  # one run: not cut
    prose = "The committee met and adjourned without a vote. " * 5_000  # nothing number-like
    assert detect_pii(prose + "Reach me at (415) 555-2671 today.") == ("PHONE_NUMBER",)
    assert detect_pii(f"{prose}Row 7: 3.2 and 41.5 kg. {prose}") == ()


def test_a_phone_number_in_a_run_joined_by_x_is_read_as_the_whole_text_reads_it():
    """'x' is punctuation to phonenumbers: pieces cut after a letter began inside a run of sizes, and read
    other numbers in it than the whole text does (the number was missed). A run too long for one piece now
    counts as holding a phone number; a shorter one is read whole."""
    sizes = ["1920x1080"] * 600
    sizes.insert(416, "(415) 555-2671")
    long_run, short_run = (
        "Sizes: " + " ".join(sizes) + " end.",
        "Note " + "x".join(["1"] * 131) + " 415-555-2671 done",
    )
    for text, flag in ((long_run, "UNCHECKED_PHONE_NUMBER"), (short_run, "PHONE_NUMBER")):
        assert _detect_pii(text, PII_MIN_SCORE, gated=False) == ("PHONE_NUMBER",)
        assert _detect_pii(text, PII_MIN_SCORE) == (flag,)


@pytest.mark.parametrize(
    "text",
    [
        "Ab1640" + " 1" * 19 + " 3-04012345678 ok",  # the letter before the run rejects '1640' read whole
        "Call 4155552671\u0131nt5 now",  # dotless i: 'int' to phonenumbers, which ignores case
        "Call 4155552671exten\u017fion5 now",  # long s
        "Numbers:\n" + "7\n" * 1994 + "1\u1c81\u043e\u0431 9-4155552671 ok",  # a cut, with a Cyrillic fold
    ],
)
def test_a_phone_piece_keeps_the_character_before_it_and_case_folds_are_no_breaks(text):
    """From a review: a piece began just after its break, so phonenumbers did not see the letter before a
    candidate and read the run otherwise; and 'ı', 'ſ' and other case folds of its extension labels were
    taken for breaks. Each text was missed."""
    assert _detect_pii(text, PII_MIN_SCORE, gated=False) == ("PHONE_NUMBER",)
    assert _detect_pii(text, PII_MIN_SCORE) == ("PHONE_NUMBER",)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.sampled_from(
            [
                "call (415) 555-2671",
                "4111 1111 1111 1111",
                "ssn 536-22-1234",
                "a@b.co",
                "10.0.0.1",
                "GB82 WEST 1234 5698 7654 32",
                "12 345",
                "2024",
                "3.14",
                "- 17 -",
                "\n",
                "words here",
                "1920x1080",
                "555-2671 ext. 22",
                "x 415 555 2671",
            ]
        ),  # fmt: skip
        min_size=1,
        max_size=8,
    ),
    st.lists(st.integers(0, 6_000), min_size=1, max_size=8),
)
@pytest.mark.parametrize("base", ["numbers", "report", "sizes"])
def test_reading_pieces_finds_what_reading_the_whole_text_does(base, items, where):
    """Texts over a piece are cut: a report after a letter, lines of sizes after a line break, a table of
    numbers with no break nowhere (a phone number then counts as not ruled out). Whatever a whole read finds,
    the pieces flag too."""
    rng = np.random.default_rng(len(items))
    if base == "numbers":
        text = " ".join(str(v) for v in rng.integers(0, 100, size=2_000))
    elif base == "report":
        text = "Units 12,345 rose to 67,890 in Q3 (table 2). " * 140
    else:
        text = "\n".join(
            " ".join(f"{w}x{h}" for w, h in rng.integers(100, 4000, size=(8, 2))) for _ in range(80)
        )
    for item, at in zip(items, where, strict=False):
        text = f"{text[:at]} {item} {text[at:]}"
    whole = set(_detect_pii(text, PII_MIN_SCORE, gated=False))
    pieces = set(_detect_pii(text, PII_MIN_SCORE))
    if "UNCHECKED_PHONE_NUMBER" in pieces:
        pieces.add("PHONE_NUMBER")
    assert whole <= pieces
    assert base == "numbers" or "UNCHECKED_PHONE_NUMBER" not in pieces


def test_a_model_whose_privacy_is_left_blank_counts_as_remote(tmp_path):
    """`privacy:` left empty in models.yaml (YAML null) passed both privacy rules: a condition on a missing
    value never holds, so a prompt with an e-mail address went to that model."""
    from router_models.router.rules import model_metadata

    p = tmp_path / "models.yaml"
    p.write_text("models:\n  new-api-model: {privacy: , context_window: 128000}\n  bare-model:\n"
                 "  local-big: {privacy: local, context_window: 8192}\n")  # fmt: skip
    meta = model_metadata(["new-api-model", "bare-model", "local-big"], p)
    assert meta["new-api-model"].privacy == meta["bare-model"].privacy == "remote"
    assert ModelInfo("x", privacy=None).privacy == "remote"  # type: ignore[arg-type] - as a manifest may hold
    router = make_router([0.9, 0.8, 0.2], [0.001, 0.001, 0.0], panel=list(meta.values()))
    for c in (Constraints(), Constraints(privacy="local_only")):
        d = router.route(f"Email jane.doe@example.com the invoice. {PLAIN}", c)
        assert d.model == "local-big", d.explanation


def test_a_model_without_a_finite_prediction_is_never_chosen():
    """A NaN predicted quality won argmax (the explanation said 'quality nan'); a NaN p95 latency passed the
    SLO without the note that it was not checked."""
    router = make_router([np.nan, 0.5, 0.4, 0.3, 0.2], [0.0, 0.0, 0.0, 0.0, 0.0])
    d = router.route(PLAIN)
    assert d.model == "remote-cheap" and d.binding is None, d.explanation
    (nan,) = [c for c in d.candidates if c.model == "remote-strong"]
    assert not nan.allowed and nan.excluded_by == "no_prediction"
    router = make_router([0.9, 0.5, 0.4, 0.3, 0.2], [0.0] * 5)
    d = router.route(PLAIN, Constraints(latency_slo_s=2.0), p95_latency_s={"remote-strong": float("nan")})
    assert d.model == "remote-strong" and "SLO was not checked" in d.explanation


def test_a_rule_that_changed_nothing_is_not_named_as_binding():
    """Where an excluded model ties with the chosen one, the choice is what it would have been without the
    rule: the explanation blamed pii_local_only for it."""
    router = make_router([0.5, 0.1, 0.1, 0.1, 0.5], [0.0] * 5)
    d = router.route(f"Draft a reply to jane.doe@example.com about it. {PLAIN}")
    assert d.model == "local-big" and d.binding is None and "ruled out" not in d.explanation, d.explanation


def test_the_text_sent_sets_the_window_needed_and_the_predicted_cost():
    """With `sent` (a RAG question and its sources), the window rule and the cost cap saw the question
    alone: a 16k-token send was allowed to a 512-token model and priced as a one-line question."""
    router = make_router([0.5, 0.5, 0.5, 0.9, 0.5], [0.0] * 5)
    router.cost_model.coef[0] = [0.01, 0.002, 0.001, 0.0, 0.0]  # per 1k input tokens
    question = "Which gas do plants absorb?"
    sent = question + "\n" + "Sources say much. " * 4000
    alone = router.route(question)
    assert alone.model == "local-small"
    d = router.route(question, sent=sent)
    assert d.model != "local-small" and d.signals["tokens_needed"] > 8_192
    small = next(c for c in d.candidates if c.model == "local-small")
    assert small.excluded_by == "context_window", small
    cost, before = ({c.model: c.cost_usd for c in x.candidates} for x in (d, alone))
    assert cost["remote-strong"] > 0.1 > 0.001 > before["remote-strong"]
    capped = router.route(question, Constraints(max_cost_usd=0.01), sent=sent)
    why = {c.model: c.excluded_by for c in capped.candidates}
    assert why["remote-strong"] == why["open-remote"] == "max_cost_usd", capped.explanation
    # a caller that checks each window by the model's own tokenizer (the service) has the rule size the
    # question: the estimate is a bound for any tokenizer; the price is still what is sent
    own = router.route(question, sent=sent, sized_by_caller=True)
    assert own.model == "local-small" and own.signals["tokens_needed"] < 512
    assert {c.model: c.cost_usd for c in own.candidates} == cost
