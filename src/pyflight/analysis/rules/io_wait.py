"""Rule ``io-wait`` (docs/report.md explains its score)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from pyflight.analysis.model import State
from pyflight.analysis.rules.base import Rule
from pyflight.core.events import BlockReason
from pyflight.format.reader import Frame

if TYPE_CHECKING:
    from pyflight.analysis.model import Interval, Model, TaskTimeline, ThreadTimeline
from pyflight.analysis.frames import by_function, is_library, is_third_party, user_frame
from pyflight.analysis.queries import gil_busy_share, lifetime, seconds_since_start, thread_name, within
from pyflight.analysis.rules._idle_reads import (
    RECEIVING_WORDS,
    connection_handlers,
    listening_blocks,
    listening_task_waits,
    named_for,
    reads_its_stream,
    receives,
    waits_for_a_job,
    waits_for_connection,
    waits_for_its_client,
    waits_for_next_request,
)
from pyflight.analysis.rules._waits import (
    GIL_BOUND_HINT,
    GIL_BOUND_SCORE,
    blocked_waits,
    busy_gil,
    task_label_of,
)
from pyflight.analysis.rules.finding import Culprit, Finding, Moment, moments_of
from pyflight.analysis.rules.library_waits import library_wait_pattern
from pyflight.analysis.rules.scoring import clamp_score, ramp
from pyflight.analysis.units import MS, fmt_ns, pct

#: Socket calls this short (median) on a GIL-busy process are mostly the GIL wait after them.
SHORT_CALL = 20 * MS
#: Socket calls that ran into their timeout are told apart from the other waits when there
#: are at least this many, or they are at least this share of the threads' I/O wait.
MIN_TIMEOUTS = 3
TIMEOUTS_SHARE = 0.2
#: Timeouts of one task this close together are one call's (aiohttp's inside asyncio's).
TIMEOUT_TOGETHER = 1 * MS

_TIMEOUT_HINT = (
    "Calls ran into their timeout: the other side did not answer in time, and the wait "
    "was the timeout itself, each time, before the call failed. More workers or retries "
    "wait more, not sooner. Find why the other side stalls (its own trace, its pool, its "
    "locks); where a late answer is useless, fail sooner (a shorter timeout); stop calling "
    "a failing partner for a while (a circuit breaker). "
)


#: How the words of a library coroutine's name begin when the task waits for I/O
#: (``_idle_reads.named_for``): asyncio's streams (``StreamReader._wait_for_data``,
#: ``readline``, ``drain``), aiohttp's (``DataQueue.read``), anyio's (``receive``),
#: websockets (``recv``), the loop's socket calls (``sock_recv``, ``sock_connect``).
_IO_WORDS = (*RECEIVING_WORDS, "write", "drain", "send", "connect")


#: How many of the innermost library coroutines of a chain may say I/O: aiohttp's body
#: read waits in ``StreamReader._wait``, called by ``readany``, ``read``, then
#: ``ClientResponse.read``.
_IO_DEPTH = 3


def _awaited_io(stack: Sequence[Frame]) -> Frame | None:
    """The innermost coroutine of a task's await chain that says I/O by its name, among
    the innermost ``_IO_DEPTH`` library ones (the standard library's or an installed
    package's: aiohttp's ``DataQueue.read``) inside the program's call; None if none
    does, or the wait is a library's pool or lock (``library-wait``)."""
    if not stack or _program_frame(stack[:1]) is not None:
        return None
    for frame in stack[:_IO_DEPTH]:
        if _program_frame((frame,)) is not None:
            return None
        if named_for(frame, _IO_WORDS):
            return None if library_wait_pattern(tuple(stack)) is not None else frame
    return None


def _program_frame(stack: Sequence[Frame]) -> Frame | None:
    """The innermost frame of the program's own code (not the standard library's nor a
    third-party package's), None if the stack has none."""
    frame = user_frame(stack)
    return frame if frame is not None and not is_library(frame) and not is_third_party(frame) else None


def _in_parent(tasks: dict[int, TaskTimeline], task: TaskTimeline, at: int) -> Frame | None:
    """A library's own task (anyio's connect, a task group's child) has no program frame:
    the program's line is where its parent (or grandparent) waited at that moment."""
    for _ in range(3):
        parent = tasks.get(task.parent) if task.parent else None
        if parent is None:
            return None
        # its wait at that moment; else, if that wait was not looked at, its nearest one
        # that was (the same coroutine's line, most likely)
        nearest: tuple[int, Frame] | None = None
        for iv in parent.intervals:
            frame = _program_frame(iv.stack) if iv.stack else None
            if frame is None:
                continue
            if iv.start <= at < iv.end:
                return frame
            distance = min(abs(iv.start - at), abs(iv.end - at))
            if nearest is None or distance < nearest[0]:
                nearest = (distance, frame)
        if nearest is not None:
            return nearest[1]
        task = parent
    return None


def _reads_a_subprocess(stack: Sequence[Frame]) -> bool:
    """The wait is asyncio's subprocess plumbing (``Process.communicate``'s readers of the
    child's pipes): the I/O is the child's output, so the time is the child's."""
    return any(frame.file.replace("\\", "/").endswith("/asyncio/subprocess.py") for frame in stack)


_SUBPROCESS_HINT = (
    "The tasks waited for a subprocess's output (asyncio's `Process.communicate` reading "
    "its pipes): the time went to the child, not to this process. See what it does "
    "(`pyflight run` records child processes too, each into its own file), run such "
    "children concurrently, or give them a timeout (`asyncio.wait_for`)."
)


def _wall_time(waits: list[tuple[TaskTimeline, Interval, Frame]]) -> int:
    """The waits' total, where a subprocess's pipe readers (``communicate`` reads stdout
    and stderr in a task each, side by side, for the same child) count once per parent:
    the union of their waits. Other tasks' waits add up, one per task."""
    readers: dict[int, list[tuple[int, int]]] = defaultdict(list)
    total = 0
    for task, iv, _ in waits:
        if task.parent and _reads_a_subprocess(iv.stack):
            readers[task.parent].append((iv.start, iv.end))
        else:
            total += iv.end - iv.start
    for spans in readers.values():
        spans.sort()
        end = spans[0][0]
        for start, stop in spans:
            total += max(0, stop - max(start, end))
            end = max(end, stop)
    return total


def _lives(waits: list[tuple[TaskTimeline, Interval, Frame]]) -> int:
    """The waiting tasks' lifetimes, a subprocess's pipe readers counted once per parent
    (from the first one's creation to the last one's end), as ``_wall_time`` counts them."""
    groups: dict[int, tuple[int, int]] = {}
    life = 0
    seen: set[int] = set()
    for task, iv, _ in waits:
        if id(task) in seen:
            continue
        seen.add(id(task))
        if task.parent and _reads_a_subprocess(iv.stack):
            start, end = groups.get(task.parent, (task.created, task.end))
            groups[task.parent] = (min(start, task.created), max(end, task.end))
        else:
            life += max(0, task.end - task.created)
    return life + sum(max(0, end - start) for start, end in groups.values())


_TASK_IO_REASONS = (BlockReason.AWAIT, BlockReason.CONDITION)


def _task_io_waits(model: Model) -> list[Finding]:
    """asyncio tasks awaiting I/O in a library (a socket read, a response): their waits got
    their await chain from the asyncio source's look at waiting tasks (a sample of them,
    by length), so the total is a lower bound. A connection handler reading its own
    stream waits for its client's next request: idle, named apart, not counted."""
    waits: list[tuple[TaskTimeline, Interval, Frame]] = []
    handlers: set[int] | None = None  # made on first use: a pass over every loop callback
    idle_ns = listened_ns = 0
    listening = listening_task_waits(model)
    for task in model.all_tasks():
        listening(task, None)
        for iv in task.intervals:
            if iv.state is not State.BLOCKED:
                continue
            pushed = listening(task, iv)
            # an await, or an asyncio Event/Condition wait a library reads through (anyio's
            # SocketStream.receive waits on an asyncio.Event: httpx's async client); not an
            # await of another task (what that task waits on is its own wait)
            if iv.reason in _TASK_IO_REASONS and iv.stack and iv.detail != "Task":
                call = _awaited_io(iv.stack)
                if call is None:
                    continue
                serving = waits_for_its_client(iv.stack)
                if not serving and reads_its_stream(iv.stack):
                    if handlers is None:
                        handlers = connection_handlers(model)
                    serving = id(task) in handlers
                if serving:
                    idle_ns += iv.end - iv.start
                elif pushed and receives(call):
                    listened_ns += iv.end - iv.start
                else:
                    waits.append((task, iv, call))
    total = _wall_time(waits)
    if total < 50 * MS:
        return []
    tasks = {id(t): t for t, _, _ in waits}
    life = _lives(waits) or 1
    share = min(1.0, total / life)
    weights: dict[Frame, float] = defaultdict(float)
    calls: dict[str, float] = defaultdict(float)
    by_id = {t.id: t for t in model.all_tasks()}
    for task, iv, call in waits:
        frame = _program_frame(iv.stack) or _in_parent(by_id, task, iv.start) or user_frame(iv.stack)
        if frame is not None:
            weights[frame] += iv.end - iv.start
        calls[call.function] += iv.end - iv.start
    where, where_ns = by_function(weights)
    call_name = max(calls, key=lambda c: (calls[c], c))
    worst_task, worst, _ = max(waits, key=lambda w: w[1].end - w[1].start)
    child_ns = _wall_time([w for w in waits if _reads_a_subprocess(w[1].stack)])
    child = 2 * child_ns >= total  # mostly a child's output: told as waiting for it
    score = clamp_score(ramp(share, [(0.1, 15), (0.3, 35), (0.6, 55), (0.9, 70)]))
    timeouts = 0 if child else _task_timeouts(tasks.values())
    if timeouts:
        # each one a failed call: how often, over the waiting tasks' lives
        per_s = timeouts / max(life / 1e9, 1e-3)
        score = max(score, clamp_score(ramp(per_s, [(0.1, 35), (0.5, 60), (2, 75)])))
    return [
        Finding(
            rule="io-wait",
            score=score,
            title=(
                f"asyncio tasks waited {fmt_ns(total)} "
                + ("for a subprocess's output" if child else "on I/O")
                + f" ({pct(share)} of their time)"
                + (f", mostly in {where.function}" if where else "")
                + f", awaiting {call_name}"
                + (
                    f"; {timeouts} of their calls ran into a timeout (asyncio.timeout, wait_for, "
                    "aiohttp's ClientTimeout): the other side did not answer in time"
                    if timeouts
                    else ""
                )
                + (
                    f"; besides, connection handlers waited {fmt_ns(idle_ns)} for their clients' "
                    "next requests or messages (idle, not counted)"
                    if idle_ns >= 50 * MS
                    else ""
                )
                + (
                    f"; besides, {fmt_ns(listened_ns)} receiving where the task had sent nothing "
                    "since its last wait (a subscription or a feed: the other side had nothing "
                    "to send, not counted)"
                    if listened_ns >= 50 * MS
                    else ""
                )
            ),
            culprit=Culprit.of(where),
            evidence={
                "waits": len(waits),
                "wait_ns": total,
                "wait_share": round(share, 4),
                "culprit_wait_ns": int(where_ns),
                "awaiting": call_name,
                "tasks": len(tasks),
                "handlers_idle_ns": idle_ns or None,
                "listening_ns": listened_ns or None,
                "worst_ns": worst.end - worst.start,
                "worst_at_s": seconds_since_start(model, worst.start),
                "worst_task": task_label_of(worst_task),
                **({"waiting_for": "a subprocess"} if child else {}),
                "timed_out": timeouts or None,
            },
            moments=moments_of(
                [
                    Moment(
                        seconds_since_start(model, iv.start),
                        iv.end - iv.start,
                        thread_name(model, task.thread),
                        task_label_of(task),
                        f"awaited {call.function}",
                    )
                    for task, iv, call in waits
                ]
            ),
            hint=_SUBPROCESS_HINT
            if child
            else (
                (_TIMEOUT_HINT if timeouts else "")
                + "The tasks spend their time waiting for the network (or another process's "
                "answer) inside the library call named: the partner is slow, or is called too "
                "often. "
                + ("Cache" if timeouts else "Add timeouts, cache")
                + " answers, batch calls, or reuse connections; the loop is free meanwhile, so "
                "this is latency, not lost throughput."
            ),
        )
    ]


def _task_timeouts(tasks: Iterable[TaskTimeline]) -> int:
    """How many timeouts ran out on ``tasks`` (TASK_TIMEOUT; one library's timeout inside
    another's, firing together, counts once), if at least ``MIN_TIMEOUTS``."""
    count = 0
    for task in tasks:
        last = -TIMEOUT_TOGETHER
        for t in task.timeouts:
            if t - last >= TIMEOUT_TOGETHER:
                count += 1
            last = t
    return count if count >= MIN_TIMEOUTS else 0


def rule_io_wait(model: Model) -> list[Finding]:
    return _thread_io_waits(model) + _task_io_waits(model)


def _thread_io_waits(model: Model) -> list[Finding]:
    listening_spans = listening_blocks(model)
    waits: list[tuple[ThreadTimeline, Interval]] = []
    listening: list[tuple[ThreadTimeline, Interval]] = []
    idle_consumers_ns = 0
    for t, iv in blocked_waits(model, BlockReason.IO):
        if not _counted(iv.stack):
            if waits_for_a_job(iv.stack):
                idle_consumers_ns += iv.end - iv.start
            continue
        (listening if within(listening_spans.get(t.tid), iv.start) else waits).append((t, iv))
    total = sum(iv.end - iv.start for _, iv in waits)
    if total < 50 * MS:
        return []
    listened = sum(iv.end - iv.start for _, iv in listening)
    listen_note = (
        f"; besides, {fmt_ns(listened)} receiving where nothing had been sent since the "
        "last receive (a subscription or a feed: the other side had nothing to send, not counted)"
        if listened >= 50 * MS
        else ""
    ) + (
        f"; besides, {fmt_ns(idle_consumers_ns)} in a queue's blocking pop (BLPOP) waiting for "
        "the next job (idle consumers, not counted)"
        if idle_consumers_ns >= 50 * MS
        else ""
    )
    threads = {t.tid: t for t, _ in waits}
    life = sum(lifetime(t) for t in threads.values()) or 1
    share = total / life
    weights: dict[Frame, float] = defaultdict(float)
    for _, iv in waits:
        frame = user_frame(iv.stack)
        if frame is not None:
            weights[frame] += iv.end - iv.start
    where, where_ns = by_function(weights)
    worst_t, worst = max(waits, key=lambda tw: tw[1].end - tw[1].start)
    score = clamp_score(ramp(share, [(0.1, 15), (0.3, 35), (0.6, 55), (0.9, 70)]))
    timeouts = _timeouts(model, threads, listening_spans)
    if timeouts is not None:
        # each one a failed call: what share of the lives of the threads they happened on
        score = max(score, clamp_score(ramp(timeouts.share, [(0.05, 35), (0.15, 60), (0.3, 75), (0.6, 85)])))
        if timeouts.where is not None:
            where = timeouts.where
    # short socket calls on a process whose GIL stayed busy: a thread back from send or
    # recv waits for the GIL before its call returns (the stand-in cannot tell that from
    # the network), so much of this is CPU contention
    busy = gil_busy_share(model, [(iv.start, iv.end) for _, iv in waits])
    median = statistics.median(iv.end - iv.start for _, iv in waits)
    gil_bound = median < SHORT_CALL and busy_gil(busy) is not None
    if gil_bound:
        score = min(score, GIL_BOUND_SCORE)
    # blocking I/O on an event loop's thread blocks every task of that loop
    loop_threads = {loop.tid for loop in model.loops.values()}
    on_loop = sum(iv.end - iv.start for t, iv in waits if t.tid in loop_threads)
    loop_names = sorted(t.name for t in threads.values() if t.tid in loop_threads)
    loop_note = (
        f"; {fmt_ns(on_loop)} of it on the event loop's thread ({', '.join(loop_names)}), "
        "blocking every task of that loop"
        if on_loop >= 50 * MS
        else ""
    )
    return [
        Finding(
            rule="io-wait",
            score=score,
            title=(
                f"Threads waited {fmt_ns(total)} on blocking I/O ({pct(share)} of their time)"
                + (f", mostly in {where.function}" if where else "")
                + (timeouts.clause if timeouts is not None else "")
                + loop_note
                + listen_note
                + (
                    f", while other threads held the GIL ({pct(busy[0])} of that time): much of it "
                    "waiting for the GIL back after short calls, not for the network"
                    if gil_bound and busy is not None
                    else ""
                )
            ),
            culprit=Culprit.of(where),
            evidence={
                "waits": len(waits),
                "wait_ns": total,
                "wait_share": round(share, 4),
                "culprit_wait_ns": int(where_ns),
                "worst_ns": worst.end - worst.start,
                "worst_at_s": seconds_since_start(model, worst.start),
                "worst_thread": worst_t.name,
                "threads": sorted(t.name for t in threads.values()),
                "on_event_loop_ns": on_loop or None,
                "median_wait_ns": int(median),
                "listening_ns": listened or None,
                "idle_consumers_ns": idle_consumers_ns or None,
                "gil_busy_share": round(busy[0], 3) if busy is not None else None,
                "timed_out": timeouts.calls if timeouts is not None else None,
                "timed_out_ns": timeouts.total if timeouts is not None else None,
                "timeout_median_ns": timeouts.median if timeouts is not None else None,
            },
            moments=moments_of(
                [
                    Moment(
                        seconds_since_start(model, iv.start),
                        iv.end - iv.start,
                        t.name or f"thread {t.tid}",
                        "",
                        "blocked on socket I/O",
                    )
                    for t, iv in waits
                ]
            ),
            hint=(
                (GIL_BOUND_HINT if gil_bound else "")
                + (_TIMEOUT_HINT if timeouts is not None else "")
                + "Time goes to waiting for the network or disk. Issue requests concurrently "
                "(a pool, asyncio), reuse connections, "
                + ("" if timeouts is not None else "add timeouts, ")
                + "cache answers, or batch calls."
                + (
                    " On the event loop's thread, use an async client or `asyncio.to_thread(...)`."
                    if loop_note
                    else ""
                )
            ),
        )
    ]


class _Timeouts(NamedTuple):
    calls: int
    total: int  # ns spent in the calls that timed out
    median: int
    share: float  # of the lifetimes of the threads they happened on
    where: Frame | None
    clause: str  # for the title


def _counted(stack: Sequence[Frame]) -> bool:
    """An I/O wait this rule counts: not a server waiting for a connection or its next
    request, nor a consumer for its next job."""
    return not (waits_for_connection(stack) or waits_for_next_request(stack) or waits_for_a_job(stack))


def _timeouts(
    model: Model, threads: dict[int, ThreadTimeline], listening: dict[int, list[tuple[int, int]]]
) -> _Timeouts | None:
    """The counted socket calls of ``threads`` that ran into their timeout (the recorder
    marks their BLOCK_END, metadata ``blocking.io_timeouts``), when they are a story:
    enough of them, or a fair share of the threads' I/O wait. A server's ``accept`` that
    times out to look for a stop flag, or a feed's read, is no failed call."""
    ended = [
        b
        for b in model.blocks
        if b.timed_out
        and b.tid in threads
        and b.start >= 0
        and _counted(b.stack)
        and not within(listening.get(b.tid), b.start)
    ]
    if not ended:
        return None
    total = sum(b.end - b.start for b in ended)
    if len(ended) < MIN_TIMEOUTS:  # a few: a story only if a fair share of the I/O wait
        waited = sum(b.end - b.start for b in model.blocks if b.reason is BlockReason.IO and b.tid in threads)
        if total < TIMEOUTS_SHARE * max(waited, 1):
            return None
    weights: dict[Frame, float] = defaultdict(float)
    for b in ended:
        frame = user_frame(b.stack)
        if frame is not None:
            weights[frame] += b.end - b.start
    where, _ = by_function(weights)
    lives = sum(lifetime(threads[tid]) for tid in {b.tid for b in ended}) or 1
    median = int(statistics.median(b.end - b.start for b in ended))
    clause = (
        f"; {len(ended)} call(s) ran into their timeout (~{fmt_ns(median)} each, {fmt_ns(total)} in all)"
        + (f" in {where.function}" if where is not None else "")
        + ": the other side did not answer in time"
    )
    return _Timeouts(len(ended), total, median, total / lives, where, clause)


RULE = Rule("io-wait", ("io-wait",), rule_io_wait)
