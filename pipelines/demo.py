"""`make demo`'s printed summary: after the Dagster job has materialized every asset, a real chat to each
local model, two questions answered with citations from the indexed corpus, and the figures the assets wrote
(retrieval, utility posterior, router evaluation), with where the plots are and how to query."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipelines.demo_corpus import DEMO_QUESTIONS
from pipelines.llm import servers
from pipelines.llm.catalog import load_catalog
from pipelines.llm.gateway import Gateway, GatewayError
from pipelines.settings import Settings

DEMO_PROMPT = "In one sentence: why do researchers compare several language models before choosing one?"
# the assets whose run_dir/<name>/summary.json the figures are read from
SUMMARY_ASSETS = ("retrieval_evaluation", "router_evaluation", "utility")
HINT = "run `make demo` first: it materializes the assets (the Dagster job), then prints this summary"


def _panel(console: Console, gateway: Gateway) -> int:
    table = Table("model", "answered by", "answer", "latency s", "ttft s", "tokens in/out", "cost $")
    failures = 0
    for entry in gateway.catalog.local():
        try:
            r = gateway.chat(entry.name, [{"role": "user", "content": DEMO_PROMPT}], max_tokens=48)
        except GatewayError as e:
            failures += 1
            table.add_row(entry.name, "-", f"[red]{e}[/]", "-", "-", "-", "-")
            continue
        table.add_row(
            r.requested_model, r.model + (" (fallback)" if r.fallback_used else ""),
            " ".join(r.text.split())[:90],
            f"{r.latency_s:.2f}", f"{r.ttft_s:.2f}" if r.ttft_s is not None else "-",
            f"{r.input_tokens}/{r.output_tokens}", f"{r.cost_usd:.8f}",
        )  # fmt: skip
    console.print(table)
    return failures


def _chunks_in_store(settings: Settings) -> tuple[int, str]:
    """How many chunks the ingest has put in the store, and the store (or why it could not be read)."""
    from pipelines.corpus.ingest import load_chunks
    from pipelines.corpus.store import open_store

    try:
        store = open_store(settings)
        return len(load_chunks(settings, store)), store.uri
    except Exception as e:  # an unreachable S3 store, a broken manifest: no RAG, the rest still prints
        return 0, f"{type(e).__name__}: {e}"


def _rag(console: Console, settings: Settings, gateway: Gateway, n_chunks: int, store: str) -> bool:
    """Two questions answered from the indexed corpus (`n_chunks` in `store`, by _chunks_in_store); False
    when there is none to answer from."""
    from pipelines.rag.answer import answer
    from pipelines.rag.retrieve import open_retriever

    # on a fresh run folder both questions were answered "No indexed source matches this question.": look
    # for chunks first
    if not n_chunks:
        console.print(f"[yellow]RAG skipped: no indexed chunks in the store ({store}); {HINT}[/]")
        return False
    try:
        retriever = open_retriever(settings, modes=("hybrid",))
    except Exception as e:  # the indexes are not built: say so, the rest of the summary still prints
        console.print(f"[yellow]RAG skipped: no indexes yet ({e}); {HINT}[/]")
        return False
    try:
        for q in DEMO_QUESTIONS:
            model = gateway.catalog.local()[0].name
            try:
                a = answer(
                    q, retriever, gateway, model, k=4, mode="hybrid",
                    max_context_chars=settings.rag_context_chars,
                )  # fmt: skip
            except GatewayError as e:  # a model down (and its fallback): the rest of the summary still prints
                console.print(f"[bold]Q:[/] {q}\n[red]no answer: {e}[/]")
                continue
            console.print(
                f"[bold]Q:[/] {q}\n[bold]A[/] ({a.model}, {a.latency_s:.1f}s, cited by {a.citations_by}): "
                f"{' '.join(a.text.split())}"
            )
            for h in a.chunks[:4]:
                mark = "*" if h.chunk_id in a.citations else " "
                console.print(f"   {mark} {h.chunk_id}  {h.score:.3f}  {h.title[:60]}")
    finally:
        retriever.close()
    return True


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _figures(console: Console, settings: Settings) -> int:
    """The figures of the materialized assets; how many assets' summaries there were."""
    run = settings.run_dir
    found = [name for name in SUMMARY_ASSETS if (run / name / "summary.json").exists()]
    if not found:
        console.print(f"[yellow]No figures: no asset summaries in {run}; {HINT}[/]")
    ret = _json(run / "retrieval_evaluation" / "summary.json")
    if ret:
        rows = ret["retrievers"]
        console.print(
            f"[bold]Retrieval[/] ({rows[0]['queries']} labelled queries, {Path(ret['source']).name} sample): "
            + ", ".join(f"{r['retriever']} nDCG@10 {r['ndcg@10']:.3f}" for r in rows)
        )
        console.print(f"   plot: {run / 'retrieval_evaluation' / 'retrieval.png'}")
    ev = _json(run / "router_evaluation" / "summary.json")
    if ev:
        g = ev.get("gate", {})
        console.print(
            f"[bold]Router[/] ({ev['predictor']}, {ev['folds']}-fold CV on {ev['n_prompts']} prompts, "
            f"{ev['n_models']} models): AIQ {ev['aiq']:.4f}, gap recovered {ev['gap_recovered']:.3f}, "
            f"max quality {ev['router_max_quality']:.3f} vs best single {ev['best_single']} "
            f"{ev['best_single_quality']:.3f}; gate (>=5% utility at <=80% cost): "
            f"{'passed' if g.get('passed') else 'failed'} (gain {g.get('utility_gain', float('nan')):.3f})"
        )
        console.print(f"   Pareto plot: {ev.get('pareto_png')}")
        mb = ev.get("micro_bench")
        if mb:
            g = mb["gate"]
            console.print(
                f"   on the micro-bench ({mb['n_prompts']} prompts, {mb['n_models']} local models, each "
                f"prompt held out): gap recovered {mb['gap_recovered']:.3f}, max quality "
                f"{mb['router_max_quality']:.3f} vs best single {mb['best_single']} "
                f"{mb['best_single_quality']:.3f}; gate "
                f"{'passed' if g['passed'] else 'failed'}; plot: {mb['pareto_png']}"
            )
    util = _json(run / "utility" / "summary.json")
    if util:
        d = {k: float("nan") if v is None else v for k, v in util["diagnostics"].items()}  # NaN is null
        rows = sorted(util["rows"], key=lambda r: -(r["utility_mean"] or -1e9))[:5]
        console.print(
            f"[bold]Utility posterior[/]: {len(util['rows'])} task x model cells, "
            f"r_hat max {d['r_hat_max']:.3f}, "
            f"ESS min {d['ess_bulk_min']:.0f}, divergences {d['divergences']}, fit {d['fit_seconds']:.0f}s"
        )
        failed = [name for name, ok in util.get("checks", {}).items() if not ok]
        if failed:
            console.print(f"   [red]the fit failed {', '.join(failed)}: not registered (the router and the "
                          "service keep the registry's current fit)[/]")  # fmt: skip
        for r in rows:
            console.print(f"   {r['task']:<14} {r['model']:<36} quality {r['quality_mean']:.3f} "
                          f"utility {r['utility_mean']:.3f}")  # fmt: skip
        console.print(
            f"   plots: {run / 'utility' / 'quality_forest.png'}, {run / 'utility' / 'calibration.png'}"
        )
    html = sorted((run / "reports").glob("*/*.html"))
    if html:
        console.print("[bold]Notebook reports[/]: " + ", ".join(str(p) for p in html))
    console.print(
        "Next: [bold]make ui[/] (Dagster at http://127.0.0.1:3000), [bold]make lab[/] (notebooks), "
        "[bold]stratmaster router evaluate --help[/], [bold]stratmaster retrieval evaluate --help[/]."
    )
    return len(found)


def run_demo(console: Console) -> int:
    settings = Settings()
    catalog = load_catalog(settings)
    n_chunks, store = _chunks_in_store(settings)
    if not n_chunks and not any((settings.run_dir / n / "summary.json").exists() for n in SUMMARY_ASSETS):
        # nothing to summarize: no servers started, no answers from empty indexes, and not a success
        console.print(f"[yellow]Nothing materialized in {settings.run_dir} (no chunks in the store: {store}; "
                      f"no asset summaries); {HINT}[/]")  # fmt: skip
        return 1
    t0 = time.perf_counter()
    console.rule("[bold]StratMaster demo: local model panel")
    failures = 0
    for entry in catalog.local():
        try:
            st = servers.start(entry, settings)
        except servers.ServerError as e:  # no binary, a port taken: one line, and the others still start
            failures += 1
            console.print(f"  [red]{entry.name}: not started: {e}[/]")
            continue
        console.print(f"  {entry.name}: {st.state} on port {st.port} (pid {st.pid})")
    gateway = Gateway(settings, catalog)
    failures += _panel(console, gateway)
    console.rule("[bold]Hybrid RAG over the demo corpus")
    failures += not _rag(console, settings, gateway, n_chunks, store)
    console.rule("[bold]Figures from the materialized assets")
    failures += not _figures(console, settings)
    console.print(
        f"summary printed in {time.perf_counter() - t0:.1f}s; model servers stay up (make models-down)"
    )
    return 1 if failures else 0
