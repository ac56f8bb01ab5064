"""One event per short asyncio step (C core): a step or callback during which its thread
records nothing else is written as one TASK_STEP / CALLBACK event, and the reader gives
back the TASK_STEP_BEGIN/END (CALLBACK_BEGIN/END) pair with exact times. Whatever else
the thread records during a step (a task created, a block, a nested step, a GC), and any
seal or snapshot meanwhile, writes the step's BEGIN first, at the step's own start."""

from __future__ import annotations

import asyncio
import asyncio.events
import gc
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pyflight
import pyflight.sources.asyncio_loop as asyncio_loop
from pyflight.core import backend
from pyflight.core.events import Kind
from pyflight.format import reader

C_STEPS = backend.BACKEND == "c"  # with the pure core, steps are always written as pairs


def recorder(*sources: str) -> pyflight.FlightRecorder:
    return pyflight.FlightRecorder(sources=["asyncio", *sources])


def load(path: Path) -> pyflight.Trace:
    return pyflight.load(path)


def load_raw(path: Path, monkeypatch: pytest.MonkeyPatch) -> pyflight.Trace:
    """The trace as written: one-event steps not expanded."""
    with monkeypatch.context() as m:
        m.setattr(reader, "_expander", lambda decode: lambda events: events)
        return pyflight.load(path)


KEEP: list[Any] = []  # tasks kept alive in a test: their ids are not reused by later tasks


def current_id() -> int:
    task = asyncio.current_task()
    KEEP.append(task)
    return id(task)


def step_start() -> int:
    """Start time of the running step of this thread's current task (the C slot's, which
    is the time its BEGIN must have)."""
    (start,) = [s[3] for s in asyncio_loop.running_steps() if s[0] == threading.get_ident()]
    return start


def at_start(begin: int, start: int) -> bool:
    """The C core dates a step's BEGIN exactly at its slot's start; the pure core reads
    its clock twice (close, not equal)."""
    return begin == start if C_STEPS else abs(begin - start) < 5_000_000


def steps_of(trace: pyflight.Trace, task_id: int) -> list[tuple[int, int]]:
    """(begin, end) times of the task's steps, checking that BEGINs and ENDs alternate."""
    out: list[tuple[int, int]] = []
    begin = None
    for e in trace.events:
        if e.kind in (Kind.TASK_STEP_BEGIN, Kind.TASK_STEP_END) and e.arg("task") == task_id:
            if e.kind == Kind.TASK_STEP_BEGIN:
                assert begin is None, "two BEGINs in a row"
                begin = e.time
            else:
                assert begin is not None, "an END without BEGIN"
                assert begin <= e.time
                out.append((begin, e.time))
                begin = None
    return out


def thread_events(trace: pyflight.Trace, thread: int, t0: int, t1: int) -> list[pyflight.Event]:
    return [e for e in trace.events if e.thread == thread and t0 <= e.time <= t1]


def test_short_steps_are_one_event_read_back_as_pairs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts: list[int] = []
    ends: list[int] = []

    async def worker() -> int:
        for _ in range(50):
            starts.append(step_start())
            ends.append(backend.now())
            await asyncio.sleep(0)
        return current_id()

    async def main() -> int:
        asyncio.get_running_loop().call_soon(lambda: None)
        return await asyncio.create_task(worker())

    with recorder() as rec:
        task_id = asyncio.run(main())
        rec.write_to(tmp_path / "t.pyfl")
    trace = load(tmp_path / "t.pyfl")
    steps = steps_of(trace, task_id)
    assert len(steps) == 51  # 50 yields and the last step
    # exact: the BEGIN is dated at the step's start, the END after the step's code
    assert all(at_start(b, start) for (b, _), start in zip(steps, starts, strict=False))
    assert all(end >= mark for (_, end), mark in zip(steps, ends, strict=False))
    callbacks = [e for e in trace.events if e.kind in (Kind.CALLBACK_BEGIN, Kind.CALLBACK_END)]
    assert any(e.kind == Kind.CALLBACK_BEGIN and "<lambda>" in e.arg("name") for e in callbacks)
    kinds = [e.kind for e in callbacks]
    assert kinds == [Kind.CALLBACK_BEGIN, Kind.CALLBACK_END] * (len(kinds) // 2)

    raw = load_raw(tmp_path / "t.pyfl", monkeypatch)
    mine = [e for e in raw.events if e.kind == Kind.TASK_STEP and e.arg("task") == task_id]
    if C_STEPS:
        assert len(mine) >= 50  # each short step one event, not two
        assert any(e.kind == Kind.CALLBACK for e in raw.events)
        assert trace.count_by_kind()[Kind.TASK_STEP] == 0  # never seen by analysis
    else:
        assert mine == []


@pytest.fixture(autouse=True)
def _release_tasks() -> Iterator[None]:
    yield
    KEEP.clear()


@pytest.mark.parametrize("what", ["task created", "block", "gc"])
def test_events_inside_a_step_keep_its_begin_first_and_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    marks: dict[str, int] = {}

    async def child() -> None:
        pass

    async def main() -> int:
        marks["start"] = step_start()
        marks["before"] = backend.now()
        if what == "task created":
            await_me = asyncio.create_task(child())
        elif what == "block":
            time.sleep(0.005)  # recorded by the blocking source (a BLOCK on this thread)
        else:
            gc.collect()
        marks["after"] = backend.now()
        if what == "task created":
            await await_me
        return current_id()

    sources = {"task created": (), "block": ("blocking",), "gc": ("gc",)}[what]
    with recorder(*sources) as rec:
        task_id = asyncio.run(main())
        rec.write_to(tmp_path / "t.pyfl")
    trace = load(tmp_path / "t.pyfl")
    first = steps_of(trace, task_id)[0]
    assert at_start(first[0], marks["start"])
    assert first[1] >= marks["after"]
    begin = next(e for e in trace.events if e.kind == Kind.TASK_STEP_BEGIN and e.arg("task") == task_id)
    inside = thread_events(trace, begin.thread, first[0], first[1])
    kinds = [e.kind for e in inside]
    assert kinds[0] == Kind.TASK_STEP_BEGIN and kinds[-1] == Kind.TASK_STEP_END
    expected = {"task created": Kind.TASK_CREATE, "block": Kind.BLOCK_BEGIN, "gc": Kind.GC_BEGIN}[what]
    assert expected in kinds[1:-1], kinds
    assert all(marks["before"] <= e.time <= marks["after"] for e in inside if e.kind == expected)
    if C_STEPS:  # still one event, written after what happened during the step
        raw = load_raw(tmp_path / "t.pyfl", monkeypatch)
        mine = [e for e in raw.events if e.thread == begin.thread]
        one = next((e for e in mine if e.kind == Kind.TASK_STEP and e.arg("task") == task_id), None)
        if one is None:
            # a generation was sealed while the step ran (a slow gc.collect() on a loaded
            # machine): the seal wrote its BEGIN, at the step's own start, before the rest
            split = next(e for e in mine if e.kind == Kind.TASK_STEP_BEGIN and e.arg("task") == task_id)
            assert split.time == first[0]
            inner = next(e for e in mine if e.kind == expected and marks["before"] <= e.time)
            assert mine.index(split) < mine.index(inner)
            return
        assert one.time == first[1] and one.arg("duration") == first[1] - first[0]
        inner = next(e for e in mine if e.kind == expected and marks["before"] <= e.time)
        assert mine.index(inner) < mine.index(one)


def test_nested_step_writes_the_outer_begin_first(tmp_path: Path) -> None:
    """A step that runs another loop to completion (as nest_asyncio does): the steps of
    the inner loop nest inside the outer step, all times exact."""
    marks: dict[str, Any] = {}

    async def inner() -> None:
        marks["inner"] = current_id()
        marks["inner_start"] = step_start()

    async def outer() -> None:
        marks["outer"] = current_id()
        marks["outer_start"] = step_start()
        running = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(None)
        other = asyncio.new_event_loop()
        try:
            other.run_until_complete(inner())
        finally:
            other.close()
            asyncio.events._set_running_loop(running)
        marks["outer_after"] = backend.now()

    with recorder() as rec:
        asyncio.run(outer())
        rec.write_to(tmp_path / "t.pyfl")
    trace = load(tmp_path / "t.pyfl")
    (outer_step,) = steps_of(trace, marks["outer"])
    (inner_step,) = steps_of(trace, marks["inner"])
    assert at_start(outer_step[0], marks["outer_start"]) and at_start(inner_step[0], marks["inner_start"])
    assert outer_step[0] < inner_step[0] <= inner_step[1] < outer_step[1]
    assert outer_step[1] >= marks["outer_after"]


async def _child() -> None:
    pass


@pytest.mark.parametrize("event_before", [False, True])
@pytest.mark.parametrize("by", ["this thread", "another thread"])
def test_snapshot_while_a_step_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, by: str, event_before: bool
) -> None:
    """A snapshot (a seal) taken while a step runs has the step's BEGIN, at its start (also
    when the step already recorded an event, a task created, before the seal); the next
    snapshot has its END, and the pair reads whole."""
    marks: dict[str, int] = {}
    first = tmp_path / "during.pyfl"
    rec = recorder()

    async def main() -> int:
        marks["start"] = step_start()
        if event_before:
            KEEP.append(asyncio.create_task(_child()))
            marks["created"] = id(KEEP[-1])
        if by == "this thread":
            rec.write_to(first)
        else:  # nothing recorded on the loop's thread meanwhile (only the asyncio source)
            taker = threading.Thread(target=rec.write_to, args=(first,))
            taker.start()
            while taker.is_alive():
                time.sleep(0.001)
            taker.join()
        marks["after"] = backend.now()
        return current_id()

    with rec:
        task_id = asyncio.run(main())
        rec.write_to(tmp_path / "after.pyfl")
    during = load(first)
    begins = [e for e in during.events if e.kind == Kind.TASK_STEP_BEGIN and e.arg("task") == task_id]
    ends = [e for e in during.events if e.kind == Kind.TASK_STEP_END and e.arg("task") == task_id]
    assert len(begins) == 1 and at_start(begins[0].time, marks["start"]) and ends == []
    assert begins[0].time <= during.generations[-1].end_ns
    if event_before:  # the step's BEGIN, then the task it created
        (created,) = [
            e for e in during.events if e.kind == Kind.TASK_CREATE and e.arg("task") == marks["created"]
        ]
        assert begins[0].time < created.time and during.events.index(begins[0]) < during.events.index(created)
    after = load(tmp_path / "after.pyfl")
    ((begin, end),) = steps_of(after, task_id)
    assert at_start(begin, marks["start"]) and end >= marks["after"]
    raw = load_raw(tmp_path / "after.pyfl", monkeypatch)
    assert not [e for e in raw.events if e.kind == Kind.TASK_STEP and e.arg("task") == task_id]


def test_stall_watchdog_still_sees_a_pending_step(tmp_path: Path) -> None:
    """The step's begin is only noted, yet the watchdog sees it running and records the stall."""

    async def stall() -> int:
        time.sleep(0.3)  # no event on this thread meanwhile (asyncio source only)
        return current_id()

    rec = pyflight.FlightRecorder(sources=["asyncio"], source_options={"asyncio": {"stall_threshold": 0.05}})
    with rec:
        task_id = asyncio.run(stall())
        rec.write_to(tmp_path / "t.pyfl")
    trace = load(tmp_path / "t.pyfl")
    stalls = [e for e in trace.events if e.kind == Kind.LOOP_STALL and e.arg("task") == task_id]
    assert stalls and all(e.arg("duration") >= 0.05e9 for e in stalls)
    ((begin, end),) = steps_of(trace, task_id)
    assert end - begin >= 0.3e9
    assert all(begin <= e.time <= end for e in stalls)


def test_a_step_that_sends_on_a_socket_says_so(tmp_path: Path) -> None:
    """A task's step that sends on a socket (a StreamWriter.write: a non-blocking send)
    is followed by TASK_SENT(task) at its END, in both cores; a step that only reads is
    not, and neither is a task that never sends. The metadata says they are recorded."""
    sent_at: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(line)
        writer.close()

    async def client(port: int) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(3):
            writer.write(b"ping\n")
            sent_at.append(backend.now())
            await reader.readline()
        writer.close()
        await writer.wait_closed()
        return current_id()

    async def idle() -> int:
        for _ in range(3):
            await asyncio.sleep(0.001)
        return current_id()

    async def main() -> tuple[int, int]:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        ids = await asyncio.gather(client(port), idle())
        server.close()
        await server.wait_closed()
        return ids[0], ids[1]

    with pyflight.FlightRecorder(sources=["asyncio", "blocking"]) as rec:
        client_id, idle_id = asyncio.run(main())
        rec.write_to(tmp_path / "t.pyfl")
    trace = load(tmp_path / "t.pyfl")
    assert trace.meta.get("blocking.step_sends")
    ends = {e.time for e in trace.events if e.kind == Kind.TASK_STEP_END and e.arg("task") == client_id}
    sent = [e for e in trace.events if e.kind == Kind.TASK_SENT]
    mine = sorted(e.time for e in sent if e.arg("task") == client_id)
    # each write's step (and the connect's, and the close's) ends with a TASK_SENT
    assert len(mine) >= 3 and set(mine) <= ends
    assert all(any(t <= end for end in mine) for t in sent_at)
    assert not [e for e in sent if e.arg("task") == idle_id]
    # the steps that only read what came back did not send
    assert len(ends) > len(mine)
