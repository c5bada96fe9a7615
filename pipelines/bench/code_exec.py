"""Run generated code against assert-style tests in a separate, resource-limited Python process.

Never in-process: the child gets CPU-time, address-space, file-size and process-count limits (rlimits), a
wall-clock timeout after which its whole process group is killed, an empty temporary working directory,
Python's isolated mode (-I) and an empty environment.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

_HARNESS = r"""
import json, sys
src = json.load(open("task.json"))
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
sys.stdout.write("\n__RESULT__" + json.dumps({"passed": passed, "errors": errors}) + "\n")
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


def _limits(cpu_s: int, mem_bytes: int) -> None:
    os.setsid()
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_tests(code: str, tests: list[str], timeout_s: float = 5.0, memory_mb: int = 256) -> CodeResult:
    """Run `code`, then each test, in a child process; a test passes when it raises nothing."""
    with tempfile.TemporaryDirectory(prefix="sm-code-") as wd:
        with open(os.path.join(wd, "task.json"), "w") as f:
            json.dump({"code": code, "tests": tests}, f)
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _HARNESS], cwd=wd, env={"PATH": "/usr/bin:/bin"},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            preexec_fn=lambda: _limits(int(timeout_s) + 1, memory_mb << 20),
        )  # fmt: skip
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return CodeResult(0, len(tests), "timeout", f"killed after {timeout_s:.0f} s wall time")
    text = out.decode("utf-8", "replace")
    if "__RESULT__" not in text:
        why = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        status = "killed" if proc.returncode < 0 else "crashed"
        return CodeResult(0, len(tests), status, f"{why}: {err.decode('utf-8', 'replace')[-300:]}")
    res = json.loads(text.rsplit("__RESULT__", 1)[1])
    ok = res["passed"] == len(tests)
    return CodeResult(res["passed"], len(tests), "ok" if ok else "failed", "; ".join(res["errors"])[:500])
