from pathlib import Path

import pytest

from pipelines.llm.catalog import CatalogError, load_catalog
from pipelines.settings import Settings


def test_package_catalog_has_local_and_remote_models():
    cat = load_catalog(Settings())
    local = {m.name for m in cat.local()}
    assert local == {"smollm2-135m", "gemma3-270m"}
    privacies = {m.privacy for m in cat.models}
    assert privacies == {"local", "open_weights_remote", "remote"}


def test_local_models_get_a_price_from_the_cpu_hour(monkeypatch):
    cheap = load_catalog(Settings(cpu_hour_usd=0.10)).get("smollm2-135m")
    dear = load_catalog(Settings(cpu_hour_usd=0.20)).get("smollm2-135m")
    assert cheap.cost_per_1k_output_usd > 0 and cheap.cost_per_1k_input_usd > 0
    assert dear.cost_per_1k_output_usd == pytest.approx(2 * cheap.cost_per_1k_output_usd)


def test_models_without_their_key_are_unavailable_not_errors(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cat = load_catalog(Settings())
    gpt = cat.get("gpt-4o-mini")
    assert gpt.unavailable_reason() == "OPENAI_API_KEY is not set"
    assert "gpt-4o-mini" not in {m.name for m in cat.available()}
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert "gpt-4o-mini" in {m.name for m in load_catalog(Settings()).available()}


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("models: [\n  - name: x\n    bad", "not valid YAML"),
        ("- just a list", "top-level 'models:'"),
        (
            "models:\n  - name: x\n    litellm_model: openai/x\n    provider: p\n    privacy: secret\n"
            "    context_window: 10\n    cost_per_1k_input_usd: 0\n    cost_per_1k_output_usd: 0\n",
            "privacy",
        ),
        (
            "models:\n  - name: x\n    litellm_model: openai/x\n    provider: p\n    privacy: remote\n"
            "    context_window: 10\n",
            "needs cost_per_1k_input_usd",
        ),
        (
            "models:\n  - name: x\n    litellm_model: openai/x\n    provider: llama.cpp\n    privacy: local\n"
            "    context_window: 10\n    local: {weights: w, port_offset: 0, chat_template: nope.jinja,\n"
            "      throughput_tokens_s: {input: 1, output: 1}}\n",
            "chat_template 'nope.jinja' is not a file",
        ),
        # a misspelt key was dropped (gemma lost its stop string), a zero throughput divided by zero
        (
            "models:\n  - name: x\n    litellm_model: openai/x\n    provider: p\n    privacy: remote\n"
            "    context_window: 10\n    cost_per_1k_input: 0\n    cost_per_1k_output_usd: 0\n",
            "cost_per_1k_input",
        ),
        (
            "models:\n  - name: x\n    litellm_model: openai/x\n    provider: llama.cpp\n    privacy: local\n"
            "    context_window: 10\n"
            "    local: {weights: w, port_offset: 0, throughput_tokens_s: {input: 0}}\n",
            "both > 0",
        ),
        (
            "models:\n  - name: x\n    litellm_model: openai/x\n    provider: llama.cpp\n    privacy: local\n"
            "    context_window: 10\n    local: {weights: w, port_offset: 70000,\n"
            "      throughput_tokens_s: {input: 1, output: 1}}\n",
            "past port 65535",
        ),
    ],
)
def test_bad_catalog_yaml_gives_a_clear_error(tmp_path: Path, text: str, fragment: str):
    p = tmp_path / "catalog.yaml"
    p.write_text(text)
    with pytest.raises(CatalogError, match=fragment):
        load_catalog(Settings(), path=p)


def test_a_catalog_that_is_not_utf8_is_a_one_line_error(tmp_path: Path):
    """A UTF-16 or Latin-1 file was a UnicodeDecodeError traceback from `stratmaster models list`."""
    import os
    import subprocess
    import sys

    p = tmp_path / "latin.yaml"
    p.write_bytes(b"\xff\xfe models:\n")
    with pytest.raises(CatalogError, match="is not UTF-8 text"):
        load_catalog(Settings(), path=p)
    run = {**os.environ, "SM_RUN_DIR": str(tmp_path), "SM_CATALOG_PATH": str(p)}
    r = subprocess.run([sys.executable, "-m", "router_models.cli", "models", "list"], env=run,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and r.stderr.startswith(f"error: model catalog {p} is not UTF-8 text"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_duplicate_names_are_refused(tmp_path: Path):
    entry = (
        "  - name: x\n    litellm_model: openai/x\n    provider: p\n    privacy: remote\n"
        "    context_window: 10\n    cost_per_1k_input_usd: 0\n    cost_per_1k_output_usd: 0\n"
    )
    p = tmp_path / "c.yaml"
    p.write_text("models:\n" + entry + entry)
    with pytest.raises(CatalogError, match="duplicate model names: x"):
        load_catalog(Settings(), path=p)


def test_local_models_need_ports_of_their_own(tmp_path: Path):
    entry = (
        "  - name: {n}\n    litellm_model: openai/{n}\n    provider: llama.cpp\n    privacy: local\n"
        "    context_window: 10\n"
        "    local: {{weights: w, port_offset: 1, throughput_tokens_s: {{input: 1, output: 1}}}}\n"
    )
    p = tmp_path / "c.yaml"
    p.write_text("models:\n" + entry.format(n="a") + entry.format(n="b"))
    with pytest.raises(CatalogError, match="share port_offset 1"):
        load_catalog(Settings(), path=p)


def test_a_self_hosted_endpoint_never_gets_the_environments_openai_key(tmp_path: Path, monkeypatch):
    """An `openai/...` entry with its own api_base and no api_key_env (a TGI box, say) had no key set, so
    LiteLLM sent OPENAI_API_KEY to that server."""
    from pipelines.llm.gateway import LOCAL_API_KEY, router_config

    monkeypatch.setenv("OPENAI_API_KEY", "sk-real-key")
    p = tmp_path / "c.yaml"
    p.write_text(
        "models:\n  - name: tgi\n    litellm_model: openai/m\n    provider: tgi\n"
        "    privacy: open_weights_remote\n"
        "    context_window: 10\n    cost_per_1k_input_usd: 0\n    cost_per_1k_output_usd: 0\n"
        "    api_base: http://10.0.0.5:8080/v1\n"
    )
    (entry,) = router_config(load_catalog(Settings(), path=p), Settings())["model_list"]
    assert entry["litellm_params"]["api_key"] == LOCAL_API_KEY


def test_missing_catalog_file(tmp_path: Path):
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(Settings(), path=tmp_path / "nope.yaml")


def test_deployment_ids_name_the_model_and_its_endpoint_never_a_key(monkeypatch):
    """LiteLLM cools deployments down by id across every Router in the process: the id is the catalog name
    plus a hash of where calls go, so two Gateways share a cooldown only for the same endpoint."""
    from types import SimpleNamespace

    from pipelines.llm.gateway import Gateway, deployment_id, router_config

    settings = Settings()
    catalog = load_catalog(settings)

    def ids_now() -> list[str]:
        return [m["model_info"]["id"] for m in router_config(catalog, settings, False)["model_list"]]

    ids = ids_now()
    assert [i.partition("@")[0] for i in ids] == catalog.names()
    assert all(len(i.partition("@")[2]) == 12 for i in ids) and ids == ids_now()  # stable
    base = {"model": "openai/x", "api_base": "http://127.0.0.1:8081/v1", "api_key": "sk-secret-1"}
    assert deployment_id("x", base) == deployment_id("x", {**base, "api_key": "sk-secret-2"})  # no key value
    assert deployment_id("x", base) != deployment_id("x", {**base, "api_base": "http://127.0.0.1:9/v1"})
    assert deployment_id("x", {**base, "api_key": "os.environ/A"}) != deployment_id(
        "x", {**base, "api_key": "os.environ/B"}
    )  # which variable holds the key is part of the endpoint
    gateway = Gateway(settings, catalog)
    smol = catalog.get("smollm2-135m")
    resp = SimpleNamespace(_hidden_params={"model_id": ids[catalog.names().index("gemma3-270m")]}, model="")
    assert gateway._answered(resp, smol) == "gemma3-270m"


def test_a_cooldown_of_zero_turns_cooldowns_off(tmp_path: Path):
    """LiteLLM reads a cooldown_time of 0 as its default (5 s): SM_COOLDOWN_S=0 benched a model anyway."""
    import litellm

    from pipelines.llm.gateway import router_config

    catalog = load_catalog(Settings(run_dir=tmp_path))
    for cooldown, off in ((0, True), (30, False)):
        cfg = router_config(catalog, Settings(run_dir=tmp_path, cooldown_s=cooldown), only_available=False)
        router = litellm.Router(model_list=cfg["model_list"], **cfg["router_settings"])
        assert router.disable_cooldowns is off


def test_secrets_are_masked_and_a_bad_setting_is_one_line(tmp_path: Path):
    """Secrets were plain strings in repr(Settings()); a typo such as SM_REQUEST_TIMEOUT_S=30s was a
    46-line traceback, and 0 (no timeout at all), a negative price or port 70000 were taken."""
    import json
    import os
    import subprocess
    import sys

    from pydantic import ValidationError

    s = Settings(
        s3_secret_key="s3-SECRET", nebula_password="neb-SECRET", registry_url="postgresql://u:pg-SECRET@h/db"
    )
    assert "SECRET" not in repr(s) + str(s) + json.dumps(s.model_dump(mode="json"))
    env = s.as_env()  # a child process builds the same settings, secrets included
    assert env["SM_S3_SECRET_KEY"] == "s3-SECRET" and env["SM_NEBULA_PASSWORD"] == "neb-SECRET"
    assert s.registry_sqlalchemy_url == "postgresql://u:pg-SECRET@h/db"
    for bad in (
        {"request_timeout_s": 0},
        {"cpu_hour_usd": -0.1},
        {"local_base_port": 70000},
        {"hybrid_alpha": 2},
        {"cpu_hour_usd": "inf"},  # a price of inf made every cost inf (and the JSON invalid)
        {"request_timeout_s": float("inf")},  # every call failed and both models were benched
        {"local_host": "localhost:9000"},  # a port, or IPv6 (::1), made every server URL invalid: a traceback
        {"local_host": "::1"},
    ):
        with pytest.raises(ValidationError):
            Settings(**bad)
    run = {**os.environ, "SM_RUN_DIR": str(tmp_path), "SM_REQUEST_TIMEOUT_S": "30s"}
    r = subprocess.run([sys.executable, "-m", "router_models.cli", "models", "status"], env=run,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and r.stderr.strip() == (
        "error: SM_REQUEST_TIMEOUT_S: Input should be a valid number, unable to parse string as a number"
    )


def test_a_gateway_that_goes_unhooks_its_router_from_litellm(tmp_path: Path):
    """LiteLLM's Router adds itself to four global callback lists: every Gateway made (a Dagster asset's,
    a CLI call's) stayed alive, 4 entries each."""
    import gc

    import litellm

    from pipelines.llm.gateway import Gateway

    names = ("_async_success_callback", "success_callback", "_async_failure_callback", "failure_callback",
             "input_callback", "service_callback", "callbacks")  # fmt: skip

    def hooked() -> int:
        return sum(len(getattr(litellm, n)) for n in names)

    gc.collect()
    before = hooked()
    gateways = [Gateway(Settings(run_dir=tmp_path)) for _ in range(5)]
    assert hooked() > before
    del gateways
    gc.collect()
    assert hooked() == before


def test_latency_p95_reads_while_calls_are_booked_from_other_threads(tmp_path: Path):
    """The p95 walked the deque in a generator while worker threads appended: `deque mutated during
    iteration`, a 500 from the service's route step."""
    import threading
    import time

    from pipelines.llm.gateway import Gateway

    gw = Gateway(Settings(run_dir=tmp_path))
    stop, errors = threading.Event(), []

    def book():
        while not stop.is_set():
            gw._latencies["smollm2-135m"].append((time.monotonic(), 0.5))

    writer = threading.Thread(target=book)
    writer.start()
    try:
        for _ in range(20_000):
            try:
                gw.recent_latency_p95("smollm2-135m")
            except RuntimeError as e:
                errors.append(e)
                break
    finally:
        stop.set()
        writer.join()
    assert errors == []


def _counting_loads(monkeypatch, gateway_module) -> list[str]:
    """Every tokenizer load from now on, by path, the known tokenizers forgotten."""
    loads, load = [], gateway_module._load_vocab
    monkeypatch.setattr(gateway_module, "_VOCABS", {})
    monkeypatch.setattr(gateway_module, "_load_vocab", lambda path: loads.append(path) or load(path))
    return loads


def test_threads_that_size_their_first_prompts_at_once_load_the_tokenizer_once(tmp_path: Path, monkeypatch):
    """Four threads at once loaded the GGUF four times (and, when a load still pointed stdout and stderr at
    /dev/null, left both pointing there)."""
    import os
    import threading

    from pipelines.llm import gateway as gateway_module

    gw = gateway_module.Gateway(Settings(run_dir=tmp_path))
    smol = gw.catalog.get("smollm2-135m")
    loads = _counting_loads(monkeypatch, gateway_module)
    before = os.readlink("/proc/self/fd/2")
    barrier, counts = threading.Barrier(4), []

    def size():
        barrier.wait()
        counts.append(gw._prompt_tokens(smol, [{"role": "user", "content": "Hello there, how are you?"}]))

    threads = [threading.Thread(target=size) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(counts)) == 1 and counts[0] > 8
    assert len(loads) == 1
    assert os.readlink("/proc/self/fd/2") == before


def test_a_tokenizer_file_replaced_since_it_was_unreadable_is_read_again(tmp_path: Path, monkeypatch):
    """An unreadable GGUF was remembered for the process's life: one still being written at the first
    request left its model sized by estimate until a restart."""
    import os

    from pipelines.llm import gateway as gateway_module

    gw = gateway_module.Gateway(Settings(run_dir=tmp_path))
    real = str(gateway_module.vocab_file(gw.catalog.get("smollm2-135m"), gw.settings))
    loads = _counting_loads(monkeypatch, gateway_module)
    gguf = tmp_path / "model.gguf"
    assert gateway_module._vocab(str(gguf)) is None and loads == []  # not there yet
    smol = gateway_module._vocab(real)
    for size in range(1, 12):  # being written: each size read once, and only this file's entry replaced
        gguf.write_bytes(b"GGUF" * size)
        assert gateway_module._vocab(str(gguf)) is None
        assert gateway_module._vocab(str(gguf)) is None  # remembered: not read again per request
    assert loads == [real] + [str(gguf)] * 11
    assert gateway_module._vocab(real) is smol  # still known: not read again
    (tmp_path / "new").symlink_to(real)
    os.replace(tmp_path / "new", gguf)  # the file, now whole
    vocab, text = gateway_module._vocab(str(gguf)), "Hello there, how are you?"
    assert vocab is not None and vocab.count(text) == smol.count(text) > 1


def test_loading_a_tokenizer_leaves_the_process_output_alone(tmp_path: Path):
    """`Llama(vocab_only=True, verbose=False)` pointed stdout and stderr at /dev/null while it loaded: what
    other threads printed meanwhile was lost (and a test run's whole report once with it), and the load
    printed llama.cpp's notes about the context it made."""
    import os
    import subprocess
    import sys

    from pipelines.settings import REPO_ROOT

    code = """
import threading, time
from pipelines.llm.gateway import Gateway
gw = Gateway()
sizes = []
load = threading.Thread(target=lambda: sizes.extend(
    gw.own_prompt_tokens(m, "Hello there") for m in ("smollm2-135m", "gemma3-270m")))
load.start()
n = 0
while load.is_alive() or n < 3:
    print("tick", flush=True)
    n += 1
    time.sleep(0.001)
print("printed", n, "sizes", *sizes, flush=True)
"""
    models = REPO_ROOT / "runs" / "models"  # where make setup put Gemma's joined GGUF
    env = {**os.environ, "SM_RUN_DIR": str(tmp_path), "SM_MODEL_CACHE_DIR": str(models)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, env=env,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1].split()
    assert last[0] == "printed" and out.stdout.count("tick") == int(last[1])
    assert last[3] != "None"  # SmolLM2's own count
    assert "llama_context" not in out.stderr and "control-looking" not in out.stderr, out.stderr[-2000:]
