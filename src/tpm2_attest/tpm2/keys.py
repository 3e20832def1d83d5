"""Public areas <-> `cryptography` keys, SubjectPublicKeyInfo DER, and TPM object Names."""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Callable
from typing import Any, Final, TypeAlias, TypeVar, cast

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .constants import HASH_NAMES, TPM_ALG, TPM_ECC_CURVE
from .marshal import ParseError, Reader, u16
from .structures import (
    TPM2B_PUBLIC,
    TPMS_ECC_PARMS,
    TPMS_ECC_POINT,
    TPMS_NV_PUBLIC,
    TPMS_RSA_PARMS,
    TPMT_PUBLIC,
)

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

CURVES: Final[dict[int, type[ec.EllipticCurve]]] = {
    TPM_ECC_CURVE.NIST_P192: ec.SECP192R1,
    TPM_ECC_CURVE.NIST_P224: ec.SECP224R1,
    TPM_ECC_CURVE.NIST_P256: ec.SECP256R1,
    TPM_ECC_CURVE.NIST_P384: ec.SECP384R1,
    TPM_ECC_CURVE.NIST_P521: ec.SECP521R1,
}
CURVE_IDS: Final[dict[str, int]] = {c().name: cid for cid, c in CURVES.items()}
CURVE_BYTES: Final[dict[int, int]] = {
    TPM_ECC_CURVE.NIST_P192: 24,
    TPM_ECC_CURVE.NIST_P224: 28,
    TPM_ECC_CURVE.NIST_P256: 32,
    TPM_ECC_CURVE.NIST_P384: 48,
    TPM_ECC_CURVE.NIST_P521: 66,
}
DEFAULT_RSA_EXPONENT: Final = 65537


def parse_public(data: bytes | TPMT_PUBLIC | TPM2B_PUBLIC) -> TPMT_PUBLIC:
    """Accept a TPM2B_PUBLIC or a bare TPMT_PUBLIC (e.g. tpm2-tools' ``-f tss`` vs ``tpmt``).

    The two are told apart by the leading u16: a TPM2B size equals the rest of the input,
    while a TPMT_PUBLIC starts with a type (0x0001, 0x0008, 0x0023, 0x0025).
    """
    if isinstance(data, TPMT_PUBLIC):
        return data
    if isinstance(data, TPM2B_PUBLIC):
        return data.public_area
    data = bytes(data)
    if len(data) >= 2 and int.from_bytes(data[:2], "big") == len(data) - 2:
        try:
            return TPM2B_PUBLIC.from_bytes(data).public_area
        except ParseError:
            pass
    return TPMT_PUBLIC.from_bytes(data)


def object_name(public: TPMT_PUBLIC | bytes) -> bytes:
    """The Name of an object: nameAlg (u16) || H_nameAlg(marshalled TPMT_PUBLIC)."""
    pub = parse_public(public) if isinstance(public, bytes) else public
    raw = pub.to_bytes()
    return u16(pub.name_alg) + _hash(pub.name_alg, raw)


def nv_name(nv: TPMS_NV_PUBLIC) -> bytes:
    """The Name of an NV index: nameAlg || H(marshalled TPMS_NV_PUBLIC)."""
    return u16(nv.name_alg) + _hash(nv.name_alg, nv.to_bytes())


def handle_name(handle: int) -> bytes:
    """The Name of a permanent, PCR or session handle: the handle itself (4 bytes)."""
    return handle.to_bytes(4, "big")


def _hash(alg: int, data: bytes) -> bytes:
    name = HASH_NAMES.get(alg)
    if name is None or name.startswith("sm3"):
        raise ParseError(f"unsupported name algorithm 0x{alg:04x}", None, "nameAlg")
    return hashlib.new(name, data).digest()


def rsa_public_key(modulus: bytes, exponent: int) -> rsa.RSAPublicKey:
    """The RSA key of a public area's modulus and exponent field (0 = 65537); ParseError if unusable."""
    if not modulus:
        raise ParseError("RSA public area without a modulus", None, "TPMT_PUBLIC")
    e = exponent or DEFAULT_RSA_EXPONENT
    top = modulus[0]
    if top and modulus[-1] & 1 and (len(modulus) - 1) * 8 + top.bit_length() >= 512 and 3 <= e < 1 << 32 and e & 1:
        # Full width (no leading zero byte), odd, >= 512 bits, e odd and < n: what
        # RSAPublicNumbers checks. A SubjectPublicKeyInfo from a template loads faster.
        prefix, suffix = _rsa_spki_frame(len(modulus), e, top >= 0x80)
        return cast(rsa.RSAPublicKey, serialization.load_der_public_key(prefix + modulus + suffix))
    n = int.from_bytes(modulus, "big")
    if n.bit_length() < 512 or e < 3 or e % 2 == 0:
        raise ParseError("RSA public key parameters out of range", None, "TPMT_PUBLIC")
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as exc:
        raise ParseError(f"invalid RSA public key: {exc}", None, "TPMT_PUBLIC") from exc


def _der_length(n: int) -> bytes:
    return bytes((n,)) if n < 0x80 else b"\x81" + bytes((n,)) if n < 0x100 else b"\x82" + n.to_bytes(2, "big")


@functools.lru_cache(maxsize=16)
def _rsa_spki_frame(size: int, e: int, pad: bool) -> tuple[bytes, bytes]:
    """DER SubjectPublicKeyInfo of an RSA key around its ``size``-byte modulus (with a 0x00
    before it when its top bit is set): (bytes before the modulus, bytes after it)."""
    eb = e.to_bytes((e.bit_length() + 8) // 8, "big")  # DER INTEGER: room for a sign bit
    n_len = size + pad
    ints_len = 1 + len(_der_length(n_len)) + n_len + 1 + len(_der_length(len(eb))) + len(eb)
    rsa_key_head = b"\x30" + _der_length(ints_len)
    bits_len = 1 + len(rsa_key_head) + ints_len
    alg = bytes.fromhex("300d06092a864886f70d0101010500")  # rsaEncryption, NULL parameters
    body_len = len(alg) + 1 + len(_der_length(bits_len)) + bits_len
    prefix = (b"\x30" + _der_length(body_len) + alg + b"\x03" + _der_length(bits_len) + b"\x00"
              + rsa_key_head + b"\x02" + _der_length(n_len) + b"\x00" * pad)
    return prefix, b"\x02" + _der_length(len(eb)) + eb


def ecc_public_key(curve_id: int, x: bytes, y: bytes) -> ec.EllipticCurvePublicKey:
    """The EC key of a public area's curve and point (checked to be on the curve); ParseError otherwise."""
    curve = CURVES.get(curve_id)
    if curve is None:
        raise ParseError(f"unsupported curve 0x{curve_id:04x}", None, "TPMT_PUBLIC")
    size = CURVE_BYTES[curve_id]
    if not x or not y or len(x) > size or len(y) > size:
        raise ParseError("ECC point has the wrong size for its curve", None, "TPMT_PUBLIC")
    encoded = b"\x04" + x.rjust(size, b"\0") + y.rjust(size, b"\0")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(curve(), encoded)
    except ValueError as exc:
        raise ParseError(f"ECC point not on the curve: {exc}", None, "TPMT_PUBLIC") from exc


def public_key_from_public(public: TPMT_PUBLIC | TPM2B_PUBLIC | bytes) -> PublicKey:
    """The `cryptography` public key of an RSA or ECC public area (raises ParseError otherwise)."""
    pub = parse_public(public)
    if pub.type == TPM_ALG.RSA and isinstance(pub.parameters, TPMS_RSA_PARMS):
        modulus = pub.unique
        if not isinstance(modulus, bytes):
            raise ParseError("RSA public area without a modulus", None, "TPMT_PUBLIC")
        return rsa_public_key(modulus, pub.parameters.exponent)
    if pub.type == TPM_ALG.ECC and isinstance(pub.parameters, TPMS_ECC_PARMS):
        point = pub.unique
        if not isinstance(point, TPMS_ECC_POINT):  # pragma: no cover - parse guarantees it
            raise ParseError("ECC public area without a point", None, "TPMT_PUBLIC")
        return ecc_public_key(pub.parameters.curve_id, point.x, point.y)
    raise ParseError(f"public area of type 0x{pub.type:04x} is not an asymmetric key", None, "TPMT_PUBLIC")


def public_der(public: TPMT_PUBLIC | TPM2B_PUBLIC | bytes | PublicKey) -> bytes:
    """SubjectPublicKeyInfo DER of a public area or key."""
    key = public if isinstance(public, rsa.RSAPublicKey | ec.EllipticCurvePublicKey) else public_key_from_public(public)
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def ecc_point_of(key: ec.EllipticCurvePublicKey) -> tuple[int, TPMS_ECC_POINT]:
    """(curve id, TPMS_ECC_POINT) for a `cryptography` EC key."""
    cid = CURVE_IDS.get(key.curve.name)
    if cid is None:
        raise ValueError(f"unsupported curve {key.curve.name}")
    size = CURVE_BYTES[cid]
    nums = key.public_numbers()
    return cid, TPMS_ECC_POINT(nums.x.to_bytes(size, "big"), nums.y.to_bytes(size, "big"))


def read_public_reader(r: Reader) -> TPMT_PUBLIC:
    """Read a TPM2B_PUBLIC from a reader and return its public area."""
    return TPM2B_PUBLIC.unmarshal(r).public_area


_TPMT_HEAD: Final = struct.Struct(">HHIH")
_SHAPES: dict[tuple[str, int, int, int], struct.Struct] = {}
"""(parameters format, type, authPolicy size, unique size) -> the struct of a public area of that shape."""
_MAX_SHAPES: Final = 64
_NULL: Final = int(TPM_ALG.NULL)
_RSA: Final = int(TPM_ALG.RSA)
_ECC: Final = int(TPM_ALG.ECC)
_RSA_SIG: Final = frozenset({int(TPM_ALG.RSASSA), int(TPM_ALG.RSAPSS)})
_ECDSA: Final = int(TPM_ALG.ECDSA)

PublicFields: TypeAlias = tuple[int, int, int, int, int, int, int, int, bytes, bytes]
"""(type, nameAlg, objectAttributes, scheme, scheme hash, keyBits, exponent, curveID, unique
(RSA modulus or ECC x), ECC y) of a public area: what an AkPublic is built from."""


_SIGNING_RSA: Final = "HHHHI"  # symmetric (NULL), scheme, scheme hash, keyBits, exponent
_SIGNING_ECC: Final = "HHHHH"  # symmetric (NULL), scheme, scheme hash, curveID, kdf
_STORAGE_RSA: Final = "HHHHHI"  # symmetric algorithm, keyBits, mode, scheme (NULL), keyBits, exponent
_STORAGE_ECC: Final = "HHHHHH"  # symmetric algorithm, keyBits, mode, scheme (NULL), curveID, kdf
_PARAMS_SIZE: Final = {f: struct.calcsize(">" + f) for f in (_SIGNING_RSA, _SIGNING_ECC, _STORAGE_RSA, _STORAGE_ECC)}


def _shape(params: str, typ: int, plen: int, ulen: int) -> struct.Struct:
    """The struct of a public area: type nameAlg attrs |policy| policy, ``params``, then the
    unique field: |n| n (RSA) or |x| x |y| y (ECC, coordinates of ``ulen`` bytes each)."""
    key = (params, typ, plen, ulen)
    st = _SHAPES.get(key)
    if st is None:
        point = "" if typ == _RSA else f"H{ulen}s"
        st = struct.Struct(f">HHIH{plen}x{params}H{ulen}s{point}")
        if len(_SHAPES) >= _MAX_SHAPES:
            _SHAPES.clear()
        _SHAPES[key] = st
    return st


def _unpack_area(tpmt: bytes, rsa_params: str, ecc_params: str) -> tuple[Any, ...] | None:
    """An RSA or ECC public area unpacked in one step when its framing is exact (authPolicy at most
    64 bytes, an RSA modulus of 1..512 bytes, ECC coordinates of one size up to 128 bytes, every
    size field agreeing with the length); None for anything else."""
    n = len(tpmt)
    if n < 10:
        return None
    typ, _name_alg, _attrs, plen = _TPMT_HEAD.unpack_from(tpmt)
    if plen > 64:
        return None
    if typ == _RSA:
        ulen = n - 12 - plen - _PARAMS_SIZE[rsa_params]
        if not 0 < ulen <= 512:
            return None
        f = _shape(rsa_params, typ, plen, ulen).unpack(tpmt)
        return f if f[-2] == ulen else None
    if typ == _ECC:
        rest = n - 14 - plen - _PARAMS_SIZE[ecc_params]
        if rest <= 0 or rest & 1 or rest > 256:
            return None
        c = rest >> 1
        f = _shape(ecc_params, typ, plen, c).unpack(tpmt)
        return f if f[-4] == c and f[-2] == c else None
    return None


def public_fields(tpmt: bytes) -> PublicFields | None:
    """The fields of the usual signing-key public areas (RSASSA/RSAPSS or ECDSA, no symmetric
    algorithm, no KDF) by one precompiled unpack; None for anything else, which the generic
    parser then reads (and refuses with its precise error). It accepts only bytes that the
    generic parser reads to the same values: same bounds, and every size field must agree."""
    f = _unpack_area(tpmt, _SIGNING_RSA, _SIGNING_ECC)
    if f is None:
        return None
    if f[0] == _RSA:
        typ, name_alg, attrs, _p, sym, scheme, hash_alg, bits, exponent, _u, modulus = f
        if sym != _NULL or scheme not in _RSA_SIG:
            return None
        return typ, name_alg, attrs, scheme, hash_alg, bits, exponent, 0, modulus, b""
    typ, name_alg, attrs, _p, sym, scheme, hash_alg, curve, kdf, _xs, x, _ys, y = f
    if sym != _NULL or scheme != _ECDSA or kdf != _NULL:
        return None
    return typ, name_alg, attrs, scheme, hash_alg, 0, 0, curve, x, y


def area_fields(area: TPMT_PUBLIC) -> PublicFields:
    """The same fields from a parsed public area (any type; non-RSA/ECC ones are refused later)."""
    params = area.parameters
    if isinstance(params, TPMS_RSA_PARMS):
        modulus = area.unique if isinstance(area.unique, bytes) else b""
        return (area.type, area.name_alg, area.object_attributes, params.scheme.scheme,
                params.scheme.hash_alg, params.key_bits, params.exponent, 0, modulus, b"")
    if isinstance(params, TPMS_ECC_PARMS):
        point = area.unique if isinstance(area.unique, TPMS_ECC_POINT) else TPMS_ECC_POINT()
        return (area.type, area.name_alg, area.object_attributes, params.scheme.scheme,
                params.scheme.hash_alg, 0, 0, params.curve_id, point.x, point.y)
    return area.type, area.name_alg, area.object_attributes, _NULL, _NULL, 0, 0, 0, b"", b""


StorageFields: TypeAlias = tuple[int, int, int, int, int, int, int, int, bytes, bytes]
"""(type, nameAlg, objectAttributes, symmetric algorithm, its keyBits, its mode, RSA keyBits or
ECC curveID, RSA exponent, unique (RSA modulus or ECC x), ECC y) of a storage key's public area
(an EK's): what a credential is made from."""
_XOR: Final = int(TPM_ALG.XOR)


def storage_fields(tpmt: bytes) -> StorageFields | None:
    """The fields of the usual storage-key public areas (an RSA or ECC EK: a block-cipher
    symmetric definition, no scheme, no KDF) by one precompiled unpack; None for anything else,
    which the generic parser then reads (or refuses). Like ``public_fields``, it accepts only
    bytes the generic parser reads to the same values."""
    f = _unpack_area(tpmt, _STORAGE_RSA, _STORAGE_ECC)
    if f is None:
        return None
    if f[0] == _RSA:
        typ, name_alg, attrs, _p, sym, sym_bits, mode, scheme, key_bits, exponent, _u, modulus = f
        if sym in (_NULL, _XOR) or scheme != _NULL:
            return None
        return typ, name_alg, attrs, sym, sym_bits, mode, key_bits, exponent, modulus, b""
    typ, name_alg, attrs, _p, sym, sym_bits, mode, scheme, curve, kdf, _xs, x, _ys, y = f
    if sym in (_NULL, _XOR) or scheme != _NULL or kdf != _NULL:
        return None
    return typ, name_alg, attrs, sym, sym_bits, mode, curve, 0, x, y


def storage_area_fields(area: TPMT_PUBLIC) -> StorageFields:
    """The same fields from a parsed public area (any type; the caller refuses what is not an EK)."""
    params = area.parameters
    if isinstance(params, TPMS_RSA_PARMS):
        sym = params.symmetric
        modulus = area.unique if isinstance(area.unique, bytes) else b""
        return (area.type, area.name_alg, area.object_attributes, sym.algorithm, sym.key_bits, sym.mode,
                params.key_bits, params.exponent, modulus, b"")
    if isinstance(params, TPMS_ECC_PARMS):
        sym = params.symmetric
        point = area.unique if isinstance(area.unique, TPMS_ECC_POINT) else TPMS_ECC_POINT()
        return (area.type, area.name_alg, area.object_attributes, sym.algorithm, sym.key_bits, sym.mode,
                params.curve_id, 0, point.x, point.y)
    return area.type, area.name_alg, area.object_attributes, _NULL, 0, _NULL, 0, 0, b"", b""


_F = TypeVar("_F")


def read_fields(tpmt: bytes, fast: Callable[[bytes], _F | None],
                from_area: Callable[[TPMT_PUBLIC], _F]) -> tuple[_F, TPMT_PUBLIC | None]:
    """A public area's fields by a fast reader, else by the full parse (then also returned);
    ParseError when the bytes are no public area."""
    fields = fast(tpmt)
    if fields is not None:
        return fields, None
    area = TPMT_PUBLIC.from_bytes(tpmt)
    return from_area(area), area
