"""The web services bench_services.py measures: the same three endpoints on each framework.

``/json`` returns a small JSON document, ``/sleep`` waits 1 ms (an await, or a blocking
sleep on the threaded servers), ``/cpu`` computes for ~50 us: a mix like a real service's.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

CPU_LOOP = 2000


def _cpu() -> int:
    return sum(i * i for i in range(CPU_LOOP))


def _document() -> dict[str, Any]:
    return {"status": "ok", "items": [{"id": i, "name": f"item-{i}"} for i in range(10)]}


def make_fastapi() -> Any:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/json")
    async def json_endpoint() -> dict[str, Any]:
        return _document()

    @app.get("/sleep")
    async def sleep_endpoint() -> dict[str, str]:
        await asyncio.sleep(0.001)
        return {"slept": "1ms"}

    @app.get("/cpu")
    async def cpu_endpoint() -> dict[str, int]:
        return {"sum": _cpu()}

    return app


def make_flask() -> Any:
    from flask import Flask, jsonify

    app = Flask("bench")

    @app.get("/json")
    def json_endpoint() -> Any:
        return jsonify(_document())

    @app.get("/sleep")
    def sleep_endpoint() -> Any:
        time.sleep(0.001)
        return jsonify(slept="1ms")

    @app.get("/cpu")
    def cpu_endpoint() -> Any:
        return jsonify(sum=_cpu())

    return app


def make_aiohttp(argv: list[str] | None = None) -> Any:
    """Entry point for ``python -m aiohttp.web _service_apps:make_aiohttp`` (the others are
    factories too: ``uvicorn --factory``, ``waitress --call``, gunicorn ``make_flask()``)."""
    from aiohttp import web

    async def json_endpoint(request: web.Request) -> web.Response:
        return web.json_response(_document())

    async def sleep_endpoint(request: web.Request) -> web.Response:
        await asyncio.sleep(0.001)
        return web.json_response({"slept": "1ms"})

    async def cpu_endpoint(request: web.Request) -> web.Response:
        return web.json_response({"sum": _cpu()})

    app = web.Application()
    app.router.add_get("/json", json_endpoint)
    app.router.add_get("/sleep", sleep_endpoint)
    app.router.add_get("/cpu", cpu_endpoint)
    return app
