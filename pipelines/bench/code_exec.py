"""Run generated code against assert-style tests in a separate, resource-limited Python process.

Never in-process: the child gets CPU-time, address-space, file-size and core-dump limits (rlimits), a
wall-clock timeout after which its whole process group is killed, an empty temporary working directory,
Python's isolated mode (-I) and an empty environment. Its output goes to files capped at 1 MiB each (a pipe
would fill the caller's memory), and the result line carries a per-run nonce, so printing a fake result
does not pass. Where `unshare` may make namespaces (root, or unprivileged user namespaces), the child also
runs in new PID and network namespaces: no network, and every process it starts dies with it, even one
that left the process group (the harness is PID 1 there, so a signal it sends itself is ignored).
Elsewhere a non-root child may start no process at all (RLIMIT_NPROC 0).
This contains accidents and runaway code; it is no defence against code written to attack the harness
(that wants a container or gVisor), and the code may read and write what this user may.
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

OUTPUT_BYTES = 1 << 20  # per output file; a longer write fails (Python ignores SIGXFSZ: OSError EFBIG)

_HARNESS = r"""
import json, os, sys
def main():
    with open("task.json") as f:
        src = json.load(f)
    os.remove("task.json")
    nonce = src.pop("nonce")
    passed, errors = 0, []
    ns = {"__name__": "__solution__"}
    try:
        exec(compile(src["code"], "solution.py", "exec"), ns)
    except BaseException as e:
        errors.append("solution: " + type(e).__name__ + ": " + str(e)[:200])
    else:
        for t in src["tests"]:
            try:
                exec(compile(t, "test", "exec"), ns)
                passed += 1
            except BaseException as e:
                errors.append(t[:80] + " -> " + type(e).__name__ + ": " + str(e)[:120])
    sys.stdout.write("\n__RESULT__" + nonce + json.dumps({"passed": passed, "errors": errors}) + "\n")
main()
"""


@dataclass
class CodeResult:
    passed: int
    total: int
    status: str  # ok | failed | timeout | killed | crashed
    detail: str = ""

    @property
    def passed_all(self) -> bool:
        return self.total > 0 and self.passed == self.total


@lru_cache(maxsize=1)
def namespace_prefix() -> tuple[str, ...]:
    """`unshare` into new PID and network namespaces when this user may here, else ()."""
    exe = shutil.which("unshare")
    if not exe:
        return ()
    cmd = [exe, "--pid", "--fork", "--kill-child", "--net"]
    if os.geteuid() != 0:
        cmd[1:1] = ["--user", "--map-root-user"]
    try:
        ok = subprocess.run([*cmd, "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return tuple(cmd) if ok else ()


def _limits(cpu_s: int, mem_bytes: int, no_processes: bool) -> None:
    os.setsid()
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_BYTES, OUTPUT_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if no_processes:
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))


def run_tests(code: str, tests: list[str], timeout_s: float = 5.0, memory_mb: int = 256) -> CodeResult:
    """Run `code`, then each test, in a child process; a test passes when it raises nothing."""
    nonce = secrets.token_hex(16)
    prefix = namespace_prefix()
    no_processes = not prefix and os.geteuid() != 0
    with tempfile.TemporaryDirectory(prefix="sm-code-") as wd:
        Path(wd, "task.json").write_text(json.dumps({"code": code, "tests": tests, "nonce": nonce}))
        with open(Path(wd, ".out"), "wb") as out, open(Path(wd, ".err"), "wb") as err:
            proc = subprocess.Popen(
                [*prefix, sys.executable, "-I", "-c", _HARNESS], cwd=wd, env={"PATH": "/usr/bin:/bin"},
                stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                preexec_fn=lambda: _limits(int(timeout_s) + 1, memory_mb << 20, no_processes),
            )  # fmt: skip
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return CodeResult(0, len(tests), "timeout", f"killed after {timeout_s:.0f} s wall time")
        text = Path(wd, ".out").read_bytes().decode("utf-8", "replace")
        stderr = Path(wd, ".err").read_bytes()[-300:].decode("utf-8", "replace")
    marker = f"\n__RESULT__{nonce}"
    if marker not in text:
        why = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        status = "killed" if proc.returncode < 0 else "crashed"
        return CodeResult(0, len(tests), status, f"{why}: {stderr}")
    res = json.loads(text.rsplit(marker, 1)[1])
    ok = res["passed"] == len(tests)
    return CodeResult(res["passed"], len(tests), "ok" if ok else "failed", "; ".join(res["errors"])[:500])
