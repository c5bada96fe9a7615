import dagster as dg

from assets import models, rag, router, utility
from assets.resources import GatewayResource, SettingsResource

MODULES = [models, rag, utility, router]
GROUPS = ["models", "corpus", "indexes", "utility", "router"]
settings = SettingsResource()

# `make demo` runs this job: the whole graph on the embedded defaults (partitioned assets excluded).
demo_job = dg.define_asset_job(
    "demo", selection=dg.AssetSelection.all(), description="Everything, end to end, on embedded defaults."
)
group_jobs = [dg.define_asset_job(f"{g}_job", selection=dg.AssetSelection.groups(g)) for g in GROUPS]

defs = dg.Definitions(
    assets=dg.load_assets_from_modules(MODULES),
    asset_checks=dg.load_asset_checks_from_modules(MODULES),
    jobs=[demo_job, *group_jobs],
    resources={"settings": settings, "gateway": GatewayResource(settings=settings)},
)
