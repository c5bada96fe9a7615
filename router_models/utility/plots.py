"""Posterior predictive calibration per task x model, and the plots attached to the fit (saved PNGs)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.files import save_figure
from router_models.utility.data import CellData


def _quality(group) -> np.ndarray:
    da = group["quality"].transpose("chain", "draw", "task", "model")
    return da.values.reshape(-1, da.sizes["task"], da.sizes["model"])


def calibration_table(idata, data: CellData, interval: float = 0.9, seed: int = 0,
                      max_draws: int = 2000) -> pd.DataFrame:  # fmt: skip
    """Observed mean score per observed cell vs the posterior predictive interval of that mean.

    A cell replicates k ~ Binomial(n, q), its mean k / n: for graded scores (the fractional-Bernoulli
    likelihood) the widest spread a mean of n scores in [0, 1] with mean q can have.
    `calibrated` is True where the observed rate lies inside the interval. Given the cells a fit saw (in
    sample) nearly every cell is inside, a miss being a cell the pooling or the prior pulls away from its own
    data; given held-out prompts' cells (`pipeline.held_out_calibration`), about `interval` of them should
    be, and fewer say the intervals are too narrow for new prompts."""
    rng = np.random.default_rng(seed)
    q = _quality(idata.posterior)
    idx = rng.choice(q.shape[0], size=min(max_draws, q.shape[0]), replace=False)
    q = q[idx]
    lo_q, hi_q = (1 - interval) / 2, 1 - (1 - interval) / 2
    out = []
    for rec in data.cells[data.cells["n"] > 0].itertuples():
        qs = q[:, rec.t, rec.m]
        rep = rng.binomial(int(rec.n), qs) / rec.n
        lo, hi = np.quantile(rep, [lo_q, hi_q])
        obs = rec.score_sum / rec.n
        out.append(dict(task=rec.task, model=rec.model, n=int(rec.n), observed_rate=obs,
                        predicted_mean=float(rep.mean()), pred_p05=float(lo), pred_p95=float(hi),
                        calibrated=bool(lo <= obs <= hi)))  # fmt: skip
    return pd.DataFrame(out)


def forest_plot(idata, path: str | Path, interval: float = 0.9) -> Path:
    """Quality per task x model: posterior mean and 90% interval (dark), prior 90% interval (light)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    post = _quality(idata.posterior)
    prior = _quality(idata.prior) if hasattr(idata, "prior") and "quality" in idata.prior else None
    tasks = [str(t) for t in idata.posterior["task"].values]
    models = [str(m) for m in idata.posterior["model"].values]
    lo_q, hi_q = (1 - interval) / 2, 1 - (1 - interval) / 2
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks) + 2.5, 0.32 * len(models) + 1.2),
                             sharey=True, squeeze=False)  # fmt: skip
    y = np.arange(len(models))
    for ti, (ax, task) in enumerate(zip(axes[0], tasks, strict=True)):
        if prior is not None:
            plo, phi = np.quantile(prior[:, ti, :], [lo_q, hi_q], axis=0)
            ax.hlines(y + 0.18, plo, phi, color="0.75", lw=3, label="prior 90%")
        lo, hi = np.quantile(post[:, ti, :], [lo_q, hi_q], axis=0)
        ax.hlines(y, lo, hi, color="C0", lw=2, label="posterior 90%")
        ax.plot(post[:, ti, :].mean(0), y, "o", color="C0", ms=4)
        ax.set_title(task, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_xlabel("quality")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(y, models, fontsize=8)
    axes[0][0].invert_yaxis()
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle("Quality per task x model: prior vs posterior", fontsize=10)
    return save_figure(fig, path)


def calibration_plot(table: pd.DataFrame, path: str | Path, how: str = "in sample") -> Path:
    """Observed rate vs predicted interval per cell, sorted by prediction; misses in red; `how` the table
    was made (held-out prompts or in sample), in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = table.sort_values("predicted_mean").reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(t))
    ax.vlines(x, t["pred_p05"], t["pred_p95"], color="0.6", lw=2, label="predicted 90%")
    ok = t["calibrated"].to_numpy(dtype=bool)
    ax.plot(x[ok], t["observed_rate"][ok], "o", color="C0", ms=3, label="observed, inside")
    ax.plot(x[~ok], t["observed_rate"][~ok], "o", color="C3", ms=4, label="observed, outside")
    ax.set_xlabel("task x model cell (sorted by predicted quality)")
    ax.set_ylabel("mean score")
    head = textwrap.fill(f"Posterior predictive calibration ({how}):", 90)  # a long `how` is wrapped
    ax.set_title(f"{head}\n{ok.mean():.0%} of {len(t)} cells inside 90%", fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
