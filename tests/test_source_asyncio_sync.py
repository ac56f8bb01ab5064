"""asyncio tasks blocking on asyncio locks, semaphores, events, conditions, barriers and
queues: the TASK_BLOCK events of the asyncio source (a wrapper around
``asyncio.mixins._LoopBoundMixin._get_loop``) and the BLOCKED intervals the model makes
of them."""

from __future__ import annotations

import asyncio
import asyncio.mixins
import asyncio.tasks
import inspect
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

import pyflight
import pyflight.sources.asyncio_loop as asyncio_loop
from pyflight.analysis import build
from pyflight.analysis.breakdown import task_breakdown
from pyflight.analysis.model import Model, State, TaskTimeline
from pyflight.core.events import BlockReason, Kind
from pyflight.format.reader import loads
from pyflight.sources import SourceWarning
from tracegen import Gen, trace

IMPLEMENTATIONS = ["auto", "python"]  # C Handle._run (with the C core) / the Python one
TASK_TYPES = ["c", "python"]  # asyncio's C Task / the pure-Python Task (_PyTask)
MS = 1_000_000


def _get_loop() -> Any:
    return asyncio.mixins._LoopBoundMixin.__dict__["_get_loop"]


ORIGINAL_GET_LOOP = _get_loop()


@pytest.fixture(autouse=True)
def _restored() -> Iterator[None]:
    yield
    assert _get_loop() is ORIGINAL_GET_LOOP


def line_of(func: Callable[..., Any], marker: str) -> int:
    lines, first = inspect.getsourcelines(func)
    for i, text in enumerate(lines):
        if marker in text:
            return first + i
    raise AssertionError(marker)


SYNC_WAITS = {"asyncio": {"sync_waits": True}}  # the default, said explicitly


def run_traced(
    main: Callable[[], Coroutine[Any, Any, Any]],
    tmp_path: Path,
    implementation: str = "auto",
    task_type: str = "c",
    **options: Any,
) -> tuple[Any, pyflight.Trace]:
    opts = {"implementation": implementation, "sync_waits": True, **options}

    async def wrapped() -> Any:
        loop = asyncio.get_running_loop()
        if task_type == "python":
            loop.set_task_factory(lambda loop, coro, **kw: asyncio.tasks._PyTask(coro, loop=loop, **kw))
        task = loop.create_task(main())
        assert (type(task) is asyncio.tasks._PyTask) == (task_type == "python")
        return await task

    with pyflight.FlightRecorder(sources=["asyncio"], source_options={"asyncio": opts}) as rec:
        result = asyncio.run(wrapped())
        path = tmp_path / "t.pyfl"
        rec.write_to(path)
    return result, pyflight.load(path)


def blocks(trace: pyflight.Trace) -> list[pyflight.Event]:
    return [e for e in trace.events if e.kind == Kind.TASK_BLOCK]


def task_named(model: Model, coro: str) -> TaskTimeline:
    found = [t for t in model.all_tasks() if t.coro == coro]
    assert len(found) == 1, [t.coro for t in model.all_tasks()]
    return found[0]


# ---------------------------------------------------------------------------- programs


async def holder(lock: asyncio.Lock, started: asyncio.Event) -> None:
    async with lock:
        started.set()
        await asyncio.sleep(0.05)


async def lock_waiter(lock: asyncio.Lock) -> None:
    async with lock:  # WAITS HERE
        pass


async def lock_case() -> int:
    lock = asyncio.Lock()
    started = asyncio.Event()
    h = asyncio.create_task(holder(lock, started))
    await started.wait()
    await asyncio.create_task(lock_waiter(lock))
    await h
    return id(lock)


@pytest.mark.parametrize("task_type", TASK_TYPES)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_task_blocked_on_lock_shows_50ms_lock_interval(
    tmp_path: Path, implementation: str, task_type: str
) -> None:
    lock_id, trace = run_traced(lock_case, tmp_path, implementation, task_type)
    model = build(trace)
    waiter = task_named(model, "lock_waiter")
    locked = [iv for iv in waiter.intervals if iv.state is State.BLOCKED and iv.reason is BlockReason.LOCK]
    assert len(locked) == 1, waiter.intervals
    iv = locked[0]
    # blocked until the holder's 50 ms sleep ended (the rest, up to its step, is READY);
    # on a loaded machine the sleep may end late, so the end is checked against the
    # holder's own timeline, not against a clock
    assert iv.duration >= 35 * MS, iv
    held = task_named(model, "holder").intervals
    sleep = [i for i in held if i.state is State.BLOCKED][-1]
    release = [i for i in held if i.state is State.RUNNING][-1]
    assert sleep.end - MS <= iv.end <= release.start, (iv, sleep, release)
    assert iv.obj == lock_id
    assert iv.detail == "asyncio.Lock.acquire"
    assert iv.stack[0].function == "lock_waiter"
    assert iv.stack[0].line == line_of(lock_waiter, "WAITS HERE")
    assert iv.stack[0].file == __file__
    # no other wait of the waiter is a lock wait, and the holder never waited for it
    assert waiter.time_in(State.BLOCKED, BlockReason.AWAIT) < 10 * MS
    assert task_named(model, "holder").time_in(State.BLOCKED, BlockReason.LOCK) == 0
    rows = {r.name: r for r in task_breakdown(model)}
    assert rows["lock_waiter"].blocked.get(BlockReason.LOCK, 0) >= 35 * MS


def test_task_wait_stack_does_not_hide_the_lock(tmp_path: Path) -> None:
    _, trace = run_traced(lock_case, tmp_path, task_wait="stack")
    waiter = task_named(build(trace), "lock_waiter")
    locked = [iv for iv in waiter.intervals if iv.reason is BlockReason.LOCK]
    assert len(locked) == 1 and locked[0].duration >= 35 * MS


async def uncontended() -> None:
    lock = asyncio.Lock()
    sem = asyncio.Semaphore(2)
    event = asyncio.Event()
    event.set()
    q: asyncio.Queue[int] = asyncio.Queue(maxsize=5)
    cond = asyncio.Condition()
    for i in range(50):
        async with lock:
            pass
        async with sem:
            pass
        await event.wait()
        await q.put(i)
        await q.get()
        async with cond:
            cond.notify_all()
    await asyncio.sleep(0.01)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_uncontended_use_records_nothing(tmp_path: Path, implementation: str) -> None:
    _, trace = run_traced(uncontended, tmp_path, implementation)
    assert blocks(trace) == []


async def every_primitive() -> None:
    lock = asyncio.Lock()
    sem = asyncio.BoundedSemaphore(1)
    event = asyncio.Event()
    cond = asyncio.Condition()
    q: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
    barrier = asyncio.Barrier(2)

    async def later(action: Callable[[], Any], delay: float = 0.005) -> None:
        await asyncio.sleep(delay)
        result = action()
        if inspect.isawaitable(result):
            await result

    async with lock:
        t = asyncio.create_task(later(lock.release))
        await lock.acquire()  # LOCK
        await t
    await sem.acquire()
    t = asyncio.create_task(later(sem.release))
    await sem.acquire()  # SEMAPHORE
    await t
    t = asyncio.create_task(later(event.set))
    await event.wait()  # EVENT

    async def notify() -> None:
        async with cond:
            cond.notify_all()

    async with cond:
        t = asyncio.create_task(later(notify))
        await cond.wait()  # CONDITION
    await t
    t = asyncio.create_task(later(q.get_nowait, 0.01))
    await q.put(1)
    await q.put(2)  # QUEUE PUT
    await t
    q.get_nowait()
    t = asyncio.create_task(later(lambda: q.put_nowait(3)))
    await q.get()  # QUEUE GET
    await t
    for _ in range(3):
        q.task_done()
    q.put_nowait(4)
    q.get_nowait()
    t = asyncio.create_task(later(q.task_done))
    await q.join()  # QUEUE JOIN
    await t
    t = asyncio.create_task(later(barrier.wait))
    await barrier.wait()  # BARRIER
    await t


@pytest.mark.parametrize("task_type", TASK_TYPES)
def test_every_primitive_is_named(tmp_path: Path, task_type: str) -> None:
    _, trace = run_traced(every_primitive, tmp_path, task_type=task_type)
    (main_task,) = [
        e.arg("task")
        for e in trace.events
        if e.kind == Kind.TASK_CREATE and e.arg("coro") == "every_primitive"
    ]
    got = [
        (e.arg("what"), BlockReason(e.arg("reason")), e.arg("stack")[0].line if e.arg("stack") else 0)
        for e in blocks(trace)
        if e.arg("task") == main_task
    ]
    marks = {
        "asyncio.Lock.acquire": ("LOCK", BlockReason.LOCK),
        "asyncio.Semaphore.acquire": ("SEMAPHORE", BlockReason.LOCK),
        "asyncio.Event.wait": ("EVENT", BlockReason.CONDITION),
        "asyncio.Condition.wait": ("CONDITION", BlockReason.CONDITION),
        "asyncio.Queue.put": ("QUEUE PUT", BlockReason.CONDITION),
        "asyncio.Queue.get": ("QUEUE GET", BlockReason.CONDITION),
        "asyncio.Queue.join": ("QUEUE JOIN", BlockReason.CONDITION),
        "asyncio.Barrier.wait": ("BARRIER", BlockReason.CONDITION),
    }
    want = [(what, reason, line_of(every_primitive, f"# {mark}")) for what, (mark, reason) in marks.items()]
    assert got == want


def test_stacks_are_shared_per_site(tmp_path: Path) -> None:
    """After the first wait at a site, waits within a second leave the stack out; the
    model gives them the site's stack."""

    async def main() -> None:
        q: asyncio.Queue[int] = asyncio.Queue()

        async def feed() -> None:
            for i in range(20):
                await asyncio.sleep(0.001)
                q.put_nowait(i)

        t = asyncio.create_task(feed())
        for _ in range(20):
            await q.get()  # GET
        await t

    _, trace = run_traced(main, tmp_path)
    events = blocks(trace)
    assert len(events) >= 10
    assert len({e.arg("site") for e in events}) == 1
    assert sum(1 for e in events if e.arg("stack")) == 1
    model = build(trace)
    waits = [
        iv
        for t in model.all_tasks()
        for iv in t.intervals
        if iv.detail == "asyncio.Queue.get" and iv.state is State.BLOCKED
    ]
    assert len(waits) == len(events)
    assert all(iv.stack and iv.stack[0].function.endswith("main") for iv in waits)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_one_library_line_on_two_paths_keeps_each_paths_stack(tmp_path: Path, implementation: str) -> None:
    """anyio's ``Event.wait`` is one line for every wait of httpx, starlette, FastAPI: a
    pool's wait and a connect's reach asyncio there. Sharing stacks per waiting line
    gave every wait of the second the first's stack (a connection-pool wait shown as a
    connect); the site goes up the library's callers to the program's own frame."""
    anyio = pytest.importorskip("anyio")

    async def wait_for_slot(event: Any) -> None:
        await event.wait()

    async def wait_for_reply(event: Any) -> None:
        await event.wait()

    async def main() -> None:
        for _ in range(10):
            slot, reply = anyio.Event(), anyio.Event()
            waiting = [asyncio.create_task(wait_for_reply(reply)), asyncio.create_task(wait_for_slot(slot))]
            await asyncio.sleep(0.001)
            slot.set()
            reply.set()
            await asyncio.gather(*waiting)

    _, trace = run_traced(main, tmp_path, implementation)
    model = build(trace)
    seen: dict[str, set[str]] = {}
    for task in model.all_tasks():
        for iv in task.intervals:
            if iv.state is State.BLOCKED and iv.detail == "asyncio.Event.wait":
                assert iv.stack and "anyio" in iv.stack[0].file  # the library's line innermost
                ours = next(f.function for f in iv.stack if f.file == __file__)
                seen.setdefault(task.coro, set()).add(ours.rsplit(".", 1)[-1])
    assert {coro.rsplit(".", 1)[-1]: fns for coro, fns in seen.items()} == {
        "wait_for_slot": {"wait_for_slot"},
        "wait_for_reply": {"wait_for_reply"},
    }
    # and still one stack a second per path, not one per wait
    events = blocks(trace)
    assert len({e.arg("site") for e in events}) == 2
    assert sum(1 for e in events if e.arg("stack")) == 2


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks are 3.12+")
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_wait_in_an_eager_tasks_first_step_is_that_tasks(tmp_path: Path, implementation: str) -> None:
    """An eager task's first step runs inside its creator's step (aiohttp's request
    handlers): a wait that blocks there is the eager task's, not its creator's."""
    holder: dict[str, Any] = {}

    async def eager_waiter(event: asyncio.Event) -> None:
        await event.wait()

    async def main() -> None:
        event = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.Task(eager_waiter(event), loop=loop, eager_start=True)  # blocks at once
        holder["creator"], holder["eager"] = id(asyncio.current_task()), id(task)
        await asyncio.sleep(0.01)
        event.set()
        await task

    _, trace = run_traced(main, tmp_path, implementation)
    waits = [e for e in blocks(trace) if e.arg("what") == "asyncio.Event.wait"]
    assert [e.arg("task") for e in waits] == [holder["eager"]]


def test_sync_waits_off(tmp_path: Path) -> None:
    _, trace = run_traced(lock_case, tmp_path, sync_waits=False)
    assert blocks(trace) == []


def test_on_by_default(tmp_path: Path) -> None:
    """The default recorder (no option) records the wait on a contended lock."""
    path = tmp_path / "t.pyfl"
    with pyflight.FlightRecorder(sources=["asyncio"]) as rec:
        assert _get_loop() is not ORIGINAL_GET_LOOP
        lock_id = asyncio.run(lock_case())
        rec.write_to(path)
    assert _get_loop() is ORIGINAL_GET_LOOP
    blocks = [e for e in pyflight.load(path).events if e.kind == Kind.TASK_BLOCK and e.arg("obj") == lock_id]
    assert [e.arg("what") for e in blocks] == ["asyncio.Lock.acquire"]


def test_hook_installed_while_running_and_removed() -> None:
    with pyflight.FlightRecorder(sources=["asyncio"], source_options=SYNC_WAITS):
        assert _get_loop() is not ORIGINAL_GET_LOOP
        assert asyncio.run(lock_case())
    assert _get_loop() is ORIGINAL_GET_LOOP


def test_errors_of_asyncio_pass_through() -> None:
    """A lock bound to another loop raises the same RuntimeError as without the recorder."""
    lock = asyncio.Lock()

    async def hold_forever() -> None:
        await lock.acquire()
        await lock.acquire()

    async def other() -> None:
        await asyncio.wait_for(hold_forever(), 0.01)

    with pytest.raises(TimeoutError):
        asyncio.run(other())
    with pyflight.FlightRecorder(sources=["asyncio"]):

        async def contend() -> None:
            await lock.acquire()

        with pytest.raises(RuntimeError, match="different event loop"):
            asyncio.run(contend())


async def hand_stepped_lock_case() -> int:
    """A lock wait in a coroutine stepped by hand from a plain callback: no task's step
    runs it, so the hooks must ask asyncio.current_task whose wait it is."""
    lock = asyncio.Lock()
    await lock.acquire()
    acquire = lock.acquire()
    loop = asyncio.get_running_loop()
    stepped = loop.create_future()

    def step() -> None:
        stepped.set_result(acquire.send(None))  # blocks: yields the waiter future

    loop.call_soon(step)
    await stepped
    acquire.close()
    lock.release()
    return id(lock)


def test_fault_disables_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = asyncio.tasks.current_task
    locks = asyncio.locks.__dict__

    def current_task(loop: Any = None) -> Any:
        """Fails when asked by the sync-wait hook (called from a lock's frame, by C or Python)."""
        caller = sys._getframe(1)
        if caller.f_globals is locks or (caller.f_back is not None and caller.f_back.f_globals is locks):
            raise RuntimeError("injected block fault")
        return real(loop)

    monkeypatch.setattr(asyncio.tasks, "current_task", current_task)  # the hooks bind it when installed
    with pyflight.FlightRecorder(sources=["asyncio"], source_options=SYNC_WAITS) as rec:
        with pytest.warns(SourceWarning, match="injected block fault"):
            lock_id = asyncio.run(hand_stepped_lock_case())
        assert lock_id
        assert _get_loop() is ORIGINAL_GET_LOOP
        path = tmp_path / "t.pyfl"
        rec.write_to(path)
    trace = pyflight.load(path)
    assert [e.arg("source") for e in trace.events if e.kind == Kind.SOURCE_DISABLED] == ["asyncio"]


def test_module_constants() -> None:
    assert asyncio_loop.SITE_STACK_INTERVAL == 1_000_000_000
    assert sys.modules["asyncio.mixins"]._LoopBoundMixin is asyncio.mixins._LoopBoundMixin


# ------------------------------------------------------------------ model, on built traces


def test_model_applies_task_block_at_step_end_and_shares_site_stacks() -> None:
    stack = [("worker", "/app/w.py", 12), ("main", "/app/w.py", 30)]
    g1 = Gen(seq=1, start_ns=0, end_ns=1000)
    g1.event(1, Kind.TASK_CREATE, 10, task=5, name="w", coro="worker", parent=0)
    g1.event(1, Kind.TASK_STEP_BEGIN, 20, task=5)
    g1.event(
        1,
        Kind.TASK_BLOCK,
        30,
        task=5,
        reason=BlockReason.LOCK,
        obj=77,
        what="asyncio.Lock.acquire",
        site=3,
        stack=0,
    )
    g1.event(1, Kind.TASK_STEP_END, 40, task=5)
    # a TASK_WAIT after the step (task_wait mode) does not turn it back into AWAIT
    g1.event(1, Kind.TASK_WAIT, 41, task=5, reason=BlockReason.AWAIT, what="", stack=0)
    g1.event(1, Kind.TASK_STEP_BEGIN, 500, task=5)
    g1.event(1, Kind.TASK_STEP_END, 510, task=5)
    g2 = Gen(seq=2, start_ns=1000, end_ns=3000)
    g2.event(1, Kind.TASK_STEP_BEGIN, 1100, task=5)
    g2.event(
        1,
        Kind.TASK_BLOCK,
        1110,
        task=5,
        reason=BlockReason.CONDITION,
        obj=78,
        what="asyncio.Queue.get",
        site=4,
        stack=0,
    )
    g2.event(1, Kind.TASK_STEP_END, 1120, task=5)
    g2.event(1, Kind.TASK_STEP_BEGIN, 1500, task=5)
    # the stack of site 3, recorded later: shared with the earlier event
    g2.event(
        1,
        Kind.TASK_BLOCK,
        1510,
        task=5,
        reason=BlockReason.LOCK,
        obj=77,
        what="asyncio.Lock.acquire",
        site=3,
        stack=stack,
    )
    g2.event(1, Kind.TASK_STEP_END, 1520, task=5)
    g2.event(1, Kind.TASK_STEP_BEGIN, 2000, task=5)
    g2.event(1, Kind.TASK_DONE, 2010, task=5, outcome=0, error="")
    model = build(loads(trace([g1, g2])))
    task = model.tasks[5]
    blocked = [
        (iv.start, iv.end, iv.reason, iv.obj, iv.detail, len(iv.stack))
        for iv in task.intervals
        if iv.state is State.BLOCKED
    ]
    assert blocked == [
        (40, 500, BlockReason.LOCK, 77, "asyncio.Lock.acquire", 2),
        (510, 1100, BlockReason.AWAIT, 0, "", 0),
        (1120, 1500, BlockReason.CONDITION, 78, "asyncio.Queue.get", 0),  # site 4: no stack anywhere
        (1520, 2000, BlockReason.LOCK, 77, "asyncio.Lock.acquire", 2),
    ]
    first = next(iv for iv in task.intervals if iv.state is State.BLOCKED)
    assert first.stack[0].function == "worker"


def test_model_task_block_outside_a_step() -> None:
    """An eager task's first step runs inside another step: no STEP_BEGIN of its own."""
    g = Gen(seq=1, start_ns=0, end_ns=1000)
    g.event(1, Kind.TASK_CREATE, 10, task=6, name="e", coro="eager", parent=0)
    g.event(
        1,
        Kind.TASK_BLOCK,
        20,
        task=6,
        reason=BlockReason.LOCK,
        obj=9,
        what="asyncio.Lock.acquire",
        site=0,
        stack=0,
    )
    g.event(1, Kind.TASK_STEP_BEGIN, 700, task=6)
    g.event(1, Kind.TASK_DONE, 710, task=6, outcome=0, error="")
    task = build(loads(trace([g]))).tasks[6]
    assert [(iv.start, iv.end, iv.state, iv.reason) for iv in task.intervals[:2]] == [
        (10, 20, State.READY, None),
        (20, 700, State.BLOCKED, BlockReason.LOCK),
    ]
