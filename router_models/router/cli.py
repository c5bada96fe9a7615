"""`stratmaster router train | predict | evaluate` (DESIGN.md "Router contract").

Heavy libraries load inside the commands so that `stratmaster --help` stays fast.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from router_models.router import ROUTER_EMBEDDER

if TYPE_CHECKING:
    import pandas as pd

app = typer.Typer(help="Train, predict with and evaluate routers.", no_args_is_help=True)

PromptsOpt = Annotated[Path, typer.Option("--prompts", help="CSV/parquet with prompt_id, prompt[, task]")]
OutcomesOpt = Annotated[
    Path, typer.Option("--outcomes", help="outcome table: prompt_id, model, score, cost_usd")
]
RouterOpt = Annotated[Path, typer.Option("--router", help="router artifact directory (from `train`)")]


def _read(path: Path) -> pd.DataFrame:
    from pipelines.bench.outcomes import read_table

    if not path.exists():
        _fail(f"{path} does not exist")
    try:
        df = read_table(path)
    except ValueError as e:  # not .csv/.parquet, an empty or malformed file (pandas' errors are ValueErrors)
        _fail(f"{path}: {e}")
    if "prompt_id" in df:
        df["prompt_id"] = df["prompt_id"].astype(str)
    return df


def _read_prompts(
    path: Path, blank_ones: str = "routed on no signal but the panel's averages"
) -> pd.DataFrame:
    df = _read(path)
    for col in ("prompt_id", "prompt"):
        if col not in df:
            _fail(f"{path} needs a {col!r} column")
    from pipelines.bench.outcomes import check_unique_prompt_ids

    try:
        check_unique_prompt_ids(df, path)
    except ValueError as e:
        _fail(e)
    from router_models.router.train import blank_prompts

    blank = blank_prompts(df)
    if blank.any():  # said, not silent: train leaves them out, predict and evaluate route them on no signal
        ids = ", ".join(df.loc[blank, "prompt_id"].head(5))
        more = f" and {int(blank.sum()) - 5} more" if blank.sum() > 5 else ""
        typer.echo(
            f"warning: {int(blank.sum())} blank prompts in {path} (prompt_id {ids}{more}) are {blank_ones}",
            err=True,
        )
    return df


def finite_or_null(result: dict[str, Any]) -> dict[str, Any]:
    """The figures with NaN and infinity as None, for JSON, which has neither: a cost the router never
    reaches (it never matches the best model) is null, and so is the ratio to a best model that costs
    nothing (infinite: `Infinity` was printed, which is not JSON)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in result.items()}


def _models(names: list[str]) -> str:
    return f"{len(names)} model{'' if len(names) == 1 else 's'}"


def _fail(why: object) -> NoReturn:
    typer.echo(f"error: {why}", err=True)
    raise typer.Exit(2) from None


@app.command()
def train(
    prompts: PromptsOpt,
    outcomes: OutcomesOpt,
    out: Annotated[Path, typer.Option("--out", help="directory to write the router artifact to")],
    predictor: Annotated[str, typer.Option("--predictor", help="predictor name (registry)")] = "stack",
    embedder: Annotated[str, typer.Option("--embedder", help="static | minilm")] = ROUTER_EMBEDDER,
    budget: Annotated[
        float,
        typer.Option(
            "--budget",
            help="default policy: spend at most this fraction of the strongest model's cost",
            min=0.0,
            max=1.0,
        ),
    ] = 0.5,
    prior_table: Annotated[
        Path | None,
        typer.Option(
            "--prior-table", help="task x model prior CSV (task, model, quality_mean, quality_sd) for `bayes`"
        ),
    ] = None,
    prior_is_posterior: Annotated[
        bool,
        typer.Option(
            "--prior-is-posterior",
            help="the prior table already saw these outcomes (the utility registry rows): no second update",
        ),
    ] = False,
) -> None:
    """Fit a router on an outcome table; the candidate models are those the table holds."""
    from pipelines.files import check_writable_beside
    from pipelines.settings import Settings
    from router_models.router.artifact import check_replaceable, save_router
    from router_models.router.predictors.base import PREDICTORS, get_predictor
    from router_models.router.train import train_router

    get_predictor("global_mean")
    if predictor not in PREDICTORS:
        raise typer.BadParameter(f"unknown predictor {predictor!r}; choose one of {sorted(PREDICTORS)}")
    params: dict = {}
    if prior_table is not None:
        if predictor not in ("bayes", "stack"):
            raise typer.BadParameter("--prior-table is used by the `bayes` predictor (alone or in `stack`)")
        table = _read(prior_table)
        prior = {"prior_table": table, "update_prior": not prior_is_posterior}
        params = prior if predictor == "bayes" else {"member_options": {"bayes": prior}}
    p, o = _read_prompts(prompts, "left out of training"), _read(outcomes)
    if prior_table is not None:
        _check_prior_covers(table, o, prior_table)
    if "task" not in p and "task" not in o:  # said: on a RouterBench slice such a router did markedly worse
        said = "has a task column: the router learns no task classifier and takes every prompt as one task"
        typer.echo(f"warning: neither {prompts} nor {outcomes} {said}", err=True)
    for table, path in ((p, prompts), (o, outcomes)):  # the task the router learns: the prompts', else these
        if "task" in table:
            blank = table["task"].isna() | table["task"].astype(str).str.strip().eq("")
            if blank.any():  # were learned as a task class of their own, unsaid
                typer.echo(f"warning: {int(blank.sum())} rows of {path} have no task: the router learns them "
                           "as a task of their own", err=True)  # fmt: skip
            break
    cache_dir = Settings().run_dir / "cache" / "embeddings"  # a bad SM_ setting: main() says it in one line
    try:
        check_writable_beside(out)  # before the training, not after it
    except OSError as e:
        _fail(e)
    try:
        check_replaceable(out)
        router = train_router(
            p,
            o,
            predictor=predictor,
            embedder=embedder,
            budget_fraction=budget,
            predictor_params=params,
            cache_dir=cache_dir,
        )
        save_router(router, out)
    except ValueError as e:  # a table the router cannot learn from, an --out that is not a router's folder
        _fail(e)
    typer.echo(
        json.dumps(
            {
                "router": str(out),
                "predictor": predictor,
                "models": router.models,
                "n_prompts": router.info["n_prompts"],
                "policy": router.policy.describe(),
            }
        )
    )
    if unscored := sorted(set(o["model"].astype(str)) - set(router.models)):
        said = f"{outcomes} scores {_models(unscored)} on none of these prompts: not candidates"
        typer.echo(f"warning: {said}: {', '.join(unscored)}", err=True)
    left_out = ~o["prompt_id"].isin(set(p["prompt_id"]))
    if left_out.any():  # a subset of the prompts trains on a subset of the table: said, not silent
        typer.echo(f"warning: {int(left_out.sum())} outcome rows of {o.loc[left_out, 'prompt_id'].nunique()} "
                   f"prompt_ids not in {prompts} were left out", err=True)  # fmt: skip


def _check_prior_covers(table: pd.DataFrame, outcomes: pd.DataFrame, path: Path) -> None:
    """A prior table that names none of the outcome table's models was ignored unsaid; some missing: said."""
    named = set(table["model"].astype(str)) if "model" in table else set()
    models = set(outcomes["model"].astype(str)) if "model" in outcomes else set()

    def some(names: set[str]) -> str:
        return ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")

    if models and not models & named:
        _fail(f"--prior-table {path} names none of the outcome table's models ({some(models)})")
    # rows of one pair were averaged, unsaid
    if {"task", "model"} <= set(table.columns) and (twice := table.duplicated(["task", "model"])).any():
        pairs = sorted(set(zip(table.loc[twice, "task"], table.loc[twice, "model"], strict=True)))
        _fail(f"--prior-table {path}: {len(pairs)} (task, model) pairs have several rows: {pairs[:3]}")
    if missing := models - named:
        typer.echo(f"warning: --prior-table {path} has no rows for {len(missing)} models ({some(missing)}): "
                   "their prior is the training outcomes'", err=True)  # fmt: skip


@app.command()
def predict(
    router: RouterOpt,
    prompts: PromptsOpt,
    out: Annotated[Path, typer.Option("--out", help="predictions CSV/parquet to write")],
) -> None:
    """Predicted score and cost for every prompt x model of the training panel."""
    from pipelines.bench.outcomes import write_table
    from router_models.router.artifact import load_router

    if out.resolve() == prompts.resolve():  # the prompts were replaced by the predictions, exit 0
        _fail(f"--out {out} is the --prompts file: name another")
    df = _read_prompts(prompts)
    try:
        r = load_router(router)
        pred = r.predict_frame(df)
        write_table(pred[["prompt_id", "model", "predicted_score", "predicted_cost_usd"]], out)
    except (ValueError, OSError) as e:  # not a router's folder; an --out not .csv/.parquet, or not writable
        _fail(e)
    if df.empty:
        typer.echo(f"warning: {prompts} holds no prompt: {out} has the header only", err=True)
    typer.echo(
        json.dumps({"predictions": str(out), "rows": len(pred), "prompts": len(df), "models": r.models})
    )


@app.command()
def evaluate(
    router: RouterOpt,
    prompts: PromptsOpt,
    outcomes: OutcomesOpt,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="the Pareto plot's path [default: $SM_RUN_DIR/router_eval/<router>.png]"),
    ] = None,
) -> None:
    """AIQ, gap recovered and cost to match the best single model, as JSON (RouterBench definitions), and
    the Pareto plot (router curve, single models, oracle)."""
    from pipelines.settings import Settings
    from router_models.router import metrics
    from router_models.router.artifact import load_router
    from router_models.router.metrics import PLOT_SUFFIXES, check_outcomes, pareto_plot, summary

    if plot is not None and plot.suffix.lower() not in PLOT_SUFFIXES:
        raise typer.BadParameter(f"--plot {plot}: expected one of {', '.join(PLOT_SUFFIXES)}")
    p, o = _read_prompts(prompts), _read(outcomes)
    orphans = sorted(set(o.get("prompt_id", ())) - set(p["prompt_id"]))
    if orphans:  # scoring the rest would judge the router on other prompts than the table's
        _fail(f"{len(orphans)} prompt_ids of {outcomes} are not in {prompts}: {orphans[:3]}")
    try:
        r = load_router(router)
    except ValueError as e:
        _fail(e)
    try:
        o = check_outcomes(o)
    except ValueError as e:
        _fail(f"{outcomes}: {e}")
    shared = sorted(set(o["model"]) & set(r.models))
    if len(shared) < 2:  # the router would choose among fewer than two of the table's models
        _fail(f"{outcomes} shares {len(shared)} models with the router, the metrics need 2 or more: "
              f"its models are {sorted(set(o['model']))}, the router's {r.models}")  # fmt: skip
    unknown, absent = sorted(set(o["model"]) - set(r.models)), sorted(set(r.models) - set(o["model"]))
    for names, said in (
        (unknown, "in the baselines and the oracle the router never picks"),
        (absent, "of the router's not in the outcome table: judged without them"),
    ):
        if names:
            typer.echo(f"warning: {_models(names)} {said}: {', '.join(names)}", err=True)
    unscored = o.loc[o["score"].isna(), "model"].value_counts()
    if len(unscored):  # the reference metrics (../shared/tools) count them as 0, and so do these
        per_model = ", ".join(f"{m} {n}" for m, n in unscored.head(5).items())
        typer.echo(f"warning: {int(unscored.sum())} outcome rows of {outcomes} have no score and count as 0 "
                   f"({per_model}{', ...' if len(unscored) > 5 else ''})", err=True)  # fmt: skip
    pred = r.predict_frame(p[p["prompt_id"].isin(set(o["prompt_id"]))])
    result: dict[str, Any] = dict(summary(pred, o))
    result.update({"predictor": r.predictor.name, "models_not_in_router": unknown})
    result.update({"router_models_not_in_outcomes": absent, "unscored_rows": int(unscored.sum())})
    path = plot or Settings().run_dir / "router_eval" / f"{router.resolve().name}.png"
    try:
        result["plot"] = str(pareto_plot(pred, o, path, title=f"router ({r.predictor.name})"))
    except OSError as e:  # the figures stand without it
        result["plot"], result["plot_error"] = None, f"{type(e).__name__}: {e}"
    result = finite_or_null(result)
    typer.echo(json.dumps(result, indent=2, default=float, allow_nan=False))
    if result["aiq"] is None:  # the figures printed are all there is
        cost = min(c for c, _ in metrics.single_models(o).values())
        _fail(
            f"AIQ and gap recovered are undefined for {outcomes}: they integrate over the range of the "
            f"single models' mean costs, and all {o['model'].nunique()} cost ${cost:.6g} a prompt"
        )
    if result["plot"] is None:
        said = f"the Pareto plot was not written to {path}: {result['plot_error']}"
        if plot is not None:  # asked for: a failure; the default place: a warning
            _fail(said)
        typer.echo(f"warning: {said}", err=True)
