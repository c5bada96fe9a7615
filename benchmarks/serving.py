"""Serving load test on loopback: `bentoml serve` plus a bounded closed-loop load per endpoint.

Starts the local model servers (or reuses ones already answering on --models-port), then
`bentoml serve serving.service:StratMaster` with the router in SM_ROUTER_DIR (default runs/router/current, as
`make serve`) and a generated API key; waits for /readyz; then, one phase after the other, a fixed number of
concurrent users each send a request, wait for the answer and send the next, for --duration seconds:

  livez          GET /livez, BentoML's own liveness probe: the ceiling of the server stack and this client
                 on this machine, the reference the route phases are compared with (ratio printed)
  route          POST /v1/route, distinct prompts: RouterBench's in turn, a tag after each from the second
                 pass on and at every later --route-users level (no text repeats in a run, so the router's
                 embedding and PII caches never answer; the pool holds 2,225 prompts, a phase sends ~13,000)
  route-repeat   POST /v1/route, a pool of 32 prompts (what the router's embedding/PII caches save)
  chat           POST /v1/chat/completions, model smollm2-135m, short questions, 32 tokens
  chat-stream    the same with stream=true: time to first token and to the last byte
  rag            POST /v1/rag, model smollm2-135m, distinct questions about the demo corpus (Python reference)

and prints requests/s, p50/p95/p99, output tokens per answer (an answer cut short shows there, not only as
a fast one) and the error rate per phase against the seed's targets (/v1/route p99
<= 25 ms and >= 200 req/s on 2 cores; p95 < 1.5 s simple chat, < 3 s RAG; errors < 0.5%). Everything it
started is stopped at the end. The load generator runs on the same cores as the server: the livez and route
phases use `wrk` (C, one thread, a Lua script cycling through the request bodies) when it is installed, as
it costs the server far less CPU than a Python client; the others, and all phases with `--client httpx`,
use asyncio + httpx.

Usage: python benchmarks/serving.py [--duration 30] [--port 8320] [--models-port 8321] [--phases route,chat]
    [--route-users 2,8] [--client auto|wrk|httpx] [--min-requests 40]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from pipelines.settings import REPO_ROOT, Settings

PHASES = ("livez", "route", "route-repeat", "chat", "chat-stream", "rag")
WRK_PHASES = ("livez", "route", "route-repeat")  # no streaming: wrk measures them with less client CPU
CHAT_QUESTIONS = [
    "Name a primary colour.", "What is 7 times 6?", "Give a synonym for 'fast'.",
    "What is the capital of Italy?", "Name a planet in the solar system.", "Say hello in French.",
    "What is water made of?", "Name a mammal.",
]  # fmt: skip
RAG_QUESTIONS = [
    "What does the assert statement do?", "How does the with statement use a context manager?",
    "What is the difference between break and continue?", "How are default argument values evaluated?",
    "What does the global statement declare?", "How does augmented assignment work?",
    "What happens when an exception is raised in a try block?", "What does await do?",
    "How are comparisons chained?", "What is a formatted string literal?",
    "How does the del statement work?", "What are the bitwise operators?",
]  # fmt: skip


def rag_questions() -> list[str]:
    """The questions above, then one per reference topic of the demo corpus (91 with Python 3.11.7's topics),
    so that a phase repeats no prompt until it has sent them all: llama-server keeps past prompts' state, and
    a repeat would be nearly free."""
    from pydoc_data.topics import topics

    about = [f"What does the Python reference say about {t.replace('-', ' ')}?" for t in topics]
    return RAG_QUESTIONS + about


TARGETS = {  # phase -> (what, limit) from the seed and issue 7
    "livez": "reference: BentoML + this client, no work",
    "route": "p99 <= 25 ms and >= 200 req/s",
    "route-repeat": "p99 <= 25 ms and >= 200 req/s",
    "chat": "p95 < 1.5 s",
    "chat-stream": "p95 < 1.5 s",
    "rag": "p95 < 3 s",
}


@dataclass
class Phase:
    name: str
    users: int
    make: Callable[[int], tuple[str, dict[str, Any] | None]]  # request index -> (path, JSON body; None: GET)
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # output tokens per answer: a cut-off answer shows here
    errors: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    note: str = ""
    client: str = "httpx"
    wrk_ms: dict[int, float] = field(default_factory=dict)  # wrk's latency percentiles: q -> ms
    wrk_ok: int = 0

    @property
    def ok(self) -> int:
        return self.wrk_ok if self.client == "wrk" else len(self.latencies)

    def pct_ms(self, q: int) -> float:
        if self.client == "wrk":
            return self.wrk_ms.get(q, float("nan"))
        return pct([x * 1000 for x in self.latencies], q)


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _answering(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def local_models(port: int) -> Iterator[str]:
    """Local llama.cpp servers on `port` and `port + 1`: reused when both answer, else started and stopped."""
    from pipelines.llm import servers
    from pipelines.llm.catalog import load_catalog

    if _answering(port) and _answering(port + 1):
        yield f"reused the servers on ports {port}/{port + 1}"
        return
    with tempfile.TemporaryDirectory(prefix="sm-bench-serving-") as run_dir:
        settings = Settings(
            run_dir=Path(run_dir), model_cache_dir=Settings().models_dir, local_base_port=port,
            local_ready_timeout_s=180,
        )  # fmt: skip
        entries = load_catalog(settings).local()
        try:
            for e in entries:
                servers.start(e, settings)
            yield f"started on ports {port}/{port + 1}"
        finally:
            for e in entries:
                servers.stop(e, settings)


@contextlib.contextmanager
def bento(
    port: int, models_port: int, key: str, router_dir: str | None, ready_timeout: float, workdir: Path
) -> Iterator[None]:
    """`bentoml serve` in its own process group; yields once /readyz answers 200, stops it afterwards."""
    if not _free(port):
        raise SystemExit(f"port {port} is taken; choose another with --port")
    env = {**os.environ, "SM_API_KEYS": key, "SM_LOCAL_BASE_PORT": str(models_port)}
    base = Settings()
    env.setdefault("SM_MODEL_CACHE_DIR", str(base.models_dir))
    env.setdefault("SM_RUN_DIR", str(base.run_dir))  # the corpus store and indexes /v1/rag reads
    if router_dir:
        env["SM_ROUTER_DIR"] = router_dir
    log = tempfile.NamedTemporaryFile(prefix="sm-bench-bento-", suffix=".log", delete=False)  # noqa: SIM115
    cmd = [str(Path(sys.executable).with_name("bentoml")), "serve", "serving.service:StratMaster",
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise SystemExit(
                    f"bentoml serve exited ({proc.returncode}); log {log.name}:\n{_tail(log.name)}"
                )
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - t0 > ready_timeout:
                raise SystemExit(f"not ready after {ready_timeout:.0f}s; log {log.name}:\n{_tail(log.name)}")
            time.sleep(1)
        print(f"service ready in {time.monotonic() - t0:.0f}s (log {log.name})", flush=True)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _tail(path: str, n: int = 3000) -> str:
    return Path(path).read_text(errors="replace")[-n:]


async def warm_up(client: httpx.AsyncClient, phase: Phase, n: int = 2) -> None:
    """The first call of an endpoint pays for lazy loading (retriever, connections): not measured."""
    for i in range(n):
        path, body = phase.make(i)
        with contextlib.suppress(httpx.HTTPError):
            await (client.get(path) if body is None else client.post(path, json=body))


async def run_phase(
    client: httpx.AsyncClient, phase: Phase, duration: float, min_requests: int = 0, warmup: int = 2
) -> None:
    """Closed loop: `phase.users` workers, each sends the next request when its previous one is answered,
    for `duration` seconds and until `min_requests` requests were sent."""
    await warm_up(client, phase, warmup)
    counter = itertools.count(warmup)
    deadline = time.perf_counter() + duration
    sent = 0

    async def user() -> None:
        nonlocal sent
        while time.perf_counter() < deadline or sent < min_requests:
            sent += 1
            path, body = phase.make(next(counter))
            t0 = time.perf_counter()
            try:
                if body is None:
                    r = await client.get(path)
                elif body.get("stream"):
                    ttft, deltas = None, 0
                    async with client.stream("POST", path, json=body) as r:
                        async for line in r.aiter_lines():
                            if '"content": "' in line and '"content": ""' not in line:
                                deltas += 1
                                ttft = ttft or time.perf_counter() - t0
                            if line.startswith('data: {"error"'):
                                raise httpx.HTTPError("in-band stream error")
                    if ttft is not None:
                        phase.ttfts.append(ttft)
                    phase.tokens.append(deltas)
                else:
                    r = await client.post(path, json=body)
                    doc = r.json() if r.status_code == 200 and path != "/v1/route" else {}
                    usage = doc.get("usage") or doc.get("stratmaster", {}).get("usage")  # chat | rag
                    if usage:
                        phase.tokens.append(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
                ok = r.status_code == 200
                kind = f"HTTP {r.status_code}"
            except httpx.HTTPError as e:
                ok, kind = False, type(e).__name__
            if ok:
                phase.latencies.append(time.perf_counter() - t0)
            else:
                phase.errors[kind] = phase.errors.get(kind, 0) + 1

    t0 = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(phase.users)))
    phase.elapsed = time.perf_counter() - t0


WRK_SCRIPT = r"""
-- request bodies, one JSON document per line, sent in turn (wrk runs one thread: one Lua state)
local bodies, path, i = {}, os.getenv("SM_WRK_PATH"), 0
local f = os.getenv("SM_WRK_BODIES")
if f ~= "" then for line in io.lines(f) do bodies[#bodies + 1] = line end end
function request()
  i = i + 1
  if #bodies == 0 then return wrk.format("GET", path) end
  return wrk.format("POST", path, nil, bodies[(i % #bodies) + 1])
end
function done(s, latency, requests)
  local e = s.errors
  io.write(string.format(
    'WRK {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, ' ..
    '"timeout": %d, "p50": %d, "p95": %d, "p99": %d}\n', s.requests, s.duration, e.connect, e.read,
    e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


def run_wrk(port: int, key: str, phase: Phase, duration: float, bodies: list[dict[str, Any]] | None,
            path: str) -> None:  # fmt: skip
    """The phase with wrk: one thread, `phase.users` connections, closed loop, `duration` seconds."""
    with tempfile.TemporaryDirectory(prefix="sm-bench-wrk-") as d:
        script, body_file = Path(d, "bench.lua"), Path(d, "bodies.jsonl")
        script.write_text(WRK_SCRIPT)
        body_file.write_text("".join(json.dumps(b) + "\n" for b in bodies or []))
        env = {**os.environ, "SM_WRK_PATH": path, "SM_WRK_BODIES": str(body_file) if bodies else ""}
        cmd = ["wrk", "-t1", f"-c{phase.users}", f"-d{duration:.0f}s", "--timeout", "10s", "-s", str(script),
               "-H", f"Authorization: Bearer {key}", "-H", "Content-Type: application/json",
               f"http://127.0.0.1:{port}"]  # fmt: skip
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + 60)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRK ")), None)
    if out.returncode or line is None:
        phase.note = f"wrk failed ({out.returncode}): {(out.stderr or out.stdout)[-300:]}"
        return
    r = json.loads(line[4:])
    phase.client, phase.elapsed = "wrk", r["duration_us"] / 1e6
    phase.errors = {k: r[k] for k in ("connect", "read", "write", "status", "timeout") if r[k]}
    phase.wrk_ok = r["requests"] - r["status"]  # non-2xx answers are counted in requests too
    phase.wrk_ms = {q: r[f"p{q}"] / 1000 for q in (50, 95, 99)}


def route_prompts(n: int, seed: int = 0) -> list[str]:
    path = Settings().shared_data_dir / "routerbench" / "prompts_train.csv"
    prompts = pd.read_csv(path, usecols=["prompt"])["prompt"].astype(str).drop_duplicates()
    return prompts.sample(frac=1.0, random_state=seed).head(n).tolist()


def letters(n: int) -> str:
    """`n` in base 26, written a-z: a tag without digits, which the router's PII check would look into (a
    phone number, a card) where the prompts it tags almost never make it."""
    out = ""
    while True:
        n, r = divmod(n, 26)
        out = chr(ord("a") + r) + out
        if n == 0:
            return out


def distinct_prompt(pool: list[str], i: int, level: int) -> str:
    """The i-th prompt of route level `level`: the pool's in turn, tagged from its second pass on and at every
    later level, so that no text repeats in a run (the pool is smaller than a phase's requests)."""
    k = level * 1_000_000 + i // len(pool)
    return pool[i % len(pool)] if k == 0 else f"{pool[i % len(pool)]}\n\n(request {letters(k)} {letters(i)})"


def phases(args: argparse.Namespace) -> list[Phase]:
    pool = route_prompts(20_000)
    distinct, repeated = pool[:-32], pool[-32:]
    chat_model = args.chat_model

    def chat(i: int, stream: bool = False) -> tuple[str, dict[str, Any]]:
        msg = [{"role": "user", "content": CHAT_QUESTIONS[i % len(CHAT_QUESTIONS)]}]
        return "/v1/chat/completions", {
            "model": chat_model,
            "messages": msg,
            "max_tokens": 32,
            "stream": stream,
        }

    rag_pool = rag_questions()

    def rag(i: int) -> tuple[str, dict[str, Any]]:
        q = rag_pool[i % len(rag_pool)]
        return "/v1/rag", {"question": q, "model": chat_model, "k": 4, "max_tokens": 64}

    def make(name: str, level: int) -> Callable[[int], tuple[str, dict[str, Any] | None]]:
        return {
            "livez": lambda i: ("/livez", None),
            "route": lambda i: ("/v1/route", {"prompt": distinct_prompt(distinct, i, level)}),
            "route-repeat": lambda i: ("/v1/route", {"prompt": repeated[i % len(repeated)]}),
            "chat": chat,
            "chat-stream": lambda i: chat(i, stream=True),
            "rag": rag,
        }[name]

    # livez and the route phases once per --route-users level (the closed loop's concurrency)
    return [
        Phase(name, users, make(name, level))
        for name in args.phases
        for level, users in enumerate(args.route_users if name in WRK_PHASES else [args.chat_users])
    ]


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def report(results: list[Phase], models_note: str, args: argparse.Namespace | None) -> None:
    if args is not None:
        print(f"\nserving load test: {args.duration:.0f}s per phase, local models {models_note}, "
              f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
    head = f"{'phase':<13}{'users':>6}{'ok':>7}{'err':>5}{'err %':>7}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}"
    print(head + f"{'p99 ms':>9}{'ttft p95':>10}{'tok/ans':>8}  target")
    total = errors = 0
    for p in results:
        ok, err = p.ok, sum(p.errors.values())
        total, errors = total + ok + err, errors + err
        rate = ok / p.elapsed if p.elapsed else float("nan")
        ttft = f"{pct(p.ttfts, 95) * 1000:.0f} ms" if p.ttfts else "-"
        tok = f"{np.mean(p.tokens):.1f}" if p.tokens else "-"
        print(
            f"{p.name:<13}{p.users:>6}{ok:>7}{err:>5}{100 * err / max(1, ok + err):>7.2f}{rate:>8.1f}"
            f"{p.pct_ms(50):>9.1f}{p.pct_ms(95):>9.1f}{p.pct_ms(99):>9.1f}{ttft:>10}{tok:>8}"
            f"  {TARGETS[p.name]}  ({p.client})"
        )
        if p.errors:
            print(f"{'':<13}errors: {p.errors}")
        if p.note:
            print(f"{'':<13}{p.note}")
    print(f"overall error rate: {100 * errors / max(1, total):.2f}% of {total} requests (target < 0.5%)")
    rates = {(p.name, p.users): p.ok / p.elapsed for p in results if p.elapsed and p.ok}
    for (name, users), rate in rates.items():
        if name.startswith("route") and ("livez", users) in rates:
            print(f"{name} throughput / livez throughput at {users} users (same server, same client): "
                  f"{rate / rates['livez', users]:.2f}")  # fmt: skip


async def load(
    port: int, key: str, plan: list[Phase], duration: float, use_wrk: bool, min_requests: int
) -> None:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60, limits=limits
    ) as client:
        for p in plan:
            if p.name == "rag":  # the first call opens the indexes: give it time, and say why when it fails
                try:
                    r = await client.post("/v1/rag", json=p.make(-1)[1], timeout=600)  # the last question
                except httpx.HTTPError as e:
                    p.note = f"skipped: the first /v1/rag call failed ({type(e).__name__})"
                    continue
                if r.status_code != 200:
                    p.note = f"skipped: /v1/rag answered {r.status_code}: {r.text[:200]}"
                    continue
            print(f"phase {p.name}: {p.users} users, {duration:.0f}s", flush=True)
            if use_wrk and p.name in WRK_PHASES:
                await warm_up(client, p)
                path, body = p.make(0)
                # past the warm-up's requests, and more than wrk sends at 1,000 req/s: none is sent twice
                n = max(20_000, int(duration * 1_000))
                bodies = None if body is None else [p.make(i)[1] for i in range(2, 2 + n)]
                await asyncio.to_thread(run_wrk, port, key, p, duration, bodies, path)  # type: ignore[arg-type]
            else:
                await run_phase(client, p, duration, min_requests)
            report([p], "", None)


def in_process(router_dir: str, n: int) -> None:
    """route() p50/p99 in this process, interleaved so both paths see the same load: the plain path as it
    was before the fast path (torch's default threads, nothing remembered: every predictor constant
    recomputed per call) against the serving path after warm_up (1 thread, caches), on distinct prompts
    and on repeated ones."""
    import torch

    from router_models.router.artifact import load_router

    default_threads = torch.get_num_threads()
    router = load_router(router_dir)
    router.warm_up(torch_threads=None)
    prompts = route_prompts(3 * n + 32, seed=1)
    plain_set, fast_set, repeated = prompts[:n], prompts[n : 2 * n], prompts[-32:]
    times: dict[str, list[float]] = {
        "plain": [],
        "fast (distinct prompts)": [],
        "fast (repeated prompts)": [],
    }

    def timed(label: str, prompt: str) -> None:
        t0 = time.perf_counter()
        router.route(prompt)
        times[label].append((time.perf_counter() - t0) * 1000)

    for p in repeated:
        router.route(p)
    for i in range(n):  # plain and fast prompts are distinct: neither finds its embedding or PII remembered
        torch.set_num_threads(default_threads)
        for member in getattr(router.predictor, "fitted_", [router.predictor]):
            member.__dict__.pop("cov64_", None)  # constants the plain path computed on every call
            member.__dict__.pop("observed_", None)
        timed("plain", plain_set[i])
        torch.set_num_threads(1)
        timed("fast (distinct prompts)", fast_set[i])
        timed("fast (repeated prompts)", repeated[i % len(repeated)])
    torch.set_num_threads(default_threads)
    base = pct(times["plain"], 50)
    print(
        f"\nin-process route() on {n} prompts each, {router.embedder} embedder, torch default threads "
        f"{default_threads}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
        flush=True,
    )
    for label, xs in times.items():
        print(
            f"  {label:<26} p50 {pct(xs, 50):8.1f} ms  p99 {pct(xs, 99):8.1f} ms  "
            f"p50 speed-up x{base / pct(xs, 50):.1f}",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=8320)
    ap.add_argument("--models-port", type=int, default=8321, help="base port of the two llama.cpp servers")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of load per phase")
    ap.add_argument("--min-requests", type=int, default=40,
                    help="an httpx phase (chat, rag) also runs until it sent N requests: RAG answers take "
                         "seconds, and a p95 over 14 of them is close to their maximum")  # fmt: skip
    ap.add_argument("--route-users", type=lambda s: [int(x) for x in s.split(",")], default=[2, 8],
                    help="concurrent users of livez and the route phases, a run per level")  # fmt: skip
    ap.add_argument("--chat-users", type=int, default=2)
    ap.add_argument("--chat-model", default="smollm2-135m")
    ap.add_argument("--phases", type=lambda s: s.split(","), default=list(PHASES))
    ap.add_argument("--client", choices=("auto", "wrk", "httpx"), default="auto",
                    help="load generator of livez and the route phases (auto: wrk if installed)")  # fmt: skip
    ap.add_argument("--ready-timeout", type=float, default=600.0)
    ap.add_argument("--workdir", type=Path, default=REPO_ROOT,
                    help="where `bentoml serve` runs (its serving/ is the service measured)")  # fmt: skip
    ap.add_argument("--in-process", type=int, default=0, metavar="N",
                    help="first time route() in this process on N prompts (plain vs fast path)")  # fmt: skip
    default_router = Settings().run_dir / "router" / "current"
    ap.add_argument("--router-dir", default=os.environ.get("SM_ROUTER_DIR") or str(default_router))
    args = ap.parse_args()
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        ap.error(f"unknown phases {sorted(unknown)}; choose from {', '.join(PHASES)}")
    router_dir = args.router_dir if Path(args.router_dir, "manifest.json").exists() else None
    plan = phases(args)
    if router_dir is None:
        for p in plan:
            if p.name.startswith("route"):
                p.note = f"skipped: no router artifact at {args.router_dir} (train one, or --router-dir)"
        plan_run = [p for p in plan if not p.name.startswith("route")]
    else:
        plan_run = plan
    if args.in_process and router_dir:
        in_process(router_dir, args.in_process)
    if not plan_run:
        return
    use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk") is not None)
    if args.client == "wrk" and shutil.which("wrk") is None:
        ap.error("--client wrk: wrk is not installed (apt-get install wrk)")
    key = "sk-bench-" + secrets.token_urlsafe(24)
    with (
        local_models(args.models_port) as models_note,
        bento(args.port, args.models_port, key, router_dir, args.ready_timeout, args.workdir),
    ):
        try:
            asyncio.run(load(args.port, key, plan_run, args.duration, use_wrk, args.min_requests))
        finally:
            report(plan, models_note, args)


if __name__ == "__main__":
    main()
