"""The files tpm2-tools writes around a quote: PCR value files and plain signatures.

PCR value files (``tpm2_quote -o``, ``tpm2_pcrread -o``), by ``-F`` format:

``serialized`` (tpm2_quote's default) -- C structures of tpm2-tss written as they lie in
  memory, little-endian: a ``TPML_PCR_SELECTION`` (u32 count, then 16 ``TPMS_PCR_SELECTION``
  slots of 8 bytes: u16 hash, u8 sizeofSelect, pcrSelect[4], one pad byte; 132 bytes in all),
  a u32 count of ``TPML_DIGEST`` that follow, and each ``TPML_DIGEST`` (u32 count, then 8
  ``TPM2B_DIGEST`` slots of 66 bytes: u16 size, 64-byte buffer; 532 bytes). PCR_Read returns at
  most 8 digests per call, so 24 PCRs take 3 lists. Checked against tpm2-tools 5.4 (lib/pcr.c,
  ``pcr_fwrite_serialized``): one list is 668 bytes, three 1732.
``values`` (tpm2_pcrread's default) -- the digests alone, concatenated bank after bank in
  ascending PCR order; the selection must come from elsewhere (the quote itself).
``marshaled`` (newer tpm2-tools) -- the same content in TPM wire form, big-endian: a marshaled
  ``TPML_PCR_SELECTION``, a u32 count, that many marshaled ``TPML_DIGEST``.

Plain signatures (``-f plain``): an RSA signature's bytes; an ECDSA signature as the DER
``ECDSA-Sig-Value`` SEQUENCE { r INTEGER, s INTEGER } (RFC 5480). The default ``tss`` format
is a marshaled TPMT_SIGNATURE.

Everything here raises :class:`ParseError` on malformed input; sizes are bounded.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

from .constants import HASH_NAMES, HASH_SIZES, TPM_ALG
from .marshal import ParseError, Reader, Writer
from .structures import TPMT_SIGNATURE

__all__ = [
    "PcrBanks",
    "Selection",
    "pcr_file_format",
    "read_pcr_file",
    "signature_from_plain",
    "write_pcr_file",
]

PcrBanks = dict[str, dict[int, bytes]]
"""{bank name: {PCR index: digest}}."""
Selection = Sequence[tuple[int, Sequence[int]]]
"""[(hash algorithm, PCR indices)], in the order the digests follow it."""

NUM_PCR_BANKS: Final = 16          # TPM2_NUM_PCR_BANKS
PCR_SELECT_MAX: Final = 4          # TPM2_PCR_SELECT_MAX: (TPM2_MAX_PCRS 32 + 7) / 8
MAX_DIGESTS: Final = 8             # TPML_DIGEST.digests[8]
MAX_DIGEST_LISTS: Final = 32       # tpm2_pcrs.pcr_values[TPM2_MAX_PCRS]
DIGEST_BUFFER: Final = 64          # sizeof(TPMU_HA)
_SEL: Final = struct.Struct("<HB4sx")            # TPMS_PCR_SELECTION, 8 bytes with padding
_SELECTION_SIZE: Final = 4 + NUM_PCR_BANKS * _SEL.size  # 132
_DIGEST: Final = struct.Struct(f"<H{DIGEST_BUFFER}s")    # TPM2B_DIGEST, 66 bytes
_LIST_SIZE: Final = 4 + MAX_DIGESTS * _DIGEST.size       # 532


def _bank(alg: int, what: str) -> tuple[str, int]:
    name = HASH_NAMES.get(alg)
    if name is None:
        raise ParseError(f"unknown PCR bank algorithm 0x{alg:04x}", None, what)
    return name, HASH_SIZES[alg]


def _bits(select: bytes) -> list[int]:
    return [i for i in range(len(select) * 8) if select[i // 8] >> (i % 8) & 1]


def _assign(selection: Selection, digests: Sequence[bytes], what: str) -> PcrBanks:
    """Pair digests with a selection in order, checking count and sizes."""
    wanted = sum(len(idx) for _alg, idx in selection)
    if len(digests) != wanted:
        raise ParseError(f"{len(digests)} digests for {wanted} selected PCRs", None, what)
    out: PcrBanks = {}
    it = iter(digests)
    for alg, idx in selection:
        name, size = _bank(alg, what)
        bank = out.setdefault(name, {})
        for i in idx:
            d = next(it)
            if len(d) != size:
                raise ParseError(f"a {name} digest of {len(d)} bytes for PCR {i}", None, what)
            if i in bank:
                raise ParseError(f"PCR {name}:{i} appears twice", None, what)
            bank[i] = d
    return out


def _serialized(data: bytes) -> PcrBanks:
    what = "tpm2-tools serialized PCR file"
    count = int.from_bytes(data[0:4], "little")
    if not 1 <= count <= NUM_PCR_BANKS:
        raise ParseError(f"{count} PCR banks", 0, what)
    selection: list[tuple[int, list[int]]] = []
    for n in range(count):
        alg, size, select = _SEL.unpack_from(data, 4 + n * _SEL.size)
        if size > PCR_SELECT_MAX:
            raise ParseError(f"sizeofSelect {size}", 4 + n * _SEL.size, what)
        selection.append((alg, _bits(select[:size])))
    lists = int.from_bytes(data[_SELECTION_SIZE:_SELECTION_SIZE + 4], "little")
    if len(data) != _SELECTION_SIZE + 4 + lists * _LIST_SIZE or lists > MAX_DIGEST_LISTS:
        raise ParseError(f"{len(data)} bytes do not hold {lists} digest lists", None, what)
    digests: list[bytes] = []
    for n in range(lists):
        base = _SELECTION_SIZE + 4 + n * _LIST_SIZE
        k = int.from_bytes(data[base:base + 4], "little")
        if k > MAX_DIGESTS:
            raise ParseError(f"digest list of {k} entries", base, what)
        for j in range(k):
            size, buf = _DIGEST.unpack_from(data, base + 4 + j * _DIGEST.size)
            if size > DIGEST_BUFFER:
                raise ParseError(f"digest of {size} bytes", base + 4 + j * _DIGEST.size, what)
            digests.append(buf[:size])
    return _assign(selection, digests, what)


def _marshaled(data: bytes) -> PcrBanks:
    what = "tpm2-tools marshaled PCR file"
    r = Reader(data)
    count = r.u32("TPML_PCR_SELECTION.count")
    if not 1 <= count <= NUM_PCR_BANKS:
        raise ParseError(f"{count} PCR banks", 0, what)
    selection: list[tuple[int, list[int]]] = []
    for _ in range(count):
        alg = r.u16("TPMS_PCR_SELECTION.hash")
        size = r.u8("sizeofSelect")
        if size > PCR_SELECT_MAX:
            raise ParseError(f"sizeofSelect {size}", r.pos, what)
        selection.append((alg, _bits(r.raw(size, "pcrSelect"))))
    lists = r.u32("digest list count")
    if lists > MAX_DIGEST_LISTS:
        raise ParseError(f"{lists} digest lists", r.pos, what)
    digests: list[bytes] = []
    for _ in range(lists):
        k = r.u32("TPML_DIGEST.count")
        if k > MAX_DIGESTS:
            raise ParseError(f"digest list of {k} entries", r.pos, what)
        digests.extend(r.tpm2b("TPM2B_DIGEST", DIGEST_BUFFER) for _ in range(k))
    r.done(what)
    return _assign(selection, digests, what)


def _values(data: bytes, selection: Selection) -> PcrBanks:
    what = "tpm2-tools PCR values file"
    sizes = [_bank(alg, what)[1] for alg, idx in selection for _ in idx]
    if len(data) != sum(sizes):
        raise ParseError(f"{len(data)} bytes, but the selection takes {sum(sizes)}", None, what)
    digests, pos = [], 0
    for size in sizes:
        digests.append(data[pos:pos + size])
        pos += size
    return _assign(selection, digests, what)


def pcr_file_format(data: bytes, selection: Selection | None = None) -> str | None:
    """Which format ``data`` is in: "serialized", "marshaled", "values" (only when its size
    is the one ``selection`` takes), or None. The formats cannot be mistaken for each other:
    serialized has a fixed size per digest list and a little-endian count, marshaled a
    big-endian one, values no header at all."""
    n = len(data)
    if n >= _SELECTION_SIZE + 4 and (n - _SELECTION_SIZE - 4) % _LIST_SIZE == 0 and \
            1 <= int.from_bytes(data[0:4], "little") <= NUM_PCR_BANKS:
        return "serialized"
    if n >= 8 and 1 <= int.from_bytes(data[0:4], "big") <= NUM_PCR_BANKS:
        try:
            _marshaled(data)
        except ParseError:
            pass
        else:
            return "marshaled"
    if selection is not None:
        size = 0
        for alg, idx in selection:
            if alg not in HASH_SIZES:
                return None
            size += HASH_SIZES[alg] * len(idx)
        if n == size:
            return "values"
    return None


def read_pcr_file(data: bytes, selection: Selection | None = None) -> PcrBanks:
    """The PCR values of a tpm2-tools PCR file in any of its formats; a ``values`` file needs
    ``selection`` (e.g. the quote's own) to say which PCR each digest is."""
    data = bytes(data)
    if len(data) > _SELECTION_SIZE + 4 + MAX_DIGEST_LISTS * _LIST_SIZE:
        raise ParseError(f"{len(data)} bytes is too large for a PCR file", None, "PCR file")
    fmt = pcr_file_format(data, selection)
    if fmt == "serialized":
        return _serialized(data)
    if fmt == "marshaled":
        return _marshaled(data)
    if fmt == "values" and selection is not None:
        return _values(data, selection)
    expect = ""
    if selection is not None:
        total = sum(HASH_SIZES.get(alg, 0) * len(idx) for alg, idx in selection)
        expect = f" (nor the {total} bytes of digests the selection takes)"
    raise ParseError(f"{len(data)} bytes are not a serialized or marshaled tpm2-tools PCR file"
                     f"{expect}", None, "PCR file")


def write_pcr_file(pcrs: PcrBanks, fmt: str = "serialized") -> bytes:
    """The tpm2-tools PCR file of ``pcrs`` (banks in the given order, ascending indices);
    for tests and for handing our quotes to tpm2_checkquote."""
    from .constants import HASH_BY_NAME

    selection = [(HASH_BY_NAME[b], sorted(v)) for b, v in pcrs.items()]
    digests = [pcrs[HASH_NAMES[alg]][i] for alg, idx in selection for i in idx]
    lists = [digests[k:k + MAX_DIGESTS] for k in range(0, len(digests), MAX_DIGESTS)]
    if fmt == "values":
        return b"".join(digests)
    if fmt == "marshaled":
        w = Writer().u32(len(selection))
        for alg, idx in selection:
            select = bytearray(3)
            for i in idx:
                select[i // 8] |= 1 << (i % 8)
            w.u16(alg).u8(len(select)).raw(bytes(select))
        w.u32(len(lists))
        for lst in lists:
            w.u32(len(lst))
            for d in lst:
                w.tpm2b(d)
        return w.getvalue()
    if fmt != "serialized":
        raise ValueError(f"unknown PCR file format {fmt!r}")
    out = bytearray(len(selection).to_bytes(4, "little"))
    for alg, idx in selection:
        select = bytearray(PCR_SELECT_MAX)
        for i in idx:
            select[i // 8] |= 1 << (i % 8)
        out += _SEL.pack(alg, 3, bytes(select))
    out += bytes(_SELECTION_SIZE - len(out))
    out += len(lists).to_bytes(4, "little")
    for lst in lists:
        block = bytearray(len(lst).to_bytes(4, "little"))
        for d in lst:
            block += _DIGEST.pack(len(d), d)
        out += block + bytes(_LIST_SIZE - len(block))
    return bytes(out)


def _der_length(r: Reader) -> int:
    first = r.u8("DER length")
    if first < 0x80:
        return first
    n = first & 0x7F
    if not 1 <= n <= 2:
        raise ParseError("DER length too large", r.pos, "ECDSA signature")
    value = int.from_bytes(r.raw(n, "DER length"), "big")
    if value < 0x80 or (n == 2 and value < 0x100):
        raise ParseError("DER length not minimal", r.pos, "ECDSA signature")
    return value


def _der_integer(r: Reader, size: int) -> bytes:
    if r.u8("DER tag") != 0x02:
        raise ParseError("expected an INTEGER", r.pos, "ECDSA signature")
    body = r.raw(_der_length(r), "INTEGER")
    if not body or body[0] & 0x80:
        raise ParseError("INTEGER empty or negative", r.pos, "ECDSA signature")
    value = body.lstrip(b"\0")
    if len(value) > size:
        raise ParseError(f"INTEGER of {len(value)} bytes for a {size}-byte curve", r.pos,
                         "ECDSA signature")
    return value.rjust(size, b"\0")


def signature_from_plain(data: bytes, sig_alg: int, hash_alg: int, *, size: int) -> bytes:
    """A marshaled TPMT_SIGNATURE from a tpm2-tools ``-f plain`` signature, under the scheme
    ``sig_alg``/``hash_alg`` the key mandates. ``size``: the RSA modulus or curve coordinate
    length in bytes (the RSA signature must have exactly that length)."""
    data = bytes(data)
    if sig_alg in (TPM_ALG.RSASSA, TPM_ALG.RSAPSS):
        if len(data) != size:
            raise ParseError(f"RSA signature of {len(data)} bytes for a {size}-byte key", None,
                             "plain signature")
        return TPMT_SIGNATURE(sig_alg, hash_alg, sig=data).to_bytes()
    if sig_alg == TPM_ALG.ECDSA:
        r = Reader(data)
        if r.u8("DER tag") != 0x30:
            raise ParseError("expected a DER SEQUENCE", 0, "ECDSA signature")
        if _der_length(r) != r.remaining:
            raise ParseError("SEQUENCE length differs from the data", r.pos, "ECDSA signature")
        sig_r, sig_s = _der_integer(r, size), _der_integer(r, size)
        r.done("ECDSA signature")
        return TPMT_SIGNATURE(sig_alg, hash_alg, r=sig_r, s=sig_s).to_bytes()
    raise ParseError(f"no plain form for signature algorithm 0x{sig_alg:04x}", None, "signature")
