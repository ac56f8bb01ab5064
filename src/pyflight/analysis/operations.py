"""Operations: user tasks (routes, ``pyflight.task``) and regions grouped by name, with
their latency distribution and the share of the window they cover.

The terminal report's latency table and the ``slow-operations`` rule both read these
figures, so a route that "takes most of the time" is the same route in both places.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyflight.analysis.model import Model

__all__ = ["Operation", "operations"]


@dataclass
class Operation:
    """One name's instances: ``kind`` is "task" (a route / ``pyflight.task``) or "region"."""

    kind: str
    name: str
    #: (start, end, thread, task id for tasks / enclosing asyncio task for regions)
    instances: list[tuple[int, int, int, int]] = field(default_factory=list)
    #: nanoseconds of the window covered by at least one instance
    covered: int = 0
    window: int = 1

    @property
    def count(self) -> int:
        return len(self.instances)

    @property
    def durations(self) -> list[int]:
        return sorted(end - start for start, end, _, _ in self.instances)

    def quantile(self, q: float) -> int:
        d = self.durations
        return d[min(len(d) - 1, int(q * len(d)))] if d else 0

    @property
    def total(self) -> int:
        return sum(self.durations)

    @property
    def maximum(self) -> int:
        return max(self.durations, default=0)

    @property
    def share(self) -> float:
        """Fraction of the window during which at least one instance was in progress."""
        return self.covered / max(self.window, 1)


def _union(spans: list[tuple[int, int]]) -> int:
    total, reach = 0, None
    for start, end in sorted(spans):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


def operations(model: Model) -> list[Operation]:
    """Every user task name and region name, the one covering most of the window first."""
    window = max(model.end - model.start, 1)
    groups: dict[tuple[str, str], Operation] = {}
    for ut in model.user_tasks.values():
        end = ut.end if ut.end is not None else model.end
        op = groups.setdefault(("task", ut.name), Operation("task", ut.name, window=window))
        op.instances.append((ut.start, end, ut.thread, ut.id))
    for region in model.regions:
        end = region.end if region.end is not None else model.end
        op = groups.setdefault(("region", region.name), Operation("region", region.name, window=window))
        op.instances.append((region.start, end, region.thread, region.task))
    for op in groups.values():
        op.covered = _union([(max(s, model.start), min(e, model.end)) for s, e, _, _ in op.instances])
    return sorted(groups.values(), key=lambda op: (-op.covered, -op.total, op.kind, op.name))
