"""The ``secure_boot`` section: UEFI Secure Boot on, the right keys, no revoked signers, a fresh dbx.

```json
"secure_boot": {
  "required": true,
  "pk": ["GCE_DEFAULT_PK"],
  "kek": ["MS_THIRD_PARTY_KEK_CA_2011"],
  "db": ["MS_WINDOWS_PROD_PCA_2011", "MS_THIRD_PARTY_UEFI_CA_2011"],
  "forbidden": ["CANONICAL_BOOTHOLE", "CISCO_BOOTHOLE", "DEBIAN_BOOTHOLE"],
  "dbx": {"min_entries": 180,
          "contains": {"hashes": ["<sha256 hex>", ...], "certificates": ["CISCO_BOOTHOLE"],
                       "update": "<base64 of a dbx update file>"}},
  "allowed_actions": ["Security Level is Downgraded to 0"]
}
```

Certificates are named by their well-known name (:data:`~tpm2_attest.eventlog.WELL_KNOWN_NAMES`)
or by the SHA-256 fingerprint of their DER encoding (64 hex digits). ``forbidden`` defaults to
the BootHole signers when ``required`` is true (write ``[]`` to forbid nothing). A dbx update
given inline (``update``, base64: Microsoft's authenticated payload or bare signature lists) is
read into ``hashes`` and ``certificates`` when the policy is loaded.

Rule ids: ``secure_boot.required`` (Secure Boot must be on and in force: no UEFI debugger, shim
validating what it loads, pre-boot DMA protection on unless ``allowed_actions`` lists
"DMA Protection Disabled"), ``secure_boot.unknown_action`` (PCR 7 holds an EV_EFI_ACTION
string ``allowed_actions`` does not list, other than the two above; checked whenever the section
is present), ``secure_boot.pk``,
``secure_boot.kek``, ``secure_boot.db`` (a listed certificate is missing from that database),
``secure_boot.forbidden`` (a forbidden certificate is in db without dbx revoking it, or verified
a boot component), ``secure_boot.dbx_contains`` (a listed revocation is missing from dbx),
``secure_boot.dbx_min_entries`` (dbx has fewer entries than required). Each needs the Secure
Boot state of a verified PCR 7: without it, each configured rule is violated.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..eventlog import guids
from ..eventlog.efi import parse_variable_update
from ..eventlog.errors import EventLogError
from ..eventlog.wellknown import (
    BOOTHOLE_SIGNERS,
    WELL_KNOWN_NAMES,
    fingerprint_of,
    name_of_fingerprint,
)
from .base import (
    MAX_LISTED,
    Evidence,
    PolicyError,
    Section,
    Violation,
    boolean,
    capped,
    integer,
    join,
    mapping,
    only_keys,
    pcrs_missing,
    sequence,
    string,
)

if TYPE_CHECKING:
    from ..eventlog.secureboot import SecureBootState, SignatureDatabase

_FINGERPRINT = re.compile(r"[0-9a-fA-F]{64}")
_DMA_DISABLED = "DMA Protection Disabled"


def _short(text: str, limit: int = 256) -> str:
    """A firmware string cut for a violation (a hostile log's could be megabytes)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True, order=True)
class CertificateRef:
    """A certificate named in a policy: its SHA-256 fingerprint and how the document spelt it."""

    fingerprint: bytes
    text: str

    @classmethod
    def parse(cls, value: Any, path: str) -> CertificateRef:
        """A well-known name or a 64-hex-digit SHA-256 fingerprint, else :class:`PolicyError`."""
        text = string(value, path)
        if text in WELL_KNOWN_NAMES:
            return cls(fingerprint_of(text), text)
        if _FINGERPRINT.fullmatch(text):
            return cls(bytes.fromhex(text), text.lower())
        raise PolicyError(path, "expected a well-known certificate name "
                          f"({', '.join(WELL_KNOWN_NAMES)}) or a SHA-256 fingerprint (64 hex digits)")

    @classmethod
    def of(cls, fingerprint: bytes) -> CertificateRef:
        """The reference a learned policy writes: the well-known name when there is one."""
        return cls(fingerprint, name_of_fingerprint(fingerprint) or fingerprint.hex())


def _refs(value: Any, path: str) -> tuple[CertificateRef, ...]:
    items = sequence(value, path)
    refs = [CertificateRef.parse(v, join(path, i)) for i, v in enumerate(items)]
    return tuple(dict.fromkeys(refs))


@dataclass(frozen=True)
class SecureBootSection(Section):
    """Secure Boot rules over ``EventLogResult.state.secure_boot`` (a verified PCR 7)."""

    key: ClassVar[str] = "secure_boot"
    rules: ClassVar[tuple[str, ...]] = (
        "secure_boot.required", "secure_boot.unknown_action", "secure_boot.pk",
        "secure_boot.kek", "secure_boot.db", "secure_boot.forbidden", "secure_boot.dbx_contains",
        "secure_boot.dbx_min_entries")

    required: bool = False
    pk: tuple[CertificateRef, ...] = ()
    kek: tuple[CertificateRef, ...] = ()
    db: tuple[CertificateRef, ...] = ()
    forbidden: tuple[CertificateRef, ...] = ()
    dbx_hashes: frozenset[bytes] = frozenset()
    dbx_certificates: tuple[CertificateRef, ...] = ()
    dbx_min_entries: int | None = None
    allowed_actions: tuple[str, ...] = ()

    # -- the document ---------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, doc: Any) -> SecureBootSection:
        """Read the section (see the module docstring); :class:`PolicyError` names the key."""
        top = mapping(doc, cls.key)
        only_keys(top, cls.key, ("required", "pk", "kek", "db", "forbidden", "dbx",
                                 "allowed_actions"))
        required = boolean(top["required"], join(cls.key, "required")) if "required" in top else False
        lists = {k: _refs(top[k], join(cls.key, k)) if k in top else () for k in ("pk", "kek", "db")}
        if "forbidden" in top:
            forbidden = _refs(top["forbidden"], join(cls.key, "forbidden"))
        else:
            forbidden = (tuple(CertificateRef(fingerprint_of(n), n) for n in BOOTHOLE_SIGNERS)
                         if required else ())
        hashes: set[bytes] = set()
        certs: list[CertificateRef] = []
        minimum = None
        if "dbx" in top:
            path = join(cls.key, "dbx")
            dbx = mapping(top["dbx"], path)
            only_keys(dbx, path, ("min_entries", "contains"))
            if "min_entries" in dbx:
                minimum = integer(dbx["min_entries"], join(path, "min_entries"), minimum=0)
            if "contains" in dbx:
                hashes, certs = _contains(dbx["contains"], join(path, "contains"))
        actions: tuple[str, ...] = ()
        if "allowed_actions" in top:
            path = join(cls.key, "allowed_actions")
            actions = tuple(dict.fromkeys(string(v, join(path, i)) for i, v in
                                          enumerate(sequence(top["allowed_actions"], path))))
        return cls(required, lists["pk"], lists["kek"], lists["db"], forbidden, frozenset(hashes),
                   tuple(dict.fromkeys(certs)), minimum, actions)

    def to_dict(self) -> dict[str, Any]:
        """The section as a document (``from_dict(to_dict())`` gives an equal section)."""
        out: dict[str, Any] = {"required": self.required}
        for name in ("pk", "kek", "db"):
            refs: tuple[CertificateRef, ...] = getattr(self, name)
            if refs:
                out[name] = [r.text for r in refs]
        out["forbidden"] = [r.text for r in self.forbidden]
        dbx: dict[str, Any] = {}
        if self.dbx_min_entries is not None:
            dbx["min_entries"] = self.dbx_min_entries
        contains: dict[str, Any] = {}
        if self.dbx_hashes:
            contains["hashes"] = sorted(h.hex() for h in self.dbx_hashes)
        if self.dbx_certificates:
            contains["certificates"] = [r.text for r in self.dbx_certificates]
        if contains:
            dbx["contains"] = contains
        if dbx:
            out["dbx"] = dbx
        if self.allowed_actions:
            out["allowed_actions"] = list(self.allowed_actions)
        return out

    # -- judging --------------------------------------------------------------------------------

    def _configured(self) -> list[str]:
        rules = ["secure_boot.required"] if self.required else []
        rules.append("secure_boot.unknown_action")  # whenever the section is present
        rules += [f"secure_boot.{n}" for n in ("pk", "kek", "db") if getattr(self, n)]
        if self.forbidden:
            rules.append("secure_boot.forbidden")
        if self.dbx_hashes or self.dbx_certificates:
            rules.append("secure_boot.dbx_contains")
        if self.dbx_min_entries is not None:
            rules.append("secure_boot.dbx_min_entries")
        return rules

    def evaluate(self, evidence: Evidence) -> Iterator[Violation]:
        """Every violated Secure Boot rule; without a verified PCR 7, every configured rule."""
        sb = _secure_boot(evidence)
        if sb is None:
            why = _missing(evidence)
            for rule in self._configured():
                yield Violation(rule, f"no verified Secure Boot state: {why}")
            return
        if self.required and not sb.enabled:
            yield Violation("secure_boot.required", "Secure Boot is disabled", seen=False, wanted=True)
        elif self.required:
            # On, but not in force: a debugger can bypass every check (go-attestation refuses
            # such a log), and shim with validation disabled loads unverified code.
            if sb.debug_mode:
                yield Violation("secure_boot.required", "a UEFI debugger was enabled during boot "
                                "(\"UEFI Debug Mode\" in PCR 7): Secure Boot is not in force",
                                seen={"debug_mode": True}, wanted=True)
            if sb.shim_validation_disabled:
                yield Violation("secure_boot.required", "shim's signature validation is disabled "
                                "(MokSBState set): shim loads GRUB and kernels unverified",
                                seen={"shim_validation_disabled": True}, wanted=True)
            if sb.dma_protection_disabled and _DMA_DISABLED not in self.allowed_actions:
                yield Violation("secure_boot.required", "pre-boot DMA protection was disabled "
                                "(\"DMA Protection Disabled\" in PCR 7): a device could rewrite "
                                "memory while firmware verified the boot",
                                seen={"dma_protection_disabled": True}, wanted=True)
        yield from self._unknown_actions(sb)
        for name, db in (("pk", sb.pk), ("kek", sb.kek), ("db", sb.db)):
            wanted: tuple[CertificateRef, ...] = getattr(self, name)
            if wanted:
                yield from _members(f"secure_boot.{name}", name.upper() if name != "db" else "db",
                                    db, wanted)
        if self.forbidden:
            yield from self._forbidden(sb)
        if self.dbx_hashes or self.dbx_certificates:
            yield from self._dbx_contains(sb.dbx)
        if self.dbx_min_entries is not None:
            n = 0 if sb.dbx is None else len(sb.dbx.entries)
            if n < self.dbx_min_entries:
                yield Violation("secure_boot.dbx_min_entries",
                                f"dbx has {n} entries, at least {self.dbx_min_entries} required",
                                seen=n, wanted=self.dbx_min_entries)

    def _unknown_actions(self, sb: SecureBootState) -> Iterator[Violation]:
        allowed = set(self.allowed_actions)
        found = [Violation("secure_boot.unknown_action",
                           f"PCR 7 holds the firmware action {_short(a.text)!r} (event "
                           f"{a.event_index}), which the policy does not allow",
                           seen={"event": a.event_index, "action": _short(a.text)},
                           wanted=[_short(t) for t in self.allowed_actions[:MAX_LISTED]])
                 for a in sb.actions if a.known is None and a.text not in allowed]
        yield from capped(found)

    def _forbidden(self, sb: SecureBootState) -> Iterator[Violation]:
        bad = {r.fingerprint: r.text for r in self.forbidden}
        revoked = set(sb.dbx.fingerprints) if sb.dbx is not None else set()
        found: list[Violation] = []
        for fp in (sb.db.fingerprints if sb.db is not None else ()):
            if fp in bad and fp not in revoked:
                found.append(Violation("secure_boot.forbidden",
                                       f"db trusts the forbidden certificate {bad[fp]} and dbx does "
                                       "not revoke it", seen=bad[fp]))
        for a in sb.authorities:
            afp = a.fingerprint
            if afp is not None and afp in bad:
                found.append(Violation("secure_boot.forbidden",
                                       f"the forbidden certificate {bad[afp]} verified a boot component "
                                       f"(event {a.event_index})", seen=bad[afp]))
        yield from capped(found)

    def _dbx_contains(self, dbx: SignatureDatabase | None) -> Iterator[Violation]:
        have_hashes: set[bytes] = set()
        have_certs: set[bytes] = set()
        if dbx is not None:
            for e in dbx.entries:
                if e.signature_type == guids.EFI_CERT_SHA256:
                    have_hashes.add(e.data)
                elif e.is_certificate:
                    have_certs.add(e.fingerprint)
        missing_h = sorted(self.dbx_hashes - have_hashes)
        missing_c = [r for r in self.dbx_certificates if r.fingerprint not in have_certs]
        if missing_h or missing_c:
            total = len(self.dbx_hashes) + len(self.dbx_certificates)
            parts = []
            if missing_h:
                parts.append(f"{len(missing_h)} image hash(es)")
            if missing_c:
                parts.append(f"certificate(s) {', '.join(r.text for r in missing_c[:MAX_LISTED])}")
            yield Violation(
                "secure_boot.dbx_contains",
                f"dbx lacks {' and '.join(parts)} of the {total} revocations the policy requires"
                + ("" if dbx is not None else " (no dbx was measured)"),
                seen={"missing_hashes": len(missing_h),
                      "first_missing": [h.hex() for h in missing_h[:MAX_LISTED]],
                      "missing_certificates": [r.text for r in missing_c[:MAX_LISTED]]},
                wanted=total)

    @classmethod
    def learn(cls, evidence: Evidence) -> SecureBootSection | None:
        """The Secure Boot state seen: on/off, every PK/KEK/db certificate, the dbx as a floor
        (everything it revokes, and its size), the BootHole signers forbidden when the
        machine neither trusts nor booted with them, and the PCR 7 action strings seen
        (except "UEFI Debug Mode") as ``allowed_actions``."""
        sb = _secure_boot(evidence)
        if sb is None:
            return None

        def refs(db: SignatureDatabase | None) -> tuple[CertificateRef, ...]:
            fps = db.fingerprints if db is not None else ()
            return tuple(dict.fromkeys(CertificateRef.of(fp) for fp in fps))

        hashes: frozenset[bytes] = frozenset()
        dbx_certs: tuple[CertificateRef, ...] = ()
        minimum = None
        if sb.dbx is not None:
            hashes = frozenset(e.data for e in sb.dbx.entries
                               if e.signature_type == guids.EFI_CERT_SHA256)
            dbx_certs = refs(sb.dbx)
            minimum = len(sb.dbx.entries)
        candidate = cls(required=sb.enabled, forbidden=tuple(
            CertificateRef(fingerprint_of(n), n) for n in BOOTHOLE_SIGNERS))
        present = {v.seen for v in candidate._forbidden(sb)}
        forbidden = tuple(r for r in candidate.forbidden if r.text not in present)
        # Every action string seen but the debugger's (never acceptable): the unknown ones,
        # and "DMA Protection Disabled" when the machine booted so.
        actions = tuple(dict.fromkeys(a.text for a in sb.actions if a.known != "debug_mode"))
        return cls(sb.enabled, refs(sb.pk), refs(sb.kek), refs(sb.db), forbidden, hashes,
                   dbx_certs, minimum, actions)


def _contains(value: Any, path: str) -> tuple[set[bytes], list[CertificateRef]]:
    doc = mapping(value, path)
    only_keys(doc, path, ("hashes", "certificates", "update"))
    hashes: set[bytes] = set()
    certs: list[CertificateRef] = []
    if "hashes" in doc:
        hpath = join(path, "hashes")
        for i, v in enumerate(sequence(doc["hashes"], hpath)):
            text = string(v, join(hpath, i))
            if not _FINGERPRINT.fullmatch(text):
                raise PolicyError(join(hpath, i), "expected a SHA-256 image hash (64 hex digits)")
            hashes.add(bytes.fromhex(text))
    if "certificates" in doc:
        certs.extend(_refs(doc["certificates"], join(path, "certificates")))
    if "update" in doc:
        upath = join(path, "update")
        try:
            raw = base64.b64decode(string(doc["update"], upath), validate=True)
        except binascii.Error as exc:
            raise PolicyError(upath, f"not base64: {exc}") from None
        h, c = revocations(raw, upath)
        hashes |= h
        certs.extend(c)
    return hashes, certs


def revocations(update: bytes, path: str = "update") -> tuple[set[bytes], list[CertificateRef]]:
    """(SHA-256 image hashes, certificates) of a dbx update (authenticated payload or bare
    EFI_SIGNATURE_LISTs), for ``secure_boot.dbx.contains``; :class:`PolicyError` otherwise."""
    try:
        entries = parse_variable_update(update)
    except EventLogError as exc:
        raise PolicyError(path, f"not a signature database update: {exc}") from None
    hashes: set[bytes] = set()
    certs: list[CertificateRef] = []
    for e in entries:
        if e.signature_type == guids.EFI_CERT_SHA256 and len(e.data) == 32:
            hashes.add(e.data)
        elif e.is_certificate:
            certs.append(CertificateRef.of(e.fingerprint))
        else:
            raise PolicyError(path, f"the update holds a {e.type_name} entry; only EFI_CERT_SHA256 "
                              "hashes and X.509 certificates can be required")
    return hashes, certs


def dbx_contains_document(update: bytes) -> dict[str, Any]:
    """The ``secure_boot.dbx.contains`` value requiring everything a dbx update revokes."""
    hashes, certs = revocations(update)
    out: dict[str, Any] = {"hashes": sorted(h.hex() for h in hashes)}
    if certs:
        out["certificates"] = [c.text for c in dict.fromkeys(certs)]
    return out


def _members(rule: str, label: str, db: SignatureDatabase | None,
             wanted: Sequence[CertificateRef]) -> Iterator[Violation]:
    have = set(db.fingerprints) if db is not None else set()
    for ref in wanted:
        if ref.fingerprint not in have:
            yield Violation(rule, f"{label} does not contain {ref.text}"
                            + ("" if db is not None else f" ({label} was not measured)"),
                            seen=sorted({CertificateRef.of(f).text for f in have})[:MAX_LISTED],
                            wanted=ref.text)


def _secure_boot(evidence: Evidence) -> SecureBootState | None:
    log = evidence.event_log
    state = getattr(log, "state", None)
    return getattr(state, "secure_boot", None)


def _missing(evidence: Evidence) -> str:
    log = evidence.event_log
    if log is not None and 7 in getattr(log, "verified", frozenset()):
        return "the Secure Boot events were not read"
    return pcrs_missing(log, (7,))


__all__ = ["CertificateRef", "SecureBootSection", "dbx_contains_document", "revocations"]
