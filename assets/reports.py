"""Research reports: the four notebooks executed by papermill over the materialized assets, as HTML + PNGs."""

from pathlib import Path

import dagster as dg

from assets.resources import SettingsResource
from pipelines.files import hidden
from pipelines.memo import fingerprint, forget, recall, remember, source_digest
from pipelines.reports import NOTEBOOKS_DIR, NotebookError, report_parameters, run_notebooks
from pipelines.settings import REPO_ROOT

# what the notebooks read; benchmark_results is daily-partitioned, so the reports read whatever partitions
# exist instead of depending on one (the benchmarks notebook says when there is none yet)
READS = [
    "retrieval_evaluation",
    "router_evaluation",
    "router",
    "utility_posterior",
    "leaderboard_priors",
    "routerbench_outcomes",
    "keyword_index",
    "dense_index",
]


@dg.asset(group_name="reports", deps=[dg.AssetKey(k) for k in READS], kinds={"jupyter", "html"})
def reports(context: dg.AssetExecutionContext, settings: SettingsResource) -> dg.MaterializeResult:
    """Execute notebooks/{retrieval,benchmarks,utility,router}.ipynb against this run folder; each becomes
    runs/reports/<name>/ with the executed notebook, a self-contained HTML page and its figures as PNG."""
    s = settings.get()
    out = s.run_dir / "reports"
    params = report_parameters(s)
    # what the notebooks read, by content: an unchanged run folder keeps the reports it already has
    reads = [s.run_dir / d for d in ("retrieval_evaluation", "router_evaluation", "utility")]
    reads.append(s.run_dir / "store" / "corpus" / "manifest.json")  # the chunks, by their content hashes
    # the bench's partitions and tables, not all of bench/ (benchmarks/retrieval.py keeps its SciFact indexes
    # there: 1 GB hashed per materialization, and any `make bench` re-ran the four notebooks)
    bench = s.run_dir / "bench"
    # (not the hidden temp files of a table being written: one left over changed the fingerprint for good,
    # and one renamed away while the fingerprint read it made open() fail)
    tables = [p for p in bench.glob("*.parquet") if not hidden(p.relative_to(bench))]
    reads += sorted(bench.glob("????-??-??")) + sorted(tables)
    env = s.as_env()  # the notebooks' Settings() are these, overrides included
    # and the library the notebooks import (the posterior's summaries, plots, metrics): its code draws them
    code = source_digest(REPO_ROOT / "pipelines", REPO_ROOT / "router_models", patterns=("*.py", "*.yaml"))
    fp = fingerprint(params, env, NOTEBOOKS_DIR, (s.run_dir / "router" / "current").resolve(), *reads, code)
    done = recall(out / "fingerprint.json", fp)
    reused = done is not None and all(Path(r["html"]).exists() for r in done["reports"])
    if not reused:
        forget(out / "fingerprint.json")  # before reports are overwritten
        try:
            ran = run_notebooks(out, params, env=env)
        except NotebookError as e:
            raise dg.Failure(description=str(e), metadata={"notebook": e.name}) from e
        rows = [
            {"name": r.name, "html": str(r.html), "figures": len(r.figures), "seconds": r.seconds}
            for r in ran
        ]
        remember(out / "fingerprint.json", fp, reports=rows)
        done = {"reports": rows}
    assert done is not None
    md: dict[str, dg.RawMetadataValue] = {"folder": dg.MetadataValue.path(str(out)), "reused": reused}
    for r in done["reports"]:
        html = Path(r["html"])
        context.log.info(f"{r['name']}: {html} ({r['figures']} figures, {r['seconds']:.0f} s)")
        md[f"{r['name']}_html"] = dg.MetadataValue.url(html.as_uri())
        md[f"{r['name']}_path"] = dg.MetadataValue.path(str(html))
        md[f"{r['name']}_pngs"] = r["figures"]
        md[f"{r['name']}_seconds"] = round(r["seconds"], 1)
    links = "\n".join(
        f"- [{r['name']}]({Path(r['html']).as_uri()}): {r['figures']} figures" for r in done["reports"]
    )
    md["reports"] = dg.MetadataValue.md(links)
    return dg.MaterializeResult(metadata=md, data_version=dg.DataVersion(fp[:16]))
