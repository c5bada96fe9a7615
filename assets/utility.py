"""Leaderboard priors, the PyMC utility posterior per task x model, and the registry table."""

import dagster as dg
import sqlalchemy as sa

from assets.resources import SettingsResource, evidence_metadata, plain_metadata
from pipelines.bench.outcomes import write_table
from pipelines.corpus.store import open_store
from pipelines.files import held
from pipelines.llm.catalog import load_catalog
from pipelines.memo import fingerprint
from router_models.utility.pipeline import evidence_outcomes, fit_posterior, register_posterior
from router_models.utility.priors import leaderboard_priors as build_priors

CHECKS = ["r_hat", "ess_bulk", "divergences", "calibration", "prior_predictive"]


@dg.asset(group_name="utility", kinds={"csv"})
def leaderboard_priors(settings: SettingsResource) -> dg.MaterializeResult:
    """The versioned leaderboard snapshot shipped with the package, overlaid by the shared Arena figures; a
    model with no public figure gets a weak prior."""
    s = settings.get()
    models = [e.name for e in load_catalog(s).local()]
    priors = build_priors(s.shared_data_dir / "priors" / "arena_elo.csv", models)
    path = write_table(priors, s.run_dir / "utility" / "leaderboard_priors.csv")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(fingerprint(priors)[:16]),
        metadata={
            "path": str(path),
            "models": len(priors),
            "with_figure": int(priors["arena_elo"].notna().sum()),
            "table": dg.MetadataValue.md(priors.to_markdown(index=False)),
        },
    )


@dg.multi_asset(
    group_name="utility",
    specs=[
        dg.AssetSpec("utility_posterior", deps=[leaderboard_priors, "benchmark_results"], kinds={"pymc"}),
        dg.AssetSpec("model_registry", deps=["utility_posterior"], kinds={"sqlite"}, skippable=True),
    ],
    check_specs=[dg.AssetCheckSpec(c, asset="utility_posterior") for c in CHECKS],
)
def utility_posterior(context: dg.AssetExecutionContext, settings: SettingsResource):
    """Fit the hierarchical model (NUTS) on RouterBench's outcomes and the micro-bench's answers of the last
    SM_BENCH_EVIDENCE_DAYS days (the local models' evidence, beside the leaderboard priors), save the NetCDF
    with its data+config hash (run_dir/utility, and the object store under utility/<hash>/; summary.json
    under utility/<that hash with the lambdas>/), then record the fit in the registry table in one
    transaction (a reader never sees half a fit). When the saved NetCDF's hash matches the data, priors and
    configuration, it is read, not refitted (a rerun does no needless work). A fit that fails a check is not
    registered: the registry keeps its current fit, and `model_registry` is not materialized."""
    s = settings.get()
    outcomes, local = evidence_outcomes(s)
    priors = build_priors(s.shared_data_dir / "priors" / "arena_elo.csv")
    # one fit at a time in the shared folder: two runs at once (the queue starts two) archived the other
    # run's NetCDF under this one's hash; the second waits here, then reads the first's fit if it is the same
    with held(s.run_dir / "utility" / ".lock"):
        art = fit_posterior(outcomes, priors, s.run_dir / "utility", lambda_cost=s.lambda_cost,
                            lambda_latency=s.lambda_latency, reuse=True)  # fmt: skip
        # the object store: the NetCDF under its data+config hash, summary.json under the hash that also
        # covers the lambdas of its utility_mean (keyed by the fit's hash, a lambda change left the first
        # summary there)
        store, prefix = open_store(s), f"utility/{art.fit.fit_hash[:16]}"
        summary_key = f"utility/{art.registry_hash[:16]}/{art.paths['summary_json'].name}"
        for name, key in (("netcdf", f"{prefix}/{art.paths['netcdf'].name}"), ("summary_json", summary_key)):
            if not store.exists(key):
                store.put(key, art.paths[name].read_bytes())
    checks = art.checks
    failed = art.failed_checks
    d = art.fit.diagnostics
    forest = art.paths["forest_png"]
    # same data, priors, config and lambdas: same version (summary.json's utilities follow the lambdas)
    version = dg.DataVersion(art.registry_hash[:16])
    yield dg.MaterializeResult(
        asset_key="utility_posterior",
        data_version=version,
        metadata={
            "netcdf": str(art.paths["netcdf"]),
            "object_store_prefix": f"{s.object_store}:{prefix}",
            "object_store_summary": f"{s.object_store}:{summary_key}",
            "fit_hash": art.fit.fit_hash,
            **evidence_metadata(local),
            **plain_metadata(d),
            "summary": dg.MetadataValue.md(art.summary.round(4).to_markdown(index=False)),
            "forest_plot": dg.MetadataValue.md(f"![forest]({forest.as_uri()})"),
            "notes": "; ".join(art.notes) or "none",
        },
    )
    if failed:
        context.log.warning(f"utility fit {art.fit.fit_hash[:12]} failed {', '.join(failed)}: not registered")
    else:
        yield dg.MaterializeResult(
            asset_key="model_registry",
            data_version=dg.DataVersion(art.registry_hash[:16]),  # the fit and the lambdas
            metadata={
                "fit_id": register_posterior(art, s.registry_sqlalchemy_url),
                "rows": len(art.summary),
                # no password, wherever the URL holds it (user:pass@ or ?password=)
                "url": sa.make_url(s.registry_sqlalchemy_url).set(password=None, query={}).render_as_string(),
            },
        )
    for name in CHECKS:
        yield dg.AssetCheckResult(asset_key="utility_posterior", check_name=name, passed=bool(checks[name]))
