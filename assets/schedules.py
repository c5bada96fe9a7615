"""Schedules beyond the nightly micro-bench (which lives with its partitioned job in `assets.bench`).

Times are UTC. The bench runs at 02:00 and the refit at 04:00; the weekly re-index runs on Sunday at 03:00, a
safety net behind the new-documents sensor. The refit fits the utility model and trains the router on the
RouterBench outcomes and the micro-bench partitions of the last SM_BENCH_EVIDENCE_DAYS days, and a refit whose
inputs did not change keeps its last result.
"""

import dagster as dg

refit_job = dg.define_asset_job(
    "nightly_refit",
    selection=dg.AssetSelection.groups("utility", "router"),
    description="Refit the Bayesian utility model, retrain the router and evaluate it (its checks gate it).",
)
reindex_job = dg.define_asset_job(
    "reindex",
    selection=dg.AssetSelection.groups("corpus", "indexes"),
    description="Ingest the corpus (incremental) and bring the keyword, dense and graph indexes up to date.",
)

nightly_refit_schedule = dg.ScheduleDefinition(
    name="nightly_refit_schedule",
    job=refit_job,
    cron_schedule="0 4 * * *",
    execution_timezone="UTC",
    description="Every night at 04:00 UTC, two hours after the nightly micro-bench.",
)
weekly_reindex_schedule = dg.ScheduleDefinition(
    name="weekly_reindex_schedule",
    job=reindex_job,
    cron_schedule="0 3 * * 0",
    execution_timezone="UTC",
    description="Every Sunday at 03:00 UTC: a full incremental pass even when the sensor saw nothing.",
)

SCHEDULES = [nightly_refit_schedule, weekly_reindex_schedule]
