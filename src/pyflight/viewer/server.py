"""The HTTP server of ``pyflight view``: the interactive timeline and the report, read-only.

Routes: ``/`` the timeline page (``static/index.html``; the report when there is no
timeline API), ``/static/<file>`` its script and style (shipped in the package),
``/api/<query>`` the timeline's JSON (:mod:`pyflight.viewer.api`), ``/report`` the HTML
report, ``/report.json`` the JSON report, ``/trace.pyfl`` the trace file (a download);
anything else is 404, any method but GET and HEAD is 405. Every response says
``Cache-Control: no-store`` and ``X-Content-Type-Options: nosniff`` and carries a
Content-Security-Policy: the report's allows no script and no fetch (inline CSS and SVG
only); the timeline's allows only the server's own script, style and JSON (``'self'``),
no inline script, no frame, nothing from elsewhere.

The server answers as soon as the trace is read: the analysis runs in a background
thread meanwhile, in two steps. Until the model and the timeline's rows are built
``/api/meta`` answers ``{"loading": fraction}`` (the page shows the progress and asks
again) and the other ``/api/`` routes answer 503; then the timeline is served while the
rules run, ``/api/findings`` answering ``{"loading": true}`` (or ``{"error": ...}``) until
they are done, and ``/report`` and ``/report.json`` waiting for them (the HTML report is
rendered on its first request, not before).

Bound to a loopback address, the server answers only requests whose ``Host`` is a
loopback name or address, so a web page the user visits cannot read the trace through
a DNS name that it points at 127.0.0.1 (DNS rebinding).
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote

from pyflight._netcheck import host_header_name, is_loopback_name

if TYPE_CHECKING:
    from pyflight.report import Report
    from pyflight.viewer.api import TimelineApi

__all__ = ["CSP", "TIMELINE_CSP", "Content", "ViewerServer", "is_loopback"]

CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
TIMELINE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
STATIC_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "viewer.css": "text/css; charset=utf-8",
}


class Content:
    """What the server hands out: the trace file at once, the timeline when the model is
    built, the findings and reports when the rules are done.

    The command reads the trace, starts the server, then analyses in a background thread:
    it hands over the timeline with :meth:`set_timeline` (the page draws from then on),
    then the whole report with :meth:`set_analysis` (or :meth:`set_error` at any point);
    ``progress`` (0..1) says how far the model got meanwhile. The HTML and JSON reports
    are rendered on their first request and kept."""

    def __init__(self, trace: bytes, trace_name: str) -> None:
        self.trace = trace
        self.trace_name = trace_name  # the file's base name, for Content-Disposition
        self.progress = 0.0
        self.error: str | None = None
        self.api: TimelineApi | None = None
        self._report: Report | None = None
        self._pages: dict[str, bytes] = {}
        self._done = threading.Event()
        self._render_lock = threading.Lock()
        #: set once the page has its first slices, or someone asks for the report: the
        #: rules wait for it, so they do not share the GIL with the first draw (a little
        #: while if no page asks, as long as it takes once one has: ``first_view_asked``)
        self.first_view = threading.Event()
        self.first_view_asked = threading.Event()

    def set_timeline(self, api: TimelineApi) -> None:
        self.api, self.progress = api, 1.0

    def set_analysis(self, report: Report) -> None:
        if self.api is not None:
            self.api.set_findings(report.findings)
        self._report = report
        self._done.set()

    def set_error(self, message: str) -> None:
        self.error = message
        self._done.set()

    @property
    def ready(self) -> bool:
        """The whole analysis is there (the timeline may be served before)."""
        return self._done.is_set() and self.error is None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the analysis; True once it is there (False: failed or timed out)."""
        return self._done.wait(timeout) and self.error is None

    def page(self, kind: str) -> bytes:
        """The report as ``html`` or ``json``, rendered once (waits for the analysis)."""
        self.first_view.set()  # nobody waits for a first draw: the rules can start
        if not self.wait() or self._report is None:
            raise RuntimeError(self.error or "no analysis")
        with self._render_lock:
            page = self._pages.get(kind)
            if page is None:
                if kind == "html":
                    from pyflight.report.html import render

                    page = render(self._report).encode("utf-8", "replace")
                else:
                    from pyflight.report.json_report import dumps

                    page = dumps(self._report).encode("utf-8", "replace")
                self._pages[kind] = page
            return page


def _static(name: str) -> bytes:
    return resources.files("pyflight.viewer").joinpath("static", name).read_bytes()


class _BadQuery(ValueError):
    pass


def _int(query: dict[str, list[str]], name: str, default: int | None = None) -> int:
    values = query.get(name)
    if not values:
        if default is None:
            raise _BadQuery(f"missing {name}")
        return default
    try:
        return int(float(values[0]))
    except ValueError:
        raise _BadQuery(f"bad {name}") from None


def _ints(query: dict[str, list[str]], name: str) -> list[int]:
    text = (query.get(name) or [""])[0]
    try:
        return [int(part) for part in text.split(",") if part]
    except ValueError:
        raise _BadQuery(f"bad {name}") from None


def api_answer(api: TimelineApi, route: str, query: dict[str, list[str]]) -> Any:
    """The JSON-able answer of ``/api/<route>?query``; KeyError for an unknown route."""
    if route == "meta":
        return api.meta()
    if route == "slices":
        return api.slices(_int(query, "t0"), _int(query, "t1"), _int(query, "w"), _ints(query, "rows"))
    if route == "slice":
        return api.slice_details(_int(query, "row"), _int(query, "i"))
    if route == "range":
        return api.range_summary(_int(query, "t0"), _int(query, "t1"), _ints(query, "rows") or None)
    if route == "search":
        return api.search((query.get("q") or [""])[0])
    if route == "findings":
        return api.findings()
    if route == "histograms":
        return api.histograms()
    raise KeyError(route)


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1); the check every local
    server of pyflight shares (:mod:`pyflight._netcheck`), kept here by its old name."""
    return is_loopback_name(host)


def _attachment(name: str) -> str:
    """A Content-Disposition that names the file: an ASCII fallback, and the real name
    percent-encoded (a file name may hold quotes, newlines or undecodable bytes)."""
    fallback = re.sub(r"[^A-Za-z0-9._-]", "_", name) or "trace.pyfl"
    encoded = quote(name.encode("utf-8", "surrogateescape"), safe="")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


class _Handler(BaseHTTPRequestHandler):
    server: ViewerServer
    server_version = "pyflight-view"
    sys_version = ""
    timeout = 60  # a client that stops talking releases its thread

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def __getattr__(self, name: str) -> Callable[[], None]:
        # BaseHTTPRequestHandler looks up do_<METHOD>: every other method gets a 405
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self) -> None:
        self._send(405, b"method not allowed\n", "text/plain; charset=utf-8", {"Allow": "GET, HEAD"})

    def _answer(self, body: bool) -> None:
        host = self.headers.get("Host")
        if self.server.loopback_only and host is not None and not is_loopback_name(host_header_name(host)):
            self._send(403, b"forbidden host\n", "text/plain; charset=utf-8", body=body)
            return
        content = self.server.content
        path, _, query = self.path.split("#", 1)[0].partition("?")
        self.csp = CSP
        if path == "/" or path.startswith(("/static/", "/api/")):
            self.csp = TIMELINE_CSP
            self._timeline(content, path, query, body)
        elif path in ("/report", "/report.json"):
            try:
                page = content.page("html" if path == "/report" else "json")
            except Exception as exc:  # no analysis, or the report cannot be rendered: say so
                message = f"cannot render the report: {type(exc).__name__}: {exc}\n"
                self._send(500, message.encode("utf-8", "replace"), "text/plain; charset=utf-8", body=body)
                return
            kind = "text/html; charset=utf-8" if path == "/report" else "application/json"
            self._send(200, page, kind, body=body)
        elif path == "/trace.pyfl":
            headers = {"Content-Disposition": _attachment(content.trace_name)}
            self._send(200, content.trace, "application/octet-stream", headers, body=body)
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8", body=body)

    def _timeline(self, content: Content, path: str, query: str, body: bool) -> None:
        if path == "/":
            path = "/static/index.html"
        if path.startswith("/static/"):
            name = path[len("/static/") :]
            kind = STATIC_TYPES.get(name)
            if kind is None:
                self._send(404, b"not found\n", "text/plain; charset=utf-8", body=body)
            else:
                self._send(200, _static(name), kind, body=body)
            return
        api = content.api
        if api is None:  # still analysing (or failed): say how far, ask again later
            if path == "/api/meta":
                answer: Any = {"error": content.error} if content.error else {"loading": content.progress}
                self._send(200, json.dumps(answer).encode("ascii"), "application/json", body=body)
            else:
                self._send(503, b"analysing\n", "text/plain; charset=utf-8", {"Retry-After": "1"}, body=body)
            return
        if path == "/api/findings" and content.error and api.findings_list is None:
            # the timeline is there but the rules failed: say so instead of "loading"
            failed = json.dumps({"error": content.error}).encode("ascii")
            self._send(200, failed, "application/json", body=body)
            return
        if path != "/api/slices":
            self._api(api, path, query, body)
            return
        content.first_view_asked.set()
        try:
            self._api(api, path, query, body)
        finally:  # answered or not, the rules need not wait any more
            content.first_view.set()

    def _api(self, api: TimelineApi, path: str, query: str, body: bool) -> None:
        try:
            answer = api_answer(api, path[len("/api/") :], parse_qs(query))
        except KeyError:
            self._send(404, b"not found\n", "text/plain; charset=utf-8", body=body)
            return
        except _BadQuery as exc:
            self._send(400, f"{exc}\n".encode(), "text/plain; charset=utf-8", body=body)
            return
        payload = json.dumps(answer, separators=(",", ":"), ensure_ascii=True).encode("ascii")
        self._send(200, payload, "application/json", body=body)

    def _send(
        self,
        status: int,
        payload: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
        body: bool = True,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def end_headers(self) -> None:
        # every response, error pages of the base class included
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", getattr(self, "csp", CSP))
        self.send_header("Referrer-Policy", "no-referrer")
        super().end_headers()

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: object) -> None:
        pass  # no access log


class ViewerServer(ThreadingHTTPServer):
    """Serves ``content`` on ``(host, port)`` (port 0: a free one); binds on creation."""

    daemon_threads = True
    analysis_failed = False  # set (and the server shut down) when the trace cannot be analysed

    def __init__(self, host: str, port: int, content: Content) -> None:
        self.content = content
        self.loopback_only = is_loopback(host)
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, host: str | None = None) -> str:
        """``http://HOST:PORT/`` (the bound host unless another is given)."""
        name = str(host or self.server_address[0])
        return f"http://[{name}]:{self.port}/" if ":" in name else f"http://{name}:{self.port}/"

    def handle_error(self, request: object, client_address: object) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            return  # the client went away
        sys.stderr.write(f"pyflight view: error answering a request: {type(error).__name__}: {error}\n")
