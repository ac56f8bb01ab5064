"""Planted: a worker thread waits for a batch by polling a flag with 1 ms sleeps instead of
waiting on an Event, while a producer thread builds the batch (a second, honest thread
paces real work with sleeps and must not be named)."""

import threading
import time

batch: list[int] = []
batch_ready = False


def build_batch() -> None:
    global batch_ready
    for i in range(25):
        time.sleep(0.04)  # fetching each item
        batch.append(i)
    batch_ready = True


def wait_for_batch() -> int:
    while not batch_ready:  # polls ~1,000 times a second
        time.sleep(0.001)
    return len(batch)


def paced_work() -> None:
    for _ in range(40):
        sum(range(200_000))  # real work (a few ms) between short sleeps: pacing, not polling
        time.sleep(0.002)


def main() -> None:
    threads = [threading.Thread(target=f) for f in (build_batch, wait_for_batch, paced_work)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
