"""Outcome rows -> per (task, model) cell statistics the utility model is fitted on.

Scores of 0/1 are aggregated to Binomial counts per cell (the same likelihood as per-prompt Bernoulli
rows for a cell-level model); cost and latency to the sufficient statistics of a log-normal.
A task whose scores are not all 0/1 is "graded": its cells' score sums get a fractional-Bernoulli
(quasi-binomial) likelihood, whose estimate of a cell's mean score is unbiased whatever the scores' shape.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.bench.outcomes import joined_outcomes, read_table


def outcome_table_from_files(prompts: str | Path | None, outcomes: str | Path) -> pd.DataFrame:
    """RouterBench-layout files (prompts: prompt_id, task, prompt; outcomes: prompt_id, model, score,
    cost_usd) as one outcome table; rows without a score are dropped. An outcomes file that already
    carries `task` needs no prompts file."""
    try:  # ids as text, never blank; scores and costs numbers
        out = read_table(outcomes)
    except ValueError as e:
        raise ValueError(f"{outcomes}: {e}") from None
    pr = None
    if prompts is not None:
        try:
            pr = read_table(prompts)
        except ValueError as e:
            raise ValueError(f"{prompts}: {e}") from None
    table = joined_outcomes(out, pr, outcomes, prompts)
    # said by the CLI: a model whose scores were all blank left the fit without a word
    table.attrs["unscored_rows"] = int(pd.to_numeric(out["score"], errors="coerce").isna().sum())
    table.attrs["unscored_models"] = sorted(set(out["model"].astype(str)) - set(table["model"].astype(str)))
    return table


def data_version(outcomes: pd.DataFrame) -> str:
    """sha256 of the outcome rows the fit uses (order-independent)."""
    cols = [c for c in ("prompt_id", "task", "model", "score", "cost_usd", "latency_s") if c in outcomes]
    canon = outcomes[cols].astype(str).sort_values(cols).to_csv(index=False)
    return hashlib.sha256(canon.encode()).hexdigest()


def _lognormal_stats(values: pd.Series) -> tuple[int, float, float, float, float]:
    """n, mean and sum of squares of the logs of the positive values, their raw mean, and the positive
    share: a zero (a free call) is counted in the share, not floored into the logs, where one $0 row among
    40 made the cell's log-sd 3 and its expected cost 70x the observed."""
    v = values.dropna().to_numpy(dtype=float)
    pos = v[v > 0]
    share = len(pos) / len(v) if len(v) else 1.0
    if len(pos) == 0:
        return 0, np.nan, np.nan, np.nan, share
    logs = np.log(pos)
    return len(pos), float(logs.mean()), float(((logs - logs.mean()) ** 2).sum()), float(pos.mean()), share


@dataclass
class CellData:
    """What `build_model` needs: coords, per-cell statistics and the data version."""

    tasks: list[str]
    models: list[str]
    cells: pd.DataFrame  # task, model, t, m, n, score_sum, binary, cost_*, latency_*
    data_hash: str = ""

    @property
    def binary_cells(self) -> pd.DataFrame:
        return self.cells[self.cells["binary"] & (self.cells["n"] > 0)]

    @property
    def graded_cells(self) -> pd.DataFrame:
        return self.cells[~self.cells["binary"] & (self.cells["n"] > 0)]

    def stat_cells(self, kind: str) -> pd.DataFrame:
        """Cells with a cost (kind="cost") or latency (kind="latency") observation."""
        return self.cells[self.cells[f"{kind}_n"] > 0]

    @property
    def has_latency(self) -> bool:
        return bool((self.cells["latency_n"] > 0).any())


def cell_data(
    outcomes: pd.DataFrame, tasks: list[str] | None = None, models: list[str] | None = None
) -> CellData:
    """Aggregate an outcome table; `tasks`/`models` may add coords with no rows (predicted by pooling)."""
    df = outcomes.dropna(subset=["score"]).copy()
    df["score"] = df["score"].astype(float)
    if ((df["score"] < 0) | (df["score"] > 1)).any():
        raise ValueError("scores must lie in [0, 1]")
    for col in ("cost_usd", "latency_s"):
        if col not in df.columns:
            df[col] = np.nan
        values = pd.to_numeric(df[col], errors="coerce")
        blank = df[col].isna() | df[col].astype(str).str.strip().eq("")
        text = values.isna() & ~blank  # "1,050", "$0.01": not a number
        out_of_range = values.notna() & ~(np.isfinite(values) & (values >= 0))
        bad = df.loc[text | out_of_range, ["task", "model", col]]
        if len(bad):  # inf failed the fit inside PyMC's sampler; a negative cost was counted as a free call
            first = bad.iloc[0].tolist()
            raise ValueError(f"{col} must be a finite number >= 0 or blank: {len(bad)} rows, e.g. {first}")
        df[col] = values
    tasks = sorted(set(df["task"]) | set(tasks or []))
    models = sorted(set(df["model"]) | set(models or []))
    binary_task = df.groupby("task")["score"].apply(lambda s: bool(np.isin(s, (0.0, 1.0)).all()))
    rows = []
    groups = dict(tuple(df.groupby(["task", "model"])))
    # a cell with no cost (or latency) row takes its model's share of paid calls, not 1: a free local model
    # was predicted to cost 9x the API models' mean on a task it had not answered
    shares = {kind: {m: _lognormal_stats(g)[4] for m, g in df.groupby("model")[kind] if g.notna().any()}
              for kind in ("cost_usd", "latency_s")}  # fmt: skip
    for ti, task in enumerate(tasks):
        for mi, model in enumerate(models):
            g = groups.get((task, model), df.iloc[:0])
            cn, cmean, css, craw, cshare = _lognormal_stats(g["cost_usd"])
            ln, lmean, lss, lraw, lshare = _lognormal_stats(g["latency_s"])
            if not g["cost_usd"].notna().any():
                cshare = shares["cost_usd"].get(model, 1.0)
            if not g["latency_s"].notna().any():
                lshare = shares["latency_s"].get(model, 1.0)
            rows.append(dict(
                task=task, model=model, t=ti, m=mi, n=len(g), score_sum=float(g["score"].sum()),
                binary=bool(binary_task.get(task, True)),
                cost_n=cn, cost_logmean=cmean, cost_logss=css, cost_mean=craw, cost_share=cshare,
                latency_n=ln, latency_logmean=lmean, latency_logss=lss, latency_mean=lraw,
                latency_share=lshare,
            ))  # fmt: skip
    return CellData(tasks, models, pd.DataFrame(rows), data_version(df))
