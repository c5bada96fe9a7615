"""`stratmaster utility ...`: fit the Bayesian utility model from RouterBench-layout files."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from pipelines.files import publish_mode

app = typer.Typer(help="The Bayesian utility model per task x model.", no_args_is_help=True)


@app.callback()
def main() -> None:
    """The Bayesian utility model per task x model."""


@app.command()
def fit(
    outcomes: Annotated[Path, typer.Option("--outcomes", exists=True, help="outcomes CSV/parquet")],
    out: Annotated[Path, typer.Option("--out", help="output folder (NetCDF, summary.json, plots)")],
    prompts: Annotated[Path | None, typer.Option("--prompts", exists=True, help="prompts CSV")] = None,
    priors: Annotated[
        Path | None, typer.Option("--priors", exists=True, help="leaderboard priors CSV")
    ] = None,
    # None: the asset's (FitConfig); imported in the command, as PyMC's stack is heavy for `--help`
    draws: Annotated[int | None, typer.Option(min=1, help="draws per chain (default: the asset's)")] = None,
    tune: Annotated[int | None, typer.Option(min=0, help="tuning steps (default: the asset's)")] = None,
    # r_hat compares chains: with one it is undefined and the fit always fails its checks, after the whole run
    chains: Annotated[int, typer.Option(min=2, help="chains (r_hat needs at least 2)")] = 4,
    sampler: Annotated[str, typer.Option(help="nutpie | pymc")] = "nutpie",
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="random seed")] = 20261130,
    centered: Annotated[
        bool | None,
        typer.Option("--centered/--non-centered", help="the task and cell effects' form (default: by data)"),
    ] = None,
) -> None:
    """Fit, then write utility_posterior.nc, summary.json, quality_forest.png and calibration.png."""
    from router_models.utility.data import outcome_table_from_files
    from router_models.utility.model import FitConfig
    from router_models.utility.pipeline import fit_posterior
    from router_models.utility.priors import leaderboard_priors

    if sampler not in ("nutpie", "pymc"):
        raise typer.BadParameter("nutpie or pymc", param_hint="--sampler")
    if out.exists() and not out.is_dir():
        typer.echo(f"error: --out {out} is a file, not a folder", err=True)
        raise typer.Exit(2)
    # the fit goes to a folder beside --out, made now: an --out that cannot be written (its parent a file, no
    # permission) is found before the NUTS fit, not after it
    out = out.resolve()  # `--out .` has no name to put a sibling's after
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    except OSError as e:
        typer.echo(f"error: --out {out}: cannot write beside it ({e})", err=True)
        raise typer.Exit(2) from None
    try:
        try:  # a malformed file is one line, not a traceback
            table = outcome_table_from_files(prompts, outcomes)
            if table.empty:
                raise typer.BadParameter("no scored outcome rows", param_hint="--outcomes")
            if unscored := table.attrs.get("unscored_rows"):
                gone = table.attrs.get("unscored_models") or []
                left = f"; not fitted, no scored row: {', '.join(gone)}" if gone else ""
                typer.echo(
                    f"warning: {unscored} rows of {outcomes} have no score and are left out{left}", err=True
                )
            prior_table = leaderboard_priors(priors)  # the package snapshot, overlaid by --priors
            sizes = {k: v for k, v in (("draws", draws), ("tune", tune)) if v is not None}
            sizes["progress"] = sys.stderr.isatty()  # minutes of sampling said nothing
            config = FitConfig(chains=chains, seed=seed, sampler=sampler, centered=centered, **sizes)  # type: ignore[arg-type]
            art = fit_posterior(table, prior_table, staging, config)
        except ValidationError:  # a bad SM_ setting: the console script says it in one line per field
            raise
        except (ValueError, TypeError, KeyError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        failed = art.failed_checks
        # a fit that failed its checks must not replace a good one at --out: it goes to <out>.failed to be
        # looked at (the Dagster asset does not register such a fit either)
        dest = out.with_name(f"{out.name}.failed") if failed else out
        try:
            _move_files(staging, dest)
        except OSError as e:  # a file of the fit before could not be replaced: it is kept whole
            kept = staging.with_name(f"{out.name}.unsaved")
            shutil.rmtree(kept, ignore_errors=True)
            os.replace(staging, kept)
            publish_mode(kept)
            why = f"{e.strerror or e}: {e.filename or dest}"
            typer.echo(f"error: the fit could not be written to {dest} ({why}); {dest} is as it was, and the "
                       f"new fit is in {kept}", err=True)  # fmt: skip
            raise typer.Exit(1) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # empty once its files moved; a fit that raised left some
    d = art.fit.diagnostics
    n_tasks, n_models = table["task"].nunique(), table["model"].nunique()
    typer.echo(f"{len(table)} outcome rows, {n_tasks} tasks, {n_models} models")
    typer.echo(f"r_hat max {d['r_hat_max']:.4f}  ESS bulk min {d['ess_bulk_min']:.0f}  "
               f"divergences {d['divergences']}  fit {d['fit_seconds']:.1f} s")  # fmt: skip
    typer.echo(f"calibrated cells: {art.calibration['calibrated'].mean():.0%} of {len(art.calibration)}")
    for note in art.notes:
        typer.echo(f"note: {note}")
    for name, p in art.paths.items():
        typer.echo(f"{name}: {dest / p.name}")
    if failed:
        typer.echo(f"warning: the fit failed its checks ({', '.join(failed)}): not a fit to use; written to "
                   f"{dest}/, {out} left as it was; {_advice(failed)}", err=True)  # fmt: skip
        raise typer.Exit(1)  # a script's `fit && use` stops here


def _advice(failed: list[str]) -> str:
    """What to try for the checks that failed."""
    tips = []
    if {"r_hat", "ess_bulk", "divergences"} & set(failed):
        tips.append("run more draws or tuning steps")
    if "prior_predictive" in failed:
        tips.append("check the leaderboard priors against the outcomes (the model names, the Elo column)")
    if "calibration" in failed:
        tips.append("look at calibration.png: cells whose held-out prompts the fit does not predict")
    return "; ".join(tips)


def _move_files(src: Path, dest: Path) -> None:
    """Move the fit's files from `src` into the folder `dest` (a sibling: renames), each replacing its
    namesake; other files in `dest` stay (--out may be a folder that holds more than a fit). All or none:
    where one cannot be moved (an OSError), those moved go back to `src` and the files they replaced back
    to `dest` (a fit's files, mixed with another's, had disagreed with each other)."""
    dest.mkdir(parents=True, exist_ok=True)
    replaced = Path(tempfile.mkdtemp(dir=dest, prefix=".replaced."))  # hidden; renames, on dest's disk
    moved: list[str] = []
    try:
        for f in sorted(src.iterdir()):
            if (dest / f.name).exists():
                os.replace(dest / f.name, replaced / f.name)
            os.replace(f, dest / f.name)
            moved.append(f.name)
    except OSError:
        for name in moved:
            os.replace(dest / name, src / name)
        for f in replaced.iterdir():
            os.replace(f, dest / f.name)
        raise
    finally:
        shutil.rmtree(replaced, ignore_errors=True)
