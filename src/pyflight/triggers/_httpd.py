"""The http.server side of the debug endpoint (imported only when a server starts)."""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pyflight.triggers.endpoints import DEFAULT_PREFIX, Reply, subpath
from pyflight.triggers.http import TRACE_PATH

if TYPE_CHECKING:
    from pyflight.triggers.http import DebugServer


def _say(message: str) -> None:
    try:
        sys.stderr.write(f"pyflight: {message}\n")
    except Exception:
        pass


_INTERNAL_ERROR = Reply(
    500, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", "15")], b"internal error\n"
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    debug: DebugServer

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        # named as pyflight's own, so the program's thread table and profiles leave it out
        threading.current_thread().name = "pyflight-http-request"
        super().process_request_thread(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return  # the client went away
        _say(f"debug endpoint: {type(exc).__name__}: {exc}")


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "pyflight"
    timeout = 60  # a stalled client cannot hold the one snapshot slot forever

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the program's stderr is not ours to fill with access logs."""

    def __getattr__(self, name: str) -> Any:
        # every method other than GET (POST, PUT, ... and made-up ones): 405, not 501
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def do_GET(self) -> None:
        self._dispatch(allowed=True)

    def _not_allowed(self) -> None:
        self._dispatch(allowed=False)

    def _dispatch(self, allowed: bool) -> None:
        try:
            self._route(allowed)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as exc:
            _say(f"debug endpoint: {type(exc).__name__}: {exc}")
            try:
                self._send(_INTERNAL_ERROR)
            except Exception:
                self.close_connection = True

    def _route(self, allowed: bool) -> None:
        endpoints = self.server.debug.endpoints
        peer = str(self.client_address[0]) if self.client_address else ""
        headers = self.headers
        refusal = endpoints.check(
            peer,
            headers.get("Authorization"),
            headers.get("X-Forwarded-For"),
            headers.get("Forwarded"),
            headers.get("Host"),
        )
        if refusal is not None:
            self._send(refusal)
            return
        sub = subpath(urlsplit(self.path).path, DEFAULT_PREFIX)
        handler = None if sub is None else endpoints.route(self.command, sub, f"GET {TRACE_PATH} from {peer}")
        if handler is None:
            self._send(endpoints.not_found())
        elif allowed and sub is not None and sub.rstrip("/") == "/trace":
            self._trace(handler)
        else:
            self._send(handler())

    def _trace(self, handler: Callable[[], Reply]) -> None:
        """At most one snapshot in memory per server: held until its bytes are sent."""
        one_at_a_time = self.server.debug._one_at_a_time
        if not one_at_a_time.acquire(blocking=False):
            self._send(self.server.debug.endpoints.busy())
            return
        try:
            self._send(handler())
        finally:
            one_at_a_time.release()

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        if not any(name.lower() == "cache-control" for name, _ in reply.headers):
            self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)


def make_server(host: str, port: int, debug: DebugServer) -> _Server:
    """Bind (not yet serving) a threading HTTP server answering for ``debug``."""
    server_class = _Server6 if ":" in host else _Server
    server = server_class((host, port), _Handler)
    server.debug = debug
    return server
