"""Evidence that crosses from device to verifier: AK blobs, quotes, EK info, credential challenges.

Binary forms are big-endian like the TPM and documented in docs/formats.md; JSON forms carry
binary fields as base64 and a ``version``. Parsing is strict: anything malformed raises
``TpmError(code=BAD_BLOB)`` (the verifier turns that into ``VerificationError(MALFORMED)``).
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import field
from functools import cached_property
from json.scanner import make_scanner
from typing import Any, Final, Literal

from ._frozen import frozen
from .errors import ErrorCode, TpmError
from .tpm2.constants import HASH_BY_NAME, HASH_NAMES, HASH_SIZES
from .tpm2.keys import object_name, parse_public, public_der, public_fields
from .tpm2.marshal import ParseError, Reader, Writer
from .tpm2.structures import (
    TPM2B_CREATION_DATA,
    TPM2B_PUBLIC,
    TPMS_ATTEST,
    TPMS_CREATION_DATA,
    TPMT_PUBLIC,
    TPMT_SIGNATURE,
    creation_attest_fields,
    creation_data_outside_info,
    signature_is_exact,
)

AkFormat = Literal["TPW1", "TPP1", "PCP1", "PCP2"]
AK_FORMATS: Final[tuple[AkFormat, ...]] = ("TPW1", "TPP1", "PCP1", "PCP2")
SRK_RECREATE: Final = 0x40000001
"""Parent value meaning "re-create the standard ECC P-256 SRK under the owner hierarchy"."""
TPP1_HIERARCHIES: Final = frozenset({0x40000001, 0x4000000B})
"""Hierarchies a ``TPP1`` primary AK may be derived in: owner, endorsement (GCE's AKs)."""
MAX_KEY_NAME: Final = 256
MAX_BLOB: Final = 16384
EK_CHAIN_MAX_CERTS: Final = 16
"""At most this many EK chain certificates are read from a TPM, sent, or accepted."""
EK_CHAIN_MAX_BYTES: Final = 32 * 1024
"""At most this many bytes of EK chain NV indices are read, and of certificates sent or accepted
(Intel PTT keeps three CAs, a few KiB; a TPM's largest NV index is typically 2 KiB)."""
QUOTE_JSON_VERSION: Final = 1
AK_JSON_VERSION: Final = 1


def _bad(msg: str) -> TpmError:
    return TpmError(msg, code=ErrorCode.BAD_BLOB)


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


_a2b = binascii.a2b_base64
_INDEX: Final[dict[str, int]] = {str(i): i for i in range(1000)}
"""PCR indices as JSON spells them canonically ("0".."999")."""


def b64d(text: object, what: str) -> bytes:
    """Strict base64 decode (the alphabet, padding only at the end); raises BAD_BLOB naming the field."""
    if not isinstance(text, str):
        raise _bad(f"{what}: expected a base64 string")
    try:
        return _a2b(text, strict_mode=True)  # as b64decode(validate=True), without its regex
    except ValueError as exc:  # binascii.Error, or a non-ASCII str
        raise _bad(f"{what}: invalid base64") from exc


class _PublicArea:
    """Views derived from a ``public`` field holding TPM2B_PUBLIC (or TPMT_PUBLIC) bytes."""

    public: bytes

    @cached_property
    def public_area(self) -> TPMT_PUBLIC:
        return parse_public(self.public)

    @cached_property
    def public_der(self) -> bytes:
        """SubjectPublicKeyInfo DER."""
        return public_der(self.public_area)


@frozen(slots=False)
class AkBlob(_PublicArea):
    """An attestation key as the device stores it and the verifier receives it.

    ``public`` is TPM2B_PUBLIC bytes, ``private`` TPM2B_PRIVATE contents (empty for PCP),
    ``creation_data`` TPMS_CREATION_DATA bytes, ``attest`` TPMS_ATTEST bytes (type
    ATTEST_CREATION, signed by the AK itself) and ``signature`` TPMT_SIGNATURE bytes.
    """

    format: AkFormat
    public: bytes
    private: bytes
    creation_data: bytes
    attest: bytes
    signature: bytes
    key_name: str = ""
    parent: int = 0

    def __post_init__(self) -> None:
        if self.format not in AK_FORMATS:
            raise _bad(f"unknown AK blob format {self.format!r}")
        if len(self.key_name.encode("utf-8")) > MAX_KEY_NAME:
            raise _bad("key name too long")
        if self.format == "TPW1":
            if self.key_name:
                raise _bad("TPW1 blobs carry no key name")
            if not self.private:
                raise _bad("TPW1 blob without a private part")
        elif self.format == "TPP1":
            if self.key_name:
                raise _bad("TPP1 blobs carry no key name")
            if self.parent not in TPP1_HIERARCHIES:
                raise _bad(f"TPP1 blob for hierarchy 0x{self.parent:08x} (owner or endorsement only)")
            try:
                TPMT_PUBLIC.from_bytes(self.private)
            except ParseError as exc:
                raise _bad(f"TPP1 blob: the template is not a TPMT_PUBLIC: {exc}") from exc
        else:
            if self.private or self.parent:
                raise _bad(f"{self.format} blobs carry no private part and no parent")
            if not self.key_name:
                raise _bad(f"{self.format} blob without a key name")

    # -- derived views ------------------------------------------------------------------------

    @property
    def scope(self) -> Literal["user", "machine", "tpm"]:
        """'user' (PCP1), 'machine' (PCP2) or 'tpm' (TPW1: a TPM-wrapped key; TPP1: a primary
        key the TPM derives from a template)."""
        if self.format == "PCP1":
            return "user"
        if self.format == "PCP2":
            return "machine"
        return "tpm"

    @cached_property
    def name(self) -> bytes:
        """The TPM Name of the AK (nameAlg || H(public area))."""
        return object_name(self.public_area)

    @property
    def ak_public_der(self) -> bytes:
        """SubjectPublicKeyInfo DER of the AK (what a verifier stores to check its quotes)."""
        return self.public_der

    @cached_property
    def template(self) -> TPMT_PUBLIC | None:
        """``TPP1``: the template the TPM derives the key from (in the ``private`` field)."""
        return TPMT_PUBLIC.from_bytes(self.private) if self.format == "TPP1" else None

    @cached_property
    def creation_data_struct(self) -> TPMS_CREATION_DATA:
        return TPMS_CREATION_DATA.from_bytes(self.creation_data)

    @cached_property
    def attest_struct(self) -> TPMS_ATTEST:
        return TPMS_ATTEST.from_bytes(self.attest)

    @cached_property
    def signature_struct(self) -> TPMT_SIGNATURE:
        return TPMT_SIGNATURE.from_bytes(self.signature)

    # -- binary form --------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        w = Writer().raw(self.format.encode("ascii"))
        w.tpm2b(self.key_name.encode("utf-8")).u32(self.parent)
        w.raw(self.public).tpm2b(self.private)
        w.tpm2b(self.creation_data).tpm2b(self.attest).raw(self.signature)
        return w.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> AkBlob:
        """Parse and validate every field; BAD_BLOB on anything malformed."""
        data = bytes(data)
        if len(data) > MAX_BLOB:
            raise _bad(f"AK blob of {len(data)} bytes exceeds {MAX_BLOB}")
        fast = _blob_parts(data)
        if fast is not None:
            return fast
        try:
            r = Reader(data)
            magic = r.raw(4, "magic")
            fmt: AkFormat
            if magic == b"TPW1":
                fmt = "TPW1"
            elif magic == b"TPP1":
                fmt = "TPP1"
            elif magic == b"PCP1":
                fmt = "PCP1"
            elif magic == b"PCP2":
                fmt = "PCP2"
            else:
                raise _bad(f"unknown AK blob magic {magic!r} (expected TPW1, TPP1, PCP1 or PCP2)")
            name_bytes = r.tpm2b("key_name", MAX_KEY_NAME)
            parent = r.u32("parent")
            p0 = r.pos
            tpmt = r.tpm2b("TPM2B_PUBLIC")
            fields = public_fields(tpmt)  # the usual signing keys: one unpack, no objects
            area = None
            if fields is None:  # anything else: the full parse and its precise errors
                r.pos = p0
                area = TPM2B_PUBLIC.unmarshal(r).public_area
            public = data[p0 : r.pos]
            private = r.tpm2b("private")
            p1 = r.pos
            creation = r.tpm2b("TPM2B_CREATION_DATA")
            outside_info = creation_data_outside_info(creation)
            creation_struct = None
            if outside_info is None:
                r.pos = p1
                creation_struct = TPM2B_CREATION_DATA.unmarshal(r).creation_data
                creation = data[p1 + 2 : r.pos]
            attest = r.tpm2b("attest")
            attest_fields = creation_attest_fields(attest)
            attest_struct = TPMS_ATTEST.from_bytes(attest) if attest_fields is None else None
            p2 = r.pos
            signature = data[p2:]
            signature_struct = None
            if not signature_is_exact(signature):
                signature_struct = TPMT_SIGNATURE.unmarshal(r)
                signature = data[p2 : r.pos]
                r.done("AK blob")
            key_name = name_bytes.decode("utf-8")
        except ParseError as exc:
            raise _bad(f"malformed AK blob: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise _bad("AK blob key name is not UTF-8") from exc
        blob = cls(fmt, public, private, creation, attest, signature, key_name, parent)
        # Keep what was parsed (the cached views of these immutable bytes): the verifier's
        # check_ak reads them instead of parsing every part a second time.
        # What the fast readers return instead of objects goes under private names; the public
        # views are then built on first use.
        views = blob.__dict__
        views["_from_bytes"] = True
        for name, value in (("signature_struct", signature_struct), ("public_area", area), ("_public_fields", fields),
                            ("creation_data_struct", creation_struct), ("_outside_info", outside_info),
                            ("attest_struct", attest_struct), ("_creation_attest", attest_fields)):
            if value is not None:
                views[name] = value
        return blob

    # -- JSON form ----------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps({
            "version": AK_JSON_VERSION,
            "format": self.format,
            "key_name": self.key_name,
            "blob": b64e(self.to_bytes()),
            "ak_public_der": b64e(self.ak_public_der),
            "name": self.name.hex(),
        })

    @classmethod
    def from_json(cls, text: str | bytes) -> AkBlob:
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, int limits, nesting
            raise _bad(f"AK JSON: {exc}") from exc
        if not isinstance(obj, dict) or obj.get("version") != AK_JSON_VERSION:
            raise _bad("AK JSON: missing or unsupported version")
        return cls.from_bytes(b64d(obj.get("blob"), "blob"))

    @classmethod
    def load(cls, data: bytes | str | AkBlob) -> AkBlob:
        """Accept an AkBlob, its binary form, or its JSON form."""
        if isinstance(data, AkBlob):
            return data
        if isinstance(data, str):
            return cls.from_json(data)
        stripped = bytes(data).lstrip()
        if stripped.startswith(b"{"):
            return cls.from_json(stripped)
        return cls.from_bytes(data)


_FORMATS: Final[dict[bytes, AkFormat]] = {b"TPW1": "TPW1", b"PCP1": "PCP1", b"PCP2": "PCP2"}
_u16_at = struct.Struct(">H").unpack_from


def _blob_parts(data: bytes) -> AkBlob | None:
    """An AK blob read by offsets when every part has the usual shape (the fast readers of
    tpm2.keys / tpm2.structures accept it, so the generic parsers would read it the same);
    None otherwise, and AkBlob.from_bytes reads it field by field, naming any fault."""
    n = len(data)
    fmt = _FORMATS.get(data[:4])
    if fmt is None or n < 12:
        return None
    (size,) = _u16_at(data, 4)  # key name
    o = 6 + size
    if size > MAX_KEY_NAME or o + 6 > n:
        return None
    name_bytes = data[6:o]
    parent = int.from_bytes(data[o : o + 4], "big")
    o += 4
    (size,) = _u16_at(data, o)  # TPM2B_PUBLIC
    p0, o = o, o + 2 + size
    if o + 2 > n:
        return None
    fields = public_fields(data[p0 + 2 : o])
    if fields is None:
        return None
    public = data[p0:o]
    (size,) = _u16_at(data, o)  # private
    private = data[o + 2 : o + 2 + size]
    o += 2 + size
    if o + 2 > n:
        return None
    (size,) = _u16_at(data, o)  # TPM2B_CREATION_DATA
    creation = data[o + 2 : o + 2 + size]
    o += 2 + size
    if o + 2 > n:
        return None
    outside_info = creation_data_outside_info(creation)
    (size,) = _u16_at(data, o)  # attest
    attest = data[o + 2 : o + 2 + size]
    o += 2 + size
    if outside_info is None or o > n:
        return None
    attest_fields = creation_attest_fields(attest)
    signature = data[o:]
    if attest_fields is None or not signature_is_exact(signature):
        return None
    try:
        key_name = name_bytes.decode("utf-8")
    except UnicodeDecodeError:
        return None
    blob = AkBlob(fmt, public, private, creation, attest, signature, key_name, parent)
    blob.__dict__.update(_from_bytes=True, _public_fields=fields, _outside_info=outside_info,
                         _creation_attest=attest_fields)
    return blob


_TOOLS_MAGIC: Final = b"\xba\xdc\xc0\xde"
"""tpm2-tools' credential file magic (tpm2.crypto.TPM2_TOOLS_CREDENTIAL_MAGIC, big-endian)."""

PcrBanks = dict[str, dict[int, bytes]]


@frozen(slots=False)
class Quote:
    """A quote: TPMS_ATTEST bytes, TPMT_SIGNATURE bytes, and the PCR values it covers
    ({bank name: {index: digest}})."""

    attest: bytes
    signature: bytes
    pcrs: PcrBanks = field(default_factory=dict)

    @cached_property
    def attest_struct(self) -> TPMS_ATTEST:
        return TPMS_ATTEST.from_bytes(self.attest)

    @property
    def qualifying_data(self) -> bytes:
        """The extraData the TPM signed (the verifier's nonce)."""
        return self.attest_struct.extra_data

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": QUOTE_JSON_VERSION,
            "attest": b64e(self.attest),
            "signature": b64e(self.signature),
            "pcrs": {bank: {str(i): b64e(v) for i, v in sorted(vals.items())}
                     for bank, vals in self.pcrs.items()},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, obj: object) -> Quote:
        return cls(*quote_parts(obj))

    @classmethod
    def from_json(cls, text: str | bytes) -> Quote:
        return cls(*quote_json_parts(text))


def quote_json_parts(text: str | bytes) -> tuple[bytes, bytes, PcrBanks]:
    """``quote_parts`` of a quote's JSON text (what the stateless verifier takes)."""
    return quote_parts(_json_object(text))


def _json_object(text: str | bytes) -> object:
    """``json.loads``, first through the decoder's scanner alone: for a str that is one JSON
    value with no surrounding whitespace (what ``to_json`` writes) this skips the wrapper's
    whitespace matching; anything else goes through ``json.loads`` for its exact result or error."""
    if type(text) is str:
        try:
            obj, end = _SCAN(text, 0)
        except (StopIteration, ValueError, RecursionError):
            end = -1
        if end == len(text):
            return obj
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, int limits, nesting
        raise _bad(f"quote JSON: {exc}") from exc


_SCAN: Final = make_scanner(json.JSONDecoder())  # type: ignore[arg-type]  # typeshed: context typed as the class
"""The scanner ``json.loads`` itself uses (the C one when built), with the default options."""


def quote_parts(obj: object) -> tuple[bytes, bytes, PcrBanks]:
    """Attest bytes, signature bytes and PCR banks from a decoded quote JSON object; raises
    BAD_BLOB naming the field. Strict: base64 alphabet and padding, canonical PCR indices,
    each value exactly its bank's digest size."""
    if type(obj) is not dict or type(version := obj.get("version")) is not int or version != QUOTE_JSON_VERSION:
        raise _bad("quote JSON: missing or unsupported version")
    pcrs_in = obj.get("pcrs", _NO_PCRS)
    if type(pcrs_in) is not dict:
        raise _bad("quote JSON: pcrs must be an object")
    pcrs: PcrBanks = {}
    for bank, vals in pcrs_in.items():
        alg = HASH_BY_NAME.get(bank)
        if alg is None or type(vals) is not dict:
            raise _bad(f"quote JSON: unknown PCR bank {bank!r}")
        size = HASH_SIZES[alg]
        # Fast path: canonical indices ("0".."999") and base64 strings of `size` bytes; any
        # other input (a non-string, a bad key, a wrong size) is refused by the loop below,
        # which names the field.
        try:
            out = {_INDEX[k]: _a2b(v, strict_mode=True) for k, v in vals.items() if type(v) is str}
        except (KeyError, TypeError, ValueError):
            out = _pcr_bank(bank, vals, size)
        else:
            if len(out) != len(vals) or not _all_of_size(out, size):
                out = _pcr_bank(bank, vals, size)
        pcrs[bank] = out
    attest, sig = obj.get("attest"), obj.get("signature")
    try:  # the common case inline; b64d names the field of anything else
        if type(attest) is str and type(sig) is str:
            return _a2b(attest, strict_mode=True), _a2b(sig, strict_mode=True), pcrs
    except ValueError:
        pass
    return b64d(attest, "attest"), b64d(sig, "signature"), pcrs


_NO_PCRS: Final[dict[str, Any]] = {}


def _all_of_size(values: dict[int, bytes], size: int) -> bool:
    for d in values.values():  # noqa: SIM110 - half the time of all() over a generator
        if len(d) != size:
            return False
    return True


def _pcr_bank(bank: str, vals: dict[Any, Any], size: int) -> dict[int, bytes]:
    """One bank's PCR values, checked one by one; raises BAD_BLOB naming the first bad one."""
    out: dict[int, bytes] = {}
    for k, v in vals.items():
        # ASCII digits only (str.isdigit() also passes '²', which int() refuses) and one
        # spelling per index ("0" and "00" would otherwise silently overwrite each other).
        i = _INDEX.get(k)  # the canonical spellings; anything else is checked in full
        if i is None:
            if not isinstance(k, str) or not (k.isascii() and k.isdigit()) or len(k) > 3:
                raise _bad(f"quote JSON: bad PCR index {k!r}")
            i = int(k)
        d = b64d(v, f"pcrs.{bank}.{k}")
        if len(d) != size:
            raise _bad(f"quote JSON: PCR {bank}:{k} has {len(d)} bytes")
        if i in out:
            raise _bad(f"quote JSON: PCR {bank}:{i} given twice")
        out[i] = d
    return out


@frozen(slots=False)
class PublicKey(_PublicArea):
    """A TPM object's public part: TPM2B_PUBLIC bytes, Name, and SubjectPublicKeyInfo DER."""

    public: bytes
    name: bytes
    handle: int | None = None


@frozen(slots=False)
class EkInfo(_PublicArea):
    """The endorsement key: public area, Name, certificate (DER, TCG NV header stripped)."""

    kind: str
    public: bytes
    name: bytes
    certificate: bytes | None
    handle: int | None = None
    persistent: bool = False
    certificate_url: str | None = None
    """Where the TPM's vendor publishes this EK's certificate (Intel PTT, AMD fTPM), else None."""
    chain: tuple[bytes, ...] = ()
    """Intermediate CA certificates (DER) the TPM keeps for its EK certificates, in the order
    stored (the EK certificate chain NV indices 0x01C00100 on; Intel PTT since 11th-generation
    Core): untrusted, for ``verify_ek_certificate(intermediates=...)``. Not necessarily one
    path, nor leaf-first: the profile sets no order, and RSA and ECC chains may both be there."""
    chain_note: str | None = None
    """What of the chain was skipped and why (an unreadable index, bytes that are not a DER
    certificate, a limit reached); None when everything present was read."""


@frozen(slots=False)
class CertifiedAk:
    """An AK the platform's CA certified (a GCE vTPM's): the blob ``quote`` takes (``TPP1``:
    the TPM derives the key again from its template) and the certificate (DER) from NV."""

    kind: str
    """``rsa`` or ``ecc``."""
    blob: AkBlob
    certificate: bytes
    certificate_index: int
    template_index: int


@frozen(slots=False)
class CredentialChallenge:
    """MakeCredential output: TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET (each with its size)."""

    credential_blob: bytes
    encrypted_secret: bytes

    def to_bytes(self) -> bytes:
        """Our wire form: TPM2B_ID_OBJECT || TPM2B_ENCRYPTED_SECRET."""
        return self.credential_blob + self.encrypted_secret

    def to_tpm2_tools(self) -> bytes:
        """tpm2-tools' credential file (magic 0xBADCC0DE, version 1, then our wire form)."""
        from .tpm2.crypto import (
            write_tpm2_tools_credential,  # (ciphers: not loaded by every verifier)
        )

        return write_tpm2_tools_credential(self.credential_blob, self.encrypted_secret)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> CredentialChallenge:
        """Our wire form or a tpm2-tools credential file (told apart by the magic)."""
        data = bytes(data)
        try:
            if data[:4] == _TOOLS_MAGIC:
                from .tpm2.crypto import read_tpm2_tools_credential

                blob, secret = read_tpm2_tools_credential(data)
            else:
                r = Reader(data)
                p0 = r.pos
                r.tpm2b("credentialBlob")
                blob = data[p0 : r.pos]
                p1 = r.pos
                r.tpm2b("secret")
                secret = data[p1 : r.pos]
                r.done("credential challenge")
        except ParseError as exc:
            raise _bad(f"malformed credential challenge: {exc}") from exc
        if len(blob) <= 2 or len(secret) <= 2:
            raise _bad("empty credential blob or encrypted secret")
        return cls(blob, secret)

    def to_json(self) -> str:
        return json.dumps({"version": 1, "credential_blob": b64e(self.credential_blob),
                           "encrypted_secret": b64e(self.encrypted_secret)})

    @classmethod
    def from_json(cls, text: str | bytes) -> CredentialChallenge:
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, int limits, nesting
            raise _bad(f"challenge JSON: {exc}") from exc
        if not isinstance(obj, dict) or obj.get("version") != 1:
            raise _bad("challenge JSON: missing or unsupported version")
        return cls.from_bytes(b64d(obj.get("credential_blob"), "credential_blob")
                              + b64d(obj.get("encrypted_secret"), "encrypted_secret"))


def bank_name(alg: int) -> str:
    """'sha256' for TPM_ALG_SHA256."""
    try:
        return HASH_NAMES[alg]
    except KeyError:
        raise TpmError(f"unknown hash algorithm 0x{alg:04x}", code=ErrorCode.UNSUPPORTED) from None


def bank_alg(name: str | int) -> int:
    """TPM_ALG id for 'sha256' (or pass an id through)."""
    if isinstance(name, int):
        if name not in HASH_NAMES:
            raise TpmError(f"unknown hash algorithm 0x{name:04x}", code=ErrorCode.INVALID_ARGUMENT)
        return name
    alg = HASH_BY_NAME.get(name.lower().replace("-", ""))
    if alg is None:
        raise TpmError(f"unknown PCR bank {name!r} (expected one of {', '.join(HASH_BY_NAME)})",
                       code=ErrorCode.INVALID_ARGUMENT)
    return alg
