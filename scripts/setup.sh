#!/usr/bin/env bash
# Creates .venv from requirements.lock and prepares the local model files. Idempotent; `make setup` calls it
# only when the lock or this script changed. Every install step the project needs lives here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), "StratMaster needs Python 3.11"'

[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check "uv==0.13.9"

# llama-cpp-python compiles from source (4 minutes here, on 2 cores), for the vector extensions this CPU has:
# on 2 Zen 4 cores, AVX-512 with its BF16 and VNNI kernels evaluates SmolLM2's prompts 1.6-1.9x as fast as an
# AVX2-only build (benchmarks/local_llm.py). The extensions go in as build settings, and uv keys its cache of
# the built wheel (.cache/uv) by them: a cache carried to another CPU builds again instead of crashing there.
# A CMAKE_ARGS of your own (a GPU build, say) replaces all of this.
llama_settings=()
llama_features=()
if [[ -z "${CMAKE_ARGS:-}" && "$(uname -m)" == x86_64 ]]; then
  cpu=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
  llama_settings+=(--config-settings-package "llama-cpp-python:cmake.define.GGML_NATIVE=OFF")
  # ggml option = the /proc/cpuinfo flags it needs (its name in llama.cpp's system info is the option's)
  for spec in SSE42=sse4_2 AVX=avx AVX2=avx2 BMI2=bmi2 FMA=fma F16C=f16c AVX_VNNI=avx_vnni \
      AVX512=avx512f,avx512cd,avx512vl,avx512dq,avx512bw AVX512_VBMI=avx512f,avx512vbmi \
      AVX512_VNNI=avx512f,avx512_vnni AVX512_BF16=avx512f,avx512_bf16 \
      AMX_TILE=amx_tile AMX_INT8=amx_tile,amx_int8 AMX_BF16=amx_tile,amx_bf16; do
    option=${spec%%=*} flags=${spec#*=} value=ON
    for flag in ${flags//,/ }; do [[ "$cpu" == *" $flag "* ]] || value=OFF; done
    llama_settings+=(--config-settings-package "llama-cpp-python:cmake.define.GGML_$option=$value")
    if [[ $value == ON ]]; then llama_features+=("$option"); fi
  done
fi

# The lock carries hashes; torch comes from the CPU wheel on this disk (--find-links in the lock).
echo "[setup] installing the locked set into .venv (llama.cpp for: ${llama_features[*]:-its defaults})"
.venv/bin/uv pip install --python .venv/bin/python --require-hashes -r requirements.lock "${llama_settings[@]}"
# a .venv from before (or from another CPU) keeps the llama.cpp it has: rebuild it when it lacks a feature
if [[ ${#llama_features[@]} -gt 0 ]] && ! .venv/bin/python - "${llama_features[@]}" <<'PY'
import sys
import llama_cpp

info = llama_cpp.llama_print_system_info().decode().replace(":", "|").split("|")
built = {k.strip() for k, _, v in (part.partition("=") for part in info) if v.strip() == "1"}
unlisted = {"SSE42", "AMX_TILE", "AMX_BF16"}  # built in, but not named in the system info
missing = [f for f in sys.argv[1:] if f not in built | unlisted]
sys.exit(f"[setup] llama.cpp was built without {', '.join(missing)}" if missing else 0)
PY
then
  .venv/bin/uv pip install --python .venv/bin/python --require-hashes -r requirements.lock "${llama_settings[@]}" \
    --reinstall-package llama-cpp-python
fi
.venv/bin/uv pip install --python .venv/bin/python --no-deps --no-build-isolation -e .

# `make lab` and papermill run notebooks on this kernel
.venv/bin/python -m ipykernel install --sys-prefix --name stratmaster --display-name "StratMaster (.venv)" >/dev/null

echo "[setup] preparing local model files"
LITELLM_LOCAL_MODEL_COST_MAP=True .venv/bin/python -m pipelines.llm.weights
echo "[setup] done"
