"""Exports (pyflight.export), each read back by an independent parser and checked for
content: Perfetto and pprof with the upstream .proto schemas (tests/protos) compiled by
grpcio-tools' protoc at test time and parsed by the ``protobuf`` package; Chrome and
speedscope with ``json``; folded stacks line by line."""

from __future__ import annotations

import asyncio
import gc
import gzip
import importlib.util
import json
import os
import re
import stat
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import pyflight
from pyflight.analysis.model import build
from pyflight.cli import main as pyflight_main
from pyflight.core.events import BlockReason, Kind
from pyflight.export import PROFILES, export, profile_samples
from pyflight.format.reader import Trace, loads

PROTOS = Path(__file__).parent / "protos"


# --------------------------------------------------------------------------------------
# A small program with known facts, recorded once


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def holder(lock: threading.Lock, waiting: threading.Event, ready: threading.Event) -> None:
    waiting.wait()
    spin(0.06)  # the waiter waits on `ready` meanwhile: a CONDITION block we end
    with lock:
        ready.set()
        spin(0.12)  # and then waits for the lock (traced by the C core): a LOCK block


def waiter(lock: threading.Lock, waiting: threading.Event, ready: threading.Event) -> None:
    waiting.set()
    ready.wait()
    with lock:
        pass


async def worker(i: int) -> None:
    await asyncio.sleep(0.01 * (i + 1))
    spin(0.005)


async def amain() -> None:
    await asyncio.gather(*(worker(i) for i in range(3)))


def workload() -> None:
    lock = threading.Lock()
    waiting = threading.Event()
    ready = threading.Event()
    a = threading.Thread(target=holder, args=(lock, waiting, ready), name="holder")
    b = threading.Thread(target=waiter, args=(lock, waiting, ready), name="waiter")
    a.start()
    b.start()
    a.join()
    b.join()
    gc.collect()
    with pyflight.task("job"), pyflight.region("phase1"):
        spin(0.03)
    asyncio.run(amain())


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Trace]:
    path = tmp_path_factory.mktemp("export") / "prog.pyfl"
    rec = pyflight.FlightRecorder()
    rec.start()
    try:
        workload()
        rec.write_to(path)
    finally:
        rec.stop()
    return path, pyflight.load(path)


def tid_named(trace: Trace, name: str) -> int:
    return next(t.tid for t in trace.threads.values() if t.name == name)


def lock_block(trace: Trace) -> tuple[str, int, int, int]:
    """(reason, waiter tid, begin, end) of the waiter's block woken by the holder, from the
    raw events: its lock block (C core), else (locks are not traced by the pure-Python
    core) its wait for the holder's Event."""
    tid = tid_named(trace, "waiter")
    holder_tid = tid_named(trace, "holder")
    for reason in (BlockReason.LOCK, BlockReason.CONDITION):
        ends = [
            e
            for e in trace.events
            if e.kind == Kind.BLOCK_END
            and e.thread == tid
            and e.arg("reason") == reason
            and e.arg("waker") == holder_tid
        ]
        if ends:
            end = ends[0]
            begin = [
                e
                for e in trace.events
                if e.kind == Kind.BLOCK_BEGIN
                and e.thread == tid
                and e.arg("reason") == reason
                and e.time <= end.time
            ][-1]
            return reason.name.lower(), tid, begin.time, end.time
    raise AssertionError("the waiter's block was not recorded")


def blocked_until(trace: Trace, tid: int, begin: int, end: int) -> int:
    """Where the model says the block ``begin..end`` stopped being blocked: its end, or
    earlier where another thread woke it (READY from there: waiting for the GIL)."""
    from pyflight.analysis.model import State

    for i in build(trace).threads[tid].intervals:
        if i.state is State.BLOCKED and i.start == begin:
            return i.end
    return end


def span(
    trace: Trace, begin_kind: Kind, end_kind: Kind, generation: int | None = None
) -> tuple[int, int, int]:
    """The first begin..end of a kind (for GC: of a generation), from the raw events."""
    b = next(e for e in trace.events if e.kind == begin_kind and e.arg("generation") == generation)
    e = next(e for e in trace.events if e.kind == end_kind and e.time >= b.time and e.thread == b.thread)
    return b.thread, b.time, e.time


def model_total(trace: Trace, profile: str) -> int:
    """What the analysis model says the profile's total is."""
    from pyflight.analysis import build, profiles

    model = build(trace)
    if profile == "cpu":
        return profiles.cpu_profile(model).total
    if profile == "wall":
        return profiles.wall_profile(model).total
    if profile == "scheduling":
        return profiles.scheduling_profile(model).total
    if profile == "stall":
        return profiles.stall_profile(model).total
    return profiles.blocking_profile(model, BlockReason[profile.upper()]).total


# --------------------------------------------------------------------------------------
# protoc from Python


@pytest.fixture(scope="module")
def pb(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModuleType]:
    pytest.importorskip("google.protobuf", reason="needs the 'protobuf' package (test extra)")
    protoc = pytest.importorskip("grpc_tools.protoc", reason="needs 'grpcio-tools' (protoc) (test extra)")
    out = tmp_path_factory.mktemp("pb2")
    rc = protoc.main(
        ["protoc", f"-I{PROTOS}", f"--python_out={out}", "perfetto_trace.proto", "profile.proto"]
    )
    assert rc == 0
    modules = {}
    for name in ("perfetto_trace_pb2", "profile_pb2"):
        spec = importlib.util.spec_from_file_location(f"_pyflight_test_{name}", out / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules[name] = module
    return modules


# --------------------------------------------------------------------------------------
# Perfetto


class PerfettoView:
    """The decoded trace: tracks, slices (begin/end matched per track), instants, flows."""

    def __init__(self, data: bytes, pb2: ModuleType) -> None:
        trace = pb2.Trace()
        trace.ParseFromString(data)
        self.packets = list(trace.packet)
        self.tracks: dict[int, Any] = {}
        self.slices: list[tuple[int, str, int, int, dict[str, Any]]] = []  # track, name, start, end, args
        self.instants: list[tuple[int, str, int, list[int], list[int]]] = []
        self.counters: dict[int, list[int]] = {}
        self.samples: list[Any] = []
        self.interned = pb2.InternedData()
        open_: dict[int, list[tuple[str, int, dict[str, Any]]]] = {}
        T = pb2.TrackEvent
        for p in self.packets:
            assert p.trusted_packet_sequence_id == 1
            if p.HasField("interned_data"):
                self.interned.MergeFrom(p.interned_data)
            which = p.WhichOneof("data")
            if which == "track_descriptor":
                self.tracks[p.track_descriptor.uuid] = p.track_descriptor
            elif which == "track_event":
                ev = p.track_event
                assert ev.track_uuid in self.tracks, "event before its track descriptor"
                args = {a.name: getattr(a, a.WhichOneof("value")) for a in ev.debug_annotations}
                if ev.type == T.TYPE_SLICE_BEGIN:
                    open_.setdefault(ev.track_uuid, []).append((ev.name, p.timestamp, args))
                elif ev.type == T.TYPE_SLICE_END:
                    name, start, args = open_[ev.track_uuid].pop()
                    assert p.timestamp >= start
                    self.slices.append((ev.track_uuid, name, start, p.timestamp, args))
                elif ev.type == T.TYPE_INSTANT:
                    self.instants.append(
                        (
                            ev.track_uuid,
                            ev.name,
                            p.timestamp,
                            list(ev.flow_ids),
                            list(ev.terminating_flow_ids),
                        )
                    )
                elif ev.type == T.TYPE_COUNTER:
                    self.counters.setdefault(ev.track_uuid, []).append(ev.counter_value)
            elif which == "perf_sample":
                assert p.sequence_flags & 2  # SEQ_NEEDS_INCREMENTAL_STATE
                self.samples.append((p.timestamp, p.perf_sample))
        assert all(not v for v in open_.values()), "unterminated slices"

    def thread_track(self, tid: int) -> int:
        return next(u for u, t in self.tracks.items() if t.HasField("thread") and t.thread.tid == tid)

    def track_family(self, uuid: int) -> set[int]:
        """A track and its overflow lanes (child tracks without descriptors of their own)."""
        return {uuid} | {
            u
            for u, t in self.tracks.items()
            if t.parent_uuid == uuid
            and not t.HasField("thread")
            and not t.HasField("counter")
            and t.name.startswith(self.tracks[uuid].thread.thread_name)
        }

    def sample_functions(self, tid: int) -> set[str]:
        names = {s.iid: s.str.decode() for s in self.interned.function_names}
        frames = {f.iid: names[f.function_name_id] for f in self.interned.frames}
        stacks = {c.iid: [frames[i] for i in c.frame_ids] for c in self.interned.callstacks}
        out: set[str] = set()
        for _t, s in self.samples:
            if s.tid == tid:
                out.update(stacks[s.callstack_iid])
        return out


@pytest.fixture(scope="module")
def perfetto(recorded: tuple[Path, Trace], pb: dict[str, ModuleType]) -> PerfettoView:
    return PerfettoView(export(recorded[1], "perfetto"), pb["perfetto_trace_pb2"])


def test_perfetto_tracks(recorded: tuple[Path, Trace], perfetto: PerfettoView) -> None:
    trace = recorded[1]
    procs = [t for t in perfetto.tracks.values() if t.HasField("process")]
    assert len(procs) == 1 and procs[0].process.pid == int(trace.meta["pid"])
    stamps = [p.timestamp for p in perfetto.packets]
    assert all(p.HasField("timestamp") for p in perfetto.packets)
    assert stamps == sorted(stamps) and stamps[0] == trace.start_ns
    first = perfetto.packets[0]
    assert first.sequence_flags == 1 and first.HasField("interned_data")  # SEQ_INCREMENTAL_STATE_CLEARED
    names = {t.thread.thread_name for t in perfetto.tracks.values() if t.HasField("thread")}
    assert {"MainThread", "holder", "waiter", "pyflight-sampler"} <= names
    for t in perfetto.tracks.values():
        if t.HasField("thread"):
            assert t.thread.tid == tid_named(trace, t.thread.thread_name)
            assert t.parent_uuid == procs[0].uuid


def test_perfetto_lock_block_and_flow(recorded: tuple[Path, Trace], perfetto: PerfettoView) -> None:
    trace = recorded[1]
    reason, tid, begin, end = lock_block(trace)
    # the holder spins 120 ms inside the lock; how much of that the waiter spends blocked
    # depends on when it gets a CPU after `ready` (a loaded machine: under 1 ms once)
    assert end > begin
    track = perfetto.thread_track(tid)
    until = blocked_until(trace, tid, begin, end)
    blocks = [
        s
        for s in perfetto.slices
        if s[0] in perfetto.track_family(track) and s[1] == f"blocked: {reason}" and s[2] == begin
    ]
    assert [(s[2], s[3]) for s in blocks] == [(begin, until)]
    assert blocks[0][4]["waker"] == tid_named(trace, "holder")
    # flow: an instant on the holder's track starting it, one on the waiter's ending it
    holder_track = perfetto.thread_track(tid_named(trace, "holder"))
    woken = [i for i in perfetto.instants if i[0] == track and i[4] and i[2] == end]
    assert woken, "no flow ends at the waiter's wake-up"
    flow = woken[0][4][0]
    sources = [i for i in perfetto.instants if flow in i[3]]
    assert len(sources) == 1 and sources[0][0] == holder_track and sources[0][1] == f"wake ({reason})"
    assert sources[0][2] <= end


def test_perfetto_gc_region_user_task(recorded: tuple[Path, Trace], perfetto: PerfettoView) -> None:
    trace = recorded[1]
    gtid, gb, ge = span(trace, Kind.GC_BEGIN, Kind.GC_END, generation=2)
    family = perfetto.track_family(perfetto.thread_track(gtid))
    gcs = [s for s in perfetto.slices if s[0] in family and s[1].startswith("GC gen") and s[2] == gb]
    assert len(gcs) == 1 and gcs[0][3] == ge and gcs[0][1] == "GC gen 2"
    rtid, rb, re_ = span(trace, Kind.REGION_BEGIN, Kind.REGION_END)
    regions = [s for s in perfetto.slices if s[1] == "phase1"]
    assert [(s[2], s[3]) for s in regions] == [(rb, re_)]
    assert regions[0][0] in perfetto.track_family(perfetto.thread_track(rtid))
    assert re_ - rb >= 30_000_000
    _, ub, ue = span(trace, Kind.USER_TASK_BEGIN, Kind.USER_TASK_END)
    jobs = [s for s in perfetto.slices if s[1] == "job"]
    assert [(s[2], s[3]) for s in jobs] == [(ub, ue)]
    assert perfetto.tracks[jobs[0][0]].name == "task: job"


def test_perfetto_asyncio_tasks(recorded: tuple[Path, Trace], perfetto: PerfettoView) -> None:
    trace = recorded[1]
    workers = [t for t in trace.tasks.values() if t.coro == "worker"]
    assert len(workers) == 3
    by_name = {t.name: u for u, t in perfetto.tracks.items() if t.name.startswith("asyncio ")}
    for task in workers:
        uuid = by_name[f"asyncio {task.name}"]
        names = [s[1] for s in perfetto.slices if s[0] == uuid]
        assert f"{task.name} (worker)" in names
        steps = [e.time for e in trace.events if e.kind == Kind.TASK_STEP_BEGIN and e.task == task.id]
        assert sorted(s[2] for s in perfetto.slices if s[0] == uuid and s[1] == "step") == steps


def test_perfetto_counters_and_samples(recorded: tuple[Path, Trace], perfetto: PerfettoView) -> None:
    trace = recorded[1]
    counter_names = {t.name for t in perfetto.tracks.values() if t.HasField("counter")}
    assert "rss_bytes" in counter_names
    rss = next(u for u, t in perfetto.tracks.items() if t.HasField("counter") and t.name == "rss_bytes")
    assert perfetto.counters[rss] == [
        e.arg("value") for e in trace.events if e.kind == Kind.COUNTER and e.arg("name") == "rss_bytes"
    ]
    assert len(perfetto.samples) == sum(1 for e in trace.events if e.kind == Kind.SAMPLE and e.stack)
    holder_tid = tid_named(trace, "holder")
    assert {"holder", "spin"} <= perfetto.sample_functions(holder_tid)
    # callstacks are bottom (outermost) frame first
    names = {s.iid: s.str.decode() for s in perfetto.interned.function_names}
    frames = {f.iid: names[f.function_name_id] for f in perfetto.interned.frames}
    stack = next(c for c in perfetto.interned.callstacks if "spin" in [frames[i] for i in c.frame_ids])
    funcs = [frames[i] for i in stack.frame_ids]
    assert funcs[-1] == "spin" and funcs.index("holder") < funcs.index("spin")


# --------------------------------------------------------------------------------------
# pprof


def read_pprof(data: bytes, pb2: ModuleType) -> tuple[Any, list[str]]:
    assert data[:2] == b"\x1f\x8b"  # gzip
    prof = pb2.Profile()
    prof.ParseFromString(gzip.decompress(data))
    strings = list(prof.string_table)
    assert strings[0] == ""
    return prof, strings


def pprof_stacks(prof: Any, strings: list[str]) -> list[tuple[list[str], list[int]]]:
    functions = {f.id: strings[f.name] for f in prof.function}
    locations = {loc.id: functions[loc.line[0].function_id] for loc in prof.location}
    return [([locations[i] for i in s.location_id], list(s.value)) for s in prof.sample]


def test_pprof_cpu(recorded: tuple[Path, Trace], pb: dict[str, ModuleType]) -> None:
    trace = recorded[1]
    prof, strings = read_pprof(export(trace, "pprof", "cpu"), pb["profile_pb2"])
    assert [(strings[t.type], strings[t.unit]) for t in prof.sample_type] == [
        ("samples", "count"),
        ("cpu", "nanoseconds"),
    ]
    assert prof.period == build(trace).sampling_interval_ns
    stacks = pprof_stacks(prof, strings)
    ns = model_total(trace, "cpu")
    assert ns > 0
    assert sum(v[1] for _, v in stacks) == ns
    from pyflight.analysis.cpu import cpu_samples

    assert sum(v[0] for _, v in stacks) == len(cpu_samples(build(trace)))  # each weighs its measured CPU
    # leaf first: the holder's spinning stack
    assert any(names[0] == "spin" and "holder" in names for names, _ in stacks)
    labels = {strings[lab.str] for s in prof.sample for lab in s.label if strings[lab.key] == "thread"}
    assert "holder" in labels


def test_pprof_contention_profile(recorded: tuple[Path, Trace], pb: dict[str, ModuleType]) -> None:
    trace = recorded[1]
    reason, tid, begin, end = lock_block(trace)
    prof, strings = read_pprof(export(trace, "pprof", reason), pb["profile_pb2"])
    assert [(strings[t.type], strings[t.unit]) for t in prof.sample_type] == [
        ("contentions", "count"),
        ("delay", "nanoseconds"),
    ]
    stacks = pprof_stacks(prof, strings)
    waiter_stacks = [v for names, v in stacks if "waiter" in names]
    # As Go's block profile: the delay runs until the waiter was let go (a recorded
    # notify ends it there; after it the thread is READY, taking the GIL back).
    from pyflight.analysis.model import State

    blocked = next(
        i for i in build(trace).threads[tid].intervals if i.state is State.BLOCKED and i.start == begin
    )
    assert begin < blocked.end <= end
    assert [1, blocked.end - begin] in waiter_stacks
    expected = sum(s.weight for s in profile_samples(trace, reason))
    assert sum(v[1] for _, v in stacks) == expected


@pytest.mark.parametrize("profile", PROFILES)
def test_pprof_totals_match_model(
    recorded: tuple[Path, Trace], pb: dict[str, ModuleType], profile: str
) -> None:
    trace = recorded[1]
    prof, strings = read_pprof(export(trace, "pprof", profile), pb["profile_pb2"])
    assert sum(v[1] for _, v in pprof_stacks(prof, strings)) == model_total(trace, profile)
    counts = sum(v[0] for _, v in pprof_stacks(prof, strings))
    assert counts == len(profile_samples(trace, profile))


# --------------------------------------------------------------------------------------
# Chrome JSON, speedscope, folded


def test_chrome_json(recorded: tuple[Path, Trace]) -> None:
    trace = recorded[1]
    doc = json.loads(export(trace, "chrome"))
    events = doc["traceEvents"]
    assert all({"ph", "pid"} <= e.keys() for e in events)
    names = {e["args"]["name"]: e["tid"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    reason, tid, begin, end = lock_block(trace)
    assert names["waiter"] == tid
    blocks = [
        e
        for e in events
        if e["ph"] == "X"
        and e["name"] == f"blocked: {reason}"
        and e["tid"] == tid
        and e["ts"] == pytest.approx((begin - trace.start_ns) / 1000, abs=0.002)
    ]
    assert len(blocks) == 1
    assert blocks[0]["ts"] == pytest.approx((begin - trace.start_ns) / 1000, abs=0.002)
    assert blocks[0]["dur"] == pytest.approx(
        (blocked_until(trace, tid, begin, end) - begin) / 1000, abs=0.002
    )
    _, gb, ge = span(trace, Kind.GC_BEGIN, Kind.GC_END, generation=2)
    gcs = [e for e in events if e["ph"] == "X" and e["name"] == "GC gen 2"]
    assert [g["dur"] for g in gcs] == [pytest.approx((ge - gb) / 1000, abs=0.002)]
    assert [e["name"] for e in events if e["ph"] == "b" and e["cat"] == "user_task"] == ["job"]
    starts = {e["id"]: e for e in events if e["ph"] == "s"}
    finishes = [e for e in events if e["ph"] == "f" and e["tid"] == tid]
    assert any(starts[f["id"]]["tid"] == names["holder"] for f in finishes)
    assert any(e["ph"] == "C" and e["name"] == "rss_bytes" for e in events)
    # samples resolve to frames whose chain contains the holder spinning
    frames = doc["stackFrames"]

    def chain(fid: str) -> list[str]:
        out = []
        while fid:
            out.append(frames[fid]["name"].split(" ")[0])
            fid = frames[fid].get("parent", "")
        return out

    holder_stacks = [chain(s["sf"]) for s in doc["samples"] if s["tid"] == names["holder"]]
    assert any(c[0] == "spin" and "holder" in c for c in holder_stacks)


def test_speedscope(recorded: tuple[Path, Trace]) -> None:
    trace = recorded[1]
    doc = json.loads(export(trace, "speedscope", "cpu"))
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    assert {"shared", "profiles", "name", "activeProfileIndex", "exporter"} <= doc.keys()
    frames = doc["shared"]["frames"]
    assert all(isinstance(f["name"], str) for f in frames)
    total = 0
    for p in doc["profiles"]:
        assert p["type"] == "sampled" and p["unit"] == "nanoseconds"
        assert len(p["samples"]) == len(p["weights"])
        assert p["endValue"] - p["startValue"] == sum(p["weights"])
        assert all(0 <= i < len(frames) for s in p["samples"] for i in s)
        total += sum(p["weights"])
    assert total == model_total(trace, "cpu")
    holder = next(p for p in doc["profiles"] if p["name"].startswith("holder "))
    assert any([frames[i]["name"] for i in s][-1] == "spin" for s in holder["samples"])  # outermost first


def test_folded(recorded: tuple[Path, Trace]) -> None:
    trace = recorded[1]
    lines = export(trace, "folded", "cpu").decode().splitlines()
    assert lines
    total = 0
    stacks = []
    for line in lines:
        m = re.fullmatch(r"(\S[^;]*(?:;[^;]+)*) (\d+)", line)
        assert m, line
        total += int(m.group(2))
        stacks.append([frame.split(" (")[0] for frame in m.group(1).split(";")])
    assert total == model_total(trace, "cpu")
    assert any(s[-1] == "spin" and s[-2] == "holder" for s in stacks)  # outermost first
    from pyflight.analysis import build, profiles

    assert sorted(lines) == sorted(profiles.cpu_profile(build(trace)).folded())
    wall = export(trace, "folded", "wall").decode().splitlines()
    lock = export(trace, "folded", lock_block(trace)[0]).decode().splitlines()
    assert any(";waiter (" in line for line in lock)
    assert sum(int(x.rsplit(" ", 1)[1]) for x in wall) >= total


# --------------------------------------------------------------------------------------
# The command


def run_cli(argv: list[str]) -> int:
    return pyflight_main(["export", *argv])


@pytest.mark.parametrize("fmt", ["perfetto", "chrome", "pprof", "folded", "speedscope"])
def test_command_writes_0600(recorded: tuple[Path, Trace], tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"out.{fmt}"
    assert run_cli([str(recorded[0]), "--format", fmt, "-o", str(out)]) == 0
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert out.stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_command_errors(
    recorded: tuple[Path, Trace], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.pyfl"
    bad.write_bytes(b"not a trace at all")
    out = tmp_path / "out"
    assert run_cli([str(bad), "--format", "chrome", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pyflight export: error: ") and err.count("\n") == 1 and "bad.pyfl" in err
    assert run_cli([str(tmp_path / "missing.pyfl"), "--format", "chrome", "-o", str(out)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert run_cli([str(recorded[0]), "--format", "chrome", "-o", str(tmp_path / "no" / "dir")]) == 2
    assert capsys.readouterr().err.startswith("pyflight export: error: cannot write ")
    assert run_cli([str(recorded[0]), "--format", "chrome", "--profile", "lock", "-o", str(out)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not out.exists()
    with pytest.raises(SystemExit) as exc:
        run_cli([str(recorded[0]), "--format", "svg", "-o", str(out)])
    assert exc.value.code == 2


def test_every_format_and_profile_of_a_nearly_empty_trace(tmp_path: Path) -> None:
    path = tmp_path / "empty.pyfl"
    rec = pyflight.FlightRecorder(sources=[])
    rec.start()
    try:
        rec.write_to(path)
    finally:
        rec.stop()
    trace = pyflight.load(path)
    for fmt in ("perfetto", "chrome"):
        assert export(trace, fmt)
    for fmt in ("pprof", "folded", "speedscope"):
        for profile in PROFILES:
            export(trace, fmt, profile)
    assert json.loads(export(trace, "speedscope"))["profiles"] == []


def test_asyncio_lock_waits_reach_the_exports(tmp_path: Path) -> None:
    """With sync_waits on, a task waiting on an asyncio.Lock is a lock wait in the exports,
    named after the lock method, not a plain await."""
    import asyncio

    from pyflight.analysis.timeline import task_waits

    async def main() -> None:
        lock = asyncio.Lock()

        async def hold() -> None:
            async with lock:
                await asyncio.sleep(0.03)

        await asyncio.gather(hold(), hold())

    options = {"asyncio": {"sync_waits": True}}
    with pyflight.FlightRecorder(sources=["asyncio"], source_options=options) as rec:
        asyncio.run(main())
        rec.write_to(tmp_path / "locks.pyfl")
    trace = pyflight.load(tmp_path / "locks.pyfl")
    lock_waits = [w for w in task_waits(trace) if w[3] == BlockReason.LOCK]
    assert len(lock_waits) == 1, list(task_waits(trace))
    _task, start, end, _reason, what, stack = lock_waits[0]
    assert what == "asyncio.Lock.acquire" and end - start >= 25_000_000
    assert stack and stack[0].function.endswith("hold")
    assert b"await: asyncio.Lock.acquire" in export(trace, "perfetto")


# --------------------------------------------------------------------------------------
# Chrome JSON as viewers pair it (catapult sorts events by time, stably)


def chrome_pairing_problems(doc: dict[str, Any]) -> list[str]:
    """What a viewer would drop: flows whose ``s``/``f`` do not pair up one to one, run
    backwards, or end off a named thread (flows join thread slices); async ``b``/``e``
    events of one id that do not nest (an ``e`` must close the innermost open ``b``)."""
    events = doc["traceEvents"]
    threads = {e["tid"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    problems: list[str] = []
    ends: dict[str, dict[object, list[dict[str, Any]]]] = {"s": {}, "f": {}}
    for e in events:
        if e["ph"] in ends:
            ends[e["ph"]].setdefault(e["id"], []).append(e)
    for flow in set(ends["s"]) | set(ends["f"]):
        starts, finishes = ends["s"].get(flow, []), ends["f"].get(flow, [])
        if len(starts) != 1 or len(finishes) != 1:
            problems.append(f"flow {flow}: {len(starts)} starts, {len(finishes)} ends")
            continue
        if starts[0]["ts"] > finishes[0]["ts"]:
            problems.append(f"flow {flow} runs backwards")
        problems += [
            f"flow {flow} on tid {e['tid']}" for e in (*starts, *finishes) if e["tid"] not in threads
        ]
    by_id: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e in events:
        if e["ph"] in ("b", "e"):
            by_id.setdefault((e["cat"], e["id2"]["local"]), []).append(e)
    for key, pairs in by_id.items():
        open_: list[str] = []
        for e in sorted(pairs, key=lambda e: e["ts"]):
            if e["ph"] == "b":
                open_.append(e["name"])
            elif open_ and open_[-1] == e["name"]:
                open_.pop()
            else:
                problems.append(f"{key}: end of {e['name']!r} at {e['ts']} does not close {open_[-1:]}")
                break
        else:
            problems += [f"{key}: {name!r} never ends" for name in open_]
    return problems


def _task_woken_by_another_thread() -> Trace:
    """A task that awaits inside its step (the wait overlaps the step's end) and is woken
    from another thread: the two cases viewers dropped."""
    from tracegen import Gen, trace

    ms = 1_000_000
    gen = Gen(seq=1, start_ns=1 * ms, end_ns=100 * ms)
    loop, other, task = 7, 8, 99
    gen.event(loop, Kind.THREAD_INFO, 1 * ms, tid=loop, name="loop", ident=1)
    gen.event(other, Kind.THREAD_INFO, 1 * ms, tid=other, name="other", ident=2)
    gen.event(loop, Kind.TASK_CREATE, 10 * ms, task=task, name="Task-1", coro="main", parent=0)
    gen.event(loop, Kind.TASK_STEP_BEGIN, 20 * ms, task=task)
    gen.event(loop, Kind.TASK_WAIT, 25 * ms, task=task, reason=int(BlockReason.AWAIT), what="fut", stack=[])
    gen.event(loop, Kind.TASK_STEP_END, 30 * ms, task=task)
    gen.event(other, Kind.WAKE, 40 * ms, target=loop, task=task, reason=int(BlockReason.AWAIT), obj=1)
    gen.event(loop, Kind.TASK_READY, 45 * ms, task=task)
    gen.event(loop, Kind.TASK_STEP_BEGIN, 50 * ms, task=task)
    gen.event(loop, Kind.TASK_STEP_END, 55 * ms, task=task)
    gen.event(loop, Kind.TASK_DONE, 60 * ms, task=task, outcome=0, error="")
    return loads(trace([gen]))


def test_chrome_flows_pair_up_on_threads_and_async_events_nest(recorded: tuple[Path, Trace]) -> None:
    synthetic = _task_woken_by_another_thread()
    doc = json.loads(export(synthetic, "chrome"))
    assert chrome_pairing_problems(doc) == []
    (flow_end,) = [e for e in doc["traceEvents"] if e["ph"] == "f"]
    assert flow_end["name"] == "wake (task)" and flow_end["tid"] == 7  # on the loop's thread
    awaits = [e for e in doc["traceEvents"] if e["ph"] == "b" and e["name"] == "await: fut"]
    steps = [e for e in doc["traceEvents"] if e["ph"] == "b" and e["name"] == "step"]
    assert len(awaits) == 1 and len(steps) == 2
    # the wait recorded inside the step begins when the step ends, as in the model
    step_ends = [e["ts"] for e in doc["traceEvents"] if e["ph"] == "e" and e["name"] == "step"]
    assert awaits[0]["ts"] == step_ends[0]
    doc = json.loads(export(recorded[1], "chrome"))
    assert any(e["ph"] == "s" for e in doc["traceEvents"])
    assert chrome_pairing_problems(doc) == []


def _covered(spans: list[tuple[int, int]]) -> int:
    """Nanoseconds covered by the union of ``spans``."""
    total, reach = 0, None
    for start, end in sorted(spans):
        if reach is None or start > reach[1]:
            total += reach[1] - reach[0] if reach else 0
            reach = [start, end]
        else:
            reach[1] = max(reach[1], end)
    return total + (reach[1] - reach[0] if reach else 0)


def test_the_timeline_and_the_report_agree_on_blocked_time(recorded: tuple[Path, Trace]) -> None:
    """The exports' timeline draws the model's blocks: per thread and reason its block
    slices cover exactly the model's blocked time (a block ends where another thread let
    the thread go on), and its READY slices the model's READY time (woken or runnable,
    waiting for the GIL)."""
    from pyflight.analysis.model import State
    from pyflight.analysis.timeline import READY_CATEGORY, build_timeline

    trace = recorded[1]
    model = build(trace)
    timeline = build_timeline(model)
    checked = 0
    for tid, thread in model.threads.items():
        in_model: dict[str, list[tuple[int, int]]] = {}
        for i in thread.intervals:
            if i.state is State.BLOCKED and i.reason is not None:
                in_model.setdefault(i.reason.name.lower(), []).append((i.start, i.end))
            elif i.state is State.READY:
                in_model.setdefault("ready", []).append((i.start, i.end))
        in_timeline: dict[str, list[tuple[int, int]]] = {}
        for s in timeline.slices:
            if s.track == ("thread", tid) and s.category == "block":
                in_timeline.setdefault(str(s.args["reason"]), []).append((s.start, s.end))
            elif s.track == ("thread", tid) and s.category == READY_CATEGORY:
                in_timeline.setdefault("ready", []).append((s.start, s.end))
        assert in_model.keys() == in_timeline.keys(), thread.name
        for reason, spans in in_model.items():
            assert _covered(spans) == _covered(in_timeline[reason]), (thread.name, reason)
            checked += 1
    assert checked >= 2  # the holder's lock and the waiter's condition at least


def test_a_block_is_the_same_in_the_model_perfetto_and_chrome(
    recorded: tuple[Path, Trace], perfetto: PerfettoView
) -> None:
    """Every block of the program's threads has one start, end and reason: the model's
    blocked interval (up to where another thread let it go on), the Perfetto slice and the
    Chrome slice; the wait for the GIL after it is a READY slice of its own."""
    from pyflight.analysis.model import State

    trace = recorded[1]
    model = build(trace)
    chrome = json.loads(export(trace, "chrome"))
    t0 = trace.start_ns
    checked = 0
    for b in model.blocks:
        tl = model.threads[b.tid]
        blocked = [i for i in tl.intervals if i.state is State.BLOCKED and b.start <= i.start < b.end]
        if tl.is_pyflight or not blocked or blocked[0].start != b.start:
            continue
        assert {i.reason for i in blocked} == {b.reason}
        end = blocked[-1].end
        name = f"blocked: {b.reason.name.lower()}"
        family = perfetto.track_family(perfetto.thread_track(b.tid))
        in_perfetto = [
            (s[2], s[3]) for s in perfetto.slices if s[0] in family and s[1] == name and s[2] == b.start
        ]
        assert in_perfetto == [(b.start, end)], (tl.name, name)
        in_chrome = [
            e
            for e in chrome["traceEvents"]
            if e["ph"] == "X"
            and e["name"] == name
            and (e["tid"] == b.tid or e["tid"] // -16 == b.tid)  # or an overflow lane of it
            and abs(e["ts"] * 1000 - (b.start - t0)) < 1
        ]
        assert len(in_chrome) == 1, (tl.name, name)
        assert abs(in_chrome[0]["dur"] * 1000 - (end - b.start)) < 1
        if end < b.end:  # woken: READY until the thread ran again
            ready = [
                s for s in perfetto.slices if s[0] in family and s[2] == end and s[1].startswith("ready:")
            ]
            assert [s[3] for s in ready] == [b.end]
        checked += 1
    assert checked >= 2  # the waiter's block woken by the holder, the main thread's joins


def test_a_reused_task_id_is_two_tasks_in_the_timeline() -> None:
    """CPython reuses a done task's id for a new task: the timeline keeps their lives and
    waits apart, as the model does (a wait of the first never runs into the second)."""
    from pyflight.analysis.timeline import build_timeline, task_waits
    from tracegen import Gen, trace

    ms = 1_000_000
    gen = Gen(seq=1, start_ns=1 * ms, end_ns=100 * ms)
    loop, task = 7, 99
    gen.event(loop, Kind.THREAD_INFO, 1 * ms, tid=loop, name="loop", ident=1)
    for name, t0 in (("first", 10), ("second", 50)):
        gen.event(loop, Kind.TASK_CREATE, t0 * ms, task=task, name=name, coro=name, parent=0)
        gen.event(loop, Kind.TASK_STEP_BEGIN, (t0 + 1) * ms, task=task)
        gen.event(loop, Kind.TASK_STEP_END, (t0 + 2) * ms, task=task)
        gen.event(
            loop, Kind.TASK_WAIT, (t0 + 2) * ms, task=task, reason=int(BlockReason.AWAIT), what=name, stack=[]
        )
        gen.event(loop, Kind.TASK_READY, (t0 + 20) * ms, task=task)
        gen.event(loop, Kind.TASK_STEP_BEGIN, (t0 + 21) * ms, task=task)
        gen.event(loop, Kind.TASK_STEP_END, (t0 + 22) * ms, task=task)
        gen.event(loop, Kind.TASK_DONE, (t0 + 22) * ms, task=task, outcome=0, error="")
    model = build(loads(trace([gen])))
    assert len(model.all_tasks()) == 2
    timeline = build_timeline(model)
    lives = [
        (s.name, s.start, s.end)
        for s in timeline.slices
        if s.track == ("task", task) and s.args.get("outcome")
    ]
    assert lives == [("first (first)", 10 * ms, 32 * ms), ("second (second)", 50 * ms, 72 * ms)]
    waits = sorted((start, end, what) for _task, start, end, _reason, what, _stack in task_waits(model))
    assert waits == [(12 * ms, 30 * ms, "first"), (52 * ms, 70 * ms, "second")]
    awaits = [(s.start, s.end) for s in timeline.slices if s.name.startswith("await:")]
    assert sorted(awaits) == [(w[0], w[1]) for w in waits]
