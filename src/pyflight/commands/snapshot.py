"""``pyflight snapshot PID [-o OUT] [--timeout S]``: ask a process started under
``pyflight run`` for a snapshot now."""

from __future__ import annotations

import argparse

from pyflight.commands import types
from pyflight.commands.common import EXIT_FAILED, EXIT_USAGE, CommandError

HELP = "ask a process started under `pyflight run` for a snapshot now"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pid", type=types.pid, help="process id")
    parser.add_argument(
        "-o", "--output", default=None, help="where to write it (default: a name with time and pid)"
    )
    parser.add_argument("--timeout", type=types.seconds, default=30.0, help="seconds to wait (default 30)")


def run(args: argparse.Namespace) -> int:
    from pyflight.triggers.control import ControlError, NoControlChannel, request_snapshot, write_private_file
    from pyflight.triggers.snapshots import snapshot_filename

    output = args.output or snapshot_filename("snapshot", pid=args.pid)
    try:
        data = request_snapshot(args.pid, timeout=args.timeout)
    except NoControlChannel as exc:  # the pid named on the command line is not one of ours
        raise CommandError(str(exc), EXIT_USAGE) from None
    except ControlError as exc:
        raise CommandError(str(exc), EXIT_FAILED) from None
    try:
        write_private_file(output, data)
    except OSError as exc:
        raise CommandError(f"cannot write {output}: {exc.strerror or exc}", EXIT_USAGE) from None
    print(f"wrote {len(data)} bytes from pid {args.pid} to {output}")
    return 0
