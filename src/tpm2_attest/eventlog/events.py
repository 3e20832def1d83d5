"""Typed events and the parsed log: frozen dataclasses with ``to_dict()`` for JSON output.

Event types are not covered by the event digests: ``Event.type`` and the decoded ``info``
are claims of the log, to be trusted only after the digest check (``Event.digest_matches``)
and a replay that matched a quoted PCR.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, ClassVar, Final, NamedTuple

from .._frozen import frozen
from . import guids
from .banks import bank_name, digest_size, hash_data, hash_factory, resolve_bank
from .errors import EventLogBankError, EventLogError
from .types import EventType, event_type, event_type_name

EV_NO_ACTION: Final = int(EventType.EV_NO_ACTION)
_BOOT_OPTION: Final = re.compile(r"(Boot|Driver|SysPrep|PlatformRecovery)[0-9A-Fa-f]{4}\Z")
_ONE_BYTE_VARS: Final = frozenset({"SecureBoot", "SetupMode", "AuditMode", "DeployedMode"})
_SIGNATURE_DBS: Final = frozenset(
    {"PK", "KEK", "db", "dbx", "dbt", "dbr", "MokList", "MokListX", "MokListTrusted"}
)


class LogFormat(StrEnum):
    """The two TCG PC Client event log formats."""

    SHA1 = "sha1"
    """TPM 1.2 style TCG_PCClientPCREvent records with one SHA-1 digest each."""
    CRYPTO_AGILE = "crypto-agile"
    """Spec ID Event03 header then TCG_PCR_EVENT2 records with one digest per bank."""


class Digest(NamedTuple):
    """One digest of an event: the bank's TPM_ALG and the digest bytes."""

    alg: int
    value: bytes


# ---------------------------------------------------------------------------------------------
# Decoded event data
# ---------------------------------------------------------------------------------------------


@frozen
class EventInfo:
    """Base of the decoded forms of event data; ``kind`` names the form."""

    kind: ClassVar[str] = "raw"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {"kind": self.kind}


@frozen
class RawInfo(EventInfo):
    """Data kept as bytes (types whose data has no defined structure, and unknown types)."""

    kind: ClassVar[str] = "raw"


@frozen
class MalformedInfo(EventInfo):
    """Data that does not match its type's structure (kept; only in non-strict parsing or for
    types whose structure firmware often bends)."""

    kind: ClassVar[str] = "malformed"
    reason: str
    offset: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "reason": self.reason, "offset": self.offset}


@frozen
class TextInfo(EventInfo):
    """A string (EV_EFI_ACTION, EV_ACTION, EV_IPL, EV_POST_CODE strings, S-CRTM version...)."""

    kind: ClassVar[str] = "text"
    text: str
    encoding: str = "ascii"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text, "encoding": self.encoding}


@frozen
class GuidInfo(EventInfo):
    """A bare EFI_GUID (e.g. an EV_S_CRTM_VERSION given as a GUID)."""

    kind: ClassVar[str] = "guid"
    guid: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "guid": self.guid}


@frozen
class SeparatorInfo(EventInfo):
    """EV_SEPARATOR: 0 normally, 1 (or legacy 0xFFFFFFFF) when firmware signals an error.
    Other values are no error: Windows closes PCRs 12-14 with the ASCII "WBCL"."""

    kind: ClassVar[str] = "separator"
    value: int

    @property
    def is_error(self) -> bool:
        """True when the separator signals a firmware error (PFP: 0x00000001, 0xFFFFFFFF)."""
        return self.value in (1, 0xFFFFFFFF)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value, "error": self.is_error}


@frozen
class SpecIdInfo(EventInfo):
    """TCG_EfiSpecIDEventStruct (``Spec ID Event03``): the banks and their digest sizes."""

    kind: ClassVar[str] = "spec_id"
    signature: str
    platform_class: int
    spec_version_major: int
    spec_version_minor: int
    spec_errata: int
    uintn_size: int
    algorithms: tuple[tuple[int, int], ...]
    vendor_info: bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "signature": self.signature,
            "platform_class": self.platform_class,
            "spec_version": f"{self.spec_version_major}.{self.spec_version_minor}",
            "spec_errata": self.spec_errata,
            "uintn_size": self.uintn_size,
            "algorithms": [{"alg": bank_name(a), "digest_size": s} for a, s in self.algorithms],
            "vendor_info": self.vendor_info.hex(),
        }


@frozen
class StartupLocalityInfo(EventInfo):
    """TCG_EfiStartupLocalityEvent: the locality of TPM2_Startup, PCR 0's initial last byte."""

    kind: ClassVar[str] = "startup_locality"
    locality: int

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "locality": self.locality}


@frozen
class NoActionInfo(EventInfo):
    """Another EV_NO_ACTION structure identified by its 16-byte signature (SP800-155 Event,
    NvIndexInstance, Spec ID Event00/02 of TPM 1.2 logs...)."""

    kind: ClassVar[str] = "no_action"
    signature: str
    payload: bytes

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "signature": self.signature, "payload": self.payload.hex()}


@frozen
class HcrtmComponentInfo(EventInfo):
    """TCG_HCRTMComponentEvent (EV_NO_ACTION "H-CRTM CompMeas"): what an H-CRTM sequence
    measured; ``format`` 0 means ``measurement`` is a TPMT_HA digest, 0x80 raw data."""

    kind: ClassVar[str] = "hcrtm_component"
    description: str
    format: int
    measurement: bytes

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "description": self.description, "format": self.format,
                "measurement": self.measurement.hex()}


@frozen
class UefiVariableInfo(EventInfo):
    """UEFI_VARIABLE_DATA: vendor GUID, UCS-2 name and value (``trailing`` bytes after it)."""

    kind: ClassVar[str] = "uefi_variable"
    guid: str
    name: str
    value: bytes
    trailing: int = 0

    @property
    def key(self) -> tuple[str, str]:
        """(GUID, name): what identifies a variable."""
        return (self.guid, self.name)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "guid": self.guid, "name": self.name}
        gname = guids.guid_name(self.guid)
        if gname:
            d["guid_name"] = gname
        d["value"] = self.value.hex()
        if self.trailing:
            d["trailing"] = self.trailing
        d.update(self._interpretation())
        return d

    def _interpretation(self) -> dict[str, Any]:
        """Best-effort meaning of well-known variables (never raises)."""
        from .efi import parse_load_option, parse_signature_lists

        name, value = self.name, self.value
        try:
            if name in _ONE_BYTE_VARS and len(value) == 1:
                return {"enabled": value[0] == 1} if name == "SecureBoot" else {"state": value[0]}
            if name == "BootOrder" and len(value) % 2 == 0:
                order = [int.from_bytes(value[i : i + 2], "little") for i in range(0, len(value), 2)]
                return {"boot_order": [f"Boot{n:04X}" for n in order]}
            if _BOOT_OPTION.match(name):
                return {"load_option": parse_load_option(value).to_dict()}
            if name in _SIGNATURE_DBS:
                return {"signatures": [e.to_dict() for e in parse_signature_lists(value)]}
        except EventLogError as exc:
            return {"interpretation_error": str(exc)}
        return {}


@frozen
class UefiAuthorityInfo(UefiVariableInfo):
    """EV_EFI_VARIABLE_AUTHORITY / EV_EFI_SPDM_DEVICE_AUTHORITY data: a UEFI_VARIABLE_DATA whose
    value is one EFI_SIGNATURE_DATA (owner GUID + the certificate that verified an image)."""

    kind: ClassVar[str] = "uefi_authority"

    def _interpretation(self) -> dict[str, Any]:
        from ._le import guid_text
        from .efi import parse_certificate

        value = self.value
        if len(value) > 16:
            cert, _ = parse_certificate(value[16:])
            if cert is not None:
                return {"owner": guid_text(value), "subject": cert.subject.rfc4514_string(),
                        "issuer": cert.issuer.rfc4514_string()}
        text = value.rstrip(b"\0")
        if text.isascii() and text.decode("ascii").translate({9: None, 10: None}).isprintable():
            return {"text": text.decode("ascii")}
        return {}


@frozen
class ImageLoadInfo(EventInfo):
    """UEFI_IMAGE_LOAD_EVENT: where a PE image was loaded and its device path."""

    kind: ClassVar[str] = "image_load"
    location: int
    length: int
    link_time_address: int
    device_path: bytes
    device_path_text: str | None
    device_path_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": self.kind,
            "image_location": f"0x{self.location:x}",
            "image_length": self.length,
            "link_time_address": f"0x{self.link_time_address:x}",
            "device_path": self.device_path_text,
        }
        if self.device_path_error:
            d["device_path_error"] = self.device_path_error
            d["device_path_raw"] = self.device_path.hex()
        return d


@frozen
class FirmwareBlobInfo(EventInfo):
    """UEFI_PLATFORM_FIRMWARE_BLOB (``description`` set for the BLOB2 form)."""

    kind: ClassVar[str] = "firmware_blob"
    base: int
    length: int
    description: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "base": f"0x{self.base:x}", "length": self.length}
        if self.description is not None:
            d["description"] = self.description
        return d


@frozen
class GptPartition:
    """One measured EFI_PARTITION_ENTRY."""

    type_guid: str
    unique_guid: str
    starting_lba: int
    ending_lba: int
    attributes: int
    name: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {
            "type_guid": self.type_guid,
            "unique_guid": self.unique_guid,
            "starting_lba": self.starting_lba,
            "ending_lba": self.ending_lba,
            "attributes": f"0x{self.attributes:x}",
            "name": self.name,
        }


@frozen
class GptInfo(EventInfo):
    """UEFI_GPT_DATA: the GPT header of the boot disk and its (non-empty) partitions."""

    kind: ClassVar[str] = "gpt"
    disk_guid: str
    revision: int
    my_lba: int
    alternate_lba: int
    first_usable_lba: int
    last_usable_lba: int
    partition_entry_lba: int
    number_of_partition_entries: int
    size_of_partition_entry: int
    partitions: tuple[GptPartition, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "disk_guid": self.disk_guid,
            "revision": f"0x{self.revision:x}",
            "my_lba": self.my_lba,
            "alternate_lba": self.alternate_lba,
            "first_usable_lba": self.first_usable_lba,
            "last_usable_lba": self.last_usable_lba,
            "partition_entry_lba": self.partition_entry_lba,
            "number_of_partition_entries": self.number_of_partition_entries,
            "size_of_partition_entry": self.size_of_partition_entry,
            "partitions": [p.to_dict() for p in self.partitions],
        }


@frozen
class HandoffTablesInfo(EventInfo):
    """UEFI_HANDOFF_TABLE_POINTERS(2): configuration tables (GUID, address) handed to the OS."""

    kind: ClassVar[str] = "handoff_tables"
    tables: tuple[tuple[str, int], ...]
    description: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": self.kind,
            "tables": [
                {"guid": g, "name": guids.guid_name(g), "address": f"0x{a:x}"}
                for g, a in self.tables
            ],
        }
        if self.description is not None:
            d["description"] = self.description
        return d


@frozen
class TaggedEventInfo(EventInfo):
    """TCG_PCClientTaggedEvent (EV_EVENT_TAG): an event id and its data."""

    kind: ClassVar[str] = "tagged"
    tag_id: int
    tag_data: bytes

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "tag_id": f"0x{self.tag_id:x}", "tag_data": self.tag_data.hex()}


# ---------------------------------------------------------------------------------------------
# Events and the log
# ---------------------------------------------------------------------------------------------


@frozen
class Event:
    """One record of the log.

    ``index`` is its sequence number (0 = first record, the Spec ID event in crypto-agile logs),
    ``offset`` its byte offset, ``type`` the raw (untrusted) event type, ``data`` the event data
    and ``info`` the data decoded according to ``type``.
    """

    index: int
    offset: int
    pcr: int
    type: int
    digests: tuple[Digest, ...]
    data: bytes
    info: EventInfo

    @property
    def event_type(self) -> EventType | None:
        """The :class:`EventType`, or None for types the specification does not name."""
        return event_type(self.type)

    @property
    def type_name(self) -> str:
        """``EV_...`` name, ``EV_UNKNOWN_0x...`` for unknown types."""
        return event_type_name(self.type)

    @property
    def known(self) -> bool:
        """False for event types the specification does not define (kept and marked)."""
        return event_type(self.type) is not None

    @property
    def extends(self) -> bool:
        """True unless the event is EV_NO_ACTION (which is logged but never extended)."""
        return self.type != EV_NO_ACTION

    def digest(self, bank: str | int) -> bytes | None:
        """The digest for a bank, or None when the event has none."""
        alg = resolve_bank(bank)
        for d in self.digests:
            if d.alg == alg:
                return d.value
        return None

    def digest_matches(self, bank: str | int, data: bytes | None = None) -> bool:
        """True when ``H_bank(data)`` (default: the event data) equals the event's digest.

        This is what makes an event's data (and so its claimed type) trustworthy.
        """
        alg = resolve_bank(bank)
        expected = self.digest(alg)
        if expected is None:
            return False
        try:
            actual = hash_data(alg, self.data if data is None else data)
        except ValueError:
            return False
        return actual == expected

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {
            "index": self.index,
            "offset": self.offset,
            "pcr": self.pcr,
            "type": self.type,
            "type_name": self.type_name,
            "known": self.known,
            "digests": {bank_name(d.alg): d.value.hex() for d in self.digests},
            "size": len(self.data),
            "data": self.data.hex(),
            "info": self.info.to_dict(),
        }


@frozen
class EventLog:
    """A parsed TCG PC Client event log (see :func:`tpm2_attest.eventlog.parse_event_log`).

    ``algorithms`` lists the banks the log carries digests for with their sizes;
    ``startup_locality`` is the StartupLocality event's value (None when absent) and
    ``hcrtm`` tells whether an H-CRTM event set PCR 0's initial value to 4.
    """

    format: LogFormat
    events: tuple[Event, ...]
    algorithms: tuple[tuple[int, int], ...]
    spec_id: SpecIdInfo | None
    startup_locality: int | None
    hcrtm: bool
    size: int
    padding: int = 0

    def __len__(self) -> int:
        return len(self.events)

    @property
    def banks(self) -> tuple[str, ...]:
        """Names of the banks the log has digests for (``("sha1", "sha256")``)."""
        return tuple(bank_name(a) for a, _ in self.algorithms)

    @property
    def touched_pcrs(self) -> frozenset[int]:
        """PCRs the log makes a claim about: every extended PCR, and PCR 0 when the log sets
        its initial value (StartupLocality / H-CRTM)."""
        pcrs = {e.pcr for e in self.events if e.type != EV_NO_ACTION}
        if self.startup_locality is not None or self.hcrtm:
            pcrs.add(0)
        return frozenset(pcrs)

    def events_for(self, pcr: int) -> tuple[Event, ...]:
        """The events extended into one PCR, in log order."""
        return tuple(e for e in self.events if e.pcr == pcr and e.type != EV_NO_ACTION)

    def initial_value(self, pcr: int, size: int) -> bytes:
        """The value a PCR starts from before the log's first extend into it."""
        if pcr == 0 and self.hcrtm:
            return bytes(size - 1) + b"\x04"
        if pcr == 0 and self.startup_locality is not None:
            return bytes(size - 1) + bytes((self.startup_locality,))
        return bytes(size)

    def replay(self, bank: str | int = "sha256") -> dict[int, bytes]:
        """Replay the log: ``{pcr: value}`` for every PCR in :attr:`touched_pcrs`.

        ``bank`` is a name (``"sha256"``) or a TPM_ALG value. Raises EventLogBankError when
        the log has no digests for the bank or an extended event lacks one; ValueError for
        an unknown bank name.
        """
        alg = resolve_bank(bank)
        size = dict(self.algorithms).get(alg)
        if size is None:
            raise EventLogBankError(f"the log has no {bank_name(alg)} digests (banks: "
                                    f"{', '.join(self.banks) or 'none'})")
        if size != digest_size(alg):
            raise EventLogBankError(f"{bank_name(alg)} digests are {size} bytes long")
        try:
            h = hash_factory(alg)
        except ValueError as exc:
            raise EventLogBankError(str(exc)) from None
        zero = bytes(size)
        pcrs: dict[int, bytes] = {}
        if self.hcrtm or self.startup_locality is not None:
            pcrs[0] = self.initial_value(0, size)
        get = pcrs.get
        for ev in self.events:
            if ev.type == EV_NO_ACTION:
                continue
            for a, value in ev.digests:  # tuple unpacking: cheaper than attribute access
                if a == alg:
                    pcr = ev.pcr
                    pcrs[pcr] = h(get(pcr, zero) + value).digest()
                    break
            else:
                raise EventLogBankError(
                    f"{ev.type_name} event has no {bank_name(alg)} digest", ev.offset, ev.index
                )
        return pcrs

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description of the whole log."""
        return {
            "format": self.format.value,
            "size": self.size,
            "padding": self.padding,
            "banks": list(self.banks),
            "spec_id": self.spec_id.to_dict() if self.spec_id else None,
            "startup_locality": self.startup_locality,
            "hcrtm": self.hcrtm,
            "events": [e.to_dict() for e in self.events],
        }
