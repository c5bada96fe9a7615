"""Shared fixtures. Local model servers run for real on their own ports and run directory."""

from __future__ import annotations

import os
import random
import socket
import sys
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest

from pipelines.settings import REPO_ROOT, Settings

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _ephemeral_range() -> range:
    """The ports the kernel gives outgoing connections; a port from it can be taken between check and bind."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


POSTGRES_PORT = int(os.environ.get("SM_PG_PORT", "25432"))  # scripts/postgres.sh's


def free_ports(n: int = 1) -> int:
    """A base port p with p..p+n-1 free for a server to listen on, chosen outside the kernel's ephemeral
    range where the host leaves room for that: a port from it, free when checked, can become an outgoing
    connection's before the server binds it (CI lost a llama-server start to that). Else any free ports."""
    ephemeral, rng = _ephemeral_range(), random.Random()
    outside = [p for p in range(10000, 65536 - n) if p + n <= ephemeral.start or p >= ephemeral.stop]
    outside = [p for p in outside if not p <= POSTGRES_PORT < p + n]
    for _ in range(200 if outside else 0):
        p = rng.choice(outside)
        if all(_bindable(q) for q in range(p, p + n)):
            return p
    for _ in range(200):  # no room outside it: ports the kernel picks, as before
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p + n <= 65536 and all(_bindable(q) for q in range(p, p + n)):
            return p
    raise RuntimeError(f"no {n} consecutive free ports")


def free_port_pair() -> int:
    """A base port p with p and p+1 both free: the two local model servers' ports."""
    return free_ports(2)


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def model_settings(tmp_path_factory) -> Settings:
    return Settings(
        run_dir=tmp_path_factory.mktemp("run"),
        model_cache_dir=REPO_ROOT / "runs" / "models",
        local_base_port=free_port_pair(),
        request_timeout_s=30,
        local_ready_timeout_s=90,
    )


@pytest.fixture(scope="session")
def local_servers(model_settings):
    """Both local llama.cpp servers, started once per session and stopped at the end."""
    from pipelines.llm import servers
    from pipelines.llm.catalog import load_catalog

    catalog = load_catalog(model_settings)
    for e in catalog.local():
        servers.start(e, model_settings)
    yield catalog
    for e in catalog.local():
        servers.stop(e, model_settings)


@pytest.fixture(scope="session")
def gateway(model_settings, local_servers):
    from pipelines.llm.gateway import Gateway

    return Gateway(model_settings, local_servers)


@pytest.fixture(autouse=True)
def _reset_dagster_defs_state_storage():
    """Dagster keeps the current defs-state storage in a ContextVar; a schedule or sensor evaluated under
    `instance_for_test()` can leave it pointing at that (closed) instance, and the next test that builds
    Definitions fails with "undefined DagsterInstance weakref". Clear it after every test."""
    yield
    if "dagster" in sys.modules:
        from dagster._core.storage.defs_state.base import _current_storage

        _current_storage.set(None)
