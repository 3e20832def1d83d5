"""The Windows backend: attestation keys held by the Microsoft Platform Crypto Provider (PCP).

Written against ``ncrypt_api.NCryptProvider`` and a TBS command channel only, so the same code
runs over ncrypt.dll + TBS on Windows (:meth:`PcpBackend.for_windows`) and over the swtpm-backed
:class:`~tpm2_attest.backends.pcp_emulator.PcpEmulator` on any OS
(:func:`~tpm2_attest.backends.pcp_emulator.open_emulated_backend`; the emulator imports this
module, never the reverse). What PCP does, and where each fact comes from, is in
docs/windows.md; the NCrypt binding itself is described in docs/windows-binding.md.

- AKs are PCP identity keys (RSA-2048, RSASSA-SHA1) persisted by *name*: ``PCP1`` blobs are
  user-scope keys, ``PCP2`` machine-scope keys (NCRYPT_MACHINE_KEY_FLAG) whose DACL lets Built-in
  Users open them, so a standard user can quote with a key SYSTEM provisioned. A blob is a
  locator plus the creation evidence (``PCP_TPM12_IDBINDING``), never a secret.
- An enrollment nonce is bound as SHA-1(nonce): PCP takes a 20-byte IDBINDING nonce, which lands
  in ``creationData.outsideInfo`` and the creation attestation's ``extraData``. A verifier
  therefore checks ``extraData == SHA-1(nonce)`` for PCP blobs.
- Quotes go to the TPM through the PCP's own TBS context (``PCP_PLATFORMHANDLE`` on the provider
  handle), with the key's TPM handle (``PCP_PLATFORMHANDLE`` on the key handle) and scheme NULL,
  so the TPM signs with the key's RSASSA-SHA1 (as go-attestation does).
- PCR read/extend, GetRandom, ReadPublic and TPM info reuse :class:`RawBackend` over the
  caller's TBS channel; TBS answers a blocked command (PCR_Extend for a standard user) with
  TPM_E_COMMAND_BLOCKED, which the command layer reports as REQUIRES_ELEVATION.
"""

from __future__ import annotations

import copy
import ctypes
import dataclasses
import hashlib
import secrets
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import Final, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..commands import Channel, TpmCommands
from ..errors import ELEVATION_HRESULTS, NTE_DEVICE_NOT_READY, ErrorCode, TpmError
from ..evidence import (
    EK_CHAIN_MAX_BYTES,
    EK_CHAIN_MAX_CERTS,
    AkBlob,
    CertifiedAk,
    CredentialChallenge,
    EkInfo,
    PublicKey,
    Quote,
    bank_alg,
)
from ..tpm2 import templates as T
from ..tpm2.constants import TPM_ST
from ..tpm2.keys import ecc_point_of, object_name
from ..tpm2.marshal import ParseError, Reader
from ..tpm2.structures import (
    TPM2B_CREATION_DATA,
    TPM2B_PUBLIC,
    TPMS_ATTEST,
    TPMS_CREATION_INFO,
    TPMS_RSA_PARMS,
    TPMT_SCHEME,
    TPMT_SIGNATURE,
)
from .base import EkKind, Platform, TpmInfo
from .ek_chain import EkChain
from .ncrypt_api import (
    DACL_SECURITY_INFORMATION,
    MS_PLATFORM_CRYPTO_PROVIDER,
    NCRYPT_LENGTH_PROPERTY,
    NCRYPT_MACHINE_KEY_FLAG,
    NCRYPT_MAX_KEY_NAME_LENGTH,
    NCRYPT_PCP_ECC_EKCERT_PROPERTY,
    NCRYPT_PCP_ECC_EKNVCERT_PROPERTY,
    NCRYPT_PCP_ECC_EKPUB_PROPERTY,
    NCRYPT_PCP_EKCERT_PROPERTY,
    NCRYPT_PCP_EKNVCERT_PROPERTY,
    NCRYPT_PCP_EKPUB_PROPERTY,
    NCRYPT_PCP_IDENTITY_KEY,
    NCRYPT_PCP_INTERMEDIATE_CA_EKCERT_PROPERTY,
    NCRYPT_PCP_KEY_USAGE_POLICY_PROPERTY,
    NCRYPT_PCP_PLATFORM_TYPE_PROPERTY,
    NCRYPT_PCP_PLATFORMHANDLE_PROPERTY,
    NCRYPT_PCP_PROVIDER_VERSION_PROPERTY,
    NCRYPT_PCP_RSA_EKCERT_PROPERTY,
    NCRYPT_PCP_RSA_EKNVCERT_PROPERTY,
    NCRYPT_PCP_TPM12_IDACTIVATION_PROPERTY,
    NCRYPT_PCP_TPM12_IDBINDING_PROPERTY,
    NCRYPT_RSA_ALGORITHM,
    NCRYPT_SECURITY_DESCR_PROPERTY,
    NCRYPT_SECURITY_DESCR_SUPPORT_PROPERTY,
    NONCE_BINDING_SIZE,
    NTE_BAD_KEYSET,
    NTE_EXISTS,
    NTE_NOT_FOUND,
    NTE_NOT_SUPPORTED,
    PCP_IDENTITY_KEY_BITS,
    NCryptError,
    NCryptProvider,
    pack_dword,
    pcp_machine_key_security_descriptor,
    split_ecc_public_blob,
    split_rsa_public_blob,
    unpack_dword,
    unpack_handle,
    unpack_wstr,
)
from .raw import RawBackend, challenge_ek_kind, quote_consistent, serialized

_NOT_FOUND_HRESULTS: Final = frozenset({NTE_BAD_KEYSET, NTE_NOT_FOUND})
_TPM_E_BASE: Final = 0x80280000
"""TBS/PCP report a TPM response code rc as the HRESULT 0x80280000 | rc."""

AK_NAME_PREFIX: Final = "ak-"
"""Random user-scope key names are ``ak-`` + 16 hex digits: vendor-neutral, no library name."""
RSA_EK_CERTIFICATE_PROPERTIES: Final = (
    NCRYPT_PCP_RSA_EKNVCERT_PROPERTY, NCRYPT_PCP_EKNVCERT_PROPERTY,
    NCRYPT_PCP_RSA_EKCERT_PROPERTY, NCRYPT_PCP_EKCERT_PROPERTY,
)
"""Where ``ek("rsa")`` looks for the certificate, in order: the certificate the TPM holds in NV
(go-attestation's order), then Windows' EK certificate store, which also caches certificates it
downloaded for firmware TPMs. The manufacturer's URL (``tpm2_attest.trust``) is the next source."""
ECC_EK_CERTIFICATE_PROPERTIES: Final = (NCRYPT_PCP_ECC_EKNVCERT_PROPERTY,
                                        NCRYPT_PCP_ECC_EKCERT_PROPERTY)
"""Where ``ek("ecc")`` / ``ek("ecc384")`` look: NV first, then Windows' EK certificate store."""
DEVICE_NOT_READY_HINT: Final = (
    "the Platform Crypto Provider answered NTE_DEVICE_NOT_READY to an elevated caller: the TPM "
    "or its driver refused the operation (seen on some TPMs for credential activation). Check "
    "Get-Tpm (TpmPresent, TpmReady), update the TPM firmware and driver, and send the output of "
    "'tpm2-attest probe windows-report --json'")
"""What to do when NTE_DEVICE_NOT_READY reaches an elevated caller (not a privilege problem)."""
_POINTER_SIZE: Final = ctypes.sizeof(ctypes.c_void_p)

TbsChannelFactory = Callable[[int], Channel]
"""Turns the PCP's TBS context (PCP_PLATFORMHANDLE on the provider handle) into a channel."""


def idbinding_nonce(nonce: bytes) -> bytes:
    """What PCP binds for an enrollment nonce: SHA-1(nonce), the 20 bytes IDBINDING accepts.

    The verifier expects ``creationData.outsideInfo`` and the creation attestation's
    ``extraData`` to equal this value for PCP1/PCP2 blobs provisioned with a nonce."""
    return hashlib.sha1(nonce).digest()


def default_key_name() -> str:
    """A fresh random user-scope key name: 'ak-' + 16 hex digits."""
    return AK_NAME_PREFIX + secrets.token_hex(8)


class IdBinding(NamedTuple):
    """PCP_TPM12_IDBINDING split into the parts an AkBlob stores, plus what followed them."""

    public: bytes
    """TPM2B_PUBLIC bytes."""
    creation_data: bytes
    """TPMS_CREATION_DATA bytes."""
    attest: bytes
    """TPMS_ATTEST bytes (a creation attestation of ``public``)."""
    signature: bytes
    """TPMT_SIGNATURE bytes: exactly the structure, never what follows it."""
    trailing: bytes
    """Bytes after the TPMT_SIGNATURE (none on the PCPs we know of): accepted and kept here."""


def parse_idbinding(data: bytes) -> IdBinding:
    """Split PCP_TPM12_IDBINDING (TPM 2.0 layout) into its parts.

    Input: TPM2B_PUBLIC || TPM2B_CREATION_DATA || TPM2B_ATTEST || TPMT_SIGNATURE. Bytes after
    the signature are accepted and returned as ``trailing`` (go-attestation keeps the rest as
    the signature and decodes one TPMT_SIGNATURE from its start; PCPTool reads the signature's
    fields and ignores the rest); they are signed by nobody, and the blob keeps only the exact
    signature, so the verifier still checks every signed byte. The attestation must be a
    creation attestation of exactly this public area; anything else is BAD_RESPONSE.
    """
    what = "PCP_TPM12_IDBINDING"
    try:
        r = Reader(data)
        p0 = r.pos
        public_area = TPM2B_PUBLIC.unmarshal(r).public_area
        public = data[p0 : r.pos]
        p1 = r.pos
        TPM2B_CREATION_DATA.unmarshal(r)
        creation = data[p1 + 2 : r.pos]
        attest = r.tpm2b("TPM2B_ATTEST")
        info = TPMS_ATTEST.from_bytes(attest)
        p2 = r.pos
        TPMT_SIGNATURE.unmarshal(r)
        signature = data[p2 : r.pos]
        trailing = data[r.pos :]
        name = object_name(public_area)
    except ParseError as exc:
        raise TpmError(f"{what}: {exc}", code=ErrorCode.BAD_RESPONSE) from exc
    if info.type != TPM_ST.ATTEST_CREATION or not isinstance(info.attested, TPMS_CREATION_INFO):
        raise TpmError(f"{what}: the attestation is not a creation attestation",
                       code=ErrorCode.BAD_RESPONSE)
    if info.attested.object_name != name:
        raise TpmError(f"{what}: the creation attestation names another object than the key",
                       code=ErrorCode.BAD_RESPONSE)
    return IdBinding(bytes(public), bytes(creation), bytes(attest), bytes(signature),
                     bytes(trailing))


def ek_public_from_rsa(key: rsa.RSAPublicKey) -> bytes:
    """TPM2B_PUBLIC of an RSA EK rebuilt from its public key and the TCG template L-1.

    PCP_EKPUB carries only modulus and exponent; the EK's Name (which MakeCredential needs) is
    computed from this rebuilt area, so it is right when the EK was made from the default TCG
    template (no EK template/nonce NV indices), as Windows-provisioned EKs are."""
    numbers = key.public_numbers()
    params = T.EK_RSA_TEMPLATE.parameters
    assert isinstance(params, TPMS_RSA_PARMS)
    bits = numbers.n.bit_length()
    params = dataclasses.replace(params, key_bits=bits,
                                 exponent=0 if numbers.e == 65537 else numbers.e)
    area = dataclasses.replace(T.EK_RSA_TEMPLATE, parameters=params,
                               unique=numbers.n.to_bytes((bits + 7) // 8, "big"))
    return TPM2B_PUBLIC(area).to_bytes()


_ECC_EK_TEMPLATES: Final = {"ecc": T.EK_ECC_TEMPLATE, "ecc384": T.EK_ECC_P384_TEMPLATE}


def ek_public_from_ecc(key: ec.EllipticCurvePublicKey, kind: str = "ecc") -> bytes:
    """TPM2B_PUBLIC of an ECC EK rebuilt from its certificate's key and the TCG template of
    ``kind`` ("ecc": L-2, NIST P-256; "ecc384": H-4, NIST P-384); UNSUPPORTED on another curve."""
    template = _ECC_EK_TEMPLATES[kind]
    curve, point = ecc_point_of(key)
    if getattr(template.parameters, "curve_id", None) != curve:
        raise TpmError(f"the ECC EK certificate's key is not on the curve of the {kind!r} EK "
                       "template", code=ErrorCode.UNSUPPORTED)
    return TPM2B_PUBLIC(dataclasses.replace(template, unique=point)).to_bytes()


def ncrypt_error(exc: NCryptError, action: str, *, lookup: bool = False,
                 elevated: bool | None = None) -> TpmError:
    """The TpmError for a failed NCrypt call (``lookup``: the call looked a key up by name;
    ``elevated``: whether the calling process is elevated, None when unknown).

    Privilege HRESULTs (access denied, NTE_PERM, TPM_E_COMMAND_BLOCKED...) become
    REQUIRES_ELEVATION. NTE_DEVICE_NOT_READY is what the PCP answers a standard user who
    activates a credential, but elevated callers get it too (go-attestation issue #251, an
    Infineon TPM): it is REQUIRES_ELEVATION unless the caller is known to be elevated, then a
    TPM_ERROR with DEVICE_NOT_READY_HINT. NTE_BAD_KEYSET/NTE_NOT_FOUND on a lookup are
    KEY_NOT_FOUND; NTE_EXISTS KEY_EXISTS; a wrapped TPM response code keeps its ``tpm_rc``; the
    HRESULT is always kept."""
    hr = exc.hresult
    if hr == NTE_DEVICE_NOT_READY and elevated:
        return TpmError(f"{action}: the device is not ready (the caller is elevated)",
                        code=ErrorCode.TPM_ERROR, hresult=hr, command=exc.function,
                        hint=DEVICE_NOT_READY_HINT)
    if hr in ELEVATION_HRESULTS:
        return TpmError(f"{action}: the account lacks the privilege (run elevated or as SYSTEM)",
                        code=ErrorCode.REQUIRES_ELEVATION, hresult=hr, command=exc.function)
    if lookup and hr in _NOT_FOUND_HRESULTS:
        return TpmError(f"{action}: no such key", code=ErrorCode.KEY_NOT_FOUND, hresult=hr,
                        command=exc.function)
    if hr == NTE_EXISTS:
        return TpmError(f"{action}: a key of that name exists", code=ErrorCode.KEY_EXISTS, hresult=hr,
                        command=exc.function, hint="overwrite=True replaces it")
    if hr & 0xFFFF0000 == _TPM_E_BASE and _is_tpm2_rc(hr & 0xFFFF):
        return TpmError(action, tpm_rc=hr & 0xFFFF, hresult=hr, command=exc.function)
    return TpmError(action, code=ErrorCode.TPM_ERROR, hresult=hr, command=exc.function)


def _is_tpm2_rc(rc: int) -> bool:
    """Whether the low word of a 0x8028xxxx HRESULT is a TPM response code: format one (bit 7,
    any parameter/handle/session number) or format zero without the vendor bit 10; of bit 11
    (a warning) only TPM 2.0's (with bit 8: 0x900...), not TPM 1.2's non-fatal 0x800 range."""
    if rc >= 0x1000:
        return False
    if rc & 0x80:
        return True
    return not rc & 0x400 and (not rc & 0x800 or bool(rc & 0x100))


@contextmanager
def _mapped(action: str, *, lookup: bool = False,
            elevated: Callable[[], bool | None] | None = None) -> Iterator[None]:
    """Run NCrypt calls, turning NCryptError into the matching TpmError; ``elevated`` is asked
    only when the HRESULT needs it (NTE_DEVICE_NOT_READY)."""
    try:
        yield
    except NCryptError as exc:
        caller = elevated() if elevated is not None and exc.hresult == NTE_DEVICE_NOT_READY else None
        raise ncrypt_error(exc, action, lookup=lookup, elevated=caller) from exc


def _check_key_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise TpmError("key_name must be a non-empty string", code=ErrorCode.INVALID_ARGUMENT)
    if "\0" in name or any(ord(c) < 0x20 for c in name):
        raise TpmError("key_name must not contain control characters",
                       code=ErrorCode.INVALID_ARGUMENT)
    if len(name) > NCRYPT_MAX_KEY_NAME_LENGTH or len(name.encode("utf-8")) > 256:
        raise TpmError("key_name is longer than 256 UTF-8 bytes (AK blob limit)",
                       code=ErrorCode.INVALID_ARGUMENT)


class PcpBackend:
    """The :class:`~tpm2_attest.backends.base.Backend` for Windows: PCP identity keys + TBS."""

    platform: Platform = "windows"

    def __init__(
        self,
        ncrypt: NCryptProvider,
        commands: TpmCommands,
        *,
        tcti: str,
        tbs_channel: TbsChannelFactory,
        tpm_version: Callable[[], int] | None = None,
        event_log_reader: Callable[[], bytes] | None = None,
        provider_name: str = MS_PLATFORM_CRYPTO_PROVIDER,
        on_close: Callable[[], None] | None = None,
        extra_info: dict[str, object] | None = None,
    ) -> None:
        """``commands`` talk to the TPM through the caller's own TBS context (PCR read/extend,
        info, GetRandom, ReadPublic); ``tbs_channel(context)`` wraps the PCP's TBS context for
        quoting with a PCP key's handle; ``tpm_version()`` is TBS device info's TPM version."""
        self.ncrypt = ncrypt
        self.cmd = commands
        self.tcti = tcti
        self.provider_name = provider_name
        self._tbs_channel = tbs_channel
        self._tpm_version = tpm_version
        self._event_log_reader = event_log_reader
        self._on_close = on_close
        self._extra_info = dict(extra_info or {})
        self._raw = RawBackend(commands, tcti=tcti, transport_kind="tbs")
        self.observed: dict[str, object] = {}
        """Facts about this PCP seen while working that differ from what the references say
        (``idbinding_trailing_bytes``, ``ekpub_trailing_bytes``); also in ``info().extra``."""
        self.last_idbinding: IdBinding | None = None
        """The parsed PCP_TPM12_IDBINDING of the last provisioned key, trailing bytes included."""

    def using(self, ncrypt: NCryptProvider) -> PcpBackend:
        """This backend over another NCryptProvider (same TPM channels; closing it closes
        nothing): the Windows report wraps the provider to record every call."""
        other = copy.copy(self)
        other.ncrypt = ncrypt
        other._on_close = None
        other.observed = self.observed
        return other

    def caller_elevated(self) -> bool | None:
        """Whether the calling process is elevated (or SYSTEM); None when Windows cannot say."""
        try:
            return self.ncrypt.process_token().elevated
        except (NCryptError, TpmError, OSError):
            return None

    # -- constructors ---------------------------------------------------------------------------

    @classmethod
    def for_windows(cls, commands: TpmCommands, tcti: str) -> PcpBackend:  # pragma: no cover
        """The real thing: ncrypt.dll through ctypes, TBS through transport/tbs.py (Windows only)."""
        from ..transport import tbs
        from .ncrypt import WindowsNCrypt

        return cls(WindowsNCrypt(), commands, tcti=tcti, tbs_channel=tbs.channel_for_context,
                   tpm_version=lambda: tbs.tbs_device_info().tpm_version,
                   event_log_reader=tbs.get_tcg_log)

    @staticmethod
    def windows_tpm_available() -> bool:  # pragma: no cover - Windows only
        """True when TBS reports a TPM 2.0 on this Windows machine; never raises."""
        try:
            from ..transport import tbs

            return int(tbs.tbs_device_info().tpm_version) == 2
        except Exception:
            return False

    # -- identity and PCRs (TBS, the raw TPM logic) ---------------------------------------------

    def is_available(self) -> bool:
        """True when TBS device info reports a TPM 2.0 (never raises)."""
        if self._tpm_version is None:
            try:
                self._raw.pcr_banks()
                return True
            except (TpmError, OSError):
                return False
        try:
            return self._tpm_version() == 2
        except (TpmError, OSError, NCryptError):
            return False

    def info(self) -> TpmInfo:
        info = self._raw.info()
        extra: dict[str, object] = {"provider": self.provider_name, **self._extra_info}
        if self.observed:
            extra["pcp_observed"] = dict(self.observed)
        for key, prop in (("pcp_platform_type", NCRYPT_PCP_PLATFORM_TYPE_PROPERTY),
                          ("pcp_provider_version", NCRYPT_PCP_PROVIDER_VERSION_PROPERTY)):
            with suppress(NCryptError, TpmError), self._provider() as prov:
                extra[key] = unpack_wstr(self.ncrypt.get_property(prov, prop))
        return dataclasses.replace(info, extra={**info.extra, **extra})

    def get_random(self, n: int) -> bytes:
        return self._raw.get_random(n)

    def pcr_banks(self) -> list[str]:
        return self._raw.pcr_banks()

    def pcr_read(self, indices: Iterable[int], bank: str) -> dict[int, bytes]:
        return self._raw.pcr_read(indices, bank)

    def pcr_extend(self, index: int, digests: dict[str, bytes]) -> None:
        """PCR_Extend over TBS; a standard user gets REQUIRES_ELEVATION (TPM_E_COMMAND_BLOCKED)."""
        self._raw.pcr_extend(index, digests)

    def read_public(self, handle: int) -> PublicKey:
        return self._raw.read_public(handle)

    def event_log(self) -> bytes:
        if self._event_log_reader is None:
            raise TpmError("no TCG event log on this PCP backend", code=ErrorCode.UNSUPPORTED)
        return self._event_log_reader()

    # -- NCrypt plumbing ------------------------------------------------------------------------

    def _mapped(self, action: str, *, lookup: bool = False) -> AbstractContextManager[None]:
        return _mapped(action, lookup=lookup, elevated=self.caller_elevated)

    @contextmanager
    def _provider(self) -> Iterator[int]:
        with self._mapped(f"opening {self.provider_name!r}"):
            prov = self.ncrypt.open_storage_provider(self.provider_name, 0)
        try:
            yield prov
        finally:
            self._free(prov)

    @contextmanager
    def _key(self, prov: int, name: str, machine: bool) -> Iterator[int]:
        scope = "machine" if machine else "user"
        with self._mapped(f"opening {scope} PCP key {name!r}", lookup=True):
            key = self.ncrypt.open_key(prov, name, 0, NCRYPT_MACHINE_KEY_FLAG if machine else 0)
        try:
            yield key
        finally:
            self._free(key)

    def _free(self, handle: int) -> None:
        # Release is best effort: a failure here must not hide the operation's own error.
        with suppress(NCryptError):
            self.ncrypt.free_object(handle)

    def _require_security_descr_support(self, prov: int) -> None:
        """Machine keys need the provider to honour key DACLs ("Security Descr Support" == 1)."""
        try:
            value = unpack_dword(self.ncrypt.get_property(prov, NCRYPT_SECURITY_DESCR_SUPPORT_PROPERTY))
        except NCryptError as exc:
            if exc.hresult not in (NTE_NOT_SUPPORTED, NTE_NOT_FOUND):
                raise ncrypt_error(exc, "reading 'Security Descr Support'") from exc
            value = 0
        except TpmError:
            value = 0
        if value != 1:
            raise TpmError(
                "this Platform Crypto Provider does not advertise 'Security Descr Support', so a "
                "machine key's DACL cannot grant standard users access; machine-scope (PCP2) AKs "
                "are unavailable (use scope='user')", code=ErrorCode.UNSUPPORTED)

    def _delete_if_exists(self, prov: int, name: str, flags: int) -> None:
        """overwrite=True: open and delete the old key first rather than pass
        NCRYPT_OVERWRITE_KEY_FLAG (PCPTool passes it; go-attestation does not): correct whether
        or not the PCP honours the flag, and a refused delete is reported with its HRESULT."""
        try:
            key = self.ncrypt.open_key(prov, name, 0, flags)
        except NCryptError as exc:
            if exc.hresult in _NOT_FOUND_HRESULTS:
                return
            raise ncrypt_error(exc, f"opening PCP key {name!r} to replace it", lookup=True) from exc
        try:
            self.ncrypt.delete_key(key, 0)  # frees the handle only when it succeeds
        except NCryptError as exc:
            self._free(key)
            raise ncrypt_error(exc, f"deleting PCP key {name!r} to replace it") from exc

    # -- attestation keys -----------------------------------------------------------------------

    @serialized
    def provision_ak(self, *, key_name: str | None, scope: str, overwrite: bool,
                     nonce: bytes | None, algorithm: str | None) -> AkBlob:
        """Create a PCP identity key and return its PCP1 (user) or PCP2 (machine) blob."""
        if scope not in ("user", "machine"):
            raise TpmError(f"unknown scope {scope!r} (expected 'user' or 'machine')",
                           code=ErrorCode.INVALID_ARGUMENT)
        if algorithm is not None and algorithm.lower() not in ("rsa", "rsa2048"):
            raise TpmError(f"PCP attestation keys are RSA-2048; algorithm={algorithm!r} is not "
                           "available on Windows", code=ErrorCode.UNSUPPORTED)
        machine = scope == "machine"
        if machine and not key_name:
            raise TpmError("scope='machine' needs a stable key_name (for example "
                           "'my-app-device-ak', prefixed with your product): it is how every "
                           "account on the machine finds the key", code=ErrorCode.INVALID_ARGUMENT)
        name = key_name or default_key_name()
        _check_key_name(name)
        if nonce is not None and not isinstance(nonce, bytes | bytearray | memoryview):
            raise TpmError("nonce must be bytes", code=ErrorCode.INVALID_ARGUMENT)
        binding = idbinding_nonce(bytes(nonce)) if nonce is not None else None
        flags = NCRYPT_MACHINE_KEY_FLAG if machine else 0
        what = f"{'machine' if machine else 'user'} PCP key {name!r}"

        with self._provider() as prov:
            if machine:
                self._require_security_descr_support(prov)
            if overwrite:
                self._delete_if_exists(prov, name, flags)
            with self._mapped(f"creating {what}"):
                key = self.ncrypt.create_persisted_key(prov, NCRYPT_RSA_ALGORITHM, name, 0, flags)
            live, finalized = True, False
            try:
                with self._mapped(f"creating {what}"):
                    self.ncrypt.set_property(key, NCRYPT_LENGTH_PROPERTY, pack_dword(PCP_IDENTITY_KEY_BITS))
                    self.ncrypt.set_property(key, NCRYPT_PCP_KEY_USAGE_POLICY_PROPERTY,
                                             pack_dword(NCRYPT_PCP_IDENTITY_KEY))
                    if binding is not None:
                        self.ncrypt.set_property(key, NCRYPT_PCP_TPM12_IDBINDING_PROPERTY, binding)
                    if machine:
                        self.ncrypt.set_property(key, NCRYPT_SECURITY_DESCR_PROPERTY,
                                                 pcp_machine_key_security_descriptor(),
                                                 DACL_SECURITY_INFORMATION)
                    self.ncrypt.finalize_key(key, 0)
                    finalized = True
                    idbinding = self.ncrypt.get_property(key, NCRYPT_PCP_TPM12_IDBINDING_PROPERTY)
                parts = parse_idbinding(idbinding)
                self.last_idbinding = parts
                if parts.trailing:
                    self.observed["idbinding_trailing_bytes"] = len(parts.trailing)
                return AkBlob(format="PCP2" if machine else "PCP1", public=parts.public,
                              private=b"", creation_data=parts.creation_data,
                              attest=parts.attest, signature=parts.signature,
                              key_name=name, parent=0)
            except BaseException:
                if finalized:
                    # Do not leave a key behind whose evidence the caller never received.
                    try:
                        self.ncrypt.delete_key(key, 0)
                        live = False  # NCryptDeleteKey freed the handle (only on success)
                    except NCryptError:
                        pass
                raise
            finally:
                if live:
                    self._free(key)

    def _pcp_blob(self, ak: AkBlob) -> bool:
        """True for a machine (PCP2) blob; BAD_BLOB for a raw TPM's (TPW1, TPP1) one."""
        if ak.format in ("TPW1", "TPP1"):
            raise TpmError(f"{ak.format} blobs are keys of a raw TPM; on Windows AKs are PCP "
                           "keys (PCP1/PCP2 blobs)", code=ErrorCode.BAD_BLOB)
        return ak.format == "PCP2"

    def certified_ak(self, kind: str, nonce: bytes | None) -> CertifiedAk:
        """Not through the Platform Crypto Provider: its keys live in the owner hierarchy."""
        raise TpmError("certified AKs (GCE's NV AK templates) need raw TPM access; the Windows PCP "
                       "backend does not derive keys in the endorsement hierarchy",
                       code=ErrorCode.UNSUPPORTED)

    @serialized
    def quote(self, ak: AkBlob, *, pcrs: list[int], bank: str, qualifying_data: bytes) -> Quote:
        """Quote with the PCP key the blob names, through the PCP's TBS context, scheme NULL."""
        machine = self._pcp_blob(ak)
        with self._provider() as prov, self._key(prov, ak.key_name, machine) as key:
            with self._mapped("reading the PCP's TBS context (PCP_PLATFORMHANDLE)"):
                context = unpack_handle(self.ncrypt.get_property(
                    prov, NCRYPT_PCP_PLATFORMHANDLE_PROPERTY, size=_POINTER_SIZE))
            with self._mapped(f"reading the TPM handle of PCP key {ak.key_name!r}"):
                handle = unpack_handle(self.ncrypt.get_property(
                    key, NCRYPT_PCP_PLATFORMHANDLE_PROPERTY, size=4))
            if handle > 0xFFFFFFFF:
                raise TpmError(f"PCP returned TPM handle 0x{handle:x}, wider than 32 bits",
                               code=ErrorCode.BAD_RESPONSE)
            channel = self._tbs_channel(context)
            try:
                cmd = TpmCommands(channel)
                if cmd.read_public(handle).name != ak.name:
                    raise TpmError(f"PCP key {ak.key_name!r} is not the key this blob was made for "
                                   "(was another key provisioned under that name since?)",
                                   code=ErrorCode.BAD_BLOB)
                return quote_consistent(cmd, handle, scheme=TPMT_SCHEME(), bank=bank_alg(bank),
                                        pcrs=pcrs, qualifying_data=qualifying_data)
            finally:
                # A borrowed TBS context is never closed; closing its wrapper only drops it.
                close = getattr(channel, "close", None)
                if callable(close):
                    close()

    @serialized
    def activate_credential(self, ak: AkBlob, challenge: CredentialChallenge) -> bytes:
        """TPM2_ActivateCredential through PCP: SET PCP_TPM12_IDACTIVATION, then GET it with its
        size queried first (NULL buffer), as go-attestation reads it, not a fixed buffer."""
        machine = self._pcp_blob(ak)
        if challenge_ek_kind(challenge) != "rsa":
            raise TpmError("PCP activates credentials with the RSA EK; make the challenge for the "
                           "RSA EK (tpm.ek('rsa'))", code=ErrorCode.UNSUPPORTED)
        action = f"activating a credential with PCP key {ak.key_name!r}"
        with (self._provider() as prov, self._key(prov, ak.key_name, machine) as key,
              self._mapped(action)):
            self.ncrypt.set_property(key, NCRYPT_PCP_TPM12_IDACTIVATION_PROPERTY,
                                     challenge.credential_blob + challenge.encrypted_secret)
            return self.ncrypt.get_property(key, NCRYPT_PCP_TPM12_IDACTIVATION_PROPERTY)

    # -- EK -------------------------------------------------------------------------------------

    @serialized
    def ek(self, kind: EkKind) -> EkInfo:
        """The EK as PCP exposes it: RSA from PCP_EKPUB (any account), its certificate from the NV
        certificate properties when this account may read them (None otherwise); an ECC EK
        ("ecc" P-256, "ecc384" P-384) from PCP_ECC_EKPUB when it holds a key on that curve
        (its certificate then as for RSA), else from its certificate (admin/SYSTEM)."""
        with self._provider() as prov:
            if kind == "rsa":
                with self._mapped("reading PCP_EKPUB"):
                    key, trailing = split_rsa_public_blob(
                        self.ncrypt.get_property(prov, NCRYPT_PCP_EKPUB_PROPERTY))
                if trailing:
                    self.observed["ekpub_trailing_bytes"] = len(trailing)
                public = ek_public_from_rsa(key)
                cert = self._ek_certificate(prov, key)
                return EkInfo(kind, public, object_name(public), cert, None, False)
            if kind in _ECC_EK_TEMPLATES:
                ekpub = self._ecc_ekpub(prov, kind)
                if ekpub is not None:
                    public = ek_public_from_ecc(ekpub, kind)
                    want = ekpub.public_numbers()
                    ders = [der for prop in ECC_EK_CERTIFICATE_PROPERTIES
                            for der in self._certificates(prov, prop)]
                    cert = next((der for der in ders if isinstance(k := _cert_key(der),
                                 ec.EllipticCurvePublicKey) and k.public_numbers() == want), None)
                    return EkInfo(kind, public, object_name(public), cert, None, False)
                ders = [der for prop in ECC_EK_CERTIFICATE_PROPERTIES
                        for der in self._certificates(prov, prop)]
                for der in ders:
                    cert_key = _cert_key(der)
                    if not isinstance(cert_key, ec.EllipticCurvePublicKey):
                        continue
                    with suppress(TpmError, ValueError):
                        public = ek_public_from_ecc(cert_key, kind)
                        return EkInfo(kind, public, object_name(public), der, None, False)
                raise TpmError(f"PCP exposes an ECC EK only through its NV certificate; no {kind!r} "
                               "EK certificate is present or readable by this account",
                               code=ErrorCode.UNSUPPORTED)
        raise TpmError(f"unknown EK kind {kind!r} (expected 'rsa', 'ecc' or 'ecc384')",
                       code=ErrorCode.INVALID_ARGUMENT)

    def ek_chain(self) -> EkChain:
        """The EK certificate chain NV indices read over the caller's TBS context (the raw TPM
        logic, as on Linux), then the certificates of PCP_INTERMEDIATE_CA_EKCERT (Windows' store
        of EK intermediate CAs; unreadable, e.g. to a standard user, means none) not already
        among them, within the same limits."""
        nv = self._raw.ek_chain()
        certs = list(nv.certificates)
        notes = [nv.note] if nv.note else []
        stored: list[bytes] = []
        with suppress(NCryptError, TpmError), self._provider() as prov:
            stored = self._certificates(prov, NCRYPT_PCP_INTERMEDIATE_CA_EKCERT_PROPERTY)
        size = sum(map(len, certs))
        for der in stored:
            if der in certs:
                continue
            if len(certs) >= EK_CHAIN_MAX_CERTS or size + len(der) > EK_CHAIN_MAX_BYTES:
                notes.append(f"{NCRYPT_PCP_INTERMEDIATE_CA_EKCERT_PROPERTY}: certificates past "
                             f"the limits ({EK_CHAIN_MAX_CERTS}, {EK_CHAIN_MAX_BYTES} bytes) skipped")
                break
            certs.append(der)
            size += len(der)
        return EkChain(tuple(certs), "; ".join(notes) if notes else None)

    def _ecc_ekpub(self, prov: int, kind: str) -> ec.EllipticCurvePublicKey | None:
        """The ECC EK from PCP_ECC_EKPUB when it is a BCRYPT_ECCPUBLIC_BLOB on the curve of
        ``kind``'s template; None otherwise (property absent or refused, another format or
        curve: the certificate path decides). What it returned is kept in ``observed``."""
        try:
            blob = self.ncrypt.get_property(prov, NCRYPT_PCP_ECC_EKPUB_PROPERTY)
        except NCryptError as exc:
            self.observed["ecc_ekpub"] = f"{exc.hresult_name} (0x{exc.hresult:08x})"
            return None
        try:
            key, trailing = split_ecc_public_blob(blob)
        except TpmError as exc:
            self.observed["ecc_ekpub"] = f"unread: {exc}"
            return None
        self.observed["ecc_ekpub"] = f"{blob[:4].decode('ascii', 'replace')} {key.curve.name}" + (
            f", {len(trailing)} trailing bytes" if trailing else "")
        curve = getattr(_ECC_EK_TEMPLATES[kind].parameters, "curve_id", None)
        return key if ecc_point_of(key)[0] == curve else None

    def _certificates(self, prov: int, prop: str) -> list[bytes]:
        # Standard users may only read PCP_EKPUB: an unreadable store means "no certificate".
        try:
            return self.ncrypt.get_certificates(prov, prop)
        except (NCryptError, TpmError):
            return []

    def _ek_certificate(self, prov: int, key: rsa.RSAPublicKey) -> bytes | None:
        """The RSA EK certificate whose key is ``key``, from the first property of
        RSA_EK_CERTIFICATE_PROPERTIES that has one (else an unparseable one from an RSA-only
        property; the verifier will judge it). None when no property has it: the
        manufacturer URL (``tpm2_attest.trust``, behind ``fetch``) is the seam after this."""
        want = key.public_numbers()
        candidates: list[bytes] = []
        rsa_only = (NCRYPT_PCP_RSA_EKNVCERT_PROPERTY, NCRYPT_PCP_RSA_EKCERT_PROPERTY)
        for prop in RSA_EK_CERTIFICATE_PROPERTIES:
            for der in self._certificates(prov, prop):
                cert_key = _cert_key(der)
                if isinstance(cert_key, rsa.RSAPublicKey) and cert_key.public_numbers() == want:
                    return der
                if cert_key is None and prop in rsa_only:
                    candidates.append(der)  # unparseable here; the verifier will judge it
        return candidates[0] if candidates else None

    def keep(self, ak: AkBlob) -> None:
        """Nothing to keep: NCrypt opens a PCP key by name for each operation (the provider
        manages the TPM's object slots itself)."""

    def release(self, ak: AkBlob) -> None:
        """See :meth:`keep`."""

    def close(self) -> None:
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close()


def _cert_key(der: bytes) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey | None:
    """The RSA/EC key of a DER certificate, or None when it cannot be parsed."""
    try:
        key = x509.load_der_x509_certificate(der).public_key()
    except ValueError:
        return None
    return key if isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey) else None


__all__ = [
    "AK_NAME_PREFIX",
    "DEVICE_NOT_READY_HINT",
    "ECC_EK_CERTIFICATE_PROPERTIES",
    "NONCE_BINDING_SIZE",
    "RSA_EK_CERTIFICATE_PROPERTIES",
    "IdBinding",
    "PcpBackend",
    "default_key_name",
    "ek_public_from_rsa",
    "idbinding_nonce",
    "ncrypt_error",
    "parse_idbinding",
]
