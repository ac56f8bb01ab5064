"""slow-tasks: few runs of a user task, long ones only, lifetimes excluded."""

from __future__ import annotations

from pyflight.analysis.model import build
from pyflight.analysis.rules import find
from pyflight.core.events import Kind
from pyflight.format.reader import loads
from tracegen import Gen, trace

SECOND_NS = 1_000_000_000


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
