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

# The lock carries hashes; torch comes from the CPU wheel on this disk (--find-links in the lock).
# llama-cpp-python compiles from source (about 3 minutes on 2 cores); uv caches the built wheel in .cache/uv.
echo "[setup] installing the locked set into .venv"
.venv/bin/uv pip install --python .venv/bin/python --require-hashes -r requirements.lock
.venv/bin/uv pip install --python .venv/bin/python --no-deps --no-build-isolation -e .

# `make lab` and papermill run notebooks on this kernel
.venv/bin/python -m ipykernel install --sys-prefix --name stratmaster --display-name "StratMaster (.venv)" >/dev/null

echo "[setup] preparing local model files"
LITELLM_LOCAL_MODEL_COST_MAP=True .venv/bin/python -m pipelines.llm.weights
echo "[setup] done"
