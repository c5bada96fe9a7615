"""The two local servers answering at once, under each OpenMP wait policy (`SM_LOCAL_OMP_WAIT_POLICY`:
OpenMP's default, passive, and "short", a spin of SM_LOCAL_OMP_SPINCOUNT turns before sleeping), in the same
run: seconds per request for SmolLM2 answering alone, for SmolLM2 answering two requests at once (its two
parallel slots: the serving bench's RAG phase at 2 users), and for SmolLM2 and Gemma answering one
request each at the same time.

    .venv/bin/python benchmarks/local_servers.py [--rounds 3] [--spincounts 300,3000]

`--spincounts` measures "short" at each spin count given (default: SM_LOCAL_OMP_SPINCOUNT's).

A request is ~400 tokens of this README with 32 tokens out, prompt cache off. The servers run as the project
starts them (`pipelines.llm.servers.start`), from a scratch run folder, on ports 8191-8192.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from pipelines.llm import servers  # noqa: E402
from pipelines.llm.catalog import load_catalog  # noqa: E402
from pipelines.settings import Settings  # noqa: E402

PROMPT = (ROOT / "README.md").read_text()[:1600]


def ask(settings: Settings, port: int, i: int, out: list[float]) -> None:
    body = {"prompt": f"{i} {PROMPT}", "n_predict": 32, "cache_prompt": False, "temperature": 0}
    t0 = time.perf_counter()
    httpx.post(f"http://{settings.local_host}:{port}/completion", json=body, timeout=600).raise_for_status()
    out.append(time.perf_counter() - t0)


def at_once(settings: Settings, ports: list[int], i: int, out: list[float]) -> None:
    """One request on each port at the same time; a failed one fails the run (in its thread it vanished, and
    the figures were the survivors')."""
    failed: list[BaseException] = []

    def one(port: int, k: int) -> None:
        try:
            ask(settings, port, i + k, out)
        except Exception as e:  # noqa: BLE001 - re-raised below, in the caller's thread
            failed.append(e)

    threads = [threading.Thread(target=one, args=(p, k)) for k, p in enumerate(ports)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(ports)} requests failed: {failed[0]!r}") from failed[0]


def measure(policy: str, rounds: int, run_dir: Path, spincount: int) -> tuple[float, float, float, float]:
    s = Settings(run_dir=run_dir, model_cache_dir=Settings().models_dir, local_base_port=8191,
                 local_omp_wait_policy=policy, local_omp_spincount=spincount)  # fmt: skip
    entries = load_catalog(s).local()
    ports = [servers.start(e, s).port for e in entries]
    try:
        alone: list[float] = []
        for i in range(rounds + 1):
            ask(s, ports[0], i, alone)
        two: list[float] = []
        both: list[float] = []
        for i in range(rounds):
            at_once(s, [ports[0], ports[0]], 100 + 2 * i, two)
            at_once(s, ports, 200 + 2 * i, both)
    finally:
        for e in entries:
            servers.stop(e, s)
    return statistics.median(alone[1:]), statistics.median(two), statistics.median(both), max(both)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--spincounts", type=lambda v: [int(x) for x in v.split(",")],
                    default=[Settings().local_omp_spincount])  # fmt: skip
    args = ap.parse_args()
    for var in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):  # the servers would keep them, whatever a row says
        if os.environ.pop(var, None) is not None:
            print(f"{var} unset for this benchmark, which sets the policy and spin count itself")
    print(f"{'wait policy':18s} {'alone s':>8s} {'2 on one s':>10s} {'both s':>8s} {'both max s':>10s}")
    runs = [("default", 0), ("passive", 0), *(("short", n) for n in args.spincounts)]
    with tempfile.TemporaryDirectory() as tmp:
        for policy, spins in runs:
            alone, two, both, worst = measure(policy, args.rounds, Path(tmp), spins)
            name = f"short, {spins} spins" if policy == "short" else policy
            print(f"{name:18s} {alone:8.2f} {two:10.2f} {both:8.2f} {worst:10.2f}", flush=True)


if __name__ == "__main__":
    main()
