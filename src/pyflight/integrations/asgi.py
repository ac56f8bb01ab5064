"""ASGI integration (Starlette, FastAPI, any ASGI server): a middleware and a mountable app.

::

    app = FastAPI()
    app.add_middleware(PyflightMiddleware)   # a pyflight.task per request + /debug/pyflight/*
    # or only the endpoints, wherever you like:
    app.mount("/debug/pyflight", DebugApp(token=os.environ["PYFLIGHT_TOKEN"]))

Each request runs inside ``pyflight.task("GET /items/{item_id}")``: the route template is
found before the request runs (task names are recorded when the task begins) by matching
the Starlette router the same way it will route, and is the raw path for other apps. The
request itself is passed through untouched: same ``receive``/``send``, streaming and
exceptions included. Snapshots for ``/trace`` are taken off the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from pyflight.annotate import task
from pyflight.integrations import (
    DebugEndpoints,
    Middleware,
    normalize_route,
    subpath,
    task_name,
)
from pyflight.recorder import FlightRecorder
from pyflight.triggers import auto

__all__ = ["DebugApp", "PyflightMiddleware", "starlette_route"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
RouteResolver = Callable[[Scope], "str | None"]


def starlette_route(scope: Scope, app: Any = None) -> str | None:
    """The route template a Starlette/FastAPI app will route ``scope`` to, or None.

    Looks for the router on ``scope["app"]`` (set by Starlette before its middleware
    runs) or on ``app``; mounts are followed, so ``/api`` + ``/items/{item_id}`` gives
    ``/api/items/{item_id}``.
    """
    for owner in (scope.get("app"), app):
        routes = getattr(getattr(owner, "router", owner), "routes", None)
        if routes is not None:
            found = _match(routes, scope)
            if found is not None:
                return normalize_route(found)
    return None


def _match(routes: Iterable[Any], scope: Scope) -> str | None:
    partial: str | None = None
    for route in routes:
        try:
            match, child = route.matches(scope)
        except Exception:  # a custom route that cannot match this scope
            continue
        kind = getattr(match, "name", "NONE")
        if kind == "NONE":
            continue
        path = getattr(route, "path", "")
        inner_routes = getattr(route, "routes", None)
        if inner_routes is not None and not hasattr(route, "endpoint"):  # Mount, Host
            if kind != "FULL":
                continue
            inner = _match(inner_routes, {**scope, **child})
            return path + (inner if inner is not None else "/{path}")
        if kind == "FULL":
            return str(path)
        partial = partial or str(path)  # e.g. the right path with another method: 405
    return partial


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or ()}


async def _serve(endpoints: DebugEndpoints, scope: Scope, send: Send, sub: str) -> bool:
    """Answer a debug endpoint request; False if ``sub`` is not one of ours."""
    handler = endpoints.route(scope.get("method", "GET"), sub)
    if handler is None:
        return False
    headers = _headers(scope)
    client = scope.get("client")
    reply = endpoints.check(
        client[0] if client else None,
        headers.get("authorization"),
        headers.get("x-forwarded-for"),
        headers.get("forwarded"),
        headers.get("host"),
    )
    if reply is None:
        # A snapshot takes milliseconds to tens of them: not on the loop it is recording.
        reply = await asyncio.get_running_loop().run_in_executor(None, handler)
    await send(
        {
            "type": "http.response.start",
            "status": reply.status,
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers],
        }
    )
    await send({"type": "http.response.body", "body": reply.body})
    return True


class PyflightMiddleware(Middleware[ASGIApp, RouteResolver]):
    """Wraps every HTTP/WebSocket request in a ``pyflight.task`` and serves the endpoints.

    ``endpoints=False`` leaves ``prefix`` to the app. ``route`` overrides how the route
    template is found (return None to use the path). Requests are timed for the
    slow-request trigger and a handler's exception is reported to the exception trigger
    (``pyflight.triggers.auto``) when one is installed.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":  # lifespan and extensions
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        if kind == "http" and self.endpoints is not None:
            sub = subpath(path, self.prefix)
            if sub is not None and await _serve(self.endpoints, scope, send, sub):
                return
        template = self.route(scope) if self.route is not None else starlette_route(scope, self.app)
        name = task_name(scope.get("method", "WEBSOCKET"), template or path)
        auto.watch_running_loop()
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            with task(name):
                await self.app(scope, receive, send)
        except BaseException as exc:
            error = exc
            raise
        finally:
            if kind == "http" and auto._installed:  # a WebSocket is long by nature: not timed
                auto.request_finished(name, time.perf_counter() - started, error)
            error = None  # no frame <-> traceback cycle


class DebugApp:
    """The debug endpoints as an ASGI app of their own: ``/trace`` and ``/status``.

    Mount it (``app.mount("/debug/pyflight", DebugApp())``) or serve it on its own port.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        allow_remote: bool = False,
        recorder: FlightRecorder | None = None,
        allowed_hosts: Iterable[str] | None = None,
    ) -> None:
        self.endpoints = DebugEndpoints(
            token=token, allow_remote=allow_remote, recorder=recorder, allowed_hosts=allowed_hosts
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if kind != "http":
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        path: str = scope.get("path", "")
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):  # Starlette mounts keep the full path
            path = path[len(root) :]
        if not await _serve(self.endpoints, scope, send, path or "/"):
            body = b'{"error": "not found"}\n'
            await send(
                {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", b"%d" % len(body)),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
