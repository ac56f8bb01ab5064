"""Planted: four workers pass one token through a queue.Queue(maxsize=1); worker-2 now and
then takes the token and stalls in flush_audit_log (a 150 ms blocking write) before putting
it back, so the others wait in Queue.get."""

import queue
import threading
import time


def flush_audit_log() -> None:
    time.sleep(0.15)  # the planted stall, while holding the token


def worker(n: int, token: "queue.Queue[int]") -> None:
    turns = 0
    while True:
        item = token.get()
        if item >= 120:  # the game is over: pass the token on so the others see it too
            token.put(item)
            return
        turns += 1
        time.sleep(0.002)
        if n == 2 and turns % 6 == 0:
            flush_audit_log()
        token.put(item + 1)
        time.sleep(0.004)  # some work of its own before the next turn


def main() -> None:
    token: queue.Queue[int] = queue.Queue(maxsize=1)
    token.put(0)
    threads = [threading.Thread(target=worker, args=(n, token), name=f"worker-{n}") for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
