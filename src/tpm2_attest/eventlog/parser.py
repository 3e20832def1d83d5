"""Parse TCG PC Client event logs (PFP 1.06 section 10): SHA-1 legacy and crypto-agile.

Every length is untrusted: each read is checked against the bytes left before anything is
sliced, so no allocation exceeds the input; every record consumes at least 12 bytes, so the
loop is linear and cannot spin. Failures raise EventLogError with the byte offset.
"""

from __future__ import annotations

import struct
from typing import Final

from ..tpm2.constants import HASH_SIZES, TPM_ALG
from .banks import bank_name
from .decode import SPEC_ID_EVENT03, STARTUP_LOCALITY, decode_event_data, decode_spec_id
from .errors import EventLogError
from .events import Digest, Event, EventLog, LogFormat
from .types import EventType

MAX_PCR_INDEX: Final = 31
"""Highest PCR index an extended event may name (TPM2_MAX_PCRS - 1); EV_NO_ACTION is exempt."""
MAX_UNKNOWN_DIGEST_SIZE: Final = 128
"""Largest digest size accepted for an algorithm this library does not know."""

_LEGACY: Final = struct.Struct("<II20sI")
_HDR2: Final = struct.Struct("<III")
_U16: Final = struct.Struct("<H")
_U32: Final = struct.Struct("<I")
_NO_ACTION: Final = int(EventType.EV_NO_ACTION)
_HCRTM: Final = int(EventType.EV_EFI_HCRTM_EVENT)
_SHA1: Final = int(TPM_ALG.SHA1)
_ZERO20: Final = bytes(20)


class _Padding:
    """Answers "is everything from ``pos`` 0x00 (or 0xFF)?" (unused log area, not events) in
    O(1) after one linear scan, so a log of many all-zero headers stays linear."""

    __slots__ = ("_buf", "_start")

    def __init__(self, buf: bytes) -> None:
        self._buf = buf
        self._start: int | None = None

    def __call__(self, pos: int) -> bool:
        if self._start is None:
            b = self._buf
            self._start = min(len(b.rstrip(b"\0")), len(b.rstrip(b"\xff")))
        return pos >= self._start


class _Pcr0:
    """Tracks what sets PCR 0's initial value: StartupLocality and H-CRTM events."""

    __slots__ = ("extended", "hcrtm", "locality")

    # ``extended``: PCR 0 received a measurement other than an H-CRTM one.

    def __init__(self) -> None:
        self.extended = False
        self.hcrtm = False
        self.locality: int | None = None

    def see(self, index: int, offset: int, etype: int, data: bytes) -> None:
        if etype == _NO_ACTION:
            if data[:16] != STARTUP_LOCALITY:
                return
            if len(data) != 17:
                raise EventLogError(f"StartupLocality event is {len(data)} bytes, not 17",
                                    offset, index)
            if self.locality is not None:
                raise EventLogError("second StartupLocality event", offset, index)
            if self.extended:
                raise EventLogError("StartupLocality event after PCR 0 was extended",
                                    offset, index)
            if data[16] > 4:
                raise EventLogError(f"StartupLocality {data[16]} is not a TPM locality",
                                    offset, index)
            self.locality = data[16]
            return
        if etype == _HCRTM:
            # One EV_EFI_HCRTM_EVENT per H-CRTM sequence, all before TPM2_Startup: they come
            # before any other PCR 0 measurement.
            if self.extended:
                raise EventLogError("H-CRTM event after PCR 0 was extended", offset, index)
            self.hcrtm = True
            return
        self.extended = True


def parse_event_log(data: bytes | bytearray | memoryview, *, strict: bool = True) -> EventLog:
    """Parse a raw TCG event log (as read from securityfs or Tbsi_Get_TCG_Log).

    The crypto-agile format is recognised by its first record, a legacy-format EV_NO_ACTION
    holding "Spec ID Event03"; anything else is parsed as a SHA-1 log. Trailing bytes that
    are all 0x00 or all 0xFF, starting with a whole null event header (the kernel's end
    marker), are unused log area and are reported in ``padding``; a partial header is an error.

    ``strict`` (default) makes structurally impossible data of strictly framed event types
    (UEFI variables, image loads, firmware blobs, H-CRTM) fail the parse; with
    ``strict=False`` those events are kept with a ``MalformedInfo``. Framing errors (record
    sizes, digests, Spec ID, StartupLocality) always raise EventLogError.
    """
    buf = bytes(data)
    n = len(buf)
    if n < _LEGACY.size:
        raise EventLogError(f"log of {n} bytes is shorter than one event header", 0, 0)
    pcr, etype, digest, size = _LEGACY.unpack_from(buf, 0)
    if size > n - _LEGACY.size:
        raise EventLogError(f"event data size {size} exceeds the log", 28, 0)
    first = buf[_LEGACY.size : _LEGACY.size + size]
    if etype == _NO_ACTION and first[:16] == SPEC_ID_EVENT03:
        return _parse_agile(buf, pcr, digest, first, strict)
    return _parse_sha1(buf, strict)


def _parse_sha1(buf: bytes, strict: bool) -> EventLog:
    n = len(buf)
    events: list[Event] = []
    pcr0 = _Pcr0()
    pos = 0
    padding = 0
    hdr = _LEGACY
    new_digest = tuple.__new__
    _is_padding = _Padding(buf)
    while pos < n:
        idx = len(events)
        if n - pos < hdr.size:
            raise EventLogError(f"truncated event header ({n - pos} bytes left)", pos, idx)
        pcr, etype, digest, size = hdr.unpack_from(buf, pos)
        if ((size == 0 and pcr == 0 and etype == 0 and digest == _ZERO20)
                or pcr == etype == 0xFFFFFFFF) and _is_padding(pos):
            padding = n - pos
            break
        data_at = pos + hdr.size
        if size > n - data_at:
            raise EventLogError(f"event data size {size} exceeds the log", pos + 28, idx)
        data = buf[data_at : data_at + size]
        if pcr > MAX_PCR_INDEX and etype != _NO_ACTION:
            raise EventLogError(f"PCR index {pcr} out of range", pos, idx)
        info = decode_event_data(etype, data, data_at, 0, strict=strict)
        if pcr == 0:
            pcr0.see(idx, pos, etype, data)
        events.append(Event(idx, pos, pcr, etype, (new_digest(Digest, (_SHA1, digest)),), data,
                            info))
        pos = data_at + size
    return EventLog(LogFormat.SHA1, tuple(events), ((_SHA1, 20),), None, pcr0.locality,
                    pcr0.hcrtm, n, padding)


def _parse_agile(buf: bytes, pcr: int, digest: bytes, first: bytes, strict: bool) -> EventLog:
    if pcr != 0:
        raise EventLogError(f"Spec ID event in PCR {pcr}, not 0", 0, 0)
    if digest != _ZERO20:
        raise EventLogError("Spec ID event digest is not zero", 8, 0)
    spec = decode_spec_id(first, _LEGACY.size)
    sizes: dict[int, int] = {}
    for alg, size in spec.algorithms:
        known = HASH_SIZES.get(alg)
        if known is not None and size != known:
            raise EventLogError(f"Spec ID gives {bank_name(alg)} digests {size} bytes, not "
                                f"{known}", _LEGACY.size, 0)
        if known is None and not 0 < size <= MAX_UNKNOWN_DIGEST_SIZE:
            raise EventLogError(f"Spec ID digest size {size} for algorithm 0x{alg:04x}",
                                _LEGACY.size, 0)
        sizes[alg] = size
    uintn = {1: 4, 2: 8}.get(spec.uintn_size, 0)
    nalgs = len(sizes)
    n = len(buf)
    events: list[Event] = [
        Event(0, 0, 0, _NO_ACTION, (Digest(_SHA1, digest),), first, spec)
    ]
    pcr0 = _Pcr0()
    pos = _LEGACY.size + len(first)
    padding = 0
    _is_padding = _Padding(buf)
    hdr, u16, u32 = _HDR2, _U16, _U32
    new_digest = tuple.__new__  # Digest(alg, value) without NamedTuple's Python-level __new__
    while pos < n:
        idx = len(events)
        start = pos
        if n - pos < hdr.size:
            raise EventLogError(f"truncated event header ({n - pos} bytes left)", pos, idx)
        pcr, etype, count = hdr.unpack_from(buf, pos)
        if ((count == 0 and pcr == 0 and etype == 0) or pcr == etype == 0xFFFFFFFF) \
                and _is_padding(pos):
            padding = n - pos
            break
        if count > nalgs:
            raise EventLogError(f"digest count {count} exceeds the {nalgs} banks of the log",
                                pos + 8, idx)
        pos += hdr.size
        digests: list[Digest] = []
        for _ in range(count):
            if n - pos < 2:
                raise EventLogError("truncated digest algorithm", pos, idx)
            alg = u16.unpack_from(buf, pos)[0]
            dsize = sizes.get(alg)
            if dsize is None:
                raise EventLogError(f"digest algorithm 0x{alg:04x} is not in the Spec ID "
                                    "event", pos, idx)
            pos += 2
            if n - pos < dsize:
                raise EventLogError(f"truncated {bank_name(alg)} digest", pos, idx)
            digests.append(new_digest(Digest, (alg, buf[pos : pos + dsize])))
            pos += dsize
        if count > 1 and len({d.alg for d in digests}) != count:
            raise EventLogError("an algorithm appears twice in one event", start + 12, idx)
        if n - pos < 4:
            raise EventLogError("truncated event size", pos, idx)
        size = u32.unpack_from(buf, pos)[0]
        pos += 4
        if size > n - pos:
            raise EventLogError(f"event data size {size} exceeds the log", pos - 4, idx)
        data = buf[pos : pos + size]
        if pcr > MAX_PCR_INDEX and etype != _NO_ACTION:
            raise EventLogError(f"PCR index {pcr} out of range", start, idx)
        info = decode_event_data(etype, data, pos, uintn, strict=strict)
        if pcr == 0:
            pcr0.see(idx, start, etype, data)
        events.append(Event(idx, start, pcr, etype, tuple(digests), data, info))
        pos += size
    return EventLog(LogFormat.CRYPTO_AGILE, tuple(events), tuple(sizes.items()), spec,
                    pcr0.locality, pcr0.hcrtm, n, padding)
