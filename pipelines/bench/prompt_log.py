"""The service's prompt log: the prompts users really send, PII-redacted before they are written.

The service appends one JSON line per chat request to a daily file `<dir>/YYYY-MM-DD.jsonl` (one `write` of
one line in append mode, so concurrent workers do not interleave and a crash loses at most the line being
written). Each line: prompt_id (a hash of the redacted text, so a repeated prompt keeps its id), ts, the
redacted prompt, the entity types redacted, the router's predicted task and the model that was chosen.

`read_prompt_log` turns the log into prompt-set rows of task `chat` with no reference: the micro-bench
samples them as one more stratum and scores the answers with a judge model (`scorers.JudgeScorer`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)
LOG_TASK = "chat"
MAX_PROMPT_CHARS = 20_000  # a longer prompt is logged cut to this length


class PromptLog:
    """Appends redacted prompts to `directory`; `redact(text) -> (text, entity counts)` runs first. With
    `still_personal(text) -> entity types`, a redacted prompt in which it finds any is not written: ingest's
    redaction is narrower than the router's check, which must not damage papers (a phone number of 8
    digits, an SSN in spaces), and the router's check is what the service calls personal data."""

    def __init__(self, directory: str | Path, redact: Any, still_personal: Any = None) -> None:
        self.directory = Path(directory)
        self._redact = redact
        self._still_personal = still_personal
        self._lock = threading.Lock()

    def append(self, prompt: str, task: str | None = None, model: str | None = None,
               chosen_by: str | None = None) -> dict[str, Any] | None:  # fmt: skip
        """The record written, or None where the redacted prompt still holds personal data (not written)."""
        # redacted, then cut: an identifier cut in two at the limit is no longer found (its last word goes
        # too, for one that straddles the redacted stretch's end)
        text, found = self._redact(prompt[: 2 * MAX_PROMPT_CHARS])
        if len(prompt) > MAX_PROMPT_CHARS:
            cut = text[:MAX_PROMPT_CHARS].rsplit(None, 1)
            text = cut[0] if len(cut) == 2 else text[:MAX_PROMPT_CHARS]
        if self._still_personal is not None and self._still_personal(text):
            return None
        now = datetime.now(UTC)
        rec = {
            "prompt_id": "log-" + hashlib.sha256(text.encode()).hexdigest()[:16],
            "ts": now.isoformat(timespec="seconds"),
            "prompt": text,
            "redacted": sorted(found),
            "predicted_task": task,
            "model": model,
            "chosen_by": chosen_by,
        }
        line = json.dumps(rec, ensure_ascii=False) + "\n"
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.directory / f"{now:%Y-%m-%d}.jsonl", "a+b") as f:
            # a line torn by a crash or a full disk ends without "\n": this record starts a line of its own
            end = f.seek(0, 2)
            torn = end > 0 and f.seek(end - 1) >= 0 and f.read(1) != b"\n"
            f.write((b"\n" if torn else b"") + line.encode("utf-8"))
        return rec


class PromptLogWriter:
    """Appends to a PromptLog from one background thread, in order, so that logging never delays a response.

    At most `queue` prompts wait (queued or being written): past that, `submit` drops the prompt and says
    so. The log, and the redaction engine it needs (Presidio takes seconds to build), are made by `make_log`
    at the first write, not at start-up. A failed write is logged by its error type alone, never the prompt.
    """

    def __init__(self, make_log: Callable[[], PromptLog], queue: int = 64) -> None:
        self._make_log = make_log
        self._log: PromptLog | None = None
        self._pool = ThreadPoolExecutor(1, "prompt-log")
        self._slots = threading.BoundedSemaphore(queue)

    def submit(self, prompt: str, task: str | None = None, model: str | None = None,
               chosen_by: str | None = None) -> bool:  # fmt: skip
        """Queue `prompt` for the log; False when the writer is `queue` prompts behind and it was dropped."""
        if not self._slots.acquire(blocking=False):
            return False
        try:
            self._pool.submit(self._write, prompt, task, model, chosen_by)
        except RuntimeError:  # closed (the service is stopping): dropped
            self._slots.release()
            return False
        return True

    def _write(self, prompt: str, task: str | None, model: str | None, chosen_by: str | None) -> None:
        try:
            if self._log is None:
                self._log = self._make_log()
            self._log.append(prompt, task, model, chosen_by)
        except Exception as e:  # the log is best effort: never a failed request, never the prompt in a log
            log.warning("prompt log: could not write a record (%s)", type(e).__name__)
        finally:
            self._slots.release()

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        self._pool.shutdown(wait=True)


def _record(line: str) -> Any:
    """A line's record; where a torn line (a crash mid-write) has the next record glued on, that record."""
    try:
        return json.loads(line)
    except ValueError:
        start = line.rfind('{"prompt_id"', 1)
        if start < 0:
            raise
        return json.loads(line[start:])


def read_prompt_log(directory: str | Path, days: int | None = None,
                    now: datetime | None = None) -> tuple[pd.DataFrame, int]:  # fmt: skip
    """The logged prompts of the last `days` days (all when None), one row per distinct prompt, as
    prompt-set rows (task `chat`, no reference), and how many malformed lines were skipped."""
    from pipelines.bench.prompts import PROMPT_COLUMNS, _frame

    directory = Path(directory)
    first = ((now or datetime.now(UTC)) - timedelta(days=days)).date() if days is not None else None
    rows: dict[str, dict[str, Any]] = {}
    bad = 0
    for path in sorted(directory.glob("*.jsonl")):
        try:
            day = datetime.strptime(path.stem, "%Y-%m-%d").date()
        except ValueError:
            continue  # not a log file
        if first is not None and day < first:
            continue
        # records end at "\n" alone: U+2028 or U+0085 (pasted from a PDF) are written raw inside a prompt
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").split("\n"), 1):
            if not line.strip():
                continue
            try:
                rec = _record(line)
                pid, prompt = str(rec["prompt_id"]), str(rec["prompt"])
            except (ValueError, KeyError, TypeError):
                bad += 1  # a torn last line after a crash, or a hand edit
                log.warning("%s:%d: not a prompt-log record, skipped", path, n)
                continue
            if prompt.strip():
                rows.setdefault(pid, {"prompt_id": pid, "task": LOG_TASK, "prompt": prompt, "reference": None,
                                      "tests": None, "contexts": None})  # fmt: skip
    if not rows:
        return pd.DataFrame(columns=PROMPT_COLUMNS), bad
    return _frame(list(rows.values())), bad
