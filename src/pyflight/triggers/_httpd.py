"""The http.server side of the debug endpoint (imported only when a server starts)."""

from __future__ import annotations

import json
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pyflight.errors import RecorderError, SnapshotInProgress
from pyflight.triggers.http import (
    REASON,
    RETRY_AFTER_SECONDS,
    STATUS_PATH,
    TRACE_PATH,
)
from pyflight.triggers.snapshots import snapshot_bytes, snapshot_filename, status

if TYPE_CHECKING:
    from pyflight.triggers.http import DebugServer


def _say(message: str) -> None:
    try:
        sys.stderr.write(f"pyflight: {message}\n")
    except Exception:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    debug: DebugServer

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
                self._reply(500, "internal error\n")
            except Exception:
                self.close_connection = True

    def _route(self, allowed: bool) -> None:
        debug = self.server.debug
        peer = str(self.client_address[0]) if self.client_address else ""
        refusal = debug.check_access(peer, self.headers.get("Authorization"))
        if refusal is not None:
            self._reply(*refusal)
            return
        path = urlsplit(self.path).path
        if path not in (TRACE_PATH, STATUS_PATH):
            self._reply(404, "not found\n")
            return
        if not allowed:
            self._reply(405, "method not allowed\n", {"Allow": "GET"})
            return
        if path == STATUS_PATH:
            self._status()
        else:
            self._trace(peer)

    def _status(self) -> None:
        debug = self.server.debug
        body = json.dumps(status(debug.recorder), default=str, sort_keys=True) + "\n"
        self._reply(200, body, content_type="application/json")

    def _trace(self, peer: str) -> None:
        debug = self.server.debug
        if not debug._one_at_a_time.acquire(blocking=False):
            self._busy()
            return
        try:  # held until the bytes are sent: at most one snapshot in memory per server
            try:
                data = snapshot_bytes(debug.recorder, REASON, f"GET {TRACE_PATH} from {peer}")
            except SnapshotInProgress:
                self._busy()
                return
            except RecorderError as exc:
                self._reply(503, f"no snapshot: {exc}\n")
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Disposition", f'attachment; filename="{snapshot_filename(REASON)}"')
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)
        finally:
            debug._one_at_a_time.release()

    def _busy(self) -> None:
        self._reply(
            429,
            "a snapshot is being taken; try again shortly\n",
            {"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    def _reply(
        self,
        code: int,
        body: str,
        headers: dict[str, str] | None = None,
        content_type: str = "text/plain; charset=utf-8",
    ) -> None:
        payload = body.encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


def make_server(host: str, port: int, debug: DebugServer) -> _Server:
    """Bind (not yet serving) a threading HTTP server answering for ``debug``."""
    server_class = _Server6 if ":" in host else _Server
    server = server_class((host, port), _Handler)
    server.debug = debug
    return server
