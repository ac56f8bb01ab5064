#!/usr/bin/env bash
# Runs CPython's own asyncio/threading/queue/concurrent.futures suites with and without
# the full default recorder (`pyflight run -m test ...`, child processes recorded too) on
# every present 3.11/3.12/3.13 venv made by `make test`, and fails if the outcomes differ.
# A recorded fork child starts no recorder thread for its first 0.1 s (docs/deploy.md),
# so test_threading's fork tests see the threads they expect. PYFLIGHT_VENVS="..." picks
# the venvs (default: all three).
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
for venv in ${PYFLIGHT_VENVS:-.venvs/py3.11 .venvs/py3.12 .venvs/py3.13}; do
    [ -x "$venv/bin/python" ] || continue
    py="$venv/bin/python"
    tests=$("$py" - <<'PY'
import importlib.util
names = ["test_asyncio", "test_threading", "test_queue", "test_concurrent_futures"]
print(" ".join(n for n in names if importlib.util.find_spec(f"test.{n}")))
PY
)
    out=$(mktemp -d)
    echo "=== $venv: $tests"
    # test_deadlock hangs on some machines with or without pyflight
    "$py" -m test -i '*test_deadlock*' $tests > "$out/plain.txt" 2>&1 || true
    "$py" -m pyflight run -o "$out/run.pyfl" -m test -i '*test_deadlock*' $tests > "$out/recorded.txt" 2>&1 || true
    plain=$(grep -E "^(Total tests|Result):" "$out/plain.txt" | tr '\n' ' ')
    recorded=$(grep -E "^(Total tests|Result):" "$out/recorded.txt" | tr '\n' ' ')
    echo "  without pyflight: $plain"
    echo "  with pyflight:    $recorded"
    if [ "$plain" != "$recorded" ] || [ -z "$plain" ]; then
        echo "  DIFFERENT (logs in $out)"
        status=1
    fi
done
exit $status
