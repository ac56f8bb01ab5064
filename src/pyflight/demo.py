"""The ping-pong demo: players compete for one ball on one shared channel.

This is the recording side only for now: it plays the asyncio and the threaded game
under a FlightRecorder, writes the window and describes it. (The web server with a
/trace endpoint and the analysis report come with their own issues.)
"""

from __future__ import annotations

import asyncio
import queue
import random
import threading
import time

import pyflight
from pyflight.format.reader import describe


def _hit(cost: float) -> None:
    """A hit costs CPU: a pure-Python loop of roughly ``cost`` seconds."""
    end = time.perf_counter() + cost
    n = 0
    while time.perf_counter() < end:
        n += 1


async def _async_player(
    name: str, table: asyncio.Queue[int], deadline: float, scores: dict[str, int]
) -> None:
    rng = random.Random(name)
    while time.monotonic() < deadline:
        with pyflight.task(f"rally {name}"):
            try:
                ball = await asyncio.wait_for(table.get(), timeout=0.2)
            except TimeoutError:
                continue
            with pyflight.region("hit"):
                _hit(rng.uniform(0.0002, 0.001))
                if name == "clumsy" and rng.random() < 0.05:
                    time.sleep(0.02)  # the misbehaving player blocks the event loop
                    pyflight.log("game", f"{name} fumbled ball {ball}")
            scores[name] = scores.get(name, 0) + 1
            await table.put(ball + 1)


async def _async_game(seconds: float) -> dict[str, int]:
    table: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
    await table.put(0)
    deadline = time.monotonic() + seconds
    scores: dict[str, int] = {}
    players = ["alice", "bob", "carol", "clumsy"]
    await asyncio.gather(*(_async_player(p, table, deadline, scores) for p in players))
    return scores


def _threaded_game(seconds: float) -> dict[str, int]:
    table: queue.Queue[int] = queue.Queue(maxsize=1)
    table.put(0)
    deadline = time.monotonic() + seconds
    scores: dict[str, int] = {}
    lock = threading.Lock()

    def player(name: str) -> None:
        rng = random.Random(name)
        while time.monotonic() < deadline:
            try:
                ball = table.get(timeout=0.2)
            except queue.Empty:
                continue
            with pyflight.task(f"rally {name}"), pyflight.region("hit"):
                _hit(rng.uniform(0.0002, 0.001))
            with lock:
                scores[name] = scores.get(name, 0) + 1
            table.put(ball + 1)

    threads = [
        threading.Thread(target=player, args=(n,), name=f"player-{n}") for n in ("dave", "erin", "frank")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return scores


def run_demo(output: str, seconds: float) -> int:
    with pyflight.FlightRecorder(min_age=max(5.0, seconds * 2), max_bytes=8 * 2**20) as recorder:
        async_scores = asyncio.run(_async_game(seconds / 2))
        thread_scores = _threaded_game(seconds / 2)
        size = recorder.write_to(output, reason="demo")
    print(f"asyncio game scores: {async_scores}")
    print(f"threaded game scores: {thread_scores}")
    print(f"wrote {size} bytes to {output}\n")
    print(describe(pyflight.load(output)))
    return 0
