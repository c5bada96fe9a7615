"""The registry table: atomic replacement, failed writes, concurrent readers; SQLite and PostgreSQL."""

from __future__ import annotations

import os
import threading
import uuid

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from router_models.utility import registry as reg

TASKS = [f"t{i}" for i in range(10)]
MODELS = [f"m{i}" for i in range(13)]


def fake_summary(level: float, tasks=TASKS, models=MODELS) -> pd.DataFrame:
    """A summary whose every quality_mean equals `level`, so a mixed read would show two levels."""
    idx = pd.MultiIndex.from_product([tasks, models], names=["task", "model"]).to_frame(index=False)
    for name in ("quality", "cost_usd", "utility"):
        for stat in ("mean", "sd", "p05", "p95"):
            idx[f"{name}_{stat}"] = level
    for stat in ("mean", "sd", "p05", "p95"):
        idx[f"latency_s_{stat}"] = np.nan
    idx["latency_in_utility"] = False
    idx["n_obs"] = 100
    return idx


@pytest.fixture
def sqlite_engine(tmp_path):
    engine = reg.registry_engine(f"sqlite:///{tmp_path / 'registry.sqlite'}")
    yield engine
    engine.dispose()


def _atomic_replacement(engine: sa.Engine) -> None:
    first = reg.write_fit(engine, fake_summary(0.1), "data-a", diagnostics={"r_hat_max": 1.0})
    cur = reg.read_current(engine)
    assert len(cur) == 130 and set(cur["fit_id"]) == {first} and (cur["quality_mean"] == 0.1).all()
    assert cur["latency_s_mean"].isna().all() and (cur["data_version"] == "data-a").all()
    assert cur["code_version"].iloc[0] == reg.code_version()

    bad = fake_summary(0.2)
    bad.loc[len(bad) - 1, "quality_mean"] = np.nan  # the last row fails NOT NULL, mid-write
    bad_id = uuid.uuid4().hex
    with pytest.raises(sa.exc.IntegrityError):
        reg.write_fit(engine, bad, "data-b", fit_id=bad_id)
    cur = reg.read_current(engine)
    assert set(cur["fit_id"]) == {first} and len(cur) == 130  # the last good fit is still readable
    with engine.connect() as conn:  # and nothing of the failed fit was left behind
        n_bad = conn.execute(sa.select(sa.func.count()).where(reg.rows.c.fit_id == bad_id)).scalar()
    assert n_bad == 0 and bad_id not in set(reg.list_fits(engine)["fit_id"])

    second = reg.write_fit(engine, fake_summary(0.3), "data-c")
    cur = reg.read_current(engine)
    assert set(cur["fit_id"]) == {second} and (cur["quality_mean"] == 0.3).all()
    assert reg.current_fit_id(engine) == second


def test_sqlite_atomic_replacement_and_failed_write(sqlite_engine):
    _atomic_replacement(sqlite_engine)


def test_reader_sees_the_old_or_the_new_fit_never_half(tmp_path):
    url = f"sqlite:///{tmp_path / 'concurrent.sqlite'}"
    writer_engine, reader_engine = reg.registry_engine(url), reg.registry_engine(url)
    reg.write_fit(writer_engine, fake_summary(0.0), "v0")
    errors: list[BaseException] = []
    done = threading.Event()

    def write():
        try:
            for i in range(1, 16):
                reg.write_fit(writer_engine, fake_summary(float(i)), f"v{i}")
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            done.set()

    th = threading.Thread(target=write)
    th.start()
    seen = set()
    while not done.is_set() or len(seen) < 2:
        cur = reg.read_current(reader_engine)
        assert len(cur) == 130, len(cur)
        assert cur["fit_id"].nunique() == 1 and cur["quality_mean"].nunique() == 1
        seen.add(float(cur["quality_mean"].iloc[0]))
        if done.is_set():
            break
    th.join()
    assert not errors
    assert float(reg.read_current(reader_engine)["quality_mean"].iloc[0]) == 15.0
    assert len(reg.list_fits(reader_engine)) == 16
    writer_engine.dispose()
    reader_engine.dispose()


def test_default_url_is_sqlite_in_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SM_RUN_DIR", str(tmp_path / "run"))
    engine = reg.registry_engine()
    assert engine.dialect.name == "sqlite" and (tmp_path / "run" / "registry.sqlite").exists()
    assert reg.read_current(engine).empty and reg.current_fit_id(engine) is None
    engine.dispose()


@pytest.mark.skipif(
    not os.environ.get("SM_TEST_POSTGRES_URL"),
    reason="SM_TEST_POSTGRES_URL is unset: no PostgreSQL server to test the registry against "
    "(.ci/run starts one and sets it)",
)
def test_postgres_atomic_replacement_and_failed_write():
    engine = reg.registry_engine(os.environ["SM_TEST_POSTGRES_URL"])
    assert engine.dialect.name == "postgresql"
    try:
        _atomic_replacement(engine)
    finally:
        engine.dispose()


@pytest.mark.skipif(
    not os.environ.get("SM_TEST_POSTGRES_URL"),
    reason="SM_TEST_POSTGRES_URL is unset: no PostgreSQL server to test the registry against "
    "(.ci/run starts one and sets it)",
)
def test_postgres_first_writers_at_once_all_land():
    """Two first writers both found no current-fit pointer to update and both inserted one: the second hit
    the primary key and its whole fit was rolled back (2-3 of 6 writers at once; this test failed 3 runs
    of 4 before the upsert)."""
    url = os.environ["SM_TEST_POSTGRES_URL"]
    engine = reg.registry_engine(url)
    with engine.begin() as conn:
        conn.execute(reg.current.delete())  # no current fit yet
    start, ids, errors = threading.Barrier(6), [], []

    def write() -> None:
        mine = reg.registry_engine(url)
        start.wait()
        try:
            ids.append(reg.write_fit(mine, fake_summary(0.5, TASKS[:1], MODELS[:1]), "data-x"))
        except Exception as e:  # noqa: BLE001 - the failure is what the test counts
            errors.append(e)
        finally:
            mine.dispose()

    threads = [threading.Thread(target=write) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors and len(ids) == 6 and reg.current_fit_id(engine) in ids
    finally:
        engine.dispose()


def _first_writer(url: str, barrier) -> str:
    barrier.wait()
    try:
        reg.registry_engine(url).dispose()
        return "ok"
    except Exception as e:
        return type(e).__name__


def test_first_writers_racing_to_create_a_fresh_sqlite_registry_all_succeed(tmp_path):
    """Two processes that open a registry file no one has made yet both saw no tables and both created them:
    the second failed with `table utility_fits already exists` (19 of 32 writers, 4 at a time)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("fork")
    with ProcessPoolExecutor(4, mp_context=ctx) as pool, ctx.Manager() as manager:
        for trial in range(4):
            url = f"sqlite:///{tmp_path}/race{trial}.sqlite"
            barrier = manager.Barrier(4)
            assert list(pool.map(_first_writer, [url] * 4, [barrier] * 4)) == ["ok"] * 4


def _fresh_schema_url(url: str) -> str:
    """`url` with a new, empty schema first on its search path: a registry no one has created yet."""
    schema = f"race_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    admin.dispose()
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


@pytest.mark.skipif(
    not os.environ.get("SM_TEST_POSTGRES_URL"),
    reason="SM_TEST_POSTGRES_URL is unset: no PostgreSQL server to test the registry against "
    "(.ci/run starts one and sets it)",
)
def test_first_writers_racing_to_create_a_fresh_postgres_registry_all_succeed():
    """On PostgreSQL the loser of two CREATE TABLEs fails with a UniqueViolation on pg_type, not the
    'already exists' the SQLite retry waits for (2-3 of 4 processes failed in each of 4 trials)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("fork")
    with ProcessPoolExecutor(4, mp_context=ctx) as pool, ctx.Manager() as manager:
        for _ in range(3):
            url = _fresh_schema_url(os.environ["SM_TEST_POSTGRES_URL"])
            barrier = manager.Barrier(4)
            assert list(pool.map(_first_writer, [url] * 4, [barrier] * 4)) == ["ok"] * 4
    engine = reg.registry_engine(url.replace("postgresql+psycopg://", "postgres://"))  # Heroku's scheme
    assert engine.dialect.name == "postgresql" and reg.read_current(engine).empty
    engine.dispose()
