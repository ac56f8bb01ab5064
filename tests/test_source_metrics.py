"""The metrics source: counters sampled ~10 times a second from the recorder's shared thread."""

from __future__ import annotations

import asyncio
import gc
import itertools
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import pyflight
from pyflight.core import backend, periodic
from pyflight.core.events import Kind
from pyflight.sources import REGISTRY, SourceWarning, metrics


def snapshot(rec: pyflight.FlightRecorder, tmp_path: Path) -> pyflight.Trace:
    rec.write_to(tmp_path / "m.pyfl")
    return pyflight.load(tmp_path / "m.pyfl")


def counters(trace: pyflight.Trace, name: str) -> list[pyflight.Event]:
    return [e for e in trace.events if e.kind == Kind.COUNTER and e.arg("name") == name]


def ticker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == metrics.THREAD_NAME]


@pytest.fixture(autouse=True)
def _no_ticker_thread_left() -> Iterator[None]:
    yield
    assert not ticker_threads()
    assert periodic.thread() is None


def test_registered() -> None:
    assert REGISTRY["metrics"] is metrics.MetricsSource
    assert REGISTRY["metrics"].default_enabled


def test_counters_at_ten_per_second(tmp_path: Path) -> None:
    rec = pyflight.FlightRecorder(sources=["metrics"]).start()
    try:
        # the metrics share the recorder's ticks: one thread, no other of their own
        # (other tests' servers may have left threads named pyflight-... of their kind)
        (thread,) = ticker_threads()
        assert metrics.THREAD_NAME == "pyflight-ticker"
        assert not [t for t in threading.enumerate() if t.name == "pyflight-metrics"]
        assert thread.daemon
        time.sleep(1.0)
        trace = snapshot(rec, tmp_path)
    finally:
        t0 = time.monotonic()
        rec.stop()
        stop_seconds = time.monotonic() - t0
    assert stop_seconds < 0.5  # stops promptly, does not sleep out its interval
    threads = counters(trace, "threads")
    assert 7 <= len(threads) <= 13, len(threads)
    assert all(e.arg("value") >= 2 for e in threads)  # the main thread and the sampler at least
    assert {e.thread for e in threads} == {thread.native_id}
    gaps = [b.time - a.time for a, b in itertools.pairwise(threads)]
    assert 60e6 <= sum(gaps) / len(gaps) <= 140e6
    for name in ("gc_count_0", "gc_count_1", "gc_count_2"):
        assert len(counters(trace, name)) == len(threads)
    if sys.platform.startswith("linux"):
        rss = counters(trace, "rss_bytes")
        assert len(rss) == len(threads)
        assert all(e.arg("value") > 1_000_000 for e in rss)
    assert not counters(trace, "loop_lag_us")  # no loop registered: no asyncio counters
    assert not counters(trace, "asyncio_tasks")


def test_interval_option(tmp_path: Path) -> None:
    rec = pyflight.FlightRecorder(sources=["metrics"], source_options={"metrics": {"interval": 0.02}}).start()
    try:
        time.sleep(0.3)
        trace = snapshot(rec, tmp_path)
    finally:
        rec.stop()
    assert len(counters(trace, "threads")) >= 8


@pytest.mark.parametrize("options", [{"interval": 0}, {"interval": "fast"}, {"bogus": 1}])
def test_bad_options_disable_the_source(tmp_path: Path, options: dict[str, Any]) -> None:
    with pytest.warns(SourceWarning, match="metrics"):
        rec = pyflight.FlightRecorder(sources=["metrics"], source_options={"metrics": options}).start()
    try:
        assert not rec.sources  # not installed: nothing scheduled
        trace = snapshot(rec, tmp_path)
    finally:
        rec.stop()
    assert [e.arg("source") for e in trace.data_loss] == ["metrics"]


def test_install_uninstall_idempotent() -> None:
    source = REGISTRY["metrics"](interval=0.05)
    source.install()
    source.install()
    assert source.scheduled()
    assert len(ticker_threads()) == 1  # alone, it starts the shared thread
    source.uninstall()
    source.uninstall()
    assert not source.scheduled()
    assert not ticker_threads()  # and its last job ends it
    source.install()
    source.uninstall()


class LoopThread:
    """An event loop running in its own thread, as an application would have one."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="loop", daemon=True)

    def __enter__(self) -> asyncio.AbstractEventLoop:
        self.thread.start()
        return self.loop

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def test_loop_lag_and_tasks(tmp_path: Path) -> None:
    rec = pyflight.FlightRecorder(sources=["metrics"], source_options={"metrics": {"interval": 0.05}}).start()
    try:
        with LoopThread() as loop:
            assert metrics.register_loop(loop)
            assert metrics.register_loop(loop)  # twice is fine
            stop = asyncio.run_coroutine_threadsafe(_start_sleepers(5), loop).result(5)
            time.sleep(0.3)  # an idle loop: lag stays small
            loop.call_soon_threadsafe(time.sleep, 0.4)  # then the loop is blocked
            time.sleep(0.7)
            loop.call_soon_threadsafe(stop.set)
            metrics.unregister_loop(loop)
            assert loop not in metrics.registered_loops()
        trace = snapshot(rec, tmp_path)
    finally:
        rec.stop()
    lags = counters(trace, "loop_lag_us")
    assert lags
    first_lags = [e.arg("value") for e in lags[:3]]
    assert min(first_lags) < 50_000, first_lags  # idle loop answers at once
    # blocked for 400 ms: the outstanding probe's age shows while it is blocked
    assert 300_000 <= max(e.arg("value") for e in lags) <= 1_000_000
    tasks = counters(trace, "asyncio_tasks")
    assert tasks and max(e.arg("value") for e in tasks) >= 5
    assert len(tasks) == len(lags) or abs(len(tasks) - len(lags)) <= 1


def test_live_tasks_are_counted_without_visiting_every_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the asyncio source on, ``asyncio_tasks`` is its live-task table's size: the
    same count as ``asyncio.all_tasks`` for tasks made every usual way, without that
    call's visit of every task ten times a second (3 ms each with 10,000 tasks)."""
    walks: list[int] = []
    all_tasks = asyncio.all_tasks

    def counted_all_tasks(loop: Any = None) -> set[Any]:
        if threading.current_thread().name == metrics.THREAD_NAME:
            walks.append(1)
        return all_tasks(loop)

    monkeypatch.setattr(asyncio, "all_tasks", counted_all_tasks)

    async def many_ways(stop: asyncio.Event) -> list[int]:
        loop = asyncio.get_running_loop()
        keep = [loop.create_task(stop.wait()) for _ in range(40)]
        keep += [asyncio.ensure_future(stop.wait()) for _ in range(10)]
        keep.append(asyncio.ensure_future(asyncio.gather(stop.wait(), stop.wait())))
        done_soon = [asyncio.create_task(asyncio.sleep(0)) for _ in range(20)]
        await asyncio.gather(*done_soon)  # ended: counted no more
        seen = []
        for _ in range(6):
            await asyncio.sleep(0.1)
            seen.append(len(all_tasks()))
        stop.set()
        await asyncio.gather(*keep)
        return seen

    options = {"metrics": {"interval": 0.05}}
    with pyflight.FlightRecorder(sources=["asyncio", "metrics"], source_options=options) as rec:
        seen = asyncio.run(many_ways(asyncio.Event()))
        trace = snapshot(rec, tmp_path)
    assert walks == []
    assert set(seen) == {1 + 40 + 10 + 2}  # main, the sleepers and gather's two (it is no task)
    values = [e.arg("value") for e in counters(trace, "asyncio_tasks")]
    assert values.count(seen[0]) >= 5, values  # ~10 ticks while the count held still


async def _start_sleepers(n: int) -> asyncio.Event:
    stop = asyncio.Event()
    for _ in range(n):
        asyncio.get_running_loop().create_task(stop.wait())
    return stop


def test_loops_are_held_weakly() -> None:
    before = len(metrics.registered_loops())
    loop = asyncio.new_event_loop()
    ref = weakref.ref(loop)
    assert metrics.register_loop(loop)
    assert len(metrics.registered_loops()) == before + 1
    loop.close()
    del loop
    gc.collect()
    assert ref() is None
    assert len(metrics.registered_loops()) == before
    assert not metrics.register_loop(12345)  # not weak-referenceable: refused, no error
    metrics.unregister_loop(12345)


def test_closed_or_stopped_loops_are_skipped(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()  # never run
    metrics.register_loop(loop)
    rec = pyflight.FlightRecorder(sources=["metrics"], source_options={"metrics": {"interval": 0.02}}).start()
    try:
        time.sleep(0.1)
        loop.close()
        time.sleep(0.1)
        assert loop not in metrics.registered_loops()  # closed: dropped by the sampler
        trace = snapshot(rec, tmp_path)
    finally:
        rec.stop()
        metrics.unregister_loop(loop)
    assert not counters(trace, "loop_lag_us")
    assert counters(trace, "threads")


def failing_record(kind_to_fail: Kind) -> Callable[..., Any]:
    real = backend.record

    def record(kind: int, *args: Any) -> None:
        if kind == kind_to_fail:
            raise RuntimeError("injected fault")
        real(kind, *args)

    return record


def test_fault_disables_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = pyflight.FlightRecorder(sources=["metrics"], source_options={"metrics": {"interval": 0.02}}).start()
    try:
        (source,) = rec.sources
        with pytest.warns(SourceWarning, match="metrics"):
            monkeypatch.setattr(backend, "record", failing_record(Kind.COUNTER))
            deadline = time.monotonic() + 5
            while source.disabled_reason is None and time.monotonic() < deadline:
                time.sleep(0.01)
        assert "injected fault" in (source.disabled_reason or "")
        assert not source.scheduled()
        assert ticker_threads()  # the recorder's own ticks go on
        monkeypatch.undo()
        assert sum(range(10)) == 45  # the program goes on
        trace = snapshot(rec, tmp_path)
    finally:
        rec.stop()
    assert [e.arg("source") for e in trace.events if e.kind == Kind.SOURCE_DISABLED] == ["metrics"]
