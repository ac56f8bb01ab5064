"""Rule ``loop-starved``: ready tasks late with no long step, on synthetic traces."""

from __future__ import annotations

from pyflight.analysis import build
from pyflight.analysis.rules import Finding, find
from pyflight.core.events import Kind, ThreadState
from pyflight.format.reader import loads
from tracegen import Gen, trace

MS = 1_000_000
RUNNING = ThreadState.RUNNING
LOOP, LOOP_THREAD, SAMPLER = 42, 1, 2
SETUP = (("<module>", "/srv/app/main.py", 5),)
HANDLER = (("handler", "/srv/app/views.py", 30), ("<module>", "/srv/app/main.py", 40))


def _busy_loop(late_tasks_created_at: int) -> bytes:
    """A loop thread that imports and sets up for 40 ms (sampled), then runs a loop from
    40 to 170 ms whose short steps keep it busy (sampled in ``handler``). Twelve tasks are
    ready 0.1 ms before their step; three more wait 35 ms, created at
    ``late_tasks_created_at``."""
    g = Gen(seq=1, start_ns=0, end_ns=200 * MS)
    for t in range(0, 40 * MS, 10 * MS):  # set-up: the loop is not running yet
        g.event(SAMPLER, Kind.SAMPLE, t + 10 * MS, LOOP_THREAD, 0, SETUP, RUNNING, 10 * MS, 10 * MS)
    steps: list[tuple[int, int]] = []  # (task, ready at)
    for k in range(3):
        steps.append((100 + k, late_tasks_created_at))
    for k in range(12):
        steps.append((200 + k, 50 * MS + 10 * MS * k))
    first_step = {100 + k: late_tasks_created_at + 35 * MS + k * MS // 10 for k in range(3)}
    timeline: list[tuple[int, int, int]] = []  # (ready at, step at, task)
    for task, ready in steps:
        timeline.append((ready, first_step.get(task, ready + MS // 10), task))
    for ready, _, task in sorted(timeline):
        g.event(LOOP_THREAD, Kind.TASK_CREATE, ready, task=task, name=f"t{task}", coro="serve", parent=0)
    g.event(LOOP_THREAD, Kind.LOOP_IDLE_BEGIN, 40 * MS, loop=LOOP)
    g.event(LOOP_THREAD, Kind.LOOP_IDLE_END, 40 * MS + 1000, loop=LOOP, events=1)
    for _, at, task in sorted(timeline, key=lambda x: x[1]):
        g.event(LOOP_THREAD, Kind.TASK_STEP_BEGIN, at, task=task)
        g.event(LOOP_THREAD, Kind.TASK_STEP_END, at + 50_000, task=task)
        g.event(LOOP_THREAD, Kind.TASK_DONE, at + 60_000, task=task, outcome=0, error="")
    g.event(LOOP_THREAD, Kind.LOOP_IDLE_BEGIN, 170 * MS, loop=LOOP)
    for t in range(50 * MS, 170 * MS, 10 * MS):  # the loop's own work, short steps
        g.event(SAMPLER, Kind.SAMPLE, t, LOOP_THREAD, 0, HANDLER, RUNNING, 10 * MS, 10 * MS)
    for b in g.batches:
        b.events.sort(key=lambda e: e[1])
    return trace([g])


def _starved(data: bytes) -> list[Finding]:
    return [f for f in find(build(loads(data)), strict=True) if f.rule == "loop-starved"]


def test_tasks_ready_before_the_loop_starts_are_not_starvation() -> None:
    """``asyncio.run`` makes the main task ready before the loop's first step; imports and
    set-up run meanwhile. That wait (and the set-up's samples) is not the loop being late
    (seen on a loaded machine: "too much work queued on the loop (<module>)")."""
    assert _starved(_busy_loop(late_tasks_created_at=2 * MS)) == []


def test_tasks_late_while_the_loop_runs_are_starvation() -> None:
    (finding,) = _starved(_busy_loop(late_tasks_created_at=60 * MS))
    assert "too much work queued" in finding.title
    assert finding.culprit is not None and finding.culprit.function == "handler"
    assert finding.evidence["scheduling_delay_p90_ns"] >= 30 * MS
