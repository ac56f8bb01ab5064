"""The rule registry: every id a report can show is accepted by ``find(rules=...)``."""

from __future__ import annotations

import pytest

from pyflight.analysis.model import build
from pyflight.analysis.rules import RULES, Finding, Rule, find, rule_ids
from pyflight.core.events import Kind
from pyflight.format.reader import loads
from tracegen import Gen, trace

SECOND = 1_000_000_000


def _slow_task_and_region() -> bytes:
    """One 3 s user task and one 3 s region in a 10 s window: one finding of each id."""
    gen = Gen(seq=1, start_ns=0, end_ns=10 * SECOND)
    gen.event(7, Kind.THREAD_INFO, 1, tid=7, name="main", ident=1)
    gen.event(7, Kind.USER_TASK_BEGIN, 2 * SECOND, id=2, parent=0, name="import batch")
    gen.event(7, Kind.USER_TASK_END, 5 * SECOND, id=2)
    gen.event(7, Kind.REGION_BEGIN, 6 * SECOND, task=0, name="flush")
    gen.event(7, Kind.REGION_END, 9 * SECOND, task=0, name="flush")
    return trace([gen])


def test_every_emitted_id_is_accepted() -> None:
    model = build(loads(_slow_task_and_region()))
    ids = rule_ids()
    assert {"queue-backlog", "queue-starved", "slow-tasks", "slow-regions"} <= set(ids)
    assert len(ids) == len(set(ids)), "two rules claim one id"
    for rule_id in ids:
        findings = find(model, rules=[rule_id], strict=True)
        assert all(f.rule == rule_id for f in findings), (rule_id, [f.rule for f in findings])


def test_an_id_selects_only_its_findings_and_a_name_all_of_the_rule() -> None:
    model = build(loads(_slow_task_and_region()))
    assert [f.rule for f in find(model, rules=["slow-regions"], strict=True)] == ["slow-regions"]
    assert [f.rule for f in find(model, rules=["slow-tasks"], strict=True)] == ["slow-tasks"]
    everything = sorted(f.rule for f in find(model, strict=True))
    both = sorted(f.rule for f in find(model, rules=["slow-tasks", "slow-regions"], strict=True))
    assert both == ["slow-regions", "slow-tasks"] == [r for r in everything if r.startswith("slow-")]


def test_queue_ids_and_name_are_accepted_unknown_is_not() -> None:
    model = build(loads(_slow_task_and_region()))
    assert RULES["queue"].ids == ("queue-backlog", "queue-starved")
    for name in ("queue", "queue-backlog", "queue-starved"):
        assert find(model, rules=[name], strict=True) == []
    with pytest.raises(KeyError):
        find(model, rules=["no-such-rule"])


def test_a_failing_rule_does_not_hide_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(model: object) -> list[Finding]:
        raise ValueError("bad")

    monkeypatch.setitem(RULES, "broken", Rule("broken", ("broken",), broken))
    findings = find(build(loads(_slow_task_and_region())))
    assert {"slow-tasks", "slow-regions"} <= {f.rule for f in findings}
    assert any(f.rule == "rule-error" and "broken" in f.title for f in findings)
    with pytest.raises(ValueError):
        find(build(loads(_slow_task_and_region())), strict=True)
