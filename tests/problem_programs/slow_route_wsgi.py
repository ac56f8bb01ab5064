"""Planted: a Flask route that is slow on every call (~250 ms in load_report_rows), the
bulk of the server's time; no single call is an outlier. Served by a threaded wsgiref
server on loopback, called by a client thread."""

import threading
import time
import urllib.request
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from flask import Flask

from pyflight.integrations.wsgi import PyflightWSGIMiddleware

app = Flask(__name__)


def load_report_rows() -> list[int]:
    time.sleep(0.25)  # the planted slow step: the same on every call
    return list(range(100))


@app.route("/report/<int:year>")
def report(year: int) -> str:
    rows = load_report_rows()
    return f"{year}: {len(rows)} rows"


@app.route("/health")
def health() -> str:
    return "ok"


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    app.wsgi_app = PyflightWSGIMiddleware(app.wsgi_app, endpoints=False)  # type: ignore[method-assign]
    server = make_server("127.0.0.1", 0, app, server_class=_Server, handler_class=_Quiet)
    port = server.server_address[1]
    serving = threading.Thread(target=server.serve_forever, name="wsgi-server", daemon=True)
    serving.start()
    base = f"http://127.0.0.1:{port}"
    for i in range(10):
        urllib.request.urlopen(f"{base}/report/{2000 + i}", timeout=30).read()
        for _ in range(3):
            urllib.request.urlopen(f"{base}/health", timeout=30).read()
    server.shutdown()
    server.server_close()
