"""Threads meeting at a threading.Barrier every round wait for the slowest: the straggler
is named (it is the one whose arrival releases the others), with where it spent the
round; a balanced barrier is no finding. Barrier waits are Condition waits: both cores."""

from __future__ import annotations

from pathlib import Path

from programs import PROGRAMS, findings_of, marked_line, record_named, top_warning


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
