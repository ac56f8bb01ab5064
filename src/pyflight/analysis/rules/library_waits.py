"""Rule ``library-wait``: threads (and asyncio tasks) waiting inside a library's own lock
or pool, named as what it is, with the fix that fits it.

A thread waiting in urllib3's ``_get_conn`` is not a "queue with too few consumers", it
is an HTTP connection pool smaller than the number of threads using it; a thread waiting
in ``logging.Handler.acquire`` is not a contended lock of the program's, it is every log
call queueing behind one slow handler. The generic lock/queue rules see the primitive;
this rule sees the library frames around the wait, and reports where the holders were
while they held it (``held_at``: e.g. the handler's slow ``write``).

A database's own lock comes from the ``dbapi`` source's queries instead: a statement
that took >= 20 ms, its thread mostly off the CPU, while another thread had a write
transaction open (from the end of a write statement to its COMMIT/ROLLBACK) through at
least half of it, waited for that transaction (SQLite's busy handler, a row lock).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyflight.analysis.frames import by_function, top_frame, user_frame
from pyflight.analysis.model import State
from pyflight.analysis.queries import (
    Queries,
    interval_ns,
    lifetime,
    samples_in,
    seconds_since_start,
    thread_name,
    user_threads,
)
from pyflight.analysis.rules._waits import GIL_BOUND_HINT, GIL_BOUND_SCORE, gil_bound, waits_for_next_job
from pyflight.analysis.rules.base import Rule
from pyflight.analysis.rules.finding import MIN_SCORE, Culprit, Finding, Moment, moments_of
from pyflight.analysis.rules.n_plus_one import Query, db_queries
from pyflight.analysis.rules.scoring import clamp_score, ramp
from pyflight.analysis.units import fmt_ns
from pyflight.core.events import BlockReason, ThreadState
from pyflight.format.reader import Frame

if TYPE_CHECKING:
    from pyflight.analysis.model import Interval, Model, TaskTimeline, ThreadTimeline

__all__ = ["RULE", "RULE_IDS", "rule_library_waits"]

RULE_IDS = ("library-wait",)
MS = 1_000_000
#: The holders blocked while holding for less than this share of the waiting: the slow
#: part a pattern's ``what`` names (a slow stream) is not shown (``unproven_what``).
UNPROVEN_SHARE = 0.2

Stack = Sequence["Frame"]


def _has(stack: Stack, function_suffix: str, file_part: str) -> bool:
    return any(f.function.endswith(function_suffix) and file_part in f.file for f in stack)


def _inside(stack: Stack, function_suffix: str, file_part: str) -> Frame | None:
    """The innermost frame called (directly or not) from the matching library frame."""
    for i, f in enumerate(stack):
        if f.function.endswith(function_suffix) and file_part in f.file:
            return stack[0] if i > 0 else None
    return None


@dataclass(frozen=True)
class LibraryWait:
    kind: str
    #: the waiting stack is inside the library's own wait
    waits: Callable[[Stack], bool]
    #: where a holder is while it holds (a stack of a thread that is not waiting)
    holds: Callable[[Stack], Frame | None]
    what: str
    fix: str
    #: ``what`` when the waits were CPU-bound threads taking turns (``gil_bound``); ""
    #: for waits whose holders are out on I/O whatever the GIL does (a pool's connections)
    gil_bound_what: str = ""
    #: the culprit is where holders held it (the slow endpoint a thread pool runs), not
    #: where waiters waited (a framework's own call into the pool)
    culprit_is_holder: bool = False
    #: ``what`` when the holders were not seen blocked while holding (``what`` claims a
    #: slow stream: without that evidence, say only what is known); "" to always say ``what``
    unproven_what: str = ""


LIBRARY_WAITS = (
    LibraryWait(
        kind="http connection pool",
        waits=lambda s: _has(s, "_get_conn", "urllib3"),
        holds=lambda s: _inside(s, "_make_request", "urllib3"),
        what="waited for a free connection in an exhausted urllib3/requests connection pool",
        fix=(
            "The pool has fewer connections than the threads using it (pool_maxsize with "
            "pool_block=True). Use a bigger pool: "
            "`session.mount('https://', HTTPAdapter(pool_maxsize=N))` with N >= the number "
            "of threads, or one Session per thread; and give requests a timeout."
        ),
    ),
    LibraryWait(
        kind="http connection pool",
        # httpx's pool (httpcore): AsyncPoolRequest.wait_for_connection in asyncio tasks
        # (through anyio's Event), PoolRequest.wait_for_connection in threads
        waits=lambda s: _has(s, "wait_for_connection", "httpcore"),
        holds=lambda s: None,
        what="waited for a free connection in an exhausted httpx connection pool",
        fix=(
            "The client's pool has fewer connections than the requests it is asked to run at "
            "once (httpx.Limits: max_connections, default 100). Raise it to the concurrency "
            "you run (`httpx.AsyncClient(limits=httpx.Limits(max_connections=N))`), or bound "
            "that concurrency yourself (a semaphore) so the wait is visible and capped; and "
            "set a pool timeout."
        ),
    ),
    LibraryWait(
        kind="http connection pool",
        # aiohttp's connector: a task waits on a future of its own in
        # _wait_for_available_connection (3.9+; inline in BaseConnector.connect before),
        # which only the asyncio source's look at waiting tasks sees (an AWAIT wait)
        waits=lambda s: (
            _has(s, "_wait_for_available_connection", "aiohttp")
            or (bool(s) and s[0].function.endswith("BaseConnector.connect") and "aiohttp" in s[0].file)
        ),
        holds=lambda s: None,
        what="waited for a free connection in an exhausted aiohttp connection pool",
        fix=(
            "The session's connector allows fewer connections than the requests it is asked "
            "to run at once (`aiohttp.TCPConnector(limit=100, limit_per_host=0)` by default). "
            "Raise `limit` (or `limit_per_host`) to the concurrency you run, or bound that "
            "concurrency yourself (a semaphore) so the wait is visible and capped; and set a "
            "timeout (`aiohttp.ClientTimeout`)."
        ),
    ),
    LibraryWait(
        kind="thread limiter",
        # anyio.to_thread.run_sync behind FastAPI/Starlette's `def` endpoints and
        # dependencies: at most total_tokens threads at once (40 by default)
        waits=lambda s: _has(s, "acquire_on_behalf_of", "anyio"),
        # a worker thread busy with an endpoint: the endpoint's own line
        holds=lambda s: user_frame(s) if _has(s, "WorkerThread.run", "anyio") else None,
        culprit_is_holder=True,
        what="waited for a worker thread from anyio's thread limiter (a sync endpoint's thread pool)",
        fix=(
            "FastAPI and Starlette run `def` endpoints and dependencies in anyio's worker "
            "threads, at most `total_tokens` at once (40 by default), and every request over "
            "that waits for a thread. Raise the limit at startup "
            "(`anyio.to_thread.current_default_thread_limiter().total_tokens = N`), or make the "
            "slow endpoint `async def` with async I/O so that it needs no thread."
        ),
    ),
    LibraryWait(
        kind="logging handler lock",
        waits=lambda s: _has(s, "Handler.acquire", "logging") or _has(s, "Handler.handle", "logging"),
        holds=lambda s: _inside(s, "emit", "logging"),
        what="queued on a logging handler's lock while it wrote to a slow stream",
        unproven_what="queued on a logging handler's lock",
        gil_bound_what=(
            "queued on a logging handler's lock, its holders waiting for the GIL back "
            "after each write (not a slow stream)"
        ),
        fix=(
            "Every log call waits for the handler's slow write. Log through a "
            "`logging.handlers.QueueHandler` and let a `QueueListener` thread do the "
            "writing, or make the stream faster (a file instead of a pipe/terminal)."
        ),
    ),
    LibraryWait(
        kind="process pool",
        # multiprocessing.Pool's apply/map/.get(): the result of work done in another process
        waits=lambda s: _has(s, "ApplyResult.wait", "multiprocessing"),
        holds=lambda s: None,
        what="waited for results from a multiprocessing.Pool's worker processes",
        fix=(
            "The work runs in the pool's worker processes, so these threads only wait; "
            "when callers outnumber the processes they also queue for a free one. Size the "
            "pool to the CPUs you can give it (`Pool(processes=N)`), hand it less or smaller "
            "work, or submit with `apply_async`/`imap` and do other work meanwhile. "
            "`pyflight run` records the worker processes too: their traces show the work."
        ),
    ),
    LibraryWait(
        kind="database connection pool",
        waits=lambda s: _has(s, "_do_get", "sqlalchemy"),
        holds=lambda s: None,
        what="waited for a connection from an exhausted SQLAlchemy pool",
        fix=(
            "Raise pool_size/max_overflow to the number of concurrent workers, and keep "
            "connections (sessions) checked out for less time."
        ),
    ),
)

#: (name, a part of its files' paths, its knobs) of the retry helpers whose sleeps between
#: attempts are told as such: a caller slept because the call it retries kept failing.
RETRY_LIBRARIES = (
    ("urllib3's Retry", "/urllib3/util/retry.py", "`Retry(total=..., backoff_factor=..., backoff_max=...)`"),
    (
        "tenacity",
        "/tenacity/",
        "`stop=stop_after_attempt(n) | stop_after_delay(s)`, `wait_exponential(max=...)`",
    ),
    ("backoff", "/backoff/", "`max_tries=`, `max_time=`"),
    ("redis-py's Retry", "/redis/retry.py", "`Retry(backoff, retries)`"),
    ("redis-py's Retry", "/redis/asyncio/retry.py", "`Retry(backoff, retries)`"),
    ("google-api-core's retry", "/google/api_core/retry", "`Retry(timeout=..., maximum=...)`"),
    ("botocore's retries", "/botocore/endpoint.py", "`Config(retries={'max_attempts': n})`"),
    ("aiohttp-retry", "/aiohttp_retry/", "`ExponentialRetry(attempts=..., max_timeout=...)`"),
    ("stamina", "/stamina/", "`attempts=`, `timeout=`"),
)


def _backs_off_in(file_part: str) -> Callable[[Stack], bool]:
    """A sleep between attempts: a thread's sleep called by the library (``time.sleep``
    is no Python frame: the library's is the innermost), or a task's ``asyncio.sleep``
    with the library's frames in its await chain."""

    def backs_off(stack: Stack) -> bool:
        if not stack:
            return False
        innermost = stack[0]
        file = innermost.file.replace("\\", "/")
        asyncio_sleep = innermost.function == "sleep" and file.endswith("/asyncio/tasks.py")
        return (asyncio_sleep or file_part in file) and any(
            file_part in f.file.replace("\\", "/") for f in stack
        )

    return backs_off


#: Each retry helper's pattern, with the helper's name.
RETRY_WAITS = {
    LibraryWait(
        kind="retry backoff",
        waits=_backs_off_in(part),
        holds=lambda s: None,
        what=f"slept between retries of a failing call ({name} backing off)",
        fix=(
            "The call kept failing (or timing out) and the client waited longer after each "
            "attempt: this latency is the partner's failures. Find why it fails (its errors "
            "and status codes, its own trace), and bound what a caller may spend retrying "
            f"({name}: {knobs}); a circuit breaker fails fast while the partner is down "
            "instead of making every request sit out the backoff."
        ),
    ): name
    for name, part, knobs in RETRY_LIBRARIES
}


#: Waits in ``Future.result`` for futures a ProcessPoolExecutor fulfils: the stack alone
#: cannot tell them from a thread pool's, their waker can (``_process_pool_futures``).
PROCESS_POOL_FUTURE = LibraryWait(
    kind="process pool",
    waits=lambda s: False,
    holds=lambda s: None,
    what="waited for results from a ProcessPoolExecutor's worker processes",
    fix=(
        "The work runs in the executor's worker processes, so these threads only wait; when "
        "callers outnumber the processes they also queue for a free one. Size the executor "
        "to the CPUs you can give it (`ProcessPoolExecutor(max_workers=N)`), hand it less or "
        "smaller work, or collect results with `as_completed` while doing other work. "
        "`pyflight run` records the worker processes too: their traces show the work."
    ),
)
_PROCESS_POOL_FILE = "concurrent/futures/process.py"


def _process_pool_futures(model: Model) -> set[int]:
    """The conditions of futures whose waits a ProcessPoolExecutor's manager thread (a
    thread seen blocked in concurrent/futures/process.py) ended."""
    memo = Queries.of(model).memo
    cached: set[int] | None = memo.get("process_pool_futures")
    if cached is not None:
        return cached
    seen: dict[int, bool] = {}  # id(stack) -> in process.py: stacks are shared
    managers = set()
    for b in model.blocks:
        key = id(b.stack)
        if key not in seen:
            seen[key] = any(f.file.endswith(_PROCESS_POOL_FILE) for f in b.stack)
        if seen[key]:
            managers.add(b.tid)
    if not managers:
        memo["process_pool_futures"] = set()
        return set()
    futures = {
        b.obj
        for b in model.blocks
        if b.reason is BlockReason.CONDITION
        and b.waker in managers
        and b.stack
        and b.stack[0].function == "Future.result"
    }
    memo["process_pool_futures"] = futures
    return futures


def _pattern(stack: Stack) -> LibraryWait | None:
    for pattern in LIBRARY_WAITS:
        if pattern.waits(stack):
            return pattern
    return None


def _sleep_pattern(stack: Stack) -> LibraryWait | None:
    for pattern in RETRY_WAITS:
        if pattern.waits(stack):
            return pattern
    return None


def retry_backoff(stack: Stack) -> str | None:
    """What a sleep with ``stack`` was, in the user's words, when it is a retry helper's
    pause between attempts (``RETRY_WAITS``); None for any other sleep."""
    pattern = _sleep_pattern(stack)
    if pattern is None:
        return None
    return f"waiting to retry a failing call ({RETRY_WAITS[pattern]} backing off)"


def library_wait_pattern(stack: Stack) -> LibraryWait | None:
    """The library's own wait ``stack`` is in (a pool's, a lock's), if any."""
    return _pattern(stack)


def _patterns(model: Model) -> dict[int, LibraryWait | None]:
    """id(stack) -> its pattern (``_pattern``), filled as stacks are met: the model's
    intervals and blocks share stack tuples, so each is matched once per model."""
    memo = Queries.of(model).memo
    patterns: dict[int, LibraryWait | None] | None = memo.get("library_wait_patterns")
    if patterns is None:
        patterns = memo["library_wait_patterns"] = {}
    return patterns


def library_wait_objects(model: Model) -> set[int]:
    """The ``obj`` of every lock or condition a thread waited on inside a library's own
    pool or lock (a pattern of ``LIBRARY_WAITS``): this rule tells those waits, and the
    rules about the program's own items leave them alone."""
    memo = Queries.of(model).memo
    found: set[int] | None = memo.get("library_wait_objects")
    if found is None:
        patterns = _patterns(model)
        found = set()
        for b in model.blocks:
            if b.obj and b.stack and b.reason in (BlockReason.LOCK, BlockReason.CONDITION):
                key = id(b.stack)
                if key not in patterns:
                    patterns[key] = _pattern(b.stack)
                if patterns[key] is not None:
                    found.add(b.obj)
        found |= _process_pool_futures(model)
        memo["library_wait_objects"] = found
    return found


def rule_library_waits(model: Model) -> list[Finding]:
    return _primitive_waits(model) + database_lock_waits(model)


def _primitive_waits(model: Model) -> list[Finding]:
    # per pattern (two may share a kind: urllib3's and httpx's http connection pools)
    waited: dict[LibraryWait, int] = defaultdict(int)
    count: Counter[LibraryWait] = Counter()
    threads: dict[LibraryWait, Counter[int]] = defaultdict(Counter)
    #: asyncio tasks waiting in a library's pool (an asyncio Event/Lock/Queue inside it)
    tasks: dict[LibraryWait, Counter[int]] = defaultdict(Counter)
    task_of: dict[int, TaskTimeline] = {}
    where: dict[LibraryWait, dict[Frame, float]] = defaultdict(lambda: defaultdict(float))
    held: dict[LibraryWait, Counter[Frame]] = defaultdict(Counter)
    #: time the holders were blocked (I/O, sleep, ...) while holding
    held_blocked: dict[LibraryWait, int] = defaultdict(int)
    spans: dict[LibraryWait, list[tuple[ThreadTimeline, Interval]]] = defaultdict(list)
    task_spans: dict[LibraryWait, list[tuple[TaskTimeline, Interval]]] = defaultdict(list)

    process_futures = _process_pool_futures(model)
    patterns = _patterns(model)

    def library_wait(iv: Interval) -> LibraryWait | None:
        """The pattern of a blocked interval waiting in a library, counted; else None."""
        if iv.state is not State.BLOCKED or not iv.stack:
            return None
        pattern = None
        if iv.reason in (BlockReason.LOCK, BlockReason.CONDITION, BlockReason.AWAIT):
            key = id(iv.stack)
            if key not in patterns:
                patterns[key] = _pattern(iv.stack)
            pattern = patterns[key]
        if pattern is None and iv.reason in (BlockReason.SLEEP, BlockReason.AWAIT):
            key = -id(iv.stack)  # the sleeps' patterns, apart from the locks' and pools'
            if key not in patterns:
                patterns[key] = _sleep_pattern(iv.stack)
            pattern = patterns[key]
        if pattern is None and iv.reason is BlockReason.CONDITION and iv.obj in process_futures:
            pattern = PROCESS_POOL_FUTURE
        if pattern is not None:
            waited[pattern] += iv.end - iv.start
            count[pattern] += 1
            frame = user_frame(iv.stack)
            if frame is not None:
                where[pattern][frame] += iv.end - iv.start
        return pattern

    for task in model.all_tasks():
        for iv in task.intervals:
            pattern = library_wait(iv)
            if pattern is not None:
                tasks[pattern][id(task)] += iv.end - iv.start  # task ids (addresses) are reused
                task_of[id(task)] = task
                task_spans[pattern].append((task, iv))
    for thread in user_threads(model):
        for iv in thread.intervals:
            if iv.state is not State.BLOCKED or not iv.stack:
                continue
            pattern = library_wait(iv)
            if pattern is not None:
                threads[pattern][thread.tid] += iv.end - iv.start
                spans[pattern].append((thread, iv))
                continue
            if waits_for_next_job(iv.stack):
                continue  # a pool's worker idle between jobs holds nothing
            for pattern in LIBRARY_WAITS:
                inner = pattern.holds(iv.stack)
                if inner is not None:
                    held[pattern][inner] += iv.end - iv.start
                    held_blocked[pattern] += iv.end - iv.start
    interval = interval_ns(model)
    for sample in model.samples:
        if _pattern(sample.stack) is not None or waits_for_next_job(sample.stack):
            continue
        for pattern in LIBRARY_WAITS:
            inner = pattern.holds(sample.stack)
            if inner is not None:
                held[pattern][inner] += interval
    out: list[Finding] = []
    for pattern, total in waited.items():
        tids, task_ids = threads[pattern], tasks[pattern]
        lives = sum(lifetime(model.threads[tid]) for tid in tids) + sum(
            max(0, task_of[t].end - task_of[t].created) for t in task_ids
        )
        share = total / max(1, lives)
        score = clamp_score(
            min(
                ramp(share, [(0.05, 20), (0.15, 60), (0.3, 80), (0.6, 92)]),
                ramp(total / MS, [(50, 10), (200, 50), (500, 78), (2000, 90)]),
            )
        )
        if score < MIN_SCORE:
            continue
        culprit, _ = by_function(where[pattern])
        holder = top_frame(held[pattern])
        if pattern.culprit_is_holder and holder is not None:
            culprit = holder
        names = [thread_name(model, tid) for tid, _ in tids.most_common(4)]
        names += [_task_label(task_of[t]) for t, _ in task_ids.most_common(4 - len(names))]
        more = len(tids) + len(task_ids) - len(names)
        # a lock's holders held up by the GIL, not by the library: said as that
        busy = gil_bound(model, spans[pattern]) if pattern.gil_bound_what and spans[pattern] else None
        what = pattern.gil_bound_what if busy is not None else pattern.what
        if busy is None and pattern.unproven_what and held_blocked[pattern] < UNPROVEN_SHARE * total:
            what = pattern.unproven_what
        waiters = " and ".join(
            f"{n} {noun}" for n, noun in ((len(tids), "thread(s)"), (len(task_ids), "asyncio task(s)")) if n
        )
        title = f"{waiters} {what}: {fmt_ns(total)} of waiting ({100 * share:.0f}% of their time)"
        if busy is not None:
            score = min(score, GIL_BOUND_SCORE)
            title += f", while other threads ran (the GIL busy {100 * busy:.0f}% of that time)"
        if culprit is not None and pattern.culprit_is_holder:
            title += f"; the threads were busy in {culprit.function}"
        elif culprit is not None:
            title += f", called from {culprit.function}"
        out.append(
            Finding(
                rule="library-wait",
                score=score,
                title=title,
                culprit=Culprit.of(culprit),
                evidence={
                    "kind": pattern.kind,
                    "waits": count[pattern],
                    "wait_ns": total,
                    "threads": ", ".join(names) + (f" and {more} more" if more > 0 else ""),
                    "asyncio_tasks": len(task_ids),
                    "held_at": str(Culprit.of(holder)) if holder is not None else "",
                    "gil_busy_share": round(busy, 3) if busy is not None else None,
                },
                moments=moments_of(
                    [
                        Moment(
                            seconds_since_start(model, iv.start),
                            iv.end - iv.start,
                            thread_name(model, thread.tid),
                            "",
                            f"waited in the {pattern.kind}",
                        )
                        for thread, iv in spans[pattern]
                    ]
                    + [
                        Moment(
                            seconds_since_start(model, iv.start),
                            iv.end - iv.start,
                            thread_name(model, task.thread),
                            _task_label(task),
                            f"waited in the {pattern.kind}",
                        )
                        for task, iv in task_spans[pattern]
                    ]
                ),
                hint=(GIL_BOUND_HINT if busy is not None else "") + pattern.fix,
            )
        )
    return out


def _task_label(task: TaskTimeline) -> str:
    return task.name or task.coro or f"task {task.id:#x}"


# ---------------------------------------------------------------------------------------
# a database's own lock (SQLite's one writer at a time), from the dbapi source's queries

#: A query this long, spent mostly off the CPU while another thread held a write
#: transaction open, waited for the database's lock.
DB_WAIT_MIN = 20 * MS
_WRITE = re.compile(
    r"^\s*(INSERT|UPDATE|DELETE|REPLACE|CREATE|DROP|ALTER|BEGIN\s+(IMMEDIATE|EXCLUSIVE))\b", re.I
)
_END_TX = re.compile(r"^\s*(COMMIT|ROLLBACK|END)\b", re.I)
DB_LOCK_FIX = (
    "Another connection kept a write transaction open (SQLite has one writer at a time; "
    "other databases lock the rows it wrote), so these statements waited for it: commit "
    "before slow work (network calls, sleeps, big computations) and keep write "
    "transactions short; with SQLite, `PRAGMA journal_mode=WAL` lets readers run beside "
    "the writer, and a `timeout` shorter than the transaction turns these waits into "
    "'database is locked' errors."
)


def _write_transactions(queries: list[Query]) -> dict[int, list[tuple[int, int, Query]]]:
    """Per thread: spans from the end of a write statement (the lock is its from then on:
    while it runs it may itself be waiting) to the end of the COMMIT/ROLLBACK that ended
    it (or of the queries), with the write that opened the span."""
    spans: dict[int, list[tuple[int, int, Query]]] = defaultdict(list)
    open_at: dict[int, Query] = {}
    for q in queries:
        first = open_at.get(q.thread)
        if first is None and _WRITE.match(q.statement):
            open_at[q.thread] = q
        elif first is not None and _END_TX.match(q.statement):
            spans[q.thread].append((first.end, q.end, first))
            del open_at[q.thread]
    end = max((q.end for q in queries), default=0)
    for tid, first in open_at.items():
        spans[tid].append((first.end, end, first))
    return spans


def _off_cpu(model: Model, q: Query) -> bool:
    """The thread was mostly off the CPU during the query (its CPU clock, from samples
    inside it; unmeasured samples: their OS state); True when nothing tells."""
    cpu = span = 0
    asleep = seen = 0
    for sample in samples_in(model, q.thread, q.start, q.end):
        seen += 1
        asleep += sample.os_state != ThreadState.RUNNING
        if sample.span:
            cpu += sample.cpu
            span += sample.span
    if span:
        return cpu < 0.3 * span
    return seen == 0 or asleep * 2 >= seen


def database_lock_waits(model: Model) -> list[Finding]:
    """Statements that waited for another connection's write transaction."""
    queries = db_queries(model)
    if not queries:
        return []
    transactions = _write_transactions(queries)
    waited = 0
    waits = 0
    threads: Counter[int] = Counter()
    where: dict[Frame, float] = defaultdict(float)
    holders: Counter[int] = Counter()
    opened_by: Counter[str] = Counter()
    held_at: Counter[Frame] = Counter()
    moments: list[Moment] = []
    interval = interval_ns(model)
    for q in queries:
        duration = q.end - q.start
        if duration < DB_WAIT_MIN:
            continue
        overlaps = [
            (tid, start, end, first)
            for tid, spans in transactions.items()
            if tid != q.thread
            for start, end, first in spans
            if end > q.start and start < q.end
        ]
        # one writer at a time: the other threads' transactions rarely overlap each other
        covered = sum(min(end, q.end) - max(start, q.start) for _, start, end, _ in overlaps)
        if covered < duration // 2 or not _off_cpu(model, q):
            continue
        waited += duration
        waits += 1
        threads[q.thread] += duration
        ut = model.user_tasks.get(q.task) if q.task else None
        moments.append(
            Moment(
                seconds_since_start(model, q.start),
                duration,
                thread_name(model, q.thread),
                ut.name if ut is not None else "",
                q.statement[:120],
            )
        )
        if q.site is not None:
            where[Frame(q.site.function, q.site.file, q.site.line)] += duration
        for tid, start, end, first in overlaps:
            lo, hi = max(start, q.start), min(end, q.end)
            holders[tid] += hi - lo
            opened_by[first.statement] += hi - lo
            for sample in samples_in(model, tid, lo, hi):
                frame = user_frame(sample.stack)
                if frame is not None:
                    held_at[frame] += interval
            thread = model.threads.get(tid)
            for iv in thread.intervals if thread is not None else ():
                if iv.state is State.BLOCKED and iv.end > lo and iv.start < hi and iv.stack:
                    frame = user_frame(iv.stack)
                    if frame is not None:
                        held_at[frame] += min(iv.end, hi) - max(iv.start, lo)
    if not waits:
        return []
    lives = sum(lifetime(model.threads[tid]) for tid in threads if tid in model.threads)
    share = waited / max(1, lives)
    score = clamp_score(
        min(
            ramp(share, [(0.05, 20), (0.15, 60), (0.3, 80), (0.6, 92)]),
            ramp(waited / MS, [(50, 10), (200, 50), (500, 78), (2000, 90)]),
        )
    )
    if score < MIN_SCORE:
        return []
    culprit, _ = by_function(where)
    holder_frame = top_frame(held_at)
    names = [thread_name(model, tid) for tid, _ in threads.most_common(4)]
    more = len(threads) - len(names)
    holder_names = [thread_name(model, tid) for tid, _ in holders.most_common(3)]
    title = (
        f"{len(threads)} thread(s) waited for the database's write lock while "
        f"{', '.join(holder_names)} kept a write transaction open: {fmt_ns(waited)} of waiting "
        f"({100 * share:.0f}% of their time)"
    )
    if culprit is not None:
        title += f", in {culprit.function}"
    if holder_frame is not None:
        title += f"; the holder was in {holder_frame.function}"
    return [
        Finding(
            rule="library-wait",
            score=score,
            title=title,
            culprit=Culprit.of(culprit),
            evidence={
                "kind": "database lock",
                "waits": waits,
                "wait_ns": waited,
                "threads": ", ".join(names) + (f" and {more} more" if more > 0 else ""),
                "holders": ", ".join(holder_names),
                "transaction_opened_by": opened_by.most_common(1)[0][0],
                "held_at": str(Culprit.of(holder_frame)) if holder_frame is not None else "",
            },
            hint=DB_LOCK_FIX,
            moments=moments_of(moments),
        )
    ]


RULE = Rule("library-wait", RULE_IDS, rule_library_waits)
