"""``pyflight export FILE --format F -o OUT [--profile P]``: a trace in another tool's
format (Perfetto, Chrome JSON, pprof, folded stacks, speedscope; docs/export.md)."""

from __future__ import annotations

import argparse
import sys

from pyflight.commands.common import EXIT_USAGE, CommandError, read_trace, write_output

HELP = "export a trace to perfetto/chrome/pprof/folded/speedscope"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pyflight.export import FORMATS, PROFILES

    parser.add_argument("file", metavar="FILE", help="trace file written by pyflight")
    parser.add_argument("--format", "-f", required=True, choices=FORMATS, help="output format")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="file to write (- for stdout)")
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        default=None,
        help="profile for pprof/folded/speedscope (default cpu): cpu, wall, or time blocked per reason",
    )


def run(args: argparse.Namespace) -> int:
    from pyflight.export import PROFILE_FORMATS, export

    fmt: str = args.format
    profile: str | None = args.profile
    if profile is not None and fmt not in PROFILE_FORMATS:
        raise CommandError(f"--profile applies to {', '.join(PROFILE_FORMATS)}, not {fmt}", EXIT_USAGE)
    trace = read_trace(args.file, quiet=True)
    try:
        data = export(trace, fmt, profile)
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    write_output(args.output, data)
    if trace.warnings:
        print(f"pyflight export: {args.file} is damaged; exported what could be read", file=sys.stderr)
    return 0
