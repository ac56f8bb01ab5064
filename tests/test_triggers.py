"""Automatic triggers: each fires when provoked, once per cooldown, up to its maximum count,
within the directory quota, into a file whose name and TRIGGER event say why."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import pyflight
from pyflight.core.encoding import MAGIC
from pyflight.core.events import Kind
from pyflight.format.reader import Event, Trace
from pyflight.triggers import auto
from pyflight.triggers.auto import Triggers
from webservers import get, serve_aiohttp, serve_asgi, serve_wsgi, wait_until

ONLY_NOTHING: dict[str, Any] = {
    "slow_request": None,
    "loop_stall": None,
    "gc_pause": None,
    "unhandled_exception": False,
}


@pytest.fixture
def recorder() -> Iterator[pyflight.FlightRecorder]:
    with pyflight.FlightRecorder(min_age=5.0, max_bytes=8 * 2**20) as rec:
        yield rec


@pytest.fixture(autouse=True)
def _no_leftover_triggers() -> Iterator[None]:
    hooks = (sys.excepthook, threading.excepthook, list(gc.callbacks))
    yield
    leftover = auto.installed()
    for triggers in leftover:
        triggers.uninstall()
    assert not leftover, "test left Triggers installed"
    assert (sys.excepthook, threading.excepthook, list(gc.callbacks)) == hooks, "hooks not restored"


def make(directory: Path, **options: Any) -> Triggers:
    return Triggers(directory, **{**ONLY_NOTHING, **options})


def trigger_events(trace: Trace) -> list[Event]:
    return [e for e in trace.events if e.kind == Kind.TRIGGER]


def check_file(path: Path, reason: str, alone: bool = True) -> tuple[Trace, Event]:
    """The file is named after when and why, and its last TRIGGER event names the reason
    (its only one if ``alone``: earlier snapshots' marks are in the window too)."""
    assert re.fullmatch(rf"pyflight-\d{{8}}T\d{{6}}\.\d{{3}}Z-{os.getpid()}-{reason}\.pyfl", path.name), path
    trace = pyflight.load(path)
    assert trace.meta["reason"] == reason
    triggers = trigger_events(trace)
    assert triggers and triggers[-1].arg("reason") == reason, triggers
    if alone:
        assert len(triggers) == 1, triggers
    return trace, triggers[-1]


def settle(triggers: Triggers, count: int, quiet: float = 0.3) -> None:
    """Wait for ``count`` files, then a little longer to see that no more come."""
    wait_until(lambda: len(triggers.written) >= count, what=f"{count} snapshot(s)")
    time.sleep(quiet)
    assert len(triggers.written) == count, triggers.written


# --- garbage collector ------------------------------------------------------------------


class _Node:
    other: Any = None


def long_collection() -> None:
    """Make cyclic garbage that takes the collector well over 10 ms to free."""
    gc.disable()  # one long collection at the end, not many small ones on the way
    try:
        nodes = []
        for _ in range(200_000):
            a, b = _Node(), _Node()
            a.other, b.other = b, a
            nodes.append(a)
        del nodes, a, b
    finally:
        gc.enable()
    gc.collect()


def test_a_gc_pause_writes_a_snapshot_holding_the_collection(
    recorder: pyflight.FlightRecorder, tmp_path: Path
) -> None:
    with make(tmp_path, gc_pause=0.01, cooldown=60) as triggers:
        long_collection()
        wait_until(lambda: len(triggers.written) >= 1, what="the gc-pause snapshot")
        long_collection()  # within the cooldown
        time.sleep(0.3)
    assert len(triggers.written) == 1 and triggers.suppressed["gc-pause"] >= 1
    trace, event = check_file(triggers.written[0], "gc-pause")
    assert re.match(r"generation \d collection took \d+\.\d ms", event.arg("detail")), event
    pause = float(event.arg("detail").split()[-2]) * 1e6
    durations, begun = [], {}
    for e in sorted(trace.events, key=lambda e: e.time):
        if e.kind == Kind.GC_BEGIN:
            begun[e.thread] = e.time
        elif e.kind == Kind.GC_END and e.thread in begun and e.time < event.time:
            durations.append(e.time - begun.pop(e.thread))
    assert max(durations) >= pause * 0.5, "the collection itself is in the window"


def test_max_count_and_the_directory_quota(recorder: pyflight.FlightRecorder, tmp_path: Path) -> None:
    old = tmp_path / "pyflight-20000101T000000.000Z-1-old.pyfl"
    old.write_bytes(MAGIC + b"x" * 1000)  # an earlier snapshot: our name and our magic
    os.utime(old, (946684800, 946684800))
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"y" * 10_000)
    with make(tmp_path, gc_pause=0.01, cooldown=0, max_count=2, quota_bytes=1) as triggers:
        for _ in range(3):
            long_collection()
            time.sleep(0.15)
        settle(triggers, 2)
    assert triggers.counts["gc-pause"] == 2 and triggers.suppressed["gc-pause"] >= 1
    first, last = triggers.written
    # quota: the oldest pyflight files go first, the newest is always kept, other files never
    assert not old.exists() and not first.exists() and last.exists() and notes.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([last.name, notes.name])
    check_file(last, "gc-pause", alone=False)


# --- slow requests ---------------------------------------------------------------------


def slow_fastapi() -> Any:
    pytest.importorskip("uvicorn")
    fastapi = pytest.importorskip("fastapi")
    from pyflight.integrations.asgi import PyflightMiddleware

    app = fastapi.FastAPI()
    app.add_middleware(PyflightMiddleware)

    @app.get("/slow/{n}")
    async def slow(n: int) -> dict[str, int]:
        await asyncio.sleep(0.3)
        return {"n": n}

    @app.get("/fast")
    async def fast() -> dict[str, int]:
        return {"n": 0}

    @app.get("/boom")
    async def boom() -> None:
        raise ValueError("boom")

    @app.get("/block")
    async def block() -> dict[str, int]:
        time.sleep(0.4)  # a blocking call in async code: the loop stalls
        return {"n": 0}

    return app


def slow_flask() -> Any:
    pytest.importorskip("waitress")
    flask = pytest.importorskip("flask")
    from pyflight.integrations.wsgi import PyflightWSGIMiddleware

    app = flask.Flask("slow")

    @app.get("/slow/<int:n>")
    def slow(n: int) -> dict[str, int]:
        time.sleep(0.3)
        return {"n": n}

    @app.get("/fast")
    def fast() -> dict[str, int]:
        return {"n": 0}

    app.wsgi_app = PyflightWSGIMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    return app


def slow_aiohttp() -> Any:
    pytest.importorskip("aiohttp")
    from aiohttp import web

    from pyflight.integrations import aiohttp as integration

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.3)
        return web.json_response({"n": int(request.match_info["n"])})

    async def fast(request: web.Request) -> web.Response:
        return web.json_response({"n": 0})

    app = web.Application()
    integration.setup(app)
    app.add_routes([web.get("/slow/{n}", slow), web.get("/fast", fast)])
    return app


SLOW_APPS: dict[str, tuple[Callable[[], Any], Any]] = {
    "fastapi-uvicorn": (slow_fastapi, serve_asgi),
    "flask-waitress": (slow_flask, serve_wsgi),
    "aiohttp": (slow_aiohttp, serve_aiohttp),
}


@pytest.mark.parametrize("name", sorted(SLOW_APPS))
def test_a_slow_request_writes_a_snapshot_after_it_finished(
    name: str, recorder: pyflight.FlightRecorder, tmp_path: Path
) -> None:
    factory, serve = SLOW_APPS[name]
    with serve(factory()) as port, make(tmp_path, slow_request=0.2, cooldown=60, delay=0.05) as triggers:
        assert get(port, "/fast").status == 200
        time.sleep(0.2)
        assert not triggers.written, "a fast request triggers nothing"
        assert get(port, "/slow/1").status == 200
        assert get(port, "/slow/2").status == 200  # within the cooldown
        settle(triggers, 1)
    assert triggers.suppressed["slow-request"] == 1
    trace, event = check_file(triggers.written[0], "slow-request")
    assert re.fullmatch(r"GET /slow/\{n\} took 0\.\d+ s", event.arg("detail")), event
    slow_ids = {t.id for t in trace.user_tasks.values() if t.name == "GET /slow/{n}"}
    ends = [e for e in trace.events if e.kind == Kind.USER_TASK_END and e.arg("id") in slow_ids]
    assert ends and ends[0].time < event.time, "the whole slow request is in the window"


def test_slow_requests_respect_max_count(recorder: pyflight.FlightRecorder, tmp_path: Path) -> None:
    with serve_asgi(slow_fastapi()) as port, make(tmp_path, slow_request=0.2, cooldown=0, max_count=2) as t:
        for n in range(3):
            assert get(port, f"/slow/{n}").status == 200
            time.sleep(0.15)
        settle(t, 2)
    assert t.counts == {"slow-request": 2} and t.suppressed == {"slow-request": 1}
    for path in t.written:
        check_file(path, "slow-request", alone=False)


# --- unhandled exceptions --------------------------------------------------------------


def test_an_exception_escaping_a_request_handler(recorder: pyflight.FlightRecorder, tmp_path: Path) -> None:
    with serve_asgi(slow_fastapi()) as port, make(tmp_path, unhandled_exception=True) as triggers:
        assert get(port, "/boom").status == 500
        assert get(port, "/boom").status == 500
        settle(triggers, 1)
    _, event = check_file(triggers.written[0], "exception")
    assert re.fullmatch(
        r"GET /boom: ValueError: boom \(at \S+\.boom in \S+test_triggers\.py:\d+\)", event.arg("detail")
    )


def test_an_exception_ending_a_thread_chains_the_previous_hook(
    recorder: pyflight.FlightRecorder, tmp_path: Path
) -> None:
    seen: list[type[BaseException]] = []
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        seen.append(args.exc_type)

    def doomed() -> None:
        raise KeyError("lost")

    threading.excepthook = hook
    try:
        with make(tmp_path, unhandled_exception=True, cooldown=60) as triggers:
            assert threading.excepthook is not hook
            for _ in range(2):
                thread = threading.Thread(target=doomed, name="doomed")
                thread.start()
                thread.join()
                # the dying thread waited for the file: it is there once join() returns
                assert len(triggers.written) == 1
            exit_thread = threading.Thread(target=sys.exit, name="exits")
            exit_thread.start()
            exit_thread.join()
        assert threading.excepthook is hook, "restored on removal"
    finally:
        threading.excepthook = previous
    assert seen == [KeyError, KeyError, SystemExit], "the previous hook still runs"
    assert triggers.suppressed == {"exception": 1}
    _, event = check_file(triggers.written[0], "exception")
    detail = r"unhandled in thread 'doomed': KeyError: 'lost' \(at \S+\.doomed in \S+test_triggers\.py:\d+\)"
    assert re.fullmatch(detail, event.arg("detail")), event


def test_an_unhandled_exception_in_the_main_thread_before_exit(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    script = tmp_path / "crash.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            import pyflight
            from pyflight.triggers.auto import Triggers

            pyflight.FlightRecorder(min_age=5).start()
            Triggers(sys.argv[1], slow_request=None, loop_stall=None, gc_pause=None).install()
            with pyflight.task("doomed job"):
                raise RuntimeError("the end")
            """
        )
    )
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(script), str(out)],
        capture_output=True,
        text=True,
        env=subprocess_env,
        timeout=60,
    )
    assert result.returncode == 1
    assert "RuntimeError: the end" in result.stderr, "the default hook still printed the traceback"
    files = list(out.iterdir())
    assert len(files) == 1
    assert files[0].name.endswith("-exception.pyfl")
    trace = pyflight.load(files[0])
    (event,) = trigger_events(trace)
    assert event.arg("reason") == "exception"
    assert event.arg("detail").startswith("unhandled in main thread: RuntimeError: the end")
    assert "doomed job" in {t.name for t in trace.user_tasks.values()}


# --- event-loop stalls -----------------------------------------------------------------

STALL = r"event loop blocked for at least (\d\.\d+) s( by a step of asyncio task 0x[0-9a-f]+)?"


@pytest.fixture(params=["asyncio-source", "heartbeat"])
def stall_recorder(request: pytest.FixtureRequest) -> Iterator[pyflight.FlightRecorder]:
    """Stalls are seen through the asyncio source's running steps, or, without that
    source, through heartbeats posted to the loops."""
    from pyflight.sources import default_source_names

    names = default_source_names()
    if request.param == "heartbeat":
        names = [n for n in names if n != "asyncio"]
    elif "asyncio" not in names:
        pytest.skip("no asyncio source")
    with pyflight.FlightRecorder(min_age=5.0, max_bytes=8 * 2**20, sources=names) as rec:
        yield rec


def test_a_blocked_event_loop_under_uvicorn(stall_recorder: pyflight.FlightRecorder, tmp_path: Path) -> None:
    with serve_asgi(slow_fastapi()) as port, make(tmp_path, loop_stall=0.15) as triggers:
        assert get(port, "/fast").status == 200  # with heartbeats, the middleware names the loop
        time.sleep(0.3)
        assert not triggers.written
        assert get(port, "/block").status == 200
        settle(triggers, 1)
    trace, event = check_file(triggers.written[0], "loop-stall")
    match = re.fullmatch(STALL, event.arg("detail"))
    assert match is not None, event
    assert 0.15 <= float(match[1]) <= 0.6
    assert "GET /block" in {t.name for t in trace.user_tasks.values()}
    if any(s.name == "asyncio" for s in stall_recorder.sources):  # the source's own record is inside
        assert match[2] is not None
        assert any(e.kind == Kind.LOOP_STALL and e.time < event.time for e in trace.events)


def test_loop_stalls_respect_cooldown_and_max_count(
    stall_recorder: pyflight.FlightRecorder, tmp_path: Path
) -> None:
    async def stalls(triggers: Triggers, count: int) -> None:
        triggers.watch_loop(asyncio.get_running_loop())
        for _ in range(count):
            await asyncio.sleep(0.25)
            time.sleep(0.2)
        await asyncio.sleep(0.3)

    # Two stalls more than each limit allows: even if a busy machine makes two stalls look
    # like one, the limit is still reached and one is still suppressed.
    with make(tmp_path, loop_stall=0.1, cooldown=60) as triggers:
        asyncio.run(stalls(triggers, 3))
        settle(triggers, 1, quiet=0)
    assert triggers.counts == {"loop-stall": 1} and triggers.suppressed["loop-stall"] >= 1
    _, event = check_file(triggers.written[0], "loop-stall")
    assert re.fullmatch(STALL, event.arg("detail")), event

    with make(tmp_path / "max", loop_stall=0.1, cooldown=0, max_count=2) as triggers:
        asyncio.run(stalls(triggers, 4))
        settle(triggers, 2, quiet=0)
    assert triggers.counts == {"loop-stall": 2} and triggers.suppressed["loop-stall"] >= 1


def test_a_loop_still_blocked_is_captured_while_it_hangs(
    stall_recorder: pyflight.FlightRecorder, tmp_path: Path
) -> None:
    hung_until = 0.0

    async def hang(triggers: Triggers) -> None:
        nonlocal hung_until
        triggers.watch_loop(asyncio.get_running_loop())
        await asyncio.sleep(0.3)
        time.sleep(1.2)
        hung_until = time.monotonic()
        await asyncio.sleep(0.3)

    with make(tmp_path, loop_stall=0.1) as triggers:
        triggers.loop_hang = 0.5
        written_at: list[float] = []
        triggers.on_snapshot = lambda path, reason, detail: written_at.append(time.monotonic())
        asyncio.run(hang(triggers))
        settle(triggers, 1, quiet=0)
    assert written_at[0] < hung_until, "written while the loop was still blocked"
    _, event = check_file(triggers.written[0], "loop-stall")
    detail = (
        r"event loop blocked for 0\.\d+ s so far \(still blocked\)( by a step of asyncio task 0x[0-9a-f]+)?"
    )
    assert re.fullmatch(detail, event.arg("detail")), event


def test_a_source_can_report_a_stall_itself(recorder: pyflight.FlightRecorder, tmp_path: Path) -> None:
    with make(tmp_path, loop_stall=0.5) as triggers:
        auto.report_loop_stall(0.2, "too short")
        auto.report_loop_stall(0.75, "task 'player-clumsy' ran 0.750 s")
        settle(triggers, 1, quiet=0.2)
    _, event = check_file(triggers.written[0], "loop-stall")
    assert event.arg("detail") == "task 'player-clumsy' ran 0.750 s"


# --- the API ---------------------------------------------------------------------------


def test_without_a_recorder_nothing_is_written(tmp_path: Path) -> None:
    with make(tmp_path, gc_pause=0.01) as triggers:
        triggers.trigger("manual", "no recorder")
        time.sleep(0.3)
    assert triggers.written == [] and triggers.counts == {"manual": 1}
    assert not tmp_path.exists() or not list(tmp_path.iterdir())


def test_pending_snapshots_are_written_on_uninstall(
    recorder: pyflight.FlightRecorder, tmp_path: Path
) -> None:
    triggers = make(tmp_path, delay=30).install()
    triggers.trigger("manual", "due in 30 s", delay=30)
    time.sleep(0.2)
    assert not triggers.written
    triggers.uninstall()
    assert len(triggers.written) == 1
    check_file(triggers.written[0], "manual")


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    for bad in (
        {"slow_request": 0},
        {"gc_pause": -1},
        {"cooldown": -1},
        {"max_count": 0},
        {"quota_bytes": 0},
    ):
        with pytest.raises(ValueError):
            Triggers(tmp_path, **bad)


def test_command_line_options(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    auto.add_arguments(parser.add_argument_group("snapshot triggers"))
    assert auto.from_arguments(parser.parse_args([]), tmp_path) is None
    options = ["--slow-request", "1.5", "--gc-pause", "0.2", "--trigger-cooldown", "5", "--trigger-max", "3"]
    triggers = auto.from_arguments(parser.parse_args(options), tmp_path, 1000)
    assert triggers is not None
    assert (triggers.directory, triggers.slow_request, triggers.loop_stall, triggers.gc_pause) == (
        tmp_path,
        1.5,
        None,
        0.2,
    )
    assert (triggers.unhandled_exception, triggers.cooldown, triggers.max_count, triggers.quota_bytes) == (
        False,
        5.0,
        3,
        1000,
    )
    only_exceptions = auto.from_arguments(parser.parse_args(["--on-exception"]), tmp_path)
    assert only_exceptions is not None and only_exceptions.unhandled_exception
    assert only_exceptions.slow_request is None and only_exceptions.quota_bytes is None
