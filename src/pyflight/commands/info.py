"""``pyflight info FILE`` (what a trace holds) or ``pyflight info --self`` (the
installation: version, Python, recording core)."""

from __future__ import annotations

import argparse
import sys

from pyflight.commands.common import CommandError, read_trace

HELP = "describe a trace file (or, with --self, this installation)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", help="a .pyfl trace")
    parser.add_argument(
        "--self", dest="self_info", action="store_true", help="show the recording core in use"
    )


def version() -> str:
    from pyflight import __version__

    return f"pyflight {__version__}"


def run(args: argparse.Namespace) -> int:
    if args.self_info:
        from pyflight import core

        print(version())
        print(f"python: {sys.version.split()[0]} ({sys.executable})")
        print(f"core: {core.BACKEND_NAME}" + (f" ({core.fallback_reason})" if core.fallback_reason else ""))
        return 0
    if not args.file:
        raise CommandError("info needs a FILE (or --self)")
    from pyflight.format.reader import describe

    trace = read_trace(args.file)
    print(describe(trace))
    from pyflight.budget import describe_budget

    budget = describe_budget(trace.meta)
    if budget:
        print("\n" + "\n".join(budget))
    return 0
