"""Fit time and peak memory of the Bayesian utility model (target: <= 60 s on 2 cores).

  python benchmarks/utility_fit.py                      # 10 tasks x 13 models x 25k rows, nutpie vs pymc
  python benchmarks/utility_fit.py --dataset routerbench # the real RouterBench outcomes only
  python benchmarks/utility_fit.py --sampler nutpie --observations 250000

The "bench" data set is the real RouterBench outcomes (3 tasks x 11 models, prompts sampled per task)
plus outcomes simulated from the model's own generative story for the 2 local models and 7 more tasks,
about the same number of rows per cell. Each sampler runs in its own process so that its peak RSS
(resource.getrusage maxrss) is its own; the largest of its children's (pymc's forked chain workers, shared
pages included) is printed apart. Fit time covers build, prior predictive, compile, NUTS, diagnostics; CPU
seconds and the load average are printed too, since wall time on a shared machine depends on others.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipelines.bench.outcomes import routerbench_outcome_table  # noqa: E402
from pipelines.settings import Settings  # noqa: E402
from router_models.utility.model import FitConfig  # noqa: E402

LOCAL_MODELS = ["smollm2-135m", "gemma3-270m"]


def bench_table(n_obs: int, seed: int = 0) -> pd.DataFrame:
    """Real RouterBench rows plus simulated ones: 10 tasks x 13 models, about n_obs rows."""
    from router_models.utility.simulate import simulate_outcomes

    real = routerbench_outcome_table(Settings().shared_data_dir / "routerbench")
    tasks_real, models_real = sorted(real["task"].unique()), sorted(real["model"].unique())
    models = models_real + LOCAL_MODELS
    tasks_sim = [f"sim-task-{i}" for i in range(10 - len(tasks_real))]
    per_cell = max(1, n_obs // ((len(tasks_real) + len(tasks_sim)) * len(models)))
    rng = np.random.default_rng(seed)
    keep = []
    for task in tasks_real:
        ids = real.loc[real["task"] == task, "prompt_id"].unique()
        keep.extend(rng.choice(ids, size=min(per_cell, len(ids)), replace=False))
    real = real[real["prompt_id"].isin(set(keep))]
    local, _ = simulate_outcomes(tasks_real, LOCAL_MODELS, per_cell, seed=seed + 1,
                                 alpha=np.array([-2.5, -2.0]))  # fmt: skip
    sim, _ = simulate_outcomes(tasks_sim, models, per_cell, seed=seed + 2)
    return pd.concat([real, local, sim], ignore_index=True)


def _cpu_seconds() -> float:
    """CPU time of this process and its children (pymc samples chains in child processes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_one(args) -> dict:
    from router_models.utility.data import cell_data
    from router_models.utility.model import fit_utility
    from router_models.utility.plots import calibration_table
    from router_models.utility.priors import leaderboard_priors

    settings = Settings()
    if args.dataset == "routerbench":
        table = routerbench_outcome_table(settings.shared_data_dir / "routerbench")
    else:
        table = bench_table(args.observations)
    priors = leaderboard_priors(settings.shared_data_dir / "priors" / "arena_elo.csv")
    data = cell_data(table)
    config = FitConfig(draws=args.draws, tune=args.tune, chains=args.chains, sampler=args.sampler)
    cpu0 = _cpu_seconds()
    fit = fit_utility(data, priors, config)
    cpu = _cpu_seconds() - cpu0
    import arviz as az

    names = [v for v in fit.idata.posterior.data_vars if "_dim_" not in v]
    # each variable's own minimum (to_dataframe crossed every variable's dims: 9.9 GiB, then OOM, once the
    # cost block had per-cell variables over cells with rows and cells without)
    ess_all = az.ess(fit.idata, var_names=names, method="bulk")
    ess = pd.Series({v: float(ess_all[v].min()) for v in ess_all.data_vars}).sort_values()
    cal = calibration_table(fit.idata, data, seed=config.seed)
    below, above = cal["pred_p05"] - cal["observed_rate"], cal["observed_rate"] - cal["pred_p95"]
    worst = cal.assign(miss=np.maximum(below, above)).sort_values("miss").tail(3)
    worst_cols = ["task", "model", "observed_rate", "pred_p05", "pred_p95"]
    return {
        "dataset": args.dataset, "sampler": args.sampler, "rows": len(table), "tasks": len(data.tasks),
        "models": len(data.models), "cells_observed": int((data.cells["n"] > 0).sum()),
        **{k: v for k, v in fit.diagnostics.items() if k != "sampler"},
        "cpu_seconds": cpu,
        "load_avg_1min": os.getloadavg()[0],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # pymc's chains run in forked child processes (nutpie's in threads): the largest peak RSS of any
        # child, the pages it shares with this process included (an upper bound on a chain worker's own)
        "peak_child_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "prior_check_inside_98": fit.prior_check["observed_inside_prior_98"],
        "calibrated_share": float(cal["calibrated"].mean()), "calibration_cells": len(cal),
        "lowest_ess": ess.head(4).round(0).to_dict(),
        "worst_cells": worst[worst_cols].round(3).to_dict("records"),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["bench", "routerbench"], default="bench")
    ap.add_argument("--sampler", choices=["nutpie", "pymc", "both"], default="both")
    ap.add_argument("--observations", type=int, default=25_000)
    ap.add_argument("--draws", type=int, default=FitConfig.draws)
    ap.add_argument("--tune", type=int, default=FitConfig.tune)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--json", action="store_true", help="print one JSON line (used by the 'both' mode)")
    args = ap.parse_args()
    if args.sampler != "both":
        res = run_one(args)
        print(json.dumps(res) if args.json else "\n".join(f"{k:>24}: {v}" for k, v in res.items()))
        return
    results = []
    for sampler in ("nutpie", "pymc"):
        cmd = [sys.executable, __file__, "--json", "--sampler", sampler, "--dataset", args.dataset,
               "--observations", str(args.observations), "--draws", str(args.draws), "--tune", str(args.tune),
               "--chains", str(args.chains)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    df = pd.DataFrame(results).set_index("sampler")
    cols = ["rows", "tasks", "models", "fit_seconds", "cpu_seconds", "load_avg_1min", "peak_rss_mb",
            "peak_child_rss_mb", "r_hat_max", "ess_bulk_min", "divergences", "calibrated_share",
            "calibration_cells"]  # fmt: skip
    print(f"utility fit, {args.dataset}, {args.chains} chains x {args.draws} draws (+{args.tune} tune), "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    print(df[cols].round(4).to_string())
    best = df["fit_seconds"].idxmin()
    print(f"faster sampler: {best} ({df.loc[best, 'fit_seconds']:.1f} s; target <= 60 s)")


if __name__ == "__main__":
    main()
