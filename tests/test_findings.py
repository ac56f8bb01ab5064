"""Findings rules: each is provoked by small programs with one planted problem
(tests/problem_programs), recorded in a subprocess; healthy programs get no warning."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from programs import record_named
from pyflight import core
from pyflight.analysis import build
from pyflight.analysis.frames import is_library, user_frame
from pyflight.analysis.rules import INFO, RULES, WARNING, Culprit, Finding, Rule, find, severity
from pyflight.analysis.rules.scoring import ramp
from pyflight.core.events import Kind
from pyflight.format.reader import Frame, loads
from tracegen import Gen, trace

PURE = core.BACKEND_NAME != "c"

# program -> (rule expected among the findings, planted culprit function)
CASES: dict[str, tuple[str, str]] = {
    "loop_blocked_sleep": ("loop-blocked", "load_config_sync"),
    "loop_blocked_cpu": ("loop-blocked", "crunch_numbers"),
    "loop_blocked_waiters": ("loop-blocked", "burn_cpu"),
    "slow_tasks_asyncio": ("loop-blocked", "render_page"),
    "loop_starved_gil": ("loop-starved", "spin_cpu"),
    "loop_starved_json": ("loop-starved", "serialize_snapshot"),
    "lock_contention": ("lock-contention", "update_account"),
    "lock_held_long": ("lock-contention", "read_cache"),
    "lock_contention_asyncio": ("lock-contention", "update_inventory"),
    "lock_convoy_asyncio": ("lock-contention", "refresh_session"),
    "lock_convoy_asyncio_acquire": ("lock-contention", "Connection.send_frame"),
    "queue_full_asyncio": ("queue-backlog", "slow_consume"),
    "queue_full_asyncio_cpu": ("queue-backlog", "parse_record|consume"),
    "queue_full": ("queue-backlog", "slow_consume"),
    "queue_idle": ("queue-starved", "slow_produce"),
    "gc_pressure": ("gc-pauses", "Node.__init__|build_graph"),
    "gc_thread": ("gc-pauses", "load_records|Record.__init__"),
    "cpu_hotspot": ("cpu-hotspot", "compute_primes"),
    "cpu_hotspot_threads": ("cpu-hotspot", "hash_password"),
    "io_wait": ("io-wait", "fetch_remote"),
    "io_wait_threads": ("io-wait", "download_chunks"),
    "pool_saturation": ("pool-saturation", "resize_image"),
    "pool_saturation_asyncio": ("pool-saturation", "blocking_lookup"),
    "slow_tasks": ("slow-tasks", "slow_db_query"),
}
#: Locks are only traced by the C core (docs: sources/blocking.py); without it the
#: waits show as ``untraced-wait`` (off-CPU samples in user code).
NEEDS_C_CORE = {"lock-contention"}
#: asyncio locks are traced by the asyncio source, with either core.
ASYNCIO_LOCKS = {"lock_convoy_asyncio", "lock_convoy_asyncio_acquire"}
HEALTHY = ["healthy", "healthy_asyncio"]
SECOND_NS = 1_000_000_000


@pytest.fixture(scope="session")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Every problem program recorded once, a few at a time (timing matters: not more)."""
    out_dir = tmp_path_factory.mktemp("problems")
    names = [*CASES, *HEALTHY]
    with ThreadPoolExecutor(max_workers=3) as pool:
        paths = dict(
            zip(
                names,
                pool.map(lambda n: record_named(n, out_dir), names),
                strict=True,
            )
        )
    yield paths


def _findings(path: Path) -> list[Finding]:
    return find(build(loads(path.read_bytes())), strict=True)


def _describe(findings: list[Finding]) -> str:
    return "\n".join(
        f"{f.score:3d} {f.rule} {f.culprit.function if f.culprit else None}: {f.title}" for f in findings
    )


@pytest.mark.parametrize("program", sorted(CASES))
def test_planted_problem_is_the_top_finding(program: str, recorded: dict[str, Path]) -> None:
    rule, culprits = CASES[program]
    if PURE and rule in NEEDS_C_CORE and program not in ASYNCIO_LOCKS:
        rule = "untraced-wait"  # locks are traced by the C core only; the sampler sees the waits
    findings = _findings(recorded[program])
    text = _describe(findings)
    wanted = set(culprits.split("|"))
    assert findings, "no findings at all"
    top = findings[0]
    assert top.culprit is not None and top.culprit.function in wanted, text
    assert top.score >= INFO, text
    assert top.culprit.file.endswith(f"{program}.py"), text
    assert top.culprit.line > 0
    matching = [f for f in findings if f.rule == rule and f.culprit and f.culprit.function in wanted]
    assert matching and matching[0].score >= INFO, text
    finding = matching[0]
    assert finding.evidence and finding.hint and finding.title
    # the rule's headline number is backed by evidence
    assert any(k.endswith("_ns") and isinstance(v, int) and v > 0 for k, v in finding.evidence.items()), text
    assert [f.score for f in findings] == sorted((f.score for f in findings), reverse=True)


def test_warning_level_where_the_problem_is_severe(recorded: dict[str, Path]) -> None:
    severe = [
        "loop_blocked_sleep",
        "queue_full",
        "pool_saturation",
        "gc_pressure",
        "lock_convoy_asyncio",
        "lock_convoy_asyncio_acquire",
        "queue_full_asyncio",
    ]
    if not PURE:
        severe.append("lock_contention")
    for program in severe:
        findings = _findings(recorded[program])
        assert findings[0].score >= WARNING, (program, _describe(findings))
        assert findings[0].severity == "warning"


@pytest.mark.parametrize("program", HEALTHY)
def test_healthy_program_gets_no_warning(program: str, recorded: dict[str, Path]) -> None:
    findings = _findings(recorded[program])
    assert all(f.score < WARNING for f in findings), _describe(findings)
    for rule in (
        "loop-blocked",
        "lock-contention",
        "queue-backlog",
        "pool-saturation",
        "slow-tasks",
        "untraced-wait",
    ):
        assert not [f for f in findings if f.rule == rule and f.score >= INFO], _describe(findings)


def test_ready_tasks_behind_a_long_step_are_not_starvation(recorded: dict[str, Path]) -> None:
    """Tasks that became ready while one step ran 300 ms waited because of that step:
    loop-blocked says so; loop-starved ("late with no long step") must not say it again."""
    for program in ("loop_blocked_waiters", "loop_blocked_cpu", "loop_blocked_sleep"):
        findings = _findings(recorded[program])
        assert not [f for f in findings if f.rule == "loop-starved" and f.score >= INFO], _describe(findings)


def test_no_rule_fails_on_any_program(recorded: dict[str, Path]) -> None:
    for path in recorded.values():
        for finding in find(build(loads(path.read_bytes()))):
            assert finding.rule != "rule-error", finding.title


# ------------------------------------------------------------------ units


def test_ramp_and_severity() -> None:
    points = [(0.0, 0.0), (1.0, 50.0), (2.0, 100.0)]
    assert ramp(-1, points) == 0
    assert ramp(0.5, points) == 25
    assert ramp(1.5, points) == 75
    assert ramp(9, points) == 100
    assert severity(75) == "warning" and severity(74) == "info" and severity(25) == "info"
    assert severity(24) == "ok"


def test_user_frame_skips_stdlib_and_pyflight() -> None:
    stack = (
        Frame("BlockingSource._blocked", "/x/site-packages/pyflight/sources/blocking.py", 10),
        Frame("Condition.wait", "/usr/lib/python3.12/threading.py", 331),
        Frame("fetch", "/srv/app/client.py", 42),
        Frame("main", "/srv/app/main.py", 3),
    )
    assert user_frame(stack) == stack[2]
    assert is_library(stack[0]) and is_library(stack[1]) and not is_library(stack[2])
    assert is_library(Frame("_find_and_load", "<frozen importlib._bootstrap>", 1))
    assert not is_library(Frame("handler", "/usr/lib/python3.12/site-packages/app/views.py", 1))
    only_lib = stack[:2]
    assert user_frame(only_lib) == stack[1]  # the innermost frame that is not pyflight's
    assert user_frame(()) is None


def test_finding_to_dict_matches_the_contract() -> None:
    f = Finding("x", 80, "t", Culprit("f", "a.py", 3), {"wait_ns": 5}, "h")
    d = f.to_dict()
    assert d["rule"] == "x" and d["score"] == 80 and d["title"] == "t" and d["severity"] == "warning"
    assert d["culprit"] == {"function": "f", "file": "a.py", "line": 3}
    assert Finding("y", 1, "t").to_dict()["culprit"] is None


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


def test_damaged_file_is_data_loss(recorded: dict[str, Path]) -> None:
    data = recorded["healthy"].read_bytes()
    with pytest.warns(UserWarning):
        damaged = loads(data[: len(data) - 100])
    assert damaged.bytes_lost > 0
    findings = find(build(damaged), strict=True)
    loss = [f for f in findings if f.rule == "data-loss"]
    assert loss and loss[0].score >= WARNING and "damaged" in loss[0].title
    clean = find(build(loads(data)), strict=True)
    assert not [f for f in clean if f.rule == "data-loss"]


def test_a_failing_rule_does_not_hide_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(model: object) -> list[Finding]:
        raise ValueError("bad")

    monkeypatch.setitem(RULES, "broken", Rule("broken", ("broken",), broken))
    findings = find(build(loads(_data_loss_trace())))
    assert findings[0].rule == "data-loss"
    assert any(f.rule == "rule-error" and "broken" in f.title for f in findings)
    with pytest.raises(ValueError):
        find(build(loads(_data_loss_trace())), strict=True)


def test_empty_trace_has_no_findings() -> None:
    gen = Gen(seq=1, start_ns=1000, end_ns=2000)
    gen.event(7, Kind.LOG, 1500, task=0, category="db", message="hi")
    assert find(build(loads(trace([gen]))), strict=True) == []


# ------------------------------------------------------------------ pool-saturation


def _pool_trace(jobs: int, workers: int, run_ms: int, gap_ms: float = 0.0) -> bytes:
    """One pool of ``workers`` threads fed ``jobs`` jobs of ``run_ms`` (``gap_ms`` apart):
    the events the executors source records, FIFO as the pool runs them."""
    ms = 1_000_000
    gen = Gen(seq=1, start_ns=0, end_ns=int((jobs * (run_ms + gap_ms) + 1000) * ms))
    gen.event(1, Kind.THREAD_INFO, 0, tid=1, name="MainThread", ident=1)
    for w in range(workers):
        gen.event(10 + w, Kind.THREAD_INFO, 0, tid=10 + w, name=f"images_{w}", ident=10 + w)
    free = [ms] * workers  # when each worker is next free
    begins: list[tuple[int, int, int, int]] = []
    for job in range(1, jobs + 1):
        queued = int(ms + (job - 1) * gap_ms * ms)
        gen.event(
            1,
            Kind.POOL_JOB_QUEUED,
            queued,
            pool=77,
            job=job,
            function="resize_image",
            file="/app/images.py",
            line=12,
            max_workers=workers,
            task=0,
        )
        w = min(range(workers), key=lambda i: free[i])
        begin = max(queued, free[w]) + 1000
        free[w] = begin + run_ms * ms
        begins.append((10 + w, begin, free[w], job))
    for tid, begin, end, job in sorted(begins, key=lambda b: (b[0], b[1])):
        gen.event(tid, Kind.POOL_JOB_BEGIN, begin, pool=77, job=job)
        gen.event(tid, Kind.POOL_JOB_END, end, pool=77, job=job)
    return trace([gen])


def test_pool_saturation_from_jobs() -> None:
    """24 jobs of 80 ms on 2 workers, all at once: the exact rule, from the jobs alone."""
    model = build(loads(_pool_trace(24, 2, 80)))
    pool = model.pools[77]
    assert pool.name == "images" and pool.max_workers == 2 and len(pool.jobs) == 24
    (finding,) = [f for f in find(model, strict=True) if f.rule == "pool-saturation"]
    assert finding.score >= WARNING
    assert finding.culprit == Culprit("resize_image", "/app/images.py", 12)
    ev = finding.evidence
    assert ev["max_workers"] == 2 and ev["jobs"] == 24 and ev["jobs_waited"] == 22
    assert 800e6 <= ev["wait_max_ns"] <= 900e6 and ev["wait_p50_ns"] < ev["wait_p90_ns"] <= ev["wait_max_ns"]
    assert 900e6 <= ev["all_busy_ns"] <= 1000e6 and ev["backlog_ns"] <= ev["all_busy_ns"]
    assert ev["worst_waiting"] == 24 and ev["culprit_jobs"] == 24  # all queued at once
    assert "'images'" in finding.title and "2 workers" in finding.title
    assert "max_workers" in finding.hint


def test_pool_with_spare_capacity_is_no_finding() -> None:
    """Jobs that arrive slower than the workers finish them never wait: nothing to say."""
    model = build(loads(_pool_trace(40, 4, 20, gap_ms=10)))
    assert model.pools[77].all_busy(model.end) == []
    assert not [f for f in find(model, strict=True) if f.rule == "pool-saturation"]


@pytest.mark.parametrize(("program", "workers"), [("pool_saturation", 2), ("pool_saturation_asyncio", 3)])
def test_planted_pools_measured_from_jobs(program: str, workers: int, recorded: dict[str, Path]) -> None:
    """The planted pools are measured (queue waits), not inferred; without the pool events
    (an older trace) the sample-based inference still names the same function."""
    import dataclasses

    data = loads(recorded[program].read_bytes())
    findings = [f for f in find(build(data), strict=True) if f.rule == "pool-saturation"]
    assert len(findings) == 1, _describe(findings)
    ev = findings[0].evidence
    assert ev["max_workers"] == workers and ev["wait_p90_ns"] >= 100_000_000
    assert ev["worker_states"], ev
    pool_kinds = {Kind.POOL_JOB_QUEUED, Kind.POOL_JOB_BEGIN, Kind.POOL_JOB_END}
    old = dataclasses.replace(data, events=[e for e in data.events if e.kind not in pool_kinds])
    model = build(old)
    assert not model.pools
    sampled = [f for f in find(model, strict=True) if f.rule == "pool-saturation"]
    assert sampled and sampled[0].culprit is not None
    assert sampled[0].culprit.function == findings[0].culprit.function  # type: ignore[union-attr]
    assert "wait_p90_ns" not in sampled[0].evidence


def test_healthy_pool_jobs_recorded_without_finding(recorded: dict[str, Path]) -> None:
    model = build(loads(recorded["healthy"].read_bytes()))
    (pool,) = model.pools.values()
    assert pool.max_workers == 4 and len(pool.jobs) == 60
    assert {j.function for j in pool.jobs} == {"small_job"}
    assert not [f for f in find(model, strict=True) if f.rule == "pool-saturation"]


def test_few_user_tasks_long_ones_only_and_not_lifetimes() -> None:
    """Fewer than 5 runs of a task: no 'usual' to compare with. A long one (>= 1 s) is
    reported as what it is; one that lasts the whole window (a worker's or a session's
    lifetime) is not a latency at all."""
    gen = Gen(seq=1, start_ns=0, end_ns=10 * SECOND_NS)
    tid = 7
    gen.event(tid, Kind.USER_TASK_BEGIN, 0, id=1, parent=0, name="session")  # the whole window
    gen.event(tid, Kind.THREAD_INFO, 1, tid=tid, name="main", ident=1)
    gen.event(tid, Kind.USER_TASK_BEGIN, 2 * SECOND_NS, id=2, parent=1, name="import batch")
    gen.event(tid, Kind.USER_TASK_END, 5 * SECOND_NS, id=2)
    gen.event(tid, Kind.USER_TASK_END, 10 * SECOND_NS - 1, id=1)
    findings = [f for f in find(build(loads(trace([gen]))), strict=True) if f.rule == "slow-tasks"]
    assert [f.title for f in findings] == ["User task 'import batch' took 3.00 s"], _describe(findings)
