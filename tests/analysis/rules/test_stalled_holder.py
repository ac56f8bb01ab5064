"""Case 10 (issue 10), its cause on its own: a worker that takes the one item its peers
wait for and stalls before handing it back is named, with the stalling line."""

from __future__ import annotations

from pathlib import Path

import pytest

from programs import findings_of, record_named, top_warning


def test_worker_stalling_with_the_token_is_named(tmp_path: Path) -> None:
    findings = findings_of(record_named("stalled_holder_threads", tmp_path))
    finding = top_warning(findings, "stalled-holder")
    assert finding.evidence["thread"] == "worker-2"
    assert finding.culprit is not None and finding.culprit.function == "flush_audit_log"
    assert "worker-2" in finding.title


@pytest.mark.parametrize("program", ["queue_idle", "queue_full", "healthy", "lock_held_long"])
def test_producers_and_healthy_threads_are_not_stalled_holders(program: str, tmp_path: Path) -> None:
    findings = findings_of(record_named(program, tmp_path))
    assert not [f for f in findings if f.rule == "stalled-holder"], [(f.rule, f.title) for f in findings]


def test_a_moment_says_what_the_holder_waited_for_without_brackets_in_brackets() -> None:
    from pyflight.analysis.rules.stalled_holder import _how

    assert f"stalled{_how('select')} while" == "stalled (select) while"
    said = f"stalled{_how('waiting for a subprocess (communicate)')} while"
    assert said == "stalled, waiting for a subprocess (communicate), while"
