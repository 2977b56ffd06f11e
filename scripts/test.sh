#!/usr/bin/env bash
# Set up (scripts/setup.sh, without the data) and run the whole test suite; arguments, if any, go to one plain
# pytest run instead (e.g. `-k marts`, or a file).
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
pytest() {
    .venv/bin/python -m pytest "$@" 2> >(grep -v -E '^(nanobind: | - leaked | - \.\.\. skipped|See https://nanobind)' >&2)
}
set +e
if [[ $# -gt 0 ]]; then
    pytest "$@"
    status=$?
else
    # two workers (pytest-xdist) share the cores, each taking whole files, so the README's commands and the DAG runs
    # keep their order; the llama.cpp tests then run alone: ggml's threads spin while they wait for a core that
    # another test holds (one of them took 688 s beside a busy core, 7 s alone)
    pytest -n "${R4EC_TEST_WORKERS:-2}" --dist loadfile --ignore tests/test_llamacpp.py
    status=$?
    pytest tests/test_llamacpp.py
    status=$((status | $?))
fi
wait
exit $status
