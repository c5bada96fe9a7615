"""Parse a source file into documents: .txt, .md, .html, .pdf (pypdf), BEIR .jsonl (`_id`, `title`, `text`).

A file that cannot be used raises `SkipFile` with a reason a person can act on; the caller records it and
goes on with the next file.
"""

from __future__ import annotations

import codecs
import io
import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

SUPPORTED = (".txt", ".md", ".html", ".htm", ".pdf", ".jsonl")


class SkipFile(Exception):
    """This file is skipped; `str(e)` says why. `incomplete`: the content looks cut short or not yet
    written (NUL padding from a sync, a PDF whose download stopped), not a version someone saved."""

    def __init__(self, why: str, incomplete: bool = False) -> None:
        super().__init__(why)
        self.incomplete = incomplete


@dataclass(frozen=True)
class Document:
    doc_id: str
    title: str
    text: str
    source: str


# byte-order marks of the encodings a text file may be saved in besides UTF-8 (Windows' "Unicode" is
# UTF-16 LE with its mark); UTF-32's come first, as UTF-32 LE's begins with UTF-16 LE's
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))  # fmt: skip


def _as_utf8(data: bytes) -> bytes:
    """A text file that opens with a UTF-16 or UTF-32 byte-order mark, as UTF-8; any other as it is."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding).encode("utf-8")
            except UnicodeDecodeError as e:
                mark = f"not {encoding.upper()} text, though it opens with its byte-order mark"
                raise SkipFile(f"{mark} (byte {e.start})") from None
    return data


def _decode_text(data: bytes) -> str:
    """UTF-8 text; NULs near its start make it binary (a file saved as something unreadable), one further in
    is dropped (NUL padding at a file's end is `parse_file`'s: the file is not yet whole)."""
    if b"\x00" in data[:8192]:
        raise SkipFile("binary content (NUL bytes; UTF-16 text needs its byte-order mark)")
    try:
        return data.decode("utf-8-sig").replace("\x00", "")
    except UnicodeDecodeError as e:
        raise SkipFile(f"not UTF-8 text (byte {e.start})") from None


def _clean(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t\f\v]+", " ", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _parse_md(raw: str, stem: str) -> tuple[str, str]:
    m = re.search(r"^#\s+(.+)$", raw, flags=re.M)
    return (m.group(1).strip() if m else stem), raw


# elements that break a line where a browser shows them; inline ones (`<b>`, `<span>`, `<wbr>`) join their
# neighbours as a browser does: a newline at every tag split `jane@<span>example.com</span>`, `<b>415</b>-555`
# and `Hel<b>lo</b>`, and the PII recognizers saw neither an e-mail address nor a phone number
_BLOCKS = ["address", "article", "aside", "blockquote", "br", "caption", "dd", "details", "dialog", "div",
           "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5",
           "h6", "header", "hr", "li", "main", "nav", "ol", "option", "p", "pre", "section", "summary",
           "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul"]  # fmt: skip


def _parse_html(raw: str, stem: str) -> tuple[str, str]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(raw, "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    if soup.title:
        soup.title.decompose()
    for tag in soup(_BLOCKS):
        tag.insert_before("\n")
        tag.insert_after("\n")
    return title or stem, soup.get_text("")


def _parse_pdf(data: bytes, stem: str) -> tuple[str, str]:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    if not data.lstrip()[:5].startswith(b"%PDF-"):
        raise SkipFile("malformed PDF (no %PDF- header)", incomplete=True)
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        pages = [p.extract_text() or "" for p in reader.pages]
        title = (reader.metadata.title if reader.metadata else None) or stem
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, OSError) as e:
        raise SkipFile(f"malformed PDF ({type(e).__name__}: {e})", incomplete=True) from None
    return str(title), "\n\n".join(pages)


def _parse_jsonl(data: bytes, name: str) -> tuple[list[Document], list[str]]:
    """One record per line, each decoded on its own: a bad byte or a malformed line loses that record only.
    Lines end at "\n" alone (U+2028 and the like are legal inside a JSON string). A repeated `_id` keeps its
    first record: two records under one id would share, and on an edit mix up, that document's chunks."""
    docs, problems, seen = [], [], set()
    for i, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(_decode_text(line))
            raw_id = obj["_id"]
            if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or not str(raw_id).strip():
                # null was stored as "None" (and a later record of that _id dropped as its duplicate)
                # its value is not quoted: a rejected _id is stored nowhere else, so it would skip redaction
                got = "an empty string" if isinstance(raw_id, str) else type(raw_id).__name__
                problems.append(f"line {i}: _id must be a non-empty string or an integer, got {got}")
                continue
            doc_id, text = str(raw_id), _clean(str(obj.get("text") or ""))
            title = _clean(str(obj.get("title") or ""))
            (doc_id + title + text).encode()  # a lone surrogate escape ("\ud800") is no character to store
        except SkipFile as e:
            problems.append(f"line {i}: {e}")
            continue
        except UnicodeEncodeError:
            problems.append(f"line {i}: a lone UTF-16 surrogate escape, which is no character")
            continue
        except (ValueError, KeyError, TypeError, RecursionError) as e:  # a 5,000-digit number; `[` x 10^5
            problems.append(f"line {i}: {type(e).__name__}: {str(e)[:200]}")
            continue
        if doc_id in seen:
            problems.append(f"line {i}: duplicate _id {doc_id!r} (the first record is kept)")
        elif not (text or title):
            problems.append(f"line {i}: empty document {doc_id!r}")
        else:
            seen.add(doc_id)
            docs.append(Document(doc_id, title, text, name))
    return docs, problems


def _padded(data: bytes, suffix: str) -> bool:
    """NULs end the file, and none is in the first 8 KiB before them (UTF-16 text ends in NUL too: binary),
    and it is no PDF whose end it has written (NULs after `%%EOF` are a finished PDF's)."""
    body = data.rstrip(b"\x00")
    if len(body) == len(data) or b"\x00" in body[:8192]:
        return False
    return not (suffix == ".pdf" and b"%%EOF" in body[-1024:])


def parse_file(name: str, data: bytes) -> tuple[list[Document], list[str]]:
    """Documents in one file plus the problems with individual records (BEIR lines) that were dropped."""
    suffix = PurePosixPath(name).suffix.lower()
    stem = PurePosixPath(name).stem
    if suffix not in SUPPORTED:
        raise SkipFile(f"unsupported file type {suffix or '(none)'!r}")
    if suffix != ".pdf":
        data = _as_utf8(data)
    if not data.strip():
        raise SkipFile("empty file")
    if _padded(data, suffix):  # a sync pads a file it has begun with NULs: its last version stays
        raise SkipFile("NUL padding at its end: not yet written whole", incomplete=True)
    if suffix == ".jsonl":
        docs, problems = _parse_jsonl(data, name)
        if not docs:
            raise SkipFile("no valid BEIR records" + (f" ({problems[0]})" if problems else ""))
        return docs, problems
    if suffix == ".pdf":
        title, text = _parse_pdf(data, stem)
    else:
        raw = _decode_text(data)
        title, text = {".md": _parse_md, ".html": _parse_html, ".htm": _parse_html}.get(
            suffix, lambda r, s: (s, r)
        )(raw, stem)
    text = _clean(text)
    if not text:
        raise SkipFile("no extractable text")
    return [Document(name, _clean(title), text, name)], []
