"""A lock-order inversion (two threads each holding a lock the other waits for) is named
as a deadlock, with both waiting lines and the threads stuck behind it, not as contention
on one lock with advice to hold it for less time. It needs to know who held a lock when
a wait began (LOCK_HELD: the C core's lock wrapper)."""

from __future__ import annotations

from pathlib import Path

import pytest

from programs import PROGRAMS, findings_of, marked_line, record_named, top_warning
from pyflight.core import BACKEND_NAME
from pyflight.core.events import BlockReason, Kind

needs_lock_waits = pytest.mark.skipif(BACKEND_NAME != "c", reason="locks are traced by the C core only")
MS = 1_000_000


@needs_lock_waits
def test_two_threads_stuck_on_each_others_lock_are_a_deadlock_still_under_way(tmp_path: Path) -> None:
    findings = findings_of(record_named("deadlock_threads", tmp_path))
    finding = top_warning(findings, "deadlock")
    assert findings[0] is finding
    assert sorted(finding.evidence["threads"]) == ["teller-1", "teller-2"]
    assert finding.evidence["still_waiting"] and "still waiting when the trace ends" in finding.title
    line = marked_line(PROGRAMS / "deadlock_threads.py", "DEADLOCK LINE")
    assert finding.culprit is not None
    assert (finding.culprit.function, finding.culprit.line) == ("transfer", line)
    assert {w["held_by"] for w in finding.evidence["waits"]} == {"teller-1", "teller-2"}
    assert "one global order" in finding.hint
    assert not [f for f in findings if f.rule == "lock-contention"], [f.title for f in findings]


@needs_lock_waits
def test_a_deadlock_a_timeout_breaks_is_named_with_the_threads_stuck_behind_it(tmp_path: Path) -> None:
    findings = findings_of(record_named("deadlock_timeout_threads", tmp_path))
    finding = top_warning(findings, "deadlock")
    assert findings[0] is finding, [(f.rule, f.title) for f in findings[:3]]
    assert sorted(finding.evidence["threads"]) == ["cache-refresher", "db-writer"]
    assert not finding.evidence["still_waiting"] and "until a timeout broke it" in finding.title
    program = PROGRAMS / "deadlock_timeout_threads.py"
    places = {w["thread"]: w["at"] for w in finding.evidence["waits"]}
    assert f":{marked_line(program, 'DEADLOCK LINE')})" in places["cache-refresher"], places
    assert f":{marked_line(program, 'the opposite order')})" in places["db-writer"], places
    assert finding.evidence["times"] >= 1 and finding.evidence["stuck_ns"] >= 400 * MS
    # the readers waited for the cache lock the refresher held while stuck: the deadlock's
    # victims, not a contention of their own ("hold it for less time" would not help)
    assert set(finding.evidence["stuck_behind"]) <= {"reader-0", "reader-1"}
    assert finding.evidence["stuck_behind"], finding.evidence
    assert not [f for f in findings if f.rule == "lock-contention" and f.score >= 75], [
        f.title for f in findings
    ]


@needs_lock_waits
@pytest.mark.parametrize(
    "program", ["lock_contention", "lock_held_long", "gil_hashing_lock", "stalled_holder_threads", "healthy"]
)
def test_contention_on_one_lock_is_no_deadlock(program: str, tmp_path: Path) -> None:
    findings = findings_of(record_named(program, tmp_path))
    assert not [f for f in findings if f.rule == "deadlock"], [(f.rule, f.title) for f in findings]


def test_the_cycle_is_read_from_who_held_each_lock_as_the_wait_began() -> None:
    """Hand-made traces: the same two overlapping waits are a deadlock with LOCK_HELD
    naming each other's thread as the holder, and nothing without it (older traces, the
    pure core) or when both waits were ended by a release (a hand-over, not a deadlock)."""
    from pyflight.analysis.model import Model, build
    from pyflight.analysis.rules import find
    from pyflight.format.reader import loads
    from tracegen import Gen, trace

    def model(held: bool, released: bool) -> Model:
        g = Gen(seq=1, start_ns=0, end_ns=2_000 * MS)
        g.event(1, Kind.THREAD_START, 0, tid=1, name="transfer", ident=501, parent=0)
        g.event(2, Kind.THREAD_START, 0, tid=2, name="audit", ident=502, parent=0)
        waits = (
            (1, 20, 7, 502, (("transfer", "/app/bank.py", 8),)),
            (2, 30, 8, 501, (("audit", "/app/bank.py", 14),)),
        )
        for tid, start, lock, holder, stack in waits:
            if held:
                g.event(tid, Kind.LOCK_HELD, start * MS, obj=lock, holder=holder)
            g.event(tid, Kind.BLOCK_BEGIN, start * MS, reason=BlockReason.LOCK, obj=lock, stack=stack)
        g.event(1, Kind.BLOCK_END, 1_520 * MS, reason=BlockReason.LOCK, obj=7, waker=2 if released else 0)
        g.event(2, Kind.BLOCK_END, 1_530 * MS, reason=BlockReason.LOCK, obj=8, waker=1)
        return build(loads(trace([g])))

    (deadlock,) = [f for f in find(model(held=True, released=False)) if f.rule == "deadlock"]
    assert deadlock.evidence["threads"] == ["transfer", "audit"]
    places = [w["at"] for w in deadlock.evidence["waits"]]
    assert places == ["transfer (app/bank.py:8)", "audit (app/bank.py:14)"]
    assert not [f for f in find(model(held=False, released=False)) if f.rule == "deadlock"]
    assert not [f for f in find(model(held=True, released=True)) if f.rule == "deadlock"]
