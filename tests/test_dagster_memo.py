"""What the Dagster assets' memos (pipelines/memo.py) see: a change of an input they copy into their output
must give a new fingerprint, else the asset keeps a stale output."""

from __future__ import annotations

from importlib import resources

import pandas as pd
import pytest

from pipelines.memo import source_digest


def test_source_digest_hashes_a_file_and_the_patterns_under_a_folder(tmp_path):
    code, notes = tmp_path / "report.py", tmp_path / "pkg" / "rules.yaml"
    notes.parent.mkdir()
    code.write_text("A = 1\n")
    notes.write_text("rules: []\n")
    file_digest, folder_digest = source_digest(code), source_digest(notes.parent, patterns=("*.py", "*.yaml"))
    code.write_text("A = 2\n")
    notes.write_text("rules: [x]\n")
    assert source_digest(code) != file_digest  # a file was once hashed as nothing at all: a constant
    assert source_digest(notes.parent, patterns=("*.py", "*.yaml")) != folder_digest
    with pytest.raises(FileNotFoundError):
        source_digest(tmp_path / "missing.py")


def test_names_and_contents_cannot_run_into_each_other(tmp_path):
    """Names and bytes were hashed back to back: {x.py: "A = 1\n", y.py: "B = 2\n"} hashed as {x.py:
    "A = 1\ny.pyB = 2\n"}, and a module moved to another package kept its digest."""
    from pipelines.memo import fingerprint

    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        d.mkdir()
    (one / "x.py").write_text("A = 1\n")
    (one / "y.py").write_text("B = 2\n")
    (two / "x.py").write_text("A = 1\ny.pyB = 2\n")
    assert source_digest(one) != source_digest(two) and fingerprint(one) != fingerprint(two)
    (two / "x.py").write_text("A = 1\n")
    (two / "y.py").write_text("B = 2\n")
    assert source_digest(one / "y.py") == source_digest(two / "y.py")  # a file: by its name and bytes
    assert source_digest(one) != source_digest(two)  # the same modules in another package


def test_a_forgotten_record_is_never_recalled(tmp_path):
    """An asset forgets its record before it overwrites outputs: a run that dies half way must not leave the
    old fingerprint vouching for new (or half-written) outputs."""
    from pipelines.memo import forget, recall, remember

    record = tmp_path / "fingerprint.json"
    remember(record, "fp1", summary="s.json")
    assert recall(record, "fp1") == {"summary": "s.json"} and recall(record, "fp2") is None
    forget(record)
    assert recall(record, "fp1") is None
    forget(record)  # no record: nothing to do


def test_the_router_memo_sees_a_model_turn_remote_in_the_catalog(tmp_path, monkeypatch):
    """train_router copies each model's privacy into the artifact: a catalog edit must retrain it, whether
    it comes from SM_CATALOG_PATH or from the Dagster resource's overrides (those were not read)."""
    from assets.resources import SettingsResource
    from assets.router import _router_inputs
    from pipelines.settings import Settings
    from router_models.router.rules import model_metadata

    outcomes = pd.DataFrame({"prompt_id": ["p1", "p1"], "model": ["smollm2-135m", "gemma3-270m"]})
    before = _router_inputs(outcomes, Settings())
    text = resources.files("pipelines.llm").joinpath("catalog.yaml").read_text()
    edited = text.replace("privacy: local", "privacy: remote", 1)
    assert edited != text
    (tmp_path / "catalog.yaml").write_text(edited)
    configured = SettingsResource(overrides={"catalog_path": str(tmp_path / "catalog.yaml")}).get()
    after = _router_inputs(outcomes, configured)
    assert after[2]["smollm2-135m"]["privacy"] == "remote" and after != before
    assert model_metadata(["smollm2-135m"], settings=configured)["smollm2-135m"].privacy == "remote"
    monkeypatch.setenv("SM_CATALOG_PATH", str(tmp_path / "catalog.yaml"))
    assert _router_inputs(outcomes, Settings()) == after


def test_a_fingerprint_ignores_hidden_editor_state(tmp_path):
    from pipelines.memo import fingerprint

    (tmp_path / "report.ipynb").write_text("{}")
    before = fingerprint(tmp_path), source_digest(tmp_path, patterns=("*.ipynb",))
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".ipynb_checkpoints" / "report-checkpoint.ipynb").write_text("{}")
    assert (fingerprint(tmp_path), source_digest(tmp_path, patterns=("*.ipynb",))) == before
    (tmp_path / "report.ipynb").write_text("{ }")
    assert fingerprint(tmp_path) != before[0]


def test_the_bundle_memo_ignores_settings_no_model_is_made_from(tmp_path):
    from assets.serving import _models_fingerprint
    from pipelines.settings import Settings

    base = _models_fingerprint(Settings(run_dir=tmp_path))
    assert base == _models_fingerprint(Settings(run_dir=tmp_path, lambda_cost=5, otel_sample_ratio=0.5))
    assert base != _models_fingerprint(Settings(run_dir=tmp_path, catalog_path=tmp_path / "catalog.yaml"))


def test_a_frame_with_list_cells_has_a_fingerprint_that_follows_its_content():
    """pandas cannot hash a list: the prompt set (RAG rows hold their contexts) failed its asset."""
    import pandas as pd

    from pipelines.memo import fingerprint

    frame = pd.DataFrame({"prompt_id": ["a", "b"], "contexts": [["x", "y"], []]})
    assert fingerprint(frame) == fingerprint(frame.copy())
    changed = frame.assign(contexts=[["x", "z"], []])
    assert fingerprint(changed) != fingerprint(frame)
