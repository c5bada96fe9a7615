"""The outcome table (DESIGN.md): one row per prompt x model, and the RouterBench import into it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.files import atomic_path

OUTCOME_COLUMNS = [
    "prompt_id", "task", "prompt", "model", "score", "cost_usd", "latency_s", "ttft_s",
    "input_tokens", "output_tokens", "error", "run_id",
]  # fmt: skip

# Task taxonomy: fine-grained task names as they appear in the data, and the family each belongs to.
TASK_FAMILY = {
    "arc-challenge": "multiple_choice",
    "winogrande": "multiple_choice",
    "mbpp": "code",
}
TAXONOMY = ["multiple_choice", "code", "extraction", "rag_answer", "chat"]


def task_family(task: str) -> str:
    return TASK_FAMILY.get(task, task if task in TAXONOMY else "chat")


ID_COLUMNS = ("prompt_id", "model")  # read as written: 007 stays 007, 1e3 stays 1e3
NUMBER_COLUMNS = ("score", "cost_usd", "latency_s", "ttft_s", "input_tokens", "output_tokens")
# words a CSV's number column may hold for "no value" (pandas' defaults); a text column's only missing value
# is an empty field: a prompt "NA", an answer "None" or a prompt_id "null" are text
NA_WORDS = frozenset(
    {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
     "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
)  # fmt: skip


def read_text_csv(path: str | Path, **kwargs) -> pd.DataFrame:
    """A CSV whose only missing value is an empty field: a prompt "NA" or a reference "None" is text."""
    return pd.read_csv(path, keep_default_na=False, na_values=[""], **kwargs)


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a parquet or CSV table, chosen by the file's extension. Ids are text as written and never blank,
    the number columns numbers: anything else is a ValueError naming the row."""
    import warnings

    path = Path(path)
    if path.is_dir():  # callers name the path
        raise ValueError("a folder, not a .parquet or .csv file")
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
    elif path.suffix == ".csv":
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            try:  # index_col=False: a row with an unquoted comma must not shift its prompt_id into an index
                df = read_text_csv(path, index_col=False, dtype={c: str for c in (*ID_COLUMNS, "task")})
            except pd.errors.ParserWarning:
                raise ValueError("a row has more fields than the header (an unquoted comma?)") from None
    else:
        raise ValueError("expected a .parquet or .csv file")

    def where(mask: pd.Series) -> str:  # a CSV's prompts may span lines: count rows, not lines
        i = int(mask.to_numpy().argmax())
        pid = df["prompt_id"].iloc[i] if "prompt_id" in df else None
        return f"data row {i + 1}" + (f" (prompt_id {pid})" if isinstance(pid, str) and pid.strip() else "")

    for col in (c for c in ID_COLUMNS if c in df):
        if (blank := df[col].isna() | (df[col].astype(str).str.strip() == "")).any():
            raise ValueError(f"{where(blank)} has no {col}")
        df[col] = df[col].astype(str)
    for col in (c for c in NUMBER_COLUMNS if c in df):
        if not pd.api.types.is_numeric_dtype(df[col]):
            df[col] = df[col].mask(df[col].isin(NA_WORDS))
        num = pd.to_numeric(df[col], errors="coerce")
        if (bad := num.isna() & df[col].notna()).any():
            raise ValueError(f"{where(bad)}: {col} {df[col][bad].iloc[0]!r} is not a number")
        # inf failed the utility fit with a sampler's traceback; a negative cost or latency read as free
        if (bad := ~np.isfinite(num.fillna(0)) | ((num < 0) & (col != "score"))).any():
            said = f"{col} {str(df[col][bad].iloc[0])!r} is not a finite number"
            raise ValueError(f"{where(bad)}: {said}{'' if col == 'score' else ' >= 0'}")
        df[col] = num
    return df


def check_unique_prompt_ids(df: pd.DataFrame, source: str | Path) -> None:
    """A ValueError when `df` repeats a prompt_id: each of its outcome rows would join, and count, twice."""
    if (repeated := df["prompt_id"].duplicated()).any():
        raise ValueError(f"{source} repeats prompt_id {df['prompt_id'][repeated].iloc[0]!r}")


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write atomically (temp file in the same folder, then rename): a reader never sees half a file."""
    path = Path(path)
    if path.suffix not in (".parquet", ".csv"):  # before atomic_path makes the folders
        raise ValueError(f"{path}: expected a .parquet or .csv file")
    with atomic_path(path, suffix=path.suffix) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
    return path


def load_routerbench(data_dir: str | Path, split: str = "train") -> tuple[pd.DataFrame, pd.DataFrame]:
    """The RouterBench slice as (prompts, outcomes): prompts carry prompt_id, task, prompt, reference."""
    data_dir = Path(data_dir)
    prompts_path, outcomes_path = data_dir / f"prompts_{split}.csv", data_dir / f"outcomes_{split}.csv"
    for p in (prompts_path, outcomes_path):
        if not p.exists():
            raise FileNotFoundError(f"RouterBench file not found: {p}")
    import warnings

    try:  # a row with one field too many shifted every column, unsaid: an error, as in read_table
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            prompts = read_text_csv(prompts_path, dtype={"prompt_id": str, "reference": str}, index_col=False)
    except pd.errors.ParserWarning:
        said = "a row has more fields than the header (an unquoted comma?)"
        raise ValueError(f"{prompts_path}: {said}") from None
    except ValueError as e:  # empty, not UTF-8, malformed: the message names the file
        raise ValueError(f"{prompts_path}: {e}") from None
    if missing := [c for c in ("prompt_id", "task", "prompt") if c not in prompts]:
        raise ValueError(f"{prompts_path}: no {', '.join(missing)} column (it has {list(prompts.columns)})")
    check_unique_prompt_ids(prompts, prompts_path)
    try:
        outcomes = read_table(outcomes_path)
    except ValueError as e:
        raise ValueError(f"{outcomes_path}: {e}") from None
    if "cost_usd" not in outcomes:  # imported with an empty cost, which `router train` refused a step later
        raise ValueError(f"{outcomes_path}: no cost_usd column (it has {list(outcomes.columns)})")
    return prompts, outcomes


def routerbench_outcome_table(data_dir: str | Path, split: str = "train") -> pd.DataFrame:
    """RouterBench outcomes in the outcome-table shape; rows without a score are dropped, and counted in
    `df.attrs["unscored_rows"]` (92 of the train split's 24,475)."""
    prompts, outcomes = load_routerbench(data_dir, split)
    data_dir = Path(data_dir)
    df = joined_outcomes(
        outcomes, prompts, data_dir / f"outcomes_{split}.csv", data_dir / f"prompts_{split}.csv"
    ).assign(error=None, run_id=f"routerbench-{split}")
    df.attrs["unscored_rows"] = int(outcomes["score"].isna().sum())
    return df


def joined_outcomes(
    out: pd.DataFrame, prompts: pd.DataFrame | None, source: str | Path, prompts_source: str | Path | None
) -> pd.DataFrame:
    """An outcome table (`out`, read from `source`) joined to its prompts' task and text, in the outcome
    table's columns; rows without a score are dropped. Refused with a ValueError: a prompt_id the prompts
    lack, a row with no task, a (prompt_id, model) pair twice (twice the evidence), a score outside [0, 1].
    An outcome table that already carries `task` needs no prompts."""
    for col in ("prompt_id", "model", "score"):
        if col not in out.columns:
            raise ValueError(f"{source}: no `{col}` column")
    if prompts is not None:
        if "prompt_id" not in prompts.columns:
            raise ValueError(f"{prompts_source}: no `prompt_id` column")
        check_unique_prompt_ids(prompts, prompts_source or "the prompts")
        if orphans := sorted(set(out["prompt_id"]) - set(prompts["prompt_id"])):  # were dropped unsaid
            raise ValueError(
                f"{len(orphans)} prompt_ids of {source} are not in {prompts_source}: {orphans[:3]}"
            )
        cols = [c for c in ("prompt_id", "task", "prompt") if c in prompts.columns]
        # the prompts' task and text where they have them; the outcomes' own task stays where they do not
        out = out.drop(columns=[c for c in cols[1:] if c in out.columns]).merge(
            prompts[cols], on="prompt_id", how="left"
        )
    if "task" not in out.columns:
        raise ValueError(
            f"neither {source} nor {prompts_source} has a `task` column"
            if prompts is not None
            else f"{source} has no `task` column: pass the prompts file too"
        )
    out = out.dropna(subset=["score"])  # a failed call (then retried) is no outcome, nor a repeat
    no_task = out["task"].isna() | (out["task"].astype(str).str.strip() == "")
    if no_task.any():  # were dropped without a word
        ids = sorted(set(out.loc[no_task, "prompt_id"]))
        raise ValueError(f"{int(no_task.sum())} outcome rows have no task (prompts {ids[:3]})")
    twice = out.duplicated(["prompt_id", "model"], keep=False)
    if twice.any():  # counted twice, they were twice the evidence
        pairs = sorted(set(zip(out.loc[twice, "prompt_id"], out.loc[twice, "model"], strict=True)))
        raise ValueError(f"{source}: {len(pairs)} (prompt_id, model) pairs have several rows: {pairs[:3]}")
    if (bad := ~out["score"].between(0, 1)).any():  # 7 read as an accuracy of 7.000
        raise ValueError(f"{source}: score {float(out['score'][bad].iloc[0])} is outside [0, 1]")
    for col in OUTCOME_COLUMNS:
        if col not in out.columns:
            out[col] = np.nan
    return out[OUTCOME_COLUMNS].reset_index(drop=True)


def add_evidence(
    prompts: pd.DataFrame, outcomes: pd.DataFrame, extra: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(prompts, outcomes) plus the rows of another outcome table (the micro-bench's): its prompts that
    `prompts` lacks join the prompt table, its models join the panel, NaN where a model did not see a prompt.
    A (prompt, model) pair in both keeps `extra`'s row (the newer measurement)."""
    if extra.empty:
        return prompts, outcomes
    new = extra[["prompt_id", "task", "prompt"]].drop_duplicates("prompt_id")
    new = new[~new["prompt_id"].astype(str).isin(set(prompts["prompt_id"].astype(str)))]
    keep = [c for c in ("prompt_id", "model", "score", "cost_usd", "latency_s") if c in extra]
    merged = pd.concat([outcomes, extra[keep]], ignore_index=True)
    merged = merged.drop_duplicates(["prompt_id", "model"], keep="last").reset_index(drop=True)
    return pd.concat([prompts, new], ignore_index=True), merged
