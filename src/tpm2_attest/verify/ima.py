"""Check an IMA measurement list against a quote: bindings, replay, boot_aggregate.

``verify_ima_log`` refuses a list unless

1. every entry's fields hash to its listed template hash (IMA_TEMPLATE_HASH_MISMATCH;
   otherwise the path and file digest shown are not what the kernel extended). Violations
   (zero template hash) bind nothing and are reported as such;
2. the quote covers PCR 10 and every PCR the list extends (IMA_PCR_NOT_QUOTED);
3. some prefix of the list replays to the quoted values (IMA_REPLAY_MISMATCH). The kernel
   appends an entry before it extends the PCR, and a device reads the list after quoting,
   so the list may run ahead of the quote: the entries after the matching prefix are
   returned as ``pending``, not trusted, and are verified next time;
4. the first entry, ``boot_aggregate``, equals the hash of the quoted PCRs 0-7 (SHA-1) or
   0-9 (other banks) when the quote covers them in the aggregate's bank
   (IMA_BOOT_AGGREGATE_MISMATCH).

Incremental verification: ``ImaResult.state`` (an :class:`ImaState`, JSON-ready) holds the
number of entries verified and the PCR values they replay to; pass it back with only the
entries after them (``state=``), and only those are hashed.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ..eventlog.banks import bank_name, resolve_bank
from ..ima import algorithms
from ..ima.aggregate import (
    BOOT_AGGREGATE_NAME,
    boot_aggregate,
    boot_aggregate_variants,
)
from ..ima.entry import ImaEntry
from ..ima.errors import ImaLogError
from ..ima.log import IMA_PCR, DigestMode, ImaLog
from ..ima.parser import list_bytes, parse_ima_log
from ..tpm2.constants import HASH_SIZES
from .errors import Reason, VerificationError
from .eventlog import _quoted_bank

TemplateDigests = Literal["listed", "native", "padded", "legacy"]
_PADDED: Final = ("padded", "legacy")
"""The two SHA-1-padded forms replay alike until a violation tells them apart."""
BootAggregateStatus = Literal["verified", "not_quoted", "other_bank", "absent", "unchecked"]
"""``verified``: equal to the quoted PCRs; ``not_quoted``: the quote lacks some of PCRs 0-9;
``other_bank``: recorded in another bank than the quoted one; ``absent``: the list does not
start with a boot_aggregate; ``unchecked``: not in the verified part of the list."""

_STATE_VERSION: Final = 1
MAX_KEY_BUFFERS: Final = 64
"""Keys loaded onto keyrings that a state carries (a machine loads a handful)."""
MAX_KEY_BUFFER_SIZE: Final = 8 << 10
"""A DER certificate of a signing key is one or two KiB."""


@dataclass(frozen=True, slots=True)
class ImaState:
    """What a verifier keeps to verify only new entries next time.

    ``bank``: the PCR bank replayed; ``count``: entries verified (whole-list index of the
    next one); ``pcrs``: {pcr: value} they replay to; ``template_digests``: how this
    kernel extends the bank (``listed``/``native``/``padded``/``legacy``; None while undetermined);
    ``reset_count``: the TPM's resetCount in the quote (a reboot restarts the list);
    ``offset``: byte offset where entry ``count`` begins in the file read (``format``,
    ``hash_alg``), for asking the device for the rest; ``boot_aggregate``: its status;
    ``key_buffers``: (keyring, buffer) of the verified ``ima-buf`` entries that may be keys
    loaded onto a keyring (a policy may trust them to sign later files).
    """

    bank: str
    count: int = 0
    pcrs: Mapping[int, bytes] = field(default_factory=dict)
    template_digests: TemplateDigests | None = None
    reset_count: int | None = None
    offset: int = 0
    format: str | None = None
    hash_alg: str | None = None
    boot_aggregate: BootAggregateStatus = "unchecked"
    key_buffers: tuple[tuple[str, bytes], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "bank": self.bank,
            "count": self.count,
            "pcrs": {str(k): v.hex() for k, v in sorted(self.pcrs.items())},
            "template_digests": self.template_digests,
            "reset_count": self.reset_count,
            "offset": self.offset,
            "format": self.format,
            "hash_alg": self.hash_alg,
            "boot_aggregate": self.boot_aggregate,
            "key_buffers": [[k, b.hex()] for k, b in self.key_buffers],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ImaState:
        """Rebuild a saved state; VerificationError(MALFORMED) when it does not fit."""
        try:
            if d.get("version") != _STATE_VERSION:
                raise ValueError(f"version {d.get('version')!r}")
            unknown = set(d) - {"version", "bank", "count", "pcrs", "template_digests",
                                "reset_count", "offset", "format", "hash_alg", "boot_aggregate",
                                "key_buffers"}
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)}")
            bank = bank_name(resolve_bank(str(d["bank"])))
            size = HASH_SIZES[resolve_bank(bank)]
            pcrs: dict[int, bytes] = {}
            for k, v in dict(d.get("pcrs") or {}).items():
                idx, value = int(k), bytes.fromhex(v)
                if not 0 <= idx <= 31 or len(value) != size:
                    raise ValueError(f"PCR {k}")
                pcrs[idx] = value
            count, offset = int(d.get("count", 0)), int(d.get("offset", 0))
            rc = d.get("reset_count")
            td = d.get("template_digests")
            ba = d.get("boot_aggregate", "unchecked")
            if count < 0 or offset < 0 or td not in (None, "listed", "native", "padded", "legacy") or \
                    ba not in ("verified", "not_quoted", "other_bank", "absent", "unchecked"):
                raise ValueError("value out of range")
            fmt, hash_alg = d.get("format"), d.get("hash_alg")
            if fmt not in (None, "binary", "ascii") or (
                    hash_alg is not None and (not isinstance(hash_alg, str) or algorithms.canonical(hash_alg) != hash_alg)):
                raise ValueError(f"format {fmt!r} / hash_alg {hash_alg!r}")
            kb = tuple((str(k), bytes.fromhex(b)) for k, b in list(d.get("key_buffers") or ()))
            if len(kb) > MAX_KEY_BUFFERS:
                raise ValueError("too many key_buffers")
            return cls(bank, count, pcrs, td, None if rc is None else int(rc), offset, fmt, hash_alg, ba, kb)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise VerificationError(Reason.MALFORMED, f"saved IMA state does not parse: {exc}") from None


@dataclass(frozen=True, slots=True)
class ImaResult:
    """What a verified list proves.

    ``entries``: the verified entries of this call, in list order (the only ones to trust;
    a violation among them is marked ``violation`` and binds no file); ``pending``: entries
    after the quoted state, not verified; ``count``: entries verified in total (with
    earlier calls); ``pcrs``: replayed values; ``template_digests``: how the bank is
    extended; ``boot_aggregate``: its status; ``violations``: how many verified entries are
    violations; ``state``: pass it as ``state=`` next time; ``key_buffers``: keys loaded onto
    keyrings by entries of earlier calls; ``boot_aggregates``: the indices of the verified
    ``boot_aggregate`` entries equal to the aggregate of the quoted PCRs (the first entry, and
    the one a kernel started by kexec adds in the middle of the list).
    """

    bank: str
    entries: tuple[ImaEntry, ...]
    pending: tuple[ImaEntry, ...]
    count: int
    pcrs: Mapping[int, bytes]
    template_digests: TemplateDigests | None
    boot_aggregate: BootAggregateStatus
    violations: int
    state: ImaState
    key_buffers: tuple[tuple[str, bytes], ...] = ()
    boot_aggregates: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the entries themselves)."""
        return {
            "bank": self.bank,
            "verified": len(self.entries),
            "pending": len(self.pending),
            "count": self.count,
            "pcrs": {str(k): v.hex() for k, v in sorted(self.pcrs.items())},
            "template_digests": self.template_digests,
            "boot_aggregate": self.boot_aggregate,
            "violations": self.violations,
            "state": self.state.to_dict(),
        }


def _where(e: ImaEntry) -> str:
    return f"entry {e.index} ({e.template_name} {e.path!r})"


def _check_bindings(log: ImaLog) -> None:
    """Every non-violation entry's fields hash to its listed template hash."""
    own = log.hash_alg
    h = algorithms.hasher(own)
    if h is None:
        raise VerificationError(Reason.IMA_TEMPLATE_UNSUPPORTED,
                                f"this verifier cannot compute {own} template hashes")
    sha1 = algorithms.hasher("sha1")
    assert sha1 is not None
    pad = bytes(algorithms.DIGEST_SIZES[own] - 20) if own != "sha1" else b""
    for e in log.entries:
        if e.violation:
            continue
        th = e.template_hash
        data = e.hash_input
        if data is None:
            raise VerificationError(Reason.IMA_TEMPLATE_UNSUPPORTED,
                                    f"{_where(e)}: template {e.template_name!r} is unknown, its "
                                    "fields cannot be rebuilt from an ASCII list (send the binary list)")
        if h(data).digest() == th:
            continue
        # a per-bank list of a bank the kernel cannot hash carries the padded SHA-1 digest
        if pad and sha1(data).digest() + pad == th:
            continue
        raise VerificationError(Reason.IMA_TEMPLATE_HASH_MISMATCH,
                                f"{_where(e)}: its fields do not hash to the listed template "
                                f"hash {th.hex()}")


def _binds(alg: str, e: ImaEntry) -> bool:
    """Does ``e``'s template data hash to its listed template hash with ``alg`` (or, in a list
    of ``alg``-sized hashes, to the zero-padded SHA-1 hash of a bank the kernel cannot hash)?"""
    h = algorithms.hasher(alg)
    data = e.hash_input
    if h is None or data is None:
        return False
    if h(data).digest() == e.template_hash:
        return True
    sha1 = algorithms.hasher("sha1")
    assert sha1 is not None
    return alg != "sha1" and sha1(data).digest().ljust(len(e.template_hash), b"\0") == e.template_hash


def _settle_encoding(log: ImaLog, big_endian: Callable[[], ImaLog] | None) -> ImaLog:
    """The list with the template-hash algorithm and byte order its first bound entry shows.

    A hash's size names several algorithms (32 bytes: sha256, sm3, sha3-256) and the parser
    assumes the common one unless told; an ASCII list does not show the byte order of the
    lengths its kernel hashed (big-endian without ``ima_canonical_fmt``). When the first
    entry that binds anything does not bind as parsed, the other readings are tried on it;
    every entry is then checked under the reading chosen (``_check_bindings``)."""
    first = next((e for e in log.entries if not e.violation and e.hash_input is not None), None)
    if first is None or _binds(log.hash_alg, first):
        return log
    size = algorithms.DIGEST_SIZES[log.hash_alg]
    for alg in algorithms.HASH_ALGO_NAMES:
        if alg != log.hash_alg and algorithms.DIGEST_SIZES[alg] == size and _binds(alg, first):
            return ImaLog(log.entries, format=log.format, hash_alg=alg, byteorder=log.byteorder,
                          start=log.start, end_offset=log.end_offset)
    if big_endian is not None and log.format == "ascii" and log.byteorder == "little":
        try:
            swapped = big_endian()
        except ImaLogError:
            return log
        again = _settle_encoding(swapped, None)
        probe = next((e for e in again.entries if not e.violation and e.hash_input is not None), None)
        if probe is not None and _binds(again.hash_alg, probe):
            return again
    return log


def _replay(log: ImaLog, digest_fn: Any, ext: Any, quoted: Mapping[int, bytes], initial: Mapping[int, bytes],
            tracked: frozenset[int], size: int) -> tuple[int, dict[int, bytes]] | tuple[None, dict[int, bytes]]:
    """Replay ``log`` from ``initial``; the longest prefix after which every tracked PCR
    equals its quoted value, and the values then (None and the final values when none)."""
    zero = bytes(size)
    values = {p: initial.get(p, zero) for p in tracked}
    bad = {p for p in tracked if not hmac.compare_digest(values[p], quoted[p])}
    best: int | None = None
    best_values = dict(values)
    if not bad:
        best = 0
    for k, e in enumerate(log.entries, 1):
        p = e.pcr
        v = ext(values[p] + digest_fn(e)).digest()
        values[p] = v
        if v == quoted[p]:
            bad.discard(p)
        else:
            bad.add(p)
        if not bad:
            best = k
            best_values = dict(values)
    if best is None:
        return None, values
    return best, best_values


def verify_ima_log(
    log: ImaLog | bytes | bytearray | memoryview | str,
    quote_result_or_pcrs: Any,
    *,
    bank: str | int = "sha256",
    state: ImaState | Mapping[str, Any] | None = None,
    template_digests: Literal["auto", "native", "padded", "legacy"] = "auto",
    pcrs: tuple[int, ...] = (IMA_PCR,),
) -> ImaResult:
    """Verify an IMA list against quoted PCRs; raise VerificationError unless it checks out.

    ``log``: a parsed :class:`~tpm2_attest.ima.ImaLog` or the list's bytes (binary or ASCII;
    with ``state``, bytes are the entries after the verified ones). ``quote_result_or_pcrs``:
    a verified quote result (``.pcrs``, ``.bank``, ``.reset_count``; its bank wins) or a
    plain ``{index: bytes}`` of bank ``bank``; call this only with values a verified quote
    proved. ``state``: the ``ImaResult.state`` of the previous verification (or its dict),
    to verify only new entries; a full list (``start`` 0) is accepted too and its verified
    part skipped. ``template_digests``: how banks other than the list's own were extended
    (``auto`` tries ``native``, ``padded`` then ``legacy``; see ``ima.DigestMode``).
    ``pcrs``: the PCRs IMA extends (10).

    Reasons: IMA_LOG_MALFORMED, IMA_TEMPLATE_HASH_MISMATCH, IMA_TEMPLATE_UNSUPPORTED,
    IMA_PCR_NOT_QUOTED, IMA_REPLAY_MISMATCH, IMA_BOOT_AGGREGATE_MISMATCH, IMA_STATE_MISMATCH,
    MALFORMED / UNSUPPORTED_FORMAT for bad arguments.
    """
    quoted, alg, name, size = _quoted_bank(quote_result_or_pcrs, bank)
    reset_count = None if isinstance(quote_result_or_pcrs, Mapping) else \
        getattr(quote_result_or_pcrs, "reset_count", None)
    kname = algorithms.KERNEL_NAMES.get(alg)
    ext = algorithms.hasher(kname) if kname else None
    if ext is None:
        raise VerificationError(Reason.UNSUPPORTED_FORMAT, f"this verifier cannot compute PCR bank {name}")
    if template_digests not in ("auto", "native", "padded", "legacy"):
        raise ValueError("template_digests must be 'auto', 'native', 'padded' or 'legacy'")

    prev: ImaState | None
    if state is None:
        prev = None
    elif isinstance(state, ImaState):
        prev = state
    else:
        prev = ImaState.from_dict(state)
    if prev is not None:
        if prev.bank != name:
            raise VerificationError(Reason.IMA_STATE_MISMATCH,
                                    f"the saved state is of bank {prev.bank}, the quote of {name}")
        if prev.reset_count is not None and reset_count is not None and prev.reset_count != reset_count:
            raise VerificationError(Reason.IMA_STATE_MISMATCH,
                                    f"the TPM was reset since the saved state (resetCount "
                                    f"{prev.reset_count} -> {reset_count}): verify the whole list")

    if not isinstance(log, ImaLog):
        if not isinstance(log, bytes | bytearray | memoryview | str):
            raise TypeError("log must be an ImaLog or the list's bytes")
        start, offset = (prev.count, prev.offset) if prev else (0, 0)
        try:
            raw = list_bytes(log)
            # a tail may hold only violations, which show no algorithm: the state remembers it
            parsed = parse_ima_log(raw, template_hash=prev.hash_alg if prev else None, start=start, offset=offset)
            log = _settle_encoding(parsed, lambda: parse_ima_log(raw, template_hash=parsed.hash_alg,
                                                                 byteorder="big", start=start, offset=offset))
        except ImaLogError as exc:
            raise VerificationError(Reason.IMA_LOG_MALFORMED, str(exc)) from None
    else:
        log = _settle_encoding(log, None)
    tail = log
    if prev is None and log.start != 0:
        raise VerificationError(Reason.IMA_STATE_MISMATCH,
                                f"the list given starts at entry {log.start}: pass the state of the "
                                "verification that ended there")
    if prev is not None and log.start != prev.count:
        if log.start == 0 and len(log) >= prev.count:
            tail = log.since(prev.count)
        else:
            raise VerificationError(Reason.IMA_STATE_MISMATCH,
                                    f"{prev.count} entries were verified, the list given starts at "
                                    f"entry {log.start} with {len(log)} entries (reboot?)")

    # 1. bindings
    _check_bindings(tail)

    # 2. coverage
    initial = dict(prev.pcrs) if prev else {}
    tracked = frozenset(pcrs) | frozenset(initial) | tail.pcrs
    missing = sorted(tracked - frozenset(quoted))
    if missing:
        raise VerificationError(Reason.IMA_PCR_NOT_QUOTED,
                                f"the IMA list extends PCR(s) {missing}, which the quote does not cover "
                                f"(quoted: {sorted(quoted)})")

    # 3. replay: the list's own bank uses the listed hashes, others native or padded
    if kname == tail.hash_alg:
        modes: list[TemplateDigests] = ["listed"]
    elif prev is not None and prev.template_digests == "native":
        modes = ["native"]
    elif prev is not None and prev.template_digests in _PADDED:
        modes = [prev.template_digests, *(m for m in _PADDED if m != prev.template_digests)]
    elif template_digests == "auto":
        modes = ["native", "padded", "legacy"]
    else:
        modes = [template_digests]
    found: tuple[int, dict[int, bytes], TemplateDigests] | None = None
    final: dict[int, bytes] = {}
    for mode in modes:
        dmode: DigestMode = mode if mode in _PADDED else "native"
        try:
            fn = tail._digest_fn(name, kname, size, dmode)
            matched, values = _replay(tail, fn, ext, quoted, initial, tracked, size)
        except ImaLogError as exc:
            raise VerificationError(Reason.IMA_TEMPLATE_UNSUPPORTED, str(exc)) from None
        if matched is not None:
            found = (matched, values, mode)
            break
        if not final:
            final = values
    if found is None:
        detail = "; ".join(f"PCR {p}: list replays to {final[p].hex()}, quoted {quoted[p].hex()}"
                           for p in sorted(tracked) if final.get(p) != quoted[p])
        raise VerificationError(Reason.IMA_REPLAY_MISMATCH,
                                f"{name} bank, {len(tail)} entries from entry {tail.start}, no prefix "
                                f"replays to the quoted values ({'/'.join(modes)} template digests): "
                                f"{detail}")
    k, values, mode = found
    verified, pending = tail.entries[:k], tail.entries[k:]
    if not verified and mode != "listed" and prev is not None:
        mode_kept: TemplateDigests | None = prev.template_digests
    elif not verified and mode != "listed":
        mode_kept = None  # nothing told native from padded yet
    else:
        mode_kept = mode

    # 4. boot_aggregate
    ba: BootAggregateStatus = prev.boot_aggregate if prev else "unchecked"
    if verified and verified[0].index == 0:
        ba = _boot_aggregate(verified[0], quoted, kname)
    # a kernel started by kexec restores the list and adds its own boot_aggregate (ima_init):
    # over PCRs that no reset cleared, so equal to the quoted ones unless they moved since
    aggregates = tuple(e.index for e in verified if e.path == BOOT_AGGREGATE_NAME and not e.violation
                    and (ba == "verified" if e.index == 0 else _matches_quoted(e, quoted, kname)))

    count = tail.start + k
    carried = prev.key_buffers if prev else ()
    keys = list(carried)
    for e in verified:
        buf = e.buffer
        if (buf is not None and len(buf) <= MAX_KEY_BUFFER_SIZE and buf[:1] in (b"\x30", b"-")
                and not e.violation and e.path is not None and len(keys) < MAX_KEY_BUFFERS):
            keys.append((e.path, buf))
    fmt = tail.format if len(tail) or prev is None or prev.format is None else prev.format
    new_state = ImaState(name, count, values, mode_kept, reset_count, tail.offset_of(count),
                         fmt, tail.hash_alg, ba, tuple(keys))
    return ImaResult(name, verified, pending, count, values, mode_kept, ba,
                     sum(1 for e in verified if e.violation), new_state, carried, aggregates)


def _matches_quoted(e: ImaEntry, quoted: Mapping[int, bytes], kname: str | None) -> bool:
    """Is ``e``'s digest the boot_aggregate of the quoted PCRs (in the quoted bank)?"""
    d = e.digest
    alg = algorithms.canonical(d.algorithm) if d is not None else None
    if d is None or alg is None or alg != kname:
        return False
    return _aggregate_status(d.digest, quoted, alg) == "verified"


def _aggregate_status(digest: bytes, quoted: Mapping[int, bytes], alg: str) -> str:
    """``verified`` when ``digest`` is the aggregate of the quoted PCRs in one of the forms
    kernels compute (``boot_aggregate_variants``), ``not_quoted`` when a form it may be needs
    PCRs the quote lacks, else ``mismatch``."""
    unquoted = False
    for pcrs in boot_aggregate_variants(alg):
        if any(i not in quoted for i in pcrs):
            unquoted = True
        elif hmac.compare_digest(boot_aggregate(quoted, alg, pcrs), digest):
            return "verified"
    return "not_quoted" if unquoted else "mismatch"


def _boot_aggregate(first: ImaEntry, quoted: Mapping[int, bytes], kname: str | None) -> BootAggregateStatus:
    if first.path != BOOT_AGGREGATE_NAME or first.violation:
        return "absent"
    d = first.digest
    alg = algorithms.canonical(d.algorithm) if d is not None else None
    if d is None or alg is None:
        raise VerificationError(Reason.IMA_BOOT_AGGREGATE_MISMATCH,
                                f"the boot_aggregate entry has no usable digest ({first.digest})")
    if alg != kname:
        return "other_bank"
    status = _aggregate_status(d.digest, quoted, alg)
    if status == "mismatch":
        zero = "" if any(d.digest) else " (all zeros: the kernel found no TPM when IMA started)"
        forms = " or ".join(f"H(PCR {p[0]}-{p[-1]}) = {boot_aggregate(quoted, alg, p).hex()}"
                            for p in boot_aggregate_variants(alg))
        raise VerificationError(Reason.IMA_BOOT_AGGREGATE_MISMATCH,
                                f"boot_aggregate {d.hex}{zero} is not {forms} of the quoted {alg} PCRs")
    return "verified" if status == "verified" else "not_quoted"
