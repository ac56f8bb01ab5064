"""Breakdown tables, like ``go tool trace``'s goroutine analysis: where the time of each
thread, and of each kind of asyncio task, went. The columns of a row add up to its total.

A block inside a library call that names what it waits for (``frames.library_wait``: a
subprocess's ``communicate`` blocks in ``select``) is counted under that name, not
under its reason: "select" would send the reader looking for sockets."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from pyflight.analysis.frames import library_wait
from pyflight.analysis.model import Interval, Model, State
from pyflight.core.events import BlockReason

__all__ = ["BreakdownRow", "task_breakdown", "thread_breakdown"]


@dataclasses.dataclass
class BreakdownRow:
    name: str
    count: int = 0
    total: int = 0
    running: int = 0
    ready: int = 0
    blocked: dict[BlockReason, int] = dataclasses.field(default_factory=dict)
    #: Blocks in a library call that names what they waited for, by that name
    #: ("subprocess"), instead of in ``blocked``.
    waiting_for: dict[str, int] = dataclasses.field(default_factory=dict)
    gc: int = 0
    idle: int = 0
    unknown: int = 0

    @property
    def blocked_total(self) -> int:
        return sum(self.blocked.values()) + sum(self.waiting_for.values())

    def add(self, intervals: Iterable[Interval]) -> None:
        """Add the time of each interval to its column (and to the total)."""
        for i in intervals:
            d = i.end - i.start
            self.total += d
            state = i.state
            if state is State.RUNNING:
                self.running += d
            elif state is State.BLOCKED:
                waited = library_wait(i.stack) if i.stack else None
                if waited is not None:
                    self.waiting_for[waited.thing] = self.waiting_for.get(waited.thing, 0) + d
                    continue
                reason = i.reason if i.reason is not None else BlockReason.OTHER
                self.blocked[reason] = self.blocked.get(reason, 0) + d
            elif state is State.READY:
                self.ready += d
            elif state is State.GC:
                self.gc += d
            elif state is State.IDLE:
                self.idle += d
            else:
                self.unknown += d


def _sorted(rows: Iterable[BreakdownRow]) -> list[BreakdownRow]:
    return sorted(rows, key=lambda r: (-r.total, r.name))


def thread_breakdown(model: Model, include_pyflight: bool = False) -> list[BreakdownRow]:
    """One row per thread (``"name (tid)"``); the recorder's own threads only on request."""
    rows = []
    for tl in model.threads.values():
        if tl.is_pyflight and not include_pyflight:
            continue
        row = BreakdownRow(f"{tl.name or 'thread'} ({tl.tid})", count=1)
        row.add(tl.intervals)
        rows.append(row)
    return _sorted(rows)


def task_breakdown(model: Model) -> list[BreakdownRow]:
    """asyncio tasks grouped by coroutine qualname (Go groups goroutines by start function)."""
    rows: dict[str, BreakdownRow] = {}
    for tl in model.all_tasks():
        name = tl.coro or tl.name or "?"
        row = rows.get(name)
        if row is None:
            row = rows[name] = BreakdownRow(name)
        row.count += 1
        row.add(tl.intervals)
    return _sorted(rows.values())
