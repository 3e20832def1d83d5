"""The NCrypt binding against the Windows SDK headers that mingw-w64 ships, plus its pure helpers.

Expected numbers come from the header text (parsed here), never from a second copy in this
file; the only literals are values the headers cannot express (byte order examples from
MS-DTYP, names of constants the headers do not carry).
"""

from __future__ import annotations

import ctypes
import importlib
import inspect
import re
import struct
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tpm2_attest.backends import ncrypt, ncrypt_api
from tpm2_attest.backends.ncrypt import (
    CERT_CONTEXT,
    PROTOTYPES,
    WindowsNCrypt,
)
from tpm2_attest.backends.ncrypt_api import (
    ACE_HEADER,
    ACL,
    BCRYPT_RSAKEY_BLOB,
    SECURITY_DESCRIPTOR_RELATIVE,
    NCryptError,
    NCryptProvider,
)
from tpm2_attest.errors import HRESULT_NAMES, ErrorCode, TpmError

INCLUDE = Path("/usr/share/mingw-w64/include")
HEADERS = ("ncrypt.h", "bcrypt.h", "winnt.h", "winerror.h", "wincrypt.h")

EXTRA_HEADERS = ("processthreadsapi.h", "securitybaseapi.h", "handleapi.h", "minwindef.h")
"""Read for prototypes and typedefs only (their macros are not in the constant table)."""

needs_headers = pytest.mark.skipif(
    not all((INCLUDE / h).is_file() for h in (*HEADERS, *EXTRA_HEADERS)),
    reason="mingw-w64 headers not installed (Debian package mingw-w64-common)",
)


# --------------------------------------------------------------------------------------
# A small C header reader: object-like #defines, typedef structs, WINAPI prototypes.
# --------------------------------------------------------------------------------------
def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    return text.replace("\\\n", " ")


@cache
def header_text(name: str) -> str:
    return _strip_comments((INCLUDE / name).read_text(encoding="latin-1"))


@cache
def macros(names: tuple[str, ...] = HEADERS) -> dict[str, list[str]]:
    """Every object-like #define body, by name (a name may be defined more than once)."""
    out: dict[str, list[str]] = {}
    for h in names:
        for m in re.finditer(
            r"^[ \t]*#[ \t]*define[ \t]+(\w+)([ \t]+[^\n]*)?$", header_text(h), re.M
        ):
            out.setdefault(m.group(1), []).append((m.group(2) or "").strip())
    return out


_WRAPPERS = re.compile(r"__MSABI_LONG|_HRESULT_TYPEDEF_|\((?:HRESULT|DWORD|LONG|ULONG)\)")
_SAFE_EXPR = re.compile(r"[0-9xXa-fA-F\s()|&+\-~<>]*")


def evaluate(body: str, table: dict[str, list[str]], depth: int = 0) -> int | str:
    """Value of a macro body: L"..." strings, integer expressions, macro references,
    and {a,b,...} byte lists (an identifier authority, read big-endian)."""
    if depth > 20:
        raise ValueError("macro recursion too deep")
    body = body.strip()
    s = re.fullmatch(r'L"([^"]*)"', body)
    if s:
        return s.group(1)
    braces = re.fullmatch(r"\{([\d,\s]+)\}", body)
    if braces:
        return int.from_bytes(bytes(int(x) for x in braces.group(1).split(",")), "big")
    if re.fullmatch(r"\w+", body) and not re.fullmatch(r"\d\w*", body):
        return resolve(body, table, depth + 1)
    expr = _WRAPPERS.sub("", body)

    def ident(m: re.Match[str]) -> str:
        value = resolve(m.group(0), table, depth + 1)
        if not isinstance(value, int):
            raise ValueError(f"{m.group(0)} is not an integer")
        return str(value)

    expr = re.sub(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]+\b", r"\1", expr)
    expr = re.sub(r"\b[A-Za-z_]\w*\b", ident, expr)
    if not _SAFE_EXPR.fullmatch(expr):
        raise ValueError(f"cannot evaluate {body!r}")
    value = eval(expr, {"__builtins__": {}}, {})
    if not isinstance(value, int):
        raise ValueError(f"{body!r} is not an integer")
    return value & 0xFFFFFFFF if value < 0 else value


def resolve(name: str, table: dict[str, list[str]], depth: int = 0) -> int | str:
    values = {evaluate(b, table, depth) for b in table[name]}
    if len(values) != 1:
        raise ValueError(f"{name} has conflicting definitions {values}")
    return values.pop()


def resolve_int(name: str, table: dict[str, list[str]]) -> int:
    value = resolve(name, table)
    assert isinstance(value, int), name
    return value


def header_values(name: str, table: dict[str, list[str]]) -> set[int | str]:
    return {evaluate(b, table) for b in table[name]}


def prototype(header: str, func: str) -> tuple[str, list[tuple[str, str]]]:
    """(return type, [(C type, parameter name)]) of a WINAPI declaration."""
    text = re.sub(r"\s+", " ", header_text(header))
    m = re.search(rf"(\w+) WINAPI {func} ?\(([^;]*?)\) ?;", text)
    assert m, f"{func} not declared in {header}"
    params: list[tuple[str, str]] = []
    if m.group(2).strip() in ("VOID", "void"):
        return m.group(1), params
    for raw in m.group(2).split(","):
        p = re.fullmatch(r"\s*((?:const\s+)?\w+(?:\s*\*)*)\s*(\w+)\s*", raw.replace("*", " * "))
        assert p, f"cannot parse parameter {raw!r} of {func}"
        ctype = re.sub(r"\s+", "", p.group(1).replace("const", ""))
        params.append((ctype, p.group(2)))
    return m.group(1), params


def struct_fields(header: str, tag: str) -> list[tuple[str, str]]:
    """[(C type, field name)] of ``typedef struct tag { ... }``."""
    text = re.sub(r"\s+", " ", header_text(header))
    m = re.search(rf"typedef struct {tag} ?\{{(.*?)\}}", text)
    assert m, f"struct {tag} not in {header}"
    fields = []
    for decl in filter(None, (d.strip() for d in m.group(1).split(";"))):
        f = re.fullmatch(r"((?:\w+\s*\*?\s+)+?)\*?(\w+)(\[\w+\])?", decl)
        assert f, f"cannot parse field {decl!r} in {tag}"
        ctype = f.group(1).strip() + ("*" if "*" in decl else "")
        fields.append((ctype.replace(" ", "").replace("**", "*"), f.group(2)))
    return fields


def typedef_exists(header: str, decl: str) -> bool:
    text = re.sub(r"\s+", " ", header_text(header))
    return re.search(r"typedef " + re.escape(decl) + r"\s*[;,]", text) is not None


# --------------------------------------------------------------------------------------
# Constants.
# --------------------------------------------------------------------------------------
# Constants this package defines that the mingw-w64 headers do not carry, and why. Any
# other upper-case constant in ncrypt_api / ncrypt MUST be found in the headers.
NOT_IN_MINGW_HEADERS = {
    "NCRYPT_PCP_RSA_EKNVCERT_PROPERTY": "Windows SDK ncrypt.h (WIN10+), go-attestation",
    "NCRYPT_PCP_ECC_EKNVCERT_PROPERTY": "Windows SDK ncrypt.h (WIN10+), go-attestation",
    "PCP_IDENTITY_KEY_BITS": "PCP AKs are RSA-2048 (go-attestation, the brief)",
    "NONCE_BINDING_SIZE": "PCP_TPM12_IDBINDING takes a 20-byte nonce (go-attestation, PCPTool)",
    "PCP_USERS_ACCESS_MASK": "our choice, GENERIC_READ|GENERIC_EXECUTE (checked below)",
    "SID_LOCAL_SYSTEM": "SID string, checked below from SECURITY_*_RID",
    "SID_BUILTIN_ADMINISTRATORS": "SID string, checked below from SECURITY_*_RID",
    "SID_BUILTIN_USERS": "SID string, checked below from SECURITY_*_RID",
    "NCRYPT_PCP_RSA_EKCERT_PROPERTY": "Windows SDK ncrypt.h (WIN10+)",
    "NCRYPT_PCP_ECC_EKCERT_PROPERTY": "Windows SDK ncrypt.h (WIN10+)",
    "NCRYPT_PCP_ECC_EKPUB_PROPERTY": "Windows SDK ncrypt.h (WIN10+)",
    "NCRYPT_PCP_RSA_EKPUB_PROPERTY": "Windows SDK ncrypt.h (WIN10+)",
    "NCRYPT_PCP_INTERMEDIATE_CA_EKCERT_PROPERTY": "Windows SDK ncrypt.h (windows-sys' bindings of it)",
    "NCRYPT_DLL": "DLL name",
    "CRYPT32_DLL": "DLL name",
    "ADVAPI32_DLL": "DLL name",
    "KERNEL32_DLL": "DLL name",
}


def module_constants() -> dict[str, int | str]:
    out: dict[str, int | str] = {}
    for mod in (ncrypt_api, ncrypt):
        for name, value in vars(mod).items():
            if re.fullmatch(r"[A-Z][A-Z0-9_]+", name) and isinstance(value, int | str):
                if isinstance(value, bool):
                    continue
                assert out.get(name, value) == value, f"{name} differs between modules"
                out[name] = value
    return out


@needs_headers
def test_every_header_constant_matches_the_header() -> None:
    table = macros()
    checked = []
    for name, value in sorted(module_constants().items()):
        if name in NOT_IN_MINGW_HEADERS:
            assert name not in table, f"{name} is in the headers now: check it, drop the waiver"
            continue
        assert name in table, f"{name} is in no header: check it or list it with its source"
        assert value in header_values(name, table), (
            f"{name} = {value!r}, header says {header_values(name, table)}"
        )
        checked.append(name)
    # The ones the brief names explicitly must have been checked, not waived.
    for must in (
        "NCRYPT_MACHINE_KEY_FLAG",
        "NCRYPT_SILENT_FLAG",
        "NCRYPT_OVERWRITE_KEY_FLAG",
        "NCRYPT_PERSIST_FLAG",
        "DACL_SECURITY_INFORMATION",
        "NCRYPT_PCP_IDENTITY_KEY",
        "NCRYPT_PCP_KEY_USAGE_POLICY_PROPERTY",
        "NCRYPT_PCP_TPM12_IDBINDING_PROPERTY",
        "NCRYPT_PCP_TPM12_IDACTIVATION_PROPERTY",
        "NCRYPT_PCP_PLATFORMHANDLE_PROPERTY",
        "NCRYPT_PCP_PROVIDERHANDLE_PROPERTY",
        "NCRYPT_PCP_EKPUB_PROPERTY",
        "NCRYPT_PCP_EKNVCERT_PROPERTY",
        "NCRYPT_PCP_PLATFORM_TYPE_PROPERTY",
        "NCRYPT_PCP_PROVIDER_VERSION_PROPERTY",
        "NCRYPT_SECURITY_DESCR_SUPPORT_PROPERTY",
        "NCRYPT_SECURITY_DESCR_PROPERTY",
        "NCRYPT_LENGTH_PROPERTY",
        "MS_PLATFORM_CRYPTO_PROVIDER",
        "MS_PLATFORM_KEY_STORAGE_PROVIDER",
        "NCRYPT_RSA_ALGORITHM",
        "BCRYPT_RSAPUBLIC_MAGIC",
        "SE_DACL_PRESENT",
        "SE_SELF_RELATIVE",
        "GENERIC_READ",
        "GENERIC_EXECUTE",
        "CRYPT_E_NOT_FOUND",
        "NCRYPT_PCP_EKCERT_PROPERTY",
        "TOKEN_QUERY",
        "ERROR_INSUFFICIENT_BUFFER",
    ):
        assert must in checked, must
    assert len(checked) >= 60


@needs_headers
def test_sid_strings_follow_from_the_header_rids() -> None:
    table = macros()
    nt = resolve_int("SECURITY_NT_AUTHORITY", table)
    builtin = resolve_int("SECURITY_BUILTIN_DOMAIN_RID", table)
    system = resolve_int("SECURITY_LOCAL_SYSTEM_RID", table)
    admins = resolve_int("DOMAIN_ALIAS_RID_ADMINS", table)
    users = resolve_int("DOMAIN_ALIAS_RID_USERS", table)
    expected = {
        ncrypt_api.SID_LOCAL_SYSTEM: f"S-1-{nt}-{system}",
        ncrypt_api.SID_BUILTIN_ADMINISTRATORS: f"S-1-{nt}-{builtin}-{admins}",
        ncrypt_api.SID_BUILTIN_USERS: f"S-1-{nt}-{builtin}-{users}",
    }
    for ours, theirs in expected.items():
        assert ours == theirs
    mask = resolve_int("GENERIC_READ", table) | resolve_int("GENERIC_EXECUTE", table)
    assert mask == ncrypt_api.PCP_USERS_ACCESS_MASK


@needs_headers
def test_hresult_names_match_winerror_h() -> None:
    table = macros(("winerror.h",))
    checked = 0
    for value, name in HRESULT_NAMES.items():
        wrapped = re.fullmatch(r"HRESULT_FROM_WIN32\((\w+)\)", name)
        if name in table:
            assert header_values(name, table) == {value}, (
                f"{name}: errors.py has 0x{value:08x}, winerror.h "
                f"{sorted(hex(v) for v in header_values(name, table) if isinstance(v, int))}"
            )
            checked += 1
        elif wrapped and wrapped.group(1) in table:
            code = resolve(wrapped.group(1), table)
            assert isinstance(code, int)
            assert value == 0x80070000 | (code & 0xFFFF), name
            checked += 1
    assert checked >= 40
    # No value that errors.py names differently from the header (names it carries).
    by_value: dict[int, set[str]] = {}
    for name in table:
        if re.fullmatch(r"(E|S|NTE|TBS_E|TPM_E|CRYPT_E)_\w+|S_OK", name):
            try:
                v = resolve(name, table)
            except (ValueError, KeyError):
                continue
            if isinstance(v, int):
                by_value.setdefault(v, set()).add(name)
    for value, name in HRESULT_NAMES.items():
        if value in by_value and name not in by_value[value] and "(" not in name:
            pytest.fail(f"0x{value:08x}: errors.py says {name}, winerror.h {by_value[value]}")


# --------------------------------------------------------------------------------------
# Prototypes and struct layouts.
# --------------------------------------------------------------------------------------
def _ctype_for(c: str) -> Any:
    base: dict[str, Any] = {
        "SECURITY_STATUS": ctypes.c_int32,
        "WINBOOL": ctypes.c_int32,
        "DWORD": ctypes.c_uint32,
        "ULONG": ctypes.c_uint32,
        "NCRYPT_HANDLE": ctypes.c_size_t,
        "NCRYPT_PROV_HANDLE": ctypes.c_size_t,
        "NCRYPT_KEY_HANDLE": ctypes.c_size_t,
        "LPCWSTR": ctypes.c_wchar_p,
        "PBYTE": ctypes.POINTER(ctypes.c_ubyte),
        "HCERTSTORE": ctypes.c_void_p,
        "PCCERT_CONTEXT": ctypes.POINTER(CERT_CONTEXT),
        "HANDLE": ctypes.c_void_p,
        "PHANDLE": ctypes.POINTER(ctypes.c_void_p),
        "LPVOID": ctypes.c_void_p,
        "PDWORD": ctypes.POINTER(ctypes.c_uint32),
        "TOKEN_INFORMATION_CLASS": ctypes.c_int,  # an enum
    }
    t: Any = base[c.rstrip("*")]
    for _ in range(c.count("*")):
        t = ctypes.POINTER(t)
    return t


PROTOTYPE_HEADERS = {
    ncrypt.NCRYPT_DLL: "ncrypt.h",
    ncrypt.CRYPT32_DLL: "wincrypt.h",
    "OpenProcessToken": "processthreadsapi.h",
    "GetCurrentProcess": "processthreadsapi.h",
    "GetTokenInformation": "securitybaseapi.h",
    "CloseHandle": "handleapi.h",
}
"""Where each prototype is declared: by DLL for ncrypt/crypt32, by name for the token calls."""


@needs_headers
def test_the_type_mapping_is_anchored_in_the_headers() -> None:
    assert typedef_exists("winnt.h", "void *HANDLE") or typedef_exists("winnt.h", "PVOID HANDLE")
    assert typedef_exists("winnt.h", "HANDLE *PHANDLE")
    assert typedef_exists("minwindef.h", "DWORD *PDWORD") or typedef_exists(
        "minwindef.h", "DWORD *PDWORD,*LPDWORD")
    assert typedef_exists("minwindef.h", "void *LPVOID")
    assert re.search(r"typedef enum _TOKEN_INFORMATION_CLASS", header_text("winnt.h"))
    assert typedef_exists("ncrypt.h", "LONG SECURITY_STATUS")
    for h in ("NCRYPT_HANDLE", "NCRYPT_PROV_HANDLE", "NCRYPT_KEY_HANDLE"):
        assert typedef_exists("ncrypt.h", f"ULONG_PTR {h}"), h
    assert typedef_exists("wincrypt.h", "void *HCERTSTORE")
    assert typedef_exists("wincrypt.h", "const CERT_CONTEXT *PCCERT_CONTEXT")
    assert ctypes.sizeof(ctypes.c_size_t) == ctypes.sizeof(ctypes.c_void_p)  # ULONG_PTR


@needs_headers
@pytest.mark.parametrize("func", sorted(PROTOTYPES))
def test_prototype_matches_header(func: str) -> None:
    proto = PROTOTYPES[func]
    header = PROTOTYPE_HEADERS.get(func) or PROTOTYPE_HEADERS[proto.dll]
    restype, params = prototype(header, func)
    assert len(proto.params) == len(params), f"{func}: arg count"
    assert [n for n, _ in proto.params] == [n for _, n in params], f"{func}: parameter names"
    assert [t for _, t in proto.params] == [_ctype_for(c) for c, _ in params], f"{func}: types"
    assert proto.restype is _ctype_for(restype)
    assert proto.argtypes == tuple(t for _, t in proto.params)


def _field_ctype(c: str) -> Any:
    return {
        "ULONG": ctypes.c_uint32,
        "DWORD": ctypes.c_uint32,
        "ACCESS_MASK": ctypes.c_uint32,
        "WORD": ctypes.c_uint16,
        "SECURITY_DESCRIPTOR_CONTROL": ctypes.c_uint16,
        "BYTE": ctypes.c_uint8,
        "BYTE*": ctypes.POINTER(ctypes.c_ubyte),
        "PCERT_INFO": ctypes.c_void_p,
        "HCERTSTORE": ctypes.c_void_p,
        "ACE_HEADER": ACE_HEADER,
        "SID_AND_ATTRIBUTES": ncrypt.SID_AND_ATTRIBUTES,
    }[c]


@needs_headers
@pytest.mark.parametrize(
    ("header", "tag", "cls", "size"),
    [
        ("bcrypt.h", "_BCRYPT_RSAKEY_BLOB", BCRYPT_RSAKEY_BLOB, 24),
        ("winnt.h", "_SECURITY_DESCRIPTOR_RELATIVE", SECURITY_DESCRIPTOR_RELATIVE, 20),
        ("winnt.h", "_ACL", ACL, 8),
        ("winnt.h", "_ACE_HEADER", ACE_HEADER, 4),
        ("winnt.h", "_ACCESS_ALLOWED_ACE", ncrypt_api.ACCESS_ALLOWED_ACE, 12),
        ("wincrypt.h", "_CERT_CONTEXT", CERT_CONTEXT, None),
        ("winnt.h", "_TOKEN_ELEVATION", ncrypt.TOKEN_ELEVATION, 4),
        ("winnt.h", "_TOKEN_USER", ncrypt.TOKEN_USER, None),
    ],
)
def test_struct_layout_matches_header(header: str, tag: str, cls: Any, size: int | None) -> None:
    fields = struct_fields(header, tag)
    assert [n for n, *_ in cls._fields_] == [n for _, n in fields]
    assert [t for _, t in cls._fields_] == [_field_ctype(c) for c, _ in fields]
    if size is not None:  # no padding anywhere in these little-endian layouts
        assert ctypes.sizeof(cls) == size == sum(ctypes.sizeof(t) for _, t in cls._fields_)


@needs_headers
def test_sid_and_attributes_and_the_token_classes_match_winnt_h() -> None:
    text = re.sub(r"\s+", " ", header_text("winnt.h"))
    m = re.search(r"typedef struct _SID_AND_ATTRIBUTES ?\{(.*?)\}", text)
    assert m
    # The struct holds '#ifdef __WIDL__ PISID Sid; #else PSID Sid; #endif': the C side is PSID.
    body = re.sub(r"#ifdef __WIDL__.*?#else", "", m.group(1)).replace("#endif", "")
    fields = [d.split() for d in filter(None, (x.strip() for x in body.split(";")))]
    assert fields == [["PSID", "Sid"], ["DWORD", "Attributes"]]
    assert typedef_exists("winnt.h", "PVOID PSID")
    assert [n for n, _ in ncrypt.SID_AND_ATTRIBUTES._fields_] == ["Sid", "Attributes"]
    assert [t for _, t in ncrypt.SID_AND_ATTRIBUTES._fields_] == [ctypes.c_void_p, ctypes.c_uint32]
    # TokenUser / TokenElevation are enum members: count from TokenUser = 1.
    enum = re.search(r"typedef enum _TOKEN_INFORMATION_CLASS ?\{(.*?)\}", text)
    assert enum
    names = [e.strip().split("=")[0].strip() for e in enum.group(1).split(",")]
    assert names[0] == "TokenUser" and "TokenUser = 1" in enum.group(1)
    assert names.index("TokenUser") + 1 == ncrypt.TokenUser
    assert names.index("TokenElevation") + 1 == ncrypt.TokenElevation == 20


def test_struct_module_layouts_agree_with_ctypes() -> None:
    assert ncrypt_api._RSAKEY_BLOB.size == ctypes.sizeof(BCRYPT_RSAKEY_BLOB)
    assert ncrypt_api._SD_HEADER.size == ctypes.sizeof(SECURITY_DESCRIPTOR_RELATIVE)
    assert ncrypt_api._ACL_HEADER.size == ctypes.sizeof(ACL)
    assert ncrypt_api._ACE_FIXED.size == ctypes.sizeof(ncrypt_api.ACCESS_ALLOWED_ACE) - 4


# --------------------------------------------------------------------------------------
# BCRYPT_RSAKEY_BLOB.
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rsa2048() -> rsa.RSAPublicKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()


@pytest.mark.parametrize(("bits", "e"), [(2048, 65537), (1024, 3), (3072, 65537)])
def test_rsa_blob_round_trips(bits: int, e: int) -> None:
    key = rsa.generate_private_key(public_exponent=e, key_size=bits).public_key()
    blob = ncrypt_api.build_rsa_public_blob(key)
    hdr = BCRYPT_RSAKEY_BLOB.from_buffer_copy(blob)
    assert hdr.Magic == ncrypt_api.BCRYPT_RSAPUBLIC_MAGIC
    assert blob[:4] == b"RSA1"
    assert (hdr.BitLength, hdr.cbModulus, hdr.cbPrime1, hdr.cbPrime2) == (bits, bits // 8, 0, 0)
    assert hdr.cbPublicExp == (e.bit_length() + 7) // 8  # minimal, as BCryptExportKey emits
    off = ctypes.sizeof(hdr)
    assert int.from_bytes(blob[off : off + hdr.cbPublicExp], "big") == e
    assert int.from_bytes(blob[off + hdr.cbPublicExp :], "big") == key.public_numbers().n
    assert ncrypt_api.parse_rsa_public_blob(blob).public_numbers() == key.public_numbers()


def _with_header(blob: bytes, **changes: int) -> bytes:
    hdr = BCRYPT_RSAKEY_BLOB.from_buffer_copy(blob)
    for k, v in changes.items():
        setattr(hdr, k, v)
    return bytes(hdr) + blob[ctypes.sizeof(hdr) :]


def test_rsa_blob_rejects_truncation_and_keeps_trailing_bytes(rsa2048: rsa.RSAPublicKey) -> None:
    blob = ncrypt_api.build_rsa_public_blob(rsa2048)
    for cut in (0, 3, 23, 24, 26, 27, len(blob) - 1):
        with pytest.raises(TpmError) as ei:
            ncrypt_api.parse_rsa_public_blob(blob[:cut])
        assert ei.value.code is ErrorCode.BAD_RESPONSE
        assert "BCRYPT_RSAKEY_BLOB" in str(ei.value)
    # Longer than the header says: the key is where the header says; the rest is returned.
    key, trailing = ncrypt_api.split_rsa_public_blob(blob + b"\0\x07")
    assert key.public_numbers() == rsa2048.public_numbers() and trailing == b"\0\x07"
    assert ncrypt_api.parse_rsa_public_blob(blob + b"\0").public_numbers() == rsa2048.public_numbers()
    assert ncrypt_api.split_rsa_public_blob(blob)[1] == b""


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"Magic": ncrypt_api.BCRYPT_RSAPRIVATE_MAGIC}, "magic"),
        ({"BitLength": 2047}, "modulus has 2048 bits"),
        ({"BitLength": 2056}, "cbModulus"),
        ({"cbModulus": 255}, "cbModulus"),
        ({"cbPublicExp": 4}, "length"),
        ({"cbPublicExp": 0}, "cbPublicExp"),
        ({"cbPrime1": 128}, "prime"),
    ],
)
def test_rsa_blob_rejects_lying_headers(
    rsa2048: rsa.RSAPublicKey, changes: dict[str, int], match: str
) -> None:
    blob = _with_header(ncrypt_api.build_rsa_public_blob(rsa2048), **changes)
    with pytest.raises(TpmError, match=match) as ei:
        ncrypt_api.parse_rsa_public_blob(blob)
    assert ei.value.code is ErrorCode.BAD_RESPONSE


def test_rsa_blob_rejects_an_invalid_key(rsa2048: rsa.RSAPublicKey) -> None:
    blob = bytearray(ncrypt_api.build_rsa_public_blob(rsa2048))
    blob[24 + 2] = 0x02  # exponent 0x010002: even
    with pytest.raises(TpmError, match="not a valid RSA public key"):
        ncrypt_api.parse_rsa_public_blob(bytes(blob))


# --------------------------------------------------------------------------------------
# SIDs and security descriptors.
# --------------------------------------------------------------------------------------
# MS-DTYP 2.4.2.2: IdentifierAuthority is big-endian, SubAuthority little-endian. S-1-5-32-545.
USERS_SID_BYTES = bytes.fromhex("01 02 000000000005 20000000 21020000")


@needs_headers
def test_sid_encoding() -> None:
    table = macros()
    assert ncrypt_api.sid_from_string("S-1-5-32-545") == USERS_SID_BYTES
    assert USERS_SID_BYTES[0] == resolve("SID_REVISION", table)
    assert ncrypt_api.sid_from_string("BU") == USERS_SID_BYTES
    assert ncrypt_api.sid_from_string("s-1-5-32-545") == USERS_SID_BYTES
    assert ncrypt_api.sid_to_string(USERS_SID_BYTES) == "S-1-5-32-545"
    for text in ("S-1-5-18", "S-1-5-32-544", "S-1-0x123456789ABC-1", "S-1-1-0", "S-1-5"):
        assert ncrypt_api.sid_to_string(ncrypt_api.sid_from_string(text)) == text


@pytest.mark.parametrize(
    "bad", ["", "X", "S-2-5-32", "S-1-", "S-1-5-4294967296", "S-1-5-" + "-".join(["1"] * 16)]
)
def test_sid_from_string_rejects(bad: str) -> None:
    with pytest.raises(TpmError) as ei:
        ncrypt_api.sid_from_string(bad)
    assert ei.value.code is ErrorCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "bad", [b"", USERS_SID_BYTES[:-1], USERS_SID_BYTES + b"\0", b"\x02" + USERS_SID_BYTES[1:]]
)
def test_sid_to_string_rejects(bad: bytes) -> None:
    with pytest.raises(TpmError, match="SID"):
        ncrypt_api.sid_to_string(bad)


@needs_headers
def test_security_descriptor_bytes() -> None:
    table = macros()
    mask = ncrypt_api.PCP_USERS_ACCESS_MASK
    sd = ncrypt_api.build_security_descriptor([(ncrypt_api.SID_BUILTIN_USERS, mask)])

    hdr = SECURITY_DESCRIPTOR_RELATIVE.from_buffer_copy(sd)
    assert hdr.Revision == resolve("SECURITY_DESCRIPTOR_REVISION", table) == 1
    assert hdr.Control == resolve_int("SE_DACL_PRESENT", table) | resolve_int(
        "SE_SELF_RELATIVE", table
    )
    assert (hdr.Owner, hdr.Group, hdr.Sacl) == (0, 0, 0)
    assert hdr.Dacl == ctypes.sizeof(hdr)

    acl = ACL.from_buffer_copy(sd, hdr.Dacl)
    assert acl.AclRevision == resolve("ACL_REVISION", table)
    assert (acl.AceCount, acl.AclSize) == (1, len(sd) - hdr.Dacl)

    ace_off = hdr.Dacl + ctypes.sizeof(acl)
    ace = ncrypt_api.ACCESS_ALLOWED_ACE.from_buffer_copy(sd, ace_off)
    assert ace.Header.AceType == resolve("ACCESS_ALLOWED_ACE_TYPE", table)
    assert ace.Header.AceFlags == 0
    assert ace.Header.AceSize == len(sd) - ace_off
    assert ace.Mask == resolve_int("GENERIC_READ", table) | resolve_int("GENERIC_EXECUTE", table)
    sid_start = ace_off + ncrypt_api.ACCESS_ALLOWED_ACE.SidStart.offset
    assert sd[sid_start:] == USERS_SID_BYTES

    parsed = ncrypt_api.parse_security_descriptor(sd)
    assert parsed.revision == 1 and parsed.owner is None and parsed.group is None
    assert parsed.dacl == (ncrypt_api.Ace(0, 0, mask, "S-1-5-32-545"),)


def test_machine_key_descriptor_keeps_system_and_admins() -> None:
    parsed = ncrypt_api.parse_security_descriptor(ncrypt_api.pcp_machine_key_security_descriptor())
    assert parsed.dacl is not None
    assert [(a.sid, a.mask) for a in parsed.dacl] == [
        ("S-1-5-18", ncrypt_api.GENERIC_ALL),
        ("S-1-5-32-544", ncrypt_api.GENERIC_ALL),
        ("S-1-5-32-545", ncrypt_api.GENERIC_READ | ncrypt_api.GENERIC_EXECUTE),
    ]
    protected = ncrypt_api.build_security_descriptor([("BU", 1)], protected=True)
    assert ncrypt_api.parse_security_descriptor(protected).control & ncrypt_api.SE_DACL_PROTECTED


def test_parse_security_descriptor_with_owner_and_null_dacl() -> None:
    owner = ncrypt_api.sid_from_string("SY")
    hdr = struct.pack("<BBHIIII", 1, 0, ncrypt_api.SE_SELF_RELATIVE, 20, 0, 0, 0)
    parsed = ncrypt_api.parse_security_descriptor(hdr + owner)
    assert (parsed.owner, parsed.dacl) == ("S-1-5-18", None)


def _corrupt(sd: bytes, offset: int, fmt: str, value: int) -> bytes:
    b = bytearray(sd)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda sd: sd[:19],
        lambda sd: sd[:-1],
        lambda sd: sd[:27],
        lambda sd: _corrupt(sd, 0, "<B", 2),  # revision
        lambda sd: _corrupt(sd, 2, "<H", ncrypt_api.SE_DACL_PRESENT),  # not self-relative
        lambda sd: _corrupt(sd, 16, "<I", 8),  # DACL offset inside the header
        lambda sd: _corrupt(sd, 16, "<I", 1000),  # DACL offset past the end
        lambda sd: _corrupt(sd, 4, "<I", 1000),  # owner offset past the end
        lambda sd: _corrupt(sd, 22, "<H", 4),  # AclSize smaller than the header
        lambda sd: _corrupt(sd, 22, "<H", 200),  # AclSize past the end
        lambda sd: _corrupt(sd, 24, "<H", 2),  # AceCount lies
        lambda sd: _corrupt(sd, 30, "<H", 28),  # AceSize lies (too big)
        lambda sd: _corrupt(sd, 30, "<H", 22),  # AceSize not a multiple of 4
        lambda sd: _corrupt(sd, 37, "<B", 9),  # SID sub-authority count lies
    ],
)
def test_parse_security_descriptor_rejects(mutate: Callable[[bytes], bytes]) -> None:
    sd = ncrypt_api.build_security_descriptor([("BU", ncrypt_api.GENERIC_READ)])
    with pytest.raises(TpmError) as ei:
        ncrypt_api.parse_security_descriptor(mutate(sd))
    assert ei.value.code is ErrorCode.BAD_RESPONSE


def test_build_security_descriptor_rejects_bad_input() -> None:
    with pytest.raises(TpmError, match="access mask"):
        ncrypt_api.build_security_descriptor([("BU", 1 << 32)])
    with pytest.raises(TpmError, match="SID"):
        ncrypt_api.build_security_descriptor([(USERS_SID_BYTES[:-2], 1)])


# --------------------------------------------------------------------------------------
# Property value codecs and NCryptError.
# --------------------------------------------------------------------------------------
def test_property_codecs() -> None:
    assert ncrypt_api.pack_wstr("RSA") == "RSA\0".encode("utf-16-le")
    assert ncrypt_api.unpack_wstr("TPM 2.0\0\0\0".encode("utf-16-le")) == "TPM 2.0"
    assert ncrypt_api.unpack_wstr(b"") == ""
    assert ncrypt_api.pack_dword(2048) == struct.pack("<I", 2048)
    assert ncrypt_api.unpack_dword(ncrypt_api.pack_dword(0xFFFFFFFF)) == 0xFFFFFFFF
    assert ncrypt_api.unpack_handle(struct.pack("<Q", 0x1234_5678_9ABC)) == 0x1234_5678_9ABC
    assert ncrypt_api.unpack_handle(struct.pack("<I", 0x81000001)) == 0x81000001
    for bad, fn in [
        (b"\0", ncrypt_api.unpack_wstr),
        (b"\0\xd8", ncrypt_api.unpack_wstr),  # lone surrogate
        (b"\1\0\0", ncrypt_api.unpack_dword),
        (b"\1\0\0\0\0", ncrypt_api.unpack_dword),
        (b"\1\0", ncrypt_api.unpack_handle),
    ]:
        with pytest.raises(TpmError) as ei:
            fn(bad)
        assert ei.value.code is ErrorCode.BAD_RESPONSE
    with pytest.raises(TpmError):
        ncrypt_api.pack_dword(-1)
    with pytest.raises(TpmError):
        ncrypt_api.pack_wstr("a\0b")


def test_ncrypt_error_carries_unsigned_hresult_and_name() -> None:
    err = NCryptError("NCryptOpenKey", -2146893802, "key 'x'")  # LONG as returned
    assert err.hresult == 0x80090016
    assert err.function == "NCryptOpenKey"
    assert err.hresult_name == "NTE_BAD_KEYSET"
    assert str(err) == "NCryptOpenKey: NTE_BAD_KEYSET (0x80090016): key 'x'"


# --------------------------------------------------------------------------------------
# The ctypes binding: imports everywhere, UNSUPPORTED off Windows, marshals correctly.
# --------------------------------------------------------------------------------------
def test_modules_import_and_conform_to_the_protocol() -> None:
    importlib.reload(ncrypt)
    impl = WindowsNCrypt()
    assert isinstance(impl, NCryptProvider)
    for name, member in inspect.getmembers(NCryptProvider, inspect.isfunction):
        if name.startswith("_"):
            continue
        want = inspect.signature(member)
        got = inspect.signature(getattr(WindowsNCrypt, name))
        assert list(got.parameters.values()) == list(want.parameters.values()), name


@pytest.mark.skipif(sys.platform == "win32", reason="checks the non-Windows behaviour")
def test_using_the_binding_off_windows_raises_unsupported() -> None:
    impl = WindowsNCrypt()  # constructing loads nothing
    with pytest.raises(TpmError) as ei:
        impl.open_storage_provider()
    assert ei.value.code is ErrorCode.UNSUPPORTED
    assert "ncrypt.dll" in str(ei.value) and "Windows" in str(ei.value)
    with pytest.raises(TpmError) as ei:
        impl.get_certificates(1, ncrypt_api.NCRYPT_PCP_EKNVCERT_PROPERTY)
    assert ei.value.code is ErrorCode.UNSUPPORTED


def _signed(hr: int) -> int:
    return hr - (1 << 32) if hr & 0x80000000 else hr


class FakeDlls:
    """ncrypt.dll/crypt32.dll stand-ins: NCrypt entry points are real ctypes callbacks (so
    argument marshalling is exercised); crypt32 ones are plain callables."""

    def __init__(self) -> None:
        self.props: dict[tuple[int, str], bytes] = {}
        self.calls: list[Any] = []
        self.certs = [b"\x30\x03\x02\x01\x01", b"\x30\x03\x02\x01\x02"]
        self._keep: list[Any] = []
        self.closed: list[int] = []

        def make(func: str, impl: Callable[..., Any]) -> Any:
            proto = PROTOTYPES[func]
            return ctypes.CFUNCTYPE(proto.restype, *proto.argtypes)(impl)

        def open_provider(ph: Any, name: str, flags: int) -> int:
            self.calls.append(("open", name, flags))
            ph[0] = 0x1000
            return 0

        def create(prov: int, ph: Any, alg: str, name: str | None, spec: int, flags: int) -> int:
            self.calls.append(("create", prov, alg, name, spec, flags))
            if name == "exists":
                return _signed(0x8009000F)
            ph[0] = 0x2000
            return 0

        def open_key(prov: int, ph: Any, name: str, spec: int, flags: int) -> int:
            self.calls.append(("openkey", prov, name, spec, flags))
            if name == "missing":
                return _signed(0x80090016)
            ph[0] = 0x3000
            return 0

        def set_prop(h: int, name: str, buf: Any, size: int, flags: int) -> int:
            self.props[(h, name)] = ctypes.string_at(buf, size) if size else b""
            self.calls.append(("set", h, name, size, flags))
            return 0

        def get_prop(h: int, name: str, buf: Any, size: int, pcb: Any, flags: int) -> int:
            self.calls.append(("get", h, name, bool(buf), size, flags))
            value = self.props.get((h, name))
            if value is None:
                return _signed(0x80090029)
            pcb[0] = len(value)
            if not buf:
                return 0
            if size < len(value):
                return _signed(0x80090028)
            ctypes.memmove(buf, value, len(value))
            return 0

        def simple(tag: str) -> Callable[..., int]:
            def f(*args: Any) -> int:
                self.calls.append((tag, *args))
                return 0

            return f

        self.ncrypt = type("ncrypt", (), {})()
        impls: dict[str, Callable[..., Any]] = {
            "NCryptOpenStorageProvider": open_provider,
            "NCryptCreatePersistedKey": create,
            "NCryptOpenKey": open_key,
            "NCryptSetProperty": set_prop,
            "NCryptGetProperty": get_prop,
            "NCryptFinalizeKey": simple("finalize"),
            "NCryptDeleteKey": simple("delete"),
            "NCryptFreeObject": simple("free"),
        }
        for func, impl in impls.items():
            setattr(self.ncrypt, func, make(func, impl))

        contexts: list[Any] = []
        for der in self.certs:
            buf = (ctypes.c_ubyte * len(der)).from_buffer_copy(der)
            ctx = CERT_CONTEXT(1, ctypes.cast(buf, ctypes.POINTER(ctypes.c_ubyte)), len(der))
            self._keep += [buf, ctx]
            contexts.append(ctypes.pointer(ctx))

        class Fn:
            def __init__(self, f: Callable[..., Any]) -> None:
                self.f, self.argtypes, self.restype = f, None, None

            def __call__(self, *a: Any) -> Any:
                return self.f(*a)

        def enum(store: int, prev: Any) -> Any:
            assert store == 0xC0FFEE
            addresses = [ctypes.addressof(c.contents) for c in contexts]
            i = addresses.index(ctypes.addressof(prev.contents)) + 1 if prev else 0
            return contexts[i] if i < len(contexts) else ctypes.POINTER(CERT_CONTEXT)()

        self.crypt32 = type("crypt32", (), {})()
        self.crypt32.CertEnumCertificatesInStore = Fn(enum)
        self.crypt32.CertFreeCertificateContext = Fn(lambda ctx: 1)

        def close(store: int, flags: int) -> int:
            self.closed.append(store)
            return 1

        self.crypt32.CertCloseStore = Fn(close)

    def load(self, name: str) -> Any:
        return {ncrypt.NCRYPT_DLL: self.ncrypt, ncrypt.CRYPT32_DLL: self.crypt32}[name]


def test_binding_marshals_calls_through_ctypes() -> None:
    fake = FakeDlls()
    api = WindowsNCrypt(loader=fake.load)
    prov = api.open_storage_provider()
    assert prov == 0x1000
    assert fake.calls[-1] == ("open", ncrypt_api.MS_PLATFORM_CRYPTO_PROVIDER, 0)

    key = api.create_persisted_key(prov, name="ak", flags=ncrypt_api.NCRYPT_MACHINE_KEY_FLAG)
    assert key == 0x2000
    assert fake.calls[-1] == ("create", 0x1000, "RSA", "ak", 0, 0x20)
    api.create_persisted_key(prov)  # ephemeral: NULL name
    assert fake.calls[-1][3] is None

    api.set_property(key, ncrypt_api.NCRYPT_LENGTH_PROPERTY, ncrypt_api.pack_dword(2048))
    assert fake.props[(key, "Length")] == struct.pack("<I", 2048)
    api.set_property(key, "Empty", b"", ncrypt_api.NCRYPT_PERSIST_FLAG)
    assert fake.calls[-1] == ("set", key, "Empty", 0, ncrypt_api.NCRYPT_PERSIST_FLAG)

    value = bytes(range(256)) * 3
    fake.props[(key, "Blob")] = value
    del fake.calls[:]
    assert api.get_property(key, "Blob", 4) == value
    assert fake.calls == [("get", key, "Blob", False, 0, 4), ("get", key, "Blob", True, 768, 4)]

    fake.props[(prov, ncrypt_api.NCRYPT_PCP_PLATFORMHANDLE_PROPERTY)] = struct.pack("<Q", 0xBEEF)
    del fake.calls[:]
    raw = api.get_property(prov, ncrypt_api.NCRYPT_PCP_PLATFORMHANDLE_PROPERTY, size=8)
    assert ncrypt_api.unpack_handle(raw) == 0xBEEF
    assert len(fake.calls) == 1  # no probe when the size is given

    fake.props[(key, "Zero")] = b""
    assert api.get_property(key, "Zero") == b""

    api.finalize_key(key, ncrypt_api.NCRYPT_SILENT_FLAG)
    api.delete_key(key)
    api.free_object(prov)
    assert [c[0] for c in fake.calls[-3:]] == ["finalize", "delete", "free"]
    assert fake.calls[-3][1:] == (key, 0x40)


def test_binding_get_property_retries_when_the_value_grows() -> None:
    fake = FakeDlls()
    api = WindowsNCrypt(loader=fake.load)
    fake.props[(7, "P")] = b"abc"
    calls = 0
    real = PROTOTYPES["NCryptGetProperty"]
    inner = fake.ncrypt.NCryptGetProperty

    def growing(h: int, name: str, buf: Any, size: int, pcb: Any, flags: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            fake.props[(7, "P")] = b"abcdef"
        return int(inner(h, name, buf, size, pcb, flags))

    fake.ncrypt.NCryptGetProperty = ctypes.CFUNCTYPE(real.restype, *real.argtypes)(growing)
    assert api.get_property(7, "P") == b"abcdef"


def test_binding_raises_ncrypt_error_with_the_status() -> None:
    api = WindowsNCrypt(loader=FakeDlls().load)
    prov = api.open_storage_provider()
    with pytest.raises(NCryptError) as ei:
        api.open_key(prov, "missing", flags=ncrypt_api.NCRYPT_MACHINE_KEY_FLAG)
    assert (ei.value.function, ei.value.hresult) == ("NCryptOpenKey", 0x80090016)
    assert "NTE_BAD_KEYSET" in str(ei.value) and "missing" in str(ei.value)
    with pytest.raises(NCryptError) as ei:
        api.create_persisted_key(prov, name="exists")
    assert ei.value.hresult_name == "NTE_EXISTS"
    with pytest.raises(NCryptError) as ei:
        api.get_property(prov, "Nope")
    assert (ei.value.function, ei.value.hresult) == ("NCryptGetProperty", 0x80090029)
    with pytest.raises(NCryptError) as ei:
        api.get_property(prov, ncrypt_api.NCRYPT_PCP_PLATFORMHANDLE_PROPERTY, size=1)


def test_binding_reads_certificate_stores() -> None:
    fake = FakeDlls()
    api = WindowsNCrypt(loader=fake.load)
    prov = api.open_storage_provider()
    handle_size = ctypes.sizeof(ctypes.c_void_p)
    fake.props[(prov, "PCP_RSA_EKNVCERT")] = (0xC0FFEE).to_bytes(handle_size, "little")
    assert api.get_certificates(prov, "PCP_RSA_EKNVCERT") == fake.certs
    assert fake.closed == [0xC0FFEE]
    assert ("get", prov, "PCP_RSA_EKNVCERT", True, handle_size, 0) in fake.calls
    with pytest.raises(NCryptError):
        api.get_certificates(prov, "PCP_ECC_EKNVCERT")


# --------------------------------------------------------------------------------------
# The process token: OpenProcessToken + GetTokenInformation through ctypes callbacks.
# --------------------------------------------------------------------------------------
class FakeToken:
    """advapi32/kernel32 stand-ins that answer as Windows does for one token."""

    TOKEN = 0x77

    def __init__(self, elevated: int, sid: str, *, open_ok: bool = True) -> None:
        self.elevated, self.sid = elevated, ncrypt_api.sid_from_string(sid)
        self.open_ok = open_ok
        self.calls: list[Any] = []
        self._keep: list[Any] = []

        def make(func: str, impl: Callable[..., Any]) -> Any:
            proto = PROTOTYPES[func]
            cb = ctypes.CFUNCTYPE(proto.restype, *proto.argtypes)(impl)
            self._keep.append(cb)
            return cb

        def current() -> int:
            return 0xFFFFFFFFFFFFFFFF & ((1 << (8 * ctypes.sizeof(ctypes.c_void_p))) - 1)

        def open_token(process: int, access: int, ph: Any) -> int:
            self.calls.append(("open", process, access))
            if not self.open_ok:
                return 0
            ph[0] = self.TOKEN
            return 1

        def info(token: int, cls: int, buf: int | None, length: int, pret: Any) -> int:
            self.calls.append(("info", token, cls, bool(buf), length))
            if cls == ncrypt.TokenElevation:
                pret[0] = 4
                if not buf or length < 4:
                    return 0
                ctypes.c_uint32.from_address(buf).value = self.elevated
                return 1
            assert cls == ncrypt.TokenUser
            head = ctypes.sizeof(ncrypt.TOKEN_USER)
            pret[0] = head + len(self.sid)
            if not buf or length < head + len(self.sid):
                return 0  # ERROR_INSUFFICIENT_BUFFER (GetLastError is Windows-only in ctypes)
            user = ncrypt.TOKEN_USER.from_address(buf)
            user.User.Sid = buf + head  # the SID lives in the same buffer, after TOKEN_USER
            ctypes.memmove(buf + head, self.sid, len(self.sid))
            return 1

        def close(handle: int) -> int:
            self.calls.append(("close", handle))
            return 1

        self.kernel32 = type("kernel32", (), {})()
        self.kernel32.GetCurrentProcess = make("GetCurrentProcess", current)
        self.kernel32.CloseHandle = make("CloseHandle", close)
        self.advapi32 = type("advapi32", (), {})()
        self.advapi32.OpenProcessToken = make("OpenProcessToken", open_token)
        self.advapi32.GetTokenInformation = make("GetTokenInformation", info)

    def load(self, name: str) -> Any:
        return {ncrypt.KERNEL32_DLL: self.kernel32, ncrypt.ADVAPI32_DLL: self.advapi32}[name]


@pytest.mark.parametrize(
    ("elevated", "sid", "system", "answer"),
    [
        (1, "S-1-5-21-1-2-3-500", False, True),  # an elevated administrator
        (0, "S-1-5-21-1-2-3-1001", False, False),  # a standard user (or UAC's limited token)
        (0, "S-1-5-18", True, True),  # SYSTEM counts as elevated whatever the flag says
    ],
)
def test_process_token_through_ctypes(elevated: int, sid: str, system: bool, answer: bool) -> None:
    fake = FakeToken(elevated, sid)
    token = WindowsNCrypt(loader=fake.load).process_token()
    assert (token.token_is_elevated, token.user_sid) == (bool(elevated), sid)
    assert (token.is_system, token.elevated) == (system, answer)
    assert fake.calls[0][0] == "open" and fake.calls[0][2] == ncrypt.TOKEN_QUERY
    infos = [c for c in fake.calls if c[0] == "info"]
    assert [c[2] for c in infos] == [ncrypt.TokenElevation, ncrypt.TokenUser, ncrypt.TokenUser]
    assert infos[1][3:] == (False, 0)  # the TokenUser size query passes a NULL buffer
    assert fake.calls[-1] == ("close", FakeToken.TOKEN)
    assert token.to_dict()["elevated"] is answer


def test_process_token_failure_is_an_ncrypt_error() -> None:
    fake = FakeToken(1, "S-1-5-18", open_ok=False)
    with pytest.raises(NCryptError) as ei:
        WindowsNCrypt(loader=fake.load).process_token()
    assert ei.value.function == "OpenProcessToken"
    assert not any(c[0] == "close" for c in fake.calls)  # nothing was opened, nothing closed
