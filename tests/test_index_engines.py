"""The three indexes on their real embedded engines (tantivy, Qdrant local mode, ladybug) and the embedder."""

from __future__ import annotations

import time

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


def test_an_index_analysed_by_another_version_is_rebuilt_by_its_next_sync(tmp_path):
    from pipelines.index import keyword

    chunks = frame({"a": "alpha apples", "b": "beta bananas"})
    assert sync_index(TantivyIndex(tmp_path / "kw"), chunks).added == 2
    assert sync_index(TantivyIndex(tmp_path / "kw"), chunks).added == 0
    (tmp_path / "kw" / keyword.ANALYSIS_STAMP).write_text(str(keyword.ANALYSIS_VERSION - 1))
    report = sync_index(TantivyIndex(tmp_path / "kw"), chunks)
    assert (report.added, report.deleted) == (2, 0) and TantivyIndex(tmp_path / "kw").search("apples")


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


def test_int8_minilm_is_calibrated_once_cached_and_ranks_like_fp32(tmp_path):
    from pipelines.index.embeddings import MiniLMEmbedder

    passages = ["Vitamin D supplements lower the risk of hip fracture in older women.",
                "Diesel engines need their oil changed every 10,000 kilometres.",
                "The kitten slept on a warm rug by the fire.",
                "Interest rates rose for the third time this year, the central bank said.",
                "Mutations in BRCA1 raise the lifetime risk of breast cancer."]  # fmt: skip
    queries = ["do vitamins prevent broken hips", "car maintenance schedule", "a cat napping",
               "monetary policy tightening", "hereditary cancer genes"]  # fmt: skip
    ref = MiniLMEmbedder(backend="torch", precision="fp32")
    int8 = MiniLMEmbedder(precision="int8", cache_dir=tmp_path)
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
