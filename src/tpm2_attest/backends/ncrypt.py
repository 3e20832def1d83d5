"""Thin ctypes binding to ncrypt.dll (crypt32.dll for certificate stores, advapi32.dll and
kernel32.dll for the one question about the caller: is this process elevated?).

Declarative on purpose: ``PROTOTYPES`` lists each Windows function with its DLL, return
type and parameters (names and types as in the mingw-w64 / Windows SDK headers, which
tests/test_ncrypt_binding.py checks), and ``WindowsNCrypt`` implements
``ncrypt_api.NCryptProvider`` with one short method per function. No PCP logic lives here.

The module imports on every OS; DLLs are loaded on first use, and on anything but Windows
that first use raises ``TpmError(code=UNSUPPORTED)``.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ..errors import ErrorCode, TpmError
from .ncrypt_api import (
    CRYPT_E_NOT_FOUND,
    MS_PLATFORM_CRYPTO_PROVIDER,
    NCRYPT_RSA_ALGORITHM,
    NTE_BUFFER_TOO_SMALL,
    KeyHandle,
    NCryptError,
    NCryptHandle,
    NCryptProvider,
    ProcessToken,
    ProvHandle,
    sid_to_string,
    unpack_handle,
)

# Windows C types, spelled for ctypes. DWORD/LONG are fixed 32-bit (c_ulong is 64-bit on
# Linux, so never use it for them); ULONG_PTR handles are pointer-sized unsigned.
DWORD: Final = ctypes.c_uint32
LONG: Final = ctypes.c_int32
WINBOOL: Final = ctypes.c_int32
SECURITY_STATUS: Final = LONG
ULONG_PTR: Final = ctypes.c_size_t
NCRYPT_HANDLE: Final = ULONG_PTR
NCRYPT_PROV_HANDLE: Final = ULONG_PTR
NCRYPT_KEY_HANDLE: Final = ULONG_PTR
LPCWSTR: Final = ctypes.c_wchar_p
PBYTE: Final = ctypes.POINTER(ctypes.c_ubyte)
HCERTSTORE: Final = ctypes.c_void_p
HANDLE: Final = ctypes.c_void_p
PHANDLE: Final = ctypes.POINTER(ctypes.c_void_p)
LPVOID: Final = ctypes.c_void_p
PDWORD: Final = ctypes.POINTER(ctypes.c_uint32)
TOKEN_INFORMATION_CLASS: Final = ctypes.c_int
"""An enum in winnt.h: int-sized."""

TOKEN_QUERY: Final = 0x0008
"""OpenProcessToken access right needed by GetTokenInformation (winnt.h)."""
ERROR_INSUFFICIENT_BUFFER: Final = 122
"""GetLastError after a GetTokenInformation size query (winerror.h)."""
TokenUser: Final = 1
"""TOKEN_INFORMATION_CLASS member: TOKEN_USER (winnt.h enum, first member = 1)."""
TokenElevation: Final = 20
"""TOKEN_INFORMATION_CLASS member: TOKEN_ELEVATION (winnt.h enum, the 20th member)."""
_HRESULT_FROM_WIN32: Final = 0x80070000


class CERT_CONTEXT(ctypes.Structure):
    """wincrypt.h CERT_CONTEXT: the DER certificate is pbCertEncoded[0:cbCertEncoded]."""

    _fields_ = (
        ("dwCertEncodingType", DWORD),
        ("pbCertEncoded", PBYTE),
        ("cbCertEncoded", DWORD),
        ("pCertInfo", ctypes.c_void_p),
        ("hCertStore", HCERTSTORE),
    )


PCCERT_CONTEXT: Final = ctypes.POINTER(CERT_CONTEXT)


class TOKEN_ELEVATION(ctypes.Structure):
    """winnt.h TOKEN_ELEVATION: nonzero TokenIsElevated when the token has elevated privileges."""

    _fields_ = (("TokenIsElevated", DWORD),)


class SID_AND_ATTRIBUTES(ctypes.Structure):
    """winnt.h SID_AND_ATTRIBUTES: ``Sid`` points at a SID inside the same buffer."""

    _fields_ = (("Sid", ctypes.c_void_p), ("Attributes", DWORD))


class TOKEN_USER(ctypes.Structure):
    """winnt.h TOKEN_USER: the token's user SID."""

    _fields_ = (("User", SID_AND_ATTRIBUTES),)


@dataclass(frozen=True, slots=True)
class Prototype:
    """One exported function: where it lives and its C signature (ctypes types)."""

    dll: str
    name: str
    restype: Any
    params: tuple[tuple[str, Any], ...]
    """(parameter name as in the header, ctypes type) in declaration order."""

    @property
    def argtypes(self) -> tuple[Any, ...]:
        """The ctypes ``argtypes`` tuple."""
        return tuple(t for _, t in self.params)


def _p(t: Any) -> Any:
    return ctypes.POINTER(t)


NCRYPT_DLL: Final = "ncrypt.dll"
CRYPT32_DLL: Final = "crypt32.dll"
ADVAPI32_DLL: Final = "advapi32.dll"
KERNEL32_DLL: Final = "kernel32.dll"

PROTOTYPES: Final[dict[str, Prototype]] = {
    p.name: p
    for p in (
        Prototype(
            NCRYPT_DLL,
            "NCryptOpenStorageProvider",
            SECURITY_STATUS,
            (
                ("phProvider", _p(NCRYPT_PROV_HANDLE)),
                ("pszProviderName", LPCWSTR),
                ("dwFlags", DWORD),
            ),
        ),
        Prototype(
            NCRYPT_DLL,
            "NCryptCreatePersistedKey",
            SECURITY_STATUS,
            (
                ("hProvider", NCRYPT_PROV_HANDLE),
                ("phKey", _p(NCRYPT_KEY_HANDLE)),
                ("pszAlgId", LPCWSTR),
                ("pszKeyName", LPCWSTR),
                ("dwLegacyKeySpec", DWORD),
                ("dwFlags", DWORD),
            ),
        ),
        Prototype(
            NCRYPT_DLL,
            "NCryptOpenKey",
            SECURITY_STATUS,
            (
                ("hProvider", NCRYPT_PROV_HANDLE),
                ("phKey", _p(NCRYPT_KEY_HANDLE)),
                ("pszKeyName", LPCWSTR),
                ("dwLegacyKeySpec", DWORD),
                ("dwFlags", DWORD),
            ),
        ),
        Prototype(
            NCRYPT_DLL,
            "NCryptSetProperty",
            SECURITY_STATUS,
            (
                ("hObject", NCRYPT_HANDLE),
                ("pszProperty", LPCWSTR),
                ("pbInput", PBYTE),
                ("cbInput", DWORD),
                ("dwFlags", DWORD),
            ),
        ),
        Prototype(
            NCRYPT_DLL,
            "NCryptGetProperty",
            SECURITY_STATUS,
            (
                ("hObject", NCRYPT_HANDLE),
                ("pszProperty", LPCWSTR),
                ("pbOutput", PBYTE),
                ("cbOutput", DWORD),
                ("pcbResult", _p(DWORD)),
                ("dwFlags", DWORD),
            ),
        ),
        Prototype(
            NCRYPT_DLL,
            "NCryptFinalizeKey",
            SECURITY_STATUS,
            (("hKey", NCRYPT_KEY_HANDLE), ("dwFlags", DWORD)),
        ),
        Prototype(
            NCRYPT_DLL,
            "NCryptDeleteKey",
            SECURITY_STATUS,
            (("hKey", NCRYPT_KEY_HANDLE), ("dwFlags", DWORD)),
        ),
        Prototype(
            NCRYPT_DLL,
            "NCryptFreeObject",
            SECURITY_STATUS,
            (("hObject", NCRYPT_HANDLE),),
        ),
        Prototype(
            CRYPT32_DLL,
            "CertEnumCertificatesInStore",
            PCCERT_CONTEXT,
            (("hCertStore", HCERTSTORE), ("pPrevCertContext", PCCERT_CONTEXT)),
        ),
        Prototype(
            CRYPT32_DLL,
            "CertFreeCertificateContext",
            WINBOOL,
            (("pCertContext", PCCERT_CONTEXT),),
        ),
        Prototype(
            CRYPT32_DLL,
            "CertCloseStore",
            WINBOOL,
            (("hCertStore", HCERTSTORE), ("dwFlags", DWORD)),
        ),
        Prototype(KERNEL32_DLL, "GetCurrentProcess", HANDLE, ()),
        Prototype(
            ADVAPI32_DLL,
            "OpenProcessToken",
            WINBOOL,
            (("ProcessHandle", HANDLE), ("DesiredAccess", DWORD), ("TokenHandle", PHANDLE)),
        ),
        Prototype(
            ADVAPI32_DLL,
            "GetTokenInformation",
            WINBOOL,
            (
                ("TokenHandle", HANDLE),
                ("TokenInformationClass", TOKEN_INFORMATION_CLASS),
                ("TokenInformation", LPVOID),
                ("TokenInformationLength", DWORD),
                ("ReturnLength", PDWORD),
            ),
        ),
        Prototype(KERNEL32_DLL, "CloseHandle", WINBOOL, (("hObject", HANDLE),)),
    )
}

Loader = Callable[[str], Any]
"""Maps a DLL name to an object whose attributes are its exported functions."""


def load_windows_dll(name: str) -> Any:
    """Load a system DLL with WinDLL (stdcall, last-error captured); UNSUPPORTED off Windows."""
    if sys.platform != "win32":
        raise TpmError(
            f"{name} is a Windows DLL; the NCrypt/PCP backend only runs on Windows "
            f"(this is {sys.platform}; use the PCP emulator to exercise the logic)",
            code=ErrorCode.UNSUPPORTED,
        )
    win_dll = getattr(ctypes, "WinDLL")  # noqa: B009 - absent from ctypes off Windows
    return win_dll(name, use_last_error=True)


def _last_error() -> int | None:
    get = getattr(ctypes, "get_last_error", None)  # Windows-only in ctypes
    return None if get is None else int(get()) & 0xFFFFFFFF


class WindowsNCrypt:
    """``NCryptProvider`` over ncrypt.dll via ctypes; DLLs load on the first call."""

    def __init__(self, loader: Loader | None = None) -> None:
        """``loader`` replaces WinDLL loading (tests inject fakes; default: system DLLs)."""
        self._loader: Loader = loader or load_windows_dll
        self._dlls: dict[str, Any] = {}
        self._fns: dict[str, Any] = {}

    def _fn(self, name: str) -> Any:
        fn = self._fns.get(name)
        if fn is None:
            proto = PROTOTYPES[name]
            dll = self._dlls.get(proto.dll)
            if dll is None:
                dll = self._dlls[proto.dll] = self._loader(proto.dll)
            fn = getattr(dll, name)
            fn.argtypes = proto.argtypes
            fn.restype = proto.restype
            self._fns[name] = fn
        return fn

    def _call(self, name: str, *args: Any, detail: str | None = None) -> None:
        status = int(self._fn(name)(*args)) & 0xFFFFFFFF
        if status:
            raise NCryptError(name, status, detail)

    def open_storage_provider(
        self, name: str = MS_PLATFORM_CRYPTO_PROVIDER, flags: int = 0
    ) -> ProvHandle:
        """NCryptOpenStorageProvider."""
        handle = NCRYPT_PROV_HANDLE(0)
        self._call("NCryptOpenStorageProvider", ctypes.byref(handle), name, flags, detail=name)
        return int(handle.value)

    def create_persisted_key(
        self,
        prov: ProvHandle,
        alg: str = NCRYPT_RSA_ALGORITHM,
        name: str | None = None,
        legacy_spec: int = 0,
        flags: int = 0,
    ) -> KeyHandle:
        """NCryptCreatePersistedKey."""
        key = NCRYPT_KEY_HANDLE(0)
        self._call(
            "NCryptCreatePersistedKey",
            prov,
            ctypes.byref(key),
            alg,
            name,
            legacy_spec,
            flags,
            detail=f"key {name!r}",
        )
        return int(key.value)

    def open_key(
        self, prov: ProvHandle, name: str, legacy_spec: int = 0, flags: int = 0
    ) -> KeyHandle:
        """NCryptOpenKey."""
        key = NCRYPT_KEY_HANDLE(0)
        self._call(
            "NCryptOpenKey",
            prov,
            ctypes.byref(key),
            name,
            legacy_spec,
            flags,
            detail=f"key {name!r}",
        )
        return int(key.value)

    def set_property(self, handle: NCryptHandle, name: str, value: bytes, flags: int = 0) -> None:
        """NCryptSetProperty (an empty value is passed as a NULL buffer of size 0)."""
        buf = (ctypes.c_ubyte * len(value)).from_buffer_copy(value) if value else None
        self._call("NCryptSetProperty", handle, name, buf, len(value), flags, detail=name)

    def get_property(
        self, handle: NCryptHandle, name: str, flags: int = 0, *, size: int | None = None
    ) -> bytes:
        """NCryptGetProperty: probe the size with a NULL buffer unless ``size`` is given."""
        fn = self._fn("NCryptGetProperty")
        result = DWORD(0)
        if size is None:
            self._check(fn(handle, name, None, 0, ctypes.byref(result), flags), name)
            size = int(result.value)
        for _attempt in range(2):  # the value may grow between the probe and the read
            if size == 0:
                return b""
            buf = (ctypes.c_ubyte * size)()
            status = int(fn(handle, name, buf, size, ctypes.byref(result), flags)) & 0xFFFFFFFF
            if status == NTE_BUFFER_TOO_SMALL and result.value > size:
                size = int(result.value)
                continue
            self._check(status, name)
            got = int(result.value)
            if got > size:
                raise NCryptError(
                    "NCryptGetProperty", NTE_BUFFER_TOO_SMALL, f"{name}: {got} > buffer {size}"
                )
            return bytes(buf[:got])
        raise NCryptError("NCryptGetProperty", NTE_BUFFER_TOO_SMALL, f"{name}: size kept growing")

    @staticmethod
    def _check(status: int, name: str) -> None:
        status = int(status) & 0xFFFFFFFF
        if status:
            raise NCryptError("NCryptGetProperty", status, name)

    def get_certificates(self, handle: NCryptHandle, name: str, flags: int = 0) -> list[bytes]:
        """Read an HCERTSTORE-valued property, copy out each certificate's DER, close the store."""
        raw = self.get_property(handle, name, flags, size=ctypes.sizeof(HCERTSTORE))
        store = unpack_handle(raw) if raw else 0
        if not store:
            return []
        enum = self._fn("CertEnumCertificatesInStore")
        certs: list[bytes] = []
        ctx: Any = None
        try:
            ctx = enum(store, None)
            while ctx:
                cert = ctx.contents
                certs.append(ctypes.string_at(cert.pbCertEncoded, cert.cbCertEncoded))
                ctx = enum(store, ctx)  # frees the previous context
            err = _last_error()
            if err not in (None, 0, CRYPT_E_NOT_FOUND):
                raise NCryptError("CertEnumCertificatesInStore", err, name)
        finally:
            if ctx:
                self._fn("CertFreeCertificateContext")(ctx)
            self._fn("CertCloseStore")(store, 0)
        return certs

    def finalize_key(self, key: KeyHandle, flags: int = 0) -> None:
        """NCryptFinalizeKey."""
        self._call("NCryptFinalizeKey", key, flags)

    def delete_key(self, key: KeyHandle, flags: int = 0) -> None:
        """NCryptDeleteKey (frees ``key`` when it succeeds; on failure the caller frees it)."""
        self._call("NCryptDeleteKey", key, flags)

    def free_object(self, handle: NCryptHandle) -> None:
        """NCryptFreeObject."""
        self._call("NCryptFreeObject", handle)

    def _win32(self, name: str, *args: Any) -> None:
        """Call a WINBOOL function; FALSE raises NCryptError with HRESULT_FROM_WIN32(GetLastError)."""
        if not self._fn(name)(*args):
            err = _last_error() or 0
            raise NCryptError(name, (_HRESULT_FROM_WIN32 | (err & 0xFFFF)) if err else 0x80004005)

    def process_token(self) -> ProcessToken:
        """OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY), then GetTokenInformation for
        TokenElevation (a DWORD) and TokenUser (size query, then the SID it points at)."""
        token = HANDLE(0)
        self._win32("OpenProcessToken", self._fn("GetCurrentProcess")(), TOKEN_QUERY,
                    ctypes.byref(token))
        try:
            elevation = TOKEN_ELEVATION()
            size = DWORD(0)
            self._win32("GetTokenInformation", token, TokenElevation, ctypes.byref(elevation),
                        ctypes.sizeof(elevation), ctypes.byref(size))
            info = self._fn("GetTokenInformation")
            if info(token, TokenUser, None, 0, ctypes.byref(size)):
                raise NCryptError("GetTokenInformation", 0x80004005,
                                  "TokenUser size query succeeded without a buffer")
            err = _last_error()
            if err not in (None, ERROR_INSUFFICIENT_BUFFER):
                raise NCryptError("GetTokenInformation", _HRESULT_FROM_WIN32 | (err & 0xFFFF),
                                  "TokenUser size query")
            if size.value > 4096 or size.value < ctypes.sizeof(TOKEN_USER):
                raise NCryptError("GetTokenInformation", 0x80004005,
                                  f"TokenUser of {size.value} bytes")
            buf = (ctypes.c_ubyte * size.value)()
            self._win32("GetTokenInformation", token, TokenUser, buf, size.value,
                        ctypes.byref(size))
            sid_ptr = TOKEN_USER.from_buffer(buf).User.Sid
            head = ctypes.string_at(sid_ptr, 8)
            sid = ctypes.string_at(sid_ptr, 8 + 4 * min(head[1], 15))
        finally:
            self._fn("CloseHandle")(token)
        return ProcessToken(bool(elevation.TokenIsElevated), sid_to_string(sid))


if TYPE_CHECKING:
    _conforms: NCryptProvider = WindowsNCrypt()
