"""One IMA measurement: ``ImaEntry`` (with its file digest as ``ImaDigest``)."""

from __future__ import annotations

import struct
from typing import Any, Final, NamedTuple

from .templates import IMA_NAME_PAD

_U32 = {"little": struct.Struct("<I"), "big": struct.Struct(">I")}


class ImaDigest(NamedTuple):
    """A file (or buffer) digest as IMA recorded it: ``algorithm`` is the kernel's name
    (``sha256``, ``sm3``, ``sha3-256``...), ``kind`` is ``ima``/``verity`` for ``d-ngv2``
    fields and None otherwise."""

    algorithm: str
    digest: bytes
    kind: str | None = None

    @property
    def hex(self) -> str:
        return self.digest.hex()

    def __str__(self) -> str:
        prefix = f"{self.kind}:" if self.kind else ""
        return f"{prefix}{self.algorithm}:{self.digest.hex()}"


def decode_digest(field_id: str, data: bytes) -> ImaDigest | None:
    """The digest of a ``d``/``d-ng``/``d-ngv2``/``d-modsig`` field (None when empty or when
    the field does not have the kernel's layout)."""
    if not data:
        return None
    if field_id == "d":
        alg = {20: "sha1", 16: "md5"}.get(len(data), "unknown")
        return ImaDigest(alg, data)
    nul = data.find(b"\0")
    if nul < 1 or data[nul - 1] != 0x3A:  # "...:" NUL
        return None
    key = (field_id == "d-ngv2", data[:nul])
    names = _PREFIXES.get(key)
    if names is None:
        names = _prefix(*key)
        if len(_PREFIXES) < 256:
            _PREFIXES[key] = names
    if not names:
        return None
    return ImaDigest(names[0], data[nul + 1 :], names[1])


_PREFIXES: dict[tuple[bool, bytes], tuple[str, str | None] | tuple[()]] = {}


def _prefix(v2: bool, prefix: bytes) -> tuple[str, str | None] | tuple[()]:
    """(algorithm, kind) of ``algo:`` or ``kind:algo:``; () when not of that shape."""
    try:
        names = prefix[:-1].decode("ascii").split(":")
    except UnicodeDecodeError:
        return ()
    if v2:
        return (names[1], names[0]) if len(names) == 2 else ()
    return (names[0], None) if len(names) == 1 else ()


def decode_string(data: bytes) -> str:
    """A NUL-terminated field string; undecodable bytes are kept as surrogates (as os.fsdecode)."""
    if data.endswith(b"\0"):
        data = data[:-1]
    return data.decode("utf-8", "surrogateescape")


_NONE_LAYOUT: Final = (None, -1, -1, -1, -1, -1, -1)


def _layout(ids: tuple[str, ...] | None) -> tuple[str | None, int, int, int, int, int, int]:
    """(digest field id, its index, name, sig, buf, modsig, d-modsig indices; -1 when absent)."""
    if ids is None:
        return _NONE_LAYOUT

    def at(*names: str) -> int:
        for n in names:
            if n in ids:
                return ids.index(n)
        return -1

    dfid = next((f for f in ("d-ng", "d-ngv2", "d") if f in ids), None)
    return (dfid, ids.index(dfid) if dfid else -1, at("n-ng", "n"), at("sig"), at("buf"),
            at("modsig"), at("d-modsig"))


_LAYOUTS: dict[tuple[str, ...] | None, tuple[str | None, int, int, int, int, int, int]] = {}


class ImaEntry:
    """One measurement of a parsed list (read-only).

    ``index``: its position in the whole list (0 = first measurement since boot);
    ``offset``: byte offset in the data it was parsed from (``line``: 1-based line of an
    ASCII list); ``pcr``; ``template_hash``: the digest as listed (in the list's algorithm;
    all zeros for a violation); ``template_name``; ``field_ids`` (None for a template this
    parser does not know); ``fields``: each field's data as the kernel stores it;
    ``template_data``: the length-prefixed fields exactly as hashed (None for the legacy
    ``ima`` template and for unknown templates of ASCII lists, which cannot be rebuilt).

    Decoded views: ``digest`` (:class:`ImaDigest` of the ``d*`` field), ``path`` (the
    ``n``/``n-ng`` field), ``signature`` (``sig``), ``buffer`` (``buf``), ``modsig``,
    ``modsig_digest``; ``violation``.
    """

    __slots__ = ("_digest", "_layout", "field_ids", "fields", "index", "line",
                 "offset", "pcr", "template_data", "template_hash", "template_name", "violation")

    def __init__(self, index: int, offset: int, pcr: int, template_hash: bytes, template_name: str,
                 field_ids: tuple[str, ...] | None, fields: tuple[bytes, ...],
                 template_data: bytes | None, line: int | None = None) -> None:
        self.index = index
        self.offset = offset
        self.line = line
        self.pcr = pcr
        self.template_hash = template_hash
        self.template_name = template_name
        self.field_ids = field_ids
        self.fields = fields
        self.template_data = template_data
        self._digest: ImaDigest | bool | None = False
        layout = _LAYOUTS.get(field_ids)
        if layout is None:
            layout = _LAYOUTS[field_ids] = _layout(field_ids)
        self._layout = layout
        # a ToMToU/open-writers violation: the kernel lists a zero template hash and extends
        # 0xff...; its fields are bound to nothing
        self.violation: bool = not template_hash.strip(b"\0")

    # -- views ---------------------------------------------------------------------------------

    def field(self, field_id: str) -> bytes | None:
        """The data of the first field ``field_id`` (None when the template has none)."""
        ids = self.field_ids
        if ids is None:
            return None
        try:
            return self.fields[ids.index(field_id)]
        except ValueError:
            return None

    def _at(self, i: int) -> bytes | None:
        return self.fields[i] if i >= 0 else None

    @property
    def digest(self) -> ImaDigest | None:
        d = self._digest
        if d is False:
            fid, i = self._layout[0], self._layout[1]
            d = self._digest = decode_digest(fid, self.fields[i]) if fid is not None else None
        return d  # type: ignore[return-value]

    @property
    def path(self) -> str | None:
        i = self._layout[2]
        return decode_string(self.fields[i]) if i >= 0 else None

    @property
    def signature(self) -> bytes | None:
        i = self._layout[3]
        return (self.fields[i] or None) if i >= 0 else None

    @property
    def buffer(self) -> bytes | None:
        i = self._layout[4]
        return (self.fields[i] or None) if i >= 0 else None

    @property
    def modsig(self) -> bytes | None:
        i = self._layout[5]
        return (self.fields[i] or None) if i >= 0 else None

    @property
    def modsig_digest(self) -> ImaDigest | None:
        i = self._layout[6]
        return decode_digest("d-modsig", self.fields[i]) if i >= 0 and self.fields[i] else None

    # -- hashing -------------------------------------------------------------------------------

    @property
    def hash_input(self) -> bytes | None:
        """The bytes the kernel hashes into the template hash (None when unknown)."""
        data = self.template_data
        if data is None and self.template_name == "ima" and self.field_ids == ("d", "n"):
            return self.fields[0] + self.fields[1].ljust(IMA_NAME_PAD, b"\0")
        return data

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (hex for bytes)."""
        d = self.digest
        out: dict[str, Any] = {
            "index": self.index,
            "pcr": self.pcr,
            "template_hash": self.template_hash.hex(),
            "template": self.template_name,
            "path": self.path,
            "digest": str(d) if d else None,
        }
        if self.violation:
            out["violation"] = True
        for fid in ("sig", "buf", "modsig"):
            data = self.field(fid)
            if data:
                out[fid] = data.hex()
        if self.field_ids is None:
            out["fields"] = [f.hex() for f in self.fields]
        return out

    def __repr__(self) -> str:
        return (f"ImaEntry(index={self.index}, pcr={self.pcr}, template={self.template_name!r}, "
                f"path={self.path!r}, digest={self.digest})")


def encode_fields(fields: tuple[bytes, ...], byteorder: str) -> bytes:
    """Length-prefixed template data (``u32 len || data`` per field)."""
    pack = _U32[byteorder].pack
    return b"".join(pack(len(f)) + f for f in fields)


U32_BY_ORDER: Final = _U32
