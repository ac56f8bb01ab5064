"""The debug HTTP endpoint: ``/debug/pyflight/trace`` and ``/debug/pyflight/status``.

Standard library only (``http.server`` on its own daemon thread), so any program can
serve its window without a web framework. Safe by default: bound to 127.0.0.1,
requests from other hosts refused unless ``allow_remote=True``, an optional bearer
token, one snapshot at a time (others get 429 + Retry-After), no traceback ever sent.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable

from pyflight.core.daemon import start_without_signals
from pyflight.recorder import FlightRecorder
from pyflight.triggers.endpoints import (
    DEFAULT_PREFIX,
    REASON,
    DebugEndpoints,
    Reply,
    is_loopback,
    token_matches,
)

__all__ = ["STATUS_PATH", "TRACE_PATH", "DebugServer", "Reply", "is_loopback", "serve", "token_matches"]

TRACE_PATH = DEFAULT_PREFIX + "/trace"
STATUS_PATH = DEFAULT_PREFIX + "/status"


def _say(message: str) -> None:
    try:
        sys.stderr.write(f"pyflight: {message}\n")
    except Exception:
        pass


class DebugServer:
    """A running debug endpoint; ``close()`` stops it. Also a context manager."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        recorder: FlightRecorder | None = None,
        allow_remote: bool = False,
        allowed_hosts: Iterable[str] | None = None,
    ) -> None:
        self.token = token or None
        self.recorder = recorder
        self.allow_remote = allow_remote
        self.endpoints = DebugEndpoints(
            token=self.token,
            allow_remote=allow_remote,
            recorder=recorder,
            reason=REASON,
            allowed_hosts=allowed_hosts,
        )
        self.pid = os.getpid()
        self._one_at_a_time = threading.Lock()
        from pyflight.triggers._httpd import make_server  # http.server only when serving

        self._server = make_server(host, port, self)
        self.host = host
        self.port: int = self._server.server_address[1]
        self._closed = False
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.25},
            name="pyflight-http",
            daemon=True,
        )
        start_without_signals(self._thread)
        _track(self)

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8765``; the trace is at ``url + TRACE_PATH``."""
        host = self.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._closed:
            return
        self._closed = True
        if self.pid == os.getpid():
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> DebugServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<DebugServer {self.url}{' closed' if self._closed else ''}>"


def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    token: str | None = None,
    recorder: FlightRecorder | None = None,
    allow_remote: bool = False,
    allowed_hosts: Iterable[str] | None = None,
) -> DebugServer:
    """Serve ``GET /debug/pyflight/trace`` and ``/status`` on a daemon thread.

    ``port=0`` picks a free port (see ``.port`` / ``.url``). Snapshots are of
    ``recorder``, or of whichever recorder runs when a request comes. Requests whose
    Host header is not a loopback name get 403 (DNS rebinding) unless the name is in
    ``allowed_hosts``.
    """
    return DebugServer(
        host, port, token=token, recorder=recorder, allow_remote=allow_remote, allowed_hosts=allowed_hosts
    )


_servers: list[DebugServer] = []
_fork_hook = False


def _track(server: DebugServer) -> None:
    global _fork_hook
    _servers[:] = [s for s in _servers if not s._closed]
    _servers.append(server)
    if not _fork_hook and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hook = True


def _after_fork_in_child() -> None:
    """A forked child must not keep the parent's port open (its serving thread is gone)."""
    for server in list(_servers):
        if server.pid != os.getpid() and not server._closed:
            server._closed = True
            try:
                server._server.socket.close()
            except OSError:
                pass
    _servers.clear()
