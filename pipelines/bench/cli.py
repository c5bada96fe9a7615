"""`stratmaster bench ...`: run the micro-bench on a prompt set, import RouterBench outcomes, run lm-eval."""

from __future__ import annotations

import os
from pathlib import Path

import typer

app = typer.Typer(help="Micro-bench: run prompt sets against the model panel and score the answers.",
                  no_args_is_help=True)  # fmt: skip


def resolve_models(spec: str, catalog) -> list[str]:
    """'local' means every available model of privacy tier local; otherwise comma-separated catalog names."""
    names: list[str] = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item == "local":
            names += [e.name for e in catalog.available() if e.privacy == "local"]
        else:
            entry = catalog.get(item)  # unknown names fail here, listing the catalog
            if why := entry.unavailable_reason():  # every call would fail: a table of errors
                raise KeyError(f"{item} cannot be called: {why}")
            names.append(item)
    return list(dict.fromkeys(names))


def _print_accuracy(df) -> None:
    from rich.console import Console
    from rich.table import Table

    from pipelines.bench.runner import accuracy_table

    t = Table("task", "model", "accuracy", "n", "error rate")
    for r in accuracy_table(df).itertuples():
        acc = "-" if r.n == 0 else f"{r.accuracy:.3f}"
        t.add_row(r.task, r.model, acc, str(r.n), f"{r.error_rate:.1%}")
    Console().print(t)


def _check_out(out: Path) -> None:
    """An --out that is a folder, or where no file can be written, as a one-line error (exit 2)."""
    from pipelines.files import check_writable_beside

    if out.is_dir():
        typer.echo(f"error: --out {out} is a folder, not a file", err=True)
        raise typer.Exit(2)
    try:
        check_writable_beside(out)
    except OSError as e:
        typer.echo(f"error: --out {out}: {e}", err=True)
        raise typer.Exit(2) from None


@app.command("run")
def run(
    prompt_set: str = typer.Option(
        ..., "--prompt-set", help="a .jsonl/.csv prompt file or a name: demo, routerbench"
    ),
    models: str = typer.Option("local", "--models", help="NAME,NAME or 'local'"),
    limit: int = typer.Option(0, "--limit", min=0, help="stratified sample of at most N prompts (0: all)"),
    out: Path = typer.Option(..., "--out", help="outcome table, .parquet or .csv"),
    concurrency: int = typer.Option(2, "--concurrency", min=1),
    max_tokens: int = typer.Option(
        0, "--max-tokens", min=0, help="cap on generated tokens (0: per task default)"
    ),
    seed: int = typer.Option(0, "--seed"),
    work_dir: Path = typer.Option(None, "--work-dir", help="committed parts (resume); default OUT.parts/"),
    start_servers: bool = typer.Option(True, "--start-servers/--no-start-servers"),
) -> None:
    """Run PROMPT_SET x MODELS through the gateway; resumable (run it again to finish a killed run)."""
    from pipelines.bench.outcomes import write_table
    from pipelines.bench.prompts import PromptSetError, load_prompt_set, stratified_sample
    from pipelines.bench.runner import collect_outcomes, error_rate_by_model, run_bench
    from pipelines.bench.scorers import bench_scorer
    from pipelines.llm import servers
    from pipelines.llm.catalog import load_catalog
    from pipelines.llm.gateway import Gateway
    from pipelines.settings import Settings

    if out.suffix not in (".parquet", ".csv"):
        raise typer.BadParameter(f"{out}: expected a .parquet or .csv file", param_hint="--out")
    _check_out(out)  # before the calls: an --out that is a folder failed after every one of them
    settings = Settings()
    try:
        prompts = load_prompt_set(prompt_set, settings)
    except (PromptSetError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if limit:
        prompts = stratified_sample(prompts, size=limit, seed=seed)
    catalog = load_catalog(settings)
    try:
        names = resolve_models(models, catalog)
    except KeyError as e:
        typer.echo(f"error: {e.args[0]}", err=True)
        raise typer.Exit(2) from None
    if not names:
        typer.echo("error: no model selected (no available model of privacy tier local?)", err=True)
        raise typer.Exit(2)
    if start_servers:
        for name in names:
            entry = catalog.get(name)
            if entry.is_local_server:
                servers.start(entry, settings)
    work_dir = work_dir or out.with_name(out.name + ".parts")
    gateway = Gateway(settings, catalog)
    scorer = bench_scorer(settings, gateway)  # as the benchmark_results asset scores
    try:
        report = run_bench(prompts, names, gateway, work_dir, concurrency=concurrency,
                           max_tokens=max_tokens or None, scorer=scorer)  # fmt: skip
    except (RuntimeError, ValueError) as e:  # another run holds the folder; another run's folder
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    df = collect_outcomes(work_dir)
    df = df[df["prompt_id"].isin(prompts["prompt_id"]) & df["model"].isin(names)]
    write_table(df, out)
    typer.echo(f"run {report.run_id}: {report.cells_run} calls now, {report.cells_done_before} resumed, "
               f"{len(df)} rows -> {out}")  # fmt: skip
    _print_accuracy(df)
    rates = error_rate_by_model(df)
    for m, r in rates.items():
        typer.echo(f"error rate {m}: {r:.1%}")
    if rates and all(r == 1.0 for r in rates.values()):  # nothing answered: a run, not a result
        typer.echo("error: every call failed (the table's error column says why); run again to retry them",
                   err=True)  # fmt: skip
        raise typer.Exit(1)


@app.command("rescore")
def rescore_cmd(
    folders: list[Path] = typer.Argument(
        ..., help="run folders: a `bench run`'s --work-dir, or the nightly's run_dir/bench/<day>"
    ),
    prompt_set: str | None = typer.Option(
        None, "--prompt-set", help="the prompts they answered (file or name); default: the prompt_set asset's"
    ),
) -> None:
    """Score stored answers again with today's scorers, calling no model (a judge's ratings stay). The
    outcome table that `bench run --out OUT` wrote from a folder OUT.parts is rewritten from it too."""
    from pipelines.bench.outcomes import read_table
    from pipelines.bench.prompts import PromptSetError, load_prompt_set, prompt_set_path
    from pipelines.bench.runner import rescore
    from pipelines.settings import Settings

    settings = Settings()
    try:
        if prompt_set is None:
            path = prompt_set_path(settings)
            if not path.exists():  # pandas' FileNotFoundError says the path alone
                raise FileNotFoundError(f"no prompt set at {path}: materialize the prompt_set asset (make "
                                        "demo does) or name the prompts with --prompt-set")  # fmt: skip
            prompts = read_table(path)
        else:
            prompts = load_prompt_set(prompt_set, settings)
    except (PromptSetError, FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    failed = False
    for folder in folders:
        try:
            n = rescore(prompts, folder)
            table = _refresh_table(folder)
        except (FileNotFoundError, RuntimeError, ValueError) as e:  # no such folder; a run writing it; a
            typer.echo(f"error: {e}", err=True)  # damaged part
            failed = True
            continue
        rewritten = f"; {table} rewritten from it" if table else ""
        typer.echo(f"{folder}: {n['changed']} scores changed, {n['unchanged']} unchanged; left as they were: "
                   f"{n['needs_judge']} for a judge, {n['no_answer']} without an answer, {n['no_prompt']} "
                   f"whose prompt is not in the prompt set{rewritten}")  # fmt: skip
        if n["no_prompt"] and n["no_prompt"] == sum(n.values()):
            typer.echo(f"error: {folder}: none of its rows answers a prompt of the prompt set (another set's "
                       "run? name its prompts with --prompt-set)", err=True)  # fmt: skip
            failed = True
    if failed:
        raise typer.Exit(2)


def _refresh_table(folder: Path) -> Path | None:
    """The outcome table `bench run --out OUT` wrote from the folder OUT.parts (its default --work-dir),
    rewritten with the folder's newest rows of the cells it holds; None where there is no such table."""
    from pipelines.bench.outcomes import read_table, write_table
    from pipelines.bench.runner import collect_outcomes

    table = folder.with_name(folder.name.removesuffix(".parts"))
    if table == folder or table.suffix not in (".parquet", ".csv") or not table.is_file():
        return None

    def cells(df):
        import pandas as pd

        return pd.MultiIndex.from_frame(df[["prompt_id", "model"]].astype(str))

    latest = collect_outcomes(folder)
    write_table(latest[cells(latest).isin(cells(read_table(table)))].reset_index(drop=True), table)
    return table


@app.command("import-routerbench")
def import_routerbench(
    data_dir: Path = typer.Argument(..., help="folder with prompts_<split>.csv and outcomes_<split>.csv"),
    out: Path = typer.Option(None, "--out", help="outcome table (.parquet/.csv); default run_dir/bench/"),
    split: str = typer.Option("train", "--split"),
) -> None:
    """Import RouterBench outcomes (11 public models) into the outcome-table shape."""
    from pipelines.bench.outcomes import routerbench_outcome_table, write_table
    from pipelines.settings import Settings

    out = out or Settings().run_dir / "bench" / f"routerbench_{split}.parquet"
    if out.resolve() in {(data_dir / f"{kind}_{split}.csv").resolve() for kind in ("prompts", "outcomes")}:
        typer.echo(f"error: --out {out} is one of the files it imports: name another", err=True)
        raise typer.Exit(2)
    try:
        df = routerbench_outcome_table(data_dir, split)
        if df.empty:  # wrote a table of 0 rows, exit 0
            raise ValueError(f"{data_dir}: no scored outcome row in outcomes_{split}.csv")
        write_table(df, out)
    except (OSError, ValueError) as e:  # a missing file; an --out that is no table, or cannot be written
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyError as e:
        typer.echo(f"error: {data_dir}: the RouterBench files lack a column ({e.args[0]})", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"{len(df)} rows, {df['model'].nunique()} models, {df['prompt_id'].nunique()} prompts -> {out}"
        f" ({df.attrs['unscored_rows']} rows without a score left out)"
    )
    _print_accuracy(df)


@app.command("lm-eval")
def lm_eval_cmd(
    model: str = typer.Option("smollm2-135m", "--model"),
    task: str = typer.Option("sm_arc_mini", "--task"),
    limit: int = typer.Option(0, "--limit", min=0),
    out: Path = typer.Option(..., "--out", help="outcome table, .parquet or .csv"),
) -> None:
    """Run a committed lm-eval-harness task against a local server; store per-sample outcome rows."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from pipelines.bench.lm_eval_run import run_lm_eval, task_yaml
    from pipelines.bench.outcomes import write_table
    from pipelines.llm import servers
    from pipelines.llm.catalog import load_catalog
    from pipelines.settings import Settings

    if out.suffix not in (".parquet", ".csv"):
        raise typer.BadParameter(f"{out}: expected a .parquet or .csv file", param_hint="--out")
    _check_out(out)  # before the evaluation, whose results a bad --out threw away
    settings = Settings()
    try:
        entry = load_catalog(settings).get(model)
    except KeyError as e:
        typer.echo(f"error: {e.args[0]}", err=True)
        raise typer.Exit(2) from None
    if entry.local is None:
        typer.echo(f"error: {model} is not a local model: lm-eval runs against a local server", err=True)
        raise typer.Exit(2)
    try:
        task_yaml(task)  # before a server is started for it
    except FileNotFoundError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    servers.start(entry, settings)
    try:
        df = run_lm_eval(entry, task, limit=limit or None)
    except (KeyError, ValueError) as e:  # lm-eval's word for an unknown task
        typer.echo(f"error: task {task!r}: {e}", err=True)
        raise typer.Exit(2) from None
    write_table(df, out)
    typer.echo(f"{task} x {model}: accuracy {df['score'].mean():.3f} on {len(df)} samples -> {out}")
