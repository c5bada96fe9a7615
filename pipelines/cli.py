"""`stratmaster` commands for the library layer: the local model panel, the gateway and the demo.

The console script is `router_models.cli:main`, whose app mounts these commands beside the router and
utility ones.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
import yaml
from rich.console import Console
from rich.table import Table

from pipelines.settings import REPO_ROOT, Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="StratMaster Workbench")
models_app = typer.Typer(no_args_is_help=True, help="The local model panel (llama.cpp servers).")
gateway_app = typer.Typer(no_args_is_help=True, help="The LiteLLM gateway.")
app.add_typer(models_app, name="models")
app.add_typer(gateway_app, name="gateway")
console = Console()
if not console.is_terminal:  # piped or logged: keep tables readable instead of 80 columns
    console = Console(width=140)


def _local_entries(settings: Settings, names: list[str] | None, required: bool = False):
    """The catalog's local models (those named, when names are given). With `required`, a catalog that names
    none is an error (exit 1): `up` and `status` had checked or started nothing and exited 0."""
    from pipelines.llm.catalog import load_catalog

    catalog = load_catalog(settings)
    local = catalog.local()
    if required and not local:
        where = settings.catalog_path or "the package catalog"
        typer.echo(f"error: the model catalog ({where}) names no local model", err=True)
        raise typer.Exit(1)
    if names:
        unknown = sorted(set(names) - {e.name for e in local})
        if unknown:
            raise typer.BadParameter(
                f"not local models: {', '.join(unknown)}; local: {[e.name for e in local]}"
            )
        local = [e for e in local if e.name in names]
    return local


def _status_table(rows) -> Table:
    t = Table("model", "state", "port", "pid", "detail")
    for s in rows:
        colour = {"up": "green", "starting": "yellow"}.get(s.state, "red")
        t.add_row(s.name, f"[{colour}]{s.state}[/]", str(s.port), str(s.pid or "-"), s.detail)
    return t


@models_app.command("up")
def models_up(names: list[str] = typer.Argument(None, help="local model names; all when omitted")) -> None:
    """Start the local model servers and wait until each answers."""
    from pipelines.llm import servers

    settings = Settings()
    rows = []
    for e in _local_entries(settings, names, required=True):
        try:
            rows.append(servers.start(e, settings))
        except servers.ServerError as err:
            console.print(f"[red]{err}[/]")
            raise typer.Exit(1) from None
    console.print(_status_table(rows))


@models_app.command("down")
def models_down(names: list[str] = typer.Argument(None)) -> None:
    """Stop the local model servers."""
    from pipelines.llm import servers

    settings = Settings()
    console.print(_status_table([servers.stop(e, settings) for e in _local_entries(settings, names)]))


@models_app.command("status")
def models_status(as_json: bool = typer.Option(False, "--json")) -> None:
    """Tell, truthfully, which local servers are up (exit code 0 only when all are)."""
    from pipelines.llm import servers

    settings = Settings()
    rows = [servers.status(e, settings) for e in _local_entries(settings, None, required=True)]
    if as_json:
        print(json.dumps([r.__dict__ for r in rows]))
    else:
        console.print(_status_table(rows))
    raise typer.Exit(0 if all(r.state == "up" for r in rows) else 3)


@models_app.command("list")
def models_list() -> None:
    """The catalog, with availability."""
    from pipelines.llm.catalog import load_catalog

    t = Table("model", "provider", "privacy", "ctx", "$/1k in", "$/1k out", "available")
    for e in load_catalog(Settings()).models:
        why = e.unavailable_reason()
        t.add_row(
            e.name, e.provider, e.privacy, str(e.context_window), f"{e.cost_per_1k_input_usd:.6f}",
            f"{e.cost_per_1k_output_usd:.6f}", "[green]yes[/]" if why is None else f"[red]no[/] ({why})",
        )  # fmt: skip
    console.print(t)


@gateway_app.command("export")
def gateway_export(out: Path = typer.Option(REPO_ROOT / "deploy" / "litellm_config.yaml")) -> None:
    """Write the LiteLLM Proxy config with the same model groups, retries and fallbacks."""
    from pipelines.files import write_atomic
    from pipelines.llm.catalog import load_catalog
    from pipelines.llm.gateway import router_config

    if out.is_dir():
        typer.echo(f"error: --out {out} is a folder, not a file", err=True)
        raise typer.Exit(2)
    settings = Settings()
    catalog = load_catalog(settings)
    cfg = router_config(catalog, settings, only_available=False)
    for m in cfg["model_list"]:  # the Proxy's own cost tracking at the catalog's prices (local calls too)
        e = catalog.get(m["model_name"])
        m["litellm_params"]["input_cost_per_token"] = (e.cost_per_1k_input_usd or 0.0) / 1000
        m["litellm_params"]["output_cost_per_token"] = (e.cost_per_1k_output_usd or 0.0) / 1000
    # the Proxy asks every client for this key: with none it answers anyone, on the remote providers' keys
    cfg["general_settings"] = {"master_key": "os.environ/LITELLM_MASTER_KEY"}
    # prompts and answers stay out of whatever logging callbacks the Proxy is given (as in the service)
    cfg["litellm_settings"] = {"turn_off_message_logging": True}
    header = "# Generated by `stratmaster gateway export` from the model catalog; do not edit by hand.\n"
    # a temporary name of its own: `out.with_suffix(".tmp")` deleted a sibling X.tmp of the user's
    write_atomic(out, (header + yaml.safe_dump(cfg, sort_keys=False)).encode())
    console.print(f"wrote {out} ({len(cfg['model_list'])} models)")


@gateway_app.command("chat")
def gateway_chat(model: str, prompt: str, max_tokens: int = 128) -> None:
    """One chat through the gateway; prints the answer and its figures as JSON (exit 2 for a request the
    model cannot take, 1 when the model and its fallbacks are down)."""
    from pipelines.llm.gateway import Gateway, GatewayError, is_request_fault

    gateway = Gateway()
    try:  # a model not in the catalog, or without its key: a usage error
        gateway.entry(model)
    except GatewayError as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(2) from None
    try:
        res = gateway.chat(model, [{"role": "user", "content": prompt}], max_tokens=max_tokens)
    except GatewayError as e:  # one the request can never pass is bad input; any other an outage
        console.print(f"[red]{e}[/]")
        raise typer.Exit(2 if is_request_fault(e) else 1) from None
    print(json.dumps(res.to_dict(), indent=2))


@app.command("demo")
def demo() -> None:
    """The summary `make demo` ends with: figures of the materialized assets and two live RAG answers; run
    `make demo` first (exit 1 when nothing is materialized yet)."""
    from pipelines.demo import run_demo

    sys.exit(run_demo(console))


if __name__ == "__main__":
    app()
