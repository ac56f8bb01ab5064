"""The executors source on ``ProcessPoolExecutor``: jobs measured from their futures."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import process as futures_process
from pathlib import Path

import pytest

import pyflight
import pyflight.sources.executors  # registers the source
from pyflight.analysis import build
from pyflight.core.events import Kind

MS = 1_000_000
POOL_KINDS = (Kind.POOL_JOB_QUEUED, Kind.POOL_JOB_BEGIN, Kind.POOL_JOB_END)
SRC = Path(__file__).resolve().parents[1] / "src"


def nap(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def test_process_pool_jobs_are_measured_from_their_futures(tmp_path: Path) -> None:
    """Two worker processes, five 150 ms jobs, one cancelled while pending, one refused
    after shutdown: each job's QUEUED by the submitter, BEGIN and END by the pool's
    manager thread, and at most two running at once in the model. The cancelled and the
    refused job never ran: the model does not count them as still waiting at the end."""
    submit, work_item = ProcessPoolExecutor.__dict__["submit"], futures_process._WorkItem
    rec = pyflight.FlightRecorder(sources=["executors"]).start()
    try:
        pool = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("fork"))
        futures = [pool.submit(nap, 0.15) for _ in range(5)]
        cancelled = futures[-1].cancel()  # the call queue holds three: the fifth is pending
        pids = {f.result(10) for f in futures[:4]}
        pool.shutdown()
        with pytest.raises(RuntimeError, match="shutdown"):
            pool.submit(nap, 0)
        assert rec.sources[0].disabled_reason is None
        path = tmp_path / "t.pyfl"
        rec.write_to(path)
    finally:
        rec.stop()
    # put back on stop
    assert ProcessPoolExecutor.__dict__["submit"] is submit and futures_process._WorkItem is work_item
    assert cancelled and len(pids) == 2 and os.getpid() not in pids
    trace = pyflight.load(path)
    jobs: dict[int, dict[Kind, pyflight.Event]] = {}
    for e in trace.events:
        if e.kind in POOL_KINDS and e.arg("pool") == id(pool):
            jobs.setdefault(e.arg("job"), {})[e.kind] = e
    assert len(jobs) == 6
    numbers = sorted(jobs)
    main_tid = threading.get_native_id()
    for n in numbers[:4]:
        queued, begin, end = (jobs[n][k] for k in POOL_KINDS)
        assert queued.thread == main_tid and queued.arg("function") == "nap"
        assert queued.arg("max_workers") == 2 and queued.arg("file") == __file__
        assert begin.thread != main_tid and end.thread == begin.thread  # the manager thread
        assert queued.time <= begin.time < end.time
    assert set(jobs[numbers[4]]) == {Kind.POOL_JOB_QUEUED, Kind.POOL_JOB_END}  # cancelled while pending
    assert set(jobs[numbers[5]]) == {Kind.POOL_JOB_QUEUED, Kind.POOL_JOB_END}  # refused
    assert [e.arg("pool") for e in trace.events if e.kind == Kind.POOL_PROCESSES] == [id(pool)] * 6

    model = build(trace)
    pp = model.pools[id(pool)]
    assert pp.processes and pp.workers == [] and pp.max_workers == 2
    assert [j.state for j in pp.jobs] == ["done"] * 4 + ["refused"] * 2  # never ran: not waiting
    # the third job was handed over with the first two but began once a worker was free
    assert max(level for _, level in pp.busy) == 2
    first_end = min(j.end for j in pp.jobs[:2] if j.end is not None)
    assert pp.jobs[2].begin is not None and pp.jobs[2].begin >= first_end
    assert all(j.run is not None and j.run >= 100 * MS for j in pp.jobs[:4]), [j.run for j in pp.jobs]


def test_process_pools_are_patched_once_the_program_imports_them() -> None:
    """Starting a recorder does not import multiprocessing; the program's import of
    concurrent.futures.process is what patches it."""
    code = (
        "import sys, pyflight\n"
        "rec = pyflight.FlightRecorder(sources=['executors']).start()\n"
        "assert 'concurrent.futures.process' not in sys.modules\n"
        "assert 'multiprocessing' not in sys.modules\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "assert hasattr(ProcessPoolExecutor.submit, '__wrapped__')\n"
        "rec.stop()\n"
        "assert not hasattr(ProcessPoolExecutor.submit, '__wrapped__')\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
