"""What ``pyflight view`` does once its arguments are parsed (pyflight.commands.view).

Reads the trace as ``pyflight report`` does (same messages and exit status for a file
that cannot be read or is not a trace), starts serving at once and analyses it (the one
model, the findings, the timeline's rows) in a background thread while the browser
starts: on a big trace the page shows the analysis' progress instead of nothing. Serves
until Ctrl-C or SIGTERM (exit status 0).

Exit status: 0 served and stopped, 1 the file is not a readable trace or cannot be
analysed, 2 the file cannot be read or the address cannot be listened on; 130
interrupted before serving.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING

from pyflight.commands.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, CommandError, gc_paused

if TYPE_CHECKING:  # the server is imported when serving, not when `pyflight run` builds its parser
    from pyflight.format.reader import Trace
    from pyflight.viewer.server import Content, ViewerServer

__all__ = ["run"]

#: how long the rules wait for a page to ask for its first slices before they start
#: anyway, and how long at most for the answer once a page has asked
FIRST_VIEW_WAIT_S = 2.0
FIRST_VIEW_MAX_WAIT_S = 60.0


class _Stop(BaseException):
    """Raised in the main thread by the SIGTERM handler. A BaseException, like
    KeyboardInterrupt: raised while the main thread accepts a connection, an Exception
    would be caught by socketserver's request error handling and the server go on."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def run(args: argparse.Namespace) -> int:
    from pyflight.commands.common import read_trace, read_trace_bytes
    from pyflight.viewer.server import Content

    try:
        data = read_trace_bytes(args.file)
        with gc_paused():  # the trace is millions of long-lived objects
            trace = read_trace(args.file, data)
            # ... kept until the server stops: out of the collector's generations (else
            # the first collections once it is enabled again walk them all)
            gc.freeze()
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return EXIT_INTERRUPTED
    return _serve(args, trace, Content(trace=data, trace_name=os.path.basename(args.file)))


def _analyse(path: str, trace: Trace, content: Content, server: ViewerServer) -> None:
    """The timeline's rows, then the report, handed to ``content`` as each is done: the
    page draws the timeline while the rules run. A model that cannot be built is said on
    stderr and stops the server (the command then exits 1); rules that fail are said on
    stderr and in the page, and the timeline stays served."""
    from pyflight.analysis.model import build
    from pyflight.viewer.api import TimelineApi

    def progress(done: float) -> None:
        content.progress = 0.95 * done

    gc.disable()  # the model is millions of long-lived objects: see warm_up
    try:
        try:
            model = build(trace, progress=progress)
            api = TimelineApi(model)
        except Exception as exc:
            _failed(f"cannot analyse {path}: {type(exc).__name__}: {exc}", content)
            server.analysis_failed = True
            server.shutdown()
            return
        content.set_timeline(api)
        # the page's first slices before the rules: both want the GIL, the user sees the
        # timeline first (with no page asking, the rules wait a moment only)
        if not content.first_view.wait(FIRST_VIEW_WAIT_S) and content.first_view_asked.is_set():
            content.first_view.wait(FIRST_VIEW_MAX_WAIT_S)
        try:
            from pyflight.analysis.result import report_of  # the rules: after the first slices

            report = report_of(model)
        except Exception as exc:
            _failed(f"cannot find the problems in {path}: {type(exc).__name__}: {exc}", content)
        else:
            content.set_analysis(report)
    finally:
        gc.freeze()  # the model, kept as long as the server runs: see run()
        gc.enable()
    api.warm_up()  # every row's levels of detail, while the page asks for its first ones


def _failed(message: str, content: Content) -> None:
    content.set_error(message)
    print(f"pyflight view: {message}", file=sys.stderr, flush=True)


def _serve(args: argparse.Namespace, trace: Trace, content: Content) -> int:
    import webbrowser

    from pyflight.viewer.server import ViewerServer, is_loopback

    try:
        server = ViewerServer(args.host, args.port, content)
    except OSError as exc:
        hint = " (try --port 0)" if args.port else ""
        raise CommandError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}{hint}", EXIT_USAGE
        ) from None
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        if not is_loopback(args.host):
            print(
                f"pyflight view: warning: listening on {args.host}: "
                "anyone who can reach this address can read the trace",
                file=sys.stderr,
                flush=True,
            )
        name = args.file if args.file.isprintable() else ascii(args.file)  # one line, encodable
        print(f"pyflight view: serving {name} at {server.url()} (Ctrl-C to stop)", flush=True)
        if args.browser:
            wildcard = args.host in ("0.0.0.0", "::", "")
            url = server.url("127.0.0.1") if wildcard else server.url()
            # some browsers (text ones) keep the terminal: never hold the server up for them
            threading.Thread(
                target=webbrowser.open, args=(url,), name="pyflight-view-browser", daemon=True
            ).start()
        threading.Thread(
            target=_analyse, args=(name, trace, content, server), name="pyflight-view-analysis", daemon=True
        ).start()
        del trace  # the analysis thread holds it as long as it needs it
        server.serve_forever()
        if server.analysis_failed:
            return EXIT_FAILED
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
        # The trace and the model are millions of objects: without this the interpreter's
        # last collections walk all of them on the way out (~20 s after Ctrl-C or SIGTERM
        # with 1.5 M events on a loaded CPU). Frozen objects are left to the OS.
        gc.freeze()
    return 0
