"""What every index shares: the scored hit, the sync report, and the incremental sync by chunk id."""

from __future__ import annotations

import hashlib
import socket
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import pandas as pd


@dataclass(frozen=True)
class ScoredChunk:
    chunk_id: str
    score: float

    @property
    def doc_id(self) -> str:
        return doc_id_of(self.chunk_id)


class IndexInUse(RuntimeError):
    """An embedded index's files are held by another process (or another handle in this one): local Qdrant
    and Ladybug take a lock on their folder for as long as a client has it open."""

    def __init__(self, kind: str, path: object) -> None:
        super().__init__(
            f"the {kind} index at {path} is already open in another process (a job or a command that is "
            "still running over this run folder): wait for it to finish, or use a server backend"
        )


class IndexMissing(FileNotFoundError):
    """A retriever was opened where no embedded index was built: it had made an empty one there and
    answered every query with nothing."""

    def __init__(self, kind: str, path: object, hint: str | None = None) -> None:
        super().__init__(
            f"no {kind} index at {path}: "
            + (hint or "build the indexes first (`stratmaster retrieval ingest DOCS`, or `make demo`)")
        )


def require_index(path: Path, kind: str, must_exist: bool) -> Path:
    if must_exist and not path.exists():
        raise IndexMissing(kind, path)
    return path


def doc_id_of(chunk_id: str) -> str:
    """Chunk ids are `doc_id#hash` (pipelines.corpus.chunking); the hash never holds '#'."""
    return chunk_id.rsplit("#", 1)[0]


@dataclass
class IndexReport:
    backend: str
    location: str
    added: int = 0
    deleted: int = 0
    unchanged: int = 0
    total: int = 0
    seconds: float = 0.0
    version: str = ""  # of what the index holds (content_version): the asset's data version

    @property
    def did_work(self) -> bool:
        return bool(self.added or self.deleted)

    @property
    def chunks_per_s(self) -> float | None:
        return round(self.added / self.seconds, 1) if self.added and self.seconds > 0 else None

    def to_dict(self) -> dict:
        return {**asdict(self), "chunks_per_s": self.chunks_per_s}


class ChunkIndex(Protocol):
    backend: str
    location: str

    def indexed_ids(self) -> set[str]: ...
    def upsert(self, chunks: pd.DataFrame) -> None: ...
    def delete(self, chunk_ids: Iterable[str]) -> None: ...


def content_version(chunk_ids: Iterable[str], *more: str) -> str:
    """16 hex characters that change when the set of chunks does (a chunk id hashes its text) or when any of
    `more` does (the embedder of a dense index): Dagster's data version of each index, so that an unchanged
    rebuild keeps its version and the Bento's labels name what it holds."""
    h = hashlib.sha256("\n".join(sorted(set(chunk_ids))).encode())
    for part in more:
        h.update(f"\x00{part}".encode())
    return h.hexdigest()[:16]


def sync_index(
    index: ChunkIndex, chunks: pd.DataFrame, batch: int = 2048, have: set[str] | None = None, salt: str = ""
) -> IndexReport:
    """Make `index` hold exactly `chunks`: add the new chunk ids, delete the gone ones, touch nothing else.
    `have`: the ids the index holds, when the caller has just read them. `salt`: what else its content
    depends on, for its version (a dense index's embedder)."""
    t0 = time.perf_counter()
    have = index.indexed_ids() if have is None else have
    want = set(chunks["chunk_id"])
    if getattr(index, "stale", False):  # analysed otherwise (tantivy): made anew in one commit
        index.replace_all(chunks)  # type: ignore[attr-defined]
        return IndexReport(
            backend=index.backend, location=index.location, added=len(want), deleted=len(have - want),
            unchanged=0, total=len(want), seconds=round(time.perf_counter() - t0, 3),
            version=content_version(want, index.backend, salt),
        )  # fmt: skip
    gone = sorted(have - want)
    new = chunks[~chunks["chunk_id"].isin(have)]
    for i in range(0, len(new), batch):  # adds first: a sync stopped half-way leaves every old chunk there
        index.upsert(new.iloc[i : i + batch])
    if gone:
        index.delete(gone)
    return IndexReport(
        backend=index.backend, location=index.location, added=len(new), deleted=len(gone),
        unchanged=len(want & have), total=len(want), seconds=round(time.perf_counter() - t0, 3),
        version=content_version(want, index.backend, salt),
    )  # fmt: skip


# errors of a connection that failed or timed out, as the engines' clients raise them (module, class names);
# the clients' own wrappers (opensearch-py's ConnectionError, qdrant-client's ResponseHandlingException) also
# wrap bugs and malformed answers, so they count only for what they wrap
_TRANSPORT = (
    ("opensearchpy.exceptions", ("ConnectionTimeout",)),
    ("nebula3.Exception", ("IOErrorException",)),
    ("httpx", ("TransportError",)),
    ("urllib3.exceptions", ("TimeoutError", "ProtocolError")),
)


def engine_unreachable(e: BaseException) -> bool:
    """Whether `e` says a retrieval engine's server cannot be reached (an outage, worth a retry): a
    connection or timeout error, itself, its explicit cause or an error a client's wrapper holds in its args
    (a malformed answer or a bug wrapped alike is no outage). Only clients already imported are asked about:
    an engine in use has been."""
    kinds: list[type] = [ConnectionError, TimeoutError, socket.gaierror]  # refused, reset, timed out, no DNS
    for module, names in _TRANSPORT:
        if module in sys.modules:
            kinds += [getattr(sys.modules[module], n) for n in names if hasattr(sys.modules[module], n)]
    todo, seen = [e], 0
    while todo and seen < 20:  # a bounded walk of what `e` wraps
        err = todo.pop()
        seen += 1
        if isinstance(err, tuple(kinds)):
            return True
        todo += [a for a in (err.__cause__, *getattr(err, "args", ())) if isinstance(a, BaseException)]
    return False
