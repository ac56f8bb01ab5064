"""Framework integrations against the real frameworks, served by real servers on loopback.

FastAPI on uvicorn (ASGI), Flask on waitress (WSGI) and aiohttp on its own runner each get
the same app (items, a streamed body, a 418, a handler that raises) with pyflight's
integration, and the same checks: requests become user tasks named after their route, a
trace downloaded under load reads, and the endpoints refuse what they should.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pytest

import pyflight
from pyflight.core.events import Kind
from pyflight.format.reader import loads
from pyflight.integrations import DebugEndpoints, normalize_route
from webservers import Load, get, local_address, serve_aiohttp, serve_asgi, serve_wsgi, wait_until

TOKEN = "s3cret-token"
STREAM_BODY = b"".join(f"chunk{i};".encode() for i in range(5))
ITEM_PATHS = ["/items/1", "/items/22", "/items/333"]


class Framework(NamedTuple):
    app: Any
    serve: Callable[..., contextlib.AbstractContextManager[int]]


def fastapi_app() -> Any:
    pytest.importorskip("uvicorn")
    fastapi = pytest.importorskip("fastapi")
    from fastapi.responses import Response, StreamingResponse

    from pyflight.integrations.asgi import DebugApp, PyflightMiddleware

    app = fastapi.FastAPI()
    app.add_middleware(PyflightMiddleware)

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        await asyncio.sleep(0.001)
        return {"id": item_id}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> Any:
            for i in range(5):
                await asyncio.sleep(0.001)
                yield f"chunk{i};".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.get("/teapot")
    async def teapot() -> Response:
        return Response(b"short and stout", status_code=418)

    @app.get("/boom")
    async def boom() -> None:
        raise ValueError("boom")

    app.mount("/mounted/pyflight", DebugApp(token=TOKEN))
    return app


def flask_app() -> Any:
    pytest.importorskip("waitress")
    flask = pytest.importorskip("flask")
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    from pyflight.integrations.wsgi import DebugApp, PyflightWSGIMiddleware

    app = flask.Flask("pyflight_test")

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, int]:
        time.sleep(0.001)
        return {"id": item_id}

    @app.get("/stream")
    def stream() -> Any:
        def chunks() -> Iterator[bytes]:
            for i in range(5):
                time.sleep(0.001)
                yield f"chunk{i};".encode()

        return flask.Response(chunks(), mimetype="text/plain")

    @app.get("/teapot")
    def teapot() -> tuple[bytes, int]:
        return b"short and stout", 418

    @app.get("/boom")
    def boom() -> None:
        raise ValueError("boom")

    app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        PyflightWSGIMiddleware(app.wsgi_app), {"/mounted/pyflight": DebugApp(token=TOKEN)}
    )
    return app


def aiohttp_app() -> Any:
    pytest.importorskip("aiohttp")
    from aiohttp import web

    from pyflight.integrations import aiohttp as pyflight_aiohttp

    async def item(request: web.Request) -> web.Response:
        await asyncio.sleep(0.001)
        return web.json_response({"id": int(request.match_info["item_id"])})

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        for i in range(5):
            await asyncio.sleep(0.001)
            await response.write(f"chunk{i};".encode())
        await response.write_eof()
        return response

    async def teapot(request: web.Request) -> web.Response:
        return web.Response(body=b"short and stout", status=418)

    async def boom(request: web.Request) -> web.Response:
        raise ValueError("boom")

    app = web.Application()
    pyflight_aiohttp.setup(app)
    app.add_routes(pyflight_aiohttp.debug_routes(prefix="/mounted/pyflight", token=TOKEN))
    app.add_routes(
        [
            web.get("/items/{item_id}", item),
            web.get("/stream", stream),
            web.get("/teapot", teapot),
            web.get("/boom", boom),
        ]
    )
    return app


FRAMEWORKS: dict[str, Callable[[], Framework]] = {
    "fastapi-uvicorn": lambda: Framework(fastapi_app(), serve_asgi),
    "flask-waitress": lambda: Framework(flask_app(), serve_wsgi),
    "aiohttp": lambda: Framework(aiohttp_app(), serve_aiohttp),
}


@pytest.fixture(params=sorted(FRAMEWORKS))
def framework(request: pytest.FixtureRequest) -> Framework:
    return FRAMEWORKS[request.param]()


@pytest.fixture
def recorder() -> Iterator[pyflight.FlightRecorder]:
    with pyflight.FlightRecorder(min_age=5.0, max_bytes=8 * 2**20) as rec:
        yield rec


def user_task_names(data: bytes) -> set[str]:
    return {t.name for t in loads(data).user_tasks.values()}


def test_requests_are_user_tasks_in_a_trace_downloaded_under_load(
    framework: Framework, recorder: pyflight.FlightRecorder
) -> None:
    with framework.serve(framework.app) as port, Load(port, ITEM_PATHS) as load:
        before = load.done
        response = get(port, "/debug/pyflight/trace")
        status = get(port, "/debug/pyflight/status")
        wait_until(lambda: load.done > before + 5, what="more requests after the snapshot")
    assert not load.errors, load.errors[:5]
    assert response.status == 200, response
    assert response.headers["content-type"] == "application/octet-stream"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="pyflight-') and disposition.endswith('-http.pyfl"')
    trace = loads(response.body)
    names = {t.name for t in trace.user_tasks.values()}
    assert "GET /items/{item_id}" in names, names
    assert not any(name.startswith("GET /items/1") for name in names), "paths are not task names"
    begins = [
        e for e in trace.events if e.kind == Kind.USER_TASK_BEGIN and e.arg("name") == "GET /items/{item_id}"
    ]
    assert len(begins) >= 10
    assert any(e.kind == Kind.TRIGGER and e.arg("reason") == "http" for e in trace.events)
    assert status.status == 200 and status.headers["content-type"] == "application/json"
    info = json.loads(status.body)
    assert info["snapshots"] >= 1 and info["max_bytes"] == recorder.max_bytes and "sources" in info


def test_the_requests_own_behaviour_is_untouched(
    framework: Framework, recorder: pyflight.FlightRecorder
) -> None:
    with framework.serve(framework.app) as port:
        stream = get(port, "/stream")
        teapot = get(port, "/teapot")
        boom = get(port, "/boom")
        missing = get(port, "/nowhere")
        item = get(port, "/items/7")
        unknown_debug = get(port, "/debug/pyflight/nothing-here")
        names = user_task_names(get(port, "/debug/pyflight/trace").body)
    assert (stream.status, stream.body) == (200, STREAM_BODY)
    assert (teapot.status, teapot.body) == (418, b"short and stout")
    assert boom.status == 500
    assert missing.status == 404 and unknown_debug.status == 404
    assert item.status == 200 and json.loads(item.body) == {"id": 7}
    assert {"GET /stream", "GET /teapot", "GET /boom", "GET /nowhere", "GET /items/{item_id}"} <= names, names
    assert not any("debug/pyflight/trace" in n for n in names), "the endpoints are not wrapped"


def test_a_token_is_required_when_configured(framework: Framework, recorder: pyflight.FlightRecorder) -> None:
    with framework.serve(framework.app) as port:
        missing = get(port, "/mounted/pyflight/trace")
        wrong = get(port, "/mounted/pyflight/trace", {"Authorization": f"Bearer {TOKEN}x"})
        basic = get(port, "/mounted/pyflight/trace", {"Authorization": f"Basic {TOKEN}"})
        right = get(port, "/mounted/pyflight/trace", {"Authorization": f"Bearer {TOKEN}"})
        status = get(port, "/mounted/pyflight/status", {"Authorization": f"bearer {TOKEN}"})
    for refused in (missing, wrong, basic):
        assert refused.status == 401, refused
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert b"token" in refused.body
    assert right.status == 200 and right.headers["content-type"] == "application/octet-stream"
    loads(right.body)
    assert status.status == 200 and json.loads(status.body)["enabled"] is True


def test_a_concurrent_snapshot_gets_429_with_retry_after(
    framework: Framework, recorder: pyflight.FlightRecorder
) -> None:
    entered, release = threading.Event(), threading.Event()

    class Stalled(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            entered.set()
            release.wait(10)
            return len(data)

    writer = threading.Thread(target=recorder.write_to, args=(Stalled(),))
    with framework.serve(framework.app) as port:
        writer.start()
        try:
            assert entered.wait(10)
            busy = get(port, "/debug/pyflight/trace")
        finally:
            release.set()
            writer.join(10)
        after = get(port, "/debug/pyflight/trace")
    assert busy.status == 429, busy
    assert busy.headers["retry-after"] == "1"
    assert after.status == 200
    loads(after.body)


def test_remote_clients_are_refused_by_default(
    framework: Framework, recorder: pyflight.FlightRecorder
) -> None:
    address = local_address()
    with framework.serve(framework.app, host="0.0.0.0") as port:
        proxied = get(port, "/debug/pyflight/status", {"X-Forwarded-For": "203.0.113.7"})
        local = get(port, "/debug/pyflight/status")
        remote = get(port, "/debug/pyflight/trace", host=address) if address else None
        remote_app = get(port, "/items/5", host=address) if address else None
    assert proxied.status == 403 and b"loopback" in proxied.body
    assert local.status == 200
    if remote is None or remote_app is None:
        pytest.skip("no non-loopback address on this machine")
    assert remote.status == 403, remote
    assert remote_app.status == 200, "only the endpoints are refused"


def test_a_foreign_host_header_is_refused(framework: Framework, recorder: pyflight.FlightRecorder) -> None:
    """DNS rebinding: loopback peer, but the browser thinks it talks to evil.example."""
    with framework.serve(framework.app) as port:
        rebound = get(port, "/debug/pyflight/trace", {"Host": "evil.example"})
        local = get(port, "/debug/pyflight/status", {"Host": f"localhost:{port}"})
        app = get(port, "/items/5", {"Host": "evil.example"})
    assert rebound.status == 403 and b"host name" in rebound.body, rebound
    assert local.status == 200, local
    assert app.status == 200, "only the endpoints check the Host"


def test_endpoint_rules() -> None:
    endpoints = DebugEndpoints()
    for local in ("127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"):
        assert endpoints.check(local, None) is None, local
    for remote in (None, "", "testclient", "10.1.2.3", "192.0.2.2", "::ffff:10.0.0.1"):
        refused = endpoints.check(remote, None)
        assert refused is not None and refused.status == 403, remote
    via_proxy = endpoints.check("127.0.0.1", None, forwarded='for="[2001:db8::1]:4711";proto=https')
    assert via_proxy is not None and via_proxy.status == 403
    assert endpoints.check("127.0.0.1", None, forwarded="for=127.0.0.1:99") is None
    rebound = endpoints.check("127.0.0.1", None, host="evil.example:80")
    assert rebound is not None and rebound.status == 403
    named = DebugEndpoints(allowed_hosts=["Debug.Internal"])
    assert named.check("127.0.0.1", None, host="debug.internal:443") is None
    remote_ok = DebugEndpoints(allow_remote=True, token="t")
    assert remote_ok.check("10.1.2.3", "Bearer t") is None
    unauthorized = remote_ok.check("10.1.2.3", "Bearer nope")
    assert unauthorized is not None and unauthorized.status == 401
    post = endpoints.route("POST", "/trace")
    assert post is not None and post().status == 405
    assert endpoints.route("GET", "/elsewhere") is None
    assert normalize_route("/a/<int:item_id>/<path:rest>/<name>") == "/a/{item_id}/{rest}/{name}"
    assert normalize_route("/a/{item_id:int}/{rest:path}/{x}") == "/a/{item_id}/{rest}/{x}"


def test_endpoints_without_a_recorder_say_so(framework: Framework) -> None:
    with framework.serve(framework.app) as port:
        trace = get(port, "/debug/pyflight/trace")
        status = get(port, "/debug/pyflight/status")
        item = get(port, "/items/3")
    assert trace.status == 503 and b"no FlightRecorder" in trace.body
    assert status.status == 200 and json.loads(status.body) == {"enabled": False}
    assert item.status == 200


def test_integrations_import_without_any_framework(subprocess_env: dict[str, str]) -> None:
    blocked = ["fastapi", "starlette", "uvicorn", "flask", "werkzeug", "waitress", "aiohttp", "httpx"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import pyflight, pyflight.integrations, pyflight.integrations.asgi, pyflight.integrations.wsgi\n"
        "import pyflight.triggers.auto, pyflight.demo\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env, timeout=60
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
