"""The ``pyflight`` command line (also ``python -m pyflight``)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from pyflight.recorder import FlightRecorder

EXIT_USAGE = 2
EXIT_BAD_TRACE = 1
EXIT_FAILED = 1


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


def _host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[::1]:PORT``, ``:PORT`` or ``PORT`` (host 127.0.0.1)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        host, port = "", text.strip()
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r} (try 127.0.0.1:8765)")
    return host, int(port)


def _source_option(text: str) -> tuple[str, str, object]:
    """``SOURCE.OPTION=VALUE`` (``asyncio.task_wait=stack``): true/false, numbers and none
    are read as such, anything else as text."""
    key, sep, raw = text.partition("=")
    source, dot, option = key.strip().partition(".")
    if not sep or not dot or not source or not option:
        raise argparse.ArgumentTypeError(f"not SOURCE.OPTION=VALUE: {text!r} (try asyncio.task_wait=stack)")
    word = raw.strip()
    value: object
    if word.lower() in ("true", "on", "yes"):
        value = True
    elif word.lower() in ("false", "off", "no"):
        value = False
    elif word.lower() == "none":
        value = None
    else:
        try:
            value = int(word)
        except ValueError:
            try:
                value = float(word)
            except ValueError:
                value = word
    return source, option.strip(), value


def _source_options(pairs: list[tuple[str, str, object]] | None) -> dict[str, dict[str, object]]:
    """The ``--source-option`` values by source, checked the way the recorder will use
    them (ValueError naming what is wrong)."""
    from pyflight.sources import REGISTRY

    options: dict[str, dict[str, object]] = {}
    for source, option, value in pairs or ():
        options.setdefault(source, {})[option] = value
    for source, opts in options.items():
        cls = REGISTRY.get(source)
        if cls is None:
            raise ValueError(f"no source {source!r} (sources: {', '.join(sorted(REGISTRY))})")
        try:
            cls(**opts)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"source {source}: {exc}") from None
    return options


def _source_list(text: str) -> list[str]:
    """``a,b,c``: names of registered sources (an unknown one is a usage error)."""
    from pyflight.sources import REGISTRY

    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in REGISTRY]
    if unknown or not names:
        what = f"no source {', '.join(map(repr, unknown))}" if unknown else f"no source named in {text!r}"
        raise argparse.ArgumentTypeError(f"{what} (sources: {', '.join(sorted(REGISTRY))})")
    return names


def _cpu_budget(text: str) -> float | None:
    """``0.01``, ``1%`` or ``none``."""
    word = text.strip().lower()
    if word in ("none", "off", "no"):
        return None
    try:
        share = float(word[:-1]) / 100 if word.endswith("%") else float(word)
    except ValueError:
        share = -1.0
    if not 0 < share <= 1:
        raise argparse.ArgumentTypeError(f"not a CPU share: {text!r} (try 0.01, 1% or none)")
    return share


def _chosen_sources(only: list[str] | None, without: list[list[str]] | None) -> list[str] | None:
    """The sources ``--sources`` and ``--no-source`` leave on (None: the defaults)."""
    if only is None and not without:
        return None
    from pyflight.sources import default_source_names

    left_out = {name for names in without or () for name in names}
    return [name for name in (only if only is not None else default_source_names()) if name not in left_out]


def _signal_or_none(text: str) -> int | None:
    from pyflight.triggers.signals import parse_signal

    if text.strip().lower() in ("none", "off", "no", ""):
        return None
    try:
        return parse_signal(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _pid(text: str) -> int:
    if not text.strip().isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"not a process id: {text!r}")
    return int(text)


#: Commands that read traces: their options come from the analysis side, imported only
#: when one of them runs (never into a program recorded by ``pyflight run``).
_READERS = ("report", "view", "export")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser; the options of a trace-reading command are added only when
    ``command`` is that command, or None (all of them)."""
    parser = _Parser(prog="pyflight", description="Always-on flight recorder for Python.")
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    info = commands.add_parser("info", help="describe a trace file (or, with --self, this installation)")
    info.add_argument("file", nargs="?", help="a .pyfl trace")
    info.add_argument("--self", dest="self_info", action="store_true", help="show the recording core in use")

    run = commands.add_parser(
        "run",
        help="run a program under the recorder, write the window when it exits",
        usage="pyflight run [options] (-m MODULE | SCRIPT) [ARGS...]",
        allow_abbrev=False,
    )
    run.add_argument("-o", "--output", default=None, help="trace file to write (default pyflight-PID.pyfl)")
    run.add_argument("--min-age", type=_seconds, default=10.0, help="seconds of history to keep (default 10)")
    run.add_argument("--max-bytes", type=_size, default=10 * 2**20, help="window size cap (default 10M)")
    run.add_argument(
        "--no-children",
        dest="children",
        action="store_false",
        help="do not record child Python processes (by default each writes OUT-<pid>.pyfl)",
    )
    run.add_argument(
        "--serve", type=_host_port, default=None, metavar="HOST:PORT", help="debug HTTP endpoint"
    )
    run.add_argument(
        "--token",
        default=os.environ.get("PYFLIGHT_TOKEN"),
        help="bearer token the endpoint requires (default $PYFLIGHT_TOKEN)",
    )
    run.add_argument(
        "--allow-remote", action="store_true", help="let the endpoint answer non-loopback clients"
    )
    run.add_argument("--no-control", dest="control", action="store_false", help="no `pyflight snapshot PID`")
    run.add_argument(
        "--source-option",
        dest="source_options",
        action="append",
        type=_source_option,
        metavar="SOURCE.OPTION=VALUE",
        help="a source option, e.g. asyncio.task_wait=stack or asyncio.sync_waits=true (repeatable)",
    )
    run.add_argument(
        "--sources",
        dest="sources",
        type=_source_list,
        default=None,
        metavar="A,B,...",
        help="record only these sources (default: every default source; `pyflight info --self` lists them)",
    )
    run.add_argument(
        "--no-source",
        dest="no_sources",
        action="append",
        type=_source_list,
        default=None,
        metavar="NAME",
        help="leave this source out (repeatable), e.g. --no-source sampler",
    )
    run.add_argument(
        "--cpu-budget",
        type=_cpu_budget,
        default=0.01,
        metavar="SHARE",
        help="the recorder's CPU cap, a share of the process's CPU: 0.01 (default, 1%%), 2%%, or none;"
        " over it, detail is shed (the trace says what)",
    )
    _add_trigger_arguments(run)
    run.add_argument("-m", dest="module", default=None, help="run a library module as a script")
    run.add_argument("target", nargs="?", metavar="SCRIPT", help="script path")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the program")

    snapshot = commands.add_parser(
        "snapshot", help="ask a process started under `pyflight run` for a snapshot now"
    )
    snapshot.add_argument("pid", type=_pid, help="process id")
    snapshot.add_argument(
        "-o", "--output", default=None, help="where to write it (default: a name with time and pid)"
    )
    snapshot.add_argument("--timeout", type=_seconds, default=30.0, help="seconds to wait (default 30)")

    report = commands.add_parser("report", help="findings, breakdowns and top stacks of a trace")
    if command in (None, "report"):
        _report_command().add_arguments(report)

    view = commands.add_parser("view", help="serve the report of a trace on a local web page")
    if command in (None, "view"):
        _view_command().add_arguments(view)

    export = commands.add_parser("export", help="export a trace to perfetto/chrome/pprof/folded/speedscope")
    if command in (None, "export"):
        _export_command().add_arguments(export)

    demo = commands.add_parser("demo", help="record a small ping-pong workload and describe the snapshot")
    demo.add_argument("-o", "--output", default="pyflight-demo.pyfl", help="where to write the snapshot")
    demo.add_argument("--seconds", type=_seconds, default=2.0, help="how long to play (default 2)")
    return parser


def _add_trigger_arguments(run: argparse.ArgumentParser) -> None:
    """Options of the snapshot triggers of `pyflight run`.

    Automatic triggers (pyflight.triggers.auto) add their options here and turn them
    into RunConfig.setup callables in _trigger_setup(); they share --snapshot-dir and --quota.
    """
    group = run.add_argument_group("snapshot triggers")
    group.add_argument(
        "--signal",
        dest="snapshot_signal",
        type=_signal_or_none,
        default=int(signal.SIGUSR2),
        metavar="SIG",
        help="signal that writes a snapshot into --snapshot-dir (default USR2; 'none' for none)",
    )
    group.add_argument(
        "--snapshot-dir",
        default=None,
        metavar="DIR",
        help="where triggered snapshots go (default: OUT's directory)",
    )
    group.add_argument(
        "--quota",
        type=_size,
        default=None,
        metavar="N",
        help="disk quota for --snapshot-dir (oldest removed first)",
    )
    from pyflight.triggers import auto

    auto.add_arguments(group)


def _trigger_setup(args: argparse.Namespace) -> list[Callable[[FlightRecorder], object]]:
    """Callables that start the automatic triggers chosen on the command line."""
    from pyflight.triggers import auto

    output = args.output or f"pyflight-{os.getpid()}.pyfl"
    directory = args.snapshot_dir or os.path.dirname(os.path.abspath(output))
    triggers = auto.from_arguments(args, directory, args.quota)
    if triggers is None:
        return []
    return [lambda recorder: triggers.install()]


def _version() -> str:
    from pyflight import __version__

    return f"pyflight {__version__}"


def _split_run_argv(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], list[str]]:
    """Split ``run`` arguments into pyflight's options and the program's command line.

    Everything from the script (or ``-m MODULE``) on belongs to the program, even
    arguments that look like pyflight options.
    """
    run = _subparser(parser, "run")
    takes_value = {option for action in run._actions if action.nargs != 0 for option in action.option_strings}
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return argv[: i + 1 + 1], argv[i + 2 :]
        if token == "-m":
            return argv[: i + 2], argv[i + 2 :]
        if token.startswith("-m") and not token.startswith("--") and token not in takes_value:
            return argv[: i + 1], argv[i + 1 :]  # -mMODULE
        if not token.startswith("-") or token == "-":
            return argv[: i + 1], argv[i + 1 :]
        if token in takes_value:
            i += 2
            continue
        i += 1
    return argv, []


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub: argparse.ArgumentParser = action.choices[name]
            return sub
    raise KeyError(name)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in arguments if not a.startswith("-")), None)
    parser = build_parser(first if first in _READERS else "" if first else None)
    if arguments[:1] == ["run"]:
        options, program = _split_run_argv(parser, arguments[1:])
        args = parser.parse_args(["run", *options])
        args.args = program
    else:
        args = parser.parse_args(arguments)
    if args.command == "run":
        return _cmd_run(args)  # the program's own output errors are the program's
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "info": _cmd_info,
        "snapshot": _cmd_snapshot,
        "demo": _cmd_demo,
        "report": _cmd_report,
        "view": _cmd_view,
        "export": _cmd_export,
    }
    if args.command not in commands:
        parser.print_help()
        return EXIT_USAGE
    try:
        return commands[args.command](args)
    except BrokenPipeError:  # `pyflight info x.pyfl | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _cmd_report(args: argparse.Namespace) -> int:
    return int(_report_command().run(args))


def _cmd_view(args: argparse.Namespace) -> int:
    return int(_view_command().run(args))


def _cmd_export(args: argparse.Namespace) -> int:
    return int(_export_command().run(args))


def _report_command() -> ModuleType:
    """The analysis side is imported only by the commands that read traces."""
    from pyflight.report import command

    return command


def _view_command() -> ModuleType:
    from pyflight.viewer import command

    return command


def _export_command() -> ModuleType:
    from pyflight.export import command

    return command


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
    from pyflight.budget import describe_budget

    print(describe(trace))
    budget = describe_budget(trace.meta)
    if budget:
        print("\n" + "\n".join(budget))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from pyflight.run import RunConfig, RunError, run_program

    module = args.module
    script = args.target
    program_args = list(args.args)
    if module is not None and script is not None:
        program_args.insert(0, script)
        script = None
    try:
        source_options = _source_options(args.source_options)
    except ValueError as exc:
        return _fail(str(exc))
    config = RunConfig(
        output=args.output or f"pyflight-{os.getpid()}.pyfl",
        sources=_chosen_sources(args.sources, args.no_sources),
        cpu_budget=args.cpu_budget,
        source_options=source_options,
        min_age=args.min_age,
        max_bytes=args.max_bytes,
        children=args.children,
        snapshot_signal=args.snapshot_signal,
        snapshot_dir=args.snapshot_dir,
        quota_bytes=args.quota,
        control=args.control,
        serve=args.serve,
        token=args.token,
        allow_remote=args.allow_remote,
        setup=_trigger_setup(args),
    )
    try:
        return run_program(config, module=module, script=script, args=program_args)
    except RunError as exc:
        return _fail(str(exc))


def _cmd_snapshot(args: argparse.Namespace) -> int:
    from pyflight.triggers.control import ControlError, NoControlChannel, request_snapshot, write_private_file
    from pyflight.triggers.snapshots import snapshot_filename

    output = args.output or snapshot_filename("snapshot", pid=args.pid)
    try:
        data = request_snapshot(args.pid, timeout=args.timeout)
    except NoControlChannel as exc:
        return _fail(str(exc))
    except ControlError as exc:
        return _fail(str(exc), EXIT_FAILED)
    try:
        write_private_file(output, data)
    except OSError as exc:
        return _fail(f"cannot write {output}: {exc.strerror or exc}", EXIT_FAILED)
    print(f"wrote {len(data)} bytes from pid {args.pid} to {output}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pyflight.demo import run_demo

    return run_demo(args.output, args.seconds)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
