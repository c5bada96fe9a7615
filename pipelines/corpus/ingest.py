"""Incremental ingest: source files -> parse -> redact PII -> chunk -> parquet in the object store.

Layout in the store: `corpus/manifest.json` (what was ingested, with content hashes) and one parquet file of
chunks per source file under `corpus/chunks/`, named by its content. The manifest is the commit point: a run
writes new chunk objects next to the old ones, then the manifest, and only then deletes the objects no
manifest names, so a run that dies on the way leaves the last manifest and every object it names (a reader
that finds an object gone reads the manifest again: another run committed meanwhile). One run at a
time: on a local store a second run raises `ConcurrentIngest` at once (a lock the OS frees when its holder
ends). S3 has no lock, so there a run writes its manifest with a conditional PUT, over the manifest it started
from only: where another run has committed since, the server refuses it and the run raises
`ConcurrentIngest`, committing nothing. A run deletes only objects it listed before its commit, and every
chunk object has a key of its own, so it never deletes one a run that started after that commit wrote.
Work is done
only where content changed: an unchanged file is not read twice; in a changed BEIR file only the changed
documents are redacted and chunked again. PII is redacted before anything (chunk text, titles, file names) is
written; the manifest holds only hashes and names. A file name with PII in it
(`letters/jane.doe@example.com.txt`) is kept everywhere (doc id, chunk ids, source, manifest, skip records) as
its redacted form plus a digest keyed by a secret the store keeps
(`letters/<EMAIL_ADDRESS>~3f0c9a1b22de.txt`): two such files stay apart, and the digest cannot be checked
against a guessed name without the store. BEIR `_id`s are kept as they are: qrels refer to them. A bad file is
skipped and recorded with the reason; it never fails the run.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import hmac
import io
import json
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import quote

import pandas as pd

from pipelines.corpus.chunking import chunk_text
from pipelines.corpus.parsers import SUPPORTED, Document, SkipFile, parse_file
from pipelines.corpus.pii import check_spacy_model
from pipelines.corpus.store import ObjectStore, StoreConflict, open_source, open_store
from pipelines.settings import Settings

if TYPE_CHECKING:
    from pipelines.corpus.pii import Redactor

MANIFEST = "corpus/manifest.json"
NAME_KEY = "corpus/names.key"  # the store's secret for name digests; never copied into an index or a Bento
CHUNKS_PREFIX = "corpus/chunks/"
CHUNK_COLUMNS = [
    "chunk_id", "doc_id", "ordinal", "title", "text", "source", "doc_hash",
    "char_start", "char_end", "n_tokens",
]  # fmt: skip


class ConcurrentIngest(RuntimeError):
    """Another ingest runs on the store, or committed to it while this one ran: this one committed nothing."""


class EmptyCorpus(ValueError):
    """The source holds no document to ingest while the store holds some: the run would remove them all (an
    empty or mistyped folder had emptied the store and every index). This run committed nothing."""


@dataclass
class IngestReport:
    source: str
    store: str
    files_seen: int = 0
    files_unchanged: int = 0
    files_processed: int = 0
    files_removed: int = 0
    docs_processed: int = 0
    docs_reused: int = 0
    chunks_written: int = 0
    chunks_total: int = 0
    docs_total: int = 0
    skipped: list[dict] = field(default_factory=list)
    pii_redacted: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def did_work(self) -> bool:
        return bool(self.files_processed or self.files_removed)

    def to_dict(self) -> dict:
        return asdict(self)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _config(settings: Settings) -> dict:
    """Anything that changes chunk content; when it changes, everything is processed again. Bump `v` when
    the chunker or the redaction rules change (v2: IP addresses no longer matched in `::=` and `1::2`;
    v3: chunk ids hash the title too, and a BEIR file keeps the first of records sharing an `_id`; v4: phone
    numbers with any separators and long texts in overlapping windows, no chunk inside the one before it,
    title-only records chunked; v5: US social security numbers, and e-mail addresses on private domains; v6:
    a word over 100 characters in slices; v7: phone numbers with up to 8 separators between digits; v8: SSNs
    in any of Presidio's forms right after a label that says SSN; v9: phone numbers past phonenumbers' 65,535
    tries in one analysis window, and UTF-16 and UTF-32 text with a byte-order mark read)."""
    return {"v": 9, "chunk_tokens": settings.chunk_tokens, "chunk_overlap": settings.chunk_overlap,
            "pii_spacy_model": settings.pii_spacy_model}  # fmt: skip


def _manifest_bytes(store: ObjectStore) -> bytes | None:
    try:
        return store.get(MANIFEST)
    except KeyError:
        return None


def _parse_manifest(raw: bytes | None) -> dict:
    return json.loads(raw) if raw is not None else {"files": {}}


def name_key(store: ObjectStore) -> bytes:
    """The store's secret for name digests, made on first use."""
    try:
        return store.get(NAME_KEY)
    except KeyError:
        with contextlib.suppress(StoreConflict):  # another run made it first: names are digested with that
            store.put_if(NAME_KEY, secrets.token_bytes(32), None)
        return store.get(NAME_KEY)


def name_digest(name: str, key: bytes, size: int = 12) -> str:
    return hmac.new(key, name.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()[:size]


def readable(name: str) -> str:
    """`name` with the bytes that are not UTF-8 (a file system's raw name) as U+FFFD: fit to store or show."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def safe_name(name: str, redact: Callable[[str], str], key: bytes) -> str:
    """`name` with PII in its path parts redacted and a keyed digest of the original added; a name without
    PII is returned as it is. A part is redacted without its extension (`a@b.org.md`: `.md` is a TLD too),
    then whole, as what looked like an extension may end an address (a folder `415.555.2671 a@b.org`: the
    first pass leaves `a@b` + `.org`); a document's extension the second pass took (`notes@home.md`, `.md` a
    top-level domain) is put back after it, or the file would be skipped as of no known type. A name's bytes
    that are not UTF-8 are kept as U+FFFD, with the digest."""
    shown = readable(name)
    parts = shown.split("/")
    out = []
    for part in parts:
        suffix = PurePosixPath(part).suffix
        redacted = redact(redact(part[: len(part) - len(suffix)]) + suffix)
        if suffix.lower() in SUPPORTED and not redacted.endswith(suffix):
            redacted += suffix
        out.append(redacted)
    if out == parts and shown == name:
        return name
    last = PurePosixPath(out[-1])
    out[-1] = f"{last.stem}~{name_digest(name, key)}{last.suffix}"
    return "/".join(out)


def _doc_hash(doc: Document) -> str:
    return _sha(f"{doc.doc_id}\x00{doc.title}\x00{doc.text}".encode())


class _Processor:
    """Redacts and chunks documents; the Presidio engine is built on first use only."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._redactor: Redactor | None = None
        self.pii: Counter = Counter()

    def redact(self, text: str, name: bool = False) -> str:
        """`text` redacted (as a file name with `name`: Redactor.redact_name), counting what was found."""
        if self._redactor is None:
            from pipelines.corpus.pii import may_hold_pii

            if not may_hold_pii(text, self.settings.pii_spacy_model, name):  # no engine for clean names
                return text
            from pipelines.corpus.pii import get_redactor

            self._redactor = get_redactor(self.settings.pii_spacy_model, str(self.settings.run_dir / "cache"))
        out, counts = (self._redactor.redact_name if name else self._redactor.redact)(text)
        self.pii.update(counts)
        return out

    def redact_name(self, name: str) -> str:
        return self.redact(name, name=True)

    def rows(self, doc: Document, doc_hash: str) -> list[dict]:
        title, text = self.redact(doc.title) if doc.title else "", self.redact(doc.text)
        s = self.settings
        return [
            {
                "chunk_id": c.chunk_id,
                "doc_id": doc.doc_id,
                "ordinal": c.ordinal,
                "title": title,
                "text": c.text,
                "source": doc.source,
                "doc_hash": doc_hash,
                "char_start": c.char_start,
                "char_end": c.char_end,
                "n_tokens": c.n_tokens,
            }  # fmt: skip
            # a title-only record (BEIR corpora have them) is its title: no text gave it no chunk, unrecorded
            for c in chunk_text(doc.doc_id, text or title, s.chunk_tokens, s.chunk_overlap, title)
        ]


def chunk_rows(settings: Settings, docs: list[Document]) -> list[dict]:
    """The chunk rows ingest stores for `docs`: redacted and chunked the same way, so the same chunk ids."""
    proc = _Processor(settings)
    return [row for doc in docs for row in proc.rows(doc, _doc_hash(doc))]


def _write_chunks(store: ObjectStore, name: str, df: pd.DataFrame) -> str:
    """Write a file's chunks under a new key (the file's name hash, the content's and a nonce) and return
    the key: no object another run has listed or named is ever written over (a run that brought a file
    back to an earlier content wrote that content's old key, which a run committing meanwhile had listed to
    sweep)."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    data = buf.getvalue()
    name_hash, nonce = hashlib.sha1(name.encode()).hexdigest()[:20], secrets.token_hex(4)
    key = f"{CHUNKS_PREFIX}{name_hash}-{_sha(data)[:16]}-{nonce}.parquet"
    store.put(key, data)
    return key


def _read_parquet(store: ObjectStore, key: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(store.get(key)))


BEIR_CORPUS = "corpus.jsonl"  # at the top of a BEIR folder (with its queries or qrels): its only corpus file
LEFT_OUT = f"left out: a BEIR folder's corpus is {BEIR_CORPUS}"


def beir_label(key: str) -> bool:
    """Whether `key` is a BEIR folder's queries or relevance judgements (`queries.jsonl`, `qrels/*.tsv`, or
    a `qrels.tsv` beside them): any name starting "queries" or "qrels" had counted, and a `queries_log.md`
    among a team's documents was dropped without a record."""
    return key in ("queries.jsonl", "qrels.tsv") or (key.startswith("qrels/") and key.endswith(".tsv"))


def beir_folder(keys: Iterable[str]) -> bool:
    """Whether a folder with these keys is a BEIR folder: BEIR_CORPUS next to its queries or qrels."""
    keys = set(keys)
    return BEIR_CORPUS in keys and any(beir_label(k) for k in keys)


STORE_PREFIXES = ("corpus/", "utility/")  # what the workbench writes to its store: chunks, posteriors


def store_keys_in(src: ObjectStore, store: ObjectStore) -> tuple[str, ...]:
    """The prefixes under which the store's own objects show in the source's listing, where the store lies
    inside the source (a corpus at the root of the store's bucket): none where it does not."""
    outer, inner = src.uri.rstrip("/") + "/", store.uri.rstrip("/") + "/"
    return tuple(inner[len(outer) :] + p for p in STORE_PREFIXES) if inner.startswith(outer) else ()


def _corpus_files(
    src: ObjectStore, include: str | None, store: ObjectStore | None = None
) -> tuple[dict[str, int | str], set[str]]:
    """Files, key -> size, and what is not read (links, named pipes, ...), key -> why, and which of them are
    left out: in a BEIR folder (BEIR_CORPUS next to its `beir_label`s) only BEIR_CORPUS is corpus; its
    queries and qrels are not listed, and any other file is left out with a record (a `corpus.jsonl` among a
    team's documents had dropped every other file from the store, unrecorded). The store's own objects are
    never corpus (in the source, they were ingested as documents and changed on every run)."""
    listing: dict[str, int | str] = {**src.list(), **src.unread()}
    own = store_keys_in(src, store) if store is not None else ()
    if own:
        listing = {k: v for k, v in listing.items() if not k.startswith(own)}
    if include:
        listing = {k: v for k, v in listing.items() if fnmatch.fnmatch(k, include)}
    elif beir_folder(listing):
        listing = {k: v for k, v in listing.items() if not beir_label(k)}
        return dict(sorted(listing.items())), set(listing) - {BEIR_CORPUS}
    return dict(sorted(listing.items())), set()


def ingest_corpus(
    settings: Settings,
    source: str | None = None,
    store: ObjectStore | None = None,
    include: str | None = None,
    allow_empty: bool = False,
) -> IngestReport:
    """Bring the chunk store up to date with `source` (default `settings.corpus_dir`); returns what was done.

    `source` is a folder or `s3://bucket/prefix`; `include` an optional glob on the keys below it. A source
    with no document to ingest (empty, mistyped, every file skipped) is an EmptyCorpus error, and the store
    is left as it was, where the store holds documents; `allow_empty` removes them.
    """
    spec = source or settings.corpus_dir
    if not spec:
        raise ValueError("no corpus source: pass one or set SM_CORPUS_DIR (a folder or s3://bucket/prefix)")
    if not str(spec).startswith("s3://") and Path(spec).is_file():
        raise NotADirectoryError(
            f"{spec} is a file, not a folder: ingest reads a folder or s3://bucket/prefix"
        )
    check_spacy_model(settings.pii_spacy_model)
    src = open_source(spec, settings)
    store = store or open_store(settings)
    with store.exclusive("ingest") as held:
        if not held:
            raise ConcurrentIngest(f"another ingest is running on {store.uri}; run this one when it ends")
        return _ingest(settings, src, store, include, allow_empty)


def _docs(files: dict) -> int:
    """The documents a manifest's `files` hold."""
    return sum(len(f.get("docs", {})) for f in files.values())


def _folder_digests(raw: str, key: bytes) -> list[str]:
    """Keyed digests of the folders a source key lies in ("a/b/c.txt": "a" and "a/b")."""
    parts = raw.split("/")[:-1]
    return [name_digest("/".join(parts[: i + 1]), key) for i in range(len(parts))]


def _in_folder(name: str, record: dict, folder: str, digest: str, shown: str) -> bool:
    """Whether a manifest record lies in the source folder `folder` ("" the root; `digest` its keyed digest,
    `shown` its redacted name): by the folder digests the record keeps, or, a record older than them, by its
    name (two folders redacted alike, `ann@x.org/` and `bob@x.org/`, share that)."""
    if not folder:
        return True
    return digest in record["dirs"] if "dirs" in record else name.startswith(f"{shown}/")


def _skip_reason(e: Exception, raw: str, name: str) -> str:
    """Why a file was skipped, its raw name nowhere in it: an error may quote the key (a KeyError, a path in
    an OSError, an S3 resource) escaped or URL-encoded, which no plain replace finds and the prose redactor
    misses (`ann@x.org-notes`); an OSError gives its reason alone, the path left out."""
    if isinstance(e, SkipFile):
        return str(e)
    detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    reason = f"error: {type(e).__name__}: {detail}"
    encoded = (quote(raw, safe=safe, errors="surrogateescape") for safe in ("/", ""))
    for form in sorted({raw, repr(raw)[1:-1], ascii(raw)[1:-1], *encoded}, key=len, reverse=True):
        reason = reason.replace(form, name)
    return reason


def _ingest(settings: Settings, src: ObjectStore, store: ObjectStore, include: str | None,
            allow_empty: bool = False) -> IngestReport:  # fmt: skip
    t0 = time.perf_counter()
    report = IngestReport(source=src.uri, store=store.uri)
    started_from, tag = store.get_tagged(MANIFEST) or (None, None)
    manifest = _parse_manifest(started_from)
    config = _config(settings)
    old_files = manifest["files"] if manifest.get("config") == config else {}
    files, proc = {}, _Processor(settings)
    max_bytes = int(settings.max_file_mb * 1024 * 1024)
    key = name_key(store)

    listing, left_out = _corpus_files(src, include, store)
    raw_of: dict[str, str] = {}
    # the name each source key was given last run (same config), by its keyed digest: no name is redacted
    # again, and a run with no new name builds no PII engine (about 18 s)
    known_names = {f["key"]: n for n, f in old_files.items() if "key" in f}  # 128-bit digests
    for raw, size in listing.items():
        report.files_seen += 1
        try:  # the safe name is the only name that is kept from here on
            name = known_names.get(name_digest(raw, key, 32)) or safe_name(raw, proc.redact_name, key)
        except Exception as e:  # no name to keep: the record names its digest
            name = f"<UNREADABLE_NAME>~{name_digest(raw, key)}"
            reason = f"error: the name could not be read ({type(e).__name__})"
            report.skipped.append({"path": name, "reason": reason})
            continue
        raw_of[name] = raw
        prev = old_files.get(name)
        if raw in left_out:
            report.skipped.append({"path": name, "reason": LEFT_OUT})
            continue
        if isinstance(size, str):  # not a regular file: why it is not read
            report.skipped.append({"path": name, "reason": size})
            continue
        if size > max_bytes:
            report.skipped.append({"path": name, "reason": f"oversized ({size} bytes > {max_bytes})"})
            continue
        data = b""
        try:
            data = src.get(raw)
            digest = _sha(data)
            if prev and prev["sha256"] == digest:
                files[name] = prev
                report.files_unchanged += 1
                if prev.get("skipped"):
                    report.skipped.append({"path": name, "reason": prev["skipped"]})
                report.skipped.extend(_problem_records(name, prev.get("problems", [])))
                continue
            files[name] = _process_file(name, data, digest, prev, store, proc, report)
        except Exception as e:  # one bad file never fails the run
            reason = proc.redact(_skip_reason(e, raw, name))
            if (
                prev and prev.get("chunk_key") and not prev.get("skipped")
                and (not isinstance(e, SkipFile) or e.incomplete)
            ):  # fmt: skip
                # a read error (an S3 timeout), or content not yet whole (a sync's NUL padding, a PDF cut
                # short): the last good version stays, and the next run tries again; a file someone emptied
                # or saved as something else loses its old text, which may be what they meant to remove
                files[name] = prev
                report.skipped.append({"path": name, "reason": f"{reason}; its last version is kept"})
                continue
            report.skipped.append({"path": name, "reason": reason})
            # a file's content skipped it (SkipFile): skipped again until it changes; anything else (a store
            # that timed out) is no verdict on the content, and the next run tries it again
            files[name] = {"sha256": _sha(data) if isinstance(e, SkipFile) else None, "skipped": reason}
            report.files_processed += 1

    # each record knows its folders by keyed digests (a redacted folder name may stand for several)
    for n, raw in raw_of.items():
        if n in files:
            files[n] = {**files[n], "key": name_digest(raw, key, 32), "dirs": _folder_digests(raw, key)}
    # a folder that could not be listed (no permission) still holds its files: they keep their last versions
    for folder in src.unreadable:
        shown = safe_name(f"{folder}/x", proc.redact_name, key).rsplit("/", 1)[0] if folder else ""
        digest = name_digest(folder, key)
        kept = [n for n, f in old_files.items() if n not in files and _in_folder(n, f, folder, digest, shown)]
        files.update((n, old_files[n]) for n in kept)
        reason = f"a folder that could not be read: {len(kept)} file(s) known in it keep their last version"
        report.skipped.append({"path": f"{shown}/", "reason": reason})
    # a skipped file's record goes too; counted against the manifest, as a new config empties old_files
    report.files_removed = sum(1 for n in manifest["files"] if n not in files)
    report.skipped.extend(_shared_doc_ids(files))
    held = _docs(manifest["files"])
    if held and not _docs(files) and not allow_empty:
        # leave the store as it was: only this run's own chunk objects (keys with a nonce of their own) go
        before = {f.get("chunk_key") for f in manifest["files"].values()}
        for f in files.values():
            if f.get("chunk_key") and f["chunk_key"] not in before:
                store.delete(f["chunk_key"])
        first = next(
            (f", first {r['path']}: {r['reason']}" for r in report.skipped if r["reason"] != LEFT_OUT), ""
        )
        raise EmptyCorpus(
            f"{src.uri} holds no document to ingest ({report.files_seen} files seen, {len(report.skipped)} "
            f"skipped{first}): this would remove all {held} documents from {store.uri}; to do that on "
            "purpose, pass --allow-empty (allow_empty=True)"
        )
    # records that changed with nothing to redo (a manifest from before `dirs`) are committed too, once
    if report.did_work or manifest.get("config") != config or files != manifest["files"]:
        listed = store.list(CHUNKS_PREFIX)  # before the commit: a run that starts after it wrote none of them
        commit = json.dumps({"config": config, "files": files}, indent=1).encode()
        try:
            store.put_if(MANIFEST, commit, tag)
        except StoreConflict:
            if _manifest_bytes(store) != commit:  # not this run's own (a PUT retried, its answer lost)
                raise ConcurrentIngest(
                    f"another ingest committed to {store.uri} while this one ran; this one committed "
                    "nothing: run it again (it redoes only what changed since)"
                ) from None
        # only now: the chunks of removed, changed or newly bad files, and any a crashed run left behind (a
        # run with nothing to commit leaves those for the next one that commits)
        named = {f["chunk_key"] for f in files.values() if f.get("chunk_key") and not f.get("skipped")}
        for obj in listed:
            if obj not in named:
                store.delete(obj)
    report.chunks_total = sum(f.get("n_chunks", 0) for f in files.values())
    report.docs_total = _docs(files)
    report.pii_redacted = dict(proc.pii)
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


def _process_file(name, data, digest, prev, store, proc, report) -> dict:
    docs, problems = parse_file(name, data)
    old_by_doc: dict[str, pd.DataFrame] = {}
    if prev and prev.get("chunk_key") and store.exists(prev["chunk_key"]):
        old = _read_parquet(store, prev["chunk_key"])
        old_by_doc = {d: g for d, g in old.groupby("doc_id", sort=False)}
    old_hashes = (prev or {}).get("docs", {})
    parts, new_rows, doc_hashes = [], [], {}
    for doc in docs:
        h = _doc_hash(doc)
        doc_hashes[doc.doc_id] = h
        if old_hashes.get(doc.doc_id) == h and doc.doc_id in old_by_doc:
            parts.append(old_by_doc[doc.doc_id])
            report.docs_reused += 1
        else:
            rows = proc.rows(doc, h)
            if not rows:  # e.g. a PDF's glyphs without a Unicode map: control or private-use characters only
                label = "document" if doc.doc_id == name else doc.doc_id  # a BEIR record, or the whole file
                problems.append(f"{label}: no text to index (no token in the document)")
            new_rows.extend(rows)
            report.docs_processed += 1
    report.skipped.extend(_problem_records(name, problems))
    if new_rows:
        parts.append(pd.DataFrame(new_rows, columns=CHUNK_COLUMNS))
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=CHUNK_COLUMNS)
    df = df.drop_duplicates("chunk_id", keep="last")
    key = _write_chunks(store, name, df)
    report.files_processed += 1
    report.chunks_written += len(new_rows)
    return {"sha256": digest, "chunk_key": key, "docs": doc_hashes, "n_chunks": len(df), "problems": problems}


def _shared_doc_ids(files: dict[str, dict], shown: int = 5) -> list[dict]:
    """Records of the doc ids a file shares with a file before it (in listing order): two BEIR files with a
    common `_id`, say. One record per pair of files and kind: the same document as an earlier file's (its
    chunks are the same, so it is indexed once), or another one than the first file's (both are indexed, but
    a citation or a qrel names a doc id and cannot tell them apart)."""
    holders: dict[str, dict[str, str]] = {}  # doc id -> its versions (digest) -> the first file holding each
    shared: dict[tuple[str, str, bool], list[str]] = {}
    for name, f in files.items():
        for doc_id, digest in f.get("docs", {}).items():
            versions = holders.setdefault(doc_id, {})
            if not versions:
                versions[digest] = name
                continue
            same = digest in versions  # an earlier file's version (a file holds a doc id once)
            other = versions[digest] if same else next(iter(versions.values()))
            versions.setdefault(digest, name)
            shared.setdefault((name, other, same), []).append(doc_id)
    records = []
    for (name, other, same), ids in shared.items():
        listed = ", ".join(ids[:shown]) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")
        what = ("the same document there, indexed once" if same else "another document there; both are "
                "indexed, and citations and qrels cannot tell them apart")  # fmt: skip
        records.append({"path": f"{name}:{ids[0]}", "reason": f"{len(ids)} doc id(s) also in {other} "
                        f"({listed}): {what}"})  # fmt: skip
    return records


def _problem_records(name: str, problems: list[str]) -> list[dict]:
    return [{"path": f"{name}:{p.split(': ')[0]}", "reason": p} for p in problems]  # "PMID:1: ..."


def corpus_version(settings: Settings, store: ObjectStore | None = None) -> str:
    """16 hex characters naming what the store's chunks are made of, from the manifest alone (no chunk is
    read): the chunking and redaction config and each ingested file's name and content hash. A file's
    chunks follow from those, so the same corpus ingested again keeps its version."""
    manifest = _parse_manifest(_manifest_bytes(store or open_store(settings)))
    files = sorted(
        (name, f.get("sha256"))
        for name, f in manifest["files"].items()
        if f.get("chunk_key") and not f.get("skipped")
    )
    doc = json.dumps({"config": manifest.get("config"), "files": files}, sort_keys=True, default=str)
    return _sha(doc.encode())[:16]


def load_chunks(settings: Settings, store: ObjectStore | None = None, attempts: int = 5) -> pd.DataFrame:
    """All chunks currently in the store (one row per chunk, CHUNK_COLUMNS). An ingest that commits while
    this reads deletes the chunk objects the manifest read here named: an object gone under a manifest that
    has since changed means reading the new one (up to `attempts` times); gone under the same manifest, it is
    a KeyError."""
    store = store or open_store(settings)
    attempts = max(attempts, 1)
    for attempt in range(attempts):
        raw = _manifest_bytes(store)
        files = _parse_manifest(raw)["files"].values()
        keys = [f["chunk_key"] for f in files if f.get("chunk_key") and not f.get("skipped")]
        try:
            parts = [_read_parquet(store, k) for k in keys]
            break
        except KeyError:
            if attempt == attempts - 1 or _manifest_bytes(store) == raw:
                raise
    parts = [p for p in parts if len(p)]  # a file with no chunk: its empty table's columns are objects
    if not parts:
        return pd.DataFrame(columns=CHUNK_COLUMNS)
    return pd.concat(parts, ignore_index=True).drop_duplicates("chunk_id", keep="last").reset_index(drop=True)
