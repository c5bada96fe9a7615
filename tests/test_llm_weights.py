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
    assert weights.weights_path(smol, model_settings).name == f"{shipped.stem}.Q8_0.gguf"  # no cpu_bf16
    in_bf16 = smol.model_copy(update={"local": smol.local.model_copy(update={"cpu_bf16": True})})
    assert weights.weights_path(in_bf16, model_settings).name == f"{shipped.stem}.BF16.gguf"
    gemma = next(e for e in load_catalog(model_settings).local() if e.name == "gemma3-270m")
    assert weights.weights_path(gemma, model_settings) == weights.shipped_path(gemma, model_settings)


ZEN4 = "fma sse4_2 avx f16c avx2 bmi2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_bf16 avx512vbmi "
ZEN4 += "avx512_vnni"


def test_llama_cpp_is_built_for_the_extensions_the_cpu_has():
    from pipelines.hardware import ggml_options, missing_from_build, unwanted_in_build

    zen4 = ggml_options(ZEN4.split())
    assert zen4["AVX512_BF16"] and zen4["AVX512_VNNI"] and not zen4["AVX_VNNI"] and not zen4["AMX_INT8"]
    alder_lake = ggml_options(["fma", "sse4_2", "avx", "f16c", "avx2", "bmi2", "avx_vnni"])
    assert alder_lake["AVX_VNNI"] and not alder_lake["AVX512"]
    assert not ggml_options(["avx2", "avx512f", "avx512_bf16"])["AVX512"]  # AVX512 needs BW, VL, DQ, CD too
    # the system info of the AVX2-only build used before: rebuilt on a Zen 4
    avx2 = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | LLAMAFILE = 1 | "
    assert missing_from_build(avx2, zen4) == ["AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16"]
    native = avx2 + "AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | "
    assert missing_from_build(native, zen4) == [] == unwanted_in_build(native, zen4)
    # AMX is never built (its kernels died of SIGILL on a Sapphire Rapids VM), and a build with it is rebuilt
    spr = ggml_options([*ZEN4.split(), "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"])
    assert spr["AVX512_BF16"] and not (spr["AMX_INT8"] or spr["AMX_TILE"] or spr["AMX_BF16"])
    assert unwanted_in_build(native + "AVX_VNNI = 1 | AMX_INT8 = 1 | ", spr) == ["AMX_INT8"]


def test_llama_server_is_built_with_the_bindings_and_loads_their_libraries():
    """`make setup` builds llama-server in llama-cpp-python's own compile (pipelines/llm/native.py): it sits
    in the llama_cpp package and loads the libllama and ggml the Python bindings load."""
    import filecmp
    import subprocess
    import sys

    import llama_cpp

    from pipelines.llm import native

    assert "llama-cpp-python:cmake.define.LLAMA_BUILD_SERVER=ON" in native.build_settings()
    out = subprocess.run([sys.executable, "-m", "pipelines.llm.native", "uv-settings"], capture_output=True,
                         text=True, check=True).stdout.split()  # fmt: skip
    assert out == native.build_settings()
    server = native.binary()
    assert server is not None, "make setup did not build llama-server: see its [setup] output"
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    assert server.parent == lib_dir
    run = subprocess.run([str(server), "--version"], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0 and "built with" in run.stdout + run.stderr
    # the libraries it links resolve next to it (RPATH $ORIGIN): the library the bindings loaded (a wheel
    # holds copies, not symlinks, of libllama.so and libllama.so.0)
    ldd = subprocess.run(["ldd", str(server)], capture_output=True, text=True, check=True).stdout
    linked = {name.strip(): Path(to.split(" (")[0].strip()) for name, _, to in
              (line.partition(" => ") for line in ldd.splitlines()) if to}  # fmt: skip
    assert {linked[lib].resolve().parent for lib in ("libllama.so.0", "libggml.so.0")} == {lib_dir.resolve()}
    assert filecmp.cmp(linked["libllama.so.0"], llama_cpp.llama_cpp._lib._name, shallow=False)
