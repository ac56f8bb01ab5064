"""Instructions per request of an asyncio web service, with and without the recorder.

CPU time on a shared 2-core machine moves by +-3-15 points between identical runs (other
jobs share the caches and the CPU; the load generator's speed changes how many requests
the server batches per loop iteration). The hooks' cost does not: this benchmark runs the
server under Valgrind's callgrind and counts the instructions its event-loop thread
executes for a fixed number of sequential requests (one connection: one request per loop
iteration), so two runs of one build agree to ~0.1% and a change of a few hundred
instructions per request shows.

What it measures: the cost the recorder adds *inside the program's thread* (hooks, event
encoding, generation sealing when that thread crosses a boundary). What it does not: the
recorder's own threads (sampler, metrics, stall watchdog: time-based, and under Valgrind
the program runs ~50x slower, so per request they would be overstated ~50x; their CPU is
in bench_services.py's figures) and cache effects. Instruction counts are not time; a
change that saves instructions but misses caches more is caught by bench_services.py.

    python bench/bench_instructions.py                      # FastAPI, none vs default
    python bench/bench_instructions.py --ablation           # + each source alone
    python bench/bench_instructions.py --mode "no waits=--source-option asyncio.sync_waits=false"
    python bench/bench_instructions.py --src /tmp/before/src   # + another build side by side
    python bench/bench_instructions.py --cache-sim   # + simulated L1 misses and mispredicts
    python bench/bench_instructions.py --servers "" --workloads asyncio_queue   # a micro workload

A micro workload (bench_overhead.py's) is counted per item of work (``ITEMS``), its whole
run in the main thread with the default recorder started before instrumentation begins.

Instructions are not the whole cost: on asyncio_queue the recorder adds +4.6% instructions
per item but +23% L1 instruction-cache misses, +25-45% data-cache misses and +18%
mispredicted branches (--cache-sim): with rough cycle costs that is about the +10-17% CPU
time measured, so ``--cache-sim``'s estimated cycles are the figure to rank changes by.

Needs Debian's ``valgrind`` (``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_services import _free_port, _wait_until_serving, server_command

HERE = Path(__file__).resolve().parent
PATHS = ("/json", "/sleep", "/cpu")
SOURCES = ("asyncio", "threads", "blocking", "gc", "sampler", "metrics", "executors", "dbapi")


def _requests(port: int, count: int) -> None:
    """`count` sequential keep-alive requests over one connection, the paths in turn."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        for i in range(count):
            conn.request("GET", PATHS[i % len(PATHS)])
            reply = conn.getresponse()
            reply.read()
            if reply.status != 200:
                raise RuntimeError(f"{PATHS[i % len(PATHS)]}: HTTP {reply.status}")
    finally:
        conn.close()


def _totals(out: Path) -> list[dict[str, int]]:
    """Counts per thread, by callgrind event (Ir, and with the cache simulation I1mr, D1mr,
    ...): callgrind writes OUT-01, OUT-02, ... with --separate-threads; thread 1 is the
    program's main thread."""
    counts = []
    for part in sorted(out.parent.glob(out.name + "-*")):
        text = part.read_text(errors="replace")
        names = re.search(r"^events:\s*(.+)$", text, re.M)
        found = re.search(r"^totals:\s*(.+)$", text, re.M) or re.search(r"^summary:\s*(.+)$", text, re.M)
        if not names or not found:
            counts.append({})
            continue
        # callgrind leaves out trailing zero counts
        counts.append(dict(zip(names.group(1).split(), map(int, found.group(1).split()), strict=False)))
    return counts


#: Rough cycles per event for the estimate (an L1 miss served by L2, one served by memory,
#: a mispredicted branch): an estimate to rank changes by, not a measurement.
CYCLES = {
    "Ir": 1,
    "I1mr": 12,
    "D1mr": 12,
    "D1mw": 12,
    "ILmr": 100,
    "DLmr": 100,
    "DLmw": 100,
    "Bcm": 15,
    "Bim": 15,
}


def estimated_cycles(counts: Mapping[str, float]) -> float:
    return float(sum(CYCLES.get(name, 0) * value for name, value in counts.items()))


def _callgrind(out: Path, cache_sim: bool) -> list[str]:
    """valgrind's callgrind, one profile per thread, instrumentation off until the program
    switches it on, running this interpreter (its arguments follow)."""
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--separate-threads=yes",
        *(["--cache-sim=yes", "--branch-sim=yes"] if cache_sim else []),
        f"--callgrind-out-file={out}",
        sys.executable,
    ]


def measure(
    server: str,
    recorder_args: list[str] | None,
    requests: int,
    warmup: int,
    src: str,
    cache_sim: bool = False,
) -> list[dict[str, int]]:
    """Counts of each thread of the server while it answers `requests` requests."""
    port = _free_port()
    tmp = Path(tempfile.mkdtemp(prefix="pyflight-instr-"))
    out = tmp / "callgrind.out"
    # a fixed hash seed: dict and set layouts (so instruction counts) the same in every run
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), src]), PYTHONHASHSEED="0")
    command = [
        *_callgrind(out, cache_sim),
    ]
    if recorder_args is not None:
        command += ["-m", "pyflight", "run", "-o", str(tmp / "trace.pyfl"), *recorder_args]
    command += server_command(server, port)
    proc = subprocess.Popen(command, env=env, cwd=HERE, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        _wait_until_serving(port, proc, deadline=600)
        _requests(port, warmup)
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
        _requests(port, requests)
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True, capture_output=True)
    finally:
        proc.send_signal(2)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    time.sleep(0.2)
    counts = _totals(out)
    shutil.rmtree(tmp, ignore_errors=True)
    if not counts or not counts[0].get("Ir"):
        raise RuntimeError("callgrind wrote no counts")
    return counts


#: Units of work of each micro workload, to print counts per item. asyncio_steps: one task
#: looping on ``await asyncio.sleep(0)`` with the asyncio source alone (what a scheduler
#: step costs, without the sampler's and other sources' time-based work).
ITEMS = {"asyncio_queue": 100_000, "asyncio_steps": 100_000}


def _asyncio_steps(recorder_on: bool) -> None:
    import asyncio

    async def steps() -> None:
        for _ in range(ITEMS["asyncio_steps"]):
            await asyncio.sleep(0)

    recorder = None
    if recorder_on:
        import pyflight

        recorder = pyflight.FlightRecorder(sources=["asyncio"])
        recorder.start()
    loop = asyncio.new_event_loop()
    loop.run_until_complete(asyncio.sleep(0))
    _toggle(True)
    loop.run_until_complete(steps())
    _toggle(False)
    loop.close()
    if recorder is not None:
        recorder.stop()


def _toggle(on: bool) -> None:
    """Switch callgrind's instrumentation of this process on or off. The control command
    is served while the program runs, so wait for it in a loop that keeps running."""
    proc = subprocess.Popen(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    while proc.poll() is None:
        time.sleep(0.01)


def _child(workload: str, with_recorder: bool) -> None:
    """Run one micro workload, instrumented from its start to its end."""
    if workload == "asyncio_steps":
        _asyncio_steps(with_recorder)
        return
    import bench_overhead

    recorder = None
    if with_recorder:
        import pyflight

        recorder = pyflight.FlightRecorder()
        recorder.start()
    _toggle(True)
    bench_overhead.WORKLOADS[workload]()
    _toggle(False)
    if recorder is not None:
        recorder.stop()


def measure_workload(workload: str, with_recorder: bool, src: str, cache_sim: bool) -> list[dict[str, int]]:
    """Counts of each thread while `workload` runs (main thread first)."""
    tmp = Path(tempfile.mkdtemp(prefix="pyflight-instr-"))
    out = tmp / "callgrind.out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), src]), PYTHONHASHSEED="0")
    command = [
        *_callgrind(out, cache_sim),
        str(Path(__file__).resolve()),
        "--child",
        workload,
        "1" if with_recorder else "0",
    ]
    subprocess.run(
        command, env=env, cwd=HERE, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    counts = _totals(out)
    shutil.rmtree(tmp, ignore_errors=True)
    if not counts or not counts[0].get("Ir"):
        raise RuntimeError("callgrind wrote no counts")
    return counts


def _line(name: str, counts: list[dict[str, int]], per: int, base: dict[str, float], cache_sim: bool) -> str:
    main_thread = {key: value / per for key, value in counts[0].items()}
    others = sum(c.get("Ir", 0) for c in counts[1:]) / per
    base = base or main_thread
    ir = main_thread["Ir"]
    line = f"  {name:28} {ir:12,.0f} instr {ir / base['Ir'] - 1:+7.2%}"
    if cache_sim:
        l1 = sum(main_thread.get(k, 0) for k in ("I1mr", "D1mr", "D1mw"))
        mispredicts = main_thread.get("Bcm", 0) + main_thread.get("Bim", 0)
        cycles = estimated_cycles(main_thread) / estimated_cycles(base) - 1
        line += (
            f"   I1 misses {main_thread.get('I1mr', 0):7,.0f}  L1 misses {l1:7,.0f}"
            f"  mispredicts {mispredicts:6,.0f}  est. cycles {cycles:+7.2%}"
        )
    return f"{line}   (other threads {others:,.0f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="fastapi", help="comma-separated: fastapi, aiohttp")
    parser.add_argument("--requests", type=int, default=300, help="measured requests (a multiple of 3)")
    parser.add_argument("--warmup", type=int, default=60)
    parser.add_argument("--workloads", default="", help=f"micro workloads: {', '.join(ITEMS)}")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--ablation", action="store_true", help="also each source alone (--sources NAME)")
    parser.add_argument(
        "--mode", action="append", default=[], metavar="NAME=ARGS", help="another recorder mode"
    )
    parser.add_argument("--src", action="append", default=[], help="another build's src/ (its C core built)")
    parser.add_argument(
        "--cache-sim",
        action="store_true",
        help="also simulate the caches and branch predictor: L1 misses, mispredicts, estimated cycles",
    )
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child[0], args.child[1] == "1")
        return 0
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        print("bench_instructions: needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    own = str(HERE.parent / "src")
    modes: list[tuple[str, list[str] | None, str]] = [
        ("no recorder", None, own),
        ("default recorder", [], own),
    ]
    modes += [(f"default @{path}", [], path) for path in args.src]
    for spec in args.mode:
        name, _, rest = spec.partition("=")
        modes.append((name, rest.split(), own))
    if args.ablation:
        modes += [(f"only {name}", ["--sources", name], own) for name in SOURCES]
    print(
        f"python {sys.version.split()[0]}, {args.requests} sequential requests ({', '.join(PATHS)} in turn)"
    )
    for workload in filter(None, args.workloads.split(",")):
        print(f"\n{workload}: per item in the program's main thread (others: recorder threads' instructions)")
        first: dict[str, float] = {}
        for name, recorder_args, src in modes:
            if recorder_args:  # modes with arguments are the servers' (pyflight run) only
                continue
            counts = measure_workload(workload, recorder_args is not None, src, args.cache_sim)
            print(_line(name, counts, ITEMS[workload], first, args.cache_sim))
            first = first or {key: value / ITEMS[workload] for key, value in counts[0].items()}
    for server in filter(None, args.servers.split(",")):
        print(
            f"\n{server}: per request in the program's main thread (others: recorder threads' instructions)"
        )
        base: dict[str, float] = {}
        for name, recorder_args, src in modes:
            counts = measure(server, recorder_args, args.requests, args.warmup, src, args.cache_sim)
            print(_line(name, counts, args.requests, base, args.cache_sim))
            base = base or {key: value / args.requests for key, value in counts[0].items()}
    return 0


if __name__ == "__main__":
    sys.exit(main())
