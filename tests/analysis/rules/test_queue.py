"""queue-starved tells a consumer starved by a slow producer, not a thread pool with
nothing to do: idle workers (concurrent.futures' ``_worker``, anyio's ``WorkerThread``
behind FastAPI's sync endpoints, one queue each) wait in Queue.get between jobs.
Synthetic traces: each thread waits 1.9 s of 2 s in Queue.get at the stack given."""

from __future__ import annotations

from pyflight.analysis.model import build
from pyflight.analysis.rules import find
from pyflight.core.events import BlockReason, Kind
from pyflight.format.reader import loads
from tracegen import Gen, trace

MS = 1_000_000
GET = ("Queue.get", "/py/queue.py", 171)
ANYIO_IDLE = (GET, ("WorkerThread.run", "/venv/site-packages/anyio/_backends/_asyncio.py", 1113))
EXECUTOR_IDLE = (GET, ("_worker", "/py/concurrent/futures/thread.py", 89))
CONSUMER = (GET, ("consume", "/app/pipeline.py", 30))


def _waiting_threads(*stacks: tuple[tuple[str, str, int], ...]) -> bytes:
    """One thread per stack, each on its own queue (as anyio's workers are)."""
    g = Gen(seq=1, start_ns=0, end_ns=2000 * MS)
    for tid, stack in enumerate(stacks, start=1):
        g.event(tid, Kind.THREAD_START, 0, tid=tid, name=f"worker-{tid}", ident=tid, parent=0)
        g.event(tid, Kind.BLOCK_BEGIN, 50 * MS, reason=BlockReason.CONDITION, obj=100 + tid, stack=stack)
        g.event(tid, Kind.BLOCK_END, 1950 * MS, reason=BlockReason.CONDITION, obj=100 + tid, waker=0)
    return trace([g])


def _starved(data: bytes) -> list[str]:
    return [f.title for f in find(build(loads(data)), strict=True) if f.rule == "queue-starved"]


def test_idle_thread_pool_workers_are_not_starved_consumers() -> None:
    assert _starved(_waiting_threads(*[ANYIO_IDLE] * 6, *[EXECUTOR_IDLE] * 3)) == []


def test_a_consumer_of_the_programs_own_queue_still_is() -> None:
    titles = _starved(_waiting_threads(CONSUMER, ANYIO_IDLE))
    assert len(titles) == 1 and titles[0].startswith("1 consumer thread(s) idle on an empty queue")
