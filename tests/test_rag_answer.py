"""answer() against a real local model through the real gateway (needs the llama.cpp panel: -m models)."""

from __future__ import annotations

import pytest

from pipelines.corpus.ingest import ingest_corpus
from pipelines.corpus.store import LocalStore
from pipelines.index.build import build_dense_index, build_keyword_index
from pipelines.rag.answer import answer
from pipelines.rag.retrieve import open_retriever


@pytest.mark.models
def test_answer_cites_retrieved_chunks(gateway, model_settings, tmp_path):
    corpus = tmp_path / "docs"
    corpus.mkdir()
    (corpus / "tower.txt").write_text(
        "The Eiffel Tower in Paris is 330 metres tall and was finished in 1889."
    )
    (corpus / "bridge.txt").write_text("The Golden Gate Bridge in San Francisco opened in 1937.")
    store = LocalStore(tmp_path / "store")
    ingest_corpus(model_settings, str(corpus), store=store)
    build_keyword_index(model_settings, tmp_path / "ix", store)
    build_dense_index(model_settings, tmp_path / "ix", store)
    r = open_retriever(model_settings, tmp_path / "ix", store, modes=("hybrid",))
    try:
        a = answer("How tall is the Eiffel Tower?", r, gateway, model="smollm2-135m", k=2, max_tokens=64)
    finally:
        r.close()
    assert a.chunks[0].doc_id == "tower.txt" and a.chunks[0].scores  # provenance: per-retriever scores
    assert a.text and a.model in ("smollm2-135m", "gemma3-270m") and a.requested_model == "smollm2-135m"
    assert set(a.citations) <= {h.chunk_id for h in a.chunks}
    assert a.citations_by in ("model", "overlap", "none")
    assert a.latency_s > 0 and a.usage["input_tokens"] > 20
