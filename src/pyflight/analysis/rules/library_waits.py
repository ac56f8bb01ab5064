"""Rule ``library-wait``: threads waiting inside a library's own lock or pool, named as
what it is, with the fix that fits it.

A thread waiting in urllib3's ``_get_conn`` is not a "queue with too few consumers", it
is an HTTP connection pool smaller than the number of threads using it; a thread waiting
in ``logging.Handler.acquire`` is not a contended lock of the program's, it is every log
call queueing behind one slow handler. The generic lock/queue rules see the primitive;
this rule sees the library frames around the wait, and reports where the holders were
while they held it (``held_at``: e.g. the handler's slow ``write``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyflight.analysis.frames import by_function, top_frame, user_frame
from pyflight.analysis.model import State
from pyflight.analysis.queries import interval_ns, lifetime, thread_name, user_threads
from pyflight.analysis.rules.base import Rule
from pyflight.analysis.rules.finding import MIN_SCORE, Culprit, Finding
from pyflight.analysis.rules.scoring import clamp_score, ramp
from pyflight.analysis.units import fmt_ns
from pyflight.core.events import BlockReason

if TYPE_CHECKING:
    from pyflight.analysis.model import Model
    from pyflight.format.reader import Frame

__all__ = ["RULE", "RULE_IDS", "rule_library_waits"]

RULE_IDS = ("library-wait",)
MS = 1_000_000

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
        kind="logging handler lock",
        waits=lambda s: _has(s, "Handler.acquire", "logging") or _has(s, "Handler.handle", "logging"),
        holds=lambda s: _inside(s, "emit", "logging"),
        what="queued on a logging handler's lock while it wrote to a slow stream",
        fix=(
            "Every log call waits for the handler's slow write. Log through a "
            "`logging.handlers.QueueHandler` and let a `QueueListener` thread do the "
            "writing, or make the stream faster (a file instead of a pipe/terminal)."
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


def _pattern(stack: Stack) -> LibraryWait | None:
    for pattern in LIBRARY_WAITS:
        if pattern.waits(stack):
            return pattern
    return None


def rule_library_waits(model: Model) -> list[Finding]:
    waited: dict[str, int] = defaultdict(int)
    count: Counter[str] = Counter()
    threads: dict[str, Counter[int]] = defaultdict(Counter)
    where: dict[str, dict[Frame, float]] = defaultdict(lambda: defaultdict(float))
    held: dict[str, Counter[Frame]] = defaultdict(Counter)
    by_kind = {p.kind: p for p in LIBRARY_WAITS}
    for thread in user_threads(model):
        for iv in thread.intervals:
            if iv.state is not State.BLOCKED or not iv.stack:
                continue
            pattern = _pattern(iv.stack) if iv.reason in (BlockReason.LOCK, BlockReason.CONDITION) else None
            if pattern is not None:
                duration = iv.end - iv.start
                waited[pattern.kind] += duration
                count[pattern.kind] += 1
                threads[pattern.kind][thread.tid] += duration
                frame = user_frame(iv.stack)
                if frame is not None:
                    where[pattern.kind][frame] += duration
                continue
            for pattern in LIBRARY_WAITS:
                inner = pattern.holds(iv.stack)
                if inner is not None:
                    held[pattern.kind][inner] += iv.end - iv.start
    interval = interval_ns(model)
    for sample in model.samples:
        if _pattern(sample.stack) is not None:
            continue
        for pattern in LIBRARY_WAITS:
            inner = pattern.holds(sample.stack)
            if inner is not None:
                held[pattern.kind][inner] += interval
    out: list[Finding] = []
    for kind, total in waited.items():
        pattern = by_kind[kind]
        tids = threads[kind]
        lives = sum(lifetime(model.threads[tid]) for tid in tids)
        share = total / max(1, lives)
        score = clamp_score(
            min(
                ramp(share, [(0.05, 20), (0.15, 60), (0.3, 80), (0.6, 92)]),
                ramp(total / MS, [(50, 10), (200, 50), (500, 78), (2000, 90)]),
            )
        )
        if score < MIN_SCORE:
            continue
        culprit, _ = by_function(where[kind])
        holder = top_frame(held[kind])
        names = [thread_name(model, tid) for tid, _ in tids.most_common(4)]
        more = len(tids) - len(names)
        title = (
            f"{len(tids)} thread(s) {pattern.what}: {fmt_ns(total)} of waiting "
            f"({100 * share:.0f}% of their time)"
        )
        if culprit is not None:
            title += f", called from {culprit.function}"
        out.append(
            Finding(
                rule="library-wait",
                score=score,
                title=title,
                culprit=Culprit.of(culprit),
                evidence={
                    "kind": kind,
                    "waits": count[kind],
                    "wait_ns": total,
                    "threads": ", ".join(names) + (f" and {more} more" if more > 0 else ""),
                    "held_at": str(Culprit.of(holder)) if holder is not None else "",
                },
                hint=pattern.fix,
            )
        )
    return out


RULE = Rule("library-wait", RULE_IDS, rule_library_waits)
