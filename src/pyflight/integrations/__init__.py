"""Web framework integrations: a ``pyflight.task`` per request and the debug endpoints.

``asgi`` (Starlette, FastAPI), ``wsgi`` (Flask, Django) and ``aiohttp`` each wrap every
request in ``pyflight.task("<METHOD> <route>")`` and serve ``/debug/pyflight/trace`` and
``/debug/pyflight/status``. What the endpoints answer is decided here, once, so every
framework refuses, authenticates and names downloads the same way; the framework modules
only translate requests and responses. Importing this package needs no framework.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import NamedTuple

from pyflight.errors import RecorderError, SnapshotInProgress
from pyflight.recorder import FlightRecorder
from pyflight.triggers import snapshots
from pyflight.triggers.http import REASON, RETRY_AFTER_SECONDS, is_loopback, token_matches

__all__ = [
    "DEFAULT_PREFIX",
    "DebugEndpoints",
    "Reply",
    "normalize_route",
    "subpath",
    "task_name",
]

#: Where the middlewares serve the endpoints unless told otherwise (as the debug server).
DEFAULT_PREFIX = "/debug/pyflight"


class Reply(NamedTuple):
    """A framework-neutral HTTP response."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


def task_name(method: str, route: str) -> str:
    """The user-task name of a request: ``"GET /items/{item_id}"``."""
    return f"{method} {route}"


_STARLETTE_PARAM = re.compile(r"\{(\w+):[^}]*\}")  # {item_id:int}
_WERKZEUG_PARAM = re.compile(r"<(?:[^:<>]+:)?(\w+)>")  # <int:item_id>, <item_id>


def normalize_route(template: str) -> str:
    """One spelling of route parameters across frameworks: ``/items/{item_id}``.

    Task names then read the same whether the route came from FastAPI, Flask or aiohttp,
    and converters (``int``, ``path``) do not split one route into several names.
    """
    return _WERKZEUG_PARAM.sub(r"{\1}", _STARLETTE_PARAM.sub(r"{\1}", template))


def subpath(path: str, prefix: str) -> str | None:
    """``path`` relative to ``prefix`` (``"/trace"``), or None if it is not under it."""
    if path == prefix:
        return "/"
    if path.startswith(prefix) and path[len(prefix)] == "/":
        return path[len(prefix) :]
    return None


def _forwarded_hosts(forwarded_for: str | None, forwarded: str | None) -> list[str]:
    """Client addresses a proxy in front of us reported (X-Forwarded-For, Forwarded)."""
    hosts = [h.strip() for h in (forwarded_for or "").split(",") if h.strip()]
    for element in (forwarded or "").split(","):
        for pair in element.split(";"):
            key, _, value = pair.strip().partition("=")
            if key.lower() == "for" and value:
                value = value.strip('"')
                if value.startswith("["):  # [v6]:port
                    value = value[1 : value.find("]")] if "]" in value else value[1:]
                elif value.count(":") == 1:  # v4:port
                    value = value.split(":", 1)[0]
                hosts.append(value)
    return hosts


def _json(status: int, payload: object, headers: list[tuple[str, str]] | None = None) -> Reply:
    body = (json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n").encode()
    head = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *(headers or [])]
    return Reply(status, head, body)


class DebugEndpoints:
    """What ``GET <prefix>/trace`` and ``GET <prefix>/status`` answer, for every integration.

    Remote clients get 403 unless ``allow_remote``; with a ``token``, requests without
    ``Authorization: Bearer <token>`` get 401. A trace request while another snapshot is
    being written gets 429 with Retry-After rather than waiting or a corrupt file.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        allow_remote: bool = False,
        recorder: FlightRecorder | None = None,
        reason: str = REASON,
    ) -> None:
        self.token = token
        self.allow_remote = allow_remote
        self.recorder = recorder
        self.reason = reason

    def check(
        self,
        client: str | None,
        authorization: str | None,
        forwarded_for: str | None = None,
        forwarded: str | None = None,
    ) -> Reply | None:
        """The refusal for this client, or None if it may use the endpoints."""
        if not self.allow_remote:
            # A missing or non-IP client (a Unix socket behind a proxy, a test client's
            # placeholder) counts as remote, and so does any client a proxy reports.
            hops = [client, *_forwarded_hosts(forwarded_for, forwarded)]
            if not all(h and is_loopback(h) for h in hops):
                return _json(403, {"error": "pyflight debug endpoints answer loopback clients only"})
        if self.token is not None and not token_matches(authorization, self.token):
            return _json(
                401,
                {"error": "a valid bearer token is required"},
                [("WWW-Authenticate", 'Bearer realm="pyflight"')],
            )
        return None

    def route(self, method: str, subpath: str) -> Callable[[], Reply] | None:
        """The handler for ``subpath`` (relative to the prefix), None if it is not ours.

        Returned as a callable so async frameworks can run the snapshot off the event loop.
        """
        subpath = subpath.rstrip("/") or "/"
        if subpath not in ("/trace", "/status", "/"):
            return None
        if method != "GET":
            return lambda: _json(405, {"error": "use GET"}, [("Allow", "GET")])
        if subpath == "/trace":
            return self.trace
        if subpath == "/status":
            return self.status
        return lambda: _json(200, {"endpoints": ["trace", "status"]})

    def trace(self) -> Reply:
        """A fresh snapshot as a download."""
        try:
            data = snapshots.snapshot_bytes(self.recorder, reason=self.reason, detail="debug endpoint")
        except SnapshotInProgress:
            return _json(
                429,
                {"error": "a snapshot is being written; retry shortly"},
                [("Retry-After", str(RETRY_AFTER_SECONDS))],
            )
        except RecorderError as exc:
            return _json(503, {"error": str(exc)})
        name = snapshots.snapshot_filename(self.reason)
        return Reply(
            200,
            [
                ("Content-Type", "application/octet-stream"),
                ("Content-Disposition", f'attachment; filename="{name}"'),
                ("Content-Length", str(len(data))),
                ("Cache-Control", "no-store"),
            ],
            data,
        )

    def status(self) -> Reply:
        """Window, bytes held, generations, sources, data loss, snapshots taken."""
        return _json(200, snapshots.status(self.recorder), [("Cache-Control", "no-store")])
