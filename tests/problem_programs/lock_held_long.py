"""Planted: readers wait on a lock that a flusher thread holds for long stretches."""

import threading
import time

CACHE_LOCK = threading.Lock()
cache: dict[int, int] = {}
stop = threading.Event()


def flush_cache() -> None:
    while not stop.is_set():
        with CACHE_LOCK:
            time.sleep(0.15)
        time.sleep(0.01)


def read_cache() -> None:
    for i in range(40):
        with CACHE_LOCK:
            cache.get(i)
        time.sleep(0.005)


def main() -> None:
    flusher = threading.Thread(target=flush_cache, name="flusher")
    flusher.start()
    readers = [threading.Thread(target=read_cache, name=f"reader-{i}") for i in range(3)]
    for t in readers:
        t.start()
    for t in readers:
        t.join()
    stop.set()
    flusher.join()
