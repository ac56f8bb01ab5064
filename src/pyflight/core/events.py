"""The event vocabulary: every kind of fact pyflight records, defined once.

The writer embeds this table in every trace header, so a reader can decode (or skip)
kinds it does not know. Kind numbers and argument orders are part of format v1:
append new kinds, never renumber.

Argument types: ``u`` unsigned integer, ``s`` string (interned per generation),
``k`` stack (interned per generation; recorded from a frame object).
"""

from __future__ import annotations

import enum
from typing import NamedTuple


class Kind(enum.IntEnum):
    """Event kinds. The thread an event happened on is its batch's thread."""

    # process, clock, threads
    CLOCK_SYNC = 1
    THREAD_INFO = 2
    THREAD_START = 3
    THREAD_END = 4
    THREAD_NAME = 5
    THREAD_EXCEPTION = 6
    # asyncio tasks and the event loop
    TASK_CREATE = 10
    TASK_INFO = 11
    TASK_STEP_BEGIN = 12
    TASK_STEP_END = 13
    TASK_WAIT = 14
    TASK_READY = 15
    TASK_DONE = 16
    TASK_BLOCK = 17
    TASK_STEP = 18
    TASK_STEP_SENT = 19
    CALLBACK_BEGIN = 20
    CALLBACK_END = 21
    LOOP_IDLE_BEGIN = 22
    LOOP_IDLE_END = 23
    LOOP_STALL = 24
    CALLBACK = 25
    TASK_SENT = 26
    TASK_TIMEOUT = 27
    # blocking in threads
    BLOCK_BEGIN = 30
    BLOCK_END = 31
    WAKE = 32
    LOCK_HELD = 33
    # garbage collector
    GC_BEGIN = 40
    GC_END = 41
    # stack sampler
    SAMPLE = 50
    # user annotations
    USER_TASK_BEGIN = 60
    USER_TASK_END = 61
    USER_TASK_INFO = 62
    REGION_BEGIN = 63
    REGION_END = 64
    LOG = 65
    # metrics
    COUNTER = 70
    # thread pools (concurrent.futures.ThreadPoolExecutor)
    POOL_JOB_QUEUED = 80
    POOL_JOB_BEGIN = 81
    POOL_JOB_END = 82
    POOL_PROCESSES = 83
    # recorder's own facts
    DATA_LOSS = 90
    SOURCE_DISABLED = 91
    TRIGGER = 92


class Arg(NamedTuple):
    name: str
    type: str  # "u", "s" or "k"


def _args(spec: str) -> tuple[Arg, ...]:
    """Parse ``"tid:u name:s"`` into Arg tuples."""
    out = []
    for item in spec.split():
        name, _, typ = item.partition(":")
        assert typ in ("u", "s", "k"), item
        out.append(Arg(name, typ))
    return tuple(out)


#: Arguments of every kind, in encoding order.
ARGS: dict[Kind, tuple[Arg, ...]] = {
    # wall-clock anchor: wall_ns is time.time_ns() taken with the event's monotonic time
    Kind.CLOCK_SYNC: _args("wall_ns:u"),
    # re-emitted at the start of every generation for each live thread
    Kind.THREAD_INFO: _args("tid:u name:s ident:u"),
    Kind.THREAD_START: _args("tid:u name:s ident:u parent:u"),
    Kind.THREAD_END: _args("tid:u"),
    Kind.THREAD_NAME: _args("tid:u name:s"),
    Kind.THREAD_EXCEPTION: _args("tid:u type:s message:s stack:k"),
    # asyncio task ids are id(task): free to get from C and Python alike; a TASK_CREATE
    # with an id seen before starts a new task (addresses are reused). parent 0 = none
    Kind.TASK_CREATE: _args("task:u name:s coro:s parent:u"),
    Kind.TASK_INFO: _args("task:u name:s coro:s parent:u"),
    Kind.TASK_STEP_BEGIN: _args("task:u"),
    Kind.TASK_STEP_END: _args("task:u"),
    # what the task waits on after a step: reason is a BlockReason, what a description
    Kind.TASK_WAIT: _args("task:u reason:u what:s stack:k"),
    Kind.TASK_READY: _args("task:u"),
    # outcome is a TaskOutcome
    Kind.TASK_DONE: _args("task:u outcome:u error:s"),
    # recorded during a step: the running task is about to block on an asyncio
    # synchronization object (asyncio.Lock, Semaphore, Event, Condition, Barrier, Queue
    # get/put); reason is a BlockReason (LOCK, CONDITION), obj id() of the object, what
    # e.g. "asyncio.Queue.put"; the wait lasts from the end of that step to the task's
    # next step. site identifies the waiting code (the first frame outside asyncio and its
    # caller); stack, from that frame outwards, is recorded at most once a second per
    # site, else empty: take the stack of another TASK_BLOCK with the same site
    Kind.TASK_BLOCK: _args("task:u reason:u obj:u what:s site:u stack:k"),
    Kind.CALLBACK_BEGIN: _args("loop:u name:s"),
    Kind.CALLBACK_END: _args("loop:u"),
    # a whole step or callback in one event, dated at its end: it stands for
    # TASK_STEP_BEGIN(task) / CALLBACK_BEGIN(loop, name) at time - duration and
    # TASK_STEP_END(task) / CALLBACK_END(loop) at its time, and the reader gives the pair;
    # events the thread recorded during the step precede it in the batch (a step that
    # spans a seal is written as the pair)
    Kind.TASK_STEP: _args("task:u duration:u"),
    Kind.CALLBACK: _args("loop:u name:s duration:u"),
    # TASK_STEP of a step that sent on a socket (send, sendall, sendto, connect; the
    # metadata blocking.step_sends says they are recorded): the reader gives the pair and
    # a TASK_SENT after the END. A task's wait for a read after such a step waits for an
    # answer; one after a step that sent nothing, for whatever the partner pushes next
    Kind.TASK_STEP_SENT: _args("task:u duration:u"),
    # the step of `task` that ended at this time sent on a socket (recorded after the
    # step's TASK_STEP_END when the step was written as a pair; else made by the reader)
    Kind.TASK_SENT: _args("task:u"),
    # a timeout of `task` ran out (asyncio.timeout, wait_for, wait(timeout=), aiohttp's
    # ClientTimeout): it is being cancelled now, and the wait it was in fails
    Kind.TASK_TIMEOUT: _args("task:u"),
    Kind.LOOP_IDLE_BEGIN: _args("loop:u"),
    Kind.LOOP_IDLE_END: _args("loop:u events:u"),
    # a step or callback running longer than the stall threshold, with a stack taken during it
    Kind.LOOP_STALL: _args("loop:u task:u duration:u stack:k"),
    # obj identifies the lock/queue/... (stable within a process run), 0 = unknown
    Kind.BLOCK_BEGIN: _args("reason:u obj:u stack:k"),
    # waker: native tid of the thread that released the lock / notified / ended (for a
    # join), 0 if unknown (timeout, interruption, or a source that cannot tell). For
    # JOIN, obj is the joined thread's native tid too; for SLEEP, obj is the time asked
    # for in ns (0 in traces before it was recorded)
    # (sources/blocking.py documents each reason's obj)
    Kind.BLOCK_END: _args("reason:u obj:u waker:u"),
    # the recording thread wakes thread `target` (or task `task` if not 0)
    Kind.WAKE: _args("target:u task:u reason:u obj:u"),
    # the lock `obj` the recording thread is about to wait for (its BLOCK_BEGIN follows) is
    # held by the thread of Python ident `holder` (threading.get_ident(): THREAD_INFO and
    # THREAD_START map it to a native tid); C core only, locks held through its wrapper
    Kind.LOCK_HELD: _args("obj:u holder:u"),
    Kind.GC_BEGIN: _args("generation:u"),
    Kind.GC_END: _args("generation:u collected:u uncollectable:u"),
    # recorded by the sampler thread about thread `tid`; state is a ThreadState; cpu the
    # CPU ns the thread used (its CPU clock) during the span ns of wall time before this
    # sample (since its previous sample); span 0: not measured (no CPU clocks, old traces)
    Kind.SAMPLE: _args("tid:u task:u stack:k state:u cpu:u span:u"),
    Kind.USER_TASK_BEGIN: _args("id:u parent:u name:s"),
    Kind.USER_TASK_END: _args("id:u"),
    Kind.USER_TASK_INFO: _args("id:u parent:u name:s"),
    Kind.REGION_BEGIN: _args("task:u name:s"),
    Kind.REGION_END: _args("task:u name:s"),
    Kind.LOG: _args("task:u category:s message:s"),
    Kind.COUNTER: _args("name:s value:u"),
    # a job submitted to a ThreadPoolExecutor (recorded by the submitter): pool is
    # id(executor), job a counter unique within the process run, function/file/line the
    # callable's code (qualname, file, first line; "" and 0 if it has none),
    # max_workers the pool's size, task the submitter's pyflight task (0 = none).
    # A QUEUED followed by an END without BEGIN is a job the pool refused (shut down)
    Kind.POOL_JOB_QUEUED: _args("pool:u job:u function:s file:s line:u max_workers:u task:u"),
    # recorded by the worker thread right before / after it runs the job; a job cancelled
    # before it started has neither
    Kind.POOL_JOB_BEGIN: _args("pool:u job:u"),
    Kind.POOL_JOB_END: _args("pool:u job:u"),
    # pool `pool` runs its jobs in worker processes (a ProcessPoolExecutor), recorded just
    # before each of its POOL_JOB_QUEUED: its BEGIN and END are recorded by the pool's
    # manager thread when it hands a job to the workers' call queue and when the result
    # is back, so the thread of its BEGINs is not a worker
    Kind.POOL_PROCESSES: _args("pool:u"),
    Kind.DATA_LOSS: _args("source:s events:u reason:s"),
    Kind.SOURCE_DISABLED: _args("source:s reason:s"),
    Kind.TRIGGER: _args("reason:s detail:s"),
}


class BlockReason(enum.IntEnum):
    OTHER = 0
    LOCK = 1
    CONDITION = 2  # Condition.wait: queue.Queue, Event, Semaphore, Barrier, futures
    SLEEP = 3
    JOIN = 4
    IO = 5  # blocking socket operations
    SELECT = 6  # select / selectors
    AWAIT = 7  # an asyncio task awaiting a future


#: Set in the obj of an IO block (``id(socket)``: objects are aligned, so bit 0 is free)
#: by a call that sends or opens a connection; clear for one that receives. Traces whose
#: metadata has ``blocking.io_sends`` say this bit; older ones leave it clear throughout.
IO_SENDS = 1
#: Set in the obj of an IO block's BLOCK_END (bit 1: objects are 8-byte aligned) when the
#: call ended by its socket's timeout (it raised ``TimeoutError``): the wait was the
#: timeout itself, not the network's answer. Traces whose metadata has
#: ``blocking.io_timeouts`` say this bit; older ones leave it clear throughout.
IO_TIMED_OUT = 2


class TaskOutcome(enum.IntEnum):
    OK = 0
    CANCELLED = 1
    FAILED = 2


class ThreadState(enum.IntEnum):
    UNKNOWN = 0
    RUNNING = 1
    SLEEPING = 2  # interruptible sleep (S)
    DISK = 3  # uninterruptible (D)
    STOPPED = 4
    ZOMBIE = 5
    #: RUNNING, holding the GIL, its stack read at that instant without the GIL (the
    #: sampler's native stack reader): the SAMPLE is dated when the stack was read, not
    #: when the sampler got the GIL (readers that predate it take it as UNKNOWN)
    HOLDING_GIL = 6


#: Highest kind number + 1; the size of per-kind lookup tables.
KIND_TABLE_SIZE = 128


def arg_counts() -> bytes:
    """Per-kind argument counts, 0xFF for numbers that are not kinds (for the C core)."""
    table = bytearray(b"\xff" * KIND_TABLE_SIZE)
    for kind, args in ARGS.items():
        table[kind] = len(args)
    return bytes(table)


assert set(ARGS) == set(Kind), "every kind needs an argument spec"
assert max(Kind) < KIND_TABLE_SIZE
