"""Answers with citations: retrieve chunks, ask a catalog model through the gateway to answer from them only
and cite them, and return the answer with the retrieved chunks, their scores and provenance.

Sources are shown to the model as [1], [2], ... (small models cite short labels far more reliably than
hash ids); the returned text and `citations` carry the real chunk ids. Where the model cites nothing (the
135M local model never did on 8 questions about Python's docs), each sentence is attributed after the fact
to the source that holds most of its content words, if one holds at least half; `citations_by` says which.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Literal

from pipelines.rag.retrieve import Hit, Retriever

SYSTEM = (
    "You answer questions using only the numbered sources given. Cite the sources you use with their "
    "numbers in square brackets, like [1] or [2]. If the sources do not contain the answer, say so."
)
_LABEL = re.compile(r"\[(\d{1,6}(?:\s*,\s*\d{1,6})*)\]")  # a longer number is no label (nor an int)
_LABELS = re.compile(r"(?:\[\d{1,6}(?:\s*,\s*\d{1,6})*\])+")  # one label or a run: "[1][2]"
# a fence or an inline code span: no labels inside. A fence opens at a line's start (any info string:
# "```js {1,3}"), or further in with a language ("Example: ```python"), not at a prose "```."; it closes at a
# line's start or end ("print(x)```"), or the answer's end
_FENCE = r"(?:^[ \t]*{0}[^`\n]*|{0}[\w+#-][\w+#.-]*[ \t]*)\n.*?(?:^[ \t]*{0}|{0}(?=[ \t]*$)|\Z)"
_CODE = re.compile(f"({_FENCE.format('```')}|{_FENCE.format('~~~')}|`[^`\\n]*`)", re.S | re.M)
# the name a bracket is glued to (`_subscript`), and the short words of prose that are no names
_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")
# ("a" is not one: Python's commonest name, `a[1]` stays code)
_SHORT_WORDS = frozenset(
    {"i", "al", "am", "an", "as", "at", "be", "by", "do", "go", "he", "if", "in", "is", "it", "me", "my",
     "no", "of", "ok", "on", "or", "so", "to", "up", "us", "we"}
)  # fmt: skip
# the last part of a dotted name that makes it a domain or a file, not an attribute ("python.org", "Node.js")
_DOMAINS = frozenset(
    {"com", "org", "net", "edu", "gov", "int", "io", "ai", "dev", "co", "uk", "eu", "js", "py", "md", "html",
     "txt", "pdf", "csv", "json", "yaml", "yml", "toml", "xml", "docx"}
)  # fmt: skip
_CHUNK_REF = re.compile(r"\[([^\[\]\n]+#[0-9a-f]{12})\]")  # a chunk id as cite() writes it
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


def _shown(hits: list[Hit], max_context_chars: int) -> list[str]:
    """Each source as the model sees it: they share `max_context_chars` equally (200 characters each at
    least). A source's own `[n]` is shown as `(n)`: a document's reference marks, or a forged `[2] ...`
    block, were read as the labels of other sources, and an answer that copied them cited the wrong chunk."""
    per = max(200, max_context_chars // max(1, len(hits)))
    shown = (f"{(h.title + ': ') if h.title else ''}{h.text[:per]}" for h in hits)
    return [_labels_outside_code(text, lambda m: f"({m.group(1)})") for text in shown]


def _subscript(text: str, start: int) -> bool:
    """Whether the bracket at `start` is a subscript, glued to code: `s[0]`, `my_list[1]`, `f(x)[2]`,
    `m[i][2]` (Python's reference docs, the demo corpus, hold many), not a label glued to prose ("Paris[1]",
    "Germany's[2]", "in 2019[3]", "(see above)[4]")."""
    before = text[max(0, start - 80) : start]
    if not before or before[-1] in " \t\n":
        return False
    if before[-1] == "]":
        return True
    if before[-1] == ")":  # a call's result (`f(x)[2]`), not a parenthesis of prose ("Python(编程语言)[2]")
        opening = before.rfind("(")
        call = before[opening - 1 : -1] if opening > 0 else ""
        return bool(call) and call.isascii() and (call[0].isalnum() or call[0] == "_")
    name = _NAME.search(before)
    # within a word ("été", "Germany's"), after a digit ("30s", "1st") or a number's space ("400 mg"): prose
    if name is None or re.search(r"(?:[^\W_]|['\u2019]|\d[ \t]+)$", before[: name.start()]):
        return False
    token = name.group(0)
    if "." in token:  # an attribute (`obj.items`), not a domain or a file ("python.org", "Node.js")
        return token.islower() and token.rsplit(".", 1)[1] not in _DOMAINS
    if "_" in token.strip("_"):  # `my_list`, not _emphasis_
        return True
    if any(c.isdigit() for c in token):  # `x2`, `row2`, not "CO2", "H2O", "Python3", "IPv6"
        return token[0].islower() or token[0] == "_"
    return len(token) <= 2 and token.islower() and token not in _SHORT_WORDS  # `s`, `xs`, not "in"


def _literal(run: re.Match) -> bool:
    """Whether a bracketed run of numbers is a list in code, not labels: assigned (`a = [10, 20]`), an
    argument or element of several numbers (`sorted([3, 1, 2])`), or used (`[1, 2].append`)."""
    before = run.string[max(0, run.start() - 80) : run.start()].rstrip(" \t")
    if before.endswith("=") or (before.endswith(("(", "[", "{")) and "," in run.group(0)):
        return True
    return re.match(r"\.[A-Za-z_]", run.string[run.end() : run.end() + 2]) is not None


def _labels_outside_code(text: str, swap) -> str:
    """`text` with each label outside code spans, fences and subscripts replaced by `swap(match)`."""
    parts = _CODE.split(text)  # code at odd indices

    def labels(run: re.Match) -> str:
        code = _subscript(run.string, run.start()) or _literal(run)
        return run.group(0) if code else _LABEL.sub(swap, run.group(0))

    for i in range(0, len(parts), 2):
        parts[i] = _LABELS.sub(labels, parts[i])
    return "".join(parts)


def build_messages(question: str, hits: list[Hit], max_context_chars: int = 4000) -> list[dict]:
    sources = "\n\n".join(f"[{i}] {text}" for i, text in enumerate(_shown(hits, max_context_chars), 1))
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Sources:\n{sources}\n\nQuestion: {question}\nAnswer (cite sources):"},
    ]


MAX_SOURCES = 20  # /v1/rag's most; a bracketed number past it and past the sources shown is no label


def resolve_citations(text: str, hits: list[Hit]) -> tuple[str, list[str]]:
    """Replace [n] labels by [chunk_id]; labels that name no source are dropped from the text, and numbers
    no label could be (a year, "[2019]", or "[0]") are kept as written, as are subscripts (`s[1]`: glued to
    code, `_subscript`) and anything in code spans or fences. A chunk id in brackets that was not retrieved
    (the model's own invention) is dropped too: it would read as a citation."""
    cited: list[str] = []

    def swap(m: re.Match) -> str:
        ids = []
        numbers = [int(x) for x in m.group(1).split(",")]
        if 0 in numbers or all(n > max(MAX_SOURCES, len(hits)) for n in numbers):
            return m.group(0)
        for n in numbers:
            if 1 <= n <= len(hits):
                ids.append(hits[n - 1].chunk_id)
        cited.extend(ids)
        return "".join(f"[{c}]" for c in ids)

    retrieved = {h.chunk_id for h in hits}
    text = _CHUNK_REF.sub(lambda m: m.group(0) if m.group(1) in retrieved else "", text)  # none made up
    return _labels_outside_code(text, swap).strip(), list(dict.fromkeys(cited))


def _content_words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower())) - _STOP


def attribute(text: str, hits: list[Hit], max_context_chars: int = 4000) -> tuple[str, list[str]]:
    """For an answer that cites nothing: after each sentence, [chunk_id] of the source (as the model saw it)
    that holds the largest share of the sentence's content words, when it holds at least MIN_OVERLAP of them
    and the sentence has MIN_WORDS or more. The text is otherwise left as it was, line breaks included."""
    sources = [_content_words(t) for t in _shown(hits, max_context_chars)]
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


def cite(text: str, hits: list[Hit], max_context_chars: int = 4000) -> tuple[str, list[str], CitedBy]:
    """The answer's text with chunk ids, the ids cited, and who cited them (`Answer.citations_by`)."""
    resolved, cited = resolve_citations(text, hits)
    if cited:
        return resolved, cited, "model"
    resolved, cited = attribute(resolved, hits, max_context_chars)
    return resolved, cited, "overlap" if cited else "none"


def answer(question: str, retriever: Retriever, gateway, model: str = "smollm2-135m", k: int = 4,
           mode: str = "hybrid", max_tokens: int = 256, max_context_chars: int = 4000) -> Answer:  # fmt: skip
    """Retrieve `k` chunks with `mode`, generate with `model` through `gateway` (pipelines.llm.gateway)."""
    hits = retriever.search(question, mode=mode, k=k)
    if not hits:
        return no_answer(question, model, mode)
    result = gateway.chat(model, build_messages(question, hits, max_context_chars), max_tokens=max_tokens)
    return answer_from(question, hits, result, mode, max_context_chars)


def no_answer(question: str, model: str, mode: str) -> Answer:
    """What `answer` says when nothing was retrieved: no model is asked."""
    return Answer(question, "No indexed source matches this question.", [], [], "", model, False, mode)


def answer_from(question: str, hits: list[Hit], result, mode: str, max_context_chars: int = 4000) -> Answer:
    """The Answer for the model's `result` (a gateway ChatResult) to `build_messages(question, hits, ...)`."""
    text, citations, citations_by = cite(result.text, hits, max_context_chars)
    return Answer(
        question=question, text=text, citations=citations, chunks=hits, model=result.model,
        requested_model=result.requested_model, fallback_used=result.fallback_used, mode=mode,
        citations_by=citations_by,
        cost_usd=result.cost_usd, latency_s=result.latency_s,
        usage={"input_tokens": result.input_tokens, "output_tokens": result.output_tokens,
               "ttft_s": result.ttft_s},
    )  # fmt: skip
