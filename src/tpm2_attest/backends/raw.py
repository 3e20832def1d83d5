"""The raw TPM backend: Linux /dev/tpmrm0, swtpm, the MS simulator, or raw TBS commands.

AKs are TPM-wrapped keys (blob format ``TPW1``) under the TCG ECC P-256 SRK: the persistent
SRK at 0x81000001 when present and made from the standard template, otherwise the same SRK
re-created transiently (ECC primaries are cheap and deterministic).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import struct
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, Final, TypeVar

from ..commands import PW, CreateResult, PolicySession, TpmCommands
from ..errors import ErrorCode, TpmError
from ..evidence import (
    SRK_RECREATE,
    AkBlob,
    CertifiedAk,
    CredentialChallenge,
    EkInfo,
    PublicKey,
    Quote,
    bank_alg,
    bank_name,
)
from ..tpm2 import templates as T
from ..tpm2.constants import (
    EK_ECC_HANDLE,
    EK_ECC_P384_HANDLE,
    EK_RSA_HANDLE,
    HASH_NAMES,
    NV_EK_CERT_ECC,
    NV_EK_CERT_ECC_P384,
    NV_EK_CERT_RSA,
    NV_EK_NONCE_ECC,
    NV_EK_NONCE_RSA,
    NV_EK_TEMPLATE_ECC,
    NV_EK_TEMPLATE_RSA,
    SRK_HANDLE,
    TPM_ALG,
    TPM_PT,
    TPM_RH,
    TPM_ST,
    TPMA_OBJECT,
)
from ..tpm2.keys import object_name, parse_public
from ..tpm2.marshal import ParseError
from ..tpm2.rc import TPM_RC, decode
from ..tpm2.structures import (
    TPML_PCR_SELECTION,
    TPMS_ATTEST,
    TPMS_ECC_POINT,
    TPMS_QUOTE_INFO,
    TPMT_HA,
    TPMT_PUBLIC,
    TPMT_SCHEME,
    TPMT_SIGNATURE,
    pcr_selection,
    quote_attest_digest,
    signature_is_exact,
)
from .base import EkKind, Platform, TpmInfo
from .ek_chain import EkChain, read_ek_chain

QUOTE_ATTEMPTS: Final = 5
GCE_AK_NV: Final[dict[str, tuple[int, int]]] = {
    # kind: (AK certificate NV index, AK template NV index), as go-tpm-tools names them
    "rsa": (0x01C10000, 0x01C10001),
    "ecc": (0x01C10002, 0x01C10003),
}
_SIGN: Final = int(TPMA_OBJECT.sign_encrypt)  # a plain int: IntFlag '&' costs a microsecond

_EK_SLOTS: Final[dict[str, tuple[int, int, int | None, int | None, TPMT_PUBLIC]]] = {
    # kind: (persistent handle, cert NV index, nonce NV index, template NV index, template)
    "rsa": (EK_RSA_HANDLE, NV_EK_CERT_RSA, NV_EK_NONCE_RSA, NV_EK_TEMPLATE_RSA, T.EK_RSA_TEMPLATE),
    "ecc": (EK_ECC_HANDLE, NV_EK_CERT_ECC, NV_EK_NONCE_ECC, NV_EK_TEMPLATE_ECC, T.EK_ECC_TEMPLATE),
    "ecc384": (EK_ECC_P384_HANDLE, NV_EK_CERT_ECC_P384, None, None, T.EK_ECC_P384_TEMPLATE),
}

# TCG PC Client "stored certificate" header in EK certificate NV indices: 0x1001, type, u16 size.
_NV_CERT_TAG: Final = b"\x10\x01"
_NV_FULL_CERT_TAG: Final = b"\x10\x02"


def strip_nv_cert(data: bytes) -> bytes:
    """DER certificate from an NV index: drop a TCG stored-cert header and trailing padding."""
    if data[:2] == _NV_CERT_TAG and len(data) >= 5:
        size = int.from_bytes(data[3:5], "big")
        data = data[5 : 5 + size]
        if data[:2] == _NV_FULL_CERT_TAG:  # TCG_FULL_CERT: tag 0x1002, then the certificate
            data = data[2:]
    # Trim to the outer DER SEQUENCE length (indices are often larger than the certificate).
    if len(data) >= 2 and data[0] == 0x30:
        first = data[1]
        if first < 0x80:
            end = 2 + first
        else:
            n = first & 0x7F
            if 1 <= n <= 4 and len(data) >= 2 + n:
                end = 2 + n + int.from_bytes(data[2 : 2 + n], "big")
            else:
                return data
        if end <= len(data):
            return data[:end]
    return data


def _platform_of(kind: str) -> Platform:
    return {"swtpm": "swtpm", "mssim": "mssim", "tbs": "windows"}.get(kind, "linux")  # type: ignore[return-value]


def _fixed_string(values: Iterable[int]) -> str:
    raw = b"".join(struct.pack(">I", v) for v in values)
    return raw.replace(b"\0", b"").decode("ascii", "replace").strip()


_F = TypeVar("_F", bound=Callable[..., Any])


def serialized(fn: _F) -> _F:
    """Run a backend operation (a method of an object with ``.cmd``) under the command channel's
    lock: the whole load-use-flush sequence, not each command, so threads never interleave."""

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self.cmd.lock:
            return fn(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


@contextmanager
def flushed(cmd: TpmCommands, handle: int) -> Iterator[None]:
    """Flush a transient ``handle`` when the block ends. When the block raised, a failing flush
    is ignored so the original error surfaces: after a timeout /dev/tpmrm0 has already dropped
    the handle with the file descriptor, and its TPM_RC_HANDLE would otherwise mask the cause."""
    try:
        yield
    except BaseException:
        with suppress(TpmError):
            cmd.flush_context(handle)
        raise
    cmd.flush_context(handle)


class RawBackend:
    """Attestation with TPM-wrapped keys over a command channel."""

    def __init__(self, commands: TpmCommands, *, tcti: str, transport_kind: str,
                 device_path: str | None = None, srk_handle: int | None = None) -> None:
        self.cmd = commands
        self.tcti = tcti
        self.platform: Platform = _platform_of(transport_kind)
        self.device_path = device_path
        self._srk_handle = srk_handle
        self._srk_checked: int | None = None
        self._banks: list[str] | None = None
        self._kept: dict[tuple[bytes, bytes, int], _Kept] = {}

    # -- identity and PCRs ----------------------------------------------------------------------

    def info(self) -> TpmInfo:
        props = self.cmd.get_properties(TPM_PT.FAMILY_INDICATOR, 46)
        man = props.get(TPM_PT.MANUFACTURER, 0)
        fw1 = props.get(TPM_PT.FIRMWARE_VERSION_1, 0)
        fw2 = props.get(TPM_PT.FIRMWARE_VERSION_2, 0)
        rev = props.get(TPM_PT.REVISION, 0)
        return TpmInfo(
            manufacturer=_fixed_string([man]),
            manufacturer_id=man,
            vendor_string=_fixed_string(props.get(p, 0) for p in (
                TPM_PT.VENDOR_STRING_1, TPM_PT.VENDOR_STRING_2, TPM_PT.VENDOR_STRING_3,
                TPM_PT.VENDOR_STRING_4)),
            firmware_version=f"{fw1 >> 16}.{fw1 & 0xFFFF}.{fw2 >> 16}.{fw2 & 0xFFFF}",
            spec_family=_fixed_string([props.get(TPM_PT.FAMILY_INDICATOR, 0)]),
            spec_level=props.get(TPM_PT.LEVEL, 0),
            spec_revision=f"{rev // 100}.{rev % 100:02d}",
            spec_year=props.get(TPM_PT.YEAR, 0),
            spec_day_of_year=props.get(TPM_PT.DAY_OF_YEAR, 0),
            pcr_banks=self.pcr_banks(),
            pcr_count=props.get(TPM_PT.PCR_COUNT, 24),
            platform=self.platform,
            tcti=self.tcti,
        )

    def get_random(self, n: int) -> bytes:
        return self.cmd.get_random(n)

    def pcr_banks(self) -> list[str]:
        if self._banks is None:
            sel = self.cmd.pcr_banks()
            self._banks = [HASH_NAMES.get(s.hash, f"0x{s.hash:04x}") for s in sel.selections
                           if any(s.pcr_select)]
        return list(self._banks)

    def pcr_read(self, indices: Iterable[int], bank: str) -> dict[int, bytes]:
        alg = bank_alg(bank)
        if bank_name(alg) not in self.pcr_banks():
            raise TpmError(f"PCR bank {bank!r} is not allocated on this TPM (banks: "
                           f"{', '.join(self.pcr_banks())})", code=ErrorCode.INVALID_ARGUMENT)
        return self.cmd.pcr_read(alg, indices)[1]

    def pcr_extend(self, index: int, digests: dict[str, bytes]) -> None:
        has = [TPMT_HA(bank_alg(b), d) for b, d in digests.items()]
        self.cmd.pcr_extend(index, has)

    def read_public(self, handle: int) -> PublicKey:
        res = self.cmd.read_public(handle)
        return PublicKey(res.public_bytes, res.name, handle)

    # -- EK -------------------------------------------------------------------------------------

    @serialized
    def ek(self, kind: EkKind) -> EkInfo:
        handle, cert_index, _nonce, _tmpl, template = self._ek_slot(kind)
        cert = self._read_ek_cert(cert_index)
        persistent = self._persistent_matching(handle, template)
        if persistent is not None:
            return EkInfo(kind, persistent[1], persistent[2], cert, handle, True)
        res = self.cmd.create_primary(TPM_RH.ENDORSEMENT, self._ek_template(kind))
        try:
            return EkInfo(kind, res.public_bytes, res.name, cert, None, False)
        finally:
            self.cmd.flush_context(res.handle)

    @serialized
    def ek_chain(self) -> EkChain:
        """The EK certificate chain NV indices (0x01C00100 on), read as ``backends.ek_chain`` says."""
        return read_ek_chain(self.cmd)

    @staticmethod
    def _ek_slot(kind: str) -> tuple[int, int, int | None, int | None, TPMT_PUBLIC]:
        try:
            return _EK_SLOTS[kind]
        except KeyError:
            raise TpmError(f"unknown EK kind {kind!r} (expected 'rsa', 'ecc' or 'ecc384')",
                           code=ErrorCode.INVALID_ARGUMENT) from None

    def _ek_template(self, kind: str) -> TPMT_PUBLIC:
        """The EK template, honouring the EK template and nonce NV indices when provisioned."""
        _h, _c, nonce_index, tmpl_index, template = self._ek_slot(kind)
        if tmpl_index is not None:
            raw = self._nv_read_optional(tmpl_index)
            if raw:
                try:
                    template = TPMT_PUBLIC.from_bytes(raw)
                except ParseError as exc:
                    raise TpmError(f"EK template NV index 0x{tmpl_index:08x} is malformed: {exc}",
                                   code=ErrorCode.BAD_RESPONSE) from exc
        if nonce_index is not None:
            nonce = self._nv_read_optional(nonce_index)
            if nonce:
                if template.type == TPM_ALG.RSA:
                    template = T.with_unique(template, nonce.ljust(256, b"\0")[:256])
                else:
                    template = T.with_unique(template, TPMS_ECC_POINT(nonce.ljust(32, b"\0")[:32], bytes(32)))
        return template

    def _nv_read_optional(self, index: int) -> bytes | None:
        try:
            return self.cmd.nv_read(index)
        except TpmError as exc:
            if exc.tpm_rc is not None and decode(exc.tpm_rc).base in (TPM_RC.HANDLE, TPM_RC.NV_UNINITIALIZED):
                return None
            raise

    def _read_ek_cert(self, index: int) -> bytes | None:
        data = self._nv_read_optional(index)
        return strip_nv_cert(data) if data else None

    def _persistent_matching(self, handle: int, template: TPMT_PUBLIC) -> tuple[TPMT_PUBLIC, bytes, bytes] | None:
        """(public, TPM2B_PUBLIC bytes, name) of a persistent key made from template, else None."""
        try:
            res = self.cmd.read_public(handle)
        except TpmError as exc:
            if exc.code == ErrorCode.KEY_NOT_FOUND:
                return None
            raise
        if not T.matches_template(res.public, template):
            return None
        if res.name != object_name(res.public):
            raise TpmError(f"TPM returned a Name for 0x{handle:08x} that does not match its public area",
                           code=ErrorCode.BAD_RESPONSE, command="TPM2_ReadPublic")
        return res.public, res.public_bytes, res.name

    @contextmanager
    def _ek_handle(self, kind: EkKind) -> Iterator[tuple[int, TPMT_PUBLIC]]:
        handle, _c, _n, _t, template = self._ek_slot(kind)
        found = self._persistent_matching(handle, template)
        if found is not None:
            yield handle, found[0]
            return
        res = self.cmd.create_primary(TPM_RH.ENDORSEMENT, self._ek_template(kind))
        with flushed(self.cmd, res.handle):
            yield res.handle, res.public

    # -- SRK and AK -----------------------------------------------------------------------------

    def _srk_parent(self) -> int:
        """The persistent SRK handle to record in new blobs, or SRK_RECREATE."""
        if self._srk_checked is None:
            handle = self._srk_handle if self._srk_handle is not None else SRK_HANDLE
            found = self._persistent_matching(handle, T.SRK_ECC_TEMPLATE)
            if found is None and self._srk_handle is not None:
                raise TpmError(f"parent 0x{handle:08x} is not an ECC P-256 SRK made from the TCG template",
                               code=ErrorCode.KEY_NOT_FOUND)
            self._srk_checked = handle if found is not None else SRK_RECREATE
        return self._srk_checked

    @contextmanager
    def _parent(self, parent: int) -> Iterator[int]:
        if parent == SRK_RECREATE:
            handle = self.cmd.create_primary_handle(TPM_RH.OWNER, T.SRK_ECC_TEMPLATE)
            with flushed(self.cmd, handle):
                yield handle
        else:
            yield parent

    def _load(self, ak: AkBlob) -> int:
        """Load a TPW1 blob under its parent, or derive a TPP1 blob's key from its template;
        the caller flushes the handle."""
        if ak.format == "TPP1":
            return self._derive(ak)
        if ak.format != "TPW1":
            raise TpmError(f"{ak.format} blobs are Windows PCP keys; this TPM uses TPW1 blobs",
                           code=ErrorCode.BAD_BLOB)
        with self._parent(ak.parent) as parent:
            try:
                handle, _name = self.cmd.load(parent, len(ak.private).to_bytes(2, "big") + ak.private, ak.public)
            except TpmError as exc:
                if exc.tpm_rc is not None and decode(exc.tpm_rc).base in (
                        TPM_RC.INTEGRITY, TPM_RC.BINDING, TPM_RC.SIZE, TPM_RC.VALUE):
                    raise TpmError("the AK blob was not made by this TPM under this parent "
                                   "(or it was modified)", code=ErrorCode.BAD_BLOB,
                                   tpm_rc=exc.tpm_rc, command=exc.command) from exc
                raise
        return handle

    @contextmanager
    def _loaded(self, ak: AkBlob) -> Iterator[int]:
        kept = self._kept.get(_blob_key(ak))
        if kept is not None:
            yield kept.handle
            return
        handle = self._load(ak)
        with flushed(self.cmd, handle):
            yield handle

    # -- keeping an AK loaded ---------------------------------------------------------------------

    @serialized
    def keep(self, ak: AkBlob) -> None:
        """Load ``ak`` and keep it loaded until :meth:`release` (counted: keep twice, release twice).
        It holds one transient object slot meanwhile (swtpm has three; /dev/tpmrm0 swaps it out
        between commands and flushes it when the file is closed)."""
        key = _blob_key(ak)
        kept = self._kept.get(key)
        if kept is None:
            self._kept[key] = _Kept(self._load(ak))
        else:
            kept.count += 1

    @serialized
    def release(self, ak: AkBlob) -> None:
        """Undo one :meth:`keep`; the last one flushes the AK."""
        key = _blob_key(ak)
        kept = self._kept.get(key)
        if kept is None:
            return
        kept.count -= 1
        if kept.count <= 0:
            del self._kept[key]
            self._flush_kept(kept)

    def _flush_kept(self, kept: _Kept) -> None:
        try:
            self.cmd.flush_context(kept.handle)
        except TpmError as exc:
            if not _handle_gone(exc):  # gone already (TPM restarted): nothing to flush
                raise

    def _reload_kept(self, ak: AkBlob) -> int:
        """A kept handle no longer names the AK (the TPM was restarted, or another client of a TPM
        without a resource manager flushed it): load the AK again under the same keep."""
        kept = self._kept[_blob_key(ak)]
        kept.handle = self._load(ak)
        kept.signer = None
        return kept.handle

    def _derive(self, ak: AkBlob) -> int:
        """A ``TPP1`` AK: the primary key its template derives in its hierarchy, which must be
        the key of the blob (the same template gives another key on another TPM). The caller
        flushes the handle."""
        assert ak.template is not None
        res = self.cmd.create_primary(ak.parent, ak.template)
        if res.name != ak.name:
            with suppress(TpmError):
                self.cmd.flush_context(res.handle)
            raise TpmError("this TPM derives another key from the blob's template: the blob "
                           "was made by another TPM (or modified)", code=ErrorCode.BAD_BLOB)
        return res.handle

    @serialized
    def certified_ak(self, kind: str, nonce: bytes | None) -> CertifiedAk:
        """The AK a platform CA certified in NV (GCE: certificate at 0x01c10000/0x01c10002, the
        TPMT_PUBLIC template at 0x01c10001/0x01c10003): derived in the endorsement hierarchy
        from the template, its creation certified over ``nonce``, returned with the certificate."""
        try:
            cert_index, template_index = GCE_AK_NV[kind]
        except KeyError:
            raise TpmError(f"unknown AK kind {kind!r} (expected 'rsa' or 'ecc')",
                           code=ErrorCode.INVALID_ARGUMENT) from None
        qualifying = nonce or b""
        if len(qualifying) > 64:
            raise TpmError("nonce longer than 64 bytes", code=ErrorCode.INVALID_ARGUMENT)
        raw_cert = self._nv_read_optional(cert_index)
        raw_template = self._nv_read_optional(template_index)
        if not raw_cert or not raw_template:
            missing = f"0x{cert_index:08x}" if not raw_cert else f"0x{template_index:08x}"
            raise TpmError(f"no certified {kind.upper()} AK on this TPM (NV index {missing} is not "
                           "defined; Google Compute Engine vTPMs provision one)",
                           code=ErrorCode.KEY_NOT_FOUND)
        try:
            template = parse_public(raw_template)
        except ParseError as exc:
            raise TpmError(f"AK template NV index 0x{template_index:08x} is malformed: {exc}",
                           code=ErrorCode.BAD_RESPONSE) from exc
        scheme = _quote_scheme(template)
        res = self.cmd.create_primary(TPM_RH.ENDORSEMENT, template, outside_info=qualifying)
        with flushed(self.cmd, res.handle):
            signed = self.cmd.certify_creation(res.handle, res.handle, qualifying, res.creation_hash,
                                               scheme, res.creation_ticket)
        blob = AkBlob(
            format="TPP1",
            public=res.public_bytes,
            private=template.to_bytes(),
            creation_data=res.creation_data_bytes,
            attest=signed.attest,
            signature=signed.signature,
            parent=TPM_RH.ENDORSEMENT,
        )
        return CertifiedAk(kind, blob, strip_nv_cert(raw_cert), cert_index, template_index)

    @serialized
    def provision_ak(self, *, key_name: str | None, scope: str, overwrite: bool,
                     nonce: bytes | None, algorithm: str | None) -> AkBlob:
        if key_name:
            raise TpmError("key_name applies to Windows PCP keys; TPM-wrapped AKs are located by their blob",
                           code=ErrorCode.INVALID_ARGUMENT)
        if scope not in ("user", "machine"):
            raise TpmError(f"unknown scope {scope!r}", code=ErrorCode.INVALID_ARGUMENT)
        alg = (algorithm or "ecc").lower()
        if alg in ("ecc", "ecdsa", "p256", "ecc256"):
            template, scheme = T.AK_ECC_TEMPLATE, TPMT_SCHEME(TPM_ALG.ECDSA, TPM_ALG.SHA256)
        elif alg in ("rsa", "rsa2048"):
            template, scheme = T.AK_RSA_TEMPLATE, TPMT_SCHEME(TPM_ALG.RSASSA, TPM_ALG.SHA256)
        else:
            raise TpmError(f"unknown AK algorithm {algorithm!r} (expected 'ecc' or 'rsa')",
                           code=ErrorCode.INVALID_ARGUMENT)
        qualifying = nonce or b""
        if len(qualifying) > 64:
            raise TpmError("nonce longer than 64 bytes", code=ErrorCode.INVALID_ARGUMENT)
        parent = self._srk_parent()
        with self._parent(parent) as parent_handle:
            created: CreateResult = self.cmd.create(parent_handle, template, outside_info=qualifying)
            handle, _name = self.cmd.load(parent_handle, created.private, created.public_bytes)
            with flushed(self.cmd, handle):
                signed = self.cmd.certify_creation(handle, handle, qualifying, created.creation_hash,
                                                   scheme, created.creation_ticket)
        return AkBlob(
            format="TPW1",
            public=created.public_bytes,
            private=created.private[2:],
            creation_data=created.creation_data_bytes[2:],
            attest=signed.attest,
            signature=signed.signature,
            parent=parent,
        )

    @serialized
    def quote(self, ak: AkBlob, *, pcrs: list[int], bank: str, qualifying_data: bytes) -> Quote:
        scheme = _quote_scheme(ak.public_area)
        kept = self._kept.get(_blob_key(ak))
        if kept is not None:
            return self._quote_kept(ak, kept, scheme, bank_alg(bank), pcrs, qualifying_data)
        with self._loaded(ak) as handle:
            return quote_consistent(self.cmd, handle, scheme=scheme, bank=bank_alg(bank), pcrs=pcrs,
                                    qualifying_data=qualifying_data)

    def _quote_kept(self, ak: AkBlob, kept: _Kept, scheme: TPMT_SCHEME, bank: int, pcrs: list[int],
                    qualifying_data: bytes) -> Quote:
        """Quote with a kept handle. Its first quote records the signer's qualified name; a later
        quote signed by another object (the handle was flushed and reused) or a handle that is
        gone makes us load the AK again and quote once more."""
        for attempt in (0, 1):
            try:
                q = quote_consistent(self.cmd, kept.handle, scheme=scheme, bank=bank, pcrs=pcrs,
                                     qualifying_data=qualifying_data)
            except TpmError as exc:
                if attempt or not _handle_gone(exc):
                    raise
                self._reload_kept(ak)
                continue
            signer = _qualified_signer(q.attest)
            if kept.signer is None:
                kept.signer = signer
            if signer == kept.signer:
                return q
            if attempt:
                break
            self._reload_kept(ak)
        raise TpmError("the kept AK handle signs as another object after a reload",
                       code=ErrorCode.BAD_RESPONSE, command="TPM2_Quote")

    @serialized
    def activate_credential(self, ak: AkBlob, challenge: CredentialChallenge) -> bytes:
        return self._activate(ak, challenge, challenge_ek_kind(challenge))

    def _activate(self, ak: AkBlob, challenge: CredentialChallenge, kind: EkKind) -> bytes:
        with self._loaded(ak) as ak_handle, self._ek_handle(kind) as (ek_handle, ek_public):
            session = self.cmd.start_auth_session(hash_alg=ek_public.name_alg)
            try:
                satisfy_ek_policy(self.cmd, session, ek_public)
                secret = self.cmd.activate_credential(
                    ak_handle, ek_handle, challenge.credential_blob, challenge.encrypted_secret,
                    activate_session=PW, key_session=session)
                session = None  # type: ignore[assignment]  # consumed (continueSession clear)
                return secret
            finally:
                if session is not None:
                    with suppress(TpmError):
                        self.cmd.flush_context(session.handle)

    def event_log(self) -> bytes:
        from .eventlog_source import read_event_log  # OS files / TBS: device side only

        if self.platform not in ("linux", "windows"):
            raise TpmError(f"a {self.platform} TPM has no firmware event log", code=ErrorCode.UNSUPPORTED)
        return read_event_log(self.device_path)

    def close(self) -> None:
        """Flush the AKs still kept (their handles would otherwise hold transient slots)."""
        kept, self._kept = list(self._kept.values()), {}
        for k in kept:
            with suppress(TpmError):
                self._flush_kept(k)


class _Kept:
    """A kept AK: its handle, how many keeps are open, and the qualifiedSigner of its first quote."""

    __slots__ = ("count", "handle", "signer")

    def __init__(self, handle: int) -> None:
        self.handle = handle
        self.count = 1
        self.signer: bytes | None = None


_REFERENCE_H0: Final = 0x910
_REFERENCE_H6: Final = 0x916


def _handle_gone(exc: TpmError) -> bool:
    """A handle that names nothing: TPM_RC_HANDLE (KEY_NOT_FOUND) or TPM_RC_REFERENCE_Hn (a
    transient object that is not loaded)."""
    rc = exc.tpm_rc
    return exc.code == ErrorCode.KEY_NOT_FOUND or (rc is not None and _REFERENCE_H0 <= rc <= _REFERENCE_H6)


def _blob_key(ak: AkBlob) -> tuple[bytes, bytes, int]:
    return ak.public, ak.private, ak.parent


def _qualified_signer(attest: bytes) -> bytes:
    """TPMS_ATTEST.qualifiedSigner (after magic u32 and type u16), already parsed once."""
    size = int.from_bytes(attest[6:8], "big")
    return attest[8 : 8 + size]


@functools.lru_cache(maxsize=64)
def _quote_selection(bank: int, pcrs: tuple[int, ...]) -> TPML_PCR_SELECTION:
    """The selection a quote of ``pcrs`` sends (immutable; a device quotes the same PCRs each time)."""
    return pcr_selection(bank, pcrs)


def quote_consistent(cmd: TpmCommands, handle: int, *, scheme: TPMT_SCHEME, bank: int,
                     pcrs: list[int], qualifying_data: bytes,
                     attempts: int = QUOTE_ATTEMPTS) -> Quote:
    """TPM2_Quote with ``handle``, then PCR_Read on the same channel, until the values read are the
    ones the quote covers. Shared by every backend that quotes (raw TPM, Windows PCP).

    PCR_Read and Quote are not atomic: the values are kept only if they hash to the quote's
    pcrDigest (with the hash of the scheme the TPM signed with, which the TPMT_SIGNATURE names;
    SHA-1 for PCP keys quoting with scheme NULL), otherwise a PCR moved in between and we quote
    again, up to ``attempts`` times (then RETRY_EXHAUSTED).
    """
    sel = _quote_selection(bank, tuple(pcrs))
    for _ in range(attempts):
        signed = cmd.quote(handle, qualifying_data, scheme, sel)
        pcr_digest = quote_attest_digest(signed.attest)  # by offsets when it is a plain quote
        if pcr_digest is not None and signature_is_exact(signed.signature):
            hash_alg = int.from_bytes(signed.signature[2:4], "big")
        else:
            try:
                info = TPMS_ATTEST.from_bytes(signed.attest)
                sig = TPMT_SIGNATURE.from_bytes(signed.signature)
            except ParseError as exc:
                raise TpmError(f"malformed quote: {exc}", code=ErrorCode.BAD_RESPONSE,
                               command="TPM2_Quote") from exc
            if info.type != TPM_ST.ATTEST_QUOTE or not isinstance(info.attested, TPMS_QUOTE_INFO):
                raise TpmError("TPM2_Quote returned a non-quote attestation",
                               code=ErrorCode.BAD_RESPONSE, command="TPM2_Quote")
            pcr_digest, hash_alg = info.attested.pcr_digest, sig.hash_alg
        digest_name = HASH_NAMES.get(hash_alg)
        if digest_name is None:
            raise TpmError(f"TPM2_Quote signed with unknown hash 0x{hash_alg:04x}",
                           code=ErrorCode.BAD_RESPONSE, command="TPM2_Quote")
        _counter, values = cmd.pcr_read(bank, pcrs)
        h = hashlib.new(digest_name, b"".join([values[i] for i in sorted(values)]))
        if hmac.compare_digest(h.digest(), pcr_digest):
            return Quote(signed.attest, signed.signature, {bank_name(bank): values})
    raise TpmError(f"PCRs kept changing during {attempts} quote attempts",
                   code=ErrorCode.RETRY_EXHAUSTED, command="TPM2_Quote")


def satisfy_ek_policy(cmd: TpmCommands, session: PolicySession, ek: TPMT_PUBLIC) -> None:
    """Bring a policy session to the EK's authPolicy: PolicyA (PolicySecret(ENDORSEMENT), the
    low-range templates) or PolicyB = PolicyOR(PolicyA, PolicyC) (the high-range templates,
    e.g. swtpm's P-384 EK), both from the TCG EK Credential Profile."""
    alg = ek.name_alg
    policy_a = T.EK_POLICY_A.get(alg)
    if policy_a is None or ek.auth_policy not in (policy_a, T.EK_POLICY_B.get(alg)):
        raise TpmError("the EK's authPolicy is neither PolicyA nor PolicyB of the TCG EK profile",
                       code=ErrorCode.UNSUPPORTED)
    cmd.policy_secret(TPM_RH.ENDORSEMENT, session)
    if ek.auth_policy != policy_a:
        cmd.policy_or(session, [policy_a, T.EK_POLICY_C[alg]])


def challenge_ek_kind(challenge: CredentialChallenge) -> EkKind:
    """Which EK a challenge was made for: an ECC seed is a marshalled point, RSA a ciphertext."""
    secret = challenge.encrypted_secret[2:]
    if len(secret) >= 4:
        x = int.from_bytes(secret[:2], "big")
        if 2 + x + 2 <= len(secret):
            y = int.from_bytes(secret[2 + x : 4 + x], "big")
            if x == y and 4 + x + y == len(secret) and x in (32, 48, 66):
                return "ecc384" if x == 48 else "ecc"
    return "rsa"


def _quote_scheme(public: TPMT_PUBLIC) -> TPMT_SCHEME:
    """The key's own signing scheme, explicit (ECDSA/RSASSA + SHA-256 for our AKs)."""
    if not public.object_attributes & _SIGN:
        raise TpmError("the AK is not a signing key", code=ErrorCode.BAD_BLOB)
    scheme = public.parameters.scheme  # type: ignore[union-attr]
    if not isinstance(scheme, TPMT_SCHEME) or scheme.scheme == TPM_ALG.NULL:
        raise TpmError("the AK has no signing scheme", code=ErrorCode.BAD_BLOB)
    return scheme


OnCommand = Callable[[str], None]
