"""pyflight.task / region / log as recorded in a trace."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pyflight
from pyflight.core.events import Kind


def test_tasks_regions_and_logs_nest(tmp_path: Path) -> None:
    @pyflight.region("decorated")
    def work() -> int:
        pyflight.log("db", "query")
        return 7

    with pyflight.FlightRecorder() as rec:
        with pyflight.task("GET /users") as outer:
            with pyflight.task("load") as inner:
                assert work() == 7
        rec.write_to(tmp_path / "a.pyfl")
    trace = pyflight.load(tmp_path / "a.pyfl")
    begins = {e.arg("id"): e for e in trace.events if e.kind == Kind.USER_TASK_BEGIN}
    assert begins[outer.id].arg("name") == "GET /users" and begins[outer.id].arg("parent") == 0
    assert begins[inner.id].arg("parent") == outer.id
    ends = [e.arg("id") for e in trace.events if e.kind == Kind.USER_TASK_END]
    assert ends == [inner.id, outer.id]
    region = [e for e in trace.events if e.kind in (Kind.REGION_BEGIN, Kind.REGION_END)]
    assert [(e.kind, e.arg("task"), e.arg("name")) for e in region] == [
        (Kind.REGION_BEGIN, inner.id, "decorated"),
        (Kind.REGION_END, inner.id, "decorated"),
    ]
    (log,) = [e for e in trace.events if e.kind == Kind.LOG]
    assert (log.arg("task"), log.arg("category"), log.arg("message")) == (inner.id, "db", "query")
    assert trace.user_tasks[outer.id].name == "GET /users"


def test_task_follows_awaits_into_child_tasks(tmp_path: Path) -> None:
    async def child() -> None:
        await asyncio.sleep(0)
        pyflight.log("child", "hello")

    @pyflight.task("request")
    async def handler() -> None:
        await asyncio.create_task(child())

    with pyflight.FlightRecorder() as rec:
        asyncio.run(handler())
        rec.write_to(tmp_path / "a.pyfl")
    trace = pyflight.load(tmp_path / "a.pyfl")
    (begin,) = [e for e in trace.events if e.kind == Kind.USER_TASK_BEGIN]
    (log,) = [e for e in trace.events if e.kind == Kind.LOG]
    assert log.arg("task") == begin.arg("id")


def test_annotations_do_nothing_without_a_recorder() -> None:
    with pyflight.task("idle") as t, pyflight.region("r"):
        pyflight.log("x", "y")
    assert t.id == 0
