"""Entity extraction that runs offline on CPU, plus an optional LLM extractor through the gateway.

The rule extractor finds three kinds of mention and normalises each to a lowercase key:
- acronyms and symbols (two or more capitals, or a capital and a digit: TNF, IL-6, BRCA1, PrP, mRNA);
- capitalised multi-word names not at a sentence start (Chatbot Arena, Los Angeles);
- key phrases: runs of 2-3 content words between stop words and punctuation, and the word pairs inside
  longer runs (colorectal cancer).
Relations are co-occurrence within a chunk; the graph keeps the chunk ids as provenance. A "name" of more
than MAX_WORDS words or MAX_BYTES bytes of UTF-8 (a Title Case heading, a sentence from the LLM) is no
entity and is dropped: it would only ever match itself, and a graph engine keys vertices by name
(NebulaGraph's vertex ids hold 256 bytes).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

STOP = frozenset(
    """
    a about above after again against all also am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had has
    have having he her here hers herself him himself his how however i if in into is it its itself just
    let me more most my no nor not now of off on once only or other our ours out over own same she
    should so some such than that the their theirs them themselves then there these they this those
    through to too under until up very was we were what when where which while who whom why will with
    within without would you your yours we using used use may might must shall study studies result
    results show shows showed shown found find data effect effects increase increased decrease decreased
    patients patient level levels associated compared however whereas thus therefore although among
    across per via vs versus one two three four five high low higher lower significant significantly
    """.split()  # noqa: SIM905
)
# look-aheads bounded (64): unbounded, each word of a long hyphen-joined run rescanned the run to its end
# (a 32 kB query took 14 s); on SciFact's 5,183 abstracts they find the same tokens
_ACRONYM = re.compile(
    r"\b(?=[\w-]{0,64}[A-Z][\w-]{0,64}[A-Z0-9])(?=[\w-]{0,64}[A-Za-z])[A-Za-z0-9][\w-]{1,14}\b"
)
_CAPITALS = re.compile(r"[A-Z].*[A-Z0-9]")  # a capital, then a capital or a digit: IL, BRCA1, PrP
_CAPNAME = re.compile(r"(?<![.!?]\s)(?<!^)\b([A-Z][a-z]+(?:\s+(?:of|de|la|van|von)?\s*[A-Z][a-z]+)+)")
_WORD = re.compile(r"[A-Za-z][A-Za-z-]*[A-Za-z]|[A-Za-z]")
_BREAK = re.compile(r"[^\w\s-]|\d")
MAX_WORDS, MAX_BYTES = 8, 100


def _acronym(token: str) -> str:
    """The acronym in a hyphenated match without the lowercase words around it: BRCA1-associated -> BRCA1,
    well-characterised-BRCA1 -> BRCA1 (the pattern's look-aheads may see a capital past a lowercase part)."""
    parts = token.split("-")
    keep = [i for i, p in enumerate(parts) if _CAPITALS.search(p) or p.isdigit()]  # IL-6, COVID-19
    core = "-".join(parts[keep[0] : keep[-1] + 1]) if keep else ""
    return core if _CAPITALS.search(core) else ""


def normalise(name: str) -> str:
    words = re.sub(r"\s+", " ", name.strip().lower()).split(" ")
    last = words[-1]
    if len(last) > 4 and last.endswith("ies"):
        words[-1] = last[:-3] + "y"
    elif len(last) > 3 and last.endswith("s") and not last.endswith(("ss", "us", "is", "es")):
        words[-1] = last[:-1]
    return " ".join(words)


def _names(found: Iterable[str]) -> list[str]:
    """Normalised, each once, in order; no stop word, single letter or overlong run."""
    keep = (n for n in map(normalise, found) if len(n) > 1 and n not in STOP)
    return list(dict.fromkeys(n for n in keep if len(n.encode()) <= MAX_BYTES and n.count(" ") < MAX_WORDS))


def _key_phrases(text: str, max_words: int = 3) -> Iterable[str]:
    for segment in _BREAK.split(text):
        run: list[str] = []
        for w in [*_WORD.findall(segment), ""]:
            lw = w.lower()
            if w and lw not in STOP and len(lw) > 2:
                run.append(lw)
                continue
            if 2 <= len(run) <= max_words:
                yield " ".join(run)
            if (
                len(run) > 2
            ):  # the pairs inside a longer run too: "parp inhibitors exploit" names "parp inhibitors"
                yield from (" ".join(run[i : i + 2]) for i in range(len(run) - 1))
            run = []


class RuleEntityExtractor:
    name = "rules"

    def extract(self, text: str) -> list[str]:
        found = [a for m in _ACRONYM.finditer(text) if (a := _acronym(m.group(0))) and not a.isdigit()]
        found += [m.group(1) for m in _CAPNAME.finditer(text)]
        found += list(_key_phrases(text))
        return _names(found)


class LLMEntityExtractor:
    """Asks a catalog model (through the gateway) for the entities of a text, as a JSON list of strings."""

    name = "llm"
    PROMPT = (
        "List the named entities and key technical terms in the text below as a JSON array of strings, "
        "nothing else.\n\nText:\n{text}"
    )

    def __init__(self, gateway, model: str, max_tokens: int = 200) -> None:
        self.gateway, self.model, self.max_tokens = gateway, model, max_tokens

    def extract(self, text: str) -> list[str]:
        msg = [{"role": "user", "content": self.PROMPT.format(text=text[:4000])}]
        out = self.gateway.chat(self.model, msg, max_tokens=self.max_tokens, temperature=0.0).text
        m = re.search(r"\[.*\]", out, flags=re.S)
        try:
            names = json.loads(m.group(0)) if m else []
        except json.JSONDecodeError:
            names = re.findall(r'"([^"]+)"', m.group(0)) if m else []
        return _names(str(n) for n in names if str(n).strip())
