"""``pyflight report FILE --html OUT`` opened in a real browser: Playwright driving Chromium.

The traces are recorded here, each in a subprocess under ``problem_programs/_harness.py``:
two planted problems of ``problem_programs/`` (a CPU-heavy step on the event loop, one
slow request in thirty) and a program written by this module whose thread, asyncio task,
coroutine, user task, region, log and function names, file path and trace file name are
markup. The report of each is written by the CLI and opened from disk (file://) in
headless Chromium, and the tests check what a reader sees: nothing fetched, no console
error, the findings, tables, histograms, flame graphs (tooltips on hover: the report has
no script, a frame's details are its SVG ``<title>``) and timeline, and markup shown as
text, never run.

Chromium is Debian's (``/usr/bin/chromium``, or ``$PYFLIGHT_TEST_CHROMIUM``): Playwright
cannot download its own browser here. ``make test`` installs it with apt-get when it may;
without Chromium or the ``playwright`` package these tests skip, saying why.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from programs import record_program
from pyflight.cli import main as pyflight_main

HERE = Path(__file__).parent
SRC = HERE.parent / "src"
CHROMIUM = os.environ.get("PYFLIGHT_TEST_CHROMIUM", "/usr/bin/chromium")

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(2)>"
QUOTES = "\"dq\" 'sq' &amp;"  # the "&amp;" must show as typed, not as "&"
EVIL_FUNCTION = "burn" + SCRIPT + QUOTES
EVIL_COROUTINE = "coro" + IMG + QUOTES
EVIL_THREAD = "thread" + IMG + QUOTES
EVIL_ASYNCIO_TASK = "atask" + SCRIPT + QUOTES
EVIL_USER_TASK = "task" + SCRIPT + QUOTES
EVIL_REGION = "region" + IMG + QUOTES
EVIL_DIR = "dir<img src=x onerror=alert(3)>\"q'"
EVIL_TRACE = "trace<img src=x onerror=alert(4)>'\".pyfl"

# Everything is named with markup; one asyncio step runs a CPU-heavy function (the
# planted problem, so the function is the culprit of the top finding). The thread
# "bad\udcffname" has a lone surrogate in its name, as a name decoded from bytes with
# surrogateescape would.
EVIL_PROGRAM = f"""
import asyncio
import threading
import time

import pyflight


def _rename(func, name):
    func.__code__ = func.__code__.replace(co_name=name, co_qualname=name)
    func.__name__ = func.__qualname__ = name
    return func


def burn():
    total = 0
    deadline = time.process_time() + 0.3  # CPU time: a loaded machine must not shrink it
    while time.process_time() < deadline:
        for i in range(10_000):
            total += i * i % 7
    return total


burn = _rename(burn, {EVIL_FUNCTION!r})


async def step(i):
    with pyflight.task({EVIL_USER_TASK!r}):
        with pyflight.region({EVIL_REGION!r}):
            await asyncio.sleep(0.01)
            if i == 3:
                burn()
        pyflight.log({SCRIPT!r}, {IMG + QUOTES!r})


step = _rename(step, {EVIL_COROUTINE!r})


def waiter():
    time.sleep(0.15)


async def amain():
    threads = [
        threading.Thread(target=waiter, name={EVIL_THREAD!r}),
        threading.Thread(target=waiter, name="bad\\udcffname"),
    ]
    for t in threads:
        t.start()
    await asyncio.gather(*(asyncio.create_task(step(i), name={EVIL_ASYNCIO_TASK!r}) for i in range(6)))
    for t in threads:
        t.join()


def main():
    asyncio.run(amain())
"""


# ---------------------------------------------------------------- fixtures


def _html_report(trace: Path) -> Path:
    """``pyflight report TRACE --html TRACE.html`` (in this process; the terminal report is dropped)."""
    out = trace.parent / "report.html"
    with contextlib.redirect_stdout(io.StringIO()):
        assert pyflight_main(["report", str(trace), "--html", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.skip(f"browser tests need the playwright package (pip install -e '.[test]'): {exc}")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"browser tests need Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, timeout=30_000)
        except PlaywrightError as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            pytest.skip(f"Chromium at {CHROMIUM} does not start: {first_line}")
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def traces(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> a freshly recorded trace (recorded only if the browser starts)."""
    base = tmp_path_factory.mktemp("browser")
    evil_dir = base / EVIL_DIR
    evil_dir.mkdir()
    (evil_dir / "prog.py").write_text(EVIL_PROGRAM, encoding="utf-8")
    jobs = {
        "loop_blocked_cpu": (HERE / "problem_programs" / "loop_blocked_cpu.py", base / "lbc" / "t.pyfl"),
        "slow_tasks": (HERE / "problem_programs" / "slow_tasks.py", base / "st" / "t.pyfl"),
        "evil": (evil_dir / "prog.py", base / "evil" / EVIL_TRACE),
    }
    for _, out in jobs.values():
        out.parent.mkdir()
    with ThreadPoolExecutor(max_workers=2) as pool:
        recorded = pool.map(lambda job: record_program(*job, unbudgeted=True), jobs.values())
        return dict(zip(jobs, recorded, strict=True))


@pytest.fixture(scope="module")
def reports(traces: dict[str, Path]) -> Callable[[str], Path]:
    """name -> its HTML report, written on first use (a report that fails fails only its tests)."""
    return functools.cache(lambda name: _html_report(traces[name]))


@dataclass
class Opened:
    """A report open in a page, with everything the page did while loading and after."""

    page: Any
    path: Path
    url: str
    requests: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def svg_after(self, heading: str) -> Any:
        """The first <svg> after the <h2> or <h3> whose text is ``heading``."""
        return self.page.locator(
            f"xpath=//*[self::h2 or self::h3][normalize-space(.)={_xpath_literal(heading)}]"
            "/following::*[local-name()='svg'][1]"
        )

    def table_after(self, heading: str) -> Any:
        return self.page.locator(
            f"xpath=//h2[normalize-space(.)={_xpath_literal(heading)}]/following::table[1]"
        )


def _xpath_literal(text: str) -> str:
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    return "concat(" + ', "\'", '.join(f"'{part}'" for part in text.split("'")) + ")"


@pytest.fixture
def open_report(browser: Any, reports: Callable[[str], Path]) -> Iterator[Callable[[str], Opened]]:
    contexts: list[Any] = []

    def open_(name: str) -> Opened:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(10_000)
        path = reports(name)
        opened = Opened(page, path, path.as_uri())
        context.on("request", lambda request: opened.requests.append(request.url))
        page.on("websocket", lambda ws: opened.requests.append(ws.url))
        page.on("console", lambda msg: opened.console.append(f"{msg.type}: {msg.text}"))
        page.on("pageerror", lambda exc: opened.errors.append(str(exc)))

        def on_dialog(dialog: Any) -> None:
            opened.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        page.on("dialog", on_dialog)
        page.goto(opened.url, wait_until="load")
        return opened

    yield open_
    for context in contexts:
        context.close()


def _widest_frame(svg: Any, function: str) -> Any:
    """The <g> of the widest box of ``function`` in a flame graph."""
    frames = svg.locator("g").filter(has=svg.page.locator("title", has_text=re.compile(rf"^{function} \(")))
    assert frames.count() >= 1, f"no frame of {function}"
    widths = [float(frames.nth(i).locator("rect").get_attribute("width") or 0) for i in range(frames.count())]
    return frames.nth(widths.index(max(widths)))


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("name", ["loop_blocked_cpu", "slow_tasks", "evil"])
def test_page_loads_from_disk_with_nothing_fetched_and_no_errors(
    name: str, open_report: Callable[[str], Opened]
) -> None:
    r = open_report(name)
    r.page.wait_for_timeout(200)  # anything late (a lazy image, a font) would show up here
    assert r.requests == [r.url]
    assert r.console == [] and r.errors == [] and r.dialogs == []
    assert r.page.title().startswith("pyflight report — ")
    for heading in ("Findings", "Timeline", "Threads", "CPU flame graph", "Wall-clock flame graph"):
        assert r.page.get_by_role("heading", name=heading, exact=True).is_visible(), heading
    # nothing wider than the window (a 1280 px wide screen)
    assert r.page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")


@pytest.mark.parametrize(
    ("name", "severity", "title", "culprit"),
    [
        ("loop_blocked_cpu", "warning", "Event loop blocked for up to", "crunch_numbers"),
        ("slow_tasks", "info", "took much longer than usual", "slow_db_query"),
    ],
)
def test_top_finding_shows_title_and_culprit(
    name: str, severity: str, title: str, culprit: str, open_report: Callable[[str], Opened]
) -> None:
    r = open_report(name)
    top = r.page.locator(".finding").first
    assert top.is_visible()
    assert severity in (top.get_attribute("class") or "").split()
    headline = top.locator("b").first
    assert headline.is_visible()
    assert title in headline.inner_text() and culprit in headline.inner_text()
    line = top.locator(".culprit")
    assert line.is_visible()
    assert re.fullmatch(rf"culprit: {culprit} — .*/{name}\.py:\d+", line.inner_text().strip())
    assert top.locator(".hint").is_visible()


def test_tables_have_rows(open_report: Callable[[str], Opened]) -> None:
    r = open_report("loop_blocked_cpu")
    threads = r.table_after("Threads")
    assert threads.is_visible()
    head = threads.locator("th").all_inner_texts()
    assert head[:5] == ["name", "count", "total", "running", "ready"]
    rows = threads.locator("tr:has(td)")
    assert rows.count() >= 1
    main = rows.filter(has_text="MainThread")
    assert main.count() == 1
    cells = main.locator("td").all_inner_texts()
    assert len(cells) == len(head)
    assert re.fullmatch(r"[\d.]+ (s|ms)", cells[2])  # total
    assert re.fullmatch(r"\d+\.\d%", main.locator("td").nth(2).get_attribute("title") or "")

    tasks = r.table_after("Asyncio tasks by coroutine")
    assert tasks.is_visible()
    names = tasks.locator("tr:has(td) td:first-child").all_inner_texts()
    assert "amain" in names and "ticker" in names


def test_latency_histograms(open_report: Callable[[str], Opened]) -> None:
    r = open_report("slow_tasks")
    for heading in ("task request", "region db"):
        assert r.page.get_by_role("heading", name=heading, exact=True).is_visible()
        meta = r.page.locator(f"xpath=//h3[.='{heading}']/following-sibling::p[1]").inner_text()
        assert re.match(r"30 done, median [\d.]+ ms, p99 [\d.]+ ms, max [\d.]+ ms", meta), meta
        svg = r.svg_after(heading)
        box = svg.bounding_box()
        assert box is not None and box["width"] > 100 and box["height"] > 50
        bars = svg.locator("rect")
        assert bars.count() >= 2  # the usual ~10 ms ones and the 500 ms one, far apart
        tips = svg.locator("title").all_text_contents()
        assert sum(int(t.rsplit(": ", 1)[1]) for t in tips) == 30
        labels = svg.locator("text").all_text_contents()
        assert len(labels) == 2 and labels[1].endswith("ms")


@pytest.mark.parametrize("graph", ["CPU flame graph", "Wall-clock flame graph"])
def test_flame_graph_renders_the_planted_function(graph: str, open_report: Callable[[str], Opened]) -> None:
    r = open_report("loop_blocked_cpu")
    svg = r.svg_after(graph)
    svg.scroll_into_view_if_needed()
    box = svg.bounding_box()
    assert box is not None and box["width"] > 800 and box["height"] > 100
    assert svg.locator("rect").count() >= 10
    frame = _widest_frame(svg, "crunch_numbers")
    assert frame.locator("rect").is_visible()
    label = frame.locator("text")
    assert label.is_visible() and label.text_content() == "crunch_numbers"
    # the top box (the threads' entry point) spans the whole graph
    widths = svg.locator("rect[y='0']").evaluate_all("rs => rs.map(r => +r.getAttribute('width'))")
    assert sum(widths) == pytest.approx(1000, abs=1)
    # every label fits in its box (the rest of a long name is cut to "…")
    overflowing = svg.evaluate(
        """svg => Array.from(svg.querySelectorAll('g > text')).filter(t => {
            const box = t.parentNode.querySelector('rect');
            return +t.getAttribute('x') + t.getComputedTextLength()
                > +box.getAttribute('x') + +box.getAttribute('width') + 0.5;
        }).map(t => t.textContent)"""
    )
    assert overflowing == []


def test_flame_graph_hover_shows_the_frame(open_report: Callable[[str], Opened]) -> None:
    """The report has no script: a frame's details are its <title>, the browser's tooltip of
    whatever is under the pointer. Hovering the box (or its label) must land in that frame."""
    r = open_report("loop_blocked_cpu")
    svg = r.svg_after("CPU flame graph")
    frame = _widest_frame(svg, "crunch_numbers")
    total = svg.locator("rect[y='0']").evaluate_all(
        "rs => rs.reduce((s, r) => s + +r.getAttribute('width'), 0)"
    )
    frame.scroll_into_view_if_needed()
    rect, label = frame.locator("rect").bounding_box(), frame.locator("text").bounding_box()
    assert rect is not None and label is not None
    # past the end of the label, then on the label
    for part, x, y in (
        ("rect", rect["x"] + rect["width"] - 3, rect["y"] + rect["height"] / 2),
        ("text", label["x"] + label["width"] / 2, label["y"] + label["height"] / 2),
    ):
        r.page.mouse.move(x, y)
        hovered, tooltip = r.page.evaluate(
            """() => {
                const hovered = Array.from(document.querySelectorAll(':hover')).pop();
                const group = hovered && hovered.closest('g');
                return [hovered && hovered.localName,
                        group ? group.querySelector(':scope > title').textContent : null];
            }"""
        )
        assert hovered == part
        assert tooltip == frame.locator("title").text_content(), part
    match = re.fullmatch(r"crunch_numbers \((.+):(\d+)\) ([\d.]+) (ms|s), ([\d.]+)%", tooltip or "")
    assert match, tooltip
    assert match.group(1).endswith("loop_blocked_cpu.py")
    # the share in the tooltip is the box's share of the width
    width = float(frame.locator("rect").get_attribute("width") or 0)
    assert float(match.group(5)) == pytest.approx(100 * width / total, abs=0.2)


def test_timeline_overview(open_report: Callable[[str], Opened]) -> None:
    r = open_report("loop_blocked_cpu")
    legend = r.page.locator("p.legend")
    assert legend.is_visible()
    assert {"running", "idle", "loop stall"} <= set(legend.locator("span").all_inner_texts())
    svg = r.svg_after("Timeline")
    box = svg.bounding_box()
    assert box is not None and box["width"] > 800 and box["height"] > 40
    labels = svg.locator(":scope > text").all_text_contents()
    assert labels[0] == "MainThread" and labels[1].startswith("loop ") and "gc" in labels
    assert labels[-2] == "0 s" and re.fullmatch(r"[\d.]+ m?s", labels[-1])
    rows = svg.locator(":scope > g")
    main_row = rows.nth(0).locator("rect")
    assert main_row.count() >= 2
    fills = set(main_row.evaluate_all("rs => rs.map(r => r.getAttribute('fill'))"))
    assert "#4caf50" in fills  # running: the CPU-heavy steps
    # the loop row shows the two long steps as stalls (dark red, with their length as tooltip)
    loop_row = rows.nth(1).locator("rect")
    assert loop_row.count() >= 2
    stalls = rows.nth(1).locator("rect[fill='#b71c1c']")
    assert stalls.count() >= 1
    # ~0.3 s on the C core; the pure core under load can take seconds
    assert re.fullmatch(r"stall [\d.]+ m?s", stalls.first.locator("title").text_content() or "")
    assert float(stalls.first.get_attribute("width") or 0) >= 50  # >= 100 ms of a ~1 s trace
    for rect in (main_row.first, loop_row.first):
        rect_box = rect.bounding_box()
        assert rect_box is not None and rect_box["width"] > 0 and rect_box["height"] > 5


def test_trace_strings_are_shown_as_text_never_run(open_report: Callable[[str], Opened]) -> None:
    r = open_report("evil")
    page = r.page
    page.wait_for_timeout(200)
    assert r.dialogs == [] and r.errors == [] and r.console == []
    assert r.requests == [r.url]
    # no element came from the trace's strings: only the report's own tags, no handlers
    tags = set(page.evaluate("Array.from(document.querySelectorAll('*')).map(e => e.localName)"))
    assert tags <= {
        *"html head meta title style body h1 h2 h3 p div span b small ul li details summary".split(),
        *"table tbody tr th td svg g rect text code".split(),
    }, tags
    attributes = set(
        page.evaluate("Array.from(document.querySelectorAll('*')).flatMap(e => e.getAttributeNames())")
    )
    assert not {a for a in attributes if a.startswith("on") or a in ("src", "href")}, attributes
    assert page.title() == f"pyflight report — {r.path.parent / EVIL_TRACE}"

    body = page.inner_text("body")
    top = page.locator(".finding").first
    assert EVIL_FUNCTION in top.locator("b").first.inner_text()
    assert top.locator(".culprit").inner_text().startswith(f"culprit: {EVIL_FUNCTION} — ")
    assert f"/{EVIL_DIR}/prog.py:" in top.locator(".culprit").inner_text()
    assert repr(EVIL_ASYNCIO_TASK) in body  # in the finding's evidence, a list of names
    assert EVIL_TRACE in page.locator("h1").inner_text()
    thread_names = r.table_after("Threads").locator("td:first-child").all_inner_texts()
    assert any(n.startswith(EVIL_THREAD + " (") for n in thread_names), thread_names
    assert any(n.startswith("bad\ufffdname (") for n in thread_names), thread_names
    coroutines = r.table_after("Asyncio tasks by coroutine").locator("td:first-child").all_inner_texts()
    assert EVIL_COROUTINE in coroutines
    for heading in (f"task {EVIL_USER_TASK}", f"region {EVIL_REGION}"):
        assert page.get_by_role("heading", name=heading, exact=True).is_visible(), heading
    timeline_labels = r.svg_after("Timeline").locator(":scope > text").all_text_contents()
    assert EVIL_THREAD[:24] in timeline_labels
    for graph in ("CPU flame graph", "Wall-clock flame graph"):
        tips = r.svg_after(graph).locator("title").all_text_contents()
        assert any(t.startswith(f"{EVIL_FUNCTION} (") and f"/{EVIL_DIR}/prog.py:" in t for t in tips), graph
    # the log line is not shown in the report: it only must not have turned into markup
    assert not page.locator("img, script, iframe").count()


def test_lone_surrogates_are_written_as_replacement_characters() -> None:
    """Without a browser too: a name decoded with surrogateescape (a non-UTF-8 path) used to
    make ``pyflight report --html`` fail with UnicodeEncodeError when writing the file."""
    from pyflight.format.reader import Frame
    from pyflight.report.html import esc, flame_svg

    assert esc("bad\udcff<b>") == "bad\ufffd&lt;b&gt;"
    svg = flame_svg({(Frame("f\udcff", "/srv/caf\udce9.py", 3),): 5_000_000})
    svg.encode("utf-8")
    assert "f\ufffd (/srv/caf\ufffd.py:3)" in svg
