"""cpu-hotspot says when the hot function ran inside an event loop's steps: on uvloop,
whose steps are not recorded, that is the only finding that can tell a CPU-heavy
handler blocked every other task. Synthetic traces."""

from __future__ import annotations

from pyflight.analysis.model import build
from pyflight.analysis.rules import INFO, Finding, find
from pyflight.core.events import Kind, ThreadState
from pyflight.format.reader import loads
from tracegen import Gen, trace

MS = 1_000_000
RENDER = ("render_report", "/srv/app.py", 9)
IN_A_UVLOOP_STEP = (
    RENDER,
    ("report", "/srv/app.py", 14),
    ("Runner.run", "/py/lib/python3.12/asyncio/runners.py", 118),
    ("run", "/venv/lib/python3.12/site-packages/uvloop/__init__.py", 109),
    ("main", "/srv/app.py", 30),
)
IN_A_THREAD = (RENDER, ("worker", "/srv/app.py", 20), ("Thread.run", "/py/lib/python3.12/threading.py", 1010))


def _busy(stack: tuple[tuple[str, str, int], ...]) -> bytes:
    """The main thread on CPU in ``stack`` at each of 60 ticks, 10 ms apart."""
    g = Gen(seq=1, start_ns=0, end_ns=1000 * MS)
    g.event(1, Kind.THREAD_START, 0, tid=1, name="MainThread", ident=1, parent=0)
    for k in range(1, 61):
        g.event(9, Kind.SAMPLE, k * 10 * MS, tid=1, task=0, stack=stack, state=ThreadState.RUNNING,
                cpu=10 * MS, span=10 * MS)  # fmt: skip
    return trace([g])


def _hotspot(data: bytes) -> Finding:
    [found] = [f for f in find(build(loads(data)), strict=True) if f.rule == "cpu-hotspot"]
    return found


def test_cpu_inside_a_uvloop_step_is_said_to_block_the_loop() -> None:
    finding = _hotspot(_busy(IN_A_UVLOOP_STEP))
    assert finding.culprit is not None and finding.culprit.function == "render_report"
    assert "inside the steps of an event loop" in finding.title and "uvloop" in finding.title
    assert finding.evidence["on_event_loop_ns"] >= 500 * MS
    assert finding.score >= INFO and "run_in_executor" in finding.hint
    # the same CPU in a plain thread: a hotspot, no loop
    plain = _hotspot(_busy(IN_A_THREAD))
    assert "event loop" not in plain.title and plain.evidence["on_event_loop_ns"] is None
    assert plain.score <= finding.score
