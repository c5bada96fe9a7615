"""lm-eval-harness against our local servers: a committed task YAML (pipelines/bench/lm_eval_tasks) over local
data, run through lm-eval's `local-chat-completions` model with the chat template applied, and every logged
sample stored as an outcome row. No hub download: the data files are resolved to absolute local paths."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pipelines.bench.outcomes import OUTCOME_COLUMNS
from pipelines.llm.catalog import ModelEntry

TASKS_DIR = Path(__file__).parent / "lm_eval_tasks"


def task_yaml(task: str) -> Path:
    """The committed YAML of `task`, else a FileNotFoundError naming the known tasks."""
    src = TASKS_DIR / f"{task}.yaml"
    if not src.is_file():
        known = ", ".join(sorted(p.stem for p in TASKS_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"no lm-eval task {task!r} in {TASKS_DIR} (known: {known})")
    return src


def _resolved_task_dir(task: str, dest: Path) -> None:
    """Copy the task YAML to `dest` with its data_files made absolute (lm-eval resolves them from the cwd)."""
    src = task_yaml(task)
    cfg = yaml.safe_load(src.read_text())
    files = cfg.get("dataset_kwargs", {}).get("data_files", {})
    for split, name in files.items():
        files[split] = str((TASKS_DIR / name).resolve())
    (dest / src.name).write_text(yaml.safe_dump(cfg, sort_keys=False))


def _prompt_text(sample: dict[str, Any]) -> str:
    """The user turn lm-eval sent (its chat request arrives as a JSON list of messages)."""
    raw: Any = sample["arguments"][0][0] if sample.get("arguments") else ""
    raw = raw[0] if isinstance(raw, (list, tuple)) and raw else raw  # (JsonChatStr,) or [json string]
    try:
        return "\n".join(m["content"] for m in json.loads(raw) if m.get("role") == "user")
    except (TypeError, ValueError, KeyError):
        return str(raw)


def _metric(sample: dict[str, Any]) -> float:
    v = sample.get("exact_match", sample.get("acc", math.nan))
    return float(v) if v is not None else math.nan


def run_lm_eval(entry: ModelEntry, task: str = "sm_arc_mini", limit: int | None = None,
                num_concurrent: int = 1, run_id: str | None = None) -> pd.DataFrame:  # fmt: skip
    """Run `task` against `entry`'s OpenAI-compatible server; one outcome row per evaluated sample."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    if not entry.api_base:
        raise ValueError(f"{entry.name}: no api_base to point lm-eval at")
    with tempfile.TemporaryDirectory(prefix="sm-lm-eval-") as tmp:
        _resolved_task_dir(task, Path(tmp))
        results = simple_evaluate(
            model="local-chat-completions",
            model_args={"model": entry.name, "base_url": f"{entry.api_base.rstrip('/')}/chat/completions",
                        "num_concurrent": num_concurrent, "max_retries": 2, "tokenizer_backend": None,
                        "tokenized_requests": False},
            tasks=[task], task_manager=TaskManager(include_path=tmp, include_defaults=False),
            apply_chat_template=True, log_samples=True, limit=limit, batch_size=1,
        )  # fmt: skip
    samples = results["samples"][task]
    run_id = run_id or f"lm-eval-{task}"
    rows = []
    for s in samples:
        doc = s.get("doc", {})
        resp = (s.get("resps") or [[""]])[0][0]
        rows.append({
            "prompt_id": str(doc.get("id", f"{task}-{s['doc_id']}")), "task": task,
            "prompt": _prompt_text(s), "model": entry.name,
            "score": _metric(s), "cost_usd": math.nan, "latency_s": math.nan, "ttft_s": math.nan,
            "input_tokens": math.nan, "output_tokens": math.nan,
            "error": None if resp else "empty response", "run_id": run_id,
        })  # fmt: skip
    return pd.DataFrame(rows, columns=OUTCOME_COLUMNS)
