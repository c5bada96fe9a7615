"""Answers with citations: retrieve chunks, ask a catalog model through the gateway to answer from them only
and cite them, and return the answer with the retrieved chunks, their scores and provenance.

Sources are shown to the model as [1], [2], ... (small models cite short labels far more reliably than
hash ids); the returned text and `citations` carry the real chunk ids. Where the model cites nothing (the
135M local model never did on 8 questions about Python's docs), each sentence is attributed after the fact
to the source that holds most of its content words, if one holds at least half; `citations_by` says which.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Literal

from pipelines.rag.retrieve import Hit, Retriever

SYSTEM = (
    "You answer questions using only the numbered sources given. Cite the sources you use with their "
    "numbers in square brackets, like [1] or [2]. If the sources do not contain the answer, say so."
)
_LABEL = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
SENTENCE_BREAK = r"(?<=[.!?])\s+|\n+"  # also splits answers for pipelines.bench.rag_scorers
_WORD = re.compile(r"[a-z0-9_]{3,}")
_STOP_WORDS = (  # words too common to tie a sentence to a source
    "the and for are but not you your with this that from have has had was were will would can could should "
    "its into than then them they their there these those what which who whom when where why how all any "
    "each other some such only own same also more most very just does did doing been being about above below "
    "sources source answer question say says said"
)
_STOP = frozenset(_STOP_WORDS.split())
MIN_OVERLAP = 0.5  # share of a sentence's content words a source must hold to be cited for it
MIN_WORDS = 3  # sentences with fewer content words are not attributed
Trim = Literal["sentences", "head"]  # how `excerpts` cuts a source to its share of the prompt
CitedBy = Literal["model", "overlap", "none"]  # the model's own [n] labels, attributed afterwards, or none


@dataclass
class Answer:
    question: str
    text: str
    citations: list[str]
    chunks: list[Hit]
    model: str
    requested_model: str
    fallback_used: bool
    mode: str
    citations_by: CitedBy = "none"
    cost_usd: float = 0.0
    latency_s: float = 0.0
    usage: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def excerpts(question: str, hits: list[Hit], max_context_chars: int = 4000,
             trim: Trim = "sentences") -> list[str]:  # fmt: skip
    """Each source as the model sees it. The sources share `max_context_chars` equally. A source longer than
    its share keeps, with `trim="sentences"`, the sentences that share the most words with the question
    (each word weighted by its IDF over the sentences of all sources), in their original order and with
    `...` where sentences were left out; what is left of its share goes to its earliest other sentences. With
    `trim="head"` it keeps its first characters."""
    per = max(200, max_context_chars // max(1, len(hits)))
    if trim == "head":
        return [f"{(h.title + ': ') if h.title else ''}{h.text[:per]}" for h in hits]
    split = [[s for s in re.split(SENTENCE_BREAK, h.text) if s.strip()] for h in hits]
    stems = [[_stems(s) for s in sents] for sents in split]
    df = Counter(w for per_hit in stems for st in per_hit for w in st)
    n = sum(len(x) for x in stems) + 1
    asked = _stems(question)
    shown = []
    for h, sents, sts in zip(hits, split, stems, strict=True):
        text = h.text
        if len(text) > per:
            score = [sum(math.log(n / df[w]) for w in st & asked) for st in sts]
            keep, used = [], 0
            for i in sorted(range(len(sents)), key=lambda i: (-score[i], i)):
                if used + len(sents[i]) + 5 <= per:  # 5: a space, or the "... " of a gap
                    keep.append(i)
                    used += len(sents[i]) + 5
            keep.sort()
            text = " ".join(
                ("... " if j and i > keep[j - 1] + 1 else "") + sents[i] for j, i in enumerate(keep)
            )
            if not keep:  # no sentence fits: the best one, cut
                text = sents[max(range(len(sents)), key=lambda i: (score[i], -i))][:per] if sents else ""
        shown.append(f"{(h.title + ': ') if h.title else ''}{text}")
    return shown


def _stems(text: str) -> set[str]:
    """Content words cut to 6 letters, a crude stemmer: statement(s) -> statem, assert(ion) -> assert."""
    return {w[:6] for w in _content_words(text)}


def build_messages(question: str, shown: list[str]) -> list[dict]:
    """The chat messages for `question` over the sources as `excerpts` shows them."""
    sources = "\n\n".join(f"[{i}] {text}" for i, text in enumerate(shown, 1))
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Sources:\n{sources}\n\nQuestion: {question}\nAnswer (cite sources):"},
    ]


def resolve_citations(text: str, hits: list[Hit]) -> tuple[str, list[str]]:
    """Replace [n] labels by [chunk_id]; labels that name no source are dropped from the text."""
    cited: list[str] = []

    def swap(m: re.Match) -> str:
        ids = []
        for n in (int(x) for x in m.group(1).split(",")):
            if 1 <= n <= len(hits):
                ids.append(hits[n - 1].chunk_id)
        cited.extend(ids)
        return "".join(f"[{c}]" for c in ids)

    return _LABEL.sub(swap, text).strip(), list(dict.fromkeys(cited))


def _content_words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower())) - _STOP


def attribute(text: str, hits: list[Hit], shown: list[str]) -> tuple[str, list[str]]:
    """For an answer that cites nothing: after each sentence, [chunk_id] of the source (as the model saw it)
    that holds the largest share of the sentence's content words, when it holds at least MIN_OVERLAP of them
    and the sentence has MIN_WORDS or more. The text is otherwise left as it was, line breaks included."""
    sources = [_content_words(t) for t in shown]
    if not sources:
        return text, []
    parts = re.split(f"({SENTENCE_BREAK})", text)  # sentences at even indices, the breaks between them
    cited = []
    for i in range(0, len(parts), 2):
        words = _content_words(parts[i])
        if len(words) < MIN_WORDS:
            continue
        shares = [len(words & src) / len(words) for src in sources]
        best = max(range(len(sources)), key=shares.__getitem__)
        if shares[best] >= MIN_OVERLAP:
            parts[i] += f" [{hits[best].chunk_id}]"
            cited.append(hits[best].chunk_id)
    return ("".join(parts), list(dict.fromkeys(cited))) if cited else (text, [])


def cite(text: str, hits: list[Hit], shown: list[str]) -> tuple[str, list[str], CitedBy]:
    """The answer's text with chunk ids, the ids cited, and who cited them (`Answer.citations_by`); `shown`
    is the sources as the model saw them (`excerpts`)."""
    resolved, cited = resolve_citations(text, hits)
    if cited:
        return resolved, cited, "model"
    resolved, cited = attribute(resolved, hits, shown)
    return resolved, cited, "overlap" if cited else "none"


def answer(question: str, retriever: Retriever, gateway, model: str = "smollm2-135m", k: int = 4,
           mode: str = "hybrid", max_tokens: int = 256, max_context_chars: int = 4000,
           trim: Trim = "sentences") -> Answer:  # fmt: skip
    """Retrieve `k` chunks with `mode`, generate with `model` through `gateway` (pipelines.llm.gateway) from
    the chunks as `excerpts` cuts them to `max_context_chars`."""
    hits = retriever.search(question, mode=mode, k=k)
    if not hits:
        return Answer(question, "No indexed source matches this question.", [], [], "", model, False, mode)
    shown = excerpts(question, hits, max_context_chars, trim)
    result = gateway.chat(model, build_messages(question, shown), max_tokens=max_tokens)
    text, citations, citations_by = cite(result.text, hits, shown)
    return Answer(
        question=question, text=text, citations=citations, chunks=hits, model=result.model,
        requested_model=result.requested_model, fallback_used=result.fallback_used, mode=mode,
        citations_by=citations_by,
        cost_usd=result.cost_usd, latency_s=result.latency_s,
        usage={"input_tokens": result.input_tokens, "output_tokens": result.output_tokens,
               "ttft_s": result.ttft_s},
    )  # fmt: skip
