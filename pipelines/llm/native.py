"""llama.cpp's own HTTP server (`llama-server`), built from the source of the locked llama-cpp-python.

llama-cpp-python's server answers one request at a time: with two users, one waits for the other's whole
answer. llama-server serves parallel slots from its own C++ loop: in the serving bench's RAG phase at 2 users
on 2 cores, two rounds in the same hour, p95 5.13 and 5.17 s against 6.96 and 6.51 s (README,
`benchmarks/serving.py`). The source is the llama-cpp-python sdist pinned in
requirements.lock (checked against the lock's sha256), so both engines run the same llama.cpp, compiled
for the same vector extensions (`pipelines.hardware`).

    .venv/bin/python -m pipelines.llm.native install   # scripts/setup.sh runs it

The built binary is kept in `.cache/llama-server/<version>-<options>/` (an optimisation: without it, the
build runs again, 6 to 10 minutes on 2 cores) and copied to `.venv/bin/llama-server`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

from pipelines.hardware import cpu_flags, ggml_defines, ggml_options
from pipelines.settings import REPO_ROOT

BINARY = "llama-server"


def locked_source(lock: Path) -> tuple[str, str]:
    """(version, sha256) of llama-cpp-python in a hash-pinned requirements file."""
    pattern = r"^llama-cpp-python==(\S+)\s*\\\s*\n\s*--hash=sha256:([0-9a-f]{64})"
    m = re.search(pattern, lock.read_text(), re.M)
    if not m:
        raise ValueError(f"{lock}: no hash-pinned llama-cpp-python")
    return m.group(1), m.group(2)


def cmake_flags(options: dict[str, bool]) -> list[str]:
    """A static llama-server, no downloads (curl) or TLS, with ggml's CPU options as scripts/setup.sh gives
    them to llama-cpp-python's build (no options: llama.cpp's default, built for the CPU it compiles on)."""
    return ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF",
            "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON",
            *(f"-D{d}" for d in (ggml_defines(options) if options else []))]  # fmt: skip


def cache_key(version: str, flags: list[str]) -> str:
    """Version and a digest of the flags; a build for the CPU it compiles on (no GGML_NATIVE=OFF: outside
    x86-64) also digests the architecture and the CPU's flags, so a carried cache never runs elsewhere."""
    parts = flags if "-DGGML_NATIVE=OFF" in flags else [flags, os.uname().machine, sorted(cpu_flags())]
    return f"{version}-{hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]}"


def fetch_source(version: str, sha256: str, dest: Path) -> Path:
    """Download the llama-cpp-python sdist whose hash the lock pins from the package index (PEP 691 JSON at
    `UV_INDEX_URL`, `PIP_INDEX_URL` or PyPI), checking the hash of what arrives before anything reads it."""
    index = os.environ.get("UV_INDEX_URL") or os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple"
    page = f"{index.rstrip('/')}/llama-cpp-python/"
    req = urllib.request.Request(page, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            files = json.load(r)["files"]
    except (OSError, ValueError, KeyError) as e:
        raise RuntimeError(f"the package index did not list llama-cpp-python as PEP 691 JSON ({e})") from e
    found = [f for f in files if f.get("hashes", {}).get("sha256") == sha256]
    if not found:
        raise RuntimeError(f"the package index has no llama-cpp-python {version} file with sha256 {sha256}")
    path = dest / Path(found[0]["filename"]).name
    h = hashlib.sha256()
    url = urllib.parse.urljoin(page, found[0]["url"])
    with urllib.request.urlopen(url, timeout=300) as r, open(path, "wb") as out:
        while chunk := r.read(1 << 20):
            h.update(chunk)
            out.write(chunk)
    if h.hexdigest() != sha256:
        raise RuntimeError(f"{path.name}: sha256 {h.hexdigest()} is not the lock's {sha256}")
    return path


def build(sdist: Path, flags: list[str], work: Path) -> Path:
    """Compile the llama-server target from the sdist's vendored llama.cpp; returns the binary."""
    if not hasattr(tarfile, "data_filter"):
        raise RuntimeError("unpacking the source safely needs Python 3.11.4 or later (tarfile's data filter)")
    with tarfile.open(sdist) as tar:
        tar.extractall(work, filter="data")
    src = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
    build_dir = src / "build"
    jobs = str(os.cpu_count() or 2)
    log = work / "build.log"
    with open(log, "w") as out:
        for cmd in (["cmake", "-S", str(src), "-B", str(build_dir), *flags],
                    ["cmake", "--build", str(build_dir), "--target", BINARY, "-j", jobs]):  # fmt: skip
            if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode:
                raise RuntimeError(f"{' '.join(cmd[:2])} failed:\n{log.read_text()[-3000:]}")
    return build_dir / "bin" / BINARY


def install(lock: Path, cache_dir: Path, target: Path) -> Path:
    """The llama-server for the locked version and this CPU at `target`, from the cache or a fresh build."""
    version, sha256 = locked_source(lock)
    flags = cmake_flags(ggml_options() if os.uname().machine == "x86_64" else {})
    cached = cache_dir / cache_key(version, flags) / BINARY
    if not cached.exists():
        # an older build at `target` (another version or other CPU options) must not outlive a failed one
        target.unlink(missing_ok=True)
        if shutil.which("cmake") is None:
            raise RuntimeError("building llama-server needs cmake and a C++ compiler (apt install cmake g++)")
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            print(f"[setup] building llama-server {version} (llama.cpp's server; 6 to 10 min on 2 cores)")
            binary = build(fetch_source(version, sha256, Path(tmp)), flags, Path(tmp))
            shutil.copy2(binary, cached.with_suffix(".tmp"))
            cached.with_suffix(".tmp").replace(cached)
    tmp_target = target.with_suffix(".tmp")
    shutil.copy2(cached, tmp_target)
    tmp_target.replace(target)
    return target


def main(argv: list[str]) -> int:
    if argv != ["install"]:
        print("usage: python -m pipelines.llm.native install", file=sys.stderr)
        return 2
    target = Path(sys.executable).parent / BINARY
    install(REPO_ROOT / "requirements.lock", REPO_ROOT / ".cache" / "llama-server", target)
    print(f"[setup] {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
