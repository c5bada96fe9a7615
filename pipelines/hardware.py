"""What the CPU computes natively: decides the precision of local models (MiniLM, llama.cpp weights) and the
vector extensions llama.cpp is compiled for.

`python -m pipelines.hardware uv-settings` prints the uv build settings for llama-cpp-python on this CPU, one
per line; `python -m pipelines.hardware check-llama` exits non-zero when the installed llama.cpp lacks an
extension the CPU has, or has one left out (AMX). scripts/setup.sh runs both (stdlib only: it runs before
the project is installed).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path

# ggml's x86-64 build options and the /proc/cpuinfo flags each one needs
GGML_OPTIONS: dict[str, tuple[str, ...]] = {
    "SSE42": ("sse4_2",),
    "AVX": ("avx",),
    "AVX2": ("avx2",),
    "BMI2": ("bmi2",),
    "FMA": ("fma",),
    "F16C": ("f16c",),
    "AVX_VNNI": ("avx_vnni",),
    "AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "AVX512_VBMI": ("avx512f", "avx512vbmi"),
    "AVX512_VNNI": ("avx512f", "avx512_vnni"),
    "AVX512_BF16": ("avx512f", "avx512_bf16"),
    "AMX_TILE": ("amx_tile",),
    "AMX_INT8": ("amx_tile", "amx_int8"),
    "AMX_BF16": ("amx_tile", "amx_bf16"),
}
NOT_IN_SYSTEM_INFO = {"SSE42", "AMX_TILE", "AMX_BF16"}  # built in, but llama.cpp's system info omits them
# never built: on a Sapphire Rapids VM (AMX in its flags, granted by the kernel) llama-server died of SIGILL
# (`tilezero` in ggml_backend_amx_mul_mat) on its first batch with any Q4 model; AVX-512 serves them
LEFT_OUT = {"AMX_TILE", "AMX_INT8", "AMX_BF16"}


@cache
def cpu_flags() -> frozenset[str]:
    try:
        return frozenset(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return frozenset()


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX); elsewhere it is emulated."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def ggml_options(flags: Iterable[str] | None = None) -> dict[str, bool]:
    """Each ggml build option, on where the CPU has every flag it needs (LEFT_OUT ones never)."""
    have = cpu_flags() if flags is None else set(flags)
    return {option: set(needs) <= have and option not in LEFT_OUT for option, needs in GGML_OPTIONS.items()}


def _built(system_info: str) -> set[str]:
    parts = (p.partition("=") for p in system_info.replace(":", "|").split("|"))
    return {k.strip() for k, _, v in parts if v.strip() == "1"}


def missing_from_build(system_info: str, options: dict[str, bool]) -> list[str]:
    """The options on in `options` that llama.cpp's `llama_print_system_info()` does not list as built."""
    return [o for o, on in options.items() if on and o not in _built(system_info) | NOT_IN_SYSTEM_INFO]


def unwanted_in_build(system_info: str, options: dict[str, bool]) -> list[str]:
    """The options off in `options` that llama.cpp lists as built (AMX, by a build from before LEFT_OUT)."""
    return [o for o, on in options.items() if not on and o in _built(system_info)]


def ggml_defines(options: dict[str, bool]) -> list[str]:
    """The CMake defines for ggml's options (native detection off), for llama-cpp-python's build (which also
    makes llama-server: pipelines/llm/native.py)."""
    return [f"GGML_{option}={'ON' if on else 'OFF'}" for option, on in {"NATIVE": False, **options}.items()]


def main(argv: list[str]) -> int:
    options = ggml_options()
    if argv == ["uv-settings"]:
        for define in ggml_defines(options):
            print(f"llama-cpp-python:cmake.define.{define}")
        return 0
    if argv == ["check-llama"]:
        import llama_cpp

        info = llama_cpp.llama_print_system_info().decode()
        missing, unwanted = missing_from_build(info, options), unwanted_in_build(info, options)
        if missing:
            print(f"[setup] llama.cpp was built without {', '.join(missing)}", file=sys.stderr)
        if unwanted:
            print(f"[setup] llama.cpp was built with {', '.join(unwanted)}", file=sys.stderr)
        return 1 if missing or unwanted else 0
    print("usage: python -m pipelines.hardware uv-settings|check-llama", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
