# StratMaster Workbench. `make demo` and `make test` are the two commands a newcomer types.
SHELL := /bin/bash
PY := .venv/bin/python
VENV_STAMP := .venv/.stamp
export UV_CACHE_DIR ?= $(CURDIR)/.cache/uv
export SM_RUN_DIR ?= $(CURDIR)/runs
export LITELLM_LOCAL_MODEL_COST_MAP := True
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export DAGSTER_HOME ?= $(CURDIR)/runs/dagster
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2

.PHONY: setup demo test bench bench-serving ui lab serve models-up models-down lint clean help

help:
	@echo "make demo   run the main job end to end on the embedded defaults"
	@echo "make test   run the test suite (what CI runs)"
	@echo "make setup  create .venv from requirements.lock (idempotent)"
	@echo "make bench  print speed and quality figures (benchmarks/)"
	@echo "make ui     Dagster UI on http://127.0.0.1:3000"
	@echo "make lab    JupyterLab on the project's kernel"
	@echo "make serve  the latest Bento (runs/bentoml) on http://127.0.0.1:3001"
	@echo "make lint   ruff and mypy"

setup: $(VENV_STAMP)

$(VENV_STAMP): requirements.lock pyproject.toml scripts/setup.sh pipelines/llm/native.py pipelines/hardware.py
	bash scripts/setup.sh
	@touch $@

# Dagster's log cut to its step, check and run events, one line each
EVENTS = grep --line-buffered -E "STEP_SUCCESS|STEP_FAILURE|ASSET_CHECK_EVALUATION|RUN_SUCCESS|RUN_FAILURE" \
  | sed -u -E 's/^.* - ([a-z_]+) - (STEP_[A-Z]+|ASSET_CHECK_EVALUATION|RUN_[A-Z]+) - /  \1 \2 /'

demo: setup
	.venv/bin/stratmaster models up
	mkdir -p $(DAGSTER_HOME) runs/demo
	@echo "[demo] the model panel's check, the prompt set and today's micro-bench partition (the local models' evidence)"
	set -o pipefail; .venv/bin/dagster asset materialize -m assets --select model_panel,prompt_set 2>&1 \
	  | tee runs/demo/bench.log \
	  | $(EVENTS)
	set -o pipefail; .venv/bin/dagster asset materialize -m assets --select benchmark_results \
	  --partition $$(date -u +%F) 2>&1 | tee -a runs/demo/bench.log \
	  | $(EVENTS)
	@echo "[demo] materializing the asset graph (log: runs/demo/dagster.log)"
	set -o pipefail; .venv/bin/dagster job execute -m assets -j demo 2>&1 | tee runs/demo/dagster.log \
	  | $(EVENTS)
	@echo "[demo] notebook reports (runs/reports/<name>/<name>.html)"
	set -o pipefail; .venv/bin/dagster asset materialize -m assets --select reports 2>&1 | tee runs/demo/reports.log \
	  | $(EVENTS)
	.venv/bin/stratmaster demo

test: setup
	bash scripts/test.sh

# every figure that needs only `make setup` (15 min; more on the first run, which builds the SciFact indexes);
# rag_context.py, reports.py and utility_divergences.py read `make demo`'s run folder, and bench-serving has its own target
bench: setup
	$(PY) benchmarks/gateway.py
	$(PY) benchmarks/local_llm.py
	$(PY) benchmarks/local_servers.py
	$(PY) benchmarks/rag_layouts.py
	$(PY) benchmarks/microbench.py
	$(PY) benchmarks/router_quality.py
	$(PY) benchmarks/pii_signals.py
	$(PY) benchmarks/utility_fit.py
	$(PY) benchmarks/retrieval.py

ui: setup
	mkdir -p $(DAGSTER_HOME)
	.venv/bin/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

lab: setup
	JUPYTER_PREFER_ENV_PATH=1 .venv/bin/jupyter lab --notebook-dir=notebooks --ip=127.0.0.1

models-up: setup
	.venv/bin/stratmaster models up

models-down: setup
	.venv/bin/stratmaster models down

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy pipelines router_models serving assets

clean:
	-.venv/bin/stratmaster models down
	rm -rf .venv runs

serve: setup
	@export BENTOML_HOME=$${BENTOML_HOME:-$(SM_RUN_DIR)/bentoml}; \
	if ! .venv/bin/bentoml get stratmaster:latest >/dev/null 2>&1; then \
	  echo "no Bento in $$BENTOML_HOME yet: run 'make demo' (it materializes the bento asset)"; exit 1; fi; \
	.venv/bin/bentoml serve stratmaster:latest --host 127.0.0.1 --port 3001

bench-serving: setup
	@# wrk drives the /v1/route phases (a Python client costs the server half a core); without it, httpx does
	command -v wrk >/dev/null || { [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk) >/dev/null; } || true
	nice -n 10 $(PY) benchmarks/serving.py --in-process 100
