"""Planted: two threads spend their time in one pure-Python hashing function."""

import threading


def hash_password(word: str) -> int:
    h = 0
    for _ in range(200):
        for ch in word:
            h = (h * 31 + ord(ch)) % 1_000_000_007
    return h


def worker(n: int) -> None:
    for i in range(n):
        hash_password(f"secret-{i}")


def main() -> None:
    threads = [threading.Thread(target=worker, args=(2000,), name=f"hasher-{i}") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
