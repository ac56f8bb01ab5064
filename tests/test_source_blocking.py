"""The blocking source: real programs blocking on locks, conditions, joins, sleeps, sockets
and select under FlightRecorder(sources=["blocking"]), read back from the written file."""

from __future__ import annotations

import _thread
import concurrent.futures
import gc
import os
import pickle
import queue
import select
import selectors
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import pyflight
import pyflight.sources.blocking as blocking_mod
from pyflight.analysis import build
from pyflight.core import backend
from pyflight.core.events import IO_SENDS, IO_TIMED_OUT, BlockReason, Kind
from pyflight.sources import REGISTRY, SourceWarning

C = blocking_mod._c_core()
#: A TEST-ONLY self-signed certificate and its private key (CN=localhost, 127.0.0.1):
#: public, trusted by nothing but the tests' own loopback TLS servers.
TEST_PEM = Path(__file__).parent / "tls" / "localhost.pem"
needs_c = pytest.mark.skipif(C is None, reason="locks are traced by the C core only")
MS = 1_000_000


def patched_attributes() -> dict[tuple[Any, str], Any]:
    """Everything the source may replace, as found now (MISSING if inherited)."""
    owners: list[tuple[Any, tuple[str, ...]]] = [
        (threading, ("Lock", "RLock")),
        (threading.Condition, ("wait", "notify", "notify_all")),
        (threading.Thread, ("join",)),
        (time, ("sleep",)),
        (os, ("fsync", "fdatasync")),
        (select, ("select",)),
        (socket.socket, blocking_mod.SOCKET_METHODS),
        (ssl.SSLSocket, blocking_mod.SSL_METHODS),
    ]
    owners += [(cls, ("select",)) for cls in vars(selectors).values() if isinstance(cls, type)]
    return {
        (owner, name): owner.__dict__.get(name, blocking_mod._MISSING)
        for owner, names in owners
        for name in names
    }


@pytest.fixture
def originals() -> Iterator[dict[tuple[Any, str], Any]]:
    saved = patched_attributes()
    yield saved
    after = patched_attributes()
    changed = [f"{getattr(o, '__name__', o)}.{n}" for (o, n), v in saved.items() if after[(o, n)] is not v]
    assert not changed, f"not restored: {changed}"


@pytest.fixture
def rec(originals: dict[tuple[Any, str], Any]) -> Iterator[pyflight.FlightRecorder]:
    # every condition wait with its stack, however short (the default skips stacks of
    # waits under 100 us: see the stack_min_us tests)
    options = {"blocking": {"stack_min_us": 0}}
    recorder = pyflight.FlightRecorder(sources=["blocking"], source_options=options).start()
    try:
        yield recorder
    finally:
        recorder.stop()


def snapshot(rec: pyflight.FlightRecorder, tmp_path: Path) -> pyflight.Trace:
    path = tmp_path / "t.pyfl"
    rec.write_to(path)
    return pyflight.load(path)


def of_kind(trace: pyflight.Trace, *kinds: Kind) -> list[pyflight.Event]:
    return [e for e in trace.events if e.kind in kinds]


def blocks(trace: pyflight.Trace, reason: BlockReason, obj: int | None = None) -> list[tuple[Any, Any]]:
    """(BLOCK_BEGIN, BLOCK_END) pairs for `reason` (and `obj`: for a socket, its calls
    that send too, whose obj has IO_SENDS set), matched per thread (an END's IO_TIMED_OUT
    bit aside)."""
    open_: dict[tuple[int, int], Any] = {}
    pairs = []
    for e in sorted(of_kind(trace, Kind.BLOCK_BEGIN, Kind.BLOCK_END), key=lambda e: e.time):
        if e.arg("reason") != reason or (
            obj is not None and e.arg("obj") & ~(IO_SENDS | IO_TIMED_OUT) != obj
        ):
            continue
        key = (e.thread, e.arg("obj") & ~IO_TIMED_OUT if reason == BlockReason.IO else e.arg("obj"))
        if e.kind == Kind.BLOCK_BEGIN:
            assert key not in open_, f"nested block on {key}"
            open_[key] = e
        else:
            pairs.append((open_.pop(key), e))
    return pairs


def functions(event: pyflight.Event) -> list[str]:
    """The stack's function names, innermost first, without ``outer.<locals>.``."""
    return [f.function.rsplit("<locals>.", 1)[-1] for f in event.stack]


def run_thread(target: Callable[[], Any], name: str = "helper") -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


# ------------------------------------------------------------------ basics


def test_registered() -> None:
    cls = REGISTRY["blocking"]
    assert cls.name == "blocking" and cls.default_enabled


def test_unknown_option_refused(originals: dict[tuple[Any, str], Any]) -> None:
    with pytest.warns(SourceWarning, match="unknown option"):
        recorder = pyflight.FlightRecorder(
            sources=["blocking"], source_options={"blocking": {"nope": 1}}
        ).start()
    recorder.stop()


def test_uninstall_restores_everything(originals: dict[tuple[Any, str], Any]) -> None:
    recorder = pyflight.FlightRecorder(sources=["blocking"]).start()
    try:
        assert time.sleep is not originals[(time, "sleep")]
        assert threading.Condition.__dict__["wait"] is not originals[(threading.Condition, "wait")]
        assert socket.socket.__dict__.get("recv") is not None  # added on the class, removed after
        assert threading.Condition.wait.__wrapped__ is originals[(threading.Condition, "wait")]
        assert selectors.SelectSelector.select.__wrapped__ is originals[(selectors.SelectSelector, "select")]
        if C is not None:
            assert threading.Lock in (C.TracedLock, C.traced_allocate_lock)
            assert threading.RLock is C.TracedRLock
            # threading's own __all__ check wants its names to come from threading/_thread
            assert threading.Lock.__module__ in ("threading", "_thread")
            assert threading.RLock.__module__ == "threading"
            # pickled by reference (multiprocessing managers do), as the originals
            assert pickle.loads(pickle.dumps(threading.Lock)) is threading.Lock
            assert pickle.loads(pickle.dumps(threading.RLock)) is threading.RLock
        lock, rlock, cond = threading.Lock(), threading.RLock(), threading.Condition()
    finally:
        recorder.stop()
    assert "recv" not in socket.socket.__dict__
    # what was handed out keeps working after the source is gone
    with lock, rlock, rlock, cond:
        assert cond.wait(0.001) is False
    assert not lock.locked()
    # and a second recorder installs it again
    with pyflight.FlightRecorder(sources=["blocking"]):
        assert time.sleep is not originals[(time, "sleep")]


# ------------------------------------------------------------------ locks


@needs_c
def test_contended_lock_records_block_and_waker(rec: pyflight.FlightRecorder, tmp_path: Path) -> None:
    lock = threading.Lock()
    holding = threading.Event()
    a_tid: list[int] = []

    def holder() -> None:
        a_tid.append(threading.get_native_id())
        with lock:
            holding.set()
            time.sleep(0.05)

    def wants_the_lock() -> float:
        start = time.monotonic()
        with lock:
            return time.monotonic() - start

    a = run_thread(holder, "A")
    assert holding.wait(5)
    waited = wants_the_lock()
    a.join(5)
    assert waited >= 0.02
    trace = snapshot(rec, tmp_path)
    [(begin, end)] = blocks(trace, BlockReason.LOCK, id(lock))
    assert begin.thread == threading.get_native_id() == end.thread
    assert functions(begin)[0] == "wants_the_lock"
    assert begin.stack[0].file == __file__
    assert 20 * MS <= end.time - begin.time <= 2000 * MS
    assert end.arg("waker") == a_tid[0]


@needs_c
def test_uncontended_and_nonblocking_acquires_record_nothing(
    rec: pyflight.FlightRecorder, tmp_path: Path
) -> None:
    lock, rlock = threading.Lock(), threading.RLock()
    for _ in range(100):
        with lock:
            pass
        assert lock.acquire() and lock.acquire(False) is False
        assert lock.acquire(timeout=0) is False and lock.acquire(True, 0) is False
        lock.release()
        with rlock, rlock:
            pass
    trace = snapshot(rec, tmp_path)
    assert not [e for e in of_kind(trace, Kind.BLOCK_BEGIN) if e.arg("obj") in (id(lock), id(rlock))]


@needs_c
def test_lock_api_is_the_real_one(rec: pyflight.FlightRecorder) -> None:
    lock = threading.Lock()
    assert type(lock) is C.TracedLock
    assert "unlocked" in repr(lock) and lock.locked() is False
    assert lock.acquire() is True and lock.locked() is True and "locked" in repr(lock)
    with pytest.raises(ValueError):
        lock.acquire(False, 1)
    with pytest.raises(ValueError):
        lock.acquire(timeout=-5)
    with pytest.raises(OverflowError):
        lock.acquire(timeout=1e100)
    with pytest.raises(TypeError):
        lock.acquire(1, 2, 3)
    with pytest.raises(TypeError):
        lock.acquire(bogus=1)
    start = time.monotonic()
    assert lock.acquire(timeout=0.02) is False
    assert time.monotonic() - start >= 0.015
    assert lock.acquire_lock(False) is False and lock.locked_lock() is True
    lock.release()
    with pytest.raises(RuntimeError):
        lock.release()
    with lock as entered:
        assert entered is True
    with pytest.raises(ZeroDivisionError), lock:
        1 / 0  # noqa: B018
    assert not lock.locked()
    ref = weakref.ref(lock)
    assert ref() is lock
    with pytest.raises(TypeError):
        pickle.dumps(lock)
    lock.acquire()
    lock._at_fork_reinit()
    assert not lock.locked()
    with pytest.raises(TypeError):
        threading.Lock(1)  # type: ignore[call-arg]
    if sys.version_info >= (3, 13):
        assert threading.Lock | None is not None  # a type, as threading.Lock is on 3.13
    with pytest.raises(TypeError):
        type("Sub", (threading.Lock,), {})
    if sys.version_info < (3, 13):  # as _thread.lock: made by threading.Lock() only
        with pytest.raises(TypeError, match=r"cannot create 'threading\.Lock' instances"):
            type(lock)()
    del lock
    gc.collect()
    assert ref() is None


@needs_c
def test_rlock_recursion_and_owner(rec: pyflight.FlightRecorder, tmp_path: Path) -> None:
    rlock = threading.RLock()
    assert type(rlock) is C.TracedRLock
    assert rlock.acquire() and rlock.acquire() and rlock._is_owned() and rlock._recursion_count() == 2
    assert "count=2" in repr(rlock)
    errors: list[BaseException] = []
    acquired_at: list[float] = []
    started = threading.Event()

    def other() -> None:
        try:
            rlock.release()  # not the owner
        except RuntimeError as exc:
            errors.append(exc)
        assert rlock.acquire(False) is False and rlock._is_owned() is False
        started.set()
        with rlock:
            acquired_at.append(time.monotonic())

    t = run_thread(other, "other")
    assert started.wait(5)
    time.sleep(0.03)
    rlock.release()
    time.sleep(0.02)  # still held once: the other thread still waits
    assert not acquired_at
    released_at = time.monotonic()
    rlock.release()
    t.join(5)
    assert len(errors) == 1 and acquired_at and acquired_at[0] >= released_at
    with pytest.raises(RuntimeError):
        rlock.release()
    trace = snapshot(rec, tmp_path)
    [(begin, end)] = blocks(trace, BlockReason.LOCK, id(rlock))
    assert begin.thread == t.native_id and functions(begin)[0] == "other"
    assert end.arg("waker") == threading.get_native_id()


@needs_c
def test_condition_with_rlock_and_lock_counts_once(rec: pyflight.FlightRecorder, tmp_path: Path) -> None:
    for lock in (threading.RLock(), threading.Lock()):
        cond = threading.Condition(lock)
        ready: list[int] = []

        def waiter(cond: threading.Condition = cond, ready: list[int] = ready) -> None:
            with cond:
                ready.append(1)
                assert cond.wait(5)

        t = run_thread(waiter)
        while True:
            with cond:
                if ready and cond._waiters:  # type: ignore[attr-defined]
                    cond.notify()
                    time.sleep(0.03)  # hold the lock: the waiter re-acquires it inside wait()
                    break
            time.sleep(0.001)
        t.join(5)
        trace = snapshot(rec, tmp_path)
        [(begin, end)] = blocks(trace, BlockReason.CONDITION, id(cond))
        assert end.time - begin.time >= 25 * MS
        assert end.arg("waker") == threading.get_native_id()
        # the re-acquire inside wait() is part of the CONDITION block, not a LOCK block
        assert not [b for b, _ in blocks(trace, BlockReason.LOCK, id(lock)) if b.thread == t.native_id]


# ------------------------------------------------------------------ conditions and what uses them


def test_queue_get_blocks_and_put_wakes(rec: pyflight.FlightRecorder, tmp_path: Path) -> None:
    q: queue.Queue[int] = queue.Queue()
    putter_tid: list[int] = []

    def putter() -> None:
        putter_tid.append(threading.get_native_id())
        # put only once the consumer waits (a head start in time alone can lose on a
        # loaded machine), and a while after that
        deadline = time.monotonic() + 5
        while not q.not_empty._waiters and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.001)
        time.sleep(0.05)
        q.put(42)

    t = run_thread(putter, "putter")

    def consume() -> int:
        return q.get(timeout=5)

    assert consume() == 42
    t.join(5)
    trace = snapshot(rec, tmp_path)
    [(begin, end)] = blocks(trace, BlockReason.CONDITION, id(q.not_empty))
    me = threading.get_native_id()
    assert begin.thread == me and functions(begin)[:2] == ["Queue.get", "consume"]
    assert 45 * MS <= end.time - begin.time <= 5000 * MS
    assert end.arg("waker") == putter_tid[0]
    [wake] = [e for e in of_kind(trace, Kind.WAKE) if e.arg("obj") == id(q.not_empty)]
    assert wake.thread == putter_tid[0] and wake.arg("target") == me
    assert wake.arg("reason") == BlockReason.CONDITION and wake.arg("task") == 0
    assert begin.time < wake.time <= end.time


def test_event_semaphore_barrier_future(rec: pyflight.FlightRecorder, tmp_path: Path) -> None:
    event = threading.Event()
    sem = threading.Semaphore(0)
    barrier = threading.Barrier(2)
    future: concurrent.futures.Future[int] = concurrent.futures.Future()

    def waited_on(cond: threading.Condition) -> None:
        """Until a thread waits on ``cond``: a fixed sleep let a loaded machine's main
        thread arrive after the release, and its acquire then did not block."""
        deadline = time.monotonic() + 5
        while not cond._waiters and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.001)

    def release_all() -> None:
        waited_on(event._cond)  # type: ignore[attr-defined]
        event.set()
        waited_on(sem._cond)  # type: ignore[attr-defined]
        sem.release()
        barrier.wait(5)
        waited_on(future._condition)  # type: ignore[attr-defined]
        future.set_result(7)

    t = run_thread(release_all)
    assert event.wait(5)
    assert sem.acquire(timeout=5)
    barrier.wait(5)
    assert future.result(timeout=5) == 7
    t.join(5)
    trace = snapshot(rec, tmp_path)
    me = threading.get_native_id()
    for obj, function in (
        (event._cond, "Event.wait"),
        (sem._cond, "Semaphore.acquire"),
        (future._condition, "Future.result"),
    ):
        pairs = [(b, e) for b, e in blocks(trace, BlockReason.CONDITION, id(obj)) if b.thread == me]
        assert pairs, function
        assert function in functions(pairs[0][0])
        assert pairs[-1][1].arg("waker") == t.native_id
    assert [b for b, _ in blocks(trace, BlockReason.CONDITION, id(barrier._cond)) if b.thread == me] or [
        b for b, _ in blocks(trace, BlockReason.CONDITION, id(barrier._cond)) if b.thread == t.native_id
    ]


def test_notify_all_wakes_every_waiter(rec: pyflight.FlightRecorder, tmp_path: Path) -> None:
    cond = threading.Condition()
    go = False

    def waiter() -> None:
        with cond:
            cond.wait_for(lambda: go, timeout=5)

    threads = [run_thread(waiter, f"w{i}") for i in range(3)]
    while True:
        with cond:
            if len(cond._waiters) == 3:  # type: ignore[attr-defined]
                go = True
                cond.notify_all()
                break
        time.sleep(0.001)
    for t in threads:
        t.join(5)
    trace = snapshot(rec, tmp_path)
    wakes = [e for e in of_kind(trace, Kind.WAKE) if e.arg("obj") == id(cond)]
    assert sorted(e.arg("target") for e in wakes) == sorted(t.native_id for t in threads)
    ends = [e for _, e in blocks(trace, BlockReason.CONDITION, id(cond))]
    assert len(ends) == 3 and {e.arg("waker") for e in ends} == {threading.get_native_id()}


def test_condition_timeout_and_errors_pass_through(rec: pyflight.FlightRecorder, tmp_path: Path) -> None:
    cond = threading.Condition()
    with cond:
        start = time.monotonic()
        assert cond.wait(0.03) is False
        assert time.monotonic() - start >= 0.025
        assert cond.wait(0) is False  # cannot block: not recorded
        assert cond.wait(timeout=-1) is False
    with pytest.raises(RuntimeError, match="un-acquired"):
        cond.wait()
    with pytest.raises(RuntimeError, match="un-acquired"):
        cond.notify()
    trace = snapshot(rec, tmp_path)
    pairs = blocks(trace, BlockReason.CONDITION, id(cond))
    assert pairs[0][1].arg("waker") == 0
    assert pairs[0][1].time - pairs[0][0].time >= 25 * MS
    assert not [e for e in of_kind(trace, Kind.WAKE) if e.arg("obj") == id(cond)]


# ------------------------------------------------------------------ join, sleep


def test_join_and_sleep(rec: pyflight.FlightRecorder, tmp_path: Path) -> None:
    t = run_thread(lambda: time.sleep(0.05), "sleeper")

    def joiner() -> None:
        t.join()

    joiner()
    t.join()  # not alive any more: nothing to record

    def sleeper() -> None:
        time.sleep(0.05)

    sleeper()
    time.sleep(0)
    with pytest.raises(ValueError):
        time.sleep(-1)
    trace = snapshot(rec, tmp_path)
    me = threading.get_native_id()
    [(begin, end)] = [(b, e) for b, e in blocks(trace, BlockReason.JOIN) if b.thread == me]
    assert begin.arg("obj") == t.native_id and end.arg("waker") == t.native_id
    assert functions(begin)[0] == "joiner"
    sleeps = [(b, e) for b, e in blocks(trace, BlockReason.SLEEP) if b.thread == me]
    assert len(sleeps) == 1 and functions(sleeps[0][0])[0] == "sleeper"
    assert sleeps[0][1].time - sleeps[0][0].time >= 45 * MS
    # the time asked for, in ns: the analysis tells a late return (a GIL wait) from sleep
    assert sleeps[0][0].arg("obj") == sleeps[0][1].arg("obj") == 50 * MS
    [(begin, _)] = [(b, e) for b, e in blocks(trace, BlockReason.SLEEP) if b.thread == t.native_id]
    assert functions(begin)[0] == "<lambda>"


def test_fsync_is_a_wait_for_the_disk(rec: pyflight.FlightRecorder, tmp_path: Path) -> None:
    """os.fsync / os.fdatasync are IO blocks at the caller's line (the sampler alone saw
    them as time off-CPU in no traced call); their errors pass through."""

    def make_durable(fd: int) -> None:
        os.write(fd, b"x" * 4096)
        os.fsync(fd)
        os.fdatasync(fd)

    fd = os.open(tmp_path / "journal", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        make_durable(fd)
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        os.fsync(fd)  # closed: the original's error
    trace = snapshot(rec, tmp_path)
    me = threading.get_native_id()
    syncs = [(b, e) for b, e in blocks(trace, BlockReason.IO) if b.thread == me]
    assert len(syncs) == 3, syncs  # the two syncs, and the failed one
    assert [functions(b)[0] for b, _ in syncs[:2]] == ["make_durable", "make_durable"]
    assert all(b.arg("obj") == 0 and e.time >= b.time for b, e in syncs)


def test_join_timeout_has_no_waker(rec: pyflight.FlightRecorder, tmp_path: Path) -> None:
    stop = threading.Event()
    t = run_thread(lambda: stop.wait(5))
    t.join(0.02)
    assert t.is_alive()
    stop.set()
    t.join(5)
    with pytest.raises(RuntimeError):
        threading.current_thread().join()
    trace = snapshot(rec, tmp_path)
    me = threading.get_native_id()
    ends = [e.arg("waker") for b, e in blocks(trace, BlockReason.JOIN) if b.thread == me]
    assert ends[0] == 0 and len(ends) <= 2


# ------------------------------------------------------------------ sockets, select


def test_blocking_socket_recv_and_nonblocking_skipped(rec: pyflight.FlightRecorder, tmp_path: Path) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            time.sleep(0.05)
            conn.sendall(b"hello")
            conn.recv(10)

    t = run_thread(serve, "server")
    client = socket.create_connection(("127.0.0.1", port), timeout=5)

    def read() -> bytes:
        return client.recv(10)

    assert read() == b"hello"
    client.sendall(b"bye")
    t.join(5)
    a, b = socket.socketpair()
    a.setblocking(False)
    with pytest.raises(BlockingIOError):
        a.recv(1)
    client.close()
    server.close()
    a.close()
    b.close()
    trace = snapshot(rec, tmp_path)
    recvs = [(b_, e) for b_, e in blocks(trace, BlockReason.IO, id(client)) if functions(b_)[0] == "read"]
    assert len(recvs) == 1
    begin, end = recvs[0]
    assert end.time - begin.time >= 30 * MS
    assert begin.arg("obj") == id(client)  # a receive: IO_SENDS clear
    me = threading.get_native_id()
    sends = {b_.arg("obj") for b_, _ in blocks(trace, BlockReason.IO, id(client)) if b_.thread == me}
    assert sends == {id(client), id(client) | IO_SENDS}  # connect and sendall send
    assert blocks(trace, BlockReason.IO, id(server)), "accept() on the server thread"
    # (ids of closed sockets are reused: look at this thread only)
    assert not [p for p in blocks(trace, BlockReason.IO, id(a)) if p[0].thread == me]


def test_a_socket_call_that_times_out_says_so(rec: pyflight.FlightRecorder, tmp_path: Path) -> None:
    """A recv that runs into the socket's timeout: its BLOCK_END's obj has IO_TIMED_OUT
    (the wait was the timeout, not the partner's answer); one the answer ends does not,
    and the model's block says ``timed_out``."""
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname(), timeout=5)
    conn, _ = server.accept()

    def read_silence() -> bytes:
        return client.recv(10)

    def read_answer() -> bytes:
        return client.recv(10)

    client.settimeout(0.05)
    with pytest.raises(TimeoutError):
        read_silence()
    client.settimeout(5)
    timer = threading.Timer(0.05, conn.sendall, (b"x",))
    timer.start()
    assert read_answer() == b"x"
    timer.join()
    for s in (client, conn, server):
        s.close()
    trace = snapshot(rec, tmp_path)
    assert trace.meta.get("blocking.io_timeouts")
    ends = {functions(b)[0]: (b, e) for b, e in blocks(trace, BlockReason.IO, id(client)) if b.stack}
    begin, end = ends["read_silence"]
    assert begin.arg("obj") == id(client) and end.arg("obj") == id(client) | IO_TIMED_OUT
    assert end.time - begin.time >= 40 * MS
    begin, end = ends["read_answer"]
    assert begin.arg("obj") == end.arg("obj") == id(client)
    timed = [b for b in build(trace).blocks if b.timed_out]
    assert [(b.obj, b.reason) for b in timed] == [(id(client), BlockReason.IO)]  # the bit taken out


def test_select_and_selectors(rec: pyflight.FlightRecorder, tmp_path: Path) -> None:
    a, b = socket.socketpair()
    t = run_thread(lambda: (time.sleep(0.03), b.send(b"x")))

    def wait_readable() -> list[Any]:
        return select.select([a], [], [], 5)[0]

    assert wait_readable() == [a]
    assert select.select([a], [], [], 0)[0] == [a]  # a poll: not recorded
    t.join(5)
    a.recv(1)
    sel = selectors.DefaultSelector()
    sel.register(a, selectors.EVENT_READ)
    t = run_thread(lambda: (time.sleep(0.03), b.send(b"y")))
    assert len(sel.select(5)) == 1
    t.join(5)
    a.recv(1)
    loop_sel = selectors.DefaultSelector()
    loop_sel._pyflight_loop_selector = True  # type: ignore[attr-defined]
    loop_sel.register(a, selectors.EVENT_READ)
    assert loop_sel.select(0.01) == []
    for s in (sel, loop_sel):
        s.close()
    a.close()
    b.close()
    trace = snapshot(rec, tmp_path)
    [(begin, end)] = blocks(trace, BlockReason.SELECT, 0)
    assert functions(begin)[0] == "wait_readable" and end.time - begin.time >= 20 * MS
    assert len(blocks(trace, BlockReason.SELECT, id(sel))) == 1
    assert not blocks(trace, BlockReason.SELECT, id(loop_sel))


# ------------------------------------------------------------------ TLS

#: A loopback TLS server for one client (the test's own certificate), run in a thread:
#: it reads the request, waits `delay` (a slow service) and answers. Also used by the
#: subprocess tests (their scripts import it from this file's source).
TLS_SERVER = """
import socket, threading, time

def tls_server(pem, delay):
    import ssl  # here: a subprocess test imports it only after the recorder started

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)

    def serve():
        conn, _ = listener.accept()
        conn.settimeout(30)
        with context.wrap_socket(conn, server_side=True) as tls:
            request = tls.recv(100)
            time.sleep(delay)
            tls.sendall(b"reply to " + request)
        listener.close()

    thread = threading.Thread(target=serve, name="tls-server", daemon=True)
    thread.start()
    return listener.getsockname()[1], thread

def tls_client(pem, port):
    import ssl

    context = ssl.create_default_context(cafile=pem)
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    return context.wrap_socket(raw, server_hostname="localhost")
"""
_tls: dict[str, Any] = {}
exec(TLS_SERVER, _tls)
tls_server: Callable[[str, float], tuple[int, threading.Thread]] = _tls["tls_server"]
tls_client: Callable[[str, int], ssl.SSLSocket] = _tls["tls_client"]


def test_tls_read_is_one_io_block(rec: pyflight.FlightRecorder, tmp_path: Path) -> None:
    """A thread waiting in an SSLSocket read (inside OpenSSL) is blocked on I/O, once per
    call: recv -> read, sendall -> send are one block each, not one inside another."""
    assert isinstance(ssl.SSLSocket.__dict__["recv"], C.BlockingHook if C else type(lambda: 0))
    port, server = tls_server(str(TEST_PEM), 0.3)
    client = tls_client(str(TEST_PEM), port)

    def wait_for_reply() -> bytes:
        client.sendall(b"ping")
        return client.recv(100)

    assert wait_for_reply() == b"reply to ping"
    server.join(30)
    client.close()
    trace = snapshot(rec, tmp_path)
    me = threading.get_native_id()
    mine = [
        p for p in blocks(trace, BlockReason.IO, id(client)) if p[0].thread == me
    ]  # no nesting (blocks())
    waits = [(b, e) for b, e in mine if functions(b)[:1] == ["wait_for_reply"]]
    assert len(waits) == 2, [functions(b) for b, _ in mine]  # the sendall and the recv
    longest = max(e.time - b.time for b, e in waits)
    assert longest >= 150 * MS
    # which way each went: the sendall sends, the recv (the long wait for the reply) receives
    sent, received = sorted(waits, key=lambda p: p[0].time)
    assert sent[0].arg("obj") == sent[1].arg("obj") == id(client) | IO_SENDS
    assert received[0].arg("obj") == received[1].arg("obj") == id(client)
    assert received[1].time - received[0].time == longest
    assert trace.meta["blocking.io_sends"]
    # the handshake is recorded too (in wrap_socket), and nothing from inside ssl.py's own
    # methods: the outer call's block covers the ones it makes
    assert any("SSLContext.wrap_socket" in functions(b) for b, _ in mine)
    inner = {f"SSLSocket.{name}" for name in blocking_mod.SSL_METHODS}
    assert not [functions(b) for b, _ in mine if functions(b)[:1] and functions(b)[0] in inner]


def test_tls_shutdown_waiting_for_the_peer_is_io(rec: pyflight.FlightRecorder, tmp_path: Path) -> None:
    """``SSLSocket.unwrap`` sends close_notify and waits for the peer's: against a peer
    that takes 300 ms to answer, the thread is blocked on I/O for that long, a send."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(TEST_PEM))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)

    def serve() -> None:
        conn, _ = listener.accept()
        conn.settimeout(30)
        tls = context.wrap_socket(conn, server_side=True)
        tls.recv(100)
        time.sleep(0.3)
        tls.unwrap().close()

    server = run_thread(serve, "tls-server")
    client = tls_client(str(TEST_PEM), listener.getsockname()[1])
    client.sendall(b"bye")

    def close_tls() -> socket.socket:
        return client.unwrap()

    close_tls().close()
    server.join(30)
    listener.close()
    trace = snapshot(rec, tmp_path)
    me = threading.get_native_id()
    [(begin, end)] = [
        p
        for p in blocks(trace, BlockReason.IO, id(client))
        if p[0].thread == me and "close_tls" in functions(p[0])
    ]
    assert end.time - begin.time >= 150 * MS
    assert begin.arg("obj") == id(client) | IO_SENDS


def test_tls_makefile_read_and_nonblocking_ssl_socket(rec: pyflight.FlightRecorder, tmp_path: Path) -> None:
    """http.client reads through makefile() (recv_into); a non-blocking SSL socket (as an
    event loop would use) records nothing."""
    port, server = tls_server(str(TEST_PEM), 0.3)
    client = tls_client(str(TEST_PEM), port)
    client.sendall(b"file")
    reader = client.makefile("rb")

    def read_reply() -> bytes:
        return reader.read(len(b"reply to file"))

    assert read_reply() == b"reply to file"
    server.join(30)
    reader.close()
    client.close()
    port, server = tls_server(str(TEST_PEM), 0.0)
    quiet = tls_client(str(TEST_PEM), port)
    quiet.setblocking(False)
    with pytest.raises(ssl.SSLWantReadError):
        quiet.recv(100)
    quiet.setblocking(True)
    quiet.sendall(b"done")
    assert quiet.recv(100) == b"reply to done"
    server.join(30)
    quiet.close()
    trace = snapshot(rec, tmp_path)
    me = threading.get_native_id()
    [(begin, end)] = [
        p
        for p in blocks(trace, BlockReason.IO, id(client))
        if p[0].thread == me and "read_reply" in functions(p[0])
    ]
    assert end.time - begin.time >= 150 * MS
    # the non-blocking recv: not recorded; the blocking calls after it are
    quiet_calls = [p for p in blocks(trace, BlockReason.IO, id(quiet)) if p[0].thread == me]
    assert (
        len(
            [
                p
                for p in quiet_calls
                if functions(p[0])[0].endswith("test_tls_makefile_read_and_nonblocking_ssl_socket")
            ]
        )
        == 2
    )


def test_ssl_imported_after_the_recorder_started(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    """Installing does not import ssl (~10 ms); ssl is patched as the program imports it,
    and put back on stop. A recorder stopped before the import leaves nothing behind."""
    out = tmp_path / "late.pyfl"
    code = TLS_SERVER + textwrap.dedent(
        f"""
        import sys, threading, pyflight
        from pyflight.core.events import BlockReason, Kind
        assert "ssl" not in sys.modules
        watching = lambda: [f for f in sys.meta_path if type(f).__name__ == "ImportWatcher"]

        rec = pyflight.FlightRecorder(sources=["blocking"]).start()
        assert "ssl" not in sys.modules, "installing imported ssl"
        assert len(watching()) == 1
        rec.stop()
        assert not watching(), "the watcher outlived the recorder"

        options = {{"blocking": {{"stack_min_us": 0}}}}  # every block with its stack
        rec = pyflight.FlightRecorder(sources=["blocking"], source_options=options).start()
        import ssl
        assert ssl is sys.modules["ssl"] and not watching()
        originals = {{n: ssl.SSLSocket.__dict__[n].__wrapped__ for n in {blocking_mod.SSL_METHODS!r}}}
        port, server = tls_server({str(TEST_PEM)!r}, 0.3)
        client = tls_client({str(TEST_PEM)!r}, port)

        def wait_for_reply():
            client.sendall(b"late")
            return client.recv(100)

        assert wait_for_reply() == b"reply to late"
        server.join(30)
        client.close()
        rec.write_to({str(out)!r})
        rec.stop()
        assert all(ssl.SSLSocket.__dict__[n] is f for n, f in originals.items()), "not restored"
        trace = pyflight.load({str(out)!r})
        me = threading.get_native_id()
        ends = {{}}
        waits = []
        for e in sorted(trace.events, key=lambda e: e.time):
            if e.thread != me or e.arg("reason") != BlockReason.IO or e.arg("obj") & ~1 != id(client):
                continue
            if e.kind == Kind.BLOCK_BEGIN:
                begin = e
            elif e.kind == Kind.BLOCK_END and begin.stack and begin.stack[0].function == "wait_for_reply":
                waits.append(e.time - begin.time)
        assert len(waits) == 2 and max(waits) >= 150_000_000, waits
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=subprocess_env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_import_watcher_calls_back_once_and_never_breaks_the_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shared ImportWatcher (ssl here, asyncio in the asyncio source)."""
    from pyflight.sources._import_watch import ImportWatcher

    for name in ("pyfl_watched_a", "pyfl_watched_b", "pyfl_watched_c"):
        (tmp_path / f"{name}.py").write_text("VALUE = 42\n")
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    seen: list[tuple[str, int]] = []
    watcher = ImportWatcher("pyfl_watched_a", lambda m: seen.append((m.__name__, m.VALUE))).install()
    try:
        import pyfl_watched_a  # type: ignore[import-not-found]

        assert seen == [("pyfl_watched_a", 42)] and watcher.done and watcher not in sys.meta_path
        assert type(pyfl_watched_a.__loader__).__name__ != "_ChainedLoader"  # its real loader
    finally:
        watcher.remove()

    def fails(module: Any) -> None:
        raise RuntimeError("callback fault")

    failing = ImportWatcher("pyfl_watched_b", fails).install()
    try:
        import pyfl_watched_b  # type: ignore[import-not-found]

        assert pyfl_watched_b.VALUE == 42 and failing.done
    finally:
        failing.remove()
    removed = ImportWatcher("pyfl_watched_c", lambda m: seen.append(("c", 0))).install()
    removed.remove()
    import pyfl_watched_c  # type: ignore[import-not-found]  # noqa: F401

    assert removed not in sys.meta_path and seen == [("pyfl_watched_a", 42)]


# ------------------------------------------------------------------ faults


@needs_c
def test_fault_in_c_hook_disables_source(rec: pyflight.FlightRecorder, tmp_path: Path) -> None:
    assert C is not None
    lock = threading.Lock()
    lock.acquire()
    t = run_thread(lambda: time.sleep(0.03) or lock.release())
    C._blocking_control(True, True)  # the next LOCK BLOCK_BEGIN fails
    with pytest.warns(SourceWarning, match="blocking"):
        assert lock.acquire(timeout=5) is True  # the program goes on
    lock.release()
    t.join(5)
    assert type(threading.Lock()) is not C.TracedLock  # uninstalled
    trace = snapshot(rec, tmp_path)
    [disabled] = of_kind(trace, Kind.SOURCE_DISABLED)
    assert disabled.arg("source") == "blocking" and "injected fault" in disabled.arg("reason")
    assert not blocks(trace, BlockReason.LOCK, id(lock))


def test_fault_in_python_hook_disables_source(
    originals: dict[tuple[Any, str], Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = backend.record

    # Thread.join is a Python wrapper with either core (sleep, select and sockets are C
    # stand-ins with the C core)
    def record(kind: int, *args: Any) -> None:
        if kind == Kind.BLOCK_BEGIN and args[0] == BlockReason.JOIN:
            raise RuntimeError("injected fault")
        real(kind, *args)

    recorder = pyflight.FlightRecorder(sources=["blocking"]).start()
    try:
        sleeper = threading.Thread(target=time.sleep, args=(0.05,))
        sleeper.start()
        monkeypatch.setattr(backend, "record", record)
        with pytest.warns(SourceWarning, match="injected fault"):
            sleeper.join()
        assert not sleeper.is_alive()  # the join itself went on
        monkeypatch.setattr(backend, "record", real)
        assert threading.Thread.join is originals[(threading.Thread, "join")]
        assert time.sleep is originals[(time, "sleep")]
        trace = snapshot(recorder, tmp_path)
    finally:
        recorder.stop()
    [disabled] = of_kind(trace, Kind.SOURCE_DISABLED)
    assert "injected fault" in disabled.arg("reason")


def test_pure_python_core(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    """Without the C core: conditions through Python wrappers, locks untraced."""
    env = dict(subprocess_env, PYFLIGHT_PURE_PYTHON="1")
    out = tmp_path / "p.pyfl"
    code = textwrap.dedent(
        f"""
        import queue, threading, time, pyflight
        from pyflight.core.events import Kind, BlockReason
        rec = pyflight.FlightRecorder(sources=["blocking"]).start()
        assert not threading.Lock.__name__.startswith("Traced")
        q = queue.Queue()
        t = threading.Thread(target=lambda: (time.sleep(0.03), q.put(1)))
        t.start()
        assert q.get(timeout=5) == 1
        t.join()
        rec.write_to({str(out)!r})
        rec.stop()
        trace = pyflight.load({str(out)!r})
        ends = [e for e in trace.events if e.kind == Kind.BLOCK_END and e.arg("obj") == id(q.not_empty)]
        wakes = [e for e in trace.events if e.kind == Kind.WAKE and e.arg("obj") == id(q.not_empty)]
        assert len(ends) == 1 and ends[0].arg("waker") == t.native_id, ends
        assert len(wakes) == 1 and wakes[0].arg("target") == threading.get_native_id(), wakes
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_no_warnings(rec: pyflight.FlightRecorder) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            assert sum(pool.map(lambda x: x * 2, range(200))) == 39800


@pytest.mark.skipif(C is None, reason="the waiter-lock wake-up is the C core's")
def test_notify_is_not_wrapped_and_waiter_locks_behave(rec: pyflight.FlightRecorder, tmp_path: Path) -> None:
    """notify is the original (a put with nobody waiting pays nothing); the wake-up is seen
    through the waiter lock, which is a plain lock outside a wait and behaves like one."""
    assert threading.Condition.notify is threading.Condition.__dict__["notify"]
    assert "pyflight" not in repr(threading.Condition.notify)
    assert type(threading._allocate_lock()) is type(_thread.allocate_lock())  # type: ignore[attr-defined]
    cond = threading.Condition()
    seen: list[object] = []

    def waiter() -> None:
        with cond:
            cond.wait()

    t = threading.Thread(target=waiter)
    t.start()
    deadline = time.monotonic() + 5
    while not cond._waiters and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.005)
    with cond:
        (lock,) = cond._waiters  # type: ignore[attr-defined]
        seen.append(lock.locked())
        with cond:  # notify with nobody else waiting, twice more: no extra WAKE
            pass
        cond.notify()
        cond.notify()
    t.join(5)
    assert seen == [True] and not t.is_alive()
    with cond:  # a wait that times out, then a notify with nobody waiting
        assert cond.wait(0.01) is False
        cond.notify_all()
    trace = snapshot(rec, tmp_path)
    wakes = [e for e in of_kind(trace, Kind.WAKE) if e.arg("obj") == id(cond)]
    assert [e.arg("target") for e in wakes] == [t.native_id]
    ends = [e for _, e in blocks(trace, BlockReason.CONDITION, id(cond))]
    assert [e.arg("waker") for e in ends] == [threading.get_native_id(), 0]


@pytest.mark.skipif(C is None, reason="the waiter-lock wake-up is the C core's")
def test_waiter_lock_that_outlives_its_wait_stays_a_plain_lock(
    rec: pyflight.FlightRecorder, tmp_path: Path
) -> None:
    """A wait's bookkeeping lives on the hook's C stack (nothing allocated per wait): a
    waiter lock kept after its wait returned must neither write to it nor record a WAKE
    when released later, and must behave as the lock it wraps."""
    kept: list[Any] = []

    def stand_in_wait(cond: object, timeout: float | None = None) -> bool:
        waiter = threading._allocate_lock()  # type: ignore[attr-defined]
        waiter.acquire()
        kept.append(waiter)
        return True

    assert C is not None
    hook = C.BlockingHook(stand_in_wait, C.HOOK_CONDITION_WAIT)
    cond = object()
    assert hook(cond) is True and hook(cond, timeout=1.0) is True
    for lock in kept:
        assert type(lock).__name__ == "_WaiterLock" and lock.locked()
        spare = [0] * 64  # reuse the C stack the wait ran on
        assert sum(spare) == 0
        lock.release()
        assert not lock.locked()
        assert lock.acquire(False) and lock.locked()
        lock.release()
    trace = snapshot(rec, tmp_path)
    assert not [e for e in of_kind(trace, Kind.WAKE) if e.arg("obj") == id(cond)]
    ends = [e for _, e in blocks(trace, BlockReason.CONDITION, id(cond))]
    assert [e.arg("waker") for e in ends] == [0, 0]


def wait_for_waiter(cond: threading.Condition) -> None:
    deadline = time.monotonic() + 10
    while not cond._waiters and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.005)
    assert cond._waiters  # type: ignore[attr-defined]


def blocked_waiter(event: threading.Event) -> None:
    event.wait()


@pytest.mark.skipif(C is None, reason="BLOCK_BEGIN written at the end of a wait is the C core's")
def test_wait_below_stack_threshold_has_no_stack_but_its_times(
    originals: dict[tuple[Any, str], Any], tmp_path: Path
) -> None:
    """Below stack_min_us a condition wait is recorded with its start time and no stack;
    at or above it (here a wait of >= 50 ms against the default 100 us) with its stack."""
    for option, expect_stack in ((10_000_000, False), (None, True)):
        options = {} if option is None else {"blocking": {"stack_min_us": option}}
        rec = pyflight.FlightRecorder(sources=["blocking"], source_options=options).start()
        try:
            event = threading.Event()
            t = run_thread(event.wait)
            wait_for_waiter(event._cond)  # type: ignore[attr-defined]
            time.sleep(0.05)
            released_at = backend.now()
            event.set()
            t.join(10)
            trace = snapshot(rec, tmp_path)
        finally:
            rec.stop()
        ((begin, end),) = blocks(trace, BlockReason.CONDITION, id(event._cond))  # type: ignore[attr-defined]
        assert begin.thread == end.thread == t.native_id
        assert begin.time < released_at <= end.time
        assert ("Event.wait" in functions(begin)) is expect_stack


@pytest.mark.skipif(C is None, reason="BLOCK_BEGIN written at the end of a wait is the C core's")
def test_wait_across_seals_and_snapshots_keeps_one_begin_with_its_stack(
    rec: pyflight.FlightRecorder, tmp_path: Path
) -> None:
    """A wait still blocked when a generation is sealed, or when a snapshot is taken, has
    its BLOCK_BEGIN (with stack) in that generation, written once."""
    event = threading.Event()
    t = run_thread(lambda: blocked_waiter(event))
    wait_for_waiter(event._cond)  # type: ignore[attr-defined]
    backend.seal()
    backend.record(int(Kind.LOG), 0, "test", "after the seal")  # events after it, any thread
    during = snapshot(rec, tmp_path)
    event.set()
    t.join(10)
    backend.seal()
    after = snapshot(rec, tmp_path)
    cond_id = id(event._cond)  # type: ignore[attr-defined]
    (begin,) = [e for e in of_kind(during, Kind.BLOCK_BEGIN) if e.arg("obj") == cond_id]
    assert begin.thread == t.native_id and "blocked_waiter" in functions(begin)
    assert not [e for e in of_kind(during, Kind.BLOCK_END) if e.arg("obj") == cond_id]
    ((begin2, end),) = blocks(after, BlockReason.CONDITION, cond_id)
    assert begin2.time == begin.time < end.time
    assert "blocked_waiter" in functions(begin2)


@pytest.mark.skipif(C is None, reason="the C stand-ins for sleep, select and sockets are the C core's")
def test_sleep_select_and_socket_stand_ins_keep_stacks_only_past_the_threshold(
    originals: dict[tuple[Any, str], Any], tmp_path: Path
) -> None:
    """With the C core, time.sleep, select and socket calls are BlockingHooks that carry
    the original's name; a call shorter than stack_min_us is a block without a stack, a
    longer one has the caller's stack; exceptions and results pass through."""

    def sleeps_here(seconds: float) -> None:
        time.sleep(seconds)

    options = {"blocking": {"stack_min_us": 30_000}}
    rec = pyflight.FlightRecorder(sources=["blocking"], source_options=options).start()
    try:
        assert isinstance(time.sleep, C.BlockingHook) and time.sleep.__name__ == "sleep"
        assert socket.socket.recv.__name__ == "recv"
        assert select.select.__wrapped__ is originals[(select, "select")]
        sleeps_here(0.001)
        sleeps_here(0.05)
        a, b = socket.socketpair()
        with a, b:
            b.sendall(b"x")
            assert a.recv(1) == b"x"
            a.settimeout(0.01)
            with pytest.raises(TimeoutError):
                a.recv(1)  # a socket timeout passes through as the original's exception
        assert select.select([], [], [], 0.04) == ([], [], [])
        trace = snapshot(rec, tmp_path)
    finally:
        rec.stop()
    sleeps = blocks(trace, BlockReason.SLEEP)
    mine = [(begin, end) for begin, end in sleeps if begin.thread == threading.get_native_id()]
    assert len(mine) == 2, mine
    (short_begin, short_end), (long_begin, long_end) = sorted(mine, key=lambda p: p[0].time)
    assert short_end.time - short_begin.time < 30_000_000 and not short_begin.stack
    assert long_end.time - long_begin.time >= 45_000_000 and "sleeps_here" in functions(long_begin)
    io = blocks(trace, BlockReason.IO)
    assert len(io) >= 3  # sendall, recv, the recv that timed out
    timed_out = max(io, key=lambda p: p[1].time - p[0].time)
    assert timed_out[1].time - timed_out[0].time >= 8_000_000
    ((begin, end),) = blocks(trace, BlockReason.SELECT)
    assert end.time - begin.time >= 35_000_000
    assert "test_sleep_select_and_socket_stand_ins_keep_stacks_only_past_the_threshold" in functions(begin)


@pytest.mark.skipif(C is None, reason="the C stand-ins for sleep, select and sockets are the C core's")
def test_stand_ins_pickle_and_copy_as_the_functions_they_replace(rec: pyflight.FlightRecorder) -> None:
    """`executor.submit(time.sleep, 1)` to a process pool pickles time.sleep: the stand-in
    must pickle by name, as the function it replaces does (it raised TypeError)."""
    import copy
    import pickle

    for obj in (time.sleep, select.select, socket.socket.recv, selectors.DefaultSelector.select):
        assert isinstance(obj, C.BlockingHook)
        assert pickle.loads(pickle.dumps(obj)) is obj
        assert copy.copy(obj) is obj and copy.deepcopy(obj) is obj
    # and so does a function that refers to one
    assert pickle.loads(pickle.dumps([time.sleep, 0.01]))[0] is time.sleep


@pytest.mark.skipif(C is None, reason="the C stand-ins for sleep, select and sockets are the C core's")
def test_stand_ins_take_weak_references_as_the_functions_they_replace(rec: pyflight.FlightRecorder) -> None:
    """A library may key a WeakKeyDictionary by the function it wraps (time.sleep)."""
    import weakref

    registry: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()
    for obj in (time.sleep, select.select, socket.socket.recv, selectors.DefaultSelector.select):
        assert isinstance(obj, C.BlockingHook)
        assert weakref.ref(obj)() is obj
        registry[obj] = obj.__name__
    assert registry[time.sleep] == "sleep"
    hook = C.BlockingHook(time.sleep.__wrapped__, C.HOOK_SLEEP)
    ref = weakref.ref(hook)
    del hook
    assert ref() is None  # freed with its weak references cleared
