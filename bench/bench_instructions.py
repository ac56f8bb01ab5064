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


def _totals(out: Path) -> list[int]:
    """Instructions per thread (callgrind writes OUT-01, OUT-02, ... with
    --separate-threads; thread 1 is the program's main thread)."""
    counts = []
    for part in sorted(out.parent.glob(out.name + "-*")):
        text = part.read_text(errors="replace")
        found = re.search(r"^totals:\s*(\d+)", text, re.M) or re.search(r"^summary:\s*(\d+)", text, re.M)
        counts.append(int(found.group(1)) if found else 0)
    return counts


def measure(server: str, recorder_args: list[str] | None, requests: int, warmup: int, src: str) -> list[int]:
    """Instructions of each thread of the server while it answers `requests` requests."""
    port = _free_port()
    tmp = Path(tempfile.mkdtemp(prefix="pyflight-instr-"))
    out = tmp / "callgrind.out"
    # a fixed hash seed: dict and set layouts (so instruction counts) the same in every run
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), src]), PYTHONHASHSEED="0")
    command = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--separate-threads=yes",
        f"--callgrind-out-file={out}",
        sys.executable,
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
    if not counts or not counts[0]:
        raise RuntimeError("callgrind wrote no counts")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="fastapi", help="comma-separated: fastapi, aiohttp")
    parser.add_argument("--requests", type=int, default=300, help="measured requests (a multiple of 3)")
    parser.add_argument("--warmup", type=int, default=60)
    parser.add_argument("--ablation", action="store_true", help="also each source alone (--sources NAME)")
    parser.add_argument(
        "--mode", action="append", default=[], metavar="NAME=ARGS", help="another recorder mode"
    )
    parser.add_argument("--src", action="append", default=[], help="another build's src/ (its C core built)")
    args = parser.parse_args(argv)
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
    for server in args.servers.split(","):
        print(f"\n{server}: instructions per request in the program's main thread (others: recorder threads)")
        base = 0.0
        for name, recorder_args, src in modes:
            counts = measure(server, recorder_args, args.requests, args.warmup, src)
            main_thread = counts[0] / args.requests
            others = sum(counts[1:]) / args.requests
            base = base or main_thread
            change = main_thread / base - 1
            print(f"  {name:28} {main_thread:12,.0f}  {change:+7.2%}   (other threads {others:,.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
