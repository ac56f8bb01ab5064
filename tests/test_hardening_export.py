"""Folded export of names no UTF-8 encoder takes as they are (lone surrogates)."""

from __future__ import annotations

from pyflight.core.events import Kind, ThreadState
from pyflight.export.folded import export_folded
from pyflight.format.reader import loads
from tracegen import Gen, trace


def test_folded_export_copes_with_lone_surrogates() -> None:
    """A function named from undecodable bytes (surrogateescape) or with a lone surrogate
    used to make ``export --format folded`` fail; it is written escaped instead."""
    gen = Gen(seq=1, start_ns=1_000, end_ns=10_000_000)
    gen.event(1, Kind.THREAD_INFO, 1_001, tid=1, name="MainThread", ident=1)
    stack = (("bad\udcffname", "/app/x.py", 1), ("lone\ud800", "/app/\udce9.py", 2))
    for i in range(3):
        gen.event(1, Kind.SAMPLE, 2_000 + i, tid=1, task=0, stack=stack, state=ThreadState.RUNNING)
    text = export_folded(loads(trace([gen])), "wall").decode("utf-8")
    line = text.splitlines()[0]
    stack_text, weight = line.rsplit(" ", 1)
    assert stack_text.startswith("lone\\ud800 (") and "bad\\udcffname (" in stack_text
    assert int(weight) > 0
