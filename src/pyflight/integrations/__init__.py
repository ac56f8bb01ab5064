"""Web framework integrations: a ``pyflight.task`` per request and the debug endpoints.

``asgi`` (Starlette, FastAPI), ``wsgi`` (Flask, Django) and ``aiohttp`` each wrap every
request in ``pyflight.task("<METHOD> <route>")`` and serve ``/debug/pyflight/trace`` and
``/debug/pyflight/status``. What the endpoints answer is decided once, in
``pyflight.triggers.endpoints`` (shared with ``pyflight.serve``), so every framework
refuses, authenticates and names downloads the same way; the framework modules only
translate requests and responses. Importing this package needs no framework.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Generic, TypeVar

from pyflight.triggers.endpoints import DEFAULT_PREFIX, DebugEndpoints, Reply, subpath

if TYPE_CHECKING:
    from pyflight.recorder import FlightRecorder

__all__ = [
    "DEFAULT_PREFIX",
    "DebugEndpoints",
    "Middleware",
    "Reply",
    "normalize_route",
    "subpath",
    "task_name",
]


def task_name(method: str, route: str) -> str:
    """The user-task name of a request: ``"GET /items/{item_id}"``. A route without its
    leading slash (Django's resolver gives ``books/<int:pk>/``) gets one, so routes read
    the same whatever the framework."""
    if route and not route.startswith("/"):
        route = "/" + route
    return f"{method} {route}"


_STARLETTE_PARAM = re.compile(r"\{(\w+):[^}]*\}")  # {item_id:int}
_WERKZEUG_PARAM = re.compile(r"<(?:[^:<>]+:)?(\w+)>")  # <int:item_id>, <item_id>


def normalize_route(template: str) -> str:
    """One spelling of route parameters across frameworks: ``/items/{item_id}``.

    Task names then read the same whether the route came from FastAPI, Flask or aiohttp,
    and converters (``int``, ``path``) do not split one route into several names.
    """
    return _WERKZEUG_PARAM.sub(r"{\1}", _STARLETTE_PARAM.sub(r"{\1}", template))


App = TypeVar("App")
Resolver = TypeVar("Resolver")


class Middleware(Generic[App, Resolver]):
    """What the ASGI and WSGI middlewares are made of: the app they wrap, where and how
    they serve the endpoints (``endpoints=False``: not at all, ``prefix`` is the app's),
    and an optional route resolver (None: the framework's own, else the path)."""

    def __init__(
        self,
        app: App,
        *,
        endpoints: bool = True,
        prefix: str = DEFAULT_PREFIX,
        token: str | None = None,
        allow_remote: bool = False,
        recorder: FlightRecorder | None = None,
        route: Resolver | None = None,
        allowed_hosts: Iterable[str] | None = None,
    ) -> None:
        self.app = app
        self.prefix = prefix.rstrip("/")
        self.endpoints = (
            DebugEndpoints(
                token=token, allow_remote=allow_remote, recorder=recorder, allowed_hosts=allowed_hosts
            )
            if endpoints
            else None
        )
        self.route = route
