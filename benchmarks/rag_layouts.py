"""SmolLM2 answering RAG-sized prompts from two users at once, under two server layouts, alternating rounds:

  one-server   one llama-server with `SM_LOCAL_THREADS` (2) threads and 2 parallel slots: what `make serve`
               runs; the two answers are decoded together
  two-servers  two llama-servers of one thread and one slot each, one user on each: no OpenMP barrier inside
               a token, and each answer has a core of its own

    .venv/bin/python benchmarks/rag_layouts.py [--requests 20] [--rounds 2]

Each request is the project's RAG prompt (`pipelines.rag.answer.build_messages`) with 4 distinct sources of
Python's reference topics (`pydoc_data.topics`, ~700 characters each: about 700 prompt tokens, as the serving
bench's), greedy, 64 tokens out; no two requests share their sources, so only the system message and the first
words (the same in both layouts) are read from the server's cache. Prints p50/p95 seconds per request, the
server-side prompt and generation time, and the wall time of each round (its throughput). The model alone: no
retrieval, no service. Ports 8193-8194.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pydoc_data.topics import topics  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from pipelines.llm import servers, weights  # noqa: E402
from pipelines.llm.catalog import load_catalog  # noqa: E402
from pipelines.rag.answer import build_messages  # noqa: E402
from pipelines.rag.retrieve import Hit  # noqa: E402
from pipelines.settings import Settings  # noqa: E402

LAYOUTS = {"one-server": [(None, 2)], "two-servers": [(1, 1), (1, 1)]}  # (threads, slots) per server
PORT = 8193
SOURCE_CHARS = 700


def prompts(n: int, seed: int) -> list[list[dict]]:
    text = " ".join(" ".join(topics.values()).split())
    pieces = [text[i : i + SOURCE_CHARS] for i in range(0, len(text) - SOURCE_CHARS, SOURCE_CHARS)]
    random.Random(seed).shuffle(pieces)
    out = []
    for i in range(n):
        hits = [Hit(f"d{i}-{j}#0", f"d{i}-{j}", 1.0, text=pieces[4 * i + j]) for j in range(4)]
        out.append(build_messages(f"What do these sources say about topic {i}?", hits))
    return out


def start(layout: str, settings: Settings) -> list[subprocess.Popen]:
    """The layout's servers, each answering; none left running where one fails to start."""
    procs: list[subprocess.Popen] = []
    try:
        _start(layout, settings, procs)
    except BaseException:
        stop(procs)
        raise
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=30)


def _start(layout: str, settings: Settings, procs: list[subprocess.Popen]) -> None:
    entry = load_catalog(settings).get("smollm2-135m")
    model = weights.weights_path(entry, settings)
    for k, (threads, slots) in enumerate(LAYOUTS[layout]):
        s = settings.model_copy(
            update={"local_threads": threads or settings.local_threads, "local_parallel": slots}
        )
        cmd, engine = servers.command(entry, model, PORT + k, s)
        if not engine.startswith("llama-server"):
            raise RuntimeError(f"no llama-server to compare layouts with ({engine}): make setup builds it")
        procs.append(subprocess.Popen(cmd, env=servers.server_env(s), stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))  # fmt: skip
    for k, proc in enumerate(procs):
        for _ in range(240):
            if proc.poll() is not None:
                raise RuntimeError(f"llama-server on port {PORT + k} exited at start-up ({proc.returncode})")
            if servers.healthy(PORT + k, settings.local_host, timeout=1.0):
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"llama-server on port {PORT + k} did not start")


async def load(settings: Settings, n_servers: int, batch: list[list[dict]]) -> tuple[list, list, list, float]:
    latencies, prompt_ms, gen_ms = [], [], []
    queue = list(range(len(batch)))

    async def user(u: int, client: httpx.AsyncClient) -> None:
        url = f"http://{settings.local_host}:{PORT + u % n_servers}/v1/chat/completions"
        while queue:
            messages = batch[queue.pop()]
            body = {"messages": messages, "max_tokens": 64, "temperature": 0.0}
            t0 = time.perf_counter()
            r = await client.post(url, json=body, timeout=600)
            r.raise_for_status()  # a failed request fails the run
            latencies.append(time.perf_counter() - t0)
            timings = r.json().get("timings", {})
            prompt_ms.append(timings.get("prompt_ms", np.nan))
            gen_ms.append(timings.get("predicted_ms", np.nan))

    t0 = time.perf_counter()
    async with httpx.AsyncClient() as client:
        await asyncio.gather(*(user(u, client) for u in range(2)))
    return latencies, prompt_ms, gen_ms, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20, help="per layout and round")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    settings = Settings()
    print(
        f"{'round':>5} {'layout':12} {'p50 s':>6} {'p95 s':>6} {'prompt ms':>9} {'gen ms':>7} {'wall s':>7}"
    )
    for rnd in range(args.rounds):
        order = list(LAYOUTS) if rnd % 2 == 0 else list(LAYOUTS)[::-1]
        batch = prompts(args.requests + 2, seed=rnd)  # the same prompts for both layouts in a round
        for layout in order:
            procs = start(layout, settings)
            try:
                asyncio.run(load(settings, len(procs), batch[-2:]))  # warm-up, one request per user
                lat, pms, gms, wall = asyncio.run(load(settings, len(procs), batch[:-2]))
            finally:
                stop(procs)
            print(f"{rnd + 1:>5} {layout:12} {np.percentile(lat, 50):6.2f} {np.percentile(lat, 95):6.2f} "
                  f"{np.nanmedian(pms):9.0f} {np.nanmedian(gms):7.0f} {wall:7.1f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
