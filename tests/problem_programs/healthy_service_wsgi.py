"""Healthy: a Flask service under a threaded wsgiref server; every route is fast (a few
ms) and the client pauses between bursts, so no operation dominates the window."""

import threading
import time
import urllib.request
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from flask import Flask

from pyflight.integrations.wsgi import PyflightWSGIMiddleware

app = Flask(__name__)


@app.route("/items/<int:item>")
def item(item: int) -> str:
    time.sleep(0.003)
    return str(sum(range(item * 10)))


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
    threading.Thread(target=server.serve_forever, name="wsgi-server", daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    for burst in range(6):
        for i in range(8):
            urllib.request.urlopen(f"{base}/items/{burst * 8 + i}", timeout=30).read()
        urllib.request.urlopen(f"{base}/health", timeout=30).read()
        time.sleep(0.1)
    server.shutdown()
    server.server_close()
