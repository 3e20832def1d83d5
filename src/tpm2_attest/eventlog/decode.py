"""Decode event data by event type into the typed ``*Info`` forms of :mod:`.events`.

Structures whose framing the specification fixes (UEFI_VARIABLE_DATA, UEFI_IMAGE_LOAD_EVENT,
UEFI_PLATFORM_FIRMWARE_BLOB, the H-CRTM marker, Spec ID and StartupLocality) are decoded
strictly: a lying length raises EventLogError (as tpm2-tools does) unless the caller asked for
lenient parsing. Types firmware is known to fill loosely (EV_POST_CODE, EV_S_CRTM_*, EV_IPL,
GPT, hand-off tables...) fall back to text, raw or ``MalformedInfo`` and never fail the log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from ._le import LeReader, guid_text
from .devicepath import device_path_text
from .errors import EventLogError
from .events import (
    EventInfo,
    FirmwareBlobInfo,
    GptInfo,
    GptPartition,
    GuidInfo,
    HandoffTablesInfo,
    HcrtmComponentInfo,
    ImageLoadInfo,
    MalformedInfo,
    NoActionInfo,
    RawInfo,
    SeparatorInfo,
    SpecIdInfo,
    StartupLocalityInfo,
    TaggedEventInfo,
    TextInfo,
    UefiAuthorityInfo,
    UefiVariableInfo,
)
from .types import IMAGE_LOAD_EVENTS, VARIABLE_EVENTS, EventType

SPEC_ID_EVENT03: Final = b"Spec ID Event03\0"
STARTUP_LOCALITY: Final = b"StartupLocality\0"
HCRTM_COMPONENT: Final = b"H-CRTM CompMeas\0"
_RAW: Final = RawInfo()
_WS: Final = {9: None, 10: None, 13: None}

Decoder = Callable[[bytes, int, int], EventInfo]
"""(data, absolute offset of the data, UINTN size) -> info; may raise EventLogError."""


def _text(data: bytes) -> TextInfo | None:
    """Text when the data is a clean string (UTF-8, else ASCII-range UTF-16LE); else None."""
    s = data.rstrip(b"\0")
    if not s:
        return None
    if s.isascii():
        t = s.decode("ascii")
        if t.isprintable() or t.translate(_WS).isprintable():
            return TextInfo(t, "ascii")
    else:
        try:
            t = s.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            if t.translate(_WS).isprintable():
                return TextInfo(t, "utf-8")
    if len(data) % 2 == 0:
        t = data.decode("utf-16-le", "replace").rstrip("\0")
        if t and t.isascii() and t.translate(_WS).isprintable():
            return TextInfo(t, "utf-16")
    return None


def _text_or_raw(data: bytes, base: int, uintn: int) -> EventInfo:
    return _text(data) or _RAW


def decode_spec_id(data: bytes, base: int) -> SpecIdInfo:
    """Decode TCG_EfiSpecIDEventStruct strictly (every size must agree with the data)."""
    r = LeReader(data, base)
    sig = r.raw(16, "Spec ID signature")
    if sig != SPEC_ID_EVENT03:
        raise EventLogError("not a Spec ID Event03 structure", base)
    platform_class = r.u32("platformClass")
    minor = r.u8("specVersionMinor")
    major = r.u8("specVersionMajor")
    errata = r.u8("specErrata")
    uintn = r.u8("uintnSize")
    count_at = r.pos
    count = r.u32("numberOfAlgorithms")
    if count == 0:
        raise EventLogError("Spec ID event lists no algorithm", base + count_at)
    if count > r.remaining // 4:
        raise EventLogError(f"numberOfAlgorithms {count} exceeds the event data", base + count_at)
    algs: list[tuple[int, int]] = []
    seen: set[int] = set()
    for _ in range(count):
        at = r.pos
        alg = r.u16("algorithmId")
        size = r.u16("digestSize")
        if alg in seen:
            raise EventLogError(f"algorithm 0x{alg:04x} listed twice", base + at)
        seen.add(alg)
        algs.append((alg, size))
    vendor_size = r.u8("vendorInfoSize")
    vendor = r.raw(vendor_size, "vendorInfo")
    if r.remaining:
        raise EventLogError(f"{r.remaining} bytes after the Spec ID vendorInfo", base + r.pos)
    return SpecIdInfo(sig.rstrip(b"\0").decode("ascii"), platform_class, major, minor, errata,
                      uintn, tuple(algs), vendor)


def decode_variable(data: bytes, base: int, uintn: int = 8) -> UefiVariableInfo:
    """Decode UEFI_VARIABLE_DATA strictly (name and value must lie inside the event data)."""
    r = LeReader(data, base)
    guid = r.guid("UEFI_VARIABLE_DATA.VariableName")
    name_at = r.pos
    name_len = r.u64("UnicodeNameLength")
    data_len = r.u64("VariableDataLength")
    if name_len > r.remaining // 2:
        raise EventLogError(f"UnicodeNameLength {name_len} exceeds the event data", base + name_at)
    name = r.raw(name_len * 2, "UnicodeName").decode("utf-16-le", "replace").rstrip("\0")
    if data_len > r.remaining:
        raise EventLogError(
            f"VariableDataLength {data_len} exceeds the event data", base + name_at + 8
        )
    value = r.raw(data_len, "VariableData")
    return UefiVariableInfo(guid, name, value, r.remaining)


def decode_authority(data: bytes, base: int, uintn: int = 8) -> UefiAuthorityInfo:
    """Decode the UEFI_VARIABLE_DATA of an authority event strictly."""
    v = decode_variable(data, base, uintn)
    return UefiAuthorityInfo(v.guid, v.name, v.value, v.trailing)


def _image_load_with(data: bytes, base: int, uintn: int) -> ImageLoadInfo:
    r = LeReader(data, base)
    location = r.u64("ImageLocationInMemory")
    length = r.uintn(uintn, "ImageLengthInMemory")
    link = r.uintn(uintn, "ImageLinkTimeAddress")
    at = r.pos
    dp_len = r.uintn(uintn, "LengthOfDevicePath")
    if dp_len > r.remaining:
        raise EventLogError(f"LengthOfDevicePath {dp_len} exceeds the event data", base + at)
    dp_at = r.pos
    dp = r.raw(dp_len, "DevicePath")
    try:
        return ImageLoadInfo(location, length, link, dp, device_path_text(dp, base + dp_at))
    except EventLogError as exc:
        return ImageLoadInfo(location, length, link, dp, None, str(exc))


def decode_image_load(data: bytes, base: int, uintn: int = 8) -> ImageLoadInfo:
    """Decode UEFI_IMAGE_LOAD_EVENT with UINTN fields of ``uintn`` bytes.

    ``uintn`` 0 means the log does not say (SHA-1 logs): 8 bytes, else 4 bytes when that
    layout accounts for the data exactly.
    """
    if uintn:
        return _image_load_with(data, base, uintn)
    try:
        return _image_load_with(data, base, 8)
    except EventLogError:
        if len(data) >= 20 and int.from_bytes(data[16:20], "little") == len(data) - 20:
            return _image_load_with(data, base, 4)
        raise


def decode_blob(data: bytes, base: int, uintn: int = 8) -> FirmwareBlobInfo:
    """UEFI_PLATFORM_FIRMWARE_BLOB (base, length); at least 16 bytes."""
    r = LeReader(data, base)
    return FirmwareBlobInfo(r.u64("BlobBase"), r.u64("BlobLength"))


def decode_blob2(data: bytes, base: int, uintn: int = 8) -> FirmwareBlobInfo:
    """UEFI_PLATFORM_FIRMWARE_BLOB2 (description, base, length), exactly."""
    r = LeReader(data, base)
    desc = r.raw(r.u8("BlobDescriptionSize"), "BlobDescription")
    info = FirmwareBlobInfo(r.u64("BlobBase"), r.u64("BlobLength"),
                            desc.rstrip(b"\0").decode("latin-1"))
    if r.remaining:
        raise r.fail(f"{r.remaining} bytes after UEFI_PLATFORM_FIRMWARE_BLOB2")
    return info


def _post_code(data: bytes, base: int, uintn: int) -> EventInfo:
    text = _text(data)
    if text is not None and text.encoding != "utf-16":
        return text
    if len(data) == 16:
        return decode_blob(data, base)
    return text or _RAW


def _crtm_contents(data: bytes, base: int, uintn: int) -> EventInfo:
    if len(data) == 16:
        return decode_blob(data, base)
    try:
        return decode_blob2(data, base)
    except EventLogError:
        return _text(data) or _RAW


def _crtm_version(data: bytes, base: int, uintn: int) -> EventInfo:
    text = _text(data)
    if text is not None:
        return text
    if len(data) == 16:
        return GuidInfo(guid_text(data))
    return _RAW


def _separator(data: bytes, base: int, uintn: int) -> EventInfo:
    if len(data) == 4:
        return SeparatorInfo(int.from_bytes(data, "little"))
    return _text(data) or _RAW


def _tagged(data: bytes, base: int, uintn: int) -> EventInfo:
    if len(data) >= 8:
        tag, size = int.from_bytes(data[:4], "little"), int.from_bytes(data[4:8], "little")
        if size == len(data) - 8:
            return TaggedEventInfo(tag, data[8:])
    return MalformedInfo("TCG_PCClientTaggedEvent size does not match the event", base)


def _hcrtm(data: bytes, base: int, uintn: int) -> EventInfo:
    if data.rstrip(b"\0") != b"HCRTM":
        raise EventLogError("EV_EFI_HCRTM_EVENT data must be the string HCRTM", base)
    return TextInfo("HCRTM")


def decode_gpt(data: bytes, base: int, uintn: int = 8) -> GptInfo:
    """UEFI_GPT_DATA: EFI_PARTITION_TABLE_HEADER, NumberOfPartitions, the partition entries."""
    r = LeReader(data, base)
    if r.raw(8, "GPT signature") != b"EFI PART":
        raise EventLogError("GPT header signature is not 'EFI PART'", base)
    revision = r.u32("Revision")
    r.raw(12, "HeaderSize/HeaderCRC32/Reserved")
    my_lba, alt_lba, first, last = (r.u64("LBA") for _ in range(4))
    disk_guid = r.guid("DiskGUID")
    entry_lba = r.u64("PartitionEntryLBA")
    n_entries = r.u32("NumberOfPartitionEntries")
    entry_size = r.u32("SizeOfPartitionEntry")
    r.u32("PartitionEntryArrayCRC32")
    at = r.pos
    count = r.uintn(uintn, "NumberOfPartitions")
    if count and entry_size < 56:
        raise EventLogError(f"SizeOfPartitionEntry {entry_size} too small", base + at)
    if count > r.remaining // max(entry_size, 1):
        raise EventLogError(f"NumberOfPartitions {count} exceeds the event data", base + at)
    parts: list[GptPartition] = []
    buf = data
    for _ in range(count):
        p = r.pos
        r.raw(entry_size, "EFI_PARTITION_ENTRY")
        name = buf[p + 56 : p + min(entry_size, 128)].decode("utf-16-le", "replace")
        nul = name.find("\0")
        parts.append(
            GptPartition(
                guid_text(buf, p), guid_text(buf, p + 16),
                int.from_bytes(buf[p + 32 : p + 40], "little"),
                int.from_bytes(buf[p + 40 : p + 48], "little"),
                int.from_bytes(buf[p + 48 : p + 56], "little"),
                name if nul < 0 else name[:nul],
            )
        )
    return GptInfo(disk_guid, revision, my_lba, alt_lba, first, last, entry_lba, n_entries,
                   entry_size, tuple(parts))


def _tables(r: LeReader, uintn: int, description: str | None) -> HandoffTablesInfo:
    at = r.pos
    count = r.uintn(uintn, "NumberOfTables")
    if count > r.remaining // (16 + uintn):
        raise EventLogError(f"NumberOfTables {count} exceeds the event data", r.base + at)
    tables = tuple((r.guid("VendorGuid"), r.uintn(uintn, "VendorTable")) for _ in range(count))
    return HandoffTablesInfo(tables, description)


def decode_handoff_tables(data: bytes, base: int, uintn: int = 8) -> HandoffTablesInfo:
    """UEFI_HANDOFF_TABLE_POINTERS."""
    return _tables(LeReader(data, base), uintn, None)


def decode_handoff_tables2(data: bytes, base: int, uintn: int = 8) -> HandoffTablesInfo:
    """UEFI_HANDOFF_TABLE_POINTERS2 (with a table description)."""
    r = LeReader(data, base)
    desc = r.raw(r.u8("TableDescriptionSize"), "TableDescription")
    return _tables(r, uintn, desc.rstrip(b"\0").decode("latin-1"))


def decode_no_action(data: bytes, base: int, uintn: int = 8) -> EventInfo:
    """EV_NO_ACTION data: Spec ID, StartupLocality or another signed structure."""
    sig = data[:16]
    if sig == STARTUP_LOCALITY:
        if len(data) != 17:
            raise EventLogError(f"StartupLocality event is {len(data)} bytes, not 17", base)
        return StartupLocalityInfo(data[16])
    if sig == SPEC_ID_EVENT03:
        return decode_spec_id(data, base)
    if sig == HCRTM_COMPONENT:
        try:
            r = LeReader(data, base, 16)
            desc = r.raw(r.u8("ComponentDescriptionSize"), "ComponentDescription")
            fmt = r.u8("MeasurementFormatType")
            measurement = r.raw(r.u16("ComponentMeasurementSize"), "ComponentMeasurement")
            if not r.remaining:
                return HcrtmComponentInfo(desc.rstrip(b"\0").decode("latin-1"), fmt, measurement)
        except EventLogError:
            pass
    if len(data) >= 16:
        name = sig.split(b"\0", 1)[0]
        if name and name.isascii() and name.decode("ascii").isprintable():
            return NoActionInfo(name.decode("ascii"), data[16:])
    return _RAW


_STRICT: Final[dict[int, Decoder]] = {
    **{int(t): decode_variable for t in VARIABLE_EVENTS},
    EventType.EV_EFI_VARIABLE_AUTHORITY: decode_authority,
    EventType.EV_EFI_SPDM_DEVICE_AUTHORITY: decode_authority,
    **{int(t): decode_image_load for t in IMAGE_LOAD_EVENTS},
    EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB: decode_blob,
    EventType.EV_EFI_HCRTM_EVENT: _hcrtm,
    EventType.EV_NO_ACTION: decode_no_action,
}

_LENIENT: Final[dict[int, Decoder]] = {
    EventType.EV_POST_CODE: _post_code,
    EventType.EV_POST_CODE2: decode_blob2,
    EventType.EV_SEPARATOR: _separator,
    EventType.EV_ACTION: _text_or_raw,
    EventType.EV_EVENT_TAG: _tagged,
    EventType.EV_S_CRTM_CONTENTS: _crtm_contents,
    EventType.EV_S_CRTM_VERSION: _crtm_version,
    EventType.EV_IPL: _text_or_raw,
    EventType.EV_OMIT_BOOT_DEVICE_EVENTS: _text_or_raw,
    EventType.EV_EFI_GPT_EVENT: decode_gpt,
    EventType.EV_EFI_GPT_EVENT2: decode_gpt,
    EventType.EV_EFI_ACTION: _text_or_raw,
    EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB2: decode_blob2,
    EventType.EV_EFI_HANDOFF_TABLES: decode_handoff_tables,
    EventType.EV_EFI_HANDOFF_TABLES2: decode_handoff_tables2,
}


def decode_event_data(
    etype: int, data: bytes, base: int, uintn: int = 8, *, strict: bool = True
) -> EventInfo:
    """Decode ``data`` of an event of type ``etype`` (``base`` = its offset in the log).

    ``uintn`` is the UINTN size from the Spec ID event (4 or 8; 0 when the log does not say).
    Raises EventLogError for structurally impossible data of strictly-framed types when
    ``strict``; otherwise returns MalformedInfo for those. Never raises for other types.
    """
    if etype not in IMAGE_LOAD_EVENTS and uintn == 0:
        uintn = 8
    dec = _STRICT.get(etype)
    if dec is not None:
        try:
            return dec(data, base, uintn)
        except EventLogError as exc:
            if strict:
                raise
            return MalformedInfo(exc.message, exc.offset)
    dec = _LENIENT.get(etype)
    if dec is None:
        return _RAW
    try:
        return dec(data, base, uintn)
    except EventLogError as exc:
        return MalformedInfo(exc.message, exc.offset)
