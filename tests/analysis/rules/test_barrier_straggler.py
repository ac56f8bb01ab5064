"""Threads meeting at a threading.Barrier every round wait for the slowest: the straggler
is named (it is the one whose arrival releases the others), with where it spent the
round; a balanced barrier is no finding. Barrier waits are Condition waits: both cores."""

from __future__ import annotations

from pathlib import Path

from programs import PROGRAMS, findings_of, marked_line, record_named, top_warning
from pyflight.analysis import build
from pyflight.analysis.rules import Finding, find
from pyflight.core.events import BlockReason, Kind
from pyflight.format.reader import loads
from tracegen import Gen, trace

MS = 1_000_000


def test_the_thread_everyone_waits_for_at_the_barrier_is_named(tmp_path: Path) -> None:
    findings = findings_of(record_named("barrier_straggler_threads", tmp_path))
    finding = top_warning(findings, "barrier-straggler")
    assert findings[0] is finding, [(f.rule, f.title) for f in findings[:3]]
    assert finding.evidence["straggler"] == "shard-3"
    assert finding.evidence["waiters"] == ["shard-0", "shard-1", "shard-2"]
    assert finding.evidence["wait_share"] >= 0.5, finding.evidence
    program = PROGRAMS / "barrier_straggler_threads.py"
    # the culprit is the straggler's work, not the line where the others wait
    assert finding.culprit is not None and finding.culprit.function == "advance", finding.title
    assert f":{marked_line(program, 'step_done.wait()')})" not in str(finding.culprit)
    assert "balance the work" in finding.hint
    assert finding.moments and all(m.thread != "shard-3" for m in finding.moments)


def test_a_balanced_barrier_is_not_a_straggler(tmp_path: Path) -> None:
    findings = findings_of(record_named("healthy_barrier_threads", tmp_path))
    assert not [f for f in findings if f.rule == "barrier-straggler" and f.score >= 25], [
        (f.rule, f.score, f.title) for f in findings
    ]


def _rounds(last_of: list[int], waits_ms: list[int]) -> list[Finding]:
    """Four threads (1-4) meeting at one Barrier (obj 7) once per round: in round r the
    thread ``last_of[r]`` arrives last and releases the others, who waited ``waits_ms[r]``."""
    barrier = (
        ("Condition.wait", "/py/lib/python3.12/threading.py", 355),
        ("Barrier._wait", "/py/lib/python3.12/threading.py", 750),
        ("Barrier.wait", "/py/lib/python3.12/threading.py", 720),
        ("simulate", "/srv/sim.py", 20),
    )
    g = Gen(seq=1, start_ns=0, end_ns=len(last_of) * 100 * MS)
    for tid in range(1, 5):
        g.event(tid, Kind.THREAD_START, 0, tid=tid, name=f"shard-{tid - 1}", ident=tid, parent=0)
    for r, (last, ms) in enumerate(zip(last_of, waits_ms, strict=True)):
        start = r * 100 * MS + MS
        for tid in range(1, 5):
            if tid != last:
                g.event(tid, Kind.BLOCK_BEGIN, start, reason=BlockReason.CONDITION, obj=7, stack=barrier)
                g.event(tid, Kind.BLOCK_END, start + ms * MS, reason=BlockReason.CONDITION, obj=7, waker=last)
    return [f for f in find(build(loads(trace([g]))), strict=True) if f.rule == "barrier-straggler"]


def test_a_thread_last_in_half_the_rounds_is_not_a_straggler() -> None:
    """On a loaded machine a balanced barrier's last arrival changes every round, and over
    ten rounds one thread can still end most of the waiting (its late rounds were the long
    ones): last in 5 of 10 is luck, not a straggler. Last in 9 of 10 is one."""
    lucky = [1, 2, 1, 3, 1, 4, 1, 2, 1, 3]
    long_when_1 = [40 if last == 1 else 5 for last in lucky]
    assert _rounds(lucky, long_when_1) == []
    steady = [1] * 9 + [2]
    [finding] = _rounds(steady, [40] * 10)
    assert finding.evidence["straggler"] == "shard-0"
