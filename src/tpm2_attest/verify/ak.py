"""Attestation keys: ``AkPublic`` (a checked AK public area), ``check_ak`` and ``verify_creation``.

An AK is acceptable when its public area says the TPM made it and keeps it (fixedTPM,
fixedParent, sensitiveDataOrigin), it only signs TPM-generated data (restricted, sign, not
decrypt), its key is strong enough (RSA >= 2048 bits, NIST P-256/P-384/P-521) and its own
signing scheme is one we verify (RSASSA, RSAPSS, ECDSA with SHA-1/256/384/512). Everything
the quote hot path needs (the `cryptography` key, padding/hash objects, the expected
TPMT_SIGNATURE header) is computed once here and cached on the ``AkPublic``.

Nonces in creation attestations: a ``TPW1`` or ``TPP1`` blob (TPM2_CertifyCreation) carries
the enrollment nonce verbatim in ``attest.extraData``. A Windows PCP blob (``PCP1``/``PCP2``)
carries ``SHA-1(nonce)``: the provider's PCP_TPM12_IDBINDING property takes a 20-byte
SHA-1 nonce and places it both in ``creationData.outsideInfo`` and in ``attest.extraData``,
so ``check_ak`` compares both against ``SHA-1(nonce)`` for PCP blobs.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import struct
from collections.abc import Callable
from contextlib import suppress
from dataclasses import FrozenInstanceError
from typing import Any, Final, TypeAlias

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from .._frozen import frozen
from ..errors import TpmError
from ..evidence import AK_FORMATS, AkBlob, AkFormat
from ..tpm2.constants import (
    HASH_SIZES,
    TPM_ALG,
    TPM_ECC_CURVE,
    TPM_GENERATED_VALUE,
    TPM_ST,
    TPMA_OBJECT,
)
from ..tpm2.keys import (
    CURVE_BYTES,
    PublicFields,
    PublicKey,
    area_fields,
    ecc_point_of,
    ecc_public_key,
    public_der,
    public_fields,
    read_fields,
    rsa_public_key,
)
from ..tpm2.marshal import ParseError
from ..tpm2.structures import (
    TPMS_ATTEST,
    TPMS_CLOCK_INFO,
    TPMS_CREATION_DATA,
    TPMS_CREATION_INFO,
    TPMS_ECC_PARMS,
    TPMS_RSA_PARMS,
    TPMT_PUBLIC,
    TPMT_SCHEME,
)
from .errors import Reason, VerificationError

__all__ = ["AkPublic", "CreationResult", "check_ak", "verify_creation"]

AK_REQUIRED: Final = int(
    TPMA_OBJECT.fixedTPM
    | TPMA_OBJECT.fixedParent
    | TPMA_OBJECT.sensitiveDataOrigin
    | TPMA_OBJECT.restricted
    | TPMA_OBJECT.sign_encrypt
)
"""Object attributes every AK must have."""
AK_FORBIDDEN: Final = int(TPMA_OBJECT.decrypt)
"""Object attributes no AK may have."""
MIN_RSA_BITS: Final = 2048
NIST_CURVES: Final = frozenset({TPM_ECC_CURVE.NIST_P256, TPM_ECC_CURVE.NIST_P384, TPM_ECC_CURVE.NIST_P521})

_HASHES: Final[dict[int, tuple[Callable[[], hashes.HashAlgorithm], Callable[..., Any]]]] = {
    TPM_ALG.SHA1: (hashes.SHA1, hashlib.sha1),
    TPM_ALG.SHA256: (hashes.SHA256, hashlib.sha256),
    TPM_ALG.SHA384: (hashes.SHA384, hashlib.sha384),
    TPM_ALG.SHA512: (hashes.SHA512, hashlib.sha512),
}
"""Hashes we verify signatures with: (`cryptography` class, hashlib constructor)."""

_DIGEST_INFO: Final[dict[int, bytes]] = {
    TPM_ALG.SHA1: bytes.fromhex("3021300906052b0e03021a05000414"),
    TPM_ALG.SHA256: bytes.fromhex("3031300d060960864801650304020105000420"),
    TPM_ALG.SHA384: bytes.fromhex("3041300d060960864801650304020205000430"),
    TPM_ALG.SHA512: bytes.fromhex("3051300d060960864801650304020305000440"),
}
"""DER DigestInfo before the digest in a PKCS#1 v1.5 signature (RFC 8017 9.2, note 1; NULL
parameters, as TPMs write it): an RSASSA signature verifies when what the public operation
recovers, after OpenSSL has checked the 00 01 FF..FF 00 frame, is exactly this || H(message).
"""

_KIND_RSASSA: Final = 0
_KIND_RSAPSS: Final = 1
_KIND_ECDSA: Final = 2
_SCHEMES: Final[dict[tuple[int, int], int]] = {
    (TPM_ALG.RSA, TPM_ALG.RSASSA): _KIND_RSASSA,
    (TPM_ALG.RSA, TPM_ALG.RSAPSS): _KIND_RSAPSS,
    (TPM_ALG.ECC, TPM_ALG.ECDSA): _KIND_ECDSA,
}
_U16: Final = struct.Struct(">H")
_SHA1: Final = int(TPM_ALG.SHA1)
_BLOB_MAGICS: Final = frozenset(f.encode("ascii") for f in AK_FORMATS)
_NULL: Final = int(TPM_ALG.NULL)
_RSA: Final = int(TPM_ALG.RSA)
_ECC: Final = int(TPM_ALG.ECC)
_new = object.__new__
_set = object.__setattr__
_SIG_HEAD: Final = struct.Struct(">HH")
_ATTEST_HEAD: Final = struct.Struct(">IH")

def _fail(reason: Reason, detail: str) -> VerificationError:
    return VerificationError(reason, detail)


def parse_attest(attest: bytes, expected_type: int) -> TPMS_ATTEST:
    """Parse a signed TPMS_ATTEST: magic must be TPM_GENERATED_VALUE (BAD_MAGIC), the type the
    expected one (WRONG_TYPE), and the bytes exactly one structure (MALFORMED)."""
    if len(attest) < 6:
        raise _fail(Reason.MALFORMED, f"TPMS_ATTEST of {len(attest)} bytes")
    magic, typ = _ATTEST_HEAD.unpack_from(attest, 0)
    if magic != TPM_GENERATED_VALUE:
        raise _fail(Reason.BAD_MAGIC, f"magic 0x{magic:08x} is not TPM_GENERATED_VALUE")
    if typ != expected_type:
        raise _fail(Reason.WRONG_TYPE, f"attestation type 0x{typ:04x}, expected "
                    f"{TPM_ST(expected_type).name}")
    try:
        return TPMS_ATTEST.from_bytes(attest)
    except ParseError as exc:
        raise _fail(Reason.MALFORMED, f"TPMS_ATTEST ({TPM_ST(expected_type).name}): {exc}") from exc


def _alg_name(alg: int) -> str:
    try:
        return TPM_ALG(alg).name
    except ValueError:
        return f"0x{alg:04x}"


def _split_public(data: bytes) -> bytes:
    """The TPMT_PUBLIC bytes of a TPM2B_PUBLIC or bare TPMT_PUBLIC (same rule as parse_public)."""
    if len(data) >= 2 and _U16.unpack_from(data, 0)[0] == len(data) - 2:
        return data[2:]
    return data


def _der_int(b: bytes) -> bytes:
    b = b.lstrip(b"\0") or b"\0"
    if b[0] & 0x80:
        b = b"\0" + b
    return b"\x02" + bytes((len(b),)) + b


def ecdsa_der(r: bytes, s: bytes) -> bytes:
    """DER ``Ecdsa-Sig-Value`` of the big-endian r and s of a TPMS_SIGNATURE_ECDSA."""
    body = _der_int(r) + _der_int(s)
    n = len(body)
    if n < 0x80:
        return b"\x30" + bytes((n,)) + body
    return b"\x30\x81" + bytes((n,)) + body  # P-521 only: the body stays under 256 bytes


_PADDINGS: dict[tuple[int, int], tuple[Any, Any]] = {}
"""(kind, hash) -> (padding, DigestInfo prefix for RSASSA / Prehashed hash for RSAPSS / hash
object for ECDSA): immutable objects shared by AKs."""


def _padding(kind: int, hash_alg: int) -> tuple[Any, Any]:
    got = _PADDINGS.get((kind, hash_alg))
    if got is None:
        hash_obj = _HASHES[hash_alg][0]()
        pad: Any
        if kind == _KIND_RSASSA:
            pad = padding.PKCS1v15()
        elif kind == _KIND_RSAPSS:
            pad = padding.PSS(mgf=padding.MGF1(hash_obj), salt_length=padding.PSS.AUTO)
        else:
            pad = ec.ECDSA(hash_obj)
        # RSA: the message is hashed by us (hashlib). RSASSA is checked as RFC 8017 8.2.2 does
        # (EMSA-PKCS1-v1_5 encode and compare) on what the public operation recovers, which
        # costs OpenSSL less than its verify; RSAPSS by the key's verify of the digest.
        second = (_DIGEST_INFO[hash_alg] if kind == _KIND_RSASSA
                  else utils.Prehashed(hash_obj) if kind == _KIND_RSAPSS else hash_obj)
        got = _PADDINGS[kind, hash_alg] = (pad, second)
    return got


class AkPublic:
    """A checked AK public area and everything derived from it (immutable).

    ``public`` is the TPM2B_PUBLIC bytes, ``public_area`` the parsed TPMT_PUBLIC,
    ``public_der`` SubjectPublicKeyInfo DER, ``name`` the TPM Name (nameAlg || H(public
    area bytes as received)), ``key`` the `cryptography` public key, ``scheme`` the signing
    scheme and hash the key itself mandates, ``format`` the AK blob format it came from
    (``TPW1``/``PCP1``/``PCP2``) or None. Build it with :meth:`from_public` or ``check_ak``.
    Two AkPublic are equal when they are the same key (same Name).

    Only what every check needs is computed when it is built; ``public_area``,
    ``public_der``, ``name`` and ``scheme`` are derived from the checked bytes on first use.
    """

    __slots__ = ("_area", "_der", "_e", "_fields", "_name", "_q", "_tpmt", "format", "key", "public")

    public: bytes
    key: PublicKey
    format: AkFormat | None
    # Private: the checked fields and bytes, the lazily derived views (unset until first use),
    # and the hot-path tuples verify.quote unpacks in one step:
    # _q = (kind, expected TPMT_SIGNATURE head, RSA signature length, key.verify (RSASSA:
    #       key.recover_data_from_signature), padding, DigestInfo prefix for RSASSA /
    #       Prehashed(hash) for RSAPSS, hashlib constructor of the scheme hash, uses SHA-1);
    # _e = (coordinate size, u16 of it, DER heads, DER mids, full ECDSA signature length).
    _fields: PublicFields
    _tpmt: bytes
    _area: TPMT_PUBLIC
    _der: bytes
    _name: bytes
    _q: tuple[int, bytes, int, Callable[..., Any], Any, Any, Callable[..., Any], bool]
    _e: _EcdsaFrames

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AkPublic):
            return NotImplemented
        return self.name == other.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        typ, _n, _a, scheme, hash_alg = self._fields[:5]
        return (f"AkPublic({_alg_name(typ)} {_alg_name(scheme)}-{_alg_name(hash_alg)}, "
                f"name={self.name.hex()}, format={self.format})")

    @property
    def public_area(self) -> TPMT_PUBLIC:
        """The parsed TPMT_PUBLIC."""
        try:
            return self._area
        except AttributeError:
            area = TPMT_PUBLIC.from_bytes(self._tpmt)  # these bytes passed every check already
            _set(self, "_area", area)
            return area

    @property
    def public_der(self) -> bytes:
        """SubjectPublicKeyInfo DER of the AK."""
        try:
            return self._der
        except AttributeError:
            der = public_der(self.key)
            _set(self, "_der", der)
            return der

    @property
    def name(self) -> bytes:
        """The TPM Name: nameAlg || H_nameAlg(the public area bytes as received)."""
        try:
            return self._name
        except AttributeError:
            alg = self._fields[1]
            name: bytes = _U16.pack(alg) + _HASHES[alg][1](self._tpmt).digest()
            _set(self, "_name", name)
            return name

    @property
    def scheme(self) -> TPMT_SCHEME:
        """The signing scheme and hash the key itself mandates."""
        return TPMT_SCHEME(self._fields[3], self._fields[4])

    @property
    def name_alg(self) -> int:
        """The AK's nameAlg (TPM_ALG id)."""
        return self._fields[1]

    @property
    def hash_alg(self) -> int:
        """The hash of the AK's signing scheme (also the hash of a quote's pcrDigest)."""
        return self._fields[4]

    @classmethod
    def from_public(cls, public: bytes | bytearray | memoryview | TPMT_PUBLIC, *,
                    allow_sha1: bool = True) -> AkPublic:
        """Check a TPM2B_PUBLIC or TPMT_PUBLIC (e.g. tpm2-tools' ``ak.pub``) is a usable AK.

        Raises ``VerificationError``: MALFORMED (does not parse exactly), AK_ATTRIBUTES (not a
        fixedTPM/fixedParent/sensitiveDataOrigin restricted signing key, or no signing
        scheme), UNSUPPORTED_FORMAT (key type, scheme or hash we do not verify), WEAK_KEY
        (RSA < 2048 bits, a non-NIST curve, or SHA-1 when ``allow_sha1`` is False).
        """
        if isinstance(public, TPMT_PUBLIC):
            return cls._build(area_fields(public), public.to_bytes(), public, allow_sha1, None)
        return cls._from_tpmt(_split_public(bytes(public)), allow_sha1, None)

    @classmethod
    def _from_tpmt(cls, tpmt: bytes, allow_sha1: bool, fmt: AkFormat | None) -> AkPublic:
        """Check TPMT_PUBLIC bytes: the usual shapes by one unpack, anything else parsed in full."""
        try:
            fields, area = read_fields(tpmt, public_fields, area_fields)
        except ParseError as exc:
            raise _fail(Reason.MALFORMED, f"AK public area: {exc}") from exc
        return cls._build(fields, tpmt, area, allow_sha1, fmt)

    @classmethod
    def from_key(cls, key: PublicKey, *, scheme: int | None = None, hash_alg: int = TPM_ALG.SHA256,
                 allow_sha1: bool = True) -> AkPublic:
        """An AK known only by its key (PEM/DER, e.g. ``tpm2_createak -f pem``), as
        ``tpm2_checkquote -u ak.pem`` takes it: the public area is the one our AK template
        gives that key, with the signing scheme ``scheme`` (default RSASSA or ECDSA) and
        ``hash_alg``. A bare key carries no attributes: that it is a restricted TPM key is
        the caller's claim, not checked, and its Name is not the device's AK Name."""
        from ..tpm2.templates import AK_ECC_TEMPLATE, AK_RSA_TEMPLATE, SYM_NULL

        if isinstance(key, rsa.RSAPublicKey):
            nums = key.public_numbers()
            exponent = 0 if nums.e == 65537 else nums.e
            params: TPMS_RSA_PARMS | TPMS_ECC_PARMS = TPMS_RSA_PARMS(
                SYM_NULL, TPMT_SCHEME(scheme or TPM_ALG.RSASSA, hash_alg), key.key_size, exponent)
            unique: Any = nums.n.to_bytes((key.key_size + 7) // 8, "big")
            area = TPMT_PUBLIC(AK_RSA_TEMPLATE.type, AK_RSA_TEMPLATE.name_alg,
                               AK_RSA_TEMPLATE.object_attributes, b"", params, unique)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            try:
                curve, unique = ecc_point_of(key)
            except ValueError as exc:
                raise _fail(Reason.WEAK_KEY, str(exc)) from None
            params = TPMS_ECC_PARMS(SYM_NULL, TPMT_SCHEME(scheme or TPM_ALG.ECDSA, hash_alg), curve,
                                    TPMT_SCHEME())
            area = TPMT_PUBLIC(AK_ECC_TEMPLATE.type, AK_ECC_TEMPLATE.name_alg,
                               AK_ECC_TEMPLATE.object_attributes, b"", params, unique)
        else:
            raise _fail(Reason.UNSUPPORTED_FORMAT, f"{type(key).__name__}: only RSA and EC keys sign quotes")
        return cls._build(area_fields(area), area.to_bytes(), area, allow_sha1, None)

    @classmethod
    def _build(cls, fields: PublicFields, tpmt: bytes, area: TPMT_PUBLIC | None, allow_sha1: bool,
               fmt: AkFormat | None) -> AkPublic:
        typ, name_alg, attrs, scheme, hash_alg, key_bits, exponent, curve_id, unique, y = fields
        missing = AK_REQUIRED & ~attrs
        if missing or attrs & AK_FORBIDDEN:
            problems = [f"{f.name} clear" for f in TPMA_OBJECT if f & missing]
            if attrs & AK_FORBIDDEN:
                problems.append("decrypt set")
            raise _fail(Reason.AK_ATTRIBUTES,
                        f"objectAttributes 0x{attrs:08x} is not a restricted signing key "
                        f"held by the TPM ({', '.join(problems)})")
        if typ != _RSA and typ != _ECC:
            raise _fail(Reason.UNSUPPORTED_FORMAT, f"AK of type {_alg_name(typ)}: only RSA and ECC AKs")
        if scheme == _NULL:
            raise _fail(Reason.AK_ATTRIBUTES, "a restricted signing key must name its signing scheme")
        kind = _SCHEMES.get((typ, scheme))
        if kind is None:
            raise _fail(Reason.UNSUPPORTED_FORMAT,
                        f"signing scheme {_alg_name(scheme)} of a {_alg_name(typ)} key")
        hash_pair = _HASHES.get(hash_alg)
        if hash_pair is None:
            raise _fail(Reason.UNSUPPORTED_FORMAT, f"signing hash {_alg_name(hash_alg)}")
        if name_alg not in _HASHES:
            raise _fail(Reason.UNSUPPORTED_FORMAT, f"nameAlg {_alg_name(name_alg)}")
        sha1 = hash_alg == _SHA1 or name_alg == _SHA1
        if sha1 and not allow_sha1:
            raise _fail(Reason.WEAK_KEY, "the AK uses SHA-1, which is refused")
        coord = 0
        key: PublicKey
        try:
            if typ == _RSA:
                bits = ((len(unique) - 1) * 8 + unique[0].bit_length() if unique and unique[0]
                        else int.from_bytes(unique, "big").bit_length())
                if key_bits < MIN_RSA_BITS or bits < MIN_RSA_BITS:
                    raise _fail(Reason.WEAK_KEY, f"RSA key of {min(key_bits, bits)} bits (< {MIN_RSA_BITS})")
                if key_bits % 8 or len(unique) * 8 != key_bits or bits != key_bits:
                    raise _fail(Reason.MALFORMED, f"RSA modulus of {bits} bits for keyBits {key_bits}")
                key = rsa_public_key(unique, exponent)
            else:
                if curve_id not in NIST_CURVES:
                    try:
                        curve = TPM_ECC_CURVE(curve_id).name
                    except ValueError:
                        curve = f"0x{curve_id:04x}"
                    raise _fail(Reason.WEAK_KEY, f"curve {curve}: only NIST P-256, P-384 and P-521")
                coord = CURVE_BYTES[curve_id]
                key = ecc_public_key(curve_id, unique, y)
        except ParseError as exc:
            raise _fail(Reason.MALFORMED, f"AK public key: {exc}") from exc

        pad, hash_obj = _padding(kind, hash_alg)
        head = _SIG_HEAD.pack(scheme, hash_alg)
        sig_len = 0
        if typ == _RSA:
            head += _U16.pack(key_bits // 8)
            sig_len = len(head) + key_bits // 8

        self = _new(cls)
        _set(self, "public", _U16.pack(len(tpmt)) + tpmt)
        _set(self, "key", key)
        _set(self, "format", fmt)
        _set(self, "_fields", fields)
        _set(self, "_tpmt", tpmt)
        if area is not None:
            _set(self, "_area", area)
        verify = key.recover_data_from_signature if kind == _KIND_RSASSA else key.verify  # type: ignore[union-attr]
        _set(self, "_q", (kind, head, sig_len, verify, pad, hash_obj, hash_pair[1], sha1))
        _set(self, "_e", _ecdsa_frames(coord) if coord else _NO_ECDSA)
        return self

    def _with_format(self, fmt: AkFormat) -> AkPublic:
        other = _new(AkPublic)
        for slot in AkPublic.__slots__:
            with suppress(AttributeError):  # a view not derived yet
                _set(other, slot, getattr(self, slot))
        _set(other, "format", fmt)
        return other

    def verify_signature(self, message: bytes, signature: bytes, *, allow_sha1: bool = True) -> None:
        """Check a TPMT_SIGNATURE over ``message`` made with this AK under its own scheme.

        Raises SCHEME_MISMATCH (another algorithm or hash than the key's scheme), WEAK_KEY
        (SHA-1 refused), MALFORMED (not exactly one TPMT_SIGNATURE) or BAD_SIGNATURE.
        """
        kind, head, sig_len, verify, pad, hash_obj, pcr_hash, sha1 = self._q
        if sha1 and not allow_sha1:
            raise _fail(Reason.WEAK_KEY, "the AK uses SHA-1, which is refused")
        sig = bytes(signature)
        if sig[:4] != head[:4]:
            if len(sig) < 4:
                raise _fail(Reason.MALFORMED, f"TPMT_SIGNATURE of {len(sig)} bytes")
            alg, h = _SIG_HEAD.unpack_from(sig, 0)
            raise _fail(Reason.SCHEME_MISMATCH,
                        f"signature {_alg_name(alg)}-{_alg_name(h)} but the AK's scheme is "
                        f"{_alg_name(self._fields[3])}-{_alg_name(self._fields[4])}")
        try:
            if kind == _KIND_ECDSA:
                verify(self._ecdsa_signature(sig), message, pad)
            else:
                if len(sig) != sig_len or sig[4:6] != head[4:6]:
                    raise _fail(Reason.MALFORMED,
                                f"RSA TPMT_SIGNATURE of {len(sig)} bytes, expected {sig_len}")
                if kind == _KIND_RSASSA:
                    if verify(sig[6:], pad, None) != hash_obj + pcr_hash(message).digest():
                        raise InvalidSignature
                else:
                    verify(sig[6:], pcr_hash(message).digest(), pad, hash_obj)
        except InvalidSignature:
            raise _fail(Reason.BAD_SIGNATURE, "the signature does not verify under the AK") from None

    def _ecdsa_signature(self, sig: bytes) -> bytes:
        """DER signature from an ECDSA TPMT_SIGNATURE (exact length, coordinates in range)."""
        c, coord_u16, heads, mids, full_len = self._e
        if len(sig) == full_len and sig[4:6] == coord_u16 and sig[6 + c : 8 + c] == coord_u16:
            # Full-width r and s (what TPMs send): splice them into a prepared DER frame.
            r0 = sig[6]
            s0 = sig[8 + c]
            if r0 and s0:
                hs = s0 >> 7
                return heads[(r0 >> 7) << 1 | hs] + sig[6 : 6 + c] + mids[hs] + sig[8 + c :]
        try:
            (rn,) = _U16.unpack_from(sig, 4)
            (sn,) = _U16.unpack_from(sig, 6 + rn)
        except struct.error:
            raise _fail(Reason.MALFORMED, "truncated ECDSA TPMT_SIGNATURE") from None
        if 8 + rn + sn != len(sig):
            raise _fail(Reason.MALFORMED, "ECDSA TPMT_SIGNATURE with wrong lengths or trailing bytes")
        if not 0 < rn <= c or not 0 < sn <= c:
            raise _fail(Reason.MALFORMED, "ECDSA r or s larger than the curve")
        return ecdsa_der(sig[6 : 6 + rn], sig[8 + rn :])


_EcdsaFrames: TypeAlias = tuple[int, bytes, tuple[bytes, ...], tuple[bytes, ...], int]
_NO_ECDSA: Final[_EcdsaFrames] = (0, b"", (), (), -1)


@functools.cache
def _ecdsa_frames(coord: int) -> _EcdsaFrames:
    """(coordinate size, its u16, DER heads, DER mids, full TPMT_SIGNATURE length) for a curve."""
    heads, mids = _der_templates(coord)
    return coord, _U16.pack(coord), heads, mids, 8 + 2 * coord


@functools.cache


def _der_templates(coord: int) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """DER frames for full-width r and s without a leading zero byte.

    heads[hr << 1 | hs] = SEQUENCE header + INTEGER header of r (+ 0x00 when r's top bit is
    set, hr); mids[hs] = INTEGER header of s (+ 0x00 when s's top bit is set)."""
    heads = []
    for hr in (0, 1):
        for hs in (0, 1):
            n = 2 + coord + hr + 2 + coord + hs
            seq = b"\x30" + (bytes((n,)) if n < 0x80 else b"\x81" + bytes((n,)))
            heads.append(seq + b"\x02" + bytes((coord + hr,)) + b"\x00" * hr)
    mids = tuple(b"\x02" + bytes((coord + hs,)) + b"\x00" * hs for hs in (0, 1))
    return tuple(heads), mids


@frozen
class CreationResult:
    """What a verified creation attestation says (returned only when every check passed)."""

    object_name: bytes
    """Name of the certified object."""
    creation_data: TPMS_CREATION_DATA
    extra_data: bytes
    """attest.extraData (the qualifying data / nonce)."""
    signer_name: bytes
    """attest.qualifiedSigner."""
    clock_info: TPMS_CLOCK_INFO
    firmware_version: int


def _as_signer(signer: AkPublic | bytes | bytearray | memoryview | TPMT_PUBLIC, allow_sha1: bool) -> AkPublic:
    if isinstance(signer, AkPublic):
        return signer
    return AkPublic.from_public(signer, allow_sha1=allow_sha1)


def _creation_bytes(creation_data: bytes) -> bytes:
    """TPMS_CREATION_DATA bytes from TPMS or TPM2B form.

    A TPMS_CREATION_DATA starts with a u32 count whose high u16 is 0, so a leading u16 equal
    to the rest of the input can only be a TPM2B size."""
    if len(creation_data) >= 2 and _U16.unpack_from(creation_data, 0)[0] == len(creation_data) - 2:
        return creation_data[2:]
    return creation_data


def verify_creation(
    signer: AkPublic | bytes | bytearray | memoryview | TPMT_PUBLIC,
    public: bytes | bytearray | memoryview,
    creation_data: bytes | bytearray | memoryview,
    attest: bytes | bytearray | memoryview,
    signature: bytes | bytearray | memoryview,
    *,
    nonce: bytes | None = None,
    allow_sha1: bool = True,
) -> CreationResult:
    """Check that ``signer`` certified the creation of the key ``public`` (TPM2_CertifyCreation).

    ``public`` is the created key's TPM2B_PUBLIC/TPMT_PUBLIC, ``creation_data`` its
    TPMS_CREATION_DATA (or TPM2B_CREATION_DATA), ``attest`` the TPMS_ATTEST bytes and
    ``signature`` the TPMT_SIGNATURE over them. Order: signature (under the signer's own
    scheme), magic, type ATTEST_CREATION, objectName == Name(public), creationHash ==
    H_nameAlg(creation data), and ``nonce`` == extraData (constant time) when given.
    """
    ak = _as_signer(signer, allow_sha1)
    attest_b = bytes(attest)
    ak.verify_signature(attest_b, bytes(signature), allow_sha1=allow_sha1)
    att = parse_attest(attest_b, TPM_ST.ATTEST_CREATION)
    info = att.attested
    assert isinstance(info, TPMS_CREATION_INFO)

    tpmt = _split_public(bytes(public))
    try:
        area = TPMT_PUBLIC.from_bytes(tpmt)
    except ParseError as exc:
        raise _fail(Reason.MALFORMED, f"certified public area: {exc}") from exc
    hash_pair = _HASHES.get(area.name_alg)
    if hash_pair is None:
        raise _fail(Reason.UNSUPPORTED_FORMAT, f"nameAlg {_alg_name(area.name_alg)}")
    if area.name_alg == TPM_ALG.SHA1 and not allow_sha1:  # its Name and creationHash are SHA-1
        raise _fail(Reason.WEAK_KEY, "the certified object's nameAlg is SHA-1, which is refused")
    name = _U16.pack(area.name_alg) + hash_pair[1](tpmt).digest()
    if info.object_name != name:
        raise _fail(Reason.NAME_MISMATCH, "the attested objectName is not the Name of the public area")

    cd = _creation_bytes(bytes(creation_data))
    try:
        cd_struct = TPMS_CREATION_DATA.from_bytes(cd)
    except ParseError as exc:
        raise _fail(Reason.MALFORMED, f"creation data: {exc}") from exc
    if len(info.creation_hash) != HASH_SIZES[area.name_alg] or info.creation_hash != hash_pair[1](cd).digest():
        raise _fail(Reason.CREATION_HASH_MISMATCH,
                    "creationHash is not the nameAlg hash of the presented creation data")
    if nonce is not None and not hmac.compare_digest(att.extra_data, bytes(nonce)):
        raise _fail(Reason.NONCE_MISMATCH, "extraData of the creation attestation is not the nonce")
    return CreationResult(name, cd_struct, att.extra_data, att.qualified_signer, att.clock_info,
                          att.firmware_version)


def _load_blob(blob: AkBlob | bytes | bytearray | memoryview | str) -> AkBlob:
    if isinstance(blob, AkBlob):
        return blob
    if not isinstance(blob, str):
        data = bytes(blob)
        if data[:4] in _BLOB_MAGICS:  # binary: straight to the parser (no copies for JSON sniffing)
            try:
                return AkBlob.from_bytes(data)
            except TpmError as exc:
                raise _fail(Reason.MALFORMED, str(exc)) from exc
        head = data.lstrip()[:1]
        if head != b"{" and data[:4].decode("ascii", "replace") not in AK_FORMATS:
            raise _fail(Reason.UNSUPPORTED_FORMAT,
                        f"AK blob magic {data[:4]!r}: expected TPW1, TPP1, PCP1 or PCP2")
        blob = data
    try:
        return AkBlob.load(blob)
    except TpmError as exc:
        raise _fail(Reason.MALFORMED, str(exc)) from exc


def check_ak(blob: AkBlob | bytes | bytearray | memoryview | str, *, nonce: bytes | None = None,
             allow_sha1: bool = True) -> AkPublic:
    """Check an AK blob (``TPW1``, ``TPP1``, ``PCP1`` or ``PCP2``; binary, JSON or AkBlob) and
    return its key.

    Checks the key (see :meth:`AkPublic.from_public`) and its creation attestation, signed by
    the AK itself (:func:`verify_creation`). With ``nonce``: a ``TPW1``/``TPP1`` blob's extraData must
    equal the nonce; a PCP blob's extraData and creationData.outsideInfo must both equal
    SHA-1(nonce), because PCP's IDBINDING takes a SHA-1 digest as its nonce. ``allow_sha1``
    False refuses SHA-1 keys, among them every PCP identity key (RSASSA-SHA1).

    What it does not prove: that a TPM made the key. The attributes are claims and the
    creation attestation is signed by the key itself, so a software key can pose as an AK
    here. Tie the AK to a TPM with a credential activation against a certified EK
    (``make_credential``) or with an AK certificate (``verify_ak_certificate``).
    """
    ak_blob = _load_blob(blob)
    pcp = ak_blob.format in ("PCP1", "PCP2")
    expected = None
    if nonce is not None:
        expected = hashlib.sha1(bytes(nonce)).digest() if pcp else bytes(nonce)
    views = ak_blob.__dict__
    if "_from_bytes" not in views:
        # An AkBlob not read from bytes: its parts may not parse; verify_creation says which.
        ak = AkPublic.from_public(ak_blob.public, allow_sha1=allow_sha1)._with_format(ak_blob.format)
        res = verify_creation(ak, ak_blob.public, ak_blob.creation_data, ak_blob.attest, ak_blob.signature,
                              nonce=expected, allow_sha1=allow_sha1)
        outside_info = res.creation_data.outside_info
    else:
        # Read from bytes: every part was parsed once by AkBlob.from_bytes; check on those parses
        # exactly what verify_creation checks, in its order (the certified object is the AK).
        fields = views.get("_public_fields")
        area = None
        if fields is None:
            area = ak_blob.public_area
            fields = area_fields(area)
        ak = AkPublic._build(fields, ak_blob.public[2:], area, allow_sha1, ak_blob.format)
        ak.verify_signature(ak_blob.attest, ak_blob.signature, allow_sha1=allow_sha1)
        got = views.get("_creation_attest")
        typ: int
        if got is not None:
            magic, typ, extra, object_name, creation_hash = got[0], TPM_ST.ATTEST_CREATION, got[2], got[3], got[4]
        else:
            att = ak_blob.attest_struct
            magic, typ, extra = att.magic, att.type, att.extra_data
            object_name = creation_hash = b""
            if isinstance(att.attested, TPMS_CREATION_INFO):
                object_name, creation_hash = att.attested.object_name, att.attested.creation_hash
        if magic != TPM_GENERATED_VALUE:
            raise _fail(Reason.BAD_MAGIC, f"magic 0x{magic:08x} is not TPM_GENERATED_VALUE")
        if typ != TPM_ST.ATTEST_CREATION:
            raise _fail(Reason.WRONG_TYPE, f"attestation type 0x{typ:04x}, expected ATTEST_CREATION")
        name_alg = fields[1]
        name = _U16.pack(name_alg) + _HASHES[name_alg][1](ak._tpmt).digest()  # ak.name, computed once
        _set(ak, "_name", name)
        if object_name != name:  # nameAlg is one of ours (checked with the AK) and allowed
            raise _fail(Reason.NAME_MISMATCH, "the attested objectName is not the Name of the public area")
        if len(creation_hash) != HASH_SIZES[name_alg] or creation_hash != _HASHES[name_alg][1](
                ak_blob.creation_data).digest():
            raise _fail(Reason.CREATION_HASH_MISMATCH,
                        "creationHash is not the nameAlg hash of the presented creation data")
        if expected is not None and not hmac.compare_digest(extra, expected):
            raise _fail(Reason.NONCE_MISMATCH, "extraData of the creation attestation is not the nonce")
        kept: bytes | None = views.get("_outside_info")
        outside_info = ak_blob.creation_data_struct.outside_info if kept is None else kept
    if pcp and expected is not None and not hmac.compare_digest(outside_info, expected):
        raise _fail(Reason.NONCE_MISMATCH, "creationData.outsideInfo of the PCP blob is not SHA-1(nonce)")
    return ak
