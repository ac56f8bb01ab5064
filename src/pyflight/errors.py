"""Exceptions of the public API. Bottom layer: imported by recording and reading sides."""

from __future__ import annotations


class PyflightError(Exception):
    """Base class of pyflight's own errors."""


class RecorderError(PyflightError):
    """The recorder was used in a state that does not allow it (started twice, not running...)."""


class SnapshotInProgress(RecorderError):
    """Another write_to of the same recorder has not finished yet."""


class TraceFormatError(PyflightError):
    """A trace file is not a pyflight trace or is damaged beyond what can be read.

    ``offset`` is the byte offset where the problem was found (None if not applicable).
    """

    def __init__(self, message: str, offset: int | None = None) -> None:
        self.offset = offset
        self.problem = message
        super().__init__(message if offset is None else f"{message} (at byte {offset})")
