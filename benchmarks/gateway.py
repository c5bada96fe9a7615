"""Gateway overhead: per local model, 20 short chats called directly (OpenAI SDK to llama.cpp) and through
the gateway (LiteLLM Router), interleaved so both see the same machine load. Prints tokens/s, p50/p95 latency
and the gateway/direct latency ratio.  Usage: python benchmarks/gateway.py [--n 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

from openai import OpenAI
from rich.console import Console
from rich.table import Table

from pipelines.llm import servers
from pipelines.llm.catalog import load_catalog
from pipelines.llm.gateway import LOCAL_API_KEY, Gateway
from pipelines.settings import Settings

PROMPTS = [
    "Name a primary colour.", "What is 7 times 6?", "Give a synonym for 'fast'.",
    "What is the capital of Italy?", "Name a planet in the solar system.", "Say hello in French.",
    "What is water made of?", "Name a mammal.",
]  # fmt: skip


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def direct_call(client: OpenAI, entry, prompt: str, max_tokens: int) -> tuple[float, int]:
    """One chat straight to the server, with what the gateway sends it too (the catalog's stop strings and
    repeat penalty): else Gemma stops at "###" on one path only, and the ratio measures answer length."""
    t0 = time.perf_counter()
    stream = client.chat.completions.create(
        model=entry.name, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
        temperature=0, stream=True, stream_options={"include_usage": True},
        stop=list(entry.local.stop) or None, extra_body={"repeat_penalty": entry.local.repeat_penalty},
    )  # fmt: skip
    out = pieces = 0
    for chunk in stream:
        if chunk.usage:
            out = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            pieces += 1  # llama.cpp streams one token per chunk and sends no usage chunk
    return time.perf_counter() - t0, out or pieces


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()
    settings = Settings()
    catalog = load_catalog(settings)
    gw = Gateway(settings, catalog)
    table = Table("model", "path", "n", "tokens/s", "p50 s", "p95 s", "gateway/direct p50")
    started = []  # servers already up are reused; those started here are stopped at the end
    try:
        for entry in catalog.local():
            if servers.status(entry, settings).state == "down":
                servers.start(entry, settings)
                started.append(entry)
            _measure(entry, gw, args, table)
    finally:
        for entry in started:
            servers.stop(entry, settings)
    Console().print(table)


def _measure(entry, gw: Gateway, args: argparse.Namespace, table: Table) -> None:
    """20 (--n) short chats to one local model, directly and through the gateway, interleaved."""
    client = OpenAI(base_url=entry.api_base, api_key=LOCAL_API_KEY)
    direct_call(client, entry, PROMPTS[0], 4)  # a warm-up on both paths: neither times a first call's set-up
    gw.chat(entry.name, [{"role": "user", "content": PROMPTS[0]}], max_tokens=4)
    lat = {"direct": [], "gateway": []}
    toks = {"direct": 0, "gateway": 0}
    for i in range(args.n):
        prompt = PROMPTS[i % len(PROMPTS)]
        t, out = direct_call(client, entry, prompt, args.max_tokens)
        lat["direct"].append(t)
        toks["direct"] += out
        r = gw.chat(entry.name, [{"role": "user", "content": prompt}], max_tokens=args.max_tokens)
        lat["gateway"].append(r.latency_s)
        toks["gateway"] += r.output_tokens
    ratio = statistics.median(lat["gateway"]) / statistics.median(lat["direct"])
    for path in ("direct", "gateway"):
        table.add_row(
            entry.name, path, str(args.n), f"{toks[path] / sum(lat[path]):.1f}",
            f"{pct(lat[path], 0.5):.3f}", f"{pct(lat[path], 0.95):.3f}",
            f"{ratio:.3f}" if path == "gateway" else "",
        )  # fmt: skip


if __name__ == "__main__":
    main()
