"""Planted: worker threads run one kind of job that always takes ~300 ms in
render_invoice_pdf (a slow call, mostly waiting); every job is alike, none is an outlier."""

import queue
import threading
import time

import pyflight


def render_invoice_pdf(n: int) -> bytes:
    time.sleep(0.3)  # the planted slow step
    return bytes(n % 256 for _ in range(100))


def worker(jobs: "queue.Queue[int | None]") -> None:
    while (job := jobs.get()) is not None:
        with pyflight.task("invoice"):
            with pyflight.region("render"):
                render_invoice_pdf(job)


def main() -> None:
    jobs: queue.Queue[int | None] = queue.Queue()
    workers = [threading.Thread(target=worker, args=(jobs,), name=f"invoicer-{i}") for i in range(2)]
    for w in workers:
        w.start()
    for i in range(14):
        jobs.put(i)
    for _ in workers:
        jobs.put(None)
    for w in workers:
        w.join()
