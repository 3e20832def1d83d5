"""The NCrypt-shaped interface the Windows PCP logic is written against, and its pure helpers.

``NCryptProvider`` is the contract: ``backends/ncrypt.py`` implements it over ncrypt.dll
(ctypes, Windows only) and the PCP emulator implements it over swtpm, so ``backends/pcp.py``
runs unchanged on both. Everything else here is plain Python usable on every OS: the
constants (named exactly as the Windows SDK names them, so tests can check them against the
mingw-w64 headers), ``NCryptError``, property value codecs, the ``BCRYPT_RSAKEY_BLOB``
codec and a self-relative ``SECURITY_DESCRIPTOR`` builder/parser.

See docs/windows-binding.md for where every value comes from.
"""

from __future__ import annotations

import ctypes
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol, TypeAlias, runtime_checkable

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey, RSAPublicNumbers

from ..errors import ErrorCode, TpmError, hresult_name

# --------------------------------------------------------------------------------------
# Handles. NCRYPT_HANDLE / NCRYPT_PROV_HANDLE / NCRYPT_KEY_HANDLE are ULONG_PTR in ncrypt.h;
# in Python they are plain ints (0 is never a valid handle).
# --------------------------------------------------------------------------------------
NCryptHandle: TypeAlias = int
"""Any NCrypt object handle (provider or key), a ULONG_PTR."""
ProvHandle: TypeAlias = int
"""An NCRYPT_PROV_HANDLE from ``open_storage_provider``."""
KeyHandle: TypeAlias = int
"""An NCRYPT_KEY_HANDLE from ``create_persisted_key`` / ``open_key``."""

# --------------------------------------------------------------------------------------
# HRESULTs the PCP logic and its emulator interpret; winerror.h values, checked against
# the mingw-w64 header by tests/test_pcp.py. They live here, below both, so the real backend
# never imports its emulator.
# --------------------------------------------------------------------------------------
NTE_BAD_FLAGS: Final = 0x80090009
NTE_BAD_KEY_STATE: Final = 0x8009000B
NTE_EXISTS: Final = 0x8009000F
"""NCryptCreatePersistedKey: a key of that name exists (we never pass NCRYPT_OVERWRITE_KEY_FLAG:
replacing a key deletes the old one first, see docs/windows.md)."""
NTE_PERM: Final = 0x80090010
"""NCrypt's "Access denied."; the emulator's answer to a standard user creating, deleting or
opening a machine key it may not use (see docs/windows.md for why this code)."""
NTE_NOT_FOUND: Final = 0x80090011
NTE_BAD_PROVIDER: Final = 0x80090013
NTE_BAD_KEYSET: Final = 0x80090016
"""NCryptOpenKey: no key of that name in that namespace."""
NTE_INVALID_HANDLE: Final = 0x80090026
NTE_INVALID_PARAMETER: Final = 0x80090027

NONCE_BINDING_SIZE: Final = 20
"""PCP_TPM12_IDBINDING takes a 20-byte nonce: we pass SHA-1(enrollment nonce)."""

# --------------------------------------------------------------------------------------
# Providers and algorithms (bcrypt.h / ncrypt.h).
# --------------------------------------------------------------------------------------
MS_PLATFORM_CRYPTO_PROVIDER: Final = "Microsoft Platform Crypto Provider"
"""The TPM-backed key storage provider (bcrypt.h)."""
MS_PLATFORM_KEY_STORAGE_PROVIDER: Final = MS_PLATFORM_CRYPTO_PROVIDER
"""ncrypt.h's name for the same provider string."""
BCRYPT_RSA_ALGORITHM: Final = "RSA"
NCRYPT_RSA_ALGORITHM: Final = BCRYPT_RSA_ALGORITHM
"""Algorithm id passed to NCryptCreatePersistedKey for PCP identity keys (RSA-2048)."""

NCRYPT_MAX_KEY_NAME_LENGTH: Final = 512
NCRYPT_MAX_PROPERTY_NAME: Final = 64
NCRYPT_MAX_PROPERTY_DATA: Final = 0x100000

# --------------------------------------------------------------------------------------
# Flags (ncrypt.h, winnt.h).
# --------------------------------------------------------------------------------------
NCRYPT_MACHINE_KEY_FLAG: Final = 0x20
"""Open/create in the machine key namespace (PCP2) instead of the caller's user namespace."""
NCRYPT_SILENT_FLAG: Final = 0x40
"""Never show UI; fail with NTE_SILENT_CONTEXT instead."""
NCRYPT_OVERWRITE_KEY_FLAG: Final = 0x80
"""Replace an existing key of that name. PCPTool passes it when creating AIKs; we do not rely on
it: ``overwrite=True`` opens and deletes the old key first (docs/windows.md says why)."""
NCRYPT_DO_NOT_FINALIZE_FLAG: Final = 0x400
NCRYPT_PERSIST_ONLY_FLAG: Final = 0x40000000
NCRYPT_PERSIST_FLAG: Final = 0x80000000
"""NCryptSetProperty: store the property with the key material."""

OWNER_SECURITY_INFORMATION: Final = 0x00000001
GROUP_SECURITY_INFORMATION: Final = 0x00000002
DACL_SECURITY_INFORMATION: Final = 0x00000004
"""Flags value for get/set of NCRYPT_SECURITY_DESCR_PROPERTY: the DACL part."""

# --------------------------------------------------------------------------------------
# Property names (ncrypt.h unless noted).
# --------------------------------------------------------------------------------------
NCRYPT_NAME_PROPERTY: Final = "Name"
NCRYPT_ALGORITHM_PROPERTY: Final = "Algorithm Name"
NCRYPT_LENGTH_PROPERTY: Final = "Length"
"""DWORD key size in bits; set to 2048 before finalizing a PCP identity key."""
NCRYPT_KEY_USAGE_PROPERTY: Final = "Key Usage"
NCRYPT_EXPORT_POLICY_PROPERTY: Final = "Export Policy"
NCRYPT_PROVIDER_HANDLE_PROPERTY: Final = "Provider Handle"
NCRYPT_SECURITY_DESCR_SUPPORT_PROPERTY: Final = "Security Descr Support"
"""Provider property: DWORD 1 when the provider honours key security descriptors."""
NCRYPT_SECURITY_DESCR_PROPERTY: Final = "Security Descr"
"""Key property: a self-relative SECURITY_DESCRIPTOR; flags pick the part (DACL_...)."""

NCRYPT_PCP_PLATFORM_TYPE_PROPERTY: Final = "PCP_PLATFORM_TYPE"
"""Provider: UTF-16 string describing the TPM (manufacturer, version)."""
NCRYPT_PCP_PROVIDER_VERSION_PROPERTY: Final = "PCP_PROVIDER_VERSION"
"""Provider: UTF-16 version string of the PCP."""
NCRYPT_PCP_EKPUB_PROPERTY: Final = "PCP_EKPUB"
"""Provider: the RSA EK public key as a BCRYPT_RSAKEY_BLOB ('RSA1'); standard users may read."""
NCRYPT_PCP_RSA_EKPUB_PROPERTY: Final = "PCP_RSA_EKPUB"
"""Provider: the RSA EK public key, as PCP_EKPUB (Windows SDK; not in mingw-w64; unused here)."""
NCRYPT_PCP_ECC_EKPUB_PROPERTY: Final = "PCP_ECC_EKPUB"
"""Provider: the ECC EK public key (Windows SDK ncrypt.h; not in mingw-w64). Its format is not
documented: read as a BCRYPT_ECCPUBLIC_BLOB ('ECK1'/'ECS1' P-256, 'ECK3'/'ECS3' P-384), the
CNG form PCP_EKPUB's RSA1 blob suggests; anything else falls back to the EK certificate."""
NCRYPT_PCP_EKCERT_PROPERTY: Final = "PCP_EKCERT"
"""Provider: an HCERTSTORE of Windows' EK certificate store (PCPTool's GetEKCert reads it so):
certificates read from NV or downloaded for firmware TPMs and cached by Windows."""
NCRYPT_PCP_RSA_EKCERT_PROPERTY: Final = "PCP_RSA_EKCERT"
"""Provider: HCERTSTORE, the RSA EK certificate(s) of that store (Windows SDK; not in mingw-w64)."""
NCRYPT_PCP_ECC_EKCERT_PROPERTY: Final = "PCP_ECC_EKCERT"
"""Provider: HCERTSTORE, the ECC EK certificate(s) of that store (Windows SDK; not in mingw-w64)."""
NCRYPT_PCP_EKNVCERT_PROPERTY: Final = "PCP_EKNVCERT"
"""Provider: an HCERTSTORE with the EK certificate(s) read from TPM NV."""
NCRYPT_PCP_RSA_EKNVCERT_PROPERTY: Final = "PCP_RSA_EKNVCERT"
"""Provider: HCERTSTORE, RSA EK certificate from NV (Windows SDK; not in mingw-w64)."""
NCRYPT_PCP_ECC_EKNVCERT_PROPERTY: Final = "PCP_ECC_EKNVCERT"
"""Provider: HCERTSTORE, ECC EK certificate from NV (Windows SDK; not in mingw-w64)."""
NCRYPT_PCP_INTERMEDIATE_CA_EKCERT_PROPERTY: Final = "PCP_INTERMEDIATE_CA_EKCERT"
"""Provider: HCERTSTORE, intermediate CA certificates of the EK certificate (Windows SDK ncrypt.h;
not documented further: a Windows component reads it as a store handle, as the NV stores)."""
NCRYPT_PCP_SRKPUB_PROPERTY: Final = "PCP_SRKPUB"
NCRYPT_PCP_PROVIDERHANDLE_PROPERTY: Final = "PCP_PROVIDERMHANDLE"
"""Spelled with the 'M' in both the Windows SDK and mingw-w64 headers."""
NCRYPT_PCP_PLATFORMHANDLE_PROPERTY: Final = "PCP_PLATFORMHANDLE"
"""Provider: its TBS context (pointer-sized); key: its 32-bit TPM handle. Close neither."""
NCRYPT_PCP_KEY_USAGE_POLICY_PROPERTY: Final = "PCP_KEY_USAGE_POLICY"
"""Key, before finalize: DWORD NCRYPT_PCP_IDENTITY_KEY makes an attestation identity key."""
NCRYPT_PCP_TPM12_IDBINDING_PROPERTY: Final = "PCP_TPM12_IDBINDING"
"""Key: SET a 20-byte nonce before finalize; GET afterwards (creating handle only) returns
TPM2B_PUBLIC || TPM2B_CREATION_DATA || TPM2B_ATTEST || TPMT_SIGNATURE."""
NCRYPT_PCP_TPM12_IDACTIVATION_PROPERTY: Final = "PCP_TPM12_IDACTIVATION"
"""Key: SET TPM2B_ID_OBJECT || TPM2B_ENCRYPTED_SECRET, then GET the activated secret (size
queried first with a NULL buffer, as go-attestation does; the GET runs the activation)."""
NCRYPT_PCP_KEYATTESTATION_PROPERTY: Final = "PCP_TPM12_KEYATTESTATION"

NCRYPT_PCP_SIGNATURE_KEY: Final = 0x1
NCRYPT_PCP_ENCRYPTION_KEY: Final = 0x2
NCRYPT_PCP_GENERIC_KEY: Final = NCRYPT_PCP_SIGNATURE_KEY | NCRYPT_PCP_ENCRYPTION_KEY
NCRYPT_PCP_STORAGE_KEY: Final = 0x4
NCRYPT_PCP_IDENTITY_KEY: Final = 0x8
"""PCP_KEY_USAGE_POLICY value for an attestation identity key."""

PCP_IDENTITY_KEY_BITS: Final = 2048
"""PCP identity keys are RSA-2048 (go-attestation, PCPTool)."""

# --------------------------------------------------------------------------------------
# HRESULTs the binding itself looks at (winerror.h).
# --------------------------------------------------------------------------------------
NTE_BUFFER_TOO_SMALL: Final = 0x80090028
NTE_NOT_SUPPORTED: Final = 0x80090029
CRYPT_E_NOT_FOUND: Final = 0x80092004
"""GetLastError after CertEnumCertificatesInStore returns NULL at the end of a store."""

# --------------------------------------------------------------------------------------
# BCRYPT_RSAKEY_BLOB (bcrypt.h).
# --------------------------------------------------------------------------------------
BCRYPT_RSAPUBLIC_MAGIC: Final = 0x31415352
"""'RSA1': header, then PublicExponent and Modulus, both big-endian."""
BCRYPT_RSAPRIVATE_MAGIC: Final = 0x32415352
BCRYPT_RSAFULLPRIVATE_MAGIC: Final = 0x33415352


BCRYPT_ECDH_PUBLIC_P256_MAGIC: Final = 0x314B4345
"""'ECK1': BCRYPT_ECCKEY_BLOB header (dwMagic, cbKey), then X and Y, big-endian, cbKey each."""
BCRYPT_ECDH_PUBLIC_P384_MAGIC: Final = 0x334B4345
BCRYPT_ECDSA_PUBLIC_P256_MAGIC: Final = 0x31534345
BCRYPT_ECDSA_PUBLIC_P384_MAGIC: Final = 0x33534345
_ECC_PUBLIC_MAGICS: Final[dict[int, tuple[ec.EllipticCurve, int]]] = {
    BCRYPT_ECDH_PUBLIC_P256_MAGIC: (ec.SECP256R1(), 32),
    BCRYPT_ECDSA_PUBLIC_P256_MAGIC: (ec.SECP256R1(), 32),
    BCRYPT_ECDH_PUBLIC_P384_MAGIC: (ec.SECP384R1(), 48),
    BCRYPT_ECDSA_PUBLIC_P384_MAGIC: (ec.SECP384R1(), 48),
}
_ECCKEY_BLOB: Final = struct.Struct("<2I")


class BCRYPT_RSAKEY_BLOB(ctypes.LittleEndianStructure):
    """The header of an RSA key blob (bcrypt.h); Windows is little-endian everywhere."""

    _fields_ = (
        ("Magic", ctypes.c_uint32),
        ("BitLength", ctypes.c_uint32),
        ("cbPublicExp", ctypes.c_uint32),
        ("cbModulus", ctypes.c_uint32),
        ("cbPrime1", ctypes.c_uint32),
        ("cbPrime2", ctypes.c_uint32),
    )


_RSAKEY_BLOB: Final = struct.Struct("<6I")

# --------------------------------------------------------------------------------------
# Security descriptors (winnt.h).
# --------------------------------------------------------------------------------------
SECURITY_DESCRIPTOR_REVISION: Final = 1
SE_DACL_PRESENT: Final = 0x0004
SE_DACL_PROTECTED: Final = 0x1000
SE_SELF_RELATIVE: Final = 0x8000
ACL_REVISION: Final = 2
ACCESS_ALLOWED_ACE_TYPE: Final = 0x0
ACCESS_DENIED_ACE_TYPE: Final = 0x1
SYSTEM_AUDIT_ACE_TYPE: Final = 0x2
SYSTEM_ALARM_ACE_TYPE: Final = 0x3
SID_REVISION: Final = 1
SID_MAX_SUB_AUTHORITIES: Final = 15

GENERIC_READ: Final = 0x80000000
GENERIC_WRITE: Final = 0x40000000
GENERIC_EXECUTE: Final = 0x20000000
GENERIC_ALL: Final = 0x10000000

SECURITY_NT_AUTHORITY: Final = 5
"""The identifier authority {0,0,0,0,0,5} as an integer."""
SECURITY_LOCAL_SYSTEM_RID: Final = 0x12
SECURITY_BUILTIN_DOMAIN_RID: Final = 0x20
DOMAIN_ALIAS_RID_ADMINS: Final = 0x220
DOMAIN_ALIAS_RID_USERS: Final = 0x221

SID_LOCAL_SYSTEM: Final = "S-1-5-18"
SID_BUILTIN_ADMINISTRATORS: Final = "S-1-5-32-544"
SID_BUILTIN_USERS: Final = "S-1-5-32-545"

PCP_USERS_ACCESS_MASK: Final = GENERIC_READ | GENERIC_EXECUTE
"""What machine AKs grant Built-in Users so they can open and quote ("read/sign").

CNG key ACLs use the GENERIC_* rights (cf. .NET CryptoKeyRights); that this exact mask is
sufficient for NCryptOpenKey + quoting on the PCP has NOT been confirmed on real Windows."""

_SDDL_ALIASES: Final[dict[str, str]] = {
    "SY": SID_LOCAL_SYSTEM,
    "BA": SID_BUILTIN_ADMINISTRATORS,
    "BU": SID_BUILTIN_USERS,
}


class SECURITY_DESCRIPTOR_RELATIVE(ctypes.LittleEndianStructure):
    """Self-relative security descriptor header (winnt.h): offsets, not pointers."""

    _fields_ = (
        ("Revision", ctypes.c_uint8),
        ("Sbz1", ctypes.c_uint8),
        ("Control", ctypes.c_uint16),
        ("Owner", ctypes.c_uint32),
        ("Group", ctypes.c_uint32),
        ("Sacl", ctypes.c_uint32),
        ("Dacl", ctypes.c_uint32),
    )


class ACL(ctypes.LittleEndianStructure):
    """ACL header (winnt.h); ``AclSize`` covers the header and all ACEs."""

    _fields_ = (
        ("AclRevision", ctypes.c_uint8),
        ("Sbz1", ctypes.c_uint8),
        ("AclSize", ctypes.c_uint16),
        ("AceCount", ctypes.c_uint16),
        ("Sbz2", ctypes.c_uint16),
    )


class ACE_HEADER(ctypes.LittleEndianStructure):
    """Common ACE header (winnt.h)."""

    _fields_ = (
        ("AceType", ctypes.c_uint8),
        ("AceFlags", ctypes.c_uint8),
        ("AceSize", ctypes.c_uint16),
    )


class ACCESS_ALLOWED_ACE(ctypes.LittleEndianStructure):
    """ACCESS_ALLOWED_ACE (winnt.h): the SID starts at ``SidStart`` and runs to ``AceSize``."""

    _fields_ = (
        ("Header", ACE_HEADER),
        ("Mask", ctypes.c_uint32),
        ("SidStart", ctypes.c_uint32),
    )


_SIMPLE_ACE_TYPES: Final = frozenset(
    {ACCESS_ALLOWED_ACE_TYPE, ACCESS_DENIED_ACE_TYPE, SYSTEM_AUDIT_ACE_TYPE, SYSTEM_ALARM_ACE_TYPE}
)
"""ACE types laid out as ACE_HEADER, Mask, SID (winnt.h ACCESS_ALLOWED_ACE and friends)."""
_SD_HEADER: Final = struct.Struct("<BBHIIII")
_ACL_HEADER: Final = struct.Struct("<BBHHH")
_ACE_FIXED: Final = struct.Struct("<BBHI")  # ACE_HEADER + Mask; the SID follows (SidStart)


# --------------------------------------------------------------------------------------
# The calling process's token (advapi32 GetTokenInformation).
# --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ProcessToken:
    """What Windows says about the calling process's token: TOKEN_ELEVATION.TokenIsElevated
    and the TOKEN_USER SID. SYSTEM counts as elevated whatever TokenIsElevated says."""

    token_is_elevated: bool
    user_sid: str

    @property
    def is_system(self) -> bool:
        """The process runs as LocalSystem (S-1-5-18), as fleet tools and services do."""
        return self.user_sid == SID_LOCAL_SYSTEM

    @property
    def elevated(self) -> bool:
        """An elevated administrator or SYSTEM: the caller the PCP grants admin-only operations."""
        return self.token_is_elevated or self.is_system

    def to_dict(self) -> dict[str, object]:
        return {"token_is_elevated": self.token_is_elevated, "user_sid": self.user_sid,
                "is_system": self.is_system, "elevated": self.elevated}


# --------------------------------------------------------------------------------------
# Errors.
# --------------------------------------------------------------------------------------
class NCryptError(Exception):
    """An NCrypt (or crypt32) call failed: ``hresult`` is its SECURITY_STATUS as unsigned."""

    def __init__(self, function: str, hresult: int, detail: str | None = None) -> None:
        self.function = function
        self.hresult = hresult & 0xFFFFFFFF
        self.detail = detail
        msg = f"{function}: {hresult_name(self.hresult)} (0x{self.hresult:08x})"
        super().__init__(f"{msg}: {detail}" if detail else msg)

    @property
    def hresult_name(self) -> str:
        """Symbolic name of ``hresult`` (e.g. 'NTE_EXISTS')."""
        return hresult_name(self.hresult)


def _bad(what: str, message: str) -> TpmError:
    return TpmError(f"{what}: {message}", code=ErrorCode.BAD_RESPONSE)


def _invalid(what: str, message: str) -> TpmError:
    return TpmError(f"{what}: {message}", code=ErrorCode.INVALID_ARGUMENT)


# --------------------------------------------------------------------------------------
# The interface.
# --------------------------------------------------------------------------------------
@runtime_checkable
class NCryptProvider(Protocol):
    """The NCrypt calls the PCP logic needs, one method per ncrypt.dll function, plus the one
    question about the caller the logic needs (``process_token``).

    Every method raises ``NCryptError`` (with the provider's HRESULT) on failure and
    nothing else for provider-reported errors. Handles are ints; provider and key handles
    must be released with ``free_object`` except after a successful ``delete_key``, which
    frees its handle; when ``delete_key`` fails the handle stays open (as NCryptDeleteKey
    documents: "Applications may use NCryptFreeObject ... if NCryptDeleteKey fails").
    """

    def open_storage_provider(
        self, name: str = MS_PLATFORM_CRYPTO_PROVIDER, flags: int = 0
    ) -> ProvHandle:
        """NCryptOpenStorageProvider: load a key storage provider by name."""
        ...

    def create_persisted_key(
        self,
        prov: ProvHandle,
        alg: str = NCRYPT_RSA_ALGORITHM,
        name: str | None = None,
        legacy_spec: int = 0,
        flags: int = 0,
    ) -> KeyHandle:
        """NCryptCreatePersistedKey: start a key (name None = ephemeral); finalize it after
        setting its properties. NTE_EXISTS if the name is taken (the backend deletes first instead of
        passing NCRYPT_OVERWRITE_KEY_FLAG)."""
        ...

    def open_key(
        self, prov: ProvHandle, name: str, legacy_spec: int = 0, flags: int = 0
    ) -> KeyHandle:
        """NCryptOpenKey: open a persisted key by name (NCRYPT_MACHINE_KEY_FLAG for machine
        keys). NTE_BAD_KEYSET when there is no such key."""
        ...

    def set_property(self, handle: NCryptHandle, name: str, value: bytes, flags: int = 0) -> None:
        """NCryptSetProperty: set a property to raw bytes (see the pack_* helpers)."""
        ...

    def get_property(
        self, handle: NCryptHandle, name: str, flags: int = 0, *, size: int | None = None
    ) -> bytes:
        """NCryptGetProperty: a property's raw bytes.

        With ``size`` None the size is probed first (NULL buffer), then the value fetched.
        With ``size`` given, one call with a buffer of that size (go-attestation reads
        PCP_PLATFORMHANDLE and certificate-store handles this way); the result is the
        first ``pcbResult`` bytes.
        """
        ...

    def get_certificates(self, handle: NCryptHandle, name: str, flags: int = 0) -> list[bytes]:
        """Read a property whose value is an HCERTSTORE (PCP_*EKNVCERT) and return the DER
        of every certificate in it; the store is closed before returning."""
        ...

    def finalize_key(self, key: KeyHandle, flags: int = 0) -> None:
        """NCryptFinalizeKey: create the key in the provider (for PCP: in the TPM)."""
        ...

    def delete_key(self, key: KeyHandle, flags: int = 0) -> None:
        """NCryptDeleteKey: delete a persisted key; on success the handle is freed and must not
        be reused, on failure it stays open and must be freed with ``free_object``."""
        ...

    def free_object(self, handle: NCryptHandle) -> None:
        """NCryptFreeObject: release a provider or key handle."""
        ...

    def process_token(self) -> ProcessToken:
        """Not an NCrypt call: whether the calling process is elevated (advapi32
        OpenProcessToken + GetTokenInformation TokenElevation and TokenUser). The PCP answers
        some refusals with codes that do not say "privilege" (NTE_DEVICE_NOT_READY), so the
        logic asks who is calling before it blames the account."""
        ...


# --------------------------------------------------------------------------------------
# Property value codecs.
# --------------------------------------------------------------------------------------
def pack_wstr(value: str) -> bytes:
    """A property string as NCrypt wants it: UTF-16LE with a terminating NUL."""
    if "\0" in value:
        raise _invalid("pack_wstr", "string contains NUL")
    return value.encode("utf-16-le") + b"\0\0"


def unpack_wstr(data: bytes) -> str:
    """Decode a UTF-16LE property string, dropping the terminating NUL(s)."""
    if len(data) % 2:
        raise _bad("UTF-16 property", f"odd length {len(data)}")
    try:
        text = data.decode("utf-16-le")
    except UnicodeDecodeError as exc:
        raise _bad("UTF-16 property", str(exc)) from None
    return text.split("\0", 1)[0]


def pack_dword(value: int) -> bytes:
    """A DWORD property value (little-endian u32)."""
    if not 0 <= value <= 0xFFFFFFFF:
        raise _invalid("pack_dword", f"{value} does not fit in a DWORD")
    return value.to_bytes(4, "little")


def unpack_dword(data: bytes) -> int:
    """Decode a DWORD property value; exactly four bytes."""
    if len(data) != 4:
        raise _bad("DWORD property", f"expected 4 bytes, got {len(data)}")
    return int.from_bytes(data, "little")


def unpack_handle(data: bytes) -> int:
    """Decode a handle-valued property (TBS context, HCERTSTORE): 4 or 8 bytes, little-endian."""
    if len(data) not in (4, 8):
        raise _bad("handle property", f"expected 4 or 8 bytes, got {len(data)}")
    return int.from_bytes(data, "little")


# --------------------------------------------------------------------------------------
# BCRYPT_RSAKEY_BLOB <-> cryptography RSA public keys.
# --------------------------------------------------------------------------------------
def build_rsa_public_blob(key: RSAPublicKey) -> bytes:
    """Encode an RSA public key as BCRYPT_RSAPUBLIC_BLOB ('RSA1'), as PCP_EKPUB returns it."""
    numbers = key.public_numbers()
    bits = numbers.n.bit_length()
    exp = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
    mod = numbers.n.to_bytes((bits + 7) // 8, "big")
    header = _RSAKEY_BLOB.pack(BCRYPT_RSAPUBLIC_MAGIC, bits, len(exp), len(mod), 0, 0)
    return header + exp + mod


def split_rsa_public_blob(blob: bytes) -> tuple[RSAPublicKey, bytes]:
    """Decode a BCRYPT_RSAPUBLIC_BLOB: the RSA public key and any bytes after the modulus.

    The header must be consistent (magic 'RSA1', no prime lengths, cbModulus of BitLength, a
    modulus of exactly BitLength bits). A blob longer than header + exponent + modulus is read
    the way go-attestation reads PCP_EKPUB (the header says where the key ends); the extra
    bytes are returned so callers can record them. A shorter one is BAD_RESPONSE.
    """
    what = "BCRYPT_RSAKEY_BLOB"
    if len(blob) < _RSAKEY_BLOB.size:
        raise _bad(what, f"{len(blob)} bytes is shorter than the {_RSAKEY_BLOB.size}-byte header")
    magic, bits, cb_exp, cb_mod, cb_p1, cb_p2 = _RSAKEY_BLOB.unpack_from(blob)
    if magic != BCRYPT_RSAPUBLIC_MAGIC:
        raise _bad(what, f"magic 0x{magic:08x} is not BCRYPT_RSAPUBLIC_MAGIC ('RSA1')")
    if cb_p1 or cb_p2:
        raise _bad(what, f"public blob declares prime lengths {cb_p1}/{cb_p2}")
    if cb_exp == 0 or cb_exp > 8:
        raise _bad(what, f"cbPublicExp {cb_exp} out of range 1..8")
    if bits == 0 or cb_mod != (bits + 7) // 8:
        raise _bad(what, f"cbModulus {cb_mod} does not match BitLength {bits}")
    end = _RSAKEY_BLOB.size + cb_exp + cb_mod
    if len(blob) < end:
        raise _bad(what, f"length {len(blob)} is shorter than header + cbPublicExp + cbModulus "
                         f"= {end}")
    off = _RSAKEY_BLOB.size
    e = int.from_bytes(blob[off : off + cb_exp], "big")
    n = int.from_bytes(blob[off + cb_exp : end], "big")
    if n.bit_length() != bits:
        raise _bad(what, f"modulus has {n.bit_length()} bits, BitLength says {bits}")
    try:
        return RSAPublicNumbers(e, n).public_key(), bytes(blob[end:])
    except ValueError as exc:
        raise _bad(what, f"not a valid RSA public key: {exc}") from None


def parse_rsa_public_blob(blob: bytes) -> RSAPublicKey:
    """Decode a BCRYPT_RSAPUBLIC_BLOB into an RSA public key (``split_rsa_public_blob``
    without the trailing bytes)."""
    return split_rsa_public_blob(blob)[0]


# --------------------------------------------------------------------------------------
# BCRYPT_ECCKEY_BLOB (public) <-> cryptography EC public keys.
# --------------------------------------------------------------------------------------
def build_ecc_public_blob(key: ec.EllipticCurvePublicKey, *, ecdsa: bool = False) -> bytes:
    """Encode a P-256/P-384 public key as BCRYPT_ECCPUBLIC_BLOB ('ECK1'/'ECK3', or the ECDSA
    magics 'ECS1'/'ECS3' with ``ecdsa``)."""
    for magic, (curve, size) in _ECC_PUBLIC_MAGICS.items():
        if curve.name == key.curve.name and ((magic & 0xFFFF00) == 0x534300) == ecdsa:
            numbers = key.public_numbers()
            return (_ECCKEY_BLOB.pack(magic, size) + numbers.x.to_bytes(size, "big")
                    + numbers.y.to_bytes(size, "big"))
    raise _invalid("build_ecc_public_blob", f"curve {key.curve.name} has no BCRYPT magic here")


def split_ecc_public_blob(blob: bytes) -> tuple[ec.EllipticCurvePublicKey, bytes]:
    """Decode a BCRYPT_ECCPUBLIC_BLOB of NIST P-256 or P-384 (ECDH or ECDSA magic): the key and
    any bytes after Y. cbKey must be the curve's size and the point on the curve; a generic or
    private magic, or a shorter blob, is BAD_RESPONSE."""
    what = "BCRYPT_ECCKEY_BLOB"
    if len(blob) < _ECCKEY_BLOB.size:
        raise _bad(what, f"{len(blob)} bytes is shorter than the {_ECCKEY_BLOB.size}-byte header")
    magic, cb_key = _ECCKEY_BLOB.unpack_from(blob)
    known = _ECC_PUBLIC_MAGICS.get(magic)
    if known is None:
        raise _bad(what, f"magic 0x{magic:08x} is not a P-256/P-384 public-key magic "
                         "('ECK1', 'ECS1', 'ECK3', 'ECS3')")
    curve, size = known
    if cb_key != size:
        raise _bad(what, f"cbKey {cb_key} is not {size} for {curve.name}")
    end = _ECCKEY_BLOB.size + 2 * size
    if len(blob) < end:
        raise _bad(what, f"length {len(blob)} is shorter than header + 2 * cbKey = {end}")
    x = int.from_bytes(blob[_ECCKEY_BLOB.size : _ECCKEY_BLOB.size + size], "big")
    y = int.from_bytes(blob[_ECCKEY_BLOB.size + size : end], "big")
    try:
        return ec.EllipticCurvePublicNumbers(x, y, curve).public_key(), bytes(blob[end:])
    except ValueError as exc:
        raise _bad(what, f"not a point on {curve.name}: {exc}") from None


# --------------------------------------------------------------------------------------
# SIDs and self-relative security descriptors.
# --------------------------------------------------------------------------------------
_SID_RE: Final = re.compile(
    r"S-1-(0x[0-9a-f]{1,12}|\d{1,15})((?:-\d{1,10}){0,15})", re.IGNORECASE | re.ASCII
)


def sid_from_string(sid: str) -> bytes:
    """Binary SID from its string form ('S-1-5-32-545') or an SDDL alias ('BU', 'BA', 'SY')."""
    text = _SDDL_ALIASES.get(sid.upper(), sid)
    m = _SID_RE.fullmatch(text)
    if m is None:
        raise _invalid("SID", f"{sid!r} is not 'S-1-<authority>-<subauthority>...'")
    auth_text = m.group(1)
    authority = int(auth_text, 16) if auth_text[:2].lower() == "0x" else int(auth_text)
    subs = [int(s) for s in m.group(2).split("-")[1:]]
    if authority >= 1 << 48:
        raise _invalid("SID", f"identifier authority {authority} exceeds 48 bits")
    if any(s > 0xFFFFFFFF for s in subs):
        raise _invalid("SID", f"sub-authority out of range in {sid!r}")
    return (
        bytes((SID_REVISION, len(subs)))
        + authority.to_bytes(6, "big")
        + b"".join(s.to_bytes(4, "little") for s in subs)
    )


def sid_to_string(sid: bytes) -> str:
    """String form of a binary SID that is exactly ``8 + 4 * SubAuthorityCount`` bytes."""
    if len(sid) < 8:
        raise _bad("SID", f"{len(sid)} bytes is shorter than the 8-byte header")
    revision, count = sid[0], sid[1]
    if revision != SID_REVISION:
        raise _bad("SID", f"revision {revision} != {SID_REVISION}")
    if count > SID_MAX_SUB_AUTHORITIES or len(sid) != 8 + 4 * count:
        raise _bad("SID", f"{len(sid)} bytes does not hold {count} sub-authorities")
    authority = int.from_bytes(sid[2:8], "big")
    auth_text = str(authority) if authority < 1 << 32 else f"0x{authority:012X}"
    subs = (int.from_bytes(sid[8 + 4 * i : 12 + 4 * i], "little") for i in range(count))
    return "-".join(["S", "1", auth_text, *map(str, subs)])


def _sid_length(data: bytes, off: int, end: int, what: str) -> int:
    if off + 8 > end:
        raise _bad(what, f"SID at offset {off} truncated")
    length = 8 + 4 * data[off + 1]
    if off + length > end:
        raise _bad(what, f"SID at offset {off} runs past its container")
    return length


@dataclass(frozen=True, slots=True)
class Ace:
    """One ACE: type, flags, access mask and trustee SID (string form)."""

    ace_type: int
    flags: int
    mask: int
    sid: str | None
    """None for ACE types whose SID is not at SidStart (object and callback ACEs)."""


@dataclass(frozen=True, slots=True)
class SecurityDescriptor:
    """A parsed self-relative security descriptor (owner/group as SID strings or None)."""

    revision: int
    control: int
    owner: str | None
    group: str | None
    dacl: tuple[Ace, ...] | None
    """None when SE_DACL_PRESENT is clear or the DACL offset is 0 (a NULL DACL)."""


def build_security_descriptor(
    aces: Sequence[tuple[str | bytes, int]], *, protected: bool = False
) -> bytes:
    """A self-relative SECURITY_DESCRIPTOR holding only a DACL of ACCESS_ALLOWED ACEs.

    ``aces`` are (SID string/alias or binary SID, access mask). No owner, group or SACL:
    set it with DACL_SECURITY_INFORMATION. Layout: 20-byte header, then the ACL at 20.
    """
    body = bytearray()
    for trustee, mask in aces:
        sid = sid_from_string(trustee) if isinstance(trustee, str) else bytes(trustee)
        sid_to_string(sid)  # validates a caller-supplied binary SID
        if not 0 <= mask <= 0xFFFFFFFF:
            raise _invalid("ACE", f"access mask {mask:#x} does not fit in 32 bits")
        body += _ACE_FIXED.pack(ACCESS_ALLOWED_ACE_TYPE, 0, _ACE_FIXED.size + len(sid), mask)
        body += sid
    acl_size = _ACL_HEADER.size + len(body)
    if acl_size > 0xFFFF:
        raise _invalid("ACL", f"{acl_size} bytes exceeds 65535")
    acl = _ACL_HEADER.pack(ACL_REVISION, 0, acl_size, len(aces), 0) + bytes(body)
    control = SE_DACL_PRESENT | SE_SELF_RELATIVE | (SE_DACL_PROTECTED if protected else 0)
    header = _SD_HEADER.pack(SECURITY_DESCRIPTOR_REVISION, 0, control, 0, 0, 0, _SD_HEADER.size)
    return header + acl


def pcp_machine_key_security_descriptor(users_mask: int = PCP_USERS_ACCESS_MASK) -> bytes:
    """The DACL for machine (PCP2) AKs: SYSTEM and Administrators full, Built-in Users
    ``users_mask``. Setting a DACL replaces the old one, so SY/BA keep their access."""
    return build_security_descriptor(
        [
            (SID_LOCAL_SYSTEM, GENERIC_ALL),
            (SID_BUILTIN_ADMINISTRATORS, GENERIC_ALL),
            (SID_BUILTIN_USERS, users_mask),
        ]
    )


def parse_security_descriptor(data: bytes) -> SecurityDescriptor:
    """Parse a self-relative SECURITY_DESCRIPTOR; every offset and size is bounds-checked."""
    what = "SECURITY_DESCRIPTOR"
    end = len(data)
    if end < _SD_HEADER.size:
        raise _bad(what, f"{end} bytes is shorter than the {_SD_HEADER.size}-byte header")
    revision, _sbz1, control, o_owner, o_group, _o_sacl, o_dacl = _SD_HEADER.unpack_from(data)
    if revision != SECURITY_DESCRIPTOR_REVISION:
        raise _bad(what, f"revision {revision} != {SECURITY_DESCRIPTOR_REVISION}")
    if not control & SE_SELF_RELATIVE:
        raise _bad(what, "SE_SELF_RELATIVE is not set (absolute descriptors hold pointers)")

    def sid_at(off: int, field: str) -> str | None:
        if off == 0:
            return None
        if off < _SD_HEADER.size:
            raise _bad(what, f"{field} offset {off} points into the header")
        length = _sid_length(data, off, end, f"{what} {field}")
        return sid_to_string(data[off : off + length])

    owner = sid_at(o_owner, "owner")
    group = sid_at(o_group, "group")
    dacl: tuple[Ace, ...] | None = None
    if control & SE_DACL_PRESENT and o_dacl:
        if o_dacl < _SD_HEADER.size or o_dacl + _ACL_HEADER.size > end:
            raise _bad(what, f"DACL offset {o_dacl} out of range")
        acl_rev, _s1, acl_size, count, _s2 = _ACL_HEADER.unpack_from(data, o_dacl)
        if acl_rev not in (ACL_REVISION, 4):  # ACL_REVISION_DS = 4 allows object ACEs
            raise _bad(what, f"ACL revision {acl_rev}")
        acl_end = o_dacl + acl_size
        if acl_size < _ACL_HEADER.size or acl_end > end:
            raise _bad(what, f"AclSize {acl_size} out of range")
        pos = o_dacl + _ACL_HEADER.size
        aces: list[Ace] = []
        for _ in range(count):
            if pos + _ACE_FIXED.size > acl_end:
                raise _bad(what, f"ACE at offset {pos} truncated")
            ace_type, ace_flags, ace_size, mask = _ACE_FIXED.unpack_from(data, pos)
            if ace_size < _ACE_FIXED.size + 8 or ace_size % 4 or pos + ace_size > acl_end:
                raise _bad(what, f"AceSize {ace_size} at offset {pos} out of range")
            sid_off = pos + _ACE_FIXED.size
            sid: str | None = None
            if ace_type in _SIMPLE_ACE_TYPES:
                length = _sid_length(data, sid_off, pos + ace_size, f"{what} ACE")
                sid = sid_to_string(data[sid_off : sid_off + length])
            aces.append(Ace(ace_type, ace_flags, mask, sid))
            pos += ace_size
        dacl = tuple(aces)
    return SecurityDescriptor(revision, control, owner, group, dacl)
