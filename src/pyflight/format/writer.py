"""Writes trace files: a header (metadata + kind table) followed by generations."""

from __future__ import annotations

import errno
import os
import zlib
from collections.abc import Iterable, Mapping
from typing import IO

from pyflight.core.encoding import HEADER_FIXED, MAGIC, VERSION, put_string, put_varint
from pyflight.core.events import ARGS


def encode_header(meta: Mapping[str, str]) -> bytes:
    """The file header with ``meta`` and the full kind table of this pyflight."""
    body = bytearray()
    put_varint(body, len(meta))
    for key, value in meta.items():
        put_string(body, str(key))
        put_string(body, str(value))
    put_varint(body, len(ARGS))
    for kind, args in sorted(ARGS.items()):
        put_varint(body, int(kind))
        put_string(body, kind.name)
        put_varint(body, len(args))
        for arg in args:
            body.append(ord(arg.type))
            put_string(body, arg.name)
    return HEADER_FIXED.pack(MAGIC, VERSION, 0, len(body), zlib.crc32(body)) + bytes(body)


def write_stream(out: IO[bytes], header: bytes, generations: Iterable[bytes]) -> int:
    """Write header and generations to an open binary file; return the bytes written."""
    total = 0
    for chunk in (header, *generations):
        out.write(chunk)  # large writes release the GIL: recording threads keep going
        total += len(chunk)
    return total


#: Hidden temporaries are ``.pyflight-<pid>-<random>.tmp``: the pid says whether the
#: writer is still alive (``snapshots.sweep_stale_temporaries`` removes dead writers' ones).
TEMP_PREFIX = ".pyflight-"
TEMP_SUFFIX = ".tmp"


def write_file_atomically(path: str | os.PathLike[str], header: bytes, generations: Iterable[bytes]) -> int:
    """Write to a temporary file (mode 0600) beside ``path`` and rename it into place.

    Readers never see a half-written snapshot, and a failed write leaves no debris. On
    Linux the data goes to an unnamed file (``O_TMPFILE``) that gets a name only once
    complete, so even a writer killed mid-write (SIGKILL, interpreter teardown) leaves
    nothing. Errors name ``path``, never the temporary.
    """
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    chunks = [header, *generations]
    try:
        written = _write_unnamed_then_link(directory, target, chunks)
        if written is None:
            written = _write_named_then_rename(directory, target, chunks)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), target) from None
    return written


def _temp_name(directory: str) -> str:
    return os.path.join(directory, f"{TEMP_PREFIX}{os.getpid()}-{os.urandom(4).hex()}{TEMP_SUFFIX}")


def _write_unnamed_then_link(directory: str, target: str, chunks: list[bytes]) -> int | None:
    """The O_TMPFILE way; None where the system does not offer it (then the named way)."""
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        fd = os.open(directory, flag | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOTSUP):
            return None  # this file system (or kernel) has no unnamed files
        raise
    with os.fdopen(fd, "wb") as out:
        total = write_stream(out, chunks[0], chunks[1:])
        out.flush()
        os.fsync(out.fileno())
        tmp = _temp_name(directory)
        try:
            # linkat cannot replace a file: name it, then rename over the target at once
            os.link(f"/proc/self/fd/{out.fileno()}", tmp, follow_symlinks=True)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EPERM, errno.EACCES, errno.EXDEV) and not os.path.exists(
                tmp
            ):
                return None
            raise
    try:
        os.replace(tmp, target)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return total


def _write_named_then_rename(directory: str, target: str, chunks: list[bytes]) -> int:
    tmp = _temp_name(directory)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        with os.fdopen(fd, "wb") as out:
            total = write_stream(out, chunks[0], chunks[1:])
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return total


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def write_bytes_atomically(path: str | os.PathLike[str], data: bytes) -> int:
    """``data`` to ``path`` the same way: temporary file (mode 0600), fsync, rename."""
    return write_file_atomically(path, data, ())
