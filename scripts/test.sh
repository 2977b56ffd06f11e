#!/usr/bin/env bash
# Set up (scripts/setup.sh, without the data) and run the whole test suite; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --no-data
# the Redis online-store tests start a real redis-server on 127.0.0.1
if ! command -v redis-server >/dev/null; then
    echo "test: installing redis-server"
    (apt-get update -qq && apt-get install -y -qq redis-server) >/dev/null
fi
.venv/bin/ruff check r4ec tests benchmarks spark_jobs feature_repo dags
# duckdb 2.0's bindings list objects still alive at interpreter exit (ibis keeps connections); that report is noise
# after pytest's own closing line, so it is filtered out of stderr
set +e
.venv/bin/python -m pytest "$@" 2> >(grep -v -E '^(nanobind: | - leaked | - \.\.\. skipped|See https://nanobind)' >&2)
status=$?
wait
exit $status
