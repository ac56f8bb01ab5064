"""Web services with and without the recorder: server CPU per 10k requests, req/s, p50/p99.

Each server runs on loopback pinned to CPU 1 (``taskset -c 1``), so the recorder's threads
share that CPU with the work; the load generator (Debian's ``wrk``, else a small asyncio
client here) runs on CPU 0. Per server: warm-up, then interleaved pairs (no recorder,
then the default recorder under ``pyflight run``); the server's CPU is utime+stime of its
whole process tree from /proc (all threads). The recorded window gives bytes per event,
events per request and how many seconds the default 10 MiB window holds at that rate.

    python bench/bench_services.py                 # 7 pairs, 10 s each, all servers
    python bench/bench_services.py --quick         # 2 pairs, 2 s each: a smoke run
    python bench/bench_services.py --ablation      # each source alone (--sources NAME)
    python bench/bench_services.py --servers fastapi --peers   # + py-spy / ddtrace if installed
    python bench/bench_services.py --mode "no sockets=--source-option blocking.sockets=false"
    python bench/bench_services.py --rate 1500     # a fixed offered load (built-in client)

With ``--rate R`` the built-in client offers R requests a second in all, spread evenly over
its connections, below saturation: the server then does the same work per second with and
without the recorder, so CPU per request is not moved by how many requests a saturated
server batches per turn of its loop (which made the pairs at saturation spread by 20-60
points). Latencies are measured from each request's scheduled time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SERVER_CPU = "1"
LOAD_CPU = "0"
PATHS = ("/json", "/sleep", "/cpu")
WINDOW_BYTES = 10 * 2**20


def _tool(name: str) -> str | None:
    """An executable from this Python's environment (a venv's bin), else from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_command(server: str, port: int) -> list[str]:
    """The server's own command line (without python and without the recorder)."""
    if server in ("fastapi", "fastapi-uvloop"):
        # uvicorn picks uvloop when installed; pyflight instruments asyncio's own loop
        # (uvloop gets the sampler only), so "fastapi" asks for that loop explicitly
        loop = "uvloop" if server == "fastapi-uvloop" else "asyncio"
        return ["-m", "uvicorn", "--factory", "_service_apps:make_fastapi", "--port", str(port),
                "--loop", loop, "--log-level", "warning"]  # fmt: skip
    if server == "flask-waitress":
        return [
            "-m",
            "waitress",
            "--threads=8",
            f"--listen=127.0.0.1:{port}",
            "--call",
            "_service_apps:make_flask",
        ]
    if server == "flask-gunicorn":
        return [
            "-m",
            "gunicorn",
            "-k",
            "gthread",
            "--threads",
            "8",
            "-w",
            "1",
            "-b",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "_service_apps:make_flask()",
        ]
    if server == "aiohttp":
        return ["-m", "aiohttp.web", "-H", "127.0.0.1", "-P", str(port), "_service_apps:make_aiohttp"]
    raise ValueError(server)


SERVERS = ("fastapi", "flask-waitress", "flask-gunicorn", "aiohttp")  # also: fastapi-uvloop


@dataclass
class Mode:
    """How the server runs: plain, under ``pyflight run`` (with some sources), or a peer."""

    name: str
    recorder_args: list[str] | None = None  # None: no recorder
    peer: str | None = None  # "py-spy" or "ddtrace"
    src: str | None = None  # another build's source tree (its C core built in place)


@dataclass
class Result:
    cpu_per_10k: float
    rps: float
    p50_ms: float
    p99_ms: float
    trace: dict[str, float] = field(default_factory=dict)


def _tree_cpu_seconds(root: int) -> float:
    """utime+stime (all threads) of ``root`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    stats: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        stats[pid] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, 0.0)
        todo.extend(children.get(pid, ()))
    return total


def _wait_until_serving(port: int, proc: subprocess.Popen[bytes], deadline: float = 120.0) -> None:
    """Until the server answers a request (gunicorn listens before its worker is ready)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=5) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("server did not answer")


WRK_SCRIPT = """
local paths = {"/json", "/sleep", "/cpu"}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i % 3) + 1])
end
"""


def _load_wrk(port: int, seconds: float, connections: int, script: str) -> tuple[int, float, float, float]:
    out = subprocess.run(
        [
            "taskset",
            "-c",
            LOAD_CPU,
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            script,
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(label: str) -> float:
        value, unit = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    return requests, rps, pct("50"), pct("99")


async def _load_own_async(
    port: int, seconds: float, connections: int, rate: float | None = None
) -> tuple[int, float, list[float]]:
    latencies: list[float] = []
    start = time.perf_counter()
    end = time.monotonic() + seconds
    # with a rate, connection n sends its k-th request at start + (k * connections + n) / rate
    period = connections / rate if rate else 0.0

    async def client(n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = n
        k = 0
        while time.monotonic() < end:
            path = PATHS[i % len(PATHS)]
            i += 1
            began = time.perf_counter()
            if rate:
                due = start + k * period + n / rate
                k += 1
                if due > began:
                    await asyncio.sleep(due - began)
                began = due  # a late request's wait counts in its latency
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            latencies.append((time.perf_counter() - began) * 1e3)
        writer.close()

    began = time.monotonic()
    await asyncio.gather(*(client(n) for n in range(connections)))
    return len(latencies), len(latencies) / (time.monotonic() - began), latencies


def _load_own(
    port: int, seconds: float, connections: int, rate: float | None = None
) -> tuple[int, float, float, float]:
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    try:
        count, rps, lat = asyncio.run(_load_own_async(port, seconds, connections, rate))
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    lat.sort()
    return count, rps, lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]


def _trace_figures(paths: list[Path], requests: int, measured: tuple[int, int]) -> dict[str, float]:
    """Bytes per event (whole files), events per request and per second (in the measured
    interval), and the seconds the default window holds at that rate. A server with
    workers (gunicorn) writes one trace per process: all of them count."""
    sys.path.insert(0, str(HERE.parent / "src"))
    import pyflight

    began, ended = measured
    total = inside = size = 0
    threads_s = hooks_s = process_s = 0.0
    by_thread: dict[str, float] = {}
    for path in paths:
        trace = pyflight.load(path)
        events = trace.events
        total += len(events)
        inside += sum(1 for event in events if began <= event.time <= ended)
        size += path.stat().st_size
        # the budget's own accounts, since the recorder started (warm-up included): its
        # threads' CPU clocks, and the hooks' cost it estimates from the events recorded
        try:
            threads_s += float(trace.meta.get("budget.recorder_threads_cpu_s", 0))
            hooks_s += float(trace.meta.get("budget.hooks_cpu_s_estimated", 0))
            process_s += float(trace.meta.get("budget.process_cpu_s", 0))
            for name, cpu in json.loads(trace.meta.get("budget.recorder_threads", "{}")).items():
                by_thread[name] = by_thread.get(name, 0.0) + float(cpu)
        except (ValueError, AttributeError):
            pass
    if not total or not inside:
        return {}
    per_s = inside / ((ended - began) / 1e9)
    bytes_per_event = size / total
    shares = {}
    if process_s > 0:
        shares = {
            "recorder_threads_pct": 100 * threads_s / process_s,
            "hooks_pct_estimated": 100 * hooks_s / process_s,
            **{f"thread_pct:{name}": 100 * cpu / process_s for name, cpu in by_thread.items()},
        }
    return {
        **shares,
        "bytes_per_event": bytes_per_event,
        "events_per_request": inside / requests,
        "window_seconds": WINDOW_BYTES / (bytes_per_event * per_s),
        # the goal: >= 10 s of a FastAPI service at 5,000 requests/s
        "window_seconds_at_5k_rps": WINDOW_BYTES / (bytes_per_event * inside / requests * 5000),
    }


def run_once(
    server: str,
    mode: Mode,
    seconds: float,
    warmup: float,
    connections: int,
    wrk: bool,
    rate: float | None = None,
) -> Result:
    port = _free_port()
    tmp = Path(tempfile.mkdtemp(prefix="pyflight-bench-"))
    out = tmp / "server.pyfl"
    src = mode.src or str(HERE.parent / "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), src]))
    prefix = [sys.executable]
    if mode.recorder_args is not None:
        prefix += ["-m", "pyflight", "run", "-o", str(out), *mode.recorder_args]
    elif mode.peer == "ddtrace":
        env.update(
            DD_PROFILING_ENABLED="true", DD_TRACE_ENABLED="false", DD_TRACE_AGENT_URL="http://127.0.0.1:9"
        )
        prefix = [_tool("ddtrace-run") or "ddtrace-run", sys.executable]
    command = ["taskset", "-c", SERVER_CPU, *prefix, *server_command(server, port)]
    log = (tmp / "server.log").open("wb")  # a pipe nobody reads would fill and stall the server
    proc = subprocess.Popen(command, cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT)
    spy: subprocess.Popen[bytes] | None = None
    try:
        try:
            _wait_until_serving(port, proc)
        except RuntimeError as exc:
            log.flush()
            tail = (tmp / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{server} ({mode.name}): {exc}\n{tail}") from None
        if mode.peer == "py-spy":
            spy = subprocess.Popen(
                [
                    "taskset",
                    "-c",
                    LOAD_CPU,
                    _tool("py-spy") or "py-spy",
                    "record",
                    "--pid",
                    str(proc.pid),
                    "-o",
                    str(tmp / "spy.svg"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        script = tmp / "mix.lua"
        script.write_text(WRK_SCRIPT)
        load = (
            (lambda s: _load_wrk(port, s, connections, str(script)))
            if wrk
            else (lambda s: _load_own(port, s, connections, rate))
        )
        load(warmup)
        cpu_before = _tree_cpu_seconds(proc.pid)
        measured_from = time.monotonic_ns()  # the recorder's clock: CLOCK_MONOTONIC
        requests, rps, p50, p99 = load(seconds)
        measured = (measured_from, time.monotonic_ns())
        cpu = _tree_cpu_seconds(proc.pid) - cpu_before
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=30)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    if requests == 0:
        raise RuntimeError(f"{server} ({mode.name}): no request completed (machine too loaded?)")
    result = Result(cpu / requests * 1e4, rps, p50, p99)
    traces = sorted(tmp.glob("*.pyfl"))
    if traces:
        result.trace = _trace_figures(traces, requests, measured)
    shutil.rmtree(tmp, ignore_errors=True)
    return result


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):8.2f} [{min(values):.2f}..{max(values):.2f}]"


def _pct(values: list[float]) -> str:
    return f"{statistics.median(values):+6.1f}% [{min(values):+.1f}..{max(values):+.1f}]"


def report(server: str, base: list[Result], modes: dict[str, list[Result]]) -> dict[str, object]:
    print(f"\n{server}: {len(base)} pairs")
    print(f"  {'mode':24} {'CPU s/10k req':>26} {'req/s':>26} {'p50 ms':>24} {'p99 ms':>24}")
    rows: dict[str, object] = {}
    for name, results in [("no recorder", base), *modes.items()]:
        cols = [[getattr(r, f) for r in results] for f in ("cpu_per_10k", "rps", "p50_ms", "p99_ms")]
        print(f"  {name:24} " + " ".join(f"{_spread(c):>26}" for c in cols))
        row: dict[str, object] = {
            k: statistics.median(c) for k, c in zip(("cpu", "rps", "p50", "p99"), cols, strict=True)
        }
        if results is not base:
            # pair by pair: the recorder's extra CPU per request and lost throughput
            cpu_d = [100 * (r.cpu_per_10k / b.cpu_per_10k - 1) for r, b in zip(results, base, strict=True)]
            rps_d = [100 * (r.rps / b.rps - 1) for r, b in zip(results, base, strict=True)]
            p99_d = [100 * (r.p99_ms / b.p99_ms - 1) for r, b in zip(results, base, strict=True)]
            print(f"  {'':24}   CPU/request {_pct(cpu_d)}   req/s {_pct(rps_d)}   p99 {_pct(p99_d)}")
            row.update(cpu_pct=statistics.median(cpu_d), rps_pct=statistics.median(rps_d))
            traced = [r.trace for r in results if r.trace]
            if traced:
                keys = {k for t in traced for k in t}
                figures = {k: statistics.median(t.get(k, 0.0) for t in traced) for k in keys}
                print(
                    f"  {'':24}   {figures['bytes_per_event']:.1f} B/event, "
                    f"{figures['events_per_request']:.1f} events/request, "
                    f"10 MiB holds {figures['window_seconds']:.1f} s at this rate, "
                    f"{figures['window_seconds_at_5k_rps']:.1f} s at 5,000 req/s"
                )
                if "recorder_threads_pct" in figures:
                    # medians over the pairs; of the server process's CPU since it started
                    print(
                        f"  {'':24}   the recorder's own accounts: its threads "
                        f"{figures['recorder_threads_pct']:.2f}% of the process's CPU, its hooks "
                        f"~{figures['hooks_pct_estimated']:.2f}% (estimated)"
                    )
                    threads = sorted(
                        ((v, k.partition(":")[2]) for k, v in figures.items() if k.startswith("thread_pct:")),
                        reverse=True,
                    )
                    if threads:
                        print(f"  {'':24}   by thread: " + ", ".join(f"{n} {v:.2f}%" for v, n in threads))
                row.update(figures)
        rows[name] = row
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--servers", default=",".join(SERVERS), help=f"comma-separated ({', '.join(SERVERS)}, fastapi-uvloop)"
    )
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured load per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="2 pairs of 2 s: a smoke run")
    parser.add_argument("--ablation", action="store_true", help="also each source alone (--sources NAME)")
    parser.add_argument("--peers", action="store_true", help="also py-spy and ddtrace, where installed")
    parser.add_argument(
        "--mode",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help="also the recorder with these `pyflight run` arguments, e.g. "
        "'no sockets=--source-option blocking.sockets=false'; ARGS starting with @DIR "
        "run another build's source tree, e.g. 'before=@/tmp/before/src' (repeatable)",
    )
    parser.add_argument("--no-default", action="store_true", help="leave out the default recorder")
    parser.add_argument("--own-load", action="store_true", help="the built-in load generator, not wrk")
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="offer this many requests/s in all (the built-in client, below saturation)",
    )
    parser.add_argument("--json", default=None, help="also write the medians here")
    args = parser.parse_args()
    if args.quick:
        args.pairs, args.seconds, args.warmup = 2, 2.0, 1.0
    if args.rate is not None and not args.rate > 0:
        parser.error("--rate must be > 0")
    wrk = shutil.which("wrk") is not None and not args.own_load and args.rate is None
    modes = [] if args.no_default else [Mode("default recorder", [])]
    for spec in args.mode:
        name, sep, rest = spec.partition("=")
        if not sep or not name:
            parser.error(f"--mode wants NAME=ARGS, not {spec!r}")
        words = rest.split()
        src = words.pop(0)[1:] if words and words[0].startswith("@") else None
        modes.append(Mode(name, words, src=src))
    if args.ablation:
        sys.path.insert(0, str(HERE.parent / "src"))
        from pyflight.sources import default_source_names

        modes += [Mode(f"only {name}", ["--sources", name]) for name in default_source_names()]
    if args.peers:
        if _tool("py-spy"):
            modes.append(Mode("py-spy record", peer="py-spy"))
        if _tool("ddtrace-run"):
            modes.append(Mode("ddtrace profiler", peer="ddtrace"))
    print(
        f"python {sys.version.split()[0]}, load: {'wrk' if wrk else 'built-in'} "
        f"x{args.connections} connections{f' at {args.rate:g} req/s' if args.rate else ''}, "
        f"{args.pairs} pairs x {args.seconds:g} s, server on CPU {SERVER_CPU}, load on CPU {LOAD_CPU}, "
        f"loadavg {os.getloadavg()[0]:.1f}"
    )
    everything: dict[str, object] = {}
    for server in args.servers.split(","):
        base: list[Result] = []
        results: dict[str, list[Result]] = {m.name: [] for m in modes}
        for _ in range(args.pairs):  # interleaved: off, on, (ablations...), off, on, ...
            base.append(
                run_once(server, Mode("off"), args.seconds, args.warmup, args.connections, wrk, args.rate)
            )
            for mode in modes:
                results[mode.name].append(
                    run_once(server, mode, args.seconds, args.warmup, args.connections, wrk, args.rate)
                )
        everything[server] = report(server, base, results)
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
