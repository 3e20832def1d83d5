"""Credential challenges: prove an AK lives in the same TPM as an EK (TPM 2.0 Part 1 §24).

``make_credential`` encrypts a fresh secret so that only the TPM holding the EK can recover
it, and only for the object whose Name is the AK's (TPM2_ActivateCredential). The
symmetric algorithm and the hash used come from the EK's public area, as the TPM uses them.
``verify_activation`` compares what the device returned with the secret, in constant time.
"""

from __future__ import annotations

import hmac
import os
from functools import cached_property
from typing import Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .._frozen import frozen
from ..evidence import CredentialChallenge, EkInfo, PublicKey
from ..tpm2 import crypto
from ..tpm2.constants import HASH_SIZES, TPM_ALG, TPM_ECC_CURVE, TPMA_OBJECT
from ..tpm2.keys import (
    CURVE_BYTES,
    ecc_public_key,
    object_name,
    read_fields,
    rsa_public_key,
    storage_area_fields,
    storage_fields,
)
from ..tpm2.marshal import ParseError
from ..tpm2.structures import TPMT_PUBLIC
from .ak import AkPublic
from .errors import Reason, VerificationError

__all__ = ["DEFAULT_SECRET_SIZE", "EkPublic", "check_ek", "make_credential", "verify_activation"]

DEFAULT_SECRET_SIZE: Final = 32
"""Bytes of the random secret (capped at the digest size of the EK's nameAlg)."""
MIN_RSA_EK_BITS: Final = 2048
MIN_ECC_EK_BITS: Final = 256
WEAK_EK_CURVES: Final = frozenset({TPM_ECC_CURVE.NIST_P192, TPM_ECC_CURVE.NIST_P224, TPM_ECC_CURVE.BN_P256})
"""Curves a TPM may offer whose security is below 128 bits: refused as WEAK_KEY."""
_OAEP_HASHES: dict[int, bool] = {}
"""nameAlg -> whether `cryptography` does RSA-OAEP with it (SHA-3 it does not)."""
_EK_ATTRS: Final = int(TPMA_OBJECT.restricted | TPMA_OBJECT.decrypt | TPMA_OBJECT.sign_encrypt)
_EK_WANTED: Final = int(TPMA_OBJECT.restricted | TPMA_OBJECT.decrypt)  # plain ints: IntFlag & costs ~1 µs

EkPublicInput = (
    bytes | bytearray | memoryview | TPMT_PUBLIC | EkInfo | PublicKey
    | rsa.RSAPublicKey | ec.EllipticCurvePublicKey
)


def _fail(reason: Reason, detail: str) -> VerificationError:
    return VerificationError(reason, detail)


@frozen(slots=False)
class EkPublic:
    """A checked EK: its key, the parameters credential protection uses, and its Name (the EK's
    identity for enrollment records; None when only a bare key was given)."""

    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    name_alg: int
    sym_alg: int
    sym_bits: int
    public_area: TPMT_PUBLIC | None = None

    @cached_property
    def name(self) -> bytes | None:
        return object_name(self.public_area) if self.public_area is not None else None


def check_ek(ek_public: EkPublicInput) -> EkPublic:
    """Check an EK public area (or key) can receive credentials: a restricted decryption key
    that does not sign, AES-CFB, RSA >= 2048 bits or a supported curve. Raises otherwise."""
    key, name_alg, sym_alg, sym_bits, area = _ek_parameters(ek_public)
    return EkPublic(key, name_alg, sym_alg, sym_bits, area)


def _ek_parameters(
    ek_public: EkPublicInput, *, need_area: bool = True,
) -> tuple[rsa.RSAPublicKey | ec.EllipticCurvePublicKey, int, int, int, TPMT_PUBLIC | None]:
    """(key, nameAlg, symmetric algorithm, key bits, public area) of an EK; refuses non-EK keys.
    Without ``need_area``, EK bytes of the usual shape are read by one unpack and the public
    area comes back None (``make_credential`` needs only the key and the parameters)."""
    if type(ek_public) is not bytes and isinstance(ek_public, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        key = ek_public
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_EK_BITS:
            raise _fail(Reason.WEAK_KEY, f"RSA EK of {key.key_size} bits")
        if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size < MIN_ECC_EK_BITS:
            raise _fail(Reason.WEAK_KEY, f"ECC EK on {key.curve.name}")
        # A bare key carries no public area: assume the TCG default templates.
        return key, TPM_ALG.SHA256, TPM_ALG.AES, 128, None
    if isinstance(ek_public, EkInfo | PublicKey):
        ek_public = ek_public.public
    area: TPMT_PUBLIC | None = None
    if isinstance(ek_public, TPMT_PUBLIC):
        area = ek_public
        fields = storage_area_fields(area)
    else:
        data = bytes(ek_public)
        if len(data) >= 2 and int.from_bytes(data[:2], "big") == len(data) - 2:
            data = data[2:]
        try:
            fields, area = read_fields(data, _no_fields if need_area else storage_fields, storage_area_fields)
        except ParseError as exc:
            raise _fail(Reason.MALFORMED, f"EK public area: {exc}") from exc
    typ, name_alg, attrs, sym_alg, sym_bits, sym_mode, size_or_curve, exponent, unique, y = fields
    if attrs & _EK_ATTRS != _EK_WANTED:  # restricted and decrypt set, sign clear
        raise _fail(Reason.EK_ATTRIBUTES,
                    f"objectAttributes 0x{attrs:08x}: an EK is a restricted decryption key that does not sign")
    if typ != TPM_ALG.RSA and typ != TPM_ALG.ECC:
        raise _fail(Reason.UNSUPPORTED_FORMAT, f"EK of type 0x{typ:04x}: only RSA and ECC EKs")
    if sym_alg != TPM_ALG.AES or sym_mode != TPM_ALG.CFB or sym_bits not in (128, 192, 256):
        raise _fail(Reason.EK_ATTRIBUTES,
                    f"EK symmetric definition 0x{sym_alg:04x}/{sym_bits}/0x{sym_mode:04x}: "
                    "a storage key needs AES-CFB")
    if name_alg not in crypto.SUPPORTED_HASHES:
        raise _fail(Reason.UNSUPPORTED_FORMAT, f"EK nameAlg 0x{name_alg:04x}")
    try:
        if typ == TPM_ALG.RSA:
            if size_or_curve < MIN_RSA_EK_BITS:
                raise _fail(Reason.WEAK_KEY, f"RSA EK of {size_or_curve} bits")
            key = rsa_public_key(unique, exponent)
        else:
            if size_or_curve in WEAK_EK_CURVES:
                raise _fail(Reason.WEAK_KEY, f"ECC EK on {TPM_ECC_CURVE(size_or_curve).name}")
            key = ecc_public_key(size_or_curve, unique, y)
    except ParseError as exc:
        if typ == TPM_ALG.ECC and size_or_curve not in CURVE_BYTES:
            raise _fail(Reason.UNSUPPORTED_FORMAT, f"EK curve 0x{size_or_curve:04x}") from exc
        raise _fail(Reason.MALFORMED, f"EK public key: {exc}") from exc
    if typ == TPM_ALG.RSA:
        assert isinstance(key, rsa.RSAPublicKey)
        if key.key_size < MIN_RSA_EK_BITS:  # keyBits is only a claim
            raise _fail(Reason.WEAK_KEY, f"RSA EK modulus of {key.key_size} bits")
        if not _oaep_usable(key, name_alg):
            raise _fail(Reason.UNSUPPORTED_FORMAT,
                        f"RSA EK nameAlg 0x{name_alg:04x}: no RSA-OAEP with this hash here")
    return key, name_alg, sym_alg, sym_bits, area


def _no_fields(_tpmt: bytes) -> None:
    """No fast reading: the full parse, for a caller that needs the public area."""
    return None


def _oaep_usable(key: rsa.RSAPublicKey, name_alg: int) -> bool:
    """Whether `cryptography` encrypts RSA-OAEP with `name_alg` (the credential seed's padding);
    probed once per hash with the EK itself (one public-key operation)."""
    known = _OAEP_HASHES.get(name_alg)
    if known is None:
        try:
            key.encrypt(b"\0", crypto.identity_oaep(name_alg))
            known = True
        except (UnsupportedAlgorithm, ValueError):
            known = False
        _OAEP_HASHES[name_alg] = known
    return known


def make_credential(
    ek_public: EkPublicInput,
    ak_name: bytes | AkPublic,
    secret: bytes | None = None,
    *,
    name_what: str = "AK Name",
) -> tuple[CredentialChallenge, bytes]:
    """Encrypt a secret to the EK for the AK Name; return (challenge, secret).

    ``ek_public``: the EK's TPM2B_PUBLIC/TPMT_PUBLIC bytes, an ``EkInfo``, or a `cryptography`
    RSA/EC public key (then the TCG default template is assumed: nameAlg SHA-256, AES-128).
    A public area must be a restricted decryption key with an AES-CFB symmetric definition
    (EK_ATTRIBUTES otherwise). ``ak_name``: the AK's Name (``AkPublic.name``) or the AkPublic.
    ``secret``: random 32 bytes by default; at most the digest size of the EK's nameAlg.
    ``name_what`` names where a Name that is not one came from (e.g. a command-line option).
    Send ``challenge`` (``to_bytes()`` / ``to_json()``) to the device, keep ``secret``.
    """
    key, name_alg, sym_alg, sym_bits, _area = _ek_parameters(ek_public, need_area=False)
    name = ak_name.name if isinstance(ak_name, AkPublic) else bytes(ak_name)
    size = HASH_SIZES[name_alg]
    if len(name) < 2 or HASH_SIZES.get(int.from_bytes(name[:2], "big")) != len(name) - 2:
        raise _fail(Reason.MALFORMED, f"{name_what}: {len(name)} bytes are not a TPM object Name "
                    "(a 2-byte hash algorithm and the digest of the key's public area)")
    if secret is None:
        secret = os.urandom(min(DEFAULT_SECRET_SIZE, size))
    elif not 1 <= len(secret) <= size:
        raise ValueError(f"secret must be 1..{size} bytes for this EK's nameAlg, not {len(secret)}")
    try:
        id_object, encrypted_secret = crypto.make_credential(
            key, ek_name_alg=name_alg, sym_alg=sym_alg, sym_bits=sym_bits, ak_name=name, secret=bytes(secret))
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _fail(Reason.UNSUPPORTED_FORMAT, f"cannot make a credential for this EK: {exc}") from exc
    return CredentialChallenge(id_object, encrypted_secret), bytes(secret)


def verify_activation(secret: bytes, returned: bytes) -> None:
    """Raise CREDENTIAL_MISMATCH unless the device returned the challenge's secret."""
    if not hmac.compare_digest(bytes(secret), bytes(returned)):
        raise _fail(Reason.CREDENTIAL_MISMATCH, "the device returned another secret")
