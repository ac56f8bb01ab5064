"""core/periodic.py: the recorder's periodic work on one shared thread."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

import pyflight
from pyflight.core import periodic


def ticker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == periodic.THREAD_NAME]


@pytest.fixture(autouse=True)
def _nothing_left() -> Iterator[None]:
    yield
    assert periodic.thread() is None
    assert not ticker_threads()


def wait_for(condition: object, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.005)


def test_jobs_share_one_thread_and_its_wake_ups() -> None:
    calls: list[tuple[str, int, float]] = []

    def job(name: str) -> None:
        calls.append((name, threading.get_ident(), time.monotonic()))

    a = periodic.every(0.02, lambda: job("a"), print)
    b = periodic.every(0.02, lambda: job("b"), print)
    try:
        wait_for(lambda: sum(1 for c in calls if c[0] == "b") >= 10)
    finally:
        periodic.cancel(a)
        periodic.cancel(b)
    assert len(ticker_threads()) == 0
    assert {c[1] for c in calls} == {calls[0][1]} != threading.get_ident()  # one thread, not ours
    # at equal periods the two run back to back: one wake-up, not two
    times = {name: [t for n, _, t in calls if n == name] for name in "ab"}
    pairs = list(zip(times["a"][1:], times["b"][1:], strict=False))
    assert pairs and sum(1 for ta, tb in pairs if abs(tb - ta) < 0.005) >= len(pairs) - 2


def test_a_failing_job_is_dropped_and_the_others_go_on() -> None:
    errors: list[BaseException] = []
    good: list[int] = []
    runs: list[int] = []

    def bad() -> None:
        runs.append(1)
        raise OSError("injected fault")

    periodic.every(0.01, bad, errors.append)
    ok = periodic.every(0.01, lambda: good.append(1), print)
    try:
        wait_for(lambda: errors and len(good) >= 5)
        assert [str(e) for e in errors] == ["injected fault"]
        assert len(runs) == 1  # dropped after its fault
    finally:
        periodic.cancel(ok)


def test_cancel_returns_once_the_running_job_has_returned() -> None:
    inside = threading.Event()
    finished: list[float] = []

    def slow() -> None:
        inside.set()
        time.sleep(0.2)
        finished.append(time.monotonic())

    keep = periodic.every(10.0, lambda: None, print)  # not the last job: cancel waits for the run
    job = periodic.every(0.01, slow, print)
    try:
        assert inside.wait(5)
        periodic.cancel(job)
        cancelled_at = time.monotonic()
        assert finished and finished[0] <= cancelled_at
        count = len(finished)
        time.sleep(0.05)
        assert len(finished) == count  # never again
    finally:
        periodic.cancel(keep)


def test_the_last_cancel_ends_the_thread_and_a_new_job_starts_one() -> None:
    job = periodic.every(0.01, lambda: None, print)
    (first,) = ticker_threads()
    assert first.daemon
    periodic.cancel(job)
    assert not first.is_alive()
    periodic.cancel(job)  # twice: fine
    job = periodic.every(0.01, lambda: None, print)
    (second,) = ticker_threads()
    assert second is not first
    periodic.cancel(job)


def test_a_job_may_cancel_itself() -> None:
    ran: list[int] = []
    jobs: list[periodic.Job] = []

    def once() -> None:
        ran.append(1)
        periodic.cancel(jobs[0])

    jobs.append(periodic.every(0.01, once, print))
    wait_for(lambda: periodic.thread() is None)
    time.sleep(0.05)
    assert ran == [1]


def test_a_shorter_job_is_not_held_up_by_a_longer_wait() -> None:
    ran: list[float] = []
    slow = periodic.every(30.0, lambda: None, print)
    time.sleep(0.05)  # the thread now waits for up to 30 s
    started = time.monotonic()
    fast = periodic.every(0.02, lambda: ran.append(time.monotonic()), print)
    try:
        wait_for(lambda: ran)
        assert ran and ran[0] - started < 1.0
    finally:
        periodic.cancel(fast)
        periodic.cancel(slow)


def test_bad_interval() -> None:
    with pytest.raises(ValueError, match="interval"):
        periodic.every(0, lambda: None, print)


def test_the_recorder_and_its_metrics_share_the_thread() -> None:
    rec = pyflight.FlightRecorder(sources=["metrics"]).start()
    try:
        names = [t.name for t in threading.enumerate()]
        assert names.count(periodic.THREAD_NAME) == 1 and "pyflight-metrics" not in names
    finally:
        rec.stop()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_schedules_on_a_thread_of_its_own() -> None:
    job = periodic.every(0.01, lambda: None, print)
    try:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: no thread inherited; a new job gets one
            code = 1
            try:
                assert periodic.thread() is None
                periodic.cancel(job)  # the parent's job: unknown here, fine
                ran = threading.Event()
                mine = periodic.every(0.01, ran.set, print)
                ok = ran.wait(5)
                periodic.cancel(mine)
                code = 0 if ok and periodic.thread() is None else 1
            finally:
                os.write(write, bytes([code]))
                os._exit(0)
        os.close(write)
        result = os.read(read, 1)
        os.close(read)
        os.waitpid(pid, 0)
        assert result == b"\x00"
    finally:
        periodic.cancel(job)
