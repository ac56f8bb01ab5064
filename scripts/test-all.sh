#!/usr/bin/env bash
# Runs lint, type checks and the test suite on every present CPython of 3.11/3.12/3.13,
# each with the C core and with the pure-Python core. Used by `make test` and CI.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSIONS="${PYFLIGHT_PYTHONS:-3.11 3.12 3.13}"
VENVS=.venvs
mkdir -p "$VENVS"

find_python() {  # find_python 3.12 -> path of an interpreter of that version, or nothing
    local v=$1 p
    if command -v pyenv >/dev/null 2>&1; then
        for p in $(pyenv versions --bare 2>/dev/null | grep -E "^${v//./\\.}\.[0-9]+$" | sort -V -r); do
            echo "$(pyenv prefix "$p")/bin/python"; return
        done
    fi
    command -v "python$v" 2>/dev/null || true
}

found=0
linted=0
for v in $VERSIONS; do
    py=$(find_python "$v")
    if [ -z "$py" ]; then
        echo "=== Python $v: not present, skipped"
        continue
    fi
    found=1
    venv="$VENVS/py$v"
    echo "=== Python $v ($py)"
    [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
    PYFLIGHT_STRICT_BUILD=1 "$venv/bin/python" -m pip install -q -e ".[test]"
    "$venv/bin/python" -c "import pyflight._core" || { echo "C core failed to build on $v"; exit 1; }
    if [ $linted = 0 ]; then
        "$venv/bin/ruff" check src tests bench examples
        "$venv/bin/ruff" format --check src tests bench examples
        "$venv/bin/mypy"
        linted=1
    fi
    echo "--- $v, C core"
    "$venv/bin/python" -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-}
    echo "--- $v, pure-Python core"
    PYFLIGHT_PURE_PYTHON=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-}
done
if [ $found = 0 ]; then
    echo "no CPython 3.11/3.12/3.13 found" >&2
    exit 1
fi
