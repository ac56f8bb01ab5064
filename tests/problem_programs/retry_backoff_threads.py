"""Planted: four worker threads fetch exchange rates from a partner that fails 60% of the
time (503, at once). requests retries through urllib3's Retry with exponential backoff,
so each fetch sleeps between its attempts: the workers spend most of their time backing
off, waiting for the failing partner's next try. The cause is the partner's failures
(and an unbounded backoff), not the workers or the network."""

import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry


class FlakyPartner(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = random.random() >= 0.6
        body = b'{"EURUSD": 1.08}' if ok else b""
        self.send_response(200 if ok else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def make_session() -> requests.Session:
    session = requests.Session()
    retry = Retry(total=6, backoff_factor=0.05, status_forcelist=[503], allowed_methods=["GET"])
    session.mount("http://", HTTPAdapter(max_retries=retry))
    return session


def fetch_rates(session: requests.Session, url: str) -> dict:
    return session.get(url, timeout=5).json()  # the retries back off in here


def worker(url: str, fetches: int) -> None:
    session = make_session()
    for _ in range(fetches):
        try:
            fetch_rates(session, url)
        except requests.RequestException:
            pass  # gave up after the last retry


def main() -> None:
    random.seed(7)
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyPartner)
    threading.Thread(target=server.serve_forever, name="partner", daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/rates"
    workers = [threading.Thread(target=worker, args=(url, 6), name=f"worker-{i}") for i in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    server.shutdown()


if __name__ == "__main__":
    main()
