"""The local model panel as an asset: servers up, one real chat each through the gateway."""

import dagster as dg
import pandas as pd

from assets.resources import GatewayResource, plain_metadata
from pipelines.llm.panel import panel_check


@dg.asset(
    group_name="models",
    kinds={"llama.cpp", "litellm"},
    check_specs=[dg.AssetCheckSpec("every_local_model_answers", asset="model_panel", blocking=True)],
)
def model_panel(context: dg.AssetExecutionContext, gateway: GatewayResource) -> dg.MaterializeResult:
    """Start the local llama.cpp servers and check each model answers through the gateway (the check reads
    the same calls: one chat per model, not two)."""
    rows = panel_check(gateway.get())
    if not rows:
        raise dg.Failure("the catalog names no local model to start and check (SM_CATALOG_PATH)")
    df = pd.DataFrame(rows)
    context.log.info("\n" + df.to_string(index=False))
    down = [r["model"] for r in rows if not r["ok"]]
    return dg.MaterializeResult(
        metadata={
            "models": dg.MetadataValue.md(df.to_markdown(index=False)),
            "up": sum(r["ok"] for r in rows),
            **plain_metadata({"mean_latency_s": df["latency_s"].mean()}),  # NaN (none up): null
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="every_local_model_answers",
                passed=not down,
                metadata={"down": ", ".join(down) or "none"},
            )
        ],
    )
