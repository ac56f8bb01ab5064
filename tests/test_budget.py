"""The recorder's self-enforced CPU budget: it sheds detail when it costs too much, puts
it back when it is cheap again, and a user can read both from the snapshot, /status and
``pyflight info``."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import pyflight
from pyflight.budget import CATEGORY, LEVELS, describe_budget
from pyflight.core.events import Kind
from pyflight.sources.sampler import StackSampler
from pyflight.triggers.http import STATUS_PATH

DEADLINE = 90.0


def _work_until(condition: Callable[[], bool], deadline: float = DEADLINE) -> None:
    """Burn CPU (the hot workload) until ``condition`` holds."""
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, "condition not reached"
        for _ in range(200):
            sum(range(1000))


def _budget_logs(trace: pyflight.Trace) -> list[str]:
    return [e.arg("message") for e in trace.events if e.kind == Kind.LOG and e.arg("category") == CATEGORY]


def _sampler(recorder: pyflight.FlightRecorder) -> StackSampler:
    return next(s for s in recorder.sources if isinstance(s, StackSampler))


def test_a_tiny_budget_sheds_detail_and_the_snapshot_says_why(tmp_path: Path) -> None:
    with pyflight.FlightRecorder(cpu_budget=1e-6) as recorder:
        budget = recorder.budget
        assert budget is not None
        base_interval = _sampler(recorder).interval
        _work_until(lambda: budget.level >= 2)
        assert _sampler(recorder).current_interval >= 16 * base_interval  # the sampler really slowed
        recorder.write_to(tmp_path / "shed.pyfl")
    trace = pyflight.load(tmp_path / "shed.pyfl")
    logs = _budget_logs(trace)
    assert logs and logs[0].startswith(f"shedding {LEVELS[1]}: the recorder cost"), logs
    assert "budget 0.0001%" in logs[0]
    assert json.loads(trace.meta["budget.shed"])[:2] == list(LEVELS[1:3])
    assert float(trace.meta["budget.cost"]) > 1e-6
    levels = [
        e.arg("value")
        for e in trace.events
        if e.kind == Kind.COUNTER and e.arg("name") == "pyflight.budget.shed_level"
    ]
    assert levels and max(levels) >= 2
    recorder_line, shed_line = describe_budget(trace.meta)
    assert recorder_line.startswith("recorder") and "budget 0.0001%" in recorder_line
    assert LEVELS[1] in shed_line and CATEGORY in shed_line


def test_detail_comes_back_when_the_cost_is_under_budget(tmp_path: Path) -> None:
    with pyflight.FlightRecorder(cpu_budget=1e-6) as recorder:
        budget = recorder.budget
        assert budget is not None
        base_interval = _sampler(recorder).interval
        _work_until(lambda: budget.level >= 1)
        budget.budget = 1.0  # now everything fits
        _work_until(lambda: budget.level == 0)
        assert _sampler(recorder).interval == base_interval
        recorder.write_to(tmp_path / "back.pyfl")
    logs = _budget_logs(pyflight.load(tmp_path / "back.pyfl"))
    assert any(m.startswith("restoring") and m.endswith("now shed: nothing") for m in logs), logs


def test_without_a_budget_nothing_is_measured_or_shed(tmp_path: Path) -> None:
    with pyflight.FlightRecorder(cpu_budget=None) as recorder:
        assert recorder.budget is None and "budget" not in recorder.stats()
        recorder.write_to(tmp_path / "none.pyfl")
    assert describe_budget(pyflight.load(tmp_path / "none.pyfl").meta) == []
    with pytest.raises(ValueError, match="cpu_budget"):
        pyflight.FlightRecorder(cpu_budget=0)


def test_status_shows_the_budget_figures() -> None:
    with pyflight.FlightRecorder(cpu_budget=0.05) as recorder:
        server = pyflight.serve()
        try:
            budget = recorder.budget
            assert budget is not None
            _work_until(lambda: budget.process_cpu_ns > 0)
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            try:
                conn.request("GET", STATUS_PATH)
                info = json.loads(conn.getresponse().read())
            finally:
                conn.close()
        finally:
            server.close()
    figures = info["budget"]
    assert figures["cpu_budget"] == 0.05
    assert figures["process_cpu_s"] > 0 and figures["recorder_threads_cpu_s"] >= 0
    assert figures["order"] == list(LEVELS[1:])
    assert figures["shed"] == list(LEVELS[1 : figures["shed_level"] + 1])


def test_pyflight_run_takes_a_budget_and_info_tells_the_cost(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "hot.py").write_text(
        textwrap.dedent(
            """
            import time
            end = time.monotonic() + 2.5
            while time.monotonic() < end:
                sum(range(1000))
            """
        )
    )

    def pyflight_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pyflight", *args],
            capture_output=True, text=True, env=subprocess_env, cwd=tmp_path, timeout=120,
        )  # fmt: skip

    ran = pyflight_cli("run", "--cpu-budget", "0.0001%", "-o", "hot.pyfl", "hot.py")
    assert ran.returncode == 0, ran.stderr
    info = pyflight_cli("info", "hot.pyfl")
    assert info.returncode == 0, info.stderr
    assert "budget 0.0001%" in info.stdout and LEVELS[1] in info.stdout, info.stdout
    for bad in ("2", "x", "0%"):
        result = pyflight_cli("run", "--cpu-budget", bad, "hot.py")
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
