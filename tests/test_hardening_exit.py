"""Nothing lost at exit: a program that ends while a snapshot is being written still
leaves its exit window, keeps its exit status and leaves no hidden temporary files."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pyflight
from pyflight.core.events import Kind


def _run(tmp_path: Path, env: dict[str, str], source: str, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "prog.py").write_text(textwrap.dedent(source))
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "pyflight", "run", *args, "-o", "out.pyfl", "prog.py"],
        capture_output=True,
        text=True,
        env=dict(env, XDG_RUNTIME_DIR=str(runtime)),
        cwd=tmp_path,
        timeout=120,
    )


SLOW_SNAPSHOT_THEN_EXIT = """
    import sys, threading, time, pyflight, pyflight.recorder

    class Slow:
        '''A destination that takes a while: the snapshot stays in flight.'''
        def write(self, chunk):
            time.sleep(0.3)
            return len(chunk)

    started = threading.Event()
    def snapshot():
        started.set()
        pyflight.recorder.active_recorder().write_to(Slow(), reason="slow")

    pyflight.log("prog", "before exit")
    threading.Thread(target=snapshot, daemon=True).start()
    started.wait()
    time.sleep(0.05)
    sys.exit(3)
"""


def test_exit_during_a_snapshot_waits_for_it_then_writes(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    result = _run(tmp_path, subprocess_env, SLOW_SNAPSHOT_THEN_EXIT)
    assert result.returncode == 3, result.stderr
    assert "could not write" not in result.stderr
    trace = pyflight.load(tmp_path / "out.pyfl")
    assert trace.meta["reason"] == "exit"
    assert "before exit" in [e.arg("message") for e in trace.events if e.kind == Kind.LOG]
    assert not list(tmp_path.glob(".pyflight-*")), "a hidden temporary file was left"


SIGNAL_THEN_EXIT = """
    import os, signal, sys, pyflight
    pyflight.log("prog", "before exit")
    os.kill(os.getpid(), signal.SIGUSR2)  # a signal snapshot, written by another thread
    sys.exit(4)
"""


def test_exit_right_after_a_signal_snapshot_leaves_both_complete(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    for attempt in range(5):
        result = _run(tmp_path, subprocess_env, SIGNAL_THEN_EXIT, "--snapshot-dir", "snaps")
        assert result.returncode == 4, result.stderr
        assert pyflight.load(tmp_path / "out.pyfl").meta["reason"] == "exit", attempt
        snaps = tmp_path / "snaps"
        for leftover in [*tmp_path.glob(".pyflight-*"), *snaps.glob(".pyflight-*")]:
            raise AssertionError(f"hidden temporary left: {leftover.name}")
        for path in snaps.glob("*.pyfl"):
            pyflight.load(path)  # complete, or not there at all


def test_a_failed_exit_write_is_said_and_the_status_kept(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    """The output's directory vanishes while the program runs: the exit write fails, the
    message names the path the user gave (not a temporary) and the status is the program's."""
    (tmp_path / "gone").mkdir()
    (tmp_path / "prog.py").write_text("import os, sys\nos.rmdir('gone')\nsys.exit(5)\n")
    result = subprocess.run(
        [sys.executable, "-m", "pyflight", "run", "-o", "gone/out.pyfl", "prog.py"],
        capture_output=True,
        text=True,
        env=subprocess_env,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 5, result.stderr
    line = next(line for line in result.stderr.splitlines() if "could not write" in line)
    assert line.count(str(tmp_path / "gone" / "out.pyfl")) >= 1 and ".tmp" not in line, line


def test_os_exit_under_run_writes_the_window(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    """``os._exit`` skips atexit; ``pyflight run`` still writes the window, bounded."""
    source = """
        import os, pyflight
        pyflight.log("prog", "before os._exit")
        os._exit(7)
    """
    result = _run(tmp_path, subprocess_env, source)
    assert result.returncode == 7, result.stderr
    trace = pyflight.load(tmp_path / "out.pyfl")
    assert trace.meta["reason"] == "os._exit"
    assert "before os._exit" in [e.arg("message") for e in trace.events if e.kind == Kind.LOG]


PATCHES_GET_IDENT = """
    import threading
    # what gevent's monkey.patch_all() does once the recorder's threads run: threading's
    # get_ident says a greenlet's id (the main thread's kept as it was)
    real, main = threading.get_ident, threading.get_ident()
    threading.get_ident = lambda: main if real() == main else -real()
    print("patched")
"""


def test_a_program_that_patches_threading_gets_no_noise_from_our_threads(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    """The recorder's threads end at exit without a traceback on the program's stderr
    ("Exception ignored in thread started by": threading forgot them by get_ident)."""
    result = _run(tmp_path, subprocess_env, PATCHES_GET_IDENT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "patched"
    assert "Exception ignored" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert pyflight.load(tmp_path / "out.pyfl").events
