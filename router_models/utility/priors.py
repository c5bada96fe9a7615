"""Leaderboard priors: a versioned snapshot shipped with the package, overlaid by a shared CSV if given.

A model with no public figure gets a weak prior centred on the average known model, never an error.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

SNAPSHOT_PATH = Path(__file__).with_name("leaderboard_priors.csv")
PRIOR_COLUMNS = ["model", "arena_name", "arena_elo", "source", "snapshot"]
# One Elo point in logits: a 400-point gap is a 10:1 win ratio on the Arena.
ELO_TO_LOGIT = math.log(10) / 400


def load_priors(path: str | Path | None = None) -> pd.DataFrame:
    """A leaderboard table (model, arena_name, arena_elo, source, snapshot); by default the snapshot."""
    path = Path(path) if path is not None else SNAPSHOT_PATH
    try:
        df = pd.read_csv(path, dtype={"model": str, "arena_name": str, "source": str})
    except ValueError as e:  # empty, not UTF-8, not CSV: the message names the file, as the outcomes' do
        raise ValueError(f"{path}: {e}") from None
    for col in ("model", "arena_elo"):  # a misnamed column gave every model the weak prior, unsaid
        if col not in df.columns:
            raise ValueError(f"{path}: a priors table needs a '{col}' column (it has {list(df.columns)})")
    for col in PRIOR_COLUMNS:
        if col not in df.columns:
            df[col] = ""
    elo = pd.to_numeric(df["arena_elo"], errors="coerce")
    bad = [str(v) for v, e in zip(df["arena_elo"], elo, strict=True) if pd.notna(v) and not math.isfinite(e)]
    if bad:  # "1,050" was none; inf failed the fit with a traceback from PyMC
        raise ValueError(f"{path}: arena_elo must be a finite number or blank, not {bad[:3]}")
    df["arena_elo"] = elo
    df["model"] = df["model"].str.strip()  # "m1 " matched no outcome model: its prior was lost, unsaid
    df["snapshot"] = df["snapshot"].fillna(path.name).astype(str)
    df["source"] = df["source"].fillna("").astype(str)
    # a model named twice: its last row with a figure (a blank repeat does not undo a figure)
    df = df.assign(_fig=df["arena_elo"].notna()).sort_values("_fig", kind="stable")
    return df[PRIOR_COLUMNS].drop_duplicates("model", keep="last").sort_index().reset_index(drop=True)


def leaderboard_priors(
    shared_csv: str | Path | None = None, models: Iterable[str] | None = None
) -> pd.DataFrame:
    """The snapshot, with figures from `shared_csv` (e.g. ../shared/data/priors/arena_elo.csv) taking
    precedence where it has one, plus a no-figure row for each of `models` that neither names."""
    df = load_priors().assign(_rank=0)
    if shared_csv is not None and Path(shared_csv).exists():
        shared = load_priors(shared_csv).assign(snapshot=Path(shared_csv).name, _rank=1)
        df = pd.concat([df, shared], ignore_index=True)
    # per model: a row with a figure beats one without; among those, the shared file beats the snapshot
    df = df.assign(_fig=df["arena_elo"].notna()).sort_values(["_fig", "_rank"], kind="stable")
    df = df.drop_duplicates("model", keep="last").drop(columns=["_rank", "_fig"])
    if models is not None:
        missing = [m for m in models if m not in set(df["model"])]
        extra = pd.DataFrame(
            {
                "model": missing,
                "arena_name": "",
                "arena_elo": np.nan,
                "source": "no figure: weak prior",
                "snapshot": "",
            }
        )
        df = pd.concat([df, extra], ignore_index=True) if missing else df
    return df.sort_values("model").reset_index(drop=True)


def alpha_priors(
    priors: pd.DataFrame | None,
    models: Iterable[str],
    prior_sd: float = 0.5,
    weak_prior_sd: float = 1.5,
    elo_to_logit: float = ELO_TO_LOGIT,
) -> pd.DataFrame:
    """Per-model prior on the model effect alpha_m (logit scale), in the order of `models`.

    alpha_m ~ Normal(elo_to_logit * (elo_m - mean known elo), prior_sd) for a model with a figure;
    Normal(0, weak_prior_sd) for one without (or when `priors` is None).
    """
    models = list(models)
    table = pd.DataFrame({"model": models})
    if priors is not None and len(priors):
        cols = [c for c in ("model", "arena_elo", "source") if c in priors.columns]
        table = table.merge(priors[cols].drop_duplicates("model"), on="model", how="left")
    for col, default in (("arena_elo", np.nan), ("source", "no figure: weak prior")):
        if col not in table.columns:
            table[col] = default
    table["arena_elo"] = pd.to_numeric(table["arena_elo"], errors="coerce")
    table["source"] = table["source"].fillna("no figure: weak prior")
    known = table["arena_elo"].notna()
    ref = float(table.loc[known, "arena_elo"].mean()) if known.any() else 0.0
    table["has_figure"] = known
    table["alpha_mu"] = np.where(known, elo_to_logit * (table["arena_elo"] - ref), 0.0)
    table["alpha_sigma"] = np.where(known, prior_sd, weak_prior_sd)
    return table[["model", "arena_elo", "has_figure", "alpha_mu", "alpha_sigma", "source"]]
