"""``pyflight export FILE --format F -o OUT [--profile P]``: wired into the CLI by cli.py."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable

from pyflight.errors import TraceFormatError
from pyflight.export import FORMATS, PROFILE_FORMATS, PROFILES
from pyflight.format.reader import Trace, load
from pyflight.format.writer import write_bytes_atomically

__all__ = ["EXPORTERS", "add_arguments", "export", "run", "write_atomically"]

Exporter = Callable[[Trace, "str | None"], bytes]


def _exporters() -> dict[str, Exporter]:
    from pyflight.export.chrome import export_chrome
    from pyflight.export.folded import export_folded
    from pyflight.export.perfetto import export_perfetto
    from pyflight.export.pprof import export_pprof
    from pyflight.export.speedscope import export_speedscope

    return {
        "perfetto": export_perfetto,
        "chrome": export_chrome,
        "pprof": export_pprof,
        "folded": export_folded,
        "speedscope": export_speedscope,
    }


EXPORTERS = _exporters()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="trace file written by pyflight")
    parser.add_argument("--format", "-f", required=True, choices=FORMATS, help="output format")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="file to write")
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        default=None,
        help="profile for pprof/folded/speedscope (default cpu): cpu, wall, or time blocked per reason",
    )


def export(trace: Trace, fmt: str, profile: str | None = None) -> bytes:
    """The bytes of ``trace`` exported as ``fmt``."""
    if fmt not in EXPORTERS:
        raise ValueError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    if profile is not None and profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r} (choose from {', '.join(PROFILES)})")
    return EXPORTERS[fmt](trace, profile)


def write_atomically(path: str, data: bytes) -> None:
    """Write beside ``path`` with mode 0600, fsync, rename into place."""
    write_bytes_atomically(path, data)


def run(args: argparse.Namespace) -> int:
    """0 on success; 1 (one line on stderr) if the trace cannot be read or the output
    not written; 2 for arguments that do not go together."""
    fmt: str = args.format
    profile: str | None = args.profile
    if profile is not None and fmt not in PROFILE_FORMATS:
        print(
            f"pyflight export: --profile applies to {', '.join(PROFILE_FORMATS)}, not {fmt}", file=sys.stderr
        )
        return 2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trace = load(args.file)
    except (TraceFormatError, OSError) as exc:
        print(f"pyflight export: cannot read {args.file}: {exc}", file=sys.stderr)
        return 1
    try:
        data = export(trace, fmt, profile)
    except ValueError as exc:
        print(f"pyflight export: {exc}", file=sys.stderr)
        return 2
    try:
        write_atomically(args.output, data)
    except OSError as exc:
        print(f"pyflight export: cannot write {args.output}: {exc}", file=sys.stderr)
        return 1
    if trace.warnings:
        print(f"pyflight export: {args.file} is damaged; exported what could be read", file=sys.stderr)
    return 0
