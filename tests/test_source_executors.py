"""The executors source: thread-pool jobs queued / begun / ended, and the submitter's task."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import pyflight
import pyflight.sources.executors  # registers the source
from pyflight.analysis import build
from pyflight.core import backend
from pyflight.core.events import Kind
from pyflight.sources import REGISTRY, SourceWarning
from pyflight.sources.executors import _code_of

MS = 1_000_000
POOL_KINDS = (Kind.POOL_JOB_QUEUED, Kind.POOL_JOB_BEGIN, Kind.POOL_JOB_END)


def snapshot(rec: pyflight.FlightRecorder, tmp_path: Path, name: str = "t.pyfl") -> pyflight.Trace:
    path = tmp_path / name
    rec.write_to(path)
    return pyflight.load(path)


def of_kind(trace: pyflight.Trace, kind: Kind) -> list[pyflight.Event]:
    return [e for e in trace.events if e.kind == kind]


def pool_events(trace: pyflight.Trace, pool: object) -> dict[int, dict[Kind, pyflight.Event]]:
    """job -> kind -> its event, for the jobs of ``pool`` (each kind at most once per job)."""
    jobs: dict[int, dict[Kind, pyflight.Event]] = {}
    for e in trace.events:
        if e.kind in POOL_KINDS and e.arg("pool") == id(pool):
            by_kind = jobs.setdefault(e.arg("job"), {})
            assert e.kind not in by_kind, e
            by_kind[e.kind] = e
    return jobs


@pytest.fixture
def original_submit() -> Iterator[Any]:
    saved = ThreadPoolExecutor.__dict__["submit"]
    yield saved
    assert ThreadPoolExecutor.__dict__["submit"] is saved


def slow_job(seconds: float) -> threading.Thread:
    time.sleep(seconds)
    return threading.current_thread()


def test_registered() -> None:
    assert REGISTRY["executors"].default_enabled


def test_queue_wait_and_run_of_each_job(tmp_path: Path, original_submit: Any) -> None:
    """Two workers, four 50 ms jobs: the 3rd and 4th wait ~50 ms in the queue."""
    rec = pyflight.FlightRecorder(sources=["executors", "threads"]).start()  # threads: names
    try:
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="tp") as pool:
            futures = [pool.submit(slow_job, 0.05) for _ in range(4)]
            ran_on = [f.result(5) for f in futures]
        trace = snapshot(rec, tmp_path)
    finally:
        rec.stop()
    main_tid = threading.get_native_id()
    workers = {t.native_id for t in ran_on}
    assert len(workers) == 2 and main_tid not in workers
    jobs = pool_events(trace, pool)
    assert len(jobs) == 4
    numbers = sorted(jobs)
    waits, runs = [], []
    for number in numbers:
        queued = jobs[number][Kind.POOL_JOB_QUEUED]
        begin = jobs[number][Kind.POOL_JOB_BEGIN]
        end = jobs[number][Kind.POOL_JOB_END]
        assert queued.thread == main_tid
        assert queued.arg("function") == "slow_job"
        assert queued.arg("file") == __file__
        assert queued.arg("line") == slow_job.__code__.co_firstlineno
        assert queued.arg("max_workers") == 2
        assert queued.arg("task") == 0
        assert begin.thread in workers and end.thread == begin.thread  # recorded by the worker
        assert queued.time <= begin.time <= end.time
        waits.append(begin.time - queued.time)
        runs.append(end.time - begin.time)
    assert all(45 * MS <= r < 2000 * MS for r in runs), runs
    # queued behind the first two: each began only once one of them had ended (not a
    # fixed wait: on a loaded machine starting the second worker delays the later submits)
    first_end = min(jobs[n][Kind.POOL_JOB_END].time for n in numbers[:2])
    assert all(jobs[n][Kind.POOL_JOB_BEGIN].time >= first_end for n in numbers[2:]), waits
    assert max(waits[:2]) < min(waits[2:]), waits

    model = build(trace)
    tp = model.pools[id(pool)]
    assert tp.name == "tp" and tp.max_workers == 2 and set(tp.workers) == workers
    assert [j.job for j in tp.jobs] == numbers
    assert [j.wait for j in tp.jobs] == waits and [j.run for j in tp.jobs] == runs
    assert {j.state for j in tp.jobs} == {"done"}
    assert {(j.function, j.line) for j in tp.jobs} == {("slow_job", slow_job.__code__.co_firstlineno)}
    assert max(level for _, level in tp.busy) == 2
    assert max(level for _, level in tp.waiting) >= 2
    all_busy = sum(b - a for a, b in tp.all_busy(model.end))
    assert 80 * MS <= all_busy <= sum(runs), all_busy


def test_cancelled_job_has_no_begin(tmp_path: Path, original_submit: Any) -> None:
    rec = pyflight.FlightRecorder(sources=["executors"]).start()
    try:
        gate = threading.Event()
        with ThreadPoolExecutor(max_workers=1) as pool:
            blocker = pool.submit(gate.wait, 5)
            doomed = pool.submit(slow_job, 0)
            assert doomed.cancel() and doomed.cancelled()
            after = pool.submit(slow_job, 0)
            gate.set()
            assert blocker.result(5) is True
            after.result(5)
        trace = snapshot(rec, tmp_path)
    finally:
        rec.stop()
    jobs = pool_events(trace, pool)
    assert len(jobs) == 3
    first, second, third = (jobs[n] for n in sorted(jobs))
    assert set(second) == {Kind.POOL_JOB_QUEUED}  # cancelled before it started: no BEGIN, no END
    assert set(first) == set(third) == set(POOL_KINDS)
    assert first[Kind.POOL_JOB_QUEUED].arg("function") == "Event.wait"
    states = [j.state for j in build(trace).pools[id(pool)].jobs]
    assert states == ["done", "cancelled", "done"]


def test_refused_submit_is_recorded_and_raises(tmp_path: Path, original_submit: Any) -> None:
    rec = pyflight.FlightRecorder(sources=["executors"]).start()
    try:
        pool = ThreadPoolExecutor(max_workers=1)
        pool.submit(slow_job, 0).result(5)
        pool.shutdown()
        with pytest.raises(RuntimeError, match="shutdown"):
            pool.submit(slow_job, 0)
        assert rec.sources[0].disabled_reason is None  # the pool's error, not ours
        trace = snapshot(rec, tmp_path)
    finally:
        rec.stop()
    jobs = pool_events(trace, pool)
    refused = jobs[max(jobs)]
    assert set(refused) == {Kind.POOL_JOB_QUEUED, Kind.POOL_JOB_END}
    assert [j.state for j in build(trace).pools[id(pool)].jobs] == ["done", "refused"]


def test_task_is_carried_into_the_job(tmp_path: Path, original_submit: Any) -> None:
    rec = pyflight.FlightRecorder(sources=["executors"]).start()
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            with pyflight.task("req") as req:
                pool.submit(pyflight.log, "job", "inside").result(5)
            pool.submit(pyflight.log, "job", "outside").result(5)  # same worker: reset after
        trace = snapshot(rec, tmp_path)
    finally:
        rec.stop()
    assert req.id != 0
    logs = {e.arg("message"): e.arg("task") for e in of_kind(trace, Kind.LOG) if e.arg("category") == "job"}
    assert logs == {"inside": req.id, "outside": 0}
    queued = [e for e in of_kind(trace, Kind.POOL_JOB_QUEUED) if e.arg("pool") == id(pool)]
    assert [e.arg("task") for e in queued] == [req.id, 0]
    assert {e.arg("function") for e in queued} == {"log"}


def test_run_in_executor_and_to_thread(tmp_path: Path, original_submit: Any) -> None:
    async def main() -> tuple[int, object, object]:
        loop = asyncio.get_running_loop()
        with pyflight.task("req-async") as req:
            await loop.run_in_executor(None, slow_job, 0.01)
            await asyncio.to_thread(slow_job, 0.01)
            own = ThreadPoolExecutor(max_workers=1, thread_name_prefix="own")
            await loop.run_in_executor(own, functools.partial(slow_job, 0.01))
            own.shutdown()
        default = loop._default_executor  # type: ignore[attr-defined]
        return req.id, default, own

    rec = pyflight.FlightRecorder(sources=["executors", "threads"]).start()
    try:
        task_id, default, own = asyncio.run(main())
        trace = snapshot(rec, tmp_path)
    finally:
        rec.stop()
    assert task_id != 0
    for pool, count in ((default, 2), (own, 1)):
        jobs = pool_events(trace, pool)
        assert len(jobs) == count
        for events in jobs.values():
            assert set(events) == set(POOL_KINDS)
            queued = events[Kind.POOL_JOB_QUEUED]
            assert queued.arg("function") == "slow_job"  # through to_thread's partial(ctx.run, ...)
            assert queued.arg("task") == task_id
            assert events[Kind.POOL_JOB_BEGIN].thread != threading.get_native_id()
    pools = build(trace).pools
    assert pools[id(default)].name == "asyncio"
    assert pools[id(own)].name == "own"


class _Callable:
    def __call__(self) -> None:
        return None

    def method(self) -> None:
        return None


def _decorated(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


def test_function_names() -> None:
    obj = _Callable()
    line = slow_job.__code__.co_firstlineno
    assert _code_of(slow_job) == ("slow_job", __file__, line)
    assert _code_of(functools.partial(slow_job, 1)) == ("slow_job", __file__, line)
    assert _code_of(_decorated(slow_job)) == ("slow_job", __file__, line)
    assert _code_of(obj.method)[0] == "_Callable.method"
    assert _code_of(obj)[0] == "_Callable.__call__"
    assert _code_of(time.sleep) == ("time.sleep", "", 0)
    assert _code_of(lambda: None)[0] == "test_function_names.<locals>.<lambda>"

    class Weird:
        def __getattr__(self, name: str) -> Any:
            raise ValueError(name)

        def __call__(self) -> None:
            return None

    assert _code_of(Weird()) == ("test_function_names.<locals>.Weird", "", 0)  # no error either


def test_results_exceptions_unchanged(tmp_path: Path, original_submit: Any) -> None:
    rec = pyflight.FlightRecorder(sources=["executors"]).start()
    try:
        error = ValueError("from the job")

        def fail() -> None:
            raise error

        with ThreadPoolExecutor(max_workers=1) as pool:
            with pytest.raises(ValueError) as caught:
                pool.submit(fail).result(5)
            assert caught.value is error
            assert pool.submit(lambda x, *, y: x + y, 1, y=2).result(5) == 3
            assert list(pool.map(abs, [-1, -2])) == [1, 2]
        trace = snapshot(rec, tmp_path)
    finally:
        rec.stop()
    jobs = pool_events(trace, pool)
    assert len(jobs) == 4
    assert all(set(events) == set(POOL_KINDS) for events in jobs.values())  # END after a raise too


def test_no_recorder_no_wrapper(original_submit: Any) -> None:
    import sys

    def caller() -> str:
        return sys._getframe(1).f_code.co_name

    with ThreadPoolExecutor(max_workers=1) as pool:
        plain = pool.submit(caller).result(5)
        rec = pyflight.FlightRecorder(sources=["executors"]).start()
        try:
            assert pool.submit(caller).result(5) != plain  # wrapped while recording
        finally:
            rec.stop()
        assert pool.submit(caller).result(5) == plain
        assert ThreadPoolExecutor.__dict__["submit"] is original_submit


def _failing(kind_to_fail: Kind) -> Callable[..., Any]:
    real = backend.record

    def record(kind: int, *args: Any) -> None:
        if kind == kind_to_fail:
            raise RuntimeError("injected fault")
        real(kind, *args)

    return record


def test_fault_on_submit_disables_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, original_submit: Any
) -> None:
    rec = pyflight.FlightRecorder(sources=["executors"]).start()
    try:
        monkeypatch.setattr(backend, "record", _failing(Kind.POOL_JOB_QUEUED))
        with ThreadPoolExecutor(max_workers=1) as pool, pytest.warns(SourceWarning, match="executors"):
            assert pool.submit(lambda: 42).result(5) == 42
        monkeypatch.undo()
        assert ThreadPoolExecutor.__dict__["submit"] is original_submit
        assert rec.sources[0].disabled_reason is not None
        trace = snapshot(rec, tmp_path)
    finally:
        rec.stop()
    assert [e.arg("source") for e in of_kind(trace, Kind.SOURCE_DISABLED)] == ["executors"]


def test_fault_in_worker_disables_source_job_still_runs(
    monkeypatch: pytest.MonkeyPatch, original_submit: Any
) -> None:
    rec = pyflight.FlightRecorder(sources=["executors"]).start()
    try:
        monkeypatch.setattr(backend, "record", _failing(Kind.POOL_JOB_BEGIN))
        with ThreadPoolExecutor(max_workers=1) as pool, pytest.warns(SourceWarning, match="executors"):
            assert pool.submit(lambda: 42).result(5) == 42
        monkeypatch.undo()
        assert ThreadPoolExecutor.__dict__["submit"] is original_submit
        assert rec.sources[0].disabled_reason is not None
    finally:
        rec.stop()
