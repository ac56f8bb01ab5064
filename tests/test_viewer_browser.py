"""``pyflight view`` in a real browser: the interactive timeline driven by Playwright in
Debian's Chromium (the same launch and skip rules as tests/test_report_browser.py).

Two traces are recorded here: a planted program (a thread waits 40 ms for a lock another
thread holds; a coroutine blocks the event loop 200 ms in a synchronous call; named
asyncio tasks and user tasks) and the report tests' program whose thread, task,
coroutine, region, function, file, log and trace file names are markup. Each is served
by ``pyflight view`` on loopback and the tests do what a user does: wheel, click, type,
shift-drag, follow a finding, paste a link, and check what the page then shows.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest

import test_report_browser
from programs import record_program
from pyflight import core
from test_report_browser import EVIL_DIR, EVIL_FUNCTION, EVIL_PROGRAM, EVIL_THREAD, EVIL_TRACE, EVIL_USER_TASK
from test_viewer import Viewer, _start

browser = test_report_browser.browser  # Chromium (skips, saying why, without it)
SPAN = "(window.pyflightViewer.view.t1 - window.pyflightViewer.view.t0)"  # the visible time, ns
#: threading locks are traced by the C core only (sources/blocking.py): the pure-Python
#: core records the loop stall but not the lock wait
PURE = core.BACKEND_NAME != "c"
needs_lock_waits = pytest.mark.skipif(PURE, reason="lock waits are traced by the C core only")

PLANTED = """
import asyncio
import threading
import time

import pyflight

LOCK = threading.Lock()
HELD = threading.Event()


def hold_the_lock():
    with LOCK:
        HELD.set()
        time.sleep(0.05)


def wait_for_the_lock():
    HELD.wait()  # the holder has it (a head start in time alone can lose on a loaded machine)
    with LOCK:
        pass


def load_config_sync():
    time.sleep(0.2)  # blocks the event loop


async def handler(i):
    with pyflight.task("checkout"):
        await asyncio.sleep(0.005 * i)
        if i == 3:
            load_config_sync()
        pyflight.log("shop", f"order {i} done")


async def amain():
    await asyncio.gather(*(asyncio.create_task(handler(i), name=f"order-{i}") for i in range(8)))


def main():
    holder = threading.Thread(target=hold_the_lock, name="lock-holder")
    holder.start()
    waiter = threading.Thread(target=wait_for_the_lock, name="lock-waiter")
    waiter.start()
    asyncio.run(amain())
    holder.join()
    waiter.join()
"""


@pytest.fixture(scope="module")
def served(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Viewer]]:
    """name -> ``pyflight view`` serving a freshly recorded trace (only if Chromium starts)."""
    base = tmp_path_factory.mktemp("viewer-browser")
    (base / "planted.py").write_text(PLANTED, encoding="utf-8")
    evil_dir = base / EVIL_DIR
    evil_dir.mkdir()
    (evil_dir / "prog.py").write_text(EVIL_PROGRAM, encoding="utf-8")
    viewers = {
        "planted": _start(record_program(base / "planted.py", base / "planted.pyfl"), "--no-browser"),
        "evil": _start(record_program(evil_dir / "prog.py", base / EVIL_TRACE), "--no-browser"),
    }
    yield viewers
    for viewer in viewers.values():
        code, err = viewer.stop()
        assert (code, err) == (0, ""), err


@dataclass
class Opened:
    page: Any
    viewer: Viewer
    requests: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def api(self, path: str) -> Any:
        with urllib.request.urlopen(self.viewer.url + path.lstrip("/"), timeout=30) as response:
            return json.load(response)

    def view(self) -> dict[str, float]:
        return dict(self.page.evaluate("window.pyflightViewer.view"))

    def wait_for(self, expression: str, timeout: float = 30.0) -> None:
        """Poll ``expression`` in the page until true (the page's CSP forbids the string
        evaluation ``page.wait_for_function`` does in the page: evaluate is CDP's own)."""
        deadline = time.monotonic() + timeout
        while not self.page.evaluate(f"() => Boolean({expression})"):
            if time.monotonic() > deadline:
                pytest.fail(f"not true after {timeout} s: {expression}")
            self.page.wait_for_timeout(30)

    def wait_ready(self) -> None:
        self.wait_for("window.pyflightViewer && window.pyflightViewer.ready")

    def row(self, name: str) -> int:
        row = self.page.evaluate("name => window.pyflightViewer.rowId(name)", name)
        assert row is not None, f"no row {name!r}"
        return int(row)

    def show_slice(self, row: int, i: int, start: int, end: int) -> dict[str, float]:
        """Zoom to a raw slice and make its row visible; the page point of its middle."""
        span = max(1000, end - start)
        self.page.evaluate(
            "([row, t0, t1]) => { const v = window.pyflightViewer; v.showRow(row); v.setView(t0, t1); }",
            [row, start - span, end + span],
        )
        point = None
        deadline = time.monotonic() + 30
        while point is None and time.monotonic() < deadline:
            self.wait_ready()
            point = self.page.evaluate("([r, i]) => window.pyflightViewer.slicePoint(r, i)", [row, i])
        assert point is not None, "the slice was never drawn"
        return dict(point)


@pytest.fixture
def open_viewer(browser: Any, served: dict[str, Viewer]) -> Iterator[Callable[..., Opened]]:
    contexts: list[Any] = []

    def open_(name: str, fragment: str = "") -> Opened:
        viewer = served[name]
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(20_000)
        opened = Opened(page, viewer)
        host = urlsplit(viewer.url).netloc

        def route(request_route: Any) -> None:
            if urlsplit(request_route.request.url).netloc == host:
                request_route.continue_()
            else:  # the page must work offline: anything else is refused and recorded
                opened.refused.append(request_route.request.url)
                request_route.abort()

        context.route("**/*", route)
        context.on("request", lambda request: opened.requests.append(request.url))
        page.on("websocket", lambda ws: opened.refused.append(ws.url))
        page.on("console", lambda msg: opened.console.append(f"{msg.type}: {msg.text}"))
        page.on("pageerror", lambda exc: opened.errors.append(str(exc)))

        def on_dialog(dialog: Any) -> None:
            opened.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        page.on("dialog", on_dialog)
        page.goto(viewer.url + fragment, wait_until="load")
        opened.wait_ready()
        return opened

    yield open_
    for context in contexts:
        context.close()


def _raw_slices(opened: Opened, row: int) -> list[tuple[int, int, int, str]]:
    """``(i, start, end, state)`` of the slices of a row that are not merged at the
    finest whole-trace view (8192 px)."""
    meta = opened.api("/api/meta")
    got = opened.api(f"/api/slices?t0=0&t1={meta['duration']}&w=8192&rows={row}")["rows"][str(row)]
    out = []
    for k, i in enumerate(got["i"]):
        if i >= 0:
            out.append((i, got["s"][k], got["e"][k], meta["codes"][got["c"][k]]))
    return out


# ---------------------------------------------------------------- tests


def test_the_timeline_loads_offline_with_nothing_fetched_from_elsewhere(
    open_viewer: Callable[..., Opened],
) -> None:
    r = open_viewer("planted")
    r.page.wait_for_timeout(300)  # anything late would show up here
    assert r.refused == []
    host = urlsplit(r.viewer.url).netloc
    assert r.requests and all(urlsplit(url).netloc == host for url in r.requests)
    assert r.console == [] and r.errors == [] and r.dialogs == []
    assert r.page.title() == f"pyflight timeline — {r.viewer.line.split(' ')[3]}"
    assert r.page.locator("#report-link").get_attribute("href") == "/report"
    # the findings are listed and the canvas is drawn (non-blank pixels in the track area)
    assert r.page.locator("#findings .finding-link").count() >= (1 if PURE else 2)
    painted = r.page.evaluate(
        """() => { const c = document.getElementById('canvas');
                   const d = c.getContext('2d').getImageData(300, 30, 400, 300).data;
                   let n = 0; for (let k = 0; k < d.length; k += 4) if (d[k + 3] && d[k] < 200) n++;
                   return n; }"""
    )
    assert painted > 500


def test_the_wheel_zooms_in_at_the_pointer(open_viewer: Callable[..., Opened]) -> None:
    r = open_viewer("planted")
    before = r.view()
    box = r.page.locator("#canvas").bounding_box()
    r.page.mouse.move(box["x"] + 600, box["y"] + 200)
    r.page.mouse.wheel(0, -400)
    r.wait_for(f"{SPAN} < {0.7 * (before['t1'] - before['t0'])}")
    after = r.view()
    assert after["t0"] > before["t0"] and after["t1"] < before["t1"]  # zoomed in around the pointer
    r.wait_for("location.hash.startsWith('#t=')")  # the view is a link
    r.page.mouse.wheel(0, 400)  # and back out
    r.wait_for(f"{SPAN} > {after['t1'] - after['t0']}")


def test_w_s_a_d_zoom_and_pan_as_in_perfetto(open_viewer: Callable[..., Opened]) -> None:
    r = open_viewer("planted")
    r.page.locator("#timeline").focus()
    full = r.view()
    r.page.keyboard.down("w")
    r.wait_for(f"{SPAN} < {0.5 * (full['t1'] - full['t0'])}")
    r.page.keyboard.up("w")
    zoomed = r.view()
    r.page.keyboard.down("d")
    r.wait_for(f"window.pyflightViewer.view.t0 > {zoomed['t0'] + 0.5 * (zoomed['t1'] - zoomed['t0'])}")
    r.page.keyboard.up("d")
    panned = r.view()
    assert abs((panned["t1"] - panned["t0"]) - (zoomed["t1"] - zoomed["t0"])) < 1  # a pan keeps the zoom
    r.page.keyboard.down("a")
    r.wait_for(f"window.pyflightViewer.view.t0 < {panned['t0']}")
    r.page.keyboard.up("a")
    r.page.keyboard.down("s")
    r.wait_for(f"{SPAN} > {panned['t1'] - panned['t0']}")
    r.page.keyboard.up("s")


@needs_lock_waits
def test_a_click_on_a_blocked_slice_shows_its_reason_stack_and_waker(
    open_viewer: Callable[..., Opened],
) -> None:
    r = open_viewer("planted")
    row = r.row("lock-waiter")
    waits = [s for s in _raw_slices(r, row) if s[3] == "blocked:lock"]
    assert waits, "the lock wait was not recorded"
    i, start, end, _ = max(waits, key=lambda s: s[2] - s[1])
    point = r.show_slice(row, i, start, end)
    r.page.mouse.click(point["x"], point["y"])
    details = r.page.locator("#details")
    details.get_by_text("Woken by").wait_for()
    text = details.inner_text()
    assert "blocked:lock" in text and "reason\tlock" in text
    assert "wait_for_the_lock" in text  # the stack where it waited
    assert "Stack at start" in text
    assert "Woken by lock-holder" in text
    assert "The lock was held by lock-holder when this wait began" in text
    # the arrow's other end: the waking slice, one click away
    details.get_by_role("button", name="go to the waking slice").click()
    r.wait_for("window.pyflightViewer.details && window.pyflightViewer.details.row_name === 'lock-holder'")


def test_the_legend_gives_each_state_its_colour_and_explains_blocked_other(
    open_viewer: Callable[..., Opened],
) -> None:
    """Every state the rows may draw is in the legend, "blocked: other" (a wait found
    from the samples) in a colour of its own, its tooltip the model's words for it."""
    from pyflight.analysis.cpu import UNTRACED

    r = open_viewer("planted")
    items = r.page.locator("#legend .legend-item")
    codes = items.evaluate_all("els => els.map((e) => e.dataset.code)")
    assert {"running", "ready", "idle", "gc", "blocked:lock", "blocked:select", "blocked:other"} <= set(codes)
    other = r.page.locator('#legend [data-code="blocked:other"]')
    assert other.get_attribute("title") == UNTRACED
    swatches = items.locator(".swatch").evaluate_all(
        "els => els.map((e) => getComputedStyle(e).backgroundColor)"
    )
    colour = dict(zip(codes, swatches, strict=True))
    assert colour["blocked:other"] == "rgb(227, 119, 194)"
    blocked = [c for code, c in colour.items() if code.startswith("blocked:")]
    assert len(set(blocked)) == len(blocked), colour


@needs_lock_waits
def test_clicking_a_finding_zooms_to_its_worst_moment(open_viewer: Callable[..., Opened]) -> None:
    r = open_viewer("planted")
    findings = r.api("/api/findings")
    contention = next(f for f in findings if f["rule"] == "lock-contention")
    assert contention["culprit"]["function"] == "wait_for_the_lock"
    full = r.view()
    r.page.locator("#findings .finding-link", has_text="Lock contention").click()
    r.wait_for(
        f"window.pyflightViewer.details && window.pyflightViewer.details.start === {contention['at'][0]}"
    )
    view = r.view()
    assert view["t0"] <= contention["at"][0] and contention["at"][1] <= view["t1"]
    assert view["t1"] - view["t0"] < (full["t1"] - full["t0"]) / 2
    details = r.page.evaluate("window.pyflightViewer.details")
    assert details["row_name"] == "lock-waiter" and details["state"] == "blocked:lock"
    assert "wait_for_the_lock" in r.page.locator("#details").inner_text()  # the culprit's stack


def test_the_blocked_loop_finding_lands_on_its_stall(open_viewer: Callable[..., Opened]) -> None:
    r = open_viewer("planted")
    r.page.keyboard.press("w")  # move away first: the link must bring the stall back
    r.page.evaluate("window.pyflightViewer.setView(0, 1000000)")
    r.page.locator("#findings .finding-link", has_text="Event loop blocked").click()
    r.wait_for("window.pyflightViewer.details && window.pyflightViewer.details.kind === 'stalls'")
    details = r.page.evaluate("window.pyflightViewer.details")
    assert details["duration"] >= 150_000_000  # the 200 ms sleep on the loop
    assert "load_config_sync" in r.page.locator("#details").inner_text()  # the culprit's stack
    view = r.view()
    assert view["t0"] <= details["start"] and details["end"] <= view["t1"]


def test_search_finds_a_task_by_name_and_zooms_to_it(open_viewer: Callable[..., Opened]) -> None:
    r = open_viewer("planted")
    r.page.locator("#search").fill("order-5")
    hit = r.page.locator("#search-results a", has_text="order-5")
    hit.wait_for()
    assert r.page.locator("#search-results a").count() == 1
    before = r.view()
    hit.click()
    r.wait_for(f"window.pyflightViewer.view.t0 !== {before['t0']}")
    r.page.locator("#search").fill("load_config")
    r.page.locator("#search-results a", has_text="load_config_sync").wait_for()
    r.page.locator("#search").fill("order 3 done")  # log text
    r.page.locator("#search-results a", has_text="order 3 done").wait_for()


def test_a_range_selection_shows_a_flame_graph_and_time_per_state(open_viewer: Callable[..., Opened]) -> None:
    r = open_viewer("planted")
    box = r.page.locator("#canvas").bounding_box()
    y = box["y"] + 120
    r.page.keyboard.down("Shift")
    r.page.mouse.move(box["x"] + 260, y)
    r.page.mouse.down()
    r.page.mouse.move(box["x"] + 500, y, steps=5)
    r.page.mouse.move(box["x"] + box["width"] - 10, y, steps=5)
    r.page.mouse.up()
    r.page.keyboard.up("Shift")
    section = r.page.locator("#range-section")
    section.locator(".flame .frame").first.wait_for()
    assert section.is_visible()
    text = section.inner_text()
    assert "Time per state" in text and "running" in text
    names = section.locator(".flame .frame").evaluate_all("nodes => nodes.map(n => n.dataset.name)")
    assert any(name.startswith("load_config_sync (") for name in names)  # the loop blocked in it


def test_a_pasted_link_opens_that_time_range(open_viewer: Callable[..., Opened]) -> None:
    r = open_viewer("planted", "#t=20000000,30000000")
    view = r.view()
    assert (view["t0"], view["t1"]) == (20_000_000, 30_000_000)


def test_an_outlier_bar_of_the_latency_histogram_zooms_to_that_run(
    open_viewer: Callable[..., Opened],
) -> None:
    r = open_viewer("planted")
    histograms = r.api("/api/histograms")
    runs = next(h for h in histograms if h["name"] == "checkout")["runs"]
    slowest = max(runs)
    r.page.locator("#histograms .bar.outlier").last.click()
    r.wait_for("window.pyflightViewer.details && window.pyflightViewer.details.kind === 'usertask'")
    details = r.page.evaluate("window.pyflightViewer.details")
    assert details["duration"] == slowest[0]
    view = r.view()
    assert view["t0"] <= slowest[1] and slowest[2] <= view["t1"]


def test_hostile_names_render_as_text_and_never_run(open_viewer: Callable[..., Opened]) -> None:
    r = open_viewer("evil")
    assert r.refused == [] and r.errors == [] and r.dialogs == []
    assert EVIL_TRACE in r.page.locator("#trace-name").inner_text()
    # the culprit function of the top finding, shown as typed
    assert EVIL_FUNCTION in r.page.locator("#findings").inner_text()
    for query, expected in (
        ("thread<img", EVIL_THREAD),
        ("task<script", EVIL_USER_TASK),
        ("burn<script", EVIL_FUNCTION),
    ):
        r.page.locator("#search").fill(query)
        r.page.locator("#search-results a", has_text=expected).first.wait_for()
    r.page.locator("#search").fill("onerror=alert(2)")  # the log message
    r.page.locator("#search-results a").first.wait_for()
    # a slice whose stack holds the evil function and file: its details are text
    r.page.locator("#search").fill("burn<script")
    r.page.locator("#search-results a", has_text=EVIL_FUNCTION).first.click()
    r.wait_for("window.pyflightViewer.details !== null")
    stack_text = r.page.locator("#details").inner_text()
    assert EVIL_FUNCTION in stack_text and EVIL_DIR in stack_text
    # nothing became markup: no element came from the trace, nothing ran
    assert r.page.evaluate("document.querySelectorAll('img, script:not([src]), b').length") == 0
    r.page.wait_for_timeout(300)
    assert r.dialogs == [] and r.errors == []
