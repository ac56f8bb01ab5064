"""Soak: a recorded process under steady load, a snapshot every second, for minutes.

What a long-running service cares about: memory stays flat (RSS sampled every second),
no events are dropped, every snapshot is a complete, readable trace, and snapshots stay
as fast at the end as at the start. The load: worker threads taking a contended lock,
passing items through a queue, sleeping, logging and annotating tasks, plus an asyncio
loop with tasks. Snapshots go to a temporary directory; a separate verifier process
(so the reader's memory is not counted) checks each one frame by frame (header and every
generation's CRC, nothing after the last), decodes one in 20 in full, and deletes it.

    python bench/bench_soak.py --minutes 10
    python bench/bench_soak.py --minutes 1 --core python
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time

VERIFIER = r"""
import os, struct, sys, zlib
from pyflight.format.reader import loads
from pyflight.core.encoding import FRAME_FIXED, HEADER_FIXED, MAGIC

def structure_ok(data):
    magic, _version, _flags, size, crc = HEADER_FIXED.unpack_from(data, 0)
    pos = HEADER_FIXED.size
    if magic != MAGIC or zlib.crc32(data[pos : pos + size]) != crc:
        return False
    pos += size
    frames = 0
    while pos < len(data):
        _tag, size, crc = FRAME_FIXED.unpack_from(data, pos)
        pos += FRAME_FIXED.size
        if pos + size > len(data) or zlib.crc32(data[pos : pos + size]) != crc:
            return False
        pos += size
        frames += 1
    return frames > 0

bad = count = 0
for line in sys.stdin:
    path = line.strip()
    try:
        with open(path, "rb") as file:
            data = file.read()
        ok = structure_ok(data)
        if ok and count % FULL_EVERY == 0:  # every frame's CRC always; a full decode often
            trace = loads(data)
            ok = not trace.warnings and bool(trace.events)
    except Exception as exc:
        ok = False
        print("unreadable:", path, exc, file=sys.stderr)
    bad += not ok
    count += 1
    os.unlink(path)
print(count, bad)
"""
#: One snapshot in this many is decoded in full (all are checked frame by frame).
FULL_EVERY = 20


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _worker(stop: threading.Event, lock: threading.Lock, items: queue.Queue[int], counter: list[int]) -> None:
    import pyflight

    n = 0
    while not stop.is_set():
        with pyflight.task(f"job {n % 50}"):
            with lock:
                sum(range(200))
            items.put(n)
            try:
                items.get(timeout=0.01)
            except queue.Empty:
                pass
            if n % 20 == 0:
                pyflight.log("soak", f"job {n}")
                time.sleep(0.001)
        n += 1
    counter.append(n)


async def _async_load(stop: threading.Event) -> None:
    async def step(i: int) -> None:
        await asyncio.sleep(0.001)
        sum(range(100 + i % 7))

    while not stop.is_set():
        await asyncio.gather(*(step(i) for i in range(20)))


def soak(minutes: float, threads: int) -> dict[str, object]:
    import pyflight
    from pyflight.triggers.snapshots import write_snapshot_file

    recorder = pyflight.FlightRecorder().start()  # defaults: 10 s, 10 MiB
    stop = threading.Event()
    lock = threading.Lock()
    items: queue.Queue[int] = queue.Queue()
    jobs: list[int] = []
    workers = [threading.Thread(target=_worker, args=(stop, lock, items, jobs)) for _ in range(threads)]
    loop_thread = threading.Thread(target=lambda: asyncio.run(_async_load(stop)))
    for thread in (*workers, loop_thread):
        thread.start()
    verifier = subprocess.Popen(
        [sys.executable, "-c", VERIFIER.replace("FULL_EVERY", str(FULL_EVERY))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert verifier.stdin is not None and verifier.stdout is not None
    rss: list[float] = []
    write_ms: list[float] = []
    sizes: list[int] = []
    failures = 0
    started = time.monotonic()
    deadline = started + minutes * 60
    with tempfile.TemporaryDirectory(prefix="pyflight-soak-") as directory:
        next_at = started + 1.0
        while time.monotonic() < deadline:
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += 1.0
            t0 = time.perf_counter()
            try:
                path = write_snapshot_file(directory, "soak", recorder=recorder)
            except Exception as exc:
                failures += 1
                print(f"snapshot failed: {exc}", file=sys.stderr)
                continue
            write_ms.append((time.perf_counter() - t0) * 1e3)
            sizes.append(path.stat().st_size)
            verifier.stdin.write(f"{path}\n")
            verifier.stdin.flush()
            rss.append(_rss_mib())
        stop.set()
        for thread in (*workers, loop_thread):
            thread.join()
        stats = recorder.stats()
        recorder.stop()
        verifier.stdin.close()
        verified, unreadable = (int(x) for x in verifier.stdout.read().split())
        verifier.wait()
        leftovers = [name for name in os.listdir(directory)]
    warm = rss[len(rss) // 10 :] or rss  # the first tenth warms up (window filling)
    return {
        "minutes": minutes,
        "core": stats.get("core"),
        "snapshots": len(write_ms),
        "snapshot_failures": failures,
        "verified": verified,
        "unreadable_or_incomplete": unreadable,
        "leftover_files": leftovers,
        "dropped_events": int(stats.get("dropped_events", 0)),
        "jobs": sum(jobs),
        "rss_mib_first": round(rss[0], 1) if rss else None,
        "rss_mib_after_warmup_min": round(min(warm), 1) if warm else None,
        "rss_mib_after_warmup_max": round(max(warm), 1) if warm else None,
        "rss_mib_last": round(rss[-1], 1) if rss else None,
        # RSS at each quarter of the run: a leak shows as a steady climb
        "rss_mib_by_quarter": [round(rss[min(len(rss) - 1, len(rss) * q // 4)], 1) for q in (1, 2, 3, 4)]
        if rss
        else [],
        "snapshot_mib_median": round(statistics.median(sizes) / 2**20, 2) if sizes else None,
        "write_ms_median": round(statistics.median(write_ms), 1) if write_ms else None,
        "write_ms_first_tenth_median": round(statistics.median(write_ms[: max(1, len(write_ms) // 10)]), 1)
        if write_ms
        else None,
        "write_ms_last_tenth_median": round(statistics.median(write_ms[-max(1, len(write_ms) // 10) :]), 1)
        if write_ms
        else None,
        "write_ms_max": round(max(write_ms), 1) if write_ms else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    parser.add_argument("--threads", type=int, default=4, help="worker threads (default 4)")
    parser.add_argument("--core", choices=("c", "python"), default=None, help="force a core")
    args = parser.parse_args()
    if args.core is not None and os.environ.get("PYFLIGHT_PURE_PYTHON") != (
        "1" if args.core == "python" else "0"
    ):
        env = dict(os.environ, PYFLIGHT_PURE_PYTHON="1" if args.core == "python" else "0")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    result = soak(args.minutes, args.threads)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
