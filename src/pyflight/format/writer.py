"""Writes trace files: a header (metadata + kind table) followed by generations."""

from __future__ import annotations

import os
import tempfile
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


def write_file_atomically(path: str | os.PathLike[str], header: bytes, generations: Iterable[bytes]) -> int:
    """Write to a temporary file (mode 0600) beside ``path`` and rename it into place.

    Readers never see a half-written snapshot, and a failed write leaves no debris.
    """
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix=".pyflight-", suffix=".tmp", dir=directory)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as out:
            total = write_stream(out, header, generations)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return total


def write_bytes_atomically(path: str | os.PathLike[str], data: bytes) -> int:
    """``data`` to ``path`` the same way: temporary file (mode 0600), fsync, rename."""
    return write_file_atomically(path, data, ())
