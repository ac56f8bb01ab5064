"""The ``report`` subcommand: ``pyflight report FILE [--json] [--html OUT]``.

Exit status: 0 report written, 1 the file is not a readable trace (one line on stderr),
2 the file cannot be read (missing, permissions) or OUT cannot be written.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyflight.report import Report

__all__ = ["add_arguments", "run"]

EXIT_BAD_TRACE = 1
EXIT_NO_FILE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="a trace written by pyflight")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object (summary, findings, tables)"
    )
    parser.add_argument("--html", metavar="OUT", help="also write a self-contained HTML report to OUT")
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


def _fail(message: str, code: int) -> int:
    print(f"pyflight report: {message}", file=sys.stderr)
    return code


def _write_out(text: str) -> None:
    """Write to stdout even when a trace string cannot be encoded there (a lone surrogate
    from a non-UTF-8 name, an ASCII terminal): such characters are replaced, not fatal."""
    try:
        sys.stdout.write(text)
    except UnicodeEncodeError:
        encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
        sys.stdout.write(text.encode(encoding, "replace").decode(encoding))


def run(args: argparse.Namespace) -> int:
    # the trace and its model are millions of long-lived objects: garbage collections
    # while they are in memory would only walk them again and again
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _run(args)
    finally:
        if gc_was_enabled:
            gc.enable()


def read_report(path: str, fail: Callable[[str, int], int]) -> tuple[bytes, Report] | int:
    """The trace file's bytes and its report, or the exit status ``fail`` returned after
    saying in one line what is wrong (shared by ``report`` and ``view``)."""
    from pyflight.errors import TraceFormatError
    from pyflight.format.reader import loads
    from pyflight.report import analyze

    try:
        with open(path, "rb") as f:
            data = f.read()
        trace = loads(data, name=path)
    except OSError as exc:
        return fail(f"cannot read {path}: {exc.strerror or exc}", EXIT_NO_FILE)
    except TraceFormatError as exc:
        return fail(f"{path} is not a readable pyflight trace: {exc}", EXIT_BAD_TRACE)
    try:
        return data, analyze(trace, progress=_progress_printer())
    except Exception as exc:  # a trace the reader accepted but the analysis cannot use
        return fail(f"cannot analyse {path}: {type(exc).__name__}: {exc}", EXIT_BAD_TRACE)


def _run(args: argparse.Namespace) -> int:
    path = args.file
    loaded = read_report(path, _fail)
    if isinstance(loaded, int):
        return loaded
    _, report = loaded
    if getattr(args, "html", None):
        from pyflight.format.writer import write_bytes_atomically
        from pyflight.report.html import render as render_html

        try:
            page = render_html(report).encode("utf-8", "replace")
        except Exception as exc:
            return _fail(f"cannot render {path} as HTML: {type(exc).__name__}: {exc}", EXIT_BAD_TRACE)
        try:
            write_bytes_atomically(args.html, page)
        except OSError as exc:
            return _fail(f"cannot write {args.html}: {exc.strerror or exc}", EXIT_NO_FILE)
    if getattr(args, "json", False):
        from pyflight.report.json_report import dumps

        _write_out(dumps(report) + "\n")
    else:
        from pyflight.report.text import render as render_text

        color = getattr(args, "color", "auto")
        use_color = color == "always" or (color == "auto" and sys.stdout.isatty())
        _write_out(render_text(report, color=use_color, all_findings=getattr(args, "all", False)))
        if getattr(args, "html", None):
            print(f"HTML report written to {args.html}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m pyflight.report.command FILE ...`` until the CLI wires ``report`` in."""
    parser = argparse.ArgumentParser(prog="pyflight report")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
