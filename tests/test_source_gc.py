"""The gc source: every collection is a GC_BEGIN/GC_END slice on the collecting thread."""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import pyflight
import pyflight.sources.gc_events  # registers the source
from pyflight.core import backend
from pyflight.core.events import Kind
from pyflight.sources import REGISTRY, SourceWarning


@pytest.fixture
def callbacks_before() -> Iterator[list[Any]]:
    before = list(gc.callbacks)
    yield before
    assert gc.callbacks == before
    assert all(a is b for a, b in zip(gc.callbacks, before, strict=True))


def snapshot(rec: pyflight.FlightRecorder, tmp_path: Path) -> pyflight.Trace:
    rec.write_to(tmp_path / "gc.pyfl")
    return pyflight.load(tmp_path / "gc.pyfl")


def make_garbage(n: int = 100) -> None:
    for _ in range(n):
        a: list[Any] = []
        a.append(a)


def test_registered() -> None:
    assert REGISTRY["gc"] is pyflight.sources.gc_events.GCSource
    assert REGISTRY["gc"].default_enabled


def test_forced_collection_is_a_slice(tmp_path: Path, callbacks_before: list[Any]) -> None:
    rec = pyflight.FlightRecorder(sources=["gc"]).start()
    try:
        assert len(gc.callbacks) == len(callbacks_before) + 1
        gc.disable()  # no automatic collection may take the garbage first (a loaded run: 30)
        try:
            make_garbage()
            collected = gc.collect(2)
        finally:
            gc.enable()
        trace = snapshot(rec, tmp_path)
    finally:
        rec.stop()
    me = threading.get_native_id()
    begins = [
        e for e in trace.events if e.kind == Kind.GC_BEGIN and e.arg("generation") == 2 and e.thread == me
    ]
    ends = [e for e in trace.events if e.kind == Kind.GC_END and e.arg("generation") == 2 and e.thread == me]
    assert begins and ends
    begin = begins[-1]
    end = next(e for e in ends if e.time >= begin.time)
    assert end.arg("collected") == collected >= 100  # the self-referencing lists
    assert end.arg("uncollectable") == 0
    assert begin.time <= end.time


def test_collection_in_another_thread(tmp_path: Path, callbacks_before: list[Any]) -> None:
    rec = pyflight.FlightRecorder(sources=["gc"]).start()
    try:
        tids: list[int] = []

        def collect() -> None:
            tids.append(threading.get_native_id())
            gc.collect(1)

        worker = threading.Thread(target=collect)
        worker.start()
        worker.join()
        trace = snapshot(rec, tmp_path)
    finally:
        rec.stop()
    on_worker = [e for e in trace.events if e.kind in (Kind.GC_BEGIN, Kind.GC_END) and e.thread == tids[0]]
    assert [e.kind for e in on_worker] == [Kind.GC_BEGIN, Kind.GC_END]
    assert all(e.arg("generation") == 1 for e in on_worker)


def test_automatic_collections_are_recorded(tmp_path: Path, callbacks_before: list[Any]) -> None:
    rec = pyflight.FlightRecorder(sources=["gc"]).start()
    try:
        gc.collect()
        make_garbage(5000)  # well past the generation-0 threshold
        trace = snapshot(rec, tmp_path)
    finally:
        rec.stop()
    assert sum(e.kind == Kind.GC_END and e.arg("generation") == 0 for e in trace.events) >= 1


def test_install_uninstall_idempotent(callbacks_before: list[Any]) -> None:
    source = REGISTRY["gc"]()
    source.install()
    source.install()
    assert len(gc.callbacks) == len(callbacks_before) + 1
    source.uninstall()
    source.uninstall()
    assert gc.callbacks == callbacks_before
    with pytest.raises(ValueError):
        REGISTRY["gc"](bogus=1)._install()


def failing_record(kind_to_fail: Kind) -> Callable[..., Any]:
    real = backend.record

    def record(kind: int, *args: Any) -> None:
        if kind == kind_to_fail:
            raise RuntimeError("injected fault")
        real(kind, *args)

    return record


def test_fault_disables_source_and_keeps_other_callbacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, callbacks_before: list[Any]
) -> None:
    calls: list[str] = []

    def user_callback(phase: str, info: dict[str, int]) -> None:
        calls.append(phase)

    monkeypatch.setattr(backend, "record", failing_record(Kind.GC_BEGIN))  # bound at install
    was_enabled = gc.isenabled()
    gc.disable()  # an automatic collection before pytest.warns would take the fault first
    rec = pyflight.FlightRecorder(sources=["gc"]).start()
    gc.callbacks.append(user_callback)  # after ours: a careless removal would skip it
    try:
        with pytest.warns(SourceWarning, match="'gc'"):
            assert gc.collect() >= 0  # the program's collection still happens
        assert calls == ["start", "stop"]
        source = rec.sources[0]
        assert source.disabled_reason is not None and "injected fault" in source.disabled_reason
        gc.collect()
        assert calls == ["start", "stop", "start", "stop"]
        monkeypatch.undo()
        trace = snapshot(rec, tmp_path)
    finally:
        rec.stop()
        gc.callbacks.remove(user_callback)
        if was_enabled:
            gc.enable()
    disabled = [e for e in trace.events if e.kind == Kind.SOURCE_DISABLED]
    assert [e.arg("source") for e in disabled] == ["gc"]
    assert not [e for e in trace.events if e.kind == Kind.GC_END]
