"""Parse IMA measurement lists, binary and ASCII, as the kernel's ima_fs.c writes them.

Binary (``binary_runtime_measurements[_<alg>]``), per entry: ``u32 pcr``, the template hash
(20 bytes in the classic file, the bank's size in a per-bank file), ``u32`` template-name
length, the name, then ``u32`` template-data length and the data (``u32 len || data`` per
field) -- except for the legacy ``ima`` template, written as the 20-byte digest, ``u32``
name length and the name without its NUL. Integers are in the kernel's byte order
(little-endian on every common platform, and always with ``ima_canonical_fmt``).

ASCII (``ascii_runtime_measurements[_<alg>]``): ``"%2d %s %s"`` (PCR, template hash in hex,
template name), then each field preceded by one space (nothing when the field is empty),
then a newline. The kernel turns spaces in names into ``_``, so fields never contain spaces.

Every framing error raises :class:`ImaLogError` with the offset (and line); field contents
are kept as they are and checked by verification (the template hash binds them). Time is
linear in the input, memory proportional to it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final

from . import algorithms
from .entry import U32_BY_ORDER, ImaEntry, encode_fields
from .errors import ImaLogError
from .log import ImaLog
from .templates import FIELDS, MAX_FIELDS, MAX_TEMPLATE_NAME, REQUIRED, UINT_SIZES, template_fields

MAX_PCR: Final = 31
LEGACY_DIGEST: Final = 20
LEGACY_NAME_MAX: Final = 255
"""The ``ima`` template's name field holds at most IMA_EVENT_NAME_LEN_MAX characters."""

_SIZES_TO_ALG: Final = {20: "sha1", 32: "sha256", 48: "sha384", 64: "sha512"}
_TEMPLATE_NAME: Final = re.compile(rb"[\x21-\x7e]{1,255}\Z")


def list_bytes(data: bytes | bytearray | memoryview | str) -> bytes:
    """The bytes of a list given as bytes or text (text: UTF-8, undecodable file-name bytes
    as ``surrogateescape`` keeps them); ImaLogError for text no bytes decode to."""
    if not isinstance(data, str):
        return bytes(data)
    try:
        return data.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise ImaLogError(f"text list is not UTF-8 (character {data[exc.start]!r})",
                          offset=len(data[:exc.start].encode("utf-8", "surrogateescape"))) from None


def _resolve_alg(template_hash: str | None) -> str | None:
    if template_hash is None:
        return None
    alg = algorithms.canonical(template_hash)
    if alg is None:
        raise ValueError(f"unknown template-hash algorithm {template_hash!r}")
    return alg


def parse_ima_log(data: bytes | bytearray | memoryview | str, *, template_hash: str | None = None,
                  byteorder: str = "auto", start: int = 0, offset: int = 0) -> ImaLog:
    """Parse an IMA measurement list (binary or ASCII, told apart by its first byte).

    ``template_hash``: the algorithm of the listed template hashes (``sha1`` for the classic
    files, the bank's name for ``*_runtime_measurements_<alg>``); by default guessed from
    their size (20 sha1, 32 sha256, 48 sha384, 64 sha512 -- name ``sm3``/``sha3-256`` lists
    explicitly). ``byteorder``: of binary length fields (``auto`` tells it from the first
    PCR field) and of the lengths ASCII fields are re-encoded with. ``start`` and
    ``offset``: the whole-list index and byte offset of the first entry, for a tail a device
    sent from entry N on (entry offsets and errors then speak of the whole list). An empty
    input is an empty list. Raises ImaLogError.
    """
    buf = list_bytes(data)
    alg = _resolve_alg(template_hash)
    if byteorder not in ("auto", "little", "big"):
        raise ValueError("byteorder must be 'auto', 'little' or 'big'")
    if start < 0 or offset < 0:
        raise ValueError("start and offset must be >= 0")
    if not buf:
        return ImaLog((), format="binary", hash_alg=alg or "sha1",
                      byteorder="little" if byteorder == "auto" else byteorder, start=start,
                      end_offset=offset)
    try:
        if buf[:1] in b"0123456789 ":
            return _parse_ascii(buf, alg, "little" if byteorder == "auto" else byteorder, start, offset)
        return _parse_binary(buf, alg, byteorder, start, offset)
    except ImaLogError as exc:
        if offset and exc.offset is not None:  # report whole-list offsets
            raise ImaLogError(exc.message, offset=exc.offset + offset, line=exc.line,
                              entry=exc.entry) from None
        raise


# -- binary -------------------------------------------------------------------------------------


def _byteorder(buf: bytes, start: int) -> str:
    if len(buf) < 4:
        raise ImaLogError(f"truncated entry: {len(buf)} bytes", offset=0, entry=start)
    if int.from_bytes(buf[:4], "little") <= MAX_PCR:
        return "little"
    if int.from_bytes(buf[:4], "big") <= MAX_PCR:
        return "big"
    raise ImaLogError(f"PCR field 0x{buf[:4].hex()} is not a PCR index (not an IMA list?)",
                      offset=0, entry=start)


def _plausible_size(buf: bytes, size: int, order: str) -> bool:
    """Does the first entry frame well with a template hash of ``size`` bytes?"""
    p = 4 + size
    if len(buf) < p + 4:
        return False
    nlen = int.from_bytes(buf[p : p + 4], order)  # type: ignore[arg-type]
    return 0 < nlen <= MAX_TEMPLATE_NAME and _TEMPLATE_NAME.match(buf[p + 4 : p + 4 + nlen]) is not None


def _template_info(raw: bytes, offset: int, index: int,
                   cache: dict[bytes, tuple[str, tuple[str, ...] | None]],
                   line: int | None = None) -> tuple[str, tuple[str, ...] | None]:
    info = cache.get(raw)
    if info is None:
        if _TEMPLATE_NAME.match(raw) is None:
            raise ImaLogError(f"template name {raw[:40]!r} is not printable ASCII",
                              offset=offset, entry=index, line=line)
        name = raw.decode("ascii")
        info = cache[raw] = (name, template_fields(name))
    return info


def _parse_binary(buf: bytes, alg: str | None, byteorder: str, start: int, base: int) -> ImaLog:
    order = _byteorder(buf, start) if byteorder == "auto" else byteorder
    if alg is None:
        for size, name in _SIZES_TO_ALG.items():
            if _plausible_size(buf, size, order):
                alg = name
                break
        else:
            raise ImaLogError("cannot frame the first entry with a 20/32/48/64-byte template "
                              "hash: name the list's template hash algorithm", offset=0, entry=start)
    dsize = algorithms.DIGEST_SIZES[alg]
    u32 = U32_BY_ORDER[order].unpack_from
    n = len(buf)
    pos = 0
    index = start
    entries: list[ImaEntry] = []
    append = entries.append
    cache: dict[bytes, tuple[str, tuple[str, ...] | None]] = {}
    head = 8 + dsize
    while pos < n:
        if n - pos < head:
            raise ImaLogError(f"truncated entry header: {n - pos} bytes left, need {head}",
                              offset=pos, entry=index)
        pcr = u32(buf, pos)[0]
        if pcr > MAX_PCR:
            raise ImaLogError(f"PCR {pcr} is out of range", offset=pos, entry=index)
        p = pos + 4 + dsize
        th = buf[pos + 4 : p]
        nlen = u32(buf, p)[0]
        p += 4
        if not 0 < nlen <= MAX_TEMPLATE_NAME or nlen > n - p:
            raise ImaLogError(f"template name length {nlen} is impossible", offset=p - 4, entry=index)
        name, ids = _template_info(buf[p : p + nlen], p, index, cache)
        p += nlen
        if name == "ima":
            if n - p < LEGACY_DIGEST + 4:
                raise ImaLogError("truncated 'ima' entry", offset=p, entry=index)
            d = buf[p : p + LEGACY_DIGEST]
            p += LEGACY_DIGEST
            ln = u32(buf, p)[0]
            p += 4
            if ln > LEGACY_NAME_MAX or ln > n - p:
                raise ImaLogError(f"'ima' name length {ln} is impossible", offset=p - 4, entry=index)
            fname = buf[p : p + ln]
            if b"\0" in fname:
                raise ImaLogError("'ima' name contains a NUL", offset=p, entry=index)
            p += ln
            append(ImaEntry(index, base + pos, pcr, th, name, ("d", "n"), (d, fname + b"\0"), None))
        else:
            if n - p < 4:
                raise ImaLogError("truncated template data length", offset=p, entry=index)
            tlen = u32(buf, p)[0]
            p += 4
            if tlen > n - p:
                raise ImaLogError(f"template data length {tlen} exceeds the {n - p} bytes left",
                                  offset=p - 4, entry=index)
            tdata = buf[p : p + tlen]
            fields = _split_fields(tdata, u32, p, index, ids)
            p += tlen
            append(ImaEntry(index, base + pos, pcr, th, name, ids, fields, tdata))
        pos = p
        index += 1
    return ImaLog(tuple(entries), format="binary", hash_alg=alg, byteorder=order, start=start,
                  end_offset=base + n)


def _split_fields(tdata: bytes, unpack: Any, at: int, index: int,
                  ids: tuple[str, ...] | None) -> tuple[bytes, ...]:
    """The fields of length-prefixed template data; exactly the template's count (any count
    up to IMA_TEMPLATE_NUM_FIELDS_MAX for an unknown template), nothing left over."""
    out: list[bytes] = []
    append = out.append
    limit = MAX_FIELDS if ids is None else len(ids)
    q = 0
    end = len(tdata)
    n = 0
    while q < end:
        if n == limit:
            raise ImaLogError("template data has more fields than its template",
                              offset=at + q, entry=index)
        if end - q < 4:
            raise ImaLogError("truncated field length", offset=at + q, entry=index)
        nq = q + 4 + unpack(tdata, q)[0]
        if nq > end:
            raise ImaLogError(f"field length {nq - q - 4} exceeds the template data",
                              offset=at + q, entry=index)
        append(tdata[q + 4 : nq])
        q = nq
        n += 1
    if ids is not None and n != limit:
        raise ImaLogError(f"template data has {n} fields, its template {limit}",
                          offset=at, entry=index)
    return tuple(out)


# -- ASCII --------------------------------------------------------------------------------------


class _Bad(Exception):
    """A field token that does not decode (turned into an ImaLogError with its line)."""


def _unhex(tok: bytes) -> bytes:
    """Hex digits only (``bytes.fromhex`` alone would skip whitespace)."""
    try:
        raw = bytes.fromhex(tok.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise _Bad("is not hex") from None
    if 2 * len(raw) != len(tok):
        raise _Bad("is not hex")
    return raw


def _decoder(fid: str, order: str) -> Callable[[bytes], bytes]:
    """How an ASCII token of field ``fid`` becomes the field's data."""
    kind = FIELDS[fid]
    if kind == "string":
        if fid == "xattrnames":
            return lambda tok: tok + b"\0" if tok else b""
        return lambda tok: tok + b"\0"
    if kind == "uint":
        size = UINT_SIZES[fid]

        def uint(tok: bytes) -> bytes:
            if not tok:
                return b""
            if not tok.isdigit() or len(tok) > 20:
                raise _Bad(f"{tok[:20]!r} is not a decimal number")
            value = int(tok)
            if value >> (8 * size):
                raise _Bad(f"value {value} does not fit {size} bytes")
            return value.to_bytes(size, order)  # type: ignore[arg-type]
        return uint
    if kind == "digest_ng":
        colons = 1 if fid == "d-ngv2" else 0

        def digest_ng(tok: bytes) -> bytes:
            if not tok:
                return b""
            prefix, colon, hexpart = tok.rpartition(b":")
            if not colon or not prefix:
                raise _Bad(f"{tok[:40]!r} is not <algo>:<hex>")
            if prefix.count(b":") != colons:
                raise _Bad(f"{tok[:40]!r} has a wrong prefix")
            try:
                return prefix + b":\0" + _unhex(hexpart)
            except _Bad:
                raise _Bad(f"{tok[:40]!r} is not <algo>:<hex>") from None
        return digest_ng
    return _unhex  # digest / hex


def _decoders(ids: tuple[str, ...], order: str,
              cache: dict[tuple[tuple[str, ...], str], tuple[Callable[[bytes], bytes], ...]]
              ) -> tuple[Callable[[bytes], bytes], ...]:
    key = (ids, order)
    got = cache.get(key)
    if got is None:
        got = cache[key] = tuple(_decoder(f, order) for f in ids)
    return got


def _parse_ascii(buf: bytes, alg: str | None, order: str, start: int, base: int) -> ImaLog:
    entries: list[ImaEntry] = []
    append = entries.append
    cache: dict[bytes, tuple[str, tuple[str, ...] | None]] = {}
    decoders: dict[tuple[tuple[str, ...], str], tuple[Callable[[bytes], bytes], ...]] = {}
    dsize = algorithms.DIGEST_SIZES[alg] if alg else None
    index = start
    offset = 0
    lines = buf.split(b"\n")
    last = len(lines) - 1
    for lineno, line in enumerate(lines, 1):
        here = offset
        offset += len(line) + 1
        if not line:
            if lineno - 1 == last:
                break
            raise ImaLogError("empty line", line=lineno, offset=here, entry=index)
        s = line[1:] if line[:1] == b" " else line
        parts = s.split(b" ", 3)
        if len(parts) < 3:
            raise ImaLogError("not '<pcr> <template-hash> <template> <fields>'", line=lineno,
                              offset=here, entry=index)
        pcr_s, th_hex, raw_name = parts[0], parts[1], parts[2]
        rest = parts[3] if len(parts) == 4 else None
        if not pcr_s.isdigit() or len(pcr_s) > 2 or int(pcr_s) > MAX_PCR:
            raise ImaLogError(f"PCR {pcr_s[:12]!r} is not a PCR index", line=lineno, offset=here, entry=index)
        try:
            th = _unhex(th_hex)
        except _Bad:
            th = b""
        if not th:
            raise ImaLogError("template hash is not hex", line=lineno, offset=here, entry=index)
        if dsize is None:
            dsize = len(th_hex) // 2
            alg = _SIZES_TO_ALG.get(dsize)
            if alg is None:
                raise ImaLogError(f"a {dsize}-byte template hash has no default algorithm: "
                                  "name the list's template hash algorithm", line=lineno,
                                  offset=here, entry=index)
        if len(th_hex) != 2 * dsize:
            raise ImaLogError(f"template hash of {len(th_hex) // 2} bytes in a list of {dsize}-byte "
                              "hashes", line=lineno, offset=here, entry=index)
        name, ids = _template_info(raw_name, here, index, cache, lineno)
        tokens = rest.split(b" ") if rest is not None else []
        if ids is None:
            append(ImaEntry(index, base + here, int(pcr_s), th, name, None, tuple(tokens), None, lineno))
            index += 1
            continue
        if len(tokens) > len(ids):
            raise ImaLogError(f"{len(tokens)} fields for template {name} of {len(ids)}",
                              line=lineno, offset=here, entry=index)
        if len(tokens) < len(ids):
            missing = ids[len(tokens):]
            if any(f in REQUIRED for f in missing):
                raise ImaLogError(f"{len(tokens)} fields for template {name} of {len(ids)}",
                                  line=lineno, offset=here, entry=index)
            tokens += [b""] * len(missing)
        try:
            fields = tuple([dec(tok) for dec, tok in zip(_decoders(ids, order, decoders), tokens, strict=True)])
        except _Bad as exc:
            bad = next(f for f, t, d in zip(ids, tokens, _decoders(ids, order, decoders), strict=True)
                       if _fails(d, t))
            raise ImaLogError(f"field {bad} {exc}", line=lineno, offset=here, entry=index) from None
        if name == "ima":
            if len(fields[1]) > LEGACY_NAME_MAX + 1:
                raise ImaLogError("'ima' name longer than 255 bytes", line=lineno, offset=here, entry=index)
            tdata = None
        else:
            tdata = encode_fields(fields, order)
        append(ImaEntry(index, base + here, int(pcr_s), th, name, ids, fields, tdata, lineno))
        index += 1
    assert alg is not None or not entries
    return ImaLog(tuple(entries), format="ascii", hash_alg=alg or "sha1", byteorder=order,
                  start=start, end_offset=base + len(buf))


def _fails(decode: Callable[[bytes], bytes], tok: bytes) -> bool:
    try:
        decode(tok)
    except _Bad:
        return True
    return False


__all__ = ["parse_ima_log"]
