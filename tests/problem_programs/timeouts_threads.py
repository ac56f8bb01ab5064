"""Planted: four worker threads quote prices from a partner service with requests and
a read timeout of 0.3 s. The partner answers half of the calls in 20 ms and stalls on
the others (its own lock, its own slow database), so those calls run into the timeout:
the workers spend most of their time waiting out timeouts, and each such call fails.
The cause is the partner's stalls; "add timeouts" (the usual advice for slow calls)
would be wrong, they have them."""

import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests


class StallingPartner(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        time.sleep(1.0 if random.random() < 0.5 else 0.02)  # half the calls stall
        try:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"42")
        except OSError:  # the caller gave up and closed the connection
            pass

    def log_message(self, *args: object) -> None:
        pass


def fetch_quote(session: requests.Session, url: str) -> str:
    return session.get(url, timeout=0.3).text  # TIMEOUT LINE


def worker(url: str, until: float, failures: list[int]) -> None:
    session = requests.Session()
    while time.monotonic() < until:
        try:
            fetch_quote(session, url)
        except requests.Timeout:
            failures.append(1)


def main() -> None:
    random.seed(11)
    partner = ThreadingHTTPServer(("127.0.0.1", 0), StallingPartner)
    partner.daemon_threads = True
    threading.Thread(target=partner.serve_forever, name="partner", daemon=True).start()
    url = f"http://127.0.0.1:{partner.server_address[1]}/quote"
    failures: list[int] = []
    until = time.monotonic() + 2.5
    workers = [
        threading.Thread(target=worker, args=(url, until, failures), name=f"quoter-{i}") for i in range(4)
    ]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    partner.shutdown()
    partner.server_close()
    assert failures, "no call timed out"
