"""CPU attribution against the kernel's figures, on planted programs run for real under
``pyflight run``: CPU where threads ran (not where they waited for the GIL), GIL waits as
``ready``, forked children sampled like any process, pyflight itself out of the data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

import pyflight
from programs import PROGRAMS, marked_line, pinned
from pyflight.analysis import build
from pyflight.analysis.breakdown import thread_breakdown
from pyflight.analysis.cpu import cpu_samples
from pyflight.analysis.profiles import cpu_profile
from pyflight.core.events import BlockReason

PYFLIGHT_DIR = str(Path(pyflight.__file__).parent)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread CPU clocks: Linux")


def _run(
    args: list[str], env: dict[str, str], cwd: Path, prefix: list[str] | None = None
) -> tuple[str, float]:
    """Run ``pyflight run ARGS``; its stdout and the CPU the kernel charged it (s)."""
    before = os.times()
    proc = subprocess.run(
        [*(prefix or []), sys.executable, "-m", "pyflight", "run", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )
    after = os.times()
    assert proc.returncode == 0, proc.stderr[-2000:]
    kernel = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return proc.stdout, kernel


def test_hashing_under_one_lock_cpu_matches_kernel_and_hot_line(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    program = PROGRAMS / "gil_hashing_lock.py"
    out = tmp_path / "hash.pyfl"
    stdout, process_cpu = _run(
        ["-o", str(out), "--min-age", "600", str(program)], subprocess_env, tmp_path, pinned()
    )
    measured = json.loads(stdout.strip().splitlines()[-1])["thread_cpu_s"]
    model = build(pyflight.load(out))
    hashers = {tid for tid, tl in model.threads.items() if tl.name.startswith("hasher-")}
    assert len(hashers) == 4

    # the CPU reported for the hashing threads is what their kernel clocks say
    reported = sum(ns for s, ns in cpu_samples(model) if s.tid in hashers) / 1e9
    kernel = sum(measured.values())
    assert abs(reported - kernel) <= 0.15 * kernel, (reported, measured)
    # and the whole profile is no more than the process used (pyflight's own CPU and
    # start-up included there): no CPU counted twice where threads waited
    assert cpu_profile(model).total / 1e9 <= process_cpu * 1.15

    # the threads waited for the GIL: the thread table says so
    rows = {row.name.split(" (")[0]: row for row in thread_breakdown(model)}
    for name in measured:
        assert rows[name].ready > 0, rows[name]

    if not any(iv.reason == BlockReason.LOCK for tid in hashers for iv in model.threads[tid].intervals):
        # the pure-Python core does not trace lock waits: a sample at `with lock:` then
        # cannot be told from one running there
        assert os.environ.get("PYFLIGHT_PURE_PYTHON") == "1"
        return
    # the hot line is the hashing, not the `with lock:` where the sampler finds waiters
    hash_line = marked_line(program, "# HASH LINE")
    lock_line = marked_line(program, "# LOCK LINE")
    by_line: dict[int, int] = {}
    for stack, ns in cpu_profile(model).stacks.items():
        if stack and stack[0].file == str(program):
            by_line[stack[0].line] = by_line.get(stack[0].line, 0) + ns
    assert max(by_line, key=by_line.__getitem__) == hash_line, by_line
    # the sampler takes the GIL when a thread lets go of it, and on a loaded CPU a lock
    # hand-off is where that often happens: samples stopped at the lock line are charged
    # where the thread ran (analysis/cpu.py, _lock_sites)
    assert by_line.get(lock_line, 0) < by_line[hash_line] / 2, by_line
    report = json.loads(
        subprocess.run(
            [sys.executable, "-m", "pyflight", "report", "--json", str(out)],
            capture_output=True,
            text=True,
            env=subprocess_env,
            timeout=300,
            check=True,
        ).stdout
    )
    hotspot = next(f for f in report["findings"] if f["rule"] == "cpu-hotspot")
    assert hotspot["culprit"]["line"] == hash_line


def test_forked_worker_has_cpu_samples_and_no_phantom_thread(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    program = PROGRAMS / "fork_worker.py"
    out = tmp_path / "fork.pyfl"
    stdout, _ = _run(["-o", str(out), "--min-age", "600", str(program)], subprocess_env, tmp_path)
    child = json.loads(stdout.strip().splitlines()[-1])
    snapshot = tmp_path / f"fork-{child['pid']}.pyfl"
    assert snapshot.exists(), sorted(p.name for p in tmp_path.iterdir())
    parent_pid = int(pyflight.load(out).meta["pid"])
    model = build(pyflight.load(snapshot))

    program_threads = {tid: tl for tid, tl in model.threads.items() if not tl.is_pyflight}
    # only the child's own main thread, under its own tid and name: no row for the parent's
    assert list(program_threads) == [child["pid"]], {t: tl.name for t, tl in program_threads.items()}
    assert parent_pid not in model.threads
    assert program_threads[child["pid"]].name == "MainThread"

    cpu = cpu_profile(model)
    assert cpu.total >= 0.5 * child["cpu_s"] * 1e9, (cpu.total, child)
    assert cpu.total <= 1.15 * child["cpu_s"] * 1e9 + 50_000_000, (cpu.total, child)
    top_stack, _ = cpu.top(1)[0]
    assert top_stack[0].file == str(program)


def test_serve_leaves_no_pyflight_frames_or_threads(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    program = tmp_path / "served.py"
    program.write_text(
        "import sys, time\n"
        "def work():\n"
        "    end = time.process_time() + 0.3\n"
        "    while time.process_time() < end:\n"
        "        sum(i * i for i in range(200))\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "work()\n"
    )
    out = tmp_path / "served.pyfl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyflight", "run", "-o", str(out), "--serve", "127.0.0.1:0", str(program)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env,
        cwd=tmp_path,
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None and proc.stdin is not None
        line = proc.stderr.readline()
        assert line.startswith("pyflight: serving http://127.0.0.1:"), line
        assert proc.stdout.readline() == "ready\n"
        with urllib.request.urlopen(line.split()[-1], timeout=60) as response:  # the server works
            assert response.read()
        proc.stdin.write("go\n")
        proc.stdin.flush()
    finally:
        proc.communicate(timeout=120)
    assert proc.returncode == 0

    model = build(pyflight.load(out))
    names = [row.name for row in thread_breakdown(model)]
    assert len(names) == 1 and names[0].startswith("MainThread"), names
    folded = tmp_path / "served.folded"
    subprocess.run(
        [sys.executable, "-m", "pyflight", "export", str(out), "--format", "folded", "-o", str(folded)],
        env=subprocess_env,
        timeout=300,
        check=True,
    )
    text = folded.read_text()
    assert "work (" in text
    assert PYFLIGHT_DIR not in text and "runpy" not in text, text[:2000]
    for stack, _ in cpu_profile(model).top(20):
        assert all(not f.file.startswith(PYFLIGHT_DIR) for f in stack), stack
