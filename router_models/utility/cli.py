"""`stratmaster utility ...`: fit the Bayesian utility model from RouterBench-layout files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
    draws: Annotated[int, typer.Option(min=1, help="posterior draws per chain")] = 2000,
    tune: Annotated[int, typer.Option(min=0, help="tuning steps per chain")] = 2000,
    chains: Annotated[int, typer.Option(min=1, help="chains")] = 4,
    sampler: Annotated[str, typer.Option(help="nutpie | pymc")] = "nutpie",
    seed: Annotated[int, typer.Option(help="random seed")] = 20261130,
) -> None:
    """Fit, then write utility_posterior.nc, summary.json, quality_forest.png and calibration.png."""
    from router_models.utility.data import outcome_table_from_files
    from router_models.utility.model import FitConfig
    from router_models.utility.pipeline import fit_posterior
    from router_models.utility.priors import leaderboard_priors

    if sampler not in ("nutpie", "pymc"):
        raise typer.BadParameter("nutpie or pymc", param_hint="--sampler")
    if out.exists() and not out.is_dir():  # found only after the whole NUTS fit, before
        typer.echo(f"error: --out {out} is a file, not a folder", err=True)
        raise typer.Exit(2)
    try:  # a malformed file is one line, not a traceback
        table = outcome_table_from_files(prompts, outcomes)
        if table.empty:
            raise typer.BadParameter("no scored outcome rows", param_hint="--outcomes")
        prior_table = leaderboard_priors(priors)  # the package snapshot, overlaid by --priors
        config = FitConfig(draws=draws, tune=tune, chains=chains, seed=seed, sampler=sampler)  # type: ignore[arg-type]
        art = fit_posterior(table, prior_table, out, config)
    except (ValueError, TypeError, KeyError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    d = art.fit.diagnostics
    n_tasks, n_models = table["task"].nunique(), table["model"].nunique()
    typer.echo(f"{len(table)} outcome rows, {n_tasks} tasks, {n_models} models")
    typer.echo(f"r_hat max {d['r_hat_max']:.4f}  ESS bulk min {d['ess_bulk_min']:.0f}  "
               f"divergences {d['divergences']}  fit {d['fit_seconds']:.1f} s")  # fmt: skip
    typer.echo(f"calibrated cells: {art.calibration['calibrated'].mean():.0%} of {len(art.calibration)}")
    for note in art.notes:
        typer.echo(f"note: {note}")
    for name, p in art.paths.items():
        typer.echo(f"{name}: {p}")
    failed = art.failed_checks
    if failed:  # written, so it can be looked at; the Dagster asset does not register such a fit
        typer.echo(f"warning: the fit failed its checks ({', '.join(failed)}): not a fit to use; "
                   "run more draws or tuning steps", err=True)  # fmt: skip
        raise typer.Exit(1)  # a script's `fit && use` stops here
