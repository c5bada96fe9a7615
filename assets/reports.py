"""Research reports: the four notebooks executed by papermill over the materialized assets, as HTML + PNGs."""

import dagster as dg

from assets.resources import SettingsResource
from pipelines.reports import NOTEBOOKS, NotebookError, run_notebooks

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
    common = {"run_dir": str(s.run_dir)}
    params = {n: dict(common) for n in NOTEBOOKS}
    params["router"]["shared_data_dir"] = str(s.shared_data_dir)
    try:
        done = run_notebooks(out, params)
    except NotebookError as e:
        raise dg.Failure(description=str(e), metadata={"notebook": e.name}) from e
    md: dict[str, dg.RawMetadataValue] = {"folder": dg.MetadataValue.path(str(out))}
    for r in done:
        context.log.info(f"{r.name}: {r.html} ({len(r.figures)} figures, {r.seconds:.0f} s)")
        md[f"{r.name}_html"] = dg.MetadataValue.url(r.html.as_uri())
        md[f"{r.name}_path"] = dg.MetadataValue.path(str(r.html))
        md[f"{r.name}_pngs"] = len(r.figures)
        md[f"{r.name}_seconds"] = round(r.seconds, 1)
    links = "\n".join(f"- [{r.name}]({r.html.as_uri()}): {len(r.figures)} figures" for r in done)
    md["reports"] = dg.MetadataValue.md(links)
    return dg.MaterializeResult(metadata=md)
