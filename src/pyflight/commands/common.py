"""What every verb shares: exit statuses, the one error type, reading a trace, writing
an output file."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyflight.format.reader import Trace

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CommandError",
    "gc_paused",
    "read_trace",
    "write_output",
    "write_stdout",
]

EXIT_OK = 0
#: The work could not be done: the file is not a readable trace, the analysis failed,
#: the process asked for a snapshot did not give one.
EXIT_FAILED = 1
#: What the command line names is wrong: a bad argument, an input file that is missing
#: or unreadable, an output that cannot be written, an address that cannot be listened on.
EXIT_USAGE = 2
#: Ctrl-C before the work was done.
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """A verb's failure: ``message`` (one line, no prefix) and the exit status."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def _os_reason(exc: OSError) -> str:
    return str(exc.strerror or exc)


def read_trace_bytes(path: str) -> bytes:
    """The bytes of the trace file ``path``; CommandError (exit 2) if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {_os_reason(exc)}", EXIT_USAGE) from None


def read_trace(path: str, data: bytes | None = None, *, quiet: bool = False) -> Trace:
    """The trace in ``path`` (or in its already read ``data``); CommandError: exit 2 if the
    file cannot be read, exit 1 (naming the reader's problem) if it is not a trace.
    ``quiet``: the reader's warnings about a damaged file are not printed."""
    from pyflight.errors import TraceFormatError
    from pyflight.format.reader import loads

    if data is None:
        data = read_trace_bytes(path)
    try:
        if not quiet:
            return loads(data, name=path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return loads(data, name=path)
    except TraceFormatError as exc:
        raise CommandError(f"{path} is not a readable pyflight trace: {exc}", EXIT_FAILED) from None


def write_output(path: str, data: bytes) -> None:
    """``data`` to ``path`` atomically, or to stdout for ``-`` (``... -o - | jq``: not a
    file named "-"); CommandError (exit 2) if it cannot be written."""
    from pyflight.format.writer import write_bytes_atomically

    if path == "-":
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        except BrokenPipeError:
            # the reader went away (``| head``): not an error of ours; keep the
            # interpreter's own flush at exit from complaining
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    try:
        write_bytes_atomically(path, data)
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {_os_reason(exc)}", EXIT_USAGE) from None


def write_stdout(text: str) -> None:
    """Write to stdout even when a trace string cannot be encoded there (a lone surrogate
    from a non-UTF-8 name, an ASCII terminal): such characters are replaced, not fatal."""
    try:
        sys.stdout.write(text)
    except UnicodeEncodeError:
        encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
        sys.stdout.write(text.encode(encoding, "replace").decode(encoding))


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while a trace and its model are in memory: millions of
    long-lived objects that every collection would walk again."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
