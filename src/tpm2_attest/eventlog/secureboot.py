"""Secure Boot state from the PCR 7 events (PFP 1.06 section 3.3.4.8, UEFI 2.10 section 32).

Event types are not covered by the digests, so every PCR 7 event is accepted only when its
data hashes to its digest in the chosen bank, and only the event types PCR 7 may hold are
allowed. As go-attestation does, a variable measured twice or after the PCR 7 separator or a
second separator is refused (SecureBootError). EV_EFI_ACTION strings are recorded, not refused:
firmware measures its own into PCR 7 (HP's SVM/DMA settings, a lowered Thunderbolt security
level), which a policy judges (``secure_boot.unknown_action``). Use this on a log whose PCR 7
replay matched a quoted PCR (``verify_event_log`` does exactly that).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Final

from .._frozen import frozen
from ..tpm2.constants import HASH_SIZES, TPM_ALG
from . import guids
from .banks import bank_name, resolve_bank
from .decode import decode_variable
from .efi import SignatureEntry, parse_certificate, parse_signature_lists
from .errors import EventLogBankError, EventLogError, SecureBootError
from .events import Event, EventLog, UefiVariableInfo
from .types import EventType
from .wellknown import name_of_fingerprint

if TYPE_CHECKING:
    from cryptography import x509

_SB: Final = (guids.EFI_GLOBAL_VARIABLE, "SecureBoot")
_PK: Final = (guids.EFI_GLOBAL_VARIABLE, "PK")
_KEK: Final = (guids.EFI_GLOBAL_VARIABLE, "KEK")
_DB: Final = (guids.EFI_IMAGE_SECURITY_DATABASE, "db")
_DBX: Final = (guids.EFI_IMAGE_SECURITY_DATABASE, "dbx")
_DBT: Final = (guids.EFI_IMAGE_SECURITY_DATABASE, "dbt")
_DBR: Final = (guids.EFI_IMAGE_SECURITY_DATABASE, "dbr")
_SPEC_ORDER: Final = (_SB, _PK, _KEK, _DB, _DBX)
_DATABASES: Final = frozenset({_PK, _KEK, _DB, _DBX, _DBT, _DBR})
_REFUSED_IN_PCR7: Final = frozenset(int(t) for t in EventType)
"""Standard event types PCR 7 does not hold except those handled by name: one of them in PCR 7
is an inconsistent log. Types outside the TCG registry (vendor events) are recorded instead."""
KNOWN_ACTIONS: Final[dict[str, str]] = {
    "UEFI Debug Mode": "debug_mode",
    "DMA Protection Disabled": "dma_protection_disabled",
}
"""PCR 7 EV_EFI_ACTION strings whose meaning is known (EDK II's TCG trusted boot chain), by the
:class:`SecureBootState` flag they set. Both weaken the boot: a UEFI debugger can bypass every
check, and without pre-boot DMA protection a device can rewrite memory while firmware and boot
loaders verify what they load. Firmware puts them into PCR 7 so that they change the Secure
Boot policy's value."""


@frozen
class SignatureDatabase:
    """A measured signature database (PK, KEK, db, dbx, dbt, dbr) and its parsed entries."""

    name: str
    guid: str
    event_index: int
    digest: bytes
    value: bytes
    entries: tuple[SignatureEntry, ...]

    @property
    def certificates(self) -> tuple[x509.Certificate, ...]:
        """The X.509 certificates of the database (those that parsed)."""
        return tuple(e.certificate for e in self.entries if e.certificate is not None)

    @property
    def sha256_hashes(self) -> tuple[bytes, ...]:
        """The EFI_CERT_SHA256 entries (image hashes)."""
        return tuple(e.data for e in self.entries
                     if e.signature_type == guids.EFI_CERT_SHA256 and len(e.data) == 32)

    @property
    def value_sha256(self) -> bytes:
        """SHA-256 of the variable's value (a bank-independent identity of the database)."""
        return hashlib.sha256(self.value).digest()

    @property
    def fingerprints(self) -> tuple[bytes, ...]:
        """SHA-256 fingerprints (of the DER bytes) of the database's X.509 entries, in order."""
        return tuple(e.fingerprint for e in self.entries if e.is_certificate)

    @property
    def well_known(self) -> tuple[str, ...]:
        """Well-known names of the database's certificates, in order (unknown ones left out)."""
        return tuple(n for n in (e.well_known for e in self.entries) if n is not None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {
            "name": self.name,
            "guid": self.guid,
            "event": self.event_index,
            "digest": self.digest.hex(),
            "value_sha256": self.value_sha256.hex(),
            "entries": [e.to_dict() for e in self.entries],
        }


@frozen
class MeasuredVariable:
    """Another UEFI variable measured into PCR 7 (AuditMode, DeployedMode, SPDM databases...)."""

    guid: str
    name: str
    value: bytes
    event_index: int
    event_type: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {"guid": self.guid, "name": self.name, "value": self.value.hex(),
                "event": self.event_index, "event_type": self.event_type}


@frozen
class Authority:
    """An EV_EFI_VARIABLE_AUTHORITY: the db entry (usually a certificate) that verified an
    image. ``after_separator`` tells whether it verified a boot application (OS loader side)."""

    event_index: int
    guid: str
    name: str
    owner: str | None
    value: bytes
    certificate: x509.Certificate | None
    after_separator: bool

    @property
    def fingerprint(self) -> bytes | None:
        """SHA-256 of the DER certificate that verified the image (None when not a certificate)."""
        if self.certificate is None:
            return None
        from cryptography.hazmat.primitives.serialization import Encoding

        return hashlib.sha256(self.certificate.public_bytes(Encoding.DER)).digest()

    @property
    def well_known(self) -> str | None:
        """The well-known name of the certificate, or None."""
        fp = self.fingerprint
        return None if fp is None else name_of_fingerprint(fp)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        d: dict[str, Any] = {"event": self.event_index, "variable": self.name, "guid": self.guid,
                             "owner": self.owner, "after_separator": self.after_separator,
                             "value_sha256": hashlib.sha256(self.value).hexdigest()}
        if self.certificate is not None:
            d["subject"] = self.certificate.subject.rfc4514_string()
            d["issuer"] = self.certificate.issuer.rfc4514_string()
            d["certificate_sha256"] = hashlib.sha256(
                self.certificate.tbs_certificate_bytes).hexdigest()
            d["fingerprint"] = (self.fingerprint or b"").hex()
            name = self.well_known
            if name is not None:
                d["well_known"] = name
        return d


@frozen
class EfiAction:
    """A firmware action in PCR 7: an EV_EFI_ACTION whose data matches its digest, or an event
    of a type this library does not interpret (e.g. AMD's TSME event, type 0x8401).

    ``text`` is the measured string of an EV_EFI_ACTION: its bytes as Latin-1 (one character
    per byte, so equal texts are equal measurements; ASCII in practice), trailing NULs removed
    (some firmware NUL-terminates the string, hashed with or without the NUL). For an event of
    another type, whose data cannot be checked against its digest, ``text`` is
    ``"<type name> <digest hex>"``: the digest is what was extended, so allowing that text
    allows exactly that measurement. ``known`` is the flag a known string sets
    (:data:`KNOWN_ACTIONS`), None for any other; ``event_type`` the event's type name."""

    event_index: int
    text: str
    after_separator: bool
    known: str | None = None
    event_type: str = "EV_EFI_ACTION"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {"event": self.event_index, "type": self.event_type, "text": self.text,
                "after_separator": self.after_separator, "known": self.known}


@frozen
class SecureBootState:
    """What PCR 7 says about UEFI Secure Boot (see :func:`secure_boot_state`)."""

    bank: str
    enabled: bool
    pk: SignatureDatabase | None
    kek: SignatureDatabase | None
    db: SignatureDatabase | None
    dbx: SignatureDatabase | None
    dbt: SignatureDatabase | None
    dbr: SignatureDatabase | None
    authorities: tuple[Authority, ...]
    other_variables: tuple[MeasuredVariable, ...]
    debug_mode: bool
    dma_protection_disabled: bool
    separator_seen: bool
    spec_order: bool
    events: tuple[int, ...]
    actions: tuple[EfiAction, ...] = ()

    @property
    def unknown_actions(self) -> tuple[str, ...]:
        """The PCR 7 action strings whose meaning is not known, in order (see ``actions``)."""
        return tuple(a.text for a in self.actions if a.known is None)

    @property
    def pre_separator_authorities(self) -> tuple[Authority, ...]:
        """Authorities that verified firmware drivers/option ROMs (before the separator)."""
        return tuple(a for a in self.authorities if not a.after_separator)

    @property
    def post_separator_authorities(self) -> tuple[Authority, ...]:
        """Authorities that verified boot applications (after the separator)."""
        return tuple(a for a in self.authorities if a.after_separator)

    @property
    def shim_validation_disabled(self) -> bool:
        """True when shim measured MokSBState set (``mokutil --disable-validation``): shim then
        loads GRUB and kernels without verifying them, Secure Boot or not. shim measures the
        variable into PCR 7 as an authority event (SHIM_LOCK GUID) only when it is set."""
        return any(a.guid == guids.SHIM_LOCK and a.name == "MokSBState"
                   and a.value[:1] not in (b"", b"\0") for a in self.authorities)

    @property
    def sbat_level(self) -> str | None:
        """The SBAT revocation level shim measured into PCR 7 (``SbatLevel``), as text."""
        for a in reversed(self.authorities):
            if a.guid == guids.SHIM_LOCK and a.name == "SbatLevel":
                return a.value.decode("utf-8", "replace").rstrip("\0")
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        def db(x: SignatureDatabase | None) -> dict[str, Any] | None:
            return x.to_dict() if x is not None else None

        return {
            "bank": self.bank,
            "enabled": self.enabled,
            "PK": db(self.pk),
            "KEK": db(self.kek),
            "db": db(self.db),
            "dbx": db(self.dbx),
            "dbt": db(self.dbt),
            "dbr": db(self.dbr),
            "authorities": [a.to_dict() for a in self.authorities],
            "other_variables": [v.to_dict() for v in self.other_variables],
            "debug_mode": self.debug_mode,
            "dma_protection_disabled": self.dma_protection_disabled,
            "actions": [a.to_dict() for a in self.actions],
            "unknown_actions": list(self.unknown_actions),
            "shim_validation_disabled": self.shim_validation_disabled,
            "sbat_level": self.sbat_level,
            "separator_seen": self.separator_seen,
            "spec_order": self.spec_order,
            "events": list(self.events),
        }


def _variable(ev: Event) -> UefiVariableInfo:
    """Decode the event's UEFI_VARIABLE_DATA strictly, whatever the parse mode was."""
    try:
        return decode_variable(ev.data, ev.offset)
    except EventLogError as exc:
        raise SecureBootError(f"{ev.type_name}: {exc.message}", exc.offset, ev.index) from None


def _require_digest(ev: Event, alg: int, what: str, *alternatives: bytes) -> None:
    if ev.digest(alg) is None:
        raise EventLogBankError(f"PCR 7 event has no {bank_name(alg)} digest", ev.offset,
                                ev.index)
    if ev.digest_matches(alg):
        return
    if any(ev.digest_matches(alg, alt) for alt in alternatives):
        return
    raise SecureBootError(f"{what}: event data does not match its {bank_name(alg)} digest",
                          ev.offset, ev.index)


def _authority_certificate(value: bytes) -> tuple[str | None, x509.Certificate | None]:
    """(owner, certificate) of an authority value: EFI_SIGNATURE_DATA, or a bare DER
    certificate (old shim omitted the owner GUID)."""
    if len(value) > 16:
        cert, _ = parse_certificate(value[16:])
        if cert is not None:
            from ._le import guid_text

            return guid_text(value), cert
    cert, _ = parse_certificate(value)
    return None, cert


def _in_spec_order(seen: list[tuple[str, str]]) -> bool:
    """True when SecureBoot, PK, KEK, db, dbx (those present) come first, in that order."""
    keys = set(seen)
    present = [k for k in _SPEC_ORDER if k in keys]
    return seen[: len(present)] == present


def secure_boot_state(log: EventLog, bank: str | int | None = None) -> SecureBootState:
    """Derive the Secure Boot state from the PCR 7 events of ``log``.

    ``bank`` (default: sha256 when the log has it, else its first bank) is the bank whose
    digests authenticate each event's data. EV_EFI_ACTION strings are recorded in ``actions``
    (those not in :data:`KNOWN_ACTIONS` also in ``unknown_actions``), whatever they say.
    Raises SecureBootError for inconsistent PCR 7 events (duplicate or post-separator
    variables, digest mismatches, unexpected event types, malformed databases, Secure Boot
    enabled without PK/KEK/db or without any authority) and
    EventLogBankError when the bank is missing. The caller must still check that PCR 7
    replays to a quoted value (``verify_event_log`` does).
    """
    if bank is None:
        known = [a for a, _ in log.algorithms if a in HASH_SIZES]
        if not known:
            raise EventLogBankError("the log has no digests of a known hash algorithm")
        alg = int(TPM_ALG.SHA256) if TPM_ALG.SHA256 in known else known[0]
    else:
        alg = resolve_bank(bank)
    if alg not in dict(log.algorithms):
        raise EventLogBankError(f"the log has no {bank_name(alg)} digests")

    enabled = False
    dbs: dict[tuple[str, str], SignatureDatabase] = {}
    seen: list[tuple[str, str]] = []
    seen_keys: set[tuple[str, str]] = set()
    others: list[MeasuredVariable] = []
    authorities: list[Authority] = []
    actions: list[EfiAction] = []
    separator = False
    used: list[int] = []

    for ev in log.events:
        if ev.pcr != 7 or not ev.extends:
            continue
        used.append(ev.index)
        t = ev.type
        if t == EventType.EV_SEPARATOR:
            if separator:
                raise SecureBootError("second separator in PCR 7", ev.offset, ev.index)
            if ev.data != b"\0\0\0\0":
                raise SecureBootError(f"PCR 7 separator data {ev.data.hex()} is not 00000000",
                                      ev.offset, ev.index)
            _require_digest(ev, alg, "separator")
            separator = True
        elif t == EventType.EV_EFI_ACTION:
            measured = ev.data.rstrip(b"\0")  # some firmware NUL-terminates, hashed or not
            _require_digest(ev, alg, "EV_EFI_ACTION", measured)
            text = measured.decode("latin-1")
            actions.append(EfiAction(ev.index, text, separator, KNOWN_ACTIONS.get(text)))
        elif t == EventType.EV_EFI_VARIABLE_DRIVER_CONFIG:
            var = _variable(ev)
            _require_digest(ev, alg, f"variable {var.name}")
            if var.key in seen_keys:
                raise SecureBootError(f"variable {var.name} measured twice", ev.offset, ev.index)
            if separator:
                raise SecureBootError(f"variable {var.name} measured after the separator",
                                      ev.offset, ev.index)
            seen.append(var.key)
            seen_keys.add(var.key)
            if var.key == _SB:
                # An absent variable is measured with no data: Secure Boot is off.
                if len(var.value) > 1 or (var.value and var.value[0] > 1):
                    raise SecureBootError(f"SecureBoot value {var.value.hex()} is not 00 or 01",
                                          ev.offset, ev.index)
                enabled = var.value == b"\x01"
            elif var.key in _DATABASES:
                try:
                    entries = parse_signature_lists(var.value, ev.offset)
                except EventLogError as exc:
                    raise SecureBootError(f"{var.name}: {exc.message}", exc.offset,
                                          ev.index) from None
                dbs[var.key] = SignatureDatabase(var.name, var.guid, ev.index,
                                                 ev.digest(alg) or b"", var.value, entries)
            else:
                others.append(MeasuredVariable(var.guid, var.name, var.value, ev.index,
                                               ev.type_name))
        elif t == EventType.EV_EFI_VARIABLE_AUTHORITY:
            var = _variable(ev)
            # Old shim logged one byte too many; go-attestation accepts the digest without it.
            _require_digest(ev, alg, f"authority {var.name}", ev.data[:-1])
            owner, cert = _authority_certificate(var.value)
            authorities.append(Authority(ev.index, var.guid, var.name, owner, var.value, cert,
                                         separator))
        elif t in (EventType.EV_EFI_SPDM_DEVICE_POLICY, EventType.EV_EFI_SPDM_DEVICE_AUTHORITY):
            var = _variable(ev)
            _require_digest(ev, alg, ev.type_name)
            others.append(MeasuredVariable(var.guid, var.name, var.value, ev.index,
                                           ev.type_name))
        elif t in _REFUSED_IN_PCR7:
            raise SecureBootError(f"unexpected {ev.type_name} event in PCR 7", ev.offset,
                                  ev.index)
        else:
            # A type we do not interpret (vendor events such as AMD's TSME, 0x8401): its data
            # proves nothing, its digest is what was extended. Recorded, never trusted: a
            # policy refuses it unless it allows that exact measurement.
            digest = ev.digest(alg)
            if digest is None:
                raise SecureBootError(f"{ev.type_name} event has no {bank_name(alg)} digest",
                                      ev.offset, ev.index)
            actions.append(EfiAction(ev.index, f"{ev.type_name} {digest.hex()}", separator,
                                     None, ev.type_name))

    state = SecureBootState(
        bank=bank_name(alg),
        enabled=enabled,
        pk=dbs.get(_PK),
        kek=dbs.get(_KEK),
        db=dbs.get(_DB),
        dbx=dbs.get(_DBX),
        dbt=dbs.get(_DBT),
        dbr=dbs.get(_DBR),
        authorities=tuple(authorities),
        other_variables=tuple(others),
        debug_mode=any(a.known == "debug_mode" for a in actions),
        dma_protection_disabled=any(a.known == "dma_protection_disabled" for a in actions),
        separator_seen=separator,
        spec_order=_in_spec_order(seen),
        events=tuple(used),
        actions=tuple(actions),
    )
    if enabled:
        for name, d in (("PK", state.pk), ("KEK", state.kek), ("db", state.db)):
            if d is None or not d.entries:
                raise SecureBootError(f"Secure Boot is enabled but {name} is empty or missing")
        if not authorities:
            raise SecureBootError("Secure Boot is enabled but no authority verified an image")
    return state
