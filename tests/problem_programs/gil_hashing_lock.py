"""Planted: four threads hash (sha256 in a Python loop) under one lock, on one CPU.

The sampler finds the waiting threads at the ``with lock:`` line; their CPU was used at
the hashing line. Prints one JSON line: the CPU each worker used, by its own clock."""

import hashlib
import json
import threading
import time

ROUNDS = 40
BATCHES = 25000


def worker(lock: threading.Lock, used: dict[str, float]) -> None:
    began = time.thread_time()
    digest = threading.current_thread().name.encode()
    for _ in range(BATCHES):
        with lock:  # LOCK LINE
            for _ in range(ROUNDS):
                digest = hashlib.sha256(digest).digest()  # HASH LINE
    used[threading.current_thread().name] = time.thread_time() - began


def main() -> None:
    lock = threading.Lock()
    used: dict[str, float] = {}
    threads = [threading.Thread(target=worker, args=(lock, used), name=f"hasher-{i}") for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"thread_cpu_s": used}), flush=True)


if __name__ == "__main__":
    main()
