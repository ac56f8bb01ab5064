"""Planted: two threads poll with short timeouts instead of waiting: a dispatcher checks a
job's Event with ``wait(0.002)`` in a loop (doing its bookkeeping between checks), and a
consumer calls ``queue.get(timeout=0.005)`` in a loop, catching ``Empty``. Beside them,
honest threads: a worker blocked in ``queue.get()`` until its job comes, and a heartbeat
that paces itself with ``stop.wait(0.2)``. Only the two pollers must be named."""

import queue
import threading
import time

job_done = threading.Event()
results: queue.Queue[int | None] = queue.Queue()
jobs: queue.Queue[int | None] = queue.Queue()
stop = threading.Event()


def dispatch() -> None:
    checks = 0
    while not job_done.wait(0.002):  # polls the job ~400 times a second
        checks += 1


def consume_results() -> None:
    while True:
        try:
            item = results.get(timeout=0.005)  # polls the queue ~200 times a second
        except queue.Empty:
            continue
        if item is None:
            return


def worker() -> None:
    while (job := jobs.get()) is not None:  # blocked until a job comes: no poll
        time.sleep(0.05)  # the job's I/O
        results.put(job)
    job_done.set()


def heartbeat() -> None:
    while not stop.wait(0.2):  # five times a second: pacing, not polling
        pass


def main() -> None:
    threads = [
        threading.Thread(target=f, name=f.__name__.replace("_", "-"))
        for f in (dispatch, consume_results, worker, heartbeat)
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.6)
    for n in range(4):
        jobs.put(n)
    jobs.put(None)
    threads[2].join()
    results.put(None)
    stop.set()
    for thread in threads:
        thread.join()
