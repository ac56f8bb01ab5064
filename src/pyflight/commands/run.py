"""``pyflight run [options] (-m MODULE | SCRIPT) [ARGS...]``: run a program under the
recorder and write the window when it exits. The exit status is the program's."""

from __future__ import annotations

import argparse
import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from pyflight.commands import types
from pyflight.commands.common import EXIT_USAGE, CommandError

if TYPE_CHECKING:
    from pyflight.recorder import FlightRecorder

#: ``--signal`` not given: USR2, unless the program is known to use it itself.
_DEFAULT_SIGNAL = -1
#: Programs whose own USR2 handling a snapshot signal would collide with: gunicorn (binary
#: upgrade in the master; its workers reset USR2 to the default action, which kills them)
#: and Celery (USR1/USR2 for its debugging aids).
_PROGRAMS_USING_USR2 = ("gunicorn", "celery")

HELP = "run a program under the recorder, write the window when it exits"
USAGE = "pyflight run [options] (-m MODULE | SCRIPT) [ARGS...]"


def add_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument("-o", "--output", default=None, help="trace file to write (default pyflight-PID.pyfl)")
    run.add_argument(
        "--min-age", type=types.seconds, default=10.0, help="seconds of history to keep (default 10)"
    )
    run.add_argument("--max-bytes", type=types.size, default=10 * 2**20, help="window size cap (default 10M)")
    run.add_argument(
        "--no-children",
        dest="children",
        action="store_false",
        help="do not record child Python processes (by default each writes OUT-<pid>.pyfl)",
    )
    run.add_argument(
        "--children-only",
        dest="record_self",
        action="store_false",
        help="record only the child processes (a pre-fork server's workers), not the program itself",
    )
    run.add_argument(
        "--no-redact",
        dest="redact",
        action="store_false",
        help="keep secret-looking arguments (--password=...) in the traces' argv",
    )
    run.add_argument(
        "--serve", type=types.host_port, default=None, metavar="HOST:PORT", help="debug HTTP endpoint"
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
        type=types.source_option,
        metavar="SOURCE.OPTION=VALUE",
        help="a source option, e.g. asyncio.task_wait=stack or asyncio.sync_waits=true (repeatable)",
    )
    run.add_argument(
        "--sources",
        dest="sources",
        type=types.source_list,
        default=None,
        metavar="A,B,...",
        help="record only these sources (default: every default source; `pyflight info --self` lists them)",
    )
    run.add_argument(
        "--no-source",
        dest="no_sources",
        action="append",
        type=types.source_list,
        default=None,
        metavar="NAME",
        help="leave this source out (repeatable), e.g. --no-source sampler",
    )
    run.add_argument(
        "--cpu-budget",
        type=types.cpu_budget,
        default=0.01,
        metavar="SHARE",
        help="the recorder's CPU cap, a share of the process's CPU: 0.01 (default, 1%%), 2%%, or none;"
        " over it, detail is shed (the trace says what)",
    )
    _add_trigger_arguments(run)
    run.add_argument("-m", dest="module", default=None, help="run a library module as a script")
    run.add_argument("target", nargs="?", metavar="SCRIPT", help="script path")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the program")


def _add_trigger_arguments(run: argparse.ArgumentParser) -> None:
    """Options of the snapshot triggers of `pyflight run`.

    Automatic triggers (pyflight.triggers.auto) add their options here and turn them
    into RunConfig.setup callables in _trigger_setup(); they share --snapshot-dir and --quota.
    """
    group = run.add_argument_group("snapshot triggers")
    group.add_argument(
        "--signal",
        dest="snapshot_signal",
        type=types.signal_or_none,
        default=_DEFAULT_SIGNAL,
        metavar="SIG",
        help="signal that writes a snapshot into --snapshot-dir (default USR2, none for programs that"
        " use USR2 themselves: gunicorn, celery; 'none' for none)",
    )
    group.add_argument(
        "--snapshot-dir",
        default=None,
        metavar="DIR",
        help="where triggered snapshots go (default: OUT's directory)",
    )
    group.add_argument(
        "--quota",
        type=types.size,
        default=None,
        metavar="N",
        help="disk quota for --snapshot-dir (oldest removed first)",
    )
    from pyflight.triggers import auto

    auto.add_arguments(group)


def split_argv(run: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], list[str]]:
    """Split ``run`` arguments into pyflight's options and the program's command line.

    Everything from the script (or ``-m MODULE``) on belongs to the program, even
    arguments that look like pyflight options.
    """
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


def _source_options(pairs: list[tuple[str, str, object]] | None) -> dict[str, dict[str, object]]:
    """The ``--source-option`` values by source, checked the way the recorder will use
    them (CommandError naming what is wrong)."""
    from pyflight.sources import REGISTRY

    options: dict[str, dict[str, object]] = {}
    for source, option, value in pairs or ():
        options.setdefault(source, {})[option] = value
    for source, opts in options.items():
        cls = REGISTRY.get(source)
        if cls is None:
            raise CommandError(f"no source {source!r} (sources: {', '.join(sorted(REGISTRY))})")
        try:
            cls(**opts)
        except (TypeError, ValueError) as exc:
            raise CommandError(f"source {source}: {exc}") from None
    return options


def _trigger_setup(args: argparse.Namespace) -> list[Callable[[FlightRecorder], object]]:
    """Callables that start the automatic triggers chosen on the command line."""
    from pyflight.triggers import auto

    output = args.output or f"pyflight-{os.getpid()}.pyfl"
    directory = args.snapshot_dir or os.path.dirname(os.path.abspath(output))
    triggers = auto.from_arguments(args, directory, args.quota)
    if triggers is None:
        return []
    return [lambda recorder: triggers.install()]


def run(args: argparse.Namespace) -> int:
    from pyflight.run import RunConfig, RunError, run_program

    module = args.module
    script = args.target
    program_args = list(args.args)
    if module is not None and script is not None:
        program_args.insert(0, script)
        script = None
    config = RunConfig(
        output=args.output or f"pyflight-{os.getpid()}.pyfl",
        source_options=_source_options(args.source_options),
        min_age=args.min_age,
        max_bytes=args.max_bytes,
        children=args.children,
        record_self=args.record_self,
        redact=args.redact,
        sources=_chosen_sources(args.sources, args.no_sources),
        cpu_budget=args.cpu_budget,
        snapshot_signal=_snapshot_signal(args.snapshot_signal, module, script),
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
        raise CommandError(str(exc), EXIT_USAGE) from None


def _snapshot_signal(chosen: int | None, module: str | None, script: str | None) -> int | None:
    """The snapshot signal: the one chosen, else USR2 unless the program uses it itself."""
    if chosen != _DEFAULT_SIGNAL:
        return chosen
    program = module.split(".")[0] if module else os.path.basename(script or "").removesuffix(".py")
    if program in _PROGRAMS_USING_USR2:
        from pyflight.run import say

        say(
            f"{program} uses SIGUSR2 itself: no snapshot signal (take snapshots with "
            "`pyflight snapshot PID --workers`, or choose one with --signal)"
        )
        return None
    return int(signal.SIGUSR2)


def _chosen_sources(only: list[str] | None, without: list[list[str]] | None) -> list[str] | None:
    """The sources ``--sources`` and ``--no-source`` leave on (None: the defaults)."""
    if only is None and not without:
        return None
    from pyflight.sources import default_source_names

    left_out = {name for names in without or () for name in names}
    return [name for name in (only if only is not None else default_source_names()) if name not in left_out]
