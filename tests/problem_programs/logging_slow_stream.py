"""Planted: six worker threads log through one StreamHandler whose stream is slow (each
write takes 15 ms, like a blocked pipe or a slow terminal); the threads queue on the
handler's lock in record_event."""

import logging
import threading
import time


class SlowStream:
    def write(self, text: str) -> int:
        time.sleep(0.015)  # a slow sink: a full pipe, a remote syslog, a slow terminal
        return len(text)

    def flush(self) -> None:
        pass


log = logging.getLogger("orders")


def record_event(n: int) -> None:
    log.info("order %d processed", n)


def worker(n: int) -> None:
    for i in range(12):
        sum(range(2000))
        record_event(n * 100 + i)


def main() -> None:
    handler = logging.StreamHandler(SlowStream())  # type: ignore[arg-type]
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    threads = [threading.Thread(target=worker, args=(n,), name=f"order-worker-{n}") for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.removeHandler(handler)
