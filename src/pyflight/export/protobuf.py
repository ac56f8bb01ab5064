"""A minimal protocol-buffers wire-format encoder (no dependency).

Enough for Perfetto's TracePacket stream and pprof's profile.proto: varints (with
64-bit two's complement for negative ``int64``), length-delimited fields (strings,
bytes, nested messages), packed repeated varints, ``fixed64`` and ``double``.
Fields are appended in call order; a reader accepts any order.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

__all__ = ["Message", "encode_varint"]

_VARINT = 0
_I64 = 1
_LEN = 2

_MASK64 = (1 << 64) - 1


_SMALL = [bytes((v,)) if v < 0x80 else bytes(((v & 0x7F) | 0x80, v >> 7)) for v in range(1 << 14)]


def encode_varint(value: int) -> bytes:
    """LEB128 of ``value``; negative numbers as their 64-bit two's complement (10 bytes)."""
    if 0 <= value < 0x4000:
        return _SMALL[value]
    if value < 0:
        value &= _MASK64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_KEYS: dict[int, bytes] = {}


def _key(field: int, wire_type: int) -> bytes:
    tag = (field << 3) | wire_type
    key = _KEYS.get(tag)
    if key is None:
        key = _KEYS[tag] = encode_varint(tag)
    return key


class Message:
    """A message being built: ``Message().varint(1, 5).string(2, "x").bytes()``."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def varint(self, field: int, value: int) -> Message:
        """``int32/int64/uint32/uint64/bool/enum`` field."""
        self._buf += _key(field, _VARINT) + encode_varint(int(value))
        return self

    def fixed64(self, field: int, value: int) -> Message:
        self._buf += _key(field, _I64)
        self._buf += struct.pack("<Q", value & _MASK64)
        return self

    def double(self, field: int, value: float) -> Message:
        self._buf += _key(field, _I64)
        self._buf += struct.pack("<d", value)
        return self

    def raw(self, field: int, data: bytes | bytearray) -> Message:
        """A length-delimited field: ``bytes``, or an already encoded message."""
        self._buf += _key(field, _LEN) + encode_varint(len(data))
        self._buf += data
        return self

    def string(self, field: int, text: str) -> Message:
        return self.raw(field, text.encode("utf-8", "surrogatepass"))

    def message(self, field: int, sub: Message) -> Message:
        return self.raw(field, sub._buf)

    def packed_varints(self, field: int, values: Iterable[int]) -> Message:
        """A packed ``repeated`` scalar varint field (proto3 default, ``[packed=true]``)."""
        payload = bytearray()
        for v in values:
            payload += encode_varint(int(v))
        if payload:
            self.raw(field, payload)
        return self

    def repeated_varints(self, field: int, values: Iterable[int]) -> Message:
        """An unpacked ``repeated`` varint field (proto2 default); parsers accept either."""
        for v in values:
            self.varint(field, v)
        return self

    def repeated_fixed64(self, field: int, values: Iterable[int]) -> Message:
        for v in values:
            self.fixed64(field, v)
        return self

    def bytes(self) -> bytes:
        return bytes(self._buf)

    def __len__(self) -> int:
        return len(self._buf)
