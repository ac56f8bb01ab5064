"""Planted: a threaded server in which rebuild_index sorts a 1.5-million-item list now and
then; sorted() holds the GIL for the whole sort, so the request threads starve."""

import random
import threading
import time


def rebuild_index(items: list[float]) -> list[float]:
    return sorted(items)  # the planted long C call holding the GIL


def indexer(items: list[float], stop: threading.Event) -> None:
    while not stop.is_set():
        rebuild_index(items)
        time.sleep(0.05)


def handle_requests(n: int, stop: threading.Event) -> None:
    while not stop.is_set():
        sum(range(2000))
        time.sleep(0.005)


def main() -> None:
    rng = random.Random(1)
    items = [rng.random() for _ in range(1_500_000)]
    stop = threading.Event()
    threads = [threading.Thread(target=indexer, args=(items, stop), name="indexer")]
    threads += [
        threading.Thread(target=handle_requests, args=(n, stop), name=f"request-{n}") for n in range(3)
    ]
    for t in threads:
        t.start()
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join()
