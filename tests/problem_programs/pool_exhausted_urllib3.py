"""Planted: a ThreadPoolExecutor of six workers shares a urllib3.PoolManager with two
connections per host (maxsize=2, block=True); each call takes 50 ms, so the workers wait
for a connection inside urllib3 (in get_quote)."""

import os
import sys
from concurrent.futures import ThreadPoolExecutor

import urllib3

sys.path.insert(0, os.path.dirname(__file__))
import _slow_http


def get_quote(http: urllib3.PoolManager, base: str, n: int) -> bytes:
    return http.request("GET", f"{base}/quotes/{n}", timeout=30).data


def main() -> None:
    server, base = _slow_http.start(0.05)
    http = urllib3.PoolManager(maxsize=2, block=True)
    with ThreadPoolExecutor(max_workers=6, thread_name_prefix="quotes") as pool:
        list(pool.map(lambda n: get_quote(http, base, n), range(48)))
    http.clear()
    server.shutdown()
