"""SIGUSR2 snapshots and the control channel behind `pyflight snapshot PID`."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyflight
from pyflight.core.events import Kind
from pyflight.format.reader import loads
from pyflight.triggers import control, signals

NAME = re.compile(r"pyflight-\d{8}T\d{6}\.\d{3}Z-(\d+)-signal\.pyfl")


@pytest.fixture
def recorder() -> Iterator[pyflight.FlightRecorder]:
    rec = pyflight.FlightRecorder(min_age=5, max_bytes=2**20).start()
    try:
        yield rec
    finally:
        rec.stop()


@pytest.fixture
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Sockets of these tests go to a private directory of their own."""
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(directory))
    return directory


def _wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_sigusr2_writes_a_named_snapshot_with_a_trigger_event(
    recorder: pyflight.FlightRecorder, tmp_path: Path
) -> None:
    before = signal.getsignal(signal.SIGUSR2)
    trigger = signals.install(tmp_path / "snaps")
    try:
        pyflight.log("test", "before the signal")
        os.kill(os.getpid(), signal.SIGUSR2)
        _wait_for(lambda: trigger.last_path is not None)
    finally:
        signals.uninstall()
    assert signal.getsignal(signal.SIGUSR2) == before
    (path,) = (tmp_path / "snaps").iterdir()
    match = NAME.fullmatch(path.name)
    assert match and int(match.group(1)) == os.getpid()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    trace = pyflight.load(path)
    assert trace.meta["reason"] == "signal"
    (trigger_event,) = [e for e in trace.events if e.kind == Kind.TRIGGER]
    assert trigger_event.arg("reason") == "signal" and trigger_event.arg("detail") == "SIGUSR2"
    assert "before the signal" in [e.arg("message") for e in trace.events if e.kind == Kind.LOG]


def test_signal_quota_and_other_signal(recorder: pyflight.FlightRecorder, tmp_path: Path) -> None:
    trigger = signals.install(tmp_path, "USR1", quota_bytes=1)  # keeps only the newest file
    try:
        for _ in range(3):
            done = trigger.last_path
            os.kill(os.getpid(), signal.SIGUSR1)
            _wait_for(lambda done=done: trigger.last_path not in (None, done))
            time.sleep(0.002)  # distinct file names
    finally:
        signals.uninstall("SIGUSR1")
    assert [p.name for p in tmp_path.iterdir()] == [trigger.last_path.name]  # type: ignore[union-attr]


def test_parse_signal() -> None:
    assert signals.parse_signal("usr2") == signals.parse_signal("SIGUSR2") == signal.SIGUSR2
    assert signals.parse_signal(str(int(signal.SIGUSR1))) == signal.SIGUSR1
    with pytest.raises(ValueError):
        signals.parse_signal("SIGNOPE")


def test_control_channel_in_process(recorder: pyflight.FlightRecorder, runtime_dir: Path) -> None:
    server = control.enable()
    try:
        assert control.enable() is server
        assert server.path == runtime_dir / "pyflight" / f"{os.getpid()}.sock"
        assert stat.S_IMODE(os.stat(runtime_dir / "pyflight").st_mode) == 0o700
        assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
        pyflight.log("test", "before the request")
        data = control.request_snapshot(os.getpid())
    finally:
        control.disable()
    assert not server.path.exists()
    trace = loads(data)
    assert trace.meta["reason"] == "snapshot"
    (trigger,) = [e for e in trace.events if e.kind == Kind.TRIGGER]
    assert trigger.arg("reason") == "snapshot" and f"pid {os.getpid()}" in trigger.arg("detail")
    assert "before the request" in [e.arg("message") for e in trace.events if e.kind == Kind.LOG]


def test_control_errors(runtime_dir: Path) -> None:
    with pytest.raises(control.NoControlChannel, match="no pyflight control channel"):
        control.request_snapshot(os.getpid())  # alive, no channel
    server = control.enable()  # a channel, but no recorder running
    try:
        with pytest.raises(control.ControlError, match="no FlightRecorder is running"):
            control.request_snapshot(os.getpid())
    finally:
        control.disable()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with pytest.raises(control.NoControlChannel, match="no process with pid"):
        control.request_snapshot(dead.pid)
    with pytest.raises(control.NoControlChannel, match="not a process id"):
        control.request_snapshot(0)
    # a socket left by a dead process with a reused pid: nobody listens, so "no channel"
    stale = server.path
    stale.parent.mkdir(exist_ok=True)
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(os.fspath(stale))
    with pytest.raises(control.NoControlChannel):
        control.request_snapshot(os.getpid())


def test_unsafe_directory_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(control.ControlError, match="accessible to other users"):
        control._check_private(shared)
    shared.chmod(0o700)
    control._check_private(shared)


def _pyflight(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyflight", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
    )


def test_pyflight_snapshot_cli(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    env = dict(subprocess_env, XDG_RUNTIME_DIR=str(tmp_path))
    (tmp_path / "server.py").write_text(
        textwrap.dedent(
            """
            import sys, time, pyflight
            with pyflight.task("serving"):
                pyflight.log("server", "up and running")
            print("ready", flush=True)
            sys.stdin.read()
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyflight", "run", "-o", "server.pyfl", "server.py"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        result = _pyflight("snapshot", str(proc.pid), "-o", "asked.pyfl", env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "asked.pyfl" in result.stdout
        asked = tmp_path / "asked.pyfl"
        assert stat.S_IMODE(asked.stat().st_mode) == 0o600
        trace = pyflight.load(asked)
        assert trace.meta["reason"] == "snapshot" and int(trace.meta["pid"]) == proc.pid
        assert "up and running" in [e.arg("message") for e in trace.events if e.kind == Kind.LOG]
        default = _pyflight("snapshot", str(proc.pid), env=env, cwd=tmp_path)
        assert default.returncode == 0, default.stderr
        (named,) = tmp_path.glob(f"pyflight-*-{proc.pid}-snapshot.pyfl")
        pyflight.load(named)
    finally:
        _, err = proc.communicate("", timeout=60)
    assert proc.returncode == 0, err
    assert not (tmp_path / "pyflight" / f"{proc.pid}.sock").exists()  # removed at exit
    for args in (
        ["snapshot", str(proc.pid)],
        ["snapshot", str(os.getpid())],
        ["snapshot", "x1"],
        ["snapshot"],
    ):
        result = _pyflight(*args, env=env, cwd=tmp_path)
        assert result.returncode == 2, (args, result)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, (
            result.stderr
        )


def _blocked_signals(native_id: int) -> set[int]:
    """The signals a thread of this process blocks, from /proc (Linux)."""
    status = Path(f"/proc/self/task/{native_id}/status").read_text()
    (mask,) = [line.split()[1] for line in status.splitlines() if line.startswith("SigBlk:")]
    bits = int(mask, 16)
    return {n for n in range(1, 65) if bits >> (n - 1) & 1}


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread masks from /proc")
def test_pyflight_threads_never_take_the_programs_signals(
    recorder: pyflight.FlightRecorder, tmp_path: Path, runtime_dir: Path
) -> None:
    """A process-directed SIGTERM landing on one of our threads while the main thread
    waits in C (a multiprocessing queue) would never run the handler: the process hung
    instead of dying. Our threads block the signals, so they go to the program's threads."""
    signals.install(tmp_path)
    control.enable()
    server = pyflight.serve(port=0)
    try:
        ours = [t for t in threading.enumerate() if t.name.startswith("pyflight-")]
        names = {t.name for t in ours}
        assert {"pyflight-ticker", "pyflight-sampler", "pyflight-writer", "pyflight-control"} <= names
        assert any(name.startswith("pyflight-http") for name in names), names
        wanted = {signal.SIGTERM, signal.SIGINT, signal.SIGUSR2, signal.SIGHUP, signal.SIGCHLD}
        for thread in ours:
            assert thread.native_id is not None
            assert wanted <= _blocked_signals(thread.native_id), thread.name
            assert signal.SIGSEGV not in _blocked_signals(thread.native_id)  # faults stay deliverable
        assert not wanted & _blocked_signals(threading.main_thread().native_id or os.getpid())
    finally:
        server.close()
        control.disable()
        signals.uninstall()
