"""Socket reads that are no wait the program made, for ``io-wait``: a server waiting for
its client's next request (a keep-alive connection, a connection handler, a WebSocket),
a listener waiting for a feed's next push. Each is a client at rest, not a slow partner."""

from __future__ import annotations

import bisect
import re
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pyflight.analysis.frames import at_one_of, is_library, is_third_party
from pyflight.analysis.model import State
from pyflight.analysis.queries import Queries, Spans, interval_ns
from pyflight.analysis.rules._waits import in_function
from pyflight.analysis.units import MS
from pyflight.core.events import IO_SENDS, BlockReason
from pyflight.format.reader import Frame

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyflight.analysis.model import Interval, Model, Step, TaskTimeline

#: A receive this long on a connection that has had data since this thread last sent on
#: it waits for the partner to speak on its own (a subscription's next message, a feed's
#: next item): the program asked for nothing. Shorter gaps are a transfer still flowing.
PUSH_WAIT = 50 * MS
#: ...unless the native reader found the GIL held at this share of the sampler's ticks in it.
GIL_HELD_SHARE = 0.5
MIN_TICKS = 5


#: (function, file) that read a request's first line straight from the socket: a server
#: thread blocked there waits for a client's next request (a keep-alive connection, idle),
#: as one blocked in accept waits for the next connection: not I/O the program waits on.
_NEXT_REQUEST_READERS = (
    ("BaseHTTPRequestHandler.handle_one_request", "http/server.py"),  # http.server, werkzeug
    ("WSGIRequestHandler.handle", "wsgiref/simple_server.py"),
)


#: The socket plumbing between a read and the code that asked for it: socket.py's
#: (SocketIO.readinto) and, on a TLS connection, ssl.py's frames.
_SOCKET_FILES = ("/socket.py", "/ssl.py")


def _socket_file(frame: Frame) -> bool:
    return frame.file.replace("\\", "/").endswith(_SOCKET_FILES)


def waits_for_next_request(stack: Sequence[Frame]) -> bool:
    """The socket read is called by a request handler's request-line read (directly, or
    through more socket.py / ssl.py frames), or by a ``socketserver`` handler's own
    ``handle`` (``for line in self.rfile``: a thread per connection, waiting for its
    client's next command; a handler that reads a downstream service does so through
    that service's client library, whose frames sit in between)."""
    i = 1 if stack and _socket_file(stack[0]) else 0
    while i < len(stack) and _socket_file(stack[i]):
        i += 1
    if i >= len(stack):
        return False
    caller = stack[i]
    if at_one_of(caller, _NEXT_REQUEST_READERS):
        return True
    below = stack[i + 1] if i + 1 < len(stack) else None
    return (
        i > 0  # through the connection's file (self.rfile): its own socket
        and below is not None
        and below.function == "BaseRequestHandler.__init__"
        and below.file.replace("\\", "/").endswith("/socketserver.py")
        and not is_library(caller)
        and not is_third_party(caller)
    )


#: A queue client's blocking pops (redis-py's, in redis/commands/core.py: an RQ worker
#: waits for its next job in BLPOP): the command is sent, then the answer is whatever job
#: comes next, or the timeout. An idle consumer, not a slow partner.
_BLOCKING_POPS = frozenset(
    {
        "blpop",
        "brpop",
        "brpoplpush",
        "blmove",
        "blmpop",
        "bzpopmin",
        "bzpopmax",
        "bzmpop",
        "xread",
        "xreadgroup",
    }
)


def waits_for_a_job(stack: Sequence[Frame]) -> bool:
    return any(
        frame.function.rpartition(".")[2] in _BLOCKING_POPS
        and frame.file.replace("\\", "/").endswith("/redis/commands/core.py")
        for frame in stack
    )


def waits_for_connection(stack: Sequence[Frame]) -> bool:
    """In accept: a server waiting for its next connection (on a TLS listener, ssl.py's
    accept, which also does the new connection's handshake)."""
    return in_function(stack, {"accept", "socket.accept"}, "socket.py") or in_function(
        stack, {"accept", "SSLSocket.accept"}, "/ssl.py"
    )


def connection_handlers(model: Model) -> set[int]:
    """``id()`` of the tasks a protocol's ``connection_made`` created (found by the loop
    callback running on their thread when they were created): ``asyncio.start_server``'s
    ``client_connected_cb``, one task per accepted connection."""
    made: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for loop in model.loops.values():
        for iv in loop.busy:
            if (iv.detail or "").endswith(".connection_made"):
                made[loop.tid].append((iv.start, iv.end))
    if not made:
        return set()
    found = set()
    for task in model.all_tasks():
        spans = made.get(task.thread)
        if spans and any(start <= task.created <= end for start, end in spans):
            found.add(id(task))
    return found


#: (function, file) of a server's read of its client's next message: a handler waiting
#: there serves an idle connection (aiohttp's server-side WebSocket; its client side is
#: ``ClientWebSocketResponse``, in client_ws.py) or waits for its client's upload (an
#: aiohttp request's body), or an ASGI server's ``receive``, where
#: an application waits for the server's next event: its client's next WebSocket
#: message, the rest of a request's body, the client going away (Starlette's
#: ``listen_for_disconnect``), or the server's shutdown (the lifespan task waits for
#: it all the server's life).
_SERVER_RECEIVES = (
    ("WebSocketResponse.receive", "/aiohttp/web_ws.py"),
    ("BaseRequest.read", "/aiohttp/web_request.py"),  # a request's body (text, json call it)
    ("BaseRequest.post", "/aiohttp/web_request.py"),  # a form's
    ("LifespanOn.receive", "/uvicorn/lifespan/on.py"),
    ("RequestResponseCycle.receive", "/uvicorn/protocols/http/h11_impl.py"),
    ("RequestResponseCycle.receive", "/uvicorn/protocols/http/httptools_impl.py"),
    ("WebSocketProtocol.asgi_receive", "/uvicorn/protocols/websockets/websockets_impl.py"),
    ("WebSocketsSansIOProtocol.receive", "/uvicorn/protocols/websockets/websockets_sansio_impl.py"),
    ("WSProtocol.receive", "/uvicorn/protocols/websockets/wsproto_impl.py"),
)


def waits_for_its_client(stack: Sequence[Frame]) -> bool:
    return any(at_one_of(frame, _SERVER_RECEIVES) for frame in stack)


#: (function, file) of a client iterating over a WebSocket's messages in a thread
#: (websockets' sync client: ``for message in ws``). It waits for the server's next push,
#: in C (``queue.SimpleQueue.get``, which no hook sees): a follower at rest. A thread
#: asking and waiting for the answer calls ``recv`` itself, and is not this.
_MESSAGE_ITERATORS = (("Connection.__iter__", "/websockets/sync/connection.py"),)


def follows_messages(stack: Sequence[Frame]) -> bool:
    return any(at_one_of(frame, _MESSAGE_ITERATORS) for frame in stack)


def reads_its_stream(stack: Sequence[Frame]) -> bool:
    """The program reads an asyncio stream itself (``await reader.readline()``), with
    only the standard library's frames inside its call: in a connection's handler, its
    own connection (a downstream service is read through its client library)."""
    for k, frame in enumerate(stack):
        if not is_library(frame):
            return not is_third_party(frame) and any(
                f.file.replace("\\", "/").endswith("/asyncio/streams.py") for f in stack[:k]
            )
    return False


#: How the words of a library coroutine's name begin when a task waits to *receive*
#: (asyncio's ``_wait_for_data``, ``readline``; aiohttp's ``DataQueue.read``; anyio's
#: ``receive``; a WebSocket's ``recv``), as opposed to a wait to send or connect.
RECEIVING_WORDS = ("read", "recv", "receive")
#: A "connection" is no connect (websockets' ``close_connection`` awaits its connection's
#: reader task for the connection's life).
_NOT_WORDS = ("connection",)


def named_for(frame: Frame, words: tuple[str, ...]) -> bool:
    """The function's name (its last part) has a word that begins with one of ``words``
    (words, not substrings: ``to_thread`` is no read), or is asyncio's ``_wait_for_data``."""
    name = frame.function.rpartition(".")[2].lower()
    return name == "_wait_for_data" or any(
        w.startswith(words) and not w.startswith(_NOT_WORDS) for w in name.split("_")
    )


def receives(call: Frame) -> bool:
    return named_for(call, RECEIVING_WORDS)


def listening_task_waits(model: Model) -> Callable[[TaskTimeline, Interval | None], bool]:
    """A predicate over a task's waits (its BLOCKED intervals), fed all of them in order
    (None resets it for the next task): true for a piece of a wait at least
    ``PUSH_WAIT`` long made by a task that sent nothing on any socket since its previous
    wait, or since it was created (no step of its in between recorded TASK_SENT). If that
    wait is a receive, it waits for a push: a subscription's next message, a feed's next
    item. Not in a task without a parent (``asyncio.run``'s main task: the program's
    own line of work, as the main thread is for threads) unless it waits for a
    WebSocket's next message, nor for the first wait seen of
    a task made before the window (what it sent before is unknown), nor where no step of
    the task ran in between (uvloop: no step says what it sent). Only traces whose
    metadata says steps that send are recorded (``blocking.step_sends``) have any."""
    if not model.trace.meta.get("blocking.step_sends"):
        return lambda _task, _iv: False
    # this wait's start and the previous wait's end; a wait is its BLOCKED pieces that
    # follow one another (should the model cut one, as it does where a loop woke up)
    state: list[int | None] = [None, None, None]  # [previous wait's end, this wait's start, its end so far]

    def listening(task: TaskTimeline, iv: Interval | None) -> bool:
        if iv is None:  # a new task: if created in the window, its first wait counts from then
            created = task.intervals and task.intervals[0].state is State.READY
            state[:] = [None, None, task.created if created else None]
            return False
        if state[2] != iv.start:  # a new wait
            state[0], state[1] = state[2], iv.start
        state[2] = iv.end
        since, start = state[0], state[1]
        if since is None or start is None or iv.end - start < PUSH_WAIT:
            return False
        if iv.stack and any(_reads_a_response(frame) for frame in iv.stack):
            return False  # an HTTP response's body: the program asked for it
        if not task.parent and not (
            iv.stack and any(at_one_of(frame, _MESSAGE_RECEIVES) for frame in iv.stack)
        ):
            return False  # the main task's own line of work (a script reading a slow stream)
        # a step of its own between the two waits (the one that began this wait)...
        steps = task.steps
        k = bisect.bisect_left(steps, since, key=_step_end)
        if k == len(steps) or steps[k].end > start:
            return False
        # ...and none of them sent
        k = bisect.bisect_left(task.sent, since)
        return not (k < len(task.sent) and task.sent[k] <= start)

    return listening


def _step_end(step: Step) -> int:
    return step.end


#: (function, file) of a WebSocket client's read of its next message: what comes is the
#: server's to send (a feed's next price, a chat's next line), in whatever task waits for
#: it, ``asyncio.run``'s main one too (a bot whose main coroutine follows one feed).
_MESSAGE_RECEIVES = (
    ("ClientWebSocketResponse.receive", "/aiohttp/client_ws.py"),
    ("Connection.recv", "/websockets/asyncio/connection.py"),
    ("WebSocketCommonProtocol.recv", "/websockets/legacy/protocol.py"),
)


#: (how a function's name begins, file) of an HTTP client's read of a response's body: a
#: task reading one waits for what it asked for, however slowly it trickles in.
_RESPONSE_READS = (("ClientResponse.", "aiohttp/client_reqrep.py"), ("Response.a", "httpx/_models.py"))


def _reads_a_response(frame: Frame) -> bool:
    file = frame.file.replace("\\", "/")
    return any(frame.function.startswith(name) and file.endswith(part) for name, part in _RESPONSE_READS)


def _kind_of_thread(model: Model, tid: int) -> str:
    """Threads started alike (``downloader-0``, ``downloader-1``; ``Thread-3
    (fetch)``) share this: the name with its numbers blanked."""
    thread = model.threads.get(tid)
    return re.sub(r"\d+", "#", thread.name) if thread is not None and thread.name else f"#{tid}"


def listening_blocks(model: Model) -> dict[int, list[tuple[int, int]]]:
    """Thread id -> (start, end) of its receives that waited for a push: at least
    ``PUSH_WAIT`` long, on a socket whose previous call by this thread received too, in a
    thread other than the main one, while no thread was joining one of its kind and it
    ran no pool job (a download trickling in from a slow server has the shape of a feed,
    but the program waits for it: its threads joined in turn, its job's future). Only
    traces that say which calls send (metadata ``blocking.io_sends``) have any."""
    if not model.trace.meta.get("blocking.io_sends"):
        return {}
    # spans in which someone waits for a thread's work: joins of a thread of its kind,
    # and the pool jobs it runs (their submitters hold futures); the main thread's own
    # receives are the program's line of work (a script downloading a file), never a feed
    joined: dict[str, list[tuple[int, int]]] = defaultdict(list)
    jobs: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for pool in model.pools.values():
        for job in pool.jobs:
            if job.worker and job.begin is not None:
                jobs[job.worker].append((job.begin, job.end if job.end is not None else model.end))
    main = {t.tid for t in model.threads.values() if t.name == "MainThread"}
    io = []
    for b in model.blocks:
        if b.reason is BlockReason.JOIN:
            joined[_kind_of_thread(model, b.obj)].append((b.start, b.end))
        elif b.reason is BlockReason.IO and b.obj:
            io.append(b)
    last_sent: dict[tuple[int, int], bool] = {}
    spans: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for b in sorted(io, key=lambda b: (b.tid, b.start)):
        key, sends = (b.tid, b.obj & ~IO_SENDS), bool(b.obj & IO_SENDS)
        received_last = last_sent.get(key) is False
        last_sent[key] = sends
        if sends or not received_last or b.end - b.start < PUSH_WAIT or b.tid in main:
            continue
        awaited = (*joined.get(_kind_of_thread(model, b.tid), ()), *jobs.get(b.tid, ()))
        if not any(start < b.end and b.start < end for start, end in awaited):
            spans[b.tid].append((b.start, b.end))
    # threads taking turns on the GIL: the rest of an answer waits for the GIL back after
    # each read (a stand-in cannot tell that from the network), not for a push. Judged on
    # all of a thread's candidates (and the ticks around each: a budget-slowed sampler
    # ticks a few times a second)
    queries = Queries.of(model)
    ticks, natives = queries.sampler_ticks(), queries.native_times()
    reach = interval_ns(model)
    for tid in list(spans):
        in_ticks = in_natives = 0
        for lo, hi in Spans([(a - reach, b + reach) for a, b in spans[tid]]).pairs():
            in_ticks += bisect.bisect_left(ticks, hi) - bisect.bisect_left(ticks, lo)
            in_natives += bisect.bisect_left(natives, hi) - bisect.bisect_left(natives, lo)
        if in_ticks < MIN_TICKS:  # too few ticks near them to judge: the thread's life's
            thread = model.threads.get(tid)
            lo, hi = (thread.start, thread.end) if thread is not None else (model.start, model.end)
            in_ticks = bisect.bisect_left(ticks, hi) - bisect.bisect_left(ticks, lo)
            in_natives = bisect.bisect_left(natives, hi) - bisect.bisect_left(natives, lo)
        if in_ticks >= 2 and in_natives >= GIL_HELD_SHARE * in_ticks:
            del spans[tid]
    return spans
