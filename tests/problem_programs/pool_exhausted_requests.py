"""Planted: eight threads share one requests.Session whose connection pool holds two
connections (pool_maxsize=2, pool_block=True); each call takes 60 ms, so threads queue for
a connection inside urllib3 (in fetch_order), not for the server."""

import os
import sys
import threading

import requests
from requests.adapters import HTTPAdapter

sys.path.insert(0, os.path.dirname(__file__))
import _slow_http


def fetch_order(session: requests.Session, base: str, order: int) -> bytes:
    return session.get(f"{base}/orders/{order}", timeout=30).content


def worker(session: requests.Session, base: str, n: int) -> None:
    for i in range(6):
        fetch_order(session, base, n * 100 + i)


def main() -> None:
    server, base = _slow_http.start(0.06)
    session = requests.Session()
    session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=2, pool_block=True))
    threads = [
        threading.Thread(target=worker, args=(session, base, n), name=f"api-worker-{n}") for n in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    session.close()
    server.shutdown()
