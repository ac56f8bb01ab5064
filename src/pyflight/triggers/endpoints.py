"""What the debug endpoints answer, decided once for every server that exposes them.

``pyflight.serve`` (``http.server``) and the ASGI, WSGI and aiohttp integrations only
translate requests and responses; refusals (403 remote, 401 token), 405, 429 and the
snapshot itself come from :class:`DebugEndpoints`, so they behave the same everywhere.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Callable, Iterable
from typing import NamedTuple

from pyflight._netcheck import host_allowed, is_loopback_address
from pyflight.errors import RecorderError, SnapshotInProgress
from pyflight.recorder import FlightRecorder
from pyflight.triggers import snapshots

#: Where the endpoints live unless told otherwise: ``<prefix>/trace``, ``<prefix>/status``.
DEFAULT_PREFIX = "/debug/pyflight"
REASON = "http"
RETRY_AFTER_SECONDS = 1
#: How long ``/trace-all`` waits for the workers' snapshots, all together.
WORKERS_TIMEOUT_S = 30.0


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback; False for anything else."""
    return is_loopback_address(host)


def token_matches(header: str | None, token: str) -> bool:
    """Constant-time check of an ``Authorization: Bearer <token>`` header."""
    if not header:
        return False
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode("utf-8"), token.encode("utf-8"))


class Reply(NamedTuple):
    """A framework-neutral HTTP response."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


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

    Remote clients get 403 unless ``allow_remote``; so does a ``Host`` header that is
    not a loopback name (``localhost``, ``127.0.0.1``, ``[::1]``, any port) or one of
    ``allowed_hosts``: a page whose DNS name was rebound to 127.0.0.1 cannot read traces
    through a local browser. With ``allow_remote`` and no ``allowed_hosts`` any Host
    passes (the server is reached by names we cannot know). With a ``token``, requests
    without ``Authorization: Bearer <token>`` get 401. A trace request while another snapshot is
    being written gets 429 with Retry-After rather than waiting or a corrupt file.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        allow_remote: bool = False,
        recorder: FlightRecorder | None = None,
        reason: str = REASON,
        allowed_hosts: Iterable[str] | None = None,
    ) -> None:
        self.token = token
        self.allow_remote = allow_remote
        self.allowed_hosts = (
            None if allowed_hosts is None else frozenset(h.strip().lower().rstrip(".") for h in allowed_hosts)
        )
        self.recorder = recorder
        self.reason = reason

    def check(
        self,
        client: str | None,
        authorization: str | None,
        forwarded_for: str | None = None,
        forwarded: str | None = None,
        host: str | None = None,
    ) -> Reply | None:
        """The refusal for this client, or None if it may use the endpoints.
        ``host`` is the request's Host header (None when it had none)."""
        if (not self.allow_remote or self.allowed_hosts is not None) and not host_allowed(
            host, self.allowed_hosts
        ):
            return _json(
                403, {"error": "pyflight debug endpoints answer requests for a local host name only"}
            )
        if not self.allow_remote:
            # A missing or non-IP client (a Unix socket behind a proxy, a test client's
            # placeholder) counts as remote, and so does any client a proxy reports.
            hops = [client, *_forwarded_hosts(forwarded_for, forwarded)]
            if not all(h and is_loopback(h) for h in hops):
                return _json(403, {"error": "pyflight debug endpoints answer local (loopback) clients only"})
        if self.token is not None and not token_matches(authorization, self.token):
            return _json(
                401,
                {"error": "a valid bearer token is required"},
                [("WWW-Authenticate", 'Bearer realm="pyflight"')],
            )
        return None

    def route(self, method: str, subpath: str, detail: str = "debug endpoint") -> Callable[[], Reply] | None:
        """The handler for ``subpath`` (relative to the prefix), None if it is not ours;
        ``detail`` goes into the snapshot's trigger (who asked).

        Returned as a callable so async frameworks can run the snapshot off the event loop.
        """
        subpath = subpath.rstrip("/") or "/"
        if subpath not in ("/trace", "/trace-all", "/status", "/"):
            return None
        if method != "GET":
            return lambda: _json(405, {"error": "use GET"}, [("Allow", "GET")])
        if subpath == "/trace":
            return lambda: self.trace(detail)
        if subpath == "/trace-all":
            return lambda: self.trace_all(detail)
        if subpath == "/status":
            return self.status
        return lambda: _json(200, {"endpoints": ["trace", "trace-all", "status"]})

    def trace(self, detail: str = "debug endpoint") -> Reply:
        """A fresh snapshot as a download."""
        try:
            data = snapshots.snapshot_bytes(self.recorder, reason=self.reason, detail=detail)
        except SnapshotInProgress:
            return self.busy()
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

    def trace_all(self, detail: str = "debug endpoint") -> Reply:
        """A zip of this process's snapshot and one from every recorded process below it
        (a pre-fork server's workers), ``pyflight-<pid>.pyfl`` each; ``errors.txt`` names
        those that could not answer."""
        from pyflight.triggers import workers

        pids = workers.recorded_descendants()
        try:
            own = workers.WorkerSnapshot(
                os.getpid(), data=snapshots.snapshot_bytes(self.recorder, reason=self.reason, detail=detail)
            )
        except SnapshotInProgress:
            return self.busy()
        except RecorderError as exc:
            if not pids:
                return _json(503, {"error": str(exc)})
            own = workers.WorkerSnapshot(os.getpid(), error=str(exc))  # `pyflight run --children-only`
        gathered = workers.gather(pids, timeout=WORKERS_TIMEOUT_S)
        data = workers.zip_archive([own, *gathered])
        name = snapshots.snapshot_filename(self.reason).removesuffix(".pyfl") + "-all.zip"
        return Reply(
            200,
            [
                ("Content-Type", "application/zip"),
                ("Content-Disposition", f'attachment; filename="{name}"'),
                ("Content-Length", str(len(data))),
                ("Cache-Control", "no-store"),
            ],
            data,
        )

    @staticmethod
    def busy() -> Reply:
        """429: a snapshot is being taken (retry shortly) rather than waiting or a torn file."""
        return _json(
            429,
            {"error": "a snapshot is being written; retry shortly"},
            [("Retry-After", str(RETRY_AFTER_SECONDS))],
        )

    @staticmethod
    def not_found() -> Reply:
        return _json(404, {"error": "not found"})

    def status(self) -> Reply:
        """Window, bytes held, generations, sources, data loss, snapshots taken, and the
        recorded processes below this one (``workers``: their pids)."""
        from pyflight.triggers import workers

        info = snapshots.status(self.recorder)
        pids = workers.recorded_descendants()
        if pids or info.get("enabled", True):
            info["workers"] = pids
        return _json(200, info, [("Cache-Control", "no-store")])
