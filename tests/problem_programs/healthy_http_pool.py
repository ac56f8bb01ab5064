"""Healthy: threads share a requests.Session whose pool has a connection per thread, and
log through a handler with a fast stream."""

import io
import logging
import os
import sys
import threading

import requests
from requests.adapters import HTTPAdapter

sys.path.insert(0, os.path.dirname(__file__))
import _slow_http

log = logging.getLogger("healthy-orders")


def fetch_order(session: requests.Session, base: str, order: int) -> bytes:
    body = session.get(f"{base}/orders/{order}", timeout=30).content
    log.info("order %d fetched", order)
    return body


def worker(session: requests.Session, base: str, n: int) -> None:
    for i in range(6):
        fetch_order(session, base, n * 100 + i)


def main() -> None:
    server, base = _slow_http.start(0.03)
    handler = logging.StreamHandler(io.StringIO())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    session = requests.Session()
    session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=8, pool_block=True))
    threads = [
        threading.Thread(target=worker, args=(session, base, n), name=f"api-worker-{n}") for n in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    session.close()
    server.shutdown()
    log.removeHandler(handler)
