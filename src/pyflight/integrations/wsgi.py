"""WSGI integration (Flask, Django, any WSGI server): a middleware and a mountable app.

::

    app = Flask(__name__)
    app.wsgi_app = PyflightWSGIMiddleware(app.wsgi_app)   # a task per request + /debug/pyflight/*

    # Django (wsgi.py); the route template comes from Django's resolver:
    from django.urls import resolve
    application = PyflightWSGIMiddleware(
        get_wsgi_application(), route=lambda environ: resolve(environ["PATH_INFO"]).route
    )

    # only the endpoints, e.g. with werkzeug's DispatcherMiddleware:
    DispatcherMiddleware(app.wsgi_app, {"/debug/pyflight": DebugApp()})

The task spans the whole response: it begins before the app is called and ends when the
server closes the response iterable, so a streamed body is inside it. The response is
passed on as it is (same iterable semantics, ``len()`` kept for single-chunk lists, a
``wsgi.file_wrapper`` response left unwrapped so the server can still sendfile it).
"""

from __future__ import annotations

import http
import time
from collections.abc import Callable, Iterable, Iterator
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

__all__ = ["DebugApp", "PyflightWSGIMiddleware", "werkzeug_route"]

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
RouteResolver = Callable[[Environ], "str | None"]


def werkzeug_route(environ: Environ, app: Any) -> str | None:
    """The rule a Flask (werkzeug) app will route ``environ`` to, or None.

    ``app`` is the Flask app or its bound ``wsgi_app`` method.
    """
    flask_app = app if hasattr(app, "url_map") else getattr(app, "__self__", None)
    url_map = getattr(flask_app, "url_map", None)
    if url_map is None:
        return None
    try:
        config = getattr(flask_app, "config", {})
        adapter = url_map.bind_to_environ(environ, server_name=config.get("SERVER_NAME"))
        rule, _ = adapter.match(return_rule=True)
    except Exception:  # NotFound, MethodNotAllowed, redirects: the path will do
        return None
    return normalize_route(str(rule.rule))


def _serve(
    endpoints: DebugEndpoints, environ: Environ, start_response: StartResponse, sub: str
) -> list[bytes] | None:
    handler = endpoints.route(environ.get("REQUEST_METHOD", "GET"), sub)
    if handler is None:
        return None
    reply = (
        endpoints.check(
            environ.get("REMOTE_ADDR"),
            environ.get("HTTP_AUTHORIZATION"),
            environ.get("HTTP_X_FORWARDED_FOR"),
            environ.get("HTTP_FORWARDED"),
            environ.get("HTTP_HOST"),
        )
        or handler()
    )
    start_response(f"{reply.status} {http.HTTPStatus(reply.status).phrase}", reply.headers)
    return [reply.body]


class _Body:
    """The app's response iterable, ending the request's task when the server closes it."""

    def __init__(self, result: Iterable[bytes], done: Callable[[BaseException | None], None]) -> None:
        self._result = result
        self._done: Callable[[BaseException | None], None] | None = done
        self._error: BaseException | None = None

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._result
        except BaseException as exc:
            self._error = exc
            raise

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            done, self._done = self._done, None
            if done is not None:
                done(self._error)
            self._error = None


class _SizedBody(_Body):
    """Same, for results with a length (servers use ``len() == 1`` to set Content-Length)."""

    def __len__(self) -> int:
        return len(self._result)  # type: ignore[arg-type]


class PyflightWSGIMiddleware(Middleware[WSGIApp, RouteResolver]):
    """Wraps every request in a ``pyflight.task`` and serves the debug endpoints.

    ``endpoints=False`` leaves ``prefix`` to the app. ``route`` overrides how the route
    template is found (return None to use the path); by default a Flask app's URL map is
    used. Requests are timed for the slow-request trigger and a handler's exception (one
    the framework let through) is reported to the exception trigger when one is installed.
    """

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path: str = environ.get("PATH_INFO", "")
        if self.endpoints is not None:
            sub = subpath(path, self.prefix)
            if sub is not None:
                served = _serve(self.endpoints, environ, start_response, sub)
                if served is not None:
                    return served
        template = self.route(environ) if self.route is not None else werkzeug_route(environ, self.app)
        name = task_name(environ.get("REQUEST_METHOD", "GET"), template or path)
        span = task(name)
        started = time.perf_counter()
        span.__enter__()

        def done(error: BaseException | None) -> None:
            span.__exit__(None, None, None)
            if auto._installed:
                auto.request_finished(name, time.perf_counter() - started, error)

        try:
            result = self.app(environ, start_response)
        except BaseException as exc:
            done(exc)
            raise
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(result, file_wrapper):
            done(None)  # the server sends the file; wrapping would cost it sendfile
            return result
        return (_SizedBody if hasattr(result, "__len__") else _Body)(result, done)


class DebugApp:
    """The debug endpoints as a WSGI app of their own: ``/trace`` and ``/status``."""

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

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        served = _serve(self.endpoints, environ, start_response, environ.get("PATH_INFO", "") or "/")
        if served is not None:
            return served
        body = b'{"error": "not found"}\n'
        start_response(
            "404 Not Found", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return [body]
