"""TCG PC Client event logs: parse (SHA-1 and crypto-agile), decode, replay, machine state.

Verifier side: pure functions over bytes. ``parse_event_log(raw) -> EventLog``;
``EventLog.replay("sha256") -> {pcr: value}``; ``secure_boot_state(log, "sha256")``;
``machine_state(log, "sha256", verified_pcrs)``; ``well_known_certificate(cert)``.
Every malformed or hostile log raises :class:`EventLogError` (a ValueError) with the offset.
"""

import importlib
from typing import TYPE_CHECKING, Any

from .banks import bank_name, resolve_bank
from .devicepath import DevicePathNode, device_path_text, parse_device_path
from .efi import (
    LoadOption,
    SignatureEntry,
    parse_load_option,
    parse_signature_lists,
    parse_variable_update,
)
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
from .secureboot import (
    KNOWN_ACTIONS,
    Authority,
    EfiAction,
    SecureBootState,
    SignatureDatabase,
    secure_boot_state,
)
from .types import EventType, event_type_name
from .wellknown import BOOTHOLE_SIGNERS, WELL_KNOWN_NAMES, well_known_certificate

if TYPE_CHECKING:
    from .state import (
        EfiApp,
        EfiState,
        FirmwareComponent,
        GrubFile,
        GrubState,
        KernelCmdline,
        LinuxState,
        MachineState,
        Measurement,
        PlatformState,
        UkiSection,
        WindowsState,
        gce_firmware_version,
        machine_state,
    )
    from .wbcl import WindowsModule

_LAZY: dict[str, str] = {
    **dict.fromkeys(
        ("EfiApp", "EfiState", "FirmwareComponent", "GrubFile", "GrubState", "KernelCmdline",
         "LinuxState", "MachineState", "Measurement", "PlatformState", "UkiSection",
         "WindowsState", "gce_firmware_version", "machine_state"), ".state"),
    "WindowsModule": ".wbcl",
}
"""Names of the machine-state modules, imported on first use: a dozen dataclasses cost ~15 ms
that importing the verifier should not pay before it reads a machine state."""


def __getattr__(name: str) -> Any:
    """Resolve the machine-state names on first access (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value

__all__ = [
    "BOOTHOLE_SIGNERS",
    "KNOWN_ACTIONS",
    "WELL_KNOWN_NAMES",
    "Authority",
    "DevicePathNode",
    "Digest",
    "EfiAction",
    "EfiApp",
    "EfiState",
    "Event",
    "EventInfo",
    "EventLog",
    "EventLogBankError",
    "EventLogError",
    "EventType",
    "FirmwareBlobInfo",
    "FirmwareComponent",
    "GptInfo",
    "GptPartition",
    "GrubFile",
    "GrubState",
    "GuidInfo",
    "HandoffTablesInfo",
    "HcrtmComponentInfo",
    "ImageLoadInfo",
    "KernelCmdline",
    "LinuxState",
    "LoadOption",
    "LogFormat",
    "MachineState",
    "MalformedInfo",
    "Measurement",
    "NoActionInfo",
    "PlatformState",
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
    "UkiSection",
    "WindowsModule",
    "WindowsState",
    "bank_name",
    "device_path_text",
    "event_type_name",
    "gce_firmware_version",
    "machine_state",
    "parse_device_path",
    "parse_event_log",
    "parse_load_option",
    "parse_signature_lists",
    "parse_variable_update",
    "resolve_bank",
    "secure_boot_state",
    "well_known_certificate",
]
