"""Planted: one request in thirty takes far longer, in slow_db_query."""

import time

import pyflight


def slow_db_query() -> None:
    time.sleep(0.5)


def handle(i: int) -> None:
    with pyflight.task("request"):
        with pyflight.region("db"):
            if i == 17:
                slow_db_query()
            else:
                time.sleep(0.01)


def main() -> None:
    for i in range(30):
        handle(i)
