"""The `stratmaster` console script: library commands plus the router and utility sub-apps."""

from __future__ import annotations

from pipelines.cli import app

try:  # the sub-apps land with their issues; the CLI works without them
    from router_models.router.cli import app as router_app

    app.add_typer(router_app, name="router", help="Train, predict with and evaluate routers.")
except ImportError:  # pragma: no cover
    pass
try:
    from router_models.utility.cli import app as utility_app

    app.add_typer(utility_app, name="utility", help="The Bayesian utility model per task x model.")
except ImportError:  # pragma: no cover
    pass

if __name__ == "__main__":
    app()
