"""lock-contention groups the waits by where they happened: a lock per request or per
record waited for at one line (gRPC's per-call condition, ``with account.lock:``) is one
finding there, not one per lock object. Synthetic traces."""

from __future__ import annotations

from pathlib import Path

import pytest

from programs import findings_of, record_named, top_warning
from pyflight.analysis.model import build
from pyflight.analysis.rules import INFO, Finding, find
from pyflight.core import BACKEND_NAME
from pyflight.core.events import BlockReason, Kind
from pyflight.format.reader import loads
from tracegen import Gen, trace

MS = 1_000_000
TRANSFER = (("transfer", "/srv/bank.py", 40), ("handle", "/srv/bank.py", 60))
AUDIT = (("audit", "/srv/bank.py", 80), ("handle", "/srv/bank.py", 61))


def _waits(sites: list[tuple[tuple[tuple[str, str, int], ...], int]]) -> bytes:
    """Four threads for 1 s; for each (stack, lock) in ``sites``, in turn, every thread
    waits 8 ms for that lock (held by the next thread, which wakes it)."""
    g = Gen(seq=1, start_ns=0, end_ns=1000 * MS)
    for tid in range(1, 5):
        g.event(tid, Kind.THREAD_START, 0, tid=tid, name=f"worker-{tid}", ident=tid, parent=0)
    t = 10 * MS
    for stack, lock in sites:
        for tid in range(1, 5):
            g.event(tid, Kind.BLOCK_BEGIN, t, reason=BlockReason.LOCK, obj=lock, stack=stack)
            g.event(tid, Kind.BLOCK_END, t + 8 * MS, reason=BlockReason.LOCK, obj=lock, waker=tid % 4 + 1)
            t += 10 * MS
    return trace([g])


def _contention(data: bytes) -> list[Finding]:
    return [f for f in find(build(loads(data)), strict=True) if f.rule == "lock-contention"]


def test_a_lock_per_record_waited_at_one_line_is_one_finding() -> None:
    # 20 accounts' locks, each waited for by the four threads, all in transfer
    [finding] = _contention(_waits([(TRANSFER, 0x1000 + 64 * k) for k in range(20)]))
    assert finding.culprit is not None and finding.culprit.function == "transfer"
    assert finding.evidence["locks"] == 20 and finding.evidence["waits"] == 80
    assert finding.evidence["wait_ns"] == 80 * 8 * MS and "for 20 locks in transfer" in finding.title
    assert finding.score >= INFO


def test_locks_waited_at_two_lines_are_two_findings_and_one_lock_is_a_lock() -> None:
    found = _contention(_waits([(TRANSFER, 0x1000), (AUDIT, 0x2000)] * 5))
    assert sorted(f.culprit.function for f in found if f.culprit) == ["audit", "transfer"]
    assert all(f.evidence["locks"] == 1 and "for a lock in" in f.title for f in found)


@pytest.mark.skipif(BACKEND_NAME != "c", reason="locks are traced by the C core only")
def test_a_slow_query_under_a_lock_in_a_threaded_server(tmp_path: Path) -> None:
    """A real Flask app on waitress (planted, on loopback) runs a slow sqlite query under
    a shared lock. The story is the lock: its holders were in the query's line, and the
    GIL was free meanwhile (sqlite's CPU is no GIL held: no "CPU-bound threads taking
    turns"); waitress's idle workers waiting for their next request are held up by no
    one (no stalled-holder)."""
    findings = findings_of(record_named("lock_contention_wsgi_sqlite", tmp_path))
    shown = [(f.score, f.rule, f.title) for f in findings]
    finding = top_warning(findings, "lock-contention")
    assert finding.culprit is not None and finding.culprit.function == "report", shown
    assert "GIL" not in finding.title and "its holders meanwhile in report" in finding.title, shown
    assert str(finding.evidence["held_at"]).startswith("report ("), shown
    assert not [f for f in findings if f.rule == "stalled-holder"], shown
