"""TPM 2.0 key derivation and credential protection (MakeCredential) in software.

KDFa (SP800-108 counter mode HMAC, TPM 2.0 Part 1 §11.4.10.2), KDFe (SP800-56A
concatenation KDF, Part 1 §11.4.10.3) and the credential protection of Part 1
§24 / Part 3 TPM2_MakeCredential, so a verifier can challenge an EK without a
TPM. Also the tpm2-tools credential file format and the PCR composite digest.
No I/O: everything here is a pure function over bytes and `cryptography` keys.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from typing import Final

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

try:  # cryptography >= 47 keeps CFB among the "decrepit" modes
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB

from .constants import HASH_NAMES, HASH_SIZES, TPM_ALG
from .marshal import ParseError, Reader, tpm2b

__all__ = [
    "IDENTITY_LABEL",
    "SUPPORTED_HASHES",
    "TPM2_TOOLS_CREDENTIAL_MAGIC",
    "hash_for",
    "identity_oaep",
    "kdfa",
    "kdfe",
    "make_credential",
    "pcr_digest",
    "read_tpm2_tools_credential",
    "write_tpm2_tools_credential",
]

_U32: Final = struct.Struct(">I")

_HASH_CLASSES: Final[dict[int, type[hashes.HashAlgorithm]]] = {
    TPM_ALG.SHA1: hashes.SHA1,
    TPM_ALG.SHA256: hashes.SHA256,
    TPM_ALG.SHA384: hashes.SHA384,
    TPM_ALG.SHA512: hashes.SHA512,
    TPM_ALG.SHA3_256: hashes.SHA3_256,
    TPM_ALG.SHA3_384: hashes.SHA3_384,
    TPM_ALG.SHA3_512: hashes.SHA3_512,
}


# hashlib constructors (faster than lookups by name in hmac.digest and for KDFe).
_HASHLIB: Final[dict[int, Callable[..., hashlib._Hash]]] = {
    alg: getattr(hashlib, HASH_NAMES[alg]) for alg in _HASH_CLASSES
}

SUPPORTED_HASHES: Final[frozenset[int]] = frozenset(_HASHLIB)
"""TPM_ALG hash identifiers every function of this module accepts."""

IDENTITY_LABEL: Final = b"IDENTITY\x00"
"""OAEP label / KDFe use for credential protection (Part 1 §24, with its NUL)."""

TPM2_TOOLS_CREDENTIAL_MAGIC: Final = 0xBADCC0DE
"""Header magic of tpm2-tools' tpm2_makecredential output (then u32 version 1)."""
_TPM2_TOOLS_CREDENTIAL_VERSION: Final = 1

_SYM_MODES_KEY_BITS: Final[dict[int, frozenset[int]]] = {TPM_ALG.AES: frozenset({128, 192, 256})}


def _hash_ctor(alg: int) -> Callable[..., hashlib._Hash]:
    """The hashlib constructor of a supported TPM hash; ValueError otherwise."""
    ctor = _HASHLIB.get(alg)
    if ctor is None:
        raise ValueError(f"unsupported hash algorithm 0x{alg:04x}")
    return ctor


def _digest_size(alg: int) -> int:
    """Digest size of a supported TPM hash; ValueError otherwise."""
    if alg not in SUPPORTED_HASHES:
        raise ValueError(f"unsupported hash algorithm 0x{alg:04x}")
    return HASH_SIZES[alg]


def hash_for(alg: int) -> hashes.HashAlgorithm:
    """The `cryptography` hash object for a TPM_ALG hash id; ValueError if unsupported."""
    cls = _HASH_CLASSES.get(alg)
    if cls is None or alg not in SUPPORTED_HASHES:
        raise ValueError(f"unsupported hash algorithm 0x{alg:04x}")
    return cls()


def _with_nul(label: bytes) -> bytes:
    """Labels are NUL-terminated strings in the KDFs: add the NUL when the caller left it out."""
    return label if label.endswith(b"\x00") else label + b"\x00"


def _truncate(stream: bytes, bits: int) -> bytes:
    """Keep ceil(bits/8) bytes and clear the unused high bits of the first one (Part 1 §11.4.10)."""
    nbytes = (bits + 7) // 8
    out = stream[:nbytes]
    extra = bits % 8
    if extra:
        out = bytes([out[0] & ((1 << extra) - 1)]) + out[1:]
    return out


def _check_bits(bits: int) -> None:
    """KDF output sizes travel as a u16 byte count in the TPM: refuse 0 and oversizes."""
    if bits <= 0 or bits > 0xFFFF * 8:
        raise ValueError(f"bits must be in 1..{0xFFFF * 8}, not {bits}")


def kdfa(
    hash_alg: int, key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int
) -> bytes:
    """KDFa: SP800-108 counter-mode KDF with HMAC(hash_alg) (TPM 2.0 Part 1 §11.4.10.2).

    K(i) = HMAC(key, [i]32 || label || 0x00 || contextU || contextV || [bits]32); the
    result is ceil(bits/8) bytes with the unused high bits of the first byte cleared.
    """
    _check_bits(bits)
    name = _hash_ctor(hash_alg)
    tail = _with_nul(label) + context_u + context_v + _U32.pack(bits)
    nbytes = (bits + 7) // 8
    if nbytes <= HASH_SIZES[hash_alg] and not bits % 8:  # the usual case: one block, whole bytes
        return hmac.digest(key, b"\x00\x00\x00\x01" + tail, name)[:nbytes]
    size = HASH_SIZES[hash_alg]
    blocks = [
        hmac.digest(key, _U32.pack(i) + tail, name)
        for i in range(1, (nbytes + size - 1) // size + 1)
    ]
    return _truncate(b"".join(blocks), bits)


def kdfe(
    hash_alg: int, z: bytes, label: bytes, party_u_info: bytes, party_v_info: bytes, bits: int
) -> bytes:
    """KDFe: SP800-56A concatenation KDF (TPM 2.0 Part 1 §11.4.10.3).

    K(i) = H([i]32 || Z || label || 0x00 || partyUInfo || partyVInfo); truncated like KDFa.
    """
    _check_bits(bits)
    h = _hash_ctor(hash_alg)
    tail = z + _with_nul(label) + party_u_info + party_v_info
    nbytes = (bits + 7) // 8
    size = HASH_SIZES[hash_alg]
    blocks = [h(_U32.pack(i) + tail).digest() for i in range(1, (nbytes + size - 1) // size + 1)]
    return _truncate(b"".join(blocks), bits)


def _check_name(name: bytes) -> None:
    """An object Name is nameAlg (u16) || H(public area); refuse anything else."""
    if len(name) < 2:
        raise ValueError("ak_name is not a TPM object Name (too short)")
    alg = int.from_bytes(name[:2], "big")
    size = HASH_SIZES.get(alg)
    if size is None or len(name) != 2 + size:
        raise ValueError(f"ak_name is not a TPM object Name (alg 0x{alg:04x}, {len(name)} bytes)")


_ECDH: Final = ec.ECDH()
_X962: Final = serialization.Encoding.X962
_UNCOMPRESSED: Final = serialization.PublicFormat.UncompressedPoint


def _ecc_seed(
    ek_key: ec.EllipticCurvePublicKey,
    name_alg: int,
    ephemeral_key: ec.EllipticCurvePrivateKey | None,
) -> tuple[bytes, bytes]:
    """ECDH seed and its TPMS_ECC_POINT (Part 1 §24): KDFe over Z = x(d_e * Q_ek)."""
    curve = ek_key.curve
    if ephemeral_key is None:
        ephemeral_key = ec.generate_private_key(curve)
    elif ephemeral_key.curve.name != curve.name:
        raise ValueError("ephemeral_key is not on the EK's curve")
    size = (curve.key_size + 7) // 8
    z = ephemeral_key.exchange(_ECDH, ek_key)
    # Uncompressed SEC1 points (04 || x || y) give fixed-size coordinates, as the TPM uses.
    eph = ephemeral_key.public_key().public_bytes(_X962, _UNCOMPRESSED)
    eph_x, eph_y = eph[1 : 1 + size], eph[1 + size :]
    ek_x = ek_key.public_bytes(_X962, _UNCOMPRESSED)[1 : 1 + size]
    seed = kdfe(name_alg, z, b"IDENTITY", eph_x, ek_x, HASH_SIZES[name_alg] * 8)
    return seed, tpm2b(eph_x) + tpm2b(eph_y)


@functools.cache
def identity_oaep(name_alg: int) -> padding.OAEP:
    """OAEP with MGF1, both over the EK nameAlg, label "IDENTITY\\0" (Part 1 §24)."""
    h = hash_for(name_alg)
    return padding.OAEP(mgf=padding.MGF1(algorithm=h), algorithm=h, label=IDENTITY_LABEL)


def make_credential(
    ek_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    *,
    ek_name_alg: int,
    sym_alg: int = TPM_ALG.AES,
    sym_bits: int = 128,
    ak_name: bytes,
    secret: bytes,
    seed: bytes | None = None,
    ephemeral_key: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[bytes, bytes]:
    """TPM2_MakeCredential in software (Part 1 §24, Part 3 TPM2_MakeCredential).

    Returns (TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET), both marshalled with their
    u16 size, ready for TPM2_ActivateCredential with this EK and the object named
    `ak_name`. `sym_alg`/`sym_bits` must be the EK's symmetric definition (AES-128
    for the TCG default templates). `seed` (RSA EKs only) and `ephemeral_key` (ECC
    EKs only) make the output deterministic for tests; leave them unset otherwise.
    """
    size = _digest_size(ek_name_alg)
    if not 1 <= len(secret) <= size:
        raise ValueError(f"secret must be 1..{size} bytes for this EK nameAlg, not {len(secret)}")
    _check_name(ak_name)
    if sym_bits not in _SYM_MODES_KEY_BITS.get(sym_alg, frozenset()):
        raise ValueError(f"unsupported symmetric algorithm 0x{sym_alg:04x}/{sym_bits}")

    if isinstance(ek_key, rsa.RSAPublicKey):
        if ephemeral_key is not None:
            raise ValueError("ephemeral_key applies to ECC EKs only")
        if seed is None:
            seed = os.urandom(size)
        elif not 1 <= len(seed) <= size:
            raise ValueError(f"seed must be 1..{size} bytes")
        encrypted = ek_key.encrypt(seed, identity_oaep(ek_name_alg))
    elif isinstance(ek_key, ec.EllipticCurvePublicKey):
        if seed is not None:
            raise ValueError("an ECC EK's seed comes from ECDH; pass ephemeral_key instead")
        seed, encrypted = _ecc_seed(ek_key, ek_name_alg, ephemeral_key)
    else:
        raise TypeError(f"unsupported EK key type {type(ek_key).__name__}")

    hname = _HASHLIB[ek_name_alg]
    sym_key = kdfa(ek_name_alg, seed, b"STORAGE", ak_name, b"", sym_bits)
    hmac_key = kdfa(ek_name_alg, seed, b"INTEGRITY", b"", b"", size * 8)
    encryptor = Cipher(algorithms.AES(sym_key), CFB(bytes(16))).encryptor()
    enc_identity = encryptor.update(tpm2b(secret)) + encryptor.finalize()
    outer_hmac = hmac.digest(hmac_key, enc_identity + ak_name, hname)
    id_object = tpm2b(tpm2b(outer_hmac) + enc_identity)
    return id_object, tpm2b(encrypted)


def write_tpm2_tools_credential(id_object: bytes, encrypted_secret: bytes) -> bytes:
    """tpm2-tools' credential file (tpm2_makecredential -o / tpm2_activatecredential -i).

    Layout: u32 0xBADCC0DE, u32 version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET; both
    arguments are the TPM2B-marshalled forms that `make_credential` returns.
    """
    for what, blob in (
        ("TPM2B_ID_OBJECT", id_object),
        ("TPM2B_ENCRYPTED_SECRET", encrypted_secret),
    ):
        r = Reader(blob)
        r.tpm2b(what)
        r.done(what)
    return (
        _U32.pack(TPM2_TOOLS_CREDENTIAL_MAGIC)
        + _U32.pack(_TPM2_TOOLS_CREDENTIAL_VERSION)
        + id_object
        + encrypted_secret
    )


def read_tpm2_tools_credential(data: bytes) -> tuple[bytes, bytes]:
    """Parse a tpm2-tools credential file into (TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET).

    Raises ParseError for a wrong magic or version, truncation or trailing bytes.
    """
    r = Reader(data)
    magic = r.u32("credential magic")
    if magic != TPM2_TOOLS_CREDENTIAL_MAGIC:
        raise ParseError(f"bad magic 0x{magic:08x}", 0, "tpm2-tools credential")
    version = r.u32("credential version")
    if version != _TPM2_TOOLS_CREDENTIAL_VERSION:
        raise ParseError(f"unsupported version {version}", 4, "tpm2-tools credential")
    id_object = tpm2b(r.tpm2b("TPM2B_ID_OBJECT"))
    encrypted_secret = tpm2b(r.tpm2b("TPM2B_ENCRYPTED_SECRET"))
    r.done("tpm2-tools credential")
    return id_object, encrypted_secret


def pcr_digest(hash_alg: int, values: list[bytes]) -> bytes:
    """The quote's pcrDigest: H(PCR[i1] || PCR[i2] || ...) in selection order."""
    h = _hash_ctor(hash_alg)(b"")
    size = HASH_SIZES[hash_alg]
    for i, v in enumerate(values):
        if len(v) != size:
            raise ValueError(f"PCR value {i} is {len(v)} bytes, expected {size}")
        h.update(v)
    return h.digest()
