"""pyflight.task / region: the C types and the pure-Python classes behave the same.

Every test runs on each implementation available: the pure-Python classes
(``annotate.PyTask`` / ``PyRegion``, always) and the C types of ``_core_annotate.c``
(what ``pyflight.task`` / ``pyflight.region`` are with the C core).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import pickle
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import pyflight
from pyflight import annotate
from pyflight.annotate import current_task_id
from pyflight.core.events import Kind

IMPLS = [pytest.param((annotate.PyTask, annotate.PyRegion), id="python")]
if annotate._C_TYPES:
    IMPLS.append(pytest.param(annotate._C_TYPES, id="c"))


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    return request.param  # type: ignore[no-any-return]


def _events(rec: pyflight.FlightRecorder, path: Path) -> list[tuple[str, tuple[Any, ...]]]:
    """(kind name, args) of the annotation events, in order."""
    rec.write_to(path)
    kinds = {Kind.USER_TASK_BEGIN, Kind.USER_TASK_END, Kind.REGION_BEGIN, Kind.REGION_END, Kind.LOG}
    trace = pyflight.load(path)
    return [(e.kind.name, tuple(e.args.values())) for e in trace.events if e.kind in kinds]


# a module-level decorated function, for pickling by reference
@pyflight.region("module level")
def module_level(x: int) -> int:
    return x * 2


def test_public_names_are_the_c_types_with_the_c_core() -> None:
    if pyflight.core.BACKEND_NAME == "c":
        assert (pyflight.task, pyflight.region) == annotate._C_TYPES
        assert pyflight.task.__module__ == "pyflight.annotate" and pyflight.task.__name__ == "task"
    else:
        assert (pyflight.task, pyflight.region) == (annotate.PyTask, annotate.PyRegion)


def test_nothing_happens_without_a_recorder(impl: tuple[Any, Any]) -> None:
    task, region = impl

    @region("r")
    def f(x: int, *, y: int = 1) -> int:
        return x + y + current_task_id.get()

    with task("t") as t, region("r") as r:
        assert current_task_id.get() == 0
        assert f(1, y=2) == 3
    assert t.id == 0 and t.name == "t" and r.name == "r"
    assert isinstance(t, task) and isinstance(r, region)


def test_same_events_as_the_python_version(impl: tuple[Any, Any], tmp_path: Path) -> None:
    task, region = impl

    @region("decorated")
    def work() -> int:
        pyflight.log("db", "query")
        return current_task_id.get()

    @task("job")
    def job() -> int:
        return current_task_id.get()

    with pyflight.FlightRecorder(sources=[]) as rec:
        with task("outer") as outer:
            assert current_task_id.get() == outer.id > 0
            with task("inner") as inner, region("plain"):
                assert work() == inner.id
            assert current_task_id.get() == outer.id
            job_id = job()
        assert current_task_id.get() == 0
        events = _events(rec, tmp_path / "a.pyfl")
    o, i = outer.id, inner.id
    assert job_id not in (0, o, i)
    assert events == [
        ("USER_TASK_BEGIN", (o, 0, "outer")),
        ("USER_TASK_BEGIN", (i, o, "inner")),
        ("REGION_BEGIN", (i, "plain")),
        ("REGION_BEGIN", (i, "decorated")),
        ("LOG", (i, "db", "query")),
        ("REGION_END", (i, "decorated")),
        ("REGION_END", (i, "plain")),
        ("USER_TASK_END", (i,)),
        ("USER_TASK_BEGIN", (job_id, o, "job")),
        ("USER_TASK_END", (job_id,)),
        ("USER_TASK_END", (o,)),
    ]


def test_decorated_before_the_recorder_starts_records_once_it_runs(
    impl: tuple[Any, Any], tmp_path: Path
) -> None:
    task, region = impl

    @region("early")
    def early() -> None:
        pass

    @task("early task")
    async def early_async() -> int:
        await asyncio.sleep(0)
        return current_task_id.get()

    early()
    assert asyncio.run(early_async()) == 0
    with pyflight.FlightRecorder(sources=[]) as rec:
        early()
        tid = asyncio.run(early_async())
        events = _events(rec, tmp_path / "a.pyfl")
    assert tid > 0
    assert events == [
        ("REGION_BEGIN", (0, "early")),
        ("REGION_END", (0, "early")),
        ("USER_TASK_BEGIN", (tid, 0, "early task")),
        ("USER_TASK_END", (tid,)),
    ]


def test_a_fresh_task_per_call(impl: tuple[Any, Any]) -> None:
    task, _ = impl
    seen: list[tuple[int, int]] = []

    @task("recursive")
    def rec_fn(n: int) -> None:
        seen.append((n, current_task_id.get()))
        if n:
            rec_fn(n - 1)

    @task("concurrent")
    async def handler() -> int:
        mine = current_task_id.get()
        await asyncio.sleep(0.001)
        assert current_task_id.get() == mine
        return mine

    async def main() -> list[int]:
        return list(await asyncio.gather(*(handler() for _ in range(5))))

    with pyflight.FlightRecorder(sources=[]):
        rec_fn(3)
        ids = asyncio.run(main())
    assert len({tid for _, tid in seen}) == 4 and len(set(ids)) == 5 and 0 not in ids


def test_task_follows_into_asyncio_tasks_and_executors(impl: tuple[Any, Any]) -> None:
    task, _ = impl

    async def child() -> int:
        await asyncio.sleep(0)
        return current_task_id.get()

    async def main() -> tuple[int, int, int, int]:
        with task("request") as t:
            in_child = await asyncio.create_task(child())
            loop = asyncio.get_running_loop()
            in_executor = await loop.run_in_executor(None, current_task_id.get)
        return t.id, in_child, in_executor, current_task_id.get()

    with pyflight.FlightRecorder():  # the executors source carries the task into threads
        tid, in_child, in_executor, after = asyncio.run(main())
        with task("sync") as t2, ThreadPoolExecutor(1) as pool:
            in_pool = pool.submit(current_task_id.get).result()
    assert tid > 0 and in_child == tid and in_executor == tid and after == 0
    assert in_pool == t2.id > 0


def test_exit_in_another_context_is_tolerated(impl: tuple[Any, Any]) -> None:
    task, _ = impl
    with pyflight.FlightRecorder(sources=[]):
        t = task("juggled")
        contextvars.copy_context().run(t.__enter__)
        assert current_task_id.get() == 0
        t.__exit__(None, None, None)  # the token belongs to the other context: ignored
        assert current_task_id.get() == 0

        def gen() -> Iterator[int]:
            with task("in a generator") as g:
                yield g.id

        it = gen()
        gid = next(it)
        assert current_task_id.get() == gid
        contextvars.copy_context().run(it.close)  # exits in a copy of this context
        assert current_task_id.get() == gid  # ours is left as is: nothing raised
        current_task_id.set(0)


def test_recording_never_raises(impl: tuple[Any, Any], tmp_path: Path) -> None:
    task, region = impl
    with pyflight.FlightRecorder(sources=[]) as rec:
        with task(object()) as t, region(object()):  # names that cannot be recorded
            assert current_task_id.get() == 0  # the task did not begin
        assert t.id > 0  # an id was taken, as in the Python version
        with task("ok") as ok:
            t2 = task("deleted name")
            del t2.name
            with t2, region("r") as r:
                del r.name
                assert current_task_id.get() == ok.id
        events = _events(rec, tmp_path / "a.pyfl")
    assert [k for k, _ in events] == ["USER_TASK_BEGIN", "REGION_BEGIN", "USER_TASK_END"]


def test_exceptions_go_through_and_state_is_restored(impl: tuple[Any, Any], tmp_path: Path) -> None:
    task, region = impl

    @region("fails")
    def fails() -> None:
        raise KeyError("boom")

    with pyflight.FlightRecorder(sources=[]) as rec:
        with pytest.raises(KeyError, match="boom"), task("t") as t:
            fails()
        assert current_task_id.get() == 0
        events = _events(rec, tmp_path / "a.pyfl")
    assert events == [
        ("USER_TASK_BEGIN", (t.id, 0, "t")),
        ("REGION_BEGIN", (t.id, "fails")),
        ("REGION_END", (t.id, "fails")),
        ("USER_TASK_END", (t.id,)),
    ]


def test_recorder_stopping_inside_a_task_still_resets_the_contextvar(impl: tuple[Any, Any]) -> None:
    task, region = impl
    rec = pyflight.FlightRecorder(sources=[]).start()
    try:
        with task("t") as t, region("r"):
            assert current_task_id.get() == t.id
            rec.stop()
    finally:
        rec.stop()
    assert current_task_id.get() == 0


def test_decorated_function_looks_like_the_function(impl: tuple[Any, Any]) -> None:
    task, region = impl

    def f(a: int, b: int = 2, *args: int, c: int = 3, **kw: int) -> tuple[Any, ...]:
        """Docstring."""
        return (a, b, args, c, kw)

    for annotation in (task("t"), region("r")):
        g = annotation(f)
        assert g.__name__ == "f" and g.__doc__ == "Docstring." and g.__wrapped__ is f
        assert g.__qualname__ == f.__qualname__ and g.__module__ == f.__module__
        assert inspect.signature(g) == inspect.signature(f)
        assert not inspect.iscoroutinefunction(g)
        assert g(1) == (1, 2, (), 3, {})
        assert g(1, 5, 6, 7, c=8, d=9) == (1, 5, (6, 7), 8, {"d": 9})

    async def af() -> int:
        return 1

    assert inspect.iscoroutinefunction(region("r")(af))
    assert pickle.loads(pickle.dumps(module_level)) is module_level
    assert module_level(4) == 8


def test_decorated_methods_bind(impl: tuple[Any, Any], tmp_path: Path) -> None:
    task, region = impl

    class Service:
        @region("method")
        def method(self, x: int) -> tuple[Service, int]:
            return self, x

        @classmethod
        @task("classmethod")
        def cm(cls, x: int) -> tuple[type, int]:
            return cls, x

        @staticmethod
        @region("static")
        def sm(x: int) -> int:
            return x

    s = Service()
    with pyflight.FlightRecorder(sources=[]) as rec:
        assert s.method(1) == (s, 1)
        assert Service.method(s, 2) == (s, 2)
        bound = s.method
        assert bound(3) == (s, 3) and bound.__self__ is s
        assert Service.cm(4) == (Service, 4) and s.sm(5) == 5
        events = _events(rec, tmp_path / "a.pyfl")
    names = [args[-1] for kind, args in events if kind in ("REGION_BEGIN", "USER_TASK_BEGIN")]
    assert names == ["method", "method", "method", "classmethod", "static"]


def test_unbound_and_bound_methods_and_exit_stack(impl: tuple[Any, Any]) -> None:
    task, region = impl
    with pyflight.FlightRecorder(sources=[]):
        with contextlib.ExitStack() as stack:  # calls type(cm).__enter__(cm)
            t = stack.enter_context(task("stacked"))
            stack.enter_context(region("stacked region"))
            assert current_task_id.get() == t.id > 0
        assert current_task_id.get() == 0
        t2 = task("manual")
        enter, exit_ = t2.__enter__, t2.__exit__
        assert enter() is t2 and current_task_id.get() == t2.id
        assert exit_(None, None, None) is None and current_task_id.get() == 0
        assert task.__enter__(t2) is t2
        task.__exit__(t2, None, None, None)
        assert current_task_id.get() == 0
        with region("kw") as r:
            t2.__enter__()
            t2.__exit__(exc_type=None, exc=None, tb=None)
            r.__exit__(None, None, tb=None)
        assert current_task_id.get() == 0
    with pytest.raises(TypeError):
        task("x").__exit__()
    with pytest.raises(TypeError):
        task("x").__enter__(1)
    if task in annotate._C_TYPES:  # C methods check their object (Python functions do not)
        with pytest.raises(TypeError):
            task.__enter__(region("not a task"))
        with pytest.raises(TypeError):
            region.__exit__(task("not a region"), None, None, None)


def test_deep_nesting_and_held_methods(impl: tuple[Any, Any]) -> None:
    task, region = impl
    with pyflight.FlightRecorder(sources=[]):
        stack = []
        for i in range(40):  # more than the C free list of bound methods holds
            t = task(f"level {i}")
            stack.append((t, t.__exit__, region("r").__enter__()))
            t.__enter__()
        held = [task("held").__enter__ for _ in range(30)]
        for t, exit_, r in reversed(stack):
            assert current_task_id.get() == t.id
            r.__exit__(None, None, None)
            exit_(None, None, None)
        assert current_task_id.get() == 0
        assert all(h().name == "held" for h in held)
        current_task_id.set(0)


def test_subclasses(impl: tuple[Any, Any]) -> None:
    task, _ = impl

    class Named(task):  # type: ignore[misc, valid-type]
        def __init__(self, name: str, extra: int) -> None:
            super().__init__(name)
            self.extra = extra

        def __enter__(self) -> Named:
            self.entered = True
            return super().__enter__()  # type: ignore[no-any-return]

    n = Named("n", 5)
    with pyflight.FlightRecorder(sources=[]):
        with n as same:
            assert same is n and n.entered and current_task_id.get() == n.id > 0
        assert current_task_id.get() == 0

        @Named("decorating", 1)
        def f() -> int:
            return current_task_id.get()

        assert f() > 0
    assert isinstance(n, task) and n.extra == 5 and n.name == "n"
    assert isinstance(task("x")._fresh(), task)


def test_name_is_read_when_used(impl: tuple[Any, Any], tmp_path: Path) -> None:
    _, region = impl
    deco = region("before")

    @deco
    def f() -> None:
        pass

    deco.name = "after"
    with pyflight.FlightRecorder(sources=[]) as rec:
        f()
        events = _events(rec, tmp_path / "a.pyfl")
    assert events == [("REGION_BEGIN", (0, "after")), ("REGION_END", (0, "after"))]


def test_c_wrapper_is_used_for_sync_functions() -> None:
    if not annotate._C_TYPES:
        pytest.skip("no C core")
    g = pyflight.region("r")(len)
    assert type(g).__name__ == "_Annotated" and g("abc") == 3
    assert isinstance(functools.partial(g), functools.partial)
