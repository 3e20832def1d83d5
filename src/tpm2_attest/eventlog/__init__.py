"""TCG PC Client event logs: parse (SHA-1 and crypto-agile), decode, replay, Secure Boot state.

Verifier side: pure functions over bytes. ``parse_event_log(raw) -> EventLog``;
``EventLog.replay("sha256") -> {pcr: value}``; ``secure_boot_state(log, "sha256")``.
Every malformed or hostile log raises :class:`EventLogError` (a ValueError) with the offset.
"""

from .banks import bank_name, resolve_bank
from .devicepath import DevicePathNode, device_path_text, parse_device_path
from .efi import LoadOption, SignatureEntry, parse_load_option, parse_signature_lists
from .errors import EventLogBankError, EventLogError, SecureBootError
from .events import (
    Digest,
    Event,
    EventInfo,
    EventLog,
    FirmwareBlobInfo,
    GptInfo,
    GptPartition,
    GuidInfo,
    HandoffTablesInfo,
    HcrtmComponentInfo,
    ImageLoadInfo,
    LogFormat,
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
from .parser import parse_event_log
from .secureboot import Authority, SecureBootState, SignatureDatabase, secure_boot_state
from .types import EventType, event_type_name

__all__ = [
    "Authority",
    "DevicePathNode",
    "Digest",
    "Event",
    "EventInfo",
    "EventLog",
    "EventLogBankError",
    "EventLogError",
    "EventType",
    "FirmwareBlobInfo",
    "GptInfo",
    "GptPartition",
    "GuidInfo",
    "HandoffTablesInfo",
    "HcrtmComponentInfo",
    "ImageLoadInfo",
    "LoadOption",
    "LogFormat",
    "MalformedInfo",
    "NoActionInfo",
    "RawInfo",
    "SecureBootError",
    "SecureBootState",
    "SeparatorInfo",
    "SignatureDatabase",
    "SignatureEntry",
    "SpecIdInfo",
    "StartupLocalityInfo",
    "TaggedEventInfo",
    "TextInfo",
    "UefiAuthorityInfo",
    "UefiVariableInfo",
    "bank_name",
    "device_path_text",
    "event_type_name",
    "parse_device_path",
    "parse_event_log",
    "parse_load_option",
    "parse_signature_lists",
    "resolve_bank",
    "secure_boot_state",
]
