"""The native stack reader (src/pyflight/core/c/_core_stackreader.c): the stack of the
thread holding the GIL, read without taking it, and the sampler that uses it.

It must read what the frame objects say (names, files, lines), never crash on memory
that goes away under it (threads ending mid-read, any address at all), and put CPU where
threads ran: the planted four-threads-hashing-under-a-lock program gets its hot line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

import pytest

import pyflight
from programs import marked_line, pinned
from pyflight.analysis import build
from pyflight.analysis.profiles import cpu_profile
from pyflight.core import BACKEND_NAME, _pycore
from pyflight.core.events import Kind, ThreadState, arg_counts
from pyflight.format.reader import loads
from pyflight.format.writer import encode_header
from pyflight.sources.sampler import StackSampler

PROGRAMS = Path(__file__).parent / "problem_programs"
SUPPORTED = sys.platform.startswith("linux") and (3, 11) <= sys.version_info[:2] <= (3, 13)

try:
    from pyflight import _core as c_core  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the build
    c_core = None

native = pytest.mark.skipif(
    c_core is None or not SUPPORTED or c_core.stackreader_probe() is not None,
    reason="the native stack reader needs the C core on CPython 3.11-3.13 on Linux",
)
Stack = tuple[tuple[str, str, int], ...]


def frames_of(frame: FrameType | None) -> Stack:
    out = []
    while frame is not None:
        out.append((frame.f_code.co_qualname, frame.f_code.co_filename, frame.f_lineno or 0))
        frame = frame.f_back
    return tuple(out)


def line_of(marker: str) -> int:
    return marked_line(Path(__file__), marker)


@pytest.fixture
def threads() -> Iterator[list[threading.Thread]]:
    started: list[threading.Thread] = []
    yield started
    for t in started:
        t.join(10)


# --------------------------------------------------------------------------------------
# what the reader reads


def test_probe_says_why_not_where_it_cannot_work() -> None:
    if c_core is None:
        pytest.skip("no C core")
    why = c_core.stackreader_probe()
    if SUPPORTED:
        assert why is None
    else:  # pragma: no cover - other platforms
        assert isinstance(why, str) and why


def функция_ожидания(event: threading.Event) -> None:  # a non-ASCII qualname
    event.wait()  # WAIT LINE


def déjà(event: threading.Event) -> None:  # a Latin-1 qualname
    функция_ожидания(
        event,
    )


def gen_frames(event: threading.Event) -> Iterator[int]:
    déjà(event)
    yield 1


async def coro(event: threading.Event) -> None:
    for _ in gen_frames(event):
        pass


class Holder:
    def method(self, event: threading.Event) -> None:
        import asyncio

        asyncio.run(coro(event))


@pytest.fixture(params=["process_vm_readv", "proc_mem"])
def reads(request: pytest.FixtureRequest) -> Iterator[str]:
    """Both ways of reading: process_vm_readv, and /proc/self/mem (where it is refused)."""
    if c_core is None or not SUPPORTED or c_core.stackreader_probe() is not None:
        pytest.skip("the native stack reader needs the C core on CPython 3.11-3.13 on Linux")
    if request.param == "proc_mem" and not c_core._stackreader_use_proc_mem(True):
        pytest.skip("/proc/self/mem is not readable here")
    yield request.param
    c_core._stackreader_use_proc_mem(False)


@native
def test_read_matches_the_frame_objects(threads: list[threading.Thread], reads: str) -> None:
    assert c_core is not None
    event = threading.Event()
    t = threading.Thread(target=Holder().method, args=(event,))
    threads.append(t)
    t.start()
    try:
        deadline = time.monotonic() + 10
        while True:
            frame = sys._current_frames().get(t.ident or 0)
            if frame is not None and frame.f_code.co_name == "wait" and "функция" in frames_of(frame)[2][0]:
                break
            assert time.monotonic() < deadline
            time.sleep(0.01)
        want = frames_of(frame)
        del frame
        got = c_core.stackreader_read_thread(t.ident)
        assert got == want
        names = [entry[0] for entry in got]
        assert "функция_ожидания" in names and "déjà" in names and "gen_frames" in names
        assert "coro" in names and "Holder.method" in names
        assert (__file__, line_of("# WAIT LINE")) in {(f, n) for _, f, n in got}
    finally:
        event.set()


@native
def test_garbage_addresses_read_as_nothing(reads: str) -> None:
    assert c_core is not None
    freed = [id(object()) for _ in range(100)]
    addresses = [0, 1, 8, 4096, 1 << 40, (1 << 47) - 8, 2**64 - 8, id(sys), id(threading.main_thread())]
    for address in addresses + freed + [a + 8 for a in freed]:
        assert c_core._stackreader_read_address(address) in (None, ())


def spinner(stop: threading.Event) -> None:
    n = 0
    while not stop.is_set():
        n = step(n)  # SPIN LINE


def step(n: int) -> int:
    return n + 1  # STEP LINE


def holds_the_gil_in_c(stop: threading.Event) -> None:
    data = list(range(300_000, 0, -1))
    while not stop.is_set():
        sorted(data)  # SORT LINE


@native
def test_tight_loop_and_a_gil_holding_c_call_read_where_they_run(
    threads: list[threading.Thread], reads: str
) -> None:
    """A thread in a pure-Python loop (frames pushed and popped all the time) and one
    holding the GIL in a long C call between its turns: every read is one of them, where
    it runs; none is torn into a stack that never was."""
    assert c_core is not None
    stop = threading.Event()
    spin = threading.Thread(target=spinner, args=(stop,), name="spinner")
    sorter = threading.Thread(target=holds_the_gil_in_c, args=(stop,), name="sorter")
    threads.extend([spin, sorter])
    spin.start()
    sorter.start()
    here = __file__
    # (function, line) each frame of ours may be at: anywhere in the function's lines
    spin_lines = range(line_of("def spinner("), line_of("# SPIN LINE") + 1)
    step_lines = range(line_of("def step("), line_of("# STEP LINE") + 1)
    outer = ["Thread.run", "Thread._bootstrap_inner", "Thread._bootstrap"]
    hits: dict[str, int] = {"spinner": 0, "sorter": 0}
    try:
        time.sleep(0.05)
        for _ in range(300):
            got = c_core.stackreader_wait(-1, 0.002)
            if got is None:
                continue
            ident, tid, stack, when, cpu = got
            assert time.monotonic_ns() - 10**9 < when <= time.monotonic_ns()
            assert 0 < cpu <= time.clock_gettime_ns(time.pthread_getcpuclockid(ident))
            if ident == spin.ident:
                assert tid == spin.native_id
                names = [e[0] for e in stack]
                assert names[-3:] == outer, stack
                ours = [(e[0], e[2]) for e in stack if e[1] == here]
                assert ours[-1][0] == "spinner" and ours[-1][1] in spin_lines, stack
                if len(ours) == 2:
                    assert ours[0][0] == "step" and ours[0][1] in step_lines, stack
                else:  # in the loop itself, or in the Event check between two steps
                    assert len(ours) == 1 and names[0] in ("spinner", "Event.is_set"), stack
                hits["spinner"] += 1
            elif ident == sorter.ident:
                assert tid == sorter.native_id
                assert [e[0] for e in stack][-3:] == outer, stack
                ours = [(e[0], e[2]) for e in stack if e[1] == here]
                sort_lines = range(line_of("def holds_the_gil_in_c("), line_of("# SORT LINE") + 1)
                assert len(ours) == 1 and ours[0][0] == "holds_the_gil_in_c", stack
                assert ours[0][1] in sort_lines, stack
                assert stack[0][0] in ("holds_the_gil_in_c", "Event.is_set"), stack
                hits["sorter"] += 1
            else:
                pytest.fail(f"read a thread that was not running: {got}")
            if min(hits.values()) >= 50:  # enough reads of each (a read costs a GIL turn)
                break
    finally:
        stop.set()
    assert hits["spinner"] >= 20 and hits["sorter"] >= 20, hits


def short_lived(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i  # SHORT LINE
    return total


@native
def test_threads_ending_mid_read_do_not_crash(threads: list[threading.Thread], reads: str) -> None:
    """Threads that start, run a little and end while the reader walks them: their thread
    states and frames are freed under it. Nothing crashes; what is read is theirs."""
    assert c_core is not None
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            batch = [threading.Thread(target=short_lived, args=(2000,)) for _ in range(8)]
            for t in batch:
                t.start()
            for t in batch:
                t.join()

    churner = threading.Thread(target=churn)
    threads.append(churner)
    churner.start()
    read = 0
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            got = c_core.stackreader_wait(-1, 0.0005)
            if got is not None:
                read += 1
                assert all(type(n) is str and type(f) is str and type(line) is int for n, f, line in got[2])
    finally:
        stop.set()
    assert read > 0


@native
def test_wait_returns_at_once_when_woken() -> None:
    assert c_core is not None
    fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    try:
        os.eventfd_write(fd, 1)
        t0 = time.monotonic()
        assert c_core.stackreader_wait(fd, 5.0) is None
        assert time.monotonic() - t0 < 1.0
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------
# recording a stack given as entries (both cores)


def _backends() -> list[Any]:
    params = [pytest.param(_pycore, id="python")]
    if c_core is not None:
        params.append(pytest.param(c_core, id="c"))
    return params


@pytest.fixture(params=_backends())
def core(request: pytest.FixtureRequest) -> Iterator[ModuleType]:
    backend: ModuleType = request.param
    backend.stop()
    hour = 3600 * 10**9
    backend.configure(
        arg_counts(), max_bytes=1 << 40, min_age_ns=hour, gen_max_bytes=1 << 40, gen_interval_ns=hour
    )
    yield backend
    backend.stop()


def test_record_takes_a_stack_as_entries(core: ModuleType) -> None:
    core.configure(
        arg_counts(),
        max_bytes=1 << 40,
        min_age_ns=10**12,
        gen_max_bytes=1 << 40,
        gen_interval_ns=10**12,
        max_stack_depth=3,
    )
    core.start()
    stack = (("inner", "/a/b.py", 12), ("Outer.run", "/a/é.py", 0), ("main", "/a/b.py", 3), ("cut", "x", 1))
    core.record(int(Kind.SAMPLE), 7, 0, stack, 1, 5, 10)
    core.record(int(Kind.SAMPLE), 7, 0, (), 1, 5, 10)
    core.record(int(Kind.SAMPLE), 8, 0, stack[:2], 1, 5, 10)
    trace = loads(encode_header({}) + b"".join(core.snapshot()), strict=True)
    got = [e for e in trace.events if e.kind == Kind.SAMPLE]
    assert [[(f.function, f.file, f.line) for f in e.stack] for e in got] == [
        list(stack[:3]),
        [],
        list(stack[:2]),
    ]
    # the same key as a frame would give: one frame table entry per (function, file, line)
    assert got[0].stack[0] is got[2].stack[0] or got[0].stack[0] == got[2].stack[0]


def test_record_at_dates_the_event(core: ModuleType) -> None:
    core.start()
    core.record(int(Kind.LOG), 0, "a", "first")
    t0 = core.now()
    time.sleep(0.01)
    core.record_at(t0, int(Kind.SAMPLE), 7, 0, (("f", "file", 3),), 1, 5, 10)
    core.record_at(core.now() + 10**12, int(Kind.LOG), 0, "a", "future: now")
    core.record_at(1, int(Kind.LOG), 0, "a", "before the generation: its start, after the last event")
    t1 = core.now()
    trace = loads(encode_header({}) + b"".join(core.snapshot()), strict=True)
    _, sample, future, early = [e for e in trace.events if e.kind in (Kind.SAMPLE, Kind.LOG)]
    assert sample.time == t0 and sample.stack[0].line == 3
    assert t0 < future.time <= t1
    assert early.time == future.time  # a batch's times never go back
    with pytest.raises((TypeError, OverflowError)):
        core.record_at(-1, int(Kind.LOG), 0, "a", "b")


@pytest.mark.parametrize(
    "bad",
    [
        (("f", "file"),),
        (("f", "file", -1),),
        (("f", b"file", 1),),
        (["f", "file", 1],),
        (("f", "file", 1.0),),
    ],
)
def test_record_refuses_malformed_entries(core: ModuleType, bad: Any) -> None:
    core.start()
    with pytest.raises((TypeError, OverflowError)):
        core.record(int(Kind.SAMPLE), 7, 0, bad, 1, 5, 10)
    with pytest.raises(TypeError):
        core.set_live("k", int(Kind.SAMPLE), 7, 0, (("f", "file", 1),), 1, 5, 10)
    assert [
        e for e in loads(encode_header({}) + b"".join(core.snapshot())).events if e.kind == Kind.SAMPLE
    ] == []


# --------------------------------------------------------------------------------------
# the sampler


def _record(tmp_path: Path, seconds: float, work: Any, **options: Any) -> pyflight.Trace:
    rec = pyflight.FlightRecorder(sources=["sampler"], source_options={"sampler": options}, cpu_budget=None)
    with rec:
        work(seconds)
        rec.write_to(tmp_path / "trace.pyfl")
    return pyflight.load(tmp_path / "trace.pyfl")


def _busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        short_lived(200)


def test_the_trace_says_how_stacks_were_read(tmp_path: Path) -> None:
    trace = _record(tmp_path, 0.2, time.sleep)
    said = trace.meta["sampler.stacks"]
    if BACKEND_NAME == "c" and SUPPORTED:
        assert said.startswith("native"), said
    else:
        assert said.startswith("with the GIL ("), said
    off = _record(tmp_path, 0.2, time.sleep, native_stacks=False)
    assert off.meta["sampler.stacks"] == "with the GIL (turned off (native_stacks=False))"
    with pytest.raises(TypeError):
        StackSampler(native_stacks="yes")._install()


@native
def test_sampler_reads_a_running_thread_where_it_runs(
    tmp_path: Path, threads: list[threading.Thread]
) -> None:
    if BACKEND_NAME != "c":
        pytest.skip("the C core")
    stop = threading.Event()
    t = threading.Thread(target=spinner, args=(stop,))
    threads.append(t)
    t.start()
    try:
        trace = _record(tmp_path, 1.0, time.sleep, interval=0.005, cpu_budget=0.5)
    finally:
        stop.set()
    mine = [e for e in trace.events if e.kind == Kind.SAMPLE and e.arg("tid") == t.native_id]
    assert len(mine) >= 20
    lines = {e.stack[0].line for e in mine if e.stack and e.stack[0].file == __file__}
    assert lines <= set(range(line_of("def spinner("), line_of("# STEP LINE") + 1)), lines
    # read while it held the GIL: dated then, and the model takes it for RUNNING
    native = [e for e in mine if e.arg("state") == ThreadState.HOLDING_GIL]
    assert len(native) >= 5, [ThreadState(e.arg("state")).name for e in mine]
    model = build(trace)
    found = [s for s in model.samples if s.tid == t.native_id and s.native]
    assert len(found) == len(native)
    assert all(s.os_state is ThreadState.RUNNING for s in found)


# --------------------------------------------------------------------------------------
# the planted program: four threads hashing under one lock, on one CPU


@native
@pytest.mark.skipif(os.environ.get("PYFLIGHT_PURE_PYTHON", "") not in ("", "0"), reason="the C core")
def test_hashing_under_one_lock_hot_line_every_time(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    """The running hasher is read at the hash line at most ticks, so the CPU profile's hot
    line is the hash line on every run, not only after the analysis re-states samples
    taken at ``with lock:`` (where a GIL-taking sampler finds nearly all of them)."""
    program = PROGRAMS / "gil_hashing_lock.py"
    hash_line = marked_line(program, "# HASH LINE")
    lock_line = marked_line(program, "# LOCK LINE")
    for run in range(3):
        out = tmp_path / f"hash{run}.pyfl"
        proc = subprocess.run(
            [
                *pinned(),
                sys.executable,
                "-m",
                "pyflight",
                "run",
                "-o",
                str(out),
                "--min-age",
                "600",
                str(program),
            ],
            capture_output=True,
            text=True,
            env=subprocess_env,
            cwd=tmp_path,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout.strip().splitlines()[-1])["thread_cpu_s"]
        trace = pyflight.load(out)
        assert trace.meta["sampler.stacks"].startswith("native")
        model = build(trace)
        hashers = {tid for tid, tl in model.threads.items() if tl.name.startswith("hasher-")}
        seen = [s for s in model.samples if s.tid in hashers and s.stack and s.stack[0].file == str(program)]
        at_hash = sum(1 for s in seen if s.stack[0].line == hash_line)
        # one hasher of four runs at a time: a quarter of the samples at most; a sampler
        # that takes the GIL finds a few percent there
        assert at_hash >= len(seen) / 8, (at_hash, len(seen))
        by_line: dict[int, int] = {}
        for stack, ns in cpu_profile(model).stacks.items():
            if stack and stack[0].file == str(program):
                by_line[stack[0].line] = by_line.get(stack[0].line, 0) + ns
        assert max(by_line, key=by_line.__getitem__) == hash_line, by_line
        assert by_line.get(lock_line, 0) < by_line[hash_line] / 2, by_line


def test_sampler_falls_back_when_the_reader_cannot_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: list[threading.Thread]
) -> None:
    """process_vm_readv refused (a seccomp policy) and no /proc/self/mem: the probe says
    why, the sampler samples as before and the trace says so."""
    from pyflight.core import backend

    monkeypatch.setattr(backend, "stackreader_probe", lambda: "refused here", raising=False)
    stop = threading.Event()
    t = threading.Thread(target=spinner, args=(stop,))
    threads.append(t)
    t.start()
    try:
        trace = _record(tmp_path, 0.5, time.sleep, interval=0.005, cpu_budget=0.5)
    finally:
        stop.set()
    if BACKEND_NAME == "c":
        assert trace.meta["sampler.stacks"] == "with the GIL (refused here)"
    mine = [e for e in trace.events if e.kind == Kind.SAMPLE and e.arg("tid") == t.native_id]
    assert len(mine) >= 5
    assert not any(e.arg("state") == ThreadState.HOLDING_GIL for e in mine)


@native
def test_sampler_with_threads_ending_all_the_time(tmp_path: Path, threads: list[threading.Thread]) -> None:
    """Threads that end while the sampler reads them natively, at a high rate: the source
    keeps running (no fault, nothing raised into the program) and samples them."""
    if BACKEND_NAME != "c":
        pytest.skip("the C core")
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            batch = [threading.Thread(target=short_lived, args=(3000,)) for _ in range(4)]
            for b in batch:
                b.start()
            for b in batch:
                b.join()

    churner = threading.Thread(target=churn)
    threads.append(churner)
    churner.start()
    try:
        trace = _record(tmp_path, 1.5, time.sleep, interval=0.001, cpu_budget=0.5)
    finally:
        stop.set()
    assert not [e for e in trace.events if e.kind == Kind.SOURCE_DISABLED]
    native = [e for e in trace.events if e.kind == Kind.SAMPLE and e.arg("state") == ThreadState.HOLDING_GIL]
    assert native, "no thread was read natively"
    assert trace.meta["sampler.stacks"].startswith("native")


SECCOMP_CHILD = """
import threading, time
import pyflight
from pyflight.core.events import Kind, ThreadState

stop = threading.Event()
def spin():
    while not stop.is_set():
        pass
t = threading.Thread(target=spin)
t.start()
rec = pyflight.FlightRecorder(sources=["sampler"], cpu_budget=None,
                              source_options={"sampler": {"interval": 0.005, "cpu_budget": 0.5}})
with rec:
    time.sleep(0.5)
    rec.write_to("trace.pyfl")
stop.set()
t.join()
trace = pyflight.load("trace.pyfl")
native = [e for e in trace.events if e.kind == Kind.SAMPLE and e.arg("state") == ThreadState.HOLDING_GIL]
print(trace.meta["sampler.stacks"], len(native))
"""


@native
@pytest.mark.parametrize("action", ["kill", "eperm"])
def test_seccomp_filter_against_process_vm_readv(
    action: str, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """Under a seccomp filter that kills the process on process_vm_readv (systemd's
    SystemCallFilter= default action) or fails it, the reader reads /proc/self/mem
    instead: the program lives and its running thread is read natively."""
    if BACKEND_NAME != "c":
        pytest.skip("the C core")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler for the seccomp launcher")
    launcher = tmp_path / "seccomp_run"
    subprocess.run([cc, "-O1", "-o", str(launcher), str(Path(__file__).parent / "seccomp_run.c")], check=True)
    proc = subprocess.run(
        [str(launcher), action, sys.executable, "-c", SECCOMP_CHILD],
        capture_output=True,
        text=True,
        env=subprocess_env,
        cwd=tmp_path,
        timeout=120,
    )
    if proc.returncode == 2 and "seccomp" in proc.stderr:
        pytest.skip(f"cannot install a seccomp filter here: {proc.stderr.strip()}")
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    said, n_native = proc.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    assert said.startswith("native"), said
    assert int(n_native) > 0
