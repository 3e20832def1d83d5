"""Windows TPM Base Services (tbs.dll) through ctypes: constants, layouts, prototypes, a transport.

Thin and declarative: names and values follow the Windows SDK ``tbs.h`` / ``winerror.h``
(checked against the mingw-w64 headers by tests/test_tbs_binding.py). ``tbs.dll`` is loaded
on first use, so this module imports anywhere; tests can bind a stand-in library with
:func:`use_library`.

A command TBS blocks for a standard user is not a TBS error: it comes back as a TPM
*response* whose rc is ``TPM_E_COMMAND_BLOCKED`` (0x80280400); the commands layer maps it.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from collections.abc import Callable
from ctypes import POINTER, Structure, Union, c_ubyte, c_uint32, c_void_p
from dataclasses import dataclass
from typing import Any, Final

from ..errors import E_ACCESSDENIED, ErrorCode, TpmError, hresult_name
from ..errors import (
    TPM_E_COMMAND_BLOCKED as TPM_E_COMMAND_BLOCKED,  # a response rc, not a TBS_RESULT
)
from .base import (
    DEFAULT_DEVICE_TIMEOUT,
    MAX_RESPONSE_SIZE,
    Transport,
    check_response,
    check_timeout,
)

# -- constants (tbs.h) ------------------------------------------------------------------------

TBS_SUCCESS: Final = 0
TBS_CONTEXT_VERSION_ONE: Final = 1
TBS_CONTEXT_VERSION_TWO: Final = 2

TBS_COMMAND_LOCALITY_ZERO: Final = 0
TBS_COMMAND_LOCALITY_ONE: Final = 1
TBS_COMMAND_LOCALITY_TWO: Final = 2
TBS_COMMAND_LOCALITY_THREE: Final = 3
TBS_COMMAND_LOCALITY_FOUR: Final = 4

TBS_COMMAND_PRIORITY_LOW: Final = 100
TBS_COMMAND_PRIORITY_NORMAL: Final = 200
TBS_COMMAND_PRIORITY_HIGH: Final = 300
TBS_COMMAND_PRIORITY_SYSTEM: Final = 400
TBS_COMMAND_PRIORITY_MAX: Final = 0x80000000

TBS_IN_OUT_BUF_SIZE_MAX: Final = 256 * 1024

TPM_VERSION_UNKNOWN: Final = 0
TPM_VERSION_12: Final = 1
TPM_VERSION_20: Final = 2

TPM_IFTYPE_UNKNOWN: Final = 0
TPM_IFTYPE_1: Final = 1
TPM_IFTYPE_TRUSTZONE: Final = 2
TPM_IFTYPE_HW: Final = 3
TPM_IFTYPE_EMULATOR: Final = 4
TPM_IFTYPE_SPB: Final = 5

# -- TBS results (winerror.h) -----------------------------------------------------------------

TBS_E_INTERNAL_ERROR: Final = 0x80284001
TBS_E_BAD_PARAMETER: Final = 0x80284002
TBS_E_INVALID_OUTPUT_POINTER: Final = 0x80284003
TBS_E_INVALID_CONTEXT: Final = 0x80284004
TBS_E_INSUFFICIENT_BUFFER: Final = 0x80284005
TBS_E_IOERROR: Final = 0x80284006
TBS_E_INVALID_CONTEXT_PARAM: Final = 0x80284007
TBS_E_SERVICE_NOT_RUNNING: Final = 0x80284008
TBS_E_TOO_MANY_TBS_CONTEXTS: Final = 0x80284009
TBS_E_TOO_MANY_RESOURCES: Final = 0x8028400A
TBS_E_SERVICE_START_PENDING: Final = 0x8028400B
TBS_E_BUFFER_TOO_LARGE: Final = 0x8028400E
TBS_E_TPM_NOT_FOUND: Final = 0x8028400F
TBS_E_SERVICE_DISABLED: Final = 0x80284010
TBS_E_NO_EVENT_LOG: Final = 0x80284011
TBS_E_ACCESS_DENIED: Final = 0x80284012
TBS_E_DEACTIVATED: Final = 0x80284016

NOT_FOUND_RESULTS: Final = frozenset({TBS_E_TPM_NOT_FOUND, TBS_E_SERVICE_NOT_RUNNING,
                                      TBS_E_SERVICE_DISABLED, TBS_E_DEACTIVATED})
DENIED_RESULTS: Final = frozenset({TBS_E_ACCESS_DENIED, E_ACCESSDENIED})

# -- types and layouts ------------------------------------------------------------------------

TBS_RESULT = c_uint32
TBS_HCONTEXT = c_void_p
TBS_COMMAND_LOCALITY = c_uint32
TBS_COMMAND_PRIORITY = c_uint32
PBYTE = POINTER(c_ubyte)
PUINT32 = POINTER(c_uint32)


class TBS_CONTEXT_PARAMS(Structure):
    """Version-1 context parameters (TPM 1.2 only)."""

    _fields_ = [("version", c_uint32)]


class _TBS_CONTEXT_PARAMS2_BITS(Structure):
    _fields_ = [("requestRaw", c_uint32, 1), ("includeTpm12", c_uint32, 1),
                ("includeTpm20", c_uint32, 1)]


class _TBS_CONTEXT_PARAMS2_UNION(Union):
    _anonymous_ = ("bits",)
    _fields_ = [("bits", _TBS_CONTEXT_PARAMS2_BITS), ("asUINT32", c_uint32)]


class TBS_CONTEXT_PARAMS2(Structure):
    """Version-2 context parameters: ``version`` = 2 and the ``includeTpm20`` bit for TPM 2.0."""

    _anonymous_ = ("u",)
    _fields_ = [("version", c_uint32), ("u", _TBS_CONTEXT_PARAMS2_UNION)]


class TPM_DEVICE_INFO(Structure):
    """Tbsi_GetDeviceInfo's output."""

    _fields_ = [("structVersion", c_uint32), ("tpmVersion", c_uint32),
                ("tpmInterfaceType", c_uint32), ("tpmImpRevision", c_uint32)]


PCTBS_CONTEXT_PARAMS = POINTER(TBS_CONTEXT_PARAMS)

PROTOTYPES: Final[dict[str, tuple[Any, tuple[Any, ...]]]] = {
    "Tbsi_Context_Create": (TBS_RESULT, (PCTBS_CONTEXT_PARAMS, POINTER(TBS_HCONTEXT))),
    "Tbsip_Context_Close": (TBS_RESULT, (TBS_HCONTEXT,)),
    "Tbsip_Submit_Command": (TBS_RESULT, (TBS_HCONTEXT, TBS_COMMAND_LOCALITY, TBS_COMMAND_PRIORITY,
                                          PBYTE, c_uint32, PBYTE, PUINT32)),
    "Tbsip_Cancel_Commands": (TBS_RESULT, (TBS_HCONTEXT,)),
    "Tbsi_GetDeviceInfo": (TBS_RESULT, (c_uint32, c_void_p)),
    "Tbsi_Get_TCG_Log": (TBS_RESULT, (TBS_HCONTEXT, PBYTE, PUINT32)),
}
"""name -> (restype, argtypes), in the order and types of tbs.h (WINAPI = stdcall on x86)."""

# -- loading ----------------------------------------------------------------------------------


class TbsApi:
    """The bound tbs.dll functions (a missing export is None: older Windows)."""

    def __init__(self, lib: Any) -> None:
        self.lib = lib
        self.functions: dict[str, Callable[..., int] | None] = {}
        for name, (restype, argtypes) in PROTOTYPES.items():
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.restype = restype
                fn.argtypes = argtypes
            self.functions[name] = fn

    def __getattr__(self, name: str) -> Callable[..., int]:
        try:
            fn = self.__dict__["functions"][name]
        except KeyError:
            raise AttributeError(name) from None
        if fn is None:
            raise TpmError(f"tbs.dll has no {name} (Windows too old)", code=ErrorCode.UNSUPPORTED)
        return fn  # type: ignore[no-any-return]


_api: TbsApi | None = None
_api_lock = threading.Lock()


def _load() -> TbsApi:
    global _api
    with _api_lock:
        if _api is None:
            if sys.platform == "win32":  # pragma: no cover - Windows only
                try:
                    lib = ctypes.WinDLL("tbs.dll")
                except OSError as exc:
                    raise TpmError(f"cannot load tbs.dll: {exc}",
                                   code=ErrorCode.TPM_NOT_FOUND) from None
                _api = TbsApi(lib)
            else:
                raise TpmError("TPM Base Services (tbs) exist only on Windows",
                               code=ErrorCode.TPM_NOT_FOUND)
        return _api


def use_library(lib: Any | None) -> TbsApi | None:
    """Bind ``lib`` (an object with tbs.dll's exports, e.g. ctypes callbacks) instead of
    tbs.dll; None restores lazy loading. Returns the previously bound API. For tests."""
    global _api
    with _api_lock:
        previous, _api = _api, (TbsApi(lib) if lib is not None else None)
    return previous


def tbs_error(function: str, result: int) -> TpmError:
    """A TBS_RESULT as TpmError: not found / elevation / transport, with the hresult."""
    result &= 0xFFFFFFFF
    if result in NOT_FOUND_RESULTS:
        code = ErrorCode.TPM_NOT_FOUND
    elif result in DENIED_RESULTS:
        code = ErrorCode.REQUIRES_ELEVATION
    else:
        code = ErrorCode.TRANSPORT
    hint = "run as administrator" if code is ErrorCode.REQUIRES_ELEVATION else None
    return TpmError(f"{function} failed ({hresult_name(result)})", code=code, hresult=result,
                    hint=hint)


def _check(function: str, result: int) -> None:
    if result != TBS_SUCCESS:
        raise tbs_error(function, result)


def create_context(api: TbsApi | None = None) -> int:
    """Tbsi_Context_Create for TPM 2.0 (TBS_CONTEXT_PARAMS2, version 2, includeTpm20)."""
    api = api or _load()
    params = TBS_CONTEXT_PARAMS2(version=TBS_CONTEXT_VERSION_TWO)
    params.includeTpm20 = 1
    handle = TBS_HCONTEXT()
    result = api.Tbsi_Context_Create(ctypes.cast(ctypes.pointer(params), PCTBS_CONTEXT_PARAMS),
                                     ctypes.byref(handle))
    if result & 0xFFFFFFFF == TBS_E_TPM_NOT_FOUND and _tpm_version(api) == TPM_VERSION_12:
        # A TPM 2.0 context on a TPM 1.2 machine is "not found": say what is there instead.
        raise TpmError("this machine has a TPM 1.2; tpm2-attest needs a TPM 2.0 (Windows "
                       "Tbsi_Context_Create: TBS_E_TPM_NOT_FOUND for a TPM 2.0 context, "
                       "Tbsi_GetDeviceInfo: TPM_VERSION_12)", code=ErrorCode.UNSUPPORTED,
                       hresult=TBS_E_TPM_NOT_FOUND,
                       hint="Windows exposes a TPM 1.2 here; a TPM 2.0 (or a firmware update "
                            "that switches the TPM to 2.0, where the maker offers one) is needed")
    _check("Tbsi_Context_Create", result)
    if not handle.value:
        raise TpmError("Tbsi_Context_Create returned a NULL context", code=ErrorCode.TRANSPORT)
    return int(handle.value)


# -- the transport ----------------------------------------------------------------------------


class TbsTransport(Transport):
    """Raw TPM 2.0 commands through a TBS context (locality 0, normal priority).

    TBS enforces its own command timeouts; ``timeout`` is informational here. With
    ``context`` the transport borrows an existing TBS context (e.g. the PCP provider's
    platform handle) and never closes it.
    """

    kind = "tbs"

    def __init__(self, *, timeout: float | None = None, context: int | None = None) -> None:
        super().__init__("tbs", check_timeout(timeout, DEFAULT_DEVICE_TIMEOUT))
        self._api = _load()
        self._owned = context is None
        self.context: int = create_context(self._api) if context is None else int(context)
        self._out = (c_ubyte * MAX_RESPONSE_SIZE)()

    def _exchange(self, command: bytes) -> bytes:
        inbuf = (c_ubyte * len(command)).from_buffer_copy(command)
        size = c_uint32(len(self._out))
        _check("Tbsip_Submit_Command",
               self._api.Tbsip_Submit_Command(c_void_p(self.context), TBS_COMMAND_LOCALITY_ZERO,
                                              TBS_COMMAND_PRIORITY_NORMAL, inbuf, len(command),
                                              self._out, ctypes.byref(size)))
        if size.value > len(self._out):
            raise TpmError(f"Tbsip_Submit_Command reported {size.value} bytes for a "
                           f"{len(self._out)}-byte buffer", code=ErrorCode.TRANSPORT)
        return check_response(ctypes.string_at(self._out, size.value), self.tcti)

    def _close(self) -> None:
        if self._owned:
            result = self._api.Tbsip_Context_Close(c_void_p(self.context))
            if result != TBS_SUCCESS:
                raise tbs_error("Tbsip_Context_Close", result)


def channel_for_context(context: int) -> TbsTransport:
    """A transport over a TBS context someone else owns (the PCP's PCP_PLATFORMHANDLE)."""
    return TbsTransport(context=context)


# -- device information and the event log -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class TbsDeviceInfo:
    """TPM_DEVICE_INFO: ``tpm_version`` is TPM_VERSION_12 or TPM_VERSION_20."""

    struct_version: int
    tpm_version: int
    interface_type: int
    imp_revision: int

    @property
    def tpm20_present(self) -> bool:
        """True when the TPM behind TBS is a TPM 2.0."""
        return self.tpm_version == TPM_VERSION_20


def _tpm_version(api: TbsApi) -> int | None:
    """Tbsi_GetDeviceInfo's tpmVersion, None when TBS cannot say (never raises)."""
    try:
        info = TPM_DEVICE_INFO()
        if api.Tbsi_GetDeviceInfo(ctypes.sizeof(info), ctypes.byref(info)) != TBS_SUCCESS:
            return None
        return int(info.tpmVersion)
    except (TpmError, OSError):
        return None


def tbs_device_info() -> TbsDeviceInfo:
    """Tbsi_GetDeviceInfo: which TPM (if any) TBS sees; TPM_NOT_FOUND when there is none."""
    api = _load()
    info = TPM_DEVICE_INFO()
    _check("Tbsi_GetDeviceInfo", api.Tbsi_GetDeviceInfo(ctypes.sizeof(info), ctypes.byref(info)))
    return TbsDeviceInfo(info.structVersion, info.tpmVersion, info.tpmInterfaceType,
                         info.tpmImpRevision)


def get_tcg_log(context: int | None = None) -> bytes:
    """The firmware's TCG event log (Tbsi_Get_TCG_Log: size probe, then the data).

    Raises TpmError(TPM_NOT_FOUND) when Windows has no log: TBS_E_NO_EVENT_LOG, or
    TBS_E_INTERNAL_ERROR (see :func:`tcg_log_error`).
    """
    api = _load()
    owned = context is None
    ctx = c_void_p(create_context(api) if context is None else context)
    try:
        for _attempt in range(3):
            size = c_uint32(0)
            result = api.Tbsi_Get_TCG_Log(ctx, None, ctypes.byref(size))
            if result not in (TBS_SUCCESS, TBS_E_INSUFFICIENT_BUFFER):
                raise tcg_log_error(result)
            if size.value == 0:
                return b""
            want = size.value
            buf = (c_ubyte * want)()
            size = c_uint32(want)
            result = api.Tbsi_Get_TCG_Log(ctx, buf, ctypes.byref(size))
            if result == TBS_E_INSUFFICIENT_BUFFER:
                continue  # the log grew between the two calls
            if result != TBS_SUCCESS:
                raise tcg_log_error(result)
            return ctypes.string_at(buf, min(size.value, want))
        raise tbs_error("Tbsi_Get_TCG_Log", TBS_E_INSUFFICIENT_BUFFER)
    finally:
        if owned:
            api.Tbsip_Context_Close(ctx)


NO_FIRMWARE_LOG_HINT: Final = (
    "Windows got no TCG event log from the firmware: the System event log may hold TBS event "
    "16385 with error 0x80070032; a firmware (BIOS/UEFI) update from the platform maker "
    "sometimes fixes it")
"""Microsoft's note on Tbsi_Get_TCG_Log answering TBS_E_INTERNAL_ERROR."""


def tcg_log_error(result: int) -> TpmError:
    """The TpmError for a failed Tbsi_Get_TCG_Log.

    TBS_E_NO_EVENT_LOG and TBS_E_INTERNAL_ERROR are "no event log" (TPM_NOT_FOUND, with the
    hresult): Microsoft documents that TBS_E_INTERNAL_ERROR from this function may mean the
    platform gave Windows no TCG log (System event 16385, error 0x80070032). Anything else
    is :func:`tbs_error`."""
    result &= 0xFFFFFFFF
    if result == TBS_E_NO_EVENT_LOG:
        return TpmError("Windows has no TCG event log (TBS_E_NO_EVENT_LOG)",
                        code=ErrorCode.TPM_NOT_FOUND, hresult=result)
    if result == TBS_E_INTERNAL_ERROR:
        return TpmError("Windows has no TCG event log: Tbsi_Get_TCG_Log answered "
                        "TBS_E_INTERNAL_ERROR, which Microsoft documents for a platform that "
                        "provides no log", code=ErrorCode.TPM_NOT_FOUND, hresult=result,
                        hint=NO_FIRMWARE_LOG_HINT)
    return tbs_error("Tbsi_Get_TCG_Log", result)
