"""Planted: six request threads render PDFs through a multiprocessing.Pool of two worker
processes (pool.apply blocks until the result comes back), so the requests spend their
time waiting for the pool: told as a wait for the process pool, not as nothing (the work
itself runs in other processes, which the recorder in this one does not see)."""

import multiprocessing
import threading
import time


def render_pdf(page: int) -> int:
    until = time.monotonic() + 0.08
    while time.monotonic() < until:  # the CPU-heavy rendering, in a worker process
        pass
    return page


def handle_request(pool, pages: int) -> None:  # type: ignore[no-untyped-def]
    for page in range(pages):
        pool.apply(render_pdf, (page,))  # waits for a worker process and its result


def main() -> None:
    with multiprocessing.get_context("fork").Pool(2) as pool:
        threads = [
            threading.Thread(target=handle_request, args=(pool, 4), name=f"request-{n}") for n in range(6)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
