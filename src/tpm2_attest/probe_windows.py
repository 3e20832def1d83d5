"""``tpm2-attest probe windows-report``: prove, on a real Windows machine, every assumption the
PCP backend makes that no reference implementation covers, and write one report to send us.

Run it once as a standard user and once elevated or as SYSTEM (docs/windows.md has the
scheduled-task recipe). Each check names the assumption, says CONFIRMED, DIFFERS, OBSERVED,
SKIPPED or ERROR, and records every API call it made: the function, what it was called on, the
flags, the HRESULT and the outcome. Keys the report creates are deleted in ``finally`` (a sweep
at the end deletes any a check left); the report lists what it created, deleted and left, so a
reader can see nothing stayed behind. The one deliberate exception is ``--handoff``: an
elevated run keeps one machine key for the standard-user run, which ``--cleanup-handoff``
deletes.

The logic runs over any :class:`~tpm2_attest.backends.ncrypt_api.NCryptProvider`: ncrypt.dll on
Windows, :class:`~tpm2_attest.backends.pcp_emulator.PcpEmulator` in the tests (whose knobs make
each assumption fail in turn).
"""

from __future__ import annotations

import hashlib
import os
import platform
import secrets
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from . import verify
from ._files import write_atomic
from ._version import __version__
from .backends.ek_chain import read_ek_chain
from .backends.ncrypt_api import (
    DACL_SECURITY_INFORMATION,
    NCRYPT_MACHINE_KEY_FLAG,
    NCRYPT_PCP_ECC_EKCERT_PROPERTY,
    NCRYPT_PCP_ECC_EKNVCERT_PROPERTY,
    NCRYPT_PCP_ECC_EKPUB_PROPERTY,
    NCRYPT_PCP_EKCERT_PROPERTY,
    NCRYPT_PCP_EKNVCERT_PROPERTY,
    NCRYPT_PCP_EKPUB_PROPERTY,
    NCRYPT_PCP_INTERMEDIATE_CA_EKCERT_PROPERTY,
    NCRYPT_PCP_PLATFORM_TYPE_PROPERTY,
    NCRYPT_PCP_PROVIDER_VERSION_PROPERTY,
    NCRYPT_PCP_RSA_EKCERT_PROPERTY,
    NCRYPT_PCP_RSA_EKNVCERT_PROPERTY,
    NCRYPT_RSA_ALGORITHM,
    NCRYPT_SECURITY_DESCR_PROPERTY,
    NCRYPT_SECURITY_DESCR_SUPPORT_PROPERTY,
    PCP_USERS_ACCESS_MASK,
    SID_BUILTIN_USERS,
    KeyHandle,
    NCryptError,
    NCryptHandle,
    NCryptProvider,
    ProcessToken,
    ProvHandle,
    parse_security_descriptor,
    split_ecc_public_blob,
    split_rsa_public_blob,
    unpack_dword,
    unpack_wstr,
)
from .backends.pcp import PcpBackend, ek_public_from_rsa
from .errors import ELEVATION_HRESULTS, ErrorCode, TpmError, hresult_name
from .evidence import AkBlob
from .verify import VerificationError

SCHEMA: Final = "tpm2-attest/windows-report/1"
"""The ``schema`` field of the report (bumped when a field changes meaning)."""
REPORT_KEY_PREFIX: Final = "tpm2-attest-report-"
"""Every key the report creates is named this + 16 hex digits; ``--cleanup-handoff`` deletes
nothing else."""
QUOTE_PCRS: Final = tuple(range(8))

Status = Literal["CONFIRMED", "DIFFERS", "OBSERVED", "SKIPPED", "ERROR"]
STATUSES: Final[tuple[Status, ...]] = ("CONFIRMED", "DIFFERS", "OBSERVED", "SKIPPED", "ERROR")
"""CONFIRMED: the assumption holds here. DIFFERS: it does not (``breaks`` says whether a library
feature fails because of it). OBSERVED: a fact recorded without an expectation. SKIPPED: needs
another account or input. ERROR: the check itself could not run."""

EK_CERTIFICATE_PROPERTIES: Final = (
    NCRYPT_PCP_RSA_EKNVCERT_PROPERTY, NCRYPT_PCP_EKNVCERT_PROPERTY, NCRYPT_PCP_ECC_EKNVCERT_PROPERTY,
    NCRYPT_PCP_RSA_EKCERT_PROPERTY, NCRYPT_PCP_EKCERT_PROPERTY, NCRYPT_PCP_ECC_EKCERT_PROPERTY,
)
"""Every EK certificate property the backend reads (NV stores, then Windows' EK store)."""

_NCRYPT_FLAG_NAMES: Final = ((0x20, "NCRYPT_MACHINE_KEY_FLAG"), (0x40, "NCRYPT_SILENT_FLAG"),
                             (0x80, "NCRYPT_OVERWRITE_KEY_FLAG"), (0x80000000, "NCRYPT_PERSIST_FLAG"))
_SD_FLAG_NAMES: Final = ((0x1, "OWNER_SECURITY_INFORMATION"), (0x2, "GROUP_SECURITY_INFORMATION"),
                         (0x4, "DACL_SECURITY_INFORMATION"))


def flag_names(flags: int, *, security: bool = False) -> list[str]:
    """The symbolic names of ``flags`` (NCrypt flags, or SECURITY_INFORMATION bits)."""
    table = _SD_FLAG_NAMES if security else _NCRYPT_FLAG_NAMES
    names = [name for bit, name in table if flags & bit]
    rest = flags & ~sum(bit for bit, _ in table)
    return names + ([f"0x{rest:x}"] if rest else [])


# -- what the report is made of ----------------------------------------------------------------


@dataclass
class ApiCall:
    """One Windows call: ``api`` on ``target`` with ``flags``; ``hresult`` 0 is S_OK."""

    api: str
    target: str
    flags: int = 0
    hresult: int = 0
    outcome: str = "ok"
    flag_names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"api": self.api, "target": self.target, "flags": f"0x{self.flags:08x}",
                "flag_names": self.flag_names, "hresult": f"0x{self.hresult:08x}",
                "hresult_name": hresult_name(self.hresult), "outcome": self.outcome}


@dataclass
class Check:
    """One assumption checked: its status, what was seen, and every call made for it."""

    name: str
    assumption: str
    status: Status = "SKIPPED"
    detail: str = ""
    breaks: bool = False
    """With DIFFERS: a library feature does not work on this machine because of it."""
    calls: list[ApiCall] = field(default_factory=list)
    data: dict[str, object] = field(default_factory=dict)
    seconds: float = 0.0

    def set(self, status: Status, detail: str, *, breaks: bool = False) -> None:
        self.status, self.detail, self.breaks = status, detail, breaks and status == "DIFFERS"

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "assumption": self.assumption, "status": self.status,
                "breaks": self.breaks, "detail": self.detail, "seconds": round(self.seconds, 6),
                "data": self.data, "calls": [c.to_dict() for c in self.calls]}


@dataclass
class WindowsReport:
    """Everything one run found; ``to_dict`` is the --json / --output form."""

    target: dict[str, object]
    caller: dict[str, object] | None = None
    checks: list[Check] = field(default_factory=list)
    keys_created: list[dict[str, object]] = field(default_factory=list)
    keys_deleted: list[dict[str, object]] = field(default_factory=list)
    keys_left: list[dict[str, object]] = field(default_factory=list)
    handoff: dict[str, object] | None = None

    def check(self, name: str) -> Check:
        """The check called ``name`` (KeyError when this run did not make it)."""
        found = next((c for c in self.checks if c.name == name), None)
        if found is None:
            raise KeyError(name)
        return found

    @property
    def ok(self) -> bool:
        """No check errored, nothing the library relies on differs, and no key stayed behind
        except the one ``--handoff`` keeps on purpose."""
        stray = [k for k in self.keys_left if not k.get("handoff")]
        return not stray and all(c.status != "ERROR" and not c.breaks for c in self.checks)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def counts(self) -> dict[str, int]:
        return {s.lower(): sum(1 for c in self.checks if c.status == s) for s in STATUSES}

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "version": __version__, "ok": self.ok, "exit_code": self.exit_code,
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "platform": {"system": platform.system(), "release": platform.release(),
                         "version": platform.version(), "machine": platform.machine(),
                         "python": platform.python_version(), "sys_platform": sys.platform},
            "target": self.target, "caller": self.caller,
            "checks": [c.to_dict() for c in self.checks],
            "keys": {"created": self.keys_created, "deleted": self.keys_deleted,
                     "left": self.keys_left},
            "handoff": self.handoff,
            "summary": self.counts(),
        }


@dataclass
class ReportOptions:
    """What the command line asked for (see ``tpm2-attest probe --help``)."""

    handoff: Path | None = None
    """Elevated run: keep the machine key it made and write its PCP2 blob here. Standard run:
    open and quote with the key of this blob."""
    cleanup_handoff: Path | None = None
    """Elevated run: only delete the machine key of this handoff blob (a report key) and the file."""


# -- the recording provider ----------------------------------------------------------------------


@dataclass(frozen=True)
class _KeyRef:
    name: str
    machine: bool

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "scope": "machine" if self.machine else "user"}


class RecordingNCrypt:
    """An NCryptProvider that forwards every call and records it (``calls``, the current
    check's list) and tracks which keys it finalized and deleted."""

    def __init__(self, inner: NCryptProvider) -> None:
        self.inner = inner
        self.calls: list[ApiCall] = []
        self.all_calls: list[ApiCall] = []
        self._pending: dict[int, _KeyRef] = {}
        self.created: list[_KeyRef] = []
        self.deleted: list[_KeyRef] = []

    def _record(self, call: ApiCall) -> None:
        self.calls.append(call)
        self.all_calls.append(call)

    @contextmanager
    def _call(self, api: str, target: str, flags: int = 0, *, security: bool = False,
              ) -> Iterator[ApiCall]:
        call = ApiCall(api, target, flags, flag_names=flag_names(flags, security=security))
        try:
            yield call
        except NCryptError as exc:
            call.hresult, call.outcome = exc.hresult, f"failed: {exc.hresult_name}"
            raise
        except TpmError as exc:
            call.hresult = exc.hresult or 0
            call.outcome = f"failed: {exc.code.value}: {exc.message or exc}"
            raise
        finally:
            self._record(call)

    def open_storage_provider(self, name: str = "Microsoft Platform Crypto Provider",
                              flags: int = 0) -> ProvHandle:
        with self._call("NCryptOpenStorageProvider", repr(name), flags):
            return self.inner.open_storage_provider(name, flags)

    def create_persisted_key(self, prov: ProvHandle, alg: str = NCRYPT_RSA_ALGORITHM,
                             name: str | None = None, legacy_spec: int = 0,
                             flags: int = 0) -> KeyHandle:
        with self._call("NCryptCreatePersistedKey", f"{alg} key {name!r}", flags):
            key = self.inner.create_persisted_key(prov, alg, name, legacy_spec, flags)
        if name is not None:
            self._pending[key] = _KeyRef(name, bool(flags & NCRYPT_MACHINE_KEY_FLAG))
        return key

    def open_key(self, prov: ProvHandle, name: str, legacy_spec: int = 0,
                 flags: int = 0) -> KeyHandle:
        with self._call("NCryptOpenKey", f"key {name!r}", flags):
            key = self.inner.open_key(prov, name, legacy_spec, flags)
        self._pending[key] = _KeyRef(name, bool(flags & NCRYPT_MACHINE_KEY_FLAG))
        return key

    def set_property(self, handle: NCryptHandle, name: str, value: bytes, flags: int = 0) -> None:
        security = name == NCRYPT_SECURITY_DESCR_PROPERTY
        with self._call("NCryptSetProperty", f"{name} ({len(value)} bytes)", flags,
                        security=security):
            self.inner.set_property(handle, name, value, flags)

    def get_property(self, handle: NCryptHandle, name: str, flags: int = 0, *,
                     size: int | None = None) -> bytes:
        how = "NULL-buffer size query, then the read" if size is None else f"{size}-byte buffer"
        security = name == NCRYPT_SECURITY_DESCR_PROPERTY
        with self._call("NCryptGetProperty", f"{name} ({how})", flags, security=security) as call:
            value = self.inner.get_property(handle, name, flags, size=size)
            call.outcome = f"ok: {len(value)} bytes"
            return value

    def get_certificates(self, handle: NCryptHandle, name: str, flags: int = 0) -> list[bytes]:
        with self._call("NCryptGetProperty+CertEnumCertificatesInStore", f"{name} (HCERTSTORE)",
                        flags) as call:
            certs = self.inner.get_certificates(handle, name, flags)
            call.outcome = f"ok: {len(certs)} certificate(s)"
            return certs

    def finalize_key(self, key: KeyHandle, flags: int = 0) -> None:
        ref = self._pending.get(key)
        with self._call("NCryptFinalizeKey", f"key {ref.name!r}" if ref else "key", flags):
            self.inner.finalize_key(key, flags)
        if ref is not None:
            self.created.append(ref)

    def delete_key(self, key: KeyHandle, flags: int = 0) -> None:
        ref = self._pending.get(key)
        with self._call("NCryptDeleteKey", f"key {ref.name!r}" if ref else "key", flags):
            self.inner.delete_key(key, flags)
        self._pending.pop(key, None)
        if ref is not None:
            self.deleted.append(ref)

    def free_object(self, handle: NCryptHandle) -> None:
        self._pending.pop(handle, None)
        self.inner.free_object(handle)  # not recorded: every handle is freed, failures included

    def process_token(self) -> ProcessToken:
        with self._call("OpenProcessToken+GetTokenInformation", "TokenElevation, TokenUser",
                        ) as call:
            token = self.inner.process_token()
            call.outcome = (f"ok: TokenIsElevated={int(token.token_is_elevated)}, "
                            f"user {token.user_sid}")
            return token

    def left(self, keep: set[_KeyRef]) -> list[_KeyRef]:
        """Keys finalized by this run and not deleted (``keep`` excluded)."""
        gone = list(self.deleted)
        out: list[_KeyRef] = []
        for ref in self.created:
            if ref in gone:
                gone.remove(ref)
            elif ref not in keep:
                out.append(ref)
        return out


# -- the checks ----------------------------------------------------------------------------------


def _privileged(exc: TpmError | NCryptError) -> bool:
    """A refusal for lack of privilege: REQUIRES_ELEVATION as the backend decided it (by the
    caller's token), or a raw privilege HRESULT."""
    if isinstance(exc, TpmError):
        return exc.code == ErrorCode.REQUIRES_ELEVATION
    return exc.hresult in ELEVATION_HRESULTS


def _err(exc: TpmError | NCryptError) -> dict[str, object]:
    if isinstance(exc, TpmError):
        return exc.to_dict()
    return {"function": exc.function, "hresult": exc.hresult, "hresult_name": exc.hresult_name,
            "message": str(exc)}


def _cert_summary(der: bytes, ek: rsa.RSAPublicKey | None) -> dict[str, object]:
    out: dict[str, object] = {"bytes": len(der), "sha256": hashlib.sha256(der).hexdigest()}
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        out["parse_error"] = str(exc)
        return out
    key = cert.public_key()
    out["subject"] = cert.subject.rfc4514_string()
    out["issuer"] = cert.issuer.rfc4514_string()
    if isinstance(key, rsa.RSAPublicKey):
        out["key"] = f"rsa-{key.key_size}"
        out["matches_ekpub"] = ek is not None and key.public_numbers() == ek.public_numbers()
    elif isinstance(key, ec.EllipticCurvePublicKey):
        out["key"] = f"ec-{key.curve.name}"
    return out


def _key_name() -> str:
    return REPORT_KEY_PREFIX + secrets.token_hex(8)


class WindowsReporter:
    """Runs the checks against one PcpBackend (its NCrypt provider wrapped for recording)."""

    def __init__(self, backend: PcpBackend, options: ReportOptions, report: WindowsReport) -> None:
        self.rec = RecordingNCrypt(backend.ncrypt)
        self.backend = backend.using(self.rec)
        self.options = options
        self.report = report
        self.token: ProcessToken | None = None
        self.ek_key: rsa.RSAPublicKey | None = None
        self.ek_public: bytes | None = None
        self.user_blob: AkBlob | None = None
        self.keep: set[_KeyRef] = set()
        self.evidence: dict[str, bool] = {}
        """Outcomes that show Windows' own view of this caller: True = allowed as elevated."""

    @property
    def elevated(self) -> bool | None:
        return None if self.token is None else self.token.elevated

    @contextmanager
    def check(self, name: str, assumption: str) -> Iterator[Check]:
        ck = Check(name, assumption)
        self.rec.calls = ck.calls
        t0 = time.perf_counter()
        try:
            yield ck
        except (TpmError, NCryptError, VerificationError, OSError, ValueError) as exc:
            ck.set("ERROR", f"{type(exc).__name__}: {exc}")
            if isinstance(exc, TpmError | NCryptError):
                ck.data["error"] = _err(exc)
        except BaseException as exc:
            ck.set("ERROR", f"interrupted by {type(exc).__name__}")
            raise
        finally:
            ck.seconds = time.perf_counter() - t0
            self.report.checks.append(ck)
            self.rec.calls = []

    # -- provider and caller ------------------------------------------------------------------

    def caller(self) -> None:
        with self.check("caller", "Windows says whether this process is elevated "
                        "(GetTokenInformation TokenElevation; SYSTEM counts as elevated)") as ck:
            try:
                self.token = self.rec.process_token()
            except (NCryptError, TpmError) as exc:
                ck.data["error"] = _err(exc)
                ck.set("DIFFERS", "the token query failed: NTE_DEVICE_NOT_READY will be reported "
                       "as REQUIRES_ELEVATION even for elevated callers", breaks=True)
                return
            self.report.caller = self.token.to_dict()
            ck.data.update(self.token.to_dict())
            ck.set("OBSERVED", f"TokenIsElevated={int(self.token.token_is_elevated)}, user "
                   f"{self.token.user_sid}{' (SYSTEM)' if self.token.is_system else ''}: "
                   f"{'elevated' if self.token.elevated else 'not elevated'}")

    @contextmanager
    def _provider(self) -> Iterator[int]:
        prov = self.rec.open_storage_provider(self.backend.provider_name, 0)
        try:
            yield prov
        finally:
            with suppress(NCryptError):
                self.rec.free_object(prov)

    def provider(self) -> None:
        with self.check("provider", "the Microsoft Platform Crypto Provider opens and names "
                        "itself (PCP_PLATFORM_TYPE, PCP_PROVIDER_VERSION)") as ck, \
                self._provider() as prov:
            for key, prop in (("platform_type", NCRYPT_PCP_PLATFORM_TYPE_PROPERTY),
                              ("provider_version", NCRYPT_PCP_PROVIDER_VERSION_PROPERTY)):
                try:
                    ck.data[key] = unpack_wstr(self.rec.get_property(prov, prop))
                except (NCryptError, TpmError) as exc:
                    ck.data[key] = None
                    ck.data[f"{key}_error"] = _err(exc)
            ck.set("OBSERVED", f"{self.backend.provider_name!r}: {ck.data.get('platform_type')!r}, "
                   f"version {ck.data.get('provider_version')!r}")

    def security_descr_support(self) -> None:
        with self.check("security-descr-support", 'the provider property "Security Descr '
                        'Support" is DWORD 1 (machine keys get a DACL)') as ck, \
                self._provider() as prov:
            try:
                raw = self.rec.get_property(prov, NCRYPT_SECURITY_DESCR_SUPPORT_PROPERTY)
            except NCryptError as exc:
                ck.data["error"] = _err(exc)
                ck.set("DIFFERS", f"not readable ({exc.hresult_name}): machine-scope (PCP2) AKs "
                       "are refused as UNSUPPORTED", breaks=True)
                return
            value = unpack_dword(raw) if len(raw) == 4 else None
            ck.data.update(value=value, raw=raw.hex())
            if value == 1:
                ck.set("CONFIRMED", '"Security Descr Support" = 1')
            else:
                ck.set("DIFFERS", f'"Security Descr Support" = {value!r} (raw {raw.hex()}): '
                       "machine-scope AKs are refused as UNSUPPORTED", breaks=True)

    def ekpub(self) -> None:
        with self.check("ekpub", "PCP_EKPUB is a BCRYPT_RSAPUBLIC_BLOB ('RSA1') this account can "
                        "read, exactly header + exponent + modulus") as ck, \
                self._provider() as prov:
            blob = self.rec.get_property(prov, NCRYPT_PCP_EKPUB_PROPERTY)
            key, trailing = split_rsa_public_blob(blob)
            self.ek_key = key
            self.ek_public = ek_public_from_rsa(key)
            ck.data.update(bytes=len(blob), modulus_bits=key.key_size,
                           exponent=key.public_numbers().e, trailing_bytes=len(trailing),
                           trailing=trailing[:64].hex())
            if trailing:
                ck.set("DIFFERS", f"{len(trailing)} bytes follow the modulus: read the way "
                       "go-attestation reads it (the header says where the key ends)")
            else:
                ck.set("CONFIRMED", f"RSA-{key.key_size} EK, {len(blob)} bytes")

    def ecc_ekpub(self) -> None:
        with self.check("ecc-ekpub", "PCP_ECC_EKPUB, when present, is a BCRYPT_ECCPUBLIC_BLOB "
                        "('ECK1'/'ECS1' P-256, 'ECK3'/'ECS3' P-384) this account can read") as ck, \
                self._provider() as prov:
            try:
                blob = self.rec.get_property(prov, NCRYPT_PCP_ECC_EKPUB_PROPERTY)
            except NCryptError as exc:
                ck.data["error"] = _err(exc)
                ck.set("OBSERVED", f"no PCP_ECC_EKPUB ({exc.hresult_name}): an ECC EK is read "
                       "from its certificate only")
                return
            ck.data.update(bytes=len(blob), head=blob[:8].hex())
            try:
                key, trailing = split_ecc_public_blob(blob)
            except TpmError as exc:
                ck.set("DIFFERS", f"not a P-256/P-384 BCRYPT_ECCPUBLIC_BLOB ({exc}): an ECC EK "
                       "is read from its certificate only")
                return
            ck.data.update(magic=blob[:4].decode("ascii", "replace"), curve=key.curve.name,
                           trailing_bytes=len(trailing))
            ck.set("CONFIRMED" if not trailing else "DIFFERS",
                   f"{blob[:4].decode('ascii', 'replace')} {key.curve.name} EK, {len(blob)} bytes"
                   + (f", {len(trailing)} bytes after Y" if trailing else ""))

    def ek_certificates(self) -> None:
        elevated = bool(self.elevated)
        assumption = ("the EK certificate is in one of the PCP's certificate properties (NV "
                      "stores, then Windows' EK store)" if elevated else
                      "a standard user cannot read the EK certificate properties (only PCP_EKPUB)")
        with self.check("ek-certificates", assumption) as ck, self._provider() as prov:
            found: list[str] = []
            readable: list[str] = []
            for prop in EK_CERTIFICATE_PROPERTIES:
                entry: dict[str, object] = {}
                try:
                    certs = self.rec.get_certificates(prov, prop)
                except (NCryptError, TpmError) as exc:
                    entry["error"] = _err(exc)
                    entry["privilege_refusal"] = _privileged(exc)
                else:
                    readable.append(prop)
                    entry["certificates"] = summaries = [_cert_summary(d, self.ek_key)
                                                         for d in certs]
                    if any(s.get("matches_ekpub") for s in summaries):
                        found.append(prop)
                ck.data[prop] = entry
            ck.data["ek_certificate_in"] = found
            if elevated:
                if found:
                    ck.set("CONFIRMED", f"the RSA EK's certificate is in {', '.join(found)}")
                else:
                    ck.set("DIFFERS", "no property holds the RSA EK's certificate: the "
                           "manufacturer's URL is the remaining source")
            elif readable:
                ck.set("DIFFERS", f"a standard user can read {', '.join(readable)}")
            else:
                ck.set("CONFIRMED", "every EK certificate property was refused to this account")

    def ek_chain(self) -> None:
        with self.check("ek-chain", "the EK certificate chain NV indices (0x01C00100 on) can be "
                        "listed and read over this account's TBS context; "
                        "PCP_INTERMEDIATE_CA_EKCERT is an HCERTSTORE") as ck:
            try:
                nv = read_ek_chain(self.backend.cmd)
            except TpmError as exc:
                ck.data["nv"] = {"error": _err(exc)}
                nv_text = f"NV: {exc.message}"
            else:
                ck.data["nv"] = {"certificates": [_cert_summary(d, None) for d in nv.certificates],
                                 "note": nv.note}
                nv_text = f"NV: {len(nv.certificates)} certificate(s)" + (f" ({nv.note})" if nv.note else "")
            with self._provider() as prov:
                try:
                    stored = self.rec.get_certificates(prov, NCRYPT_PCP_INTERMEDIATE_CA_EKCERT_PROPERTY)
                except (NCryptError, TpmError) as exc:
                    ck.data["store"] = {"error": _err(exc), "privilege_refusal": _privileged(exc)}
                    store_text = f"refused ({_err(exc).get('hresult_name', exc)})"
                else:
                    ck.data["store"] = {"certificates": [_cert_summary(d, None) for d in stored]}
                    store_text = f"{len(stored)} certificate(s)"
            ck.set("OBSERVED", f"{nv_text}; {NCRYPT_PCP_INTERMEDIATE_CA_EKCERT_PROPERTY}: {store_text}")

    # -- keys ----------------------------------------------------------------------------------

    def user_key(self) -> None:
        nonce = os.urandom(32)
        with self.check("idbinding", "PCP_TPM12_IDBINDING of a new identity key is exactly "
                        "TPM2B_PUBLIC || TPM2B_CREATION_DATA || TPM2B_ATTEST || TPMT_SIGNATURE, "
                        "its nonce SHA-1(enrollment nonce)") as ck:
            blob = self.backend.provision_ak(key_name=_key_name(), scope="user", overwrite=False,
                                             nonce=nonce, algorithm=None)
            self.user_blob = blob
            verify.check_ak(blob, nonce=nonce)
            parts = self.backend.last_idbinding
            trailing = parts.trailing if parts is not None else b""
            ck.data.update(key_name=blob.key_name, trailing_bytes=len(trailing),
                           trailing=trailing[:64].hex(), public_bytes=len(blob.public),
                           signature_bytes=len(blob.signature))
            if trailing:
                ck.set("DIFFERS", f"{len(trailing)} bytes follow the TPMT_SIGNATURE: accepted and "
                       "recorded; the blob keeps the exact signature and check_ak passed")
            else:
                ck.set("CONFIRMED", "four structures, nothing after them; check_ak passed with "
                       "the enrollment nonce")
        with self.check("quote-user-key", "a user-scope PCP key quotes through the PCP's TBS "
                        "context (PCP_PLATFORMHANDLE) with scheme NULL") as ck:
            if self.user_blob is None:
                ck.set("SKIPPED", "no user key (the idbinding check failed)")
                return
            self._quote(ck, self.user_blob)

    def _quote(self, ck: Check, blob: AkBlob) -> None:
        nonce = os.urandom(20)
        banks = self.backend.pcr_banks()
        bank = "sha256" if "sha256" in banks else banks[0]
        quote = self.backend.quote(blob, pcrs=list(QUOTE_PCRS), bank=bank, qualifying_data=nonce)
        result = verify.verify_quote(verify.check_ak(blob), quote, nonce=nonce)
        ck.data.update(bank=result.bank, pcrs=sorted(result.pcrs))
        ck.set("CONFIRMED", f"quoted PCRs 0-7 with {blob.key_name!r}; signature, nonce and PCR "
               "digest verified")

    def idactivation(self) -> None:
        elevated = bool(self.elevated)
        assumption = ("PCP_TPM12_IDACTIVATION: SET the challenge, then GET the secret with a "
                      "NULL-buffer size query first" if elevated else
                      "a standard user is refused credential activation")
        with self.check("idactivation", assumption) as ck:
            if self.user_blob is None or self.ek_public is None:
                ck.set("SKIPPED", "needs the user key and PCP_EKPUB")
                return
            challenge, secret = verify.make_credential(self.ek_public, self.user_blob.name)
            try:
                got = self.backend.activate_credential(self.user_blob, challenge)
            except TpmError as exc:
                ck.data["error"] = exc.to_dict()
                if _privileged(exc):
                    self.evidence["activation"] = False
                if elevated:
                    ck.set("DIFFERS", f"activation failed for an elevated caller: {exc}",
                           breaks=True)
                elif exc.code == ErrorCode.REQUIRES_ELEVATION:
                    ck.set("CONFIRMED", f"refused with {exc.hresult_name} at {exc.command}")
                else:
                    ck.set("DIFFERS", f"refused, but not as a privilege error: {exc}")
                return
            self.evidence["activation"] = True
            ck.data.update(secret_bytes=len(got), matches=got == secret)
            if got != secret:
                ck.set("DIFFERS", "the activated secret is not the challenge's", breaks=True)
            elif elevated:
                ck.set("CONFIRMED", f"the size query and the read returned the {len(got)}-byte "
                       "secret")
            else:
                ck.set("DIFFERS", "a standard user activated a credential")

    def machine_key(self) -> None:
        if self.elevated:
            self._machine_key_elevated()
        else:
            self._machine_key_refused()

    def _machine_key_elevated(self) -> None:
        name = _key_name()
        blob: AkBlob | None = None
        with self.check("dacl-before-finalize", "a machine key accepts its DACL "
                        '("Security Descr", DACL_SECURITY_INFORMATION) before NCryptFinalizeKey '
                        "and keeps it: SYSTEM and Administrators full, Built-in Users "
                        "GENERIC_READ|GENERIC_EXECUTE") as ck:
            try:
                blob = self.backend.provision_ak(key_name=name, scope="machine", overwrite=False,
                                                 nonce=os.urandom(16), algorithm=None)
            except TpmError as exc:
                ck.data["error"] = exc.to_dict()
                if exc.code == ErrorCode.UNSUPPORTED:
                    ck.set("SKIPPED", f"machine keys are refused here: {exc}")
                else:
                    if _privileged(exc):
                        self.evidence["machine_key"] = False
                    ck.set("DIFFERS", f"creating the machine key failed: {exc}", breaks=True)
            else:
                self.evidence["machine_key"] = True
                self._check_dacl(ck, name)
        with self.check("quote-machine-key", "the machine key opens by name "
                        "(NCRYPT_MACHINE_KEY_FLAG) and quotes") as ck:
            if blob is None:
                ck.set("SKIPPED", "no machine key")
                return
            self._quote(ck, blob)
            if self.options.handoff is not None and ck.status == "CONFIRMED":
                write_atomic(self.options.handoff, blob.to_bytes(), mode=0o644)
                self.keep.add(_KeyRef(name, True))
                self.report.handoff = {"key_name": name, "file": str(self.options.handoff),
                                       "next": "run the report as a standard user with --handoff "
                                               "FILE, then elevated with --cleanup-handoff FILE"}
                ck.data["handoff"] = str(self.options.handoff)

    def _check_dacl(self, ck: Check, name: str) -> None:
        """Read the machine key's DACL back and look for our Built-in Users ACE."""
        with self._provider() as prov:
            key = self.rec.open_key(prov, name, 0, NCRYPT_MACHINE_KEY_FLAG)
            try:
                sd = self.rec.get_property(key, NCRYPT_SECURITY_DESCR_PROPERTY,
                                           DACL_SECURITY_INFORMATION)
            finally:
                with suppress(NCryptError):
                    self.rec.free_object(key)
        parsed = parse_security_descriptor(sd)
        aces = [{"sid": a.sid, "mask": f"0x{a.mask:08x}", "type": a.ace_type}
                for a in parsed.dacl or ()]
        ck.data.update(key_name=name, dacl=aces, security_descriptor=sd.hex())
        users = [a for a in parsed.dacl or () if a.sid == SID_BUILTIN_USERS
                 and a.mask & PCP_USERS_ACCESS_MASK == PCP_USERS_ACCESS_MASK]
        if users:
            ck.set("CONFIRMED", "the DACL read back after NCryptFinalizeKey grants Built-in "
                   "Users GENERIC_READ|GENERIC_EXECUTE")
        else:
            ck.set("DIFFERS", "the DACL read back has no Built-in Users ACE with our mask: "
                   "standard users will not open machine keys", breaks=True)

    def _machine_key_refused(self) -> None:
        with self.check("machine-key-refused", "a standard user cannot create a machine key "
                        "(the refusal comes at NCryptFinalizeKey)") as ck:
            try:
                self.backend.provision_ak(key_name=_key_name(), scope="machine", overwrite=False,
                                          nonce=None, algorithm=None)
            except TpmError as exc:
                ck.data["error"] = exc.to_dict()
                if exc.code == ErrorCode.UNSUPPORTED:
                    ck.set("SKIPPED", f"machine keys are refused here: {exc}")
                elif exc.code == ErrorCode.REQUIRES_ELEVATION:
                    self.evidence["machine_key"] = False
                    at = exc.command or "?"
                    ck.data["refused_at"] = at
                    ck.set("CONFIRMED" if at == "NCryptFinalizeKey" else "DIFFERS",
                           f"refused with {exc.hresult_name} at {at}")
                else:
                    ck.set("DIFFERS", f"refused, but not as a privilege error: {exc}")
                return
            self.evidence["machine_key"] = True
            ck.set("DIFFERS", "a standard user created a machine key (the report deletes it)")

    def machine_key_standard_user(self) -> None:
        with self.check("machine-key-standard-user", "a standard user opens a machine key "
                        "SYSTEM made (its DACL grants Built-in Users) and quotes with it") as ck:
            path = self.options.handoff
            if self.elevated:
                ck.set("SKIPPED", "run the report as a standard user with --handoff FILE (the "
                       "elevated run's --handoff writes it)")
                return
            if path is None:
                ck.set("SKIPPED", "needs --handoff FILE from an elevated run of this report "
                       "(docs/windows.md: the scheduled-task recipe)")
                return
            blob = AkBlob.load(path.read_bytes())
            if blob.format != "PCP2":
                ck.set("ERROR", f"{path} is a {blob.format} blob, not a machine key (PCP2)")
                return
            ck.data["key_name"] = blob.key_name
            try:
                self._quote(ck, blob)
            except TpmError as exc:
                ck.data["error"] = exc.to_dict()
                ck.set("DIFFERS", f"the standard user could not use the machine key: {exc}",
                       breaks=True)

    def cleanup_handoff(self, path: Path) -> None:
        with self.check("cleanup-handoff", "the machine key an earlier run kept with --handoff "
                        "is deleted") as ck:
            blob = AkBlob.load(path.read_bytes())
            if blob.format != "PCP2" or not blob.key_name.startswith(REPORT_KEY_PREFIX):
                ck.set("ERROR", f"{path} does not name a key of this report ({blob.key_name!r}); "
                       "nothing deleted")
                return
            ck.data["key_name"] = blob.key_name
            with self._provider() as prov:
                try:
                    key = self.rec.open_key(prov, blob.key_name, 0, NCRYPT_MACHINE_KEY_FLAG)
                except NCryptError as exc:
                    ck.data["error"] = _err(exc)
                    ck.set("OBSERVED", f"no such key ({exc.hresult_name}): nothing to delete")
                    path.unlink(missing_ok=True)
                    return
                try:
                    self.rec.delete_key(key, 0)
                except NCryptError:
                    with suppress(NCryptError):
                        self.rec.free_object(key)
                    raise
            path.unlink(missing_ok=True)
            ck.set("CONFIRMED", f"deleted machine key {blob.key_name!r} and {path}")

    # -- TBS, HRESULTs, elevation ---------------------------------------------------------------

    def tbs_event_log(self) -> None:
        with self.check("tbs-event-log", "Tbsi_Get_TCG_Log returns the firmware's TCG log "
                        "(TBS_E_INTERNAL_ERROR or TBS_E_NO_EVENT_LOG: there is none)") as ck:
            call = ApiCall("Tbsi_Get_TCG_Log", "a new TBS context (size query, then the read)")
            ck.calls.append(call)
            self.rec.all_calls.append(call)
            try:
                log = self.backend.event_log()
            except TpmError as exc:
                call.hresult = exc.hresult or 0
                call.outcome = f"failed: {exc.code.value}"
                ck.data["error"] = exc.to_dict()
                if exc.code == ErrorCode.TPM_NOT_FOUND:
                    ck.set("OBSERVED", f"no event log: {exc}")
                else:
                    ck.set("DIFFERS", f"the log could not be read: {exc}", breaks=True)
                return
            call.outcome = f"ok: {len(log)} bytes"
            ck.data.update(bytes=len(log), sha256=hashlib.sha256(log).hexdigest())
            ck.set("CONFIRMED", f"{len(log)} bytes")

    def hresults_seen(self) -> None:
        role = "elevated" if self.elevated else "standard-user"
        with self.check("hresults-seen", f"what Windows answered this {role} run when it "
                        "refused a call") as ck:
            seen = [c.to_dict() for c in self.rec.all_calls if c.hresult]
            ck.data["failures"] = seen
            ck.set("OBSERVED", f"{len(seen)} refused call(s): "
                   + ", ".join(sorted({f"{c['api']} {c['hresult_name']}" for c in seen}))
                   if seen else "no call was refused")

    def elevation_detection(self) -> None:
        with self.check("elevation-detection", "the token's elevation matches what Windows "
                        "allows: elevated callers may create machine keys and activate "
                        "credentials, standard users may not") as ck:
            if self.token is None:
                ck.set("SKIPPED", "the token query failed (see 'caller')")
                return
            ck.data["evidence"] = dict(self.evidence)
            if not self.evidence:
                ck.set("OBSERVED", "no operation this run tells elevated from standard callers")
                return
            said = "elevated" if self.token.elevated else "not elevated"
            wrong = [k for k, allowed in self.evidence.items() if allowed != self.token.elevated]
            if wrong:
                ck.set("DIFFERS", f"the token says {said} but Windows decided otherwise for "
                       f"{', '.join(wrong)}", breaks=True)
            else:
                ck.set("CONFIRMED", f"{said}, as {', '.join(self.evidence)} showed")

    # -- running -------------------------------------------------------------------------------

    def sweep(self) -> None:
        """Delete every key this run finalized and did not delete (except a handoff key)."""
        for ref in self.rec.left(self.keep):
            self.rec.calls = []
            try:
                with self._provider() as prov:
                    key = self.rec.open_key(prov, ref.name, 0,
                                            NCRYPT_MACHINE_KEY_FLAG if ref.machine else 0)
                    try:
                        self.rec.delete_key(key, 0)
                    except NCryptError:
                        with suppress(NCryptError):
                            self.rec.free_object(key)
                        raise
            except (NCryptError, TpmError):
                pass  # listed in keys.left below
        self.report.keys_created = [r.to_dict() for r in self.rec.created]
        self.report.keys_deleted = [r.to_dict() for r in self.rec.deleted]
        self.report.keys_left = [r.to_dict() for r in self.rec.left(self.keep)]
        for ref in self.keep:
            self.report.keys_left.append({**ref.to_dict(), "handoff": True})

    def run(self) -> None:
        try:
            self.caller()
            if self.options.cleanup_handoff is not None:
                self.cleanup_handoff(self.options.cleanup_handoff)
                return
            self.provider()
            self.security_descr_support()
            self.ekpub()
            self.ecc_ekpub()
            self.ek_certificates()
            self.ek_chain()
            self.user_key()
            self.idactivation()
            self.machine_key()
            self.machine_key_standard_user()
            self.tbs_event_log()
            self.hresults_seen()
            self.elevation_detection()
        finally:
            self.sweep()


def run_windows_report(backend: PcpBackend, options: ReportOptions | None = None, *,
                       target: dict[str, object] | None = None) -> WindowsReport:
    """Run every check against ``backend`` (a PcpBackend: Windows, or the emulator) and return
    the report; never raises for a failed check, and never leaves a key it created behind."""
    report = WindowsReport(target or {"tcti": backend.tcti})
    WindowsReporter(backend, options or ReportOptions(), report).run()
    return report


def write_report(report: WindowsReport, path: Path) -> None:
    """Write the report's JSON to ``path`` atomically (it names no secret: mode 0644)."""
    import json

    write_atomic(path, (json.dumps(report.to_dict(), indent=2) + "\n").encode("utf-8"), mode=0o644)


__all__ = ["REPORT_KEY_PREFIX", "SCHEMA", "STATUSES", "ApiCall", "Check", "RecordingNCrypt",
           "ReportOptions", "WindowsReport", "WindowsReporter", "flag_names", "run_windows_report",
           "write_report"]
