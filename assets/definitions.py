import dagster as dg

from assets import bench, models, rag, reports, router, schedules, sensors, serving, utility
from assets.resources import GatewayResource, SettingsResource

MODULES = [models, rag, bench, utility, router, serving, reports]
GROUPS = ["models", "corpus", "indexes", "bench", "utility", "router", "serving", "reports"]
# at launch: run config's `resources.settings.config.overrides` then reaches the gateway too (a settings
# resource built here was captured by GatewayResource as it was, overrides ignored)
settings = SettingsResource.configure_at_launch()

# `make demo` materializes the model panel (its check gates the bench), the prompt set and today's
# micro-bench partition (evidence for the utility model), then runs this job (the rest of the unpartitioned
# graph), then the reports.
demo_job = dg.define_asset_job(
    "demo",
    selection=dg.AssetSelection.all()
    - dg.AssetSelection.assets(
        models.model_panel, bench.prompt_set, bench.benchmark_results, reports.reports
    ),
    description="Everything but the model panel, the prompt set, the daily micro-bench and the notebook "
    "reports, on embedded defaults (make demo runs those before and after it).",
)
group_jobs = [
    dg.define_asset_job(
        f"{g}_job", selection=dg.AssetSelection.groups(g) - dg.AssetSelection.assets(bench.benchmark_results)
    )
    for g in GROUPS
]

defs = dg.Definitions(
    assets=dg.load_assets_from_modules(MODULES),
    asset_checks=dg.load_asset_checks_from_modules(MODULES),
    jobs=[demo_job, bench.bench_job, *group_jobs],
    schedules=[bench.nightly_bench_schedule, *schedules.SCHEDULES],
    sensors=sensors.SENSORS,
    # one process per run, steps in it: a subprocess per step re-imports the stack (seconds each) on 2 cores
    executor=dg.in_process_executor,
    resources={"settings": settings, "gateway": GatewayResource(settings=settings)},
)
