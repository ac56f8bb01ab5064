"""`pyflight run`: a real program in a real child process, and that program's children."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest

import pyflight
from pyflight.core.events import Kind


@pytest.fixture
def env(subprocess_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Child environment; control sockets in the test's own directory."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    return dict(subprocess_env, XDG_RUNTIME_DIR=str(runtime))


def _run(
    *args: str, env: dict[str, str], cwd: Path, python: tuple[str, ...] = ("-m", "pyflight", "run")
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *python, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )


def _write(path: Path, source: str) -> Path:
    path.write_text(textwrap.dedent(source))
    return path


def _logs(trace: pyflight.Trace) -> list[str]:
    return [e.arg("message") for e in trace.events if e.kind == Kind.LOG]


def test_exit_code_kept_and_window_written(env: dict[str, str], tmp_path: Path) -> None:
    _write(
        tmp_path / "three.py",
        """
        import sys, pyflight
        pyflight.log("prog", "exiting with 3")
        sys.exit(3)
        """,
    )
    result = _run("-o", "out.pyfl", "three.py", env=env, cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    trace = pyflight.load(tmp_path / "out.pyfl")
    assert trace.meta["reason"] == "exit" and "exiting with 3" in _logs(trace)
    assert [e.arg("reason") for e in trace.events if e.kind == Kind.TRIGGER] == ["exit"]


def test_unhandled_exception(env: dict[str, str], tmp_path: Path) -> None:
    _write(
        tmp_path / "boom.py",
        """
        import pyflight
        def fail():
            pyflight.log("prog", "about to fail")
            raise KeyError("boom")
        fail()
        """,
    )
    result = _run("-o", "out.pyfl", "boom.py", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "KeyError: 'boom'" in result.stderr and 'boom.py", line 6, in <module>' in result.stderr
    assert "pyflight/run.py" not in result.stderr  # the traceback is the program's own
    trace = pyflight.load(tmp_path / "out.pyfl")
    assert trace.meta["reason"] == "exception" and "about to fail" in _logs(trace)


def test_killed_by_sigterm(env: dict[str, str], tmp_path: Path) -> None:
    _write(
        tmp_path / "sleeper.py",
        """
        import time, pyflight
        pyflight.log("prog", "before the signal")
        print("ready", flush=True)
        time.sleep(60)
        """,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyflight", "run", "-o", "out.pyfl", "sleeper.py"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, err
    trace = pyflight.load(tmp_path / "out.pyfl")
    assert trace.meta["reason"] == "sigterm" and "before the signal" in _logs(trace)


def test_keyboard_interrupt_dies_of_sigint(env: dict[str, str], tmp_path: Path) -> None:
    _write(
        tmp_path / "ctrlc.py",
        "import atexit\natexit.register(print, 'atexit ran')\nraise KeyboardInterrupt\n",
    )
    result = _run("-o", "out.pyfl", "ctrlc.py", env=env, cwd=tmp_path)
    alone = _run("ctrlc.py", env=env, cwd=tmp_path, python=())
    assert result.returncode == alone.returncode == -signal.SIGINT
    assert result.stdout == alone.stdout == "atexit ran\n"
    assert pyflight.load(tmp_path / "out.pyfl").meta["reason"] == "sigint"


SHOW = """
import json, sys
print(json.dumps({
    "argv": sys.argv,
    "name": __name__,
    "file": __file__,
    "path0": sys.path[0],
    "spec": getattr(__spec__, "name", None),
    "main_is_me": sys.modules["__main__"].__dict__ is globals(),
}))
"""


def test_program_sees_what_it_would_see_alone(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub" / "show.py", SHOW)
    _write(tmp_path / "showmod.py", SHOW)
    program_args = ["-o", "x", "--min-age", "3", "-m", "y", "--", "z"]  # look like ours, are the program's
    for command in (["sub/show.py", *program_args], ["-m", "showmod", *program_args]):
        under = _run("-o", "out.pyfl", *command, env=env, cwd=tmp_path)
        alone = _run(*command, env=env, cwd=tmp_path, python=())
        assert under.returncode == alone.returncode == 0, under.stderr + alone.stderr
        assert json.loads(under.stdout) == json.loads(alone.stdout)
        assert json.loads(under.stdout)["main_is_me"] is True


def test_exit_with_a_message_and_bad_commands(env: dict[str, str], tmp_path: Path) -> None:
    _write(tmp_path / "msg.py", "import sys\nsys.exit('bye now')\n")
    result = _run("-o", "out.pyfl", "msg.py", env=env, cwd=tmp_path)
    assert result.returncode == 1 and "bye now" in result.stderr
    for args in (
        ["-m", "no_such_module_here"],
        ["-o", "missing/dir/out.pyfl", "msg.py"],
        ["-m"],
        ["--serve", "x:y", "msg.py"],
        ["--source-option", "asyncio", "msg.py"],
        ["--source-option", "nosuch.x=1", "msg.py"],
        ["--source-option", "asyncio.task_wait=sometimes", "msg.py"],
        ["--sources", "threads,nosuch", "msg.py"],
        ["--sources", ",", "msg.py"],
        ["--no-source", "nosuch", "msg.py"],
    ):
        bad = _run(*args, env=env, cwd=tmp_path)
        assert bad.returncode == 2, (args, bad)
        assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr, bad.stderr


POOL = """
import multiprocessing as mp, os, sys, pyflight

def init(barrier):
    barrier.wait()  # both workers are up (and recording) before any work

def work(x):
    with pyflight.task(f"square {x}"):
        return x * x

if __name__ == "__main__":
    ctx = mp.get_context(sys.argv[1])
    with ctx.Pool(2, initializer=init, initargs=(ctx.Barrier(2),)) as pool:
        assert pool.map(work, range(8), chunksize=1) == [x * x for x in range(8)]
        print(" ".join(str(p.pid) for p in pool._pool), flush=True)
    # leaving the block terminates the workers (SIGTERM): each still writes its window
"""


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_multiprocessing_pool_workers_each_leave_a_snapshot(
    env: dict[str, str], tmp_path: Path, method: str
) -> None:
    _write(tmp_path / "pool.py", POOL)
    result = _run("-o", "out.pyfl", "pool.py", method, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    workers = [int(pid) for pid in result.stdout.split()]
    assert len(workers) == 2
    files = sorted(p.name for p in tmp_path.glob("*.pyfl"))
    assert {f"out-{pid}.pyfl" for pid in workers} <= set(files), files
    assert pyflight.load(tmp_path / "out.pyfl").meta["reason"] == "exit"
    tasks = []
    for pid in workers:
        trace = pyflight.load(tmp_path / f"out-{pid}.pyfl")
        assert int(trace.meta["pid"]) == pid
        tasks += [task.name for task in trace.user_tasks.values()]
    assert sorted(tasks) == sorted(f"square {x}" for x in range(8))


CHILDREN = """
import os, subprocess, sys, pyflight
pyflight.log("parent", "hello from the parent")
code = "import os, pyflight; pyflight.log('child', 'hello from the child'); print(os.getpid())"
child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
print("subprocess", child.stdout.strip(), repr(child.stderr))
pid = os.fork()
if pid == 0:
    pyflight.log("forked", "hello from the fork")
    sys.exit(0)
os.waitpid(pid, 0)
print("fork", pid)
"""


def test_subprocess_and_fork_children(env: dict[str, str], tmp_path: Path) -> None:
    _write(tmp_path / "parent.py", CHILDREN)
    custom = tmp_path / "custom"
    custom.mkdir()
    marker = "import os, pathlib\npathlib.Path(__file__).with_name(f'ran-{os.getpid()}').touch()\n"
    _write(custom / "sitecustomize.py", marker)
    env = dict(env, PYTHONPATH=f"{custom}{os.pathsep}{env['PYTHONPATH']}")
    result = _run("-o", "out.pyfl", "parent.py", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    child_pid_text, child_stderr = lines["subprocess"].split(" ", 1)
    child_pid = int(child_pid_text)
    # a child whose stderr is a pipe its parent reads writes its window without a word
    # (asyncio's own subprocess tests compare that output): the recorder must not change it
    assert child_stderr == "''", child_stderr
    assert (custom / f"ran-{child_pid}").exists()  # the environment's own sitecustomize still runs
    fork_pid = int(lines["fork"])
    assert f"pid {fork_pid} (exit) wrote" in result.stderr  # a forked worker's exit: in the log
    assert "hello from the parent" in _logs(pyflight.load(tmp_path / "out.pyfl"))
    assert "hello from the child" in _logs(pyflight.load(tmp_path / f"out-{child_pid}.pyfl"))
    forked = pyflight.load(tmp_path / f"out-{fork_pid}.pyfl")
    assert "hello from the fork" in _logs(forked)
    assert "hello from the parent" not in _logs(forked)  # nothing inherited from the parent's buffers

    for old in tmp_path.glob("*.pyfl"):
        old.unlink()
    result = _run("--no-children", "-o", "out.pyfl", "parent.py", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [p.name for p in tmp_path.glob("*.pyfl")] == ["out.pyfl"]


def test_serve_and_signal_options(env: dict[str, str], tmp_path: Path) -> None:
    _write(
        tmp_path / "waits.py",
        """
        import sys, pyflight
        pyflight.log("prog", "waiting")
        print("ready", flush=True)
        sys.stdin.read()
        """,
    )
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
            "--token",
            "tok",
            "--snapshot-dir",
            "snaps",
            "waits.py",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None
        line = proc.stderr.readline()
        assert line.startswith("pyflight: serving http://127.0.0.1:"), line
        url = line.split()[-1]
        assert proc.stdout.readline() == "ready\n"
        request = urllib.request.Request(url, headers={"Authorization": "Bearer tok"})
        with urllib.request.urlopen(request, timeout=30) as response:
            data = response.read()
        from pyflight.format.reader import loads

        assert "waiting" in _logs(loads(data))
        proc.send_signal(signal.SIGUSR2)
        snaps = tmp_path / "snaps"
        assert "SIGUSR2: wrote" in proc.stderr.readline()
        (snap,) = snaps.glob(f"pyflight-*-{proc.pid}-signal.pyfl")
        assert pyflight.load(snap).meta["reason"] == "signal"
    finally:
        proc.communicate("", timeout=60)
    assert proc.returncode == 0


def test_pyflight_run_inside_a_recorded_child_takes_over(env: dict[str, str], tmp_path: Path) -> None:
    _write(tmp_path / "inner.py", "import pyflight\npyflight.log('inner', 'hi')\n")
    _write(
        tmp_path / "outer.py",
        """
        import subprocess, sys
        inner = [sys.executable, "-m", "pyflight", "run", "-o", "inner.pyfl", "inner.py"]
        sys.exit(subprocess.run(inner).returncode)
        """,
    )
    result = _run("-o", "outer.pyfl", "outer.py", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "hi" in _logs(pyflight.load(tmp_path / "inner.pyfl"))
    assert sorted(p.name for p in tmp_path.glob("*.pyfl")) == ["inner.pyfl", "outer.pyfl"]


STUCK = """
import multiprocessing, signal, sys, threading, time

mode = sys.argv[1]
lock = multiprocessing.Semaphore(0)  # never released: acquire blocks in sem_wait for ever

def take_sigterm_on_this_thread():
    # the handler's C part runs here; the main thread, inside sem_wait, is not interrupted
    time.sleep(0.3)
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

threading.Thread(target=take_sigterm_on_this_thread, daemon=True).start()
if mode == "masked":  # not even a nudge can reach the main thread now
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
print("blocking", flush=True)
lock.acquire()
print("never", flush=True)
"""


@pytest.mark.parametrize(("mode", "status"), [("plain", -signal.SIGTERM), ("masked", 128 + signal.SIGTERM)])
def test_sigterm_while_the_main_thread_is_stuck_in_c(
    env: dict[str, str], tmp_path: Path, mode: str, status: int
) -> None:
    """A SIGTERM whose Python handler cannot run (it landed on another thread while the
    main thread waits in sem_wait) used to hang the process; it now dies, window written."""
    _write(tmp_path / "stuck.py", STUCK)
    result = _run("-o", "out.pyfl", "stuck.py", mode, env=env, cwd=tmp_path)
    assert result.returncode == status, result.stderr
    assert result.stdout.split() == ["blocking"]
    trace = pyflight.load(tmp_path / "out.pyfl")
    assert trace.meta["reason"] == "sigterm"


STUCK_SNAPSHOT = """
import glob, multiprocessing, signal, sys, threading, time

mode = sys.argv[1]
lock = multiprocessing.Semaphore(0)  # the main thread waits in sem_wait until released

def snapshot_while_main_waits():
    # the signal lands on this thread; the main thread, inside sem_wait, is not interrupted
    time.sleep(0.3)
    signal.pthread_kill(threading.get_ident(), signal.SIGUSR2)
    deadline = time.monotonic() + 30
    while not glob.glob("snaps/*-signal.pyfl") and time.monotonic() < deadline:
        time.sleep(0.05)
    print("written" if glob.glob("snaps/*-signal.pyfl") else "missing", flush=True)
    lock.release()

threading.Thread(target=snapshot_while_main_waits).start()
if mode == "masked":  # not even a nudge can reach the main thread now
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
lock.acquire()
"""


@pytest.mark.parametrize("mode", ["plain", "masked"])
def test_snapshot_signal_while_the_main_thread_waits_in_c(
    env: dict[str, str], tmp_path: Path, mode: str
) -> None:
    """A SIGUSR2 that lands on another thread while the main thread waits in C is written
    at once, not when (or if) the main thread's call ends."""
    _write(tmp_path / "stuck.py", STUCK_SNAPSHOT)
    result = _run("-o", "out.pyfl", "--snapshot-dir", "snaps", "stuck.py", mode, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["written"], result.stderr
    (snap,) = (tmp_path / "snaps").glob("*-signal.pyfl")
    assert pyflight.load(snap).meta["reason"] == "signal"
    if mode == "masked":
        assert "SIGUSR2: the main thread is blocked" in result.stderr


SYNC_WAITS = """
import asyncio, subprocess, sys

async def main():
    lock = asyncio.Lock()

    async def hold():
        async with lock:
            await asyncio.sleep(0.05)

    await asyncio.gather(*(hold() for _ in range(3)))

asyncio.run(main())
if sys.argv[1:] == ["parent"]:
    print(subprocess.run([sys.executable, __file__], check=True).returncode)
"""


def test_source_options_reach_the_program_and_its_children(env: dict[str, str], tmp_path: Path) -> None:
    _write(tmp_path / "locks.py", SYNC_WAITS)
    result = _run(
        "--source-option",
        "asyncio.sync_waits=true",
        "-o",
        "out.pyfl",
        "locks.py",
        "parent",
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    traces = sorted(tmp_path.glob("*.pyfl"))
    assert len(traces) == 2, traces  # the parent and its child
    for path in traces:
        blocked = [e for e in pyflight.load(path).events if e.kind == Kind.TASK_BLOCK]
        assert len(blocked) == 2, path  # the 2nd and 3rd holder waited on the lock
    # on by default; the option turns it off
    result = _run("-o", "on.pyfl", "locks.py", env=env, cwd=tmp_path)
    assert len([e for e in pyflight.load(tmp_path / "on.pyfl").events if e.kind == Kind.TASK_BLOCK]) == 2
    result = _run(
        "--source-option", "asyncio.sync_waits=false", "-o", "off.pyfl", "locks.py", env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert not [e for e in pyflight.load(tmp_path / "off.pyfl").events if e.kind == Kind.TASK_BLOCK]
    # "off" reads as false on the command line: task_wait takes it as its "off" mode
    result = _run(
        "--source-option", "asyncio.task_wait=off", "-o", "nowait.pyfl", "locks.py", env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert not [e for e in pyflight.load(tmp_path / "nowait.pyfl").events if e.kind == Kind.TASK_WAIT]
    assert [e for e in pyflight.load(tmp_path / "on.pyfl").events if e.kind == Kind.TASK_WAIT]  # the gather


SPIN = """
import subprocess, sys, time
end = time.monotonic() + 0.5
while time.monotonic() < end:  # long enough for the sampler's first samples
    sum(range(1000))
if sys.argv[1:] == ["parent"]:
    subprocess.run([sys.executable, __file__], check=True)
"""


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--sources", "threads,gc"], ["threads", "gc"]),
        (["--no-source", "sampler", "--no-source", "gc,metrics"], None),
    ],
)
def test_sources_chosen_on_the_command_line_reach_the_program_and_its_children(
    env: dict[str, str], tmp_path: Path, args: list[str], expected: list[str] | None
) -> None:
    from pyflight.sources import default_source_names

    if expected is None:
        expected = [n for n in default_source_names() if n not in ("sampler", "gc", "metrics")]
    _write(tmp_path / "spin.py", SPIN)
    result = _run(*args, "-o", "out.pyfl", "spin.py", "parent", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    traces = sorted(tmp_path.glob("*.pyfl"))
    assert len(traces) == 2, traces  # the parent and its child
    for path in traces:
        trace = pyflight.load(path)
        assert json.loads(trace.meta["sources"]) == expected, path
        assert not [e for e in trace.events if e.kind == Kind.SAMPLE], path  # the sampler was left out


def test_the_recorded_program_never_imports_the_analysis_side(env: dict[str, str], tmp_path: Path) -> None:
    """DESIGN.md: the recording side never imports the analysis side (not even the CLI's
    report/export/view options, which come from there)."""
    code = "import sys; print(sorted(m for m in sys.modules if m.startswith(('pyflight.analysis', "
    code += "'pyflight.report', 'pyflight.export', 'pyflight.viewer'))))"
    _write(tmp_path / "mods.py", code)
    result = _run("-o", "out.pyfl", "mods.py", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


WATCHED = """
import multiprocessing as mp, sys, threading, time

def threads(_):
    deadline = time.monotonic() + 30  # a forked worker's recorder threads start a moment later
    while True:
        names = sorted(t.name for t in threading.enumerate() if t.name == "pyflight-sigwatch")
        if names or time.monotonic() > deadline:
            return names
        time.sleep(0.05)

if __name__ == "__main__":
    with mp.get_context(sys.argv[1]).Pool(1) as pool:
        print(pool.map(threads, [0])[0])
"""


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_pool_workers_have_the_sigterm_watch(env: dict[str, str], tmp_path: Path, method: str) -> None:
    """A forkserver's child is forked while the server holds the wake-up fd (the watch
    stands aside then); it takes it when the worker starts."""
    _write(tmp_path / "watched.py", WATCHED)
    result = _run("-o", "out.pyfl", "watched.py", method, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['pyflight-sigwatch']"


def test_children_only_needs_children(env: dict[str, str], tmp_path: Path) -> None:
    _write(tmp_path / "noop.py", "pass\n")
    result = _run("--children-only", "--no-children", "-o", "out.pyfl", "noop.py", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "leave nothing to record" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.pyfl"))
