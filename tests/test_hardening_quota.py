"""The snapshot-directory quota removes only pyflight's own snapshots, and the debris of
writers that died mid-write; a killed writer leaves no temporary behind at all."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyflight
from pyflight.core.encoding import MAGIC
from pyflight.triggers import snapshots


@pytest.fixture
def recorder() -> Iterator[pyflight.FlightRecorder]:
    rec = pyflight.FlightRecorder(min_age=5, max_bytes=2**20).start()
    try:
        yield rec
    finally:
        rec.stop()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _age(path: Path, seconds: float) -> None:
    moment = time.time() - seconds
    os.utime(path, (moment, moment))


def test_quota_removes_only_provable_snapshots(recorder: pyflight.FlightRecorder, tmp_path: Path) -> None:
    ours = tmp_path / "pyflight-20000101T000000.000Z-1-signal.pyfl"
    ours.write_bytes(MAGIC + b"x" * 5000)
    not_ours = {
        "user's file with our prefix": tmp_path / "pyflight-notes.pyfl",
        "a run's default exit output": tmp_path / "pyflight-1234.pyfl",
        "a child's exit output": tmp_path / "out-1234.pyfl",
        "our name, not a trace": tmp_path / "pyflight-20000101T000000.000Z-2-signal.pyfl",
        "old-style temporary (no pid)": tmp_path / ".pyflight-abcd1234.tmp",
    }
    for what, path in not_ours.items():
        path.write_bytes((b"" if what == "our name, not a trace" else MAGIC) + b"y" * 5000)
    for path in (ours, *not_ours.values()):
        _age(path, 3600)
    newest = snapshots.write_snapshot_file(tmp_path, "signal", quota_bytes=1)
    assert not ours.exists()
    assert newest.exists()
    for what, path in not_ours.items():
        assert path.exists(), what


def test_dead_writers_temporaries_are_swept_and_live_ones_kept(
    recorder: pyflight.FlightRecorder, tmp_path: Path
) -> None:
    dead = tmp_path / f".pyflight-{_dead_pid()}-0badc0de.tmp"
    dead_but_fresh = tmp_path / f".pyflight-{_dead_pid()}-0fed0fed.tmp"
    live = tmp_path / f".pyflight-{os.getpid()}-1234abcd.tmp"
    for path in (dead, dead_but_fresh, live):
        path.write_bytes(b"z" * 10_000)
    _age(dead, 3600)
    _age(live, 3600)
    snapshots.write_snapshot_file(tmp_path, "signal", quota_bytes=10**9)
    assert not dead.exists(), "a dead writer's old temporary is debris"
    assert dead_but_fresh.exists(), "may be being renamed into place right now"
    assert live.exists(), "a live writer's temporary is in use"


def test_live_temporaries_count_toward_the_quota(recorder: pyflight.FlightRecorder, tmp_path: Path) -> None:
    old = tmp_path / "pyflight-20000101T000000.000Z-1-signal.pyfl"
    old.write_bytes(MAGIC + b"x" * 100)
    _age(old, 3600)
    live = tmp_path / f".pyflight-{os.getpid()}-1234abcd.tmp"
    live.write_bytes(b"z" * 50_000)
    newest = snapshots.write_snapshot_file(tmp_path, "signal")
    quota = newest.stat().st_size + old.stat().st_size + 1000  # fits without the temporary
    snapshots.enforce_quota(tmp_path, quota, keep=newest)
    assert not old.exists()


KILLED_MID_WRITE = """
    import os, signal, sys
    import pyflight
    import pyflight.format.writer as writer

    real = writer.write_stream
    def write_then_die(out, header, generations):
        out.write(header)
        out.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    writer.write_stream = write_then_die
    rec = pyflight.FlightRecorder(min_age=5, max_bytes=2**20).start()
    rec.write_to(sys.argv[1])
"""


@pytest.mark.skipif(not hasattr(os, "O_TMPFILE"), reason="unnamed temporary files are Linux-only")
def test_a_writer_killed_mid_write_leaves_nothing(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED_MID_WRITE), str(tmp_path / "out.pyfl")],
        env=subprocess_env,
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == -9, result.stderr
    assert list(tmp_path.iterdir()) == []
