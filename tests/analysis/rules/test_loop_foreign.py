"""loop-blocked on a loop that is not asyncio's own (uvloop): its steps are not recorded,
so the traced blocking calls made inside them (a loop runner outer to them in the stack)
say it was blocked. Synthetic traces."""

from __future__ import annotations

from pyflight.analysis.model import build
from pyflight.analysis.rules import INFO, WARNING, Finding, find
from pyflight.core.events import BlockReason, Kind
from pyflight.format.reader import loads
from tracegen import Gen, trace

MS = 1_000_000
UVLOOP_STEP = (
    ("load_profile_sync", "/srv/app.py", 9),
    ("get_profile", "/srv/app.py", 14),
    ("Runner.run", "/py/lib/python3.12/asyncio/runners.py", 118),
    ("run", "/venv/lib/python3.12/site-packages/uvloop/__init__.py", 109),
    ("main", "/srv/app.py", 30),
)
#: the same call made by a plain thread: no loop runner outer to it
THREAD_RUN = ("Thread.run", "/py/lib/python3.12/threading.py", 1010)
THREAD_CALL = (("load_profile_sync", "/srv/app.py", 9), THREAD_RUN)


def _blocks(stack: tuple[tuple[str, str, int], ...], count: int, ms: int) -> bytes:
    """The main thread blocks ``count`` times in time.sleep for ``ms`` each, in 1.5 s."""
    g = Gen(seq=1, start_ns=0, end_ns=1500 * MS)
    g.event(1, Kind.THREAD_START, 0, tid=1, name="MainThread", ident=1, parent=0)
    for k in range(count):
        t = 10 * MS + k * 95 * MS
        g.event(1, Kind.BLOCK_BEGIN, t, reason=BlockReason.SLEEP, obj=ms * MS, stack=stack)
        g.event(1, Kind.BLOCK_END, t + ms * MS, reason=BlockReason.SLEEP, obj=ms * MS, waker=0)
    return trace([g])


def _blocked(data: bytes) -> list[Finding]:
    return [f for f in find(build(loads(data)), strict=True) if f.rule == "loop-blocked"]


def test_blocking_calls_inside_a_uvloop_step_are_a_blocked_loop() -> None:
    [finding] = _blocked(_blocks(UVLOOP_STEP, 15, 80))
    assert finding.culprit is not None and finding.culprit.function == "load_profile_sync"
    assert finding.evidence["blocking_calls"] == 15 and finding.evidence["blocked_ns"] == 15 * 80 * MS
    assert finding.evidence["call"] == "time.sleep" and "uvloop" in finding.title
    assert finding.score >= WARNING and len(finding.moments) >= 1


def test_a_few_medium_calls_or_calls_outside_a_loop_are_not() -> None:
    assert _blocked(_blocks(UVLOOP_STEP, 3, 40)) == []  # jitter, as on asyncio's loop
    assert _blocked(_blocks(THREAD_CALL, 15, 80)) == []  # a thread's own sleeps
    # one long call is enough
    [long] = _blocked(_blocks(UVLOOP_STEP, 1, 300))
    assert long.score >= INFO and long.evidence["worst_ns"] == 300 * MS
