"""slow-tasks: few runs of a user task, long ones only, lifetimes excluded."""

from __future__ import annotations

from pyflight.analysis.model import build
from pyflight.analysis.rules import find
from pyflight.core.events import Kind, ThreadState
from pyflight.format.reader import loads
from tracegen import Gen, trace

SECOND_NS = 1_000_000_000
HANDLE = (("handle", "/srv/app.py", 3),)


def test_few_user_tasks_long_ones_only_and_not_lifetimes() -> None:
    """Fewer than 5 runs of a task: no 'usual' to compare with. A long one (>= 1 s) is
    reported as what it is; one that lasts the whole window (a worker's or a session's
    lifetime) is not a latency at all."""
    gen = Gen(seq=1, start_ns=0, end_ns=10 * SECOND_NS)
    tid = 7
    gen.event(tid, Kind.USER_TASK_BEGIN, 0, id=1, parent=0, name="session")  # the whole window
    gen.event(tid, Kind.THREAD_INFO, 1, tid=tid, name="main", ident=1)
    gen.event(tid, Kind.USER_TASK_BEGIN, 2 * SECOND_NS, id=2, parent=1, name="import batch")
    gen.event(tid, Kind.USER_TASK_END, 5 * SECOND_NS, id=2)
    gen.event(tid, Kind.USER_TASK_END, 10 * SECOND_NS - 1, id=1)
    findings = [f for f in find(build(loads(trace([gen]))), strict=True) if f.rule == "slow-tasks"]
    assert [f.title for f in findings] == ["User task 'import batch' took 3.00 s"], findings


def _requests(slow_on_cpu: bool) -> bytes:
    """Ten 'request' tasks of 10 ms and one of 300 ms on one thread, sampled every 10 ms
    through the slow one: runnable but given no CPU (a loaded machine), or running."""
    ms = 1_000_000
    gen = Gen(seq=1, start_ns=0, end_ns=2 * SECOND_NS)
    tid = 7
    gen.event(tid, Kind.THREAD_INFO, 1, tid=tid, name="main", ident=1)
    for i in range(10):
        gen.event(tid, Kind.USER_TASK_BEGIN, (i + 1) * 50 * ms, id=i + 1, parent=0, name="request")
        gen.event(tid, Kind.USER_TASK_END, (i + 1) * 50 * ms + 10 * ms, id=i + 1)
    gen.event(tid, Kind.USER_TASK_BEGIN, 1000 * ms, id=99, parent=0, name="request")
    for k in range(1, 31):
        gen.event(
            9, Kind.SAMPLE, 1000 * ms + k * 10 * ms - 1, tid=tid, task=0, stack=HANDLE,
            state=ThreadState.RUNNING, cpu=10 * ms if slow_on_cpu else 0, span=10 * ms,
        )  # fmt: skip
    gen.event(tid, Kind.USER_TASK_END, 1300 * ms, id=99)
    return trace([gen])


def test_a_task_slowed_only_by_waiting_for_a_cpu_is_not_slow() -> None:
    """Time the program waited for the GIL or a CPU (READY) is not the task's own: on a
    loaded machine a healthy request may take 30 times its usual time doing nothing."""
    findings = [
        f for f in find(build(loads(_requests(slow_on_cpu=False))), strict=True) if f.rule == "slow-tasks"
    ]
    assert findings == []
    [slow] = [
        f for f in find(build(loads(_requests(slow_on_cpu=True))), strict=True) if f.rule == "slow-tasks"
    ]
    assert slow.evidence["worst_ns"] == 300_000_000
    assert slow.evidence["worst_cpu_wait_ns"] == 0
