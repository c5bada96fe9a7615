"""PII redaction with Presidio, offline.

The default (`pii_spacy_model="blank"`) runs a blank spaCy English pipeline (tokenizer only, saved to disk on
first use) with Presidio's pattern recognizers and catches DEFAULT_ENTITIES: e-mail addresses, phone numbers
(9+ digits, i.e. with an area code), credit-card numbers (Luhn-checked), IBANs (checksummed), IP addresses and
US social security numbers (3-2-4 digits with dashes; not those never issued, such as 123-45-6789 or
000-12-3456, which Presidio's recognizer leaves out). An e-mail address counts on a public
suffix (Presidio's check, on tldextract's bundled list) or on a private-use top-level domain such as
`.internal` or `.local` (`jane.doe@ward7.internal`); code such as `q@k.transpose` is no address.
Names, places and organisations need an NER model: set `SM_PII_SPACY_MODEL` to an installed spaCy pipeline
(a package name or a path) and PERSON, LOCATION and ORGANIZATION are redacted too.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

DEFAULT_ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN")
NER_ENTITIES = ("PERSON", "LOCATION", "ORGANIZATION")
MIN_PHONE_DIGITS = 9  # shorter digit runs in prose are mostly measurements, not phone numbers
# Presidio also takes a bare 9-digit run (or 5-4, 3-6 digits) as an SSN, scored 0.05 and raised by context
# words where the spaCy model has lemmas: in papers those are accession numbers and the like. Only 3-2-4
# digits with dashes count (the router's check takes spaces and dots too: a flattened table's row of numbers,
# `234 56 2011`, would be one), and any of Presidio's forms right after a label that says SSN ("SSN:
# 536.22.1234", "social security no. 536221234": they were kept).
_SSN_SHAPE = re.compile(r"\d{3}-\d{2}-\d{4}")
_SSN_LABEL = re.compile(r"(?i)(?:\bssn|social[\s-]+security(?:[\s-]+(?:number|no))?|\bss\s*#)\W{0,4}$")
_SSN_TRIGGER = re.compile(r"\d{3}-\d{2}-\d{4}|(?i:\bssn|social[\s-]+security|\bss\s*#)")
# Top-level domains for private use, which no public suffix list holds: RFC 2606/6761/6762/9476, ICANN's
# `.internal` (2024), the names it withheld (`.corp`, `.home`, `.mail`) and common unofficial ones.
PRIVATE_TLDS = frozenset({"internal", "local", "localdomain", "localhost", "localnet", "lan", "home", "corp",
                          "mail", "intranet", "intra", "intern", "private", "priv", "lab", "loc", "lcl",
                          "alt", "test", "example", "invalid"})  # fmt: skip
PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*>")  # what redaction leaves in place of a value: <EMAIL_ADDRESS>
_NAME_SEPARATORS = re.compile(r"[_\-+~,;=()\[\]{}]")  # read as spaces in file names (redact_name)
_NAME_SEPARATORS_BUT_DASH = re.compile(r"[_+~,;=()\[\]{}]")  # and with dashes kept: `jane_536-22-1234`

# Cheap necessary conditions: a recognizer only runs when its trigger matches somewhere in the text.
_TRIGGERS = {
    "EMAIL_ADDRESS": re.compile(r"@"),
    # any separators, not only ASCII ones: phonenumbers reads 415–555–2671 (en dashes) as a number too, and
    # "(415) - 555 - 2671" (4 between two digits: 3 let it through unredacted)
    "PHONE_NUMBER": re.compile(r"\d(?:\W{0,8}\d){" + str(MIN_PHONE_DIGITS - 1) + ",}"),
    "CREDIT_CARD": re.compile(r"\d(?:[\s\-]?\d){11,}"),
    "IBAN_CODE": re.compile(r"[A-Za-z]{2}\d{2}"),
    "IP_ADDRESS": re.compile(r"\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:"),
    "US_SSN": _SSN_TRIGGER,
}


def may_hold_pii(text: str, spacy_model: str = "blank", name: bool = False) -> bool:
    """False when no default recognizer could match `text` (so no engine need be built); with an NER model
    any text may name a person. A file `name` is read as `Redactor.redact_name` reads it too."""
    readings = (text, _NAME_SEPARATORS.sub(" ", text)) if name else (text,)
    return spacy_model != "blank" or any(rx.search(r) for r in readings for rx in _TRIGGERS.values())


def check_spacy_model(name: str) -> None:
    """A ValueError where `name` (SM_PII_SPACY_MODEL) is no installed spaCy pipeline: Presidio tried to
    download it on the first text that needed the engine, and ingest recorded every file as a name that
    "could not be read (ConnectionError)"."""
    if name == "blank":
        return
    import spacy.util

    if not (spacy.util.is_package(name) or (Path(name) / "config.cfg").is_file()):
        raise ValueError(
            f"SM_PII_SPACY_MODEL={name!r} is no installed spaCy pipeline (pip install it, give its folder, "
            "or use 'blank': the pattern recognizers alone)"
        )


def _blank_model_path(cache_dir: Path) -> Path:
    import spacy

    path = cache_dir / "spacy-blank-en"
    if not (path / "config.cfg").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        spacy.blank("en").to_disk(path)
    return path


def phone_recognizer() -> Any:
    """Presidio's PhoneRecognizer, trying every candidate: phonenumbers gives up on a text after 65,535 of
    them (its `max_tries`), so a phone number after 98,000 characters of a numbered list went unfound."""
    import phonenumbers
    from presidio_analyzer import EntityRecognizer
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    class EveryCandidatePhoneRecognizer(PhoneRecognizer):
        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list:
            results, leniency = [], 1 if self.leniency is None else self.leniency  # Presidio's default: VALID
            for region in self.supported_regions:
                matcher = phonenumbers.PhoneNumberMatcher(text, region, leniency, max_tries=sys.maxsize)
                for match in matcher:
                    try:  # the region the number names, as Presidio's own recognizer reports it
                        named = phonenumbers.region_code_for_number(phonenumbers.parse(match.raw_string))
                    except phonenumbers.NumberParseException:
                        named = region
                    results.append(self._get_recognizer_result(match, text, named, nlp_artifacts))
            return EntityRecognizer.remove_duplicates(results)

    return EveryCandidatePhoneRecognizer()


def _recognizers(entities: tuple[str, ...], with_ner: bool) -> list:
    import tldextract
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        SpacyRecognizer,
        UsSsnRecognizer,
    )

    offline_tld = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)  # bundled snapshot, no network

    class OfflineEmailRecognizer(EmailRecognizer):
        """A public suffix (Presidio's own check downloads the list; the domain may be one itself, `nhs.uk`),
        or a private-use top-level domain."""

        def validate_result(self, pattern_text: str) -> bool:
            tld = pattern_text.rstrip(".").rsplit(".", 1)[-1].lower()
            return offline_tld(pattern_text).suffix != "" or tld in PRIVATE_TLDS

    by_entity = {
        "EMAIL_ADDRESS": OfflineEmailRecognizer, "PHONE_NUMBER": phone_recognizer,
        "CREDIT_CARD": CreditCardRecognizer, "IBAN_CODE": IbanRecognizer, "IP_ADDRESS": IpRecognizer,
        "US_SSN": UsSsnRecognizer,
    }  # fmt: skip
    recs = [cls() for e, cls in by_entity.items() if e in entities]
    if with_ner:
        recs.append(SpacyRecognizer(supported_entities=[e for e in NER_ENTITIES if e in entities]))
    return recs


def _plausible_ip(span: str) -> bool:
    """An IPv4 address, or an IPv6 one with at least three groups: `::`, `::=` (BNF) and `1::2` (slices) in
    technical prose are not addresses, though Presidio's IPv6 pattern matches them."""
    try:
        addr = ipaddress.ip_address(span.strip("[]"))
    except ValueError:
        return False
    return addr.version == 4 or sum(bool(g) for g in span.split(":")) >= 3


# spaCy refuses a text over 1,000,000 characters (E088): longer texts are analysed in windows of PIECE_CHARS
# that overlap by OVERLAP_CHARS, so every entity shorter than the overlap lies whole inside one of them
PIECE_CHARS, OVERLAP_CHARS = 100_000, 1_000


def _windows(size: int, limit: int = PIECE_CHARS, overlap: int = OVERLAP_CHARS) -> list[tuple[int, int]]:
    """(start, end) of windows of at most `limit` characters covering range(size), each overlapping the
    next."""
    starts = [0]
    while starts[-1] + limit < size:
        starts.append(starts[-1] + limit - overlap)
    return [(lo, min(lo + limit, size)) for lo in starts]


# how far either side of a trigger's match (an `@`) a recognizer reads: an e-mail address's parts, 64 and 255
# characters at most (RFC 5321), each fit
MARGIN_CHARS = 256


def pieces_around(
    text: str, matches: list[tuple[int, int]], margin: int, limit: int
) -> list[tuple[int, int]]:
    """(start, end) of the text around `matches` (sorted (start, end) pairs): each widened by `margin`
    either side, overlapping spans merged, and a span over `limit` cut into pieces that overlap by 2 *
    `margin`, after a space where one is near. A match of a pattern that overlaps one of `matches` lies
    whole in a piece when it is up to `margin` long (an e-mail address around its `@`: at most 64 + 1 + 255
    by RFC 5321). Presidio's e-mail pattern, read over a whole text, takes time quadratic in a run of word
    characters and dots (a base64 blob): 2.3 s for 20,000 characters, minutes for 100,000."""
    merged: list[list[int]] = []
    for lo, hi in matches:
        lo, hi = max(0, lo - margin), min(len(text), hi + margin)
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    pieces = []
    for lo, hi in merged:
        while hi - lo > limit:
            end = lo + limit
            space = max(text.rfind(" ", end - limit // 8, end), text.rfind("\n", end - limit // 8, end))
            end = space + 1 if space >= 0 else end
            pieces.append((lo, end))
            lo = end - 2 * margin
        pieces.append((lo, hi))
    return pieces


class Redactor:
    """`redact(text) -> (text with <ENTITY_TYPE> placeholders, counts per entity type)`."""

    def __init__(self, spacy_model: str = "blank", cache_dir: str | Path = ".", entities=None) -> None:
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import NlpEngineProvider
        from presidio_anonymizer import AnonymizerEngine

        with_ner = spacy_model != "blank"
        self.spacy_model = spacy_model
        self.entities = tuple(entities or (DEFAULT_ENTITIES + (NER_ENTITIES if with_ner else ())))
        model = spacy_model if with_ner else str(_blank_model_path(Path(cache_dir)))
        nlp = NlpEngineProvider(
            nlp_configuration={
                "nlp_engine_name": "spacy",
                "models": [{"lang_code": "en", "model_name": model}],
            }
        ).create_engine()
        registry = RecognizerRegistry(supported_languages=["en"])
        for rec in _recognizers(self.entities, with_ner):
            registry.add_recognizer(rec)
        self._analyzer = AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=["en"])
        self._anonymizer = AnonymizerEngine()
        self._always = [e for e in self.entities if e not in _TRIGGERS]

    def _keep(self, text: str, r) -> bool:
        span = text[r.start : r.end]
        if r.entity_type == "PHONE_NUMBER":
            return sum(c.isdigit() for c in span) >= MIN_PHONE_DIGITS
        if r.entity_type == "IP_ADDRESS":
            return _plausible_ip(span)
        if r.entity_type == "US_SSN":
            label = _SSN_LABEL.search(text[max(0, r.start - 40) : r.start])
            return _SSN_SHAPE.fullmatch(span) is not None or label is not None
        return True

    def _analyze(self, text: str, wanted: list[str]) -> list:
        found = []
        rest = [e for e in wanted if e != "EMAIL_ADDRESS"]
        parts = [(lo, hi, rest) for lo, hi in _windows(len(text))] if rest else []
        if len(rest) < len(wanted):  # e-mail addresses in pieces around each `@` (pieces_around says why)
            ats = [(m.start(), m.end()) for m in re.finditer("@", text)]
            pieces = pieces_around(text, ats, MARGIN_CHARS, PIECE_CHARS)
            parts += [(lo, hi, ["EMAIL_ADDRESS"]) for lo, hi in pieces]
        for lo, hi, entities in parts:
            for r in self._analyzer.analyze(text[lo:hi], language="en", entities=entities):
                r.start, r.end = r.start + lo, r.end + lo
                found.append(r)
        # the anonymizer merges a result seen from two windows (or cut by a window's edge) into one
        return [r for r in found if self._keep(text, r)]

    def _found(self, text: str) -> list:
        wanted = self._always + [e for e, rx in _TRIGGERS.items() if e in self.entities and rx.search(text)]
        return self._analyze(text, wanted) if wanted and text else []

    def redact(self, text: str) -> tuple[str, Counter]:
        results = self._found(text)
        if not results:
            return text, Counter()
        out = self._anonymizer.anonymize(text=text, analyzer_results=results)
        return out.text, Counter(item.entity_type for item in out.items)

    def redact_name(self, name: str) -> tuple[str, Counter]:
        """`redact` for a file or folder name, where recognizers miss what they find in prose: `_` is a word
        character to their boundaries (`host_10.0.0.1`), and an address followed by `-notes` or `.backup`
        fails the e-mail check of its top-level domain. The name is also read with `_`, `-` and the like as
        spaces (and with all but `-`, which an SSN needs), and cut before each dot; every entity any reading
        finds is redacted in the name (overlapping ones merged, the longest naming the type)."""
        spaced = _NAME_SEPARATORS.sub(" ", name)
        spans = []
        for reading in dict.fromkeys((name, spaced, _NAME_SEPARATORS_BUT_DASH.sub(" ", name))):
            for end in [len(reading)] + [i for i, c in enumerate(reading) if c == "."]:
                spans += [(r.start, r.end, r.entity_type) for r in self._found(reading[:end])]
        merged: list[list] = []
        for start, end, kind in sorted(spans):
            if merged and start < merged[-1][1]:
                last = merged[-1]
                if end - start > last[1] - last[0]:
                    last[2] = kind
                last[1] = max(last[1], end)
            else:
                merged.append([start, end, kind])
        out = name
        for start, end, kind in reversed(merged):
            out = f"{out[:start]}<{kind}>{out[end:]}"
        return out, Counter(kind for _, _, kind in merged)


@lru_cache(maxsize=4)
def get_redactor(spacy_model: str = "blank", cache_dir: str = ".") -> Redactor:
    """A shared Redactor per configuration: building Presidio's engine takes seconds."""
    return Redactor(spacy_model, cache_dir)
