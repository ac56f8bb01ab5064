"""Planted: a threaded service validates input with a catastrophic regex in
validate_username; re.match backtracks for hundreds of ms holding the GIL, and the worker
threads serving requests starve."""

import re
import threading
import time

PATTERN = re.compile(r"^(a+)+$")


def validate_username(name: str) -> bool:
    return PATTERN.match(name) is not None  # the planted backtracking regex


def validator(stop: threading.Event) -> None:
    while not stop.is_set():
        validate_username("a" * 23 + "!")
        time.sleep(0.05)


def serve(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(range(2000))
        time.sleep(0.005)


def main() -> None:
    stop = threading.Event()
    threads = [threading.Thread(target=validator, args=(stop,), name="signup-validator")]
    threads += [threading.Thread(target=serve, args=(stop,), name=f"worker-{n}") for n in range(3)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join()
