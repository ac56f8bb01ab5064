"""Recording the problem programs (tests/problem_programs) in a child Python, as the
findings, report and browser tests all do."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyflight.analysis.rules import Finding

HERE = Path(__file__).parent
PROGRAMS = HERE / "problem_programs"
SRC = HERE.parent / "src"


def marked_line(path: Path, marker: str) -> int:
    """The number of the first line of ``path`` that contains ``marker`` (a comment such
    as ``# HASH LINE`` that tests point at, so that edits above it do not break them)."""
    return next(i for i, text in enumerate(path.read_text().splitlines(), 1) if marker in text)


def pinned() -> list[str]:
    """``taskset -c 1`` (or the one CPU we may use), to put before a command: planted GIL
    contention needs its threads on one CPU. Skips the test without taskset."""
    import pytest

    taskset = shutil.which("taskset")
    if taskset is None or not hasattr(os, "sched_getaffinity"):
        pytest.skip("taskset is needed to pin the program to one CPU")
    cpus = sorted(os.sched_getaffinity(0))
    return [taskset, "-c", str(1 if 1 in cpus else cpus[0])]


def record_program(program: Path, out: Path, *, unbudgeted: bool = False) -> Path:
    """Run ``program``'s ``main()`` under a recorder (``_harness.py``); its trace is ``out``.

    ``unbudgeted`` records without the CPU budget, for tests of how samples are *shown*
    (flame graphs): on a loaded machine the pure core's sampler is over the 1% budget and
    is slowed to a sample a second, so a 0.6 s hot function may get no sample at all.
    What the budget sheds, and that it says so, is tests/test_budget.py's concern."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    if unbudgeted:
        env["PYFLIGHT_HARNESS_UNBUDGETED"] = "1"
    proc = subprocess.run(
        [sys.executable, str(PROGRAMS / "_harness.py"), str(program), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"exit status {proc.returncode}: {proc.stderr[-2000:]}"
    return out


#: Traces recorded in this test session, by program name and the PYFLIGHT_* variables
#: they were recorded under (see record_named).
_recorded: dict[tuple[str, tuple[tuple[str, str], ...]], Path] = {}
_recorded_lock = threading.Lock()


def record_named(name: str, out_dir: Path) -> Path:
    """``problem_programs/<name>.py`` recorded into ``out_dir/<name>.pyfl``, once per test
    session: the tests that look at one program from several sides (its rule's test, the
    top-findings table, the report) read the first test's trace instead of recording the
    program again, a few seconds each. The callers only read the trace; one that sets a
    ``PYFLIGHT_*`` variable for the program gets a recording of its own."""
    key = (name, tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("PYFLIGHT_"))))
    with _recorded_lock:
        path = _recorded.get(key)
    if path is not None and path.exists():
        return path
    path = record_program(PROGRAMS / f"{name}.py", out_dir / f"{name}.pyfl")
    with _recorded_lock:
        _recorded[key] = path
    return path


def findings_of(path: Path) -> list[Finding]:
    """The findings of a recorded trace, the rules run strictly (a rule that fails, fails)."""
    from pyflight.analysis import build
    from pyflight.analysis.rules import find
    from pyflight.format.reader import loads

    return find(build(loads(path.read_bytes())), strict=True)


def top_warning(findings: list[Finding], rule: str) -> Finding:
    """The finding of ``rule`` among the top three: it must be there, and a warning."""
    from pyflight.analysis.rules import WARNING

    top = [f for f in findings[:3] if f.rule == rule]
    assert top, [(f.rule, f.score, f.title) for f in findings[:5]]
    assert top[0].score >= WARNING, (top[0].score, top[0].title)
    return top[0]
