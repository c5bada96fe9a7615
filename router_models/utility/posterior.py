"""Posterior summaries, utility, Thompson draws and the NetCDF file (with its data+config hash).

U(t, m) = quality - lambda_cost * cost_usd - lambda_latency * latency_s, per posterior draw. A model with no
latency observation has no latency term: it contributes 0 and its latency is unknown (NaN), and the summary
says so per row (`latency_in_utility`). Its latency drawn from the prior alone, centred on the models that
were measured (local CPU models, seconds), charged RouterBench's API models 45-59 s each.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.files import atomic_path

HASH_ATTR = "stratmaster_fit_hash"


class PosteriorHashMismatch(ValueError):
    """The NetCDF file was fitted on other data or another configuration than the caller expects."""


def _draws(idata, name: str) -> np.ndarray | None:
    if name not in idata.posterior:
        return None
    da = idata.posterior[name].transpose("chain", "draw", "task", "model")
    return da.values.reshape(-1, da.sizes["task"], da.sizes["model"])


class UtilityPosterior:
    """Draws of quality, expected cost and expected latency per (task, model), stacked over chains."""

    def __init__(self, idata, lambda_cost: float, lambda_latency: float):
        self.idata = idata
        self.tasks = [str(t) for t in idata.posterior["task"].values]
        self.models = [str(m) for m in idata.posterior["model"].values]
        quality = _draws(idata, "quality")
        if quality is None:
            raise ValueError("the posterior has no 'quality' variable: not a utility-model fit")
        self.quality: np.ndarray = quality
        self.cost = _draws(idata, "cost_expected")
        self.latency = _draws(idata, "latency_expected")
        self.latency_observed = np.zeros(len(self.models), dtype=bool)
        if self.latency is not None:
            consts = getattr(idata, "constant_data", None)
            if consts is not None and "latency_m" in consts:
                self.latency_observed[np.unique(consts["latency_m"].values.astype(int))] = True
            else:  # a fit saved without its constant data: every model, as before
                self.latency_observed[:] = True
            self.latency = np.where(self.latency_observed[None, None, :], self.latency, 0.0)
        self.lambda_cost, self.lambda_latency = lambda_cost, lambda_latency

    @classmethod
    def from_settings(cls, idata, settings=None) -> UtilityPosterior:
        from pipelines.settings import Settings

        settings = settings or Settings()
        return cls(idata, settings.lambda_cost, settings.lambda_latency)

    @property
    def latency_in_utility(self) -> bool:
        """Whether any model's latency enters utility."""
        return bool(self.latency_observed.any())

    def utility(self) -> np.ndarray:
        u = self.quality.copy()
        if self.cost is not None:
            u -= self.lambda_cost * self.cost
        if self.latency is not None:
            u -= self.lambda_latency * self.latency
        return u

    def summary(self) -> pd.DataFrame:
        """Posterior mean, sd and 90% interval per task x model of quality, cost, latency and utility."""
        t_idx, m_idx = np.meshgrid(np.arange(len(self.tasks)), np.arange(len(self.models)), indexing="ij")
        out = pd.DataFrame({"task": np.array(self.tasks)[t_idx.ravel()],
                            "model": np.array(self.models)[m_idx.ravel()]})  # fmt: skip
        series = {"quality": self.quality, "cost_usd": self.cost, "latency_s": self.latency,
                  "utility": self.utility()}  # fmt: skip
        for name, arr in series.items():
            if arr is None:
                for stat in ("mean", "sd", "p05", "p95"):
                    out[f"{name}_{stat}"] = np.nan
                continue
            flat = arr.reshape(arr.shape[0], -1)
            out[f"{name}_mean"] = flat.mean(0)
            out[f"{name}_sd"] = flat.std(0)
            out[f"{name}_p05"], out[f"{name}_p95"] = np.quantile(flat, [0.05, 0.95], axis=0)
        unmeasured = ~self.latency_observed[m_idx.ravel()]
        out.loc[unmeasured, [f"latency_s_{stat}" for stat in ("mean", "sd", "p05", "p95")]] = np.nan
        out["latency_in_utility"] = ~unmeasured
        return out

    def prior_table(self) -> pd.DataFrame:
        """Per task x model quality (mean, sd): the router's prior."""
        return self.summary()[["task", "model", "quality_mean", "quality_sd"]]

    def thompson_draw(self, task: str, rng: np.random.Generator | int | None = None) -> pd.DataFrame:
        """One joint posterior draw for `task`: model, quality, cost_usd, latency_s, utility.

        For a task the fit has not seen, the draw is the model's quality averaged over the known tasks
        (its main effect), which is the best the fit knows about an unseen task."""
        rng = np.random.default_rng(rng)
        s = int(rng.integers(self.quality.shape[0]))

        def pick(arr: np.ndarray | None) -> np.ndarray:
            if arr is None:
                return np.zeros(len(self.models))
            return arr[s, self.tasks.index(task)] if task in self.tasks else arr[s].mean(axis=0)

        q, c, lat = pick(self.quality), pick(self.cost), pick(self.latency)
        u = q - self.lambda_cost * c - self.lambda_latency * lat
        lat_col = np.where(self.latency_observed, lat, np.nan)
        return pd.DataFrame(
            {"model": self.models, "quality": q, "cost_usd": c, "latency_s": lat_col, "utility": u}
        )


def save_posterior(fit, path: str | Path, extra_attrs: dict[str, str] | None = None) -> Path:
    """Write the fit's InferenceData as NetCDF; its hash of data+config travels in the attributes (with
    `extra_attrs`: what else a reader of the saved fit needs, such as its calibration table)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    attrs = {
        HASH_ATTR: fit.fit_hash,
        "stratmaster_data_hash": fit.data.data_hash,
        "stratmaster_config": json.dumps(fit.config.__dict__, sort_keys=True, default=str),
        "stratmaster_diagnostics": json.dumps(fit.diagnostics, default=float),
        "stratmaster_prior_check": json.dumps(fit.prior_check, default=float),
        **(extra_attrs or {}),
    }
    for group in fit.idata.groups():
        fit.idata[group].attrs.update(attrs)
    with atomic_path(path) as tmp:
        fit.idata.to_netcdf(str(tmp))
    return path


def load_posterior(path: str | Path, expected_hash: str | None = None):
    """Read a NetCDF posterior; with `expected_hash`, refuse one fitted on other data or config."""
    import arviz as az

    idata = az.from_netcdf(str(path))
    found = idata.posterior.attrs.get(HASH_ATTR)
    if expected_hash is not None and found != expected_hash:
        raise PosteriorHashMismatch(
            f"{path}: posterior was fitted with data+config hash {str(found)[:12]}..., expected "
            f"{expected_hash[:12]}...; refit it (the outcome data or the fit configuration changed)"
        )
    return idata
