#!/usr/bin/env bash
# `make test`: start what the tests need (PostgreSQL), run pytest with coverage, stop the services.
set -uo pipefail
cd "$(dirname "$0")/.."
export SM_TEST_POSTGRES_URL=${SM_TEST_POSTGRES_URL:-$(bash scripts/postgres.sh start)}
trap 'bash scripts/postgres.sh stop' EXIT
.venv/bin/python -m pytest "$@"
rc=$?
# pytest's 5 means no test ran: that is a failure of the suite, not a pass
if [[ $rc -eq 5 ]]; then echo "no tests ran"; exit 1; fi
exit $rc
