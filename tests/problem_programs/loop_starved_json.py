"""Planted: a background thread serialises a big object (C code holding the GIL) while
the event loop serves many short requests."""

import asyncio
import gc
import json
import threading
import time

stop = threading.Event()
gc.disable()  # building the snapshot is set-up, not the planted problem
SNAPSHOT = {"rows": [{"id": i, "name": f"row-{i}", "tags": ["a", "b", "c"]} for i in range(100_000)]}
gc.freeze()
gc.enable()


def serialize_snapshot() -> None:
    while not stop.is_set():
        json.dumps(SNAPSHOT)  # one C call holding the GIL for tens of ms


async def serve(i: int) -> None:
    for _ in range(25):
        await asyncio.sleep(0.005)


async def amain() -> None:
    await asyncio.gather(*(serve(i) for i in range(8)))


def main() -> None:
    worker = threading.Thread(target=serialize_snapshot, name="snapshotter")
    worker.start()
    time.sleep(0.05)
    try:
        asyncio.run(amain())
    finally:
        stop.set()
        worker.join()
