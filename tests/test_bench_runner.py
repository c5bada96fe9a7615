"""The runner against the real local models: a small scored run, error rows, SIGKILL and resume, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipelines.bench.outcomes import OUTCOME_COLUMNS, read_table
from pipelines.bench.prompts import load_prompt_set, routerbench_prompts, stratified_sample
from pipelines.bench.runner import (
    PART_GLOB,
    accuracy_table,
    call_failed,
    collect_outcomes,
    error_rate_by_model,
    run_bench,
)
from pipelines.settings import REPO_ROOT

pytestmark = pytest.mark.models
MODELS = ["smollm2-135m", "gemma3-270m"]


@pytest.fixture(scope="module")
def ten_prompts(shared_data):
    """10 prompts: 3 ARC, 3 Winogrande (the RouterBench prompts), 2 extraction, 2 RAG answers."""
    rb = stratified_sample(routerbench_prompts(shared_data / "routerbench"), per_task=3, seed=1)
    demo = load_prompt_set("demo")
    demo = stratified_sample(demo[demo["family"].isin(["extraction", "rag_answer"])], per_task=2, seed=1)
    return pd.concat([rb, demo], ignore_index=True)


def test_real_run_of_the_local_panel_is_scored_and_complete(gateway, ten_prompts, tmp_path):
    prompts = ten_prompts.copy()
    extraction = prompts["family"] == "extraction"
    prompts.loc[extraction, "reference"] = [None, "x"]  # one row cannot be scored
    prompts.loc[extraction, "answers"] = None
    models = [*MODELS, "no-such-model"]
    rep = run_bench(
        prompts, models, gateway, tmp_path, concurrency=2, batch_size=6, max_tokens=12, progress=False
    )
    df = collect_outcomes(tmp_path, with_response=True)
    assert rep.cells_total == len(df) == 30 and not df.duplicated(["prompt_id", "model"]).any()
    assert list(df.columns[: len(OUTCOME_COLUMNS)]) == OUTCOME_COLUMNS and df["run_id"].nunique() == 1
    real = df[df["model"].isin(MODELS)]
    ok = real[real["error"].isna()]
    assert len(ok) >= 16, real[["prompt_id", "model", "error"]]
    assert ok["score"].between(0, 1).all() and (ok["cost_usd"] > 0).all()
    streamed = ok.dropna(subset=["ttft_s"])  # an empty answer (gemma's, at times) has no first token
    assert (streamed["ttft_s"] <= streamed["latency_s"]).all() and len(streamed) >= len(ok) / 2
    assert (ok["output_tokens"] >= 0).all() and (streamed["output_tokens"] > 0).all()
    # an unknown model is an error row per prompt, not a crash; so is a row the scorer cannot score
    bad = df[df["model"] == "no-such-model"]
    assert len(bad) == 10 and bad["error"].str.contains("unknown model").all() and bad["score"].isna().all()
    unscorable = real[real["error"].fillna("").str.startswith("scorer: ScoreError")]
    assert len(unscorable) == 2 and unscorable["score"].isna().all()
    # the run's report counts them apart: failed calls (retried by the next run), answers left unscored
    assert rep.errors_by_model["no-such-model"] == 10 and sum(rep.scorer_errors_by_model.values()) == 2
    assert sum(rep.errors_by_model.values()) == call_failed(df["error"]).sum()
    acc = accuracy_table(df)
    assert set(acc["model"]) == set(models) and acc["accuracy"].dropna().between(0, 1).all()


def test_the_accuracy_table_counts_errors_as_the_error_rate_check_does():
    """It counted a scorer's error as a failed call: 10% in the run's table where the nightly check, which
    counts failed calls only, said 0% for the same rows."""
    df = pd.DataFrame({"task": "qa", "model": "m", "score": [1.0] * 9 + [None],
                       "error": [None] * 9 + ["scorer: ScoreError: no choice"]})  # fmt: skip
    assert accuracy_table(df)["error_rate"].tolist() == [0.0] == list(error_rate_by_model(df).values())
    failed = df.assign(error=[None] * 8 + ["GatewayError: m: timed out", None])
    assert accuracy_table(failed)["error_rate"].tolist() == [0.1]


RUNNER_SCRIPT = """
import sys
from pipelines.settings import Settings
from pipelines.llm.gateway import Gateway
from pipelines.bench.prompts import read_prompt_file
from pipelines.bench.runner import run_bench
rep = run_bench(read_prompt_file(sys.argv[1]), ["smollm2-135m"], Gateway(Settings()), sys.argv[2],
                run_id="resume-test", concurrency=1, batch_size=2, max_tokens=2, progress=False)
print("REPORT", rep.cells_done_before, rep.cells_run)
"""


def _env(settings) -> dict[str, str]:
    return {**os.environ, "SM_RUN_DIR": str(settings.run_dir), "SM_MODEL_CACHE_DIR": str(settings.models_dir),
            "SM_LOCAL_BASE_PORT": str(settings.local_base_port), "PYTHONPATH": str(REPO_ROOT)}  # fmt: skip


def test_resume_after_sigkill_loses_and_duplicates_nothing(gateway, model_settings, tmp_path):
    total = 40  # enough calls left after the first batch that the kill lands mid-run on a fast machine
    src = tmp_path / "p.jsonl"
    src.write_text(
        "".join(
            json.dumps(
                {
                    "prompt_id": f"r{i:02d}",
                    "task": "extraction",
                    "reference": "ok",
                    "prompt": f"Reply with the word ok. ({i})",
                }
            )
            + "\n"
            for i in range(total)
        )
    )
    out = tmp_path / "run"
    cmd = [sys.executable, "-c", RUNNER_SCRIPT, str(src), str(out)]
    proc = subprocess.Popen(cmd, env=_env(model_settings), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(out.glob(PART_GLOB))) < 1 and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0].decode()[-2000:]
    proc.send_signal(signal.SIGKILL)  # mid-run: one batch committed, the next in flight
    proc.wait()
    before = collect_outcomes(out)
    assert 2 <= len(before) < total
    r = subprocess.run(cmd, env=_env(model_settings), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    done_before, ran = map(int, r.stdout.split("REPORT")[1].split())
    after = collect_outcomes(out)
    assert done_before == len(before) and ran == total - len(before)  # only the missing cells ran
    assert sorted(after["prompt_id"]) == [f"r{i:02d}" for i in range(total)]  # none lost, none duplicated
    kept = after.set_index("prompt_id").loc[before["prompt_id"], "latency_s"].to_numpy()
    assert (kept == before["latency_s"].to_numpy()).all()  # committed rows untouched by the resume
    assert set(after["run_id"]) == {"resume-test"}


def test_a_resume_retries_the_calls_that_failed(gateway, model_settings, ten_prompts, tmp_path):
    """Failed calls were committed as done: after a run with the servers down, running again (the stated
    recovery) retried nothing and the partition failed its error-rate check for good."""
    from conftest import free_port_pair

    from pipelines.llm.catalog import load_catalog
    from pipelines.llm.gateway import Gateway

    prompts = ten_prompts.head(4)
    down = model_settings.model_copy(update={"local_base_port": free_port_pair(), "request_timeout_s": 5})
    first = run_bench(
        prompts, MODELS[:1], Gateway(down, load_catalog(down)), tmp_path, max_tokens=8, progress=False
    )
    assert first.errors_by_model == {MODELS[0]: 4}
    second = run_bench(prompts, MODELS[:1], gateway, tmp_path, max_tokens=8, progress=False)
    assert (second.cells_done_before, second.cells_run) == (0, 4)
    df = collect_outcomes(tmp_path)
    assert len(df) == 4 and not df["error"].fillna("").str.contains("Connection|refused").any()
    assert run_bench(prompts, MODELS[:1], gateway, tmp_path, max_tokens=8, progress=False).cells_run == 0

    from pipelines.bench.runner import _lock

    with _lock(tmp_path), pytest.raises(RuntimeError, match="another bench run"):  # another run writing it
        run_bench(prompts, MODELS[:1], gateway, tmp_path, max_tokens=8, progress=False)


def test_cli_run_writes_the_table_and_prints_accuracy(gateway, model_settings, tmp_path, monkeypatch):
    for k, v in _env(model_settings).items():
        if k.startswith("SM_"):
            monkeypatch.setenv(k, v)
    out = tmp_path / "o.csv"
    args = ["run", "--prompt-set", "demo", "--models", "local", "--limit", "2", "--max-tokens", "8",
            "--out", str(out), "--no-start-servers"]  # fmt: skip
    r = CliRunner().invoke(app_(), args)
    assert r.exit_code == 0, r.output
    df = read_table(out)
    # 'local' = every available local-tier model: the two llama.cpp servers (the vLLM entries lack their URL)
    assert set(df["model"]) == set(MODELS) and len(df) == 4 and df["prompt_id"].nunique() == 2
    assert "accuracy" in r.output and "smollm2-135m" in r.output and "error rate" in r.output
    r2 = CliRunner().invoke(app_(), args)  # rerun = resume: nothing left to call
    assert r2.exit_code == 0 and "0 calls now, 4 resumed" in r2.output
    # with a judge, a prompt without a reference is rated as the benchmark_results asset rates it (the CLI
    # marked it "no reference answer" while the asset scored it)
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"prompt_id": "c1", "task": "chat", "prompt": "Name a colour."}) + "\n")
    monkeypatch.setenv("SM_JUDGE_MODEL", "gemma3-270m")
    judged = tmp_path / "judged.csv"
    args = ["run", "--prompt-set", str(chat), "--models", "smollm2-135m", "--max-tokens", "8",
            "--out", str(judged), "--no-start-servers"]  # fmt: skip
    assert CliRunner().invoke(app_(), args).exit_code == 0
    (row,) = read_table(judged).to_dict("records")
    assert "no reference" not in str(row["error"]), row["error"]


def app_():
    from pipelines.bench.cli import app

    return app


def test_cli_run_where_every_call_fails_writes_the_table_and_exits_1(tmp_path, monkeypatch):
    """Nothing listens on the models' ports: the rows are kept (a rerun retries them); the exit says so."""
    from conftest import free_ports

    port = free_ports(2)  # ports nothing listens on (the two local models'), outside the ephemeral range
    monkeypatch.setenv("SM_LOCAL_BASE_PORT", str(port))
    monkeypatch.setenv("SM_RUN_DIR", str(tmp_path / "runs"))
    out = tmp_path / "o.csv"
    args = ["run", "--prompt-set", "demo", "--models", "smollm2-135m", "--limit", "2", "--max-tokens", "8",
            "--out", str(out), "--no-start-servers"]  # fmt: skip
    r = CliRunner().invoke(app_(), args)
    assert r.exit_code == 1, r.output
    assert "every call failed" in r.output and "error rate smollm2-135m: 100.0%" in r.output
    df = read_table(out)
    assert len(df) == 2 and df["error"].notna().all()
    # a resume at another cap reused the answers of the first without a word; a hand-edited record was a
    # KeyError traceback; an --out that is a folder failed after every call, naming a temporary file
    again = [*args[:8], "16", *args[9:]]
    r = CliRunner().invoke(app_(), again)
    assert r.exit_code == 2 and "answered at --max-tokens 8: resume it at that cap" in r.output, r.output
    record = out.with_name(out.name + ".parts") / "run.json"
    record.write_text('{"foo": 1}')
    r = CliRunner().invoke(app_(), args)
    assert r.exit_code == 2 and f"{record} is no bench run's record (KeyError" in r.output, r.output
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    r = CliRunner().invoke(app_(), [*args[:-2], str(folder), "--no-start-servers"])
    assert r.exit_code == 2 and f"--out {folder} is a folder" in r.output, r.output
    assert not (tmp_path / "folder.csv.parts").exists()  # refused before any call
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a table of failed rows, exit 1, was all it gave
    r = CliRunner().invoke(app_(), [*args[:4], "smollm2-135m,gpt-4o", *args[5:]])
    assert r.exit_code == 2 and "gpt-4o cannot be called: OPENAI_API_KEY is not set" in r.output, r.output
