"""``pyflight snapshot PID [-o OUT] [--timeout S] [--workers]``: ask a process started
under ``pyflight run`` for a snapshot now; with ``--workers``, every recorded process
below it too (a pre-fork server's workers), each into ``<OUT stem>-<pid>.pyfl``."""

from __future__ import annotations

import argparse
import os
import sys

from pyflight.commands import types
from pyflight.commands.common import EXIT_FAILED, EXIT_USAGE, CommandError

HELP = "ask a process started under `pyflight run` for a snapshot now"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pid", type=types.pid, help="process id")
    parser.add_argument(
        "-o", "--output", default=None, help="where to write it (default: a name with time and pid)"
    )
    parser.add_argument("--timeout", type=types.seconds, default=30.0, help="seconds to wait (default 30)")
    parser.add_argument(
        "--workers",
        action="store_true",
        help="also snapshot every recorded process below PID (gunicorn/uvicorn workers...), "
        "each into OUT-<pid>.pyfl beside OUT",
    )


def run(args: argparse.Namespace) -> int:
    from pyflight.triggers.control import ControlError, NoControlChannel, request_snapshot, write_private_file
    from pyflight.triggers.snapshots import snapshot_filename

    output = args.output or snapshot_filename("snapshot", pid=args.pid)
    try:
        data = request_snapshot(args.pid, timeout=args.timeout)
    except NoControlChannel as exc:  # the pid named on the command line is not one of ours
        if args.workers and _has_recorded_workers(args.pid):  # a master run with --children-only
            print(f"pyflight: pid {args.pid} itself is not recorded; its workers are", file=sys.stderr)
            return _workers(args, output)
        raise CommandError(str(exc), EXIT_USAGE) from None
    except ControlError as exc:
        raise CommandError(str(exc), EXIT_FAILED) from None
    try:
        write_private_file(output, data)
    except OSError as exc:
        raise CommandError(f"cannot write {output}: {exc.strerror or exc}", EXIT_USAGE) from None
    print(f"wrote {len(data)} bytes from pid {args.pid} to {output}")
    return _workers(args, output)


def _has_recorded_workers(pid: int) -> bool:
    from pyflight.triggers import workers

    return bool(workers.recorded_descendants(pid))


def _workers(args: argparse.Namespace, output: str) -> int:
    """With --workers, snapshot the recorded processes below PID; without, say they exist."""
    from pyflight.triggers import workers
    from pyflight.triggers.control import write_private_file

    pids = workers.recorded_descendants(args.pid)
    if not args.workers:
        if pids:
            print(
                f"pyflight: pid {args.pid} has {len(pids)} recorded worker(s) ({', '.join(map(str, pids))}); "
                "add --workers to snapshot them too",
                file=sys.stderr,
            )
        return 0
    stem, suffix = os.path.splitext(output)
    failed = 0
    for snapshot in workers.gather(pids, timeout=args.timeout):
        if snapshot.data is None:
            print(f"pyflight: no snapshot from worker {snapshot.pid}: {snapshot.error}", file=sys.stderr)
            failed += 1
            continue
        path = f"{stem}-{snapshot.pid}{suffix or '.pyfl'}"
        try:
            write_private_file(path, snapshot.data)
        except OSError as exc:
            raise CommandError(f"cannot write {path}: {exc.strerror or exc}", EXIT_USAGE) from None
        print(f"wrote {len(snapshot.data)} bytes from pid {snapshot.pid} to {path}")
    return EXIT_FAILED if failed else 0
