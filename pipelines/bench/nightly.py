"""The nightly micro-bench as plain functions, one per Dagster asset or asset check (assets/ stays thin)."""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.bench.outcomes import OUTCOME_COLUMNS
from pipelines.bench.runner import (
    accuracy_table,
    call_failed,
    collect_outcomes,
    error_rate_by_model,
    run_bench,
)
from pipelines.bench.scorers import bench_scorer
from pipelines.settings import Settings

MAX_ERROR_RATE = 0.005


@dataclass
class CheckResult:
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


def panel_models(settings: Settings, models: list[str] | None = None) -> list[str]:
    """The bench panel: the given names, or every available model of privacy tier local."""
    from pipelines.llm.catalog import load_catalog

    catalog = load_catalog(settings)
    return models or [e.name for e in catalog.available() if e.privacy == "local"]


def recent_partitions(settings: Settings, days: int) -> list[Path]:
    """The daily partitions' folders within `days` days of the newest one on disk, oldest first."""
    on_disk = {}
    for folder in (settings.run_dir / "bench").glob("????-??-??"):
        with contextlib.suppress(ValueError):
            on_disk[dt.date.fromisoformat(folder.name)] = folder
    if days <= 0 or not on_disk:
        return []
    newest = max(on_disk)
    return [on_disk[d] for d in sorted(on_disk) if (newest - d).days < days]


def recent_outcomes(settings: Settings, days: int) -> pd.DataFrame:
    """The micro-bench's answered rows of the daily partitions within `days` days of the newest one on disk,
    the newest row per (prompt, model): evidence for the utility model. A failed call is no evidence of
    quality; an answer run again on a later day (same weights, temperature 0) is the same answer, counted
    once."""
    folders = recent_partitions(settings, days)
    if not folders:
        return pd.DataFrame(columns=OUTCOME_COLUMNS)
    df = pd.concat([collect_outcomes(f) for f in folders], ignore_index=True)
    df = df[~call_failed(df["error"]) & df["score"].notna()]
    return df.drop_duplicates(["prompt_id", "model"], keep="last").reset_index(drop=True)


def run_benchmark_partition(settings: Settings, prompts: pd.DataFrame, partition: str,
                            models: list[str] | None = None, concurrency: int = 2,
                            start_servers: bool = True) -> pd.DataFrame:  # fmt: skip
    """Run (or resume) the bench for one daily partition; returns its outcome table.

    Parts live in run_dir/bench/<partition>/ with run_id 'bench-<partition>', so a re-materialization after a
    crash finishes the partition instead of starting over.
    """
    from pipelines.llm import servers
    from pipelines.llm.catalog import load_catalog
    from pipelines.llm.gateway import Gateway

    catalog = load_catalog(settings)
    names = panel_models(settings, models)
    if start_servers:
        for n in names:
            if catalog.get(n).is_local_server:
                servers.start(catalog.get(n), settings)
    out_dir = settings.run_dir / "bench" / partition
    gateway = Gateway(settings, catalog)
    scorer = bench_scorer(settings, gateway)
    run_bench(prompts, names, gateway, out_dir, run_id=f"bench-{partition}", concurrency=concurrency,
              scorer=scorer, progress=False)  # fmt: skip
    df = collect_outcomes(out_dir)
    return df[df["prompt_id"].isin(prompts["prompt_id"]) & df["model"].isin(names)].reset_index(drop=True)


def rescore_recent(settings: Settings, prompts: pd.DataFrame, partition: str) -> dict[str, int]:
    """Today's scorers over the stored answers of the other partitions the utility model and the router
    read (SM_BENCH_EVIDENCE_DAYS), calling no model: after a scorer fix the nightly refit had read the old
    scores until someone ran `stratmaster bench rescore`. Returns the scores changed per partition."""
    from pipelines.bench.runner import rescore

    changed = {}
    for folder in recent_partitions(settings, settings.bench_evidence_days):
        if folder.name == partition:  # scored by today's scorers as it ran
            continue
        with contextlib.suppress(FileNotFoundError):  # a folder with no committed part yet
            changed[folder.name] = rescore(prompts, folder)["changed"]
    return changed


def accuracy_metadata(df: pd.DataFrame) -> dict[str, Any]:
    """Accuracy per task x model (and n) as a flat dict, plus a markdown table, for asset metadata."""
    acc = accuracy_table(df)
    flat = {f"accuracy/{r.task}/{r.model}": (None if r.n == 0 else round(float(r.accuracy), 4))
            for r in acc.itertuples()}  # fmt: skip
    return {"rows": len(df), **flat, "accuracy_table": acc.round(4).to_markdown(index=False)}


def check_error_rate(df: pd.DataFrame, max_rate: float = MAX_ERROR_RATE) -> CheckResult:
    rates = error_rate_by_model(df) if len(df) else {}
    overall = float(call_failed(df["error"]).mean()) if len(df) else 0.0
    return CheckResult(
        overall < max_rate,
        f"error rate {overall:.2%} (limit {max_rate:.2%})",
        {"error_rate": overall, **{f"error_rate/{m}": r for m, r in rates.items()}},
    )


def check_not_empty(df: pd.DataFrame) -> CheckResult:
    return CheckResult(len(df) > 0, f"{len(df)} rows", {"rows": len(df)})


def check_scores_in_range(df: pd.DataFrame) -> CheckResult:
    """Every score in [0, 1], and at least one score where a call was answered (all NaN passed before)."""
    s = df["score"].dropna()
    bad = int((~s.between(0.0, 1.0)).sum())
    answered = int((~call_failed(df["error"])).sum())
    if answered and s.empty:
        return CheckResult(False, f"none of {answered} answers has a score", {"out_of_range": 0, "scored": 0})
    return CheckResult(bad == 0, f"{bad} scores outside [0, 1]", {"out_of_range": bad, "scored": len(s)})
