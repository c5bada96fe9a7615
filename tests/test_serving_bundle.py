"""The bundle end to end: the Dagster assets make the four BentoML models and build the Bento, then a real
`bentoml serve` of that Bento answers the `openai` SDK with `model="router"` (plain and streaming).

Everything lives in a temporary run directory and BENTOML_HOME: a tiny router (RouterBench prompts renamed to
catalog models), a registry with one fit, a two-document index. The served process gets an empty SM_RUN_DIR,
so what it answers with can only come from the models the Bento names.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import httpx
import pandas as pd
import pytest
import yaml
from test_serving_service import CATALOG_PANEL, LOCAL, PII_PROMPT, _train

from assets.resources import SettingsResource
from assets.serving import bento, bento_models
from pipelines.settings import Settings

PORT = 8310
KEY = "bundle-key"
EMAIL = "jane.doe@example.com"
assert EMAIL in PII_PROMPT


def _registry(settings: Settings) -> str:
    from router_models.utility.registry import registry_engine, write_fit

    rows = [
        {"task": t, "model": m, "quality_mean": q, "quality_p05": q - 0.1, "quality_p95": q + 0.1,
         "utility_mean": q, "cost_usd_mean": 1e-5}
        for t in ("qa", "math") for m, q in (("smollm2-135m", 0.4), ("gemma3-270m", 0.3))
    ]  # fmt: skip
    engine = registry_engine(settings.registry_sqlalchemy_url)
    try:
        return write_fit(engine, pd.DataFrame(rows), data_version="test-data")
    finally:
        engine.dispose()


def _index(settings: Settings) -> None:
    from pipelines.corpus.ingest import ingest_corpus
    from pipelines.index.build import build_dense_index, build_keyword_index

    docs = settings.run_dir / "docs"
    docs.mkdir()
    (docs / "tower.txt").write_text("The Eiffel Tower in Paris is 330 metres tall and was finished in 1889.")
    (docs / "bridge.txt").write_text("The Golden Gate Bridge in San Francisco opened in 1937.")
    ingest_corpus(settings, str(docs))
    build_keyword_index(settings)
    build_dense_index(settings)
    utility = settings.run_dir / "store" / "utility" / "fit"  # utility_posterior uploads fits here
    utility.mkdir(parents=True)
    (utility / "posterior.nc").write_bytes(b"\0" * 1024)


@pytest.fixture(scope="module")
def built(shared_data, tmp_path_factory):
    """Upstream artifacts in a run dir, then `bento_models` and `bento` materialized by Dagster."""
    run = tmp_path_factory.mktemp("bundle_run")
    home = run / "bentoml"
    settings = Settings(run_dir=run, embedder="static")
    trained = _train(shared_data, tmp_path_factory.mktemp("bundle_router"), CATALOG_PANEL, per_task=8)
    (run / "router").mkdir()
    (run / "router" / "current").symlink_to(trained)
    fit_id = _registry(settings)
    _index(settings)

    mp = pytest.MonkeyPatch()
    mp.setenv("BENTOML_HOME", str(home))
    instance = dg.DagsterInstance.ephemeral()
    for key, version in (("router", "rv1"), ("model_registry", "mv1")):  # upstream versions to be named
        instance.report_runless_asset_event(
            dg.AssetMaterialization(key, tags={"dagster/data_version": version})
        )
    resources = {"settings": SettingsResource(overrides={"run_dir": str(run), "embedder": "static"})}
    try:
        result = dg.materialize([bento_models, bento], resources=resources, instance=instance)
        again = dg.materialize([bento_models, bento], resources=resources, instance=instance)
    finally:
        mp.undo()
    assert result.success and again.success
    md = {n: result.asset_materializations_for_node(n)[0].metadata for n in ("bento_models", "bento")}
    md2 = {n: again.asset_materializations_for_node(n)[0].metadata for n in ("bento_models", "bento")}
    return {"home": home, "run": run, "fit_id": fit_id, "models": md["bento_models"], "bento": md["bento"],
            "again": md2}  # fmt: skip


def test_a_second_materialization_of_unchanged_artifacts_keeps_the_models_and_the_bento(built):
    again = built["again"]
    assert again["bento_models"]["reused"].value is True and again["bento"]["reused"].value is True
    for kind in ("router", "registry", "index", "catalog"):
        assert again["bento_models"][f"{kind}_tag"].value == built["models"][f"{kind}_tag"].value
    assert again["bento"]["tag"].value == built["bento"]["tag"].value
    assert built["models"]["reused"].value is False and built["bento"]["reused"].value is False


def test_models_carry_the_artifacts_and_name_their_asset_versions(built):
    home, md = built["home"], built["models"]
    tags = {k: md[f"{k}_tag"].value for k in ("router", "registry", "index", "catalog")}
    assert tags["router"].startswith("stratmaster-router:")

    def model(tag: str) -> tuple[Path, dict]:
        name, _, version = tag.partition(":")
        path = home / "models" / name / version
        return path, yaml.safe_load((path / "model.yaml").read_text())

    path, info = model(tags["router"])
    assert (path / "manifest.json").exists() and (path / "predictor.npz").exists()
    assert info["labels"]["router_version"] == "rv1" and info["labels"]["kind"] == "router"
    path, info = model(tags["registry"])
    assert json.loads((path / "fit.json").read_text())["fit_id"] == built["fit_id"]
    assert len(pd.read_csv(path / "registry.csv")) == 4
    assert info["labels"]["model_registry_version"] == "mv1"
    path, info = model(tags["index"])
    assert (path / "index" / "keyword").is_dir() and (path / "store" / "corpus" / "manifest.json").is_file()
    assert not list(path.rglob("names.key"))  # the secret behind the file-name digests stays in the store
    assert [d.name for d in (path / "store").iterdir()] == ["corpus"]  # not the utility fits beside it
    assert json.loads((path / "engines.json").read_text())["embedder"] == "static"
    assert info["labels"]["keyword_index_version"] == "unmaterialized"  # never materialized in this instance
    path, _ = model(tags["catalog"])
    assert "smollm2-135m" in (path / "catalog.yaml").read_text()


def test_the_bento_pins_the_models_and_names_the_asset_versions(built):
    b, md = built["bento"], built["models"]
    tag = b["tag"].value
    assert tag.startswith("stratmaster:") and b["size_mb"].value > 0
    folder = built["home"] / "bentos" / "stratmaster" / tag.split(":")[1]
    info = yaml.safe_load((folder / "bento.yaml").read_text())
    pinned = {str(m["tag"]) for m in info["services"][0]["models"]}
    assert set(b["models"].value.split(", ")) == pinned
    assert pinned == {md[f"{k}_tag"].value for k in ("router", "registry", "index", "catalog")}
    assert info["labels"]["router_model"] == md["router_tag"].value
    assert info["labels"]["router_version"] == "rv1" and info["labels"]["model_registry_version"] == "mv1"
    src = folder / "src"
    assert (src / "serving" / "service.py").exists() and (src / "pipelines" / "llm" / "catalog.yaml").exists()
    assert not (src / "tests").exists() and not (src / "runs").exists()


@pytest.fixture(scope="module")
def served(built, model_settings, local_servers, tmp_path_factory):
    """`bentoml serve <the Bento>` on 127.0.0.1:PORT, stopped (its whole process group) at the end."""
    serve_run = tmp_path_factory.mktemp("served_run")  # empty: no router, index or registry to fall back on
    serve_tmp = tmp_path_factory.mktemp("served_tmp")  # its TMPDIR: where the workers mark themselves ready
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "PROMETHEUS_"))}
    env.update(
        BENTOML_HOME=str(built["home"]),
        BENTOML_DO_NOT_TRACK="true",
        SM_RUN_DIR=str(serve_run),
        SM_API_KEYS=KEY,
        SM_OTEL_EXPORTER="file",
        SM_MODEL_CACHE_DIR=str(model_settings.model_cache_dir),
        SM_LOCAL_BASE_PORT=str(model_settings.local_base_port),
        SM_REQUEST_TIMEOUT_S="60",
        SM_SERVICE_WORKERS="2",  # /readyz is 200 only once both are ready; each serves RAG from its own copy
        TMPDIR=str(serve_tmp),
    )
    log = open(serve_run / "serve.log", "w")  # noqa: SIM115  (closed below)
    bentoml_cli = str(Path(sys.executable).with_name("bentoml"))
    cmd = [bentoml_cli, "serve", built["bento"]["tag"].value, "--host", "127.0.0.1", "--port", str(PORT)]
    proc = subprocess.Popen(cmd, env=env, cwd=serve_run, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    base = f"http://127.0.0.1:{PORT}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (serve_run / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (serve_run / "serve.log").read_text()[-3000:]
            time.sleep(1)
        yield {"base": base, "run": serve_run, "tmp": serve_tmp}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.mark.slow
@pytest.mark.models
def test_a_real_bentoml_serve_answers_the_openai_sdk(served, built):
    import openai

    # both workers of this one `bentoml serve` marked themselves ready in one folder before /readyz said 200
    folders = list(served["tmp"].glob("stratmaster-ready-*"))
    assert len(folders) == 1 and sorted(p.name for p in folders[0].iterdir()) == ["worker-1", "worker-2"]
    sdk = openai.OpenAI(base_url=f"{served['base']}/v1", api_key=KEY, max_retries=0)
    pii = [{"role": "user", "content": PII_PROMPT}]
    out = sdk.chat.completions.create(model="router", messages=pii, max_tokens=4)
    assert out.model in LOCAL and out.usage.completion_tokens >= 1
    routing = out.model_extra["stratmaster"]["routing"]
    assert routing["model"] == out.model_extra["stratmaster"]["requested_model"]
    assert routing["signals"]["pii"] is True and out.model_extra["stratmaster"]["chosen_by"] == "router"

    chunks = list(sdk.chat.completions.create(model="router", messages=pii, max_tokens=4, stream=True))
    assert chunks and all(c.model in LOCAL for c in chunks)
    assert chunks[0].model_extra["stratmaster"]["routing"]["signals"]["pii"] is True
    assert chunks[-1].usage.completion_tokens >= 1
    assert isinstance(chunks[-1].model_extra["stratmaster"]["cost_usd"], float)

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{served['base']}/v1", api_key="wrong", max_retries=0).models.list()
    # a path no endpoint has: no metric label, no access-log line of it (the log is read at the end)
    assert httpx.get(f"{served['base']}/{EMAIL}").status_code == 404
    metrics = httpx.get(f"{served['base']}/metrics").text
    assert EMAIL not in metrics and 'endpoint="/{unknown}"' in metrics

    # BentoML's own client, as the README shows it: the typed method takes the request body as one argument
    import bentoml

    with bentoml.SyncHTTPClient(served["base"], token=KEY) as client:
        decision = client.route({"prompt": PII_PROMPT})
    assert decision["model"] in LOCAL and decision["routing"]["signals"]["pii"] is True

    # the artifacts are the models the Bento pins, found by tag (the served run dir is empty)
    auth = {"Authorization": f"Bearer {KEY}"}
    arts = httpx.get(f"{served['base']}/v1/artifacts", headers=auth).json()
    for kind in ("router", "registry", "index", "catalog"):
        assert arts[kind]["tag"] == built["models"][f"{kind}_tag"].value
    assert arts["router"]["labels"]["router_version"] == "rv1"
    reg = httpx.get(f"{served['base']}/v1/registry", params={"task": "qa"}, headers=auth).json()
    assert reg["fit"]["fit_id"] == built["fit_id"] and {r["model"] for r in reg["rows"]} == LOCAL
    none = httpx.get(f"{served['base']}/v1/registry", params={"task": "qaa"}, headers=auth)
    assert none.status_code == 404 and "its tasks: math, qa" in none.text, none.text  # was 200 with no rows
    rag = httpx.post(f"{served['base']}/v1/rag", headers=auth, timeout=120,
                     json={"question": "How tall is the Eiffel Tower?", "k": 1, "max_tokens": 4})  # fmt: skip
    assert rag.status_code == 200, rag.text
    assert rag.json()["chunks"][0]["doc_id"] == "tower.txt"

    # spans: request -> route -> retrieval -> LLM call, and the PII prompt's text is in none of them
    from pipelines.tracing import read_spans

    spans_file = served["run"] / "traces" / "spans.jsonl"
    wanted = {"request chat.completions", "route", "request rag", "retrieval"}
    deadline = time.monotonic() + 15  # spans are written in batches, within a second
    while time.monotonic() < deadline:
        names = [s["name"] for s in read_spans(spans_file)] if spans_file.exists() else []
        if wanted <= set(names):
            break
        time.sleep(0.5)
    assert wanted <= set(names), names
    assert any(n.startswith("chat ") for n in names), names
    text = spans_file.read_text()
    assert EMAIL not in text and "jane.doe" not in text and "confirming the meeting" not in text
    assert "Eiffel" not in text
    assert EMAIL not in (served["run"] / "serve.log").read_text()


def test_bento_models_fails_visibly_before_the_router_exists(tmp_path, monkeypatch):
    """The asset runs `python -m serving.bundle` in a subprocess; its error reaches Dagster, no model made."""
    home = tmp_path / "bentoml"
    monkeypatch.setenv("BENTOML_HOME", str(home))
    resources = {"settings": SettingsResource(overrides={"run_dir": str(tmp_path / "run")})}
    result = dg.materialize(
        [bento_models], resources=resources, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )
    assert not result.success
    failure = result.failure_data_for_node("bento_models")
    assert failure is not None and "not a router artifact" in str(failure.error.message)
    assert not any((home / "models").glob("stratmaster-*/*"))


def test_a_fine_tuned_embedder_travels_inside_the_index_model(tmp_path, monkeypatch):
    import shutil

    from pipelines.index.embeddings import INT8_SUFFIX, get_embedder
    from pipelines.index.finetune import finetune_minilm, read_manifest
    from serving.bundle import snapshot_index

    pairs = [("how tall is the tower", "The Eiffel Tower in Paris is 330 metres tall."),
             ("when did the bridge open", "The Golden Gate Bridge opened in 1937.")]  # fmt: skip
    tuned = finetune_minilm(pairs, tmp_path / "ft", epochs=1, progress=False)
    settings = Settings(run_dir=tmp_path / "run", embedder=str(tuned))
    settings.run_dir.mkdir()
    _index(settings)
    home = tmp_path / "bentoml"
    monkeypatch.setenv("BENTOML_HOME", str(home))
    tag = snapshot_index(settings, home)
    name = read_manifest(tuned)["name"]
    shutil.rmtree(tuned)  # the folder it was trained into is gone: the model must carry its own copy

    path = home / "models" / tag.partition(":")[0] / tag.partition(":")[2]
    engines = json.loads((path / "engines.json").read_text())
    assert engines["embedder"] == "embedder" and read_manifest(path / "embedder")["name"] == name
    import yaml

    metadata = yaml.safe_load((path / "model.yaml").read_text())["metadata"]
    assert metadata["embedder"] == name + INT8_SUFFIX  # the model says what the vectors were made by
    embedder = get_embedder(str(path / "embedder"))
    assert embedder.precision == "int8" and embedder.embed(["how tall is the tower"]).shape == (1, 384)


def test_an_index_snapshot_waits_for_a_build_and_copies_the_chunks_of_one_commit(tmp_path, monkeypatch):
    """The snapshot copied the index folders and the store while a sensor's ingest or index build wrote
    them: it failed on files a commit removed (7 of 60 tries beside a keyword build), or could copy a
    manifest beside the chunk files of another commit."""
    import shutil
    import threading

    from pipelines.corpus.ingest import ingest_corpus, load_chunks
    from pipelines.corpus.store import LocalStore
    from pipelines.index.build import building
    from serving import bundle

    settings = Settings(run_dir=tmp_path / "run", embedder="static")
    settings.run_dir.mkdir()
    _index(settings)
    home = tmp_path / "bentoml"
    monkeypatch.setenv("BENTOML_HOME", str(home))
    docs = settings.run_dir / "docs"
    real, edited = shutil.copyfile, []

    def copy_while_an_ingest_commits(src, dst, *args, **kwargs):
        if "chunks" in str(src) and not edited:  # the first chunk file: another ingest commits, and sweeps
            for f in docs.iterdir():
                f.write_text(f.read_text() + " Edited since.")
            ingest_corpus(settings, str(docs))
            edited.append(1)
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(bundle.shutil, "copyfile", copy_while_an_ingest_commits)
    done: list[str] = []
    with building(settings.run_dir / "index", "keyword"):  # a keyword build is writing
        worker = threading.Thread(target=lambda: done.append(bundle.snapshot_index(settings, home)))
        worker.start()
        worker.join(timeout=3)
        assert worker.is_alive() and not done  # the snapshot waits for the build
    worker.join(timeout=120)
    assert done and edited
    tag = done[0]
    path = home / "models" / tag.partition(":")[0] / tag.partition(":")[2]
    copied = load_chunks(settings, LocalStore(path / "store"))
    assert copied["text"].str.endswith("Edited since.").all() and len(copied) == 2
    assert not (path / "store" / "utility").exists()  # nor the store's secret
    assert not (path / "store" / "corpus" / "names.key").exists()
