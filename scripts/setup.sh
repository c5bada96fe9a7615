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

# llama-cpp-python compiles from source (15 minutes on 2 AVX2 cores), for the vector extensions this CPU has:
# on 2 Zen 4 cores, AVX-512 with its BF16 and VNNI kernels evaluates SmolLM2's prompts 1.6-1.9x as fast as an
# AVX2-only build (benchmarks/local_llm.py). The same compile makes llama.cpp's own llama-server, which serves
# parallel requests from its C++ loop where llama-cpp-python's server queues them (pipelines/llm/native.py).
# All of it goes in as build settings, and uv keys its cache of the built wheel (.cache/uv) by them: a cache
# carried to another CPU builds again instead of crashing there. pipelines/hardware.py maps the CPU's flags to
# ggml's options; a CMAKE_ARGS of your own (a GPU build, say) replaces those.
llama_settings=()
cpu_options=$([[ -z "${CMAKE_ARGS:-}" && "$(uname -m)" == x86_64 ]] && echo 1 || true)
settings=$(.venv/bin/python -m pipelines.llm.native uv-settings)
if [[ -n "$cpu_options" ]]; then settings+=" $(.venv/bin/python -m pipelines.hardware uv-settings)"; fi
for setting in $settings; do llama_settings+=(--config-settings-package "$setting"); done
# the build needs a C++ compiler (CMake and Ninja come from PyPI, through scikit-build-core)
if ! command -v c++ >/dev/null && [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++) >/dev/null
fi

# The lock carries hashes; torch comes from the CPU wheel on this disk (--find-links in the lock).
echo "[setup] installing the locked set into .venv  [$(date -u +%T)]"
.venv/bin/uv pip install --python .venv/bin/python --require-hashes -r requirements.lock "${llama_settings[@]}"
# a .venv from before keeps the llama.cpp it has: rebuild it when it lacks llama-server or an extension the CPU has
if ! .venv/bin/python -m pipelines.llm.native check ||
  { [[ -n "$cpu_options" ]] && ! .venv/bin/python -m pipelines.hardware check-llama; }; then
  .venv/bin/uv pip install --python .venv/bin/python --require-hashes -r requirements.lock "${llama_settings[@]}" \
    --reinstall-package llama-cpp-python
fi
rm -f .venv/bin/llama-server  # a separate build by an older setup; llama-server now lives in the llama_cpp package
.venv/bin/uv pip install --python .venv/bin/python --no-deps --no-build-isolation -e .

# `make lab` and papermill run notebooks on this kernel
.venv/bin/python -m ipykernel install --sys-prefix --name stratmaster --display-name "StratMaster (.venv)" >/dev/null

echo "[setup] preparing local model files  [$(date -u +%T), ${SECONDS} s into setup]"
LITELLM_LOCAL_MODEL_COST_MAP=True .venv/bin/python -m pipelines.llm.weights
echo "[setup] done  [$(date -u +%T), ${SECONDS} s]"
