#!/usr/bin/env bash
# Set up (scripts/setup.sh, without the data) and run the whole test suite; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --no-data
exec .venv/bin/python -m pytest "$@"
