"""Planted: a ThreadPoolExecutor of workers calls a slow HTTPS service (a loopback server
with the tests' test-only certificate): the workers wait in TLS reads, inside OpenSSL
(in fetch_invoice)."""

import http.client
import os
import ssl
import sys
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(__file__))
import _slow_http

#: A TEST-ONLY certificate and key (self-signed, CN=localhost, 127.0.0.1): trusted here only.
PEM = os.path.join(os.path.dirname(__file__), os.pardir, "tls", "localhost.pem")


def fetch_invoice(context: ssl.SSLContext, port: int, n: int) -> bytes:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    try:
        conn.request("GET", f"/invoices/{n}")
        return conn.getresponse().read()  # waits for the slow service
    finally:
        conn.close()


def fetch_batch(context: ssl.SSLContext, port: int, batch: int) -> list[bytes]:
    return [fetch_invoice(context, port, batch * 10 + i) for i in range(3)]


def main() -> None:
    server, base = _slow_http.start(0.25, pem=PEM)
    port = int(base.rsplit(":", 1)[1])
    context = ssl.create_default_context(cafile=PEM)
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="invoices") as pool:
        list(pool.map(lambda batch: fetch_batch(context, port, batch), range(4)))
    server.shutdown()
