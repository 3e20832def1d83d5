"""TPM 2.0 structures under their spec names (TPM 2.0 Library Part 2), with exact marshalling.

Each structure is a frozen dataclass with ``unmarshal(Reader)`` / ``marshal(Writer)`` and the
convenience pair ``from_bytes`` (must consume every byte) / ``to_bytes``. The families follow
the spec: TPM2B_* are sized buffers (plain ``bytes`` fields, or a wrapper class when they
carry a structure), TPML_* are u32-counted lists, TPMT_*/TPMU_* are tagged unions chosen by
their selector. Unknown selectors raise :class:`ParseError`.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable, Sequence
from dataclasses import field
from typing import ClassVar, Final, Self

from .._frozen import frozen
from .constants import HASH_SIZES, TPM_ALG, TPM_CAP, TPM_ST
from .marshal import ParseError, Reader, Writer

# Upper bounds used to refuse absurd counts before allocating (Part 2 implementation values,
# generously rounded: real TPMs use far smaller numbers).
MAX_PCR_BANKS = 16
MAX_PCR_SELECT = 32  # bytes of a PCR bitmap (256 PCRs)
MAX_DIGESTS = 8  # TPML_DIGEST
MAX_CAP_ITEMS = 1024
_BITS: tuple[tuple[int, ...], ...] = tuple(tuple(i for i in range(8) if b >> i & 1) for b in range(256))
"""For each byte value, the positions of its set bits, ascending."""


class Marshallable:
    """Mixin: ``from_bytes``/``to_bytes`` in terms of ``unmarshal``/``marshal``."""

    __slots__ = ()

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:  # pragma: no cover - overridden
        raise NotImplementedError

    def marshal(self, w: Writer) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Self:
        """Parse exactly ``data``: truncation and trailing bytes raise ParseError."""
        r = Reader(data)
        obj = cls.unmarshal(r)
        r.done(cls.__name__)
        return obj

    def to_bytes(self) -> bytes:
        w = Writer()
        self.marshal(w)
        return w.getvalue()


def _digest_size(alg: int, what: str, pos: int) -> int:
    size = HASH_SIZES.get(alg)
    if size is None:
        raise ParseError(f"unknown hash algorithm 0x{alg:04x}", pos, what)
    return size


# ---------------------------------------------------------------------------------------------
# Sized buffers that appear as standalone evidence or command parameters.


@frozen
class _Tpm2b(Marshallable):
    """A TPM2B_* sized byte buffer."""

    buffer: bytes = b""
    MAX: ClassVar[int] = 0xFFFF

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        return cls(r.tpm2b(cls.__name__, cls.MAX))

    def marshal(self, w: Writer) -> None:
        if len(self.buffer) > self.MAX:
            raise ValueError(f"{type(self).__name__} larger than {self.MAX} bytes")
        w.tpm2b(self.buffer)


class TPM2B_DIGEST(_Tpm2b):
    __slots__ = ()
    MAX = 64


class TPM2B_DATA(_Tpm2b):
    __slots__ = ()
    MAX = 64 + 2


class TPM2B_NONCE(_Tpm2b):
    __slots__ = ()
    MAX = 64


class TPM2B_AUTH(_Tpm2b):
    __slots__ = ()
    MAX = 64


class TPM2B_NAME(_Tpm2b):
    __slots__ = ()
    MAX = 2 + 64


class TPM2B_PRIVATE(_Tpm2b):
    """TPM-wrapped private area; opaque outside the TPM."""
    __slots__ = ()


class TPM2B_ID_OBJECT(_Tpm2b):
    """Credential blob of MakeCredential (integrityHMAC || encIdentity)."""
    __slots__ = ()


class TPM2B_ENCRYPTED_SECRET(_Tpm2b):
    """Seed encrypted to the EK (RSA OAEP ciphertext, or a marshalled ECC point)."""
    __slots__ = ()


class TPM2B_MAX_NV_BUFFER(_Tpm2b):
    __slots__ = ()


class TPM2B_ATTEST(_Tpm2b):
    """Marshalled TPMS_ATTEST as signed by the TPM (keep these exact bytes for verification)."""
    __slots__ = ()


class TPM2B_SENSITIVE_DATA(_Tpm2b):
    __slots__ = ()


class TPM2B_PUBLIC_KEY_RSA(_Tpm2b):
    __slots__ = ()
    MAX = 512


class TPM2B_ECC_PARAMETER(_Tpm2b):
    __slots__ = ()
    MAX = 128


# ---------------------------------------------------------------------------------------------
# PCR selections and digest lists.


@frozen
class TPMS_PCR_SELECTION(Marshallable):
    """One bank's PCR bitmap: bit i of byte j selects PCR 8*j+i."""

    hash: int
    pcr_select: bytes

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        alg = r.u16("TPMS_PCR_SELECTION.hash")
        pos = r.pos
        n = r.u8("TPMS_PCR_SELECTION.sizeofSelect")
        if n > MAX_PCR_SELECT:
            raise ParseError(f"sizeofSelect {n} too large", pos, "TPMS_PCR_SELECTION")
        return cls(alg, r.raw(n, "TPMS_PCR_SELECTION.pcrSelect"))

    def marshal(self, w: Writer) -> None:
        w.u16(self.hash).u8(len(self.pcr_select)).raw(self.pcr_select)

    @classmethod
    def from_indices(cls, hash_alg: int, indices: Iterable[int], size: int = 3) -> Self:
        """Build a bitmap of at least ``size`` bytes selecting ``indices``."""
        idx = sorted(set(indices))
        if idx and idx[0] < 0:
            raise ValueError("PCR index must be >= 0")
        need = max(size, (idx[-1] // 8 + 1) if idx else 0)
        if need > MAX_PCR_SELECT:
            raise ValueError(f"PCR index {idx[-1]} out of range")
        bitmap = bytearray(need)
        for i in idx:
            bitmap[i >> 3] |= 1 << (i & 7)
        return cls(hash_alg, bytes(bitmap))

    def indices(self) -> list[int]:
        """Selected PCR indices, ascending (the order the TPM digests them in)."""
        return list(bitmap_indices(bytes(self.pcr_select)))  # (a bytearray too; bytes is not copied)


@frozen
class TPML_PCR_SELECTION(Marshallable):
    """A list of per-bank PCR selections."""

    selections: tuple[TPMS_PCR_SELECTION, ...] = ()

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        n = r.count("TPML_PCR_SELECTION.count", MAX_PCR_BANKS, 3)
        return cls(tuple(TPMS_PCR_SELECTION.unmarshal(r) for _ in range(n)))

    def marshal(self, w: Writer) -> None:
        w.u32(len(self.selections))
        for s in self.selections:
            s.marshal(w)

    @classmethod
    def of(cls, selections: dict[int, Iterable[int]], size: int = 3) -> Self:
        """Build from {hash_alg: indices}."""
        return cls(tuple(TPMS_PCR_SELECTION.from_indices(h, i, size) for h, i in selections.items()))

    def as_dict(self) -> dict[int, list[int]]:
        """{hash_alg: sorted indices}; a bank listed twice is merged."""
        out: dict[int, list[int]] = {}
        for s in self.selections:
            out.setdefault(s.hash, [])
            out[s.hash] = sorted(set(out[s.hash]) | set(s.indices()))
        return out


@frozen
class TPML_DIGEST(Marshallable):
    """Up to 8 digests (PCR_Read output, PolicyOR input)."""

    digests: tuple[bytes, ...] = ()

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        n = r.count("TPML_DIGEST.count", MAX_DIGESTS, 2)
        return cls(tuple(r.tpm2b("TPML_DIGEST.digests", 64) for _ in range(n)))

    def marshal(self, w: Writer) -> None:
        w.u32(len(self.digests))
        for d in self.digests:
            w.tpm2b(d)


@frozen
class TPMT_HA(Marshallable):
    """A hash algorithm and a digest of its size."""

    hash_alg: int
    digest: bytes

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        pos = r.pos
        alg = r.u16("TPMT_HA.hashAlg")
        if alg == TPM_ALG.NULL:
            return cls(alg, b"")
        return cls(alg, r.raw(_digest_size(alg, "TPMT_HA", pos), "TPMT_HA.digest"))

    def marshal(self, w: Writer) -> None:
        w.u16(self.hash_alg).raw(self.digest)


@frozen
class TPML_DIGEST_VALUES(Marshallable):
    """Digests for several banks (PCR_Extend input)."""

    digests: tuple[TPMT_HA, ...] = ()

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        n = r.count("TPML_DIGEST_VALUES.count", MAX_PCR_BANKS, 2)
        return cls(tuple(TPMT_HA.unmarshal(r) for _ in range(n)))

    def marshal(self, w: Writer) -> None:
        w.u32(len(self.digests))
        for d in self.digests:
            d.marshal(w)


# ---------------------------------------------------------------------------------------------
# Algorithm parameters and schemes.


@frozen
class TPMT_SYM_DEF_OBJECT(Marshallable):
    """Symmetric algorithm of a storage key (NULL for signing keys)."""

    algorithm: int = TPM_ALG.NULL
    key_bits: int = 0
    mode: int = TPM_ALG.NULL

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        alg = r.u16("TPMT_SYM_DEF_OBJECT.algorithm")
        if alg == TPM_ALG.NULL:
            return cls(alg)
        if alg == TPM_ALG.XOR:
            # keyBits is a hash algorithm, mode is empty.
            return cls(alg, r.u16("TPMT_SYM_DEF_OBJECT.keyBits"), TPM_ALG.NULL)
        return cls(alg, r.u16("TPMT_SYM_DEF_OBJECT.keyBits"), r.u16("TPMT_SYM_DEF_OBJECT.mode"))

    def marshal(self, w: Writer) -> None:
        w.u16(self.algorithm)
        if self.algorithm == TPM_ALG.NULL:
            return
        w.u16(self.key_bits)
        if self.algorithm != TPM_ALG.XOR:
            w.u16(self.mode)


TPMT_SYM_DEF = TPMT_SYM_DEF_OBJECT

_SIG_SCHEMES_HASH = {
    TPM_ALG.RSASSA,
    TPM_ALG.RSAPSS,
    TPM_ALG.ECDSA,
    TPM_ALG.SM2,
    TPM_ALG.ECSCHNORR,
    TPM_ALG.HMAC,
}
_ASYM_SCHEMES_HASH = _SIG_SCHEMES_HASH | {TPM_ALG.OAEP, TPM_ALG.ECDH, TPM_ALG.ECMQV}
_KDF_SCHEMES = {TPM_ALG.MGF1, TPM_ALG.KDF1_SP800_56A, TPM_ALG.KDF2, TPM_ALG.KDF1_SP800_108}


@frozen
class TPMT_SCHEME(Marshallable):
    """A scheme selector with its hash (TPMT_RSA_SCHEME, TPMT_ECC_SCHEME, TPMT_SIG_SCHEME...).

    ``count`` is only present for ECDAA. RSAES carries no details.
    """

    scheme: int = TPM_ALG.NULL
    hash_alg: int = TPM_ALG.NULL
    count: int = 0

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        pos = r.pos
        scheme = r.u16("scheme")
        if scheme in (TPM_ALG.NULL, TPM_ALG.RSAES):
            return cls(scheme)
        if scheme in _ASYM_SCHEMES_HASH or scheme in _KDF_SCHEMES:
            return cls(scheme, r.u16("scheme.hashAlg"))
        if scheme == TPM_ALG.ECDAA:
            return cls(scheme, r.u16("scheme.hashAlg"), r.u16("scheme.count"))
        if scheme == TPM_ALG.XOR:
            # TPMS_SCHEME_XOR: hashAlg + kdf; kdf stored in count.
            return cls(scheme, r.u16("scheme.hashAlg"), r.u16("scheme.kdf"))
        raise ParseError(f"unknown scheme 0x{scheme:04x}", pos, "TPMT_SCHEME")

    def marshal(self, w: Writer) -> None:
        w.u16(self.scheme)
        if self.scheme in (TPM_ALG.NULL, TPM_ALG.RSAES):
            return
        w.u16(self.hash_alg)
        if self.scheme in (TPM_ALG.ECDAA, TPM_ALG.XOR):
            w.u16(self.count)


# The spec's several scheme types share one wire shape.
TPMT_SIG_SCHEME = TPMT_SCHEME
TPMT_RSA_SCHEME = TPMT_SCHEME
TPMT_ECC_SCHEME = TPMT_SCHEME
TPMT_KEYEDHASH_SCHEME = TPMT_SCHEME
TPMT_KDF_SCHEME = TPMT_SCHEME


@frozen
class TPMS_RSA_PARMS(Marshallable):
    symmetric: TPMT_SYM_DEF_OBJECT
    scheme: TPMT_SCHEME
    key_bits: int
    exponent: int = 0
    """0 means the default 65537."""

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        return cls(
            TPMT_SYM_DEF_OBJECT.unmarshal(r),
            TPMT_SCHEME.unmarshal(r),
            r.u16("TPMS_RSA_PARMS.keyBits"),
            r.u32("TPMS_RSA_PARMS.exponent"),
        )

    def marshal(self, w: Writer) -> None:
        self.symmetric.marshal(w)
        self.scheme.marshal(w)
        w.u16(self.key_bits).u32(self.exponent)


@frozen
class TPMS_ECC_PARMS(Marshallable):
    symmetric: TPMT_SYM_DEF_OBJECT
    scheme: TPMT_SCHEME
    curve_id: int
    kdf: TPMT_SCHEME = field(default_factory=TPMT_SCHEME)

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        return cls(
            TPMT_SYM_DEF_OBJECT.unmarshal(r),
            TPMT_SCHEME.unmarshal(r),
            r.u16("TPMS_ECC_PARMS.curveID"),
            TPMT_SCHEME.unmarshal(r),
        )

    def marshal(self, w: Writer) -> None:
        self.symmetric.marshal(w)
        self.scheme.marshal(w)
        w.u16(self.curve_id)
        self.kdf.marshal(w)


@frozen
class TPMS_KEYEDHASH_PARMS(Marshallable):
    scheme: TPMT_SCHEME = field(default_factory=TPMT_SCHEME)

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        return cls(TPMT_SCHEME.unmarshal(r))

    def marshal(self, w: Writer) -> None:
        self.scheme.marshal(w)


@frozen
class TPMS_SYMCIPHER_PARMS(Marshallable):
    sym: TPMT_SYM_DEF_OBJECT

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        return cls(TPMT_SYM_DEF_OBJECT.unmarshal(r))

    def marshal(self, w: Writer) -> None:
        self.sym.marshal(w)


@frozen
class TPMS_ECC_POINT(Marshallable):
    x: bytes = b""
    y: bytes = b""

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        return cls(r.tpm2b("TPMS_ECC_POINT.x", 128), r.tpm2b("TPMS_ECC_POINT.y", 128))

    def marshal(self, w: Writer) -> None:
        w.tpm2b(self.x).tpm2b(self.y)


PublicParms = TPMS_RSA_PARMS | TPMS_ECC_PARMS | TPMS_KEYEDHASH_PARMS | TPMS_SYMCIPHER_PARMS
PublicId = bytes | TPMS_ECC_POINT


@frozen
class TPMT_PUBLIC(Marshallable):
    """An object's public area. ``unique`` is bytes (RSA modulus, keyedhash/symcipher digest) or
    a TPMS_ECC_POINT."""

    type: int
    name_alg: int
    object_attributes: int
    auth_policy: bytes
    parameters: PublicParms
    unique: PublicId

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        pos = r.pos
        typ = r.u16("TPMT_PUBLIC.type")
        name_alg = r.u16("TPMT_PUBLIC.nameAlg")
        attrs = r.u32("TPMT_PUBLIC.objectAttributes")
        policy = r.tpm2b("TPMT_PUBLIC.authPolicy", 64)
        params: PublicParms
        unique: PublicId
        if typ == TPM_ALG.RSA:
            params = TPMS_RSA_PARMS.unmarshal(r)
            unique = r.tpm2b("TPMT_PUBLIC.unique.rsa", 512)
        elif typ == TPM_ALG.ECC:
            params = TPMS_ECC_PARMS.unmarshal(r)
            unique = TPMS_ECC_POINT.unmarshal(r)
        elif typ == TPM_ALG.KEYEDHASH:
            params = TPMS_KEYEDHASH_PARMS.unmarshal(r)
            unique = r.tpm2b("TPMT_PUBLIC.unique.keyedHash", 64)
        elif typ == TPM_ALG.SYMCIPHER:
            params = TPMS_SYMCIPHER_PARMS.unmarshal(r)
            unique = r.tpm2b("TPMT_PUBLIC.unique.sym", 64)
        else:
            raise ParseError(f"unknown public type 0x{typ:04x}", pos, "TPMT_PUBLIC")
        return cls(typ, name_alg, attrs, policy, params, unique)

    def marshal(self, w: Writer) -> None:
        w.u16(self.type).u16(self.name_alg).u32(self.object_attributes).tpm2b(self.auth_policy)
        self.parameters.marshal(w)
        if isinstance(self.unique, TPMS_ECC_POINT):
            self.unique.marshal(w)
        else:
            w.tpm2b(self.unique)


@frozen
class TPM2B_PUBLIC(Marshallable):
    """A size-prefixed TPMT_PUBLIC (the form commands and files carry)."""

    public_area: TPMT_PUBLIC

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        inner = r.sized("TPM2B_PUBLIC")
        if inner.remaining == 0:
            raise ParseError("empty public area", r.pos, "TPM2B_PUBLIC")
        area = TPMT_PUBLIC.unmarshal(inner)
        inner.done("TPM2B_PUBLIC")
        return cls(area)

    def marshal(self, w: Writer) -> None:
        w.tpm2b(self.public_area.to_bytes())


@frozen
class TPMS_SENSITIVE_CREATE(Marshallable):
    user_auth: bytes = b""
    data: bytes = b""

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        return cls(r.tpm2b("userAuth", 64), r.tpm2b("data"))

    def marshal(self, w: Writer) -> None:
        w.tpm2b(self.user_auth).tpm2b(self.data)


@frozen
class TPM2B_SENSITIVE_CREATE(Marshallable):
    sensitive: TPMS_SENSITIVE_CREATE = field(default_factory=TPMS_SENSITIVE_CREATE)

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        inner = r.sized("TPM2B_SENSITIVE_CREATE")
        s = TPMS_SENSITIVE_CREATE.unmarshal(inner)
        inner.done("TPM2B_SENSITIVE_CREATE")
        return cls(s)

    def marshal(self, w: Writer) -> None:
        w.tpm2b(self.sensitive.to_bytes())


# ---------------------------------------------------------------------------------------------
# Attestation.


@frozen
class TPMS_CLOCK_INFO(Marshallable):
    clock: int
    reset_count: int
    restart_count: int
    safe: bool

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        clock = r.u64("TPMS_CLOCK_INFO.clock")
        reset = r.u32("TPMS_CLOCK_INFO.resetCount")
        restart = r.u32("TPMS_CLOCK_INFO.restartCount")
        pos = r.pos
        safe = r.u8("TPMS_CLOCK_INFO.safe")
        if safe > 1:
            raise ParseError(f"TPMI_YES_NO value {safe}", pos, "TPMS_CLOCK_INFO.safe")
        return cls(clock, reset, restart, bool(safe))

    def marshal(self, w: Writer) -> None:
        w.u64(self.clock).u32(self.reset_count).u32(self.restart_count).u8(int(self.safe))


@frozen
class TPMS_TIME_INFO(Marshallable):
    time: int
    clock_info: TPMS_CLOCK_INFO

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        return cls(r.u64("TPMS_TIME_INFO.time"), TPMS_CLOCK_INFO.unmarshal(r))

    def marshal(self, w: Writer) -> None:
        w.u64(self.time)
        self.clock_info.marshal(w)


@frozen
class TPMS_CERTIFY_INFO(Marshallable):
    name: bytes
    qualified_name: bytes

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        return cls(r.tpm2b("name", 66), r.tpm2b("qualifiedName", 66))

    def marshal(self, w: Writer) -> None:
        w.tpm2b(self.name).tpm2b(self.qualified_name)


@frozen
class TPMS_QUOTE_INFO(Marshallable):
    pcr_select: TPML_PCR_SELECTION
    pcr_digest: bytes

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        return cls(TPML_PCR_SELECTION.unmarshal(r), r.tpm2b("pcrDigest", 64))

    def marshal(self, w: Writer) -> None:
        self.pcr_select.marshal(w)
        w.tpm2b(self.pcr_digest)


@frozen
class TPMS_COMMAND_AUDIT_INFO(Marshallable):
    audit_counter: int
    digest_alg: int
    audit_digest: bytes
    command_digest: bytes

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        return cls(r.u64("auditCounter"), r.u16("digestAlg"), r.tpm2b("auditDigest", 64),
                   r.tpm2b("commandDigest", 64))

    def marshal(self, w: Writer) -> None:
        w.u64(self.audit_counter).u16(self.digest_alg).tpm2b(self.audit_digest)
        w.tpm2b(self.command_digest)


@frozen
class TPMS_SESSION_AUDIT_INFO(Marshallable):
    exclusive_session: bool
    session_digest: bytes

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        pos = r.pos
        ex = r.u8("exclusiveSession")
        if ex > 1:
            raise ParseError(f"TPMI_YES_NO value {ex}", pos, "TPMS_SESSION_AUDIT_INFO")
        return cls(bool(ex), r.tpm2b("sessionDigest", 64))

    def marshal(self, w: Writer) -> None:
        w.u8(int(self.exclusive_session)).tpm2b(self.session_digest)


@frozen
class TPMS_CREATION_INFO(Marshallable):
    object_name: bytes
    creation_hash: bytes

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        return cls(r.tpm2b("objectName", 66), r.tpm2b("creationHash", 64))

    def marshal(self, w: Writer) -> None:
        w.tpm2b(self.object_name).tpm2b(self.creation_hash)


@frozen
class TPMS_NV_CERTIFY_INFO(Marshallable):
    index_name: bytes
    offset: int
    nv_contents: bytes

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        return cls(r.tpm2b("indexName", 66), r.u16("offset"), r.tpm2b("nvContents"))

    def marshal(self, w: Writer) -> None:
        w.tpm2b(self.index_name).u16(self.offset).tpm2b(self.nv_contents)


@frozen
class TPMS_NV_DIGEST_CERTIFY_INFO(Marshallable):
    index_name: bytes
    nv_digest: bytes

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        return cls(r.tpm2b("indexName", 66), r.tpm2b("nvDigest", 64))

    def marshal(self, w: Writer) -> None:
        w.tpm2b(self.index_name).tpm2b(self.nv_digest)


@frozen
class TPMS_TIME_ATTEST_INFO(Marshallable):
    time: TPMS_TIME_INFO
    firmware_version: int

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        return cls(TPMS_TIME_INFO.unmarshal(r), r.u64("firmwareVersion"))

    def marshal(self, w: Writer) -> None:
        self.time.marshal(w)
        w.u64(self.firmware_version)


AttestInfo = (
    TPMS_CERTIFY_INFO
    | TPMS_CREATION_INFO
    | TPMS_QUOTE_INFO
    | TPMS_COMMAND_AUDIT_INFO
    | TPMS_SESSION_AUDIT_INFO
    | TPMS_TIME_ATTEST_INFO
    | TPMS_NV_CERTIFY_INFO
    | TPMS_NV_DIGEST_CERTIFY_INFO
)

_ATTEST_UNION: dict[int, type[AttestInfo]] = {
    TPM_ST.ATTEST_CERTIFY: TPMS_CERTIFY_INFO,
    TPM_ST.ATTEST_CREATION: TPMS_CREATION_INFO,
    TPM_ST.ATTEST_QUOTE: TPMS_QUOTE_INFO,
    TPM_ST.ATTEST_COMMAND_AUDIT: TPMS_COMMAND_AUDIT_INFO,
    TPM_ST.ATTEST_SESSION_AUDIT: TPMS_SESSION_AUDIT_INFO,
    TPM_ST.ATTEST_TIME: TPMS_TIME_ATTEST_INFO,
    TPM_ST.ATTEST_NV: TPMS_NV_CERTIFY_INFO,
    TPM_ST.ATTEST_NV_DIGEST: TPMS_NV_DIGEST_CERTIFY_INFO,
}


@frozen
class TPMS_ATTEST(Marshallable):
    """What a TPM signs for Quote, Certify, CertifyCreation, ... (magic is not checked here:
    the verifier checks it and reports BAD_MAGIC)."""

    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock_info: TPMS_CLOCK_INFO
    firmware_version: int
    attested: AttestInfo

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        magic = r.u32("TPMS_ATTEST.magic")
        pos = r.pos
        typ = r.u16("TPMS_ATTEST.type")
        info_cls = _ATTEST_UNION.get(typ)
        if info_cls is None:
            raise ParseError(f"unknown attestation type 0x{typ:04x}", pos, "TPMS_ATTEST")
        signer = r.tpm2b("TPMS_ATTEST.qualifiedSigner", 66)
        extra = r.tpm2b("TPMS_ATTEST.extraData", 66)
        clock = TPMS_CLOCK_INFO.unmarshal(r)
        fw = r.u64("TPMS_ATTEST.firmwareVersion")
        return cls(magic, typ, signer, extra, clock, fw, info_cls.unmarshal(r))

    def marshal(self, w: Writer) -> None:
        w.u32(self.magic).u16(self.type).tpm2b(self.qualified_signer).tpm2b(self.extra_data)
        self.clock_info.marshal(w)
        w.u64(self.firmware_version)
        self.attested.marshal(w)


@frozen
class TPMS_CREATION_DATA(Marshallable):
    pcr_select: TPML_PCR_SELECTION
    pcr_digest: bytes
    locality: int
    parent_name_alg: int
    parent_name: bytes
    parent_qualified_name: bytes
    outside_info: bytes

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        return cls(
            TPML_PCR_SELECTION.unmarshal(r),
            r.tpm2b("pcrDigest", 64),
            r.u8("locality"),
            r.u16("parentNameAlg"),
            r.tpm2b("parentName", 66),
            r.tpm2b("parentQualifiedName", 66),
            r.tpm2b("outsideInfo", 66),
        )

    def marshal(self, w: Writer) -> None:
        self.pcr_select.marshal(w)
        w.tpm2b(self.pcr_digest).u8(self.locality).u16(self.parent_name_alg)
        w.tpm2b(self.parent_name).tpm2b(self.parent_qualified_name).tpm2b(self.outside_info)


@frozen
class TPM2B_CREATION_DATA(Marshallable):
    creation_data: TPMS_CREATION_DATA

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        inner = r.sized("TPM2B_CREATION_DATA")
        cd = TPMS_CREATION_DATA.unmarshal(inner)
        inner.done("TPM2B_CREATION_DATA")
        return cls(cd)

    def marshal(self, w: Writer) -> None:
        w.tpm2b(self.creation_data.to_bytes())


@frozen
class TPMT_TK_CREATION(Marshallable):
    """Creation ticket: proves the TPM created the object with this creation data."""

    tag: int
    hierarchy: int
    digest: bytes

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        return cls(r.u16("TPMT_TK_CREATION.tag"), r.u32("TPMT_TK_CREATION.hierarchy"),
                   r.tpm2b("TPMT_TK_CREATION.digest", 64))

    def marshal(self, w: Writer) -> None:
        w.u16(self.tag).u32(self.hierarchy).tpm2b(self.digest)


TPMT_TK_HASHCHECK = TPMT_TK_CREATION
TPMT_TK_VERIFIED = TPMT_TK_CREATION


@frozen
class TPMT_SIGNATURE(Marshallable):
    """A signature: RSASSA/RSAPSS carry ``sig``; ECDSA/ECDAA/SM2/ECSCHNORR carry ``r``/``s``;
    HMAC carries ``sig`` as the digest."""

    sig_alg: int
    hash_alg: int = TPM_ALG.NULL
    sig: bytes = b""
    r: bytes = b""
    s: bytes = b""

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        pos = r.pos
        alg = r.u16("TPMT_SIGNATURE.sigAlg")
        if alg == TPM_ALG.NULL:
            return cls(alg)
        if alg in (TPM_ALG.RSASSA, TPM_ALG.RSAPSS):
            return cls(alg, r.u16("TPMT_SIGNATURE.hash"), r.tpm2b("TPMT_SIGNATURE.sig", 512))
        if alg in (TPM_ALG.ECDSA, TPM_ALG.ECDAA, TPM_ALG.SM2, TPM_ALG.ECSCHNORR):
            h = r.u16("TPMT_SIGNATURE.hash")
            return cls(alg, h, b"", r.tpm2b("TPMT_SIGNATURE.r", 128), r.tpm2b("TPMT_SIGNATURE.s", 128))
        if alg == TPM_ALG.HMAC:
            ha = TPMT_HA.unmarshal(r)
            return cls(alg, ha.hash_alg, ha.digest)
        raise ParseError(f"unknown signature algorithm 0x{alg:04x}", pos, "TPMT_SIGNATURE")

    def marshal(self, w: Writer) -> None:
        w.u16(self.sig_alg)
        if self.sig_alg == TPM_ALG.NULL:
            return
        w.u16(self.hash_alg)
        if self.sig_alg in (TPM_ALG.RSASSA, TPM_ALG.RSAPSS):
            w.tpm2b(self.sig)
        elif self.sig_alg == TPM_ALG.HMAC:
            w.raw(self.sig)
        else:
            w.tpm2b(self.r).tpm2b(self.s)


# ---------------------------------------------------------------------------------------------
# Capabilities and NV.


@frozen
class TPMS_ALG_PROPERTY:
    alg: int
    properties: int


@frozen
class TPMS_TAGGED_PROPERTY:
    property: int
    value: int


@frozen
class TPMS_TAGGED_PCR_SELECT:
    tag: int
    pcr_select: bytes


CapabilityItems = (
    tuple[TPMS_ALG_PROPERTY, ...]
    | tuple[int, ...]
    | TPML_PCR_SELECTION
    | tuple[TPMS_TAGGED_PROPERTY, ...]
    | tuple[TPMS_TAGGED_PCR_SELECT, ...]
)


@frozen
class TPMS_CAPABILITY_DATA(Marshallable):
    """GetCapability output: ``data`` depends on ``capability`` (algorithms, handles, commands,
    PCR banks, properties, PCR properties, curves)."""

    capability: int
    data: CapabilityItems

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        pos = r.pos
        cap = r.u32("TPMS_CAPABILITY_DATA.capability")
        data: CapabilityItems
        if cap == TPM_CAP.ALGS:
            n = r.count("TPML_ALG_PROPERTY.count", MAX_CAP_ITEMS, 6)
            data = tuple(TPMS_ALG_PROPERTY(r.u16("alg"), r.u32("algProperties")) for _ in range(n))
        elif cap in (TPM_CAP.HANDLES, TPM_CAP.COMMANDS, TPM_CAP.PP_COMMANDS, TPM_CAP.AUDIT_COMMANDS):
            n = r.count("TPML_HANDLE.count", MAX_CAP_ITEMS, 4)
            data = tuple(r.u32("handle") for _ in range(n))
        elif cap == TPM_CAP.PCRS:
            data = TPML_PCR_SELECTION.unmarshal(r)
        elif cap == TPM_CAP.TPM_PROPERTIES:
            n = r.count("TPML_TAGGED_TPM_PROPERTY.count", MAX_CAP_ITEMS, 8)
            data = tuple(TPMS_TAGGED_PROPERTY(r.u32("property"), r.u32("value")) for _ in range(n))
        elif cap == TPM_CAP.PCR_PROPERTIES:
            n = r.count("TPML_TAGGED_PCR_PROPERTY.count", MAX_CAP_ITEMS, 5)
            items = []
            for _ in range(n):
                tag = r.u32("tag")
                p = r.pos
                size = r.u8("sizeofSelect")
                if size > MAX_PCR_SELECT:
                    raise ParseError(f"sizeofSelect {size} too large", p, "TPMS_TAGGED_PCR_SELECT")
                items.append(TPMS_TAGGED_PCR_SELECT(tag, r.raw(size, "pcrSelect")))
            data = tuple(items)
        elif cap == TPM_CAP.ECC_CURVES:
            n = r.count("TPML_ECC_CURVE.count", MAX_CAP_ITEMS, 2)
            data = tuple(r.u16("curve") for _ in range(n))
        else:
            raise ParseError(f"unsupported capability 0x{cap:x}", pos, "TPMS_CAPABILITY_DATA")
        return cls(cap, data)

    def marshal(self, w: Writer) -> None:
        w.u32(self.capability)
        d = self.data
        if isinstance(d, TPML_PCR_SELECTION):
            d.marshal(w)
            return
        w.u32(len(d))
        for item in d:
            if isinstance(item, TPMS_ALG_PROPERTY):
                w.u16(item.alg).u32(item.properties)
            elif isinstance(item, TPMS_TAGGED_PROPERTY):
                w.u32(item.property).u32(item.value)
            elif isinstance(item, TPMS_TAGGED_PCR_SELECT):
                w.u32(item.tag).u8(len(item.pcr_select)).raw(item.pcr_select)
            elif self.capability == TPM_CAP.ECC_CURVES:
                w.u16(item)
            else:
                w.u32(item)


@frozen
class TPMS_NV_PUBLIC(Marshallable):
    nv_index: int
    name_alg: int
    attributes: int
    auth_policy: bytes
    data_size: int

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        return cls(r.u32("nvIndex"), r.u16("nameAlg"), r.u32("attributes"),
                   r.tpm2b("authPolicy", 64), r.u16("dataSize"))

    def marshal(self, w: Writer) -> None:
        w.u32(self.nv_index).u16(self.name_alg).u32(self.attributes).tpm2b(self.auth_policy)
        w.u16(self.data_size)


@frozen
class TPM2B_NV_PUBLIC(Marshallable):
    nv_public: TPMS_NV_PUBLIC

    @classmethod
    def unmarshal(cls, r: Reader) -> Self:
        inner = r.sized("TPM2B_NV_PUBLIC")
        v = TPMS_NV_PUBLIC.unmarshal(inner)
        inner.done("TPM2B_NV_PUBLIC")
        return cls(v)

    def marshal(self, w: Writer) -> None:
        w.tpm2b(self.nv_public.to_bytes())


@functools.lru_cache(maxsize=256)
def bitmap_indices(bitmap: bytes) -> tuple[int, ...]:
    """The PCR indices a pcrSelect bitmap selects, ascending (bitmaps repeat: computed once each)."""
    return tuple(8 * j + i for j, byte in enumerate(bitmap) for i in _BITS[byte])


def pcr_selection(bank: int, indices: Sequence[int], size: int = 3) -> TPML_PCR_SELECTION:
    """A single-bank TPML_PCR_SELECTION."""
    return TPML_PCR_SELECTION((TPMS_PCR_SELECTION.from_indices(bank, indices, size),))


# ---------------------------------------------------------------------------------------------
# Fast readers for the parts of an AK blob a verifier reads on every enrollment. Each accepts
# exactly the bytes the generic parser above accepts (same bounds, exact length) and returns
# None for anything else, so that the caller lets the generic parser raise its precise error.

_ATTEST_HEAD = struct.Struct(">IHH")
_SIG_HEAD = struct.Struct(">HHH")
_u16_at = struct.Struct(">H").unpack_from
_u32_at = struct.Struct(">I").unpack_from


def _attest_head(data: bytes, typ: int) -> tuple[int, int, int, int] | None:
    """(magic, qualifiedSigner size, extraData size, offset of the attested union) of a
    TPMS_ATTEST of type ``typ``, or None (another type, or a head TPMS_ATTEST would refuse)."""
    n = len(data)
    if n < 8:
        return None
    magic, t, ns = _ATTEST_HEAD.unpack_from(data)
    if t != typ or ns > 66:
        return None
    o = 8 + ns
    if o + 2 > n:
        return None
    (ne,) = _u16_at(data, o)
    o += 2 + ne
    if ne > 66 or o + 25 > n or data[o + 16] > 1:  # clock u64, resetCount, restartCount, safe, fw u64
        return None
    return magic, ns, ne, o + 25


def creation_attest_fields(data: bytes) -> tuple[int, bytes, bytes, bytes, bytes] | None:
    """(magic, qualifiedSigner, extraData, objectName, creationHash) of a TPMS_ATTEST of type
    ATTEST_CREATION, or None (another type, or bytes TPMS_ATTEST.from_bytes would refuse)."""
    head = _attest_head(data, TPM_ST.ATTEST_CREATION)
    if head is None:
        return None
    magic, ns, ne, o = head
    n, e0 = len(data), 10 + ns
    if o + 2 > n:
        return None
    (nn,) = _u16_at(data, o)
    n0 = o + 2
    o = n0 + nn
    if nn > 66 or o + 2 > n:
        return None
    (nh,) = _u16_at(data, o)
    h0 = o + 2
    if nh > 64 or h0 + nh != n:
        return None
    return magic, data[8 : 8 + ns], data[e0 : e0 + ne], data[n0 : n0 + nn], data[h0:]


def creation_data_outside_info(data: bytes) -> bytes | None:
    """outsideInfo of TPMS_CREATION_DATA bytes, or None (bytes TPMS_CREATION_DATA.from_bytes
    would refuse)."""
    n = len(data)
    if n < 4:
        return None
    (count,) = _u32_at(data, 0)
    if count > MAX_PCR_BANKS or count * 3 > n - 4:
        return None
    o = 4
    for _ in range(count):  # TPMS_PCR_SELECTION: hash u16, sizeofSelect u8, pcrSelect
        if o + 3 > n or data[o + 2] > MAX_PCR_SELECT:
            return None
        o += 3 + data[o + 2]
    if o + 2 > n:
        return None
    (size,) = _u16_at(data, o)  # pcrDigest
    o += 2 + size
    if size > 64 or o + 3 > n:  # locality u8, parentNameAlg u16
        return None
    o += 3
    for limit in (66, 66):  # parentName, parentQualifiedName
        if o + 2 > n:
            return None
        (size,) = _u16_at(data, o)
        o += 2 + size
        if size > limit:
            return None
    if o + 2 > n:
        return None
    (size,) = _u16_at(data, o)
    if size > 66 or o + 2 + size != n:
        return None
    return data[o + 2 :]


_SIG_SINGLE: Final = frozenset({TPM_ALG.RSASSA, TPM_ALG.RSAPSS})
_SIG_PAIR: Final = frozenset({TPM_ALG.ECDSA, TPM_ALG.ECDAA, TPM_ALG.SM2, TPM_ALG.ECSCHNORR})


def signature_is_exact(data: bytes) -> bool:
    """True when ``data`` is exactly one RSA or ECC TPMT_SIGNATURE that TPMT_SIGNATURE.from_bytes
    accepts; False means "ask the generic parser" (other algorithms, or anything it refuses)."""
    n = len(data)
    if n < 6:
        return False
    alg, _hash, size = _SIG_HEAD.unpack_from(data, 0)
    if alg in _SIG_SINGLE:
        return bool(size <= 512 and 6 + size == n)
    if alg in _SIG_PAIR:
        o = 6 + size
        if size > 128 or o + 2 > n:
            return False
        (size,) = _u16_at(data, o)
        return bool(size <= 128 and o + 2 + size == n)
    return False


def _skip_pcr_selection(data: bytes, o: int, n: int) -> int | None:
    """Offset after a TPML_PCR_SELECTION at ``o`` (bounds as TPML_PCR_SELECTION.unmarshal), or None."""
    if o + 4 > n:
        return None
    (count,) = _u32_at(data, o)
    o += 4
    if count > MAX_PCR_BANKS or count * 3 > n - o:
        return None
    for _ in range(count):
        if o + 3 > n or data[o + 2] > MAX_PCR_SELECT:
            return None
        o += 3 + data[o + 2]
    return o if o <= n else None


def quote_attest_digest(data: bytes) -> bytes | None:
    """pcrDigest of a TPMS_ATTEST of type ATTEST_QUOTE, or None (another type, or bytes
    TPMS_ATTEST.from_bytes would refuse): what a device checks its PCR reads against."""
    head = _attest_head(data, TPM_ST.ATTEST_QUOTE)
    if head is None:
        return None
    n = len(data)
    end = _skip_pcr_selection(data, head[3], n)
    if end is None or end + 2 > n:
        return None
    (nd,) = _u16_at(data, end)
    if nd > 64 or end + 2 + nd != n:
        return None
    return data[end + 2 :]
