"""``pyflight report``: terminal, --json (DESIGN.md contract) and --html (self-contained,
escaped), through ``pyflight.commands.report`` (the CLI's ``report`` verb)."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

import pytest

from programs import record_named
from pyflight.analysis import build
from pyflight.cli import dispatch
from pyflight.commands.report import add_arguments
from pyflight.core.events import BlockReason, Kind, TaskOutcome, ThreadState
from pyflight.format.reader import loads
from pyflight.report import analyze
from pyflight.report.html import flame_svg, histogram_svg
from pyflight.report.html import render as render_html
from pyflight.report.text import render as render_text
from tracegen import Gen, trace

HERE = Path(__file__).parent
SRC = HERE.parent / "src"
EVIL = "<script>alert('x')</script>"
MS = 1_000_000


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    out_dir = tmp_path_factory.mktemp("report")
    names = ["loop_blocked_sleep", "slow_tasks", "untraced_subprocess_wait"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield dict(
            zip(
                names,
                pool.map(lambda n: record_named(n, out_dir), names),
                strict=True,
            )
        )


def evil_trace(thread_name: str = EVIL) -> bytes:
    """A small trace whose thread, task, coroutine, user task, region and frame names are markup."""
    gen = Gen(seq=1, start_ns=1 * MS, end_ns=900 * MS)
    tid = 7
    stack = [(EVIL, "<evil>.py", 3), ("main", "/app/<b>main</b>.py", 9)]
    gen.event(tid, Kind.THREAD_INFO, 1 * MS, tid=tid, name=thread_name, ident=1)
    gen.event(tid, Kind.TASK_CREATE, 2 * MS, task=11, name=EVIL, coro=EVIL + ".coro", parent=0)
    gen.event(tid, Kind.USER_TASK_BEGIN, 2 * MS, id=5, parent=0, name=EVIL)
    gen.event(tid, Kind.REGION_BEGIN, 2 * MS, task=5, name=EVIL)
    gen.event(tid, Kind.TASK_STEP_BEGIN, 3 * MS, task=11)
    gen.event(tid, Kind.BLOCK_BEGIN, 4 * MS, reason=int(BlockReason.LOCK), obj=99, stack=stack)
    for i in range(30):
        gen.event(
            tid + 1,
            Kind.SAMPLE,
            (10 + 10 * i) * MS,
            tid=tid,
            task=11,
            stack=stack,
            state=int(ThreadState.RUNNING),
        )
    gen.event(tid, Kind.BLOCK_END, 500 * MS, reason=int(BlockReason.LOCK), obj=99, waker=0)
    gen.event(tid, Kind.TASK_STEP_END, 600 * MS, task=11)
    gen.event(tid, Kind.TASK_DONE, 600 * MS, task=11, outcome=int(TaskOutcome.FAILED), error=EVIL)
    gen.event(tid, Kind.REGION_END, 700 * MS, task=5, name=EVIL)
    gen.event(tid, Kind.USER_TASK_END, 800 * MS, id=5)
    gen.event(tid, Kind.LOG, 800 * MS, task=5, category=EVIL, message=EVIL)
    gen.event(tid, Kind.DATA_LOSS, 850 * MS, source=EVIL, events=3, reason=EVIL)
    return trace([gen])


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(list(argv))
    args.command = "report"
    return args


def run(args: argparse.Namespace) -> int:
    """``pyflight report`` with parsed ``args``, errors handled as the CLI does."""
    return dispatch(args)


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend(attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _check_self_contained(page: str) -> _Collect:
    assert page.startswith("<!DOCTYPE html>")
    parser = _Collect()
    parser.feed(page)
    assert "script" not in parser.tags
    assert "link" not in parser.tags and "img" not in parser.tags and "iframe" not in parser.tags
    for name, value in parser.attrs:
        assert name not in ("src", "href"), (name, value)
        assert not name.startswith("on"), name
    # the only URL is the SVG namespace, which is never fetched
    assert page.replace("http://www.w3.org/2000/svg", "").count("http") == 0
    return parser


def test_terminal_report_findings_first(traces: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(_args(str(traces["loop_blocked_sleep"]))) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert captured.err == ""  # no progress when stderr is not a terminal
    assert out.index("Findings") < out.index("!! [") < out.index("Threads (ms)") < out.index("Top CPU stacks")
    assert "load_config_sync" in out.split("Threads (ms)")[0]
    assert "Asyncio tasks by coroutine" in out and "handler" in out
    assert "MainThread" in out


def test_evidence_reads_as_a_person_would_write_it(
    traces: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The terminal shows a loop's id as an address and a share as a percentage (the
    JSON keeps the raw numbers)."""
    assert run(_args(str(traces["loop_blocked_sleep"]))) == 0
    out = capsys.readouterr().out
    blocked = next(line for line in out.splitlines() if "blocked_share:" in line)
    assert re.fullmatch(r"\s+blocked_share: \d+\.\d%", blocked), blocked
    loop = next(line for line in out.splitlines() if line.strip().startswith("loop:"))
    assert re.fullmatch(r"\s+loop: 0x[0-9a-f]+", loop), loop
    assert run(_args(str(traces["loop_blocked_sleep"]), "--json")) == 0
    finding = next(f for f in json.loads(capsys.readouterr().out)["findings"] if f["rule"] == "loop-blocked")
    assert isinstance(finding["evidence"]["loop"], int) and 0 < finding["evidence"]["blocked_share"] <= 1


def test_json_contract(traces: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(_args(str(traces["slow_tasks"]), "--json")) == 0
    doc = json.loads(capsys.readouterr().out)
    summary = doc["summary"]
    for key in ("duration_ns", "threads", "tasks", "events", "generations", "data_loss", "samples"):
        assert key in summary, key
    assert summary["events"] > 0 and summary["generations"] >= 1 and summary["user_tasks"] == 30
    findings = doc["findings"]
    assert findings
    assert [f["score"] for f in findings] == sorted((f["score"] for f in findings), reverse=True)
    for f in findings:
        assert set(f) >= {"rule", "score", "title", "culprit", "evidence", "hint"}
        assert 0 <= f["score"] <= 100
        assert f["culprit"] is None or set(f["culprit"]) == {"function", "file", "line"}
    assert findings[0]["culprit"]["function"] == "slow_db_query"
    assert doc["threads"] and doc["threads"][0]["total_ns"] > 0
    assert doc["top_stacks"]["wall"]


def test_html_report(traces: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.html"
    assert run(_args(str(traces["slow_tasks"]), "--html", str(out))) == 0
    assert str(out) in capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    parser = _check_self_contained(page)
    text = "".join(parser.text)
    assert "slow_db_query" in text
    assert parser.tags.count("svg") >= 4  # timeline, histograms, two flame graphs
    for heading in (
        "Findings",
        "Timeline",
        "Threads",
        "Latency",
        "CPU flame graph",
        "Wall-clock flame graph",
    ):
        assert heading in text
    assert "task request" in text and "region db" in text  # histograms per name
    # flame graph rects carry the frame in their tooltip
    assert "handle (" in text


def test_the_legend_lists_and_explains_every_blocked_colour_the_timeline_draws(
    traces: dict[str, Path], tmp_path: Path
) -> None:
    """Threads waiting in ``subprocess.run`` (``waitpid``: no hook sees it) are found
    from the samples, "blocked: other" in the model: the timeline draws them in a colour
    of their own, and the legend lists it beside the other blocked reasons, with the
    model's words as its tooltip."""
    from pyflight.analysis.cpu import UNTRACED
    from pyflight.analysis.model import State
    from pyflight.report.html import REASON_COLORS

    report = analyze(loads(traces["untraced_subprocess_wait"].read_bytes()))
    converters = [t for t in report.model.threads.values() if (t.name or "").startswith("converter-")]
    untraced = [
        iv
        for t in converters
        for iv in t.intervals
        if iv.state is State.BLOCKED and iv.reason is BlockReason.OTHER and iv.detail.startswith(UNTRACED)
    ]
    assert untraced, "no wait found from the samples"
    page = render_html(report)
    _check_self_contained(page)
    legend = re.search(r'<p class="legend">(.*?)</p>', page)
    assert legend is not None
    items = re.findall(
        r'<span style="background:(#[0-9a-f]{6})"(?: title="([^"]*)")?>([^<]*)</span>', legend[1]
    )
    colors = {name: (color, title) for color, title, name in items}
    assert len(colors) == len(items) == len({c for c, _, _ in items}), items  # one colour each
    for reason in BlockReason:
        assert f"blocked: {reason.name.lower()}" in colors, (reason, items)
    color, title = colors["blocked: other"]
    assert color == REASON_COLORS[BlockReason.OTHER]
    assert title == UNTRACED == "off-CPU in a call pyflight does not trace"
    timeline = page[page.index("<h2>Timeline</h2>") : page.index("<h2>Threads")]
    assert f'fill="{color}"' in timeline  # the waits are drawn in it
    # the thread table's column says the same
    assert f'<th class="n" title="{UNTRACED}">blocked: other</th>' in page


def test_html_and_json_with_json_flag(
    traces: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.html"
    assert run(_args(str(traces["loop_blocked_sleep"]), "--json", "--html", str(out))) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["findings"][0]["rule"] == "loop-blocked"
    assert out.stat().st_size > 1000


def test_markup_in_trace_strings_is_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "evil.pyfl"
    path.write_bytes(evil_trace())
    model = build(loads(path.read_bytes()))
    assert any(t.name == EVIL for t in model.threads.values())
    assert any(t.name == EVIL for t in model.all_tasks())
    out = tmp_path / "evil.html"
    assert run(_args(str(path), "--html", str(out))) == 0
    page = out.read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert "<evil>" not in page and "<b>main</b>" not in page
    assert "&lt;script&gt;" in page
    parser = _check_self_contained(page)
    assert EVIL in "".join(parser.text)  # shown to the reader as text
    text = capsys.readouterr().out
    assert "Lock contention" in text
    assert run(_args(str(path), "--json")) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["threads"][0]["name"].startswith(EVIL)


def test_names_that_cannot_be_encoded_are_replaced_not_fatal(tmp_path: Path) -> None:
    """A lone surrogate (a non-UTF-8 name read with surrogateescape) on an ASCII stdout."""
    path = tmp_path / "odd.pyfl"
    path.write_bytes(evil_trace(thread_name="bad\udcffname é"))
    env = dict(os.environ, PYTHONIOENCODING="ascii")
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    page = tmp_path / "odd.html"
    for extra in ((), ("--json",), ("--html", str(page))):
        proc = subprocess.run(
            [sys.executable, "-m", "pyflight", "report", str(path), *extra],
            env=env,
            capture_output=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        assert b"bad?name ?" in proc.stdout or b"bad\\udcffname" in proc.stdout, extra
    assert "bad\ufffdname é" in page.read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.html", "odd.pyfl"]  # no temporary left


def test_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(_args(str(tmp_path / "nope.pyfl"))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.pyfl" in err


def test_bad_trace_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.pyfl"
    bad.write_bytes(b"this is not a trace at all" * 10)
    assert run(_args(str(bad))) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "bad.pyfl" in captured.err
    assert captured.out == ""


def test_module_entry_point(traces: dict[str, Path]) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "pyflight", "report", str(traces["slow_tasks"]), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["findings"]


def test_progress_goes_to_a_terminal_only(traces: dict[str, Path]) -> None:
    seen: list[float] = []
    report = analyze(loads(traces["slow_tasks"].read_bytes()), progress=seen.append)
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)
    assert render_text(report).startswith("pyflight report")
    assert render_html(report).endswith("</html>\n")


def test_svg_pieces_are_well_formed() -> None:
    import xml.etree.ElementTree as ET

    from pyflight.format.reader import Frame

    stacks = {
        (Frame("inner<>", "a.py", 1), Frame("outer&", "a.py", 2)): 30,
        (Frame("other", "b.py", 5), Frame("outer&", "a.py", 2)): 10,
    }
    root = ET.fromstring(flame_svg(stacks))
    assert root.tag.endswith("svg")
    titles = [el.text or "" for el in root.iter() if el.tag.endswith("title")]
    assert any(t.startswith("outer& ") and "100.0%" in t for t in titles)
    assert any(t.startswith("inner<> ") and "75.0%" in t for t in titles)
    hist = ET.fromstring(histogram_svg([MS, 2 * MS, 2 * MS, 50 * MS]))
    assert sum(1 for el in hist.iter() if el.tag.endswith("rect")) == 3
    assert histogram_svg([]) == ""


def test_flame_graph_gives_one_box_per_function_not_per_line() -> None:
    """A hot loop samples on several lines of one function: one box (named, wide), its
    tooltip the line that weighs most; a different caller still gets a box of its own."""
    import xml.etree.ElementTree as ET

    from pyflight.format.reader import Frame

    main = Frame("main", "a.py", 20)
    stacks = {
        (Frame("crunch", "a.py", 8), main): 30_000_000,
        (Frame("crunch", "a.py", 9), main): 50_000_000,
        (Frame("crunch", "a.py", 9), Frame("main", "a.py", 22)): 10_000_000,
        (Frame("crunch", "b.py", 9), main): 10_000_000,
    }
    root = ET.fromstring(flame_svg(stacks))
    titles = [el.text or "" for el in root.iter() if el.tag.endswith("title")]
    assert titles.count("main (a.py:20) 100 ms, 100.0%") == 1
    assert "crunch (a.py:9) 90 ms, 90.0%" in titles  # lines 8 and 9, both callers' lines
    assert "crunch (b.py:9) 10 ms, 10.0%" in titles  # another file: another function
    widths = sorted(float(el.get("width", 0)) for el in root.iter() if el.tag.endswith("rect"))
    assert widths == [100, 900, 1000]


def test_progress_shows_on_a_real_terminal(traces: dict[str, Path]) -> None:
    """stderr a tty (a pseudo-terminal here): the progress line ends at 100%; stdout (a
    pipe) gets the report alone, uncoloured."""
    import pty

    main_fd, tty_fd = pty.openpty()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pyflight", "report", str(traces["slow_tasks"])],
            env=env,
            stdout=subprocess.PIPE,
            stderr=tty_fd,
            timeout=60,
        )
        os.close(tty_fd)
        shown = b""
        while True:
            try:
                chunk = os.read(main_fd, 4096)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(main_fd)
    assert proc.returncode == 0
    assert b"analysing trace..." in shown and b"100%" in shown
    assert proc.stdout.startswith(b"pyflight report") and b"\x1b[" not in proc.stdout
    assert b"analysing" not in proc.stdout
