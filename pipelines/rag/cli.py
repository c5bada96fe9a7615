"""`stratmaster retrieval ...`: ingest a corpus, build the indexes, evaluate retrievers, ask questions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NoReturn

import typer

from pipelines.settings import Settings

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
    retriever: str = typer.Option("hybrid", help="bm25 | dense | hybrid | hybrid_rrf | hybrid_graph"),
    index_dir: Path | None = typer.Option(None, help="where the store and indexes live (reused if built)"),
    progress: bool = typer.Option(False, help="show the embedding progress bar"),
) -> None:
    """Index a BEIR folder (reusing an index built before) and print one JSON object of metrics."""
    from pipelines.rag.evaluate import evaluate as run_eval
    from pipelines.rag.retrieve import MODES

    if retriever not in MODES:
        raise typer.BadParameter(f"choose one of {', '.join(MODES)}", param_hint="--retriever")
    try:
        print(json.dumps(run_eval(Settings(), corpus, queries, qrels, retriever, index_dir, progress)))
    except ValueError as e:  # a malformed queries or qrels file
        _fail(e)


def _fail(why: object) -> NoReturn:
    typer.echo(f"error: {why}", err=True)
    raise typer.Exit(2) from None


@app.command("tune-embedder")
def tune_embedder(
    corpus: Path = typer.Option(..., exists=True, file_okay=False, help="BEIR folder (corpus.jsonl)"),
    queries: Path = typer.Option(..., exists=True, dir_okay=False, help="training queries .jsonl"),
    qrels: Path = typer.Option(..., exists=True, dir_okay=False, help="training qrels .tsv"),
    out: Path = typer.Option(..., help="folder for the fine-tuned model (then SM_EMBEDDER=<out>)"),
    epochs: int = typer.Option(2, min=1),
    lr: float = typer.Option(3e-5),
    hard_negatives: int = typer.Option(10, min=0, help="a hard negative per pair from BM25's top N (0: off)"),
    index_dir: Path | None = typer.Option(None, help="where the corpus store lives (reused if ingested)"),
    precision: str = typer.Option("int8", help="it runs as: int8 (minilm-int8) | float (minilm)"),
) -> None:
    """Fine-tune MiniLM on labelled queries of a corpus (in-batch negatives, and BM25's with
    --hard-negatives); prints the manifest as JSON."""
    from pipelines.corpus.ingest import ingest_corpus, load_chunks
    from pipelines.corpus.store import LocalStore
    from pipelines.index.finetune import PRECISIONS, finetune_minilm, read_manifest, training_pairs
    from pipelines.index.finetune import hard_negatives as mine
    from pipelines.rag.evaluate import default_index_dir, load_labels, ranked_docs

    if precision not in PRECISIONS:
        raise typer.BadParameter(f"choose one of {', '.join(PRECISIONS)}", param_hint="--precision")
    try:
        texts, labels, qids = load_labels(queries, qrels)
    except ValueError as e:
        _fail(e)
    s = Settings()
    index_dir = index_dir or default_index_dir(s, corpus)
    store = LocalStore(index_dir / "store")
    ingest_corpus(s, str(corpus), store=store)
    chunks = load_chunks(s, store)
    pairs = training_pairs(chunks, texts, labels)
    if not pairs:
        raise typer.BadParameter("no query in the qrels has a relevant document in the corpus")
    negatives = None
    if hard_negatives:
        ranked = ranked_docs(s, corpus, index_dir, texts, qids, "bm25", hard_negatives)
        negatives = mine(chunks, texts, labels, ranked, depth=hard_negatives)
    out_dir = finetune_minilm(pairs, out, epochs=epochs, lr=lr, negatives=negatives, precision=precision)
    print(json.dumps(read_manifest(out_dir)))


@app.command()
def ingest(
    source: str = typer.Argument(None, help="folder or s3://bucket/prefix; default SM_CORPUS_DIR"),
) -> None:
    """Ingest a corpus into the store and bring every index up to date; prints the reports as JSON."""
    from pipelines.corpus.ingest import ConcurrentIngest, ingest_corpus
    from pipelines.index.build import build_dense_index, build_graph_index, build_keyword_index

    s = Settings()
    try:
        out = {"ingest": ingest_corpus(s, source).to_dict()}
    except (ValueError, FileNotFoundError, ConcurrentIngest) as e:  # no source, no folder, another run
        _fail(e)
    for name, build in (
        ("keyword", build_keyword_index),
        ("dense", build_dense_index),
        ("graph", build_graph_index),
    ):
        out[name] = build(s).to_dict()
    print(json.dumps(out, indent=1))


@app.command()
def ask(
    question: str,
    model: str = typer.Option("smollm2-135m", help="catalog model name"),
    k: int = typer.Option(4, min=1, help="chunks given to the model"),
    mode: str = typer.Option("hybrid", help="retrieval mode"),
) -> None:
    """Answer a question from the ingested corpus with citations (chunk ids), through the gateway."""
    from pipelines.llm.gateway import Gateway
    from pipelines.rag.answer import answer
    from pipelines.rag.retrieve import MODES, open_retriever

    if mode not in MODES:
        raise typer.BadParameter(f"choose one of {', '.join(MODES)}", param_hint="--mode")
    s = Settings()
    r = open_retriever(s)
    try:
        a = answer(
            question, r, Gateway(s), model=model, k=k, mode=mode, max_context_chars=s.rag_context_chars
        )
        print(json.dumps(a.to_dict(), indent=1))
    finally:
        r.close()
