"""gc-pauses counts a pause for the time its thread could have been collecting: on an
overloaded machine a collection's wall time stretches while its thread waits for a CPU
(a healthy program got a 222 ms "pause" and a warning that way, loaded by three test
suites); the samples around the pause (the thread's CPU clock) tell the two apart."""

from __future__ import annotations

from pyflight.analysis.model import Model, build
from pyflight.analysis.rules import WARNING, find
from pyflight.core.events import Kind, ThreadState
from pyflight.format.reader import loads
from tracegen import Gen, trace

MS = 1_000_000


def _model(cpu_during_pause: int) -> Model:
    """A thread that collects for 222 ms (generation 2) in a 900 ms trace, sampled every
    10 ms, using ``cpu_during_pause`` ns of CPU through the pause."""
    g = Gen(seq=1, start_ns=0, end_ns=900 * MS)
    g.event(9, Kind.COUNTER, 1, name="sampler_interval_us", value=10_000)
    g.event(1, Kind.THREAD_START, 0, tid=1, name="worker", ident=501, parent=0)
    stack = (("load_records", "/app/etl.py", 12),)
    for t in range(10, 300, 10):
        g.event(
            9,
            Kind.SAMPLE,
            t * MS,
            tid=1,
            task=0,
            stack=stack,
            state=ThreadState.RUNNING,
            cpu=9 * MS,
            span=10 * MS,
        )
    g.event(1, Kind.GC_BEGIN, 300 * MS, generation=2)
    g.event(1, Kind.GC_END, 522 * MS, generation=2, collected=10, uncollectable=0)
    span = 530 * MS - 290 * MS
    g.event(
        9,
        Kind.SAMPLE,
        530 * MS,
        tid=1,
        task=0,
        stack=stack,
        state=ThreadState.RUNNING,
        cpu=cpu_during_pause,
        span=span,
    )
    for t in range(540, 900, 10):
        g.event(
            9,
            Kind.SAMPLE,
            t * MS,
            tid=1,
            task=0,
            stack=stack,
            state=ThreadState.RUNNING,
            cpu=9 * MS,
            span=10 * MS,
        )
    return build(loads(trace([g])))


def test_a_pause_the_collector_spent_on_a_cpu_is_a_warning() -> None:
    (gc,) = [f for f in find(_model(cpu_during_pause=230 * MS)) if f.rule == "gc-pauses"]
    assert gc.score >= WARNING and gc.evidence["worst_ns"] == 222 * MS
    assert gc.evidence["stretched_pauses"] == 0


def test_a_pause_stretched_by_a_busy_machine_counts_for_its_time_on_a_cpu() -> None:
    findings = [f for f in find(_model(cpu_during_pause=30 * MS)) if f.rule == "gc-pauses"]
    assert all(f.score < WARNING for f in findings), [(f.score, f.title) for f in findings]
    for finding in findings:  # if still told (info), it says why it counts less
        assert finding.evidence["stretched_pauses"] == 1 and "busy machine" in finding.title
        assert finding.moments[0].duration_ns == 222 * MS  # the moment is the real stretch
