"""Dense index on Qdrant: local mode on disk (`QdrantClient(path=...)`, default) or a server (`url=`), one
code path.

Points carry the payload doc id, chunk id, title, text and source; point ids are UUIDv5 of the chunk id, so
re-adding a chunk replaces it. The collection name carries the embedder, so changing the embedder never mixes
vector spaces. One name can still give other vectors: int8 MiniLM is calibrated by each machine's OpenVINO, at
that CPU's precision, and a library upgrade changes the model too. So an empty collection records its
embedder's vectors of three fixed texts (`PROBE_TEXTS`, in the collection's metadata) when first written.
The dense build never adds new chunks next to vectors of another embedding: in local mode it embeds every
chunk again (also once for a collection written before probes were kept); on a Qdrant server, whose
collection a running service queries, it refuses and says how to rebuild (and adds to a collection without a
probe unchecked, with a warning). The service warns when the embedder it queries with is not the one the
index was built with.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import ThreadpoolController

from pipelines.index.base import IndexInUse, IndexMissing, ScoredChunk, require_index
from pipelines.index.embeddings import Embedder, LazyEmbedder
from pipelines.settings import Settings


@lru_cache(maxsize=1)
def _controller(n_modules: int) -> ThreadpoolController:
    return ThreadpoolController()


def _blas() -> ThreadpoolController:
    """The BLAS libraries loaded now (listing them takes ~1 ms): a new one comes with an import (scipy brings
    its own OpenBLAS), so the list is made again when the modules loaded have changed."""
    return _controller(len(sys.modules))


_blas_lock = threading.Lock()
_blas_limit: dict = {"searches": 0, "limiter": None}  # the first search in limits BLAS, the last out restores


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """BLAS on one thread while any search runs. The limit is process-wide: overlapping searches share one
    limiter, else the second would save the first's limit as the original and restore 1 for good."""
    with _blas_lock:
        if not _blas_limit["searches"]:
            _blas_limit["limiter"] = _blas().limit(limits=1, user_api="blas")
        _blas_limit["searches"] += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_limit["searches"] -= 1
            if not _blas_limit["searches"]:
                _blas_limit["limiter"].restore_original_limits()


log = logging.getLogger(__name__)

PROBE_TEXTS = (
    "Aspirin lowers the risk of a second heart attack.",
    "Qdrant stores dense vectors on disk.",
    "The 1998 harvest was smaller than expected in northern Spain.",
)
# the lowest cosine between two embeddings of a probe text that counts as the same embedding: MiniLM in fp32,
# bf16, on torch or OpenVINO, gives 0.99994 or more; int8 against float about 0.994
SAME_VECTORS = 0.999


class OtherEmbedding(RuntimeError):
    """The collection holds vectors of another (or an unknown) embedding than its embedder gives now."""


def point_id(chunk_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"chunk:{chunk_id}"))


def embed_passages(embedder: Embedder, chunks: pd.DataFrame, progress: bool = False) -> np.ndarray:
    """Passages are embedded with their (redacted) document title in front: it names the topic."""
    texts = [f"{t}. {x}" if t else x for t, x in zip(chunks["title"].fillna(""), chunks["text"], strict=True)]
    return embedder.embed(texts, progress=progress)


class QdrantIndex:
    backend = "qdrant"

    def __init__(
        self, embedder: Embedder, collection: str, path: str | Path | None = None, url: str | None = None,
        progress: bool = False, api_key: str | None = None, exact: bool = False, must_exist: bool = False,
        ca_certs: str | None = None,
    ) -> None:  # fmt: skip
        from qdrant_client import QdrantClient, models

        if (path is None) == (url is None):
            raise ValueError("give exactly one of path (local mode) or url (server)")
        self.embedder, self.progress, self._m = embedder, progress, models
        # a server searches a segment's HNSW graph once it is indexed (approximate); local mode, every point
        self._params = models.SearchParams(exact=True) if exact else None
        self._probed = False  # whether this handle has seen to the collection's probe
        self.server = url is not None
        slug = "".join(c if c.isalnum() else "_" for c in embedder.name.lower())
        self.collection = f"{collection}__{slug}"
        if path is not None:
            Path(path).mkdir(parents=True, exist_ok=True)
            try:
                self.client = QdrantClient(path=str(path))
            except RuntimeError as e:  # portalocker's lock on the folder
                if "already accessed" not in str(e):
                    raise
                raise IndexInUse("dense", path) from None
            self.location = f"{path}:{self.collection}"
        else:
            # port None: a URL without a port means its scheme's (the client's default, 6333, replaced it)
            tls: dict[str, Any] = {}
            if ca_certs:  # httpx's verify: an SSL context that trusts the bundle's CAs
                import ssl

                tls["verify"] = ssl.create_default_context(cafile=ca_certs)
            self.client = QdrantClient(url=url, port=None, api_key=api_key, timeout=60, **tls)
            self.location = f"{url}/collections/{self.collection}"
        if not self.client.collection_exists(self.collection):
            if must_exist:  # to search: a collection is not made on the spot (it answered every query with
                # nothing, and stayed), as none built
                try:  # for the hint alone: a key that may not list collections gets none
                    listed = [c.name for c in self.client.get_collections().collections]
                except Exception:
                    listed = []
                others = [c for c in listed if c.startswith(f"{collection}__")]
                self.client.close()
                hint = None
                if others:  # the embedder names the collection: SM_EMBEDDER other than the build's
                    hint = (f"it holds vectors of another embedder ({', '.join(others)}), not of "
                            f"{embedder.name}: set SM_EMBEDDER as the build did, or build again")  # fmt: skip
                raise IndexMissing("dense", self.location, hint)
            self._create()

    def _create(self) -> None:
        from qdrant_client.http.exceptions import UnexpectedResponse

        try:
            self.client.create_collection(
                self.collection,
                vectors_config=self._m.VectorParams(size=self.embedder.dim, distance=self._m.Distance.COSINE),
            )
        except UnexpectedResponse as e:  # 409: another process created it since collection_exists; use it
            if e.status_code != 409:
                raise

    def close(self) -> None:
        self.client.close()

    def _recorded_probe(self) -> np.ndarray | None:
        meta = self.client.get_collection(self.collection).config.metadata or {}
        return np.asarray(meta["probe"], np.float32) if "probe" in meta else None

    def probe_cosine(self) -> float | None:
        """The lowest cosine between the embedder's vectors of the probe texts now and those the collection
        recorded (None when it recorded none: a collection written before probes were kept, or never)."""
        recorded = self._recorded_probe()
        if recorded is None:
            return None
        now = self.embedder.embed(list(PROBE_TEXTS))
        recorded /= np.linalg.norm(recorded, axis=1, keepdims=True)  # stored to 5 decimals
        return float(np.min(np.sum(now * recorded, axis=1)))

    def check_embedding(self) -> bool:
        """Before vectors are added: an empty collection or one of this embedding passes. In local mode one of
        another embedding, or with no probe (written before probes were kept), is emptied (True: the caller
        embeds every chunk again). On a server, where a running service would query it while it fills,
        another embedding is refused and no probe passes with a warning."""
        if not self.client.get_collection(self.collection).points_count:
            return False
        cos = self.probe_cosine()
        if cos is not None and cos >= SAME_VECTORS:
            return False
        why = "an unknown embedding (no probe)" if cos is None else f"another embedding (cosine {cos:.4f})"
        if self.server and cos is None:
            log.warning("%s was written before probes were kept: new vectors go in unchecked", self.location)
            return False
        if self.server:
            raise OtherEmbedding(
                f"{self.location} holds vectors of {why} of {self.embedder.name}: delete the collection "
                f"(DELETE /collections/{self.collection}) and build the dense index again"
            )
        log.warning("%s holds vectors of %s of %s: embedding every chunk again", self.location, why,
                    self.embedder.name)  # fmt: skip
        self.client.delete_collection(self.collection)
        self._create()
        self._probed = False
        return True

    def indexed_ids(self) -> set[str]:
        ids: set[str] = set()
        offset = None
        while True:
            recs, offset = self.client.scroll(
                self.collection, limit=2048, offset=offset, with_payload=["chunk_id"], with_vectors=False
            )
            ids.update(r.payload["chunk_id"] for r in recs if r.payload)
            if offset is None:
                return ids

    def upsert(self, chunks: pd.DataFrame, vectors: np.ndarray | None = None) -> None:
        if vectors is None:
            vectors = embed_passages(self.embedder, chunks, self.progress)
        if not self._probed:  # the first vectors in an empty collection: record which embedding they are
            info = self.client.get_collection(self.collection)
            if not info.points_count:  # (a probe left by vectors all deleted since is replaced)
                probe = np.round(self.embedder.embed(list(PROBE_TEXTS)), 5).tolist()
                self.client.update_collection(self.collection, metadata={"probe": probe})
            self._probed = True
        payload_cols = ["chunk_id", "doc_id", "title", "text", "source"]
        payloads = chunks[payload_cols].fillna("").to_dict("records")
        self.client.upsert(
            self.collection,
            points=self._m.Batch(
                ids=[point_id(p["chunk_id"]) for p in payloads], vectors=vectors.tolist(), payloads=payloads
            ),
        )

    def delete(self, chunk_ids: Iterable[str]) -> None:
        ids: list[int | str | uuid.UUID] = [point_id(c) for c in chunk_ids]
        for i in range(0, len(ids), 10_000):  # a server refuses a request over 32 MiB (860k ids in one)
            points = self._m.PointIdsList(points=ids[i : i + 10_000])
            self.client.delete(self.collection, points_selector=points)

    def search_vectors(self, vectors: np.ndarray, k: int = 100) -> list[list[ScoredChunk]]:
        reqs = [
            self._m.QueryRequest(query=v.tolist(), limit=k, params=self._params, with_payload=["chunk_id"])
            for v in np.atleast_2d(vectors)
        ]
        out = []
        # local mode scores with numpy on one BLAS thread: a few queries' product gains nothing from more,
        # and OpenBLAS threads left spinning after it slowed the next query's torch embedding ~10x (SciFact
        # dense query p95 121 -> 29 ms, benchmarks/retrieval.py)
        with _one_blas_thread():
            for i in range(0, len(reqs), 64):
                for resp in self.client.query_batch_points(self.collection, reqs[i : i + 64]):
                    out.append(
                        [ScoredChunk((p.payload or {})["chunk_id"], float(p.score)) for p in resp.points]
                    )
        return out

    def search(self, query: str, k: int = 100) -> list[ScoredChunk]:
        return self.search_batch([query], k)[0]

    def search_batch(self, queries: Sequence[str], k: int = 100) -> list[list[ScoredChunk]]:
        return self.search_vectors(self.embedder.embed(list(queries)), k)


def open_dense_index(
    settings: Settings,
    index_dir: str | Path | None = None,
    embedder: Embedder | None = None,
    progress=False,
    must_exist: bool = False,
) -> QdrantIndex:
    """The vector backend chosen by `settings.vector_backend` (local files under index_dir, or the server);
    `must_exist`: local files not built are an IndexMissing, not a new empty index."""
    embedder = embedder or LazyEmbedder(settings.embedder)
    if settings.vector_backend == "qdrant_server":
        key = settings.qdrant_api_key
        return QdrantIndex(
            embedder, settings.qdrant_collection, url=settings.qdrant_url, progress=progress,
            api_key=key.get_secret_value() if key is not None else None, exact=settings.qdrant_exact,
            must_exist=must_exist, ca_certs=settings.qdrant_ca_certs or None,
        )  # fmt: skip
    path = require_index(Path(index_dir or settings.run_dir / "index") / "qdrant", "dense", must_exist)
    return QdrantIndex(
        embedder, settings.qdrant_collection, path=path, progress=progress, must_exist=must_exist
    )
