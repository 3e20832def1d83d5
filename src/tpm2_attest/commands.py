"""Typed TPM 2.0 commands: one function per command over any ``send(bytes) -> bytes`` channel.

``TpmCommands.execute`` is the single executor: it marshals the header, handles and
authorization sessions, sends, retries RETRY/YIELDED/TESTING with a bounded backoff, maps
response codes to :class:`TpmError`, and returns a Reader positioned on the response
parameters. Each command method only declares its handles and parameters and parses its
outputs, which must consume the response exactly.
"""

from __future__ import annotations

import functools
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Final, Protocol, TypeVar

from ._frozen import frozen
from .errors import ELEVATION_HRESULTS, ErrorCode, TpmError
from .tpm2.constants import (
    HASH_SIZES,
    TPM_ALG,
    TPM_CAP,
    TPM_CC,
    TPM_PT,
    TPM_RH,
    TPM_RS_PW,
    TPM_SE,
    TPM_ST,
    TPM_SU,
    TPMA_NV,
)
from .tpm2.marshal import ParseError, Reader, Writer
from .tpm2.rc import RETRYABLE, TPM_RC, decode
from .tpm2.structures import (
    MAX_DIGESTS,
    MAX_PCR_BANKS,
    MAX_PCR_SELECT,
    TPM2B_CREATION_DATA,
    TPM2B_NV_PUBLIC,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPML_DIGEST,
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMS_CAPABILITY_DATA,
    TPMS_CREATION_DATA,
    TPMS_NV_PUBLIC,
    TPMS_PCR_SELECTION,
    TPMS_SENSITIVE_CREATE,
    TPMT_HA,
    TPMT_PUBLIC,
    TPMT_SCHEME,
    TPMT_SIGNATURE,
    TPMT_SYM_DEF_OBJECT,
    TPMT_TK_CREATION,
    bitmap_indices,
    signature_is_exact,
)

HEADER_SIZE = 10
_HEADER: Final = struct.Struct(">HII")
_U32: Final = struct.Struct(">I")
_U16: Final = struct.Struct(">H")
_COUNTS: Final = struct.Struct(">II")
_TAGS: Final = {int(TPM_ST.SESSIONS): _U16.pack(TPM_ST.SESSIONS), int(TPM_ST.NO_SESSIONS): _U16.pack(TPM_ST.NO_SESSIONS)}


def _handles(handles: Sequence[int]) -> bytes:
    return struct.pack(f">{len(handles)}I", *handles)
_T = TypeVar("_T")
MAX_PCRS_PER_READ = 8
PCR_READ_RESTARTS = 10


class Channel(Protocol):
    """Anything that exchanges one command for one response (a transport)."""

    def send(self, command: bytes) -> bytes: ...


# ---------------------------------------------------------------------------------------------
# Sessions


@frozen
class PasswordSession:
    """TPM_RS_PW with a plaintext authValue (empty for most attestation objects)."""

    auth: bytes = b""

    def marshal(self, w: Writer) -> None:
        w.u32(TPM_RS_PW).tpm2b(b"").u8(0).tpm2b(self.auth)


@dataclass(slots=True)
class PolicySession:
    """An unbound, unsalted policy session; its HMAC is empty (no PolicyAuthValue)."""

    handle: int
    nonce_tpm: bytes
    hash_alg: int = TPM_ALG.SHA256
    attributes: int = 0

    def marshal(self, w: Writer) -> None:
        w.u32(self.handle).tpm2b(b"").u8(self.attributes).tpm2b(b"")


Session = PasswordSession | PolicySession
PW = PasswordSession()
_EMPTY_PW_AREA: Final = Writer().u32(9).u32(TPM_RS_PW).tpm2b(b"").u8(0).tpm2b(b"").getvalue()
"""authorizationSize and the one password session with an empty authValue."""


# ---------------------------------------------------------------------------------------------
# Command outputs


@frozen
class ReadPublicResult:
    public: TPMT_PUBLIC
    public_bytes: bytes
    """The TPM2B_PUBLIC exactly as the TPM returned it."""
    name: bytes
    qualified_name: bytes


@frozen
class CreatePrimaryResult:
    handle: int
    public: TPMT_PUBLIC
    public_bytes: bytes
    creation_data: TPMS_CREATION_DATA
    creation_hash: bytes
    creation_ticket: TPMT_TK_CREATION
    name: bytes
    creation_data_bytes: bytes = b""
    """TPMS_CREATION_DATA as the TPM marshalled it (what creationHash covers)."""


@frozen
class CreateResult:
    private: bytes
    """TPM2B_PRIVATE bytes (size included)."""
    public_bytes: bytes
    """TPM2B_PUBLIC bytes (size included)."""
    public: TPMT_PUBLIC
    creation_data_bytes: bytes
    """TPM2B_CREATION_DATA bytes (size included)."""
    creation_data: TPMS_CREATION_DATA
    creation_hash: bytes
    creation_ticket: TPMT_TK_CREATION


@frozen
class SignedAttest:
    """TPMS_ATTEST bytes as signed (without the TPM2B size) and the TPMT_SIGNATURE bytes."""

    attest: bytes
    signature: bytes


@frozen
class PcrReadResult:
    update_counter: int
    selection: TPML_PCR_SELECTION
    digests: tuple[bytes, ...]


@dataclass
class CommandStats:
    """Counts of commands sent (for the demo and the benchmarks)."""

    total: int = 0
    by_command: dict[str, int] = field(default_factory=dict)

    def add(self, name: str) -> None:
        self.total += 1
        self.by_command[name] = self.by_command.get(name, 0) + 1


_CC_NAMES: dict[int, str] = {}


def command_name(cc: int) -> str:
    """'TPM2_Quote' for TPM_CC.Quote (remembered: an IntEnum lookup costs microseconds)."""
    name = _CC_NAMES.get(cc)
    if name is None:
        try:
            name = "TPM2_" + TPM_CC(cc).name
        except ValueError:
            name = f"TPM2_0x{cc:x}"
        if len(_CC_NAMES) < 1024:
            _CC_NAMES[cc] = name
    return name


class TpmCommands:
    """The command layer over one channel. Thread-safe: commands are serialized."""

    def __init__(
        self,
        channel: Channel,
        *,
        max_retries: int = 20,
        retry_delay: float = 0.01,
        max_retry_delay: float = 0.5,
        on_command: Callable[[str], None] | None = None,
    ) -> None:
        self.channel = channel
        self.max_retries = max_retries
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.stats = CommandStats()
        self.on_command = on_command
        self._lock = threading.RLock()
        self._nv_buffer_max: int | None = None

    @property
    def lock(self) -> threading.RLock:
        """Held across a multi-command operation (load, quote, flush) so threads sharing this
        channel never interleave and exhaust the TPM's few transient object slots."""
        return self._lock

    # -- the executor -------------------------------------------------------------------------

    def execute(
        self,
        cc: int,
        handles: Sequence[int] = (),
        params: bytes = b"",
        sessions: Sequence[Session] = (),
        response_handles: int = 0,
    ) -> tuple[list[int], Reader]:
        """Send one command; return the response handles and a Reader over its parameters."""
        body = _handles(handles) if handles else b""
        if sessions:
            tag = TPM_ST.SESSIONS
            if len(sessions) == 1 and type(sessions[0]) is PasswordSession and not sessions[0].auth:
                body += _EMPTY_PW_AREA  # the usual case, marshalled once
            else:
                auth = Writer()
                for s in sessions:
                    s.marshal(auth)
                body += _U32.pack(len(auth)) + auth.getvalue()
        else:
            tag = TPM_ST.NO_SESSIONS
        body += params
        cmd = _HEADER.pack(tag, HEADER_SIZE + len(body), cc) + body
        name = command_name(cc)
        delay = self.retry_delay
        with self._lock:
            for attempt in range(self.max_retries + 1):
                self.stats.add(name)
                if self.on_command is not None:
                    self.on_command(name)
                rsp = self.channel.send(cmd)
                rc = self._response_code(rsp, name)
                if rc == 0:
                    return self._parse_response(rsp, tag, response_handles, name)
                if rc in RETRYABLE and attempt < self.max_retries:
                    time.sleep(delay)
                    delay = min(delay * 2, self.max_retry_delay)
                    continue
                raise self._error(rc, name, attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _memory_hint(self, base: int) -> str:
        """Why a TPM ran out of object or session slots, and what to do, by transport.

        A TPM holds only a few loaded objects (3 on swtpm, often 3-7 on hardware). Behind no
        resource manager (/dev/tpm0, a simulator over TCP) an object another program loaded
        and did not flush stays loaded after it exits (tpm2-tools tools leave them so); the
        kernel resource manager (/dev/tpmrmN) or Windows TBS flush a program's objects when
        it closes the TPM."""
        what, flag = ("objects", "-t") if base == TPM_RC.OBJECT_MEMORY else ("sessions", "-s")
        kind = getattr(self.channel, "kind", None)
        path = str(getattr(self.channel, "path", "") or "")
        if kind == "tbs" or (kind == "device" and "tpmrm" in path):
            return (f"the resource manager has no room for more {what} of this process: close "
                    "other Tpm objects or handles it holds open")
        return (f"the TPM's {what} slots are full: with no resource manager in between, "
                f"{what} that other programs loaded and did not flush stay loaded; flush them "
                f"with `tpm2_flushcontext {flag}` (same TCTI), or use /dev/tpmrm0, whose kernel "
                "resource manager flushes each program's objects when it exits")

    @staticmethod
    def _response_code(rsp: bytes, name: str) -> int:
        if len(rsp) < HEADER_SIZE:
            raise TpmError(f"response of {len(rsp)} bytes is shorter than a header",
                           code=ErrorCode.BAD_RESPONSE, command=name)
        size = int.from_bytes(rsp[2:6], "big")
        if size != len(rsp):
            raise TpmError(f"response size field {size} != {len(rsp)} bytes received",
                           code=ErrorCode.BAD_RESPONSE, command=name)
        return int.from_bytes(rsp[6:10], "big")

    def _error(self, rc: int, name: str, attempt: int) -> TpmError:
        if rc > 0xFFFF:
            # Windows TBS returns HRESULTs in the response-code field (0x8028xxxx).
            if rc in ELEVATION_HRESULTS:
                return TpmError("the command is blocked for this user; run elevated or as SYSTEM",
                                code=ErrorCode.REQUIRES_ELEVATION, hresult=rc, command=name)
            if rc & 0xFFFF0000 == 0x80280000:
                return TpmError(tpm_rc=rc & 0xFFFF, hresult=rc, command=name)
            return TpmError(code=ErrorCode.TPM_ERROR, hresult=rc, command=name)
        d = decode(rc)
        if d.base in RETRYABLE:
            return TpmError(f"still {d.name} after {attempt} retries", code=ErrorCode.RETRY_EXHAUSTED,
                            tpm_rc=rc, command=name)
        if d.base in (TPM_RC.OBJECT_MEMORY, TPM_RC.SESSION_MEMORY):
            return TpmError(tpm_rc=rc, command=name, hint=self._memory_hint(d.base))
        if d.base == TPM_RC.INITIALIZE:
            return TpmError(tpm_rc=rc, command=name,
                            hint="the TPM has not received TPM2_Startup since reset (the firmware "
                                 "or kernel normally sends it); PCRs hold no boot measurements")
        return TpmError(tpm_rc=rc, command=name)

    @staticmethod
    def _parse_response(rsp: bytes, tag: int, nhandles: int, name: str) -> tuple[list[int], Reader]:
        """Response handles and a Reader over the parameters; BAD_RESPONSE when malformed."""
        # The common case by offsets; anything short or odd goes to the reader below, which
        # names what is wrong.
        n = len(rsp)
        o = HEADER_SIZE + 4 * nhandles
        if rsp[0:2] == _TAGS[tag] and o <= n:
            handles = list(struct.unpack_from(f">{nhandles}I", rsp, HEADER_SIZE)) if nhandles else []
            if tag != TPM_ST.SESSIONS:
                return handles, Reader(rsp, o)
            if o + 4 <= n:
                (psize,) = _U32.unpack_from(rsp, o)
                start = o + 4
                o = start + psize
                while o < n:  # each response auth: nonceTPM, sessionAttributes, hmac
                    if o + 2 > n:
                        break
                    (size,) = _U16.unpack_from(rsp, o)
                    o += 3 + size
                    if o + 2 > n:
                        break
                    (size,) = _U16.unpack_from(rsp, o)
                    o += 2 + size
                if o == n:
                    return handles, Reader(rsp[start : start + psize])
        return TpmCommands._parse_response_slow(rsp, tag, nhandles, name)

    @staticmethod
    def _parse_response_slow(rsp: bytes, tag: int, nhandles: int, name: str) -> tuple[list[int], Reader]:
        try:
            r = Reader(rsp, HEADER_SIZE)
            rtag = int.from_bytes(rsp[0:2], "big")
            if rtag != tag:
                raise ParseError(f"response tag 0x{rtag:04x}, expected 0x{tag:04x}", 0, name)
            handles = [r.u32("response handle") for _ in range(nhandles)]
            if tag == TPM_ST.SESSIONS:
                psize = r.u32("parameterSize")
                params = Reader(r.raw(psize, "parameters"))
                # The remaining bytes are the response auth areas; password/policy sessions
                # without HMAC carry nothing to verify, but they must be well-formed.
                while r.remaining:
                    r.tpm2b("nonceTPM")
                    r.u8("sessionAttributes")
                    r.tpm2b("hmac")
                return handles, params
            return handles, r
        except ParseError as exc:
            raise TpmError(str(exc), code=ErrorCode.BAD_RESPONSE, command=name) from exc

    def _finish(self, r: Reader, name: str) -> None:
        try:
            r.done(name)
        except ParseError as exc:
            raise TpmError(str(exc), code=ErrorCode.BAD_RESPONSE, command=name) from exc

    def _parse(self, name: str, r: Reader, fn: Callable[[Reader], _T]) -> _T:
        try:
            out = fn(r)
            r.done(name)
            return out
        except ParseError as exc:
            raise TpmError(f"malformed response: {exc}", code=ErrorCode.BAD_RESPONSE, command=name) from exc

    # -- commands ---------------------------------------------------------------------------

    def startup(self, su: int = TPM_SU.CLEAR) -> bool:
        """TPM2_Startup; returns False when the TPM was already started (TPM_RC_INITIALIZE)."""
        try:
            _, r = self.execute(TPM_CC.Startup, params=Writer().u16(su).getvalue())
        except TpmError as exc:
            if exc.tpm_rc is not None and decode(exc.tpm_rc).base == TPM_RC.INITIALIZE:
                return False
            raise
        self._finish(r, "TPM2_Startup")
        return True

    def shutdown(self, su: int = TPM_SU.CLEAR) -> None:
        _, r = self.execute(TPM_CC.Shutdown, params=Writer().u16(su).getvalue())
        self._finish(r, "TPM2_Shutdown")

    def get_capability(self, cap: int, prop: int, count: int) -> tuple[bool, TPMS_CAPABILITY_DATA]:
        """One TPM2_GetCapability call: (moreData, data)."""
        _, r = self.execute(TPM_CC.GetCapability, params=Writer().u32(cap).u32(prop).u32(count).getvalue())

        def parse(rr: Reader) -> tuple[bool, TPMS_CAPABILITY_DATA]:
            pos = rr.pos
            more = rr.u8("moreData")
            if more > 1:
                raise ParseError(f"TPMI_YES_NO value {more}", pos, "moreData")
            data = TPMS_CAPABILITY_DATA.unmarshal(rr)
            if data.capability != cap:
                raise ParseError(f"asked capability 0x{cap:x}, got 0x{data.capability:x}", pos + 1,
                                 "TPMS_CAPABILITY_DATA")
            return bool(more), data

        return self._parse("TPM2_GetCapability", r, parse)

    def get_capability_all(self, cap: int, prop: int, count: int = 256) -> list[object]:
        """GetCapability repeated while moreData is set, up to ``count`` items."""
        items: list[object] = []
        for _ in range(64):
            if len(items) >= count:
                break
            more, data = self.get_capability(cap, prop, count - len(items))
            chunk = list(data.data.selections if isinstance(data.data, TPML_PCR_SELECTION) else data.data)
            items.extend(chunk)
            if not more or not chunk:
                break
            last = chunk[-1]
            nxt = getattr(last, "property", getattr(last, "alg", getattr(last, "tag", last)))
            prop = int(nxt) + 1  # type: ignore[call-overload]
        return items

    def get_properties(self, first: int, count: int = 128) -> dict[int, int]:
        """TPM_PT values starting at ``first``."""
        out: dict[int, int] = {}
        for item in self.get_capability_all(TPM_CAP.TPM_PROPERTIES, first, count):
            out[item.property] = item.value  # type: ignore[attr-defined]
        return out

    def get_handles(self, first: int) -> list[int]:
        """Handles of one type (first = the type's first handle, e.g. 0x81000000)."""
        hs = [int(h) for h in self.get_capability_all(TPM_CAP.HANDLES, first, 256)]  # type: ignore[call-overload]
        top = first & 0xFF000000
        return [h for h in hs if h & 0xFF000000 == top]

    def handles_in_range(self, first: int, last: int, limit: int) -> list[int]:
        """Handles ``first``..``last`` that exist (TPM_CAP_HANDLES), ascending, at most
        ``limit + 1`` of them (one more than ``limit`` says "there are more").

        A handful of GetCapability calls whatever the TPM answers: a handle outside the range,
        not above the previous one, or a call that brings nothing new ends the enumeration
        (a TPM lists handles in ascending order from the one asked, Part 3 GetCapability)."""
        found: list[int] = []
        prop = first
        for _ in range(limit + 1):  # each round adds at least one handle or ends
            if prop > last or len(found) > limit:
                break
            more, data = self.get_capability(TPM_CAP.HANDLES, prop, min(last - prop + 1, 256))
            added = 0
            for item in data.data if isinstance(data.data, tuple) else ():
                h = item if isinstance(item, int) else -1
                if h < prop or h > last or (found and h <= found[-1]):
                    more = False  # out of order or past the range: nothing further to trust
                    break
                found.append(h)
                added += 1
                if len(found) > limit:
                    break
            if not more or not added:
                break
            prop = found[-1] + 1
        return found[: limit + 1]

    def pcr_banks(self) -> TPML_PCR_SELECTION:
        """Allocated PCR banks (TPM_CAP_PCRS)."""
        _, data = self.get_capability(TPM_CAP.PCRS, 0, 1)
        if not isinstance(data.data, TPML_PCR_SELECTION):  # pragma: no cover - checked in parse
            raise TpmError("GetCapability(PCRS) returned another capability",
                           code=ErrorCode.BAD_RESPONSE, command="TPM2_GetCapability")
        return data.data

    def get_random(self, n: int) -> bytes:
        """TPM2_GetRandom repeated until n bytes are gathered (TPMs cap each answer)."""
        out = bytearray()
        while len(out) < n:
            want = min(n - len(out), 64)
            _, r = self.execute(TPM_CC.GetRandom, params=Writer().u16(want).getvalue())
            chunk = self._parse("TPM2_GetRandom", r, lambda rr: rr.tpm2b("randomBytes", 64))
            if not chunk:
                raise TpmError("TPM returned no random bytes", code=ErrorCode.BAD_RESPONSE,
                               command="TPM2_GetRandom")
            out += chunk
        return bytes(out[:n])

    def pcr_read_once(self, selection: TPML_PCR_SELECTION) -> PcrReadResult:
        """One TPM2_PCR_Read (returns at most 8 digests)."""
        w = Writer()
        selection.marshal(w)
        return self._pcr_read(w.getvalue())

    def _pcr_read(self, params: bytes) -> PcrReadResult:
        _, r = self.execute(TPM_CC.PCR_Read, params=params)
        return self._pcr_read_result(r)

    def _pcr_read_result(self, r: Reader) -> PcrReadResult:
        fast = _pcr_read_fast(r.buffer, r.pos)
        if fast is not None:
            return fast

        def parse(rr: Reader) -> PcrReadResult:
            counter = rr.u32("pcrUpdateCounter")
            sel = TPML_PCR_SELECTION.unmarshal(rr)
            digs = TPML_DIGEST.unmarshal(rr)
            return PcrReadResult(counter, sel, digs.digests)

        return self._parse("TPM2_PCR_Read", r, parse)

    def pcr_read(self, bank: int, indices: Iterable[int]) -> tuple[int, dict[int, bytes]]:
        """Read every requested PCR of one bank, repeating PCR_Read until all are read.

        Returns (pcrUpdateCounter of the last read, {index: digest}). Raises if the TPM
        stops making progress (e.g. the bank is not allocated)."""
        wanted = sorted(set(indices))
        values: dict[int, bytes] = {}
        counter = 0
        first_counter: int | None = None
        size = HASH_SIZES.get(bank)
        restarts = 0
        while len(values) < len(wanted):
            todo = tuple(i for i in wanted if i not in values) if values else tuple(wanted)
            _, r = self.execute(TPM_CC.PCR_Read, params=_pcr_read_params(bank, todo))
            one = _pcr_read_bank(r.buffer, r.pos, bank, size) if size is not None else None
            digests: Sequence[bytes]
            if one is not None:  # the usual answer: this bank's selection, digests of its size
                update_counter, got, digests = one
            else:
                res = self._pcr_read_result(r)
                update_counter, digests = res.update_counter, res.digests
                got = tuple(i for s in res.selection.selections if s.hash == bank for i in s.indices())
            if len(got) != len(digests):
                raise TpmError("PCR_Read returned a selection and digests that disagree",
                               code=ErrorCode.BAD_RESPONSE, command="TPM2_PCR_Read")
            if not got:
                raise TpmError(f"the TPM returned none of the requested PCRs of bank 0x{bank:04x} "
                               "(bank not allocated or PCR index out of range)",
                               code=ErrorCode.INVALID_ARGUMENT, command="TPM2_PCR_Read")
            if one is not None and set(todo).issuperset(got):  # sizes checked, indices distinct
                values.update(zip(got, digests, strict=True))
            else:
                for i, d in zip(got, digests, strict=True):
                    if i not in todo or (size is not None and len(d) != size):
                        raise TpmError("PCR_Read returned an unrequested PCR or a wrong-size digest",
                                       code=ErrorCode.BAD_RESPONSE, command="TPM2_PCR_Read")
                    values[i] = d
            if first_counter is None:
                first_counter = update_counter
            elif update_counter != first_counter:
                # A PCR changed between the partial reads: start over for a consistent set,
                # a bounded number of times (IMA can extend PCR 10 between every two reads).
                restarts += 1
                if restarts > PCR_READ_RESTARTS:
                    raise TpmError(f"PCRs kept changing during {restarts} multi-part reads",
                                   code=ErrorCode.RETRY_EXHAUSTED, command="TPM2_PCR_Read")
                values.clear()
                first_counter = None
                continue
            counter = update_counter
        return counter, values

    def pcr_extend(self, index: int, digests: Sequence[TPMT_HA], auth: bytes = b"") -> None:
        w = Writer()
        TPML_DIGEST_VALUES(tuple(digests)).marshal(w)
        _, r = self.execute(TPM_CC.PCR_Extend, [index], w.getvalue(), [PasswordSession(auth)])
        self._finish(r, "TPM2_PCR_Extend")

    def read_public(self, handle: int) -> ReadPublicResult:
        _, r = self.execute(TPM_CC.ReadPublic, [handle])

        def parse(rr: Reader) -> ReadPublicResult:
            start = rr.pos
            pub = TPM2B_PUBLIC.unmarshal(rr).public_area
            raw = rr.buffer[start : rr.pos]
            return ReadPublicResult(pub, raw, rr.tpm2b("name", 66), rr.tpm2b("qualifiedName", 66))

        return self._parse("TPM2_ReadPublic", r, parse)

    def create_primary(
        self,
        hierarchy: int,
        template: TPMT_PUBLIC,
        *,
        hierarchy_auth: bytes = b"",
        sensitive: TPMS_SENSITIVE_CREATE | None = None,
        outside_info: bytes = b"",
        creation_pcrs: TPML_PCR_SELECTION | None = None,
    ) -> CreatePrimaryResult:
        w = Writer()
        TPM2B_SENSITIVE_CREATE(sensitive or TPMS_SENSITIVE_CREATE()).marshal(w)
        TPM2B_PUBLIC(template).marshal(w)
        w.tpm2b(outside_info)
        (creation_pcrs or TPML_PCR_SELECTION()).marshal(w)
        with _unsupported_template("TPM2_CreatePrimary"):
            hs, r = self.execute(TPM_CC.CreatePrimary, [hierarchy], w.getvalue(),
                                 [PasswordSession(hierarchy_auth)], response_handles=1)

        def parse(rr: Reader) -> CreatePrimaryResult:
            start = rr.pos
            pub = TPM2B_PUBLIC.unmarshal(rr).public_area
            raw = rr.buffer[start : rr.pos]
            cd_start = rr.pos
            cd = TPM2B_CREATION_DATA.unmarshal(rr).creation_data
            cd_raw = rr.buffer[cd_start + 2 : rr.pos]
            ch = rr.tpm2b("creationHash", 64)
            tk = TPMT_TK_CREATION.unmarshal(rr)
            return CreatePrimaryResult(hs[0], pub, raw, cd, ch, tk, rr.tpm2b("name", 66), cd_raw)

        return self._parse("TPM2_CreatePrimary", r, parse)

    def create_primary_handle(self, hierarchy: int, template: TPMT_PUBLIC) -> int:
        """TPM2_CreatePrimary for a key used and flushed at once (a transient SRK): only the
        handle is read from the response, none of the public area and creation data."""
        with _unsupported_template("TPM2_CreatePrimary"):
            hs, _ = self.execute(TPM_CC.CreatePrimary, [hierarchy], _create_primary_params(template),
                                 [PW], response_handles=1)
        return hs[0]

    def create(
        self,
        parent: int,
        template: TPMT_PUBLIC,
        *,
        parent_auth: bytes = b"",
        sensitive: TPMS_SENSITIVE_CREATE | None = None,
        outside_info: bytes = b"",
        creation_pcrs: TPML_PCR_SELECTION | None = None,
    ) -> CreateResult:
        w = Writer()
        TPM2B_SENSITIVE_CREATE(sensitive or TPMS_SENSITIVE_CREATE()).marshal(w)
        TPM2B_PUBLIC(template).marshal(w)
        w.tpm2b(outside_info)
        (creation_pcrs or TPML_PCR_SELECTION()).marshal(w)
        with _unsupported_template("TPM2_Create"):
            _, r = self.execute(TPM_CC.Create, [parent], w.getvalue(), [PasswordSession(parent_auth)])

        def parse(rr: Reader) -> CreateResult:
            p0 = rr.pos
            rr.tpm2b("outPrivate")
            priv = rr.buffer[p0 : rr.pos]
            p1 = rr.pos
            pub = TPM2B_PUBLIC.unmarshal(rr).public_area
            pub_raw = rr.buffer[p1 : rr.pos]
            p2 = rr.pos
            cd = TPM2B_CREATION_DATA.unmarshal(rr).creation_data
            cd_raw = rr.buffer[p2 : rr.pos]
            ch = rr.tpm2b("creationHash", 64)
            tk = TPMT_TK_CREATION.unmarshal(rr)
            return CreateResult(priv, pub_raw, pub, cd_raw, cd, ch, tk)

        return self._parse("TPM2_Create", r, parse)

    def load(self, parent: int, private: bytes, public: bytes, *, parent_auth: bytes = b"") -> tuple[int, bytes]:
        """TPM2_Load of TPM2B_PRIVATE + TPM2B_PUBLIC bytes: (handle, name)."""
        hs, r = self.execute(TPM_CC.Load, [parent], private + public, [PasswordSession(parent_auth)],
                             response_handles=1)
        name = self._parse("TPM2_Load", r, lambda rr: rr.tpm2b("name", 66))
        return hs[0], name

    def flush_context(self, handle: int) -> None:
        _, r = self.execute(TPM_CC.FlushContext, params=Writer().u32(handle).getvalue())
        self._finish(r, "TPM2_FlushContext")

    def evict_control(self, object_handle: int, persistent_handle: int, *, auth: int = TPM_RH.OWNER,
                      auth_value: bytes = b"") -> None:
        _, r = self.execute(TPM_CC.EvictControl, [auth, object_handle],
                            Writer().u32(persistent_handle).getvalue(), [PasswordSession(auth_value)])
        self._finish(r, "TPM2_EvictControl")

    def nv_read_public(self, index: int) -> tuple[TPMS_NV_PUBLIC, bytes]:
        _, r = self.execute(TPM_CC.NV_ReadPublic, [index])

        def parse(rr: Reader) -> tuple[TPMS_NV_PUBLIC, bytes]:
            return TPM2B_NV_PUBLIC.unmarshal(rr).nv_public, rr.tpm2b("nvName", 66)

        return self._parse("TPM2_NV_ReadPublic", r, parse)

    def nv_read(self, index: int, size: int | None = None, *, auth_handle: int | None = None,
                auth: bytes = b"", chunk: int | None = None) -> bytes:
        """Read an NV index in chunks of TPM_PT_NV_BUFFER_MAX (queried when not given).

        Without ``auth_handle`` the index's attributes choose who authorizes the read: the
        index itself when TPMA_NV_AUTHREAD is set, else the owner (OWNERREAD: some EK
        certificate indices), else the platform (PPREAD)."""
        if size is None or auth_handle is None:
            pub = self.nv_read_public(index)[0]
            if size is None:
                size = pub.data_size
            if auth_handle is None:
                auth_handle = nv_read_auth_handle(pub)
        if chunk is None:
            if self._nv_buffer_max is None:
                # A fixed property: ask once per channel, not once per NV read.
                got = self.get_properties(TPM_PT.NV_BUFFER_MAX, 1).get(TPM_PT.NV_BUFFER_MAX, 0)
                self._nv_buffer_max = got or 512
            chunk = self._nv_buffer_max
        out = bytearray()
        while len(out) < size:
            n = min(chunk, size - len(out))
            _, r = self.execute(TPM_CC.NV_Read, [auth_handle, index],
                                Writer().u16(n).u16(len(out)).getvalue(), [PasswordSession(auth)])
            data = self._parse("TPM2_NV_Read", r, lambda rr: rr.tpm2b("data"))
            if len(data) != n:
                raise TpmError(f"NV_Read returned {len(data)} bytes, asked {n}",
                               code=ErrorCode.BAD_RESPONSE, command="TPM2_NV_Read")
            out += data
        return bytes(out)

    def start_auth_session(self, session_type: int = TPM_SE.POLICY, hash_alg: int = TPM_ALG.SHA256,
                           nonce_caller: bytes | None = None) -> PolicySession:
        """An unbound, unsalted session (policy by default)."""
        # The caller's nonce only has to be fresh, not TPM-generated: the host RNG saves a round trip.
        nonce = nonce_caller if nonce_caller is not None else os.urandom(HASH_SIZES[hash_alg])
        w = Writer().tpm2b(nonce).tpm2b(b"").u8(session_type)
        TPMT_SYM_DEF_OBJECT().marshal(w)
        w.u16(hash_alg)
        hs, r = self.execute(TPM_CC.StartAuthSession, [TPM_RH.NULL, TPM_RH.NULL], w.getvalue(),
                             response_handles=1)
        nonce_tpm = self._parse("TPM2_StartAuthSession", r, lambda rr: rr.tpm2b("nonceTPM", 64))
        return PolicySession(hs[0], nonce_tpm, hash_alg)

    def policy_secret(self, auth_handle: int, session: PolicySession, *, auth: bytes = b"",
                      nonce_tpm: bytes | None = None, cp_hash: bytes = b"", policy_ref: bytes = b"",
                      expiration: int = 0) -> None:
        w = Writer().tpm2b(nonce_tpm if nonce_tpm is not None else b"").tpm2b(cp_hash).tpm2b(policy_ref)
        w.i32(expiration)
        _, r = self.execute(TPM_CC.PolicySecret, [auth_handle, session.handle], w.getvalue(),
                            [PasswordSession(auth)])

        def parse(rr: Reader) -> None:
            rr.tpm2b("timeout")
            rr.u16("ticket.tag")
            rr.u32("ticket.hierarchy")
            rr.tpm2b("ticket.digest")

        self._parse("TPM2_PolicySecret", r, parse)

    def policy_or(self, session: PolicySession, digests: Sequence[bytes]) -> None:
        """TPM2_PolicyOR: the session's digest becomes H(0 || CC || digests) if it is one of them."""
        w = Writer()
        TPML_DIGEST(tuple(digests)).marshal(w)
        _, r = self.execute(TPM_CC.PolicyOR, [session.handle], w.getvalue())
        self._finish(r, "TPM2_PolicyOR")

    def quote(self, key: int, qualifying_data: bytes, scheme: TPMT_SCHEME,
              selection: TPML_PCR_SELECTION, *, auth: bytes = b"") -> SignedAttest:
        w = Writer().tpm2b(qualifying_data)
        scheme.marshal(w)
        selection.marshal(w)
        _, r = self.execute(TPM_CC.Quote, [key], w.getvalue(), [PasswordSession(auth)])
        return self._parse("TPM2_Quote", r, _parse_signed_attest)

    def certify_creation(self, sign_key: int, object_handle: int, qualifying_data: bytes,
                         creation_hash: bytes, scheme: TPMT_SCHEME, ticket: TPMT_TK_CREATION,
                         *, auth: bytes = b"") -> SignedAttest:
        w = Writer().tpm2b(qualifying_data).tpm2b(creation_hash)
        scheme.marshal(w)
        ticket.marshal(w)
        _, r = self.execute(TPM_CC.CertifyCreation, [sign_key, object_handle], w.getvalue(),
                            [PasswordSession(auth)])
        return self._parse("TPM2_CertifyCreation", r, _parse_signed_attest)

    def activate_credential(self, activate_handle: int, key_handle: int, credential_blob: bytes,
                            secret: bytes, *, activate_session: Session = PW,
                            key_session: Session = PW) -> bytes:
        """TPM2_ActivateCredential with TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET bytes
        (each including its size)."""
        _, r = self.execute(TPM_CC.ActivateCredential, [activate_handle, key_handle],
                            credential_blob + secret, [activate_session, key_session])
        return self._parse("TPM2_ActivateCredential", r, lambda rr: rr.tpm2b("certInfo", 64))


# Format-one errors on inPublic (parameter 2 of Create/CreatePrimary) that mean "this TPM does
# not implement the template's algorithm, curve, key size or scheme" (Part 2, 6.6.3).
_TEMPLATE_UNSUPPORTED: Final = frozenset({TPM_RC.ASYMMETRIC, TPM_RC.CURVE, TPM_RC.KEY_SIZE,
                                          TPM_RC.SCHEME, TPM_RC.HASH, TPM_RC.SYMMETRIC, TPM_RC.TYPE})


@contextmanager
def _unsupported_template(name: str) -> Iterator[None]:
    """Turn 'algorithm not implemented' errors on a key template into UNSUPPORTED."""
    try:
        yield
    except TpmError as exc:
        if exc.tpm_rc is None or exc.hresult is not None:
            raise
        d = decode(exc.tpm_rc)
        if d.parameter == 2 and d.base in _TEMPLATE_UNSUPPORTED:
            raise TpmError("this TPM does not support the key template's algorithm, curve, "
                           "key size or scheme", code=ErrorCode.UNSUPPORTED,
                           tpm_rc=exc.tpm_rc, command=name) from exc
        raise


def nv_read_auth_handle(pub: TPMS_NV_PUBLIC) -> int:
    """The authHandle for TPM2_NV_Read of an index with these attributes (Part 3, NV_Read:
    the index when TPMA_NV_AUTHREAD is set, TPM_RH_OWNER for OWNERREAD, TPM_RH_PLATFORM for
    PPREAD); POLICYREAD-only indices need a policy session this library does not build."""
    attrs = pub.attributes
    if attrs & TPMA_NV.AUTHREAD:
        return pub.nv_index
    if attrs & TPMA_NV.OWNERREAD:
        return int(TPM_RH.OWNER)
    if attrs & TPMA_NV.PPREAD:
        return int(TPM_RH.PLATFORM)
    raise TpmError(f"NV index 0x{pub.nv_index:08x} can only be read with a policy session "
                   f"(attributes 0x{attrs:08x})", code=ErrorCode.UNSUPPORTED, command="TPM2_NV_Read")


def _parse_signed_attest(r: Reader) -> SignedAttest:
    attest = r.tpm2b("quoted")
    start = r.pos
    rest = r.buffer[start:]
    if signature_is_exact(rest):  # an RSA/ECC signature ends the response: no objects needed
        r.pos = len(r.buffer)
        return SignedAttest(attest, rest)
    TPMT_SIGNATURE.unmarshal(r)
    return SignedAttest(attest, r.buffer[start : r.pos])


def _pcr_read_fast(data: bytes, o: int) -> PcrReadResult | None:
    """PCR_Read outputs read by offsets when they are exactly what the generic parse accepts
    (the same bounds, every byte consumed); None lets the generic parse name the fault."""
    n = len(data)
    if o + 8 > n:
        return None
    counter, count = _COUNTS.unpack_from(data, o)
    o += 8
    if count > MAX_PCR_BANKS or count * 3 > n - o:
        return None
    sels = []
    for _ in range(count):
        if o + 3 > n:
            return None
        size = data[o + 2]
        end = o + 3 + size
        if size > MAX_PCR_SELECT or end > n:
            return None
        sels.append(TPMS_PCR_SELECTION(_U16.unpack_from(data, o)[0], data[o + 3 : end]))
        o = end
    if o + 4 > n:
        return None
    (count,) = _U32.unpack_from(data, o)
    o += 4
    if count > MAX_DIGESTS or count * 2 > n - o:
        return None
    digests = []
    for _ in range(count):
        if o + 2 > n:
            return None
        (size,) = _U16.unpack_from(data, o)
        end = o + 2 + size
        if size > 64 or end > n:
            return None
        digests.append(data[o + 2 : end])
        o = end
    if o != n:
        return None
    return PcrReadResult(counter, TPML_PCR_SELECTION(tuple(sels)), tuple(digests))


_ONE_SELECTION: Final = struct.Struct(">IIHB")
"""PCR_Read output head with one selection: pcrUpdateCounter, count (1), hash, sizeofSelect."""


def _pcr_read_bank(data: bytes, o: int, bank: int, size: int
                   ) -> tuple[int, tuple[int, ...], Sequence[bytes]] | None:
    """PCR_Read output holding one selection, of ``bank``, and as many digests of ``size`` bytes
    as it selects (at most MAX_DIGESTS), every byte consumed: (pcrUpdateCounter, indices,
    digests) by offsets. None for anything else: the generic parse then reads or refuses it."""
    n = len(data)
    if o + 11 > n:
        return None
    counter, count, alg, nsel = _ONE_SELECTION.unpack_from(data, o)
    o += 11
    if count != 1 or alg != bank or nsel > MAX_PCR_SELECT or o + nsel + 4 > n:
        return None
    got = bitmap_indices(data[o : o + nsel])
    o += nsel
    step = 2 + size
    if len(got) > MAX_DIGESTS or _U32.unpack_from(data, o)[0] != len(got) or o + 4 + len(got) * step != n:
        return None
    st, sizes = _digest_list(len(got), size)
    fields = st.unpack_from(data, o + 4)
    if fields[0::2] != sizes:
        return None
    return counter, got, fields[1::2]


@functools.lru_cache(maxsize=64)
def _digest_list(count: int, size: int) -> tuple[struct.Struct, tuple[int, ...]]:
    """The unpacker of ``count`` TPM2B_DIGESTs of ``size`` bytes, and the sizes it must read."""
    return struct.Struct(">" + f"H{size}s" * count), (size,) * count


@functools.lru_cache(maxsize=64)
def _pcr_read_params(bank: int, indices: tuple[int, ...]) -> bytes:
    """PCR_Read parameters selecting ``indices`` of one bank (marshalled once per selection)."""
    w = Writer()
    TPML_PCR_SELECTION((TPMS_PCR_SELECTION.from_indices(bank, indices),)).marshal(w)
    return w.getvalue()


@functools.lru_cache(maxsize=16)
def _create_primary_params(template: TPMT_PUBLIC) -> bytes:
    """CreatePrimary parameters for ``template`` with an empty sensitive area, no outside info and
    no creation PCRs (templates are immutable: the bytes are computed once per template)."""
    w = Writer()
    TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE()).marshal(w)
    TPM2B_PUBLIC(template).marshal(w)
    w.tpm2b(b"")
    TPML_PCR_SELECTION().marshal(w)
    return w.getvalue()
