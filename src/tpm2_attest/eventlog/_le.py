"""A small bounds-checked little-endian cursor for event data (event logs are little-endian).

Offsets in errors are absolute offsets in the log (``base`` + position), so a failure deep
inside an event still points at the right byte.
"""

from __future__ import annotations

import struct
from typing import Final

from .errors import EventLogError

U16: Final = struct.Struct("<H")
U32: Final = struct.Struct("<I")
U64: Final = struct.Struct("<Q")
_GUID: Final = struct.Struct("<IHH8s")


def guid_text(b: bytes, pos: int = 0) -> str:
    """Format the 16-byte EFI_GUID at ``pos`` (mixed-endian) as canonical lower-case text."""
    d1, d2, d3, d4 = _GUID.unpack_from(b, pos)
    return f"{d1:08x}-{d2:04x}-{d3:04x}-{d4[:2].hex()}-{d4[2:].hex()}"


class LeReader:
    """Cursor over ``buf[pos:end]``; every read checks the bytes left and raises EventLogError."""

    __slots__ = ("base", "buf", "end", "pos")

    def __init__(self, buf: bytes, base: int = 0, pos: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.base = base
        self.pos = pos
        self.end = len(buf) if end is None else end

    @property
    def remaining(self) -> int:
        """Bytes not yet consumed."""
        return self.end - self.pos

    def fail(self, message: str) -> EventLogError:
        """An EventLogError located at the current position."""
        return EventLogError(message, self.base + self.pos)

    def _need(self, n: int, what: str) -> int:
        p = self.pos
        if n < 0 or n > self.end - p:
            raise EventLogError(f"{what}: need {n} bytes, {self.end - p} left", self.base + p)
        self.pos = p + n
        return p

    def u8(self, what: str = "u8") -> int:
        return self.buf[self._need(1, what)]

    def u16(self, what: str = "u16") -> int:
        return int(U16.unpack_from(self.buf, self._need(2, what))[0])

    def u32(self, what: str = "u32") -> int:
        return int(U32.unpack_from(self.buf, self._need(4, what))[0])

    def u64(self, what: str = "u64") -> int:
        return int(U64.unpack_from(self.buf, self._need(8, what))[0])

    def uintn(self, size: int, what: str = "UINTN") -> int:
        """A UINTN of ``size`` bytes (4 or 8, from the Spec ID event's uintnSize)."""
        return self.u64(what) if size == 8 else self.u32(what)

    def raw(self, n: int, what: str = "bytes") -> bytes:
        p = self._need(n, what)
        return self.buf[p : p + n]

    def guid(self, what: str = "GUID") -> str:
        return guid_text(self.buf, self._need(16, what))

    def rest(self) -> bytes:
        """All bytes left."""
        p, self.pos = self.pos, self.end
        return self.buf[p : self.end]

    def ucs2z(self, what: str = "UCS-2 string") -> str:
        """A NUL-terminated UCS-2 string (the terminator is consumed, not returned)."""
        buf, p, end = self.buf, self.pos, self.end
        q = p
        while True:
            q = buf.find(b"\0\0", q, end)
            if q < 0:
                raise EventLogError(f"{what}: no terminator", self.base + p)
            if (q - p) % 2 == 0:
                break
            q += 1
        self.pos = q + 2
        return buf[p:q].decode("utf-16-le", "replace")

    def asciiz(self, what: str = "string") -> str:
        """A NUL-terminated 8-bit string (the terminator is consumed, not returned)."""
        p = self.pos
        q = self.buf.find(b"\0", p, self.end)
        if q < 0:
            raise EventLogError(f"{what}: no terminator", self.base + p)
        self.pos = q + 1
        return self.buf[p:q].decode("latin-1")
