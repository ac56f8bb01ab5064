"""The ``pyflight`` command line (also ``python -m pyflight``): builds the parser from the
verbs in :mod:`pyflight.commands` and runs the chosen one.

Every failure is one line on stderr, ``pyflight VERB: error: MESSAGE``, and an exit status
from :mod:`pyflight.commands.common` (2: a bad argument, an input missing or unreadable,
an output that cannot be written; 1: the work failed, e.g. a file that is not a trace).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from pyflight.commands import VERBS
from pyflight.commands.common import EXIT_FAILED, EXIT_USAGE, CommandError

__all__ = ["build_parser", "dispatch", "main"]


class _Parser(argparse.ArgumentParser):
    """Bad arguments get one line on stderr and exit code 2, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def _verb(name: str) -> ModuleType:
    return importlib.import_module(f"pyflight.commands.{name}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser. A verb's options are added only when ``command`` is that verb,
    or None (all of them): the options of ``report``/``view``/``export`` come from the
    analysis side, never imported into a program recorded by ``pyflight run``."""
    from pyflight.commands.info import version

    parser = _Parser(prog="pyflight", description="Always-on flight recorder for Python.")
    parser.add_argument("--version", action="version", version=version())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in VERBS:
        module = _verb(name)
        extra = {"usage": module.USAGE, "allow_abbrev": False} if name == "run" else {}
        sub = subparsers.add_parser(name, help=module.HELP, **extra)
        if command in (None, name):
            module.add_arguments(sub)
    return parser


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub: argparse.ArgumentParser = action.choices[name]
            return sub
    raise KeyError(name)


def _parse(arguments: list[str]) -> argparse.Namespace | None:
    """The parsed command line, or None if it names no verb (the help is printed)."""
    first = next((a for a in arguments if not a.startswith("-")), None)
    parser = build_parser(first if first in VERBS else "" if first else None)
    if arguments[:1] == ["run"]:
        from pyflight.commands.run import split_argv

        options, program = split_argv(_subparser(parser, "run"), arguments[1:])
        args = parser.parse_args(["run", *options])
        args.args = program
        return args
    args = parser.parse_args(arguments)
    if args.command is None:
        parser.print_help()
        return None
    return args


def dispatch(args: argparse.Namespace) -> int:
    """Run the verb ``args.command`` with parsed ``args``; a CommandError becomes its one
    line on stderr and its exit status."""
    verb: str = args.command
    try:
        return int(_verb(verb).run(args))
    except CommandError as exc:
        sys.stderr.write(f"pyflight {verb}: error: {exc.message}\n")
        return exc.exit_code
    except BrokenPipeError:  # `pyflight info x.pyfl | head`: stop quietly
        if verb == "run":
            raise  # the program's own output errors are the program's
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(list(sys.argv[1:] if argv is None else argv))
    return EXIT_USAGE if args is None else dispatch(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
