"""A child forked by a recorded program is single-threaded when ``fork()`` returns (code
that checks that, like CPython's own test_threading, keeps working); its recorder's
threads start a moment later and it still records and writes its own window."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pyflight
from pyflight.core.events import Kind

FORKS = """
import json, os, sys, threading, time

workers = [threading.Thread(target=time.sleep, args=(0.5,)) for _ in range(4)]
for worker in workers:
    worker.start()
pid = os.fork()
if pid == 0:
    right_after = {
        "frames": len(sys._current_frames()),
        "threads": [t.name for t in threading.enumerate()],
    }
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # busy, so that the sampler has something to see
        later = [t.name for t in threading.enumerate() if t.name.startswith("pyflight")]
        if "pyflight-ticker" in later:
            break
        sum(range(10_000))
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        sum(range(10_000))
    print(json.dumps({"pid": os.getpid(), "right_after": right_after, "later": later}), flush=True)
    sys.exit(0)
_, status = os.waitpid(pid, 0)
for worker in workers:
    worker.join()
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_forked_child_starts_recorder_threads_later(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    (tmp_path / "forks.py").write_text(textwrap.dedent(FORKS))
    result = subprocess.run(
        [sys.executable, "-m", "pyflight", "run", "-o", "out.pyfl", "forks.py"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=dict(subprocess_env, XDG_RUNTIME_DIR=str(runtime)),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    child = json.loads(result.stdout)
    assert child["right_after"] == {"frames": 1, "threads": ["MainThread"]}
    assert "pyflight-ticker" in child["later"], child  # then the recorder runs in full
    trace = pyflight.load(tmp_path / f"out-{child['pid']}.pyfl")
    assert trace.meta["pid"] == str(child["pid"])
    assert any(event.kind == Kind.SAMPLE for event in trace.events), "the child is sampled"


FORK_WHILE_A_SOURCE_IS_LOCKED = """
import asyncio, os, sys, threading, time
import pyflight
from pyflight.sources import metrics

recorder = pyflight.FlightRecorder(cpu_budget=None).start()
sources = {s.name: s for s in recorder.sources}
locks = [
    sources["blocking"]._lock, sources["blocking"]._patch_lock,
    sources["asyncio"]._lock, sources["asyncio"]._hooks_lock,
    metrics._loops_lock,  # the metrics thread takes it to sample the loops
]
held, release = threading.Event(), threading.Event()

def holder():
    # as a thread would hold them while a hook's fault disables a source, or while it
    # installs hooks on an import: that thread does not exist in the child to release them
    for lock in locks:
        lock.acquire()
    held.set()
    release.wait()
    for lock in reversed(locks):
        lock.release()

thread = threading.Thread(target=holder)
thread.start()
held.wait()
pid = os.fork()
if pid == 0:
    # the fork handlers (which stop the child's recorder) returned; a worker's event loop
    # registers with the metrics source as it starts
    asyncio.run(asyncio.sleep(0))
    metrics.registered_loops()
    os._exit(7)
release.set()
thread.join()
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print(os.waitstatus_to_exitcode(status))
        break
    time.sleep(0.05)
else:
    os.kill(pid, 9)
    print("the child hung on a lock it inherited")
recorder.stop()
"""


def test_a_fork_while_another_thread_holds_a_source_lock_does_not_hang_the_child(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "fork_locked.py").write_text(textwrap.dedent(FORK_WHILE_A_SOURCE_IS_LOCKED))
    result = subprocess.run(
        [sys.executable, "fork_locked.py"], capture_output=True, text=True, cwd=tmp_path, env=subprocess_env,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "7", result.stdout + result.stderr
