"""Quote verification: ``verify_quote`` and its ``QuoteResult``.

Order of checks (each failure raises ``VerificationError`` with its own ``Reason``):

1. the signature, before any byte of the attestation is interpreted: TPMT_SIGNATURE
   algorithm and hash must be the AK's own scheme (SCHEME_MISMATCH), SHA-1 only when
   ``allow_sha1`` (WEAK_KEY), and it must verify over the exact TPMS_ATTEST bytes
   (BAD_SIGNATURE). The AK itself was checked to be a restricted signing key when its
   ``AkPublic`` was built, so a quote-shaped blob signed by any other key cannot pass;
2. magic TPM_GENERATED_VALUE (BAD_MAGIC), type ATTEST_QUOTE (WRONG_TYPE), the whole
   TPMS_ATTEST parsed with no trailing byte (MALFORMED);
3. extraData == nonce, constant time (NONCE_MISMATCH); an empty nonce is refused unless
   ``allow_empty_nonce`` (EMPTY_NONCE);
4. at least one PCR in the quote's selection, no bank selected twice; the supplied PCR values
   are exactly the selected banks and exactly their selected indices, nothing missing and
   nothing extra (PCR_SELECTION: the CVE-2022-0317 class). A quote over several banks
   (``tpm2_quote -l sha1:0,1+sha256:0,1``) is verified whole; its result reports every bank
   in ``banks`` and one of them, SHA-256 when quoted, as ``bank``/``pcrs``;
5. pcrDigest == H(values of the selected PCRs, bank by bank in the selection's order, each
   bank's in ascending index order), where H is the hash
   of the signing scheme (TPM 2.0 Part 3, TPM2_Quote: the PCR digest is computed with the
   hash algorithm of the signing scheme, not the AK's nameAlg). Because each value is taken
   from the index the signed selection gives it, a value relabeled under another PCR index
   fails here or at step 4. PCP identity keys sign RSASSA-SHA1, so their pcrDigest is SHA-1
   even over the SHA-256 bank (PCR_DIGEST_MISMATCH);
6. optional ``expected_pcrs`` (PCR_VALUE_MISMATCH).

Speed: the hot path is built to stay within a few microseconds of the bare OpenSSL signature
verification. The AK's key, padding, hash objects and the expected TPMT_SIGNATURE header are
cached on the ``AkPublic``; a quote's TPMS_ATTEST is unpacked by one precompiled
``struct.Struct`` per layout (learnt from the first quote of that layout, which goes through
the generic parser and must unpack identically); PCR selections map to cached index tuples
and ``operator.itemgetter``s; the PCR values are hashed with one hashlib object. The result
defers building Python objects (the PCR dict, TPMS_CLOCK_INFO) to first access: every check
has already run when ``verify_quote`` returns.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from hmac import compare_digest as _compare_digest
from operator import itemgetter
from types import MappingProxyType
from typing import Any, Final, TypeAlias, cast

from cryptography.exceptions import InvalidSignature

from ..errors import TpmError
from ..evidence import AK_FORMATS, AkBlob, Quote, quote_json_parts
from ..tpm2.constants import (
    HASH_BY_NAME,
    HASH_NAMES,
    HASH_SIZES,
    TPM_ALG,
    TPM_ST,
)
from ..tpm2.structures import TPMS_CLOCK_INFO, TPMS_QUOTE_INFO, TPMT_PUBLIC
from .ak import _KIND_ECDSA, _KIND_RSASSA, AkPublic, check_ak, parse_attest
from .errors import Reason, VerificationError

__all__ = ["QuoteResult", "verify_quote"]

PcrValues: TypeAlias = Mapping[int, bytes]
PcrInput: TypeAlias = Mapping[str, PcrValues] | PcrValues
QuoteInput: TypeAlias = Quote | tuple[bytes, bytes, PcrInput] | str
AkInput: TypeAlias = AkPublic | AkBlob | bytes | bytearray | memoryview | str | TPMT_PUBLIC
ExpectedPcrs: TypeAlias = Mapping[int, bytes] | Mapping[str, Mapping[int, bytes]] | Mapping[int | str, Any]

_LAYOUT_KEY: Final = itemgetter(0, 1, 2, 3, 6, 7, 8, 9, 10)
"""Fields of the unpacked quote that a cached layout fixes: magic, type, bank, the selection
bitmap, every length.

The hot struct unpacks (0 magic, 1 type, 2 signer size, 3 extraData size, 4 extraData,
5 safe, 6 selection count, 7 bank, 8 sizeofSelect, 9 pcrSelect, 10 digest size, 11 pcrDigest)
and skips qualifiedSigner, clock, resetCount, restartCount and firmwareVersion, which the
result decodes from the (verified) attest bytes only if they are asked for."""
_CLOCK: Final = struct.Struct(">QIIBQ")
_MAX_LAYOUTS: Final = 64
_MAX_SELECTIONS: Final = 256
_MAX_AKS: Final = 1024
_new = object.__new__
_set = object.__setattr__

# Banks we accept in a quote's selection: alg -> (name, digest size).
_BANKS: Final[dict[int, tuple[str, int]]] = {alg: (HASH_NAMES[alg], size) for alg, size in HASH_SIZES.items()}

QuoteLayout: TypeAlias = tuple[struct.Struct, tuple[Any, ...], str, int, bool, int, int,
                               tuple[int, ...], Callable[[Any], Any], struct.Struct]
"""A learnt quote TPMS_ATTEST layout: the precompiled struct, the values it fixes, bank name,
bank digest size, bank is SHA-1, the qualifiedSigner / extraData sizes (to find the fields the
struct skips), and for its selection: the indices (empty when it selects no PCR), the getter of
their values, and the struct splitting their concatenation back into values."""
_NO_PCR: Final[tuple[int, ...]] = ()

_LAYOUTS: dict[int, QuoteLayout] = {}
"""Length of a quote's TPMS_ATTEST -> the layout learnt from the last quote of that length.

A layout is shared by every AK: it is learnt from a quote that the generic parser read to the
same values, and a quote uses it only when every field it fixes (magic, type, bank and each
length) is equal, so the bytes parse exactly as the generic parser would read them."""

_AKS: dict[tuple[bytes, bool], AkPublic] = {}
"""(AK public area bytes, allow_sha1) -> its checked AkPublic: a bounded cache for callers that
pass the AK as bytes on every call (a stateless verifier). An AkPublic is immutable and a
function of those bytes alone, so a hit is exactly what parsing them again would build."""

Selection: TypeAlias = tuple[tuple[int, ...], Callable[[Any], Any]]
_SELECTIONS: dict[bytes, Selection] = {}
"""pcrSelect bitmap -> (ascending indices, getter returning their values as a tuple)."""


def _fail(reason: Reason, detail: str) -> VerificationError:
    return VerificationError(reason, detail)


def _selection(bitmap: bytes) -> Selection:
    """Decode a pcrSelect bitmap once; refuse a selection of no PCR."""
    sel = _SELECTIONS.get(bitmap)
    if sel is not None:
        return sel
    idx = tuple(8 * j + i for j, byte in enumerate(bitmap) for i in range(8) if byte >> i & 1)
    if not idx:
        raise _fail(Reason.PCR_SELECTION, "the quote selects no PCR")
    getter: Callable[[Any], Any]
    if len(idx) == 1:
        only = idx[0]

        def getter(values: Any) -> tuple[Any]:
            return (values[only],)
    else:
        getter = itemgetter(*idx)
    if len(_SELECTIONS) >= _MAX_SELECTIONS:
        _SELECTIONS.clear()
    sel = _SELECTIONS[bitmap] = (idx, getter)
    return sel


class QuoteResult:
    """A verified quote (immutable; only ever returned when every check passed).

    ``pcrs`` {index: value} of the one quoted bank ``bank`` ("sha256"), ``hash_alg`` its
    TPM_ALG id, ``clock_info`` (and ``clock``, ``reset_count``, ``restart_count``, ``safe``),
    ``firmware_version``, ``signer_name`` (qualifiedSigner), ``extra_data`` (the nonce),
    ``pcr_digest``.
    """

    __slots__ = ("_banks", "_pcrs", "_v")
    _v: tuple[tuple[Any, ...], str, tuple[int, ...], tuple[bytes, ...], bytes, QuoteLayout]
    """(hot fields, bank name, indices, the values as hashed (immutable bytes), attest, layout)."""
    _pcrs: Mapping[int, bytes]
    _banks: Mapping[str, Mapping[int, bytes]]

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"QuoteResult is immutable (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"QuoteResult is immutable (cannot delete {name!r})")

    def _info(self) -> tuple[int, int, int, int, int]:
        """(clock, resetCount, restartCount, safe, firmwareVersion) from the verified attest."""
        _, _, _, _, attest, layout = self._v
        return _CLOCK.unpack_from(attest, 10 + layout[5] + layout[6])

    @property
    def pcrs(self) -> Mapping[int, bytes]:
        """{PCR index: value} of the quoted bank, ascending (read-only)."""
        try:
            return self._pcrs
        except AttributeError:
            m = MappingProxyType(dict(zip(self._v[2], self._v[3], strict=True)))
            _set(self, "_pcrs", m)
            return m

    @property
    def bank(self) -> str:
        """Name of the quoted PCR bank ("sha256"); of a quote over several banks, SHA-256 when
        it is one of them, else the first selected."""
        return self._v[1]

    @property
    def banks(self) -> Mapping[str, Mapping[int, bytes]]:
        """{bank: {PCR index: value}} of every quoted bank, in the selection's order
        (``{bank: pcrs}`` for a quote over one bank)."""
        try:
            return self._banks
        except AttributeError:
            m = MappingProxyType({self.bank: self.pcrs})
            _set(self, "_banks", m)
            return m

    @property
    def hash_alg(self) -> int:
        """TPM_ALG id of the quoted PCR bank."""
        return int(self._v[0][7])

    @property
    def extra_data(self) -> bytes:
        """attest.extraData: the nonce the quote was made over."""
        return bytes(self._v[0][4])

    @property
    def signer_name(self) -> bytes:
        """attest.qualifiedSigner: the AK's qualified Name."""
        attest, layout = self._v[4], self._v[5]
        return attest[8 : 8 + layout[5]]

    @property
    def clock(self) -> int:
        return self._info()[0]

    @property
    def reset_count(self) -> int:
        return self._info()[1]

    @property
    def restart_count(self) -> int:
        return self._info()[2]

    @property
    def safe(self) -> bool:
        return bool(self._v[0][5])

    @property
    def clock_info(self) -> TPMS_CLOCK_INFO:
        clock, reset, restart, safe, _ = self._info()
        return TPMS_CLOCK_INFO(clock, reset, restart, bool(safe))

    @property
    def firmware_version(self) -> int:
        return self._info()[4]

    @property
    def pcr_digest(self) -> bytes:
        """pcrDigest as signed (hash of the signing scheme over the selected values)."""
        return bytes(self._v[0][11])

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (hex strings)."""
        return {
            "bank": self.bank,
            "pcrs": {str(i): v.hex() for i, v in self.pcrs.items()},
            "extra_data": self.extra_data.hex(),
            "signer_name": self.signer_name.hex(),
            "clock": self.clock,
            "reset_count": self.reset_count,
            "restart_count": self.restart_count,
            "safe": self.safe,
            "firmware_version": self.firmware_version,
            "pcr_digest": self.pcr_digest.hex(),
            **({"banks": {b: {str(i): v.hex() for i, v in vals.items()} for b, vals in self.banks.items()}}
               if len(self.banks) > 1 else {}),
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuoteResult):
            return NotImplemented
        return self._v[4] == other._v[4] and self.pcrs == other.pcrs

    def __hash__(self) -> int:
        return hash(self._v[4])

    def __repr__(self) -> str:
        return (f"QuoteResult(bank={self.bank!r}, pcrs={sorted(self.pcrs)}, "
                f"reset_count={self.reset_count}, restart_count={self.restart_count}, "
                f"firmware_version=0x{self.firmware_version:x})")


# -- slow paths (first quote of a layout, errors, unusual inputs) -------------------------------


def _to_ak(ak: AkInput, allow_sha1: bool) -> AkPublic:
    if isinstance(ak, AkPublic):
        return ak
    if isinstance(ak, AkBlob | str):
        return check_ak(ak, allow_sha1=allow_sha1)
    if isinstance(ak, TPMT_PUBLIC):
        return AkPublic.from_public(ak, allow_sha1=allow_sha1)
    data = bytes(ak)
    cached = _AKS.get((data, allow_sha1))
    if cached is not None:
        return cached
    if data[:4].decode("ascii", "replace") in AK_FORMATS or data.lstrip()[:1] == b"{":
        return check_ak(data, allow_sha1=allow_sha1)  # a blob: its creation is checked every time
    checked = AkPublic.from_public(data, allow_sha1=allow_sha1)
    if len(_AKS) >= _MAX_AKS:
        del _AKS[next(iter(_AKS))]  # the oldest entry
    _AKS[data, allow_sha1] = checked
    return checked


def _split_quote(quote: QuoteInput) -> tuple[bytes, bytes, PcrInput]:
    if isinstance(quote, str):
        try:
            return quote_json_parts(quote)
        except TpmError as exc:
            raise _fail(Reason.MALFORMED, str(exc)) from exc
    if isinstance(quote, Quote):
        return bytes(quote.attest), bytes(quote.signature), quote.pcrs
    if isinstance(quote, tuple | list) and len(quote) == 3:
        attest, sig, pcrs = quote
        return bytes(attest), bytes(sig), pcrs if pcrs is not None else {}
    raise TypeError("quote must be a Quote, its JSON, or (attest_bytes, signature_bytes, pcrs)")


def _parse_attest(attest: bytes) -> tuple[tuple[Any, ...], QuoteLayout]:
    """Generic parse of a quote's TPMS_ATTEST into the fast path's tuple; learns its layout."""
    att = parse_attest(bytes(attest), TPM_ST.ATTEST_QUOTE)
    info = att.attested
    assert isinstance(info, TPMS_QUOTE_INFO)
    sels = info.pcr_select.selections
    if len(sels) != 1:
        raise _SeveralBanks(att)
    sel = sels[0]
    bank_info = _BANKS.get(sel.hash)
    if bank_info is None:
        raise _fail(Reason.UNSUPPORTED_FORMAT, f"PCR bank 0x{sel.hash:04x}")
    c = att.clock_info
    signer, extra, bitmap, digest = att.qualified_signer, att.extra_data, sel.pcr_select, info.pcr_digest
    fields = (att.magic, att.type, len(signer), len(extra), extra, int(c.safe), 1, sel.hash, len(bitmap), bitmap,
              len(digest), digest)
    st = struct.Struct(f">IHH{len(signer)}xH{len(extra)}s16xB8xIHB{len(bitmap)}sH{len(digest)}s")
    try:
        idx, getter = _selection(bitmap)
    except VerificationError:  # selects no PCR: refused at step 4, after the nonce check
        idx, getter = _NO_PCR, tuple
    layout: QuoteLayout = (st, _LAYOUT_KEY(fields), bank_info[0], bank_info[1], sel.hash == TPM_ALG.SHA1,
                           len(signer), len(extra), idx, getter, struct.Struct(f"{bank_info[1]}s" * len(idx)))
    if st.size == len(attest) and st.unpack(attest) == fields:
        if len(_LAYOUTS) >= _MAX_LAYOUTS:
            _LAYOUTS.clear()
        _LAYOUTS[len(attest)] = layout
    return fields, layout


def _pcr_values_slow(pcrs: PcrInput, bank: str, bank_alg: int) -> PcrValues:
    """The supplied values of the quoted bank; PCR_SELECTION when another bank is supplied."""
    if not isinstance(pcrs, Mapping):
        raise _fail(Reason.MALFORMED, "PCR values must be a mapping")
    if pcrs and all(isinstance(k, int) and not isinstance(v, Mapping) for k, v in pcrs.items()):
        return cast(PcrValues, pcrs)  # {index: value}: the quoted bank's values
    banks = {HASH_BY_NAME.get(k.lower()) if isinstance(k, str) else k for k in pcrs}
    if len(pcrs) != 1 or banks != {bank_alg}:
        names = sorted(str(k) for k in pcrs)
        raise _fail(Reason.PCR_SELECTION,
                    f"PCR values supplied for bank(s) {names or 'none'}; the quote covers {bank} only")
    for k, v in pcrs.items():
        if isinstance(v, Mapping):
            return v
        raise _fail(Reason.MALFORMED, f"PCR values of bank {k!r} must be a mapping")
    raise AssertionError("unreachable")  # pragma: no cover


def _pcr_bytes(vals: tuple[Any, ...], size: int, bank: str) -> tuple[bytes, ...]:
    """Immutable copies of bytes-like PCR values of ``size`` bytes; MALFORMED otherwise."""
    out = []
    for v in vals:
        if not isinstance(v, bytes | bytearray | memoryview):
            raise _fail(Reason.MALFORMED, f"PCR values must be bytes, not {type(v).__name__}")
        b = bytes(v)
        if len(b) != size:
            raise _fail(Reason.MALFORMED, f"a {bank} PCR value of {len(b)} bytes")
        out.append(b)
    return tuple(out)


def _selection_mismatch(values: PcrValues, idx: tuple[int, ...], bank: str) -> VerificationError:
    supplied = set(values)
    selected = set(idx)
    parts = []
    if supplied - selected:
        parts.append(f"supplied but not quoted: {sorted(supplied - selected, key=str)}")
    if selected - supplied:
        parts.append(f"quoted but not supplied: {sorted(selected - supplied)}")
    return _fail(Reason.PCR_SELECTION, f"bank {bank}: " + "; ".join(parts or ["index mismatch"]))


def _check_expected(expected: ExpectedPcrs, banks: Mapping[str, Mapping[int, bytes]], primary: str) -> None:
    """``expected_pcrs`` against the quoted ``banks``: {index: value} is for ``primary``.

    Every expectation is checked, never merged: {0: A} and {"sha256": {0: B}} (or one bank
    under two spellings) are two expectations, and a value meeting only one of them fails."""
    by_bank: dict[str, list[tuple[int, Any]]] = {}
    for k, v in expected.items():
        if isinstance(k, int) and not isinstance(v, Mapping):
            by_bank.setdefault(primary, []).append((k, v))
            continue
        if not isinstance(v, Mapping):
            raise TypeError("expected_pcrs: {index: bytes} or {bank: {index: bytes}}")
        alg = HASH_BY_NAME.get(k.lower()) if isinstance(k, str) else k
        name = HASH_NAMES.get(alg) if isinstance(alg, int) else None
        if name is None or name not in banks:
            if v:
                raise _fail(Reason.PCR_VALUE_MISMATCH,
                            f"expected values for bank {k}, the quote covers {', '.join(banks)}")
            continue
        by_bank.setdefault(name, []).extend(v.items())
    for bank, want in by_bank.items():
        got = banks[bank]
        for i, value in sorted(want, key=lambda e: e[0]):
            have = got.get(i)
            if have is None:
                raise _fail(Reason.PCR_VALUE_MISMATCH, f"PCR {bank}:{i} is expected but not quoted")
            if have != bytes(value):
                raise _fail(Reason.PCR_VALUE_MISMATCH,
                            f"PCR {bank}:{i} is {have.hex()}, expected {bytes(value).hex()}")


# -- quotes over several banks ------------------------------------------------------------------


class _SeveralBanks(Exception):
    """Raised by the generic parse for a selection of other than one bank: the whole quote
    goes to :func:`_verify_banks` (never the fast path)."""

    def __init__(self, att: Any) -> None:
        super().__init__("several banks")
        self.att = att


_PREFERRED: Final = ("sha256", "sha384", "sha512", "sm3_256")
"""The bank a quote over several reports as ``bank``: the first of these it covers."""


def _verify_banks(att: Any, attest: bytes, nonce: bytes, pcrs: PcrInput, pcr_hash: Any,
                  expected_pcrs: ExpectedPcrs | None, allow_sha1: bool) -> QuoteResult:
    """Steps 3 to 6 for a quote whose selection names several banks (or none)."""
    info = att.attested
    assert isinstance(info, TPMS_QUOTE_INFO)
    if not _compare_digest(att.extra_data, nonce):
        raise _fail(Reason.NONCE_MISMATCH, "extraData of the quote is not the nonce")
    chosen: list[tuple[str, int, int, tuple[int, ...], bytes]] = []  # name, alg, size, indices, bitmap
    seen: set[int] = set()
    for sel in info.pcr_select.selections:
        bank_info = _BANKS.get(sel.hash)
        if bank_info is None:
            raise _fail(Reason.UNSUPPORTED_FORMAT, f"PCR bank 0x{sel.hash:04x}")
        if sel.hash in seen:
            raise _fail(Reason.PCR_SELECTION, f"the quote selects bank {bank_info[0]} twice")
        seen.add(sel.hash)
        try:
            idx = _selection(bytes(sel.pcr_select))[0]
        except VerificationError:
            continue  # a bank with no PCR selected adds nothing to the digest
        if sel.hash == TPM_ALG.SHA1 and not allow_sha1:
            raise _fail(Reason.WEAK_KEY, "the quote covers the SHA-1 PCR bank, which is refused")
        chosen.append((bank_info[0], sel.hash, bank_info[1], idx, bytes(sel.pcr_select)))
    if not chosen:
        raise _fail(Reason.PCR_SELECTION, "the quote selects no PCR")
    supplied = _supplied_banks(pcrs, chosen)
    banks: dict[str, Mapping[int, bytes]] = {}
    joined: list[bytes] = []
    for name, _alg, size, idx, _bitmap in chosen:
        values = supplied[name]
        if len(values) != len(idx) or any(i not in values for i in idx):
            raise _selection_mismatch(values, idx, name)
        kept = _pcr_bytes(tuple(values[i] for i in idx), size, name)
        banks[name] = MappingProxyType(dict(zip(idx, kept, strict=True)))
        joined.extend(kept)
    if pcr_hash(b"".join(joined)).digest() != bytes(info.pcr_digest):
        raise _fail(Reason.PCR_DIGEST_MISMATCH, "the supplied PCR values do not hash to the quoted pcrDigest")
    primary = next((c for p in _PREFERRED for c in chosen if c[0] == p), chosen[0])
    name, alg, size, idx, bitmap = primary
    if expected_pcrs is not None:
        _check_expected(expected_pcrs, banks, name)
    signer, extra, digest = bytes(att.qualified_signer), bytes(att.extra_data), bytes(info.pcr_digest)
    f = (att.magic, att.type, len(signer), len(extra), extra, int(att.clock_info.safe), len(chosen), alg,
         len(bitmap), bitmap, len(digest), digest)
    layout: QuoteLayout = (_NO_STRUCT, (), name, size, alg == TPM_ALG.SHA1, len(signer), len(extra), idx,
                           tuple, _NO_STRUCT)
    res = _new(QuoteResult)
    _set(res, "_v", (f, name, idx, tuple(banks[name][i] for i in idx), attest, layout))
    _set(res, "_banks", MappingProxyType(banks))
    return res


_NO_STRUCT: Final = struct.Struct("")


def _supplied_banks(pcrs: PcrInput, chosen: list[tuple[str, int, int, tuple[int, ...], bytes]]
                    ) -> dict[str, Mapping[Any, Any]]:
    """The supplied values by bank name: exactly the quoted banks (PCR_SELECTION otherwise)."""
    if not isinstance(pcrs, Mapping):
        raise _fail(Reason.MALFORMED, "PCR values must be a mapping")
    by_alg: dict[int, Mapping[Any, Any]] = {}
    for k, v in pcrs.items():
        alg = HASH_BY_NAME.get(k.lower()) if isinstance(k, str) else k if isinstance(k, int) else None
        if not isinstance(v, Mapping) or alg is None or isinstance(alg, bool) or alg in by_alg:
            raise _fail(Reason.PCR_SELECTION,
                        "a quote over several banks takes {bank: {index: value}} for each quoted bank")
        by_alg[alg] = v
    want = {c[1] for c in chosen}
    if set(by_alg) != want:
        names = sorted(str(k) for k in pcrs)
        raise _fail(Reason.PCR_SELECTION, f"PCR values supplied for bank(s) {names or 'none'}; the quote "
                    f"covers {', '.join(c[0] for c in chosen)}")
    return {c[0]: by_alg[c[1]] for c in chosen}


# -- the verifier ---------------------------------------------------------------------------------


def verify_quote(
    ak: AkInput,
    quote: QuoteInput,
    *,
    nonce: bytes | None,
    expected_pcrs: ExpectedPcrs | None = None,
    allow_empty_nonce: bool = False,
    allow_sha1: bool = True,
) -> QuoteResult:
    """Verify a TPM2_Quote made by ``ak`` over ``nonce``; return what it proves, or raise.

    ``ak``: an ``AkPublic`` (fastest; from ``check_ak`` or ``AkPublic.from_public``), an AK
    blob (checked with ``check_ak``) or TPM2B_PUBLIC/TPMT_PUBLIC bytes. ``quote``: a
    ``Quote``, its JSON, or ``(attest_bytes, signature_bytes, pcrs)`` where pcrs is
    ``{bank: {index: value}}`` or ``{index: value}``. ``expected_pcrs``: ``{index: value}``
    (for the quoted bank) or ``{bank: {index: value}}``. See the module docstring for the
    order of checks and the ``Reason`` of each failure.
    """
    if type(ak) is not AkPublic:
        # AK bytes seen before (the stateless verifier's common case): straight from the cache.
        ak = (type(ak) is bytes and _AKS.get((ak, allow_sha1))) or _to_ak(ak, allow_sha1)
    sized = False  # True: every PCR value is bytes of its bank's size (quote_json_parts checked)
    if type(quote) is Quote:
        attest = quote.attest
        sig = quote.signature
        pcrs: PcrInput = quote.pcrs
        if type(attest) is not bytes or type(sig) is not bytes:
            attest, sig = bytes(attest), bytes(sig)
    elif type(quote) is str:
        try:
            attest, sig, pcrs = quote_json_parts(quote)
        except TpmError as exc:
            raise _fail(Reason.MALFORMED, str(exc)) from exc
        sized = True
    else:
        attest, sig, pcrs = _split_quote(quote)
    if not nonce:
        if not allow_empty_nonce:
            raise _fail(Reason.EMPTY_NONCE, "no nonce given: a quote over no nonce can be replayed")
        nonce = b""
    kind, head, sig_len, verify, pad, hash_obj, pcr_hash, sha1 = ak._q
    if sha1 and not allow_sha1:
        raise _fail(Reason.WEAK_KEY, "the AK uses SHA-1, which is refused")

    # 1. Signature, under the AK's own scheme, before anything of the attest is believed.
    try:
        if kind == _KIND_ECDSA:
            if not sig.startswith(head):
                ak.verify_signature(attest, sig, allow_sha1=allow_sha1)  # raises the precise error
            verify(ak._ecdsa_signature(sig), attest, pad)
        else:
            if len(sig) != sig_len or not sig.startswith(head):
                ak.verify_signature(attest, sig, allow_sha1=allow_sha1)  # raises the precise error
            if kind == _KIND_RSASSA:  # what the key recovers is DigestInfo || H(attest), exactly
                if verify(sig[6:], pad, None) != hash_obj + pcr_hash(attest).digest():
                    raise InvalidSignature
            else:
                verify(sig[6:], pcr_hash(attest).digest(), pad, hash_obj)  # hash_obj: Prehashed
    except InvalidSignature:
        raise _fail(Reason.BAD_SIGNATURE, "the quote signature does not verify under the AK") from None

    # 2. Magic, type, exact parse: one precompiled unpack for a known layout (which also
    #    fixes magic, type, the bank and every length field).
    layout = _LAYOUTS.get(len(attest))
    if layout is not None:
        f = layout[0].unpack(attest)
        if _LAYOUT_KEY(f) != layout[1]:
            layout = None
    if layout is None:
        try:
            f, layout = _parse_attest(attest)
        except _SeveralBanks as several:
            return _verify_banks(several.att, attest, nonce, pcrs, pcr_hash, expected_pcrs, allow_sha1)
    if f[5] > 1:
        raise _fail(Reason.MALFORMED, f"TPMS_CLOCK_INFO.safe is {f[5]}")

    # 3. Nonce, constant time.
    if not _compare_digest(f[4], nonce):
        raise _fail(Reason.NONCE_MISMATCH, "extraData of the quote is not the nonce")

    # 4. One bank; supplied values == selected indices, exactly.
    bank = layout[2]
    if not allow_sha1 and layout[4]:
        raise _fail(Reason.WEAK_KEY, "the quote covers the SHA-1 PCR bank, which is refused")
    idx = layout[7]
    if not idx:
        raise _fail(Reason.PCR_SELECTION, "the quote selects no PCR")
    values = pcrs.get(bank) if type(pcrs) is dict and len(pcrs) == 1 else None
    if type(values) is not dict:  # anything else (None, a list...) is checked by the slow path
        values = _pcr_values_slow(pcrs, bank, f[7])
    if len(values) != len(idx):
        raise _selection_mismatch(values, idx, bank)
    try:
        vals = layout[8](values)
    except KeyError:
        raise _selection_mismatch(values, idx, bank) from None
    # Each value exactly `size` bytes: their concatenation split back at `size` gives them again.
    # The result keeps the split concatenation (immutable bytes), never the caller's objects.
    if sized:
        kept, joined = vals, b"".join(vals)
    else:
        split = layout[9]
        try:
            joined = b"".join(vals)
        except TypeError:
            joined = b""  # not bytes-like: _pcr_bytes names it
        if len(joined) != split.size or (kept := split.unpack(joined)) != vals:
            kept = _pcr_bytes(vals, layout[3], bank)  # MALFORMED unless each is `size` bytes
            joined = b"".join(kept)

    # 5. pcrDigest under the signing scheme's hash, over the values in selection order.
    if pcr_hash(joined).digest() != f[11]:
        raise _fail(Reason.PCR_DIGEST_MISMATCH,
                    "the supplied PCR values do not hash to the quoted pcrDigest")

    # 6. Expected values.
    if expected_pcrs is not None:
        _check_expected(expected_pcrs, {bank: dict(zip(idx, kept, strict=True))}, bank)

    res = _new(QuoteResult)
    _set(res, "_v", (f, bank, idx, kept, attest, layout))
    return res
