"""``pyflight view FILE [--port N] [--host H] [--no-browser]``: analyse the trace once, as
``pyflight report`` does, then serve the report on a local web page until Ctrl-C or
SIGTERM (the serving itself is :mod:`pyflight.viewer.command`)."""

from __future__ import annotations

import argparse

from pyflight.commands import types

HELP = "serve the report of a trace on a local web page"
DEFAULT_PORT = 8780


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="a trace written by pyflight")
    parser.add_argument(
        "--port",
        type=types.port,
        default=DEFAULT_PORT,
        help=f"port to listen on (default {DEFAULT_PORT}; 0: any free one)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; anyone who can reach another can read the trace)",
    )
    parser.add_argument(
        "--no-browser", dest="browser", action="store_false", help="do not open a web browser"
    )


def run(args: argparse.Namespace) -> int:
    from pyflight.viewer.command import run as serve

    return serve(args)
