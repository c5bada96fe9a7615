"""The micro-bench runner: prompt set x model panel through the gateway, scored, as an outcome table.

Bounded concurrency (a thread pool of `concurrency` workers), streamed calls (time to first token), and
crash-safe resumption: completed cells are committed in batches, each batch one parquet part file written to
a temp name and renamed into `out_dir` (atomic, append-only). A run killed at any point (even SIGKILL) and
started again reads the committed parts, skips every (prompt_id, model) already answered and runs the rest,
so no row is lost or duplicated; at most one uncommitted batch is recomputed. A cell whose call failed (an
error, a timeout, a fallback) is not done: running again retries it, and its newest row is the one read.
One run at a time writes a folder (a lock); a second is refused with a clear error.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from pipelines.bench.outcomes import OUTCOME_COLUMNS, task_family, write_table
from pipelines.bench.scorers import JudgeUnavailable, needs_judge, score_row
from pipelines.files import publish_mode

MAX_TOKENS = {"multiple_choice": 16, "extraction": 48, "code": 192, "rag_answer": 128, "chat": 128}
PART_GLOB = "part-*.parquet"
Scorer = Callable[[dict[str, Any], str], float]


@dataclass
class RunReport:
    run_id: str
    out_dir: str
    cells_total: int
    cells_done_before: int
    cells_run: int
    parts_written: int
    seconds: float
    errors_by_model: dict[str, int] = field(default_factory=dict)  # failed calls, retried by the next run
    scorer_errors_by_model: dict[str, int] = field(default_factory=dict)  # answers the scorer could not score
    calls_by_model: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """A prompt row as chat messages; a rag_answer row's contexts come numbered before the question."""
    contexts = row.get("contexts")
    if contexts is not None and len(contexts):
        ctx = "\n\n".join(f"[{i}] {c}" for i, c in enumerate(contexts, 1))
        text = (f"Answer the question using only the context below. Be brief.\n\nContext:\n{ctx}\n\n"
                f"Question: {row['prompt']}\nAnswer:")  # fmt: skip
        return [{"role": "user", "content": text}]
    return [{"role": "user", "content": row["prompt"]}]


def _latest_rows(out_dir: Path, columns: list[str] | None = None) -> pd.DataFrame | None:
    """The newest committed row per (prompt_id, model): parts are named by commit time."""
    parts = sorted(out_dir.glob(PART_GLOB))
    if not parts:
        return None
    df = pd.concat([_read_part(p, columns) for p in parts], ignore_index=True)
    return df.drop_duplicates(["prompt_id", "model"], keep="last")


def _read_part(path: Path, columns: list[str] | None) -> pd.DataFrame:
    """A committed part; a damaged one (a part is written whole, so a disk's fault or a hand's edit) is a
    ValueError naming it and what moving it aside does."""
    move = "move it out of the folder and its cells count as not run (the next run calls them again)"
    try:
        df = pd.read_parquet(path, columns=columns)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(f"{path}: not a readable part ({type(e).__name__}: {e}); {move}") from None
    if missing := [c for c in columns or [*OUTCOME_COLUMNS, "response"] if c not in df]:  # a KeyError later
        raise ValueError(f"{path}: not a part of a bench run (it lacks {', '.join(missing)}); {move}")
    return df


def failed_call(error: Any) -> bool:
    """Whether a row's error is a failed model call (an error, a timeout, a fallback); a scorer's error
    ("scorer: ...") is an answer."""
    return isinstance(error, str) and not error.startswith("scorer:")


def call_failed(errors: pd.Series) -> pd.Series:
    """Rows whose model call failed (`failed_call`)."""
    return errors.map(failed_call).astype(bool)


def committed_cells(out_dir: Path) -> set[tuple[str, str]]:
    """Cells with an answer (scored, or kept with a scorer error); failed calls are retried."""
    df = _latest_rows(out_dir, ["prompt_id", "model", "error"])
    if df is None:
        return set()
    df = df[~call_failed(df["error"])]
    return set(zip(df["prompt_id"].astype(str), df["model"].astype(str), strict=True))


def collect_outcomes(out_dir: str | Path, with_response: bool = False) -> pd.DataFrame:
    """The committed rows of a run folder, the newest per cell, in the outcome-table shape (plus `response`
    if asked)."""
    cols = OUTCOME_COLUMNS + (["response"] if with_response else [])
    df = _latest_rows(Path(out_dir))
    if df is None:
        return pd.DataFrame(columns=cols)
    return df[cols].sort_values(["prompt_id", "model"]).reset_index(drop=True)


@contextmanager
def _lock(out_dir: Path) -> Iterator[None]:
    """An exclusive lock on the run folder while the block runs; a second holder is refused at once."""
    fd = os.open(out_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                f"another bench run is writing {out_dir}; wait for it or use another folder"
            ) from None
        yield
    finally:
        os.close(fd)


def _run_id(out_dir: Path, run_id: str | None, max_tokens: int | None = None) -> str:
    """The folder's run id (a new one for a new folder, recorded with the token cap its answers had)."""
    manifest = out_dir / "run.json"
    if manifest.exists():
        try:  # a hand-edited record was a KeyError traceback
            record = json.loads(manifest.read_text())
            saved = str(record["run_id"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{manifest} is no bench run's record ({type(e).__name__}: {e})") from None
        if run_id and run_id != saved:
            raise ValueError(
                f"{out_dir} holds run {saved!r}; resume it with that run_id or use another folder"
            )
        # a resume at another cap kept the answers written at the first one and said nothing (folders
        # from before the cap was recorded have none to compare)
        if "max_tokens" in record and record["max_tokens"] != max_tokens:
            cap = record["max_tokens"] or "0 (each task's default)"
            raise ValueError(f"{out_dir} holds run {saved!r}, answered at --max-tokens {cap}: resume it at "
                             "that cap or use another folder")  # fmt: skip
        return saved
    run_id = run_id or datetime.now(UTC).strftime("bench-%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".run.", suffix=".tmp")
    record = {"run_id": run_id, "created_at": datetime.now(UTC).isoformat(), "max_tokens": max_tokens}
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(record))
    publish_mode(tmp)
    os.replace(tmp, manifest)
    return run_id


def _call(gateway: Any, row: dict[str, Any], model: str, run_id: str, scorer: Scorer,
          max_tokens: int | None) -> dict[str, Any]:  # fmt: skip
    family = row.get("family") or task_family(row["task"])
    out: dict[str, Any] = {
        "prompt_id": row["prompt_id"], "task": row["task"], "prompt": row["prompt"], "model": model,
        "score": math.nan, "cost_usd": 0.0, "latency_s": math.nan, "ttft_s": math.nan,
        "input_tokens": 0, "output_tokens": 0, "error": None, "run_id": run_id, "response": None,
    }  # fmt: skip
    t0 = time.perf_counter()
    try:
        r = gateway.chat(model, build_messages(row), max_tokens=max_tokens or MAX_TOKENS.get(family, 128))
    except Exception as e:  # a model error or timeout is an error row, never a crash
        out.update(latency_s=time.perf_counter() - t0, error=f"{type(e).__name__}: {e}"[:500])
        return out
    ttft = r.ttft_s if r.ttft_s is not None else math.nan
    out.update(cost_usd=r.cost_usd, latency_s=r.latency_s, ttft_s=ttft,
               input_tokens=r.input_tokens, output_tokens=r.output_tokens, response=r.text)  # fmt: skip
    if r.fallback_used:  # the answer is another model's: it must not be scored as this one's
        out["error"] = f"fallback: {model} did not answer, {r.model} did"
        return out
    return _scored(out, scorer, row, r.text)


def _scored(out: dict[str, Any], scorer: Scorer, row: dict[str, Any], text: str) -> dict[str, Any]:
    """`out` with the score of answer `text` to prompt `row`, or the scorer's error in its place."""
    out["score"], out["error"] = math.nan, None
    try:
        score = float(scorer(row, text))
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"score {score} outside [0, 1]")
        out["score"] = score
    except JudgeUnavailable as e:  # no rating yet: a failed call, asked again by the next run
        out["error"] = f"judge: {e}"[:500]
    except Exception as e:  # a failing scorer marks this row, never the run
        out["error"] = f"scorer: {type(e).__name__}: {e}"[:500]
    return out


def rescore(prompts: pd.DataFrame, out_dir: str | Path) -> dict[str, int]:
    """Score a run folder's committed answers again with today's scorers, calling no model: a fixed scorer
    reaches the answers stored before its fix. Only answers to prompts with a reference or tests are
    rescored; a judge's rating stays as it was (another judge call would be a new measurement), and so do
    failed calls (no answer) and rows whose prompt is not in `prompts`. A row whose score or scorer error
    changes is committed again (the newest row per cell wins; the older part stays). Returns counts."""
    out_dir = Path(out_dir)
    counts = dict.fromkeys(("changed", "unchanged", "needs_judge", "no_answer", "no_prompt"), 0)
    if not any(out_dir.glob(PART_GLOB)):  # not a folder, or not a run's (runs/bench itself, say)
        raise FileNotFoundError(f"{out_dir}: no bench run folder (no committed {PART_GLOB} in it)")
    with _lock(out_dir):
        df = _latest_rows(out_dir)
        assert df is not None  # parts were found above, and a part is never deleted
        by_id = {str(p["prompt_id"]): p for p in prompts.to_dict("records")}
        rows = df[OUTCOME_COLUMNS + ["response"]].to_dict("records")
        no_answer = (df["response"].isna() | call_failed(df["error"])).tolist()
        changed = []
        for row, unanswered in zip(rows, no_answer, strict=True):
            prompt = by_id.get(str(row["prompt_id"]))
            if prompt is None:
                counts["no_prompt"] += 1
            elif unanswered:
                counts["no_answer"] += 1
            elif needs_judge(prompt):
                counts["needs_judge"] += 1
            else:
                new = _scored(dict(row), score_row, prompt, str(row["response"]))
                same = all(_equal(row[k], new[k]) for k in ("score", "error"))
                counts["unchanged" if same else "changed"] += 1
                if not same:
                    changed.append(new)
        if changed:
            _commit(changed, out_dir)
    return counts


def _equal(a: Any, b: Any) -> bool:
    """Equal, where a missing value (None, NaN, pd.NA) equals any other."""
    return bool(pd.isna(a) and pd.isna(b)) or (not pd.isna(a) and not pd.isna(b) and a == b)


def _commit(rows: list[dict[str, Any]], out_dir: Path) -> Path:
    name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    df = pd.DataFrame(rows, columns=OUTCOME_COLUMNS + ["response"])
    df["error"] = df["error"].astype("string")
    df["response"] = df["response"].astype("string")
    return write_table(df, out_dir / name)  # temp file + rename: a part is whole or absent


def pending_cells(
    prompts: pd.DataFrame, models: Iterable[str], done: set[tuple[str, str]]
) -> list[tuple[dict, str]]:
    """Cells not yet committed, prompt-major so consecutive calls alternate between models."""
    rows = prompts.to_dict("records")
    return [(r, m) for r in rows for m in models if (str(r["prompt_id"]), m) not in done]


def run_bench(prompts: pd.DataFrame, models: list[str], gateway: Any, out_dir: str | Path,
              run_id: str | None = None, concurrency: int = 2, batch_size: int = 8,
              max_tokens: int | None = None, scorer: Scorer = score_row,
              progress: bool = True) -> RunReport:  # fmt: skip
    """Run every missing (prompt, model) cell and commit results under `out_dir`; returns a summary."""
    if not models:
        raise ValueError("no models to run")
    if prompts["prompt_id"].duplicated().any():
        raise ValueError("the prompt set has duplicate prompt_id values")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    max_tokens = max_tokens or None  # 0 and None both mean each task's default (_call), and compare equal
    with _lock(out_dir):
        run_id = _run_id(out_dir, run_id, max_tokens)
        done = committed_cells(out_dir)
        todo = pending_cells(prompts, models, done)
        total = len(prompts) * len(models)
        t0, parts, pending = time.perf_counter(), 0, []
        calls: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        unscored: Counter[str] = Counter()
        bar = tqdm(
            total=total, initial=total - len(todo), desc=f"bench {run_id}", unit="call", disable=not progress
        )
        queue = iter(todo)
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            inflight: set[Future] = set()
            try:
                while True:
                    while len(inflight) < max(
                        1, concurrency
                    ):  # bounded: never more than `concurrency` queued
                        nxt = next(queue, None)
                        if nxt is None:
                            break
                        inflight.add(pool.submit(_call, gateway, nxt[0], nxt[1], run_id, scorer, max_tokens))
                    if not inflight:
                        break
                    finished, inflight = wait(inflight, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        row = fut.result()
                        pending.append(row)
                        calls[row["model"]] += 1
                        failed = failed_call(row["error"])
                        errors[row["model"]] += failed
                        unscored[row["model"]] += row["error"] is not None and not failed
                        bar.update(1)
                        bar.set_postfix(failed=sum(errors.values()), unscored=sum(unscored.values()))
                    if len(pending) >= batch_size:
                        _commit(pending, out_dir)
                        parts, pending = parts + 1, []
            finally:
                for fut in inflight:
                    fut.cancel()
                if pending:  # an interrupt (Ctrl-C) keeps what finished; SIGKILL loses at most this batch
                    _commit(pending, out_dir)
                    parts += 1
                bar.close()
        return RunReport(run_id=run_id, out_dir=str(out_dir), cells_total=total,
                         cells_done_before=total - len(todo), cells_run=sum(calls.values()),
                         parts_written=parts, seconds=round(time.perf_counter() - t0, 2),
                         errors_by_model=dict(errors), scorer_errors_by_model=dict(unscored),
                         calls_by_model=dict(calls))  # fmt: skip


def accuracy_table(df: pd.DataFrame) -> pd.DataFrame:
    """Accuracy (mean score over scored rows), n, and error rate per task x model: failed calls, as the
    nightly error-rate check counts them (a scorer's error is an answered call)."""
    g = df.assign(errored=call_failed(df["error"])).groupby(["task", "model"])
    out = g.agg(
        accuracy=("score", "mean"),
        n=("score", "count"),
        rows=("score", "size"),
        error_rate=("errored", "mean"),
    )
    return out.reset_index()


def error_rate_by_model(df: pd.DataFrame) -> dict[str, float]:
    """The share of each model's rows whose call failed (scorer errors are answers, not failed calls)."""
    return {str(k): float(v) for k, v in call_failed(df["error"]).groupby(df["model"]).mean().items()}
