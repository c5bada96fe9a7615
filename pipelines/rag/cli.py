"""`stratmaster retrieval ...`: ingest a corpus, build the indexes, evaluate retrievers, ask questions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NoReturn

import typer

from pipelines.settings import Settings

# pipelines.rag.retrieve.MODES, spelled out: importing it (pandas, tantivy) slowed `stratmaster --help`
MODES_HELP = "bm25 | dense | hybrid | hybrid_rrf | hybrid_convex | hybrid_graph"
PENDING = ".ingest-pending"  # in the index folder while `ingest` may have left the indexes behind the store

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Hybrid RAG: indexes, evaluation, answers."
)


@app.command()
def evaluate(
    corpus: Path = typer.Option(..., exists=True, file_okay=False, help="BEIR folder (corpus.jsonl)"),
    queries: Path = typer.Option(..., exists=True, dir_okay=False, help="queries .jsonl (_id, text)"),
    qrels: Path = typer.Option(
        ..., exists=True, dir_okay=False, help="qrels .tsv (query-id, corpus-id, score)"
    ),
    retriever: str = typer.Option("hybrid", help=MODES_HELP),
    index_dir: Path | None = typer.Option(None, help="where the store and indexes live (reused if built)"),
    progress: bool = typer.Option(False, help="show the embedding progress bar"),
) -> None:
    """Index a BEIR folder (reusing an index built before) and print one JSON object of metrics."""
    from pipelines.index.base import IndexInUse
    from pipelines.rag.evaluate import default_index_dir, load_labels
    from pipelines.rag.evaluate import evaluate as run_eval
    from pipelines.rag.retrieve import MODES

    if retriever not in MODES:
        raise typer.BadParameter(f"choose one of {', '.join(MODES)}", param_hint="--retriever")
    s = Settings()
    try:
        _, labels, qids = load_labels(queries, qrels)
    except ValueError as e:  # a malformed queries or qrels file
        _fail(e)
    if retriever != "bm25":
        _check_embedder(s)
    index_dir = index_dir or default_index_dir(s, corpus)
    # a corpus none of the qrels' documents are in is refused before the indexing; its ingest is reported
    chunks, ingested = _labelled_chunks(s, corpus, index_dir, qids, labels)
    from pipelines.index.base import doc_id_of

    named = set().union(*labels.values())
    absent = named - set(chunks["chunk_id"].map(doc_id_of))
    from pipelines.corpus.ingest import LEFT_OUT

    skipped = [
        r for r in ingested.get("skipped", []) if r.get("reason") != LEFT_OUT
    ]  # not a README beside it
    first = f", first {skipped[0]['path']}: {skipped[0]['reason']}" if skipped else ""
    for count, said in (  # each lowers the scores: said, not left to a count in the JSON
        (len(labels) - len(qids), f"queries of {qrels} have no text in {queries}: each scores 0"),
        (len(absent), f"of the {len(named)} documents the qrels name are not in the corpus: none is found"),
        (len(skipped), f"corpus records were skipped{first}"),
    ):
        if count:
            typer.echo(f"warning: {count} {said}", err=True)
    try:
        print(json.dumps(run_eval(s, corpus, queries, qrels, retriever, index_dir, progress, ingested)))
    except ValueError as e:
        _fail(e)
    except IndexInUse as e:  # another evaluation of this corpus (the same --index-dir) still running
        _fail(e, 1)


def _fail(why: object, code: int = 2) -> NoReturn:
    """One line on stderr and exit `code` (2: a usage error, 1: a failure on the way)."""
    typer.echo(f"error: {why}", err=True)
    raise typer.Exit(code) from None


def _check_embedder(s: Settings) -> None:
    """SM_EMBEDDER resolved before any work, as the dense index resolves it: an unknown name or a folder
    that is no fine-tuned model was a traceback after ingest had committed the store and the keyword index
    (the dense and graph indexes left stale)."""
    from pipelines.index.embeddings import LazyEmbedder

    try:
        LazyEmbedder(s.embedder)
    except ValueError as e:
        _fail(f"SM_EMBEDDER: {e}")


def _labelled_chunks(s: Settings, corpus: Path, index_dir: Path, qids: list[str], labels: dict):
    """`corpus` ingested into index_dir's store: its chunks and the ingest's report; a usage error when no
    query in the qrels has a relevant document in it (a corpus of other documents scored nDCG@10 0.0)."""
    from pipelines.corpus.ingest import LEFT_OUT, ConcurrentIngest, ingest_corpus, load_chunks
    from pipelines.corpus.store import LocalStore
    from pipelines.index.base import doc_id_of

    ours = {s.run_dir.resolve(), (s.run_dir / "index").resolve()}
    if index_dir.resolve() in ours:  # the evaluation's corpus replaced the run's store and indexes
        raise typer.BadParameter(
            f"{index_dir} holds the run's own store or indexes (`retrieval ingest`'s, the service's): the "
            "evaluation corpus would replace them; give a folder of its own",
            param_hint="--index-dir",
        )
    store = LocalStore(index_dir / "store")
    try:
        # the store mirrors the corpus evaluated: one now without a document empties it (said below)
        report = ingest_corpus(s, str(corpus), store=store, allow_empty=True)
    except (ValueError, ConcurrentIngest) as e:  # another evaluation of this corpus ingesting now
        _fail(e)
    chunks = load_chunks(s, store)
    docs = set(chunks["chunk_id"].map(doc_id_of))
    if not any(labels[q] & docs for q in qids):  # why, where ingest skipped something (not UTF-8, say)
        skipped = [r for r in report.skipped if r.get("reason") != LEFT_OUT]
        why = (
            f"; ingest skipped {len(skipped)}, first {skipped[0]['path']}: {skipped[0]['reason']}"
            if skipped
            else ""
        )
        held = f"{len(docs)} documents" if docs else "no document"
        raise typer.BadParameter(f"no query in the qrels has a relevant document in the corpus ({held}{why})")
    return chunks, report.to_dict()


@app.command("tune-embedder")
def tune_embedder(
    corpus: Path = typer.Option(..., exists=True, file_okay=False, help="BEIR folder (corpus.jsonl)"),
    queries: Path = typer.Option(..., exists=True, dir_okay=False, help="training queries .jsonl"),
    qrels: Path = typer.Option(..., exists=True, dir_okay=False, help="training qrels .tsv"),
    out: Path = typer.Option(..., help="folder for the fine-tuned model (then SM_EMBEDDER=<out>)"),
    epochs: int = typer.Option(2, min=1),
    lr: float = typer.Option(3e-5, help="learning rate: above 0, at most 0.1"),
    hard_negatives: int = typer.Option(10, min=0, help="a hard negative per pair from BM25's top N (0: off)"),
    index_dir: Path | None = typer.Option(None, help="where the corpus store lives (reused if ingested)"),
    precision: str = typer.Option("int8", help="it runs as: int8 (minilm-int8) | float (minilm)"),
) -> None:
    """Fine-tune MiniLM on labelled queries of a corpus (in-batch negatives, and BM25's with
    --hard-negatives); prints the manifest as JSON."""
    from pipelines.index.finetune import (
        PRECISIONS,
        check_lr,
        check_out_dir,
        finetune_minilm,
        read_manifest,
        training_pairs,
    )
    from pipelines.index.finetune import hard_negatives as mine
    from pipelines.rag.evaluate import default_index_dir, load_labels, ranked_docs

    if precision not in PRECISIONS:
        raise typer.BadParameter(f"choose one of {', '.join(PRECISIONS)}", param_hint="--precision")
    try:
        check_lr(lr)  # typer's bounds are inclusive and let nan through
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--lr") from None
    try:
        check_out_dir(out)  # before any work: found after the training, it had wasted it
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--out") from None
    try:
        texts, labels, qids = load_labels(queries, qrels)
    except ValueError as e:
        _fail(e)
    s = Settings()
    index_dir = index_dir or default_index_dir(s, corpus)
    chunks, _ = _labelled_chunks(s, corpus, index_dir, qids, labels)
    pairs = training_pairs(chunks, texts, labels)
    negatives = None
    if hard_negatives:
        ranked = ranked_docs(s, corpus, index_dir, texts, qids, "bm25", hard_negatives)
        negatives = mine(chunks, texts, labels, ranked, depth=hard_negatives)
    try:
        out_dir = finetune_minilm(pairs, out, epochs=epochs, lr=lr, negatives=negatives, precision=precision)
    except ValueError as e:  # the training diverged, or --out changed meanwhile: nothing was written
        _fail(e, 1)
    print(json.dumps(read_manifest(out_dir)))


@app.command()
def ingest(
    source: str = typer.Argument(None, help="folder or s3://bucket/prefix; default SM_CORPUS_DIR"),
    allow_empty: bool = typer.Option(
        False, help="let a source with no document empty the store and the indexes (refused otherwise)"
    ),
) -> None:
    """Ingest a corpus into the store and bring every index up to date; prints the reports as JSON."""
    from minio.error import S3Error
    from urllib3.exceptions import MaxRetryError

    from pipelines.corpus.ingest import ConcurrentIngest, ingest_corpus
    from pipelines.index.base import IndexInUse, engine_unreachable
    from pipelines.index.build import build_dense_index, build_graph_index, build_keyword_index

    s = Settings()
    _check_embedder(s)  # before the ingest: the indexes it brings up to date embed with it
    # there from before the store may change until every index has caught up with it: an ingest stopped
    # between the two (Ctrl-C during the embedding) left indexes that `ask` read without a word
    pending = s.run_dir / "index" / PENDING
    unfinished = pending.exists()
    pending.parent.mkdir(parents=True, exist_ok=True)
    pending.touch()
    try:
        out = {"ingest": ingest_corpus(s, source, allow_empty=allow_empty).to_dict()}
    except (ValueError, FileNotFoundError, NotADirectoryError, ConcurrentIngest, MaxRetryError, S3Error) as e:
        if not unfinished:  # the store is as it was, and so are the indexes
            pending.unlink(missing_ok=True)
        if isinstance(e, MaxRetryError):  # S3 down or unreachable: where, and why (no URL, no keys)
            _fail(f"cannot reach the object store at {s.s3_endpoint}: {str(e.reason).split('>: ')[-1]}", 1)
        if isinstance(e, S3Error):
            _fail(f"the object store at {s.s3_endpoint} refused: {e.code}: {e.message}", 1)
        _fail(e)  # no source, no folder, a file, no document (over a store that holds some), another run
    for name, build in (
        ("keyword", build_keyword_index),
        ("dense", build_dense_index),
        ("graph", build_graph_index),
    ):
        try:
            out[name] = build(s).to_dict()
        except IndexInUse as e:
            _fail(f"{e}; the store is ingested: run ingest again once it is free to update the indexes", 1)
        except Exception as e:  # an engine's server down: a traceback of 300 lines, the store ingested
            if not engine_unreachable(e):
                raise
            _fail(f"cannot reach the {name} index's server ({type(e).__name__}); the store is ingested: run "
                  "ingest again once it is up to update the indexes", 1)  # fmt: skip
    pending.unlink(missing_ok=True)
    print(json.dumps(out, indent=1))
    got = out["ingest"]
    if not got["docs_total"]:  # an empty folder, or one of unreadable files, into a fresh run said nothing
        typer.echo(f"warning: the store holds no document ({got['files_seen']} files seen, "
                   f"{len(got['skipped'])} skipped: the report's `skipped` says why)", err=True)  # fmt: skip


@app.command()
def ask(
    question: str,
    model: str = typer.Option("smollm2-135m", help="catalog model name"),
    k: int = typer.Option(4, min=1, help="chunks given to the model"),
    mode: str = typer.Option("hybrid", help=f"retrieval mode: {MODES_HELP}"),
) -> None:
    """Answer a question from the ingested corpus with citations (chunk ids), through the gateway."""
    from pipelines.index.base import IndexInUse, IndexMissing
    from pipelines.llm.gateway import Gateway, GatewayError
    from pipelines.rag.answer import answer
    from pipelines.rag.retrieve import MODES, open_retriever

    if mode not in MODES:
        raise typer.BadParameter(f"choose one of {', '.join(MODES)}", param_hint="--mode")
    if not question.strip():  # answered "No indexed source matches this question" after 40 s of loading
        _fail("the question is empty")
    s = Settings()
    if (s.run_dir / "index" / PENDING).exists():
        typer.echo("warning: an ingest into this run folder did not finish: the indexes may lag the store "
                   "(run `stratmaster retrieval ingest` again)", err=True)  # fmt: skip
    gateway = Gateway(s)
    try:  # before the retrieval: with nothing retrieved, an unknown model answered "no answer", exit 0
        entry = gateway.catalog.get(model)
    except KeyError as e:
        raise typer.BadParameter(str(e.args[0]), param_hint="--model") from None
    if entry.privacy != "local":  # the service sends such a question to a local model; here one is named
        from router_models.router.signals import detect_pii  # the router's check, as /v1/rag applies it

        if found := detect_pii(question):
            _fail(f"the question holds personal data ({', '.join(found)}) and {model} is not a local model: "
                  "ask a local one (--model) or leave the personal data out")  # fmt: skip
    _check_embedder(s)
    try:
        r = open_retriever(s, modes=(mode,))  # only the indexes the mode reads
    except (IndexInUse, IndexMissing) as e:  # another process holds it, or it was never built
        _fail(e, 1)
    try:
        a = answer(question, r, gateway, model=model, k=k, mode=mode, max_context_chars=s.rag_context_chars)
    except GatewayError as e:  # the model unavailable, its server down (and its fallback)
        _fail(e, 1)
    finally:
        r.close()
    print(json.dumps(a.to_dict(), indent=1))
