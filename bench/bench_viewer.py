"""``pyflight view`` on a big trace: time to the first answer, first draw, panning frames.

Records (once, cached at the path given) a 20 s trace of ~1.5 M events of a paced busy
program (the workload of bench_analysis.py: threads on a lock and a queue, asyncio tasks
on a queue, user tasks and regions, GC, the sampler; its pause per turn is adjusted
while it runs, from the recorder's event count, so that the trace holds the events
asked for whatever the machine's speed). Events are counted as the reader yields them
(``len(pyflight.load(TRACE).events)``, what the model is built from): the recorder
writes an asyncio step or callback as one event that the reader expands to two, so its
own count is lower (a trace paced on it to 1.5 M held ~2.4 M events). Then, ROUNDS times:

- server: ``pyflight view TRACE --port 0 --no-browser`` started as a user starts it,
  timed until ``/api/meta`` first answers (the trace read; the analysis then runs in the
  background and the page shows its progress) and until it answers with the timeline's
  rows (the model built: rows are laid out on first use, the rules run after, while the
  timeline is served); the in-process split (load / model / rows / first slices of
  every row / rules) is printed once, with the server's peak RSS; and, with no browser
  on the machine, until the page's first slices are answered (the usable timeline),
  with the CPU time the server used until then (that wait on an idle CPU);
- first draw: headless Chromium opens the page as soon as the server answers;
  ``performance.now()`` (0 = navigation start) when it has drawn the whole trace with its
  first slices (this waits for the model and rows, not the rules), and that moment in
  seconds since the command started (what a user waits for); then the page is
  loaded again on the ready server (a second visit, or a browser opened later) and timed
  the same way;
- panning: 240 animation frames panning by 1/120 of the view each, then 240 zooming in and
  out; each frame's draw time and the interval between frames, measured in the page with
  ``performance.now()``.

Usage: python bench/bench_viewer.py [TRACE] [--seconds S] [--events N] [--pace US]
(``--events``: about N events in S seconds, 1.5 M in 20 s by default; ``--events 0``:
no pacing, ``--pace`` as given; a rate the workload cannot reach is said, then record
longer: ``--events 5e6 --seconds 70``). Figures in
docs/performance.md (the viewer section). ``--screenshot PNG TRACE`` instead takes the
picture in docs/images/viewer.png: TRACE served, its top finding followed (its slice
selected, the waker's arrow drawn), the page saved.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from _common import summary

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
CHROMIUM = os.environ.get("PYFLIGHT_TEST_CHROMIUM", "/usr/bin/chromium")
ROUNDS = 3
EVENTS = 1.5e6  # in SECONDS: what the goal is stated for
SECONDS = 20.0
SERVING = re.compile(r"at (http://\S+/) \(Ctrl-C to stop\)$")


def _workload(stop: threading.Event, pace: list[float]) -> None:
    """Threads and an event loop keeping every source busy, each pausing ``pace[0]`` s per
    turn (changed while they run: see ``make_trace``)."""
    import pyflight

    lock = threading.Lock()
    jobs: queue.Queue[int] = queue.Queue(maxsize=8)

    def contender() -> None:
        while not stop.is_set():
            with lock:
                sum(range(200))
            time.sleep(pace[0])

    def producer() -> None:
        i = 0
        while not stop.is_set():
            try:
                jobs.put(i, timeout=0.05)
            except queue.Full:
                pass
            i += 1
            time.sleep(pace[0])

    def consumer() -> None:
        while not stop.is_set():
            try:
                jobs.get(timeout=0.05)
            except queue.Empty:
                continue
            with pyflight.task("job"), pyflight.region("work"):
                sum(range(100))

    async def stepper(q: asyncio.Queue[int]) -> None:
        while not stop.is_set():
            await asyncio.sleep(pace[0])
            await q.put(1)

    async def drainer(q: asyncio.Queue[int]) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(q.get(), 0.05)
            except TimeoutError:
                pass

    async def main() -> None:
        q: asyncio.Queue[int] = asyncio.Queue(maxsize=16)
        tasks = [asyncio.create_task(stepper(q), name=f"stepper-{i}") for i in range(20)]
        tasks += [asyncio.create_task(drainer(q), name=f"drainer-{i}") for i in range(10)]
        while not stop.is_set():
            await asyncio.sleep(0.01)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    threads = [
        threading.Thread(target=f, name=f.__name__, daemon=True)
        for f in (contender, contender, producer, consumer, consumer)
    ]
    threads.append(threading.Thread(target=lambda: asyncio.run(main()), name="loop", daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def make_trace(path: str, seconds: float, pace: float, events: float = 0) -> None:
    """Record ``seconds`` of the workload to ``path``; with ``events``, its pause per turn
    is set every 0.25 s so that the trace holds about that many events *as the reader
    yields them* (the rate a pause gives depends on the machine and its load).

    The recorder writes an asyncio step or callback as one event (TASK_STEP, CALLBACK),
    which the reader expands to a BEGIN and an END: its count of recorded events is fewer
    than the trace's. The pacing follows the recorder's count scaled by the expansion
    measured on snapshots of the window taken while it records (at ~2 s and ~8 s), so
    that "1.5 M events" is the trace's (what the model is built from), as it was before
    steps became one event each (a trace paced on the recorded count held ~2.4 M)."""
    import pyflight

    stop = threading.Event()
    box = [pace]
    expand = 1.0  # the trace's events per recorded event, measured while recording
    checks = [2.0, 8.0] if events else []
    with pyflight.FlightRecorder(min_age=3600, max_bytes=2048 * 2**20) as rec:
        runner = threading.Thread(target=_workload, args=(stop, box), name="workload")
        started = time.perf_counter()
        runner.start()
        last_t, last_n = started, 0
        while True:
            now = time.perf_counter()
            left = seconds - (now - started)
            if left <= 0:
                break
            time.sleep(min(0.25, left))
            if not events:
                continue
            if checks and time.perf_counter() - started >= checks[0]:
                checks.pop(0)
                expand = _expansion(rec, path + ".part")
            now = time.perf_counter()
            count = int(rec.stats().get("events", 0)) * expand
            left = seconds - (now - started)
            rate = (count - last_n) / max(1e-6, now - last_t)
            if left > 0.1 and rate > 0:
                needed = max(1.0, (events - count) / left)
                box[0] = min(0.2, max(20e-6, box[0] * min(2.0, max(0.5, rate / needed))))
            last_t, last_n = now, count
        stop.set()
        runner.join()
        rec.write_to(path)
    count = len(pyflight.load(path).events)
    if events and count < 0.95 * events:
        print(
            f"warning: the workload made {count:,} events in {seconds:g} s, not {events:,.0f}: "
            "record longer (--seconds)",
            file=sys.stderr,
        )


def _expansion(rec: object, part: str) -> float:
    """The trace's events per event the recorder counts, from a snapshot of its window."""
    import pyflight

    recorded = int(rec.stats().get("events", 0))  # type: ignore[attr-defined]
    rec.write_to(part)  # type: ignore[attr-defined]
    try:
        return max(1.0, len(pyflight.load(part).events) / max(1, recorded))
    finally:
        os.unlink(part)


def _in_process_split(path: str) -> str:
    import gc

    import pyflight
    from pyflight.analysis.model import build
    from pyflight.analysis.result import report_of
    from pyflight.viewer.api import TimelineApi

    gc.disable()
    t0 = time.perf_counter()
    trace = pyflight.load(path)
    t1 = time.perf_counter()
    model = build(trace)
    t2 = time.perf_counter()
    api = TimelineApi(model)
    t3 = time.perf_counter()
    # what the page asks first: the whole trace, every row (rows are laid out on first use)
    api.slices(0, api.duration, 2400, [row.id for row in api.rows])
    t4 = time.perf_counter()
    report_of(model)
    t5 = time.perf_counter()
    gc.enable()
    return (
        f"load {t1 - t0:.2f} s, model {t2 - t1:.2f} s, timeline rows {t3 - t2:.2f} s, "
        f"first slices of every row {t4 - t3:.2f} s, then the rules and tables {t5 - t4:.2f} s "
        "(the timeline is served meanwhile)"
    )


def _serve(path: str) -> tuple[subprocess.Popen[str], str, float]:
    """Start ``pyflight view``; its URL and the seconds until /api/meta first answered."""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyflight", "view", path, "--port", "0", "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    match = SERVING.search(proc.stdout.readline().strip())
    assert match, "pyflight view did not start"
    url = match.group(1)
    with urllib.request.urlopen(url + "api/meta", timeout=600) as response:
        json.load(response)
    return proc, url, time.perf_counter() - started


def _wait_ready(url: str, started: float) -> float:
    """Seconds from ``started`` until /api/meta answers with the timeline's rows."""
    while True:
        with urllib.request.urlopen(url + "api/meta", timeout=600) as response:
            if "rows" in json.load(response):
                return time.perf_counter() - started
        time.sleep(0.05)


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _first_slices(path: str) -> tuple[float, float, float]:
    """No browser: seconds from the command's start until the rows are served, and until
    the page's first request (the whole trace, 1,390 px, every row: an upper bound of
    the rows on screen) is answered: the usable timeline, the machine's own share; and
    the CPU seconds the server used until then (what that wait is on an idle CPU: on a
    shared machine the wall time is that and the other jobs' share)."""
    started = time.perf_counter()
    proc, url, _ = _serve(path)
    try:
        ready = _wait_ready(url, started)
        with urllib.request.urlopen(url + "api/meta", timeout=600) as response:
            meta = json.load(response)
        ids = ",".join(str(row["id"]) for row in meta["rows"])
        query = f"api/slices?t0=0&t1={meta['duration']}&w=1390&rows={ids}"
        with urllib.request.urlopen(url + query, timeout=600) as response:
            response.read()
        return ready, time.perf_counter() - started, _cpu_s(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


PAN = """async () => {
  const v = window.pyflightViewer;
  const frame = () => new Promise((resolve) => requestAnimationFrame(resolve));
  const full = v.view;
  v.setView(full.t0 + (full.t1 - full.t0) * 0.4, full.t0 + (full.t1 - full.t0) * 0.45);
  while (!v.ready) await frame();
  await frame();
  const skip = v.frames.length;
  const gaps = [];
  let last = performance.now();
  for (let n = 0; n < 480; n++) {
    const view = v.view, span = view.t1 - view.t0;
    if (n < 240) v.setView(view.t0 + span / 120, view.t1 + span / 120);
    else { const f = n % 60 < 30 ? 0.97 : 1 / 0.97, mid = (view.t0 + view.t1) / 2;
           v.setView(mid - span * f / 2, mid + span * f / 2); }
    await frame();
    const now = performance.now();
    gaps.push(now - last);
    last = now;
  }
  return { draws: v.frames.slice(skip), gaps };
}"""


def _first_draw(page: object) -> float:
    first = None
    while first is None:
        first = page.evaluate("() => window.pyflightViewer && window.pyflightViewer.firstDraw")  # type: ignore[attr-defined]
        if first is None:
            time.sleep(0.01)
    return float(first)


def _browser_round(
    playwright: object, url: str, started: float
) -> tuple[float, float, float, float, list[float], list[float]]:
    """First draw opened at once (ms after navigation, and s after the command started),
    seconds from the command's start until the rows are served, first draw on the ready
    server (ms), then the panning frames."""
    browser = playwright.chromium.launch(  # type: ignore[attr-defined]
        executable_path=CHROMIUM, headless=True, args=["--disable-background-networking"]
    )
    ready_at: list[float] = []  # polled beside the page, not after its first draw
    poller = threading.Thread(target=lambda: ready_at.append(_wait_ready(url, started)), daemon=True)
    poller.start()
    try:
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        navigated = time.perf_counter() - started
        page.goto(url, wait_until="load")
        cold = _first_draw(page)
        drawn = navigated + cold / 1000
        poller.join()
        ready = ready_at[0]
        page.reload(wait_until="load")
        warm = _first_draw(page)
        result = page.evaluate(PAN)
        return cold, drawn, ready, warm, list(result["draws"]), list(result["gaps"])
    finally:
        browser.close()


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def screenshot(path: str, out: str) -> None:
    from playwright.sync_api import sync_playwright

    proc, url, _ = _serve(path)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 760})
            page.goto(url, wait_until="load")
            while not page.evaluate("() => window.pyflightViewer && window.pyflightViewer.ready"):
                time.sleep(0.02)
            page.locator("#findings .finding-link").first.click()
            while not page.evaluate("() => window.pyflightViewer.details && window.pyflightViewer.ready"):
                time.sleep(0.02)
            page.wait_for_timeout(300)
            page.screenshot(path=out)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("trace", nargs="?")
    parser.add_argument("--screenshot", metavar="PNG", help="save a picture of TRACE's timeline and stop")
    parser.add_argument("--seconds", type=float, default=SECONDS)
    parser.add_argument(
        "--events", type=float, default=EVENTS, help="events to record in --seconds (0: no pacing)"
    )
    parser.add_argument(
        "--pace", type=float, default=1500.0, help="µs each worker pauses per turn (at first, with --events)"
    )
    args = parser.parse_args()
    if args.screenshot:
        screenshot(args.trace, args.screenshot)
        return 0
    path = args.trace or os.path.join(tempfile.mkdtemp(), "viewer.pyfl")
    if not os.path.exists(path):
        make_trace(path, args.seconds, args.pace / 1e6, args.events)
    import pyflight

    trace = pyflight.load(path)
    size = os.path.getsize(path) / 2**20
    print(f"trace {path}: {len(trace.events):,} events, {size:.1f} MiB, {trace.duration_ns / 1e9:.1f} s")
    del trace
    print("in-process split:", _in_process_split(path))
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None  # type: ignore[assignment]
    server_s: list[float] = []
    ready_s: list[float] = []
    cold_ms: list[float] = []
    drawn_s: list[float] = []
    warm_ms: list[float] = []
    rss: list[float] = []
    draws: list[float] = []
    gaps: list[float] = []
    browser_ok = sync_playwright is not None and os.access(CHROMIUM, os.X_OK)
    alone_ready: list[float] = []
    alone_sliced: list[float] = []
    alone_cpu: list[float] = []
    for _ in range(ROUNDS):
        ready, sliced, cpu = _first_slices(path)
        alone_ready.append(ready)
        alone_sliced.append(sliced)
        alone_cpu.append(cpu)
        started = time.perf_counter()
        proc, url, seconds = _serve(path)
        server_s.append(seconds)
        try:
            if browser_ok:
                with sync_playwright() as playwright:
                    cold, drawn, ready, warm, d, g = _browser_round(playwright, url, started)
                cold_ms.append(cold)
                drawn_s.append(drawn)
                warm_ms.append(warm)
                draws += d
                gaps += g
            else:
                ready = _wait_ready(url, started)
            ready_s.append(ready)
            rss.append(_peak_rss_mib(proc.pid))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    print(f"server alone: start to rows served (s)   {summary(alone_ready)}")
    print(f"server alone: start to first slices (s)  {summary(alone_sliced)}")
    print(f"server alone: its CPU until then (s)     {summary(alone_cpu)}")
    print(f"server: start to first answer (s)        {summary(server_s)}")
    print(f"server: start to timeline ready (s)      {summary(ready_s)}")
    print(f"server: peak RSS (MiB)                   {summary(rss)}")
    if cold_ms:
        print(f"browser: first draw, opened at once (ms) {summary(cold_ms)}")
        print(f"browser: that first draw, s after start  {summary(drawn_s)}")
        print(f"browser: first draw, ready server (ms)   {summary(warm_ms)}")
        print(
            f"browser: draw per frame (ms) median {statistics.median(draws):.2f}, "
            f"p95 {_pct(draws, 0.95):.2f}, max {max(draws):.2f} ({len(draws)} frames)"
        )
        print(
            f"browser: frame interval (ms) median {statistics.median(gaps):.2f}, "
            f"p95 {_pct(gaps, 0.95):.2f}, max {max(gaps):.2f}; "
            f"late frames (over 1.5 vsync, 25 ms): {sum(g > 25 for g in gaps)} of {len(gaps)}"
        )
    else:
        print("browser: skipped (no playwright or no Chromium)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
