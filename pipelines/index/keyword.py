"""Keyword (BM25) indexes: tantivy on disk (default) or OpenSearch, with the same analysis and query.

Analysis: split on non-alphanumerics (Chinese characters and hiragana a token each, katakana words whole, as
OpenSearch's standard tokenizer splits them: those scripts leave no space between words), lowercase, English
stop words, Snowball English stemming. One analysed field holds the document title and the chunk text
(measured on SciFact train: title folded in 0.697 nDCG@10, a separate title field 0.690, no title 0.680). A
query is the OR of its distinct analysed terms, scored by BM25 (k1 1.2, b 0.75 on both engines).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from pipelines.files import write_atomic
from pipelines.index.base import ScoredChunk
from pipelines.settings import Settings

ANALYZER = "en_bm25"
# bump when the analysis changes: a tantivy index analysed otherwise is emptied by its next sync, which adds
# every chunk again (its terms would not match the queries')
ANALYSIS_VERSION = 2
ANALYSIS_STAMP = "analysis_version"
# alphanumeric runs, as tantivy's simple tokenizer splits (char::is_alphanumeric), but Han and hiragana one
# character at a time and katakana words (with their long-vowel mark) whole, as Unicode word breaking and so
# OpenSearch's standard tokenizer do: the simple tokenizer kept a whole unspaced sentence as one token
_HAN, _KANA = r"\p{Han}\p{Hiragana}", r"\p{Katakana}\x{30FC}"
TOKEN_PATTERN = rf"[{_HAN}]|[{_KANA}]+|[[\p{{Alphabetic}}\p{{N}}]--[{_HAN}{_KANA}]]+"


def indexed_text(title: str | None, text: str) -> str:
    return f"{title}\n{text}" if title else text


def _analyzer():
    import tantivy

    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.regex(TOKEN_PATTERN))
        .filter(tantivy.Filter.remove_long(80))  # bytes: 80 keeps a 40-letter Cyrillic or Greek word
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.stopword("english"))
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


class TantivyIndex:
    backend = "tantivy"

    def __init__(self, path: str | Path) -> None:
        import tantivy

        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.location = str(self.path)
        sb = tantivy.SchemaBuilder()
        sb.add_text_field("chunk_id", stored=True, tokenizer_name="raw")
        sb.add_text_field("text", stored=False, tokenizer_name=ANALYZER, index_option="freq")
        self.schema = sb.build()
        self.index = tantivy.Index(self.schema, path=str(self.path), reuse=True)
        # searches see the index as it was opened (or as this handle last wrote it), not another process's
        # later commits: a reader's chunk table, loaded once, names the same chunks
        self.index.config_reader(reload_policy="Manual")
        self.analyzer = _analyzer()
        self.index.register_tokenizer(ANALYZER, self.analyzer)
        self._tantivy = tantivy

    def _writer(self):
        return self.index.writer(heap_size=64_000_000, num_threads=1)

    def indexed_ids(self) -> set[str]:
        """The chunk ids held; an index analysed by another ANALYSIS_VERSION is emptied first (a writer's
        call: sync_index's), so the sync adds every chunk again."""
        stamp = self.path / ANALYSIS_STAMP
        if not stamp.exists() or stamp.read_text().strip() != str(ANALYSIS_VERSION):
            w = self._writer()
            w.delete_all_documents()
            w.commit()
            w.wait_merging_threads()
            write_atomic(stamp, str(ANALYSIS_VERSION).encode())
        self.index.reload()
        searcher = self.index.searcher()
        n = searcher.num_docs
        if not n:
            return set()
        hits = searcher.search(self._tantivy.Query.all_query(), limit=n, count=False).hits
        return {searcher.doc(addr)["chunk_id"][0] for _, addr in hits}

    def upsert(self, chunks: pd.DataFrame) -> None:
        w = self._writer()
        for cid, title, text in zip(chunks["chunk_id"], chunks["title"], chunks["text"], strict=True):
            w.delete_documents_by_term("chunk_id", cid)  # idempotent re-add after a crash
            w.add_document(self._tantivy.Document(chunk_id=cid, text=indexed_text(title, text)))
        w.commit()
        w.wait_merging_threads()
        self.index.reload()

    def delete(self, chunk_ids: Iterable[str]) -> None:
        w = self._writer()
        for cid in chunk_ids:
            w.delete_documents_by_term("chunk_id", cid)
        w.commit()
        w.wait_merging_threads()
        self.index.reload()

    def terms(self, query: str) -> list[str]:
        return list(dict.fromkeys(self.analyzer.analyze(query)))

    def search(self, query: str, k: int = 100) -> list[ScoredChunk]:
        Q, Occur = self._tantivy.Query, self._tantivy.Occur
        clauses = [
            (Occur.Should, Q.term_query(self.schema, "text", t, index_option="freq"))
            for t in self.terms(query)
        ]
        if not clauses:
            return []
        searcher = self.index.searcher()
        hits = searcher.search(Q.boolean_query(clauses), limit=k, count=False).hits
        return [ScoredChunk(searcher.doc(a)["chunk_id"][0], float(s)) for s, a in hits]


class OpenSearchIndex:
    """The same fields, analysis (snowball English + stop words) and query on OpenSearch (BM25 similarity)."""

    backend = "opensearch"

    def __init__(self, url: str, index: str) -> None:
        from opensearchpy import OpenSearch

        self.client = OpenSearch(hosts=[url], timeout=60)
        self.name, self.location = index, f"{url}/{index}"
        if not self.client.indices.exists(index=index):
            self.client.indices.create(index=index, body=self.mapping())

    @staticmethod
    def mapping() -> dict:
        analyzer = {"type": "custom", "tokenizer": "standard",
                    "filter": ["lowercase", "english_stop", "english_snowball"]}  # fmt: skip
        return {
            "settings": {
                "index": {"similarity": {"default": {"type": "BM25", "k1": 1.2, "b": 0.75}}},
                "analysis": {
                    "filter": {"english_stop": {"type": "stop", "stopwords": "_english_"},
                               "english_snowball": {"type": "snowball", "language": "English"}},
                    "analyzer": {ANALYZER: analyzer},
                },
            },
            "mappings": {"properties": {
                "chunk_id": {"type": "keyword"},
                "text": {"type": "text", "analyzer": ANALYZER},
            }},
        }  # fmt: skip

    def indexed_ids(self) -> set[str]:
        from opensearchpy.helpers import scan

        q = {"query": {"match_all": {}}, "_source": False}
        return {h["_id"] for h in scan(self.client, index=self.name, query=q)}

    def upsert(self, chunks: pd.DataFrame) -> None:
        from opensearchpy.helpers import bulk

        actions = (
            {"_index": self.name, "_id": cid, "_source": {"chunk_id": cid, "text": indexed_text(title, text)}}
            for cid, title, text in zip(chunks["chunk_id"], chunks["title"], chunks["text"], strict=True)
        )
        bulk(self.client, actions, refresh="wait_for")

    def delete(self, chunk_ids: Iterable[str]) -> None:
        from opensearchpy.helpers import bulk

        # a chunk already gone (404) is what was wanted; any other failure (429, 503) leaves it served: raise
        bulk(self.client, ({"_op_type": "delete", "_index": self.name, "_id": c} for c in chunk_ids),
             refresh="wait_for", ignore_status=(404,))  # fmt: skip

    def search(self, query: str, k: int = 100) -> list[ScoredChunk]:
        body = {"size": k, "_source": False, "query": {"match": {"text": {"query": query, "operator": "or"}}}}
        hits = self.client.search(index=self.name, body=body)["hits"]["hits"]
        return [ScoredChunk(h["_id"], float(h["_score"])) for h in hits]


def open_keyword_index(settings: Settings, index_dir: str | Path | None = None):
    """The keyword backend chosen by `settings.keyword_backend`."""
    if settings.keyword_backend == "opensearch":
        return OpenSearchIndex(settings.opensearch_url, settings.opensearch_index)
    return TantivyIndex(Path(index_dir or settings.run_dir / "index") / "keyword")
