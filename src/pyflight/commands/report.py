"""``pyflight report FILE [--json] [--html OUT] [--all] [--color WHEN]``: findings,
breakdowns and top stacks of a trace, as text, one JSON object, or an HTML page."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pyflight.commands.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    CommandError,
    gc_paused,
    read_trace,
    read_trace_bytes,
    write_output,
    write_stdout,
)

if TYPE_CHECKING:
    from pyflight.report import Report

HELP = "findings, breakdowns and top stacks of a trace"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="a trace written by pyflight")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object (summary, findings, tables)"
    )
    parser.add_argument(
        "--html",
        metavar="OUT",
        help="also write a self-contained HTML report to OUT (-: the page alone, to stdout)",
    )
    parser.add_argument("--all", action="store_true", help="also show findings scoring below 25")
    parser.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the terminal report (default: auto, when stdout is a terminal)",
    )


def _progress_printer() -> Callable[[float], None] | None:
    if not sys.stderr.isatty():
        return None
    last = [0.0]

    def show(done: float) -> None:
        now = time.monotonic()
        if done < 1.0 and now - last[0] < 0.1:
            return
        last[0] = now
        end = "\n" if done >= 1.0 else ""
        sys.stderr.write(f"\ranalysing trace... {100 * done:3.0f}%" + end)
        sys.stderr.flush()

    return show


def load_report(path: str) -> tuple[bytes, Report]:
    """The trace file's bytes and its report (shared by ``report`` and ``view``);
    CommandError as :func:`~pyflight.commands.common.read_trace`, or exit 1 if the
    analysis cannot use a trace the reader accepted."""
    from pyflight.report import analyze

    data = read_trace_bytes(path)
    trace = read_trace(path, data)
    try:
        return data, analyze(trace, progress=_progress_printer())
    except Exception as exc:
        raise CommandError(f"cannot analyse {path}: {type(exc).__name__}: {exc}", EXIT_FAILED) from None


def run(args: argparse.Namespace) -> int:
    with gc_paused():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    path = args.file
    if args.html == "-" and args.json:
        raise CommandError("--html - and --json both write to stdout: choose one", EXIT_USAGE)
    _, report = load_report(path)
    if args.html:
        from pyflight.report.html import render as render_html

        try:
            page = render_html(report).encode("utf-8", "replace")
        except Exception as exc:
            raise CommandError(
                f"cannot render {path} as HTML: {type(exc).__name__}: {exc}", EXIT_FAILED
            ) from None
        write_output(args.html, page)
        if args.html == "-":  # the page alone on stdout (``--html - > page.html``)
            return 0
    if args.json:
        from pyflight.report.json_report import dumps

        write_stdout(dumps(report) + "\n")
    else:
        from pyflight.report.text import render as render_text

        use_color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
        write_stdout(render_text(report, color=use_color, all_findings=args.all))
        if args.html:
            print(f"HTML report written to {args.html}")
    return 0
