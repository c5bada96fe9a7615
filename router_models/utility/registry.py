"""The model registry table (SQLAlchemy): one row per (task, model, fit_id), and a current-fit pointer.

A fit is written in one transaction (its rows, its fit record, the pointer switch), so a reader sees the
old fit or the new one, never half of either, and a failed write leaves the last good fit current.
SQLite by default (`Settings().registry_sqlalchemy_url`), Postgres by URL.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from pipelines.memo import source_digest

metadata = sa.MetaData()
POINTER = "utility"

fits = sa.Table(
    "utility_fits", metadata,
    sa.Column("fit_id", sa.String(64), primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("data_version", sa.String(64), nullable=False),
    sa.Column("code_version", sa.String(64), nullable=False),
    sa.Column("fit_hash", sa.String(64)),
    sa.Column("n_rows", sa.Integer, nullable=False),
    sa.Column("diagnostics", sa.Text),
)  # fmt: skip

SUMMARY_COLUMNS = [
    f"{name}_{stat}" for name in ("quality", "cost_usd", "latency_s", "utility")
    for stat in ("mean", "sd", "p05", "p95")
]  # fmt: skip
REQUIRED = {"quality_mean", "quality_p05", "quality_p95", "utility_mean"}

rows = sa.Table(
    "utility_registry", metadata,
    sa.Column("fit_id", sa.String(64), sa.ForeignKey("utility_fits.fit_id"), primary_key=True),
    sa.Column("task", sa.String(200), primary_key=True),
    sa.Column("model", sa.String(200), primary_key=True),
    *[sa.Column(c, sa.Float, nullable=c not in REQUIRED) for c in SUMMARY_COLUMNS],
    sa.Column("latency_in_utility", sa.Boolean, nullable=False),
    sa.Column("n_obs", sa.Integer),
    sa.Column("data_version", sa.String(64), nullable=False),
    sa.Column("code_version", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)  # fmt: skip

current = sa.Table(
    "utility_current_fit", metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("fit_id", sa.String(64), sa.ForeignKey("utility_fits.fit_id"), nullable=False),
)  # fmt: skip


def code_version() -> str:
    """A hash of this package's source and prior snapshot: changes whenever the model code does."""
    return f"utility-{source_digest(Path(__file__).parent, patterns=('*.py', '*.csv'))}"


REGISTRY_LOCK_KEY = 0x53_4D_52_45_47  # "SMREG": the advisory lock creating the registry's tables takes


def registry_engine(url: str | None = None) -> sa.Engine:
    """An engine on `url` (default: the settings' registry URL) with the tables created."""
    if url is None:
        from pipelines.settings import Settings

        url = Settings().registry_sqlalchemy_url
    for scheme in ("postgresql://", "postgres://"):  # the second is Heroku's and libpq's other spelling
        if url.startswith(scheme):
            url = "postgresql+psycopg://" + url.removeprefix(scheme)
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # readers do not block on the writer in WAL mode
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA busy_timeout=30000")  # first: switching a new file to WAL waits on the others
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    if engine.dialect.name == "postgresql":
        # first writers at once: the loser of two CREATE TABLEs fails on pg_type's unique index, an error no
        # retry can tell from a real one; a transaction-scoped lock makes the creators take turns
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": REGISTRY_LOCK_KEY})
            metadata.create_all(conn)
        return engine
    for attempt in range(8):
        try:
            metadata.create_all(engine)
            break
        except sa.exc.OperationalError as e:
            # first writers of a new file: another created a table since our check, or holds the lock our
            # read-then-create would upgrade (SQLite answers that at once, without waiting): try again
            if attempt == 7 or not ("already exists" in str(e) or "database is locked" in str(e)):
                raise
            time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))
    return engine


def _clean(v):
    if isinstance(v, np.generic):
        v = v.item()
    return None if isinstance(v, float) and np.isnan(v) else v


def write_fit(
    engine: sa.Engine,
    summary: pd.DataFrame,
    data_version: str,
    code_version_: str | None = None,
    diagnostics: dict | None = None,
    fit_hash: str | None = None,
    fit_id: str | None = None,
) -> str:
    """Record a fit's summary (`UtilityPosterior.summary()` plus optional n_obs) and make it current."""
    fit_id = fit_id or uuid.uuid4().hex
    code_version_ = code_version_ or code_version()
    now = datetime.now(UTC)
    records = []
    for rec in summary.to_dict("records"):
        row = {c: _clean(rec.get(c)) for c in SUMMARY_COLUMNS}
        row.update(fit_id=fit_id, task=rec["task"], model=rec["model"], n_obs=_clean(rec.get("n_obs")),
                   latency_in_utility=bool(rec.get("latency_in_utility", False)),
                   data_version=data_version, code_version=code_version_, created_at=now)  # fmt: skip
        records.append(row)
    with engine.begin() as conn:  # one transaction: all of it or none of it
        conn.execute(fits.insert().values(
            fit_id=fit_id, created_at=now, data_version=data_version, code_version=code_version_,
            fit_hash=fit_hash, n_rows=len(records), diagnostics=json.dumps(diagnostics or {}, default=float),
        ))  # fmt: skip
        if records:
            conn.execute(rows.insert(), records)
        _point_to(conn, fit_id)
    return fit_id


def _point_to(conn: sa.Connection, fit_id: str) -> None:
    """Make `fit_id` current: an upsert on PostgreSQL and SQLite (two first writers at once both found no
    pointer to update, both inserted it, and the second's fit was rolled back on the key)."""
    name = conn.dialect.name
    if name in ("postgresql", "sqlite"):
        from sqlalchemy.dialects.postgresql import insert as pg_insert
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        ins = (pg_insert if name == "postgresql" else sqlite_insert)(current).values(
            name=POINTER, fit_id=fit_id
        )
        conn.execute(ins.on_conflict_do_update(index_elements=[current.c.name], set_={"fit_id": fit_id}))
        return
    updated = conn.execute(current.update().where(current.c.name == POINTER).values(fit_id=fit_id))
    if updated.rowcount == 0:
        conn.execute(current.insert().values(name=POINTER, fit_id=fit_id))


def current_fit_id(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        return conn.execute(sa.select(current.c.fit_id).where(current.c.name == POINTER)).scalar()


def read_current(engine: sa.Engine) -> pd.DataFrame:
    """The current fit's rows, read in one statement (a consistent snapshot); empty if none yet."""
    q = (
        sa.select(rows)
        .join(current, sa.and_(current.c.fit_id == rows.c.fit_id, current.c.name == POINTER))
        .order_by(rows.c.task, rows.c.model)
    )
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(q).mappings().all(), columns=[c.name for c in rows.columns])


def list_fits(engine: sa.Engine) -> pd.DataFrame:
    with engine.connect() as conn:
        res = conn.execute(sa.select(fits).order_by(fits.c.created_at))
        return pd.DataFrame(res.mappings().all(), columns=[c.name for c in fits.columns])
