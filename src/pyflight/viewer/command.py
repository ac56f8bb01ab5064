"""What ``pyflight view`` does once its arguments are parsed (pyflight.commands.view).

Loads and analyses the trace once, as ``pyflight report`` does (same messages and exit
status for a file that cannot be read or is not a trace), then serves the report on a
local web server until Ctrl-C or SIGTERM (exit status 0).

Exit status: 0 served and stopped, 1 the file is not a readable trace, 2 the file cannot
be read or the address cannot be listened on; 130 interrupted before serving.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING

from pyflight.commands.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, CommandError, gc_paused

if TYPE_CHECKING:  # the server is imported when serving, not when `pyflight run` builds its parser
    from pyflight.viewer.server import Content

__all__ = ["run"]


class _Stop(Exception):
    """Raised in the main thread by the SIGTERM handler."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def run(args: argparse.Namespace) -> int:
    try:
        content = _prepare(args.file)
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return EXIT_INTERRUPTED
    return _serve(args, content)


def _prepare(path: str) -> Content:
    """The pages to serve (CommandError if the trace cannot be read or analysed)."""
    from pyflight.commands.report import load_report
    from pyflight.report.html import render
    from pyflight.report.json_report import dumps
    from pyflight.viewer.api import TimelineApi
    from pyflight.viewer.server import Content

    with gc_paused():  # the trace and its model are millions of long-lived objects
        data, report = load_report(path)
        try:
            html = render(report).encode("utf-8", "replace")
            json = dumps(report).encode("utf-8", "replace")
            api = TimelineApi(report)
        except Exception as exc:
            raise CommandError(f"cannot render {path}: {type(exc).__name__}: {exc}", EXIT_FAILED) from None
    return Content(html=html, json=json, trace=data, trace_name=os.path.basename(path), api=api)


def _serve(args: argparse.Namespace, content: Content) -> int:
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
        server.serve_forever()
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
    return 0
