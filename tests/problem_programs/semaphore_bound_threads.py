"""Planted: eight worker threads call a partner API through a BoundedSemaphore(2), the
partner's limit of two calls at once; each call takes ~50 ms, so the workers queue for a
slot. The story is the bound (raise it if the partner can take more), not an item one
worker holds too long, nor a lock's critical section."""

import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class PartnerApi(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        time.sleep(0.05)  # the partner's own work
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


API_SLOTS = threading.BoundedSemaphore(2)  # at most two calls to the partner at once


def call_partner(url: str) -> bytes:
    with API_SLOTS:  # the workers queue here
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read()


def worker(url: str, calls: int) -> None:
    for _ in range(calls):
        call_partner(url)


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), PartnerApi)
    threading.Thread(target=server.serve_forever, daemon=True, name="partner-api").start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    workers = [threading.Thread(target=worker, args=(url, 5), name=f"worker-{n}") for n in range(8)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    server.shutdown()
    server.server_close()
