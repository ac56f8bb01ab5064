"""Planted: a slow consumer; the producer blocks on the full bounded queue."""

import queue
import threading
import time

Q: "queue.Queue[int | None]" = queue.Queue(maxsize=4)


def slow_consume() -> None:
    while True:
        item = Q.get()
        if item is None:
            return
        time.sleep(0.02)  # processing is slow


def produce() -> None:
    for i in range(60):
        Q.put(i)
    Q.put(None)


def main() -> None:
    consumer = threading.Thread(target=slow_consume, name="consumer")
    producer = threading.Thread(target=produce, name="producer")
    consumer.start()
    producer.start()
    producer.join()
    consumer.join()
