"""Planted: six request threads render PDFs through a pool of two worker processes
(multiprocessing.Pool's apply, or a ProcessPoolExecutor's future.result() with
PYFLIGHT_PROGRAM_EXECUTOR=1), so the requests spend their time waiting for the pool: told
as a wait for the process pool, not as nothing (the work itself runs in other processes,
which the recorder in this one does not see)."""

import concurrent.futures
import multiprocessing
import os
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


def handle_request_futures(executor, pages: int) -> None:  # type: ignore[no-untyped-def]
    for page in range(pages):
        executor.submit(render_pdf, page).result()  # waits for a worker process and its result


def main() -> None:
    fork = multiprocessing.get_context("fork")
    if os.environ.get("PYFLIGHT_PROGRAM_EXECUTOR") == "1":
        pool, handle = concurrent.futures.ProcessPoolExecutor(2, mp_context=fork), handle_request_futures
    else:
        pool, handle = fork.Pool(2), handle_request
    with pool:
        threads = [threading.Thread(target=handle, args=(pool, 4), name=f"request-{n}") for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
