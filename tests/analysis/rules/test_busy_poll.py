"""Case 7 (issue 10): a coroutine busy-polling with ``await asyncio.sleep(0)`` is named as
such (its coroutine and step rate), not as CPU in ``main``; busy but honest asyncio
pipelines are not."""

from __future__ import annotations

from pathlib import Path

import pytest

from programs import findings_of, record_named, top_warning

PLANTED = {"busy_poll_asyncio": "wait_for_ready", "busy_poll_asyncio_queue": "poll_jobs"}
HEALTHY = ["healthy_asyncio_pipeline", "healthy_asyncio", "slow_route_asyncio"]


@pytest.mark.parametrize("program", sorted(PLANTED))
def test_busy_polling_coroutine_is_named(program: str, tmp_path: Path) -> None:
    findings = findings_of(record_named(program, tmp_path))
    finding = top_warning(findings, "busy-poll")
    assert finding.evidence["coroutine"] == PLANTED[program]
    assert PLANTED[program] in finding.title
    assert finding.evidence["steps_per_second"] >= 5000


@pytest.mark.parametrize("program", HEALTHY)
def test_honest_asyncio_is_not_busy_polling(program: str, tmp_path: Path) -> None:
    findings = findings_of(record_named(program, tmp_path))
    assert not [f for f in findings if f.rule == "busy-poll"], [(f.rule, f.title) for f in findings]
