"""Case 5 (issue 10): waits inside libraries' own pools and locks are named as such, with
the fix that fits (a bigger pool, a QueueHandler), and the lock holder is reported where
holders were while holding (the slow stream's write), not where waiters waited."""

from __future__ import annotations

from pathlib import Path

import pytest

from programs import findings_of, record_named, top_warning
from pyflight import core
from pyflight.analysis.model import build
from pyflight.analysis.rules import INFO, WARNING, Finding, find
from pyflight.analysis.rules._waits import GIL_BOUND_SHARE
from pyflight.core.events import BlockReason, Kind
from pyflight.format.reader import loads
from tracegen import Gen, trace

MS = 1_000_000

# program -> (kind, culprit function, words of the fix)
PLANTED = {
    "pool_exhausted_requests": ("http connection pool", "fetch_order", "bigger pool"),
    "pool_exhausted_urllib3": ("http connection pool", "get_quote", "bigger pool"),
    # asyncio tasks in httpcore's pool (its waits go through anyio's one Event.wait line)
    "pool_exhausted_httpx_asyncio": ("http connection pool", "fetch_quote", "max_connections"),
    "logging_slow_stream": ("logging handler lock", "record_event", "QueueHandler"),
    # FastAPI's `def` endpoints queue for anyio's worker threads; the culprit is the endpoint's
    # slow call the threads were busy in, not the framework's call into the pool
    "thread_limiter_fastapi": ("thread limiter", "lookup_inventory", "total_tokens"),
    # ...also when the workers idle in their loop between bursts (no job they were busy in)
    "thread_limiter_fastapi_bursts": ("thread limiter", "lookup_inventory", "total_tokens"),
    "sqlite_busy_threads": ("database lock", "save_order", "WAL"),
    "pool_exhausted_sqlalchemy": ("database connection pool", "handle_request", "pool_size"),
    "process_pool_waits": ("process pool", "handle_request", "Pool(processes=N)"),
    # a partner failing 60% of the time, requests retrying with urllib3's Retry
    "retry_backoff_threads": ("retry backoff", "fetch_rates", "circuit breaker"),
}
HEALTHY = ["healthy_http_pool", "healthy_http_pool_asyncio", "healthy", "healthy_sqlite_writers"]
#: Locks are traced by the C core only (sources/blocking.py): the logging handler's lock
#: wait is invisible to the pure-Python core.
LOCK_TRACED = core.BACKEND_NAME == "c"
needs_locks = pytest.mark.skipif(not LOCK_TRACED, reason="locks are traced by the C core only")


@pytest.mark.parametrize(
    "program",
    [pytest.param(p, marks=needs_locks) if "logging" in PLANTED[p][0] else p for p in sorted(PLANTED)],
)
def test_library_wait_is_named_with_its_fix(program: str, tmp_path: Path) -> None:
    kind, function, fix = PLANTED[program]
    findings = findings_of(record_named(program, tmp_path))
    finding = top_warning(findings, "library-wait")
    assert finding.evidence["kind"] == kind
    assert finding.culprit is not None and finding.culprit.function == function
    assert fix in finding.hint
    # the pool's waits are not also told as an item one thread held, or an idle queue
    assert not [f for f in findings if f.rule in ("stalled-holder", "queue-starved") and f.score >= 25], [
        (f.rule, f.title) for f in findings
    ]


@needs_locks
def test_logging_lock_holder_is_where_holders_held_it(tmp_path: Path) -> None:
    findings = findings_of(record_named("logging_slow_stream", tmp_path))
    finding = next(f for f in findings if f.rule == "library-wait")
    assert finding.evidence["held_at"].startswith("SlowStream.write")


def test_database_lock_holder_is_the_open_transaction(tmp_path: Path) -> None:
    findings = findings_of(record_named("sqlite_busy_threads", tmp_path))
    finding = next(f for f in findings if f.rule == "library-wait")
    assert finding.evidence["holders"].split(", ")[0] == "stock-exporter"
    assert finding.evidence["held_at"].startswith("notify_partner")
    assert finding.evidence["transaction_opened_by"].startswith("UPDATE stock")


@pytest.mark.parametrize("program", HEALTHY)
def test_pools_big_enough_get_no_library_wait(program: str, tmp_path: Path) -> None:
    findings = findings_of(record_named(program, tmp_path))
    # three writers on one SQLite file still take turns (one writer at a time): info at most
    limit = WARNING if program == "healthy_sqlite_writers" else 25
    assert not [f for f in findings if f.rule == "library-wait" and f.score >= limit], [
        (f.rule, f.title) for f in findings
    ]


@needs_locks
def test_cpu_bound_threads_queueing_on_a_lock_are_told_as_cpu_bound(tmp_path: Path) -> None:
    """CPU-bound pool workers logging to a local file queue on the handler's lock because
    each holder waits for the GIL after its write: no slow stream, no lock to fix. With
    stacks read natively (the GIL's holder seen at each tick), the lock and logging
    findings say the threads were taking turns on the GIL and are no warning."""
    path = record_named("cpu_pool_logging", tmp_path)
    findings = findings_of(path)
    shown = [(f.rule, f.score, f.title) for f in findings[:6]]
    if not str(loads(path.read_bytes()).meta.get("sampler.stacks", "")).startswith("native"):
        pytest.skip("the GIL's holder is read natively only on Linux with the C core")
    waits = [f for f in findings if f.rule in ("lock-contention", "library-wait")]
    assert all(f.score < WARNING for f in waits), shown
    for f in waits:
        assert "slow stream" not in f.title.replace("not a slow stream", ""), shown
        if f.evidence["gil_busy_share"] is None:
            # too few of the sampler's ticks in the waits to tell (a loaded machine's
            # sampler runs late): told without the GIL's story, and without a wrong one
            continue
        assert f.evidence["gil_busy_share"] >= GIL_BOUND_SHARE and "the GIL busy" in f.title, shown
        assert "not a slow stream" in f.title or f.rule == "lock-contention", shown
        assert "ProcessPoolExecutor" in f.hint
    assert any(
        f.rule == "cpu-hotspot" and f.culprit and f.culprit.function == "summarize" for f in findings
    ), shown


def test_waits_for_a_process_pool_executors_futures_are_told_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """future.result() looks the same for a thread pool's futures and a process pool's; the
    thread that ended the waits (the executor's manager thread, in concurrent.futures'
    process.py) tells them apart."""
    monkeypatch.setenv("PYFLIGHT_PROGRAM_EXECUTOR", "1")
    findings = findings_of(record_named("process_pool_waits", tmp_path))
    finding = top_warning(findings, "library-wait")
    assert finding.evidence["kind"] == "process pool", finding.title
    assert "ProcessPoolExecutor" in finding.title and "max_workers=N" in finding.hint
    assert finding.culprit is not None and finding.culprit.function == "handle_request_futures"


SITE = "/venv/lib/python3.12/site-packages"
#: a thread's sleep in urllib3's Retry (time.sleep is no Python frame)
URLLIB3_BACKOFF = (
    ("Retry._sleep_backoff", f"{SITE}/urllib3/util/retry.py", 357),
    ("Retry.sleep", f"{SITE}/urllib3/util/retry.py", 374),
    ("HTTPConnectionPool.urlopen", f"{SITE}/urllib3/connectionpool.py", 942),
    ("HTTPAdapter.send", f"{SITE}/requests/adapters.py", 667),
    ("Session.get", f"{SITE}/requests/sessions.py", 602),
    ("fetch_rates", "/srv/rates.py", 31),
)
#: a task's asyncio.sleep in tenacity's AsyncRetrying, as the watchdog's look sees it
TENACITY_BACKOFF = (
    ("sleep", "/usr/lib/python3.12/asyncio/tasks.py", 665),
    ("AsyncRetrying.__anext__", f"{SITE}/tenacity/asyncio/__init__.py", 160),
    ("fetch_quote", "/srv/quotes.py", 17),
)
#: the program's own pause (a poller): no retry helper in it
OWN_PAUSE = (("poll_jobs", "/srv/poller.py", 12),)


def _sleepers(stack: tuple[tuple[str, str, int], ...], sleep_ms: int, threads: int = 4) -> bytes:
    """``threads`` threads, each sleeping ``sleep_ms`` of every 100 ms for 2 s at ``stack``."""
    g = Gen(seq=1, start_ns=0, end_ns=2000 * MS)
    for tid in range(1, threads + 1):
        g.event(tid, Kind.THREAD_START, 0, tid=tid, name=f"worker-{tid}", ident=tid, parent=0)
        for turn in range(20):
            at = turn * 100 * MS + MS
            g.event(tid, Kind.BLOCK_BEGIN, at, reason=BlockReason.SLEEP, obj=sleep_ms * MS, stack=stack)
            g.event(
                tid, Kind.BLOCK_END, at + sleep_ms * MS, reason=BlockReason.SLEEP, obj=sleep_ms * MS, waker=0
            )
    return trace([g])


def _library_waits(data: bytes) -> list[Finding]:
    return [f for f in find(build(loads(data)), strict=True) if f.rule == "library-wait"]


def test_sleeps_between_retries_are_the_failing_call_not_the_program() -> None:
    """Threads sleeping in urllib3's Retry wait for a failing partner's next attempt: named
    as retries backing off, at the program's call; the program's own sleeps are not."""
    [finding] = _library_waits(_sleepers(URLLIB3_BACKOFF, 80))
    assert finding.score >= WARNING and finding.evidence["kind"] == "retry backoff"
    assert "urllib3's Retry" in finding.title and "retries" in finding.title, finding.title
    assert finding.culprit is not None and finding.culprit.function == "fetch_rates"
    assert finding.evidence["wait_ns"] == 4 * 20 * 80 * MS
    assert "circuit breaker" in finding.hint and "backoff_max" in finding.hint
    assert _library_waits(_sleepers(OWN_PAUSE, 80)) == []
    # a retry now and then is no finding worth showing
    assert not [f for f in _library_waits(_sleepers(URLLIB3_BACKOFF, 1, threads=1)) if f.score >= INFO]


def test_asyncio_tasks_backing_off_in_tenacity_are_named() -> None:
    g = Gen(seq=1, start_ns=0, end_ns=1000 * MS)
    g.event(1, Kind.THREAD_START, 0, tid=1, name="MainThread", ident=1, parent=0)
    for task in range(10, 16):
        g.event(1, Kind.TASK_CREATE, 0, task=task, name=f"t{task}", coro="handle", parent=5)
        g.event(1, Kind.TASK_STEP_BEGIN, 100, task=task)
        g.event(1, Kind.TASK_STEP_END, MS, task=task)
        g.event(
            8, Kind.TASK_WAIT, 300 * MS, task=task, reason=BlockReason.AWAIT, what="", stack=TENACITY_BACKOFF
        )
        g.event(1, Kind.TASK_STEP_BEGIN, 800 * MS + task, task=task)
        g.event(1, Kind.TASK_STEP_END, 800 * MS + task + 1000, task=task)
    for b in g.batches:
        b.events.sort(key=lambda e: e[1])
    [finding] = _library_waits(trace([g]))
    assert finding.evidence["kind"] == "retry backoff" and finding.evidence["asyncio_tasks"] == 6
    assert "tenacity" in finding.title and "stop_after_attempt" in finding.hint
    assert finding.culprit is not None and finding.culprit.function == "fetch_quote"
