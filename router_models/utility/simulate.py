"""Outcome tables simulated from the utility model's own generative story (tests, benchmark)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import expit


def simulate_outcomes(
    tasks: list[str],
    models: list[str],
    n_per_cell: int | np.ndarray,
    seed: int = 0,
    alpha: np.ndarray | None = None,
    mu: float = 0.3,
    sigma_beta: float = 0.8,
    tau_gamma: float = 0.5,
    latency: bool = False,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """0/1 scores and log-normal costs per prompt; returns (outcome rows, true parameters).

    `n_per_cell` is a count for every cell or a (task, model) array of counts."""
    rng = np.random.default_rng(seed)
    nt, nm = len(tasks), len(models)
    alpha = rng.normal(0, 1.0, nm) if alpha is None else np.asarray(alpha, dtype=float)
    beta = rng.normal(0, sigma_beta, nt)
    beta -= beta.mean()
    gamma = rng.normal(0, tau_gamma, (nt, nm))
    gamma -= gamma.mean(0, keepdims=True)
    gamma -= gamma.mean(1, keepdims=True)
    quality = expit(mu + alpha[None, :] + beta[:, None] + gamma)
    cost_loc = rng.normal(-7.5, 1.0, nm)[None, :] + rng.normal(0, 0.3, nt)[:, None]
    cost_sd = np.exp(rng.normal(-1.2, 0.3, (nt, nm)))
    lat_loc = rng.normal(0.0, 0.7, nm)[None, :] + rng.normal(0, 0.2, nt)[:, None]
    counts = np.broadcast_to(np.asarray(n_per_cell), (nt, nm))
    frames = []
    for t in range(nt):
        for m in range(nm):
            n = int(counts[t, m])
            if n == 0:
                continue
            frame = {
                "prompt_id": [f"{tasks[t]}-sim-{i:06d}" for i in range(n)],
                "task": tasks[t], "prompt": "", "model": models[m],
                "score": rng.binomial(1, quality[t, m], n).astype(float),
                "cost_usd": np.exp(rng.normal(cost_loc[t, m], cost_sd[t, m], n)),
                "latency_s": np.exp(rng.normal(lat_loc[t, m], 0.3, n)) if latency else np.nan,
            }  # fmt: skip
            frames.append(pd.DataFrame(frame))
    df = pd.concat(frames, ignore_index=True)
    for col in ("ttft_s", "input_tokens", "output_tokens"):
        df[col] = np.nan
    df["error"], df["run_id"] = None, f"simulated-{seed}"
    truth = {"quality": quality, "alpha": alpha, "beta": beta, "gamma": gamma,
             "cost_expected": np.exp(cost_loc + cost_sd**2 / 2)}  # fmt: skip
    return df, truth
