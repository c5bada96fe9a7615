"""The library commands' exit codes and the files they touch: `stratmaster demo`, `gateway export`,
`gateway chat` and `models up|status`, through typer's runner on the real settings, catalog and gateway."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from conftest import free_port_pair
from rich.console import Console
from typer.testing import CliRunner

from pipelines.cli import app

REMOTE_ONLY = (
    "models:\n  - name: x\n    litellm_model: openai/x\n    provider: p\n    privacy: remote\n"
    "    context_window: 10\n    cost_per_1k_input_usd: 0\n    cost_per_1k_output_usd: 0\n"
)


def _env(run: Path, **more: str) -> dict[str, str]:
    return {"SM_RUN_DIR": str(run), "SM_LOCAL_BASE_PORT": str(free_port_pair()), **more}


def test_the_demo_on_a_fresh_run_folder_says_to_run_make_demo_and_fails(tmp_path: Path):
    """It answered "No indexed source matches this question." twice from the empty indexes that
    open_retriever made, printed no figures and exited 0; the hint to run the job never showed."""
    run = tmp_path / "run"
    # no server binary: a demo that went on to start the servers (as it did) starts none
    env = _env(run, SM_LOCAL_ENGINE="llama-server", SM_LLAMA_SERVER_BIN=str(tmp_path / "no-llama-server"),
               SM_NUM_RETRIES="0")  # fmt: skip
    res = CliRunner().invoke(app, ["demo"], env=env)
    text = " ".join(res.output.split())
    assert res.exit_code == 1, res.output
    assert f"Nothing materialized in {run}" in text and "run `make demo` first" in text
    assert not run.exists() or not any(run.iterdir())  # no servers started, no empty indexes made
    # the parts of a run folder with some assets but no chunks, or no summaries: each says so
    from pipelines.demo import _chunks_in_store, _figures, _rag
    from pipelines.settings import Settings

    settings = Settings(run_dir=run)
    console = Console(record=True, width=300)
    assert _rag(console, settings, None, *_chunks_in_store(settings)) is False  # type: ignore[arg-type]
    assert _figures(console, settings) == 0
    said = console.export_text()
    assert "RAG skipped: no indexed chunks in the store" in said and "No figures" in said
    assert not run.exists() or not any(run.iterdir())


def test_gateway_export_writes_atomically_and_refuses_a_folder(tmp_path: Path):
    """It wrote X.tmp beside --out X.yaml and renamed it (a user's own X.tmp was lost); over a folder it
    left a stray dir.tmp."""
    out = tmp_path / "litellm.yaml"
    (tmp_path / "litellm.tmp").write_text("mine")
    res = CliRunner().invoke(app, ["gateway", "export", "--out", str(out)], env=_env(tmp_path / "run"))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "litellm.tmp").read_text() == "mine"
    exported = yaml.safe_load(out.read_text())
    assert exported["model_list"]
    # the Proxy answered anyone without a master key, spending the remote providers' keys
    assert exported["general_settings"] == {"master_key": "os.environ/LITELLM_MASTER_KEY"}
    assert exported["litellm_settings"] == {"turn_off_message_logging": True}
    (tmp_path / "dir.yaml").mkdir()
    res = CliRunner().invoke(
        app, ["gateway", "export", "--out", str(tmp_path / "dir.yaml")], env=_env(tmp_path / "run")
    )
    assert res.exit_code == 2 and "is a folder, not a file" in res.output, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.yaml", "litellm.tmp", "litellm.yaml"]
    assert not any((tmp_path / "dir.yaml").iterdir())


def test_the_compose_file_mounts_files_that_exist_and_the_proxy_needs_its_master_key():
    """The committed proxy config is the exported one (with its master key), and every file the compose
    file mounts from deploy/ is there."""
    deploy = Path(__file__).resolve().parents[1] / "deploy"
    assert yaml.safe_load((deploy / "litellm_config.yaml").read_text())["general_settings"]["master_key"]
    compose = yaml.safe_load((deploy / "compose.yaml").read_text())
    mounted = [v.split(":")[0] for s in compose["services"].values() for v in s.get("volumes", [])]
    files = [m for m in mounted if m.startswith("./")]
    assert "./litellm_config.yaml" in files and all((deploy / m).is_file() for m in files), files
    assert set(mounted) - set(files) <= set(compose["volumes"])  # named volumes are declared
    proxy = compose["services"]["litellm"]
    assert 'test -n "$$LITELLM_MASTER_KEY" ||' in proxy["entrypoint"][2]  # it refuses to start without one
    assert ":?" not in (deploy / "compose.yaml").read_text()  # compose would ask for it in every profile


def test_models_up_and_status_with_no_local_model_in_the_catalog_fail(tmp_path: Path):
    """Both exited 0, having checked or started nothing."""
    catalog = tmp_path / "remote.yaml"
    catalog.write_text(REMOTE_ONLY)
    env = _env(tmp_path / "run", SM_CATALOG_PATH=str(catalog))
    for command in (["models", "status"], ["models", "status", "--json"], ["models", "up"]):
        res = CliRunner().invoke(app, command, env=env)
        assert res.exit_code == 1, (command, res.output)
        assert res.output.strip() == f"error: the model catalog ({catalog}) names no local model"


def test_gateway_chat_exits_1_for_an_outage_and_2_for_a_bad_request(tmp_path: Path):
    """An outage (no model server, its fallback down too) was exit 2, the usage error's code."""
    env = _env(tmp_path / "run", SM_NUM_RETRIES="0")  # the servers are not started: nothing listens
    res = CliRunner().invoke(app, ["gateway", "chat", "smollm2-135m", "hello", "--max-tokens", "4"], env=env)
    assert res.exit_code == 1 and "call failed after retries and fallbacks" in res.output, res.output
    for args in (["no-such-model", "hello"], ["smollm2-135m", "hello", "--max-tokens", "0"]):
        res = CliRunner().invoke(app, ["gateway", "chat", *args], env=env)
        assert res.exit_code == 2, (args, res.output)


def test_the_demo_summary_says_that_the_utility_fit_it_shows_failed(tmp_path: Path):
    """The asset writes a failed fit's summary.json where the last good fit's was (it is not registered);
    the demo printed its utilities with nothing to say it failed, and an r-hat of NaN (null) crashed it."""
    from pipelines.demo import _figures
    from pipelines.settings import Settings

    run = tmp_path / "run"
    (run / "utility").mkdir(parents=True)
    row = {"task": "qa", "model": "m", "quality_mean": 0.5, "utility_mean": 0.4}
    diagnostics = {"r_hat_max": None, "ess_bulk_min": 812.0, "divergences": 0, "fit_seconds": 3.0}
    checks = {"r_hat": False, "ess_bulk": True, "divergences": True, "calibration": True}
    doc = {"rows": [row], "diagnostics": diagnostics, "checks": checks}
    (run / "utility" / "summary.json").write_text(json.dumps(doc))
    console = Console(record=True, width=300)
    assert _figures(console, Settings(run_dir=run)) == 1
    said = " ".join(console.export_text().split())
    assert "r_hat max nan" in said and "the fit failed r_hat: not registered" in said
    doc["diagnostics"]["r_hat_max"] = 1.002
    doc["checks"] = {k: True for k in checks}
    (run / "utility" / "summary.json").write_text(json.dumps(doc))
    console = Console(record=True, width=300)
    _figures(console, Settings(run_dir=run))
    said = " ".join(console.export_text().split())
    assert "the fit failed" not in said and "r_hat max 1.002" in said
