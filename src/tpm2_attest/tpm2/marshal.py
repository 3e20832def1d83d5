"""Bounds-checked big-endian reader and writer for TPM 2.0 wire bytes.

Every read checks the remaining length first and raises :class:`ParseError`
(never IndexError or struct.error), so hostile input cannot crash a parser.
"""

from __future__ import annotations

import struct
from typing import Final

_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
_U64: Final = struct.Struct(">Q")
_I32: Final = struct.Struct(">i")
_u16_at: Final = _U16.unpack_from
_u32_at: Final = _U32.unpack_from


class ParseError(ValueError):
    """Malformed TPM 2.0 bytes: truncated, oversized, trailing or out-of-range."""

    def __init__(self, message: str, offset: int | None = None, what: str | None = None) -> None:
        self.offset = offset
        self.what = what
        where = f" at offset {offset}" if offset is not None else ""
        ctx = f"{what}: " if what else ""
        super().__init__(f"{ctx}{message}{where}")


class Reader:
    """Cursor over immutable bytes; every read is bounds-checked."""

    __slots__ = ("_buf", "_end", "pos")

    def __init__(self, data: bytes | bytearray | memoryview, pos: int = 0) -> None:
        self._buf = bytes(data)
        self._end = len(self._buf)
        self.pos = pos

    @property
    def remaining(self) -> int:
        """Bytes not yet consumed."""
        return self._end - self.pos

    @property
    def buffer(self) -> bytes:
        """The whole underlying buffer (for slicing raw spans)."""
        return self._buf

    def _need(self, n: int, what: str) -> int:
        p = self.pos
        if n < 0 or p + n > self._end:
            raise ParseError(f"need {n} bytes, have {self._end - p}", p, what)
        self.pos = p + n
        return p

    # The readers below inline _need: they run for every field of every structure parsed.

    def u8(self, what: str = "u8") -> int:
        p = self.pos
        if p >= self._end:
            raise ParseError(f"need 1 bytes, have {self._end - p}", p, what)
        self.pos = p + 1
        return self._buf[p]

    def u16(self, what: str = "u16") -> int:
        p = self.pos
        if p + 2 > self._end:
            raise ParseError(f"need 2 bytes, have {self._end - p}", p, what)
        self.pos = p + 2
        return _u16_at(self._buf, p)[0]  # type: ignore[no-any-return]

    def u32(self, what: str = "u32") -> int:
        p = self.pos
        if p + 4 > self._end:
            raise ParseError(f"need 4 bytes, have {self._end - p}", p, what)
        self.pos = p + 4
        return _u32_at(self._buf, p)[0]  # type: ignore[no-any-return]

    def i32(self, what: str = "i32") -> int:
        p = self._need(4, what)
        return int(_I32.unpack_from(self._buf, p)[0])

    def u64(self, what: str = "u64") -> int:
        p = self._need(8, what)
        return int(_U64.unpack_from(self._buf, p)[0])

    def raw(self, n: int, what: str = "bytes") -> bytes:
        p = self.pos
        if n < 0 or p + n > self._end:
            raise ParseError(f"need {n} bytes, have {self._end - p}", p, what)
        self.pos = p + n
        return self._buf[p : p + n]

    def tpm2b(self, what: str = "TPM2B", max_size: int | None = None) -> bytes:
        """A u16 size followed by that many bytes (a TPM2B_* buffer)."""
        start = self.pos
        end = self._end
        if start + 2 > end:
            raise ParseError(f"need 2 bytes, have {end - start}", start, what)
        size = _u16_at(self._buf, start)[0]
        p = start + 2
        if max_size is not None and size > max_size:
            self.pos = p
            raise ParseError(f"size {size} exceeds maximum {max_size}", start, what)
        if p + size > end:
            self.pos = p
            raise ParseError(f"need {size} bytes, have {end - p}", p, what)
        self.pos = p + size
        return self._buf[p : p + size]

    def sized(self, what: str = "TPM2B") -> Reader:
        """A u16-sized span returned as its own Reader (for TPM2B wrapping a structure)."""
        return Reader(self.tpm2b(what))

    def count(self, what: str, max_count: int, min_item_size: int = 1) -> int:
        """A u32 list count, refused when larger than max_count or than the bytes left allow."""
        start = self.pos
        n = self.u32(what)
        if n > max_count:
            raise ParseError(f"count {n} exceeds maximum {max_count}", start, what)
        if n * min_item_size > self.remaining:
            raise ParseError(f"count {n} exceeds the bytes left", start, what)
        return n

    def done(self, what: str = "structure") -> None:
        """Raise unless every byte was consumed."""
        if self.pos != self._end:
            raise ParseError(f"{self._end - self.pos} trailing bytes", self.pos, what)


class Writer:
    """Append-only big-endian byte builder."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts = bytearray()

    def u8(self, v: int) -> Writer:
        self._parts.append(v & 0xFF)
        return self

    def u16(self, v: int) -> Writer:
        self._parts += _U16.pack(v)
        return self

    def u32(self, v: int) -> Writer:
        self._parts += _U32.pack(v)
        return self

    def i32(self, v: int) -> Writer:
        self._parts += _I32.pack(v)
        return self

    def u64(self, v: int) -> Writer:
        self._parts += _U64.pack(v)
        return self

    def raw(self, b: bytes | bytearray | memoryview) -> Writer:
        self._parts += b
        return self

    def tpm2b(self, b: bytes | bytearray | memoryview) -> Writer:
        """Write a u16 size then the bytes; raise if they do not fit a TPM2B."""
        if len(b) > 0xFFFF:
            raise ValueError(f"TPM2B too large: {len(b)} bytes")
        self._parts += _U16.pack(len(b))
        self._parts += b
        return self

    def __len__(self) -> int:
        return len(self._parts)

    def getvalue(self) -> bytes:
        return bytes(self._parts)


def u16(v: int) -> bytes:
    """Big-endian u16."""
    return _U16.pack(v)


def u32(v: int) -> bytes:
    """Big-endian u32."""
    return _U32.pack(v)


def tpm2b(b: bytes) -> bytes:
    """A TPM2B: u16 size + bytes."""
    if len(b) > 0xFFFF:
        raise ValueError(f"TPM2B too large: {len(b)} bytes")
    return _U16.pack(len(b)) + b
