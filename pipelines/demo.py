"""`make demo`: the local model panel up, a real chat to each model through the gateway, a printed table."""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from pipelines.llm import servers
from pipelines.llm.catalog import load_catalog
from pipelines.llm.gateway import Gateway, GatewayError
from pipelines.settings import Settings

DEMO_PROMPT = "In one sentence: why do researchers compare several language models before choosing one?"


def run_demo(console: Console) -> int:
    settings = Settings()
    catalog = load_catalog(settings)
    t0 = time.perf_counter()
    console.rule("[bold]StratMaster demo: local model panel")
    for entry in catalog.local():
        st = servers.start(entry, settings)
        console.print(f"  {entry.name}: {st.state} on port {st.port} (pid {st.pid})")
    gateway = Gateway(settings, catalog)
    table = Table("model", "answered by", "answer", "latency s", "ttft s", "tokens in/out", "cost $")
    failures = 0
    for entry in catalog.local():
        try:
            r = gateway.chat(entry.name, [{"role": "user", "content": DEMO_PROMPT}], max_tokens=64)
        except GatewayError as e:
            failures += 1
            table.add_row(entry.name, "-", f"[red]{e}[/]", "-", "-", "-", "-")
            continue
        excerpt = " ".join(r.text.split())[:90]
        table.add_row(
            r.requested_model, r.model + (" (fallback)" if r.fallback_used else ""), excerpt,
            f"{r.latency_s:.2f}", f"{r.ttft_s:.2f}" if r.ttft_s is not None else "-",
            f"{r.input_tokens}/{r.output_tokens}", f"{r.cost_usd:.8f}",
        )  # fmt: skip
    console.print(table)
    console.print(f"demo finished in {time.perf_counter() - t0:.1f}s; servers stay up (`make models-down`).")
    return 1 if failures else 0
