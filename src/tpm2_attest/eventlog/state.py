"""The machine state a verified event log shows: platform, Secure Boot, EFI, GRUB, Linux, Windows.

:func:`machine_state` reads only the events of PCRs a quote verified (``verified``), and from
them only what their digests vouch for. Event types and event data are claims of the log; an
event's data is believed only when it hashes to the event's digest in the quoted bank (or, for
GRUB and systemd strings, when the measured part of it does). What a digest covers but the log
only names (an EFI application's device path, a GRUB file name, a kernel stub's tag) is kept as
an *unmeasured label* beside the digest. A fact whose PCR was not verified is None, never
guessed; a fact that could not be established is None too, with a note saying why.

The extraction never raises on the content of the log: the verifier has already refused logs
that do not replay, and everything here is best effort over authentic measurements.
``MachineState.to_dict()`` is the full state; ``MachineState.summary()`` a bounded digest of it
(counts, hashes and short strings only) for storing per attestation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .banks import bank_name, hash_factory, resolve_bank
from .events import (
    Event,
    EventLog,
    FirmwareBlobInfo,
    GuidInfo,
    ImageLoadInfo,
    TaggedEventInfo,
    TextInfo,
)
from .secureboot import SecureBootState, SignatureDatabase
from .types import EventType
from .wbcl import WbclReader, WindowsModule, bitlocker_flag_names

# -- constants: what firmware, GRUB, systemd and Linux measure --------------------------------

GCE_FIRMWARE_PREFIX: Final = "GCE Virtual Firmware v".encode("utf-16-le")
"""UCS-2 prefix of a GCE S-CRTM version string, followed by the decimal version (go-tpm-tools)."""
GCE_NONHOST_INFO_SIGNATURE: Final = b"GCE NonHostInfo\0"
"""EV_NONHOST_INFO of GCE VMs: this signature, one byte of confidential technology, 15 reserved."""
GCE_CONFIDENTIAL_TECHNOLOGY: Final[dict[int, str]] = {
    0: "NONE", 1: "AMD_SEV", 2: "AMD_SEV_ES", 4: "AMD_SEV_SNP", 5: "INTEL_TDX",
}
"""go-tpm-tools' GCEConfidentialTechnology values (3 is reserved)."""

CALLING_EFI_APPLICATION: Final = b"Calling EFI Application from Boot Option"
EXIT_BOOT_SERVICES: Final = b"Exit Boot Services Invocation"

GRUB_PREFIXES: Final = (b"grub_cmd: ", b"kernel_cmdline: ", b"module_cmdline: ",
                        b"grub_kernel_cmdline ", b"grub_cmd ")
"""Prefixes of GRUB's PCR 8 strings: current GRUB (grub-core/commands/tpm.c) and the older
Fedora/RHEL patches. GRUB measures the string after the prefix, without its NUL."""
GRUB_KERNEL_CMDLINE: Final = (b"kernel_cmdline: ", b"grub_kernel_cmdline ")

SYSTEMD_OPAQUE_IPL: Final = frozenset({
    "Credentials initrd", "Global credentials initrd", "System extension initrd",
    "Configuration extension initrd",
})
"""UTF-16 descriptions of systemd-stub's EV_IPL measurements that are no command line (cpio
archives it generates; systemd docs/TPM2_PCR_MEASUREMENTS.md): PCR 12, 13, or 8 before 251."""

LINUX_INITRD_TAG: Final = 0x8F3B22EC
"""EV_EVENT_TAG id of the Linux EFI stub's initrd measurement (PCR 9, "Linux initrd")."""
LINUX_LOAD_OPTIONS_TAG: Final = 0x8F3B22ED
"""EV_EVENT_TAG id of the Linux EFI stub's LoadOptions measurement (PCR 9)."""

WINDOWS_BOOT_MANAGER: Final = "\\efi\\microsoft\\boot\\bootmgfw.efi"

MAX_NOTES: Final = 32
"""At most this many notes are kept (a hostile log could otherwise produce one per event)."""

_SEP: Final = int(EventType.EV_SEPARATOR)
_EFI_ACTION: Final = int(EventType.EV_EFI_ACTION)
_IPL: Final = int(EventType.EV_IPL)
_TAG: Final = int(EventType.EV_EVENT_TAG)
_APP: Final = int(EventType.EV_EFI_BOOT_SERVICES_APPLICATION)
_SCRTM_VERSION: Final = int(EventType.EV_S_CRTM_VERSION)
_NONHOST_INFO: Final = int(EventType.EV_NONHOST_INFO)
_SELF_DESCRIBING_PCR4: Final = frozenset({_SEP, _EFI_ACTION, int(EventType.EV_ACTION),
                                          int(EventType.EV_OMIT_BOOT_DEVICE_EVENTS)})
_PLATFORM_COMPONENTS: Final = frozenset({
    int(EventType.EV_S_CRTM_CONTENTS), int(EventType.EV_POST_CODE),
    int(EventType.EV_POST_CODE2), int(EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB),
    int(EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB2), int(EventType.EV_EFI_SPDM_FIRMWARE_BLOB),
    int(EventType.EV_CPU_MICROCODE), int(EventType.EV_EFI_HCRTM_EVENT),
    int(EventType.EV_EFI_BOOT_SERVICES_DRIVER), int(EventType.EV_EFI_RUNTIME_SERVICES_DRIVER),
    int(EventType.EV_NONHOST_CODE),
})


def _hex(b: bytes | None) -> str | None:
    return None if b is None else b.hex()


# -- the state ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measurement:
    """One measured thing: its digest in the bank, and the log's (unmeasured) label for it."""

    index: int
    pcr: int
    event_type: str
    digest: bytes
    label: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {"event": self.index, "pcr": self.pcr, "event_type": self.event_type,
                "digest": self.digest.hex(), "label": self.label}


@dataclass(frozen=True, slots=True)
class FirmwareComponent:
    """A firmware blob, option ROM or driver image (PCR 0 or 2): digest, location, description."""

    index: int
    pcr: int
    event_type: str
    digest: bytes
    base: int | None = None
    length: int | None = None
    description: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {"event": self.index, "pcr": self.pcr, "event_type": self.event_type,
                "digest": self.digest.hex(),
                "base": None if self.base is None else f"0x{self.base:x}",
                "length": self.length, "description": self.description}


@dataclass(frozen=True, slots=True)
class PlatformState:
    """PCR 0 (and PCR 2) facts: the S-CRTM version, firmware, option ROMs, confidential VM.

    ``scrtm_version`` is the EV_S_CRTM_VERSION data (raw), ``scrtm_version_text`` the same as
    text when it is one (UCS-2, ASCII or a GUID). ``gce_firmware_version`` is the version
    number of a GCE VM's "GCE Virtual Firmware vN" S-CRTM string. ``confidential_computing``
    names the technology of GCE's EV_NONHOST_INFO event (``NONE``, ``AMD_SEV``, ``AMD_SEV_ES``,
    ``AMD_SEV_SNP``, ``INTEL_TDX``); None when the log has no such event. ``option_roms`` is
    None when PCR 2 was not verified."""

    scrtm_version: bytes | None
    scrtm_version_text: str | None
    gce_firmware_version: int | None
    confidential_computing: str | None
    confidential_computing_id: int | None
    firmware_blobs: tuple[FirmwareComponent, ...]
    option_roms: tuple[FirmwareComponent, ...] | None
    startup_locality: int | None
    hcrtm: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {
            "scrtm_version": _hex(self.scrtm_version),
            "scrtm_version_text": self.scrtm_version_text,
            "gce_firmware_version": self.gce_firmware_version,
            "confidential_computing": self.confidential_computing,
            "confidential_computing_id": self.confidential_computing_id,
            "firmware_blobs": [c.to_dict() for c in self.firmware_blobs],
            "option_roms": (None if self.option_roms is None
                            else [c.to_dict() for c in self.option_roms]),
            "startup_locality": self.startup_locality,
            "hcrtm": self.hcrtm,
        }


@dataclass(frozen=True, slots=True)
class EfiApp:
    """A boot application (EV_EFI_BOOT_SERVICES_APPLICATION in PCR 4): its PE Authenticode
    digest in the bank, and its device path as text (an unmeasured label; None when absent)."""

    index: int
    digest: bytes
    path: str | None
    image_length: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {"event": self.index, "digest": self.digest.hex(), "path": self.path,
                "image_length": self.image_length}


@dataclass(frozen=True, slots=True)
class EfiState:
    """PCR 4 and 5: the boot applications in order, other opaque PCR 4 measurements, and
    whether the boot manager called ExitBootServices (None when PCR 5 was not verified)."""

    apps: tuple[EfiApp, ...]
    other: tuple[Measurement, ...]
    boot_option_called: bool
    exit_boot_services: bool | None

    @property
    def digests(self) -> tuple[bytes, ...]:
        """Every opaque PCR 4 digest, apps first: what an allow-list must cover."""
        return tuple(a.digest for a in self.apps) + tuple(m.digest for m in self.other)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {"apps": [a.to_dict() for a in self.apps],
                "other": [m.to_dict() for m in self.other],
                "boot_option_called": self.boot_option_called,
                "exit_boot_services": self.exit_boot_services}


@dataclass(frozen=True, slots=True)
class GrubFile:
    """A file GRUB read and measured into PCR 9: the digest of its contents and its name
    (the name is event data the digest does not cover: an unmeasured label)."""

    index: int
    digest: bytes
    name: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {"event": self.index, "digest": self.digest.hex(), "name": self.name}


@dataclass(frozen=True, slots=True)
class GrubState:
    """GRUB's measurements: ``files`` (PCR 9) and ``commands`` (PCR 8: the whole strings as
    logged, ``grub_cmd: ...``, ``kernel_cmdline: ...``, ``module_cmdline: ...``, each verified
    against its digest). ``unverified`` lists PCR 8 events whose data does not match their
    digest (a command the log does not show). ``other`` holds the PCR 9 measurements that are
    not EV_IPL (the Linux EFI stub's tagged events, or a file measurement relabelled: the type
    is not covered by the digest). ``files``/``commands`` are None when PCR 9/8 was not
    verified."""

    files: tuple[GrubFile, ...] | None
    commands: tuple[str, ...] | None
    unverified: tuple[int, ...]
    other: tuple[Measurement, ...] = ()

    @property
    def digests(self) -> tuple[bytes, ...]:
        """Every PCR 9 digest, files first: what an allow-list of GRUB files must cover."""
        return tuple(f.digest for f in self.files or ()) + tuple(m.digest for m in self.other)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {"files": None if self.files is None else [f.to_dict() for f in self.files],
                "commands": None if self.commands is None else list(self.commands),
                "unverified": list(self.unverified),
                "other": [m.to_dict() for m in self.other]}


@dataclass(frozen=True, slots=True)
class KernelCmdline:
    """A kernel command line as measured: ``source`` is ``grub`` (PCR 8 ``kernel_cmdline``) or
    ``systemd`` (systemd-boot/systemd-stub, UTF-16 in PCR 12, or PCR 8 before systemd 251)."""

    index: int
    pcr: int
    source: str
    text: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {"event": self.index, "pcr": self.pcr, "source": self.source, "text": self.text}


@dataclass(frozen=True, slots=True)
class UkiSection:
    """A PE section of a unified kernel image that systemd-stub measured into PCR 11: its name
    (verified: the name is measured too) and the digest of its contents."""

    name: str
    digest: bytes
    index: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {"name": self.name, "digest": self.digest.hex(), "event": self.index}


@dataclass(frozen=True, slots=True)
class LinuxState:
    """The Linux boot: ``cmdline`` is the last kernel command line measured (``cmdlines`` has
    every one), ``kernel`` and ``initrds`` the measurements of the kernel and initrd images
    (label = where the association comes from), ``uki_sections`` a UKI's measured sections.
    ``unexplained`` lists the PCR 8 and PCR 12 events that neither GRUB nor systemd explains
    (data that does not match the digest, or an unknown kind): a command line may hide there."""

    cmdline: str | None
    cmdline_source: str | None
    cmdlines: tuple[KernelCmdline, ...]
    kernel: Measurement | None
    initrds: tuple[Measurement, ...]
    uki_sections: tuple[UkiSection, ...]
    load_options_digest: bytes | None
    unexplained: tuple[int, ...] = ()

    @property
    def initrd_digest(self) -> bytes | None:
        """The digest of the (last) initrd measured, or None."""
        return self.initrds[-1].digest if self.initrds else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {
            "cmdline": self.cmdline,
            "cmdline_source": self.cmdline_source,
            "cmdlines": [c.to_dict() for c in self.cmdlines],
            "kernel": None if self.kernel is None else self.kernel.to_dict(),
            "initrd_digest": _hex(self.initrd_digest),
            "initrds": [m.to_dict() for m in self.initrds],
            "uki_sections": [s.to_dict() for s in self.uki_sections],
            "load_options_digest": _hex(self.load_options_digest),
            "unexplained": list(self.unexplained),
        }


@dataclass(frozen=True, slots=True)
class WindowsState:
    """What the Windows Boot Configuration Log (PCRs 12-14) says, from verified events only.

    Booleans that weaken the boot (``boot_debugging``, ``kernel_debugging``, ``test_signing``,
    ``safe_mode``, ``winpe``, ``flight_signing``) are true when any event set them;
    ``code_integrity`` and ``dep`` are true only when every event said so (None: never said).
    ``bitlocker_unlocks`` holds the FVEB unlock flags of each BitLocker unlock (PCR 12),
    ``boot_manager`` the PCR 4 application whose path is Windows' boot manager, ``modules``
    one :class:`WindowsModule` per Authenticode hash (its loads in PCRs 12 and 13 merged)."""

    boot_manager: EfiApp | None
    boot_count: int | None
    cold_boot: bool | None
    boot_debugging: bool
    kernel_debugging: bool
    test_signing: bool
    safe_mode: bool
    winpe: bool
    flight_signing: bool
    code_integrity: bool | None
    dep: bool | None
    bitlocker_unlocks: tuple[int, ...]
    modules: tuple[WindowsModule, ...]
    sipa_events: int
    separators: tuple[int, ...]
    unverified: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {
            "boot_manager": None if self.boot_manager is None else self.boot_manager.to_dict(),
            "boot_count": self.boot_count,
            "cold_boot": self.cold_boot,
            "boot_debugging": self.boot_debugging,
            "kernel_debugging": self.kernel_debugging,
            "test_signing": self.test_signing,
            "safe_mode": self.safe_mode,
            "winpe": self.winpe,
            "flight_signing": self.flight_signing,
            "code_integrity": self.code_integrity,
            "dep": self.dep,
            "bitlocker_unlocks": [{"flags": f, "names": bitlocker_flag_names(f)}
                                  for f in self.bitlocker_unlocks],
            "modules": [m.to_dict() for m in self.modules],
            "sipa_events": self.sipa_events,
            "separators": list(self.separators),
            "unverified": list(self.unverified),
        }


class _LazyWindows:
    """The Windows part of a machine state, read from its verified events on first use.

    A Windows boot logs ~1,000 SIPA events in PCRs 12-14; reading them costs several times
    parsing the whole log, while policies judge other parts. The events (the log's own objects)
    are kept and read once, when ``MachineState.windows``, ``notes``, ``to_dict()`` or
    ``summary()`` first needs them; the result is then the same as an eager read."""

    __slots__ = ("_alg", "_efi", "_events", "_result")

    def __init__(self, alg: int, events: dict[int, list[Event]], efi: EfiState | None) -> None:
        self._alg = alg
        self._events = events
        self._efi = efi
        self._result: tuple[WindowsState | None, tuple[str, ...], int] | None = None

    def resolve(self) -> tuple[WindowsState | None, tuple[str, ...], int]:
        """(the Windows state, its notes, how many notes were dropped), read once."""
        result = self._result
        if result is None:
            ctx = _Ctx(self._alg, hash_factory(self._alg))
            try:
                state = _windows(ctx, self._events, self._efi)
            except Exception as exc:  # as machine_state: a bug must not make a crash of a log
                state = None
                ctx.note(f"the Windows state could not be read: {type(exc).__name__}: "
                         f"{str(exc)[:200]}")
            result = self._result = (state, tuple(ctx.notes), ctx.dropped)
            self._events = {}
        return result

    def __repr__(self) -> str:
        return repr(self.resolve()[0]) if self._result is not None else "<Windows state, unread>"


@dataclass(frozen=True, slots=True, eq=False)
class MachineState:
    """Everything a verified event log says about the machine (see the module docstring).

    ``verified_pcrs`` are the PCRs the facts come from; each part is None when the PCRs it
    needs were not verified (``platform``: 0, ``secure_boot``: 7, ``efi``: 4, ``grub``: 8/9,
    ``linux``: 8/9/11/12, ``windows``: 12-14) or when the log has no such measurements.
    ``notes`` says what was seen but not believed, and why. ``windows`` is read from its
    events when first asked for (it is the bulk of a Windows log), with the same result."""

    bank: str
    verified_pcrs: frozenset[int]
    platform: PlatformState | None
    secure_boot: SecureBootState | None
    efi: EfiState | None
    grub: GrubState | None
    linux: LinuxState | None
    _windows: WindowsState | _LazyWindows | None = None
    _notes: tuple[str, ...] = ()
    _dropped_notes: int = 0

    def _facts(self) -> tuple[Any, ...]:
        return (self.bank, self.verified_pcrs, self.platform, self.secure_boot, self.efi,
                self.grub, self.linux, self.windows, self.notes)

    def __eq__(self, other: object) -> bool:
        """Equal facts (whether the Windows part was read yet or not)."""
        if not isinstance(other, MachineState):
            return NotImplemented
        return self._facts() == other._facts()

    def __hash__(self) -> int:
        return hash(self._facts())

    @property
    def windows(self) -> WindowsState | None:
        """The Windows Boot Configuration Log's facts (PCRs 12-14), or None."""
        w = self._windows
        return w.resolve()[0] if isinstance(w, _LazyWindows) else w

    @property
    def notes(self) -> tuple[str, ...]:
        """What was seen but not believed, and why: at most :data:`MAX_NOTES`, then a count."""
        notes, dropped = list(self._notes), self._dropped_notes
        w = self._windows
        if isinstance(w, _LazyWindows):
            _, more, more_dropped = w.resolve()
            room = max(MAX_NOTES - len(notes), 0)
            notes += more[:room]
            dropped += more_dropped + max(len(more) - room, 0)
        if dropped:
            notes.append(f"... and {dropped} more notes")
        return tuple(notes)

    def to_dict(self) -> dict[str, Any]:
        """The full state, JSON-ready, with the stable keys documented in docs/verifier.md."""
        return {
            "bank": self.bank,
            "verified_pcrs": sorted(self.verified_pcrs),
            "platform": None if self.platform is None else self.platform.to_dict(),
            "secure_boot": None if self.secure_boot is None else _secure_boot_dict(self.secure_boot),
            "efi": None if self.efi is None else self.efi.to_dict(),
            "grub": None if self.grub is None else self.grub.to_dict(),
            "linux": None if self.linux is None else self.linux.to_dict(),
            "windows": None if self.windows is None else self.windows.to_dict(),
            "notes": list(self.notes),
        }

    def summary(self) -> dict[str, Any]:
        """A bounded, JSON-ready digest of the state to store per attestation.

        Counts, SHA-256 digests of lists and short strings only: whatever the log (a 15,000-entry
        dbx, thousands of applications, a megabyte command line), the result stays a few
        kilobytes. Keys are documented in docs/verifier.md."""
        return _summary(self)


def _secure_boot_dict(sb: SecureBootState) -> dict[str, Any]:
    d = sb.to_dict()
    d["well_known"] = {name: list(db.well_known) for name, db in
                       (("PK", sb.pk), ("KEK", sb.kek), ("db", sb.db), ("dbx", sb.dbx))
                       if db is not None}
    return d


# -- extraction ---------------------------------------------------------------------------------


@dataclass
class _Ctx:
    alg: int
    h: Callable[[bytes], Any]
    notes: list[str] = field(default_factory=list)
    dropped: int = 0

    def digest(self, ev: Event) -> bytes | None:
        alg = self.alg
        for a, value in ev.digests:
            if a == alg:
                return value
        return None

    def matches(self, ev: Event, data: bytes | None = None) -> bool:
        d = self.digest(ev)
        return d is not None and self.h(ev.data if data is None else data).digest() == d

    def separator_digests(self) -> frozenset[bytes]:
        """The digests of the two separator values (PFP: 00000000h, or FFFFFFFFh on error)."""
        return frozenset(self.h(v).digest() for v in (b"\0\0\0\0", b"\xff\xff\xff\xff"))

    def matches_string(self, ev: Event) -> bool:
        """A string event: its digest covers the data, or the data without trailing NULs
        (firmware differs on whether the terminator is hashed)."""
        if self.matches(ev):
            return True
        stripped = ev.data.rstrip(b"\0")
        return stripped != ev.data and self.matches(ev, stripped)

    def note(self, text: str) -> None:
        if len(self.notes) < MAX_NOTES:
            self.notes.append(text)
        else:
            self.dropped += 1


def machine_state(log: EventLog, bank: str | int, verified: Iterable[int], *,
                  secure_boot: SecureBootState | None = None) -> MachineState:
    """The :class:`MachineState` of ``log`` from the events of the ``verified`` PCRs only.

    ``bank`` is the quoted bank (its digests authenticate event data); ``verified`` the PCRs
    whose replay matched the quote; ``secure_boot`` the state ``secure_boot_state`` derived
    from a verified PCR 7 (``verify_event_log`` passes it; None leaves ``.secure_boot`` None).
    Never raises on the log's content; ValueError for an unknown bank.
    """
    alg = resolve_bank(bank)
    pcrs = frozenset(verified)
    try:
        return _machine_state(log, alg, pcrs, secure_boot)
    except Exception as exc:  # a bug here must not turn a verified log into a crash
        return MachineState(bank_name(alg), pcrs, None, None, None, None, None, None,
                            (f"the machine state could not be read: {type(exc).__name__}: "
                             f"{str(exc)[:200]}",))


def _machine_state(log: EventLog, alg: int, pcrs: frozenset[int],
                   secure_boot: SecureBootState | None) -> MachineState:
    ctx = _Ctx(alg, hash_factory(alg))
    by_pcr: dict[int, list[Event]] = {p: [] for p in pcrs}
    for ev in log.events:
        lst = by_pcr.get(ev.pcr)
        if lst is not None and ev.type != EventType.EV_NO_ACTION:
            if ctx.digest(ev) is None:
                ctx.note(f"event {ev.index} (PCR {ev.pcr}) has no {bank_name(alg)} digest")
                continue
            lst.append(ev)

    platform = _platform(ctx, log, by_pcr) if 0 in pcrs else None
    efi = _efi(ctx, by_pcr) if 4 in pcrs else None
    grub, grub_cmdlines, sd_pcr8, pcr8_other = _grub(ctx, by_pcr)
    linux = _linux(ctx, by_pcr, grub, grub_cmdlines, sd_pcr8, pcr8_other)
    wbcl = {p: by_pcr[p] for p in (12, 13, 14) if by_pcr.get(p)}
    windows = _LazyWindows(alg, wbcl, efi) if any(
        ev.type in (_TAG, _SEP) for events in wbcl.values() for ev in events) else None
    if secure_boot is not None and 7 not in pcrs:
        secure_boot = None
    return MachineState(bank_name(alg), pcrs, platform, secure_boot, efi, grub, linux, windows,
                        tuple(ctx.notes), ctx.dropped)


def gce_firmware_version(scrtm_version: bytes) -> int | None:
    """The GCE virtual firmware version in an S-CRTM version string, or None.

    Exactly go-tpm-tools' ``ConvertSCRTMVersionToGCEFirmwareVersion``: the UCS-2 prefix
    "GCE Virtual Firmware v", then UCS-2 decimal digits (NUL bytes skipped, every other byte
    of a character must be NUL), a value below 2**32; the data has an even length."""
    prefix = GCE_FIRMWARE_PREFIX
    if len(scrtm_version) <= len(prefix) or len(scrtm_version) % 2:
        return None
    if not scrtm_version.startswith(prefix):
        return None
    digits = bytearray()
    for i, b in enumerate(scrtm_version[len(prefix):]):
        if b == 0:
            continue
        if i % 2:
            return None
        digits.append(b)
    if not digits or not digits.isdigit() or not digits.isascii():
        return None
    significant = digits.lstrip(b"0")
    if len(significant) > 10:  # above 2**32 whatever follows (and int() of 5,000 digits raises)
        return None
    value = int(significant or b"0")
    return value if value < 1 << 32 else None


def _text_of(ev: Event) -> str | None:
    info = ev.info
    if isinstance(info, TextInfo):
        return info.text
    if isinstance(info, GuidInfo):
        return info.guid
    return None


def _component(ctx: _Ctx, ev: Event) -> FirmwareComponent:
    info = ev.info
    base = length = None
    desc: str | None = None
    if isinstance(info, FirmwareBlobInfo):
        base, length, desc = info.base, info.length, info.description
    elif isinstance(info, ImageLoadInfo):
        base, length, desc = info.location, info.length, info.device_path_text
    elif isinstance(info, TextInfo):
        desc = info.text
    return FirmwareComponent(ev.index, ev.pcr, ev.type_name, ctx.digest(ev) or b"", base, length,
                             desc)


def _platform(ctx: _Ctx, log: EventLog, by_pcr: dict[int, list[Event]]) -> PlatformState:
    version_ev: Event | None = None
    versions = 0
    tech: int | None = None
    blobs: list[FirmwareComponent] = []
    separators = ctx.separator_digests()
    for ev in by_pcr[0]:
        t = ev.type
        if t == _SEP or ctx.digest(ev) in separators:
            # Nothing after the OS hand-off is believed: the OS can extend PCR 0 and rewrite
            # the log. The boundary is the separator's digest, whatever type or data the log
            # claims for it (go-tpm-tools refuses such a disguised separator).
            if t != _SEP or not ctx.matches(ev):
                ctx.note(f"event {ev.index}: PCR 0 separator logged as {ev.type_name} with "
                         "data that is not a separator's; the platform facts end there")
            break
        if t == _SCRTM_VERSION:
            if ctx.matches(ev):
                version_ev = ev
                versions += 1
            else:
                ctx.note(f"event {ev.index}: S-CRTM version does not match its digest")
        elif t == _NONHOST_INFO:
            if not ctx.matches(ev):
                ctx.note(f"event {ev.index}: EV_NONHOST_INFO does not match its digest")
            elif ev.data.startswith(GCE_NONHOST_INFO_SIGNATURE) and len(ev.data) > 16:
                tech = ev.data[16]
        elif t in _PLATFORM_COMPONENTS:
            blobs.append(_component(ctx, ev))
    if versions > 1:
        ctx.note(f"{versions} S-CRTM version events in PCR 0: the last one is reported")
    version = None if version_ev is None else version_ev.data
    text = None if version_ev is None else _text_of(version_ev)
    roms = None
    if 2 in by_pcr:
        roms = tuple(_component(ctx, ev) for ev in by_pcr[2]
                     if ev.type != _SEP and not (ev.type == _EFI_ACTION and ctx.matches(ev)))
    return PlatformState(
        scrtm_version=version,
        scrtm_version_text=text,
        gce_firmware_version=None if version is None else gce_firmware_version(version),
        confidential_computing=(None if tech is None else
                                GCE_CONFIDENTIAL_TECHNOLOGY.get(tech, f"UNKNOWN_{tech}")),
        confidential_computing_id=tech,
        firmware_blobs=tuple(blobs),
        option_roms=roms,
        startup_locality=log.startup_locality,
        hcrtm=log.hcrtm,
    )


def _efi(ctx: _Ctx, by_pcr: dict[int, list[Event]]) -> EfiState:
    apps: list[EfiApp] = []
    other: list[Measurement] = []
    called = False
    for ev in by_pcr[4]:
        t = ev.type
        if t == _APP:
            info = ev.info
            path = length = None
            if isinstance(info, ImageLoadInfo):
                path, length = info.device_path_text or None, info.length
            apps.append(EfiApp(ev.index, ctx.digest(ev) or b"", path, length))
        elif t in _SELF_DESCRIBING_PCR4 and ctx.matches_string(ev):
            if t == _EFI_ACTION and ev.data.rstrip(b"\0") == CALLING_EFI_APPLICATION:
                called = True
        else:
            other.append(Measurement(ev.index, 4, ev.type_name, ctx.digest(ev) or b"",
                                     _label(ev)))
    ebs: bool | None = None
    if 5 in by_pcr:
        ebs = any(ev.type == _EFI_ACTION and ev.data.rstrip(b"\0") == EXIT_BOOT_SERVICES
                  and ctx.matches_string(ev) for ev in by_pcr[5])
    return EfiState(tuple(apps), tuple(other), called, ebs)


def _label(ev: Event) -> str | None:
    info = ev.info
    if isinstance(info, ImageLoadInfo):
        return info.device_path_text
    if isinstance(info, TextInfo):
        return info.text[:256]
    if isinstance(info, TaggedEventInfo):
        return f"tag 0x{info.tag_id:08x}"
    return None


def _grub_string(ctx: _Ctx, ev: Event) -> tuple[bytes, bytes] | None:
    """(prefix, measured text) of a PCR 8 GRUB string whose digest matches, else None."""
    data = ev.data
    for prefix in GRUB_PREFIXES:
        if data.startswith(prefix):
            text = data[len(prefix):]
            stripped = text[:-1] if text.endswith(b"\0") else text
            # GRUB hashes the string without its NUL; some older patches with it.
            if ctx.matches(ev, stripped) or (stripped is not text and ctx.matches(ev, text)):
                return prefix, stripped
            return None
    return None


def _utf16_text(data: bytes) -> str | None:
    """The text of UTF-16LE event data (systemd's descriptions), or None when it is not text."""
    if len(data) < 2 or len(data) % 2:
        return None
    try:
        text = data.decode("utf-16-le")
    except UnicodeDecodeError:
        return None
    text = text.rstrip("\0")
    if not text or "\0" in text or not text.replace("\t", " ").replace("\n", " ").isprintable():
        return None
    return text


def _systemd_cmdline(ctx: _Ctx, ev: Event) -> str | None:
    """The command line of a systemd EV_IPL measurement, or None when ``ev`` is not one.

    The data is the UTF-16 command line; the digest covers it in UTF-16 with its NUL (what
    ``tpm_log_load_options`` hashes: ``strsize16``) or, as systemd's documentation describes
    it, without: both are accepted, nothing else."""
    if ev.type != _IPL:
        return None
    text = _utf16_text(ev.data)
    if text is None:
        return None
    encoded = text.encode("utf-16-le")
    if ctx.matches(ev, encoded + b"\0\0") or ctx.matches(ev, encoded):
        return text
    return None


def _grub(ctx: _Ctx, by_pcr: dict[int, list[Event]]
          ) -> tuple[GrubState | None, list[KernelCmdline], list[KernelCmdline], list[Event]]:
    """GRUB's state, its command lines, systemd's PCR 8 command lines, and the PCR 8 events
    neither explains (GRUB's ``unverified`` when GRUB measured into PCR 8)."""
    commands: list[str] | None = None
    cmdlines: list[KernelCmdline] = []
    systemd: list[KernelCmdline] = []
    unverified: list[int] = []
    other: list[Event] = []
    seen = False
    if 8 in by_pcr:
        commands = []
        for ev in by_pcr[8]:
            if ev.type == _IPL:
                found = _grub_string(ctx, ev)
                if found is not None:
                    seen = True
                    prefix, text = found
                    s = (prefix + text).decode("utf-8", "replace")
                    commands.append(s)
                    if prefix in GRUB_KERNEL_CMDLINE:
                        cmdlines.append(KernelCmdline(ev.index, 8, "grub",
                                                      text.decode("utf-8", "replace")))
                    continue
                if ev.data.startswith(GRUB_PREFIXES):
                    seen = True
                    unverified.append(ev.index)
                    ctx.note(f"event {ev.index}: GRUB string in PCR 8 does not match its digest")
                    continue
                sd = _systemd_cmdline(ctx, ev)
                if sd is not None:
                    systemd.append(KernelCmdline(ev.index, 8, "systemd", sd))
                    continue
            unverified.append(ev.index)
            other.append(ev)
    files: list[GrubFile] | None = None
    pcr9_other: list[Measurement] = []
    if 9 in by_pcr:
        files = []
        for ev in by_pcr[9]:
            if ev.type == _IPL:
                seen = True
                name = ev.data.rstrip(b"\0").decode("utf-8", "replace")
                files.append(GrubFile(ev.index, ctx.digest(ev) or b"", name))
            else:
                pcr9_other.append(Measurement(ev.index, 9, ev.type_name, ctx.digest(ev) or b"",
                                              _label(ev)))
    if not seen:
        return None, cmdlines, systemd, other
    if unverified:
        ctx.note(f"{len(unverified)} PCR 8 measurement(s) the log does not explain")
    return (GrubState(None if files is None else tuple(files),
                      None if commands is None else tuple(commands), tuple(unverified),
                      tuple(pcr9_other)),
            cmdlines, systemd, other)


GRUB_LINUX_COMMANDS: Final = ("linux", "linuxefi", "linux16")
GRUB_INITRD_COMMANDS: Final = ("initrd", "initrdefi", "initrd16")


def _grub_argument(commands: Sequence[str], names: Sequence[str]) -> list[str]:
    """The arguments of the last GRUB command named one of ``names`` among ``commands``."""
    for c in reversed(commands):
        for prefix in ("grub_cmd: ", "grub_cmd "):
            if c.startswith(prefix):
                words = c[len(prefix):].split()
                if words and words[0] in names:
                    return words[1:]
    return []


def _opaque_systemd(ev: Event) -> bool:
    """An EV_IPL of systemd-stub that measures a generated archive, not a command line."""
    return ev.type == _IPL and _utf16_text(ev.data) in SYSTEMD_OPAQUE_IPL


def _linux(ctx: _Ctx, by_pcr: dict[int, list[Event]], grub: GrubState | None,
           grub_cmdlines: list[KernelCmdline], sd_pcr8: list[KernelCmdline],
           pcr8_other: list[Event]) -> LinuxState | None:
    cmdlines = list(grub_cmdlines) + list(sd_pcr8)
    # PCR 8 events neither GRUB nor systemd explains. Old systemd-stub measured its credential
    # archives into PCR 8; on a GRUB machine such a description is no explanation (GRUB's
    # strings are what PCR 8 holds there, and a rewritten one must not pass as an archive).
    grub_pcr8 = grub is not None and grub.commands is not None and (
        bool(grub.commands) or bool(grub.unverified))
    unexplained = [ev.index for ev in pcr8_other if grub_pcr8 or not _opaque_systemd(ev)]
    if unexplained and grub is None:
        ctx.note(f"{len(unexplained)} PCR 8 measurement(s) the log does not explain")
    if 12 in by_pcr:
        hidden: list[int] = []
        for ev in by_pcr[12]:
            sd = _systemd_cmdline(ctx, ev)
            if sd is not None:
                cmdlines.append(KernelCmdline(ev.index, 12, "systemd", sd))
            elif ev.type == _IPL and not _opaque_systemd(ev):
                hidden.append(ev.index)  # a command line whose data was rewritten, or unknown
            elif ev.type not in (_IPL, _TAG, _SEP):
                hidden.append(ev.index)
        if hidden:
            ctx.note(f"{len(hidden)} PCR 12 measurement(s) are neither a command line whose "
                     "data matches its digest nor a known systemd or Windows measurement")
        unexplained += hidden
    cmdlines.sort(key=lambda c: c.index)
    kernel: Measurement | None = None
    initrds: list[Measurement] = []
    load_options: bytes | None = None
    sections = _uki_sections(ctx, by_pcr[11]) if 11 in by_pcr else []
    for s in sections:
        if s.name == ".linux":
            kernel = Measurement(s.index, 11, "EV_IPL", s.digest, "uki:.linux")
        elif s.name == ".initrd":
            initrds.append(Measurement(s.index, 11, "EV_IPL", s.digest, "uki:.initrd"))
    if grub is not None and grub.files is not None and grub.commands is not None:
        files = {f.name: f for f in grub.files}
        linux_args = _grub_argument(grub.commands, GRUB_LINUX_COMMANDS)
        if linux_args and linux_args[0] in files:
            f = files[linux_args[0]]
            kernel = Measurement(f.index, 9, "EV_IPL", f.digest, f"grub:{f.name}")
        for arg in _grub_argument(grub.commands, GRUB_INITRD_COMMANDS):
            if arg in files:
                f = files[arg]
                initrds.append(Measurement(f.index, 9, "EV_IPL", f.digest, f"grub:{f.name}"))
    if 9 in by_pcr:
        for ev in by_pcr[9]:
            info = ev.info
            if ev.type == _TAG and isinstance(info, TaggedEventInfo):
                if info.tag_id == LINUX_INITRD_TAG:
                    initrds.append(Measurement(ev.index, 9, ev.type_name, ctx.digest(ev) or b"",
                                               "efi-stub:initrd"))
                elif info.tag_id == LINUX_LOAD_OPTIONS_TAG:
                    load_options = ctx.digest(ev)
    if not (cmdlines or kernel or initrds or sections or load_options or unexplained):
        return None
    last = cmdlines[-1] if cmdlines else None
    return LinuxState(
        cmdline=None if last is None else last.text,
        cmdline_source=None if last is None else last.source,
        cmdlines=tuple(cmdlines),
        kernel=kernel,
        initrds=tuple(initrds),
        uki_sections=tuple(sections),
        load_options_digest=load_options,
        unexplained=tuple(sorted(unexplained)),
    )


def _uki_sections(ctx: _Ctx, events: list[Event]) -> list[UkiSection]:
    """systemd-stub's PCR 11 pairs: the section name (UTF-16 data, digest of the ASCII name and
    its NUL), then the section contents under the same description."""
    out: list[UkiSection] = []
    pending: str | None = None
    for ev in events:
        if ev.type != _IPL:
            pending = None
            continue
        name = _utf16_text(ev.data)
        if name is None:
            pending = None
            continue
        if pending is not None and name == pending:
            out.append(UkiSection(name, ctx.digest(ev) or b"", ev.index))
            pending = None
            continue
        ascii_name = name.encode("ascii") if name.isascii() else None
        pending = name if ascii_name is not None and (
            ctx.matches(ev, ascii_name + b"\0") or ctx.matches(ev, ascii_name)) else None
    return out


def _windows(ctx: _Ctx, by_pcr: dict[int, list[Event]], efi: EfiState | None
             ) -> WindowsState | None:
    reader = WbclReader()
    seps: list[int] = []
    unverified: list[int] = []
    found = False
    late = 0
    for pcr in (12, 13, 14):
        closed = False
        for ev in by_pcr.get(pcr, ()):
            info = ev.info
            if ev.type == _SEP and ev.data == b"WBCL" and ctx.matches(ev):
                if not closed:
                    seps.append(pcr)
                closed = found = True
            elif closed:
                # Windows closes PCRs 12-14 with the WBCL separator at the end of its boot;
                # later extensions come from the running OS (go-attestation skips them too).
                late += 1
            elif ev.type == _TAG and isinstance(info, TaggedEventInfo):
                if not ctx.matches(ev):
                    if info.tag_id & 0x000F0000 == 0x00010000:
                        unverified.append(ev.index)
                    continue
                found = reader.read(pcr, info.tag_id, info.tag_data) or found
    if not found:
        return None
    if late:
        ctx.note(f"{late} PCR 12-14 event(s) after the WBCL separator are not read: they are "
                 "not part of the boot's configuration")
    for c in reader.conflicts[:4]:
        ctx.note(f"WBCL: {c}")
    if unverified:
        ctx.note(f"{len(unverified)} WBCL event(s) do not match their digest")
    manager = None
    if efi is not None:
        for app in efi.apps:
            if app.path is not None and app.path.lower().endswith(WINDOWS_BOOT_MANAGER):
                manager = app
    flags = reader.flags
    return WindowsState(
        boot_manager=manager,
        boot_count=reader.boot_count,
        cold_boot=reader.cold_boot,
        boot_debugging=flags.get("boot_debugging", False),
        kernel_debugging=flags.get("kernel_debugging", False),
        test_signing=flags.get("test_signing", False),
        safe_mode=flags.get("safe_mode", False),
        winpe=flags.get("winpe", False),
        flight_signing=flags.get("flight_signing", False),
        code_integrity=reader.latched_off["code_integrity"],
        dep=reader.latched_off["dep"],
        bitlocker_unlocks=tuple(reader.bitlocker_unlocks),
        modules=tuple(reader.modules),
        sipa_events=reader.sipa_events,
        separators=tuple(seps),
        unverified=tuple(unverified),
    )


# -- the bounded summary ------------------------------------------------------------------------

SUMMARY_LIST: Final = 16
"""Lists in the summary keep at most this many items (the count and a digest cover the rest)."""
SUMMARY_TEXT: Final = 1024
"""Strings in the summary are cut to this many characters (``..."`` marks a cut)."""


def _cut(text: str | None, limit: int = SUMMARY_TEXT) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 3] + "..."


def _list_digest(items: Iterable[bytes]) -> str:
    """SHA-256 over the length-prefixed items: one value that changes with any of them."""
    h = hashlib.sha256()
    for item in items:
        h.update(len(item).to_bytes(4, "little"))
        h.update(item)
    return h.hexdigest()


def _db_summary(db: SignatureDatabase | None) -> dict[str, Any] | None:
    if db is None:
        return None
    return {
        "entries": len(db.entries),
        "certificates": sum(1 for e in db.entries if e.is_certificate),
        "sha256": db.value_sha256.hex(),
        "well_known": sorted(set(db.well_known)),
    }


def _summary(s: MachineState) -> dict[str, Any]:
    n = SUMMARY_LIST
    out: dict[str, Any] = {"bank": s.bank, "verified_pcrs": sorted(s.verified_pcrs)}
    p = s.platform
    out["platform"] = None if p is None else {
        "scrtm_version": _cut(_hex(p.scrtm_version)),
        "scrtm_version_text": _cut(p.scrtm_version_text, 256),
        "gce_firmware_version": p.gce_firmware_version,
        "confidential_computing": p.confidential_computing,
        "firmware_blobs": len(p.firmware_blobs),
        "firmware_blobs_sha256": _list_digest(c.digest for c in p.firmware_blobs),
        "option_roms": None if p.option_roms is None else len(p.option_roms),
    }
    sb = s.secure_boot
    out["secure_boot"] = None if sb is None else {
        "enabled": sb.enabled,
        "pk": _db_summary(sb.pk),
        "kek": _db_summary(sb.kek),
        "db": _db_summary(sb.db),
        "dbx": _db_summary(sb.dbx),
        "authorities": len(sb.authorities),
        "authorities_well_known": sorted({n for n in (a.well_known for a in sb.authorities)
                                          if n is not None}),
        "debug_mode": sb.debug_mode,
        "dma_protection_disabled": sb.dma_protection_disabled,
        "actions": len(sb.actions),
        "unknown_actions": [_cut(t, 256) for t in sb.unknown_actions[:n]],
        "unknown_actions_count": len(sb.unknown_actions),
        "shim_validation_disabled": sb.shim_validation_disabled,
        "sbat_level": _cut(sb.sbat_level, 256),
    }
    e = s.efi
    out["efi"] = None if e is None else {
        "apps": [{"digest": a.digest.hex(), "path": _cut(a.path, 256)} for a in e.apps[:n]],
        "apps_count": len(e.apps),
        "apps_sha256": _list_digest(a.digest for a in e.apps),
        "other": len(e.other),
        "exit_boot_services": e.exit_boot_services,
    }
    g = s.grub
    out["grub"] = None if g is None else {
        "files": None if g.files is None else len(g.files),
        "files_sha256": None if g.files is None else _list_digest(f.digest for f in g.files),
        "other": len(g.other),
        "commands": None if g.commands is None else len(g.commands),
        "commands_sha256": (None if g.commands is None
                            else _list_digest(c.encode("utf-8") for c in g.commands)),
        "unverified": len(g.unverified),
    }
    lx = s.linux
    out["linux"] = None if lx is None else {
        "cmdline": _cut(lx.cmdline),
        "cmdline_sha256": (None if lx.cmdline is None
                           else hashlib.sha256(lx.cmdline.encode("utf-8")).hexdigest()),
        "cmdline_source": lx.cmdline_source,
        "cmdlines": len(lx.cmdlines),
        "kernel_digest": None if lx.kernel is None else lx.kernel.digest.hex(),
        "initrd_digest": _hex(lx.initrd_digest),
        "uki_sections": [{"name": _cut(u.name, 64), "digest": u.digest.hex()}
                         for u in lx.uki_sections[:n]],
        "uki_sections_count": len(lx.uki_sections),
        "unexplained": len(lx.unexplained),
    }
    w = s.windows
    out["windows"] = None if w is None else {
        "boot_manager_digest": None if w.boot_manager is None else w.boot_manager.digest.hex(),
        "boot_count": w.boot_count,
        "cold_boot": w.cold_boot,
        "boot_debugging": w.boot_debugging,
        "kernel_debugging": w.kernel_debugging,
        "test_signing": w.test_signing,
        "safe_mode": w.safe_mode,
        "winpe": w.winpe,
        "code_integrity": w.code_integrity,
        "dep": w.dep,
        "bitlocker_unlocks": [f for f in w.bitlocker_unlocks[:n]],
        "modules": len(w.modules),
        "module_loads": sum(m.loads for m in w.modules),
        "modules_sha256": _list_digest(m.authenticode_hash or b"" for m in w.modules),
    }
    out["notes"] = len(s.notes)
    return out


__all__ = [
    "EfiApp",
    "EfiState",
    "FirmwareComponent",
    "GrubFile",
    "GrubState",
    "KernelCmdline",
    "LinuxState",
    "MachineState",
    "Measurement",
    "PlatformState",
    "UkiSection",
    "WindowsState",
    "gce_firmware_version",
    "machine_state",
]
