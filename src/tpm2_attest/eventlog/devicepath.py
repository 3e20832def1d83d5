"""UEFI device paths (UEFI 2.10 chapter 10) rendered to the specification's text form.

The walk is a loop over nodes (never recursion) and every node is at least 4 bytes, so a
hostile path costs time linear in its length; malformed paths raise EventLogError.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

from .._frozen import frozen
from ._le import guid_text
from .errors import EventLogError

_NODE: Final = struct.Struct("<BBH")
_U16: Final = struct.Struct("<H")
_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")

END_TYPE: Final = 0x7F
END_ENTIRE: Final = 0xFF
END_INSTANCE: Final = 0x01


@frozen
class DevicePathNode:
    """One EFI_DEVICE_PATH_PROTOCOL node: type, sub-type and its data (after the 4-byte header)."""

    type: int
    subtype: int
    data: bytes

    @property
    def text(self) -> str:
        """The node in UEFI text form, e.g. ``Pci(0x1F,0x2)`` or ``\\EFI\\BOOT\\BOOTX64.EFI``."""
        return node_text(self.type, self.subtype, self.data)


def parse_device_path(data: bytes, base: int = 0) -> tuple[DevicePathNode, ...]:
    """Split a device path into nodes up to End Entire; raise EventLogError when malformed.

    End Instance nodes are kept (they separate instances of a multi-instance path). Bytes after
    End Entire are ignored, as firmware may pad.
    """
    nodes: list[DevicePathNode] = []
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 4:
            raise EventLogError("device path: truncated node header", base + pos)
        t, st, length = _NODE.unpack_from(data, pos)
        if length < 4:
            raise EventLogError(f"device path: node length {length} < 4", base + pos)
        if length > end - pos:
            raise EventLogError(f"device path: node length {length} exceeds the path", base + pos)
        if t == END_TYPE and st == END_ENTIRE:
            return tuple(nodes)
        nodes.append(DevicePathNode(t, st, data[pos + 4 : pos + length]))
        pos += length
    return tuple(nodes)


def device_path_text(data: bytes, base: int = 0) -> str:
    """The whole device path as text (nodes joined by ``/``, instances by ``,``)."""
    parts: list[str] = []
    sep = ""
    for n in parse_device_path(data, base):
        if n.type == END_TYPE:
            sep = ","
            continue
        if parts and not sep:
            sep = "/"
        parts.append(sep + n.text)
        sep = ""
    return "".join(parts)


def _hex(b: bytes) -> str:
    return b.hex().upper()


def _ucs2(b: bytes) -> str:
    s = b.decode("utf-16-le", "replace")
    i = s.find("\0")
    return s if i < 0 else s[:i]


def _eisa(hid: int) -> str:
    """Decode a compressed EISA id (e.g. 0x0A0341D0 -> PNP0A03)."""
    v = hid & 0xFFFF
    letters = "".join(chr(((v >> s) & 0x1F) + 0x40) for s in (10, 5, 0))
    return f"{letters}{hid >> 16:04X}"


def _acpi(d: bytes) -> str:
    if len(d) < 8:
        return _generic(2, 1, d)
    hid, uid = struct.unpack_from("<II", d)
    if hid & 0xFFFF == 0x41D0:
        known = {0x0A03: "PciRoot", 0x0A08: "PcieRoot", 0x0604: "Floppy", 0x0301: "Keyboard",
                 0x0501: "Serial", 0x0401: "ParallelPort"}.get(hid >> 16)
        if known:
            return f"{known}(0x{uid:X})"
    return f"Acpi({_eisa(hid)},0x{uid:X})"


def _acpi_ex(d: bytes) -> str:
    if len(d) < 12:
        return _generic(2, 2, d)
    hid, uid, cid = struct.unpack_from("<III", d)
    strs = d[12:].split(b"\0")
    hs, us, cs = ([s.decode("latin-1") for s in strs] + ["", "", ""])[:3]
    return f"AcpiEx({_eisa(hid)},{_eisa(cid) if cid else '0'},0x{uid:X},{hs},{cs},{us})"


def _pci(d: bytes) -> str:
    return f"Pci(0x{d[1]:X},0x{d[0]:X})" if len(d) >= 2 else _generic(1, 1, d)


def _vendor(kind: str, t: int, st: int, d: bytes) -> str:
    if len(d) < 16:
        return _generic(t, st, d)
    rest = d[16:]
    return f"{kind}({guid_text(d)}{',' + _hex(rest) if rest else ''})"


def _hd(d: bytes) -> str:
    if len(d) < 38:
        return _generic(4, 1, d)
    num, start, size = struct.unpack_from("<IQQ", d)
    sig, fmt, sigtype = d[20:36], d[36], d[37]
    if sigtype == 2:
        return f"HD({num},GPT,{guid_text(sig)},0x{start:X},0x{size:X})"
    if sigtype == 1:
        return f"HD({num},MBR,0x{_U32.unpack_from(sig)[0]:08X},0x{start:X},0x{size:X})"
    return f"HD({num},{fmt},0,0x{start:X},0x{size:X})"


def _mac(d: bytes) -> str:
    if len(d) < 33:
        return _generic(3, 0x0B, d)
    n = 6 if d[32] in (0, 1) else 32
    return f"MAC({d[:n].hex().upper()},0x{d[32]:X})"


def _ipv4(d: bytes) -> str:
    if len(d) < 8:
        return _generic(3, 0x0C, d)
    return f"IPv4({'.'.join(str(x) for x in d[4:8])})"


def _bbs(d: bytes) -> str:
    if len(d) < 4:
        return _generic(5, 1, d)
    dev, status = struct.unpack_from("<HH", d)
    desc = d[4:].split(b"\0", 1)[0].decode("latin-1")
    return f"BBS(0x{dev:X},{desc},0x{status:X})"


def _fmt(fmt: str, pattern: str, t: int, st: int) -> Callable[[bytes], str]:
    s = struct.Struct("<" + fmt)

    def render(d: bytes) -> str:
        if len(d) < s.size:
            return _generic(t, st, d)
        return pattern.format(*s.unpack_from(d))

    return render


def _generic(t: int, st: int, d: bytes) -> str:
    return f"Path({t},{st}{',' + _hex(d) if d else ''})"


_RENDER: Final[dict[tuple[int, int], Callable[[bytes], str]]] = {
    (1, 1): _pci,
    (1, 2): _fmt("B", "PcCard(0x{0:X})", 1, 2),
    (1, 3): _fmt("IQQ", "MemoryMapped(0x{0:X},0x{1:X},0x{2:X})", 1, 3),
    (1, 4): lambda d: _vendor("VenHw", 1, 4, d),
    (1, 5): _fmt("I", "Ctrl(0x{0:X})", 1, 5),
    (1, 6): _fmt("BQ", "BMC(0x{0:X},0x{1:X})", 1, 6),
    (2, 1): _acpi,
    (2, 2): _acpi_ex,
    (2, 3): _fmt("I", "AcpiAdr(0x{0:X})", 2, 3),
    (3, 1): _fmt("BBH", "Ata(0x{0:X},0x{1:X},0x{2:X})", 3, 1),
    (3, 2): _fmt("HH", "Scsi(0x{0:X},0x{1:X})", 3, 2),
    (3, 3): _fmt("IQQ", "Fibre(0x{1:X},0x{2:X})", 3, 3),
    (3, 4): _fmt("IQ", "I1394(0x{1:X})", 3, 4),
    (3, 5): _fmt("BB", "USB(0x{0:X},0x{1:X})", 3, 5),
    (3, 6): _fmt("I", "I2O(0x{0:X})", 3, 6),
    (3, 0x0A): lambda d: _vendor("VenMsg", 3, 0x0A, d),
    (3, 0x0B): _mac,
    (3, 0x0C): _ipv4,
    (3, 0x0D): lambda d: f"IPv6({d[16:32].hex()})" if len(d) >= 32 else _generic(3, 0x0D, d),
    (3, 0x0E): _fmt("IQBBB", "Uart({1},{2},{3},{4})", 3, 0x0E),
    (3, 0x0F): _fmt("HHBBB", "UsbClass(0x{0:X},0x{1:X},0x{2:X},0x{3:X},0x{4:X})", 3, 0x0F),
    (3, 0x10): _fmt("HHH", "UsbWwid(0x{1:X},0x{2:X},0x{0:X})", 3, 0x10),
    (3, 0x11): _fmt("B", "Unit(0x{0:X})", 3, 0x11),
    (3, 0x12): _fmt("HHH", "Sata(0x{0:X},0x{1:X},0x{2:X})", 3, 0x12),
    (3, 0x14): _fmt("H", "Vlan({0})", 3, 0x14),
    (3, 0x17): lambda d: (
        f"NVMe(0x{_U32.unpack_from(d)[0]:X},{'-'.join(f'{x:02X}' for x in d[4:12])})"
        if len(d) >= 12
        else _generic(3, 0x17, d)
    ),
    (3, 0x18): lambda d: f"Uri({d.decode('latin-1')})",
    (3, 0x19): _fmt("BB", "UFS(0x{0:X},0x{1:X})", 3, 0x19),
    (3, 0x1A): _fmt("B", "SD(0x{0:X})", 3, 0x1A),
    (3, 0x1D): _fmt("B", "eMMC(0x{0:X})", 3, 0x1D),
    (4, 1): _hd,
    (4, 2): _fmt("IQQ", "CDROM(0x{0:X},0x{1:X},0x{2:X})", 4, 2),
    (4, 3): lambda d: _vendor("VenMedia", 4, 3, d),
    (4, 4): _ucs2,
    (4, 5): lambda d: f"Media({guid_text(d)})" if len(d) >= 16 else _generic(4, 5, d),
    (4, 6): lambda d: f"FvFile({guid_text(d)})" if len(d) >= 16 else _generic(4, 6, d),
    (4, 7): lambda d: f"Fv({guid_text(d)})" if len(d) >= 16 else _generic(4, 7, d),
    (4, 8): _fmt("IQQ", "Offset(0x{1:X},0x{2:X})", 4, 8),
    (4, 9): lambda d: (
        f"RamDisk(0x{_U64.unpack_from(d)[0]:X},0x{_U64.unpack_from(d, 8)[0]:X},"
        f"{guid_text(d, 16)},{_U16.unpack_from(d, 32)[0]})"
        if len(d) >= 34
        else _generic(4, 9, d)
    ),
    (5, 1): _bbs,
}


def node_text(t: int, st: int, data: bytes) -> str:
    """Text form of one node; unknown nodes use the generic ``Path(type,subtype,hex)`` form."""
    render = _RENDER.get((t, st))
    return render(data) if render is not None else _generic(t, st, data)
