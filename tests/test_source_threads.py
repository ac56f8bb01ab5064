"""The threads source (start/end/rename/exception) and the executors source (task propagation)."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import pyflight
import pyflight.sources.executors  # registers the sources
import pyflight.sources.threads
from pyflight.core import backend
from pyflight.core.events import Kind
from pyflight.sources import REGISTRY, SourceWarning


def snapshot(rec: pyflight.FlightRecorder, tmp_path: Path, name: str = "t.pyfl") -> pyflight.Trace:
    path = tmp_path / name
    rec.write_to(path)
    return pyflight.load(path)


def of_kind(trace: pyflight.Trace, kind: Kind) -> list[pyflight.Event]:
    return [e for e in trace.events if e.kind == kind]


@pytest.fixture
def originals() -> Iterator[dict[str, Any]]:
    """What the sources patch, before any recorder: checked again after each test."""
    saved = {
        "_bootstrap_inner": threading.Thread.__dict__["_bootstrap_inner"],
        "start": threading.Thread.__dict__["start"],
        "name": threading.Thread.__dict__["name"],
        "excepthook": threading.excepthook,
        "submit": ThreadPoolExecutor.__dict__["submit"],
    }
    yield saved
    assert threading.Thread.__dict__["_bootstrap_inner"] is saved["_bootstrap_inner"]
    assert threading.Thread.__dict__["start"] is saved["start"]
    assert threading.Thread.__dict__["name"] is saved["name"]
    assert threading.excepthook is saved["excepthook"]
    assert ThreadPoolExecutor.__dict__["submit"] is saved["submit"]


def failing_record(kind_to_fail: Kind) -> Callable[..., Any]:
    real = backend.record

    def record(kind: int, *args: Any) -> None:
        if kind == kind_to_fail:
            raise RuntimeError("injected fault")
        real(kind, *args)

    return record


# threads ---------------------------------------------------------------------------


def test_registered() -> None:
    assert REGISTRY["threads"].default_enabled
    assert REGISTRY["executors"].default_enabled


def test_start_end_rename(tmp_path: Path, originals: dict[str, Any]) -> None:
    rec = pyflight.FlightRecorder(sources=["threads"]).start()
    try:
        assert threading.Thread.__dict__["_bootstrap_inner"] is not originals["_bootstrap_inner"]
        seen: dict[str, Any] = {}
        proceed = threading.Event()

        def work() -> str:
            seen["tid"] = threading.get_native_id()
            seen["ident"] = threading.get_ident()
            seen["name_inside"] = threading.current_thread().name
            proceed.wait(5)
            return "ignored"

        worker = threading.Thread(target=work, name="worker-1")
        worker.start()
        worker.name = "worker-renamed"  # while it runs, from the parent
        proceed.set()
        worker.join()
        assert worker.name == "worker-renamed"
        assert seen["name_inside"] == "worker-1"

        trace = snapshot(rec, tmp_path)
    finally:
        rec.stop()

    tid = seen["tid"]
    main_tid = threading.get_native_id()
    starts = [e for e in of_kind(trace, Kind.THREAD_START) if e.arg("tid") == tid]
    assert len(starts) == 1
    start = starts[0]
    assert start.thread == tid  # recorded from inside the new thread
    assert start.arg("name") == "worker-1"
    assert start.arg("ident") == seen["ident"]
    assert start.arg("parent") == main_tid

    names = [e for e in of_kind(trace, Kind.THREAD_NAME) if e.arg("tid") == tid]
    assert [e.arg("name") for e in names] == ["worker-renamed"]
    assert names[0].thread == main_tid

    ends = [e for e in of_kind(trace, Kind.THREAD_END) if e.arg("tid") == tid]
    assert len(ends) == 1 and ends[0].thread == tid
    assert start.time <= names[0].time <= ends[0].time

    assert trace.threads[tid].name == "worker-renamed"
    assert trace.threads[tid].ident == seen["ident"]


def test_live_names_follow_generations(tmp_path: Path, originals: dict[str, Any]) -> None:
    """A thread started and renamed in an old generation is still named in later ones."""
    rec = pyflight.FlightRecorder(sources=["threads"]).start()
    try:
        stop = threading.Event()
        worker = threading.Thread(target=stop.wait, args=(5,), name="long-lived", daemon=True)
        worker.start()
        worker.name = "long-lived-2"
        ended = threading.Thread(target=lambda: None, name="short-lived")
        ended.start()
        ended.join()
        backend.seal()
        backend.record(Kind.LOG, 0, "test", "in a new generation")
        backend.seal()
        tid = worker.native_id
        trace = snapshot(rec, tmp_path)
        stop.set()
        worker.join()
    finally:
        rec.stop()
    last_seq = trace.generations[-1].seq
    assert len(trace.generations) >= 3
    # the last generation's THREAD_INFO events: the running worker by its new name, not the ended one
    last_start = trace.generations[-1].start_ns
    infos = [e for e in of_kind(trace, Kind.THREAD_INFO) if e.time >= last_start]
    named = {e.arg("tid"): e.arg("name") for e in infos}
    assert named.get(tid) == "long-lived-2", (last_seq, named)
    assert "short-lived" not in named.values()


def test_thread_exception(tmp_path: Path, originals: dict[str, Any]) -> None:
    previous_calls: list[type[BaseException]] = []

    def previous_hook(args: threading.ExceptHookArgs) -> None:
        previous_calls.append(args.exc_type)

    saved_hook = threading.excepthook
    threading.excepthook = previous_hook
    try:
        rec = pyflight.FlightRecorder(sources=["threads"]).start()
        try:

            def raising_function() -> None:
                raise KeyError("missing thing")

            worker = threading.Thread(target=raising_function, name="doomed")
            worker.start()
            worker.join()
            tid = worker.native_id
            trace = snapshot(rec, tmp_path)
        finally:
            rec.stop()
        assert threading.excepthook is previous_hook
    finally:
        threading.excepthook = saved_hook

    assert previous_calls == [KeyError]
    (exc,) = of_kind(trace, Kind.THREAD_EXCEPTION)
    assert exc.arg("tid") == tid and exc.thread == tid
    assert exc.arg("type") == "KeyError"
    assert "missing thing" in exc.arg("message")
    assert exc.stack, "the exception has a stack"
    assert exc.stack[0].function.endswith("raising_function")
    assert exc.stack[0].file == __file__
    assert any(f.function.endswith("Thread.run") for f in exc.stack[1:])
    ends = [e for e in of_kind(trace, Kind.THREAD_END) if e.arg("tid") == tid]
    assert len(ends) == 1 and ends[0].time >= exc.time


def test_system_exit_in_thread_is_not_an_exception(tmp_path: Path, originals: dict[str, Any]) -> None:
    saved_hook = threading.excepthook
    threading.excepthook = threading.__excepthook__  # pytest's own hook would report SystemExit
    try:
        rec = pyflight.FlightRecorder(sources=["threads"]).start()
        try:

            def leave() -> None:
                raise SystemExit(3)

            worker = threading.Thread(target=leave)
            worker.start()
            worker.join()
            trace = snapshot(rec, tmp_path)
        finally:
            rec.stop()
    finally:
        threading.excepthook = saved_hook
    assert not of_kind(trace, Kind.THREAD_EXCEPTION)
    assert [e for e in of_kind(trace, Kind.THREAD_END) if e.arg("tid") == worker.native_id]


def test_uninstall_restores_and_is_idempotent(originals: dict[str, Any]) -> None:
    source = REGISTRY["threads"]()
    rec = pyflight.FlightRecorder(sources=[]).start()
    try:
        source.install()
        source.install()
        patched = threading.Thread.__dict__["_bootstrap_inner"]
        assert patched is not originals["_bootstrap_inner"]
        assert threading.excepthook is not originals["excepthook"]
        source.uninstall()
        source.uninstall()
        assert threading.Thread.__dict__["_bootstrap_inner"] is originals["_bootstrap_inner"]
        assert threading.excepthook is originals["excepthook"]
        source.install()  # and again after an uninstall
        source.uninstall()
    finally:
        rec.stop()


def test_thread_behaviour_unchanged(originals: dict[str, Any]) -> None:
    """Names, daemon flags, results via closures, exceptions to the hook: as without pyflight."""
    rec = pyflight.FlightRecorder(sources=["threads"]).start()
    try:
        out: list[Any] = []

        class Custom(threading.Thread):
            def run(self) -> None:
                out.append((self.name, self.daemon, threading.current_thread() is self))

        t = Custom(name="custom", daemon=True)
        t.start()
        t.join()
        assert out == [("custom", True, True)]
        unstarted = threading.Thread(target=lambda: None)
        unstarted.name = "renamed-before-start"  # no tid yet: nothing to record, no error
        with pytest.raises(RuntimeError, match="once"):
            t.start()
        timer = threading.Timer(0.01, out.append, args=("timer",))
        timer.start()
        timer.join()
        assert out[-1] == "timer"
    finally:
        rec.stop()


def test_fault_disables_source_and_thread_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, originals: dict[str, Any]
) -> None:
    rec = pyflight.FlightRecorder(sources=["threads"]).start()
    try:
        monkeypatch.setattr(backend, "record", failing_record(Kind.THREAD_START))
        result: list[str] = []
        with pytest.warns(SourceWarning, match="threads"):
            worker = threading.Thread(target=lambda: result.append(threading.current_thread().name), name="w")
            worker.start()
            worker.join()
        assert result == ["w"]
        (source,) = rec.sources
        assert source.disabled_reason is not None and "injected fault" in source.disabled_reason
        # the hooks are gone right away, not only at stop()
        assert threading.Thread.__dict__["_bootstrap_inner"] is originals["_bootstrap_inner"]
        assert threading.excepthook is originals["excepthook"]
        again = threading.Thread(target=lambda: result.append("again"))
        again.start()
        again.join()
        assert result == ["w", "again"]
        monkeypatch.undo()
        trace = snapshot(rec, tmp_path)
    finally:
        rec.stop()
    disabled = of_kind(trace, Kind.SOURCE_DISABLED)
    assert [e.arg("source") for e in disabled] == ["threads"]
    assert "injected fault" in disabled[0].arg("reason")
    assert disabled[0] in trace.data_loss


# executors -------------------------------------------------------------------------


def logs(trace: pyflight.Trace, category: str) -> list[pyflight.Event]:
    return [e for e in of_kind(trace, Kind.LOG) if e.arg("category") == category]


def test_executor_job_runs_in_submitters_task(tmp_path: Path, originals: dict[str, Any]) -> None:
    rec = pyflight.FlightRecorder(sources=["executors"]).start()
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            with pyflight.task("req") as req:
                assert pool.submit(pyflight.log, "job", "inside").result(5) is None
                assert pool.submit(lambda x, *, y: x + y, 1, y=2).result(5) == 3
            # same worker thread, outside the task: the id was reset after the job
            pool.submit(pyflight.log, "job", "outside").result(5)
        trace = snapshot(rec, tmp_path)
    finally:
        rec.stop()
    assert req.id != 0
    inside = [e for e in logs(trace, "job") if e.arg("message") == "inside"]
    outside = [e for e in logs(trace, "job") if e.arg("message") == "outside"]
    assert [e.arg("task") for e in inside] == [req.id]
    assert [e.arg("task") for e in outside] == [0]
    assert inside[0].thread != threading.get_native_id()
    assert trace.user_tasks[req.id].name == "req"


def test_run_in_executor_runs_in_task(tmp_path: Path, originals: dict[str, Any]) -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        with pyflight.task("req-async") as req:
            await loop.run_in_executor(None, pyflight.log, "async-job", "hello")
        return req.id

    rec = pyflight.FlightRecorder(sources=["executors"]).start()
    try:
        task_id = asyncio.run(main())
        trace = snapshot(rec, tmp_path)
    finally:
        rec.stop()
    assert task_id != 0
    (event,) = logs(trace, "async-job")
    assert event.arg("task") == task_id


def test_executor_results_exceptions_cancellation_unchanged(originals: dict[str, Any]) -> None:
    rec = pyflight.FlightRecorder(sources=["executors"]).start()
    try:
        error = ValueError("from the job")

        def fail() -> None:
            raise error

        gate = threading.Event()
        with ThreadPoolExecutor(max_workers=1) as pool, pyflight.task("req"):
            with pytest.raises(ValueError) as caught:
                pool.submit(fail).result(5)
            assert caught.value is error
            blocker = pool.submit(gate.wait, 5)
            queued = pool.submit(pyflight.log, "never", "runs")
            assert queued.cancel()
            assert queued.cancelled()
            gate.set()
            assert blocker.result(5) is True
    finally:
        rec.stop()


def test_executor_job_untouched_without_recorder(originals: dict[str, Any]) -> None:
    """No recorder: the pool calls the submitted callable itself, not a wrapper (while one
    runs, every job is wrapped: POOL_JOB_BEGIN/END, tests/test_source_executors.py)."""

    def caller() -> str:
        return sys._getframe(1).f_code.co_name

    with ThreadPoolExecutor(max_workers=1) as pool:
        plain = pool.submit(caller).result(5)
        rec = pyflight.FlightRecorder(sources=["executors"]).start()
        try:
            assert pool.submit(caller).result(5) != plain  # wrapped while recording
            with pyflight.task("t"):
                assert pool.submit(caller).result(5) != plain
        finally:
            rec.stop()
        with pyflight.task("t"):  # no recorder: untouched even inside a task
            assert pool.submit(caller).result(5) == plain


def test_executor_fault_disables_source(monkeypatch: pytest.MonkeyPatch, originals: dict[str, Any]) -> None:
    rec = pyflight.FlightRecorder(sources=["executors"]).start()
    try:

        def broken() -> bool:
            raise RuntimeError("injected fault")

        monkeypatch.setattr(backend, "is_enabled", broken)
        with ThreadPoolExecutor(max_workers=1) as pool, pytest.warns(SourceWarning, match="executors"):
            assert pool.submit(lambda: 42).result(5) == 42
        monkeypatch.undo()
        assert ThreadPoolExecutor.__dict__["submit"] is originals["submit"]
        assert rec.sources[0].disabled_reason is not None
    finally:
        rec.stop()
