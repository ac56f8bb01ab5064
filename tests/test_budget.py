"""The recorder's self-enforced CPU budget: it sheds detail when it costs too much, puts
it back when it is cheap again, and a user can read both from the snapshot, /status and
``pyflight info``."""

from __future__ import annotations

import hashlib
import http.client
import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import pyflight
from pyflight.budget import CATEGORY, LEVELS, SHED_STACK_EVERY, SHED_STACK_MIN_NS, describe_budget
from pyflight.core import backend
from pyflight.core.events import BlockReason, Kind
from pyflight.sources.blocking import _c_core
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
    recorder_line, threads_line, shed_line = describe_budget(trace.meta)
    assert recorder_line.startswith("recorder") and "budget 0.0001%" in recorder_line
    # which of its threads cost what: the sampler, and the ticker that judges the budget
    by_thread = json.loads(trace.meta["budget.recorder_threads"])
    assert {"pyflight-sampler", "pyflight-ticker"} <= set(by_thread), by_thread
    assert by_thread["pyflight-sampler"] > 0
    assert threads_line.startswith("its threads") and "pyflight-sampler" in threads_line
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


STACKS_STEP = LEVELS.index("stacks on blocks under 10 ms: 1 in 16 kept")


def _sleep_blocks(trace: pyflight.Trace, asked_ns: int) -> list[pyflight.Event]:
    """The BLOCK_BEGINs of the ``time.sleep`` calls that asked for ``asked_ns``."""
    return [
        e
        for e in trace.events
        if e.kind == Kind.BLOCK_BEGIN and e.arg("reason") == BlockReason.SLEEP and e.arg("obj") == asked_ns
    ]


@pytest.mark.skipif(_c_core() is None, reason="only the C core's blocking hooks keep stacks past a threshold")
def test_stacks_of_short_blocks_are_shed_when_they_break_the_budget_and_come_back(tmp_path: Path) -> None:
    """A program that blocks briefly and often (each 0.3 ms sleep a block with its stack)
    and has no sampler to slow down: the budget's next step keeps the stack of a block under
    10 ms one time in 16 at random (its site still shows), a long block keeps it; once the cost is
    under budget again every short block has its stack back."""
    here = test_stacks_of_short_blocks_are_shed_when_they_break_the_budget_and_come_back.__name__

    def sleeps_at_site_a() -> None:
        time.sleep(0.00031)

    def sleeps_at_site_b() -> None:
        time.sleep(0.00031)

    def short_sleeps() -> bool:
        time.sleep(0.0003)  # over the default 100 us: a block with its stack
        return False

    with pyflight.FlightRecorder(sources=["blocking"], cpu_budget=1e-6) as recorder:
        budget = recorder.budget
        assert budget is not None
        _work_until(lambda: short_sleeps() or budget.shed == [STACKS_STEP])
        for _ in range(8 * SHED_STACK_EVERY):  # two sites in turn: each keeps some stacks
            sleeps_at_site_a()  # shed: under 10 ms, a stack one time in 16 (at random)
            sleeps_at_site_b()
        time.sleep(SHED_STACK_MIN_NS / 1e9 * 2)  # 20 ms: its stack
        recorder.write_to(tmp_path / "shed.pyfl")
        budget.budget = 1.0  # now everything fits
        _work_until(lambda: budget.level == 0)
        for _ in range(8):
            time.sleep(0.00032)  # restored: each with its stack
        recorder.write_to(tmp_path / "back.pyfl")
    shed = pyflight.load(tmp_path / "shed.pyfl")
    short = _sleep_blocks(shed, 310_000)
    assert len(short) == 16 * SHED_STACK_EVERY
    kept = [e for e in short if here in [f.function for f in e.stack]]
    assert 2 <= len(kept) <= 64, len(kept)  # 16 expected
    assert all(e.stack == () for e in short if e not in kept)
    # every 16th block would always fall on the same site; each has ~8 (P(none) < 1e-7)
    for site in ("sleeps_at_site_a", "sleeps_at_site_b"):
        assert any(e.stack[0].function.endswith(site) for e in kept), site
    ((long_sleep,),) = [_sleep_blocks(shed, 2 * SHED_STACK_MIN_NS)]
    assert here in [f.function for f in long_sleep.stack]
    logs = _budget_logs(shed)
    assert logs[0].startswith(f"shedding {LEVELS[STACKS_STEP]}: the recorder cost"), logs
    assert json.loads(shed.meta["budget.shed"]) == [LEVELS[STACKS_STEP]]
    back = pyflight.load(tmp_path / "back.pyfl")
    restored = _sleep_blocks(back, 320_000)
    assert len(restored) == 8 and all(here in [f.function for f in e.stack] for e in restored)
    assert any(m.startswith(f"restoring {LEVELS[STACKS_STEP]}") for m in _budget_logs(back))


def test_the_stacks_hooks_walk_are_counted_apart_from_events() -> None:
    """The core counts the stacks it interns (the budget's estimate of the hooks' cost
    needs them): one per event recorded with a stack, none for one without."""
    with pyflight.FlightRecorder(sources=[], cpu_budget=None):
        before = backend.stats()
        backend.record(int(Kind.LOG), 0, "test", "no stack")
        backend.record(int(Kind.BLOCK_BEGIN), int(BlockReason.LOCK), 1, backend.HERE)
        backend.record(int(Kind.BLOCK_END), int(BlockReason.LOCK), 1, 0)
        after = backend.stats()
    assert after["events"] - before["events"] == 3
    assert after["stacks"] - before["stacks"] == 1


def test_the_sampler_is_not_slowed_for_the_other_threads_cost() -> None:
    """Over budget because of the recorder's other threads (here a stand-in burning CPU
    without the GIL; on a busy service, the metrics and the stall watchdog), the sampler
    is slowed only while its own thread's CPU is worth lowering: slowing it to a sample
    a second would lose detail and save nothing (a busy FastAPI service did exactly that)."""
    stop = threading.Event()

    def burn() -> None:  # hashing a large buffer lets go of the GIL: no contention
        data = b"x" * (1 << 20)
        while not stop.is_set():
            hashlib.sha256(data).digest()

    options = {"sampler": {"cpu_budget": 0.0005}}  # 0.5 ms a second: a tenth of half the budget
    with pyflight.FlightRecorder(sources=["sampler"], source_options=options, cpu_budget=0.01) as recorder:
        budget = recorder.budget
        assert budget is not None
        burner = threading.Thread(target=burn, name="pyflight-test-burner", daemon=True)
        burner.start()
        try:
            end = time.monotonic() + DEADLINE
            while budget.periods_over < 4:  # judged over budget, four times
                assert time.monotonic() < end, "never over budget"
                time.sleep(0.05)
        finally:
            stop.set()
            burner.join()
        shed = list(budget.shed)
    assert budget.thread_cpu_ns > 0.3 * budget.process_cpu_ns  # the burner was the cost
    assert budget.thread_cpu_by_name["pyflight-test-burner"] > 0.9 * budget.thread_cpu_ns
    # its 0.5 ms a second are worth lowering only if the burner got under 10% of a CPU (a
    # loaded machine: then /4 or /16); never a sample a second for the burner's sake
    slowest = LEVELS.index("sampler at its slowest rate")
    assert slowest not in shed and shed == sorted(shed), [LEVELS[i] for i in shed]


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
    assert sum(figures["recorder_threads"].values()) == pytest.approx(figures["recorder_threads_cpu_s"])
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
