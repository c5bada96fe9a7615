"""The three indexes on their real embedded engines (tantivy, Qdrant local mode, ladybug) and the embedder."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.corpus.ingest import ingest_corpus, load_chunks
from pipelines.corpus.store import LocalStore
from pipelines.index.base import sync_index
from pipelines.index.build import build_dense_index, build_graph_index, build_keyword_index
from pipelines.index.embeddings import get_embedder
from pipelines.index.graph import LadybugGraph, graph_search
from pipelines.index.keyword import TantivyIndex
from pipelines.index.vector import open_dense_index
from pipelines.settings import Settings


def frame(rows: dict[str, str], titles: dict[str, str] | None = None) -> pd.DataFrame:
    titles = titles or {}
    return pd.DataFrame({"chunk_id": [f"{d}#0000" for d in rows], "doc_id": list(rows),
                         "title": [titles.get(d, "") for d in rows], "text": list(rows.values()),
                         "source": "test"})  # fmt: skip


def test_tantivy_analysis_stems_lowercases_and_drops_stop_words(tmp_path):
    idx = TantivyIndex(tmp_path / "kw")
    sync_index(
        idx, frame({"a": "The runners were RUNNING quickly through the forests.", "b": "A quiet library."})
    )
    assert idx.terms("The Running forests") == ["run", "forest"]
    assert [h.doc_id for h in idx.search("run forest")] == ["a"]
    assert idx.search("the and of with") == []  # only stop words (the Lucene English list)
    assert idx.search("!!! (( ::") == []  # query syntax characters are not an error


def test_chinese_japanese_and_long_cyrillic_words_are_indexed_and_found(tmp_path):
    """The simple tokenizer kept an unspaced Chinese sentence as one token, dropped past 40 bytes: its chunk
    held no term at all; a 22-letter Russian word (44 bytes) was dropped too."""
    idx = TantivyIndex(tmp_path / "kw")
    sync_index(idx, frame({
        "zh": "阿司匹林可以降低心脏病发作的风险和中风的风险。",
        "ja": "東京タワーはとても高いです。",
        "ru": "Высокопроизводительный компьютер для науки.",
        "en": "Aspirin lowers the risk of heart attacks.",
    }))  # fmt: skip
    assert idx.search("阿司匹林")[0].doc_id == "zh" and idx.search("東京タワー")[0].doc_id == "ja"
    assert [h.doc_id for h in idx.search("высокопроизводительный")] == ["ru"]
    assert idx.terms("The RUNNING forests") == ["run", "forest"]  # English as before


def test_text_unicode_writes_several_ways_matches_either_way(tmp_path):
    """Accents typed as separate marks (NFD, from macOS and PDF extraction) split a word in two, and
    fullwidth letters (CJK input) or a PDF's ligatures matched no query typed plainly, nor the other way."""
    import unicodedata

    nfd = unicodedata.normalize("NFD", "Müller wrote about naïve Gödel numbering.")
    idx = TantivyIndex(tmp_path / "kw")
    sync_index(idx, frame({"nfd": nfd, "wide": "ＤＮＡ repair in yeast.", "lig": "Pulmonary \ufb01brosis.",
                           "plain": "COVID-19 vaccines and their efficacy."}))  # fmt: skip
    for query, doc in [("Müller naïve", "nfd"), ("Gödel", "nfd"), ("DNA", "wide"), ("fibrosis", "lig"),
                       ("ＣＯＶＩＤ－１９", "plain"), ("e\ufb03cacy", "plain")]:  # fmt: skip
        assert [h.doc_id for h in idx.search(query)] == [doc], query
        assert [h.doc_id for h in idx.search(unicodedata.normalize("NFD", query))] == [doc], query


def test_an_index_analysed_by_another_version_is_rebuilt_by_its_next_sync(tmp_path):
    from pipelines.index import keyword

    chunks = frame({"a": "alpha apples", "b": "beta bananas"})
    assert sync_index(TantivyIndex(tmp_path / "kw"), chunks).added == 2
    assert sync_index(TantivyIndex(tmp_path / "kw"), chunks).added == 0
    (tmp_path / "kw" / keyword.ANALYSIS_STAMP).write_text(str(keyword.ANALYSIS_VERSION - 1))
    report = sync_index(TantivyIndex(tmp_path / "kw"), chunks)
    assert (report.added, report.deleted) == (2, 0) and TantivyIndex(tmp_path / "kw").search("apples")


def test_a_rebuild_for_a_new_analysis_stopped_half_way_leaves_the_old_index_whole(tmp_path, monkeypatch):
    """The rebuild emptied the index in a commit of its own, then refilled it batch by batch: a reader saw
    nothing, and a build stopped half-way left part of the chunks, stamped current."""
    from pipelines.index import keyword

    chunks = frame({f"d{i}": f"word{i} apples" for i in range(50)})
    sync_index(TantivyIndex(tmp_path / "kw"), chunks)
    (tmp_path / "kw" / keyword.ANALYSIS_STAMP).write_text(str(keyword.ANALYSIS_VERSION - 1))
    calls, real = [], keyword.indexed_text

    def stopped(title, text):
        calls.append(text)
        if len(calls) == 30:
            raise KeyboardInterrupt("stopped mid-rebuild")
        return real(title, text)

    monkeypatch.setattr(keyword, "indexed_text", stopped)
    with pytest.raises(KeyboardInterrupt):
        sync_index(TantivyIndex(tmp_path / "kw"), chunks, batch=10)
    monkeypatch.setattr(keyword, "indexed_text", real)
    reader = TantivyIndex(tmp_path / "kw")
    assert reader.stale and len(reader.indexed_ids()) == 50 and reader.search("word40")
    assert sync_index(reader, chunks).added == 50 and not reader.stale and len(reader.indexed_ids()) == 50


def test_tantivy_sync_is_incremental_and_persistent(tmp_path):
    idx = TantivyIndex(tmp_path / "kw")
    r1 = sync_index(idx, frame({"a": "alpha apples", "b": "beta bananas"}))
    r2 = sync_index(idx, frame({"a": "alpha apples", "b": "beta bananas"}))
    assert (r1.added, r2.added, r2.deleted, r2.unchanged) == (2, 0, 0, 2)
    r3 = sync_index(idx, frame({"a": "alpha apples", "c": "gamma grapes"}))
    assert (r3.added, r3.deleted) == (1, 1)
    reopened = TantivyIndex(tmp_path / "kw")
    assert reopened.indexed_ids() == {"a#0000", "c#0000"}
    assert reopened.search("bananas") == [] and reopened.search("grapes")[0].doc_id == "c"


def test_a_reader_sees_the_chunks_it_loaded_while_another_handle_rebuilds(tmp_path):
    """A retriever loads its chunk table once, but tantivy's reader took up every later commit: after a
    re-ingest, search named new chunk ids the table lacked and returned hits with no text."""
    from pipelines.rag.retrieve import Retriever

    v1 = frame({"a": "Aspirin lowers heart attack risk.", "b": "Statins lower cholesterol."})
    sync_index(TantivyIndex(tmp_path / "kw"), v1)
    reader = Retriever(v1, keyword=TantivyIndex(tmp_path / "kw"))
    v2 = v1.assign(
        chunk_id=["a#0001", "b#0000"], text=["Aspirin lowers heart attack risk, revised.", v1.text[1]]
    )
    sync_index(TantivyIndex(tmp_path / "kw"), v2)  # the writer, as another process
    time.sleep(1.5)  # tantivy's watcher looks for new commits every 500 ms
    (hit,) = reader.search("aspirin heart", mode="bm25", k=1)
    assert (hit.chunk_id, hit.text) == ("a#0000", "Aspirin lowers heart attack risk.")
    (hit,) = Retriever(v2, keyword=TantivyIndex(tmp_path / "kw")).search("aspirin heart", mode="bm25", k=1)
    assert hit.chunk_id == "a#0001"
    # a server engine has no snapshot: a chunk the table lacks is left out, not shown without its text
    reader.chunks = reader.chunks.drop(index="a#0000")
    assert [h.chunk_id for h in reader.search("aspirin heart statins", mode="bm25", k=2)] == ["b#0000"]


def test_embedder_contract_normalised_rows_in_input_order():
    emb = get_embedder("minilm")
    texts = ["a cat sat on the mat", "quantum chromodynamics of quarks and gluons " * 5, "a kitten on a rug"]
    v = emb.embed(texts, batch_size=2)
    assert v.shape == (3, emb.dim) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[2] > v[0] @ v[1]  # order preserved despite length-sorted batching
    assert np.allclose(emb.embed([texts[1]])[0], v[1], atol=1e-5)
    assert emb.embed([]).shape == (0, emb.dim)


def test_openvino_minilm_gives_torch_fp32_vectors_also_to_concurrent_callers():
    from concurrent.futures import ThreadPoolExecutor

    from sentence_transformers import SentenceTransformer, models

    from pipelines.index.embeddings import MiniLMEmbedder, _OpenVINOEncoder

    emb = get_embedder("minilm")
    assert emb.backend == "openvino"  # the default on a CPU
    texts = [f"claim {i}: " + "vitamin D lowers the risk of hip fracture in older women. " * (1 + i % 7)
             for i in range(12)] + ["a kitten on a rug", "gluons " * 400]  # fmt: skip
    ref = MiniLMEmbedder(backend="torch", precision="fp32").embed(texts)
    assert ((emb.embed(texts, batch_size=3) * ref).sum(1)).min() > 0.999
    # one queue, one callback: callers running at once must each get their own texts' vectors
    parts = [texts[i::4] for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda p: emb.embed(p, batch_size=2), parts))
    for i, v in enumerate(got):
        assert ((v * ref[i::4]).sum(1)).min() > 0.999
    # only transformer -> mean pooling models run there; asking for it with another one is refused
    cls = SentenceTransformer(modules=[emb._model[0], models.Pooling(emb.dim, pooling_mode="cls")])
    assert _OpenVINOEncoder.fits(emb._model) and not _OpenVINOEncoder.fits(cls)


def test_int8_minilm_is_calibrated_once_cached_and_ranks_like_fp32(tmp_path, capfd):
    from pipelines.index.embeddings import MiniLMEmbedder

    passages = ["Vitamin D supplements lower the risk of hip fracture in older women.",
                "Diesel engines need their oil changed every 10,000 kilometres.",
                "The kitten slept on a warm rug by the fire.",
                "Interest rates rose for the third time this year, the central bank said.",
                "Mutations in BRCA1 raise the lifetime risk of breast cancer."]  # fmt: skip
    queries = ["do vitamins prevent broken hips", "car maintenance schedule", "a cat napping",
               "monetary policy tightening", "hereditary cancer genes"]  # fmt: skip
    ref = MiniLMEmbedder(backend="torch", precision="fp32")
    capfd.readouterr()
    int8 = MiniLMEmbedder(precision="int8", cache_dir=tmp_path)
    # NNCF's progress bars went to stdout: the first `retrieval ingest` printed them before its JSON
    assert capfd.readouterr().out == ""
    assert int8.name != ref.name and int8.backend == "openvino" and int8.precision == "int8"
    cached = sorted(tmp_path.iterdir())
    assert [p.suffix for p in cached] == [".bin", ".xml"] and not any(p.name.startswith(".") for p in cached)
    p8, q8 = int8.embed(passages), int8.embed(queries)
    p32 = ref.embed(passages)
    assert (p8 * p32).sum(1).min() > 0.97  # near the float vectors, not equal to them
    assert ((q8 @ p8.T).argmax(1) == np.arange(len(queries))).all()
    # a second instance reads the calibrated model instead of quantizing again
    mtimes = [p.stat().st_mtime_ns for p in cached]
    again = MiniLMEmbedder(precision="int8", cache_dir=tmp_path)
    assert [p.stat().st_mtime_ns for p in cached] == mtimes
    assert np.allclose(again.embed(passages), p8, atol=1e-5)
    with pytest.raises(ValueError, match="OpenVINO on a CPU"):
        MiniLMEmbedder(precision="int8", backend="torch")


def test_the_int8_embedder_has_one_name_whichever_way_it_is_made(tmp_path, monkeypatch):
    """The name picks the Qdrant collection: an index built with the embedder object and one opened lazily
    by its key must be the same collection (the object once had the int8 suffix twice)."""
    from pipelines.index.embeddings import LazyEmbedder, MiniLMEmbedder, MiniLMInt8Embedder

    monkeypatch.setenv("SM_MODEL_CACHE_DIR", str(tmp_path))
    made = MiniLMInt8Embedder()
    assert made.name == LazyEmbedder("minilm-int8").name == MiniLMEmbedder(precision="int8").name


def test_qdrant_local_sync_search_and_payload(tmp_path):
    settings = Settings(run_dir=tmp_path)
    idx = open_dense_index(settings, tmp_path / "ix")
    try:
        rows = {
            "cats": "Felines enjoy sleeping in warm sunlight.",
            "cars": "Diesel engines need regular oil changes.",
        }
        r = sync_index(idx, frame(rows))
        assert r.added == 2 and sync_index(idx, frame(rows)).added == 0
        assert idx.search("kittens napping in the sun", 2)[0].doc_id == "cats"
        recs, _ = idx.client.scroll(idx.collection, limit=10, with_payload=True)
        assert {tuple(sorted(p.payload)) for p in recs} == {("chunk_id", "doc_id", "source", "text", "title")}
        sync_index(idx, frame({"cars": rows["cars"]}))
        assert idx.indexed_ids() == {"cars#0000"}
    finally:
        idx.close()


def test_graph_expansion_reaches_a_chunk_through_a_related_entity(tmp_path):
    rows = {
        "d1": "The BRCA1 gene regulates DNA repair; PARP inhibitors exploit its loss.",
        "d2": "BRCA1 mutations and PARP inhibitors: a synthetic lethality story.",
        "d3": "PARP inhibitors such as olaparib were approved for ovarian cancer.",
        "d4": "Olaparib dosing schedules in a phase III trial of PARP inhibitors.",
        "d5": "Gardening tips: water tomatoes in the morning.",
        "d6": "Tomatoes and basil grow well together in the garden.",
    }
    g = LadybugGraph(tmp_path / "g" / "kg.lbug")
    try:
        from pipelines.index.graph import sync_graph

        chunks = frame(rows)
        assert sync_graph(g, chunks).added == 6 and not sync_graph(g, chunks).did_work
        assert g.entities(["brca1", "parp inhibitor", "nothing"]) == {"brca1": 2, "parp inhibitor": 4}
        hits = graph_search(g, "What does BRCA1 do?", n_chunks=len(rows))
        docs = [h.doc_id for h in hits]
        assert docs[:2] == ["d1", "d2"] or set(docs[:2]) == {"d1", "d2"}
        assert "d3" in docs  # no BRCA1 there: reached via BRCA1 -RELATED-> parp inhibitor
        assert "d5" not in docs and "d6" not in docs
        mentions = g.mentions(["parp inhibitor"])
        assert set(mentions["chunk_id"]) == {"d1#0000", "d2#0000", "d3#0000", "d4#0000"}  # provenance
    finally:
        g.close()


def test_redaction_placeholders_are_no_graph_entities(tmp_path):
    """Ingest leaves <EMAIL_ADDRESS> where an address was: the graph made it an entity ("email_address",
    "email address") and tied unrelated documents together through it."""
    from pipelines.index.graph import extract_graph

    docs = tmp_path / "docs"
    docs.mkdir()
    for i, topic in enumerate(["tomato blight", "tax returns", "kernel panics"]):
        (docs / f"d{i}.txt").write_text(f"Questions about {topic}: write to help{i}@example.org any day.")
    settings, store = Settings(run_dir=tmp_path / "run"), LocalStore(tmp_path / "store")
    ingest_corpus(settings, str(docs), store=store)
    chunks = load_chunks(settings, store)
    assert chunks["text"].str.contains("<EMAIL_ADDRESS>").all()  # what ingest leaves
    graph = extract_graph(chunks)
    assert not [n for n in graph["entity"]["name"] if "email" in n], graph["entity"]
    assert graph["related"].empty and graph["mentions"].empty


def test_a_graph_build_that_fails_leaves_the_last_graph_whole(tmp_path, monkeypatch):
    """A rebuild dropped the graph before it loaded the new one: a build that failed half way (a kill, a
    full disk, a bad table) left a graph with chunks and no entities, and graph search found nothing."""
    from pipelines.index import graph as graph_module
    from pipelines.index.graph import extract_graph, graph_fingerprint, sync_graph

    chunks = frame({f"d{i}": f"BRCA1 mutations and PARP inhibitors, case {i}." for i in range(4)})
    more = frame({f"d{i}": f"BRCA1 mutations and PARP inhibitors, case {i}." for i in range(6)})
    g = LadybugGraph(tmp_path / "kg.lbug")
    try:
        assert sync_graph(g, chunks).did_work and g.entities(["brca1"]) == {"brca1": 4}
        bad = extract_graph(more)
        bad["mentions"].loc[len(bad["mentions"])] = ["d0#0000", "no such entity"]  # the engine refuses it
        with pytest.raises(RuntimeError):
            g.replace(bad, graph_fingerprint(more["chunk_id"]))
        assert g.entities(["brca1"]) == {"brca1": 4}  # the last graph, whole
        assert [h.doc_id for h in graph_search(g, "BRCA1?", n_chunks=4)] != []
        assert sorted(p.name for p in tmp_path.iterdir()) == ["kg.lbug"]  # the failed build is gone
        report = sync_graph(g, more)  # the next run builds it
        assert report.did_work and g.entities(["brca1"]) == {"brca1": 6}
        assert not sync_graph(g, more).did_work
        # a change of the extraction rules (GRAPH_VERSION) rebuilds the same chunk set
        monkeypatch.setattr(graph_module, "GRAPH_VERSION", graph_module.GRAPH_VERSION + 1)
        assert sync_graph(g, more).did_work
    finally:
        g.close()
    g = LadybugGraph(tmp_path / "kg.lbug")  # another process opens what the last build left
    try:
        assert g.entities(["brca1"]) == {"brca1": 6} and g.indexed_ids() == set(more["chunk_id"])
    finally:
        g.close()


@pytest.mark.parametrize(
    ("text", "entity"),
    [("BRCA1-associated breast cancer", "brca1"), ("COVID-19-associated coagulopathy", "covid-19"),
     ("the well-characterised-BRCA1 mutation", "brca1"), ("IL-6 rises", "il-6"), ("anti-TNF therapy", "tnf")],
)  # fmt: skip
def test_an_acronym_in_a_hyphenated_word_is_the_acronym_alone(text, entity):
    from pipelines.index.entities import RuleEntityExtractor

    found = RuleEntityExtractor().extract(text)
    assert entity in found and not any(e.endswith("-") or e.startswith("-") for e in found)


def test_a_title_case_heading_is_no_entity_but_its_phrases_are():
    from pipelines.index.entities import MAX_BYTES, RuleEntityExtractor

    heading = (
        "We read it. In The Annual Review Of Modern Cardiology And Vascular Medicine Across Northern "
        "European Hospitals During The Past Twenty Years the rates fell."
    )
    found = RuleEntityExtractor().extract(heading)
    assert "vascular medicine" in found and "northern european hospital" in found
    assert all(len(e.encode()) <= MAX_BYTES and e.count(" ") < 8 for e in found)
    assert not any(e.startswith("the annual review of modern") for e in found)


def test_nebula_refuses_vertex_ids_its_space_cannot_hold_before_clearing_it():
    from pipelines.index.graph import VID_BYTES, NebulaGraph, extract_graph

    def chunks(doc_id):
        return pd.DataFrame(
            {"chunk_id": [f"{doc_id}#{i}" for i in range(3)], "doc_id": doc_id, "title": "",
             "text": ["BRCA1 and TP53 in tumours."] * 3}
        )  # fmt: skip

    NebulaGraph.check_ids(extract_graph(chunks("notes/a.txt")))
    deep = "/".join(["folder"] * 40) + "/a.txt"  # 286 bytes
    with pytest.raises(ValueError, match=f"longer than NebulaGraph's {VID_BYTES} bytes"):
        NebulaGraph.check_ids(extract_graph(chunks(deep)))


def test_nebula_string_literals_hold_no_raw_line_break():
    """nGQL's lexer takes no raw line break inside a string literal: a file name holding one failed the
    INSERT of the whole batch. Quotes and backslashes stay escaped (no statement can be closed early)."""
    from pipelines.index.graph import NebulaGraph

    lit = NebulaGraph._q('notes/line\nbreak\r\t"o\\x".txt')
    assert lit == '"notes/line\\nbreak\\r\\t\\"o\\\\x\\".txt"'
    assert "\n" not in lit and "\r" not in lit and "\t" not in lit


@pytest.fixture(scope="module")
def pii_indexes(tmp_path_factory):
    root = tmp_path_factory.mktemp("pii")
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "memo.txt").write_text(
        "Vendor onboarding memo. Billing contact: Jane Roe, jane.roe@acme-billing.com, phone 415-555-0199. "
        "Corporate card 5500 0000 0000 0004 is used for the Qdrant Cloud invoice. "
        "Tantivy and Qdrant index it."
    )
    (corpus / "other.txt").write_text(
        "Tantivy, Qdrant Cloud and Ladybug Graph power the Hybrid Search stack."
    )
    settings = Settings(run_dir=root / "run")
    store = LocalStore(root / "store")
    ingest_corpus(settings, str(corpus), store=store)
    build_keyword_index(settings, root / "ix", store)
    build_dense_index(settings, root / "ix", store)
    build_graph_index(settings, root / "ix", store)
    return settings, root, store


def test_pii_appears_in_no_index(pii_indexes):
    settings, root, store = pii_indexes
    secrets = ["jane.roe@acme-billing.com", "415-555-0199", "5500 0000 0000 0004", "5500000000000004"]
    assert not any(s in " ".join(load_chunks(settings, store)["text"]) for s in secrets)
    kw = TantivyIndex(root / "ix" / "keyword")
    for term in ["acme", "0199", "5500", "0004", "555"]:  # tokens of the e-mail, phone and card
        assert kw.search(term) == [], term
    assert kw.search("Tantivy") and kw.search("billing contact")  # the index does hold the rest
    dense = open_dense_index(settings, root / "ix")
    try:
        recs, _ = dense.client.scroll(dense.collection, limit=100, with_payload=True)
        payload = " ".join(str(r.payload) for r in recs)
        assert "EMAIL_ADDRESS" in payload and not any(s in payload for s in secrets)
    finally:
        dense.close()
    g = LadybugGraph(root / "ix" / "graph" / "kg.lbug")
    try:
        names = " ".join(g._df("MATCH (e:Entity) RETURN e.name AS n")["n"])
        assert names and not any(s in names for s in ["acme", "0199", "5500", "jane.roe"])
    finally:
        g.close()
    for path in (root / "ix").rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert not any(s.encode() in blob for s in secrets), path


def test_overlapping_dense_searches_restore_the_blas_threads_they_found():
    """The one-thread BLAS limit around a local Qdrant search is process-wide: two searches in flight at once
    (concurrent /v1/rag) enter and leave it interleaved, and must neither lift the limit while one still
    runs nor leave BLAS at one thread after both."""
    from threadpoolctl import threadpool_info

    from pipelines.index.vector import _one_blas_thread

    def blas() -> list[int]:
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas()
    if not before or max(before) == 1:
        pytest.skip("BLAS runs one thread here: nothing to restore")
    a, b = _one_blas_thread(), _one_blas_thread()
    a.__enter__()
    b.__enter__()
    a.__exit__(None, None, None)
    assert blas() == [1] * len(before)  # b still searching
    b.__exit__(None, None, None)
    assert blas() == before


class OtherEmbedding:
    """The static model's vectors turned by a fixed rotation, under the static model's name: what int8 MiniLM
    calibrated on another CPU, or an upgraded library, gives under an unchanged name."""

    def __init__(self) -> None:
        self.base = get_embedder("static")
        self.name, self.dim = self.base.name, self.base.dim
        turn, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(self.dim, self.dim)))
        self.turn = turn.astype(np.float32)

    def embed(self, texts, batch_size=None, progress=False) -> np.ndarray:
        return self.base.embed(texts) @ self.turn


def test_new_chunks_are_never_added_next_to_vectors_of_another_embedding(tmp_path):
    settings = Settings(run_dir=tmp_path / "run")
    corpus, store, ix = tmp_path / "corpus", LocalStore(tmp_path / "store"), tmp_path / "ix"
    corpus.mkdir()
    static, other = get_embedder("static"), OtherEmbedding()

    def add(name: str, text: str, embedder):
        (corpus / name).write_text(text)
        ingest_corpus(settings, str(corpus), store=store)
        return build_dense_index(settings, ix, store, embedder=embedder)

    assert add("cats.txt", "Felines enjoy sleeping in warm sunlight.", static).added == 1
    r = add("cars.txt", "Diesel engines need regular oil changes.", other)
    assert (r.added, r.unchanged, r.total) == (2, 0, 2)  # the cat chunk embedded again, not only the new one
    assert add("tea.txt", "Green tea is steeped at eighty degrees.", other).added == 1  # the same: new only
    idx = open_dense_index(settings, ix, other)
    try:
        assert idx.probe_cosine() == pytest.approx(1.0, abs=1e-4)
        assert idx.search("kittens napping in the sun", 1)[0].doc_id == "cats.txt"
        idx.embedder = static
        assert idx.probe_cosine() < 0.999
    finally:
        idx.close()


def test_a_collection_written_before_probes_were_kept_is_embedded_again_once(tmp_path):
    settings = Settings(run_dir=tmp_path / "run")
    corpus, store, ix = tmp_path / "corpus", LocalStore(tmp_path / "store"), tmp_path / "ix"
    corpus.mkdir()
    (corpus / "cats.txt").write_text("Felines enjoy sleeping in warm sunlight.")
    ingest_corpus(settings, str(corpus), store=store)
    old = open_dense_index(settings, ix, OtherEmbedding())
    try:
        old._probed = True  # as the code before probes wrote it: vectors and no probe
        sync_index(old, load_chunks(settings, store))
        assert old.probe_cosine() is None
    finally:
        old.close()
    (corpus / "cars.txt").write_text("Diesel engines need regular oil changes.")
    ingest_corpus(settings, str(corpus), store=store)
    static = get_embedder("static")
    assert build_dense_index(settings, ix, store, embedder=static).added == 2
    (corpus / "tea.txt").write_text("Green tea is steeped at eighty degrees.")
    ingest_corpus(settings, str(corpus), store=store)
    assert build_dense_index(settings, ix, store, embedder=static).added == 1


# --- the server backends, OpenSearch and Qdrant: they cannot run here (no Docker), so their real clients talk
# to FakeServer, which answers as the servers do (status, body) and records every request


class FakeServer:
    """An HTTP server on a free local port: `handle(method, path, query, body)` gives (status, JSON or None);
    `requests` holds (method, path, headers (names in lower case), body) of each request."""

    def __init__(self, handle, tls: tuple[Path, Path] | None = None) -> None:
        import ssl
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qs, urlsplit

        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = urlsplit(self.path)
                headers = {k.lower(): v for k, v in self.headers.items()}
                server.requests.append((self.command, parts.path, headers, raw))
                status, obj = handle(self.command, parts.path, parse_qs(parts.query), raw)
                data = json.dumps(obj).encode() if obj is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _answer

            def log_message(self, *args) -> None:
                pass

        self.requests: list[tuple[str, str, dict, bytes]] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:  # https with this certificate (cert, key)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def bodies(self, method: str, path: str) -> list[dict]:
        return [json.loads(b) for m, p, _, b in self.requests if (m, p) == (method, path)]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_server():
    servers: list[FakeServer] = []

    def start(handle, tls=None) -> FakeServer:
        servers.append(FakeServer(handle, tls))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def os_error(status: int, kind: str) -> tuple[int, dict]:
    return status, {"error": {"root_cause": [{"type": kind, "reason": kind}], "type": kind, "reason": kind},
                    "status": status}  # fmt: skip


class FakeOpenSearch:
    """One OpenSearch index as the REST API shows it: create (400 when it exists), mapping, delete, bulk (an
    _id over 512 bytes refused, as OpenSearch does), scroll, and a search that counts the query's terms a
    document's `terms` hold, refusing a `size` past 10,000 (index.max_result_window) and a query of over 1,024
    clauses (indices.query.bool.max_clause_count)."""

    def __init__(self, name: str = "chunks", mappings: dict | None = None, docs: dict | None = None) -> None:
        self.name, self.mappings, self.docs = name, mappings, dict(docs or {})
        self.settings: dict = {}

    def __call__(self, method, path, query, body):
        data = json.loads(body) if body and path != "/_bulk" else {}
        if path == f"/{self.name}":
            if method == "HEAD":
                return (200 if self.mappings is not None else 404), None
            if method == "PUT":
                if self.mappings is not None:
                    return os_error(400, "resource_already_exists_exception")
                self.settings, self.mappings, self.docs = data["settings"], data["mappings"], {}
                return 200, {"acknowledged": True, "index": self.name}
            if method == "DELETE":
                self.mappings, self.docs = None, {}
                return 200, {"acknowledged": True}
        if path == f"/{self.name}/_mapping":
            return 200, {self.name: {"mappings": self.mappings}}
        if path == "/_bulk":
            items = self._bulk(body)
            failed = any(item["status"] >= 300 for i in items for item in i.values())
            return 200, {"took": 1, "errors": failed, "items": items}
        if path == f"/{self.name}/_search":
            if "scroll" in query:
                hits = [self._hit(i, 1.0, data) for i in self.docs]
                return 200, {
                    "_scroll_id": "s1",
                    "hits": {"hits": hits},
                    "_shards": {"total": 1, "successful": 1},
                }
            if data["size"] > 10_000:
                return os_error(400, "illegal_argument_exception")
            if len(data["query"]["bool"]["should"]) > 1_024:  # indices.query.bool.max_clause_count
                return os_error(400, "too_many_clauses")
            return 200, {"hits": {"hits": self._search(data)}}
        if path == "/_search/scroll":
            return 200, ({"_scroll_id": "s1", "hits": {"hits": []}} if method == "POST" else {})
        return os_error(400, f"unexpected {method} {path}")

    def _bulk(self, body: bytes) -> list[dict]:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        items = []
        while lines:
            ((op, meta),) = lines.pop(0).items()
            _id = meta["_id"]
            if op == "index":
                source = lines.pop(0)
                if len(_id.encode()) > 512:
                    error = {"type": "illegal_argument_exception", "reason": "id is too long"}
                    items.append({op: {"_id": _id, "status": 400, "error": error}})
                    continue
                self.docs[_id] = source
            status = 200 if op == "index" or self.docs.pop(_id, None) else 404
            items.append({op: {"_id": _id, "status": status}})
        return items

    def _hit(self, _id: str, score: float, body: dict) -> dict:
        fields = body.get("_source", True)
        source = {k: v for k, v in self.docs[_id].items() if fields is True or k in fields}
        return {"_id": _id, "_score": score, **({"_source": source} if fields is not False else {})}

    def _search(self, body: dict) -> list[dict]:
        wanted = [c["term"]["terms"] for c in body["query"]["bool"]["should"]]
        scores = {i: sum(t in d["terms"].split() for t in wanted) for i, d in self.docs.items()}
        ranked = sorted((i for i in scores if scores[i]), key=lambda i: -scores[i])
        return [self._hit(i, float(scores[i]), body) for i in ranked[: body["size"]]]


def test_opensearch_indexes_and_queries_the_terms_of_the_tantivy_analysis(tmp_path, fake_server):
    """OpenSearch analysed the text itself: its standard tokenizer keeps `0.05`, `patient's`, `snake_case`
    and `1,000` whole where tantivy splits them, so BM25 ranked otherwise on the two; and it was sent the
    query as written, counting a repeated word twice."""
    from pipelines.index.keyword import OpenSearchIndex, indexed_text, opensearch_id

    rows = {"a": "p<0.05 at 3.5 mg", "b": "the patient's IL-6 level", "c": "U.S.A.",
            "d": "snake_case e.g. 1,000", "e": "Cancer risk and cancer screening."}  # fmt: skip
    chunks = frame(rows, titles={"a": "Dosing Trials"})
    tantivy = TantivyIndex(tmp_path / "kw")
    sync_index(tantivy, chunks)
    fake = FakeOpenSearch()
    server = fake_server(fake)
    idx = OpenSearchIndex(server.url, "chunks")
    assert sync_index(idx, chunks).added == 5
    # the field of the terms: split on whitespace only, nothing dropped or changed
    field = fake.mappings["properties"]["terms"]
    analyzer = fake.settings["analysis"]["analyzer"][field["analyzer"]]
    assert analyzer == {"type": "custom", "tokenizer": "whitespace", "filter": []}
    indexed = {d["chunk_id"]: d["terms"].split() for d in fake.docs.values()}
    for cid, title, text in zip(chunks["chunk_id"], chunks["title"], chunks["text"], strict=True):
        terms = tantivy.analyzer.analyze(indexed_text(title, text))
        assert indexed[cid] == terms, cid  # every occurrence, in order: the same term frequencies and lengths
        assert all(cid in {h.chunk_id for h in tantivy.search(t)} for t in terms)  # the tantivy index's terms
    assert indexed["a#0000"][-6:] == ["p", "0", "05", "3", "5", "mg"] and "05" in indexed["a#0000"]
    assert {d["doc_id"] for d in fake.docs.values()} == set(rows)
    assert fake.docs[opensearch_id("a#0000")]["text"] == "Dosing Trials\np<0.05 at 3.5 mg"  # shown, as before
    # the query: its distinct terms, as tantivy's
    query = "cancer CANCER risk p<0.05"
    assert {h.chunk_id for h in idx.search(query)} == {h.chunk_id for h in tantivy.search(query)} == {
        "a#0000", "e#0000"}  # fmt: skip
    sent = server.bodies("POST", "/chunks/_search")[-1]
    assert [c["term"]["terms"] for c in sent["query"]["bool"]["should"]] == tantivy.terms(query)
    assert tantivy.terms(query) == ["cancer", "risk", "p", "0", "05"]
    searches = len(server.requests)
    assert idx.search("the and of") == [] and len(server.requests) == searches  # nothing to ask for


def test_a_query_of_over_1024_terms_is_read_alike_by_both_engines(tmp_path, fake_server):
    """OpenSearch refuses a query of over 1,024 clauses (a 400): a question of a pasted page failed there,
    while tantivy answered it. Both read a query's first 1,024 distinct terms."""
    from pipelines.index.keyword import MAX_QUERY_TERMS, OpenSearchIndex

    chunks = frame({"a": "Aspirin lowers colorectal cancer risk.", "b": "Statins lower stroke risk."})
    tantivy = TantivyIndex(tmp_path / "kw")
    sync_index(tantivy, chunks)
    idx = OpenSearchIndex(fake_server(FakeOpenSearch()).url, "chunks")
    sync_index(idx, chunks)
    words = [f"w{i}x" for i in range(1_500)]
    query = " ".join(["aspirin", *words[:1_200], "statins", *words[1_200:]])
    assert len(tantivy.terms(query)) == MAX_QUERY_TERMS == 1_024
    assert [h.doc_id for h in idx.search(query)] == [h.doc_id for h in tantivy.search(query)] == ["a"]


def test_opensearch_takes_chunk_ids_of_any_length_as_tantivy_does(tmp_path, fake_server):
    """The chunk id was the OpenSearch _id, which OpenSearch refuses past 512 bytes: a bulk of a deep path's
    chunks failed part way, where tantivy and Qdrant took them."""
    from pipelines.index.keyword import OpenSearchIndex

    deep = "/".join(["folder"] * 80) + "/a.txt"  # 566 bytes
    chunks = frame({deep: "Aspirin lowers the risk of heart attacks.", "b": "Statins lower cholesterol."})
    assert sync_index(TantivyIndex(tmp_path / "kw"), chunks).added == 2
    fake = FakeOpenSearch()
    idx = OpenSearchIndex(fake_server(fake).url, "chunks")
    assert sync_index(idx, chunks).added == 2
    assert all(len(i.encode()) <= 512 for i in fake.docs)
    assert idx.indexed_ids() == set(chunks["chunk_id"])
    assert [h.doc_id for h in idx.search("aspirin")] == [deep]
    assert sync_index(idx, chunks.iloc[1:]).deleted == 1 and idx.indexed_ids() == {"b#0000"}


def test_an_opensearch_index_made_for_another_analysis_is_made_anew_by_its_next_sync(fake_server):
    """The OpenSearch index was only created when missing: one analysed otherwise (here: by OpenSearch's own
    analyzer, before the analysis version was recorded) kept its terms, which no query's matched."""
    from pipelines.index import keyword
    from pipelines.index.keyword import OpenSearchIndex

    old = {"properties": {"chunk_id": {"type": "keyword"}, "text": {"type": "text", "analyzer": "en_bm25"}}}
    fake = FakeOpenSearch(mappings=old, docs={"a#0000": {"chunk_id": "a#0000", "text": "alpha apples"}})
    server = fake_server(fake)
    chunks = frame({"a": "alpha apples", "b": "beta bananas"})
    reader = OpenSearchIndex(server.url, "chunks")  # opening it (a service) changes nothing
    assert fake.mappings is old and not [r for r in server.requests if r[0] == "DELETE"]
    report = sync_index(OpenSearchIndex(server.url, "chunks"), chunks)
    assert (report.added, report.deleted) == (2, 0) and ("DELETE", "/chunks") in [
        r[:2] for r in server.requests
    ]
    assert fake.mappings["_meta"] == {"analysis_version": keyword.ANALYSIS_VERSION}
    assert reader.search("apples")[0].chunk_id == "a#0000"
    assert sync_index(OpenSearchIndex(server.url, "chunks"), chunks).added == 0  # this version: kept
    fake.mappings["_meta"]["analysis_version"] -= 1
    assert sync_index(OpenSearchIndex(server.url, "chunks"), chunks).added == 2


def test_bm25_search_depth_stops_at_what_opensearch_serves(fake_server):
    """search_docs doubled the depth until it named k documents: on a corpus of over 10,000 chunks it asked
    OpenSearch for 12,800 hits, which OpenSearch refuses (index.max_result_window)."""
    from pipelines.index.keyword import OpenSearchIndex
    from pipelines.rag.retrieve import Retriever

    def handle(method, path, query, body):  # one document of 30,000 chunks, each matching
        if method == "HEAD":
            return 200, None
        if path.endswith("/_mapping"):
            return 200, {"chunks": {"mappings": OpenSearchIndex.mapping()["mappings"]}}
        size = json.loads(body)["size"]
        if size > 10_000:
            return os_error(400, "illegal_argument_exception")
        hits = [{"_id": str(i), "_score": 1 / (i + 1), "_source": {"chunk_id": f"big#{i:05d}"}}
                for i in range(min(size, n_chunks))]  # fmt: skip
        return 200, {"hits": {"hits": hits}}

    server = fake_server(handle)
    keyword, asked = OpenSearchIndex(server.url, "chunks"), []
    search = keyword.search
    keyword.search = lambda query, k: asked.append(k) or search(query, k)  # type: ignore[method-assign]
    retriever = Retriever(frame({"big": "alpha"}), keyword=keyword)
    n_chunks = 30_000
    assert retriever.search_docs("alpha", "bm25", k=10) == ["big"]
    assert asked == [200, 400, 800, 1600, 3200, 6400, 10_000]  # as deep as every backend is asked
    sizes = [b["size"] for b in server.bodies("POST", "/chunks/_search")]
    assert sizes == asked
    assert len(retriever.keyword.search("alpha", 50_000)) == 10_000  # a direct caller is held to it too
    server.requests.clear()
    n_chunks = 300  # a list shorter than asked has run dry: no deeper search
    assert retriever.search_docs("alpha", "bm25", k=10) == ["big"]
    assert [b["size"] for b in server.bodies("POST", "/chunks/_search")] == [200, 400]


def test_opensearch_credentials_are_sent_and_never_shown(fake_server):
    """OpenSearch could only log in by user:pass@ in SM_OPENSEARCH_URL, which the index report's location
    (printed by the RAG CLI, written into eval reports) showed as it was."""
    import base64

    from pipelines.index.keyword import open_keyword_index

    server = fake_server(FakeOpenSearch())
    host = server.url.removeprefix("http://")

    def auth() -> str:
        return server.requests[-1][2].get("authorization", "")

    settings = Settings(keyword_backend="opensearch", opensearch_url=f"http://admin:hunter2@{host}",
                        opensearch_index="chunks")  # fmt: skip
    idx = open_keyword_index(settings)
    assert idx.location == f"{server.url}/chunks"
    report = sync_index(idx, frame({"a": "alpha"}))
    assert "hunter2" not in json.dumps(report.to_dict()) and "admin" not in report.location
    assert auth() == "Basic " + base64.b64encode(b"admin:hunter2").decode()
    settings = Settings(keyword_backend="opensearch", opensearch_url=server.url, opensearch_index="chunks",
                        opensearch_user="svc", opensearch_password="s3cr3t")  # fmt: skip
    assert "s3cr3t" not in repr(settings) and settings.as_env()["SM_OPENSEARCH_PASSWORD"] == "s3cr3t"
    assert open_keyword_index(settings).search("alpha")[0].chunk_id == "a#0000"
    assert auth() == "Basic " + base64.b64encode(b"svc:s3cr3t").decode()


def test_a_lost_opensearch_index_creation_race_is_no_error(fake_server):
    """Two processes each saw no index and created it: the second's 400 resource_already_exists_exception
    stopped it. Any other refusal still raises."""
    from opensearchpy.exceptions import RequestError

    from pipelines.index.keyword import OpenSearchIndex

    def handle(method, path, query, body):  # the other process creates it between HEAD and PUT
        if method == "HEAD":
            return 404, None
        return os_error(400, "resource_already_exists_exception" if "race" in path else "mapper_exception")

    server = fake_server(handle)
    assert OpenSearchIndex(server.url, "race").location == f"{server.url}/race"
    with pytest.raises(RequestError, match="mapper_exception"):
        OpenSearchIndex(server.url, "bad")


class FakeQdrant:
    """A Qdrant server's REST API for one collection: `exists` answers false (another process then creates it,
    so the create is refused as Qdrant refuses it: 409, or `create_status`), and a batch query answers one
    point."""

    def __init__(self, create_status: int = 409) -> None:
        self.create_status = create_status

    def __call__(self, method, path, query, body):
        ok = {"status": "ok", "time": 0.0}
        if path == "/":
            return 200, {"title": "qdrant - vector search engine", "version": "1.20.0"}
        if path.endswith("/exists"):
            return 200, {"result": {"exists": False}, **ok}
        if method == "GET" and path == "/collections":  # none, as `exists` says
            return 200, {"result": {"collections": []}, **ok}
        if method == "PUT" and path.startswith("/collections/"):
            name = path.rsplit("/", 1)[1]
            error = f"Wrong input: Collection `{name}` already exists!"
            return self.create_status, {"status": {"error": error}, "time": 0.0}
        if path.endswith("/points/query/batch"):
            n = len(json.loads(body)["searches"])
            point = {"id": "0b5e3a36-3c1e-5a3b-9d7e-2f0c7a1f4b11", "version": 1, "score": 0.5,
                     "payload": {"chunk_id": "a#0000"}}  # fmt: skip
            return 200, {"result": [{"points": [point]}] * n, **ok}
        return 404, {"status": {"error": f"unexpected {method} {path}"}, "time": 0.0}


def test_qdrant_server_gets_the_api_key_exact_search_and_loses_a_creation_race_quietly(tmp_path, fake_server):
    """The Qdrant server got no API key; a collection created by another process between `exists` and
    `create` (409) stopped the build; and the server searched by HNSW (approximate) where local mode is
    exact, with no setting for exact search."""
    from qdrant_client.http.exceptions import UnexpectedResponse

    static = get_embedder("static")
    server = fake_server(FakeQdrant())
    settings = Settings(vector_backend="qdrant_server", qdrant_url=server.url, qdrant_api_key="k3y",
                        qdrant_exact=True)  # fmt: skip
    assert "k3y" not in repr(settings)
    with pytest.warns(UserWarning, match="insecure"):  # the key over http: the client's own warning
        idx = open_dense_index(settings, embedder=static)
    try:
        assert idx.search("aspirin")[0].chunk_id == "a#0000"
    finally:
        idx.close()
    assert all(h.get("api-key") == "k3y" for m, p, h, _ in server.requests if p != "/")
    (sent,) = server.bodies("POST", f"/collections/{idx.collection}/points/query/batch")
    assert sent["searches"][0]["params"] == {"exact": True}
    # by default the server's own search, as before; local mode takes the setting too
    idx = open_dense_index(Settings(vector_backend="qdrant_server", qdrant_url=server.url), embedder=static)
    try:
        idx.search("aspirin")
    finally:
        idx.close()
    sent = server.bodies("POST", f"/collections/{idx.collection}/points/query/batch")[-1]
    assert not sent["searches"][0].get("params") and "api-key" not in server.requests[-1][2]
    local = open_dense_index(Settings(run_dir=tmp_path, qdrant_exact=True), tmp_path / "ix", static)
    try:
        sync_index(local, frame({"cats": "Felines sleep in the sun.", "cars": "Diesel engines need oil."}))
        assert local.search("felines sleeping", 1)[0].doc_id == "cats"
    finally:
        local.close()
    other = fake_server(FakeQdrant(create_status=500))
    with pytest.raises(UnexpectedResponse):
        open_dense_index(Settings(vector_backend="qdrant_server", qdrant_url=other.url), embedder=static)


def test_a_retriever_on_a_server_with_no_index_built_is_an_index_missing(fake_server):
    """Opened to search, OpenSearch and Qdrant server backends made an empty index on the spot (a PUT from a
    read path) and answered every query with nothing, where the embedded ones said no index was built."""
    from pipelines.index.base import IndexMissing
    from pipelines.index.keyword import open_keyword_index

    opensearch, qdrant = fake_server(FakeOpenSearch(name="chunks")), fake_server(FakeQdrant())
    settings = Settings(
        keyword_backend="opensearch", opensearch_url=opensearch.url, opensearch_index="chunks",
        vector_backend="qdrant_server", qdrant_url=qdrant.url,
    )  # fmt: skip
    with pytest.raises(IndexMissing, match="no keyword index"):
        open_keyword_index(settings, must_exist=True)
    with pytest.raises(IndexMissing, match="no dense index"):
        open_dense_index(settings, embedder=get_embedder("static"), must_exist=True)
    assert not [r for r in opensearch.requests + qdrant.requests if r[0] == "PUT"]  # nothing made
    open_keyword_index(settings)  # to build: made
    assert [r[:2] for r in opensearch.requests if r[0] == "PUT"] == [("PUT", "/chunks")]


def test_an_https_cluster_signed_by_a_private_ca_is_reached_with_its_ca_bundle(tmp_path, fake_server):
    """opensearch-py checks an https cluster against certifi's public CAs: a self-hosted cluster with its
    own CA (what SM_OPENSEARCH_USER/_PASSWORD imply) could not be reached, and there was no setting for it."""
    from opensearchpy.exceptions import SSLError

    from pipelines.index.keyword import open_keyword_index

    cert, key = self_signed(tmp_path)
    server = fake_server(FakeOpenSearch(name="chunks"), tls=(cert, key))
    settings = Settings(keyword_backend="opensearch", opensearch_url=server.url, opensearch_index="chunks")
    with pytest.raises(SSLError):
        open_keyword_index(settings)
    idx = open_keyword_index(settings.model_copy(update={"opensearch_ca_certs": str(cert)}))
    sync_index(idx, frame({"a": "alpha apples", "b": "beta bananas"}))
    assert [h.doc_id for h in idx.search("apples")] == ["a"]


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself (its own CA), and its key."""
    import subprocess

    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                    str(cert)], check=True, capture_output=True)  # fmt: skip
    return cert, key


@pytest.mark.filterwarnings("ignore:Failed to obtain server version")  # the client's first try fails too
def test_an_https_qdrant_server_signed_by_a_private_ca_is_reached_with_its_ca_bundle(tmp_path, fake_server):
    """The Qdrant server's client checked an https server against certifi's public CAs only, with no
    setting for a server's own CA (SM_OPENSEARCH_CA_CERTS had one)."""
    from qdrant_client.http.exceptions import ResponseHandlingException

    cert, key = self_signed(tmp_path)
    server = fake_server(FakeQdrant(), tls=(cert, key))
    settings = Settings(vector_backend="qdrant_server", qdrant_url=server.url)
    static = get_embedder("static")
    with pytest.raises(ResponseHandlingException, match="CERTIFICATE_VERIFY_FAILED"):
        open_dense_index(settings, embedder=static)
    idx = open_dense_index(settings.model_copy(update={"qdrant_ca_certs": str(cert)}), embedder=static)
    try:
        assert idx.search("aspirin")[0].chunk_id == "a#0000"
    finally:
        idx.close()


def test_a_qdrant_url_without_a_port_is_used_as_written(monkeypatch):
    """`QdrantClient(url="https://qdrant.example.com")` went to port 6333, the client's default."""
    from qdrant_client import QdrantClient
    from qdrant_client.qdrant_remote import QdrantRemote

    from pipelines.index.vector import QdrantIndex

    # no server to ask: whether the collection exists, nor (the client's thread) its version
    monkeypatch.setattr(QdrantClient, "collection_exists", lambda self, name: True)
    monkeypatch.setattr(QdrantRemote, "_check_compatibility", staticmethod(lambda *args: None))
    static = get_embedder("static")
    for url in ("https://qdrant.example.com", "http://qdrant.example.com:7000/db"):
        idx = QdrantIndex(static, "chunks", url=url)
        assert idx.client._client.rest_uri == url
        idx.close()


def test_qdrant_deletes_go_in_slices_a_server_accepts(tmp_path):
    """Every removed id went in one request: past about 860k ids (a re-chunked large corpus) a Qdrant server
    refuses it (32 MiB), after the adds went in, and every later sync failed the same way."""
    idx = open_dense_index(Settings(run_dir=tmp_path), tmp_path / "ix", get_embedder("static"))
    try:
        sync_index(idx, frame({"a": "alpha apples", "b": "beta bananas"}))
        sent, real = [], idx.client.delete
        idx.client.delete = lambda name, points_selector: (
            sent.append(len(points_selector.points)) or real(name, points_selector=points_selector)
        )
        idx.delete([f"gone#{i}" for i in range(25_000)] + ["a#0000"])
        assert sent == [10_000, 10_000, 5_001] and idx.indexed_ids() == {"b#0000"}
    finally:
        idx.close()
