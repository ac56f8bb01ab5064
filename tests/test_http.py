"""The debug HTTP endpoint, served on loopback by the tests themselves."""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pyflight
from pyflight.core.events import Kind
from pyflight.format.reader import loads
from pyflight.triggers.http import STATUS_PATH, TRACE_PATH, DebugServer, is_loopback, token_matches


@pytest.fixture
def recorder() -> Iterator[pyflight.FlightRecorder]:
    rec = pyflight.FlightRecorder(min_age=5, max_bytes=2**20).start()
    try:
        yield rec
    finally:
        rec.stop()


@pytest.fixture
def server(recorder: pyflight.FlightRecorder) -> Iterator[DebugServer]:
    srv = pyflight.serve()
    try:
        yield srv
    finally:
        srv.close()


def _get(
    port: int,
    path: str,
    *,
    method: str = "GET",
    host: str = "127.0.0.1",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_trace_download_is_a_fresh_readable_snapshot(server: DebugServer, tmp_path: Path) -> None:
    assert server.url == f"http://127.0.0.1:{server.port}"
    with pyflight.task("before the request"):
        pyflight.log("test", "recorded before the download")
    status, headers, body = _get(server.port, TRACE_PATH)
    assert status == 200
    assert headers["content-type"] == "application/octet-stream"
    assert int(headers["content-length"]) == len(body)
    match = re.fullmatch(
        r'attachment; filename="(pyflight-\d{8}T\d{6}\.\d{3}Z-\d+-http\.pyfl)"',
        headers["content-disposition"],
    )
    assert match, headers["content-disposition"]
    path = tmp_path / match.group(1)
    path.write_bytes(body)
    trace = pyflight.load(path)
    assert trace.meta["reason"] == "http"
    messages = [e.arg("message") for e in trace.events if e.kind == Kind.LOG]
    assert "recorded before the download" in messages
    triggers = [e for e in trace.events if e.kind == Kind.TRIGGER]
    assert triggers and triggers[-1].arg("reason") == "http"


def test_status_json(server: DebugServer, recorder: pyflight.FlightRecorder) -> None:
    status, headers, body = _get(server.port, STATUS_PATH + "?verbose=1")
    assert status == 200 and headers["content-type"] == "application/json"
    info = json.loads(body)
    for field in (
        "enabled",
        "min_age",
        "max_bytes",
        "generations",
        "ring_bytes",
        "dropped_events",
        "snapshots",
    ):
        assert field in info, field
    assert info["enabled"] is True and info["min_age"] == 5.0 and info["max_bytes"] == 2**20
    assert isinstance(info["sources"], dict) and info["sources"]
    before = info["snapshots"]
    _get(server.port, TRACE_PATH)
    assert json.loads(_get(server.port, STATUS_PATH)[2])["snapshots"] == before + 1


def test_one_snapshot_at_a_time(
    server: DebugServer, recorder: pyflight.FlightRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = threading.Event(), threading.Event()
    real_write = recorder.write_to

    def slow_write(target: Any, *, reason: str = "api") -> int:
        entered.set()
        assert release.wait(30)
        return real_write(target, reason=reason)

    monkeypatch.setattr(recorder, "write_to", slow_write)
    first: list[tuple[int, dict[str, str], bytes]] = []
    thread = threading.Thread(target=lambda: first.append(_get(server.port, TRACE_PATH)))
    thread.start()
    try:
        assert entered.wait(30)
        for _ in range(3):
            status, headers, body = _get(server.port, TRACE_PATH)
            assert status == 429
            assert headers["retry-after"] == "1"
            assert b"Traceback" not in body
        assert _get(server.port, STATUS_PATH)[0] == 200  # status is not held up
    finally:
        release.set()
        thread.join(30)
    (status, _headers, body) = first[0]
    assert status == 200
    assert loads(body).meta["reason"] == "http"
    # free again: the server lets go of its one snapshot just after the last byte is sent,
    # so a request right behind it may still get 429 (with Retry-After) for a moment
    deadline = time.monotonic() + 10
    while (status := _get(server.port, TRACE_PATH)[0]) == 429 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status == 200


def test_a_snapshot_in_progress_elsewhere_is_a_429(
    server: DebugServer, recorder: pyflight.FlightRecorder
) -> None:
    assert recorder._snapshot_lock.acquire()
    try:
        status, headers, _ = _get(server.port, TRACE_PATH)
    finally:
        recorder._snapshot_lock.release()
    assert status == 429 and headers["retry-after"] == "1"


def test_token(recorder: pyflight.FlightRecorder) -> None:
    with pyflight.serve(token="s3cret") as srv:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"}):
            status, got, _ = _get(srv.port, TRACE_PATH, headers=headers)
            assert status == 401, headers
            assert got["www-authenticate"].startswith("Bearer")
        assert _get(srv.port, STATUS_PATH)[0] == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert _get(srv.port, STATUS_PATH, headers=ok)[0] == 200
        assert _get(srv.port, TRACE_PATH, headers=ok)[0] == 200
    assert token_matches("bearer  s3cret ", "s3cret")
    assert not token_matches(None, "s3cret") and not token_matches("Bearer s3cre", "s3cret")


def test_other_paths_and_methods(server: DebugServer) -> None:
    assert _get(server.port, "/debug/pyflight/other")[0] == 404
    assert _get(server.port, "/")[0] == 404
    for method in ("POST", "PUT", "DELETE", "HEAD", "BREW"):
        status, headers, _ = _get(server.port, TRACE_PATH, method=method)
        assert status == 405, method
        assert headers["allow"] == "GET"


def test_garbage_gets_no_traceback(server: DebugServer, capfd: pytest.CaptureFixture[str]) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        answer = sock.recv(65536)
    assert b"400" in answer  # HTTP/0.9-style answer: the request line was not HTTP
    assert b"Traceback" not in answer
    assert "Traceback" not in capfd.readouterr().err


def test_without_a_running_recorder() -> None:
    with pyflight.serve() as srv:
        status, _, body = _get(srv.port, TRACE_PATH)
        assert status == 503 and b"no FlightRecorder" in body
        assert json.loads(_get(srv.port, STATUS_PATH)[2]) == {"enabled": False}


def test_loopback_check() -> None:
    for host in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
        assert is_loopback(host), host
    for host in ("10.0.0.1", "192.168.1.5", "::ffff:10.0.0.1", "2001:db8::1", "", "localhost", "0.0.0.0"):
        assert not is_loopback(host), host


def _non_loopback_address() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent; picks the outgoing interface
            address = str(probe.getsockname()[0])
    except OSError:
        return None
    return None if is_loopback(address) or address == "0.0.0.0" else address


def test_remote_peer_refused_by_default(recorder: pyflight.FlightRecorder) -> None:
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address (the check is unit-tested above)")
    with pyflight.serve("0.0.0.0") as srv:
        status, _, body = _get(srv.port, TRACE_PATH, host=address)
        assert status == 403 and b"local" in body
        assert _get(srv.port, STATUS_PATH, host=address)[0] == 403
        assert _get(srv.port, STATUS_PATH)[0] == 200  # loopback still served
    with pyflight.serve("0.0.0.0", allow_remote=True) as srv:
        assert _get(srv.port, STATUS_PATH, host=address)[0] == 200


def test_a_foreign_host_header_is_refused(recorder: pyflight.FlightRecorder) -> None:
    """DNS rebinding: a page at evil.example rebound to 127.0.0.1 sends its own name."""
    with pyflight.serve() as srv:
        for foreign in ("evil.example", f"evil.example:{srv.port}", "127.0.0.1.evil.example", "10.0.0.1"):
            status, _, body = _get(srv.port, TRACE_PATH, headers={"Host": foreign})
            assert status == 403 and b"host name" in body, foreign
            assert b"PYFL" not in body
        for local in ("127.0.0.1", f"127.0.0.1:{srv.port}", f"localhost:{srv.port}", "LOCALHOST", "[::1]:80"):
            assert _get(srv.port, STATUS_PATH, headers={"Host": local})[0] == 200, local
    with pyflight.serve(allowed_hosts=["debug.internal"]) as srv:
        assert _get(srv.port, STATUS_PATH, headers={"Host": "debug.internal:8080"})[0] == 200
        assert _get(srv.port, STATUS_PATH, headers={"Host": "localhost"})[0] == 200
        assert _get(srv.port, STATUS_PATH, headers={"Host": "evil.example"})[0] == 403


def test_host_header_names() -> None:
    from pyflight._netcheck import host_allowed, host_header_name

    assert host_header_name("[::1]:8080") == "::1" and host_header_name("LocalHost:1") == "localhost"
    assert host_allowed(None) and host_allowed("localhost.") and host_allowed("127.1.2.3:9")
    assert not host_allowed("localhost.evil.example") and not host_allowed("[2001:db8::1]:80")
    assert host_allowed("Box.Example:80", frozenset({"box.example"}))


def test_close_releases_the_port(recorder: pyflight.FlightRecorder) -> None:
    srv = pyflight.serve()
    port = srv.port
    srv.close()
    srv.close()  # idempotent
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    again = pyflight.serve(port=port)
    try:
        assert again.port == port and _get(port, STATUS_PATH)[0] == 200
    finally:
        again.close()
