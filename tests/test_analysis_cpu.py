"""CPU charged where threads ran (analysis/cpu.py), on hand-made samples: the cases a
recorded program hits only now and then (a thread the sampler never catches running)."""

from __future__ import annotations

from types import SimpleNamespace

from pyflight.analysis.cpu import cpu_samples
from pyflight.analysis.model import Sample, State
from pyflight.core.events import BlockReason, ThreadState
from pyflight.format.reader import Frame

MS = 1_000_000
LOCK_LINE = Frame("worker", "app.py", 19)
HASH_LINE = Frame("worker", "app.py", 21)
ELSEWHERE = Frame("poll", "other.py", 7)


def _sample(t_ms: int, tid: int, frame: Frame, running: bool, cpu_ms: int) -> Sample:
    return Sample(
        time=t_ms * MS,
        tid=tid,
        task=0,
        stack=(frame, Frame("run", "threading.py", 1)),
        os_state=ThreadState.RUNNING if running else ThreadState.SLEEPING,
        state=State.RUNNING if running else State.BLOCKED,
        reason=None if running else BlockReason.LOCK,
        cpu=cpu_ms * MS,
        span=10 * MS,
    )


def _running(t_ms: int, stack: tuple[Frame, ...], cpu_ms: int) -> Sample:
    """Thread 1 found running with ``stack``, having used ``cpu_ms`` of the last 10 ms."""
    return Sample(
        time=t_ms * MS,
        tid=1,
        task=0,
        stack=stack,
        os_state=ThreadState.RUNNING,
        state=State.RUNNING,
        reason=None,
        cpu=cpu_ms * MS,
        span=10 * MS,
    )


def _model(samples: list[Sample], names: dict[int, str] | None = None) -> SimpleNamespace:
    """Threads named ``worker-<tid>`` (one family) unless ``names`` says otherwise."""
    threads = {
        s.tid: SimpleNamespace(
            is_pyflight=False, intervals=[], name=(names or {}).get(s.tid, f"worker-{s.tid}")
        )
        for s in samples
    }
    return SimpleNamespace(samples=samples, threads=threads, sampling_interval_ns=10 * MS, loops={})


def _by_thread_and_line(charged: list[tuple[Sample, int]]) -> dict[tuple[int, int], int]:
    out: dict[tuple[int, int], int] = {}
    for s, ns in charged:
        key = (s.tid, s.stack[0].line)
        out[key] = out.get(key, 0) + ns // MS
    return out


def test_a_thread_seen_blocked_is_charged_where_it_was_seen_running() -> None:
    samples = [_sample(10, 1, HASH_LINE, True, 4), _sample(20, 1, LOCK_LINE, False, 3)]
    assert _by_thread_and_line(cpu_samples(_model(samples))) == {(1, 21): 7}  # type: ignore[arg-type]


def test_a_thread_never_seen_running_is_charged_like_its_siblings_but_stays_its_own() -> None:
    """In a lock convoy on one CPU the sampler can find one worker waiting at `with lock:`
    every time: its CPU goes to the line where the other workers in the same function
    ran (nearest in time), still counted for its own thread, not to the lock line."""
    samples = [
        _sample(10, 1, HASH_LINE, True, 5),
        _sample(20, 1, HASH_LINE, True, 5),
        _sample(11, 2, LOCK_LINE, False, 4),
        _sample(21, 2, LOCK_LINE, False, 4),
        _sample(12, 3, ELSEWHERE, False, 2),  # no sibling in its function: kept where seen
    ]
    charged = _by_thread_and_line(cpu_samples(_model(samples, {3: "poller"})))  # type: ignore[arg-type]
    assert charged == {(1, 21): 10, (2, 21): 8, (3, 7): 2}


def test_a_thread_per_request_never_seen_running_is_charged_where_its_family_ran() -> None:
    """A thread-per-request server on a busy CPU: each request thread is caught (if at
    all) where it let go of the GIL, a socket write, or only by its exit's CPU reading.
    Its CPU goes where the threads of its family were seen running, first where the
    native reader saw them holding the GIL (the view), not the write they wait in."""
    write = Frame("_SocketWriter.write", "/py/socketserver.py", 834)
    render = Frame("render", "app.py", 12)
    seen_at_write = _sample(10, 1, write, True, 1)  # running, just back from sendall
    native = _sample(12, 2, render, True, 3)._replace(native=True)
    blocked = _sample(13, 3, write, False, 4)
    exited = _sample(30, 4, Frame("Thread._bootstrap_inner", "/py/threading.py", 1045), False, 5)
    exited = exited._replace(os_state=ThreadState.ZOMBIE, state=State.RUNNING, reason=None)
    names = {tid: f"Thread-{tid + 560} (process_request_thread)" for tid in (1, 2, 3, 4)}
    charged = _by_thread_and_line(cpu_samples(_model([seen_at_write, native, blocked, exited], names)))  # type: ignore[arg-type]
    assert charged == {(1, 834): 1, (2, 12): 3, (3, 12): 4, (4, 12): 5}


def test_a_thread_stopped_where_it_takes_a_traced_lock_is_charged_where_it_ran() -> None:
    """Releasing a contended lock wakes a waiter that asks for the GIL at once, so the
    releaser stops at the `with lock:` line far more often than that line costs: a
    sample stopped at a line where threads block on a traced lock (RUNNING there) is
    charged like a blocked one."""
    samples = [
        _sample(10, 1, HASH_LINE, True, 4),
        _sample(20, 1, LOCK_LINE, True, 6),  # running, but at the lock's line
        _sample(30, 2, LOCK_LINE, False, 1),  # another thread blocked there: a lock site
        _sample(40, 2, HASH_LINE, True, 5),
    ]
    model = _model(samples)
    model.threads[2].intervals = [SimpleNamespace(reason=BlockReason.LOCK, stack=samples[2].stack)]
    assert _by_thread_and_line(cpu_samples(model)) == {(1, 21): 10, (2, 21): 6}  # type: ignore[arg-type]


VIEW = Frame("book_list", "/srv/shop/views.py", 31)
ORM = Frame(
    "SQLiteCursorWrapper.execute",
    "/venv/lib/python3.11/site-packages/django/db/backends/sqlite3/base.py",
    360,
)


def test_the_cpu_hotspot_is_the_programs_own_line_with_the_library_call_it_spent_it_in() -> None:
    """A view that spends its CPU in the ORM: the finding names the view's line (what the
    user can change), and the library function the CPU went to beside it."""
    from pyflight.analysis.rules.cpu_hotspot import rule_cpu_hotspot

    samples = [
        _running(t * 10, (ORM, VIEW, Frame("run", "/usr/lib/python3.11/threading.py", 1)), 9)
        for t in range(1, 21)
    ]
    model = _model(samples)
    model.start, model.end = 0, 210 * MS
    model.threads[1].name = "worker"
    [finding] = rule_cpu_hotspot(model)  # type: ignore[arg-type]
    assert finding.culprit is not None and finding.culprit.function == "book_list"
    assert "mostly inside SQLiteCursorWrapper.execute" in finding.title
    assert finding.evidence["inside"].startswith("SQLiteCursorWrapper.execute")
    assert finding.evidence["cpu_ns"] == 20 * 9 * MS


def test_the_event_loops_own_work_is_not_blamed_on_the_line_that_started_it() -> None:
    """uvicorn.run() at a module's top level, uvloop underneath (C: no frame of its own):
    CPU sampled in the loop's machinery has only ``Runner.run`` and the module's line
    above it. The hotspot is the endpoint's own function, not that line."""
    from pyflight.analysis.rules.cpu_hotspot import rule_cpu_hotspot

    entry = (
        Frame("Runner.run", "/usr/lib/python3.11/asyncio/runners.py", 118),
        Frame("run", "/venv/lib/python3.11/site-packages/uvicorn/main.py", 643),
        Frame("<module>", "/srv/app.py", 7),
    )
    endpoint = (Frame("_cpu", "/srv/app.py", 17), Frame("cpu_endpoint", "/srv/app.py", 40))
    samples = [
        _running(t * 10, entry, 6) if t % 2 else _running(t * 10, endpoint + entry, 3) for t in range(1, 41)
    ]
    model = _model(samples, {1: "MainThread"})
    model.start, model.end = 0, 410 * MS
    [finding] = rule_cpu_hotspot(model)  # type: ignore[arg-type]
    assert finding.culprit is not None and finding.culprit.function == "_cpu"
    assert finding.evidence["cpu_ns"] == 20 * 3 * MS and finding.evidence["total_cpu_ns"] == 20 * 9 * MS


def test_a_hotspot_on_a_loaded_machine_is_scored_by_the_cpu_it_wanted() -> None:
    """One thread computing all along, given 20% of a CPU by a busy machine (READY the
    rest: runnable, off the CPU): still a hotspot scored by what it wanted, not by what
    the machine had to spare."""
    from pyflight.analysis.rules.cpu_hotspot import rule_cpu_hotspot

    hot = (Frame("compute_primes", "/srv/app.py", 7), Frame("main", "/srv/app.py", 20))
    samples = [_running(t * 10, hot, 2) for t in range(1, 101)]
    model = _model(samples, {1: "MainThread"})
    model.start, model.end = 0, 1000 * MS
    ready = [
        SimpleNamespace(
            start=t * 10 * MS + 2 * MS, end=(t + 1) * 10 * MS, state=State.READY, reason=None, stack=()
        )
        for t in range(100)
    ]
    model.threads[1].intervals = ready
    [finding] = rule_cpu_hotspot(model)  # type: ignore[arg-type]
    assert finding.evidence["cores_busy"] == 0.2 and finding.evidence["cores_wanted"] == 1.0
    assert finding.score == 70  # as on an idle machine


# ---------------------------------------------------- waits no source traces, from samples

MS = 1_000_000
CONVERT = (
    ("Popen._try_wait", "/py/lib/python3.12/subprocess.py", 2011),
    ("run", "/py/lib/python3.12/subprocess.py", 550),
    ("convert_video", "/srv/app.py", 14),
)
IDLE_WORKER = (("_worker", "/py/lib/python3.12/concurrent/futures/thread.py", 89),)
HASH = (("hash_block", "/srv/app.py", 30),)


def _sampled(
    threads: dict[int, tuple[tuple[str, str, int], ...]], asleep: set[int], cpu_ms: dict[int, int]
) -> bytes:
    """Threads sampled every 10 ms for 500 ms: those in ``asleep`` in OS state S, each
    using ``cpu_ms[tid]`` of CPU per 10 ms; no traced event at all."""
    from pyflight.core.events import Kind
    from tracegen import Gen, trace

    g = Gen(seq=1, start_ns=0, end_ns=500 * MS)
    for tid in threads:
        g.event(tid, Kind.THREAD_START, 0, tid=tid, name=f"t-{tid}", ident=tid, parent=0)
    for k in range(1, 50):
        for tid, stack in threads.items():
            state = ThreadState.SLEEPING if tid in asleep else ThreadState.RUNNING
            g.event(
                9, Kind.SAMPLE, k * 10 * MS + tid, tid=tid, task=0, stack=stack,
                state=state, cpu=cpu_ms.get(tid, 0) * MS, span=10 * MS,
            )  # fmt: skip
    return trace([g])


def _timeline(data: bytes, tid: int) -> list[tuple[State, object, str]]:
    from pyflight.analysis import build
    from pyflight.format.reader import loads

    model = build(loads(data))
    # up to the last sample (490 ms): after it nothing is known
    return [
        (iv.state, iv.reason, iv.detail)
        for iv in model.threads[tid].intervals
        if iv.end - iv.start > MS and iv.start < 490 * MS
    ]


def test_a_thread_asleep_in_no_traced_call_is_blocked_in_the_timeline() -> None:
    """``subprocess.run`` waits in waitpid, which no source hooks: the sampler finds the
    thread asleep with no CPU used while nobody else ran. The model says BLOCKED (OTHER),
    one interval for the whole wait, naming the call; not RUNNING as it did."""
    states = _timeline(_sampled({1: CONVERT}, asleep={1}, cpu_ms={}), 1)
    assert states == [(State.BLOCKED, BlockReason.OTHER, "off-CPU in a call pyflight does not trace: in run")]


def test_a_librarys_own_thread_asleep_is_idle() -> None:
    states = _timeline(_sampled({1: IDLE_WORKER}, asleep={1}, cpu_ms={}), 1)
    assert {s for s, _, _ in states} == {State.IDLE}


def test_a_thread_asleep_while_another_burns_the_cpu_waited_for_the_gil() -> None:
    """Asleep with no CPU while another thread ran: it may have been waiting for the GIL
    (a futex sleep too), so READY as before, not an untraced wait."""
    states = _timeline(_sampled({1: CONVERT, 2: HASH}, asleep={1}, cpu_ms={2: 10}), 1)
    assert State.BLOCKED not in {s for s, _, _ in states}
    assert State.READY in {s for s, _, _ in states}


def test_a_thread_on_the_cpu_stays_running() -> None:
    states = _timeline(_sampled({2: HASH}, asleep=set(), cpu_ms={2: 10}), 2)
    assert {s for s, _, _ in states} == {State.RUNNING}


def test_the_timeline_draws_an_untraced_wait_as_the_model_has_it() -> None:
    """The exports and the viewer's timeline draw the same wait as the model: one
    'blocked: other' slice over the model's interval (it is not a recorded block)."""
    from pyflight.analysis import build
    from pyflight.analysis.timeline import build_timeline
    from pyflight.format.reader import loads

    model = build(loads(_sampled({1: CONVERT}, asleep={1}, cpu_ms={})))
    [wait] = [iv for iv in model.threads[1].intervals if iv.state is State.BLOCKED]
    drawn = [s for s in build_timeline(model).slices if s.track == ("thread", 1) and s.category == "block"]
    assert [(s.start, s.end, s.name, s.args["reason"]) for s in drawn] == [
        (wait.start, wait.end, "blocked: other", "other")
    ]
