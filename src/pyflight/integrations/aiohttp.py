"""aiohttp integration: a middleware and the debug routes.

::

    app = web.Application()
    pyflight.integrations.aiohttp.setup(app)      # both of these:
    # app.middlewares.append(middleware())        #   a pyflight.task per request
    # app.add_routes(debug_routes())              #   /debug/pyflight/trace and /status

aiohttp routes before middlewares run, so the task is named after the matched resource
(``GET /items/{item_id}``), or the path when nothing matched. Handlers' responses and
exceptions (``web.HTTPException`` included) pass through untouched.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from pyflight.annotate import task
from pyflight.integrations import DEFAULT_PREFIX, DebugEndpoints, normalize_route, subpath, task_name
from pyflight.recorder import FlightRecorder
from pyflight.triggers import auto

__all__ = ["debug_routes", "middleware", "setup"]


def middleware(*, prefix: str = DEFAULT_PREFIX) -> Middleware:
    """A middleware wrapping every request except the debug endpoints in a ``pyflight.task``."""
    prefix = prefix.rstrip("/")

    @web.middleware
    async def pyflight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if subpath(request.path, prefix) is not None:
            return await handler(request)
        resource = request.match_info.route.resource
        template = normalize_route(resource.canonical) if resource is not None else request.path
        name = task_name(request.method, template)
        auto.watch_running_loop()
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            with task(name):
                return await handler(request)
        except web.HTTPException as exc:  # aiohttp's way of answering 404, redirects, ...
            error = exc if exc.status >= 500 else None
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            if auto._installed:
                auto.request_finished(name, time.perf_counter() - started, error)
            error = None  # no frame <-> traceback cycle

    return pyflight_middleware


def debug_routes(
    *,
    prefix: str = DEFAULT_PREFIX,
    token: str | None = None,
    allow_remote: bool = False,
    recorder: FlightRecorder | None = None,
    allowed_hosts: Iterable[str] | None = None,
) -> list[web.RouteDef]:
    """``GET <prefix>/trace`` and ``GET <prefix>/status``, for ``app.add_routes``."""
    prefix = prefix.rstrip("/")
    endpoints = DebugEndpoints(
        token=token, allow_remote=allow_remote, recorder=recorder, allowed_hosts=allowed_hosts
    )

    async def serve(request: web.Request) -> web.StreamResponse:
        handler = endpoints.route(request.method, subpath(request.path, prefix) or "/")
        assert handler is not None  # only our paths are routed here
        headers = request.headers
        reply = endpoints.check(
            request.remote,
            headers.get("Authorization"),
            headers.get("X-Forwarded-For"),
            headers.get("Forwarded"),
            headers.get("Host"),
        )
        if reply is None:
            # A snapshot takes milliseconds to tens of them: not on the loop it is recording.
            reply = await asyncio.get_running_loop().run_in_executor(None, handler)
        kept = [(k, v) for k, v in reply.headers if k.lower() != "content-length"]  # aiohttp sets it
        return web.Response(status=reply.status, headers=kept, body=reply.body)

    return [
        web.get(f"{prefix}/trace", serve, allow_head=False),
        web.get(f"{prefix}/status", serve, allow_head=False),
    ]


def setup(
    app: web.Application,
    *,
    prefix: str = DEFAULT_PREFIX,
    token: str | None = None,
    allow_remote: bool = False,
    recorder: FlightRecorder | None = None,
    allowed_hosts: Iterable[str] | None = None,
) -> None:
    """Add the middleware and the debug routes to ``app``."""
    app.middlewares.append(middleware(prefix=prefix))
    app.add_routes(
        debug_routes(
            prefix=prefix,
            token=token,
            allow_remote=allow_remote,
            recorder=recorder,
            allowed_hosts=allowed_hosts,
        )
    )
