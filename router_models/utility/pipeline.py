"""The fit end to end, as the few plain calls the CLI and the Dagster assets make.

leaderboard_priors(shared_csv, models)           -> priors table         (asset `leaderboard_priors`)
evidence_outcomes(settings)                      -> outcome tables      (asset `utility_posterior`)
fit_posterior(outcomes, priors, out_dir, ...)    -> PosteriorArtifacts   (asset `utility_posterior`)
register_posterior(artifacts, url)               -> fit_id               (asset `model_registry`)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipelines.files import write_atomic
from router_models.utility.data import CellData, cell_data
from router_models.utility.model import FitConfig, UtilityFit, fit_hash, fit_utility
from router_models.utility.plots import calibration_plot, calibration_table, forest_plot
from router_models.utility.posterior import UtilityPosterior, load_posterior, save_posterior
from router_models.utility.priors import alpha_priors
from router_models.utility.registry import code_version, current_fit_id, list_fits, registry_engine, write_fit

log = logging.getLogger(__name__)


def evidence_outcomes(settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What the `utility_posterior` asset fits on, and the local part of it: RouterBench's outcomes and the
    micro-bench's answers of the last SM_BENCH_EVIDENCE_DAYS days (the utility notebook finds the fit's data
    by the same call)."""
    from pipelines.bench.nightly import recent_outcomes
    from pipelines.bench.outcomes import routerbench_outcome_table

    outcomes = routerbench_outcome_table(settings.shared_data_dir / "routerbench")
    local = recent_outcomes(settings, settings.bench_evidence_days)
    return (pd.concat([outcomes, local], ignore_index=True) if len(local) else outcomes), local


SUMMARY_ROW_KEYS = [
    "task",
    "model",
    "quality_mean",
    "quality_p05",
    "quality_p95",
    "cost_usd_mean",
    "utility_mean",
]
DIAGNOSTIC_KEYS = ["r_hat_max", "ess_bulk_min", "divergences", "fit_seconds"]
NETCDF_NAME = "utility_posterior.nc"


@dataclass
class PosteriorArtifacts:
    fit: UtilityFit
    summary: pd.DataFrame  # UtilityPosterior.summary() plus n_obs and observed_rate
    calibration: pd.DataFrame
    paths: dict[str, Path] = field(default_factory=dict)  # netcdf, summary_json, forest_png, calibration_png
    notes: list[str] = field(default_factory=list)
    lambdas: tuple[float, float] = (0.0, 0.0)  # (cost, latency) the summary's utility was computed with

    @property
    def registry_hash(self) -> str:
        """What the registry rows follow from: the fit and the lambdas of their utility."""
        return hashlib.sha256(
            f"{self.fit.fit_hash}:{self.lambdas[0]!r}:{self.lambdas[1]!r}".encode()
        ).hexdigest()

    @property
    def checks(self) -> dict[str, bool]:
        """The asset checks' verdicts: r_hat <= 1.01, ESS_bulk >= 400, no divergences, calibration, and the
        prior predictive check (at least 90% of the 0/1 cells' observed rates inside the prior's 1-99%
        range: a prior that contradicts the data, such as another leaderboard's figures, fails it)."""
        calibration = calibration_check(self.calibration)
        return {
            **convergence_checks(self.fit.diagnostics),
            "calibration": calibration,
            "prior_predictive": prior_predictive_passed(self.fit.prior_check),
        }

    @property
    def failed_checks(self) -> list[str]:
        return [name for name, ok in self.checks.items() if not ok]


def calibration_check(calibration: pd.DataFrame) -> bool:
    """90% intervals: with k cells, a calibrated share down to 0.9 - 3 binomial sd passes."""
    share = float(calibration["calibrated"].mean()) if len(calibration) else float("nan")
    return share >= 0.9 - 3 * math.sqrt(0.09 / max(len(calibration), 1))


def prior_predictive_passed(report: dict) -> bool:
    """At least 90% of the 0/1 cells inside the prior predictive's 1-99% range; no such cells: passed (the
    graded cells have no prior predictive, the check has nothing to read)."""
    if not report.get("cells"):
        return True
    share = report.get("observed_inside_prior_98")
    return share is not None and share >= 0.9


def convergence_checks(d: dict) -> dict[str, bool]:
    """The sampler's verdicts on a fit's diagnostics (summary.json's too): r_hat <= 1.01, ESS_bulk >= 400,
    no divergences."""
    return {
        "r_hat": d["r_hat_max"] is not None and d["r_hat_max"] <= 1.01,
        "ess_bulk": d["ess_bulk_min"] is not None and d["ess_bulk_min"] >= 400,
        "divergences": d["divergences"] == 0,
    }


def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v.item() if hasattr(v, "item") else v


def summary_json(summary: pd.DataFrame, diagnostics: dict, checks: dict[str, bool] | None = None) -> dict:
    """The `summary.json` document: {"rows": [...], "diagnostics": {...}} with exactly the contract's keys,
    and the fit's check verdicts under "checks" (a failed fit's summary says it failed)."""
    rows = [{k: _json_value(r[k]) for k in SUMMARY_ROW_KEYS} for r in summary.to_dict("records")]
    doc = {"rows": rows, "diagnostics": {k: _json_value(diagnostics[k]) for k in DIAGNOSTIC_KEYS}}
    if checks is not None:
        doc["checks"] = {k: bool(v) for k, v in checks.items()}
    return doc


CALIBRATION_ATTR, CALIBRATION_HOW_ATTR = "stratmaster_calibration", "stratmaster_calibration_how"


def held_out(prompt_ids: pd.Series, share: float) -> pd.Series:
    """True for about `share` of the prompts, by a hash of the prompt id: the same prompts on every run, and
    a prompt's rows for every model on one side."""
    cut = int(share * 2**32)
    return prompt_ids.astype(str).map(lambda p: int(hashlib.sha256(p.encode()).hexdigest()[:8], 16) < cut)


def held_out_calibration(
    outcomes: pd.DataFrame, fit: UtilityFit, priors: pd.DataFrame | None
) -> tuple[pd.DataFrame, str]:
    """The calibration table of `holdout` of the prompts (the fit's configuration), held out of a second fit
    on the others (same tasks, models and configuration): each cell's held-out mean against the posterior
    predictive of a mean of that many new rows, so intervals too narrow for new prompts show. In sample
    (`fit` itself) where either side would have no scored row, the table has no prompt ids, or the second
    fit raised. Returns the table and how it was made (with the second fit's convergence and time)."""
    config, data = fit.config, fit.data
    scored = outcomes.dropna(subset=["score"]) if "score" in outcomes else outcomes.iloc[:0]
    held = (
        held_out(scored["prompt_id"], config.holdout)
        if config.holdout > 0 and "prompt_id" in scored
        else None
    )
    if held is None or held.all() or not held.any():
        return calibration_table(fit.idata, data, seed=config.seed), "in sample"
    try:
        train = cell_data(scored[~held], tasks=data.tasks, models=data.models)
        check = fit_utility(train, priors, config)
    except Exception as e:  # the fit itself is good: its calibration in sample, and why
        log.warning("the held-out calibration fit failed (%s): calibration in sample", type(e).__name__)
        why = f"in sample (the held-out fit failed: {type(e).__name__}: {str(e)[:200]})"
        return calibration_table(fit.idata, data, seed=config.seed), why
    test = cell_data(scored[held], tasks=data.tasks, models=data.models)
    d = check.diagnostics
    unconverged = [name for name, ok in convergence_checks(d).items() if not ok]
    how = (
        f"{held.mean():.0%} of the prompts held out of a second fit ({d['fit_seconds']:.0f} s, r_hat max "
        f"{d['r_hat_max']:.3f}, {d['divergences']} divergences"
        + (f"; it failed {', '.join(unconverged)}" if unconverged else "")
        + ")"
    )
    return calibration_table(check.idata, test, seed=config.seed), how


def reusable_fit(
    path: Path, data: CellData, priors: pd.DataFrame | None, config: FitConfig | None
) -> tuple[UtilityFit, pd.DataFrame, str] | None:
    """The fit saved at `path`, with its calibration table and how that was made, if the fit was made from
    exactly this data, priors and configuration, else None."""
    if not path.exists():
        return None
    config = config or FitConfig()
    ap = alpha_priors(priors, data.models, config.prior_sd, config.weak_prior_sd)
    expected = fit_hash(data.data_hash, config.hash(ap))
    try:
        idata = load_posterior(path, expected)
        diag = json.loads(idata.posterior.attrs["stratmaster_diagnostics"])
        prior_check = json.loads(idata.posterior.attrs["stratmaster_prior_check"])
        calib = pd.DataFrame(json.loads(idata.posterior.attrs[CALIBRATION_ATTR]))
        how = str(idata.posterior.attrs[CALIBRATION_HOW_ATTR])
    except (OSError, ValueError, KeyError):  # another fit, an unreadable or older file: fit again
        return None
    return UtilityFit(idata, data, ap, config, diag, {**prior_check, "reused": str(path)}), calib, how


def _drawn_from(record: Path) -> str | None:
    """The fit hash the plots beside `record` were drawn from (None: unknown)."""
    try:
        return str(json.loads(record.read_text())["fit_hash"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def fit_posterior(
    outcomes: pd.DataFrame,
    priors: pd.DataFrame | None,
    out_dir: str | Path,
    config: FitConfig | None = None,
    lambda_cost: float | None = None,
    lambda_latency: float | None = None,
    models: list[str] | None = None,
    reuse: bool = False,
) -> PosteriorArtifacts:
    """Fit on an outcome table; write the NetCDF, summary.json, forest and calibration plots to out_dir.

    Lambdas default to the settings' `lambda_cost` / `lambda_latency`; `models` adds catalog models with
    no outcomes yet (their quality is predicted from the prior and the pooling). With `reuse`, a NetCDF in
    out_dir fitted on the same data, priors and configuration (its hash says so) is read instead of
    sampling again; the notes say so."""
    if lambda_cost is None or lambda_latency is None:
        from pipelines.settings import Settings

        s = Settings()
        lambda_cost = s.lambda_cost if lambda_cost is None else lambda_cost
        lambda_latency = s.lambda_latency if lambda_latency is None else lambda_latency
    out_dir = Path(out_dir)
    config = config or FitConfig()
    data = cell_data(outcomes, models=models)
    reused = reusable_fit(out_dir / NETCDF_NAME, data, priors, config) if reuse else None
    if reused is not None:
        fit, calib, how = reused
    else:
        fit = fit_utility(data, priors, config)
        calib, how = held_out_calibration(outcomes, fit, priors)
    post = UtilityPosterior(fit.idata, lambda_cost, lambda_latency)
    summary = post.summary().merge(
        data.cells[["task", "model", "n"]].rename(columns={"n": "n_obs"}), on=["task", "model"], how="left"
    )
    notes = [f"calibration: {how}"]
    if post.cost is None:  # a misnamed cost column made utility quality alone, unsaid
        notes.append("no cost observations (no cost_usd values): cost contributes 0 to utility")
    if not post.latency_in_utility:
        notes.append("no latency observations: latency contributes 0 to utility")
    if post.latency_in_utility and not post.latency_observed.all():
        unmeasured = [m for m, seen in zip(post.models, post.latency_observed, strict=True) if not seen]
        notes.append(f"latency counts in utility for the measured models only, not {len(unmeasured)} others")
    if reused is not None:
        notes.append(f"reused the posterior fitted on the same data and configuration ({fit.fit_hash[:12]})")
    art = PosteriorArtifacts(fit, summary, calib, notes=notes, lambdas=(lambda_cost, lambda_latency))
    if reused is None:
        saved = {CALIBRATION_ATTR: calib.to_json(orient="records"), CALIBRATION_HOW_ATTR: how}
        art.paths["netcdf"] = save_posterior(fit, out_dir / NETCDF_NAME, saved)
    else:
        art.paths["netcdf"] = out_dir / NETCDF_NAME
    art.paths["summary_json"] = out_dir / "summary.json"
    doc = summary_json(summary, fit.diagnostics, art.checks)
    write_atomic(art.paths["summary_json"], json.dumps(doc, indent=1).encode())
    forest, calibration = out_dir / "quality_forest.png", out_dir / "calibration.png"
    # a reused fit's plots stand if they were drawn from it: a refit stopped after its plots (or after its
    # NetCDF, before its plots) left another fit's plots beside this one's NetCDF, shown from then on
    drawn = out_dir / "plots.json"
    if reused is None or not (forest.exists() and calibration.exists()) or _drawn_from(drawn) != fit.fit_hash:
        drawn.unlink(missing_ok=True)
        forest_plot(fit.idata, forest)
        calibration_plot(calib, calibration, how)
        write_atomic(drawn, json.dumps({"fit_hash": fit.fit_hash}).encode())
    art.paths["forest_png"], art.paths["calibration_png"] = forest, calibration
    return art


def register_posterior(art: PosteriorArtifacts, url: str | None = None, allow_failed: bool = False) -> str:
    """Write the fit's summary to the registry and make it current (one transaction); when the current rows
    follow from the same fit and lambdas (`registry_hash`), they stay current and their id is returned.
    A fit that failed its checks (`art.checks`) is refused with a ValueError unless `allow_failed`: the
    router and the service read the current rows as they are."""
    failed = art.failed_checks
    if failed and not allow_failed:
        raise ValueError(
            f"utility fit {art.fit.fit_hash[:12]} failed its checks ({', '.join(failed)}): not registered"
        )
    engine = registry_engine(url)
    try:
        current = current_fit_id(engine)
        if current is not None:
            fits = list_fits(engine)
            if (fits[fits.fit_id == current].fit_hash == art.registry_hash).any():
                return current
        return write_fit(engine, art.summary, art.fit.data_version, code_version(),
                         art.fit.diagnostics, art.registry_hash)  # fmt: skip
    finally:
        engine.dispose()
