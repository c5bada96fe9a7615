"""One call per index, as the Dagster assets use them: read the chunks from the store, bring the index up to
date incrementally (new chunk ids added, gone ones deleted, nothing else touched), report what was done."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipelines.corpus.ingest import load_chunks
from pipelines.corpus.store import ObjectStore
from pipelines.files import held
from pipelines.index.base import IndexReport, sync_index
from pipelines.index.embeddings import Embedder
from pipelines.settings import Settings


@contextmanager
def building(index_dir: str | Path, part: str) -> Iterator[None]:
    """One writer of an index (`part`: keyword, qdrant, graph) at a time, and no snapshot of it (a Bento's)
    while one writes: a copy failed on the files a tantivy commit removes."""
    with held(Path(index_dir) / f".{part}.lock"):
        yield


def build_keyword_index(
    settings: Settings, index_dir: str | Path | None = None, store: ObjectStore | None = None
) -> IndexReport:
    from pipelines.index.keyword import open_keyword_index

    with building(index_dir or settings.run_dir / "index", "keyword"):
        index = open_keyword_index(settings, index_dir)
        return sync_index(index, load_chunks(settings, store))


def build_dense_index(
    settings: Settings, index_dir: str | Path | None = None, store: ObjectStore | None = None,
    embedder: Embedder | None = None, progress: bool = False,
) -> IndexReport:  # fmt: skip
    from pipelines.index.vector import open_dense_index

    with building(index_dir or settings.run_dir / "index", "qdrant"):
        index = open_dense_index(settings, index_dir, embedder, progress)
        try:
            chunks, have = load_chunks(settings, store), index.indexed_ids()
            # checked only when there is something to embed (a run with nothing new loads no model); when
            # the collection held another embedding it is emptied and every chunk is embedded again
            if set(chunks["chunk_id"]) - have and index.check_embedding():
                have = set()
            return sync_index(index, chunks, batch=1024, have=have, salt=index.embedder.name)
        finally:
            index.close()


def build_graph_index(
    settings: Settings, index_dir: str | Path | None = None, store: ObjectStore | None = None
) -> IndexReport:
    from pipelines.index.graph import open_graph, sync_graph

    with building(index_dir or settings.run_dir / "index", "graph"):
        graph = open_graph(settings, index_dir)
        try:
            return sync_graph(graph, load_chunks(settings, store))
        finally:
            graph.close()
