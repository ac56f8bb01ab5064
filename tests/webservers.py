"""Real servers on loopback for the integration and trigger tests, plus a threaded client.

Each ``serve_*`` context manager binds a fresh socket (port 0), runs the server on its
own thread and yields the port; leaving the block shuts the server down and joins it.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple


class Response(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


def get(
    port: int, path: str, headers: dict[str, str] | None = None, host: str = "127.0.0.1", method: str = "GET"
) -> Response:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def _listener(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)
    return sock


def wait_until(check: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.01)


@contextlib.contextmanager
def serve_asgi(app: Any, host: str = "127.0.0.1") -> Iterator[int]:
    """Serve an ASGI app with uvicorn (asyncio loop) on its own thread."""
    import uvicorn

    sock = _listener(host)
    config = uvicorn.Config(app, loop="asyncio", log_level="critical", lifespan="auto", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, what="uvicorn to start")
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


@contextlib.contextmanager
def serve_wsgi(app: Any, host: str = "127.0.0.1") -> Iterator[int]:
    """Serve a WSGI app with waitress on its own thread."""
    from waitress import wasyncore
    from waitress.server import create_server

    server: Any = create_server(app, host=host, port=0, threads=6, clear_untrusted_proxy_headers=False)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            wasyncore.loop(timeout=0.05, map=server._map, count=1)
        server.task_dispatcher.shutdown()
        wasyncore.close_all(server._map)

    thread = threading.Thread(target=run, name="waitress", daemon=True)
    thread.start()
    try:
        yield int(server.effective_port)
    finally:
        stop.set()
        thread.join(timeout=15)
        assert not thread.is_alive(), "waitress did not stop"


@contextlib.contextmanager
def serve_aiohttp(app: Any, host: str = "127.0.0.1") -> Iterator[int]:
    """Serve an aiohttp app with its own AppRunner on an event loop in a thread."""
    from aiohttp import web

    sock = _listener(host)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)

    async def start() -> None:
        await runner.setup()
        await web.SockSite(runner, sock).start()

    thread = threading.Thread(target=loop.run_forever, name="aiohttp", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(start(), loop).result(15)
        yield sock.getsockname()[1]
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=15)
        loop.close()
        sock.close()


class Load:
    """Client threads requesting ``paths`` in turn (keep-alive) until stopped."""

    def __init__(self, port: int, paths: Sequence[str], threads: int = 4) -> None:
        self.port = port
        self.paths = list(paths)
        self.done = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"load-{i}") for i in range(threads)
        ]

    def _run(self, index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        i = index
        try:
            while not self._stop.is_set():
                path = self.paths[i % len(self.paths)]
                i += 1
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                with self._lock:
                    if resp.status != 200:
                        self.errors.append(f"{path}: {resp.status}")
                    self.done += 1
        except Exception as exc:
            self.errors.append(repr(exc))
        finally:
            conn.close()

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        wait_until(lambda: self.done >= 20 or bool(self.errors), what="the first requests")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)


def local_address() -> str | None:
    """An address of this machine that is not loopback, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET: nothing is sent
            address = str(s.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address
