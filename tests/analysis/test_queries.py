"""Queries are cached per model: two models never answer with each other's data."""

from __future__ import annotations

from pyflight.analysis.model import build
from pyflight.analysis.queries import Queries, samples_in
from pyflight.analysis.rules import find
from pyflight.core.events import Kind
from pyflight.format.reader import loads
from tracegen import Gen, trace

MS = 1_000_000


def _sampled(function: str, count: int) -> bytes:
    """Thread 7 sampled ``count`` times, 10 ms apart, in ``function``."""
    gen = Gen(seq=1, start_ns=0, end_ns=(count + 1) * 10 * MS)
    gen.event(7, Kind.THREAD_INFO, 1, tid=7, name="main", ident=1)
    for i in range(1, count + 1):
        gen.event(9, Kind.SAMPLE, i * 10 * MS, tid=7, task=0, stack=[(function, "/app/a.py", 3)], state=1)
    return trace([gen])


def test_two_models_keep_their_own_queries() -> None:
    first, second = build(loads(_sampled("first", 3))), build(loads(_sampled("second", 5)))
    assert [s.stack[0].function for s in samples_in(first, 7, 0, first.end)] == ["first"] * 3
    assert [s.stack[0].function for s in samples_in(second, 7, 0, second.end)] == ["second"] * 5
    assert Queries.of(first) is Queries.of(first) and Queries.of(first) is not Queries.of(second)
    assert len(samples_in(first, 7, 15 * MS, 30 * MS)) == 2  # the window bounds are kept


def test_find_forgets_what_it_cached() -> None:
    model = build(loads(_sampled("first", 3)))
    cached = Queries.of(model)
    find(model)
    assert Queries.of(model) is not cached  # freed with the rules, rebuilt on demand
