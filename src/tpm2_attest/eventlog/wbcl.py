"""Windows Boot Configuration Log (WBCL): the SIPA events Windows measures into PCRs 12-14.

The Windows boot manager and loader record their configuration as EV_EVENT_TAG events whose
TCG_PCClientTaggedEvent holds SIPA events (``{UINT32 type, UINT32 size, data}``), nested in
container events (trust boundaries, loaded-module and ELAM aggregations). Each tagged event's
digest is the hash of its whole data, so an event is read only when its data matches its
digest; the SIPA events inside are then authentic. The event type names and layouts follow
Microsoft's ``wbcl.h`` (as go-attestation reads them).

Decoded: boot counter, cold boot vs resume (transfer control), boot/kernel debugging, test
signing, code integrity, DEP, safe mode, WinPE, flight signing, BitLocker unlock flags, the
loaded modules (path, Authenticode hash, hash algorithm, signer; the loads of one hash merged
into one module). Counted but not decoded: ELAM configuration, VBS and hypervisor settings,
revocation lists, authorities (PCR 14), KSR. The walk is one loop over an explicit stack of
container ends: linear in the data, whatever the nesting.
"""

from __future__ import annotations

import struct
from codecs import utf_16_le_decode as _utf16_le_decode
from dataclasses import dataclass
from typing import Any, Final

_HDR: Final = struct.Struct("<II")

TYPE_CLASS_MASK: Final = 0x000F0000
CONTAINER_CLASS: Final = 0x00010000
LOADED_MODULE_AGGREGATION: Final = 0x40010003
ELAM_AGGREGATION: Final = 0x40010002

BOOT_COUNTER: Final = 0x00020002
TRANSFER_CONTROL: Final = 0x00020003
BITLOCKER_UNLOCK: Final = 0x00020005
BOOT_DEBUGGING: Final = 0x00040001
OS_KERNEL_DEBUG: Final = 0x00050001
CODE_INTEGRITY: Final = 0x00050002
TEST_SIGNING: Final = 0x00050003
DATA_EXECUTION_PREVENTION: Final = 0x00050004
SAFE_MODE: Final = 0x00050005
WIN_PE: Final = 0x00050006
FLIGHT_SIGNING: Final = 0x00050021
FILE_PATH: Final = 0x00070001
IMAGE_SIZE: Final = 0x00070002
HASH_ALGORITHM_ID: Final = 0x00070003
AUTHENTICODE_HASH: Final = 0x00070004
AUTHORITY_ISSUER: Final = 0x00070005
AUTHORITY_PUBLISHER: Final = 0x00070008
IMAGE_VALIDATED: Final = 0x0007000A

BITLOCKER_FLAGS: Final[dict[int, str]] = {
    0x01: "cached", 0x02: "media", 0x04: "tpm", 0x10: "pin", 0x20: "external", 0x40: "recovery",
}
"""BitLocker unlock flags (FVEB_UNLOCK_FLAG_*): how the volume master key was obtained."""

HASH_ALGORITHMS: Final[dict[int, str]] = {
    0x8003: "md5", 0x8004: "sha1", 0x800C: "sha256", 0x800D: "sha384", 0x800E: "sha512",
}
"""CALG_* ids of the loaded-module hash algorithm (the low byte is what go-attestation checks)."""


@dataclass(frozen=True, slots=True)
class WindowsModule:
    """A module the Windows loader measured (loaded-module aggregations in PCRs 12-14).

    Windows measures a module more than once (its Authenticode hash alone in PCR 12, the same
    hash with the path, size and signer in PCR 13): the loads of one hash are merged into one
    module, as go-attestation keys ``LoadedModules`` by hash. ``pcrs`` lists where it was
    measured, ``loads`` how many aggregations were merged; a field is the last value measured
    for it, except ``image_validated``, true only when no load said it was not validated. A
    load without a hash is a module of its own."""

    pcr: int
    path: str | None
    authenticode_hash: bytes | None
    hash_algorithm: str | None
    image_size: int | None
    image_validated: bool | None
    authority_issuer: str | None
    authority_publisher: str | None
    pcrs: tuple[int, ...] = ()
    loads: int = 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {
            "pcr": self.pcr,
            "pcrs": list(self.pcrs or (self.pcr,)),
            "loads": self.loads,
            "path": self.path,
            "authenticode_hash": self.authenticode_hash.hex() if self.authenticode_hash else None,
            "hash_algorithm": self.hash_algorithm,
            "image_size": self.image_size,
            "image_validated": self.image_validated,
            "authority_issuer": self.authority_issuer,
            "authority_publisher": self.authority_publisher,
        }


class WbclReader:
    """Accumulates the facts of the verified WBCL tagged events of one boot."""

    def __init__(self) -> None:
        self.boot_count: int | None = None
        self.cold_boot: bool | None = None
        self.flags: dict[str, bool] = {}
        self.latched_off: dict[str, bool | None] = {"code_integrity": None, "dep": None}
        self.bitlocker_unlocks: list[int] = []
        # Authenticode hash (or, for a load without one, its position) -> the merged load:
        # [first PCR, {field type: value}, PCRs, loads, validated]; decoded by ``modules``.
        self._modules: dict[bytes | int, list[Any]] = {}
        self._loads = 0
        self.sipa_events = 0
        self.conflicts: list[str] = []

    @property
    def modules(self) -> list[WindowsModule]:
        """The modules measured, one per Authenticode hash, in the order first measured."""
        return [_module(m) for m in self._modules.values()]

    def read(self, pcr: int, tag_id: int, data: bytes) -> bool:
        """Read one verified tagged event; False when it is not a SIPA container.

        One pass over the data with an explicit stack of container ends: linear in the data
        whatever the nesting, and no object per SIPA event (a Windows boot logs ~1,000)."""
        if tag_id & TYPE_CLASS_MASK != CONTAINER_CLASS:
            return False
        unpack = _HDR.unpack_from
        event = self._event
        pos, end = 0, len(data)
        ends: list[int] = []      # the ends of the enclosing containers
        module: dict[int, bytes] | None = None  # type -> value of the first such field
        module_depth = -1
        count = 0
        while True:
            if pos >= end:
                if module is not None and len(ends) == module_depth:
                    self._module(pcr, module)
                    module = None
                if not ends:
                    break
                pos, end = end, ends.pop()
                continue
            if end - pos < 8:
                self.conflicts.append(f"PCR {pcr}: truncated SIPA event header")
                pos = end
                continue
            etype, size = unpack(data, pos)
            body = pos + 8
            nxt = body + size
            if nxt > end:
                self.conflicts.append(f"PCR {pcr}: SIPA event 0x{etype:08x} overruns its "
                                      "container")
                pos = end
                continue
            count += 1
            if etype & 0x000F0000 == 0x00010000 and etype != ELAM_AGGREGATION:
                if module is None and etype == LOADED_MODULE_AGGREGATION:
                    module = {}
                    module_depth = len(ends) + 1
                ends.append(end)
                pos, end = body, nxt
                continue
            if module is not None:
                if etype not in module:
                    module[etype] = data[body:nxt]
            else:
                event(pcr, etype, data[body:nxt])
            pos = nxt
        self.sipa_events += count
        return True

    def _event(self, pcr: int, etype: int, value: bytes) -> None:
        n = int.from_bytes(value[:8], "little") if value else 0
        if etype == BOOT_COUNTER and len(value) == 8:
            if self.boot_count is not None and self.boot_count != n:
                self.conflicts.append(f"boot counter {n} after {self.boot_count}")
            self.boot_count = n
        elif etype == TRANSFER_CONTROL and len(value) == 4:
            self.cold_boot = n == 1
        elif etype == BITLOCKER_UNLOCK and 0 < len(value) <= 8:
            if pcr == 12:  # Windows repeats it in PCR 13
                self.bitlocker_unlocks.append(n)
        elif etype in _LATCH_ON and len(value) == 1:
            name = _LATCH_ON[etype]
            self.flags[name] = self.flags.get(name, False) or n != 0
        elif etype in _LATCH_OFF and len(value) == _LATCH_OFF[etype][1]:
            name = _LATCH_OFF[etype][0]
            if n == 0:
                self.latched_off[name] = False
            elif self.latched_off[name] is None:
                self.latched_off[name] = True

    def _module(self, pcr: int, f: dict[int, bytes]) -> None:
        """Merge one loaded-module aggregation (``f``: field type -> the value of the first such
        field in it) into the module of its Authenticode hash: later values win, as a later
        load wins in go-attestation, and one unvalidated load makes the module unvalidated."""
        digest = f.get(AUTHENTICODE_HASH)
        self._loads += 1
        key: bytes | int = digest if digest is not None else self._loads
        valid = f.get(IMAGE_VALIDATED)
        validated = (valid[0] == 1) if valid is not None and len(valid) == 1 else None
        m = self._modules.get(key)
        if m is None:
            self._modules[key] = [pcr, f, [pcr], 1, validated]
            return
        m[1].update(f)
        if pcr not in m[2]:
            m[2].append(pcr)
        m[3] += 1
        if validated is not None:
            m[4] = validated and m[4] is not False


def _module(record: list[Any]) -> WindowsModule:
    pcr, f, pcrs, loads, validated = record
    alg = f.get(HASH_ALGORITHM_ID)
    size = f.get(IMAGE_SIZE)
    return WindowsModule(
        pcr=pcr,
        path=_utf16(f.get(FILE_PATH)),
        authenticode_hash=f.get(AUTHENTICODE_HASH),
        hash_algorithm=((HASH_ALGORITHMS.get(int.from_bytes(alg, "little")) or f"0x{alg.hex()}")
                        if alg and len(alg) == 4 else None),
        image_size=int.from_bytes(size, "little") if size and len(size) == 8 else None,
        image_validated=validated,
        authority_issuer=_utf16(f.get(AUTHORITY_ISSUER)),
        authority_publisher=_utf16(f.get(AUTHORITY_PUBLISHER)),
        pcrs=tuple(pcrs),
        loads=loads,
    )


_LATCH_ON: Final[dict[int, str]] = {
    BOOT_DEBUGGING: "boot_debugging",
    OS_KERNEL_DEBUG: "kernel_debugging",
    TEST_SIGNING: "test_signing",
    SAFE_MODE: "safe_mode",
    WIN_PE: "winpe",
    FLIGHT_SIGNING: "flight_signing",
}
"""One-byte booleans that weaken the boot when ever set (true once any event says so)."""

_LATCH_OFF: Final[dict[int, tuple[str, int]]] = {
    CODE_INTEGRITY: ("code_integrity", 1),
    DATA_EXECUTION_PREVENTION: ("dep", 8),
}
"""Booleans that protect the boot: true only when every event says so (name, value size)."""


def _utf16(value: bytes | None) -> str | None:
    if not value:
        return None
    # The codec function itself: bytes.decode("utf-16-le") goes through a Python wrapper.
    return _utf16_le_decode(value[: len(value) & ~1], "replace", True)[0].rstrip("\0")


def bitlocker_flag_names(flags: int) -> list[str]:
    """The names of the BitLocker unlock flags set in ``flags`` (unknown bits as hex)."""
    names = [name for bit, name in BITLOCKER_FLAGS.items() if flags & bit]
    rest = flags & ~sum(BITLOCKER_FLAGS)
    if rest:
        names.append(f"0x{rest:x}")
    return names


__all__ = ["BITLOCKER_FLAGS", "WbclReader", "WindowsModule", "bitlocker_flag_names"]
