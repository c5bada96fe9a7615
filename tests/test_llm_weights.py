"""The local weights served: the shipped GGUF, or a BF16 or Q8_0 copy made by llama.cpp's own quantizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.llm import weights
from pipelines.llm.catalog import load_catalog

FILE_TYPE_IDS = {"BF16": 32, "Q8_0": 7}  # llama.cpp's LLAMA_FTYPE_MOSTLY_* values (GGUF general.file_type)
# largest next-token log-probability gap to the shipped file: measured BF16 0.22-0.29, Q8_0 0.47 (Q4_0: 2.4)
MAX_GAP = {"BF16": 0.5, "Q8_0": 1.0}


@pytest.fixture(scope="module")
def smol(model_settings):
    return next(e for e in load_catalog(model_settings).local() if e.name == "smollm2-135m")


@pytest.mark.parametrize("file_type", ["BF16", "Q8_0"])
def test_a_converted_copy_is_the_same_model_and_is_written_once(smol, model_settings, tmp_path, file_type):
    from llama_cpp import Llama

    shipped = weights.shipped_path(smol, model_settings)
    copy = weights.converted_copy(shipped, tmp_path, file_type)
    assert copy.parent == tmp_path and copy.name.endswith(f".{file_type}.gguf")
    assert not list(tmp_path.glob(".*.tmp"))
    stamp = copy.stat().st_mtime_ns
    assert weights.converted_copy(shipped, tmp_path, file_type) == copy and copy.stat().st_mtime_ns == stamp

    text = b"The three primary colours of light are red, green and blue. Mixed, they give white light."
    logprobs = []
    for path in (shipped, copy):
        llm = Llama(str(path), n_ctx=256, n_threads=2, logits_all=True, verbose=False)
        assert (path == copy) == (int(llm.metadata["general.file_type"]) == FILE_TYPE_IDS[file_type])
        toks = llm.tokenize(text)
        llm.eval(toks)
        z = np.array(llm.scores[: len(toks) - 1], dtype=np.float64)
        z -= z.max(1, keepdims=True)
        lp = z - np.log(np.exp(z).sum(1, keepdims=True))
        logprobs.append(lp[np.arange(len(toks) - 1), toks[1:]])
        del llm
    # the same model: each next token's log-probability agrees to rounding (a 4-bit requant does not)
    assert np.abs(logprobs[0] - logprobs[1]).max() < MAX_GAP[file_type]
    assert abs(logprobs[0].mean() - logprobs[1].mean()) < 0.1  # measured 0.04 both (Q4_0: 0.31)


def test_the_served_weights_follow_the_cpu(smol, model_settings, monkeypatch):
    shipped = weights.shipped_path(smol, model_settings)
    monkeypatch.setattr(weights, "native_bf16", lambda: False)  # a CPU without bf16: BF16 would be emulated
    assert weights.weights_path(smol, model_settings).name == f"{shipped.stem}.Q8_0.gguf"  # no_bf16_type
    as_shipped = smol.model_copy(update={"local": smol.local.model_copy(update={"no_bf16_type": None})})
    assert weights.weights_path(as_shipped, model_settings) == shipped
    with pytest.raises(weights.WeightsError, match="unsupported file type 'Q4_0'"):
        weights.converted_copy(shipped, model_settings.models_dir, "Q4_0")  # a lossy requant is refused
    monkeypatch.setattr(weights, "native_bf16", lambda: True)
    assert weights.weights_path(smol, model_settings).name == f"{shipped.stem}.BF16.gguf"
    gemma = next(e for e in load_catalog(model_settings).local() if e.name == "gemma3-270m")
    assert weights.weights_path(gemma, model_settings) == weights.shipped_path(gemma, model_settings)


ZEN4 = "fma sse4_2 avx f16c avx2 bmi2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_bf16 avx512vbmi "
ZEN4 += "avx512_vnni"


def test_llama_cpp_is_built_for_the_extensions_the_cpu_has():
    from pipelines.hardware import ggml_options, missing_from_build

    zen4 = ggml_options(ZEN4.split())
    assert zen4["AVX512_BF16"] and zen4["AVX512_VNNI"] and not zen4["AVX_VNNI"] and not zen4["AMX_INT8"]
    alder_lake = ggml_options(["fma", "sse4_2", "avx", "f16c", "avx2", "bmi2", "avx_vnni"])
    assert alder_lake["AVX_VNNI"] and not alder_lake["AVX512"]
    assert not ggml_options(["avx2", "avx512f", "avx512_bf16"])["AVX512"]  # AVX512 needs BW, VL, DQ, CD too
    # the system info of the AVX2-only build used before: rebuilt on a Zen 4
    avx2 = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | LLAMAFILE = 1 | "
    assert missing_from_build(avx2, zen4) == ["AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16"]
    native = avx2 + "AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | "
    assert missing_from_build(native, zen4) == []


def test_llama_server_is_built_from_the_locked_source_for_the_same_cpu_options(tmp_path, monkeypatch):
    """`make setup` built llama.cpp's server from the sdist the lock pins, with the options llama-cpp-python
    got, and keeps it in .cache: installing it again copies it without downloading or building."""
    import filecmp
    import subprocess
    import sys

    import llama_cpp

    from pipelines.hardware import ggml_options
    from pipelines.llm import native
    from pipelines.settings import REPO_ROOT

    version, sha256 = native.locked_source(REPO_ROOT / "requirements.lock")
    assert version == llama_cpp.__version__ and len(sha256) == 64
    flags = native.cmake_flags(ggml_options(ZEN4.split()))
    assert {"-DGGML_AVX512_BF16=ON", "-DGGML_AMX_INT8=OFF", "-DGGML_NATIVE=OFF"} <= set(flags)
    assert native.cmake_flags({}) == [f for f in flags if "GGML" not in f]  # elsewhere: llama.cpp's default
    assert native.cache_key(version, flags) != native.cache_key(version, native.cmake_flags({}))
    built = Path(sys.executable).parent / "llama-server"
    assert built.exists(), "make setup did not build llama-server: see its [setup] output"
    cache = REPO_ROOT / ".cache" / "llama-server"
    for step in ("fetch_source", "build"):
        monkeypatch.setattr(native, step, lambda *a, s=step: pytest.fail(f"{s} ran: the cache was not used"))
    target = native.install(REPO_ROOT / "requirements.lock", cache, tmp_path / "s")
    assert filecmp.cmp(target, built, shallow=False) and not list(tmp_path.glob("*.tmp"))
    out = subprocess.run([str(target), "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "built with" in out.stdout + out.stderr
    # no cached build for this version: a failed build leaves no older llama-server behind to be used
    monkeypatch.setattr(native, "fetch_source", lambda *a: (_ for _ in ()).throw(RuntimeError("offline")))
    with pytest.raises(RuntimeError, match="offline|cmake"):
        native.install(REPO_ROOT / "requirements.lock", tmp_path / "empty-cache", target)
    assert not target.exists()
