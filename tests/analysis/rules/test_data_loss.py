"""data-loss: lost events and disabled sources, from a synthetic trace."""

from __future__ import annotations

from pyflight.analysis.model import build
from pyflight.analysis.rules import WARNING, find
from pyflight.core.events import Kind
from pyflight.format.reader import loads
from tracegen import Gen, trace


def _data_loss_trace() -> bytes:
    gen = Gen(seq=1, start_ns=1_000_000, end_ns=2_000_000_000)
    gen.event(7, Kind.THREAD_INFO, 1_000_000, tid=7, name="MainThread", ident=1)
    gen.event(7, Kind.DATA_LOSS, 1_500_000, source="asyncio", events=5000, reason="buffer full")
    gen.event(7, Kind.SOURCE_DISABLED, 1_600_000, source="blocking", reason="RuntimeError: boom")
    gen.event(7, Kind.LOG, 1_900_000_000, task=0, category="x", message="y")
    return trace([gen])


def test_data_loss_rule() -> None:
    findings = find(build(loads(_data_loss_trace())), strict=True)
    loss = [f for f in findings if f.rule == "data-loss"]
    assert len(loss) == 1
    f = loss[0]
    assert f.score >= WARNING and f.culprit is None
    assert f.evidence["lost_events"] == 5000
    assert f.evidence["by_source"] == {"asyncio": 5000}
    assert "blocking" in f.evidence["disabled_sources"][0]
    assert "5000 events lost" in f.title


def test_a_uvloop_loop_is_said_with_what_to_do() -> None:
    """The asyncio source cannot trace uvloop (uvicorn's default loop when installed):
    the finding says so in words and how to see the loop's steps while investigating."""
    gen = Gen(seq=1, start_ns=1_000_000, end_ns=2_000_000_000)
    gen.event(7, Kind.THREAD_INFO, 1_000_000, tid=7, name="MainThread", ident=1)
    reason = (
        "event loop uvloop.Loop is not an asyncio.BaseEventLoop: its tasks, steps and callbacks "
        "are not traced (sampling-only coverage)"
    )
    gen.event(7, Kind.DATA_LOSS, 1_500_000, source="asyncio", events=0, reason=reason)
    [f] = [f for f in find(build(loads(trace([gen]))), strict=True) if f.rule == "data-loss"]
    assert f.title == "Recording incomplete: asyncio steps and tasks not traced (uvloop: sampling only)"
    assert "--loop asyncio" in f.hint and f.score < WARNING
