"""The asyncio source: steps, callbacks, task lifetimes, loop idle, stalls, and that the
replaced ``Handle._run`` behaves exactly like asyncio's own."""

from __future__ import annotations

import asyncio
import asyncio.base_events
import asyncio.events
import asyncio.tasks
import asyncio.timeouts
import functools
import gc
import os
import selectors
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

import pyflight
import pyflight.sources.asyncio_loop as asyncio_loop
from pyflight.analysis import build
from pyflight.analysis.model import State
from pyflight.core import BACKEND_NAME, backend
from pyflight.core.events import Kind, TaskOutcome
from pyflight.sources import REGISTRY, SourceWarning, metrics

PYTHON = sys.executable

IMPLEMENTATIONS = ["auto", "python"]  # "auto" is the C Handle._run with the C core


def recorder(implementation: str = "auto", **options: Any) -> pyflight.FlightRecorder:
    opts = {"implementation": implementation, **options}
    return pyflight.FlightRecorder(sources=["asyncio"], source_options={"asyncio": opts})


def snapshot(rec: pyflight.FlightRecorder, tmp_path: Path, name: str = "t.pyfl") -> pyflight.Trace:
    path = tmp_path / name
    rec.write_to(path)
    return pyflight.load(path)


def of_kind(trace: pyflight.Trace, kind: Kind) -> list[pyflight.Event]:
    return [e for e in trace.events if e.kind == kind]


def run_traced(
    main: Callable[[], Coroutine[Any, Any, Any]], tmp_path: Path, implementation: str = "auto", **options: Any
) -> tuple[Any, pyflight.Trace]:
    with recorder(implementation, **options) as rec:
        result = asyncio.run(main())
        return result, snapshot(rec, tmp_path)


def patched_attributes() -> dict[str, Any]:
    return {
        "_run": asyncio.events.Handle.__dict__["_run"],
        "create_task": asyncio.base_events.BaseEventLoop.__dict__["create_task"],
        "run_forever": asyncio.base_events.BaseEventLoop.__dict__["run_forever"],
        "_set_task_name": asyncio.tasks.__dict__.get("_set_task_name"),
        "_on_timeout": asyncio.timeouts.Timeout.__dict__["_on_timeout"],
        "_release_waiter": asyncio.tasks.__dict__["_release_waiter"],
    }


@pytest.fixture(autouse=True)
def _restored() -> Iterator[None]:
    """Every test leaves asyncio exactly as it found it."""
    before = patched_attributes()
    yield
    after = patched_attributes()
    for name, value in before.items():
        assert after[name] is value, name


# ---------------------------------------------------------------------------- coroutines


async def sleeper(delay: float) -> str:
    await asyncio.sleep(delay)
    return "slept"


async def failing() -> None:
    await asyncio.sleep(0)
    raise ValueError("boom")


async def staller() -> None:
    await asyncio.sleep(0)
    time.sleep(0.25)  # the blocking line
    await asyncio.sleep(0)


STALL_LINE = staller.__code__.co_firstlineno + 2


async def child() -> int:
    await asyncio.sleep(0)
    return 1


# ---------------------------------------------------------------------------- tests


def test_registered() -> None:
    cls = REGISTRY["asyncio"]
    assert cls is asyncio_loop.AsyncioSource
    assert cls.default_enabled


def test_bad_options() -> None:
    with pytest.raises(ValueError):
        asyncio_loop.AsyncioSource(nope=1)
    with pytest.raises(ValueError):
        asyncio_loop.AsyncioSource(task_wait="everything")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_install_replaces_and_uninstall_restores(implementation: str) -> None:
    before = patched_attributes()
    loop = asyncio.new_event_loop()
    try:
        with recorder(implementation):
            assert asyncio.events.Handle.__dict__["_run"] is not before["_run"]
            assert asyncio.base_events.BaseEventLoop.__dict__["create_task"] is not before["create_task"]
            if implementation == "auto" and BACKEND_NAME == "c":
                assert type(asyncio.events.Handle.__dict__["_run"]).__name__ == "method_descriptor"
            loop.run_until_complete(sleeper(0.01))
            selector = loop._selector  # type: ignore[attr-defined]
            assert "select" in vars(selector)
            assert selector._pyflight_loop_selector is True
            assert loop in metrics.registered_loops()  # for the loop-lag counters
        assert patched_attributes() == before
        assert loop not in metrics.registered_loops()
        assert "select" not in vars(selector)
        assert "_pyflight_loop_selector" not in vars(selector)
        assert asyncio_loop.running_steps() == []
    finally:
        loop.close()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_stall_shows_step_and_blocking_line(tmp_path: Path, implementation: str) -> None:
    async def main() -> int:
        task = asyncio.create_task(staller(), name="staller")
        await task
        return id(task)

    task_id, trace = run_traced(main, tmp_path, implementation)
    steps: dict[int, list[int]] = {}
    for e in trace.events:
        if e.kind in (Kind.TASK_STEP_BEGIN, Kind.TASK_STEP_END) and e.arg("task") == task_id:
            steps.setdefault(e.thread, []).append(e.time)
    (times,) = steps.values()
    durations = [end - begin for begin, end in zip(times[::2], times[1::2], strict=True)]
    assert any(0.2e9 <= d < 2e9 for d in durations), durations
    stalls = [e for e in of_kind(trace, Kind.LOOP_STALL) if e.arg("task") == task_id]
    assert 1 <= len(stalls) <= 3
    assert all(e.arg("duration") >= 0.1e9 for e in stalls)
    assert all(e.thread != next(iter(steps)) for e in stalls)  # recorded by the watchdog
    for stall in stalls:
        frames = [(f.function, f.line) for f in stall.stack]
        assert ("staller", STALL_LINE) in frames, frames


def test_stall_watchdog_can_be_disabled(tmp_path: Path) -> None:
    _, trace = run_traced(staller, tmp_path, stall_threshold=0)
    assert of_kind(trace, Kind.LOOP_STALL) == []
    assert not any(t.name == asyncio_loop.WATCHDOG_NAME for t in threading.enumerate())


@pytest.mark.skipif(backend.BACKEND != "c", reason="the C core's steps")
def test_stall_watchdog_sleeps_while_no_step_runs_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the C core the watchdog looks at the running steps without the GIL and runs
    Python code (takes the GIL from the program) only when one may be stalled and once a
    second for other loops: on an idle loop that is a few times a second, not 4 times per
    threshold; and it still catches a stall."""
    polls: list[int] = []
    watch_once = asyncio_loop._Hooks.watch_once

    def counted(self: Any, *args: Any) -> None:
        polls.append(1)
        watch_once(self, *args)

    monkeypatch.setattr(asyncio_loop._Hooks, "watch_once", counted)

    async def idle_then_stall() -> int:
        await asyncio.sleep(0.1)
        before = len(polls)
        await asyncio.sleep(1.0)
        idle = len(polls) - before
        time.sleep(0.1)  # a stall of 5 thresholds
        return idle

    with recorder(stall_threshold=0.02) as rec:  # a poll every 5 ms: 200 a second before
        idle_polls = asyncio.run(idle_then_stall())
        trace = snapshot(rec, tmp_path)
    assert idle_polls <= 10, idle_polls
    assert of_kind(trace, Kind.LOOP_STALL)


@pytest.mark.skipif(backend.BACKEND != "c", reason="the C core's steps")
def test_stall_wait_sees_a_stall_when_it_reaches_the_threshold() -> None:
    """The watchdog's wait without the GIL naps until the oldest running step could reach
    the threshold (so it may nap long on a busy loop of short steps), and so still sees a
    stall as it reaches the threshold, not up to a nap later."""
    threshold = 0.2  # no short step is preempted that long, even on a loaded machine
    returned: list[tuple[bool, float]] = []

    def watch() -> None:  # naps of up to 1 s allowed
        found = backend.asyncio_stall_wait(int(threshold * 1e9), 5.0, 1.0)
        returned.append((found, time.monotonic()))

    async def short_steps_then_a_stall() -> float:
        for _ in range(100):
            await asyncio.sleep(0.001)
        began = time.monotonic()
        time.sleep(0.8)  # a stall of four thresholds
        return began

    with recorder(stall_threshold=0):  # no watchdog of its own: this test's thread is it
        watcher = threading.Thread(target=watch)
        watcher.start()
        began = asyncio.run(short_steps_then_a_stall())
        watcher.join()
    ((found, at),) = returned
    assert found
    # the step began just before `began`; a nap of 1 s would have seen it ~0.5 s late
    assert threshold - 0.01 <= at - began <= threshold + 0.15, at - began


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_tasks_names_coroutines_parents(tmp_path: Path, implementation: str) -> None:
    async def main() -> dict[str, Any]:
        tasks: dict[str, Any] = {"main": asyncio.current_task()}  # kept alive: their ids stay unique
        with pyflight.task("req"):
            tasks["c1"] = asyncio.create_task(child(), name="c1")
            tasks["ensured"] = asyncio.ensure_future(sleeper(0))
            backend.seal()  # a new generation: it names the live tasks again (TASK_INFO)
            await asyncio.gather(tasks["c1"], tasks["ensured"], child())
            async with asyncio.TaskGroup() as group:
                tasks["tg1"] = group.create_task(child(), name="tg1")
        return tasks

    tasks, trace = run_traced(main, tmp_path, implementation)
    ids = {key: id(task) for key, task in tasks.items()}
    created = {e.arg("task"): e for e in of_kind(trace, Kind.TASK_CREATE)}
    main_id = ids["main"]
    assert created[main_id].arg("coro") == "test_tasks_names_coroutines_parents.<locals>.main"
    assert created[main_id].arg("parent") == 0
    for key in ("c1", "ensured", "tg1"):
        assert created[ids[key]].arg("parent") == main_id, key
    assert created[ids["c1"]].arg("coro") == "child"
    assert created[ids["ensured"]].arg("coro") == "sleeper"
    assert trace.tasks[ids["c1"]].name == "c1"  # 3.11/3.12 name it after create_task
    assert trace.tasks[ids["tg1"]].name == "tg1"
    creates = of_kind(trace, Kind.TASK_CREATE)
    gathered = [e for e in creates if e.arg("parent") == main_id and e.arg("coro") == "child"]
    assert len(gathered) == 3  # c1, the one gather wrapped, tg1
    # TASK_CREATE names a task where it is made; each later generation names the live
    # ones again, so the window keeps their names after their creation is evicted
    infos = {e.arg("task"): e for e in of_kind(trace, Kind.TASK_INFO)}
    assert {main_id, ids["c1"], ids["ensured"]} <= set(infos)
    assert infos[ids["c1"]].arg("coro") == "child" and infos[ids["c1"]].arg("parent") == main_id
    user_tasks = [u for u in trace.user_tasks.values() if u.name == "req"]
    assert len(user_tasks) == 1
    # every step of a task is recorded with that task's id, on the loop's thread
    stepped = {e.arg("task") for e in of_kind(trace, Kind.TASK_STEP_BEGIN)}
    assert {main_id, ids["c1"], ids["ensured"], ids["tg1"]} <= stepped


async def handle_request(i: int) -> int:
    await asyncio.sleep(0.001)
    return i


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_tasks_made_without_create_task_are_named_at_their_end(tmp_path: Path, implementation: str) -> None:
    """``asyncio.Task(coro)`` made directly (aiohttp's request handlers on 3.12+, eagerly
    started) never goes through create_task: the task is named once, at its end, so it
    is not a nameless "?" in the tables."""
    eager: dict[str, Any] = {"eager_start": True} if sys.version_info >= (3, 12) else {}

    async def main() -> list[asyncio.Task[int]]:
        loop = asyncio.get_running_loop()
        made = [asyncio.Task(handle_request(i), loop=loop, name=f"req-{i}", **eager) for i in range(4)]
        made.append(asyncio.create_task(handle_request(9), name="announced"))
        await asyncio.gather(*made)
        return made  # kept alive: asyncio.run's shutdown tasks may reuse a freed task's address (its id)

    made, trace = run_traced(main, tmp_path, implementation)
    ids = [id(task) for task in made]
    model = build(trace)
    by_id = {t.id: t for t in model.all_tasks()}
    assert [(by_id[i].name, by_id[i].coro) for i in ids] == [
        *((f"req-{i}", "handle_request") for i in range(4)),
        ("announced", "handle_request"),
    ]
    # the unannounced ones: one TASK_INFO each, at their end (no parent known)
    infos = [e for e in of_kind(trace, Kind.TASK_INFO) if e.arg("task") in ids[:4]]
    assert sorted(e.arg("task") for e in infos) == sorted(ids[:4])
    done = {e.arg("task"): e.time for e in of_kind(trace, Kind.TASK_DONE)}
    assert all(e.arg("parent") == 0 and e.time <= done[e.arg("task")] for e in infos)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_task_done_outcomes(tmp_path: Path, implementation: str) -> None:
    async def main() -> dict[str, int]:
        ok = asyncio.create_task(sleeper(0))
        bad = asyncio.create_task(failing())
        cancelled = asyncio.create_task(sleeper(10))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        results = await asyncio.gather(ok, bad, cancelled, return_exceptions=True)
        assert results[0] == "slept"
        main = id(asyncio.current_task())
        return {"ok": id(ok), "bad": id(bad), "cancelled": id(cancelled), "main": main}

    ids, trace = run_traced(main, tmp_path, implementation, task_wait="what")
    done: dict[int, Any] = {}
    for e in of_kind(trace, Kind.TASK_DONE):  # the first: asyncio.run's shutdown tasks may reuse an id
        done.setdefault(e.arg("task"), e)
    assert done[ids["ok"]].arg("outcome") == TaskOutcome.OK
    assert done[ids["ok"]].arg("error") == ""
    assert done[ids["bad"]].arg("outcome") == TaskOutcome.FAILED
    assert done[ids["bad"]].arg("error") == "ValueError: boom"
    assert done[ids["cancelled"]].arg("outcome") == TaskOutcome.CANCELLED
    # "what": a wait on a plain Future (the sleeps) says no more than the step's end: no
    # TASK_WAIT after the step (by the loop's thread: the watchdog's looks at waiting tasks
    # record their own); a wait on anything else is named
    after_steps = [e for e in of_kind(trace, Kind.TASK_WAIT) if e.thread == threading.get_native_id()]
    assert [e for e in after_steps if e.arg("task") == ids["cancelled"]] == []
    gathering = [e for e in after_steps if e.arg("task") == ids["main"]]
    assert gathering and gathering[-1].arg("reason") == 7  # BlockReason.AWAIT
    assert gathering[-1].arg("what") == "_GatheringFuture"


def test_task_factory_returning_other_objects(tmp_path: Path) -> None:
    """A task factory may return any awaitable object: recorded as well as it can be."""

    class Lean(asyncio.Future[Any]):  # no get_name, not a Task
        def __init__(self, coro: Any, loop: asyncio.AbstractEventLoop) -> None:
            super().__init__(loop=loop)
            self.inner = loop.call_soon(self.set_result, 1)
            coro.close()

        def set_name(self, name: Any) -> None:  # 3.13 calls it
            pass

    async def main() -> tuple[int, Any]:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(lambda loop, coro, **kw: Lean(coro, loop))
        lean = loop.create_task(child())
        result = await lean
        loop.set_task_factory(None)
        return result, lean

    with warnings.catch_warnings():
        warnings.simplefilter("error", SourceWarning)  # no fault
        (result, lean), trace = run_traced(main, tmp_path)
    assert result == 1
    created = [e for e in of_kind(trace, Kind.TASK_CREATE) if e.arg("task") == id(lean)]
    assert [(e.arg("name"), e.arg("coro")) for e in created] == [("", "child")]
    assert of_kind(trace, Kind.SOURCE_DISABLED) == []


def test_task_wait_stack(tmp_path: Path) -> None:
    async def main() -> int:
        task = asyncio.create_task(sleeper(0.01))
        await task
        return id(task)

    task_id, trace = run_traced(main, tmp_path, task_wait="stack")
    waits = [e for e in of_kind(trace, Kind.TASK_WAIT) if e.arg("task") == task_id]
    assert waits
    assert waits[0].stack and waits[0].stack[0].function == "sleep"  # asyncio.sleep, innermost
    assert waits[0].arg("what") == ""  # a plain Future: "stack" records it all the same
    task_id, trace = run_traced(main, tmp_path)  # the default: "what", no stacks
    # after each step, by the loop's thread (the watchdog's looks at waiting tasks aside)
    loop_thread = threading.get_native_id()
    default_waits = [e for e in of_kind(trace, Kind.TASK_WAIT) if e.thread == loop_thread]
    assert [e.arg("what") for e in default_waits] == ["Task"]  # main awaits the task
    assert not default_waits[0].stack
    assert all(e.arg("task") != task_id for e in default_waits)  # the sleep: a plain Future
    _, trace = run_traced(main, tmp_path, task_wait="off")
    assert of_kind(trace, Kind.TASK_WAIT) == []


def test_a_long_wait_on_a_plain_future_gets_its_await_chain(tmp_path: Path) -> None:
    """No hook says where a task awaits a plain future (a socket read, a library's own
    future); the watchdog's looks at waiting tasks record the await chain, innermost
    first, once per wait, and the model gives the whole wait that stack."""

    async def inner(fut: asyncio.Future[int]) -> int:
        return await fut

    async def outer(fut: asyncio.Future[int]) -> int:
        return await inner(fut)

    async def main() -> int:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(outer(fut))
        await asyncio.sleep(1.0)  # the watchdog looks every 0.25 s
        fut.set_result(7)
        assert await task == 7
        return id(task)

    task_id, trace = run_traced(main, tmp_path)
    looked = [e for e in of_kind(trace, Kind.TASK_WAIT) if e.arg("task") == task_id]
    assert len(looked) == 1, looked  # once per wait
    assert looked[0].thread != threading.get_native_id()  # the watchdog's, not the loop's
    functions = [f.function for f in looked[0].stack]
    assert functions[0].endswith("<locals>.inner") and functions[1].endswith("<locals>.outer"), functions
    assert looked[0].arg("what") == ""  # a plain Future
    (task,) = [t for t in build(trace).all_tasks() if t.id == task_id]
    (wait,) = [iv for iv in task.intervals if iv.state is State.BLOCKED]
    assert wait.end - wait.start >= 900_000_000 and wait.stack[0].function.endswith("<locals>.inner")


def test_an_await_chain_goes_through_async_generators(tmp_path: Path) -> None:
    """``async for`` awaits an async generator's ``asend`` object, which has no attribute
    leading on (a WebSocket client's ``async for message in ws``): the chain goes on
    through the generator to what it awaits, innermost first."""

    async def receive(fut: asyncio.Future[int]) -> int:
        return await fut

    async def messages(fut: asyncio.Future[int]) -> AsyncIterator[int]:
        yield await receive(fut)

    async def follow(fut: asyncio.Future[int]) -> int:
        async for message in messages(fut):
            return message
        return 0

    async def main() -> int:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(follow(fut))
        await asyncio.sleep(1.0)  # the watchdog looks every 0.25 s
        fut.set_result(7)
        assert await task == 7
        return id(task)

    task_id, trace = run_traced(main, tmp_path)
    [looked] = [e for e in of_kind(trace, Kind.TASK_WAIT) if e.arg("task") == task_id]
    functions = [f.function.rpartition(".")[2] for f in looked.stack]
    assert functions == ["receive", "messages", "follow"], functions


def test_a_look_at_waiting_tasks_survives_the_loop_adding_tasks_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watchdog copies asyncio's WeakSet of tasks from its own thread; the loop may
    add a task while the copy runs ("Set changed size during iteration": it disabled the
    source once, on a loop creating 20,000 tasks in a burst). The look tries again and
    records its chain; the source stays on."""
    import weakref

    class Changing(weakref.WeakSet[Any]):
        """Changes size under the first copy, as another thread's add would."""

        copies = 0

        def __iter__(self) -> Iterator[Any]:
            Changing.copies += 1
            if Changing.copies == 1:
                raise RuntimeError("Set changed size during iteration")
            return super().__iter__()

    async def waiter(fut: asyncio.Future[int]) -> int:
        return await fut

    async def main() -> int:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(waiter(fut))
        await asyncio.sleep(0.01)
        tasks = Changing()
        tasks.add(task)
        monkeypatch.setattr(asyncio.tasks, "_scheduled_tasks", tasks, raising=False)
        hooks = asyncio_loop._installed_hooks
        assert hooks is not None and hooks.look_at_waiting_tasks() == 1
        fut.set_result(1)
        await task
        return id(task)

    with warnings.catch_warnings():
        warnings.simplefilter("error", SourceWarning)
        task_id, trace = run_traced(main, tmp_path)
    assert Changing.copies >= 2
    looked = [e for e in of_kind(trace, Kind.TASK_WAIT) if e.arg("task") == task_id]
    assert looked and looked[0].stack[0].function.endswith("<locals>.waiter")
    assert not of_kind(trace, Kind.SOURCE_DISABLED)


def test_failed_task_exception_still_reported_as_never_retrieved(tmp_path: Path) -> None:
    """Recording a failure must not mark the task's exception as retrieved."""

    def run() -> list[str]:
        messages: list[str] = []

        async def main() -> None:
            asyncio.get_running_loop().set_exception_handler(
                lambda loop, ctx: messages.append(ctx["message"])
            )
            task = asyncio.create_task(failing())
            await asyncio.sleep(0.01)
            assert task.done()
            del task
            gc.collect()

        asyncio.run(main())
        return messages

    expected = run()
    assert "Task exception was never retrieved" in expected
    with recorder():
        assert run() == expected


def _callback_exception_contexts(debug: bool) -> list[tuple[Any, ...]]:
    """What the loop's exception handler gets for raising callbacks."""
    seen: list[tuple[Any, ...]] = []

    def bad(x: int) -> None:
        raise ValueError(f"bad {x}")

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        source = context.get("source_traceback")
        seen.append(
            (
                sorted(context),
                context["message"],
                type(context["exception"]),
                str(context["exception"]),
                context["handle"] is handles[len(seen)],
                sys.exception() is context["exception"],
                None if source is None else tuple(source[-1]),
            )
        )

    loop = asyncio.new_event_loop()
    try:
        loop.set_debug(debug)
        loop.set_exception_handler(handler)
        handles = [
            loop.call_soon(bad, 1),
            loop.call_soon(functools.partial(bad, 2)),
            loop.call_later(0.001, bad, 3),
        ]
        loop.call_later(0.05, loop.stop)
        loop.run_forever()
    finally:
        loop.close()
    return seen


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("debug", [False, True])
def test_callback_exception_goes_to_handler_unchanged(debug: bool, implementation: str) -> None:
    expected = _callback_exception_contexts(debug)
    assert len(expected) == 3
    assert expected[0][1].startswith("Exception in callback ")
    assert all(item[5] for item in expected)  # the exception is being handled (sys.exception())
    if debug:
        assert all("source_traceback" in item[0] for item in expected)
    with recorder(implementation):
        assert _callback_exception_contexts(debug) == expected


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_and_exit_propagate(implementation: str, exc_type: type[BaseException]) -> None:
    def raise_it() -> None:
        raise exc_type("from callback")

    with recorder(implementation):
        loop = asyncio.new_event_loop()
        try:
            loop.call_soon(raise_it)
            with pytest.raises(exc_type, match="from callback"):
                loop.run_forever()
        finally:
            loop.close()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_odd_handles_behave_like_asyncio(implementation: str) -> None:
    """Non-tuple args and a cancelled handle run through the same code as asyncio's."""

    def outcomes() -> list[str]:
        got: list[str] = []
        loop = asyncio.new_event_loop()
        try:
            loop.set_exception_handler(lambda lp, ctx: got.append(f"{type(ctx['exception']).__name__}"))
            handle = asyncio.events.Handle(got.append, ("list-args",), loop)
            handle._args = ["from a list"]
            handle._run()
            cancelled = asyncio.events.Handle(got.append, ("x",), loop)
            cancelled.cancel()
            cancelled._run()  # callback None, args None: a TypeError for the handler
        finally:
            loop.close()
        return got

    expected = outcomes()
    assert expected == ["from a list", "TypeError"]
    with recorder(implementation):
        assert outcomes() == expected


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_callbacks_recorded_with_names(tmp_path: Path, implementation: str) -> None:
    def plain() -> None:
        pass

    async def main() -> int:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        done: set[int] = {1, 2}
        loop.call_soon(plain)
        loop.call_soon(functools.partial(plain))
        for _ in range(100):  # builtin callbacks (C code, ~100 ns): not worth an event each
            loop.call_soon(done.discard, 1)
        loop.call_soon(time.sleep, 0.005)  # a builtin that blocks the loop: recorded
        loop.call_soon(fut.set_result, 1)
        await fut
        return id(loop)

    loop_id, trace = run_traced(main, tmp_path, implementation)
    begins = of_kind(trace, Kind.CALLBACK_BEGIN)
    names = [e.arg("name") for e in begins]
    assert names.count("test_callbacks_recorded_with_names.<locals>.plain") == 2
    # (one preempted for 100 us on a loaded machine did last that long, and is kept)
    assert names.count("set.discard") <= 10, names
    (sleep,) = [e for e in begins if e.arg("name") == "sleep"]
    (sleep_end,) = [e for e in of_kind(trace, Kind.CALLBACK_END) if e.time > sleep.time][:1]
    assert sleep_end.time - sleep.time >= 5_000_000
    assert {e.arg("loop") for e in begins} == {loop_id}
    assert len(of_kind(trace, Kind.CALLBACK_END)) == len(names)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_loop_idle_slice(tmp_path: Path, implementation: str) -> None:
    async def main() -> int:
        await asyncio.sleep(0.1)
        return id(asyncio.get_running_loop())

    loop_id, trace = run_traced(main, tmp_path, implementation)
    begins = [e for e in of_kind(trace, Kind.LOOP_IDLE_BEGIN) if e.arg("loop") == loop_id]
    ends = [e for e in of_kind(trace, Kind.LOOP_IDLE_END) if e.arg("loop") == loop_id]
    assert len(begins) == len(ends) >= 1
    slices = [end.time - begin.time for begin, end in zip(begins, ends, strict=True)]
    assert any(0.08e9 <= d < 1e9 for d in slices), slices
    assert all(e.arg("events") == 0 for e in ends)  # a timer, no fd became ready


def test_running_steps_during_a_step() -> None:
    async def main() -> tuple[list[tuple[int, int, int, int]], int, int]:
        now = backend.now()
        return asyncio_loop.running_steps(), id(asyncio.current_task()), now

    with recorder():
        steps, task_id, now = asyncio.run(main())
    mine = [s for s in steps if s[0] == threading.get_ident()]
    assert len(mine) == 1
    _ident, loop_id, task, start = mine[0]
    assert task == task_id and loop_id != 0
    assert now - 50_000_000 <= start <= now + 50_000_000  # the C table's clock is coarse (ticks)


def test_recorder_started_inside_running_loop(tmp_path: Path) -> None:
    """Tasks that exist at install get TASK_INFO; the running loop is instrumented."""

    async def main() -> tuple[int, int, pyflight.Trace]:
        waiting = asyncio.create_task(sleeper(0.15), name="early")
        await asyncio.sleep(0)
        with recorder() as rec:
            await asyncio.sleep(0.1)  # an idle wait, recorded
            await waiting
            return id(waiting), id(asyncio.get_running_loop()), snapshot(rec, tmp_path)

    task_id, loop_id, trace = asyncio.run(main())
    assert trace.tasks[task_id].name == "early"
    assert trace.tasks[task_id].coro == "sleeper"
    assert any(e.arg("task") == task_id for e in of_kind(trace, Kind.TASK_DONE))
    assert any(e.arg("loop") == loop_id for e in of_kind(trace, Kind.LOOP_IDLE_END))


def test_loop_in_another_thread_is_instrumented_lazily(tmp_path: Path) -> None:
    started = threading.Event()
    stop = threading.Event()
    loop = asyncio.new_event_loop()

    async def ticker() -> None:
        started.set()
        while not stop.is_set():
            await asyncio.sleep(0.02)

    thread = threading.Thread(target=loop.run_until_complete, args=(ticker(),))
    thread.start()
    try:
        started.wait(5)
        with recorder() as rec:
            time.sleep(0.2)
            trace = snapshot(rec, tmp_path)
    finally:
        stop.set()
        thread.join(5)
        loop.close()
    assert any(e.arg("loop") == id(loop) for e in of_kind(trace, Kind.LOOP_IDLE_END))
    assert of_kind(trace, Kind.TASK_STEP_BEGIN)
    assert len(trace.tasks) == 1  # the pre-existing ticker task, by TASK_INFO


def test_foreign_loop_noted_once(tmp_path: Path) -> None:
    class ForeignLoop(asyncio.AbstractEventLoop):  # like uvloop.Loop: not a BaseEventLoop
        pass

    foreign, not_a_loop, task = ForeignLoop(), object(), object()  # type: ignore[abstract]
    with recorder() as rec:
        hooks = asyncio_loop._installed_hooks
        assert hooks is not None
        asyncio.tasks._enter_task(foreign, task)  # type: ignore[arg-type]  # a task of it runs
        asyncio.tasks._enter_task(not_a_loop, task)  # type: ignore[arg-type]  # ignored
        try:
            with pytest.warns(SourceWarning, match="ForeignLoop") as warned:
                hooks.check_foreign_loops()
                hooks.check_foreign_loops()  # once per loop class
            assert len(warned) == 1
        finally:
            asyncio.tasks._leave_task(foreign, task)  # type: ignore[arg-type]
            asyncio.tasks._leave_task(not_a_loop, task)  # type: ignore[arg-type]
        backend.seal()  # the note is live: recorded again in the next generation
        trace = snapshot(rec, tmp_path)
    notes = [e for e in trace.data_loss if e.kind == Kind.DATA_LOSS and e.arg("source") == "asyncio"]
    assert notes and "ForeignLoop" in notes[0].arg("reason")
    assert "sampling-only" in notes[0].arg("reason")


def test_uvloop_loop_is_noted_between_its_steps(tmp_path: Path) -> None:
    """A real uvloop loop (uvicorn's default when installed) whose tasks are all waiting
    when the once-a-second look comes (a service between requests): still noted as
    sampling-only coverage, from the loop its live tasks belong to."""
    uvloop = pytest.importorskip("uvloop")
    looked = threading.Event()

    async def main() -> None:
        hooks = asyncio_loop._installed_hooks
        assert hooks is not None
        sleepers = [asyncio.create_task(asyncio.sleep(0.5)) for _ in range(3)]
        await asyncio.sleep(0.01)
        # from another thread, while every task of the loop waits (no step running)
        threading.Thread(target=lambda: (time.sleep(0.1), hooks.check_foreign_loops(), looked.set())).start()
        await asyncio.gather(*sleepers)

    with recorder() as rec:
        with pytest.warns(SourceWarning, match="uvloop.Loop"):
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(main())
        assert looked.wait(5)
        backend.seal()
        trace = snapshot(rec, tmp_path)
    notes = [
        e.arg("reason") for e in trace.data_loss if e.kind == Kind.DATA_LOSS and e.arg("source") == "asyncio"
    ]
    assert any("uvloop.Loop" in note and "sampling-only" in note for note in notes), notes


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_fault_disables_source_and_program_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, implementation: str
) -> None:
    class Faulty(asyncio.Task):  # type: ignore[type-arg]
        """A task whose name cannot be read: recording its creation fails (C and Python alike)."""

        def get_name(self) -> str:
            raise RuntimeError("injected fault")

    async def main() -> str:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(lambda loop, coro, **kw: Faulty(coro, loop=loop, **kw))
        result: str = await asyncio.create_task(sleeper(0.01))
        loop.set_task_factory(None)
        return result

    before = patched_attributes()
    rec = recorder(implementation).start()
    try:
        with pytest.warns(SourceWarning, match="injected fault"):
            result = asyncio.run(main())
        assert result == "slept"
        assert patched_attributes() == before  # removed itself
        trace = snapshot(rec, tmp_path)
    finally:
        rec.stop()
    disabled = of_kind(trace, Kind.SOURCE_DISABLED)
    assert [e.arg("source") for e in disabled] == ["asyncio"]
    assert "injected fault" in disabled[0].arg("reason")
    assert asyncio.run(sleeper(0)) == "slept"


def test_fault_in_idle_select_disables_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Python select wrapper (the C one records through the core, which cannot raise)."""
    real = backend.record

    def record(kind: int, *args: Any) -> None:
        if kind == Kind.LOOP_IDLE_BEGIN:
            raise RuntimeError("idle fault")
        real(kind, *args)

    with recorder("python") as rec:
        monkeypatch.setattr(backend, "record", record)
        with pytest.warns(SourceWarning, match="idle fault"):
            assert asyncio.run(sleeper(0.05)) == "slept"
        monkeypatch.setattr(backend, "record", real)
        trace = snapshot(rec, tmp_path)
    assert [e.arg("source") for e in of_kind(trace, Kind.SOURCE_DISABLED)] == ["asyncio"]


def test_default_sources_together(tmp_path: Path) -> None:
    """With every default source (blocking wraps selectors too): the loop's waits are LOOP_IDLE."""

    async def main() -> int:
        await asyncio.gather(sleeper(0.05), child())
        return id(asyncio.get_running_loop())

    with pyflight.FlightRecorder() as rec:
        loop_id = asyncio.run(main())
        trace = snapshot(rec, tmp_path)
    assert any(e.arg("loop") == loop_id for e in of_kind(trace, Kind.LOOP_IDLE_END))
    select_blocks = [e for e in of_kind(trace, Kind.BLOCK_BEGIN) if e.arg("reason") == 6]  # SELECT
    assert not [e for e in select_blocks if any(f.function.endswith("_run_once") for f in e.stack)]


def test_asyncio_imported_after_install(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    """Without asyncio imported, installing imports nothing; the hooks arrive with asyncio."""
    script = f"""
import sys
import pyflight
from pyflight.core.events import Kind
rec = pyflight.FlightRecorder(sources=["asyncio"]).start()
assert "asyncio" not in sys.modules, "installing imported asyncio"
import threading
stalls = [t for t in threading.enumerate() if t.name == "pyflight-stalls"]  # idle until asyncio
import asyncio
assert [t for t in threading.enumerate() if t.name == "pyflight-stalls"] == stalls and stalls
assert type(asyncio.events.Handle.__dict__["_run"]).__name__ != "function" or {BACKEND_NAME!r} != "c"
assert asyncio.events.Handle._run.__qualname__ == "Handle._run"
assert asyncio.__spec__.loader.__class__.__name__ != "_ChainedLoader"
async def main():
    await asyncio.sleep(0.01)
asyncio.run(main())
rec.write_to({str(tmp_path / "late.pyfl")!r})
rec.stop()
trace = pyflight.load({str(tmp_path / "late.pyfl")!r})
kinds = {{e.kind for e in trace.events}}
assert Kind.TASK_CREATE in kinds and Kind.TASK_STEP_BEGIN in kinds, kinds
print("ok")
"""
    out = subprocess.run(
        [PYTHON, "-c", script], env=subprocess_env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_selector_blocking_wrapper_is_skipped() -> None:
    """The loop's selector carries the mark the blocking source checks."""
    with recorder():
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(sleeper(0))
            assert isinstance(loop._selector, selectors.BaseSelector)  # type: ignore[attr-defined]
            assert loop._selector._pyflight_loop_selector is True  # type: ignore[attr-defined]
        finally:
            loop.close()


@pytest.mark.skipif(os.environ.get("PYFLIGHT_SKIP_AIOHTTP") == "1", reason="disabled")
def test_aiohttp_server_steps(tmp_path: Path) -> None:
    aiohttp = pytest.importorskip("aiohttp")
    from aiohttp import web

    async def hello(request: Any) -> Any:
        await asyncio.sleep(0)
        return web.Response(text="hi")

    async def main() -> str:
        app = web.Application()
        app.router.add_get("/", hello)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/") as resp:
                return str(await resp.text())
        finally:
            await runner.cleanup()

    text, trace = run_traced(main, tmp_path)
    assert text == "hi"
    coros = {t.coro for t in trace.tasks.values()}
    assert any("hello" in c or "RequestHandler" in c for c in coros), coros
    assert of_kind(trace, Kind.TASK_STEP_BEGIN) and of_kind(trace, Kind.CALLBACK_BEGIN)


def test_uvloop_gets_a_warning_and_sampling_only_coverage(tmp_path: Path) -> None:
    """uvloop's loop is not a BaseEventLoop: its steps cannot be traced. The recorder says
    so (warning + a note in the trace) and the sampler still shows what its thread did."""
    uvloop = pytest.importorskip("uvloop")

    def block_the_loop() -> None:
        time.sleep(0.3)

    async def main() -> int:
        await asyncio.sleep(0)
        block_the_loop()  # seen by the sampler only
        task = asyncio.get_running_loop().create_task(asyncio.sleep(0.01, result=21))
        return 2 * await task

    with pyflight.FlightRecorder(sources=["asyncio", "sampler"]) as rec:
        loop = uvloop.new_event_loop()
        try:
            with pytest.warns(SourceWarning, match="uvloop"):
                assert loop.run_until_complete(main()) == 42
                deadline = time.monotonic() + 3 * asyncio_loop.FOREIGN_CHECK_INTERVAL
                while time.monotonic() < deadline and not asyncio_loop._installed_hooks.foreign:  # type: ignore[union-attr]
                    loop.run_until_complete(asyncio.sleep(0.05))
        finally:
            loop.close()
        trace = snapshot(rec, tmp_path)
    notes = [e.arg("reason") for e in trace.data_loss if e.arg("source") == "asyncio"]
    assert notes and "uvloop" in notes[0] and "sampling-only" in notes[0]
    assert not of_kind(trace, Kind.TASK_STEP_BEGIN)  # nothing pretends to be traced
    me = threading.get_native_id()
    sampled = [e for e in of_kind(trace, Kind.SAMPLE) if e.arg("tid") == me]
    functions = {frame[0].rpartition(".")[2] for e in sampled for frame in e.arg("stack")}
    assert "block_the_loop" in functions, "the sampler shows the blocking call"


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_more_live_tasks_than_a_generation_holds(tmp_path: Path, implementation: str) -> None:
    """Live TASK_INFO entries re-recorded at each generation's start do not count towards
    sealing it: with more of them than a generation holds, each event used to seal one."""
    n_idle, n_steps = 3_000, 2_000

    async def main() -> None:
        forever = asyncio.Event()
        idle = [asyncio.create_task(forever.wait(), name=f"idle-{i}") for i in range(n_idle)]
        await asyncio.sleep(0)
        for _ in range(n_steps):
            await asyncio.sleep(0)
        forever.set()
        await asyncio.gather(*idle)

    opts = {"implementation": implementation}
    with pyflight.FlightRecorder(
        sources=["asyncio"], source_options={"asyncio": opts}, generation_bytes=16_384
    ) as rec:
        sealed = backend.stats()["sealed"]
        asyncio.run(main())
        sealed = backend.stats()["sealed"] - sealed
        trace = snapshot(rec, tmp_path)
    assert sealed < n_steps // 10, sealed  # ~40 bytes per step event pair: a few dozen generations
    assert sum(1 for e in of_kind(trace, Kind.TASK_STEP_BEGIN)) >= n_steps


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks are 3.12+")
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_eager_task_finished_at_creation_is_created_then_done(tmp_path: Path, implementation: str) -> None:
    async def quick() -> int:
        return 1

    async def main() -> int:
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
        task = asyncio.create_task(quick())
        assert task.done()  # ran to its end inside create_task
        await task
        return id(task)

    task_id, trace = run_traced(main, tmp_path, implementation)
    kinds = [
        e.kind
        for e in trace.events
        if e.kind in (Kind.TASK_CREATE, Kind.TASK_DONE) and e.arg("task") == task_id
    ]
    assert kinds[:2] == [Kind.TASK_CREATE, Kind.TASK_DONE]


def test_loop_select_records_waits_not_polls(tmp_path: Path) -> None:
    """The selector's select records LOOP_IDLE around waits that may block (None or > 0)
    and not polls, returns the ready list and raises what select raises (both cores)."""
    import selectors

    async def main() -> tuple[int, Any]:
        loop = asyncio.get_running_loop()
        selector = loop._selector  # type: ignore[attr-defined]
        assert selector.select(0) == []  # a poll
        assert selector.select(timeout=0.01) == []  # a wait, by keyword
        with pytest.raises(TypeError):
            selector.select(1, 2, 3)  # what the real select says
        return id(loop), selector

    with recorder() as rec:
        loop_id, selector = asyncio.run(main())
        trace = snapshot(rec, tmp_path)
    assert isinstance(selector, selectors.BaseSelector)
    ends = [e for e in of_kind(trace, Kind.LOOP_IDLE_END) if e.arg("loop") == loop_id]
    begins = [e for e in of_kind(trace, Kind.LOOP_IDLE_BEGIN) if e.arg("loop") == loop_id]
    assert len(begins) == len(ends) >= 1


@pytest.mark.parametrize("implementation", ["c", "python"])
def test_a_timeout_that_runs_out_is_recorded_on_its_task(tmp_path: Path, implementation: str) -> None:
    """``asyncio.timeout``, ``wait_for`` (its own timer on 3.11, ``timeout()`` on 3.12+)
    and ``wait(..., timeout=)``: TASK_TIMEOUT(task) when the timeout runs out, before the
    task is cancelled; a timeout that does not run out records nothing."""
    if implementation == "c" and BACKEND_NAME != "c":
        pytest.skip("the C core's steps")

    async def slow_call() -> None:
        await asyncio.sleep(1)

    async def caller() -> tuple[int, int]:
        missed = in_time = 0
        for _ in range(3):
            try:
                async with asyncio.timeout(0.02):
                    await slow_call()
            except TimeoutError:
                missed += 1
        for _ in range(2):  # wait_for: asyncio.timeout on 3.12+, its own timer on 3.11
            try:
                await asyncio.wait_for(slow_call(), 0.02)
            except TimeoutError:
                missed += 1
        _done, pending = await asyncio.wait([asyncio.ensure_future(slow_call())], timeout=0.02)
        missed += len(pending)
        for waiting in pending:
            waiting.cancel()
        async with asyncio.timeout(1):
            await asyncio.sleep(0.01)
            in_time += 1
        in_time += await asyncio.wait_for(asyncio.sleep(0.01, 1), 1)
        return missed, in_time

    async def main() -> tuple[int, tuple[int, int]]:
        task = asyncio.create_task(caller(), name="caller")
        return id(task), await task

    (task_id, result), trace = run_traced(main, tmp_path, implementation)
    assert result == (6, 2)
    timeouts = of_kind(trace, Kind.TASK_TIMEOUT)
    assert [e.arg("task") for e in timeouts] == [task_id] * 6
    (caller_task,) = [t for t in build(trace).all_tasks() if t.name == "caller"]
    assert len(caller_task.timeouts) == 6
