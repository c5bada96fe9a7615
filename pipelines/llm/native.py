"""llama.cpp's own HTTP server (`llama-server`), compiled in the same build as llama-cpp-python's libraries.

llama-cpp-python's server answers one request at a time: with two users, one waits for the other's whole
answer. llama-server serves parallel slots from its own C++ loop: in the serving bench's RAG phase at 2 users
on 2 cores, two rounds in the same hour, p95 5.13 and 5.17 s against 6.96 and 6.51 s (README,
`benchmarks/serving.py`).

`make setup` installs the locked llama-cpp-python with `build_settings()` next to the CPU's vector options
(`pipelines.hardware`): llama.cpp's tools are built too and installed inside the `llama_cpp` package, next
to the shared libraries they link (RPATH `$ORIGIN`). So one compile of ggml, llama.cpp and their common code
makes both engines, from the source the lock pins, for the same CPU options. The standalone llama-server
build this replaces compiled about 80% of the same objects again: 15 minutes more on 2 AVX2 cores.

    python -m pipelines.llm.native uv-settings   # scripts/setup.sh (stdlib only: runs before the install)
    python -m pipelines.llm.native check         # non-zero when the installed llama_cpp has no llama-server
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BINARY = "llama-server"

# CMake defines for llama-cpp-python's build (uv config settings)
BUILD_DEFINES = {
    "LLAMA_BUILD_TOOLS": "ON",
    "LLAMA_BUILD_SERVER": "ON",
    # llama-server links its server library, which CMake installs only with the tools
    "LLAMA_TOOLS_INSTALL": "ON",
    # the tools add llama.cpp's multimodal library (and install it); llama-cpp-python's own copy would clash
    "LLAVA_BUILD": "OFF",
    "LLAMA_OPENSSL": "OFF",
    # everything inside the package, as llama-cpp-python does for its own libraries
    "CMAKE_INSTALL_BINDIR": "llama_cpp/lib",
    "CMAKE_INSTALL_LIBDIR": "llama_cpp/lib",
    "CMAKE_INSTALL_INCLUDEDIR": "llama_cpp/include",
    "CMAKE_INSTALL_RPATH": "$ORIGIN",
}


def build_settings() -> list[str]:
    """uv's `--config-settings-package` values that make llama-cpp-python's build install llama-server."""
    return [f"llama-cpp-python:cmake.define.{k}={v}" for k, v in BUILD_DEFINES.items()]


def binary() -> Path | None:
    """The llama-server inside the installed llama_cpp package, if its build made one."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "lib" / BINARY
    return path if path.is_file() else None


def main(argv: list[str]) -> int:
    if argv == ["uv-settings"]:
        print("\n".join(build_settings()))
        return 0
    if argv == ["check"]:
        found = binary()
        if found is None:
            print(f"[setup] the installed llama_cpp has no {BINARY}", file=sys.stderr)
        return 0 if found else 1
    print("usage: python -m pipelines.llm.native uv-settings|check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
