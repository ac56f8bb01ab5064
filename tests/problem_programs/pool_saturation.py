"""Planted: a two-worker pool gets far more slow jobs than it has workers."""

import time
from concurrent.futures import ThreadPoolExecutor


def resize_image(i: int) -> int:
    time.sleep(0.08)
    return i


def main() -> None:
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="images") as pool:
        futures = [pool.submit(resize_image, i) for i in range(24)]
        for f in futures:
            f.result()
