"""What the CPU computes natively: decides the precision of local models (MiniLM, llama.cpp weights)."""

from __future__ import annotations

from functools import cache
from pathlib import Path


@cache
def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX); elsewhere it is emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
