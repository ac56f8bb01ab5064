"""``pyflight view``: the timeline and the report served on a local web server, run as a
subprocess (``python -m pyflight view TRACE --port 0 --no-browser``) and asked over HTTP.

The server must answer ``/`` (the timeline page), its ``/static/`` script and style, its
``/api/`` JSON, and ``/report``, ``/report.json`` and ``/trace.pyfl`` with the same report
``pyflight report`` gives, refuse everything else, carry its security headers, stop
cleanly on SIGINT and SIGTERM, and fail like ``pyflight report`` does (one line, an exit
status) on a missing file, a file that is not a trace or a port that is taken. What the
timeline shows in a browser is tests/test_viewer_browser.py.
"""

from __future__ import annotations

import html
import http.client
import itertools
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

import test_report_browser
from programs import record_named
from pyflight.viewer.server import CSP, TIMELINE_CSP
from test_report import EVIL, evil_trace

HERE = Path(__file__).parent
SRC = HERE.parent / "src"
SERVING = re.compile(r"^pyflight view: serving (.+) at (http://([^/]+):(\d+)/) \(Ctrl-C to stop\)$")
EVIL_NAME = 'trace<b>"x"\n.pyfl'  # markup, a quote and a newline in the file name

browser = test_report_browser.browser  # the same Chromium (skips without it)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Viewer:
    proc: subprocess.Popen[str]
    line: str
    url: str
    port: int

    def request(
        self, path: str, method: str = "GET", headers: dict[str, str] | None = None
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.headers, response.read()
        finally:
            conn.close()

    def stop(self, sig: int = signal.SIGINT) -> tuple[int, str]:
        """Send ``sig``; the exit status and everything written on stderr."""
        self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, err


def _start(trace: Path, *options: str, env: dict[str, str] | None = None) -> Viewer:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyflight", "view", str(trace), "--port", "0", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or _env(),
        # run in the background by a non-interactive shell (CI), this process ignores
        # SIGINT and a child would inherit that: give the viewer Ctrl-C as a user has it
        preexec_fn=_default_sigint if signal.getsignal(signal.SIGINT) == signal.SIG_IGN else None,
    )
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=120):
            proc.kill()
            pytest.fail(f"pyflight view said nothing in 120 s: {proc.communicate()}")
    line = proc.stdout.readline().rstrip("\n")
    match = SERVING.match(line)
    if match is None:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"not a serving line: {line!r}; stdout {out!r}, stderr {err!r}")
    return Viewer(proc, line, match.group(2), int(match.group(4)))


@pytest.fixture
def viewer_of() -> Iterator[Any]:
    started: list[Viewer] = []

    def start(trace: Path, *options: str, env: dict[str, str] | None = None) -> Viewer:
        viewer = _start(trace, *options, env=env)
        started.append(viewer)
        return viewer

    yield start
    for viewer in started:
        if viewer.proc.poll() is None:
            viewer.proc.kill()
            viewer.proc.communicate()


@pytest.fixture(scope="module")
def slow_tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_named("slow_tasks", tmp_path_factory.mktemp("viewer"))


@pytest.fixture
def evil(tmp_path: Path) -> Path:
    path = tmp_path / EVIL_NAME
    path.write_bytes(evil_trace())
    return path


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyflight", "view", *argv, "--no-browser"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )


def _security_headers(headers: http.client.HTTPMessage, csp: str = CSP) -> None:
    assert headers["Cache-Control"] == "no-store"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"] == csp


def _directives(csp: str) -> dict[str, str]:
    return dict(d.strip().split(" ", 1) for d in csp.split(";"))


def test_csp_forbids_scripts_and_fetches_but_lets_inline_styles_work() -> None:
    directives = _directives(CSP)
    assert directives["default-src"] == "'none'"  # no script, image, font, fetch, frame
    assert directives["style-src"] == "'unsafe-inline'"  # the report's <style> and style=""
    assert "script-src" not in directives


def test_timeline_csp_allows_only_the_servers_own_script_style_and_json() -> None:
    directives = _directives(TIMELINE_CSP)
    assert directives["default-src"] == "'none'"  # no image, font, frame, nothing elsewhere
    for name in ("script-src", "style-src", "connect-src"):
        assert directives[name] == "'self'", name  # no inline script, no eval, no CDN
    assert directives["frame-ancestors"] == "'none'"


def test_serves_the_report_the_json_and_the_trace_then_stops_on_sigint(
    slow_tasks: Path, viewer_of: Any
) -> None:
    viewer = viewer_of(slow_tasks, "--no-browser")
    assert viewer.url == f"http://127.0.0.1:{viewer.port}/"
    assert viewer.line.startswith(f"pyflight view: serving {slow_tasks} at ")

    status, headers, body = viewer.request("/report.json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    _security_headers(headers)
    report = json.loads(body)
    assert {"summary", "findings"} <= set(report)
    assert report["summary"]["file"] == str(slow_tasks)
    top = report["findings"][0]
    assert top["title"] and top["score"] >= 25

    status, headers, page = viewer.request("/report")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    _security_headers(headers)
    text = page.decode("utf-8")
    assert "<h2>Findings</h2>" in text
    assert html.escape(top["title"]) in text
    assert int(headers["Content-Length"]) == len(page)

    status, headers, head = viewer.request("/report", method="HEAD")
    assert status == 200 and head == b"" and int(headers["Content-Length"]) == len(page)

    # the timeline: its page links the report, its script and style are the package's own
    status, headers, timeline = viewer.request("/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    _security_headers(headers, TIMELINE_CSP)
    assert b'href="/report"' in timeline and b'src="/static/app.js"' in timeline
    status, headers, script = viewer.request("/static/app.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    _security_headers(headers, TIMELINE_CSP)
    for parser in (b"innerHTML", b"outerHTML", b"insertAdjacentHTML", b"document.write", b"eval("):
        assert parser not in script, parser  # trace strings reach the page as text only
    status, headers, meta_body = viewer.request("/api/meta")
    assert status == 200 and headers["Content-Type"] == "application/json"
    _security_headers(headers, TIMELINE_CSP)
    meta = json.loads(meta_body)
    assert meta["duration"] == report["summary"]["duration_ns"]
    assert {"thread", "usertask", "counter"} <= {row["kind"] for row in meta["rows"]}
    findings = json.loads(viewer.request("/api/findings")[2])
    assert [f["title"] for f in findings] == [f["title"] for f in report["findings"]]
    assert all(0 <= f["at"][0] <= f["at"][1] <= meta["duration"] for f in findings)
    for path in ("/api/nope", "/static/nope.js", "/static/../server.py"):
        assert viewer.request(path)[0] == 404, path
    status, _, message = viewer.request("/api/slices?t0=0&t1=x&w=10")
    assert (status, message) == (400, b"bad t1\n")

    status, headers, data = viewer.request("/trace.pyfl")
    assert status == 200 and headers["Content-Type"] == "application/octet-stream"
    assert data == slow_tasks.read_bytes()
    assert headers["Content-Disposition"].startswith('attachment; filename="slow_tasks.pyfl"')
    _security_headers(headers)

    for path in ("/nope", "/report.json/", "/../slow_tasks.pyfl", "/favicon.ico"):
        status, headers, _ = viewer.request(path)
        assert status == 404, path
        _security_headers(headers)
    for method in ("POST", "PUT", "DELETE", "OPTIONS", "BREW"):
        status, headers, _ = viewer.request("/", method=method)
        assert status == 405, method
        assert headers["Allow"] == "GET, HEAD"
        _security_headers(headers)
    # the query string does not matter
    assert viewer.request("/report.json?x=1")[2] == body

    code, err = viewer.stop(signal.SIGINT)
    assert code == 0
    assert err == "", err  # no access log, no traceback


def test_markup_in_the_trace_and_its_name_is_escaped_and_sigterm_stops(evil: Path, viewer_of: Any) -> None:
    viewer = viewer_of(evil, "--no-browser")
    assert viewer.line.startswith(f"pyflight view: serving {str(evil)!a} at ")  # still one line
    status, _, page = viewer.request("/report")
    text = page.decode("utf-8")
    assert status == 200
    assert EVIL not in text and "<script" not in text.lower() and '<b>"x"' not in text
    assert html.escape(EVIL) in text
    assert html.escape('trace<b>"x"') in text  # the file name, in the title

    status, headers, data = viewer.request("/trace.pyfl")
    assert data == evil.read_bytes()
    disposition = headers["Content-Disposition"]
    assert disposition == (
        "attachment; filename=\"trace_b__x__.pyfl\"; filename*=UTF-8''" + quote(EVIL_NAME, safe="")
    )

    code, err = viewer.stop(signal.SIGTERM)
    assert (code, err) == (0, "")


def test_foreign_host_names_are_refused_on_loopback(evil: Path, viewer_of: Any) -> None:
    """A page whose DNS name points at 127.0.0.1 (DNS rebinding) cannot read the trace."""
    viewer = viewer_of(evil, "--no-browser")
    for host in ("attacker.example", f"attacker.example:{viewer.port}", "10.0.0.1"):
        status, _, body = viewer.request("/trace.pyfl", headers={"Host": host})
        assert (status, body) == (403, b"forbidden host\n"), host
    for host in ("localhost", f"localhost:{viewer.port}", f"127.0.0.1:{viewer.port}", "[::1]:80"):
        assert viewer.request("/report.json", headers={"Host": host})[0] == 200, host
    assert viewer.stop()[0] == 0


def test_another_host_warns_that_anyone_who_reaches_it_can_read_the_trace(evil: Path, viewer_of: Any) -> None:
    viewer = viewer_of(evil, "--no-browser", "--host", "0.0.0.0")
    assert viewer.url == f"http://0.0.0.0:{viewer.port}/"
    # bound on purpose to every address: any Host is answered
    assert viewer.request("/report.json", headers={"Host": "my-box.example"})[0] == 200
    code, err = viewer.stop()
    assert code == 0
    assert err.splitlines() == [
        "pyflight view: warning: listening on 0.0.0.0: anyone who can reach this address can read the trace"
    ]


def test_opens_the_browser_unless_told_not_to(evil: Path, viewer_of: Any, tmp_path: Path) -> None:
    opened = tmp_path / "opened"
    fake = tmp_path / "fake-browser"
    fake.write_text(f'#!/bin/sh\necho "$1" > "{opened}"\n')
    fake.chmod(0o755)
    viewer = viewer_of(evil, env=_env(BROWSER=str(fake)))
    deadline = time.monotonic() + 30
    while not (opened.exists() and opened.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert opened.read_text().strip() == viewer.url
    assert viewer.stop()[0] == 0


def test_a_missing_file_exits_2_with_one_line(tmp_path: Path) -> None:
    proc = _run(str(tmp_path / "nope.pyfl"))
    assert proc.returncode == 2 and proc.stdout == ""
    missing = tmp_path / "nope.pyfl"
    assert proc.stderr == f"pyflight view: error: cannot read {missing}: No such file or directory\n"


def test_a_file_that_is_not_a_trace_exits_1_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "not.pyfl"
    path.write_bytes(b"hello, world\n")
    proc = _run(str(path))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(f"pyflight view: error: {path} is not a readable pyflight trace: ")
    assert len(proc.stderr.splitlines()) == 1


def test_a_port_in_use_exits_2_with_one_line(evil: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _run(str(evil), "--port", str(port))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (
        f"pyflight view: error: cannot listen on 127.0.0.1:{port}: Address already in use (try --port 0)\n"
    )


def test_a_bad_port_is_a_usage_error() -> None:
    proc = _run("x.pyfl", "--port", "http")
    assert proc.returncode == 2
    assert proc.stderr == "pyflight view: error: argument --port: not a port number: 'http'\n"


def test_the_served_page_in_chromium(browser: Any, slow_tasks: Path, viewer_of: Any) -> None:
    """The report's CSP lets its inline CSS and SVG work: nothing refused, nothing fetched."""
    viewer = viewer_of(slow_tasks, "--no-browser")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        page.set_default_timeout(10_000)
        requests: list[str] = []
        console: list[str] = []
        context.on("request", lambda request: requests.append(request.url))
        page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
        page.goto(viewer.url + "report", wait_until="load")
        page.wait_for_timeout(200)
        assert requests == [viewer.url + "report"]
        assert console == []  # a refused inline style would be reported here
        assert page.get_by_role("heading", name="Findings", exact=True).is_visible()
        finding = page.locator(".finding").first
        assert finding.is_visible()
        # the inline <style> applies: a finding has its coloured left border
        assert finding.evaluate("e => getComputedStyle(e).borderLeftWidth") == "6px"
        assert page.locator("svg").count() >= 3
    finally:
        context.close()
    assert viewer.stop()[0] == 0


# ---------------------------------------------------------------- levels of detail (in process)


def _dense_row() -> tuple[Any, dict[int, int]]:
    """100,000 slices of 2-9 µs in three states over ~1 s, and the time in each state."""
    from pyflight.viewer.lod import LodRow

    starts, ends, codes = [], [], []
    totals: dict[int, int] = {}
    t = 0
    for k in range(100_000):
        length = 2_000 + (k * 7919) % 7_000
        starts.append(t)
        ends.append(t + length)
        codes.append(k % 3)
        totals[k % 3] = totals.get(k % 3, 0) + length
        t += length + (k % 5) * 500  # and gaps
    return LodRow(starts, ends, codes), totals


def test_a_whole_trace_query_answers_about_one_slice_per_pixel_and_keeps_the_time_per_state() -> None:
    row, totals = _dense_row()
    end = row.raw.ends[-1]
    got = row.query(0, end, end / 1000)  # 1000 px
    assert 0 < len(got.starts) <= 2 * 1000
    assert all(i == -1 for i in got.raw[:-1])  # summaries, each standing for many slices
    assert sum(got.counts) == len(row.raw)  # every slice is in exactly one of them
    assert got.starts == sorted(got.starts)
    assert all(a <= b for a, b in zip(got.ends[:-1], got.starts[1:], strict=True))  # no overlaps
    assert row.totals(0, end) == totals
    # a range cut in the middle of slices counts only the part inside it
    a, b = row.raw.starts[10] + 1_000, row.raw.ends[90_000] - 1_000
    inside = {}
    for s, e, c in zip(row.raw.starts, row.raw.ends, row.raw.codes, strict=True):
        if min(e, b) > max(s, a):
            inside[c] = inside.get(c, 0) + min(e, b) - max(s, a)
    assert row.totals(a, b) == inside


def test_zoomed_in_the_raw_slices_come_back_one_by_one() -> None:
    row, _ = _dense_row()
    a, b = row.raw.starts[50_000], row.raw.ends[50_020]
    got = row.query(a, b, (b - a) / 1000)  # ~ 100 ns per pixel: every slice is wider than a pixel
    assert got.raw == list(range(50_000, 50_021))
    assert got.counts == [1] * 21


def test_overlapping_runs_are_spread_over_lanes_that_never_overlap() -> None:
    from pyflight.viewer.api import _lanes

    items = [(k * 10, k * 10 + 35, 0, f"run {k}") for k in range(20)]  # up to 4 at once
    lanes = _lanes(items)
    assert len(lanes) == 4
    assert sorted(s[3] for lane in lanes for s in lane) == sorted(s[3] for s in items)
    for lane in lanes:
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(lane))


def _random_rows(seed: int) -> Iterator[tuple[list[int], list[int], list[int]]]:
    """Random rows: touching, gapped, ordered or not, empty or negative slices, ties."""
    import random

    rng = random.Random(seed)
    for trial in range(300):
        n = rng.randint(0, 2_000)
        starts, ends, codes = [], [], []
        t = rng.choice([0, 10**15])
        for _ in range(n):
            t += rng.choice([0, 0, 0, 1, 5, 50, 500, -3 if trial % 7 == 0 else 2])
            length = rng.choice([1, 2, 3, 10, 40, 100, 1000, 0 if trial % 5 == 0 else 7])
            starts.append(t)
            ends.append(t + length)
            codes.append(rng.randint(0, 4) if trial % 3 else 2)
            t += length
        if trial % 2:  # where one slice ends, the next starts with the same int (the model's)
            if all(end <= start for end, start in zip(ends[:-1], starts[1:], strict=True)):
                starts[1:] = ends[:-1]
        yield starts, ends, codes


@pytest.mark.skipif(
    os.environ.get("PYFLIGHT_PURE_PYTHON", "") not in ("", "0"), reason="the C passes are not used"
)
def test_the_c_passes_answer_as_the_python_ones() -> None:
    """viewer/c/_lod.c: merge_raw, ordered_durations and codes give what lod.py and api.py
    give, on random rows; a value the C passes cannot hold is the Python code's to handle."""
    from pyflight.analysis.model import State
    from pyflight.core.events import BlockReason
    from pyflight.viewer import api, lod

    fast = pytest.importorskip("pyflight.viewer._lod")
    assert lod.FAST is fast
    ordered = 0
    for starts, ends, codes in _random_rows(3):
        level = lod.Level(0, starts, ends, codes, [1] * len(starts), range(len(starts)), [None] * len(starts))
        for grain in (1, 2, 5, 37, 1000, 10**6):
            want, got = (
                lod.merge_raw_py(level, grain),
                lod.Slices(*fast.merge_raw(starts, ends, codes, grain)),
            )
            assert got == want, grain
            # the order of a summary's states too: merge() breaks ties by it
            assert [list((t or {}).items()) for t in got.totals] == [
                list((t or {}).items()) for t in want.totals
            ]
        want_d = api._ordered_durations_py(starts, ends)
        assert fast.ordered_durations(starts, ends) == want_d
        ordered += want_d is not None
    assert 50 < ordered < 250  # both answers were checked
    big = [2**63, 2**63 + 5]
    with pytest.raises(OverflowError):
        fast.merge_raw(big, [b + 1 for b in big], [0, 0], 10)
    level = lod.Level(0, big, [b + 1 for b in big], [0, 1], [1, 1], range(2), [None, None])
    assert lod.merge_raw(level, 10) == lod.merge_raw_py(level, 10)  # fell back on Python
    assert api._ordered_durations(big, [b + 1 for b in big]) == [1, 1]
    table = {
        (id(s), id(r)): k for k, (s, r) in enumerate((s, r) for s in State for r in (None, *BlockReason))
    }
    states = [State.RUNNING, State.BLOCKED, State.BLOCKED, State.READY] * 50
    reasons = [None, BlockReason.LOCK, BlockReason.AWAIT, None] * 50
    want = [table[id(s), id(r)] for s, r in zip(states, reasons, strict=True)]
    assert fast.codes(states, reasons, table) == want
    with pytest.raises(KeyError):
        fast.codes([State.RUNNING, "odd"], [None, None], table)


MANY_TASKS = """
import asyncio


async def fetch(i, gate):
    await gate.wait()
    await asyncio.sleep(0.001 * (i % 5))


async def amain():
    for batch in range(4):
        gate = asyncio.Event()
        tasks = [asyncio.create_task(fetch(i, gate), name=f"fetch-{batch}-{i}") for i in range(20)]
        await asyncio.sleep(0.005)
        gate.set()
        await asyncio.gather(*tasks)


def main():
    asyncio.run(amain())
"""


def test_a_coroutine_with_many_tasks_gets_lanes_that_name_each_slices_task(tmp_path: Path) -> None:
    import pyflight
    from programs import record_program
    from pyflight.report import analyze
    from pyflight.viewer.api import TimelineApi

    program = tmp_path / "many.py"
    program.write_text(MANY_TASKS, encoding="utf-8")
    api = TimelineApi(analyze(pyflight.load(str(record_program(program, tmp_path / "many.pyfl")))).model)
    lanes = [row for row in api.rows if row.group == "tasks: fetch"]
    assert 20 <= len(lanes) < 80  # 80 tasks, at most 20 at once: lanes, not a row each
    names: set[str] = set()
    for row in lanes:
        assert row.lod is not None and row.owners is not None
        raw = row.lod.raw
        assert all(e <= s for e, s in zip(raw.ends[:-1], raw.starts[1:], strict=True))
        names.update(owner.name for owner in row.owners)
    assert names == {f"fetch-{b}-{i}" for b in range(4) for i in range(20)}
    # a wait in a lane says which task waited
    row = lanes[0]
    assert row.lod is not None and row.owners is not None
    k = next(k for k, code in enumerate(row.lod.raw.codes) if api.codes[code] == "blocked:await")
    details = api.slice_details(row.id, k)
    assert details is not None and details["task"] == row.owners[k].name
    # search finds a task by name, in its lane
    hits = [h for h in api.search("fetch-2-7") if h["kind"] == "task"]
    assert [h["text"] for h in hits] == ["fetch-2-7"]
    assert api.rows[hits[0]["row"]].group == "tasks: fetch"


@pytest.fixture(scope="module")
def many_tasks_api(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import pyflight
    from programs import record_program
    from pyflight.analysis.model import build
    from pyflight.viewer.api import TimelineApi

    tmp = tmp_path_factory.mktemp("many")
    program = tmp / "many.py"
    program.write_text(MANY_TASKS, encoding="utf-8")
    return TimelineApi(build(pyflight.load(str(record_program(program, tmp / "many.pyfl")))))


def test_the_code_table_the_page_reads_first_names_every_slice_it_gets_later(many_tasks_api: Any) -> None:
    api = many_tasks_api
    meta = api.meta()  # the page reads it once, before any row is laid out
    codes = list(meta["codes"])
    assert {"running", "idle", "blocked:await", "blocked:lock", "ready", "stall", "task"} <= set(codes)
    answer = api.slices(0, api.duration, 1000, [row["id"] for row in meta["rows"]])
    api.warm_up()
    assert api.meta() == meta  # laying the rows out named no new state
    used = {code for row in answer["rows"].values() for code in row.get("c", ())}
    assert used and all(0 <= code < len(codes) for code in used)
    loop = next(row for row in meta["rows"] if row["kind"] == "loop")
    assert {codes[c] for c in answer["rows"][str(loop["id"])]["c"]} <= {"running", "idle"}


def test_a_loops_steps_and_idle_waits_share_its_row_cut_where_the_next_begins(many_tasks_api: Any) -> None:
    from pyflight.analysis.model import Interval, LoopTimeline, State

    def run(a: int, b: int) -> Interval:
        return Interval(a, b, State.RUNNING)

    def idle(a: int, b: int) -> Interval:
        return Interval(a, b, State.IDLE)

    busy = [run(0, 10), run(10, 20), run(20, 20), run(30, 40), run(40, 45)]  # one empty step
    waits = [idle(5, 12), idle(20, 30), idle(40, 50)]  # one overlaps two steps, one starts with a step
    lod, refs, owners = many_tasks_api._loop_row(LoopTimeline(1, 1, busy, waits, [], []))
    got = list(zip(lod.raw.starts, lod.raw.ends, refs, strict=True))
    # by start (a step before a wait that starts with it), each cut where the next begins;
    # what that leaves empty (and the empty step) is not drawn
    assert got == [
        (0, 5, busy[0]),
        (5, 10, waits[0]),
        (10, 20, busy[1]),
        (20, 30, waits[1]),
        (30, 40, busy[3]),
        (40, 50, waits[2]),
    ]
    assert owners is None


def test_the_server_answers_while_it_analyses_and_the_page_waits_for_the_analysis(evil: Path) -> None:
    """A big trace takes seconds to analyse: the server answers at once and says how far
    the model got, serves the timeline as soon as the model is built (the findings say
    "loading" while the rules run), and the findings and report once they are handed over."""
    import threading

    import pyflight
    from pyflight.analysis.model import build
    from pyflight.analysis.result import report_of
    from pyflight.viewer.api import TimelineApi
    from pyflight.viewer.server import Content, ViewerServer

    content = Content(trace=evil.read_bytes(), trace_name=evil.name)
    content.progress = 0.4
    server = ViewerServer("127.0.0.1", 0, content)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def get(path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    try:
        assert get("/api/meta") == (200, b'{"loading": 0.4}')
        status, _ = get("/api/slices?t0=0&t1=10&w=10&rows=0")
        assert status == 503
        status, page = get("/")
        assert status == 200 and b"app.js" in page
        model = build(pyflight.load(str(evil)))
        content.set_timeline(TimelineApi(model))
        status, meta = get("/api/meta")
        assert status == 200 and json.loads(meta)["rows"]  # the timeline, before the rules
        status, _ = get("/api/slices?t0=0&t1=10&w=10&rows=0")
        assert status == 200
        assert get("/api/findings") == (200, b'{"loading":true}')
        report = report_of(model)
        late = threading.Timer(0.2, content.set_analysis, (report,))
        late.start()
        status, page = get("/report")  # waits for the rules, then renders the report
        assert status == 200 and b"<html" in page.lower()
        status, findings = get("/api/findings")
        assert status == 200
        assert [f["rule"] for f in json.loads(findings)] == [f.rule for f in report.findings]
    finally:
        server.shutdown()
        server.server_close()


def test_rules_that_fail_leave_the_timeline_served_and_say_why(evil: Path) -> None:
    import threading

    import pyflight
    from pyflight.analysis.model import build
    from pyflight.viewer.api import TimelineApi
    from pyflight.viewer.server import Content, ViewerServer

    content = Content(trace=evil.read_bytes(), trace_name=evil.name)
    content.set_timeline(TimelineApi(build(pyflight.load(str(evil)))))
    content.set_error("cannot find the problems in t.pyfl: ValueError: boom")
    server = ViewerServer("127.0.0.1", 0, content)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.request("GET", "/api/findings")
        response = conn.getresponse()
        assert response.status == 200
        message = "cannot find the problems in t.pyfl: ValueError: boom"
        assert json.loads(response.read()) == {"error": message}
        conn.request("GET", "/api/meta")
        assert json.loads(conn.getresponse().read())["rows"]
        conn.close()
    finally:
        server.shutdown()
        server.server_close()


def test_sigterm_while_the_server_accepts_a_connection_still_stops_it() -> None:
    """The SIGTERM handler raises in the main thread wherever it is; in the middle of
    accepting a connection (socketserver's process_request), an Exception would be
    taken for a failed request and the server would go on (seen on a loaded machine)."""
    import socket as socket_module

    from pyflight.viewer.command import _stop
    from pyflight.viewer.server import Content, ViewerServer

    server = ViewerServer("127.0.0.1", 0, Content(b"", "t.pyfl"))

    def process_request(request: object, client_address: object) -> None:
        _stop(signal.SIGTERM, None)  # the handler, run where the signal found the thread

    server.process_request = process_request  # type: ignore[method-assign,assignment]
    client = socket_module.create_connection(("127.0.0.1", server.port))
    guard = threading.Timer(10, server.shutdown)  # a regression fails here, not hangs
    guard.start()
    try:
        with pytest.raises(BaseException) as stopped:
            server.serve_forever(poll_interval=0.05)
        assert type(stopped.value).__name__ == "_Stop"
    finally:
        guard.cancel()
        client.close()
        server.server_close()


def test_the_rules_wait_for_the_first_slices_a_page_asked_for(
    evil: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rules and the page's first slices both want the interpreter: once a page has
    asked for slices, the rules start only when they are answered; with no page asking,
    they start after a moment anyway."""
    import threading

    import pyflight
    from pyflight.analysis import result
    from pyflight.viewer import command
    from pyflight.viewer.server import Content

    monkeypatch.setattr(command, "FIRST_VIEW_WAIT_S", 0.05)
    started = threading.Event()
    real_report_of = result.report_of

    def report_of(model: Any) -> Any:
        started.set()
        return real_report_of(model)

    monkeypatch.setattr(result, "report_of", report_of)
    trace = pyflight.load(str(evil))

    class Server:
        analysis_failed = False

        def shutdown(self) -> None:
            raise AssertionError("the trace is fine")

    asked = Content(evil.read_bytes(), evil.name)
    asked.first_view_asked.set()  # a page asked; its answer is not out yet
    worker = threading.Thread(target=command._analyse, args=("t.pyfl", trace, asked, Server()))
    worker.start()
    deadline = time.monotonic() + 60
    while asked.api is None and time.monotonic() < deadline:  # the timeline is served...
        time.sleep(0.01)
    assert asked.api is not None
    assert not started.wait(0.5)  # ...and the rules wait, well past FIRST_VIEW_WAIT_S
    assert not asked.ready
    asked.first_view.set()
    worker.join(60)
    assert started.is_set() and asked.ready

    started.clear()
    alone = Content(evil.read_bytes(), evil.name)  # nobody asks: the rules start anyway
    command._analyse("t.pyfl", trace, alone, Server())
    assert started.is_set() and alone.ready


def test_stopping_leaves_the_heap_to_the_os(evil: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once it stops serving, the command freezes the heap: the interpreter's last garbage
    collections would walk the trace and the model on the way out (20-40 s after Ctrl-C
    with millions of events)."""
    import argparse
    import gc

    import pyflight
    from pyflight.viewer import command, server
    from pyflight.viewer.server import Content

    class Stopped:
        def __init__(self, *args: Any) -> None:
            pass

        def url(self, host: str | None = None) -> str:
            return "http://127.0.0.1:1/"

        def serve_forever(self) -> None:
            raise KeyboardInterrupt  # Ctrl-C at once

        def server_close(self) -> None:
            pass

    monkeypatch.setattr(server, "ViewerServer", Stopped)
    monkeypatch.setattr(command, "_analyse", lambda *args: None)
    args = argparse.Namespace(file=str(evil), host="127.0.0.1", port=0, browser=False)
    gc.unfreeze()
    try:
        assert command._serve(args, pyflight.load(str(evil)), Content(b"", "t.pyfl")) == 0
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


_SEARCH_IN_A_CHILD = """
import json, sys
import pyflight
from pyflight.analysis.model import build
from pyflight.viewer.api import TimelineApi
api = TimelineApi(build(pyflight.load(sys.argv[1])))
print(json.dumps([api.search(q) for q in ("s", "a", "e")]))
"""


def test_search_answers_the_same_on_every_run(slow_tasks: Path) -> None:
    """A bug report's "the third hit" must mean the same hit on the reader's machine: the
    hits' order does not follow the interpreter's hash seed."""
    answers = []
    for seed in ("1", "2", "3"):
        out = subprocess.run(
            [sys.executable, "-c", _SEARCH_IN_A_CHILD, str(slow_tasks)],
            env=_env(PYTHONHASHSEED=seed),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        answers.append(json.loads(out.stdout))
    assert any(hit["kind"] == "function" for hits in answers[0] for hit in hits)
    assert answers[0] == answers[1] == answers[2]


def test_the_waker_is_linked_even_when_it_ended_before_the_wake_up_was_noted() -> None:
    """A lock's holder releases it and its thread ends; the waiter, on a busy machine,
    resumes (and dates the wake-up) 10 ms later: "go to the waking slice" still leads to
    the holder's last slice."""
    from pyflight.analysis.model import build
    from pyflight.core.events import BlockReason, Kind
    from pyflight.format.reader import loads
    from pyflight.viewer.api import TimelineApi
    from tracegen import Gen, trace

    ms = 1_000_000
    g = Gen(seq=1, start_ns=0, end_ns=100 * ms)
    g.event(1, Kind.THREAD_START, 0, tid=1, name="lock-holder", ident=1, parent=0)
    g.event(2, Kind.THREAD_START, 0, tid=2, name="lock-waiter", ident=2, parent=0)
    g.event(2, Kind.BLOCK_BEGIN, 10 * ms, reason=BlockReason.LOCK, obj=7, stack=(("wait", "/app.py", 3),))
    g.event(1, Kind.THREAD_END, 50 * ms, tid=1)
    g.event(2, Kind.BLOCK_END, 60 * ms, reason=BlockReason.LOCK, obj=7, waker=1)
    api = TimelineApi(build(loads(trace([g]))))
    waiter = next(row for row in api.rows if row.name.startswith("lock-waiter"))
    holder = next(row for row in api.rows if row.name.startswith("lock-holder"))
    assert waiter.lod is not None and holder.lod is not None
    k = next(k for k, code in enumerate(waiter.lod.raw.codes) if api.codes[code] == "blocked:lock")
    details = api.slice_details(waiter.id, k)
    assert details is not None and details["waker"]["thread"].startswith("lock-holder")
    assert details["waker"]["row"] == holder.id and details["waker"]["i"] == len(holder.lod.raw.starts) - 1


def test_a_socket_call_says_which_way_it_went() -> None:
    """A send and the receive after it on one socket: the slice shows the socket (not
    the direction bit the recorder sets in its id) and whether it sent or received; a
    receive that ran into its timeout says so."""
    from pyflight.analysis.model import build
    from pyflight.core.events import IO_SENDS, IO_TIMED_OUT, BlockReason, Kind
    from pyflight.format.reader import loads
    from pyflight.viewer.api import TimelineApi
    from tracegen import Gen, trace

    ms, sock = 1_000_000, 0x7F3A5C40
    g = Gen(seq=1, start_ns=0, end_ns=100 * ms)
    g.event(1, Kind.THREAD_START, 0, tid=1, name="client", ident=1, parent=0)
    for start, end, obj, timed_out in (
        (10, 12, sock | IO_SENDS, 0),
        (12, 60, sock, 0),
        (60, 90, sock, IO_TIMED_OUT),
    ):
        g.event(1, Kind.BLOCK_BEGIN, start * ms, reason=BlockReason.IO, obj=obj, stack=(("ask", "/a.py", 3),))
        g.event(1, Kind.BLOCK_END, end * ms, reason=BlockReason.IO, obj=obj | timed_out, waker=0)
    api = TimelineApi(build(loads(trace([g], meta={"blocking.io_sends": "bit 0"}))))
    row = next(row for row in api.rows if row.name.startswith("client"))
    assert row.lod is not None
    io = [k for k, code in enumerate(row.lod.raw.codes) if api.codes[code] == "blocked:io"]
    details = [api.slice_details(row.id, k) for k in io]
    assert [(d["object"], d["detail"], d["duration"]) for d in details if d] == [
        (sock, "sending", 2 * ms),
        (sock, "receiving", 48 * ms),
        (sock, "receiving, ran into its timeout", 30 * ms),
    ]


def test_a_findings_worst_moment_is_the_waiters_slice_not_a_slice_that_began_with_it() -> None:
    """The holder takes the lock, wakes the waiter (an Event) and sleeps 50 ms inside it;
    the waiter blocks on the lock a few microseconds later. The finding dates its worst
    wait to the millisecond, which both slices match: following it must land on the
    waiter's lock wait (its thread, its culprit), not on the holder's sleep; and that
    slice says who held the lock (LOCK_HELD), one click from the holder's slice then."""
    from pyflight.analysis.model import build
    from pyflight.analysis.rules import find
    from pyflight.core.events import BlockReason, Kind
    from pyflight.format.reader import loads
    from pyflight.viewer.api import TimelineApi
    from tracegen import Gen, trace

    ms, us = 1_000_000, 1_000
    g = Gen(seq=1, start_ns=0, end_ns=100 * ms)
    g.event(1, Kind.THREAD_START, 0, tid=1, name="lock-holder", ident=501, parent=0)
    g.event(2, Kind.THREAD_START, 0, tid=2, name="lock-waiter", ident=502, parent=0)
    for start in (10 * ms, 70 * ms):  # two waits: a contended lock, not a one-off
        hold = (("hold_the_lock", "/app.py", 5),)
        g.event(1, Kind.BLOCK_BEGIN, start, reason=BlockReason.SLEEP, obj=0, stack=hold)
        wait = (("wait_for_the_lock", "/app.py", 11),)
        g.event(2, Kind.LOCK_HELD, start + 300 * us, obj=7, holder=501)  # the holder's ident
        g.event(2, Kind.BLOCK_BEGIN, start + 300 * us, reason=BlockReason.LOCK, obj=7, stack=wait)
        g.event(1, Kind.BLOCK_END, start + 20 * ms, reason=BlockReason.SLEEP, obj=0, waker=0)
        g.event(2, Kind.BLOCK_END, start + 20 * ms + 300 * us, reason=BlockReason.LOCK, obj=7, waker=1)
    model = build(loads(trace([g])))
    contention = [f for f in find(model) if f.rule == "lock-contention"]
    assert contention, "the planted contention is not found"
    api = TimelineApi(model, contention)
    (moment,) = api.findings()
    waiter = next(row for row in api.rows if row.name == "lock-waiter")
    holder = next(row for row in api.rows if row.name == "lock-holder")
    assert moment["row"] == waiter.id
    details = api.slice_details(moment["row"], moment["i"])
    assert details is not None and details["state"] == "blocked:lock"
    # who held the lock as the wait began (LOCK_HELD), and their slice then: the sleep
    assert details["holder"]["thread"] == "lock-holder" and details["holder"]["row"] == holder.id
    held = api.slice_details(holder.id, details["holder"]["i"])
    assert held is not None and held["state"] == "blocked:sleep"


def test_every_blocked_reason_has_its_own_colour_and_other_says_what_it_is() -> None:
    """The page's colour map gives each blocked reason a colour of its own ("blocked:
    other", a wait found from the samples, too: it used to fall to a hashed colour), and
    its legend's tooltip is the model's words for it, served in ``/api/meta``."""
    from pyflight.analysis.cpu import UNTRACED
    from pyflight.analysis.model import build
    from pyflight.core.events import BlockReason, Kind
    from pyflight.format.reader import loads
    from pyflight.viewer.api import TimelineApi
    from tracegen import Gen, trace

    static = SRC / "pyflight" / "viewer" / "static"
    script = (static / "app.js").read_text(encoding="utf-8")
    table = re.search(r"const BASE_COLORS = \{(.*?)\};", script, re.DOTALL)
    assert table is not None
    colors = dict(re.findall(r'"?([\w:]+)"?: "(#[0-9a-f]{6})"', table[1]))
    blocked = {f"blocked:{reason.name.lower()}" for reason in BlockReason}
    assert blocked <= set(colors), blocked - set(colors)
    drawn = [colors[code] for code in sorted(blocked | {"running", "ready", "gc", "idle", "stall"})]
    assert len(set(drawn)) == len(drawn), colors
    g = Gen(seq=1, start_ns=0, end_ns=10_000_000)
    g.event(1, Kind.THREAD_START, 0, tid=1, name="main", ident=1, parent=0)
    meta = TimelineApi(build(loads(trace([g])))).meta()
    assert blocked <= set(meta["codes"])  # each in the legend, even if absent
    assert meta["notes"] == {"blocked:other": UNTRACED}
    # the legend is drawn from the codes, with the notes as tooltips
    page = (static / "index.html").read_text(encoding="utf-8")
    assert 'id="legend"' in page and "showLegend();" in script and "S.meta.notes[code]" in script


def test_a_select_inside_subprocess_is_shown_as_waiting_for_the_subprocess() -> None:
    """``subprocess.run(capture_output=True)`` blocks in select on the child's pipes: the
    slice's label and detail (and the exports' slice) say it waited for a subprocess,
    from the program's line that called it; the reason stays the recorded one."""
    from pyflight.analysis.model import build
    from pyflight.analysis.timeline import build_timeline
    from pyflight.core.events import BlockReason, Kind
    from pyflight.format.reader import loads
    from pyflight.viewer.api import TimelineApi
    from tracegen import Gen, trace

    ms = 1_000_000
    lib = "/py/lib/python3.12/subprocess.py"
    stack = (
        ("Popen._communicate", lib, 2115),
        ("Popen.communicate", lib, 1209),
        ("run", lib, 550),
        ("render_thumbnail", "/app/<thumbs>.py", 14),
    )
    g = Gen(seq=1, start_ns=0, end_ns=100 * ms)
    g.event(2, Kind.THREAD_START, 0, tid=2, name="worker", ident=2, parent=0)
    g.event(2, Kind.BLOCK_BEGIN, 10 * ms, reason=BlockReason.SELECT, obj=7, stack=stack)
    g.event(2, Kind.BLOCK_END, 60 * ms, reason=BlockReason.SELECT, obj=7, waker=0)
    model = build(loads(trace([g])))
    api = TimelineApi(model)
    row = next(row for row in api.rows if row.name.startswith("worker"))
    assert row.lod is not None
    k = next(k for k, code in enumerate(row.lod.raw.codes) if api.codes[code] == "blocked:select")
    details = api.slice_details(row.id, k)
    assert details is not None
    assert details["label"] == "waiting for a subprocess (communicate)"
    assert details["detail"] == (
        "waiting for a subprocess (communicate), called at render_thumbnail (/app/<thumbs>.py:14)"
    )
    assert details["reason"] == "select"
    (block,) = [s for s in build_timeline(model).slices if s.category == "block"]
    assert block.name == "blocked: select"
    assert block.args["detail"] == "waiting for a subprocess (communicate)"
