"""Local llama.cpp servers: start, stop and a truthful status.

The engine is llama.cpp's own `llama-server` (built by `make setup`, `pipelines.llm.native`): it serves
`local_parallel` requests at once, decoding them together. A catalog entry that names a llama-cpp-python chat
format gives llama-server the same format as a Jinja template (`chat_template`; Gemma's `snoozy.jinja`) and
its stop strings go with every request (pipelines.llm.gateway); an entry with a chat format and no template,
or a machine without the binary, gets llama-cpp-python's server, which answers one request at a time.

Each server runs in its own session (it outlives the CLI that started it); its PID file, port and log live
under `<run_dir>/servers/`. A PID file whose process is gone, or now belongs to another program, is stale and
is removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from pipelines.files import held
from pipelines.llm import native
from pipelines.llm.catalog import ModelEntry
from pipelines.llm.weights import weights_path
from pipelines.settings import Settings


class ServerError(RuntimeError):
    pass


@dataclass
class ServerStatus:
    name: str
    state: str  # up | down | starting | moved (alive on another port than the settings give it now)
    port: int
    pid: int | None
    detail: str = ""


def _files(entry: ModelEntry, settings: Settings) -> tuple[Path, Path]:
    d = settings.servers_dir
    return d / f"{entry.name}.pid", d / f"{entry.name}.log"


def port_of(entry: ModelEntry, settings: Settings) -> int:
    assert entry.local is not None, f"{entry.name} is not a local model"
    return settings.local_base_port + entry.local.port_offset


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat(pid)
    return bool(fields) and fields[0] != "Z"  # a zombie child counts as gone


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name (state first), or [] when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot): with the PID, it names one process for good."""
    fields = _stat(pid)
    return int(fields[19]) if len(fields) > 19 else None


def _ours(pid: int, info: dict) -> bool:
    """Whether process `pid` is still the server its PID file recorded (not a later process given the PID)."""
    if "start_ticks" in info:
        return info["start_ticks"] is not None and start_ticks(pid) == info["start_ticks"]
    try:  # a PID file written before start times were recorded: a llama-cpp-python server on its port
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"llama_cpp.server" in cmd and str(info.get("port")).encode() in cmd


def llama_server_binary(settings: Settings) -> str | None:
    """The llama-server to run: the setting, else the one built with llama-cpp-python, else PATH's."""
    if settings.llama_server_bin:
        found = shutil.which(settings.llama_server_bin)
        if found is None:
            raise ServerError(f"SM_LLAMA_SERVER_BIN={settings.llama_server_bin}: no such executable")
        return found
    built = native.binary()
    return str(built) if built else shutil.which("llama-server")


def _llama_server_for(entry: ModelEntry, settings: Settings) -> str | None:
    """The llama-server binary that serves `entry`, or None for llama-cpp-python's server."""
    assert entry.local is not None
    if settings.local_engine == "llama-cpp-python":
        return None
    binary = llama_server_binary(settings)
    python_only = bool(entry.local.chat_format) and not entry.local.chat_template
    if settings.local_engine == "llama-server":
        if python_only:
            raise ServerError(f"{entry.name}: SM_LOCAL_ENGINE=llama-server, but its catalog entry needs "
                              f"llama-cpp-python's chat format {entry.local.chat_format!r} and names no "
                              "chat_template for llama-server")  # fmt: skip
        if binary is None:
            raise ServerError("SM_LOCAL_ENGINE=llama-server, but no llama-server is built (make setup)")
    return None if python_only else binary


def command(entry: ModelEntry, model: Path, port: int, settings: Settings) -> tuple[list[str], str]:
    """The server command line for a local model and the engine's name (module docstring: which engine)."""
    assert entry.local is not None
    ctx = min(entry.context_window, settings.local_ctx)
    binary = _llama_server_for(entry, settings)
    if binary:
        template = entry.local.template_path()
        jinja = ["--jinja", "--chat-template-file", str(template)] if template else []
        return [
            binary, "--model", str(model), "--alias", entry.name,
            "--host", settings.local_host, "--port", str(port),
            "--ctx-size", str(ctx * settings.local_parallel), "--parallel", str(settings.local_parallel),
            "--threads", str(settings.local_threads), "--threads-batch", str(settings.local_threads),
            "--flash-attn", "on" if entry.local.flash_attn else "off",
            "--cache-ram", str(settings.local_cache_ram_mib),
            "--repeat-penalty", str(entry.local.repeat_penalty),
            "--no-webui", "--metrics", *jinja,
        ], f"llama-server, {settings.local_parallel} parallel"  # fmt: skip
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model),
        "--model_alias", entry.name,
        "--host", settings.local_host,
        "--port", str(port),
        "--n_ctx", str(ctx),
        "--n_threads", str(settings.local_threads),
        # the server's default keeps logits for every prompt token (prompt logprobs, unused here): 49k floats
        # per token computed and copied (SmolLM2, 1,000-token prompt: 359 tok/s with them, 466 without)
        "--logits_all", "False",
        # the server's default cuts a streamed answer off (closes its connection mid-body) as soon as another
        # request waits for the model: with two users, one of them lost its answer; queue them instead
        "--interrupt_requests", "False",
        "--verbose", "False",
    ]  # fmt: skip
    if entry.local.chat_format:
        cmd += ["--chat_format", entry.local.chat_format]
    if entry.local.flash_attn:
        cmd += ["--flash_attn", "True"]
    return cmd, "llama-cpp-python"


def _read_pid(pid_file: Path) -> dict | None:
    """The PID file's record, or None when there is none or it is no record of ours (a bare number, a list,
    a text pid: status, up and down crashed on them)."""
    try:
        info = json.loads(pid_file.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(info, dict) and type(info.get("pid")) is int and type(info.get("port")) is int
    # a pid no process can have (os.kill raised OverflowError on it, in every command, till removed by hand)
    return info if ok and 0 < info["pid"] < 2**31 else None


def healthy(port: int, host: str, timeout: float = 2.0) -> bool:
    try:
        # not through an HTTP_PROXY of the environment (httpx sends loopback there too): a server that
        # answered at once was never seen ready, and `models up` stopped it
        r = httpx.get(f"http://{host}:{port}/v1/models", timeout=timeout, trust_env=False)
        return r.status_code == 200
    except httpx.HTTPError:
        return False


def _port_busy(host: str, port: int, wait_s: float = 0.0) -> bool:
    """Whether something listens on the port, after waiting up to `wait_s` for it to go: a server killed a
    moment ago is reported down (its PID is gone) while its exiting threads still hold the socket."""
    deadline = time.monotonic() + wait_s
    while True:
        with socket.socket() as s:
            s.settimeout(0.5)
            busy = s.connect_ex((host, port)) == 0
        if not busy or time.monotonic() >= deadline:
            return busy
        time.sleep(0.1)


def status(entry: ModelEntry, settings: Settings) -> ServerStatus:
    pid_file, _ = _files(entry, settings)
    port = port_of(entry, settings)
    info = _read_pid(pid_file)
    if info is None:
        return ServerStatus(entry.name, "down", port, None, "not started")
    pid = int(info["pid"])
    if not (_alive(pid) and _ours(pid, info)):
        pid_file.unlink(missing_ok=True)
        gone = "now another program's" if _alive(pid) else "gone"
        return ServerStatus(
            entry.name, "down", port, None, f"stale PID file (process {pid} is {gone}), removed"
        )
    if info["port"] != port:  # SM_LOCAL_BASE_PORT changed under a running server: it read as "starting"
        why = f"process {pid} serves port {info['port']}, not {port}; `stratmaster models up` restarts it"
        return ServerStatus(entry.name, "moved", port, pid, why)
    if healthy(port, settings.local_host):
        return ServerStatus(entry.name, "up", port, pid, info.get("engine", ""))
    return ServerStatus(entry.name, "starting", port, pid, "process alive, not answering yet")


# secrets by name, URLs (which may carry a password) and the workbench's own settings; llama.cpp's own
# variables stay (LLAMA_ARG_API_KEY guards its port)
_SECRET_NAME = re.compile(
    r"PASSWORD|PASSWD|PWD$|SECRET|APIKEY|(^|_)(KEYS?|TOKENS?|CREDENTIALS?|HEADERS)(_|$)|_URL$|^SM_", re.I
)


def server_env(settings: Settings) -> dict[str, str]:
    """The environment a local server starts with. llama.cpp's CPU threads meet at an OpenMP barrier many
    times per token, and by default spin there for 300,000 turns before they sleep: where one server's
    threads take every core, two busy servers spin against each other (91 s a request against 7 s). Passive
    threads sleep at once, and pay a wake-up at every barrier (a 26-token chat answer 2.5x as slow). "short"
    spins `local_omp_spincount` (1,000) turns, then sleeps: nearly passive's figure with both servers busy and
    nearly the default's with one (figures: README, benchmarks/local_servers.py). "default" leaves OpenMP's
    own. A policy or spin count in the environment is kept. Secrets (provider keys, the workbench's own)
    are left out: a model server has no use for them."""
    env = {k: v for k, v in os.environ.items() if k.startswith("LLAMA_") or not _SECRET_NAME.search(k)}
    policy = settings.local_omp_wait_policy
    if policy == "auto":
        policy = "short" if settings.local_threads >= (os.cpu_count() or 1) else "default"
    if policy == "passive":
        env.setdefault("OMP_WAIT_POLICY", "passive")
    elif policy == "short" and "OMP_WAIT_POLICY" not in env:
        env.setdefault("GOMP_SPINCOUNT", str(settings.local_omp_spincount))
    return env


@contextmanager
def _start_lock(pid_file: Path) -> Iterator[None]:
    """One starter per model at a time, across processes: two `models up` at once both saw "down", both
    launched, and the loser's PID overwrote the winner's, which then ran untracked."""
    with held(pid_file.with_suffix(".lock")):
        yield


def start(entry: ModelEntry, settings: Settings) -> ServerStatus:
    """Start the server for a local model (no-op when it is already up) and wait until it answers."""
    pid_file, log_file = _files(entry, settings)
    launched = False
    with _start_lock(pid_file):
        st = status(entry, settings)
        if st.state == "up":
            return st
        port = port_of(entry, settings)
        if st.state in ("moved", "down") and _port_busy(settings.local_host, port, wait_s=5.0):
            # before a moved server is stopped: it kept working where the new port could not be had
            raise ServerError(
                f"{entry.name}: port {port} is taken by another program; set SM_LOCAL_BASE_PORT"
            )
        if st.state == "moved":  # ours, on the old port: the gateway calls the new one
            st = stop(entry, settings)
        if st.state == "down":
            model = weights_path(entry, settings)
            cmd, engine = command(entry, model, port, settings)
            with open(log_file, "ab") as log:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                        env=server_env(settings))  # fmt: skip
            tmp = pid_file.with_suffix(".tmp")
            info = {"pid": proc.pid, "start_ticks": start_ticks(proc.pid), "port": port, "model": str(model),
                    "engine": engine, "started": time.time()}  # fmt: skip
            tmp.write_text(json.dumps(info))
            tmp.replace(pid_file)
            launched = True
    return wait_ready(entry, settings, stop_late=launched)


def wait_ready(entry: ModelEntry, settings: Settings, stop_late: bool = False) -> ServerStatus:
    """Wait until the model's server answers. `stop_late`: a server this call launched that is not ready in
    SM_LOCAL_READY_TIMEOUT_S is stopped, so that a start that failed leaves no server coming up unseen."""
    pid_file, log_file = _files(entry, settings)
    port = port_of(entry, settings)
    deadline = time.monotonic() + settings.local_ready_timeout_s
    while time.monotonic() < deadline:
        info = _read_pid(pid_file)
        if info is None or not _alive(int(info["pid"])):
            tail = log_file.read_text(errors="replace")[-1500:] if log_file.exists() else ""
            pid_file.unlink(missing_ok=True)
            raise ServerError(f"{entry.name}: server exited during start-up; log {log_file}:\n{tail}")
        if healthy(port, settings.local_host, timeout=1.0):
            return ServerStatus(entry.name, "up", port, int(info["pid"]), info.get("engine", ""))
        time.sleep(0.2)
    why = f"{entry.name}: not ready on port {port} after {settings.local_ready_timeout_s:g}s"
    if stop_late:
        stop(entry, settings)
        why += " (SM_LOCAL_READY_TIMEOUT_S); stopped it"
    raise ServerError(why)


def stop(entry: ModelEntry, settings: Settings, timeout_s: float = 10.0) -> ServerStatus:
    pid_file, _ = _files(entry, settings)
    info = _read_pid(pid_file)
    port = port_of(entry, settings)
    if info is None:
        return ServerStatus(entry.name, "down", port, None, "was not running")
    pid = int(info["pid"])
    if not (_alive(pid) and _ours(pid, info)):  # it stopped nothing, and says so
        pid_file.unlink(missing_ok=True)
        return ServerStatus(entry.name, "down", port, None, "was not running (stale PID file removed)")
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return ServerStatus(entry.name, "down", port, None, "stopped")
