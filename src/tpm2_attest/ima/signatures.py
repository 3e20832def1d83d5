"""IMA file signatures (the ``sig`` field: the ``security.ima`` xattr) and the keys that sign them.

A signature is ``struct signature_v2_hdr`` (big-endian): type (3 EVM_IMA_XATTR_DIGSIG, 5
EVM_XATTR_PORTABLE_DIGSIG, 6 IMA_VERITY_DIGSIG), version, the kernel's ``enum hash_algo``
number, a 32-bit key id and the signature length, then the signature (RSA PKCS#1 v1.5 or
DER ECDSA). Version 2 signs the file digest itself; version 3 signs the hash of
``struct ima_file_id`` (the type byte, the algorithm number, the digest), as the kernel's
``calc_file_id_hash`` builds it. The key id is the last four bytes of the key's Subject Key
Identifier: SHA-1 of the RSA PKCS#1 public key or of the uncompressed EC point (what evmctl
and the kernel's X.509 parser use).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import struct
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from .algorithms import HASH_ALGO_NAMES, canonical
from .entry import ImaDigest

EVM_IMA_XATTR_DIGSIG: Final = 3
EVM_XATTR_PORTABLE_DIGSIG: Final = 5
IMA_VERITY_DIGSIG: Final = 6
_HDR: Final = struct.Struct(">BBBIH")

_HASHES: Final[dict[str, type[hashes.HashAlgorithm]]] = {
    "md5": hashes.MD5, "sha1": hashes.SHA1, "sha224": hashes.SHA224, "sha256": hashes.SHA256,
    "sha384": hashes.SHA384, "sha512": hashes.SHA512, "sha3-256": hashes.SHA3_256,
    "sha3-384": hashes.SHA3_384, "sha3-512": hashes.SHA3_512, "sm3": hashes.SM3,
}

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True, slots=True)
class ImaSignature:
    """A parsed ``signature_v2_hdr`` and its signature bytes."""

    type: int
    version: int
    hash_algo: str
    keyid: int
    signature: bytes


def parse_signature(data: bytes) -> ImaSignature | str:
    """The signature of a ``sig`` field, or a sentence saying why it is not one."""
    if len(data) < _HDR.size:
        return f"{len(data)} bytes are too short for a signature header"
    typ, version, algo, keyid, size = _HDR.unpack_from(data)
    if typ not in (EVM_IMA_XATTR_DIGSIG, EVM_XATTR_PORTABLE_DIGSIG, IMA_VERITY_DIGSIG):
        return f"xattr type {typ} is not a signature"
    if version not in (2, 3):
        return f"signature version {version} is not 2 or 3"
    if size != len(data) - _HDR.size:
        return f"the header gives {size} signature bytes, {len(data) - _HDR.size} follow"
    if algo >= len(HASH_ALGO_NAMES):
        return f"hash algorithm number {algo} is unknown"
    return ImaSignature(typ, version, HASH_ALGO_NAMES[algo], keyid, data[_HDR.size :])


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A public key trusted to sign files, with its 32-bit key id."""

    key: PublicKey
    keyid: int
    source: str = ""

    def verify(self, sig: ImaSignature, digest: ImaDigest) -> bool:
        """Does ``sig`` by this key sign ``digest`` (the entry's file digest)?"""
        return verify_signature(self.key, sig, digest)


def keyid_of(key: PublicKey) -> int:
    """The v2 key id: the last four bytes of SHA-1 over the PKCS#1 RSA key or the EC point."""
    if isinstance(key, rsa.RSAPublicKey):
        raw = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    else:
        raw = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return int.from_bytes(hashlib.sha1(raw).digest()[-4:], "big")


def load_key(data: bytes | str, *, keyid: int | None = None, source: str = "") -> TrustedKey:
    """A trusted key from PEM or DER (or base64 DER): a SubjectPublicKeyInfo or an X.509
    certificate (whose Subject Key Identifier gives the key id). ValueError otherwise."""
    key, skid = key_from_bytes(data)
    if key is None:
        raise ValueError("not a public key or certificate (PEM, DER or base64 DER)")
    return TrustedKey(key, keyid if keyid is not None else (skid if skid is not None else keyid_of(key)), source)


def key_from_bytes(data: bytes | str) -> tuple[PublicKey | None, int | None]:
    """(key, key id from the certificate's SKID or None) when ``data`` is a certificate or a
    public key in PEM/DER/base64 DER; (None, None) when it is not; ValueError for a key of a
    type IMA does not use (not RSA or EC)."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    candidates = [raw]
    if not raw.lstrip().startswith(b"-----BEGIN") and raw[:1] != b"\x30":
        with contextlib.suppress(binascii.Error, ValueError):
            candidates.append(base64.b64decode(b"".join(raw.split()), validate=True))
    for blob in candidates:
        for loader in (_cert_der, _cert_pem, _spki_der, _spki_pem):
            try:
                key, skid = loader(blob)
            except (ValueError, TypeError, UnsupportedAlgorithm):
                continue
            if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
                raise ValueError(f"a {type(key).__name__.lstrip('_')} is not an IMA signing key (RSA or EC)")
            return key, skid
    return None, None


def _skid(cert: x509.Certificate) -> int | None:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except (x509.ExtensionNotFound, ValueError):
        return None
    digest = ext.value.digest
    return int.from_bytes(digest[-4:], "big") if len(digest) >= 4 else None


def _cert_der(b: bytes) -> tuple[object, int | None]:
    cert = x509.load_der_x509_certificate(b)
    return cert.public_key(), _skid(cert)


def _cert_pem(b: bytes) -> tuple[object, int | None]:
    cert = x509.load_pem_x509_certificate(b)
    return cert.public_key(), _skid(cert)


def _spki_der(b: bytes) -> tuple[object, int | None]:
    return serialization.load_der_public_key(b), None


def _spki_pem(b: bytes) -> tuple[object, int | None]:
    return serialization.load_pem_public_key(b), None


def verify_signature(key: PublicKey, sig: ImaSignature, digest: ImaDigest) -> bool:
    """Does ``sig`` verify under ``key`` for the file digest ``digest``? A v2 signature signs
    the digest (of the signature's own algorithm); v3 the ``ima_file_id`` hash."""
    alg = canonical(digest.algorithm)
    hash_cls = _HASHES.get(sig.hash_algo)
    if hash_cls is None or alg != sig.hash_algo:
        return False
    signed = digest.digest
    if sig.version == 3:
        try:
            algo_no = HASH_ALGO_NAMES.index(alg)
        except ValueError:
            return False
        h = hashes.Hash(hash_cls())
        h.update(bytes([sig.type, algo_no]) + digest.digest)
        signed = h.finalize()
    if len(signed) != hash_cls().digest_size:
        return False
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(sig.signature, signed, padding.PKCS1v15(), Prehashed(hash_cls()))
        else:
            key.verify(sig.signature, signed, ec.ECDSA(Prehashed(hash_cls())))
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        return False
    return True


__all__ = ["ImaSignature", "PublicKey", "TrustedKey", "key_from_bytes", "keyid_of", "load_key",
           "parse_signature", "verify_signature"]
