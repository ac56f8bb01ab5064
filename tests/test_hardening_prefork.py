"""Pre-fork servers under ``pyflight run``: real gunicorn (sync and gthread workers) and
uvicorn --workers. Each worker records its own window, answers ``pyflight snapshot PID``,
and writes ``OUT-<pid>.pyfl`` when the master stops it, saying so on stderr. A snapshot
through the master (``pyflight snapshot MASTER --workers``, the master's ``--serve``
endpoint) gathers the workers' windows too."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

import pyflight
from pyflight.core.events import Kind
from webservers import get

APP = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hi\\n"]


async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hi\\n"})
"""


def _wait_for(text: list[str], pattern: str, count: int, deadline: float) -> list[str]:
    while time.monotonic() < deadline:
        found = re.findall(pattern, "".join(text))
        if len(found) >= count:
            return found
        time.sleep(0.1)
    raise TimeoutError(f"no {count} x {pattern!r} in: {''.join(text)[-2000:]}")


def _samples(data: bytes, path: Path) -> int:
    path.write_bytes(data)
    return sum(1 for event in pyflight.load(path).events if event.kind == Kind.SAMPLE)


def _gathered_through_the_master(
    tmp_path: Path,
    env: dict[str, str],
    master: int,
    serve_port: int,
    workers: list[int],
    master_recorded: bool,
) -> None:
    """The master's endpoint and ``pyflight snapshot MASTER --workers``: every worker's window."""
    status = json.loads(get(serve_port, "/debug/pyflight/status").body)
    assert sorted(status["workers"]) == workers
    reply = get(serve_port, "/debug/pyflight/trace-all")
    assert reply.status == 200 and reply.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(reply.body)) as archive:
        names = sorted(archive.namelist())
        expected = [f"pyflight-{pid}.pyfl" for pid in workers]
        expected += [f"pyflight-{master}.pyfl"] if master_recorded else ["errors.txt"]
        assert names == sorted(expected), names
        for pid in workers:
            data = archive.read(f"pyflight-{pid}.pyfl")
            assert _samples(data, tmp_path / "unzipped.pyfl") > 0, f"worker {pid} is sampled"
            assert pyflight.load(tmp_path / "unzipped.pyfl").meta["pid"] == str(pid)
    gathered = subprocess.run(
        [sys.executable, "-m", "pyflight", "snapshot", str(master), "--workers", "-o", "all.pyfl"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gathered.returncode == 0, gathered.stderr
    if master_recorded:
        assert pyflight.load(tmp_path / "all.pyfl").meta["pid"] == str(master)
    else:
        assert not (tmp_path / "all.pyfl").exists()
    for pid in workers:
        assert pyflight.load(tmp_path / f"all-{pid}.pyfl").meta["pid"] == str(pid)
        assert f"all-{pid}.pyfl" in gathered.stdout


def _serve(
    tmp_path: Path,
    env: dict[str, str],
    server_args: list[str],
    run_args: tuple[str, ...] = (),
) -> str:
    (tmp_path / "app.py").write_text(APP)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = dict(env, XDG_RUNTIME_DIR=str(runtime))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pyflight",
            "run",
            "-o",
            "out.pyfl",
            "--serve",
            "127.0.0.1:0",
            *run_args,
            *server_args,
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines: list[str] = []

    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 90
        serve_port = int(_wait_for(lines, r"serving http://127\.0\.0\.1:(\d+)/", 1, deadline)[0])
        port = int(
            _wait_for(
                lines,
                r"(?:Listening at: http://127\.0\.0\.1:|running on http://127\.0\.0\.1:)(\d+)",
                1,
                deadline,
            )[0]
        )
        workers = [
            int(p)
            for p in _wait_for(
                lines, r"(?:Booting worker with pid: |Started server process \[)(\d+)", 2, deadline
            )
        ]
        workers = sorted(set(workers) - {proc.pid})
        assert len(workers) == 2, lines
        for _ in range(4):
            assert get(port, "/").status == 200
        for pid in workers:
            out = tmp_path / f"asked-{pid}.pyfl"
            asked = subprocess.run(
                [sys.executable, "-m", "pyflight", "snapshot", str(pid), "-o", str(out)],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert asked.returncode == 0, asked.stderr
            assert pyflight.load(out).meta["pid"] == str(pid)
        master_recorded = "--children-only" not in run_args
        _gathered_through_the_master(tmp_path, env, proc.pid, serve_port, workers, master_recorded)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = "".join(lines)
    if master_recorded:
        assert pyflight.load(tmp_path / "out.pyfl").meta["pid"] == str(proc.pid)
    else:
        assert not (tmp_path / "out.pyfl").exists(), "the master records nothing"
    for pid in workers:
        path = tmp_path / f"out-{pid}.pyfl"
        assert pyflight.load(path).meta["pid"] == str(pid), stderr
        assert f"pid {pid} " in stderr and str(path) in stderr, "a worker's exit file is announced"
    assert not list(tmp_path.glob(".pyflight-*"))
    return stderr


@pytest.mark.parametrize(
    ("worker_class", "run_args"), [("sync", ()), ("gthread", ()), ("sync", ("--children-only",))]
)
def test_gunicorn_workers_each_leave_a_window(
    subprocess_env: dict[str, str], tmp_path: Path, worker_class: str, run_args: tuple[str, ...]
) -> None:
    pytest.importorskip("gunicorn")
    args = [
        "-m",
        "gunicorn",
        "-w",
        "2",
        "-k",
        worker_class,
        "-b",
        "127.0.0.1:0",
        "--no-control-socket",
        "app:app",
    ]
    stderr = _serve(tmp_path, subprocess_env, args, run_args)
    # gunicorn's USR2 (binary upgrade; default action in its workers) is left alone by default
    assert "gunicorn uses SIGUSR2 itself" in stderr


def test_uvicorn_workers_each_leave_a_window(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    pytest.importorskip("uvicorn")
    _serve(
        tmp_path,
        subprocess_env,
        ["-m", "uvicorn", "--workers", "2", "--port", "0", "app:asgi"],
        ("--signal", "none"),  # uvicorn's supervisor takes USR1/USR2 itself (and ignores them)
    )


def test_a_worker_that_cannot_answer_is_named_not_fatal(tmp_path: Path) -> None:
    """The gathered zip keeps the snapshots it got and says which process gave none, and why."""
    from pyflight.triggers import workers

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer exists
    with pyflight.FlightRecorder() as recorder:
        pyflight.log("here", "the one that answers")
        own = tmp_path / "own.pyfl"
        recorder.write_to(own)
    snapshots = [workers.WorkerSnapshot(1234, data=own.read_bytes()), *workers.gather([gone.pid], timeout=10)]
    with zipfile.ZipFile(io.BytesIO(workers.zip_archive(snapshots))) as archive:
        assert sorted(archive.namelist()) == ["errors.txt", "pyflight-1234.pyfl"]
        assert archive.read("pyflight-1234.pyfl") == own.read_bytes()
        assert archive.read("errors.txt").decode() == f"{gone.pid}: no process with pid {gone.pid}\n"


POOL = """
import multiprocessing as mp, os, sys, time

def pid(_):
    time.sleep(0.2)
    return os.getpid()

if __name__ == "__main__":
    with mp.get_context("fork").Pool(2) as pool:
        workers = sorted(set(pool.map(pid, range(8), chunksize=1)))
        print(" ".join(map(str, workers)), flush=True)
        sys.stdin.readline()  # the test sends the signal, then lets us go
"""


def test_the_snapshot_signal_to_the_parent_gathers_its_workers(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    """USR2 to the recorded program writes its snapshot and one of each recorded worker beside it."""
    (tmp_path / "pool.py").write_text(POOL)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyflight", "run", "-o", "out.pyfl", "pool.py"],
        cwd=tmp_path,
        env=dict(subprocess_env, XDG_RUNTIME_DIR=str(runtime)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        workers = [int(pid) for pid in proc.stdout.readline().split()]
        assert len(workers) == 2
        os.kill(proc.pid, signal.SIGUSR2)
        wanted = {proc.pid, *workers}
        written: dict[int, Path] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and set(written) != wanted:
            time.sleep(0.1)
            written = {int(p.name.split("-")[2]): p for p in tmp_path.glob("pyflight-*-signal.pyfl")}
        if set(written) != wanted:  # say what the program said (seen once on a loaded machine)
            proc.kill()
            _, stderr = proc.communicate(timeout=60)
            raise AssertionError(f"snapshots of {sorted(written)}, not {sorted(wanted)}; stderr:\n{stderr}")
        for pid, path in written.items():
            assert pyflight.load(path).meta["pid"] == str(pid)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
