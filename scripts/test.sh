#!/usr/bin/env bash
# `make test` (and so CI): lint, types, supply-chain report (SBOM, pip-audit), then pytest with coverage against the
# real services the tests need (PostgreSQL from Debian's packages, started here and stopped at the end).
# pytest ends with its 30 slowest steps: where CI time goes, under coverage as CI runs it.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs/ci
fail=0
stage() { echo "== $1  [$(date -u +%T), ${SECONDS} s into make test]"; }

stage "ruff"
.venv/bin/ruff check . && .venv/bin/ruff format --check . || fail=1

stage "mypy (pipelines, router_models, serving, assets)"
.venv/bin/mypy pipelines router_models serving assets || fail=1

stage "SBOM (CycloneDX) -> runs/ci/sbom.cdx.json"
.venv/bin/cyclonedx-py environment --of JSON -o runs/ci/sbom.cdx.json .venv >/dev/null || fail=1

stage "pip-audit on requirements.lock"
if timeout 300 .venv/bin/pip-audit -r requirements.lock --no-deps --disable-pip --progress-spinner off \
    -f json -o runs/ci/pip-audit.json 2>runs/ci/pip-audit.err; then
  echo "pip-audit: no known vulnerabilities in $(grep -c '^[a-z0-9].*==' requirements.lock) locked packages"
else
  rc=$?
  if grep -qiE "connection|resolve|timed out|network" runs/ci/pip-audit.err || [[ $rc -eq 124 ]]; then
    echo "pip-audit: the vulnerability service was NOT reachable; the audit did not run (see runs/ci/pip-audit.err)"
  else
    echo "pip-audit found known vulnerabilities:"; cat runs/ci/pip-audit.err; fail=1
  fi
fi

stage "pytest"
# the Dagster UI test drives Debian's Chromium through Playwright
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [[ $(id -u) -eq 0 ]]; then
  echo "[test] installing Debian's chromium package"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
fi
if [[ -z "${SM_TEST_POSTGRES_URL:-}" ]]; then  # the registry's Postgres test runs on a server started here
  if ! SM_TEST_POSTGRES_URL=$(bash scripts/postgres.sh start) || [[ -z "$SM_TEST_POSTGRES_URL" ]]; then
    echo "[test] PostgreSQL did not start (bash scripts/postgres.sh start): the registry test cannot run"
    exit 1
  fi
  export SM_TEST_POSTGRES_URL
  trap 'bash scripts/postgres.sh stop' EXIT  # only a server this script started
fi
.venv/bin/python -m pytest --cov=pipelines --cov=router_models --cov-report=term:skip-covered \
  --cov-report=xml:runs/ci/coverage.xml --cov-fail-under=85 --durations=30 "$@"
rc=$?
# pytest's 5 means no test ran: that is a failure of the suite, not a pass
if [[ $rc -eq 5 ]]; then echo "no tests ran"; rc=1; fi
[[ $fail -ne 0 && $rc -eq 0 ]] && { echo "lint or audit gates failed"; rc=1; }
exit $rc
