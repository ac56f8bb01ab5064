"""Findings rules: each is provoked by small programs with one planted problem
(tests/problem_programs), recorded in a subprocess; healthy programs get no warning."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from programs import PROGRAMS, marked_line, record_named
from pyflight import core
from pyflight.analysis import build
from pyflight.analysis.frames import is_library, user_frame
from pyflight.analysis.rules import INFO, WARNING, Culprit, Finding, find, severity
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
    # the same cause told two true ways: the loop's late wake-ups, or the GIL-holding call
    # with the loop thread among the starved (on a loaded machine the first can fall short)
    "loop_blocked_uvloop": ("loop-blocked", "load_profile_sync"),  # uvloop: its blocking calls
    "loop_starved_gil": ("loop-starved|gil-hog", "spin_cpu"),
    "loop_starved_json": ("loop-starved|gil-hog", "serialize_snapshot"),
    "lock_contention": ("lock-contention", "update_account"),
    "lock_held_long": ("lock-contention", "read_cache"),
    "lock_contention_asyncio": ("lock-contention", "update_inventory"),
    "lock_convoy_asyncio": ("lock-contention", "refresh_session"),
    "lock_convoy_asyncio_acquire": ("lock-contention", "Connection.send_frame"),
    "semaphore_bound_asyncio": ("lock-contention", "call_downstream"),
    "semaphore_bound_threads": ("lock-contention", "call_partner"),
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
    "io_wait_https": ("io-wait", "fetch_invoice"),  # waits inside OpenSSL (ssl.SSLSocket)
    "timeouts_threads": ("io-wait", "fetch_quote"),  # requests calls running into their timeout
    "timeouts_asyncio": ("io-wait", "fetch_quote"),  # aiohttp calls running into ClientTimeout
    "io_wait_asyncio": ("io-wait", "fetch_price"),  # tasks awaiting a socket read: sampled chains
    "io_wait_aiohttp_body": ("io-wait", "download"),  # bodies trickling in: aiohttp's StreamReader._wait
    "pool_exhausted_aiohttp": ("library-wait", "fetch_quote"),
    "retry_backoff_threads": ("library-wait", "fetch_rates"),  # urllib3's Retry sleeping
    "pool_saturation": ("pool-saturation", "resize_image"),
    "pool_saturation_asyncio": ("pool-saturation", "blocking_lookup"),
    "pool_saturation_processes": ("pool-saturation", "render_report"),
    "slow_tasks": ("slow-tasks", "slow_db_query"),
    "untraced_subprocess_wait": ("untraced-wait", "convert_video"),
    "subprocess_capture_threads": ("untraced-wait", "transcode"),  # a traced select, same story
}
#: Locks are only traced by the C core (docs: sources/blocking.py); without it the
#: waits show as ``untraced-wait`` (off-CPU samples in user code).
NEEDS_C_CORE = {"lock-contention"}
#: asyncio locks are traced by the asyncio source, and a threading.Semaphore's waits are
#: Condition waits: with either core.
ASYNCIO_LOCKS = {
    "lock_convoy_asyncio",
    "lock_convoy_asyncio_acquire",
    "semaphore_bound_asyncio",
    "semaphore_bound_threads",
}
HEALTHY = ["healthy", "healthy_asyncio", "healthy_polling_consumer_asyncio"]
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
    rules = set(rule.split("|"))
    matching = [f for f in findings if f.rule in rules and f.culprit and f.culprit.function in wanted]
    assert matching and matching[0].score >= INFO, text
    finding = matching[0]
    assert finding.evidence and finding.hint and finding.title
    # the rule's headline number is backed by evidence
    assert any(k.endswith("_ns") and isinstance(v, int) and v > 0 for k, v in finding.evidence.items()), text
    assert [f.score for f in findings] == sorted((f.score for f in findings), reverse=True)
    # and by the moments it came from: stretches of this trace a user can go and look at
    model = build(loads(recorded[program].read_bytes()))
    span_s = (model.end - model.start) / SECOND_NS
    assert finding.moments, f"{finding.rule} lists no moments"
    assert [m.at_s for m in finding.moments] == sorted(m.at_s for m in finding.moments)
    for moment in finding.moments:
        assert 0 <= moment.at_s <= span_s + 0.001 and moment.at_s * SECOND_NS + moment.duration_ns <= (
            span_s * SECOND_NS + 1_000_000
        ), (moment, span_s)
        assert moment.thread and moment.what, moment


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


def test_the_other_side_of_a_queue_is_told_busy_or_waiting(recorded: dict[str, Path]) -> None:
    """A producer that sleeps between items is slow, not busy: the title says it waits
    (and the advice is to overlap its waits); a consumer parsing on the CPU is busy."""
    starved = next(f for f in _findings(recorded["queue_idle"]) if f.rule == "queue-starved")
    assert starved.title.endswith("producer waiting in slow_produce (off CPU)"), starved.title
    assert starved.evidence["other_side_waiting_ns"] > starved.evidence["other_side_busy_ns"]
    assert "Overlap those waits" in starved.hint
    sleepy = next(f for f in _findings(recorded["queue_full_asyncio"]) if f.rule == "queue-backlog")
    assert sleepy.title.endswith("consumers waiting in slow_consume (awaiting)"), sleepy.title
    busy = next(f for f in _findings(recorded["queue_full_asyncio_cpu"]) if f.rule == "queue-backlog")
    assert ": consumers busy in " in busy.title, busy.title


def test_a_semaphore_queue_is_told_as_the_bound_it_is(recorded: dict[str, Path]) -> None:
    """Tasks waiting on an asyncio.Semaphore: the finding names the semaphore and its
    limit as the lever; a lock's advice ("use a Semaphore") would be no advice here."""
    semaphore = next(f for f in _findings(recorded["semaphore_bound_asyncio"]) if f.rule == "lock-contention")
    assert semaphore.evidence["kind"] == "asyncio.Semaphore", semaphore.evidence
    assert "asyncio.Semaphore" in semaphore.title and "raise its limit" in semaphore.hint
    assert "or a Semaphore if" not in semaphore.hint
    lock = next(f for f in _findings(recorded["lock_convoy_asyncio"]) if f.rule == "lock-contention")
    assert lock.evidence["kind"] == "asyncio.Lock" and "finer-grained lock" in lock.hint
    # threads queueing for a threading.BoundedSemaphore's slots: the same story, where the
    # holders spend the slot, and no worker blamed for "holding the item" too long
    findings = _findings(recorded["semaphore_bound_threads"])
    threads = next(f for f in findings if f.rule == "lock-contention")
    assert threads.evidence["kind"] == "threading.Semaphore", threads.evidence
    assert "threading.Semaphore" in threads.title and "raise its limit" in threads.hint
    call = marked_line(PROGRAMS / "semaphore_bound_threads.py", "urllib.request.urlopen(url")
    assert str(threads.evidence["held_at"]).endswith(f"semaphore_bound_threads.py:{call})"), threads.evidence
    assert not [f for f in findings if f.rule == "stalled-holder"], _describe(findings)


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


def test_empty_trace_has_no_findings() -> None:
    gen = Gen(seq=1, start_ns=1000, end_ns=2000)
    gen.event(7, Kind.LOG, 1500, task=0, category="db", message="hi")
    assert find(build(loads(trace([gen]))), strict=True) == []


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


def test_a_process_pool_is_measured_from_its_futures(recorded: dict[str, Path]) -> None:
    """Jobs run in worker processes: the parent measures them from their futures, says it
    is a process pool, and counts at most max_workers jobs running at once (the workers'
    call queue holds one job more, handed over before a worker is free)."""
    model = build(loads(recorded["pool_saturation_processes"].read_bytes()))
    (pool,) = model.pools.values()
    assert pool.processes and pool.max_workers == 2 and pool.workers == []
    assert len(pool.jobs) == 12 and {j.state for j in pool.jobs} == {"done"}
    assert max(level for _, level in pool.busy) == 2
    (finding,) = [f for f in find(model, strict=True) if f.rule == "pool-saturation"]
    assert finding.title.startswith("Process pool 'ProcessPoolExecutor': all 2 workers busy"), finding.title
    assert finding.evidence["processes"] is True and "worker processes" in finding.hint
    assert finding.evidence["wait_p90_ns"] > finding.evidence["run_p50_ns"]


def test_healthy_pool_jobs_recorded_without_finding(recorded: dict[str, Path]) -> None:
    model = build(loads(recorded["healthy"].read_bytes()))
    (pool,) = model.pools.values()
    assert pool.max_workers == 4 and len(pool.jobs) == 60
    assert {j.function for j in pool.jobs} == {"small_job"}
    assert not [f for f in find(model, strict=True) if f.rule == "pool-saturation"]


@pytest.mark.skipif(core.BACKEND_NAME != "c", reason="locks are traced by the C core only")
def test_lock_contention_lists_the_waits_it_counted(tmp_path: Path) -> None:
    """Raw evidence: the moments are the waits themselves, by the threads it names."""
    findings = find(build(loads(record_named("lock_contention", tmp_path).read_bytes())), strict=True)
    finding = next(f for f in findings if f.rule == "lock-contention")
    assert 0 < len(finding.moments) <= min(20, finding.evidence["waits"])
    assert {m.thread for m in finding.moments} <= set(finding.evidence["waiters"])
    assert max(m.duration_ns for m in finding.moments) == finding.evidence["worst_ns"]
    assert [m.at_s for m in finding.moments] == sorted(m.at_s for m in finding.moments)
