"""Certificate paths for TPM credentials (EK and AK certificates): parse, build, check.

TPM credentials are not web-PKI certificates (no serverAuth/clientAuth EKU, often an
empty subject, a critical SubjectAltName), so the path is built here rather than with
`cryptography`'s web-PKI verifier: from the leaf, issuers are looked up among the
intermediates and roots by name, every signature is checked, CA constraints
(basicConstraints, keyUsage, pathLenConstraint, nameConstraints, unknown critical
extensions) and validity periods are enforced, and the search stops at a caller-given
root. Parsed CA inputs and verified (child, issuer) signature links are cached by DER
fingerprint across calls (bounded); validity and constraints are checked on every call.

Validity of CAs (``ca_validity``)
---------------------------------
The leaf must always be valid at the verification time. ``"at-time"``: so must every CA
of the path (RFC 5280's model). ``"at-issuance"`` (the default for TPM credentials): a CA
must already be valid (its notBefore passed) and must not have expired before the
notBefore of the certificate it issued; a CA that has expired *since* is reported
(``expired_cas``), not fatal. TPM vendors' intermediates expire while the EK certificates
they issued stay in the field for the life of the TPM (Infineon's "IFX TPM EK
Intermediate CA 01" expired in 2025). A certificate dated after its CA expired is still
refused. A leaf dated *before* its CA's notBefore is accepted: vendors re-issue CA
certificates for the same key with a later notBefore.

Trust anchors
-------------
A root (trust anchor) is trusted as given, whatever its extensions, with one exception:
its nameConstraints, like those of every CA of the path, apply to the certificates below
it. An intermediate must be a CA (basicConstraints cA=true, keyCertSign when keyUsage is
present, pathLenConstraint respected) and must carry no critical extension this module
does not understand.

Lenient parsing: what is tolerated and what is refused
-------------------------------------------------------
Some TPM vendors ship certificates that strict DER parsers refuse; those are accepted
through a bounded repair path whose signature check always runs over the bytes the CA
actually signed. Tolerated (each one is listed in ``tolerated``):

* ``nv-header``: the TCG NV storage header (``10 01 00`` + u16 length) before the DER.
* ``trailing-data``: bytes after the outer Certificate SEQUENCE (NV padding);
  they lie outside the signed data (go-attestation does the same).
* ``non-positive-serial``: a negative or zero serial number (RFC 5280 §4.1.2.2 asks
  users to tolerate it); ``serial_number`` keeps the value as encoded, a repaired
  copy carries the minimal two's-complement bytes read as unsigned.
* DER violations inside the certificate, repaired by re-encoding a copy that
  `cryptography` can read: ``non-minimal-length``, ``non-minimal-integer`` (e.g.
  Nuvoton serials with leading zeros, go-attestation #362), ``unsorted-set``
  (e.g. Nuvoton issuer names, keylime #944), ``boolean-encoding`` (TRUE not
  0xFF), ``encoded-default`` (explicit v1 version, ``critical FALSE``, basic
  constraints ``cA FALSE``), ``printable-string-charset`` (re-tagged UTF8String),
  ``time-format`` (UTCTime/GeneralizedTime without seconds or with an offset).
* ``rsaes-oaep-spki``: an RSA key labelled id-RSAES-OAEP instead of rsaEncryption
  (older Infineon EK certificates); the key itself is a plain RSAPublicKey.
* ``ecdsa-null-parameters``: an ECDSA signature AlgorithmIdentifier with a NULL parameter
  (RFC 5758 asks for none; Intel's OnDie CA, the root of PTT EK certificates, writes NULL).

For a repaired certificate the parsed certificate is the re-encoded copy (``lenient``
is True): read fields from it, but its own signature does not cover its bytes; the
chain check verified the original TBSCertificate bytes instead.

Input forms: DER, DER behind a TCG NV header, an ``x509.Certificate``, or PEM (any
number of CERTIFICATE blocks; text before, between and after the blocks, such as
OpenSSL's ``-text`` dump, is ignored).

Refused (``Reason.EK_CERT_MALFORMED``): more than 64 KiB; and, on the repair
path (when `cryptography` alone refused the bytes), indefinite lengths,
high tag numbers, lengths past the end of their container, nesting deeper than
32, a Certificate that is not exactly SEQUENCE {tbs, algorithm, BIT STRING},
a signature BIT STRING with unused bits, duplicate extensions, and anything
`cryptography` still cannot parse after the repairs above.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import ipaddress
import itertools
import re
import unicodedata
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.utils import CryptographyDeprecationWarning

from .._der import Malformed as _Malformed
from .._der import Node as _Node
from .._der import header as _header
from .._der import parse_exact as _parse_exact
from .._der import tlv as _tlv
from .errors import Reason, VerificationError

__all__ = [
    "CA_VALIDITY_POLICIES",
    "MAX_CERT_SIZE",
    "MAX_CHAIN_LENGTH",
    "OID_ANY_EXTENDED_KEY_USAGE",
    "OID_TCG_KP_AIK_CERTIFICATE",
    "OID_TCG_KP_EK_CERTIFICATE",
    "CaValidity",
    "CertInput",
    "ParsedCertificate",
    "VerifiedPath",
    "certificate_der",
    "load_certificates",
    "parse_certificates",
    "signed_by",
    "usage_problem",
    "validity",
    "verify_path",
]

MAX_CERT_SIZE: Final = 64 * 1024
"""Largest certificate input accepted (EK certificates are 1-2 KiB)."""
MAX_CHAIN_LENGTH: Final = 8
"""Most certificates in a path, leaf and root included."""
_MAX_SIGNATURE_CHECKS: Final = 64

OID_TCG_KP_EK_CERTIFICATE: Final = x509.ObjectIdentifier("2.23.133.8.1")
"""tcg-kp-EKCertificate: the extendedKeyUsage of EK certificates (TCG EK Credential Profile)."""
OID_TCG_KP_AIK_CERTIFICATE: Final = x509.ObjectIdentifier("2.23.133.8.3")
"""tcg-kp-AIKCertificate: the extendedKeyUsage of attestation key certificates."""
OID_ANY_EXTENDED_KEY_USAGE: Final = x509.ObjectIdentifier("2.5.29.37.0")

CaValidity = Literal["at-issuance", "at-time"]
CA_VALIDITY_POLICIES: Final[tuple[CaValidity, ...]] = ("at-issuance", "at-time")

_KNOWN_CRITICAL: Final = frozenset(
    {
        "2.5.29.19",  # basicConstraints
        "2.5.29.15",  # keyUsage
        "2.5.29.37",  # extendedKeyUsage
        "2.5.29.17",  # subjectAltName (critical in EK certificates with an empty subject)
        "2.5.29.18",  # issuerAltName
        "2.5.29.30",  # nameConstraints (enforced)
        "2.5.29.32",  # certificatePolicies (informational here; critical in many vendor CAs)
        "2.5.29.9",  # subjectDirectoryAttributes (TCG TPM specification / security assertions)
        "2.5.29.14",  # subjectKeyIdentifier
        "2.5.29.35",  # authorityKeyIdentifier
        "2.5.29.31",  # cRLDistributionPoints
        "1.3.6.1.5.5.7.1.1",  # authorityInfoAccess
    }
)
"""Extensions that may be critical: the ones this module enforces or that only inform.
policyConstraints, inhibitAnyPolicy and policyMappings are not processed, so a critical
one refuses the certificate, as RFC 5280 §4.2 asks of unrecognized critical extensions."""

_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
_DER = serialization.Encoding.DER
_PEM_RE: Final = re.compile(
    rb"-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]*?)-----END CERTIFICATE-----"
)
_PEM_MARK: Final = b"-----BEGIN CERTIFICATE-----"

CertInput = bytes | bytearray | memoryview | x509.Certificate

# --------------------------------------------------------------------------- DER


_PRINTABLE: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?"
)
_TIME_RE: Final = re.compile(rb"(\d{10,14})(?:(Z)|([+-])(\d{2})(\d{2}))?\Z")


def _norm_time(tag: int, content: bytes, notes: set[str]) -> tuple[int, bytes]:
    """UTCTime / GeneralizedTime in the RFC 5280 form: seconds present, UTC, ``Z``."""
    utc = tag == 0x17
    m = _TIME_RE.match(content)
    if m is None:
        raise _Malformed(f"unreadable time {content!r}")
    digits, zulu, sign, oh, om = m.groups()
    year_len = 2 if utc else 4
    if (zulu is None and sign is None) or len(digits) not in (year_len + 8, year_len + 10):
        raise _Malformed(f"unreadable time {content!r}")
    year = int(digits[:year_len])
    if utc:
        year += 1900 if year >= 50 else 2000  # RFC 5280 §4.1.2.5.1
    rest = digits[year_len:]
    try:
        when = datetime(
            year,
            int(rest[0:2]),
            int(rest[2:4]),
            int(rest[4:6]),
            int(rest[6:8]),
            int(rest[8:10] or b"0"),
        )
        if sign is not None:
            offset = timedelta(hours=int(oh), minutes=int(om))
            when = when - offset if sign == b"+" else when + offset
    except (ValueError, OverflowError) as exc:
        raise _Malformed(f"unreadable time {content!r}") from exc
    if utc:
        if not 1950 <= when.year <= 2049:
            raise _Malformed(f"UTCTime out of range after zone conversion {content!r}")
        out = when.strftime("%y%m%d%H%M%SZ").encode()
    else:
        out = f"{when.year:04d}".encode() + when.strftime("%m%d%H%M%SZ").encode()
    if out != content:
        notes.add("time-format")
    return tag, out


def _int_bytes(value: int) -> bytes:
    """Minimal two's-complement big-endian bytes of an INTEGER (DER X.690 §8.3.2)."""
    magnitude = value if value >= 0 else ~value
    return value.to_bytes(magnitude.bit_length() // 8 + 1, "big", signed=True)


def _encode(node: _Node, notes: set[str]) -> bytes:
    """DER re-encoding of a parsed TLV tree (minimal lengths/integers, sorted SETs...)."""
    tag = node.tag
    if node.children is not None:
        parts = [_encode(c, notes) for c in node.children]
        if tag == 0x31:
            ordered = sorted(parts)
            if ordered != parts:
                notes.add("unsorted-set")
            parts = ordered
        return _tlv(tag, b"".join(parts))
    content = node.content
    if tag == 0x01:  # BOOLEAN
        if len(content) != 1:
            raise _Malformed("BOOLEAN of length != 1")
        fixed = b"\xff" if content[0] else b"\x00"
        if fixed != content:
            notes.add("boolean-encoding")
        content = fixed
    elif tag == 0x02:  # INTEGER
        if not content:
            raise _Malformed("empty INTEGER")
        value = int.from_bytes(content, "big", signed=True)
        fixed = _int_bytes(value)
        if fixed != content:
            notes.add("non-minimal-integer")
        content = fixed
    elif tag == 0x13 and not frozenset(content) <= _PRINTABLE:  # PrintableString
        try:
            content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Malformed("PrintableString is not text") from exc
        notes.add("printable-string-charset")
        tag = 0x0C
    elif tag in (0x17, 0x18):
        tag, content = _norm_time(tag, content, notes)
    return _tlv(tag, content)


_ECDSA_OID_PREFIX: Final = bytes.fromhex("2a8648ce3d04")
"""ecdsa-with-SHA1 (1.2.840.10045.4.1) and ecdsa-with-SHA2 (...4.3.x) start with these octets."""
_NULL: Final = b"\x05\x00"


def _encode_algorithm(node: _Node, notes: set[str]) -> bytes:
    """An AlgorithmIdentifier; an ECDSA one with a NULL parameter loses it (RFC 5758 §3.2: the
    parameters MUST be absent; Intel's OnDie CA writes NULL)."""
    children = node.children
    if (node.tag == 0x30 and children is not None and len(children) == 2 and children[0].tag == 0x06
            and children[0].content.startswith(_ECDSA_OID_PREFIX) and children[1].tag == 0x05
            and not children[1].content):
        notes.add("ecdsa-null-parameters")
        return _tlv(0x30, _encode(children[0], notes))
    return _encode(node, notes)


_OID_RSAES_OAEP: Final = bytes.fromhex("06092a864886f70d010107")
_RSA_ENCRYPTION_ALG: Final = bytes.fromhex("300d06092a864886f70d0101010500")
_OID_BASIC_CONSTRAINTS: Final = bytes.fromhex("0603551d13")


def _encode_extension_value(content: bytes, is_basic_constraints: bool, notes: set[str]) -> bytes:
    """Normalize an extnValue's inner DER when it parses; otherwise leave it untouched."""
    local: set[str] = set()
    try:
        node = _parse_exact(content, local)
        if (
            is_basic_constraints
            and node.tag == 0x30
            and node.children
            and node.children[0].tag == 0x01
            and node.children[0].content == b"\x00"
        ):
            node.children.pop(0)
            local.add("encoded-default")
        out = _encode(node, local)
    except _Malformed:
        return content
    notes.update(local)
    return out


def _encode_tbs(tbs: _Node, notes: set[str]) -> bytes:
    """Re-encode a TBSCertificate with the schema-aware repairs of the module docstring."""
    items = tbs.children
    if tbs.tag != 0x30 or not items or len(items) < 6:
        raise _Malformed("TBSCertificate is not a SEQUENCE of at least 6 fields")
    out: list[bytes] = []
    i = 0
    if items[0].tag == 0xA0:
        ver = items[0].children
        if not ver or len(ver) != 1 or ver[0].tag != 0x02:
            raise _Malformed("bad version field")
        if int.from_bytes(ver[0].content or b"\x00", "big", signed=True) == 0:
            notes.add("encoded-default")
        else:
            out.append(_encode(items[0], notes))
        i = 1
    if len(items) < i + 6:
        raise _Malformed("TBSCertificate lacks fields")
    serial = items[i]
    if serial.tag != 0x02 or not serial.content:
        raise _Malformed("bad serial number")
    minimal = _encode(serial, notes)
    value = int.from_bytes(serial.content, "big", signed=True)
    if value < 0:  # the repaired copy reads the minimal two's-complement bytes as unsigned
        notes.add("non-positive-serial")
        minimal = _tlv(0x02, b"\x00" + _int_bytes(value))
    out.append(minimal)
    out.append(_encode_algorithm(items[i + 1], notes))  # signature
    for node in items[i + 2 : i + 5]:  # issuer, validity, subject
        out.append(_encode(node, notes))
    spki = items[i + 5]
    if spki.tag != 0x30 or not spki.children or len(spki.children) != 2:
        raise _Malformed("bad SubjectPublicKeyInfo")
    alg = spki.children[0]
    if alg.tag == 0x30 and alg.children and _encode(alg.children[0], notes) == _OID_RSAES_OAEP:
        notes.add("rsaes-oaep-spki")
        out.append(_tlv(0x30, _RSA_ENCRYPTION_ALG + _encode(spki.children[1], notes)))
    else:
        out.append(_encode(spki, notes))
    for node in items[i + 6 :]:
        if node.tag == 0xA3 and node.children and len(node.children) == 1:
            out.append(_tlv(0xA3, _encode_extensions(node.children[0], notes)))
        else:
            out.append(_encode(node, notes))
    return _tlv(0x30, b"".join(out))


def _encode_extensions(exts: _Node, notes: set[str]) -> bytes:
    if exts.tag != 0x30 or exts.children is None:
        raise _Malformed("extensions are not a SEQUENCE")
    parts: list[bytes] = []
    for ext in exts.children:
        fields = ext.children
        if ext.tag != 0x30 or not fields or not 2 <= len(fields) <= 3 or fields[-1].tag != 0x04:
            raise _Malformed("bad Extension")
        oid = _encode(fields[0], notes)
        body = [oid]
        if len(fields) == 3:
            crit = _encode(fields[1], notes)
            if crit == b"\x01\x01\x00":
                notes.add("encoded-default")
            else:
                body.append(crit)
        value = _encode_extension_value(fields[-1].content, oid == _OID_BASIC_CONSTRAINTS, notes)
        body.append(_tlv(0x04, value))
        parts.append(_tlv(0x30, b"".join(body)))
    return _tlv(0x30, b"".join(parts))


# ------------------------------------------------------------------ certificates


@dataclass(frozen=True, slots=True)
class _Parsed:
    """A certificate with the exact bytes its issuer signed."""

    cert: x509.Certificate
    der: bytes
    tbs: bytes
    signature: bytes
    serial: int
    strict: bool
    tolerated: tuple[str, ...]
    fingerprint: bytes
    subject: x509.Name = field(init=False)
    issuer: x509.Name = field(init=False)
    subject_key: _NameKey = field(init=False)
    """The subject as RFC 5280 §7.1 compares names (see ``_name_key``)."""
    issuer_key: _NameKey = field(init=False)
    sha1: bool = field(init=False)
    """Signed with SHA-1 (sha1WithRSAEncryption, ecdsa-with-SHA1)."""

    def __post_init__(self) -> None:
        # `cryptography` builds new Name objects on every access: keep one of each.
        with _quiet():
            object.__setattr__(self, "subject", self.cert.subject)
            object.__setattr__(self, "issuer", self.cert.issuer)
        object.__setattr__(self, "subject_key", _name_key(self.subject))
        object.__setattr__(self, "issuer_key", _name_key(self.issuer))
        try:
            sha1 = isinstance(self.cert.signature_hash_algorithm, hashes.SHA1)
        except UnsupportedAlgorithm:
            sha1 = False
        object.__setattr__(self, "sha1", sha1)


_NameKey = tuple[frozenset[tuple[str, object]], ...]
_SPACES: Final = re.compile(r"\s+")


def _name_key(name: x509.Name) -> _NameKey:
    """A Name as RFC 5280 §7.1 compares it (RFC 4518 string preparation, simplified): the
    string type does not matter (PrintableString, UTF8String...), nor letter case, leading,
    trailing or repeated spaces, or Unicode compatibility forms; RDNs keep their order and
    multi-valued RDNs compare as sets. Vendors encode an issuer name differently from their
    CA's subject (and OpenSSL matches them the same way)."""
    rdns = []
    for rdn in name.rdns:
        attrs = []
        for attr in rdn:
            value: object = attr.value
            if isinstance(value, str):
                value = _SPACES.sub(" ", unicodedata.normalize("NFKC", value)).strip().casefold()
            attrs.append((attr.oid.dotted_string, value))
        rdns.append(frozenset(attrs))
    return tuple(rdns)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence `cryptography`'s warnings about vendor certificates it reads anyway (deprecated
    encodings; name attributes longer than X.520 allows, as in Google's vTPM CA names)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        warnings.filterwarnings("ignore", message="Attribute's length", category=UserWarning)
        yield


def _fail(reason: Reason, detail: str) -> VerificationError:
    return VerificationError(reason, detail)

def key_der(value: bytes | bytearray | memoryview | PublicKeyTypes, what: str) -> bytes:
    """The SubjectPublicKeyInfo DER of the key a certificate must certify: ``value`` is a TPM
    public area (TPM2B_PUBLIC or TPMT_PUBLIC bytes) or a ``cryptography`` public key. ``what``
    ("EK", "AK") names it in errors: a malformed area is ``MALFORMED``, another type TypeError."""
    if isinstance(value, bytes | bytearray | memoryview):
        from ..tpm2.keys import public_key_from_public  # only callers that pass bytes pay for it

        try:
            key: PublicKeyTypes = public_key_from_public(bytes(value))
        except ValueError as exc:  # ParseError is a ValueError
            raise _fail(Reason.MALFORMED, f"{what} public area: {exc}") from exc
    else:
        key = value
    try:
        return key.public_bytes(_DER, _SPKI)
    except (AttributeError, TypeError, ValueError) as exc:
        raise TypeError(f"{what.lower()}_public: unsupported key {type(value).__name__}") from exc



def _split_outer(data: bytes) -> tuple[bytes, list[str]]:
    """Remove a TCG NV header and trailing bytes: return the Certificate TLV."""
    notes: list[str] = []
    if len(data) > 5 and data[:3] == b"\x10\x01\x00":
        size = int.from_bytes(data[3:5], "big")
        if 5 + size > len(data):
            raise _Malformed("TCG NV header length exceeds the data")
        data = data[5 : 5 + size]
        notes.append("nv-header")
    if not data or data[0] != 0x30:
        raise _Malformed("not a DER SEQUENCE")
    _, _, end = _header(data, 0, len(data), set())
    if end != len(data):
        notes.append("trailing-data")
        data = data[:end]
    return data, notes


_KNOWN_KEY_ALGORITHMS: Final = frozenset(
    {
        "1.2.840.113549.1.1.1",  # rsaEncryption
        "1.2.840.113549.1.1.10",  # id-RSASSA-PSS
        "1.2.840.10045.2.1",  # id-ecPublicKey
        "1.3.101.112",  # Ed25519
        "1.3.101.113",  # Ed448
    }
)


def _strict_load(der: bytes, given: x509.Certificate | None = None) -> tuple[x509.Certificate, int]:
    """`cryptography`'s own parse, including the parts it decodes lazily; (cert, serial)."""
    with _quiet():
        cert = given if given is not None else x509.load_der_x509_certificate(der)
        # `cryptography` decodes several fields lazily: touch every one used later.
        key_oid = getattr(cert, "public_key_algorithm_oid", None)  # cryptography >= 43
        if key_oid is None or key_oid.dotted_string not in _KNOWN_KEY_ALGORITHMS:
            cert.public_key()  # raises for what `cryptography` cannot load
        list(cert.extensions)
        _ = (cert.issuer, cert.subject, _validity(cert))
        _ = cert.signature_algorithm_oid
        return cert, cert.serial_number


def _load_one(der_in: bytes, what: str, given: x509.Certificate | None = None) -> _Parsed:
    """Parse one DER certificate, strictly if possible, else through the repair path."""
    if len(der_in) > MAX_CERT_SIZE:
        raise _fail(Reason.EK_CERT_MALFORMED, f"{what}: larger than {MAX_CERT_SIZE} bytes")
    try:
        der, pre = _split_outer(der_in)
    except _Malformed as exc:
        raise _fail(Reason.EK_CERT_MALFORMED, f"{what}: {exc}") from exc
    fingerprint = hashlib.sha256(der).digest()
    tolerated = list(pre)
    try:
        cert, serial = _strict_load(der, given if not pre else None)
    except Exception as exc:  # any refusal of the strict parser: try the repair path
        return _repair(der, what, tolerated, fingerprint, exc)
    if serial <= 0:
        tolerated.append("non-positive-serial")
    return _Parsed(
        cert,
        der,
        cert.tbs_certificate_bytes,
        cert.signature,
        serial,
        True,
        tuple(tolerated),
        fingerprint,
    )


def _repair(
    der: bytes, what: str, tolerated: list[str], fingerprint: bytes, strict_error: Exception
) -> _Parsed:
    """The lenient path: walk the DER ourselves, re-encode a readable copy, keep the signed TBS."""
    notes: set[str] = set()
    try:
        outer = _parse_exact(der, notes)
        parts = outer.children
        if outer.tag != 0x30 or parts is None or len(parts) != 3:
            raise _Malformed("Certificate is not SEQUENCE {tbs, algorithm, signature}")
        tbs_node, alg_node, sig_node = parts
        if sig_node.tag != 0x03 or not sig_node.content or sig_node.content[0] != 0:
            raise _Malformed("signature is not a BIT STRING without unused bits")
        tbs_children = tbs_node.children
        if tbs_node.tag != 0x30 or not tbs_children:
            raise _Malformed("TBSCertificate is not a SEQUENCE")
        serial_node = tbs_children[1 if tbs_children[0].tag == 0xA0 else 0]
        if serial_node.tag != 0x02 or not serial_node.content:
            raise _Malformed("bad serial number")
        serial = int.from_bytes(serial_node.content, "big", signed=True)
        tbs = _signed_tbs(der)  # exactly the bytes the issuer signed, never re-encoded
        fixed = _tlv(
            0x30,
            _encode_tbs(tbs_node, notes) + _encode_algorithm(alg_node, notes) + _encode(sig_node, notes),
        )
    except _Malformed as exc:
        raise _fail(Reason.EK_CERT_MALFORMED, f"{what}: {exc} ({strict_error})") from exc
    if fixed == der:
        raise _fail(Reason.EK_CERT_MALFORMED, f"{what}: {strict_error}")
    try:
        cert, _ = _strict_load(fixed)
    except Exception as exc:  # the repaired copy is still refused: give up
        raise _fail(
            Reason.EK_CERT_MALFORMED, f"{what}: unreadable even after repairs: {exc}"
        ) from exc
    if serial <= 0:
        notes.add("non-positive-serial")
    tolerated.extend(sorted(n for n in notes if n not in tolerated))
    signature = sig_node.content[1:]
    return _Parsed(cert, der, tbs, signature, serial, False, tuple(tolerated), fingerprint)


def _signed_tbs(der: bytes) -> bytes:
    """The first element of the outer SEQUENCE, byte for byte (what the issuer signed)."""
    _, start, _ = _header(der, 0, len(der), set())
    _, _, tend = _header(der, start, len(der), set())
    return der[start:tend]


def _pem_blocks(data: bytes) -> list[bytes]:
    blocks = []
    for m in _PEM_RE.finditer(data):
        try:
            blocks.append(base64.b64decode(b"".join(m.group(1).split()), validate=True))
        except (binascii.Error, ValueError) as exc:
            raise _fail(Reason.EK_CERT_MALFORMED, f"bad PEM base64: {exc}") from exc
    return blocks


def _load_many(item: CertInput, what: str, *, single: bool) -> list[_Parsed]:
    """One input (Certificate, DER, or PEM possibly holding several certificates)."""
    if isinstance(item, x509.Certificate):
        return [_load_one(item.public_bytes(_DER), what, item)]
    if not isinstance(item, bytes | bytearray | memoryview):
        raise TypeError(f"{what}: expected bytes or x509.Certificate, not {type(item).__name__}")
    data = bytes(item)
    if len(data) > 4 * MAX_CERT_SIZE:
        raise _fail(Reason.EK_CERT_MALFORMED, f"{what}: input too large")
    if data[:1] != b"\x30" and data[:3] != b"\x10\x01\x00" and _PEM_MARK in data:
        blocks = _pem_blocks(data)
        if not blocks:
            raise _fail(Reason.EK_CERT_MALFORMED, f"{what}: no PEM CERTIFICATE block")
        if single and len(blocks) != 1:
            raise _fail(Reason.EK_CERT_MALFORMED, f"{what}: expected one certificate")
        return [
            _load_one(b, f"{what}[{i}]" if len(blocks) > 1 else what) for i, b in enumerate(blocks)
        ]
    return [_load_one(data, what)]


# ------------------------------------------------------------------ path building


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _validity(cert: x509.Certificate) -> tuple[datetime, datetime]:
    """notBefore/notAfter as aware UTC datetimes (``*_utc`` exist from cryptography 42)."""
    if hasattr(cert, "not_valid_before_utc"):
        return cert.not_valid_before_utc, cert.not_valid_after_utc
    before: datetime = getattr(cert, "not_valid_before")  # noqa: B009
    after: datetime = getattr(cert, "not_valid_after")  # noqa: B009
    return before.replace(tzinfo=UTC), after.replace(tzinfo=UTC)


_VERIFIED_LINKS: dict[tuple[bytes, bytes], None] = {}
"""(child, issuer) DER fingerprints whose signature already verified: CA links recur."""
_MAX_VERIFIED_LINKS: Final = 4096


def _verify_signature(child: _Parsed, issuer: _Parsed) -> str | None:
    """None when `issuer` signed `child`; otherwise why not."""
    link = (child.fingerprint, issuer.fingerprint)
    if link in _VERIFIED_LINKS:
        return None
    error = _check_signature(child, issuer)
    if error is None:
        if len(_VERIFIED_LINKS) >= _MAX_VERIFIED_LINKS:
            _VERIFIED_LINKS.clear()
        _VERIFIED_LINKS[link] = None
    return error


def _check_signature(child: _Parsed, issuer: _Parsed) -> str | None:
    """Issuer name (as RFC 5280 compares names) and signature; a repaired child is checked
    over its original TBS bytes, and so is a SHA-1 signature (`cryptography`'s own check
    refuses SHA-1) or an issuer name encoded differently from the issuer's subject."""
    if child.issuer_key != issuer.subject_key:
        return "issuer name differs"
    try:
        if child.strict and not child.sha1 and child.issuer.public_bytes() == issuer.subject.public_bytes():
            child.cert.verify_directly_issued_by(issuer.cert)
            return None
        key = issuer.cert.public_key()
        params = child.cert.signature_algorithm_parameters
        h = child.cert.signature_hash_algorithm
        if isinstance(key, rsa.RSAPublicKey):
            if not isinstance(params, padding.PKCS1v15 | padding.PSS) or h is None:
                return "signature algorithm does not fit an RSA issuer key"
            key.verify(child.signature, child.tbs, params, h)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if not isinstance(params, ec.ECDSA):
                return "signature algorithm does not fit an EC issuer key"
            key.verify(child.signature, child.tbs, params)
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(child.signature, child.tbs)
        else:
            return f"unsupported issuer key type {type(key).__name__}"
    except InvalidSignature:
        return "signature does not verify"
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        return f"cannot verify signature: {exc}"
    return None


def _unknown_critical(cert: x509.Certificate) -> list[str]:
    """Dotted OIDs of critical extensions this module neither enforces nor may ignore."""
    return [e.oid.dotted_string for e in cert.extensions
            if e.critical and e.oid.dotted_string not in _KNOWN_CRITICAL]


def _ca_problem(ca: _Parsed, intermediates_below: int) -> str | None:
    """Why `ca` may not issue here (basicConstraints, keyUsage, pathLenConstraint, unknown
    critical extensions), or None."""
    try:
        bc = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return "no basicConstraints"
    if not bc.ca:
        return "basicConstraints cA is false"
    if bc.path_length is not None and intermediates_below > bc.path_length:
        return f"pathLenConstraint {bc.path_length} exceeded"
    unknown = _unknown_critical(ca.cert)
    if unknown:
        return f"unknown critical extension {', '.join(unknown)}"
    try:
        ku = ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None
    if not ku.key_cert_sign:
        return "keyUsage lacks keyCertSign"
    return None


def _describe(p: _Parsed) -> str:
    return p.subject.rfc4514_string() or f"<empty subject, issuer {p.issuer.rfc4514_string()}>"


# ------------------------------------------------------------------ name constraints


def _dn_within(name: x509.Name, base: x509.Name) -> bool:
    """RFC 5280 §4.2.1.10: a directoryName is within a subtree when the subtree's RDNs
    are its first RDNs, compared as §7.1 compares names (an excluded O=Other also
    excludes O=OTHER)."""
    mine, prefix = _name_key(name), _name_key(base)
    return len(prefix) <= len(mine) and mine[: len(prefix)] == prefix


def _host_within(host: str, base: str) -> bool:
    """dNSName / URI host matching: equal, or a subdomain of `base` (a leading '.' in the
    constraint means subdomains only)."""
    host, base = host.lower().rstrip("."), base.lower().rstrip(".")
    if not base:
        return True
    if base.startswith("."):
        return host.endswith(base)
    return host == base or host.endswith("." + base)


def _mail_within(mail: str, base: str) -> bool:
    if "@" in base:
        return mail.lower() == base.lower()
    domain = mail.rpartition("@")[2]
    return _host_within(domain, base) if base.startswith(".") else domain.lower() == base.lower()


def _uri_host(uri: str) -> str | None:
    from urllib.parse import urlsplit

    try:
        return urlsplit(uri).hostname
    except ValueError:
        return None


def _within(name: x509.GeneralName, subtree: x509.GeneralName) -> bool | None:
    """True/False when `name` falls in `subtree` of the same type; None when not comparable."""
    if isinstance(subtree, x509.DirectoryName) and isinstance(name, x509.DirectoryName):
        return _dn_within(name.value, subtree.value)
    if isinstance(subtree, x509.DNSName) and isinstance(name, x509.DNSName):
        return _host_within(name.value, subtree.value)
    if isinstance(subtree, x509.RFC822Name) and isinstance(name, x509.RFC822Name):
        return _mail_within(name.value, subtree.value)
    if isinstance(subtree, x509.UniformResourceIdentifier) and isinstance(name, x509.UniformResourceIdentifier):
        host = _uri_host(name.value)
        return host is not None and _host_within(host, subtree.value)
    if isinstance(subtree, x509.IPAddress) and isinstance(name, x509.IPAddress):
        net, addr = subtree.value, name.value
        return isinstance(net, ipaddress.IPv4Network | ipaddress.IPv6Network) and addr in net
    return None


def _names_of(p: _Parsed) -> list[x509.GeneralName]:
    """The names name constraints apply to: a non-empty subject and every SubjectAltName."""
    names: list[x509.GeneralName] = []
    if len(p.subject):
        names.append(x509.DirectoryName(p.subject))
    try:
        san = p.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return names
    names.extend(san)
    return names


def _constraint_problem(ca: _Parsed, below: Sequence[_Parsed]) -> str | None:
    """Why a certificate below `ca` breaks `ca`'s nameConstraints, or None."""
    try:
        nc = ca.cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None
    permitted = list(nc.permitted_subtrees or ())
    excluded = list(nc.excluded_subtrees or ())
    for p in below:
        for name in _names_of(p):
            for sub in excluded:
                hit = _within(name, sub)
                if hit or (hit is None and type(sub) is type(name)):
                    return f"nameConstraints of {_describe(ca)} exclude {name.value!r} of {_describe(p)}"
            same = [sub for sub in permitted if type(sub) is type(name)]
            if same:
                verdicts = [_within(name, sub) for sub in same]
                if None in verdicts:
                    return f"nameConstraints of {_describe(ca)}: cannot evaluate {type(name).__name__}"
                if not any(verdicts):
                    return (f"nameConstraints of {_describe(ca)} do not permit {name.value!r} "
                            f"of {_describe(p)}")
    return None


# ------------------------------------------------------------------ path search


class _Search:
    """Depth-first issuer search, bounded in depth and in signature checks, loop-free."""

    def __init__(self, roots: list[_Parsed], pool: list[_Parsed], at_time: datetime,
                 ca_validity: CaValidity, allow_sha1: bool = True) -> None:
        self.allow_sha1 = allow_sha1
        self.root_fps = {r.fingerprint for r in roots}
        self.candidates = roots + [p for p in pool if p.fingerprint not in self.root_fps]
        self.at_time = at_time
        self.ca_validity = ca_validity
        self.checks = 0
        self.problems: list[str] = []
        self.expired: list[str] = []

    def _outside(self, p: _Parsed, when: datetime, what: str) -> str | None:
        nb, na = _validity(p.cert)
        if nb <= when <= na:
            return None
        return f"{_describe(p)} valid {nb.isoformat()} .. {na.isoformat()}, not {what} {when.isoformat()}"

    def _time_problem(self, path: list[_Parsed]) -> str | None:
        problem = self._outside(path[0], self.at_time, "at")
        if problem is not None:
            return problem
        for below, ca in itertools.pairwise(path):
            if self.ca_validity == "at-time":
                problem = self._outside(ca, self.at_time, "at")
            else:
                nb, na = _validity(ca.cert)
                issued = _validity(below.cert)[0]
                if nb > self.at_time:
                    problem = f"{_describe(ca)} is not valid before {nb.isoformat()}"
                elif issued > na:
                    problem = (f"{_describe(ca)} expired {na.isoformat()}, before it issued "
                               f"{_describe(below)} (notBefore {issued.isoformat()})")
            if problem is not None:
                return problem
        return None

    def expired_cas(self, path: list[_Parsed]) -> tuple[str, ...]:
        """CAs of an accepted path that are outside their validity at the verification time."""
        return tuple(p for p in (self._outside(ca, self.at_time, "at") for ca in path[1:]) if p)

    def _complete(self, path: list[_Parsed]) -> bool:
        problem = self._time_problem(path)
        if problem is not None:
            self.expired.append(problem)
            return False
        for k in range(1, len(path)):
            problem = _constraint_problem(path[k], path[:k])
            if problem is not None:
                self.problems.append(problem)
                return False
        return True

    def run(self, leaf: _Parsed) -> list[_Parsed] | None:
        if leaf.fingerprint in self.root_fps and self._complete([leaf]):
            return [leaf]
        return self._extend([leaf])

    def _extend(self, path: list[_Parsed]) -> list[_Parsed] | None:
        cur = path[-1]
        if cur.sha1 and not self.allow_sha1:
            self.problems.append(f"{_describe(cur)}: SHA-1 signature refused (strict)")
            return None
        seen = {p.fingerprint for p in path}
        found_issuer = False
        for cand in self.candidates:
            if cand.fingerprint in seen or cand.subject_key != cur.issuer_key:
                continue
            found_issuer = True
            if self.checks >= _MAX_SIGNATURE_CHECKS:
                return None
            self.checks += 1
            err = _verify_signature(cur, cand)
            if err is not None:
                self.problems.append(f"{_describe(cand)} -> {_describe(cur)}: {err}")
                continue
            if cand.fingerprint in self.root_fps:
                if self._complete([*path, cand]):
                    return [*path, cand]
                continue
            if len(path) + 2 > MAX_CHAIN_LENGTH:
                self.problems.append(f"path longer than {MAX_CHAIN_LENGTH} certificates")
                continue
            ca_err = _ca_problem(cand, len(path) - 1)
            if ca_err is not None:
                self.problems.append(f"{_describe(cand)}: {ca_err}")
                continue
            found = self._extend([*path, cand])
            if found is not None:
                return found
        if not found_issuer:
            self.problems.append(f"no certificate named {cur.issuer.rfc4514_string()!r}")
        return None


# ------------------------------------------------------------------ leaf usage

Purpose = Literal["ek", "ak"]


def _key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def usage_problem(cert: x509.Certificate, purpose: Purpose, *, strict: bool = False) -> str | None:
    """Why `cert` cannot be an EK (or AK) certificate, or None.

    EK (TCG EK Credential Profile): not a CA; an extendedKeyUsage, when present, holds
    tcg-kp-EKCertificate; a keyUsage, when present, has keyEncipherment for an RSA key and
    keyAgreement for an ECC key (keyEncipherment tolerated unless ``strict``: a decryption key
    all the same) and no certificate/CRL signing; ``strict`` also requires both extensions. AK: not a CA; keyUsage present with digitalSignature and no certificate/CRL
    signing; an extendedKeyUsage, when present, holds tcg-kp-AIKCertificate. Both: no
    unknown critical extension.
    """
    what = "an EK" if purpose == "ek" else "an AK"
    unknown = _unknown_critical(cert)
    if unknown:
        return f"unknown critical extension {', '.join(unknown)}"
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is not None and bc.ca:
        return f"a CA certificate (basicConstraints cA=true) is not {what} certificate"
    wanted = OID_TCG_KP_EK_CERTIFICATE if purpose == "ek" else OID_TCG_KP_AIK_CERTIFICATE
    try:
        eku = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        eku = None
    if eku is not None and wanted not in eku and OID_ANY_EXTENDED_KEY_USAGE not in eku:
        names = ", ".join(getattr(o, "_name", None) or o.dotted_string for o in eku) or "none"
        return f"extendedKeyUsage ({names}) lacks {wanted.dotted_string}"
    if eku is None and strict and purpose == "ek":
        return f"no extendedKeyUsage {wanted.dotted_string} (strict)"
    ku = _key_usage(cert)
    if ku is None:
        if purpose == "ak":
            return "no keyUsage: an AK certificate needs digitalSignature"
        if strict:
            return "no keyUsage (strict)"
        return None
    if ku.key_cert_sign or ku.crl_sign:
        return f"keyUsage allows certificate or CRL signing: not {what} certificate"
    if purpose == "ak":
        return None if ku.digital_signature else "keyUsage lacks digitalSignature"
    key_oid = getattr(cert, "public_key_algorithm_oid", None)
    dotted = key_oid.dotted_string if key_oid is not None else ""
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        return f"unreadable key {dotted}: {exc}"
    if isinstance(key, rsa.RSAPublicKey):
        return None if ku.key_encipherment else "keyUsage of an RSA EK lacks keyEncipherment"
    if isinstance(key, ec.EllipticCurvePublicKey):
        # The profile asks for keyAgreement; keyEncipherment (RFC 8813 frowns on it for EC keys)
        # still marks a decryption key, not a signer, so only strict mode refuses it.
        if ku.key_agreement or (ku.key_encipherment and not strict):
            return None
        return "keyUsage of an ECC EK lacks keyAgreement" + (" (strict)" if ku.key_encipherment else "")
    return f"{type(key).__name__} keys are not EKs"


# ------------------------------------------------------------------ verification


@dataclass(frozen=True)
class VerifiedPath:
    """A leaf that chains to a trust anchor: the parsed leaf, the path, and what was tolerated."""

    certificate: x509.Certificate
    """The parsed leaf (a re-encoded copy when ``lenient``)."""
    der: bytes
    serial_number: int
    chain: list[x509.Certificate]
    """Leaf first, the trust anchor last."""
    lenient: bool
    tolerated: tuple[str, ...]
    expired_cas: tuple[str, ...]
    """CAs of the path outside their validity at the verification time (``at-issuance``)."""
    subject: x509.Name
    issuer: x509.Name


def verify_path(
    cert: CertInput,
    roots: Sequence[CertInput],
    intermediates: Sequence[CertInput] = (),
    *,
    at_time: datetime | None = None,
    ca_validity: CaValidity = "at-issuance",
    what: str = "EK certificate",
    allow_sha1: bool = True,
) -> VerifiedPath:
    """Parse `cert` and find a path to one of `roots` (see the module docstring).
    A SHA-1 signature on the path is accepted (``sha1-signature`` in ``tolerated``) unless
    ``allow_sha1=False``.

    Raises VerificationError: EK_CERT_MALFORMED, EK_CERT_CHAIN or EK_CERT_EXPIRED (callers
    verifying other credentials translate the reasons)."""
    if ca_validity not in CA_VALIDITY_POLICIES:
        raise ValueError(f"ca_validity must be one of {', '.join(CA_VALIDITY_POLICIES)}")
    if not roots:
        raise _fail(Reason.EK_CERT_CHAIN, "no trusted roots given")
    when = _utc(at_time) if at_time is not None else datetime.now(UTC)
    leaf = _load_many(cert, what, single=True)[0]
    root_list = _flatten(roots, "root")
    pool = _flatten(intermediates, "intermediate")

    search = _Search(root_list, pool, when, ca_validity, allow_sha1)
    path = search.run(leaf)
    if path is None:
        if search.expired:
            raise _fail(Reason.EK_CERT_EXPIRED, "; ".join(search.expired[:3]))
        problems = list(dict.fromkeys(search.problems))  # unique, in order
        if search.checks >= _MAX_SIGNATURE_CHECKS:
            problems.insert(0, f"gave up after {_MAX_SIGNATURE_CHECKS} signature checks (budget)")
        raise _fail(Reason.EK_CERT_CHAIN, "; ".join(problems[:5]) or "no path to a root")
    return VerifiedPath(
        certificate=leaf.cert,
        der=leaf.der,
        serial_number=leaf.serial,
        chain=[p.cert for p in path],
        lenient=not leaf.strict,
        tolerated=leaf.tolerated + (("sha1-signature",) if any(p.sha1 for p in path[:-1]) else ()),
        expired_cas=search.expired_cas(path),
        subject=leaf.subject,
        issuer=leaf.issuer,
    )


ParsedCertificate = _Parsed
"""A parsed certificate with the exact bytes its issuer signed (``strict``, ``tolerated``,
``fingerprint`` = SHA-256 of the DER as received)."""


def parse_certificates(data: CertInput, what: str = "certificate") -> list[ParsedCertificate]:
    """Every certificate of one input, parsed strictly or through the repair path."""
    return _load_many(data, what, single=False)


def signed_by(child: ParsedCertificate, issuer: ParsedCertificate) -> bool:
    """Whether `issuer`'s key signed `child` (names must match too)."""
    return _check_signature(child, issuer) is None


def validity(cert: x509.Certificate) -> tuple[datetime, datetime]:
    """notBefore/notAfter as aware UTC datetimes."""
    return _validity(cert)


def load_certificates(data: CertInput, what: str = "certificate") -> list[x509.Certificate]:
    """Every certificate of one input (DER, NV-wrapped DER, PEM with any text around it),
    through the lenient parser. Raises VerificationError(EK_CERT_MALFORMED)."""
    return [p.cert for p in _load_many(data, what, single=False)]


def certificate_der(data: CertInput, what: str = "certificate") -> list[bytes]:
    """The DER of every certificate of one input, as received (see ``load_certificates``)."""
    return [p.der for p in _load_many(data, what, single=False)]


_CACHEABLE_INPUT: Final = 64 * 1024


@functools.lru_cache(maxsize=256)
def _load_ca_cached(item: bytes | x509.Certificate) -> tuple[_Parsed, ...]:
    return tuple(_load_many(item, "certificate", single=False))


def _load_ca(item: bytes | x509.Certificate) -> tuple[_Parsed, ...]:
    """Roots and intermediates recur from call to call: parse each (bounded) input once."""
    if isinstance(item, bytes) and len(item) > _CACHEABLE_INPUT:
        return tuple(_load_many(item, "certificate", single=False))
    return _load_ca_cached(item)


def _flatten(items: Iterable[CertInput], what: str) -> list[_Parsed]:
    out: list[_Parsed] = []
    seen: set[bytes] = set()
    for i, item in enumerate(items):
        key = item if isinstance(item, x509.Certificate) else bytes(item)
        try:
            parsed = _load_ca(key)
        except VerificationError as exc:
            raise _fail(exc.reason, f"{what} #{i}: {exc.detail}") from exc
        for p in parsed:
            if p.fingerprint not in seen:
                seen.add(p.fingerprint)
                out.append(p)
    return out
