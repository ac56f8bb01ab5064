"""What a rule reports: a ``Finding`` (score, title, culprit, evidence, hint) and its ``Culprit``."""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pyflight.analysis.frames import short_file
from pyflight.format.reader import Frame

if TYPE_CHECKING:
    from pyflight.analysis.model import Interval

T = TypeVar("T")

WARNING = 75
INFO = 25
#: Findings scoring below this are dropped altogether.
MIN_SCORE = 5


@dataclass(frozen=True)
class Culprit:
    function: str
    file: str
    line: int

    @classmethod
    def of(cls, frame: Frame | None) -> Culprit | None:
        return None if frame is None else cls(frame.function, frame.file, frame.line)

    def __str__(self) -> str:
        return f"{self.function} ({short_file(self.file)}:{self.line})"

    def to_dict(self) -> dict[str, Any]:
        return {"function": self.function, "file": self.file, "line": self.line}


@dataclass(frozen=True)
class Moment:
    """One stretch of the trace a finding was derived from (raw evidence to check it by):
    ``at_s`` seconds since the trace start, its duration, the thread and the task (a
    route, ``pyflight.task`` or asyncio task name; "" if none) and what happened."""

    at_s: float
    duration_ns: int
    thread: str
    task: str = ""
    what: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "at_s": self.at_s,
            "duration_ns": self.duration_ns,
            "thread": self.thread,
            "task": self.task,
            "what": self.what,
        }


#: A finding lists at most this many moments (the heaviest).
MAX_MOMENTS = 20


def longest_waits(waits: Iterable[tuple[T, Interval]]) -> list[tuple[T, Interval]]:
    """The ``MAX_MOMENTS`` longest of (owner, interval) pairs: the only ones worth making a
    ``Moment`` of when a queue saw 100,000 waits."""
    return heapq.nlargest(MAX_MOMENTS, waits, key=lambda w: w[1].end - w[1].start)


def moments_of(items: list[Moment]) -> list[Moment]:
    """The longest ``MAX_MOMENTS`` of ``items``, in time order."""
    kept = sorted(items, key=lambda m: -m.duration_ns)[:MAX_MOMENTS]
    return sorted(kept, key=lambda m: m.at_s)


@dataclass
class Finding:
    rule: str
    score: int
    title: str
    culprit: Culprit | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    hint: str = ""
    #: the stretches of the trace it was derived from (see ``Moment``), in time order
    moments: list[Moment] = field(default_factory=list)

    @property
    def severity(self) -> str:
        return severity(self.score)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "score": self.score,
            "severity": self.severity,
            "title": self.title,
            "culprit": None if self.culprit is None else self.culprit.to_dict(),
            "evidence": self.evidence,
            "hint": self.hint,
            "moments": [m.to_dict() for m in self.moments],
        }


def severity(score: int) -> str:
    return "warning" if score >= WARNING else "info" if score >= INFO else "ok"


def stretches(pieces: list[tuple[int, int, int, int]], gap_ns: int) -> list[tuple[int, int, int, int]]:
    """``(thread, start, end, weight)`` pieces (sampled stretches of one thread) merged per
    thread where one starts within ``gap_ns`` of the previous one's end, weights summed:
    the runs of samples a moment stands for, not one moment per sample."""
    out: list[tuple[int, int, int, int]] = []
    last: dict[int, int] = {}  # thread -> index of its open stretch in out
    for tid, start, end, weight in sorted(pieces, key=lambda p: (p[1], p[0])):
        i = last.get(tid)
        if i is not None and start - out[i][2] <= gap_ns:
            _, a, b, w = out[i]
            out[i] = (tid, a, max(b, end), w + weight)
        else:
            last[tid] = len(out)
            out.append((tid, start, end, weight))
    return out
