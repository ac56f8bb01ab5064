"""Planted: a cache refresher and a writer take two locks in opposite orders, each with
acquire(timeout=0.5) on the second: a lock-order inversion that deadlocks until one
times out (a half-second stall, then a retry). Beside them, readers queue honestly on the
cache lock for short reads, which is no deadlock."""

import threading
import time

cache_lock = threading.Lock()
db_lock = threading.Lock()
cache: dict[str, int] = {}


def refresh_cache(rounds: int) -> None:
    for n in range(rounds):
        with cache_lock:
            time.sleep(0.02)
            if db_lock.acquire(timeout=0.5):  # cache, then db: DEADLOCK LINE
                try:
                    cache["rows"] = n
                finally:
                    db_lock.release()
        time.sleep(0.05)


def write_rows(rounds: int) -> None:
    for _ in range(rounds):
        with db_lock:
            time.sleep(0.02)
            if cache_lock.acquire(timeout=0.5):  # db, then cache: the opposite order
                try:
                    cache.clear()
                finally:
                    cache_lock.release()
        time.sleep(0.05)


def read_cache(stop: threading.Event) -> None:
    while not stop.is_set():
        with cache_lock:
            cache.get("rows")
        time.sleep(0.005)


def main() -> None:
    stop = threading.Event()
    readers = [threading.Thread(target=read_cache, args=(stop,), name=f"reader-{n}") for n in range(2)]
    workers = [
        threading.Thread(target=refresh_cache, args=(3,), name="cache-refresher"),
        threading.Thread(target=write_rows, args=(3,), name="db-writer"),
    ]
    for t in readers + workers:
        t.start()
    for t in workers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
