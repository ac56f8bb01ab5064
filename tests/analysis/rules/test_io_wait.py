"""io-wait on a CPU-bound threaded server: short socket calls whose threads, back from
the kernel, wait for the GIL the others keep busy (the stand-in cannot tell the two
apart) are told as that, not as a slow network. Synthetic traces: the GIL's business is
what the native reader saw at the sampler's ticks."""

from __future__ import annotations

from pathlib import Path

import pytest

from programs import PROGRAMS, findings_of, marked_line, record_named, top_warning
from pyflight.analysis.model import build
from pyflight.analysis.queries import sampler_ticks
from pyflight.analysis.rules import INFO, WARNING, Finding, find
from pyflight.core.events import IO_TIMED_OUT, BlockReason, Kind, ThreadState
from pyflight.format.reader import loads
from tracegen import Gen, trace

MS = 1_000_000
WRITE = (("_SocketWriter.write", "/py/socketserver.py", 834), ("handle", "/srv/app.py", 20))
RENDER = (("render", "/srv/app.py", 12), ("handle", "/srv/app.py", 21))


def _server(gil_held: bool, wait_ms: int, period_ms: int = 10, cpu_without_gil: bool = False) -> bytes:
    """Four request threads for 2 s, each call to write blocking ``wait_ms`` in every
    ``period_ms``; a sampler tick every 10 ms (taken by thread 9), at which the native
    reader found a holder running render (2 ms of CPU in each 10) if ``gil_held`` (and
    once, outside the waits, either way: the reader is on); the program otherwise idle,
    or, with ``cpu_without_gil``, its threads using a whole CPU between them in C code
    that released the GIL (an sqlite query, zlib)."""
    g = Gen(seq=1, start_ns=0, end_ns=2000 * MS)
    g.event(9, Kind.SAMPLE, 0, tid=1, task=0, stack=RENDER, state=ThreadState.HOLDING_GIL, cpu=0, span=1)
    for tid in range(1, 5):
        g.event(tid, Kind.THREAD_START, 0, tid=tid, name=f"worker-{tid}", ident=tid, parent=0)
        for k in range(2000 // period_ms):
            start = k * period_ms * MS + MS + tid * MS // 4
            g.event(tid, Kind.BLOCK_BEGIN, start, reason=BlockReason.IO, obj=tid, stack=WRITE)
            g.event(tid, Kind.BLOCK_END, start + wait_ms * MS, reason=BlockReason.IO, obj=tid, waker=0)
    for k in range(1, 200):
        t = k * 10 * MS + 5 * MS
        if gil_held:
            g.event(
                9,
                Kind.SAMPLE,
                t - 1000,
                tid=1 + k % 4,
                task=0,
                stack=RENDER,
                state=ThreadState.HOLDING_GIL,
                cpu=2 * MS,
                span=10 * MS,
            )
        for tid in range(1, 5):
            g.event(
                9,
                Kind.SAMPLE,
                t + tid,
                tid=tid,
                task=0,
                stack=WRITE,
                state=ThreadState.SLEEPING,
                cpu=(25 if cpu_without_gil else 2 if gil_held else 0) * MS // 10,  # busy: the holders' CPU
                span=10 * MS,
            )
        # an ending thread's last sample is not a tick of the sampler
        g.event(
            9,
            Kind.SAMPLE,
            t + 3 * MS,
            tid=1,
            task=0,
            stack=WRITE,
            state=ThreadState.ZOMBIE,
            cpu=MS // 10,
            span=10 * MS,
        )
    return trace([g])


def _io_wait(data: bytes) -> object:
    [found] = [f for f in find(build(loads(data)), strict=True) if f.rule == "io-wait"]
    return found


def test_short_calls_on_a_busy_gil_are_told_as_gil_waits() -> None:
    finding = _io_wait(_server(gil_held=True, wait_ms=6))
    assert "while other threads held the GIL" in finding.title  # type: ignore[attr-defined]
    assert "not for the network" in finding.title  # type: ignore[attr-defined]
    assert finding.evidence["gil_busy_share"] >= 0.9  # type: ignore[attr-defined]
    assert finding.score < WARNING and "ProcessPoolExecutor" in finding.hint  # type: ignore[attr-defined]


def test_the_same_waits_with_the_gil_free_are_the_network() -> None:
    finding = _io_wait(_server(gil_held=False, wait_ms=6))
    assert "GIL" not in finding.title  # type: ignore[attr-defined]
    assert finding.evidence["gil_busy_share"] < 0.1  # type: ignore[attr-defined]


def test_cpu_spent_with_the_gil_released_is_not_the_gil_busy() -> None:
    """A whole CPU used by the program's threads in C code that released the GIL (the
    native reader found no holder at the ticks) is no GIL held: at most a little more than
    the ticks say (a tick may fall in a hand-off between holders)."""
    finding = _io_wait(_server(gil_held=False, wait_ms=6, cpu_without_gil=True))
    assert "GIL" not in finding.title  # type: ignore[attr-defined]
    assert finding.evidence["gil_busy_share"] <= 0.3  # type: ignore[attr-defined]


def test_long_waits_stay_the_network_whatever_the_gil_does() -> None:
    finding = _io_wait(_server(gil_held=True, wait_ms=40, period_ms=50))
    assert "GIL" not in finding.title  # type: ignore[attr-defined]
    assert finding.evidence["gil_busy_share"] >= 0.9  # type: ignore[attr-defined]


def test_an_ending_threads_last_sample_is_not_a_tick() -> None:
    model = build(loads(_server(gil_held=False, wait_ms=6)))
    assert len(sampler_ticks(model)) == 199


NEXT_REQUEST = (
    ("SocketIO.readinto", "/py/socket.py", 707),
    ("BaseHTTPRequestHandler.handle_one_request", "/py/http/server.py", 404),
    ("BaseHTTPRequestHandler.handle", "/py/http/server.py", 438),
)
BODY = (
    ("SocketIO.readinto", "/py/socket.py", 707),
    ("Handler.do_POST", "/srv/app.py", 30),
    ("BaseHTTPRequestHandler.handle_one_request", "/py/http/server.py", 424),
)


def _keep_alive_server(stack: tuple[tuple[str, str, int], ...]) -> bytes:
    """Four threads of a threaded http.server, each blocked 1.9 s of 2 s reading at ``stack``."""
    g = Gen(seq=1, start_ns=0, end_ns=2000 * MS)
    for tid in range(1, 5):
        g.event(tid, Kind.THREAD_START, 0, tid=tid, name=f"Thread-{tid}", ident=tid, parent=0)
        g.event(tid, Kind.BLOCK_BEGIN, 50 * MS, reason=BlockReason.IO, obj=tid, stack=stack)
        g.event(tid, Kind.BLOCK_END, 1950 * MS, reason=BlockReason.IO, obj=tid, waker=0)
    return trace([g])


def _io_waits(data: bytes) -> list[Finding]:
    return [f for f in find(build(loads(data)), strict=True) if f.rule == "io-wait"]


def _keep_alive_io_waits(stack: tuple[tuple[str, str, int], ...]) -> list[Finding]:
    return _io_waits(_keep_alive_server(stack))


def test_a_keep_alive_connection_waiting_for_its_next_request_is_not_io_wait() -> None:
    """A server thread reading a request's first line waits for the client, as one in
    accept waits for a connection: idle, not I/O the program waits on (threaded
    http.server and werkzeug with keep-alive). Reading a request's body still counts."""

    assert _keep_alive_io_waits(NEXT_REQUEST) == []
    body = _keep_alive_io_waits(BODY)
    assert body and body[0].score >= INFO


#: The same two over TLS (an http.server whose socket is wrapped by ssl): ssl.py's frames
#: sit where socket.py's do.
TLS_NEXT_REQUEST = (
    ("SSLSocket.recv_into", "/py/ssl.py", 1260),
    ("SocketIO.readinto", "/py/socket.py", 707),
    ("BaseHTTPRequestHandler.handle_one_request", "/py/http/server.py", 404),
)
TLS_ACCEPT = (
    ("SSLSocket.accept", "/py/ssl.py", 1390),
    ("TCPServer.get_request", "/py/socketserver.py", 505),
    ("serve", "/srv/app.py", 12),
)
TLS_BODY = (
    ("SocketIO.readinto", "/py/socket.py", 707),
    ("Handler.do_POST", "/srv/app.py", 30),
)


def test_a_socketserver_handler_reading_its_clients_next_line_is_not_io_wait() -> None:
    """A thread per connection (``socketserver``), its ``handle`` reading ``self.rfile``:
    waiting for its client. The same handler reading a downstream service's answer (through
    http.client) waits for I/O."""

    readinto = ("SocketIO.readinto", "/py/lib/python3.12/socket.py", 707)
    handler = ("Handler.handle", "/srv/app.py", 12)
    served = ("BaseRequestHandler.__init__", "/py/lib/python3.12/socketserver.py", 755)
    assert _keep_alive_io_waits((readinto, handler, served)) == []
    downstream = (readinto, ("HTTPResponse.begin", "/py/lib/python3.12/http/client.py", 320), handler, served)
    [finding] = _keep_alive_io_waits(downstream)
    assert finding.score >= INFO and finding.culprit is not None
    assert finding.culprit.function == "Handler.handle"


def test_tls_servers_waiting_for_requests_or_connections_are_not_io_wait() -> None:
    assert _keep_alive_io_waits(TLS_NEXT_REQUEST) == []
    assert _keep_alive_io_waits(TLS_ACCEPT) == []
    body = _keep_alive_io_waits(TLS_BODY)
    assert body and body[0].score >= INFO


LISTEN = (("listen", "/srv/feed.py", 14), ("main", "/srv/feed.py", 30))
ASK = (("ask", "/srv/client.py", 22), ("main", "/srv/client.py", 40))
SENDS = 1  # pyflight.core.events.IO_SENDS


def _conversation(
    stack: tuple[tuple[str, str, int], ...],
    sends_first: bool,
    meta: bool = True,
    joined: bool = False,
    gil_held: bool = False,
    first: str = "client-1",
) -> bytes:
    """Two threads, each on its own socket for 2 s: 20 receives that wait 90 ms each,
    with a short send before each receive if ``sends_first`` (asking, then waiting for
    the answer), else one send at the start (subscribing, then waiting for pushes); if
    ``joined``, the main thread joins the first of them all along; if ``gil_held``, a
    CPU-bound thread holds the GIL at every sampler tick (10 ms)."""
    g = Gen(seq=1, start_ns=0, end_ns=2000 * MS)
    if gil_held:
        g.event(4, Kind.THREAD_START, 0, tid=4, name="parser", ident=4, parent=0)
        for k in range(1, 200):
            t = k * 10 * MS
            g.event(9, Kind.SAMPLE, t - 1000, tid=4, task=0, stack=RENDER, state=ThreadState.HOLDING_GIL,
                    cpu=10 * MS, span=10 * MS)  # fmt: skip
            for tid in (1, 2):
                g.event(9, Kind.SAMPLE, t + tid, tid=tid, task=0, stack=stack, state=ThreadState.SLEEPING,
                        cpu=0, span=10 * MS)  # fmt: skip
    if joined:
        g.event(3, Kind.THREAD_START, 0, tid=3, name="MainThread", ident=3, parent=0)
        joining = (("main", "/srv/dl.py", 9),)
        g.event(3, Kind.BLOCK_BEGIN, 5 * MS, reason=BlockReason.JOIN, obj=1, stack=joining)
        g.event(3, Kind.BLOCK_END, 1999 * MS, reason=BlockReason.JOIN, obj=1, waker=1)
    for tid in (1, 2):
        sock = 0x7F0000 + 64 * tid
        name = first if tid == 1 else f"client-{tid}"
        g.event(tid, Kind.THREAD_START, 0, tid=tid, name=name, ident=tid, parent=0)
        for k in range(20):
            t = 10 * MS + k * 95 * MS
            if sends_first or k == 0:
                g.event(tid, Kind.BLOCK_BEGIN, t, reason=BlockReason.IO, obj=sock | SENDS, stack=())
                g.event(tid, Kind.BLOCK_END, t + 20_000, reason=BlockReason.IO, obj=sock | SENDS, waker=0)
            g.event(tid, Kind.BLOCK_BEGIN, t + MS, reason=BlockReason.IO, obj=sock, stack=stack)
            g.event(tid, Kind.BLOCK_END, t + 91 * MS, reason=BlockReason.IO, obj=sock, waker=0)
    return trace([g], meta={"blocking.io_sends": "bit 0"} if meta else None)


def test_receives_with_nothing_sent_since_the_last_are_a_subscription_not_io_wait() -> None:
    """A thread that subscribed once and then receives pushes (a pub/sub or websocket
    listener, a feed) waits for the other side to speak on its own: idle, not I/O the
    program asked for. The same receives after a send each wait for an answer."""

    [asking] = _io_waits(_conversation(ASK, sends_first=True))
    assert asking.score >= INFO and asking.culprit is not None and asking.culprit.function == "ask"
    assert asking.evidence["wait_ns"] >= 2 * 20 * 90 * MS and asking.evidence.get("listening_ns") is None
    # subscribed: only the first receive (right after the subscribing send) waits for an answer
    [listening] = _io_waits(_conversation(LISTEN, sends_first=False)) or [None]
    assert listening is None or listening.score < INFO, listening
    # the same shape while the program joins those threads (one, then the next): a
    # download trickling in from a slow server, which the program waits for
    [downloads] = _io_waits(_conversation(LISTEN, sends_first=False, joined=True))
    assert downloads.score >= INFO and downloads.evidence["wait_ns"] >= 2 * 20 * 90 * MS
    # the main thread's receives are the program's own work (a script downloading a
    # file slowly): they count, the background thread's do not
    [main] = _io_waits(_conversation(LISTEN, sends_first=False, first="MainThread"))
    assert 20 * 90 * MS <= main.evidence["wait_ns"] < 2 * 20 * 90 * MS and main.evidence["listening_ns"]
    # the same shape while other threads keep the GIL busy: the rest of an answer waiting
    # for the GIL back after each read, not a push (a threaded scraper parsing pages)
    [gil_bound] = _io_waits(_conversation(LISTEN, sends_first=False, gil_held=True))
    assert (
        gil_bound.evidence["wait_ns"] >= 2 * 20 * 90 * MS and gil_bound.evidence.get("listening_ns") is None
    )
    # a trace that does not say which calls send: every receive counts, as before
    [unknown] = _io_waits(_conversation(LISTEN, sends_first=False, meta=False))
    assert unknown.score >= INFO and unknown.evidence["wait_ns"] >= 2 * 20 * 90 * MS


# ------------------------------------------------------------ asyncio tasks awaiting I/O

LOOP = 1
READ = (
    ("StreamReader._wait_for_data", "/py/lib/python3.12/asyncio/streams.py", 540),
    ("StreamReader.readline", "/py/lib/python3.12/asyncio/streams.py", 568),
    ("fetch_price", "/srv/prices.py", 31),
)
#: a connect run by the HTTP library in a task of its own: no program frame in its chain
CONNECT = (
    ("BaseSelectorEventLoop.sock_connect", "/py/lib/python3.12/asyncio/selector_events.py", 638),
    ("AsyncIOBackend.connect_tcp", "/venv/lib/python3.12/site-packages/anyio/_backends/_asyncio.py", 2939),
)
CALLER = (
    ("Client.get", "/venv/lib/python3.12/site-packages/httpx/_client.py", 1800),
    ("fetch_quote", "/srv/quotes.py", 27),
)


def _awaiting(
    waits: list[tuple[int, int, tuple[tuple[str, str, int], ...], int]], made_by: str = "", what: str = ""
) -> bytes:
    """asyncio tasks (id, parent, await chain looked at, wait ms): each created and
    stepped once at 0, then waiting from 1 ms for its time, the chain recorded mid-wait
    by the watchdog (thread 8) with ``what`` it awaited, then one more step. ``made_by``:
    the loop callback that created them (a protocol's ``connection_made``), else none."""
    g = Gen(seq=1, start_ns=0, end_ns=1000 * MS)
    g.event(LOOP, Kind.THREAD_START, 0, tid=LOOP, name="MainThread", ident=LOOP, parent=0)
    if made_by:
        g.event(LOOP, Kind.CALLBACK_BEGIN, 0, loop=7, name=made_by)
    for task, parent, _, _ in waits:
        g.event(LOOP, Kind.TASK_CREATE, 0, task=task, name=f"t{task}", coro="c", parent=parent)
    if made_by:
        g.event(LOOP, Kind.CALLBACK_END, 50, loop=7)
    for task, _, _, _ in waits:
        g.event(LOOP, Kind.TASK_STEP_BEGIN, 100, task=task)
        g.event(LOOP, Kind.TASK_STEP_END, MS, task=task)
    for task, _, stack, ms in sorted(waits, key=lambda w: w[3]):
        g.event(
            8, Kind.TASK_WAIT, MS + ms * MS // 2, task=task, reason=BlockReason.AWAIT, what=what, stack=stack
        )
    for task, _, _, ms in sorted(waits, key=lambda w: w[3]):
        g.event(LOOP, Kind.TASK_STEP_BEGIN, MS + ms * MS, task=task)
        g.event(LOOP, Kind.TASK_STEP_END, MS + ms * MS + 1000, task=task)
    for b in g.batches:
        b.events.sort(key=lambda e: e[1])
    return trace([g])


def _task_io(data: bytes) -> list[Finding]:
    return [f for f in find(build(loads(data)), strict=True) if f.rule == "io-wait" and "asyncio" in f.title]


def test_tasks_awaiting_a_socket_read_are_an_io_wait() -> None:
    [finding] = _task_io(_awaiting([(10 + k, 0, READ, 300) for k in range(4)]))
    assert finding.culprit is not None and finding.culprit.function == "fetch_price"
    assert finding.evidence["awaiting"] == "StreamReader._wait_for_data"
    assert finding.evidence["wait_ns"] == 4 * 300 * MS and finding.evidence["tasks"] == 4
    assert finding.score >= INFO


def test_a_library_task_is_charged_to_the_program_line_its_parent_waited_at() -> None:
    """anyio connects in a task of its own; the program's line is its parent's."""
    waits = [(20 + k, 10 + k, CONNECT, 400) for k in range(3)] + [(10 + k, 0, CALLER, 450) for k in range(3)]
    [finding] = _task_io(_awaiting(waits))
    assert finding.culprit is not None and finding.culprit.function == "fetch_quote"
    assert finding.evidence["awaiting"] == "BaseSelectorEventLoop.sock_connect"


def test_an_installed_librarys_read_counts_and_the_programs_own_future_does_not() -> None:
    """aiohttp's read is an installed package's coroutine (not the standard library's);
    a task awaiting a future of the program's own is not waiting for I/O."""
    response = (
        ("DataQueue.read", "/venv/lib/python3.12/site-packages/aiohttp/streams.py", 680),
        ("ClientResponse.start", "/venv/lib/python3.12/site-packages/aiohttp/client_reqrep.py", 1050),
        ("fetch_quote", "/srv/quotes.py", 27),
    )
    own = (("wait_for_reply", "/srv/quotes.py", 40), ("fetch_quote", "/srv/quotes.py", 28))
    [finding] = _task_io(_awaiting([(10 + k, 0, response, 300) for k in range(3)]))
    assert finding.evidence["awaiting"] == "DataQueue.read" and finding.culprit is not None
    assert finding.culprit.function == "fetch_quote"
    assert _task_io(_awaiting([(10 + k, 0, own, 300) for k in range(3)])) == []
    # names are read by their words: asyncio.to_thread waits for a thread pool, not a read
    offloaded = (("to_thread", "/py/lib/python3.12/asyncio/threads.py", 25), ("handle", "/srv/app.py", 21))
    assert _task_io(_awaiting([(10 + k, 0, offloaded, 300) for k in range(3)])) == []


#: ``await proc.communicate()``: asyncio's reader task of one of the child's pipes, and
#: its parent, the program's task in communicate
PIPE_READER = (
    ("StreamReader._wait_for_data", "/py/lib/python3.12/asyncio/streams.py", 540),
    ("StreamReader.read", "/py/lib/python3.12/asyncio/streams.py", 700),
    ("Process._read_stream", "/py/lib/python3.12/asyncio/subprocess.py", 180),
)
COMMUNICATING = (
    ("Process.communicate", "/py/lib/python3.12/asyncio/subprocess.py", 195),
    ("convert", "/srv/media.py", 12),
)


def test_tasks_reading_a_subprocess_output_are_told_as_waiting_for_it() -> None:
    """``await proc.communicate()`` reads the child's pipes in tasks of asyncio's own
    (``Process._read_stream``): I/O, but the time is the child's, and the advice is about it."""
    reader, caller = PIPE_READER, COMMUNICATING
    waits = [(20 + k, 10 + k, reader, 400) for k in range(3)] + [(10 + k, 0, caller, 450) for k in range(3)]
    [finding] = _task_io(_awaiting(waits))
    assert finding.culprit is not None and finding.culprit.function == "convert"
    assert "waited" in finding.title and "for a subprocess's output" in finding.title
    assert finding.evidence["waiting_for"] == "a subprocess" and "child" in finding.hint
    # a socket read stays the network's
    [network] = _task_io(_awaiting([(10 + k, 0, READ, 300) for k in range(4)]))
    assert "on I/O" in network.title and "waiting_for" not in network.evidence


@pytest.mark.parametrize(
    "program",
    [
        "healthy_asyncio_server",
        "healthy_aiohttp_websockets",
        "healthy_tcp_server_threads",
        "healthy_fastapi_websockets",
    ],
)
def test_a_servers_idle_connections_are_not_reported(program: str, tmp_path: Path) -> None:
    """Real servers with connected clients (planted, on loopback): an asyncio.start_server
    whose handlers sit in readline for the clients' next commands, an aiohttp WebSocket
    service whose handlers sit in ws.receive, a socketserver thread per connection
    reading its client's next line, a FastAPI WebSocket service on uvicorn (handlers in
    receive_text, its connections' reader tasks, uvicorn's lifespan task)."""
    findings = findings_of(record_named(program, tmp_path))
    idle = [f for f in findings if f.rule in ("io-wait", "queue-starved")]
    assert not [f for f in idle if f.score >= INFO], [(f.score, f.title) for f in idle]


@pytest.mark.parametrize("program", ["healthy_subscriber_threads", "healthy_redis_workers"])
def test_threads_listening_to_a_feed_are_not_reported(program: str, tmp_path: Path) -> None:
    """A real pub/sub listener (planted, sockets on loopback): its threads sit in recv
    most of their lives, and the report does not make that an I/O problem; nor job-queue
    workers (redis-py's BLPOP, as RQ's) idle waiting for their next job."""
    findings = findings_of(record_named(program, tmp_path))
    io = [f for f in findings if f.rule == "io-wait"]
    assert not [f for f in io if f.score >= INFO], [(f.score, f.title) for f in io]


def test_a_childs_two_pipe_readers_count_its_wait_once() -> None:
    """``communicate`` reads stdout and stderr in a task each, side by side: one child's
    400 ms is 400 ms of waiting, not 800."""
    readers = [(20 + 2 * k + pipe, 10 + k, PIPE_READER, 400) for k in range(3) for pipe in (0, 1)]
    [finding] = _task_io(_awaiting(readers + [(10 + k, 0, COMMUNICATING, 450) for k in range(3)]))
    assert finding.evidence["waiting_for"] == "a subprocess"
    assert finding.evidence["wait_ns"] == 3 * 400 * MS and finding.evidence["tasks"] == 6
    # of the pairs' lives (1 s each here, counted once per child): 1.2 s of 3 s
    assert finding.evidence["wait_share"] == 0.4


def test_a_connection_handler_waiting_for_its_clients_next_request_is_not_io_wait() -> None:
    """``asyncio.start_server``'s handler tasks (made by the protocol's ``connection_made``)
    reading their own stream wait for their clients: idle keep-alive connections, named
    apart. The same handlers waiting for a downstream service through its client library,
    and tasks made elsewhere reading a stream, are waiting for I/O."""
    next_request = (
        ("StreamReader._wait_for_data", "/py/lib/python3.12/asyncio/streams.py", 540),
        ("StreamReader.readline", "/py/lib/python3.12/asyncio/streams.py", 568),
        ("handle", "/srv/server.py", 12),
    )
    handlers = [(10 + k, 0, next_request, 400) for k in range(4)]
    assert _task_io(_awaiting(handlers, made_by="StreamReaderProtocol.connection_made")) == []
    # not made by a connection: a client reading its answers
    [client] = _task_io(_awaiting(handlers))
    assert client.culprit is not None and client.culprit.function == "handle"
    # a handler awaiting a downstream service through a client library counts
    downstream = (
        ("StreamReader._wait_for_data", "/py/lib/python3.12/asyncio/streams.py", 540),
        ("StreamReader.read", "/py/lib/python3.12/asyncio/streams.py", 700),
        ("Connection.read_response", "/venv/lib/python3.12/site-packages/redis/asyncio/connection.py", 560),
        ("handle", "/srv/server.py", 14),
    )
    mixed = handlers + [(20 + k, 0, downstream, 300) for k in range(4)]
    [finding] = _task_io(_awaiting(mixed, made_by="StreamReaderProtocol.connection_made"))
    assert finding.evidence["wait_ns"] == 4 * 300 * MS
    assert finding.evidence["handlers_idle_ns"] == 4 * 400 * MS and "next requests" in finding.title


def test_a_library_read_waiting_on_an_asyncio_event_is_an_io_wait() -> None:
    """anyio's socket streams (httpx's async client) wait for data on an asyncio.Event:
    recorded as the Event's wait (TASK_BLOCK), from the read's line; still a read."""
    receive = (
        ("SocketStream.receive", "/venv/lib/python3.12/site-packages/anyio/_backends/_asyncio.py", 1240),
        ("AnyIOStream.read", "/venv/lib/python3.12/site-packages/httpcore/_backends/anyio.py", 35),
        ("fetch_quote", "/srv/quotes.py", 27),
    )
    g = Gen(seq=1, start_ns=0, end_ns=1000 * MS)
    g.event(LOOP, Kind.THREAD_START, 0, tid=LOOP, name="MainThread", ident=LOOP, parent=0)
    for task in range(10, 14):
        g.event(LOOP, Kind.TASK_CREATE, 0, task=task, name=f"t{task}", coro="fetch_quote", parent=0)
    for k, task in enumerate(range(10, 14)):  # each steps once, blocks in the read, then once more
        g.event(LOOP, Kind.TASK_STEP_BEGIN, (k + 1) * MS, task=task)
        g.event(LOOP, Kind.TASK_BLOCK, (k + 1) * MS + 100, task=task, reason=BlockReason.CONDITION,
                obj=77 + task, what="asyncio.Event.wait", site=5, stack=receive)  # fmt: skip
        g.event(LOOP, Kind.TASK_STEP_END, (k + 1) * MS + 200, task=task)
    for k, task in enumerate(range(10, 14)):
        g.event(LOOP, Kind.TASK_STEP_BEGIN, (401 + k) * MS, task=task)
        g.event(LOOP, Kind.TASK_STEP_END, (401 + k) * MS + 100, task=task)
    [finding] = _task_io(trace([g]))
    assert finding.evidence["awaiting"] == "SocketStream.receive"
    assert finding.culprit is not None and finding.culprit.function == "fetch_quote"
    assert finding.evidence["wait_ns"] >= 4 * 399 * MS and finding.score >= INFO


#: one turn of ``_subscribed``'s reads: its wait, from a step's end to the next step
TURN = 301 * MS - 500


def _subscribed(
    sends: tuple[bool, ...],
    *,
    parent: int = 5,
    meta: bool = True,
    stack: tuple[tuple[str, str, int], ...] = READ,
) -> bytes:
    """Two asyncio tasks (made by task 5, or top-level) each reading a socket in turns
    (``TURN``): a step before each turn, which sent on a socket (TASK_SENT) where ``sends``
    says so, and a last step; the chain of each wait (``stack``) looked at mid-wait."""
    g = Gen(seq=1, start_ns=0, end_ns=2000 * MS)
    g.event(LOOP, Kind.THREAD_START, 0, tid=LOOP, name="MainThread", ident=LOOP, parent=0)
    for task in (10, 11):
        g.event(LOOP, Kind.TASK_CREATE, 0, task=task, name=f"t{task}", coro="listen", parent=parent)
    for turn, sent in enumerate(sends):
        at = 1 * MS + turn * 301 * MS
        for k, task in enumerate((10, 11)):
            g.event(LOOP, Kind.TASK_STEP_BEGIN, at + k * 1000, task=task)
            g.event(LOOP, Kind.TASK_STEP_END, at + k * 1000 + 500, task=task)
            if sent:
                g.event(LOOP, Kind.TASK_SENT, at + k * 1000 + 500, task=task)
            g.event(
                8,
                Kind.TASK_WAIT,
                at + 150 * MS + k,
                task=task,
                reason=BlockReason.AWAIT,
                what="",
                stack=stack,
            )
    end = 1 * MS + len(sends) * 301 * MS
    for k, task in enumerate((10, 11)):
        g.event(LOOP, Kind.TASK_STEP_BEGIN, end + k * 1000, task=task)
        g.event(LOOP, Kind.TASK_STEP_END, end + k * 1000 + 500, task=task)
    for b in g.batches:
        b.events.sort(key=lambda e: e[1])
    return trace([g], meta={"blocking.step_sends": "TASK_SENT"} if meta else None)


def test_tasks_listening_to_a_feed_are_not_an_io_wait() -> None:
    """A task's receive after a step that sent nothing since its previous wait waits for
    the partner to speak on its own (a subscription's next message): named apart, not
    counted. A receive after a step that sent waits for the answer, and counts."""
    # subscribe (send), then five pushes: only the first turn waits for an answer
    listener = _subscribed((True, False, False, False, False, False))
    findings = _task_io(listener)
    assert not [f for f in findings if f.score >= INFO], [(f.score, f.title) for f in findings]
    [quiet] = findings
    assert quiet.evidence["wait_ns"] == 2 * TURN
    assert quiet.evidence["listening_ns"] == 2 * 5 * TURN and "a subscription or a feed" in quiet.title
    # a client asking every time: every wait is for its answer
    [client] = _task_io(_subscribed((True,) * 6))
    assert client.evidence["wait_ns"] == 2 * 6 * TURN and client.evidence["listening_ns"] is None
    assert client.score >= INFO
    # the program's main task (no parent), and traces that do not record steps that send
    for data in (
        _subscribed((True,) + (False,) * 5, parent=0),
        _subscribed((True,) + (False,) * 5, meta=False),
    ):
        [counted] = _task_io(data)
        assert counted.evidence["wait_ns"] == 2 * 6 * TURN and counted.evidence["listening_ns"] is None


#: aiohttp's WebSocket client waiting for its next message (``async for msg in ws``)
NEXT_MESSAGE = (
    ("ClientWebSocketResponse.receive", "/venv/lib/python3.12/site-packages/aiohttp/client_ws.py", 390),
    ("ClientWebSocketResponse.__anext__", "/venv/lib/python3.12/site-packages/aiohttp/client_ws.py", 470),
    ("follow_prices", "/srv/bot.py", 31),
)


def test_the_main_task_following_a_websocket_is_listening() -> None:
    """A bot whose ``asyncio.run`` coroutine follows a WebSocket feed: the next message is
    the server's to send, in the main task too. Asking each time (a send before each
    receive) is a wait for answers, and counts."""
    [quiet] = _task_io(_subscribed((True,) + (False,) * 5, parent=0, stack=NEXT_MESSAGE))
    assert quiet.score < INFO and quiet.evidence["listening_ns"] == 2 * 5 * TURN, quiet.title
    [asking] = _task_io(_subscribed((True,) * 6, parent=0, stack=NEXT_MESSAGE))
    assert asking.score >= INFO and asking.evidence["wait_ns"] == 2 * 6 * TURN
    assert asking.evidence["listening_ns"] is None


@pytest.mark.parametrize("program", ["healthy_subscriber_asyncio", "healthy_websocket_bots"])
def test_tasks_listening_to_real_feeds_are_not_reported(program: str, tmp_path: Path) -> None:
    """Real listeners (planted, on loopback): a task following a broker's line feed over
    asyncio streams and one following an aiohttp WebSocket that pushes prices; bots whose
    main coroutine follows a WebSocket feed (websockets, aiohttp), and a thread iterating
    one with websockets' sync client (its wait is in C: no untraced wait either)."""
    findings = findings_of(record_named(program, tmp_path))
    waits = [f for f in findings if f.rule in ("io-wait", "untraced-wait")]
    assert not [f for f in waits if f.score >= INFO], [(f.score, f.title) for f in waits]


def test_an_asgi_servers_receive_and_a_connections_life_are_not_io_waits() -> None:
    """uvicorn's ``receive`` (the lifespan task waiting for the shutdown all the server's
    life, a WebSocket handler for its client's next message), and an aiohttp handler
    reading its request's body, are a server waiting for its client; websockets'
    ``close_connection`` awaits its connection's reader *task* (its name has
    "connection", not "connect"): none is I/O the program waits for. The same tasks
    reading a socket would be."""
    venv = "/venv/lib/python3.12/site-packages"
    lifespan = (  # (asyncio's own frames are not in a TASK_BLOCK's chain: Queue.get)
        ("LifespanOn.receive", f"{venv}/uvicorn/lifespan/on.py", 137),
        ("Router.lifespan", f"{venv}/starlette/routing.py", 700),
    )
    next_message = (
        ("WebSocketProtocol.asgi_receive", f"{venv}/uvicorn/protocols/websockets/websockets_impl.py", 370),
        ("WebSocket.receive_text", f"{venv}/starlette/websockets.py", 120),
        ("chat", "/srv/chat.py", 25),
    )
    upload = (  # an aiohttp handler reading its client's (slow) upload
        ("StreamReader._wait", f"{venv}/aiohttp/streams.py", 347),
        ("StreamReader.readany", f"{venv}/aiohttp/streams.py", 460),
        ("BaseRequest.read", f"{venv}/aiohttp/web_request.py", 750),
        ("save_upload", "/srv/files.py", 12),
    )
    closing = (("WebSocketCommonProtocol.close_connection", f"{venv}/websockets/legacy/protocol.py", 1290),)
    idle = [(10, 0, lifespan, 900), (14, 0, upload, 300)] + [(11 + k, 0, next_message, 400) for k in range(3)]
    [named] = _task_io(_awaiting([*idle, (20, 0, READ, 60)]))
    assert named.evidence["wait_ns"] == 60 * MS
    assert named.evidence["handlers_idle_ns"] == (900 + 300 + 3 * 400) * MS
    assert _task_io(_awaiting([(10 + k, 0, closing, 900) for k in range(3)])) == []
    # a wait for another task (what="Task") is that task's, whatever the chain's name
    assert _task_io(_awaiting([(10 + k, 0, READ, 900) for k in range(3)], what="Task")) == []


#: aiohttp's read of a response's body: it waits in StreamReader._wait, inside readany
BODY = (
    ("StreamReader._wait", "/venv/lib/python3.12/site-packages/aiohttp/streams.py", 347),
    ("StreamReader.readany", "/venv/lib/python3.12/site-packages/aiohttp/streams.py", 460),
    ("StreamReader.read", "/venv/lib/python3.12/site-packages/aiohttp/streams.py", 420),
    ("ClientResponse.read", "/venv/lib/python3.12/site-packages/aiohttp/client_reqrep.py", 1210),
    ("download", "/srv/reports.py", 19),
)


def test_a_response_body_trickling_in_is_an_io_wait() -> None:
    """aiohttp's body read waits in ``StreamReader._wait`` (no I/O in its name), called by
    ``readany``: the chain's innermost library coroutines say I/O. Its chunks arrive with
    nothing sent in between, yet the program asked for them: an HTTP response's body is
    never a feed's next push."""
    [finding] = _task_io(_awaiting([(10 + k, 0, BODY, 300) for k in range(3)]))
    assert finding.evidence["awaiting"] == "StreamReader.readany"
    assert finding.culprit is not None and finding.culprit.function == "download"
    # chunk after chunk, nothing sent since the request: still the response it waits for
    [trickle] = _task_io(_subscribed((True, False, False, False), stack=BODY))
    assert trickle.evidence["wait_ns"] == 2 * 4 * TURN and trickle.evidence["listening_ns"] is None


def _redis_worker(command: str) -> bytes:
    """Two worker threads for 2 s, each in a loop of 400 ms socket reads inside redis-py's
    ``command`` (a thread's IO block, its stack down to the worker's loop)."""
    venv = "/venv/lib/python3.12/site-packages"
    stack = (
        ("SocketBuffer._read_from_socket", f"{venv}/redis/_parsers/socket.py", 65),
        ("_RESP2Parser.read_response", f"{venv}/redis/_parsers/resp2.py", 15),
        ("Redis.execute_command", f"{venv}/redis/client.py", 620),
        (command, f"{venv}/redis/commands/core.py", 2700),
        ("work", "/srv/worker.py", 21),
    )
    g = Gen(seq=1, start_ns=0, end_ns=2000 * MS)
    for tid in (1, 2):
        g.event(tid, Kind.THREAD_START, 0, tid=tid, name=f"rq-worker-{tid}", ident=tid, parent=0)
        for k in range(4):
            start = 10 * MS + k * 450 * MS + tid * MS
            g.event(tid, Kind.BLOCK_BEGIN, start, reason=BlockReason.IO, obj=64 * tid | 1, stack=stack)
            g.event(tid, Kind.BLOCK_END, start + MS, reason=BlockReason.IO, obj=64 * tid | 1, waker=0)
            g.event(tid, Kind.BLOCK_BEGIN, start + 2 * MS, reason=BlockReason.IO, obj=64 * tid, stack=stack)
            g.event(tid, Kind.BLOCK_END, start + 402 * MS, reason=BlockReason.IO, obj=64 * tid, waker=0)
    return trace([g], meta={"blocking.io_sends": "bit 0"})


def test_a_worker_waiting_for_its_next_job_in_a_blocking_pop_is_idle() -> None:
    """An RQ worker waits for its next job in redis-py's BLPOP: the command is sent, and
    the answer is whatever job comes next. Idle consumers, not a slow partner; the same
    reads answering a GET are waits for the answer."""
    assert [
        f for f in find(build(loads(_redis_worker("ListCommands.blpop"))), strict=True) if f.rule == "io-wait"
    ] == []
    [slow] = [
        f
        for f in find(build(loads(_redis_worker("BasicKeyCommands.get"))), strict=True)
        if f.rule == "io-wait"
    ]
    assert (
        slow.culprit is not None
        and slow.culprit.function == "work"
        and slow.evidence["wait_ns"] >= 8 * 400 * MS
    )


def test_calls_that_run_into_their_timeout_are_told_as_timeouts(tmp_path: Path) -> None:
    """Workers whose requests calls (timeout=0.3) run into their timeout half the time:
    the story is the timeouts (how many, how long each, where), not "add timeouts"."""
    program = "timeouts_threads"
    finding = top_warning(findings_of(record_named(program, tmp_path)), "io-wait")
    assert "ran into their timeout" in finding.title, finding.title
    assert finding.evidence["timed_out"] >= 5, finding.evidence
    assert 250 * MS <= finding.evidence["timeout_median_ns"] <= 450 * MS, finding.evidence
    assert finding.evidence["timed_out_ns"] >= 0.5 * finding.evidence["wait_ns"], finding.evidence
    assert finding.culprit is not None and finding.culprit.function == "fetch_quote"
    assert finding.culprit.line == marked_line(PROGRAMS / f"{program}.py", "# TIMEOUT LINE")
    assert "circuit breaker" in finding.hint and "add timeouts" not in finding.hint


def test_a_few_timeouts_among_many_slow_reads_are_said_not_made_the_story() -> None:
    """Synthetic: one read in forty ran into its timeout; the threads mostly waited for
    slow answers. The finding counts the timeout only if it is a story of its own."""
    g = Gen(seq=1, start_ns=0, end_ns=2000 * MS)
    read = (("SocketIO.readinto", "/py/socket.py", 700), ("fetch", "/srv/app.py", 12))
    for tid in (1, 2):
        g.event(tid, Kind.THREAD_START, 0, tid=tid, name=f"worker-{tid}", ident=tid, parent=0)
        for k in range(40):
            start = k * 45 * MS + MS
            end = start + 40 * MS
            timed_out = tid == 1 and k == 7
            g.event(tid, Kind.BLOCK_BEGIN, start, reason=BlockReason.IO, obj=16 * tid, stack=read)
            g.event(
                tid,
                Kind.BLOCK_END,
                end,
                reason=BlockReason.IO,
                obj=16 * tid | (IO_TIMED_OUT if timed_out else 0),
                waker=0,
            )
    model = build(loads(trace([g])))
    assert [b.obj for b in model.blocks if b.timed_out] == [16]  # the bit is taken out of obj
    (finding,) = [f for f in find(model) if f.rule == "io-wait"]
    assert finding.evidence["timed_out"] is None and "timeout" not in finding.title
    assert "add timeouts" in finding.hint


def test_tasks_whose_calls_run_into_their_timeout_are_told_as_timeouts(tmp_path: Path) -> None:
    """asyncio tasks whose aiohttp calls (ClientTimeout total=0.3) run into their timeout
    half the time: aiohttp's timer is recorded as it fires (TASK_TIMEOUT), and the story
    is the timeouts, not "add timeouts"."""
    finding = top_warning(findings_of(record_named("timeouts_asyncio", tmp_path)), "io-wait")
    assert "ran into a timeout" in finding.title, finding.title
    assert finding.evidence["timed_out"] >= 5, finding.evidence
    assert finding.culprit is not None and finding.culprit.function == "fetch_quote"
    assert "circuit breaker" in finding.hint and "Add timeouts" not in finding.hint


def test_a_timeout_that_paces_an_idle_consumer_is_no_failed_call(tmp_path: Path) -> None:
    """Workers that wrap ``queue.get()`` in ``asyncio.timeout(0.05)`` to look at a stop
    flag: their timeouts run out all the time, by design, and are not I/O. The I/O waits
    of the other tasks (a slow download) are told without any timeout."""
    findings = findings_of(record_named("healthy_polling_consumer_asyncio", tmp_path))
    for finding in findings:
        assert "timeout" not in finding.title, finding.title
        assert not finding.evidence.get("timed_out"), finding.evidence
