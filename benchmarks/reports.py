"""The four notebook reports, one at a time and two at a time (`run_notebooks(workers=...)`), in the same run,
on the run folder that `make demo` materialized (SM_RUN_DIR, default runs/). Reports go to scratch folders.

    .venv/bin/python benchmarks/reports.py [--rounds 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.reports import NOTEBOOKS, report_parameters, run_notebooks  # noqa: E402
from pipelines.settings import Settings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    s = Settings()
    if not (s.run_dir / "router" / "current").exists():
        sys.exit(f"no materialized run folder at {s.run_dir}: run `make demo` first")
    params = report_parameters(s)
    seconds: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.rounds):
        for workers in (1, 2):
            with tempfile.TemporaryDirectory() as out:
                t0 = time.perf_counter()
                reports = run_notebooks(out, params, workers=workers)
                seconds[workers].append(time.perf_counter() - t0)
                each = ", ".join(f"{r.name} {r.seconds:.0f}" for r in reports)
                print(f"workers={workers}: {seconds[workers][-1]:.1f} s ({each})", flush=True)
    one, two = min(seconds[1]), min(seconds[2])
    print(f"{len(NOTEBOOKS)} reports: one at a time {one:.1f} s, two at a time {two:.1f} s, "
          f"ratio {two / one:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
