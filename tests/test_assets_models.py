import dagster as dg
import pytest

from assets import defs
from assets.models import model_panel
from assets.resources import GatewayResource, SettingsResource

pytestmark = pytest.mark.models


def test_definitions_load_and_resolve():
    defs.resolve_all_job_defs()
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert "model_panel" in keys


def test_model_panel_materializes_against_real_servers(model_settings, local_servers):
    settings = SettingsResource(
        overrides={
            "run_dir": str(model_settings.run_dir),
            "model_cache_dir": str(model_settings.models_dir),
            "local_base_port": str(model_settings.local_base_port),
        }
    )
    res = dg.materialize(
        [model_panel], resources={"settings": settings, "gateway": GatewayResource(settings=settings)}
    )
    assert res.success
    md = res.asset_materializations_for_node("model_panel")[0].metadata
    assert md["up"].value == 2
    assert "smollm2-135m" in md["models"].value and "gemma3-270m" in md["models"].value
    (check,) = res.get_asset_check_evaluations()
    assert check.check_name == "every_local_model_answers" and check.passed
    assert check.metadata["down"].value == "none"
