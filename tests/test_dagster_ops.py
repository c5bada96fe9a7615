"""Operations in Dagster: the new-documents sensor on a real DagsterInstance, the schedules and jobs, every
asset check in the definitions, and `deploy/dagster.yaml` against a real PostgreSQL."""

import functools
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import pytest

from assets import definitions, schedules, sensors
from assets.resources import SettingsResource
from assets.sensors import new_documents_sensor
from pipelines.settings import REPO_ROOT, Settings


@functools.cache
def _full_defs() -> dg.Definitions:
    """`assets.defs` plus this feature's schedules and sensor where definitions.py does not wire them yet."""
    defs = definitions.defs
    have = {s.name for s in defs.schedules or []} | {s.name for s in defs.sensors or []}
    extra = dg.Definitions(
        schedules=[s for s in schedules.SCHEDULES if s.name not in have],
        sensors=[s for s in sensors.SENSORS if s.name not in have],
    )
    full = dg.Definitions.merge(defs, extra)
    # resolve under a live instance: a sensor or schedule tick evaluated earlier in the session can leave
    # Dagster's current defs-state storage pointing at an instance that is gone
    with dg.instance_for_test():
        full.get_repository_def()
    return full


def _tick(instance, folder: Path, cursor: str | None):
    ctx = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={
            "settings": SettingsResource(overrides={"corpus_dir": str(folder), "run_dir": str(folder.parent)})
        },
    )
    return new_documents_sensor.evaluate_tick(ctx)


# -- the new-documents sensor ------------------------------------------------------------------------------


def test_new_documents_sensor_requests_a_reindex_only_when_content_changes(tmp_path):
    docs = tmp_path / "docs"
    with dg.instance_for_test() as instance:
        missing = _tick(instance, docs, None)
        assert not missing.run_requests and "does not exist" in missing.skip_message

        docs.mkdir()
        (docs / "a.md").write_text("# Alpha\n\nFirst document.")
        (docs / "b.txt").write_text("Second document.")
        for f in ("a.md", "b.txt"):  # saved a while ago: a file hashed in the tick of its mtime is read again
            os.utime(docs / f, ns=(time.time_ns() - 10**10, time.time_ns() - 10**10))
        first = _tick(instance, docs, None)
        assert len(first.run_requests) == 1 and first.run_requests[0].tags["stratmaster/added"] == "2"

        unchanged = _tick(instance, docs, first.cursor)
        assert unchanged.run_requests == [] and "no document changed" in unchanged.skip_message
        assert unchanged.cursor == first.cursor

        # a touch moves the mtime only: no run, but the cursor learns the new mtime
        st = (docs / "a.md").stat()
        os.utime(docs / "a.md", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
        touched = _tick(instance, docs, unchanged.cursor)
        assert touched.run_requests == [] and touched.cursor != unchanged.cursor

        (docs / "sub").mkdir()
        (docs / "sub" / "c.md").write_text("# Gamma\n\nA new document in a subfolder.")
        (docs / ".hidden").write_text("editor state, not a document")
        (docs / ".git").mkdir()
        (docs / ".git" / "description").write_text("a repository folder, not a document")
        added = _tick(instance, docs, touched.cursor)
        (req,) = added.run_requests
        assert req.tags["stratmaster/added"] == "1" and "sub/c.md" in req.tags["stratmaster/changes"]
        assert req.run_key != first.run_requests[0].run_key

        (docs / "b.txt").write_text("Second document, revised.")
        changed = _tick(instance, docs, added.cursor)
        (req,) = changed.run_requests
        assert req.tags["stratmaster/changed"] == "1" and req.tags["stratmaster/added"] == "0"

        (docs / "a.md").unlink()
        removed = _tick(instance, docs, changed.cursor)
        assert removed.run_requests[0].tags["stratmaster/removed"] == "1"
        assert _tick(instance, docs, removed.cursor).run_requests == []

        # a cursor for another source is no baseline: the new source is scanned as new
        other = tmp_path / "other"
        other.mkdir()
        (other / "d.md").write_text("Delta.")
        assert _tick(instance, other, removed.cursor).run_requests[0].tags["stratmaster/added"] == "1"


def test_a_document_moved_out_and_back_is_reindexed(tmp_path):
    """Dagster never launches a run key twice: a corpus back in an earlier state gave that state's key."""
    docs, parked = tmp_path / "docs", tmp_path / "parked"
    docs.mkdir(), parked.mkdir()
    (docs / "a.md").write_text("Alpha.")
    (docs / "b.md").write_text("Beta.")
    with dg.instance_for_test() as instance:
        first = _tick(instance, docs, None)
        os.replace(docs / "b.md", parked / "b.md")  # mv keeps the size and mtime
        out = _tick(instance, docs, first.cursor)
        os.replace(parked / "b.md", docs / "b.md")
        back = _tick(instance, docs, out.cursor)
        assert back.run_requests[0].tags["stratmaster/added"] == "1"
        keys = [t.run_requests[0].run_key for t in (first, out, back)]
        assert len(set(keys)) == 3
        assert _tick(instance, docs, back.cursor).run_requests == []


def test_the_sensor_watches_only_the_corpus_file_of_a_beir_folder(tmp_path):
    beir = tmp_path / "beir"
    beir.mkdir()
    (beir / "corpus.jsonl").write_text('{"_id": "d1", "title": "T", "text": "A claim."}\n')
    (beir / "queries.jsonl").write_text('{"_id": "q1", "text": "Is it?"}\n')
    with dg.instance_for_test() as instance:
        first = _tick(instance, beir, None)
        (beir / "queries.jsonl").write_text('{"_id": "q1", "text": "Is it, really?"}\n')  # ingest ignores it
        assert _tick(instance, beir, first.cursor).run_requests == []
        (beir / "corpus.jsonl").write_text('{"_id": "d1", "title": "T", "text": "A revised claim."}\n')
        assert _tick(instance, beir, first.cursor).run_requests[0].tags["stratmaster/changed"] == "1"


def test_the_sensor_watches_every_file_beside_a_corpus_jsonl_with_no_queries(tmp_path):
    """Ingest reads a folder as BEIR only with its queries or qrels beside corpus.jsonl; the sensor, watching
    corpus.jsonl alone, missed an edit of any other file there."""
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "A claim."}\n')
    (tmp_path / "notes.md").write_text("# Notes\n\nFirst.")
    with dg.instance_for_test() as instance:
        first = _tick(instance, tmp_path, None)
        (tmp_path / "notes.md").write_text("# Notes\n\nSecond.")
        assert _tick(instance, tmp_path, first.cursor).run_requests[0].tags["stratmaster/changed"] == "1"


def test_the_sensor_keeps_no_file_name_that_may_hold_pii(tmp_path):
    """The cursor (in Dagster's storage) and the run tags held every file name as it was."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "plain.md").write_text("Alpha.")
    with dg.instance_for_test() as instance:
        first = _tick(instance, docs, None)
        (docs / "jane.doe@example.com.md").write_text("Beta.")
        added = _tick(instance, docs, first.cursor)
        (req,) = added.run_requests
        assert req.tags["stratmaster/added"] == "1" and "1 withheld" in req.tags["stratmaster/changes"]
        assert "jane.doe" not in added.cursor + json.dumps(req.tags) and "plain.md" in added.cursor
        (docs / "jane.doe@example.com.md").write_text("Beta, revised.")
        assert _tick(instance, docs, added.cursor).run_requests[0].tags["stratmaster/changed"] == "1"
        old_cursor = json.dumps({"source": str(docs), "files": {"plain.md": [6, 0, "x"]}})  # before v2
        assert _tick(instance, docs, old_cursor).run_requests[0].tags["stratmaster/changes"] == "first scan"


def test_a_source_switched_away_and_back_is_indexed_again(tmp_path):
    """The run count restarted with each source, so A -> B -> A gave A's first run key again, which Dagster
    drops: the indexes kept B's documents while the sensor watched A."""
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        (folder / "doc.md").write_text(f"# {folder.name}")
    with dg.instance_for_test() as instance:
        keys, cursor = [], None
        for folder in (a, b, a):
            tick = _tick(instance, folder, cursor)
            keys.append(tick.run_requests[0].run_key)
            cursor = tick.cursor
    assert len(set(keys)) == 3


def test_with_an_ner_model_the_sensor_shows_only_names_ingest_would_not_redact(tmp_path):
    """The sensor asked the blank model whatever SM_PII_SPACY_MODEL said: with an NER model, ingest redacted
    "Jane Smith medical history.md" while the sensor put it in run tags, logs and its cursor."""
    from assets.sensors import scan_folder

    (tmp_path / "Jane Smith medical history.md").write_text("Notes.")
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "A claim."}\n')
    shown = {fp[3] for fp in scan_folder(tmp_path, {}, b"key", "en_core_web_sm").values()}
    assert shown == {"", "corpus.jsonl"}  # BEIR's fixed name stays, so the sensor still knows the layout
    assert "Jane Smith medical history.md" in {fp[3] for fp in scan_folder(tmp_path, {}, b"key").values()}


def test_a_file_name_that_is_not_utf8_reaches_the_run_tags_readable(tmp_path):
    """The sensor put such a name's raw bytes (lone surrogates) into its run tags: Dagster could not store
    the run it asked for. Ingest shows such a name with U+FFFD; the sensor now does too."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "ok.txt").write_text("fine")
    with dg.instance_for_test() as instance:
        first = _tick(instance, docs, None)
        Path(os.fsdecode(os.fsencode(docs) + b"/r\xe9sum\xe9 notes.txt")).write_text("Latin-1 named file.")
        (req,) = _tick(instance, docs, first.cursor).run_requests
        assert "r\ufffdsum\ufffd notes.txt" in req.tags["stratmaster/changes"], req.tags

        @dg.asset
        def noop():
            return 1

        assert dg.materialize([noop], instance=instance, tags=req.tags).success  # the run is stored


def test_new_documents_sensor_watches_the_demo_corpus_without_corpus_dir(tmp_path):
    (tmp_path / "demo_corpus").mkdir()
    (tmp_path / "demo_corpus" / "topic.md").write_text("# Python reference: topic")
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(
            instance=instance, resources={"settings": SettingsResource(overrides={"run_dir": str(tmp_path)})}
        )
        (req,) = new_documents_sensor.evaluate_tick(ctx).run_requests
    assert req.tags["stratmaster/corpus"] == str(tmp_path / "demo_corpus")


def test_without_corpus_dir_the_corpus_is_every_python_reference_topic_in_the_run_folder(tmp_path):
    from pydoc_data.topics import topics

    from assets.rag import corpus_source

    source = corpus_source(Settings(run_dir=tmp_path))
    assert source == str(tmp_path / "demo_corpus") and len(list(Path(source).glob("*.md"))) == len(topics)
    assert corpus_source(Settings(run_dir=tmp_path, corpus_dir="s3://bucket/docs")) == "s3://bucket/docs"


# -- schedules, jobs, checks -------------------------------------------------------------------------------


def test_schedules_and_sensor_target_the_right_asset_groups():
    defs = _full_defs()
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    by_group: dict[str, set[str]] = {}
    for key in graph.get_all_asset_keys():
        by_group.setdefault(graph.get(key).group_name, set()).add(key.to_user_string())

    names = {s.name for s in defs.schedules}
    assert {"nightly_bench_schedule", "nightly_refit_schedule", "weekly_reindex_schedule"} <= names
    assert "new_documents_sensor" in {s.name for s in defs.sensors}

    def job_assets(name: str) -> set[str]:
        return {k.to_user_string() for k in defs.resolve_job_def(name).asset_layer.executable_asset_keys}

    refit = job_assets(defs.resolve_schedule_def("nightly_refit_schedule").job_name)
    assert refit == by_group["utility"] | by_group["router"]
    assert {"utility_posterior", "router", "router_evaluation"} <= refit
    reindex = job_assets(defs.resolve_schedule_def("weekly_reindex_schedule").job_name)
    assert reindex == by_group["corpus"] | by_group["indexes"]
    on_new_documents = job_assets(defs.resolve_sensor_def("new_documents_sensor").job_name)
    assert on_new_documents == {"corpus_chunks", "keyword_index", "dense_index", "knowledge_graph"}
    assert on_new_documents <= reindex

    # the refit runs after the nightly bench, the re-index once a week
    bench_hour = int(defs.resolve_schedule_def("nightly_bench_schedule").cron_schedule.split()[1])
    refit_cron = defs.resolve_schedule_def("nightly_refit_schedule").cron_schedule.split()
    assert int(refit_cron[1]) > bench_hour and refit_cron[2:] == ["*", "*", "*"]
    assert defs.resolve_schedule_def("weekly_reindex_schedule").cron_schedule.split()[4] != "*"


def test_schedule_ticks_request_one_run_of_their_job():
    with dg.instance_for_test() as instance:
        for sched in schedules.SCHEDULES:
            ctx = dg.build_schedule_context(
                instance=instance, scheduled_execution_time=datetime(2026, 11, 29, tzinfo=UTC)
            )
            data = sched.evaluate_tick(ctx)
            assert len(data.run_requests) == 1, sched.name


def test_every_declared_asset_check_is_in_the_definitions():
    """Each check spec on an asset and each @asset_check in the asset modules reaches the Definitions."""
    declared = set()
    for module in definitions.MODULES:
        for obj in vars(module).values():
            if isinstance(obj, dg.AssetsDefinition | dg.AssetChecksDefinition):
                declared |= set(obj.check_keys)
    graph = _full_defs().resolve_asset_graph()
    assert declared and declared == set(graph.asset_check_keys)
    assert {k.asset_key for k in declared} <= set(graph.get_all_asset_keys())
    names = {k.name for k in declared}
    assert {"every_local_model_answers", "beats_best_single_model", "r_hat", "partition_not_empty"} <= names


# -- deploy/dagster.yaml against a real PostgreSQL ---------------------------------------------------------


def _accepts(url: str) -> bool:
    u = urlsplit(url)
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((u.hostname or "127.0.0.1", u.port or 5432)) == 0


@pytest.fixture(scope="module")
def postgres_server_url():
    """SM_TEST_POSTGRES_URL (CI sets it), else the server of scripts/postgres.sh, started and stopped here."""
    url = os.environ.get("SM_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    started = False
    url = "postgresql+psycopg://postgres@127.0.0.1:" + os.environ.get("SM_PG_PORT", "25432") + "/postgres"
    if not _accepts(url):
        proc = subprocess.run(["bash", "scripts/postgres.sh", "start"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        if proc.returncode != 0 or not proc.stdout.strip():
            pytest.skip("SM_TEST_POSTGRES_URL is unset and scripts/postgres.sh could not start PostgreSQL: "
                        + (proc.stderr.strip().splitlines() or ["no output"])[-1])  # fmt: skip
        url, started = proc.stdout.strip().splitlines()[-1], True
    yield url
    if started:
        subprocess.run(["bash", "scripts/postgres.sh", "stop"], cwd=REPO_ROOT, timeout=120, check=False)


@pytest.fixture
def dagster_database(postgres_server_url):
    """A fresh database for Dagster's tables; its libpq URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(postgres_server_url).set(drivername="postgresql")
    name = f"sm_dagster_{uuid.uuid4().hex[:10]}"
    admin_dsn = admin.render_as_string(hide_password=False)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield admin.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_deploy_dagster_yaml_keeps_runs_and_events_in_postgres(dagster_database, tmp_path, monkeypatch,
                                                               shared_data):  # fmt: skip
    import psycopg
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    from assets.utility import leaderboard_priors

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    # dagster-postgres LISTEN/NOTIFY needs psycopg2; SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3
    monkeypatch.setenv(
        "DAGSTER_PG_URL", dagster_database.replace("postgresql://", "postgresql+psycopg2://", 1)
    )
    resources = {"settings": SettingsResource(overrides={"run_dir": str(tmp_path / "run")})}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        result = dg.materialize([leaderboard_priors], instance=instance, resources=resources)
        assert result.success

    # a second instance (a new process would do the same) reads the run and its events back
    with dg.DagsterInstance.from_config(str(home)) as again:
        run = again.get_run_by_id(result.run_id)
        assert run is not None and run.is_success
        event = again.get_latest_materialization_event(dg.AssetKey("leaderboard_priors"))
        assert event is not None and event.run_id == result.run_id
        assert event.asset_materialization.metadata["models"].value >= 2

    with psycopg.connect(dagster_database) as conn:
        status = conn.execute("SELECT status FROM runs WHERE run_id = %s", (result.run_id,)).fetchone()
        sql = "SELECT dagster_event_type, count(*) FROM event_logs WHERE run_id = %s GROUP BY 1"
        kinds = dict(conn.execute(sql, (result.run_id,)).fetchall())
        schedule_tables = conn.execute(
            "SELECT to_regclass('instigators'), to_regclass('job_ticks')"
        ).fetchone()
    assert status == ("SUCCESS",)
    assert kinds["ASSET_MATERIALIZATION"] == 1 and kinds["STEP_SUCCESS"] == 1
    assert (
        kinds.get("PIPELINE_SUCCESS", kinds.get("RUN_SUCCESS")) == 1
    )  # the run's end, under its stored name
    assert all(schedule_tables)


def test_a_same_size_edit_in_the_time_stamp_tick_of_a_scan_is_seen(tmp_path):
    """A file whose size and mtime matched the last scan kept its hash unread, even where that scan hashed it
    in the tick of its mtime: on a file system of 1 s or 2 s time stamps, a correction of the same size saved
    in that second was never seen (no run, on that tick or any later one)."""
    from assets.sensors import diff, scan_folder

    doc = tmp_path / "q3-report.md"

    def save(text: str, second: int) -> None:  # what a file system of 1 s time stamps records
        doc.write_text(text)
        os.utime(doc, ns=(second * 10**9, second * 10**9))

    now = int(time.time()) + 1  # the scans below fall in its tick unless they stall for 2 s (not 1-2 s)
    save("Revenue: 100", now)
    first = scan_folder(tmp_path, {}, b"key")
    save("Revenue: 900", now)
    second = scan_folder(tmp_path, first, b"key")
    assert diff(first, second).changed == ["q3-report.md"]
    save("Revenue: 900", now - 10)  # an mtime well before the scan: the hash it took is kept, unread
    third = scan_folder(tmp_path, second, b"key")
    assert scan_folder(tmp_path, third, b"key") == third
