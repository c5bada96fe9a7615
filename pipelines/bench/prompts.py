"""Prompt sets: a validated table of prompts (prompt_id, task, prompt, reference, tests, contexts), loaded
from JSONL or CSV (a malformed file is refused with its line number) or by name, and stratified by task with a
fixed seed."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pandas as pd

from pipelines.bench.outcomes import TASK_FAMILY, TAXONOMY, read_text_csv, task_family
from pipelines.settings import Settings

# `reference` is always a string (the first accepted answer); `answers` lists every accepted answer when a
# file gives several, so each column has one type and the table round-trips through parquet
PROMPT_COLUMNS = [
    "prompt_id", "task", "prompt", "reference", "answers", "tests", "contexts", "gold_chunk_ids", "family",
]  # fmt: skip
REQUIRED = ("prompt_id", "task", "prompt")
DATA_DIR = Path(__file__).parent / "data"
# named sets: committed demo sets (files under pipelines/bench/data) and the RouterBench slice
NAMED = {"demo": DATA_DIR / "demo.jsonl"}
ROUTERBENCH_SETS = ("routerbench", "routerbench-mc")


class PromptSetError(ValueError):
    """A prompt file is malformed; the message names the file and the line."""


def _check_row(row: dict, where: str) -> dict:
    if not isinstance(row, dict):
        raise PromptSetError(f"{where}: expected an object with {', '.join(REQUIRED)}")
    for key in REQUIRED:
        if row.get(key) is not None and not isinstance(row[key], str):  # 7 was "missing or empty"
            raise PromptSetError(f"{where}: field {key!r} must be a string, got {type(row[key]).__name__}")
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise PromptSetError(f"{where}: missing or empty field {key!r}")
    for key in ("tests", "contexts", "gold_chunk_ids", "answers"):
        v = row.get(key)
        if v is not None and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            raise PromptSetError(f"{where}: field {key!r} must be a list of strings")
    family = row.get("family")
    if family is not None and family not in TAXONOMY:
        raise PromptSetError(f"{where}: family {family!r} is none of {', '.join(TAXONOMY)}")
    if family is None and row["task"] not in (*TASK_FAMILY, *TAXONOMY):  # a typo was scored as chat, unsaid
        raise PromptSetError(
            f"{where}: task {row['task']!r} is no known task ({', '.join(TASK_FAMILY)}) nor family "
            f"({', '.join(TAXONOMY)}): give the row a `family` to score it as one"
        )
    ref = row.get("reference")
    if ref is not None and not isinstance(ref, (str, list)):
        raise PromptSetError(f"{where}: field 'reference' must be a string or a list of strings")
    out = {k: row.get(k) for k in PROMPT_COLUMNS}
    if isinstance(ref, list) and not all(isinstance(x, str) for x in ref):
        raise PromptSetError(f"{where}: field 'reference' must be a string or a list of strings")
    # every accepted answer once, the reference first: an `answers` field beside a reference was scored
    # alone, the reference left out
    refs = ref if isinstance(ref, list) else [ref] if ref else []
    accepted = list(dict.fromkeys([*refs, *(row.get("answers") or [])]))
    out["reference"] = accepted[0] if accepted else None
    out["answers"] = accepted if accepted and (isinstance(ref, list) or row.get("answers")) else None
    if (family or task_family(row["task"])) == "multiple_choice" and out["reference"] is not None:
        out["reference"] = _choice_letter(out["reference"], row["prompt"], where)
        out["answers"] = None
    return out


def _choice_letter(ref: str, prompt: str, where: str) -> str:
    """A multiple-choice reference as the scorer compares it: "(B)", "B)", "b." are B; one that is no letter,
    or none of the prompt's options, is refused (every answer, the right one too, scored 0)."""
    from pipelines.bench.scorers import parse_choices

    m = re.fullmatch(r"\s*[\(\[]?([A-Ha-h])[\)\]]?[.:]?\s*", ref)
    options = sorted(parse_choices(prompt))
    if m is None or (options and m.group(1).upper() not in options):
        among = f"one of the prompt's options {', '.join(options)}" if options else "a choice letter"
        raise PromptSetError(f"{where}: a multiple-choice reference must be {among}, got {ref!r}")
    return m.group(1).upper()


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise PromptSetError(f"{path}:{n}: not UTF-8 text (byte {e.start})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptSetError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            rows.append((n, _check_row(obj, f"{path}:{n}")))
    return _unique(rows, path)


def _read_csv(path: Path) -> list[dict]:
    """Excel's UTF-8 (with a BOM) reads as UTF-8; a field may be as long as a prompt gets (csv's limit is
    128 KiB); a file that is not UTF-8 or not CSV is a PromptSetError naming its line."""
    csv.field_size_limit(max(csv.field_size_limit(), 64 << 20))
    try:
        return _read_csv_rows(path)
    except UnicodeDecodeError as e:
        raise PromptSetError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except csv.Error as e:
        raise PromptSetError(f"{path}: not a CSV file ({e})") from None


def _read_csv_rows(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise PromptSetError(f"{path}:1: header lacks column(s) {', '.join(missing)}")
        start = reader.line_num + 1
        for rec in reader:
            where = f"{path}:{start}"
            if None in rec or any(v is None for v in rec.values()):
                raise PromptSetError(f"{where}: wrong number of fields")
            row = {k: (v if v != "" else None) for k, v in rec.items()}
            for key in ("tests", "contexts", "gold_chunk_ids", "answers"):
                raw = row.get(key)
                if isinstance(raw, str) and raw:
                    try:
                        row[key] = json.loads(raw)
                    except json.JSONDecodeError:
                        raise PromptSetError(
                            f"{where}: field {key!r} must be a JSON list of strings"
                        ) from None
            rows.append((start, _check_row(row, where)))
            start = reader.line_num + 1
    return _unique(rows, path)


def _unique(rows: list[tuple[int, dict]], path: Path) -> list[dict]:
    seen: dict[str, int] = {}
    for n, r in rows:
        if r["prompt_id"] in seen:
            raise PromptSetError(f"{path}:{n}: duplicate prompt_id {r['prompt_id']!r} (first on line "
                                 f"{seen[r['prompt_id']]})")  # fmt: skip
        seen[r["prompt_id"]] = n
    if not rows:
        raise PromptSetError(f"{path}: no prompts")
    return [r for _, r in rows]


def read_prompt_file(path: str | Path) -> pd.DataFrame:
    """A JSONL or CSV prompt file as a validated table (PROMPT_COLUMNS; `family` from the task where a row
    names none)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prompt file not found: {path}")
    if path.suffix == ".jsonl":
        rows = _read_jsonl(path)
    elif path.suffix == ".csv":
        rows = _read_csv(path)
    else:
        raise PromptSetError(f"{path}: expected a .jsonl or .csv prompt file")
    return _frame(rows)


def _frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=PROMPT_COLUMNS)
    df["prompt_id"] = df["prompt_id"].astype(str)
    df["family"] = df["family"].fillna(df["task"].map(task_family))
    return df


def asserts_from_prompt(prompt: str) -> list[str]:
    """MBPP-style prompts list their tests ("assert f(1) == 2" lines); an empty list when there are none."""
    return [m.strip() for m in re.findall(r"^\s*(assert .+)$", prompt, flags=re.M)]


def routerbench_prompts(
    data_dir: str | Path, split: str = "train", scorable_only: bool = True
) -> pd.DataFrame:
    """RouterBench prompts; `scorable_only` keeps rows we can score (a gold letter, or code with tests)."""
    p = read_text_csv(Path(data_dir) / f"prompts_{split}.csv", dtype={"prompt_id": str, "reference": str})
    df = _frame([{"prompt_id": r.prompt_id, "task": r.task, "prompt": r.prompt,
                  "reference": r.reference if isinstance(r.reference, str) and r.reference else None,
                  "tests": asserts_from_prompt(r.prompt) or None, "contexts": None}
                 for r in p.itertuples()])  # fmt: skip
    if scorable_only:
        ok = ((df["family"] == "multiple_choice") & df["reference"].notna()) | (
            (df["family"] == "code") & df["tests"].notna()
        )
        df = df[ok]
    return df.reset_index(drop=True)


def load_prompt_set(name_or_path: str | Path, settings: Settings | None = None) -> pd.DataFrame:
    """A prompt set by file path or by name: 'demo', 'routerbench' (scorable RouterBench rows)."""
    key = str(name_or_path)
    if key in NAMED:
        return read_prompt_file(NAMED[key])
    if key in ROUTERBENCH_SETS:
        settings = settings or Settings()
        return routerbench_prompts(settings.shared_data_dir / "routerbench")
    path = Path(name_or_path)
    if not path.exists():
        names = ", ".join([*NAMED, *ROUTERBENCH_SETS])
        raise FileNotFoundError(f"prompt set {key!r} is neither a file nor a known name ({names})")
    return read_prompt_file(path)


def stratified_sample(df: pd.DataFrame, size: int | None = None, per_task: int | None = None,
                      seed: int = 0, by: str = "task") -> pd.DataFrame:  # fmt: skip
    """Equal allocation per task (`per_task`, or `size` split evenly, remainder to the first tasks), drawn
    with a fixed seed; a task with fewer rows gives all it has. Order: by task, then prompt_id. The draw does
    not depend on the rows' order in `df` (the same prompts in another order gave another sample)."""
    df = df.sort_values([by, "prompt_id"], kind="stable")
    groups = sorted(df[by].unique())
    if per_task is None:
        if size is None:
            return df.sort_values([by, "prompt_id"]).reset_index(drop=True)
        base, extra = divmod(size, max(len(groups), 1))
        quota = {g: base + (i < extra) for i, g in enumerate(groups)}
    else:
        quota = dict.fromkeys(groups, per_task)
    parts = [
        g_df.sample(n=min(quota[g], len(g_df)), random_state=seed)
        for g, g_df in df.groupby(by)
        if quota[g] > 0
    ]
    out = pd.concat(parts) if parts else df.iloc[:0]
    return out.sort_values([by, "prompt_id"]).reset_index(drop=True)


def prompt_set_path(settings: Settings) -> Path:
    """Where the `prompt_set` asset keeps the nightly bench's prompts (`bench rescore` reads them there)."""
    return settings.run_dir / "bench" / "prompt_set.parquet"


def counts_per_task(df: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in df["task"].value_counts().sort_index().items()}


def build_prompt_set(
    settings: Settings,
    per_task: int = 20,
    seed: int = 0,
    extra: tuple[str, ...] = ("demo",),
    with_log: bool | None = None,
) -> pd.DataFrame:
    """The micro-bench prompt set: a stratified RouterBench sample (ARC, Winogrande), the committed demo sets
    (code with tests, extraction, RAG answers) and, `with_log` (default: when a judge model is set), the
    prompts without a reference: the service's prompt log of the last `prompt_log_days` days as task `chat`
    and RAG questions derived from the labelled BEIR corpus (SciFact) with gold chunk ids; each task capped
    at `per_task`."""
    from pipelines.bench.prompt_log import read_prompt_log
    from pipelines.bench.rag_questions import beir_rag_questions

    frames = []
    rb = settings.shared_data_dir / "routerbench"
    if (rb / "prompts_train.csv").exists():
        frames.append(routerbench_prompts(rb))
    frames += [load_prompt_set(name, settings) for name in extra]
    if settings.judge_model is not None if with_log is None else with_log:  # rows a judge must rate
        logged, _ = read_prompt_log(settings.prompt_log_dir, settings.prompt_log_days)
        frames.append(logged)
        beir = settings.retrieval_eval_dir or settings.shared_data_dir / "scifact"
        if (beir / "qrels_train.tsv").exists():
            frames.append(beir_rag_questions(settings, beir, n=per_task, seed=seed))
    frames = [f for f in frames if len(f)]
    if not frames:
        raise FileNotFoundError(f"no prompt source: {rb} is missing and no extra sets were named")
    df = pd.concat(frames, ignore_index=True).drop_duplicates("prompt_id")
    return stratified_sample(df, per_task=per_task, seed=seed)
