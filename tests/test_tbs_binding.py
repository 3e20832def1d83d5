"""The TBS ctypes binding: constants, layouts and prototypes against mingw-w64's tbs.h/winerror.h,
and the binding's logic driven through ctypes callbacks that stand in for tbs.dll over swtpm.

Expected values come from the header text parsed here, never from a second copy in this file.
mingw-w64 before 11 ships a Vista-era tbs.h (no TBS_CONTEXT_PARAMS2, TPM_DEVICE_INFO,
Tbsi_GetDeviceInfo) and a winerror.h without a few TBS_E_* codes: those items are skipped,
by name, until a newer header is installed; newer headers are parsed the same way.
"""

from __future__ import annotations

import ast
import ctypes
import operator
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tpm2_attest import ErrorCode, TpmError
from tpm2_attest.embedded import EmbeddedSwtpm
from tpm2_attest.errors import HRESULT_NAMES, hresult_name
from tpm2_attest.transport import tbs
from tpm2_attest.transport.swtpm_tcp import SwtpmTransport

INCLUDE = Path("/usr/share/mingw-w64/include")
TBS_H = INCLUDE / "tbs.h"
WINERROR_H = INCLUDE / "winerror.h"

needs_headers = pytest.mark.skipif(not (TBS_H.is_file() and WINERROR_H.is_file()),
                                   reason="mingw-w64 headers missing (Debian mingw-w64-common)")

# C type vocabulary of the Windows headers (LLP64: UINT32 and enums are 4 bytes, pointers 8).
BASE_TYPES: dict[str, Any] = {
    "UINT32": ctypes.c_uint32, "UINT8": ctypes.c_ubyte, "BYTE": ctypes.c_ubyte,
    "INT32": ctypes.c_int32, "WINBOOL": ctypes.c_int32, "BOOL": ctypes.c_int32,
    "unsigned int": ctypes.c_uint32, "signed int": ctypes.c_int32, "int": ctypes.c_int32,
    "VOID": None, "void": None, "LPVOID": "void*", "PVOID": "void*",
}


# ---------------------------------------------------------------------------------------------
# A small reader for the two headers


def _strip(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text).replace("\\\n", " ")


_BINOPS: dict[type[ast.operator], Callable[[int, int], int]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.LShift: operator.lshift, ast.BitOr: operator.or_,
}


def _eval(expr: str) -> int:
    """An integer constant expression as the headers write them (0x..U, (256 * 1024), ...)."""
    expr = re.sub(r"_HRESULT_TYPEDEF_|\((?:HRESULT|TBS_RESULT|UINT32)\)", "", expr)
    expr = re.sub(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]+\b", r"\1", expr)

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](walk(node.left), walk(node.right))
        raise ValueError(f"not a constant expression: {expr!r}")

    return walk(ast.parse(expr.strip(), mode="eval"))


@dataclass
class Field:
    name: str
    ctype: str
    bits: int | None = None
    count: int | None = None
    members: list[Field] = field(default_factory=list)  # anonymous struct/union body
    kind: str = "field"  # "field" | "struct" | "union"


@dataclass
class Header:
    constants: dict[str, int] = field(default_factory=dict)
    typedefs: dict[str, str] = field(default_factory=dict)  # alias -> C type text
    structs: dict[str, list[Field]] = field(default_factory=dict)
    enums: set[str] = field(default_factory=set)
    prototypes: dict[str, tuple[str, list[str]]] = field(default_factory=dict)


def _parse_members(body: str) -> list[Field]:
    out: list[Field] = []
    pos = 0
    body = body.replace("__C89_NAMELESS", " ")
    while True:
        m = re.compile(r"\s*(union|struct)\s*\{").match(body, pos)
        if m:  # anonymous aggregate: find its matching brace
            depth, i = 1, m.end()
            while depth:
                depth += {"{": 1, "}": -1}.get(body[i], 0)
                i += 1
            out.append(Field("", "", kind=m.group(1), members=_parse_members(body[m.end():i - 1])))
            pos = body.index(";", i) + 1
            continue
        m = re.compile(r"\s*([\w\s]+?)\s+(\w+)\s*(?:\[(\w+)\])?\s*(?::\s*(\d+))?\s*;").match(body, pos)
        if not m:
            assert not body[pos:].strip(), f"cannot parse struct member {body[pos:]!r}"
            return out
        count = _eval(m.group(3)) if m.group(3) else None
        bits = int(m.group(4)) if m.group(4) else None
        out.append(Field(m.group(2), m.group(1).strip(), bits=bits, count=count))
        pos = m.end()


@cache
def header() -> Header:
    h = Header()
    for path in (WINERROR_H, TBS_H):
        text = _strip(path.read_text(encoding="latin-1"))
        for m in re.finditer(r"^[ \t]*#[ \t]*define[ \t]+(TBS_\w+|TPM_\w+|E_ACCESSDENIED)[ \t]+([^\n]+)$",
                             text, re.M):
            try:
                h.constants[m.group(1)] = _eval(m.group(2))
            except (ValueError, SyntaxError):
                continue
        if path != TBS_H:
            continue
        for m in re.finditer(r"typedef\s+enum\s+\w*\s*\{([^}]*)\}\s*(\w+)", text):
            value = -1
            for item in filter(None, (x.strip() for x in m.group(1).split(","))):
                name, _, expr = (s.strip() for s in item.partition("="))
                value = _eval(expr) if expr else value + 1
                h.constants[name] = value
            h.enums.add(m.group(2))
        for m in re.finditer(r"typedef\s+struct\s+\w*\s*\{((?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*)\}"
                             r"\s*(\w+)\s*(?:,\s*\*\s*(\w+))?", text):
            h.structs[m.group(2)] = _parse_members(m.group(1))
            if m.group(3):
                h.typedefs[m.group(3)] = m.group(2) + " *"
        for m in re.finditer(r"typedef\s+([^;{}]+);", text):
            first, *more = (d.strip() for d in m.group(1).split(","))
            if first.split()[0] in ("struct", "enum", "union"):
                continue
            d = re.fullmatch(r"(.+?)\s*(\**)\s*(\w+)", first)
            assert d, first
            base = d.group(1).strip()
            h.typedefs[d.group(3)] = base + (" *" * len(d.group(2)))
            for extra in more:
                e = re.fullmatch(r"(\**)\s*(\w+)", extra)
                assert e, extra
                h.typedefs[e.group(2)] = base + (" *" * len(e.group(1)))
        for m in re.finditer(r"(\w+)\s+WINAPI\s+(\w+)\s*\(([^)]*)\)\s*;", text):
            params = [p.strip() for p in m.group(3).split(",")]
            types = [] if params == ["void"] else [re.sub(r"\s*\b\w+$", "", p) if re.search(
                r"\w\s+\**\s*\w+$", p) else p for p in params]
            h.prototypes[m.group(2)] = (m.group(1), types)
    return h


def c_shape(ctype: str, h: Header, depth: int = 0) -> str:
    """Canonical shape of a C type: 'u32', 'u8', 'void*', 'struct X*', 'u32*' ..."""
    assert depth < 20, ctype
    t = re.sub(r"\bconst\b|\bCONST\b", "", ctype).strip()
    if t.endswith("*"):
        inner = c_shape(t[:-1], h, depth + 1)
        return "void*" if inner == "void" else inner + "*"
    if t in h.structs:
        return f"struct {t}"
    if t in h.enums:
        return "u32"  # an enum is an int on Windows; every TBS enum value fits a u32
    if t in BASE_TYPES:
        base = BASE_TYPES[t]
        if base is None:
            return "void"
        return base if isinstance(base, str) else py_shape(base)
    if t in h.typedefs:
        return c_shape(h.typedefs[t], h, depth + 1)
    raise KeyError(f"unknown C type {ctype!r}")


def py_shape(ctype: Any) -> str:
    """The same canonical shape for a ctypes type."""
    if ctype is ctypes.c_void_p:
        return "void*"
    if isinstance(ctype, type) and issubclass(ctype, ctypes._Pointer):
        return py_shape(ctype._type_) + "*"
    if isinstance(ctype, type) and issubclass(ctype, ctypes.Structure):
        return f"struct {ctype.__name__}"
    return {ctypes.c_uint32: "u32", ctypes.c_ubyte: "u8", ctypes.c_int32: "i32"}[ctype]


def build_ctypes(members: list[Field], h: Header, name: str, union: bool = False) -> Any:
    """A ctypes type laid out from the header's declaration (independent of tbs.py's classes)."""
    fields: list[tuple[Any, ...]] = []
    anonymous: list[str] = []
    for i, f in enumerate(members):
        if f.kind != "field":
            sub = build_ctypes(f.members, h, f"{name}_{i}", union=f.kind == "union")
            fields.append((f"_anon{i}", sub))
            anonymous.append(f"_anon{i}")
            continue
        shape = c_shape(f.ctype, h)
        base = {"u32": ctypes.c_uint32, "u8": ctypes.c_ubyte, "i32": ctypes.c_int32,
                "void*": ctypes.c_void_p}[shape]
        if f.count is not None:
            base = base * f.count
        fields.append((f.name, base) if f.bits is None else (f.name, base, f.bits))
    kind = ctypes.Union if union else ctypes.Structure
    return type(name, (kind,), {"_anonymous_": anonymous, "_fields_": fields})


# ---------------------------------------------------------------------------------------------
# Constants, layouts, prototypes

OUR_CONSTANTS = sorted(n for n in dir(tbs) if re.fullmatch(r"(TBS|TPM)_[A-Z0-9_]+", n)
                       and isinstance(getattr(tbs, n), int))
OUR_STRUCTS = {"TBS_CONTEXT_PARAMS": tbs.TBS_CONTEXT_PARAMS,
               "TBS_CONTEXT_PARAMS2": tbs.TBS_CONTEXT_PARAMS2,
               "TPM_DEVICE_INFO": tbs.TPM_DEVICE_INFO}
# What even the oldest tbs.h declares: if these are not found, the reader is broken.
ALWAYS_DECLARED = {"TBS_CONTEXT_PARAMS", "Tbsi_Context_Create", "Tbsip_Context_Close",
                   "Tbsip_Submit_Command", "Tbsi_Get_TCG_Log", "TBS_COMMAND_PRIORITY_NORMAL",
                   "TBS_COMMAND_LOCALITY_ZERO", "TBS_SUCCESS", "TBS_E_TPM_NOT_FOUND",
                   "TBS_E_SERVICE_NOT_RUNNING", "TBS_E_INSUFFICIENT_BUFFER"}


def _missing(name: str) -> None:
    pytest.skip(f"{name} is not declared by the installed mingw-w64 headers ({INCLUDE})")


@needs_headers
def test_reader_finds_the_basics() -> None:
    h = header()
    found = set(h.constants) | set(h.structs) | set(h.prototypes)
    assert found >= ALWAYS_DECLARED, ALWAYS_DECLARED - found
    assert len([c for c in OUR_CONSTANTS if c in h.constants]) >= 15


@needs_headers
@pytest.mark.parametrize("name", OUR_CONSTANTS)
def test_constant_matches_header(name: str) -> None:
    if name == "TPM_E_COMMAND_BLOCKED":  # a TPM response code (0x80280400), not in these headers
        assert getattr(tbs, name) == next(k for k, v in HRESULT_NAMES.items() if v == name)
        return
    h = header()
    if name not in h.constants:
        _missing(name)
    assert getattr(tbs, name) == h.constants[name] & 0xFFFFFFFF


@pytest.mark.parametrize("name", [n for n in OUR_CONSTANTS if n.startswith("TBS_E_")])
def test_result_names_agree_with_errors_table(name: str) -> None:
    assert HRESULT_NAMES[getattr(tbs, name)] == name


@needs_headers
@pytest.mark.parametrize("name", sorted(OUR_STRUCTS))
def test_struct_layout_matches_header(name: str) -> None:
    h = header()
    if name not in h.structs:
        _missing(name)
    ours = OUR_STRUCTS[name]
    theirs = build_ctypes(h.structs[name], h, name)
    assert ctypes.sizeof(ours) == ctypes.sizeof(theirs)
    assert ctypes.alignment(ours) == ctypes.alignment(theirs)

    def leaves(t: Any, base: int = 0) -> Iterator[tuple[str, int, int]]:
        """(name, byte offset, bit mask) of every named member, anonymous levels flattened."""
        for f in t._fields_:
            desc = getattr(t, f[0])
            if f[0] in getattr(t, "_anonymous_", ()) or f[0] in ("u", "bits"):
                yield from leaves(f[1], base + desc.offset)
                continue
            probe = t()
            if len(f) == 3:
                setattr(probe, f[0], 1)
            mask = int.from_bytes(bytes(probe), "little") if len(f) == 3 else 0
            yield f[0], base + desc.offset, mask

    assert sorted(leaves(ours)) == sorted(leaves(theirs))


@needs_headers
@pytest.mark.parametrize("name", sorted(tbs.PROTOTYPES))
def test_prototype_matches_header(name: str) -> None:
    h = header()
    if name not in h.prototypes:
        _missing(name)
    restype, params = h.prototypes[name]
    our_restype, our_args = tbs.PROTOTYPES[name]
    assert py_shape(our_restype) == c_shape(restype, h)
    assert [py_shape(a) for a in our_args] == [c_shape(p, h) for p in params]


def test_context_params2_bits() -> None:
    """includeTpm20 is bit 2 (requestRaw 0, includeTpm12 1), so version 2 + TPM 2.0 is (2, 4)."""
    p = tbs.TBS_CONTEXT_PARAMS2(version=tbs.TBS_CONTEXT_VERSION_TWO)
    p.includeTpm20 = 1
    assert bytes(p) == (2).to_bytes(4, "little") + (4).to_bytes(4, "little")
    assert p.asUINT32 == 4 and (p.requestRaw, p.includeTpm12) == (0, 0)


# ---------------------------------------------------------------------------------------------
# The binding's logic through ctypes callbacks standing in for tbs.dll (commands go to swtpm)


class FakeTbs:
    """tbs.dll's exports as C callbacks with tbs.PROTOTYPES' signatures, backed by swtpm."""

    CONTEXT = 0xC0FFEE

    def __init__(self, upstream: SwtpmTransport | None) -> None:
        self.upstream = upstream
        self.create_result = 0
        self.submit_result = 0
        self.log: bytes | None = b"\x00" * 32 + b"spec id event"
        self.log_result = tbs.TBS_E_NO_EVENT_LOG  # what Tbsi_Get_TCG_Log answers without a log
        self.params: tuple[int, int] | None = None
        self.closed: list[int] = []
        self.submits: list[tuple[int, int, int]] = []
        self.blocked = False
        self.tpm_version = tbs.TPM_VERSION_20
        self._keep: list[Any] = []
        impl: dict[str, Callable[..., int]] = {"Tbsi_Context_Create": self.create, "Tbsip_Context_Close": self.close,
                "Tbsip_Submit_Command": self.submit, "Tbsip_Cancel_Commands": lambda h: 0,
                "Tbsi_GetDeviceInfo": self.device_info, "Tbsi_Get_TCG_Log": self.tcg_log}
        for fname, (restype, argtypes) in tbs.PROTOTYPES.items():
            cb = ctypes.CFUNCTYPE(restype, *argtypes)(impl[fname])
            self._keep.append(cb)
            setattr(self, fname, cb)

    def create(self, params: Any, handle: Any) -> int:
        p = ctypes.cast(params, ctypes.POINTER(tbs.TBS_CONTEXT_PARAMS2)).contents
        self.params = (p.version, p.asUINT32)
        if self.create_result:
            return self.create_result
        handle[0] = self.CONTEXT
        return 0

    def close(self, handle: int) -> int:
        self.closed.append(handle)
        return 0

    def submit(self, handle: int, locality: int, priority: int, cmd: Any, n: int, out: Any,
               out_len: Any) -> int:
        self.submits.append((handle, locality, priority))
        if self.submit_result:
            return self.submit_result
        command = ctypes.string_at(cmd, n)
        if self.blocked:  # what TBS answers a standard user for a blocked command
            rsp = (0x8001).to_bytes(2, "big") + (10).to_bytes(4, "big") + (0x80280400).to_bytes(4, "big")
        else:
            assert self.upstream is not None
            rsp = self.upstream.send(command)
        if len(rsp) > out_len[0]:
            return tbs.TBS_E_INSUFFICIENT_BUFFER
        ctypes.memmove(out, rsp, len(rsp))
        out_len[0] = len(rsp)
        return 0

    def device_info(self, size: int, info: int) -> int:
        if size < ctypes.sizeof(tbs.TPM_DEVICE_INFO):
            return tbs.TBS_E_BAD_PARAMETER
        d = tbs.TPM_DEVICE_INFO.from_address(info)
        d.structVersion, d.tpmVersion = 1, self.tpm_version
        d.tpmInterfaceType, d.tpmImpRevision = tbs.TPM_IFTYPE_EMULATOR, 7
        return 0

    def tcg_log(self, handle: int, buf: Any, size: Any) -> int:
        if self.log is None:
            return self.log_result
        if not buf:
            size[0] = len(self.log)
            return 0
        if size[0] < len(self.log):
            return tbs.TBS_E_INSUFFICIENT_BUFFER
        ctypes.memmove(buf, self.log, len(self.log))
        size[0] = len(self.log)
        return 0


@pytest.fixture
def fake_tbs(swtpm: EmbeddedSwtpm) -> Iterator[FakeTbs]:
    fake = FakeTbs(SwtpmTransport(port=swtpm.port))
    previous = tbs.use_library(fake)
    try:
        yield fake
    finally:
        tbs.use_library(None)
        if previous is not None:
            tbs.use_library(previous.lib)


GET_RANDOM_8 = bytes.fromhex("80010000000c0000017b0008")


def test_tbs_transport_round_trip(fake_tbs: FakeTbs) -> None:
    from tpm2_attest.transport import open_transport

    with open_transport("tbs") as t:
        assert isinstance(t, tbs.TbsTransport) and (t.kind, t.tcti) == ("tbs", "tbs")
        rsp = t.send(GET_RANDOM_8)
        assert rsp[:10] == bytes.fromhex("80010000001400000000") and len(rsp) == 20
    assert fake_tbs.params == (tbs.TBS_CONTEXT_VERSION_TWO, 4)  # version 2, includeTpm20
    assert fake_tbs.submits == [(FakeTbs.CONTEXT, tbs.TBS_COMMAND_LOCALITY_ZERO,
                                 tbs.TBS_COMMAND_PRIORITY_NORMAL)]
    assert fake_tbs.closed == [FakeTbs.CONTEXT]


def test_borrowed_context_is_not_closed(fake_tbs: FakeTbs) -> None:
    with tbs.channel_for_context(0x1234) as ch:
        assert len(ch.send(GET_RANDOM_8)) == 20
    assert fake_tbs.submits[0][0] == 0x1234 and fake_tbs.closed == []


def test_blocked_command_is_a_response(fake_tbs: FakeTbs) -> None:
    fake_tbs.blocked = True
    with tbs.TbsTransport() as t:
        rsp = t.send(GET_RANDOM_8)
    assert int.from_bytes(rsp[6:10], "big") == tbs.TPM_E_COMMAND_BLOCKED


def test_tpm12_machine_is_refused_as_tpm12(fake_tbs: FakeTbs) -> None:
    """On a TPM 1.2 machine a TPM 2.0 context is TBS_E_TPM_NOT_FOUND; Tbsi_GetDeviceInfo says
    TPM_VERSION_12, so the user is told the TPM is 1.2 (UNSUPPORTED), not that there is none."""
    fake_tbs.create_result = tbs.TBS_E_TPM_NOT_FOUND
    fake_tbs.tpm_version = tbs.TPM_VERSION_12
    with pytest.raises(TpmError) as ei:
        tbs.TbsTransport()
    assert ei.value.code == ErrorCode.UNSUPPORTED and ei.value.hresult == tbs.TBS_E_TPM_NOT_FOUND
    assert "TPM 1.2" in str(ei.value) and fake_tbs.closed == []


@pytest.mark.parametrize(("result", "code"), [
    (tbs.TBS_E_TPM_NOT_FOUND, ErrorCode.TPM_NOT_FOUND),
    (tbs.TBS_E_SERVICE_NOT_RUNNING, ErrorCode.TPM_NOT_FOUND),
    (tbs.TBS_E_ACCESS_DENIED, ErrorCode.REQUIRES_ELEVATION),
    (tbs.TBS_E_TOO_MANY_TBS_CONTEXTS, ErrorCode.TRANSPORT),
])
def test_context_create_errors(fake_tbs: FakeTbs, result: int, code: ErrorCode) -> None:
    fake_tbs.create_result = result
    with pytest.raises(TpmError) as ei:
        tbs.TbsTransport()
    assert ei.value.code == code and ei.value.hresult == result
    assert "Tbsi_Context_Create" in str(ei.value) and HRESULT_NAMES[result] in str(ei.value)


def test_submit_error(fake_tbs: FakeTbs) -> None:
    fake_tbs.submit_result = tbs.TBS_E_IOERROR
    with tbs.TbsTransport() as t, pytest.raises(TpmError) as ei:
        t.send(GET_RANDOM_8)
    assert ei.value.code == ErrorCode.TRANSPORT and ei.value.hresult == tbs.TBS_E_IOERROR


def test_device_info(fake_tbs: FakeTbs) -> None:
    info = tbs.tbs_device_info()
    assert info.tpm_version == tbs.TPM_VERSION_20 and info.tpm20_present
    assert info.interface_type == tbs.TPM_IFTYPE_EMULATOR and info.imp_revision == 7


def test_get_tcg_log(fake_tbs: FakeTbs) -> None:
    assert tbs.get_tcg_log() == fake_tbs.log
    assert fake_tbs.closed == [FakeTbs.CONTEXT]
    fake_tbs.log = None
    with pytest.raises(TpmError) as ei:
        tbs.get_tcg_log()
    assert ei.value.code == ErrorCode.TPM_NOT_FOUND and ei.value.hresult == tbs.TBS_E_NO_EVENT_LOG


@pytest.mark.parametrize(("result", "code"), [
    # Microsoft: TBS_E_INTERNAL_ERROR from Tbsi_Get_TCG_Log may mean the platform gave no log.
    (tbs.TBS_E_INTERNAL_ERROR, ErrorCode.TPM_NOT_FOUND),
    (tbs.TBS_E_NO_EVENT_LOG, ErrorCode.TPM_NOT_FOUND),
    (tbs.TBS_E_IOERROR, ErrorCode.TRANSPORT),
    (tbs.TBS_E_ACCESS_DENIED, ErrorCode.REQUIRES_ELEVATION),
])
def test_get_tcg_log_failures(fake_tbs: FakeTbs, result: int, code: ErrorCode) -> None:
    fake_tbs.log, fake_tbs.log_result = None, result
    with pytest.raises(TpmError) as ei:
        tbs.get_tcg_log()
    assert ei.value.code == code and ei.value.hresult == result
    if result == tbs.TBS_E_INTERNAL_ERROR:
        assert "no TCG event log" in str(ei.value) and "16385" in (ei.value.hint or "")
    assert fake_tbs.closed == [FakeTbs.CONTEXT]  # the context is closed on failure too


def test_without_windows_tbs_is_not_found() -> None:
    import sys

    if sys.platform == "win32":  # pragma: no cover
        pytest.skip("Windows has tbs.dll")
    with pytest.raises(TpmError) as ei:
        tbs.TbsTransport()
    assert ei.value.code == ErrorCode.TPM_NOT_FOUND


@pytest.mark.parametrize(("value", "name"), [
    (0x8028400C, "TBS_E_PPI_NOT_SUPPORTED"), (0x8028400D, "TBS_E_COMMAND_CANCELED"),
    (0x80284013, "TBS_E_PROVISIONING_NOT_ALLOWED"), (0x80284014, "TBS_E_PPI_FUNCTION_UNSUPPORTED"),
    (0x80284015, "TBS_E_OWNERAUTH_NOT_FOUND"),
])
def test_tbs_codes_missing_from_mingw_are_named(value: int, name: str) -> None:
    """TBS results a real machine can return that mingw-w64's winerror.h lacks (values from
    Microsoft's TBS return codes page) are named in errors and reports, not shown as hex."""
    assert hresult_name(value) == name
    assert tbs.tbs_error("Tbsi_Context_Create", value).hresult == value
    assert name in str(tbs.tbs_error("Tbsi_Context_Create", value))
