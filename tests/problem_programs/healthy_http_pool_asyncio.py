"""Healthy: the fan-out of pool_exhausted_httpx_asyncio.py through a pool as big as the
fan-out (max_connections=16): each call waits for the server only."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import pool_exhausted_httpx_asyncio


def main() -> None:
    pool_exhausted_httpx_asyncio.run(max_connections=16)
