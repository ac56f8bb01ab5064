"""untraced-wait: threads the sampler finds off-CPU where no hook saw them block. A wait
inside the standard library (``subprocess.run``'s waitpid, a pipe read) is charged to the
program's line that called it, naming the call; a library's own idle thread is not."""

from __future__ import annotations

from pathlib import Path

from programs import findings_of, record_named
from pyflight.analysis.model import build
from pyflight.analysis.rules import INFO, find
from pyflight.core.events import BlockReason, Kind, ThreadState
from pyflight.format.reader import loads
from tracegen import Gen, trace

MS = 1_000_000
#: a converter thread waiting for an external tool
CONVERT = (
    ("Popen._try_wait", "/py/lib/python3.12/subprocess.py", 2011),
    ("Popen.wait", "/py/lib/python3.12/subprocess.py", 1264),
    ("run", "/py/lib/python3.12/subprocess.py", 550),
    ("convert_video", "/srv/app.py", 14),
    ("Thread.run", "/py/lib/python3.12/threading.py", 1010),
)
#: a thread pool's worker between jobs: the standard library's code only
IDLE_WORKER = (
    ("_worker", "/py/lib/python3.12/concurrent/futures/thread.py", 89),
    ("Thread.run", "/py/lib/python3.12/threading.py", 1010),
)


def _trace(stacks: dict[int, tuple[tuple[str, str, int], ...]]) -> bytes:
    """Threads sampled every 10 ms for 1 s, asleep in ``stacks[tid]`` with no CPU used."""
    g = Gen(seq=1, start_ns=0, end_ns=1000 * MS)
    for tid in stacks:
        g.event(tid, Kind.THREAD_START, 0, tid=tid, name=f"t-{tid}", ident=tid, parent=0)
    for k in range(1, 100):
        for tid, stack in stacks.items():
            g.event(
                9, Kind.SAMPLE, k * 10 * MS + tid, tid=tid, task=0, stack=stack,
                state=ThreadState.SLEEPING, cpu=0, span=10 * MS,
            )  # fmt: skip
    return trace([g])


def _untraced(data: bytes) -> list:
    return [f for f in find(build(loads(data)), strict=True) if f.rule == "untraced-wait"]


def test_a_wait_inside_the_standard_library_is_charged_to_the_calling_line() -> None:
    [finding] = _untraced(_trace({1: CONVERT, 2: CONVERT}))
    assert finding.score >= INFO
    assert finding.culprit is not None
    assert (finding.culprit.function, finding.culprit.line) == ("convert_video", 14)
    assert finding.evidence["inside"] == "run (python3.12/subprocess.py)"
    assert "inside run" in finding.title
    # the time is the subprocess's: said in the title, the evidence and the advice
    assert "inside convert_video waiting for a subprocess" in finding.title
    assert finding.evidence["waiting_for"] == "a subprocess" and "records child processes" in finding.hint


def test_a_read_from_another_process_is_told_as_waiting_for_it() -> None:
    """A consumer thread blocked reading a multiprocessing.Queue (a pipe read, no hook)."""
    reader = (
        ("Connection._recv", "/py/lib/python3.12/multiprocessing/connection.py", 395),
        ("Connection.recv_bytes", "/py/lib/python3.12/multiprocessing/connection.py", 216),
        ("Queue.get", "/py/lib/python3.12/multiprocessing/queues.py", 103),
        ("consume", "/srv/pipeline.py", 16),
        ("Thread.run", "/py/lib/python3.12/threading.py", 1010),
    )
    [finding] = _untraced(_trace({1: reader}))
    assert "inside consume waiting for another process (inside Queue.get" in finding.title
    assert finding.evidence["waiting_for"] == "another process"
    # an untraced lock or C call is not said to be another process's doing
    [lock] = _untraced(
        _trace({1: (("handle", "/srv/app.py", 30), ("Thread.run", "/py/lib/python3.12/threading.py", 1010))})
    )
    assert "waiting_for" not in lock.evidence and "in no traced call" in lock.title


#: a client thread in a gRPC stub's call: grpc's Python frames, its wait in gRPC's C core
GRPC_CALL = (
    ("_UnaryUnaryMultiCallable._blocking", "/venv/lib/python3.12/site-packages/grpc/_channel.py", 1162),
    ("_UnaryUnaryMultiCallable.__call__", "/venv/lib/python3.12/site-packages/grpc/_channel.py", 1178),
    ("get_price", "/srv/prices.py", 27),
    ("Thread.run", "/py/lib/python3.12/threading.py", 1010),
)


def test_a_wait_inside_a_third_party_call_is_charged_to_the_calling_line() -> None:
    """The program's line is the culprit and the library call it made is named (not the
    library's own innermost frame); a gRPC stub's call waits for the server's answer."""
    [finding] = _untraced(_trace({1: GRPC_CALL, 2: GRPC_CALL}))
    assert finding.culprit is not None and finding.culprit.function == "get_price"
    assert "inside get_price waiting for a gRPC server's answer" in finding.title
    assert "_UnaryUnaryMultiCallable.__call__" in finding.evidence["inside"]
    assert finding.evidence["waiting_for"] == "a gRPC server's answer"
    # a library's own thread, with no frame of the program's: the library's frame
    own = GRPC_CALL[:2] + GRPC_CALL[3:]
    [library] = _untraced(_trace({1: own, 2: own}))
    assert library.culprit is not None and library.culprit.function == "_UnaryUnaryMultiCallable._blocking"


#: a gRPC server's own polling thread, waiting in gRPC's C core for the next call
GRPC_SERVE = (
    ("_serve", "/venv/lib/python3.12/site-packages/grpc/_server.py", 1314),
    ("Thread.run", "/py/lib/python3.12/threading.py", 1010),
)


def test_a_library_thread_idle_between_jobs_is_no_finding() -> None:
    assert _untraced(_trace({1: IDLE_WORKER, 2: IDLE_WORKER})) == []
    # nor a third-party library's own thread in its idle loop (off-CPU in C there)
    assert _untraced(_trace({1: GRPC_SERVE})) == []


#: a thread in ``subprocess.run(..., capture_output=True)``: a traced select on the pipes
COMMUNICATE = (
    ("_PollLikeSelector.select", "/py/lib/python3.12/selectors.py", 415),
    ("Popen._communicate", "/py/lib/python3.12/subprocess.py", 2108),
    ("Popen.communicate", "/py/lib/python3.12/subprocess.py", 1209),
    *CONVERT[2:],
)


def _blocked_trace(stack: tuple[tuple[str, str, int], ...]) -> bytes:
    """Two threads blocked (a traced SELECT) in ``stack`` for 1 s, sampled every 10 ms."""
    g = Gen(seq=1, start_ns=0, end_ns=1000 * MS)
    for tid in (1, 2):
        g.event(tid, Kind.THREAD_START, 0, tid=tid, name=f"t-{tid}", ident=tid, parent=0)
        g.event(tid, Kind.BLOCK_BEGIN, 1 * MS, reason=BlockReason.SELECT, obj=0, stack=stack)
    for k in range(1, 100):
        for tid in (1, 2):
            g.event(
                9, Kind.SAMPLE, k * 10 * MS + tid, tid=tid, task=0, stack=stack,
                state=ThreadState.SLEEPING, cpu=0, span=10 * MS,
            )  # fmt: skip
    for tid in (1, 2):
        g.event(tid, Kind.BLOCK_END, 999 * MS, reason=BlockReason.SELECT, obj=0, waker=0)
    return trace([g])


def test_a_traced_wait_for_a_subprocess_is_told_as_the_untraced_one() -> None:
    """``run(..., capture_output=True)`` waits in a traced select on the child's pipes,
    ``check_output`` in an untraced pipe read, ``run()`` in waitpid: all three wait for
    the child, and are told the same way (the select is no hint of what to fix)."""
    [finding] = _untraced(_blocked_trace(COMMUNICATE))
    assert finding.culprit is not None and finding.culprit.function == "convert_video"
    assert "inside convert_video waiting for a subprocess (inside run" in finding.title
    assert "does not hook" not in finding.title
    assert finding.evidence["waiting_for"] == "a subprocess"
    assert 1.8e9 <= finding.evidence["wait_ns"] <= 2.0e9  # the spans: two threads for ~1 s
    # any other traced select stays the select's (a server's selector, an idle loop)
    server = (
        ("_PollLikeSelector.select", "/py/lib/python3.12/selectors.py", 415),
        ("serve", "/srv/app.py", 9),
    )
    assert _untraced(_blocked_trace(server)) == []


def test_a_grpc_servers_polling_thread_is_idle(tmp_path: Path) -> None:
    """A real gRPC server (planted, on loopback) streaming to a subscriber thread: its
    polling thread sits in gRPC's C core between calls, which is no wait of the program."""
    findings = findings_of(record_named("healthy_grpc_stream", tmp_path))
    untraced = [f for f in findings if f.rule == "untraced-wait"]
    assert not [f for f in untraced if f.score >= INFO], [(f.score, f.title) for f in untraced]
