"""FlightRecorder behaviour as a user sees it: window, snapshots, lifecycle."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest

import pyflight
from pyflight.core import backend
from pyflight.core.events import Kind

HEADER_SLACK = 4096


def _produce(stop: threading.Event, per_second: int, counter: list[int], times: list[int]) -> None:
    """Record LOG events at about ``per_second`` until ``stop``, each numbered (its
    message), ``times[n]`` the monotonic time just before log number n was recorded."""
    batch = max(1, per_second // 100)
    while not stop.is_set():
        started = time.monotonic()
        for _ in range(batch):
            times.append(time.monotonic_ns())
            pyflight.log("load", str(counter[0]))
            counter[0] += 1
        time.sleep(max(0.0, 0.01 - (time.monotonic() - started)))


def test_window_keeps_last_min_age_and_not_much_more(tmp_path: Path) -> None:
    rec = pyflight.FlightRecorder(min_age=1, max_bytes=2**20)
    stop, count, times = threading.Event(), [0], []
    with rec:
        worker = threading.Thread(target=_produce, args=(stop, 10_000, count, times))
        worker.start()
        time.sleep(5)
        rec.write_to(tmp_path / "a.pyfl")
        stop.set()
        worker.join()
    trace = pyflight.load(tmp_path / "a.pyfl")
    snapshot_ns = int(trace.meta["snapshot_ns"])
    # the producer's (the budget's own LOGs, e.g. "shedding ...", may be in the window too)
    logs = [e for e in trace.events if e.kind == Kind.LOG and e.arg("category") == "load"]
    assert logs, "no events in the window"
    assert trace.warnings == []
    window_start = trace.generations[0].start_ns
    # covers at least the last second ...
    assert snapshot_ns - window_start >= 1.0e9
    # and every event from its very start on: the log before the window's first was made
    # before the window began (its clock read came earlier still), and none is missing
    # after it (however long a loaded machine paused the producer)
    numbers = [int(e.arg("message")) for e in logs]
    first = numbers[0]
    assert first > 0, "the window never rolled"
    assert times[first - 1] < window_start + 1_000_000, (times[first - 1] - window_start) / 1e6
    assert numbers == list(range(first, first + len(numbers))), "events missing inside the window"
    # ... and not much more: one generation interval (0.25 s) beyond it, plus ticker slack
    assert snapshot_ns - window_start <= 1.45e9, (snapshot_ns - window_start) / 1e9
    # nothing recorded in the last second is missing: ~10k events/s
    recent = [e for e in logs if e.time >= snapshot_ns - 1e9]
    assert len(recent) > 5_000


def test_storm_stays_within_max_bytes_plus_one_generation(tmp_path: Path) -> None:
    rec = pyflight.FlightRecorder(min_age=10, max_bytes=2**20)
    peak = 0
    with rec:
        # 2 s of storm, and on until the window has rolled a few times (a loaded machine,
        # or the pure core, logs less per second)
        started = time.monotonic()
        while time.monotonic() - started < 2 or (
            backend.stats()["evicted"] < 3 and time.monotonic() - started < 60
        ):
            for _ in range(2000):
                pyflight.log("storm", "x")
            stats = backend.stats()
            assert stats["ring_bytes"] <= rec.max_bytes
            peak = max(peak, stats["ring_bytes"] + stats["open_bytes"])
        size = rec.write_to(tmp_path / "storm.pyfl")
    assert size <= rec.max_bytes + rec.generation_bytes + HEADER_SLACK
    assert peak <= rec.max_bytes + rec.generation_bytes + HEADER_SLACK
    trace = pyflight.load(tmp_path / "storm.pyfl")
    assert trace.warnings == []
    assert len(trace.generations) >= 4  # the window rolled: old generations dropped whole
    assert trace.generations[0].seq > 1
    assert trace.count_by_kind()[Kind.LOG] > 10_000


def test_second_write_right_after_and_recording_goes_on(tmp_path: Path) -> None:
    with pyflight.FlightRecorder(min_age=5) as rec:
        pyflight.log("t", "before")
        first = rec.write_to(tmp_path / "1.pyfl")
        pyflight.log("t", "between")
        second = rec.write_to(tmp_path / "2.pyfl")
        assert rec.enabled
    assert first > 0 and second > 0
    one = [e.arg("message") for e in pyflight.load(tmp_path / "1.pyfl").events if e.kind == Kind.LOG]
    two = [e.arg("message") for e in pyflight.load(tmp_path / "2.pyfl").events if e.kind == Kind.LOG]
    assert one == ["before"]
    assert two == ["before", "between"]


def test_concurrent_write_to_raises_snapshot_in_progress(tmp_path: Path) -> None:
    entered, release = threading.Event(), threading.Event()

    class SlowFile:
        def __init__(self) -> None:
            self.data = bytearray()

        def write(self, chunk: bytes) -> int:
            entered.set()
            release.wait(10)
            self.data += chunk
            return len(chunk)

    slow = SlowFile()
    with pyflight.FlightRecorder() as rec:
        pyflight.log("t", "x")
        results: list[object] = []
        writer = threading.Thread(target=lambda: results.append(rec.write_to(slow)))  # type: ignore[arg-type]
        writer.start()
        assert entered.wait(10)
        with pytest.raises(pyflight.SnapshotInProgress):
            rec.write_to(tmp_path / "other.pyfl")
        release.set()
        writer.join()
        assert results == [len(slow.data)]
        rec.write_to(tmp_path / "after.pyfl")  # free again
    assert not (tmp_path / "other.pyfl").exists()
    (tmp_path / "slow.pyfl").write_bytes(bytes(slow.data))
    assert pyflight.load(tmp_path / "slow.pyfl").count_by_kind()[Kind.LOG] == 1


def test_lifecycle_errors_and_restart(tmp_path: Path) -> None:
    rec = pyflight.FlightRecorder()
    with pytest.raises(pyflight.RecorderError, match="not running"):
        rec.write_to(tmp_path / "never.pyfl")
    rec.start()
    try:
        with pytest.raises(pyflight.RecorderError, match="already started"):
            rec.start()
        with pytest.raises(pyflight.RecorderError, match="another FlightRecorder"):
            pyflight.FlightRecorder().start()
        pyflight.log("t", "first run")
    finally:
        rec.stop()
    assert not rec.enabled
    with pytest.raises(pyflight.RecorderError, match="not running"):
        rec.write_to(tmp_path / "stopped.pyfl")
    rec.stop()  # stopping twice is harmless
    rec.start()
    try:
        pyflight.log("t", "second run")
        rec.write_to(tmp_path / "again.pyfl")
    finally:
        rec.stop()
    messages = [e.arg("message") for e in pyflight.load(tmp_path / "again.pyfl").events if e.kind == Kind.LOG]
    assert messages == ["second run"]  # stop() dropped the first run's window


def test_snapshot_file_is_private_and_atomic(tmp_path: Path) -> None:
    target = tmp_path / "snap.pyfl"
    target.write_bytes(b"old contents")
    with pyflight.FlightRecorder() as rec:
        size = rec.write_to(str(target))
        with pytest.raises(OSError):
            rec.write_to(tmp_path / "missing-dir" / "x.pyfl")
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert target.stat().st_size == size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap.pyfl"]  # no temp debris


def test_threads_started_before_start_are_named(tmp_path: Path) -> None:
    stop = threading.Event()
    early = threading.Thread(target=stop.wait, name="early-bird")
    early.start()
    try:
        with pyflight.FlightRecorder() as rec:
            rec.write_to(tmp_path / "t.pyfl")
    finally:
        stop.set()
        early.join()
    trace = pyflight.load(tmp_path / "t.pyfl")
    names = {t.name for t in trace.threads.values()}
    assert {"early-bird", "MainThread"} <= names
    assert trace.threads[early.native_id].name == "early-bird"  # type: ignore[index]


def test_invalid_window_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="min_age"):
        pyflight.FlightRecorder(min_age=0)
    with pytest.raises(ValueError, match="max_bytes"):
        pyflight.FlightRecorder(max_bytes=100)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # ours, by design
def test_forked_child_starts_clean(tmp_path: Path) -> None:
    out = tmp_path / "child.pyfl"
    with pyflight.FlightRecorder() as rec:
        pyflight.log("t", "parent before fork")
        pid = os.fork()
        if pid == 0:  # child: the inherited recorder is off; a new one records only the child
            code = 1
            try:
                if not rec.enabled:
                    with pyflight.FlightRecorder() as child:
                        pyflight.log("t", "child")
                        child.write_to(out)
                    code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert rec.enabled
        pyflight.log("t", "parent after fork")
        rec.write_to(tmp_path / "parent.pyfl")
    child_msgs = [e.arg("message") for e in pyflight.load(out).events if e.kind == Kind.LOG]
    parent_msgs = [
        e.arg("message") for e in pyflight.load(tmp_path / "parent.pyfl").events if e.kind == Kind.LOG
    ]
    assert child_msgs == ["child"]
    assert parent_msgs == ["parent before fork", "parent after fork"]


def test_recorders_own_threads_do_not_record_their_sleeps(tmp_path: Path) -> None:
    """The ticker, the metrics thread and the asyncio stall watchdog sleep dozens of times a
    second: those waits are not the program's, and recording each (a stack walk) cost more
    than anything they do. The program's own waits on a threading.Event still are."""
    import asyncio  # noqa: F401  (the stall watchdog runs once asyncio is imported)

    with pyflight.FlightRecorder() as rec:
        waiter = threading.Thread(target=threading.Event().wait, args=(0.3,), name="program-waiter")
        waiter.start()
        time.sleep(0.6)
        waiter.join()
        path = tmp_path / "t.pyfl"
        rec.write_to(path)
    trace = pyflight.load(path)
    names = {t.tid: t.name for t in trace.threads.values()}
    waited = {names.get(e.thread, "?") for e in trace.events if e.kind == Kind.BLOCK_BEGIN}
    assert "program-waiter" in waited
    assert not {name for name in waited if name.startswith("pyflight-")}, waited
