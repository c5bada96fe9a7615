"""Divergences of the utility fit on the demo's evidence, over seeds: RouterBench's outcomes plus a
micro-bench partition's local rows, whose latencies are jittered per seed (log-normal, sd 0.5) as live runs
differ.

  python benchmarks/utility_divergences.py                       # the newest partition under runs/bench/
  python benchmarks/utility_divergences.py --local runs/demo/bench/2026-12-06 --seeds 6 --target-accept 0.8

A lower target_accept than the fit's own (0.95) takes larger steps and so finds a posterior's funnels more
often: 1 divergence in 12,000 draws at 0.95 in one CI run of the demo is about 5 a fit at 0.8. For each
divergent draw it prints the three parameters farthest from their posterior mean, in posterior sds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipelines.bench.outcomes import routerbench_outcome_table  # noqa: E402
from pipelines.bench.runner import collect_outcomes  # noqa: E402
from pipelines.settings import Settings  # noqa: E402
from router_models.utility.model import FitConfig  # noqa: E402


def farthest(posterior, chain: int, draw: int, top: int = 3) -> list[tuple[str, int, float]]:
    """The `top` (variable, flat index, z) of one draw farthest from the posterior mean in posterior sds."""
    out = []
    for name, da in posterior.data_vars.items():
        v = da.values.reshape(da.shape[0], da.shape[1], -1)
        z = (v[chain, draw] - v.mean(axis=(0, 1))) / (v.std(axis=(0, 1)) + 1e-12)
        j = int(np.abs(z).argmax())
        out.append((str(name), j, round(float(z[j]), 2)))
    return sorted(out, key=lambda t: -abs(t[2]))[:top]


def main() -> None:
    from router_models.utility.data import cell_data
    from router_models.utility.model import fit_utility
    from router_models.utility.priors import leaderboard_priors

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--local", type=Path, help="a micro-bench run folder (default: runs/bench/'s newest)")
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--target-accept", type=float, default=0.8)
    args = ap.parse_args()
    settings = Settings()
    folder = args.local or max((settings.run_dir / "bench").glob("20??-??-??"), default=None)
    if folder is None:
        sys.exit(
            f"no micro-bench partition under {settings.run_dir / 'bench'}: run `make demo` or pass --local"
        )
    local = collect_outcomes(folder)
    local = local[local["latency_s"].notna()]
    print(f"{folder}: {len(local)} local rows with a latency, {local['model'].nunique()} models, "
          f"{local['task'].nunique()} tasks; target_accept {args.target_accept}")  # fmt: skip
    routerbench = routerbench_outcome_table(settings.shared_data_dir / "routerbench")
    priors = leaderboard_priors(settings.shared_data_dir / "priors" / "arena_elo.csv")
    total = 0
    for seed in range(1, args.seeds + 1):
        rng = np.random.default_rng(seed)
        jittered = local.assign(latency_s=local["latency_s"] * np.exp(rng.normal(0, 0.5, len(local))))
        data = cell_data(pd.concat([routerbench, jittered], ignore_index=True))
        fit = fit_utility(data, priors, FitConfig(seed=seed, target_accept=args.target_accept))
        idata: Any = fit.idata
        diverging = idata.sample_stats["diverging"].values
        total += int(diverging.sum())
        d = fit.diagnostics
        where = [farthest(idata.posterior, c, i) for c, i in zip(*np.nonzero(diverging), strict=True)]
        row = {
            "seed": seed,
            "divergences": int(diverging.sum()),
            "r_hat_max": round(d["r_hat_max"], 4),
            "ess_bulk_min": round(d["ess_bulk_min"]),
            "fit_seconds": round(d["fit_seconds"]),
            "farthest": where,
        }
        print(json.dumps(row), flush=True)  # fmt: skip
    print(f"divergences: {total} in {args.seeds} fits")


if __name__ == "__main__":
    main()
