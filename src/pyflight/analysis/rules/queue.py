"""Rule ``queue`` (docs/report.md explains its score)."""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pyflight.analysis.model import State
from pyflight.analysis.rules.base import Rule
from pyflight.core.events import BlockReason
from pyflight.format.reader import Frame

if TYPE_CHECKING:
    from pyflight.analysis.model import Interval, Model, TaskTimeline
from pyflight.analysis.frames import by_function, user_frame
from pyflight.analysis.queries import (
    Queries,
    interval_ns,
    lifetime,
    samples_by_thread,
    seconds_since_start,
    thread_name,
)
from pyflight.analysis.rules._idle_reads import waits_for_its_client
from pyflight.analysis.rules._waits import (
    blocked_waits,
    in_function,
    task_activity,
    task_blocked_waits,
    task_label_of,
    task_life,
    wait_site,
    waits_for_next_job,
    wakers,
)
from pyflight.analysis.rules.finding import INFO, Culprit, Finding, Moment, longest_waits, moments_of
from pyflight.analysis.rules.library_waits import library_wait_objects
from pyflight.analysis.rules.scoring import clamp_score, ramp
from pyflight.analysis.units import MS, fmt_ns, pct

#: Queue scores (threads and asyncio alike) by the producers' share of life blocked on a
#: full queue, and by the consumers' share idle on an empty one (info at most: often fine).
_BACKLOG_RAMP = [(0.05, 25), (0.2, 50), (0.5, 78), (0.8, 90)]
_STARVED_RAMP = [(0.3, 20), (0.6, 35), (0.9, 55)]


#: Sample states in which a thread is doing work (on a CPU, or ready for the GIL).
_WANTS_CPU = frozenset({State.RUNNING, State.READY, State.GC})


def _other_side(role: str, frame: Frame | None, working: float, waiting: float, how: str = "off CPU") -> str:
    """The title's end: where the other side spent its time, and whether it worked there
    or waited (a producer sleeping or reading a socket is slow, not busy)."""
    if frame is None:
        return ""
    if waiting > working:
        return f": {role} waiting in {frame.function} ({how})"
    return f": {role} busy in {frame.function}"


def _starved_hint(consumers: str, producer_waits: bool) -> str:
    if producer_waits:
        return (
            f"{consumers} wait for work most of the time, and so does the producer side: it "
            "spends its time waiting (I/O, a sleep, a lock; see the culprit), not computing. "
            "Overlap those waits (more producers, batched or asynchronous reads), or run fewer "
            "consumers."
        )
    return (
        f"{consumers} wait for work most of the time: the producer side is the bottleneck "
        "(see the culprit), or there are more consumers than needed."
    )


def rule_queue(model: Model) -> list[Finding]:
    """Producers blocked on a full queue (slow consumers) / consumers idle (slow producer)."""
    out: list[Finding] = []
    puts: list[tuple[Any, Any]] = []
    gets: list[tuple[Any, Any]] = []
    pools = library_wait_objects(model)  # a library's pool (SQLAlchemy's): library-wait's
    for thread, iv in blocked_waits(model, BlockReason.CONDITION):
        if iv.obj in pools:
            continue
        if in_function(iv.stack, {"put", "Queue.put"}, "queue.py"):
            puts.append((thread, iv))
        elif in_function(iv.stack, {"get", "Queue.get"}, "queue.py") and not waits_for_next_job(iv.stack):
            gets.append((thread, iv))
    interval = interval_ns(model)
    # one finding per queue: the workers of an idle thread pool (anyio's, a web server's)
    # are not the consumers of the program's own queue, nor its producers their producers
    groups: dict[tuple[str, int], list[tuple[Any, Any]]] = defaultdict(list)
    for side, side_waits in (("put", puts), ("get", gets)):
        for thread, iv in side_waits:
            groups[(side, iv.obj)].append((thread, iv))
    for (side, _), waits in sorted(groups.items(), key=lambda kv: (kv[0][0], -len(kv[1]))):
        total = sum(iv.end - iv.start for _, iv in waits)
        if total < 20 * MS:
            continue
        waiting = {t.tid: t for t, _ in waits}
        life = sum(lifetime(t) for t in waiting.values()) or 1
        share = total / life
        weights: dict[Frame, float] = defaultdict(float)
        for _, iv in waits:
            frame = user_frame(iv.stack)
            if frame is not None:
                weights[frame] += iv.end - iv.start
        where, _ = by_function(weights)
        # the other side: threads that woke the waiters; what they were busy with
        others = wakers(model, BlockReason.CONDITION, {iv.obj for _, iv in waits})
        other_tids = [tid for tid in others if tid not in waiting] or list(others)
        busy: Counter[Frame] = Counter()
        on_cpu = 0  # of those samples, the ones running or wanting the GIL
        for tid in other_tids:
            for sample in samples_by_thread(model).get(tid, ()):
                if in_function(sample.stack, {"get", "put"}, "queue.py"):
                    continue
                frame = user_frame(sample.stack)
                if frame is not None:
                    busy[frame] += 1
                    on_cpu += sample.state in _WANTS_CPU
        other_frame, _ = by_function({f: float(n) for f, n in busy.items()})
        off_cpu = sum(busy.values()) - on_cpu
        _, worst = max(waits, key=lambda tw: tw[1].end - tw[1].start)
        evidence = {
            "waits": len(waits),
            "wait_ns": total,
            "wait_share": round(share, 4),
            "worst_ns": worst.end - worst.start,
            "worst_at_s": seconds_since_start(model, worst.start),
            "waiting_threads": sorted(t.name for t in waiting.values()),
            "waiting_at": str(Culprit.of(where)) if where else None,
            "other_side": [thread_name(model, tid) for tid in other_tids[:5]],
            "other_side_busy_in": str(Culprit.of(other_frame)) if other_frame else None,
            "other_side_busy_ns": on_cpu * interval,
            "other_side_waiting_ns": off_cpu * interval,
        }
        moments = moments_of(
            [
                Moment(
                    seconds_since_start(model, iv.start),
                    iv.end - iv.start,
                    thread_name(model, t.tid),
                    "",
                    f"waited in Queue.{side}",
                )
                for t, iv in longest_waits(waits)
            ]
        )
        if side == "put":
            culprit = other_frame or where
            score = clamp_score(ramp(share, _BACKLOG_RAMP))
            slow = _other_side("consumers", other_frame, on_cpu, off_cpu)
            out.append(
                Finding(
                    rule="queue-backlog",
                    score=score,
                    title=f"Producers blocked on a full queue for {fmt_ns(total)} ({pct(share)}){slow}",
                    culprit=Culprit.of(culprit),
                    evidence=evidence,
                    moments=moments,
                    hint=(
                        "The queue is full: consumers do not keep up. Make the consumer faster "
                        "(see the culprit), add consumers, or accept a bigger maxsize if bursts "
                        "are short."
                    ),
                )
            )
        else:
            if share < 0.3 or len(waiting) < 1:
                continue
            culprit = other_frame or where
            score = clamp_score(ramp(share, _STARVED_RAMP))
            slow = _other_side("producer", other_frame, on_cpu, off_cpu)
            out.append(
                Finding(
                    rule="queue-starved",
                    score=score,
                    title=(
                        f"{len(waiting)} consumer thread(s) idle on an empty queue "
                        f"{pct(share)} of their time{slow}"
                    ),
                    culprit=Culprit.of(culprit),
                    evidence=evidence,
                    moments=moments,
                    hint=_starved_hint("Consumers", off_cpu > on_cpu),
                )
            )
    out.extend(_asyncio_queue(model))
    return out


def _previous_steps(
    model: Model, waits: Iterable[tuple[TaskTimeline, Interval]], exclude: set[int]
) -> Counter[int]:
    """For each wait, the task whose step ran last on the loop before the waiter's next
    step (not a task in ``exclude``): most often the one that woke it (put into / took
    from the queue), as asyncio runs a woken task right after the callbacks ready before it."""
    cache = Queries.of(model).memo.setdefault("loop_steps", {})
    step_starts: dict[int, list[int]] = {}  # per task object (ids are reused by later tasks)
    counts: Counter[int] = Counter()
    for task, iv in waits:
        entry = cache.get(task.thread)
        if entry is None:
            items = sorted(
                (b.end, b.start, b.obj)
                for loop in model.loops.values()
                if loop.tid == task.thread
                for b in loop.busy
                if b.obj
            )
            entry = cache[task.thread] = (items, [it[0] for it in items])
        items, ends = entry
        starts = step_starts.get(id(task))
        if starts is None:
            starts = step_starts[id(task)] = [st.start for st in task.steps]
        k = bisect.bisect_left(starts, iv.end)
        resumed = starts[k] if k < len(starts) else iv.end
        i = bisect.bisect_right(ends, resumed) - 1
        for j in range(i, max(i - 8, -1), -1):
            step_end, _step_start, tid = items[j]
            if step_end < iv.start:
                break
            if tid != task.id and tid not in exclude:
                counts[tid] += 1
                break
    return counts


def _asyncio_queue(model: Model) -> list[Finding]:
    """asyncio.Queue: producers blocked on put (a full queue: slow consumers) and consumers
    idle on get (an empty queue: a slow producer), per queue."""
    out: list[Finding] = []
    sides: dict[tuple[str, int], list[tuple[Any, Any]]] = defaultdict(list)
    for task, iv in task_blocked_waits(model, BlockReason.CONDITION):
        if iv.detail == "asyncio.Queue.put":
            sides[("put", iv.obj)].append((task, iv))
        elif iv.detail == "asyncio.Queue.get" and not waits_for_its_client(iv.stack):
            # (a server's own queue of its client's next events, an ASGI server's receive:
            # idle until the client speaks, or the server shuts down)
            sides[("get", iv.obj)].append((task, iv))
    tasks_by_id = {t.id: t for t in model.all_tasks()}
    for (side, obj), waits in sides.items():
        total = sum(iv.end - iv.start for _, iv in waits)
        if total < 20 * MS:
            continue
        waiting = {t.id: t for t, _ in waits}
        life = sum(task_life(t) for t in waiting.values()) or 1
        share = total / life
        if side == "get" and share < 0.3:
            continue
        where = wait_site(waits)
        # the other side: tasks seen waiting on the other end of this queue, else the tasks
        # whose steps ran right before the waiters resumed
        other_side = "get" if side == "put" else "put"
        others = {t.id: t for t, _ in sides.get((other_side, obj), ()) if t.id not in waiting}
        if not others:
            guessed = _previous_steps(model, waits, set(waiting))
            others = {
                tid: tasks_by_id[tid]
                for tid, n in guessed.most_common(3)
                if tid in tasks_by_id and n >= max(2, len(waits) // 10)
            }
        spans = [(iv.start, iv.end) for _, iv in waits]
        other_frame, busy_ns, other_waiting_ns = task_activity(
            model, [(t, spans) for t in others.values()], exclude_obj=obj
        )
        if other_frame is None:  # nothing seen while they worked: where they wait on the queue
            other_frame = wait_site(
                (t, iv) for t, iv in task_blocked_waits(model, BlockReason.CONDITION) if t.id in others
            )
        _, worst = max(waits, key=lambda tw: tw[1].end - tw[1].start)
        evidence = {
            "queue": obj,
            "waits": len(waits),
            "wait_ns": total,
            "wait_share": round(share, 4),
            "worst_ns": worst.end - worst.start,
            "worst_at_s": seconds_since_start(model, worst.start),
            "waiting_tasks": len(waiting),
            "waiting_in": sorted({task_label_of(t) for t in waiting.values()})[:10],
            "waiting_at": str(Culprit.of(where)) if where else None,
            "other_side": sorted({task_label_of(t) for t in others.values()})[:5],
            "other_side_busy_in": str(Culprit.of(other_frame)) if other_frame else None,
            "other_side_busy_ns": busy_ns,
            "other_side_awaiting_ns": other_waiting_ns,
        }
        culprit = other_frame or where
        moments = moments_of(
            [
                Moment(
                    seconds_since_start(model, iv.start),
                    iv.end - iv.start,
                    thread_name(model, task.thread),
                    task_label_of(task),
                    f"waited in asyncio.Queue.{side}",
                )
                for task, iv in longest_waits(waits)
            ]
        )
        if side == "put":
            score = clamp_score(ramp(share, _BACKLOG_RAMP))
            slow = _other_side("consumers", other_frame, busy_ns, other_waiting_ns, "awaiting")
            out.append(
                Finding(
                    rule="queue-backlog",
                    score=score,
                    title=(
                        f"{len(waiting)} asyncio task(s) blocked on a full asyncio.Queue for "
                        f"{fmt_ns(total)} ({pct(share)}){slow}"
                    ),
                    culprit=Culprit.of(culprit),
                    evidence=evidence,
                    moments=moments,
                    hint=(
                        "The asyncio.Queue is full: its consumer tasks do not keep up. Make the "
                        "consumer faster (see the culprit), start more consumer tasks, or accept a "
                        "bigger maxsize if bursts are short. Recording with task_wait='stack' shows "
                        "where consumers await."
                    ),
                )
            )
        else:
            score = clamp_score(ramp(share, _STARVED_RAMP))
            if busy_ns < 0.1 * (max(iv.end for _, iv in waits) - min(iv.start for _, iv in waits)):
                # producers not seen running: they wait for input themselves (a request, a
                # timer), which is how a background consumer task normally spends its life
                score = min(score, INFO - 1)
            slow = _other_side("producer", other_frame, busy_ns, other_waiting_ns, "awaiting")
            out.append(
                Finding(
                    rule="queue-starved",
                    score=score,
                    title=(
                        f"{len(waiting)} asyncio consumer task(s) idle on an empty asyncio.Queue "
                        f"{pct(share)} of their time{slow}"
                    ),
                    culprit=Culprit.of(culprit),
                    evidence=evidence,
                    moments=moments,
                    hint=_starved_hint("Consumer tasks", other_waiting_ns > busy_ns),
                )
            )
    return out


RULE = Rule("queue", ("queue-backlog", "queue-starved"), rule_queue)
