"""Bayesian utility model per task x model (PyMC), leaderboard priors, and the model registry table.

Names load lazily, so that `stratmaster --help` (which imports `router_models.utility.cli`) stays fast.
"""

from importlib import import_module

_EXPORTS = {
    "CellData": "data", "cell_data": "data", "outcome_table_from_files": "data",
    "FitConfig": "model", "UtilityFit": "model", "build_model": "model", "fit_utility": "model",
    "PosteriorArtifacts": "pipeline", "fit_posterior": "pipeline", "register_posterior": "pipeline",
    "PosteriorHashMismatch": "posterior", "UtilityPosterior": "posterior", "load_posterior": "posterior",
    "alpha_priors": "priors", "leaderboard_priors": "priors", "load_priors": "priors",
}  # fmt: skip
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
