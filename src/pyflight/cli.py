"""The ``pyflight`` command line (also ``python -m pyflight``)."""

from __future__ import annotations

import argparse
import os
import runpy
import signal
import sys
import traceback
from collections.abc import Sequence
from types import FrameType
from typing import NoReturn

EXIT_USAGE = 2
EXIT_BAD_TRACE = 1


class _Parser(argparse.ArgumentParser):
    """Bad arguments get one line on stderr and exit code 2, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    sys.stderr.write(f"pyflight: error: {message}\n")
    return code


def _size(text: str) -> int:
    """Parse a byte count with an optional K/M/G suffix (powers of 1024)."""
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    cleaned = text.strip().lower().removesuffix("ib").removesuffix("b")
    factor = units.get(cleaned[-1:], 1)
    number = cleaned[:-1] if cleaned[-1:] in units else cleaned
    try:
        value = int(float(number) * factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 10M)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pyflight", description="Always-on flight recorder for Python.")
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    info = commands.add_parser("info", help="describe a trace file (or, with --self, this installation)")
    info.add_argument("file", nargs="?", help="a .pyfl trace")
    info.add_argument("--self", dest="self_info", action="store_true", help="show the recording core in use")

    run = commands.add_parser("run", help="run a program under the recorder, write the window when it exits")
    run.add_argument("-o", "--output", default=None, help="trace file to write (default pyflight-PID.pyfl)")
    run.add_argument("--min-age", type=_seconds, default=10.0, help="seconds of history to keep (default 10)")
    run.add_argument("--max-bytes", type=_size, default=10 * 2**20, help="window size cap (default 10M)")
    run.add_argument("-m", dest="module", default=None, help="run a library module as a script")
    run.add_argument("target", nargs="?", help="script path (or the first argument with -m)")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the program")

    demo = commands.add_parser("demo", help="record a small ping-pong workload and describe the snapshot")
    demo.add_argument("-o", "--output", default="pyflight-demo.pyfl", help="where to write the snapshot")
    demo.add_argument("--seconds", type=_seconds, default=2.0, help="how long to play (default 2)")
    return parser


def _version() -> str:
    from pyflight import __version__

    return f"pyflight {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "info":
        return _cmd_info(args)
    if args.command == "run":
        return _cmd_run(args)
    if args.command == "demo":
        return _cmd_demo(args)
    parser.print_help()
    return EXIT_USAGE


def _cmd_info(args: argparse.Namespace) -> int:
    if args.self_info:
        from pyflight import core

        print(_version())
        print(f"python: {sys.version.split()[0]} ({sys.executable})")
        print(f"core: {core.BACKEND_NAME}" + (f" ({core.fallback_reason})" if core.fallback_reason else ""))
        return 0
    if not args.file:
        return _fail("info needs a FILE (or --self)")
    from pyflight.errors import TraceFormatError
    from pyflight.format.reader import describe, load

    try:
        trace = load(args.file)
    except OSError as exc:
        return _fail(f"cannot read {args.file}: {exc.strerror or exc}")
    except TraceFormatError as exc:
        return _fail(f"{args.file} is not a readable pyflight trace: {exc}", EXIT_BAD_TRACE)
    print(describe(trace))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from pyflight.recorder import FlightRecorder

    if args.module is None and args.target is None:
        return _fail("run needs a SCRIPT or -m MODULE")
    program_args = list(args.args)
    if args.module is not None and args.target is not None:
        program_args.insert(0, args.target)
    if args.module is None and not os.path.exists(args.target):
        return _fail(f"no such script: {args.target}")
    output = args.output or f"pyflight-{os.getpid()}.pyfl"

    recorder = FlightRecorder(min_age=args.min_age, max_bytes=args.max_bytes)
    recorder.start()

    def save(reason: str) -> None:
        try:
            size = recorder.write_to(output, reason=reason)
            sys.stderr.write(f"pyflight: wrote {size} bytes to {output}\n")
        except Exception as exc:
            sys.stderr.write(f"pyflight: could not write {output}: {exc}\n")

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        save("sigterm")
        recorder.stop()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    code: int = 0
    try:
        if args.module is not None:
            sys.argv = [args.module, *program_args]
            runpy.run_module(args.module, run_name="__main__", alter_sys=True)
        else:
            sys.argv = [args.target, *program_args]
            sys.path.insert(0, os.path.dirname(os.path.abspath(args.target)))
            runpy.run_path(args.target, run_name="__main__")
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        save("exit")
        recorder.stop()
    return code


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    sys.stderr.write(f"{exc.code}\n")
    return 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from pyflight.demo import run_demo

    return run_demo(args.output, args.seconds)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
