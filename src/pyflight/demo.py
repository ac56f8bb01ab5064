"""The ping-pong demo: players compete for one ball on one shared channel, behind a web server.

One process, under the recorder, runs what a small production service runs:

- a FastAPI app on uvicorn (asyncio loop) with pyflight's ASGI middleware, so each request
  is a ``pyflight.task`` and ``/debug/pyflight/*`` is served; ``GET /trace`` writes a
  snapshot to a fresh file and returns its path; ``GET /score`` shows the scoreboard;
- the asyncio game on the server's loop: player tasks share one ``asyncio.Queue`` holding
  the ball. Whoever gets it swings (an await of varying length) and hits (CPU of varying
  cost), then puts it back, or misses and hands it to the scorer task, which gives the
  point to the last hitter and serves a new ball. One player, ``clumsy``, now and then
  saves a replay with a blocking call: the whole event loop (other players, HTTP
  requests) waits for it, which is what the trace should show;
- the threaded variant: player threads share one ``queue.Queue``; ``sleepy`` sometimes
  dozes off holding the ball, so the others sit blocked on the queue.

``run_demo`` (``pyflight demo``) starts all of it on 127.0.0.1 with a free port, plays,
fetches ``/trace`` over HTTP like any client would, prints ``pyflight info`` of the
snapshot and shuts everything down. ``create_app`` is the app on its own (see
``examples/pingpong_server.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import random
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyflight
from pyflight.format.reader import describe

__all__ = ["AsyncGame", "Scoreboard", "ThreadedGame", "create_app", "run_demo"]

INSTALL_HINT = "pyflight demo needs FastAPI and uvicorn: pip install 'pyflight[demo]'"
ASYNC_PLAYERS = ("alice", "bob", "carol", "clumsy")
THREAD_PLAYERS = ("dave", "erin", "frank", "sleepy")
MISS_CHANCE = 0.12


@dataclass
class Ball:
    serve: int
    hits: int = 0
    last: str = ""


class Scoreboard:
    """Points per player and rallies played; shared by both games and the web app."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.points: dict[str, int] = {}
        self.rallies = 0
        self.longest = 0

    def point(self, ball: Ball) -> None:
        with self._lock:
            self.rallies += 1
            self.longest = max(self.longest, ball.hits)
            if ball.last:
                self.points[ball.last] = self.points.get(ball.last, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"points": dict(self.points), "rallies": self.rallies, "longest_rally": self.longest}


def spin(seconds: float) -> None:
    """CPU work for about ``seconds`` (a hit's cost: pure Python, holds the GIL)."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1


class AsyncGame:
    """Player tasks and a scorer task on one event loop, one ball in one ``asyncio.Queue``."""

    def __init__(self, score: Scoreboard, players: tuple[str, ...] = ASYNC_PLAYERS) -> None:
        self.score = score
        self.players = players

    async def run(self) -> None:
        """Play until cancelled."""
        table: asyncio.Queue[Ball] = asyncio.Queue(maxsize=1)  # the one shared channel
        misses: asyncio.Queue[Ball] = asyncio.Queue()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._scorer(table, misses), name="scorer")
            for name in self.players:
                group.create_task(self._player(name, table, misses), name=f"player-{name}")

    async def _player(self, name: str, table: asyncio.Queue[Ball], misses: asyncio.Queue[Ball]) -> None:
        rng = random.Random(name)
        with pyflight.task(f"player {name}"):
            while True:
                ball = await table.get()  # everyone waits here for the one ball
                with pyflight.region("hit"):
                    await asyncio.sleep(rng.uniform(0.001, 0.004))  # the swing
                    spin(rng.uniform(0.0002, 0.002))  # the hit itself
                    if name == "clumsy" and rng.random() < 0.04:
                        self._save_replay(name, ball)
                if rng.random() < MISS_CHANCE:
                    await misses.put(ball)
                else:
                    ball.hits += 1
                    ball.last = name
                    await table.put(ball)

    @staticmethod
    def _save_replay(name: str, ball: Ball) -> None:
        """The misbehaviour: a blocking call inside async code (a sync HTTP client, a sync
        database driver, a file write); everything on the loop waits until it returns."""
        pyflight.log("game", f"{name} saves a replay of serve {ball.serve} synchronously")
        time.sleep(random.uniform(0.12, 0.25))

    async def _scorer(self, table: asyncio.Queue[Ball], misses: asyncio.Queue[Ball]) -> None:
        with pyflight.task("scorer"):
            serve = 0
            await table.put(Ball(serve))
            while True:
                ball = await misses.get()
                self.score.point(ball)
                pyflight.log(
                    "score", f"serve {ball.serve}: point to {ball.last or 'nobody'} after {ball.hits} hits"
                )
                serve += 1
                await table.put(Ball(serve))


class ThreadedGame:
    """The same game with threads and one ``queue.Queue``; ``stop()`` joins the threads."""

    def __init__(self, score: Scoreboard, players: tuple[str, ...] = THREAD_PLAYERS) -> None:
        self.score = score
        self.players = players
        self.table: queue.Queue[Ball] = queue.Queue(maxsize=1)
        self.misses: queue.Queue[Ball] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._scorer, name="scorer-thread")]
        self._threads += [
            threading.Thread(target=self._player, args=(name,), name=f"player-{name}")
            for name in self.players
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _player(self, name: str) -> None:
        rng = random.Random(name)
        with pyflight.task(f"player {name}"):
            while not self._stop.is_set():
                try:
                    ball = self.table.get(timeout=0.1)  # everyone blocks here for the one ball
                except queue.Empty:
                    continue
                with pyflight.region("hit"):
                    time.sleep(rng.uniform(0.001, 0.004))  # the swing
                    spin(rng.uniform(0.0002, 0.002))  # the hit itself
                    if name == "sleepy" and rng.random() < 0.03:
                        pyflight.log("game", f"{name} dozes off holding serve {ball.serve}")
                        time.sleep(rng.uniform(0.1, 0.2))  # the others wait on the queue meanwhile
                if rng.random() < MISS_CHANCE:
                    self.misses.put(ball)
                else:
                    ball.hits += 1
                    ball.last = name
                    self.table.put(ball)

    def _scorer(self) -> None:
        with pyflight.task("scorer (threads)"):
            serve = 0
            self.table.put(Ball(serve))
            while not self._stop.is_set():
                try:
                    ball = self.misses.get(timeout=0.1)
                except queue.Empty:
                    continue
                self.score.point(ball)
                serve += 1
                self.table.put(Ball(serve))


def create_app(trace_dir: str | os.PathLike[str], *, threads: bool = True) -> Any:
    """The demo's FastAPI app: the games run while the app is up (its lifespan).

    ``GET /trace`` writes a snapshot of the running recorder into ``trace_dir`` under a
    fresh name (``pyflight-<time>-<pid>-trace.pyfl``) and returns its path.
    """
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import JSONResponse

    from pyflight.integrations.asgi import PyflightMiddleware
    from pyflight.triggers import snapshots

    score = Scoreboard()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        game = asyncio.create_task(AsyncGame(score).run(), name="game")
        threaded = ThreadedGame(score)
        if threads:
            threaded.start()
        try:
            yield
        finally:
            game.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await game
            await asyncio.to_thread(threaded.stop)

    app = FastAPI(title="pyflight ping-pong", lifespan=lifespan)
    app.add_middleware(PyflightMiddleware)

    @app.get("/score")
    async def get_score() -> dict[str, Any]:
        return score.as_dict()

    @app.get("/players/{name}")
    async def get_player(name: str) -> dict[str, Any]:
        points = score.as_dict()["points"]
        if name not in points:
            raise HTTPException(404, f"no points for {name!r} yet")
        return {"name": name, "points": points[name]}

    @app.get("/trace", response_model=None)
    def get_trace() -> dict[str, Any] | JSONResponse:
        # A plain `def`: FastAPI runs it on a worker thread, off the loop being recorded.
        try:
            path = snapshots.write_snapshot_file(trace_dir, "trace", detail="GET /trace")
        except pyflight.SnapshotInProgress:
            return JSONResponse({"error": "a snapshot is being written"}, 429, {"Retry-After": "1"})
        except pyflight.RecorderError as exc:
            return JSONResponse({"error": str(exc)}, 503)
        return {"path": str(path), "bytes": path.stat().st_size}

    return app


def _fetch_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def run_demo(output: str, seconds: float, *, host: str = "127.0.0.1", port: int = 0) -> int:
    """Serve the app, play ``seconds``, GET /trace, move the snapshot to ``output``, describe it."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    target = Path(output).resolve()
    # task_wait="stack": each wait records where the task awaits (asyncio.Queue.get for the
    # players), so the trace shows what they are blocked on, not just "a Future".
    options = {"asyncio": {"task_wait": "stack", "sync_waits": True}}
    with pyflight.FlightRecorder(min_age=max(5.0, seconds * 2), max_bytes=16 * 2**20, source_options=options):
        app = create_app(target.parent)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        server = uvicorn.Server(uvicorn.Config(app, loop="asyncio", log_level="warning", access_log=False))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn")
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while not server.started and thread.is_alive() and time.monotonic() < deadline:
                time.sleep(0.02)
            if not server.started:
                print("pyflight demo: the web server did not start", file=sys.stderr)
                return 1
            base = f"http://{host}:{sock.getsockname()[1]}"
            print(f"serving {base} (GET /score, /trace, /debug/pyflight/status); playing for {seconds:g} s")
            end = time.monotonic() + seconds
            while time.monotonic() < end:  # some client traffic: requests wait for clumsy too
                _fetch_json(f"{base}/score")
                time.sleep(0.1)
            score = _fetch_json(f"{base}/score")
            trace = _fetch_json(f"{base}/trace")
        finally:
            server.should_exit = True
            thread.join()
            sock.close()
    os.replace(trace["path"], target)
    print(f"score: {score}")
    print(f"GET /trace wrote {trace['bytes']:,} bytes to {trace['path']}; moved to {target}\n")
    print(describe(pyflight.load(target)))
    return 0
