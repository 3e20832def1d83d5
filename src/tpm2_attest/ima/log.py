"""A parsed IMA measurement list (``ImaLog``) and its replay into PCR values."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Literal, overload

from ..eventlog.banks import bank_name, resolve_bank
from ..tpm2.constants import HASH_SIZES
from . import algorithms
from .entry import ImaEntry
from .errors import ImaLogError

Format = Literal["binary", "ascii"]
DigestMode = Literal["native", "padded", "legacy"]
"""How a PCR bank other than the list's own was extended: ``native`` with the bank's own hash
of the template data (kernels since 5.8); ``padded`` with the SHA-1 template hash zero-padded
to the bank's size and violations as 0xff over the whole digest (kernels since 5.8, for a bank
whose hash their crypto lacks); ``legacy`` like ``padded`` but violations as 0xff * 20 then
zeros (kernels before 5.8, whose ``tpm_pcr_extend`` copied one 20-byte value into every bank,
and later kernels for TPM algorithms they do not map, such as SHA-3: ``ima_init_digests``)."""

IMA_PCR = 10
"""CONFIG_IMA_MEASURE_PCR_IDX; a policy rule's ``pcr=`` can send entries elsewhere."""


def _bank(bank: str | int) -> tuple[int, str, str | None, int]:
    """(TPM_ALG, bank name, kernel hash name or None, digest size) of a PCR bank."""
    try:
        alg = resolve_bank(bank)
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    return alg, bank_name(alg), algorithms.KERNEL_NAMES.get(alg), HASH_SIZES[alg]


class ImaLog:
    """The entries of an IMA measurement list, as :func:`parse_ima_log` read them.

    ``format`` (``binary``/``ascii``); ``hash_alg``: the kernel name of the algorithm of the
    listed template hashes (``sha1`` for the classic files, the bank's for the per-bank
    ``*_runtime_measurements_<alg>`` files); ``byteorder`` of the length fields; ``start``:
    the whole-list index of the first entry (non-zero for an incremental tail);
    ``end_offset``: the byte offset in the whole list just after the parsed data (entry
    offsets are whole-list offsets too, see ``parse_ima_log(offset=)``).
    """

    __slots__ = ("byteorder", "end_offset", "entries", "format", "hash_alg", "start")

    def __init__(self, entries: tuple[ImaEntry, ...], *, format: Format, hash_alg: str,
                 byteorder: str = "little", start: int = 0, end_offset: int = 0) -> None:
        self.entries = entries
        self.format: Format = format
        self.hash_alg = hash_alg
        self.byteorder = byteorder
        self.start = start
        self.end_offset = end_offset

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[ImaEntry]:
        return iter(self.entries)

    @overload
    def __getitem__(self, i: int) -> ImaEntry: ...
    @overload
    def __getitem__(self, i: slice) -> tuple[ImaEntry, ...]: ...
    def __getitem__(self, i: int | slice) -> ImaEntry | tuple[ImaEntry, ...]:
        return self.entries[i]

    @property
    def end(self) -> int:
        """Index one past the last entry (``start + len``): where a continuation begins."""
        return self.start + len(self.entries)

    @property
    def pcrs(self) -> frozenset[int]:
        """The PCRs the entries extend."""
        return frozenset(e.pcr for e in self.entries)

    def since(self, index: int) -> ImaLog:
        """The entries from whole-list index ``index`` on (what a verifier that already
        verified ``index`` entries still needs)."""
        if not self.start <= index <= self.end:
            raise ValueError(f"index {index} is outside this list ({self.start}..{self.end})")
        return ImaLog(self.entries[index - self.start :], format=self.format,
                      hash_alg=self.hash_alg, byteorder=self.byteorder, start=index,
                      end_offset=self.end_offset)

    def offset_of(self, index: int) -> int:
        """The whole-list byte offset where entry ``index`` begins (``end_offset`` for the
        entry after the last): where a device resumes reading the same file."""
        if not self.start <= index <= self.end:
            raise ValueError(f"index {index} is outside this list ({self.start}..{self.end})")
        return self.entries[index - self.start].offset if index < self.end else self.end_offset

    # -- replay --------------------------------------------------------------------------------

    def template_digest(self, entry: ImaEntry, bank: str | int, mode: DigestMode = "native") -> bytes:
        """What the kernel extended into ``bank`` for ``entry``: 0xff... for a violation
        (0xff * 20 zero-padded in ``legacy`` mode); the listed template hash in the list's own
        bank; else the bank's hash of the template data (``native``) or the SHA-1 template
        hash zero-padded (``padded``, ``legacy``)."""
        _, name, kname, size = _bank(bank)
        return bytes(self._digest_fn(name, kname, size, mode)(entry))

    def _digest_fn(self, name: str, kname: str | None, size: int, mode: DigestMode) -> Any:
        ff = b"\xff" * size
        if kname == self.hash_alg:
            def listed(e: ImaEntry) -> bytes:
                return ff if e.violation else e.template_hash
            return listed
        if mode in ("padded", "legacy") or (kname is None):
            if mode not in ("padded", "legacy"):
                raise ValueError(f"no hash for PCR bank {name}; only the padded SHA-1 forms apply")
            pad = bytes(size - 20)
            if mode == "legacy":
                ff = b"\xff" * 20 + pad
            sha1 = algorithms.hasher("sha1")
            assert sha1 is not None
            own_sha1 = self.hash_alg == "sha1"

            def padded(e: ImaEntry) -> bytes:
                if e.violation:
                    return ff
                if own_sha1:
                    return e.template_hash + pad
                data = e.hash_input
                if data is None:
                    raise ImaLogError(f"template {e.template_name!r} cannot be rehashed",
                                      offset=e.offset, line=e.line, entry=e.index)
                return bytes(sha1(data).digest()) + pad
            return padded
        h = algorithms.hasher(kname)
        if h is None:
            raise ValueError(f"this Python cannot compute {kname} for PCR bank {name}")

        def native(e: ImaEntry) -> bytes:
            if e.violation:
                return ff
            data = e.hash_input
            if data is None:
                raise ImaLogError(f"template {e.template_name!r} cannot be rehashed for bank {name}",
                                  offset=e.offset, line=e.line, entry=e.index)
            return bytes(h(data).digest())
        return native

    def replay_all(self, bank: str | int = "sha1", *, mode: DigestMode = "native",
                   initial: Mapping[int, bytes] | None = None) -> dict[int, bytes]:
        """{pcr: value} after extending every entry into ``bank`` (from zeros, or from
        ``initial`` values, e.g. a verifier's saved state)."""
        _, name, kname, size = _bank(bank)
        ext = algorithms.hasher(kname) if kname else None
        if ext is None:
            raise ValueError(f"this Python cannot compute PCR bank {name}")
        fn = self._digest_fn(name, kname, size, mode)
        values = {p: bytes(v) for p, v in (initial or {}).items()}
        zero = bytes(size)
        for e in self.entries:
            values[e.pcr] = ext(values.get(e.pcr, zero) + fn(e)).digest()
        return values

    def replay(self, bank: str | int = "sha1", pcr: int = IMA_PCR, *, mode: DigestMode = "native",
               initial: bytes | None = None) -> bytes:
        """The value of ``pcr`` (default 10) after replaying the list into ``bank``."""
        _, _, _, size = _bank(bank)
        start = {pcr: initial} if initial is not None else None
        return self.replay_all(bank, mode=mode, initial=start).get(pcr, initial or bytes(size))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary of the list and its entries."""
        return {"format": self.format, "hash_alg": self.hash_alg, "start": self.start,
                "end_offset": self.end_offset, "entries": [e.to_dict() for e in self.entries]}

    def __repr__(self) -> str:
        return (f"ImaLog(format={self.format!r}, hash_alg={self.hash_alg!r}, start={self.start}, "
                f"entries={len(self.entries)})")
