"""Byte-level building blocks of format v1 shared by the Python core and the writer."""

from __future__ import annotations

import struct
import zlib

MAGIC = b"\x89PYFL\r\n\x1a"
VERSION = 1
GENERATION_TAG = 0x47  # 'G'
HEADER_FIXED = struct.Struct("<8sHHII")  # magic, version, flags, body length, crc
FRAME_FIXED = struct.Struct("<BII")  # tag, body length, crc
MAX_VARINT_BYTES = 10


def varint(value: int) -> bytes:
    """Unsigned LEB128."""
    if value < 0x80:
        if value < 0:
            raise ValueError(f"varint of negative value {value}")
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    if len(out) > MAX_VARINT_BYTES:
        raise OverflowError("varint does not fit in 64 bits")
    return bytes(out)


def put_varint(out: bytearray, value: int) -> None:
    if value < 0x80:
        if value < 0:
            raise ValueError(f"varint of negative value {value}")
        out.append(value)
        return
    if value >= 1 << 64:
        raise OverflowError("varint does not fit in 64 bits")
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def put_string(out: bytearray, text: str) -> None:
    data = text.encode("utf-8", "surrogatepass")
    put_varint(out, len(data))
    out += data


def frame_generation(body: bytes | bytearray) -> bytes:
    """Tag, length and CRC-32 in front of a generation body."""
    return FRAME_FIXED.pack(GENERATION_TAG, len(body), zlib.crc32(body)) + bytes(body)
