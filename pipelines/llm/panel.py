"""Health of the local model panel: servers started, one short real chat each through the gateway."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipelines.llm import servers

if TYPE_CHECKING:
    from pipelines.llm.gateway import Gateway

PING = [{"role": "user", "content": "Reply with the single word: ready"}]


def panel_check(gateway: Gateway, start: bool = True) -> list[dict[str, Any]]:
    from pipelines.llm.gateway import GatewayError  # litellm: imported when a check runs, not with the assets

    rows = []
    for entry in gateway.catalog.local():
        if start:
            servers.start(entry, gateway.settings)
        try:
            r = gateway.chat(entry.name, PING, max_tokens=8)
            rows.append({"model": entry.name, "ok": r.model == entry.name, "answered_by": r.model,
                         "latency_s": round(r.latency_s, 3), "tokens_out": r.output_tokens,
                         "cost_usd": r.cost_usd, "error": ""})  # fmt: skip
        except GatewayError as e:
            rows.append({"model": entry.name, "ok": False, "answered_by": "", "latency_s": float("nan"),
                         "tokens_out": 0, "cost_usd": 0.0, "error": str(e)})  # fmt: skip
    return rows
