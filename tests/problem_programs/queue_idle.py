"""Planted: a slow producer; four consumers sit idle on the empty queue."""

import queue
import threading
import time

Q: "queue.Queue[int | None]" = queue.Queue()


def consume() -> None:
    while True:
        item = Q.get()
        if item is None:
            return


def slow_produce() -> None:
    for i in range(25):
        time.sleep(0.04)  # producing each item is slow
        Q.put(i)
    for _ in range(4):
        Q.put(None)


def main() -> None:
    consumers = [threading.Thread(target=consume, name=f"consumer-{i}") for i in range(4)]
    for t in consumers:
        t.start()
    producer = threading.Thread(target=slow_produce, name="producer")
    producer.start()
    producer.join()
    for t in consumers:
        t.join()
