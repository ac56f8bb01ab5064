"""Case 7 (issue 10): a coroutine busy-polling with ``await asyncio.sleep(0)`` is named as
such (its coroutine and step rate), not as CPU in ``main``; busy but honest asyncio
pipelines are not. A thread polling a flag with short sleeps is named too; one pacing
real work with sleeps is not."""

from __future__ import annotations

from pathlib import Path

import pytest

from programs import PROGRAMS, findings_of, marked_line, record_named, top_warning

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


def test_a_thread_polling_with_short_sleeps_is_named_and_one_pacing_work_is_not(tmp_path: Path) -> None:
    path = record_named("busy_poll_threads", tmp_path)
    polls = [f for f in findings_of(path) if f.rule == "busy-poll"]
    assert len(polls) == 1, [(f.title, f.evidence) for f in polls]
    (poll,) = polls
    assert poll.culprit is not None and poll.culprit.function == "wait_for_batch", poll.title
    assert poll.culprit.line == marked_line(PROGRAMS / "busy_poll_threads.py", "while not batch_ready") + 1
    assert poll.evidence["sleeps_per_second"] >= 100 and poll.evidence["asleep_share"] >= 0.8, poll.evidence
    assert "threading.Event" in poll.hint


@pytest.mark.parametrize("program", ["healthy", "slow_operation_threads", "io_wait_threads"])
def test_threads_that_sleep_between_work_are_not_polling(program: str, tmp_path: Path) -> None:
    findings = findings_of(record_named(program, tmp_path))
    assert not [f for f in findings if f.rule == "busy-poll"], [(f.rule, f.title) for f in findings]


def test_threads_polling_with_short_timeouts_are_named_and_honest_waits_are_not(tmp_path: Path) -> None:
    """``Event.wait(0.002)`` and ``queue.get(timeout=0.005)`` in loops are polls (waits that
    time out, nobody woke them); ``queue.get()`` and a heartbeat's ``stop.wait(0.2)`` are not."""
    path = record_named("busy_poll_timeouts_threads", tmp_path)
    polls = {f.evidence["thread"]: f for f in findings_of(path) if f.rule == "busy-poll"}
    assert sorted(polls) == ["consume-results", "dispatch"], [(f.title, f.evidence) for f in polls.values()]
    program = PROGRAMS / "busy_poll_timeouts_threads.py"
    dispatch, consume = polls["dispatch"], polls["consume-results"]
    assert dispatch.culprit is not None and dispatch.culprit.function == "dispatch"
    assert dispatch.culprit.line == marked_line(program, "while not job_done.wait(0.002)")
    assert dispatch.evidence["waits_in"] == "Event.wait" and "Event.wait" in dispatch.title
    assert consume.culprit is not None and consume.culprit.function == "consume_results"
    assert consume.culprit.line == marked_line(program, "results.get(timeout=0.005)")
    assert consume.evidence["waits_in"] == "Queue.get"
    assert consume.evidence["sleeps_per_second"] >= 100, consume.evidence
    assert "without a timeout" in consume.hint and "sentinel" in consume.hint
