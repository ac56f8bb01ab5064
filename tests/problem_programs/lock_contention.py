"""Planted: four threads serialise on one lock held while working."""

import threading
import time

LOCK = threading.Lock()
balance = [0]


def update_account(n: int) -> None:
    for _ in range(n):
        with LOCK:  # everyone waits here
            time.sleep(0.01)
            balance[0] += 1


def main() -> None:
    threads = [threading.Thread(target=update_account, args=(25,), name=f"teller-{i}") for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
