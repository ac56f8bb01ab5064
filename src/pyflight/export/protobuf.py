"""A minimal protocol-buffers wire-format encoder (no dependency).

Enough for Perfetto's TracePacket stream and pprof's profile.proto: varints (with
64-bit two's complement for negative ``int64``), length-delimited fields (strings,
bytes, nested messages), packed repeated varints, ``fixed64`` and ``double``.
Fields are appended in call order; a reader accepts any order.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable

__all__ = [
    "I64",
    "LEN",
    "MASK64",
    "VARINT",
    "Message",
    "encode_varint",
    "field_key",
    "timestamp_varint_encoder",
]

#: wire types
VARINT = 0
I64 = 1
LEN = 2

MASK64 = (1 << 64) - 1

# Varints are encoded 14 bits at a time from two tables (a timestamp in nanoseconds takes
# four lookups instead of seven shift-and-mask rounds): _SMALL[v] is the whole encoding
# of a v < 2**14, _MORE[v] the two bytes of 14 low bits followed by more.
_SMALL = [bytes((v,)) if v < 0x80 else bytes(((v & 0x7F) | 0x80, v >> 7)) for v in range(1 << 14)]
_MORE = [bytes(((v & 0x7F) | 0x80, (v >> 7) | 0x80)) for v in range(1 << 14)]


def encode_varint(value: int) -> bytes:
    """LEB128 of ``value``; negative numbers as their 64-bit two's complement (10 bytes)."""
    if 0 <= value < 0x4000:
        return _SMALL[value]
    if value < 0:
        value &= MASK64
    if value < 0x10000000:
        return _MORE[value & 0x3FFF] + _SMALL[value >> 14]
    parts = []
    while value >= 0x4000:
        parts.append(_MORE[value & 0x3FFF])
        value >>= 14
    parts.append(_SMALL[value])
    return b"".join(parts)


def timestamp_varint_encoder() -> Callable[[int], bytes]:
    """An ``encode_varint`` faster for nanosecond timestamps, which share their high bits:
    it caches the varint of the bits above the 28 lowest (they change every 268 ms), so a
    timestamp takes three table lookups. For one export (the cache is not bounded)."""
    high_bits: dict[int, bytes] = {}

    def encode(value: int) -> bytes:
        if value < 0x10000000:  # and negative values
            return encode_varint(value)
        high = high_bits.get(value >> 28)
        if high is None:
            high = high_bits[value >> 28] = encode_varint(value >> 28)
        return b"".join((_MORE[value & 0x3FFF], _MORE[(value >> 14) & 0x3FFF], high))

    return encode


_KEYS: dict[int, bytes] = {}


def field_key(field: int, wire_type: int) -> bytes:
    """The encoded key (tag) of a field: ``(field << 3) | wire_type`` as a varint."""
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
        self._buf += field_key(field, VARINT) + encode_varint(int(value))
        return self

    def fixed64(self, field: int, value: int) -> Message:
        self._buf += field_key(field, I64)
        self._buf += struct.pack("<Q", value & MASK64)
        return self

    def double(self, field: int, value: float) -> Message:
        self._buf += field_key(field, I64)
        self._buf += struct.pack("<d", value)
        return self

    def raw(self, field: int, data: bytes | bytearray) -> Message:
        """A length-delimited field: ``bytes``, or an already encoded message."""
        self._buf += field_key(field, LEN) + encode_varint(len(data))
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
