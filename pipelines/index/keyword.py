"""Keyword (BM25) indexes: tantivy on disk (default) or OpenSearch, with the same analysis and query.

Analysis: split on non-alphanumerics (Chinese characters and hiragana a token each, katakana words whole, as
OpenSearch's standard tokenizer splits them: those scripts leave no space between words), lowercase, English
stop words, Snowball English stemming. One analysed field holds the document title and the chunk text
(measured on SciFact train: title folded in 0.697 nDCG@10, a separate title field 0.690, no title 0.680). A
query is the OR of its distinct analysed terms, scored by BM25 (k1 1.2, b 0.75 on both engines). The
analysis is tantivy's analyzer on both engines: OpenSearch is given its terms, space-joined (OpenSearchIndex).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pandas as pd

from pipelines.files import write_atomic
from pipelines.index.base import IndexMissing, ScoredChunk, require_index
from pipelines.settings import Settings

log = logging.getLogger(__name__)

ANALYZER = "en_bm25"
# bump when the analysis changes: an index analysed otherwise is emptied by its next sync (tantivy), or made
# anew (OpenSearch, whose mapping's _meta records it), which adds every chunk again (its terms would not match
# the queries')
ANALYSIS_VERSION = 3  # 3: text and queries NFKC-normalised
ANALYSIS_STAMP = "analysis_version"
# alphanumeric runs, as tantivy's simple tokenizer splits (char::is_alphanumeric), but Han and hiragana one
# character at a time and katakana words (with their long-vowel mark) whole, as Unicode word breaking and so
# OpenSearch's standard tokenizer do: the simple tokenizer kept a whole unspaced sentence as one token
_HAN, _KANA = r"\p{Han}\p{Hiragana}", r"\p{Katakana}\x{30FC}"
TOKEN_PATTERN = rf"[{_HAN}]|[{_KANA}]+|[[\p{{Alphabetic}}\p{{N}}]--[{_HAN}{_KANA}]]+"


# OpenSearch: the analyzer of the field holding the terms analysed here; the most hits a search may ask for
# (index.max_result_window, 10,000 by default: more is refused)
TERMS_ANALYZER = "analysed_terms"
MAX_RESULT_WINDOW = 10_000
# OpenSearch refuses a query of more clauses than indices.query.bool.max_clause_count (1,024 by default) with
# a 400: a question of a pasted page failed there. Both engines read a query's first 1,024 distinct terms.
MAX_QUERY_TERMS = 1_024


def opensearch_id(chunk_id: str) -> str:
    """A chunk's OpenSearch _id: a hash of the chunk id (which a field keeps). OpenSearch refuses an _id over
    512 bytes, and tantivy and Qdrant take one of any length (a deep path's): one corpus for all."""
    return hashlib.sha256(chunk_id.encode()).hexdigest()


def without_userinfo(url: str) -> str:
    """`url` less any `user:pass@`: fit to print or report."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def normalised(text: str) -> str:
    """NFKC: one form for what Unicode writes several ways, as search engines fold it. Accents typed as
    separate marks (NFD, from macOS and many PDF extractions) split "naïve" into "nai" + "ve"; fullwidth
    "ＤＮＡ" (CJK input) and ligatures ("ﬁbrosis", from PDFs) matched no query typed plainly."""
    return unicodedata.normalize("NFKC", text)


def indexed_text(title: str | None, text: str) -> str:
    return normalised(f"{title}\n{text}" if title else text)


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


class _Analysed:
    """The query analysis both engines share: the distinct terms of the tantivy analyzer, in order."""

    analyzer: Any

    def terms(self, query: str) -> list[str]:
        return list(dict.fromkeys(self.analyzer.analyze(normalised(query))))[:MAX_QUERY_TERMS]


class TantivyIndex(_Analysed):
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

    @property
    def stale(self) -> bool:
        """Analysed by another ANALYSIS_VERSION: sync_index makes it anew (replace_all)."""
        stamp = self.path / ANALYSIS_STAMP
        return not stamp.exists() or stamp.read_text().strip() != str(ANALYSIS_VERSION)

    def indexed_ids(self) -> set[str]:
        self.index.reload()
        searcher = self.index.searcher()
        n = searcher.num_docs
        if not n:
            return set()
        hits = searcher.search(self._tantivy.Query.all_query(), limit=n, count=False).hits
        return {searcher.doc(addr)["chunk_id"][0] for _, addr in hits}

    def replace_all(self, chunks: pd.DataFrame) -> None:
        """Hold exactly `chunks`, analysed anew, in one commit: a reader, or a build stopped half-way, sees
        the old index whole or the new one whole, never an emptied one (the stamp is written after)."""
        w = self._writer()
        w.delete_all_documents()
        for cid, title, text in zip(chunks["chunk_id"], chunks["title"], chunks["text"], strict=True):
            w.add_document(self._tantivy.Document(chunk_id=cid, text=indexed_text(title, text)))
        w.commit()
        w.wait_merging_threads()
        write_atomic(self.path / ANALYSIS_STAMP, str(ANALYSIS_VERSION).encode())
        self.index.reload()

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

    def search(self, query: str, k: int = 100) -> list[ScoredChunk]:
        Q, Occur = self._tantivy.Query, self._tantivy.Occur
        clauses = [
            (Occur.Should, Q.term_query(self.schema, "text", t, index_option="freq"))
            for t in self.terms(query)
        ]
        if not clauses or k < 1:  # tantivy panics on a limit of 0 (an exception no `except Exception` takes)
            return []
        searcher = self.index.searcher()
        hits = searcher.search(Q.boolean_query(clauses), limit=k, count=False).hits
        return [ScoredChunk(searcher.doc(a)["chunk_id"][0], float(s)) for s, a in hits]


class OpenSearchIndex(_Analysed):
    """The same analysis and query on OpenSearch (BM25 similarity). OpenSearch's own analyzers split text
    otherwise (its standard tokenizer keeps `0.05`, `patient's`, `snake_case` and `1,000` whole), so the text
    is analysed here by the tantivy index's analyzer and its terms, space-joined, go into a field OpenSearch
    only splits on whitespace; a query is the OR of its distinct terms on that field."""

    backend = "opensearch"

    def __init__(self, url: str, index: str, user: str | None = None, password: str | None = None,
                 must_exist: bool = False, ca_certs: str | None = None) -> None:  # fmt: skip
        from opensearchpy import OpenSearch

        # credentials in the URL (user:pass@) still work, but are never shown: location is printed, reported
        auth = (user, password or "") if user else None
        tls: dict[str, Any] = {"ca_certs": ca_certs, "verify_certs": True} if ca_certs else {}  # a private CA
        self.client = OpenSearch(hosts=[url], http_auth=auth, timeout=60, **tls)
        self.name, self.location = index, f"{without_userinfo(url)}/{index}"
        self.analyzer = _analyzer()
        if not self.client.indices.exists(index=index):
            if must_exist:  # to search: an empty index made on the spot would answer every query with nothing
                raise IndexMissing("keyword", self.location)
            self._create()
        elif self._version() != ANALYSIS_VERSION:
            log.warning("%s was analysed otherwise (not analysis version %s): the next keyword index build "
                        "makes it anew", self.location, ANALYSIS_VERSION)  # fmt: skip

    def _create(self) -> None:
        from opensearchpy.exceptions import RequestError

        try:
            self.client.indices.create(index=self.name, body=self.mapping())
        except RequestError as e:  # another process created it between the check and here: it is the same
            if e.error != "resource_already_exists_exception":
                raise

    def _version(self) -> int | None:
        """The ANALYSIS_VERSION the index was made for (None: made before it was recorded)."""
        mappings = self.client.indices.get_mapping(index=self.name)
        meta = next(iter(mappings.values()))["mappings"].get("_meta", {})  # keyed by the index's own name
        return meta.get(ANALYSIS_STAMP)

    @staticmethod
    def mapping() -> dict:
        return {
            "settings": {
                "index": {"similarity": {"default": {"type": "BM25", "k1": 1.2, "b": 0.75}}},
                "analysis": {"analyzer": {TERMS_ANALYZER: {"type": "custom", "tokenizer": "whitespace",
                                                           "filter": []}}},
            },
            "mappings": {
                "_meta": {ANALYSIS_STAMP: ANALYSIS_VERSION},
                "properties": {
                    "chunk_id": {"type": "keyword"},
                    "doc_id": {"type": "keyword"},
                    "text": {"type": "text", "index": False},  # title and text, shown, not searched
                    "terms": {"type": "text", "analyzer": TERMS_ANALYZER, "index_options": "freqs"},
                },
            },
        }  # fmt: skip

    def indexed_ids(self) -> set[str]:
        """The chunk ids held; an index made for another ANALYSIS_VERSION (or before it was recorded) is made
        anew first (a writer's call: sync_index's), so the sync adds every chunk again."""
        from opensearchpy.exceptions import NotFoundError
        from opensearchpy.helpers import scan

        if self._version() != ANALYSIS_VERSION:
            # the analysis of an index cannot change in place (another writer may have deleted it first)
            with contextlib.suppress(NotFoundError):
                self.client.indices.delete(index=self.name)
            self._create()
            return set()
        q = {"query": {"match_all": {}}, "_source": ["chunk_id"]}
        return {h["_source"]["chunk_id"] for h in scan(self.client, index=self.name, query=q)}

    def upsert(self, chunks: pd.DataFrame) -> None:
        from opensearchpy.helpers import bulk

        def action(cid: str, doc_id: str, text: str) -> dict:
            terms = " ".join(self.analyzer.analyze(text))  # every occurrence: the term frequencies
            source = {"chunk_id": cid, "doc_id": doc_id, "text": text, "terms": terms}
            return {"_index": self.name, "_id": opensearch_id(cid), "_source": source}

        cols = zip(chunks["chunk_id"], chunks["doc_id"], chunks["title"], chunks["text"], strict=True)
        bulk(self.client, (action(c, d, indexed_text(ti, te)) for c, d, ti, te in cols), refresh="wait_for")

    def delete(self, chunk_ids: Iterable[str]) -> None:
        from opensearchpy.helpers import bulk

        # a chunk already gone (404) is what was wanted; any other failure (429, 503) leaves it served: raise
        actions = ({"_op_type": "delete", "_index": self.name, "_id": opensearch_id(c)} for c in chunk_ids)
        bulk(self.client, actions, refresh="wait_for", ignore_status=(404,))

    def search(self, query: str, k: int = 100) -> list[ScoredChunk]:
        terms = self.terms(query)
        if not terms:
            return []
        body = {
            "size": min(k, MAX_RESULT_WINDOW),
            "_source": ["chunk_id"],
            "query": {"bool": {"should": [{"term": {"terms": t}} for t in terms]}},
        }
        hits = self.client.search(index=self.name, body=body)["hits"]["hits"]
        return [ScoredChunk(h["_source"]["chunk_id"], float(h["_score"])) for h in hits]


def open_keyword_index(settings: Settings, index_dir: str | Path | None = None, must_exist: bool = False):
    """The keyword backend chosen by `settings.keyword_backend`; `must_exist`: an embedded index not built
    is an IndexMissing (to search), not a new empty one (to build)."""
    if settings.keyword_backend == "opensearch":
        password = settings.opensearch_password
        return OpenSearchIndex(
            settings.opensearch_url, settings.opensearch_index, settings.opensearch_user or None,
            password.get_secret_value() if password is not None else None, must_exist,
            settings.opensearch_ca_certs or None,
        )  # fmt: skip
    path = Path(index_dir or settings.run_dir / "index") / "keyword"
    return TantivyIndex(require_index(path, "keyword", must_exist))
