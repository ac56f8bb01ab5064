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

# The machines are shared and noisy: a test that fails is re-run once on its own. A
# failure that repeats fails the run; one that does not is reported as FLAKY below (and
# is a defect to fix, not to ignore).
flaky=""
run_pytest() {  # run_pytest VENV PURE
    local venv=$1 pure=$2 cache
    cache="$venv/.pytest-cache-$pure"
    rm -rf "$cache"
    if PYFLIGHT_PURE_PYTHON=$pure "$venv/bin/python" -m pytest -q -o cache_dir="$cache" ${PYTEST_ARGS:-}; then
        return 0
    fi
    echo "--- re-running the failed tests once, alone"
    PYFLIGHT_PURE_PYTHON=$pure "$venv/bin/python" -m pytest -q -o cache_dir="$cache" --last-failed \
        --last-failed-no-failures none ${PYTEST_ARGS:-}
    flaky="$flaky $(basename "$venv")/pure=$pure"
}

# The browser tests of the HTML report (tests/test_report_browser.py) drive Debian's
# Chromium (/usr/bin/chromium) through Playwright (in the `test` extra); they skip, saying
# why, without it. Install it once per run when we may: root or passwordless sudo, and
# apt-get. Quiet, non-interactive, never fatal. PYFLIGHT_INSTALL_CHROMIUM=0 skips this.
install_chromium() {
    local sudo="" log
    [ -x /usr/bin/chromium ] && return 0
    [ "${PYFLIGHT_INSTALL_CHROMIUM:-1}" = 0 ] && return 0
    command -v apt-get >/dev/null 2>&1 || { echo "=== no /usr/bin/chromium nor apt-get: browser tests will skip"; return 0; }
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo="sudo -n"
        else
            echo "=== no /usr/bin/chromium and not root (nor passwordless sudo): browser tests will skip"
            return 0
        fi
    fi
    echo "=== installing Chromium for the browser tests (apt-get install chromium)"
    log=$(mktemp)
    if { $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
            || { $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
                 && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }
         } </dev/null >"$log" 2>&1 && [ -x /usr/bin/chromium ]; then
        rm -f "$log"
    else
        tail -n 5 "$log" | sed 's/^/    /'
        rm -f "$log"
        echo "=== Chromium could not be installed: browser tests will skip"
    fi
    return 0
}
install_chromium

# speedscope's app (npm package) for tests/test_export_tools.py, into .tools/ once per
# checkout; the tests skip, saying why, without npm or the registry. PYFLIGHT_INSTALL_SPEEDSCOPE=0 skips.
install_speedscope() {
    [ -f .tools/node_modules/speedscope/dist/release/index.html ] && return 0
    [ "${PYFLIGHT_INSTALL_SPEEDSCOPE:-1}" = 0 ] && return 0
    command -v npm >/dev/null 2>&1 || { echo "=== no npm: the speedscope tests will skip"; return 0; }
    echo "=== installing speedscope for the export tests (npm install speedscope into .tools/)"
    timeout 300 npm install --no-save --no-package-lock --no-audit --no-fund --silent --prefix .tools speedscope \
        </dev/null >/dev/null 2>&1 || echo "=== speedscope could not be installed: its tests will skip"
    return 0
}
install_speedscope

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
    run_pytest "$venv" 0
    echo "--- $v, pure-Python core"
    run_pytest "$venv" 1
done
if [ -n "$flaky" ]; then
    echo "FLAKY (failed, then passed when re-run alone):$flaky"
fi
if [ $found = 0 ]; then
    echo "no CPython 3.11/3.12/3.13 found" >&2
    exit 1
fi
