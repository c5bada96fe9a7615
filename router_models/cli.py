"""The `stratmaster` console script: library commands plus the retrieval, bench, router and utility sub-apps.

Each sub-app imports its heavy libraries inside its commands, so `stratmaster --help` stays fast.
"""

from __future__ import annotations

import sys

from pipelines.bench.cli import app as bench_app
from pipelines.cli import app
from pipelines.rag.cli import app as retrieval_app
from router_models.router.cli import app as router_app
from router_models.utility.cli import app as utility_app

app.add_typer(retrieval_app, name="retrieval", help="Hybrid RAG: ingest, evaluate, ask.")
app.add_typer(bench_app, name="bench", help="The micro-bench: prompt sets, runs, RouterBench import.")
app.add_typer(router_app, name="router", help="Train, predict with and evaluate routers.")
app.add_typer(utility_app, name="utility", help="The Bayesian utility model per task x model.")


def main() -> None:
    """The console script: `app`, with a bad SM_ setting said in one line per field, and a file-system error,
    a bad model catalog or missing model files in one line, not a traceback (exit 2 for a usage error: a
    folder given for a file or the reverse, a bad setting or catalog; 1 for a failure on the way)."""
    from pydantic import ValidationError

    from pipelines.llm.catalog import CatalogError
    from pipelines.llm.weights import WeightsError

    try:
        app()
    except (IsADirectoryError, NotADirectoryError) as e:  # a folder given for a file or the reverse: usage
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except FileExistsError as e:  # an --out under a file: making its folder found the file in the way
        print(f"error: {e.filename} is a file, where a folder is needed", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # no permission, a full disk, no server
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except (CatalogError, WeightsError) as e:  # a bad catalog entry, model files not installed
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except ValidationError as e:
        if e.title != "Settings":
            raise
        for err in e.errors():
            field = "_".join(str(part) for part in err["loc"]).upper()
            print(f"error: SM_{field}: {err['msg']}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
