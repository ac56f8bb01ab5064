"""Rule ``n-plus-one``: a request (or task, or thread) that runs the same query many times
from one line of the program, usually once per row of an earlier query (Django's
``book.author`` in a loop).

The queries come from the ``dbapi`` source: a ``db`` region per query with a ``db`` log
inside it that carries the normalised statement and the user's line that issued it
(``sources/dbapi.py``). A unit is a ``pyflight.task`` instance (a request under the
WSGI/ASGI middleware), else the thread. Per unit, the statement most repeated from one
line is the suspect; units of the same name (a route) are grouped into one finding.

An N+1 is a tight loop: the repeated queries must follow each other closely (median
pause under 5 ms), so a worker thread saving one order per iteration is not one.
The share of time reported is the span from the first to the last of those repeated
queries (the loop that issued them, ORM work between queries included) over the unit's
duration; the queries' own time is in the evidence.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyflight.analysis.queries import seconds_since_start, thread_name
from pyflight.analysis.rules.base import Rule
from pyflight.analysis.rules.finding import MIN_SCORE, Culprit, Finding, Moment, moments_of
from pyflight.analysis.rules.scoring import ramp
from pyflight.analysis.units import fmt_ns

if TYPE_CHECKING:
    from pyflight.analysis.model import Model

__all__ = ["RULE", "RULE_IDS", "Query", "db_queries", "rule_n_plus_one"]

RULE_IDS = ("n-plus-one",)
DB = "db"
MS = 1_000_000
#: Fewer repeats of one statement from one line than this in a unit is not an N+1.
MIN_REPEATS = 10
#: An N+1 is a tight loop: the median pause between the repeated queries is below this
#: (a worker saving one order every few ms between sleeps or waits is not one).
MAX_MEDIAN_GAP = 5 * MS


@dataclass(frozen=True)
class Query:
    """One recorded query: its span, thread, user task (0: none), statement and the user's line."""

    start: int
    end: int
    thread: int
    task: int
    statement: str
    site: Culprit | None


def _parse(message: str) -> tuple[str, Culprit | None]:
    """``"SQL\\n@ FILE:LINE in FUNCTION"`` (sources/dbapi.py) -> statement, culprit."""
    statement, sep, where = message.rpartition("\n@ ")
    if not sep:
        return message, None
    location, _, function = where.partition(" in ")
    file, _, line = location.rpartition(":")
    return statement, Culprit(function, file, int(line)) if line.isdigit() else None


def db_queries(model: Model) -> list[Query]:
    """Every query of the trace, by start time: ``db`` regions joined with the ``db`` log
    recorded inside each (same thread)."""
    logs: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for log in model.logs:
        if log.category == DB:
            logs[log.thread].append((log.time, log.message))
    for items in logs.values():
        items.sort()
    out: list[Query] = []
    for region in model.regions:
        if region.name != DB:
            continue
        end = region.end if region.end is not None else model.end
        items = logs.get(region.thread, [])
        i = bisect.bisect_left(items, (region.start, ""))
        if i >= len(items) or items[i][0] > end:
            continue
        statement, site = _parse(items[i][1])
        out.append(Query(region.start, end, region.thread, region.task, statement, site))
    out.sort(key=lambda q: q.start)
    return out


@dataclass
class _Unit:
    """The queries of one request/task instance (or one thread's, outside tasks)."""

    label: str
    start: int
    end: int
    task_name: str = ""
    queries: list[Query] = field(default_factory=list)


@dataclass
class _Group:
    """Units of one name with the same repeated statement from the same line."""

    label: str
    statement: str
    site: Culprit | None
    units: int = 0
    repeats: list[int] = field(default_factory=list)
    totals: list[int] = field(default_factory=list)
    moments: list[Moment] = field(default_factory=list)
    loop_ns: int = 0
    query_ns: int = 0
    db_ns: int = 0
    unit_ns: int = 0


def _units(model: Model, queries: list[Query]) -> list[_Unit]:
    units: dict[tuple[str, int], _Unit] = {}
    for q in queries:
        ut = model.user_tasks.get(q.task) if q.task else None
        if ut is not None:
            key = ("task", ut.id)
            unit = units.get(key)
            if unit is None:
                end = ut.end if ut.end is not None else model.end
                unit = units[key] = _Unit(f"Route/task {ut.name!r}", ut.start, end, ut.name)
        else:
            key = ("thread", q.thread)
            unit = units.get(key)
            if unit is None:
                thread = model.threads.get(q.thread)
                start, end = (thread.start, thread.end) if thread is not None else (model.start, model.end)
                unit = units[key] = _Unit(f"Thread {thread_name(model, q.thread)!r}", start, end)
        unit.queries.append(q)
    return list(units.values())


def score_n_plus_one(repeats: float, loop_share: float, loop_ns: int) -> int:
    """Warning (>= 75) from ~100 repeats per unit in a loop taking >= ~45% of the unit's
    time and >= ~100 ms in all; each ramp must agree (the lowest is the score)."""
    by_repeats = ramp(repeats, [(MIN_REPEATS, 10), (30, 45), (100, 78), (1000, 92)])
    by_share = ramp(loop_share, [(0.05, 0), (0.2, 40), (0.45, 78), (0.8, 92)])
    by_time = ramp(loop_ns / MS, [(2, 0), (20, 40), (100, 78), (500, 92)])
    return max(0, min(100, round(min(by_repeats, by_share, by_time))))


def _median(values: list[int]) -> int:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else 0


_COLUMNS = re.compile(r"^(SELECT\s+(?:DISTINCT\s+)?)(.{24,}?)(\s+FROM\s)", re.IGNORECASE)


def _short(statement: str, limit: int = 120) -> str:
    """The statement for a title: a long column list becomes ``...`` (the WHERE is what tells)."""
    statement = _COLUMNS.sub(r"\1...\3", statement, count=1)
    return statement if len(statement) <= limit else statement[: limit - 3] + "..."


def rule_n_plus_one(model: Model) -> list[Finding]:
    queries = db_queries(model)
    if not queries:
        return []
    groups: dict[tuple[str, str, Culprit | None], _Group] = {}
    for unit in _units(model, queries):
        counts = Counter((q.statement, q.site) for q in unit.queries)
        (statement, site), repeats = counts.most_common(1)[0]
        if repeats < MIN_REPEATS:
            continue
        same = [q for q in unit.queries if q.statement == statement and q.site == site]
        if _median([b.start - a.end for a, b in itertools.pairwise(same)]) > MAX_MEDIAN_GAP:
            continue
        group = groups.setdefault((unit.label, statement, site), _Group(unit.label, statement, site))
        group.units += 1
        group.moments.append(
            Moment(
                seconds_since_start(model, same[0].start),
                max(q.end for q in same) - same[0].start,
                thread_name(model, same[0].thread),
                unit.task_name,
                f"{repeats:,} of {len(unit.queries):,} queries",
            )
        )
        group.repeats.append(repeats)
        group.totals.append(len(unit.queries))
        group.loop_ns += max(q.end for q in same) - same[0].start
        group.query_ns += sum(q.end - q.start for q in same)
        group.db_ns += sum(q.end - q.start for q in unit.queries)
        group.unit_ns += max(unit.end - unit.start, 1)
    out = []
    for group in groups.values():
        repeats, total = _median(group.repeats), _median(group.totals)
        loop_share = group.loop_ns / max(group.unit_ns, 1)
        score = score_n_plus_one(repeats, loop_share, group.loop_ns)
        if score < MIN_SCORE:
            continue
        per = " per call" if group.units > 1 else ""
        title = (
            f"{group.label} ran {total:,} queries{per} ({repeats:,} of the same statement "
            f"`{_short(group.statement)}`"
        )
        if group.site is not None:
            title += f" from {group.site.function}"
        title += f"): the loop issuing them took {100 * loop_share:.0f}% of its time"
        if group.units > 1:
            title += f" over {group.units} calls"
        out.append(
            Finding(
                rule="n-plus-one",
                score=score,
                title=title,
                culprit=group.site,
                evidence={
                    "unit": group.label,
                    "calls": group.units,
                    "queries_per_call": total,
                    "repeats_per_call": repeats,
                    "statement": group.statement,
                    "loop_share": f"{100 * loop_share:.0f}%",
                    "loop_time": fmt_ns(group.loop_ns),
                    "repeated_query_time": fmt_ns(group.query_ns),
                    "all_query_time": fmt_ns(group.db_ns),
                    "unit_time": fmt_ns(group.unit_ns),
                },
                moments=moments_of(group.moments),
                hint=(
                    "One query per row (an N+1): fetch the related rows with the first query "
                    "instead (Django: select_related for a foreign key, prefetch_related for "
                    "many-to-many and reverse relations; SQLAlchemy: joinedload/selectinload), "
                    "or batch the lookups into one `WHERE id IN (...)` query."
                ),
            )
        )
    return out


RULE = Rule("n-plus-one", RULE_IDS, rule_n_plus_one)
