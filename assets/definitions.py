
import dagster as dg

from assets import models
from assets.resources import GatewayResource, SettingsResource

settings = SettingsResource()

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([models]),
    asset_checks=dg.load_asset_checks_from_modules([models]),
    resources={"settings": settings, "gateway": GatewayResource(settings=settings)},
)
