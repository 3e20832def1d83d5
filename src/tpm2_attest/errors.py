"""The device-side error type: ``TpmError`` with a stable ``ErrorCode`` and decoded codes."""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from .tpm2.rc import RC_FMT1, TPM_RC, decode


class ErrorCode(StrEnum):
    """Stable, documented error categories; code against these, not messages."""

    TPM_NOT_FOUND = "TPM_NOT_FOUND"
    """No TPM at the chosen TCTI (no device, service not running, nothing listening)."""
    TPM_ERROR = "TPM_ERROR"
    """The TPM answered with an error response code (see ``tpm_rc``)."""
    REQUIRES_ELEVATION = "REQUIRES_ELEVATION"
    """The operation needs an administrator / SYSTEM (Windows) or more permissions (Linux)."""
    KEY_NOT_FOUND = "KEY_NOT_FOUND"
    KEY_EXISTS = "KEY_EXISTS"
    BAD_BLOB = "BAD_BLOB"
    """An AK blob, challenge or other evidence input is malformed."""
    UNSUPPORTED = "UNSUPPORTED"
    LOCKOUT = "LOCKOUT"
    """The TPM is in dictionary-attack lockout."""
    RETRY_EXHAUSTED = "RETRY_EXHAUSTED"
    """The TPM kept answering RETRY/YIELDED/TESTING past the retry budget."""
    TRANSPORT = "TRANSPORT"
    """The bytes could not be exchanged (I/O error, timeout, malformed response framing)."""
    BAD_RESPONSE = "BAD_RESPONSE"
    """The TPM's response could not be parsed."""
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    """A caller-supplied argument is out of range (PCR index, bank name, sizes)."""


E_ACCESSDENIED: Final = 0x80070005
TPM_E_COMMAND_BLOCKED: Final = 0x80280400
NTE_DEVICE_NOT_READY: Final = 0x80090030

# Names from winerror.h (mingw-w64) and the Windows SDK; checked by tests against the header
# where the header carries them.
HRESULT_NAMES: Final[dict[int, str]] = {
    0x00000000: "S_OK",
    0x80004001: "E_NOTIMPL",
    0x80004005: "E_FAIL",
    0x80070005: "E_ACCESSDENIED",
    0x80070057: "E_INVALIDARG",
    0x8007000E: "E_OUTOFMEMORY",
    0x80070002: "HRESULT_FROM_WIN32(ERROR_FILE_NOT_FOUND)",
    0x8007007A: "HRESULT_FROM_WIN32(ERROR_INSUFFICIENT_BUFFER)",
    0x80090001: "NTE_BAD_UID",
    0x80090002: "NTE_BAD_HASH",
    0x80090003: "NTE_BAD_KEY",
    0x80090004: "NTE_BAD_LEN",
    0x80090005: "NTE_BAD_DATA",
    0x80090006: "NTE_BAD_SIGNATURE",
    0x80090008: "NTE_BAD_ALGID",
    0x80090009: "NTE_BAD_FLAGS",
    0x8009000A: "NTE_BAD_TYPE",
    0x8009000B: "NTE_BAD_KEY_STATE",
    0x8009000D: "NTE_NO_KEY",
    0x8009000E: "NTE_NO_MEMORY",
    0x8009000F: "NTE_EXISTS",
    0x80090010: "NTE_PERM",
    0x80090011: "NTE_NOT_FOUND",
    0x80090016: "NTE_BAD_KEYSET",
    0x80090020: "NTE_FAIL",
    0x80090026: "NTE_INVALID_HANDLE",
    0x80090027: "NTE_INVALID_PARAMETER",
    0x80090028: "NTE_BUFFER_TOO_SMALL",
    0x80090029: "NTE_NOT_SUPPORTED",
    0x8009002A: "NTE_NO_MORE_ITEMS",
    0x8009002D: "NTE_INTERNAL_ERROR",
    0x80090030: "NTE_DEVICE_NOT_READY",
    0x80090034: "NTE_ENCRYPTION_FAILURE",
    0x80090035: "NTE_DEVICE_NOT_FOUND",
    0x80284001: "TBS_E_INTERNAL_ERROR",
    0x80284002: "TBS_E_BAD_PARAMETER",
    0x80284003: "TBS_E_INVALID_OUTPUT_POINTER",
    0x80284004: "TBS_E_INVALID_CONTEXT",
    0x80284005: "TBS_E_INSUFFICIENT_BUFFER",
    0x80284006: "TBS_E_IOERROR",
    0x80284007: "TBS_E_INVALID_CONTEXT_PARAM",
    0x80284008: "TBS_E_SERVICE_NOT_RUNNING",
    0x80284009: "TBS_E_TOO_MANY_TBS_CONTEXTS",
    0x8028400A: "TBS_E_TOO_MANY_RESOURCES",
    0x8028400B: "TBS_E_SERVICE_START_PENDING",
    0x8028400C: "TBS_E_PPI_NOT_SUPPORTED",
    0x8028400D: "TBS_E_COMMAND_CANCELED",
    0x8028400E: "TBS_E_BUFFER_TOO_LARGE",
    0x8028400F: "TBS_E_TPM_NOT_FOUND",
    0x80284010: "TBS_E_SERVICE_DISABLED",
    0x80284011: "TBS_E_NO_EVENT_LOG",
    0x80284012: "TBS_E_ACCESS_DENIED",
    # Microsoft's "TBS Return Codes" page and the Windows SDK winerror.h (not mingw-w64's):
    0x80284013: "TBS_E_PROVISIONING_NOT_ALLOWED",
    0x80284014: "TBS_E_PPI_FUNCTION_UNSUPPORTED",
    0x80284015: "TBS_E_OWNERAUTH_NOT_FOUND",
    # The TBS function pages (Tbsi_Context_Create, Tbsi_Get_TCG_Log) name 0x80284016
    # TBS_E_DEACTIVATED; the SDK's winerror.h calls it TBS_E_PROVISIONING_INCOMPLETE.
    0x80284016: "TBS_E_DEACTIVATED",
    0x80280400: "TPM_E_COMMAND_BLOCKED",
    # Not in mingw-w64's winerror.h; Windows SDK values (as in go-attestation's table):
    # 0x80290400 is the mask, the codes start at 0x80290401.
    0x80290400: "TPM_E_PCP_ERROR_MASK",
    0x80290401: "TPM_E_PCP_DEVICE_NOT_READY",
    0x80290402: "TPM_E_PCP_INVALID_HANDLE",
    0x80290403: "TPM_E_PCP_INVALID_PARAMETER",
    0x80290404: "TPM_E_PCP_FLAG_NOT_SUPPORTED",
    0x80290405: "TPM_E_PCP_NOT_SUPPORTED",
    0x80290406: "TPM_E_PCP_BUFFER_TOO_SMALL",
    0x80290407: "TPM_E_PCP_INTERNAL_ERROR",
    0x80290408: "TPM_E_PCP_AUTHENTICATION_FAILED",
    0x80290409: "TPM_E_PCP_AUTHENTICATION_IGNORED",
    0x8029040A: "TPM_E_PCP_POLICY_NOT_FOUND",
    0x8029040B: "TPM_E_PCP_PROFILE_NOT_FOUND",
    0x8029040C: "TPM_E_PCP_VALIDATION_FAILED",
}

# HRESULTs that mean "you are not privileged enough for this".
ELEVATION_HRESULTS: Final = frozenset(
    {E_ACCESSDENIED, TPM_E_COMMAND_BLOCKED, NTE_DEVICE_NOT_READY, 0x80090010, 0x80284012}
)


def hresult_name(hr: int) -> str:
    """Name an HRESULT from TBS, NCrypt or a TPM response wrapped by Windows (0x8028xxxx)."""
    hr &= 0xFFFFFFFF
    if hr in HRESULT_NAMES:
        return HRESULT_NAMES[hr]
    if hr & 0xFFFF0000 == 0x80280000:
        # TBS wraps TPM response codes as 0x80280000 | rc.
        return "TPM_E(" + decode(hr & 0xFFFF).name + ")"
    if hr & 0xFFFF0000 == 0x80290000:
        return f"TPMAPI/TBSIMP error 0x{hr:08x}"
    if hr & 0xFFFF0000 == 0x80070000:
        return f"HRESULT_FROM_WIN32({hr & 0xFFFF})"
    return f"0x{hr:08x}"


def _code_for_rc(rc: int) -> ErrorCode:
    base = decode(rc).base
    if base == TPM_RC.LOCKOUT:
        return ErrorCode.LOCKOUT
    if rc & RC_FMT1 and base == TPM_RC.HANDLE:
        return ErrorCode.KEY_NOT_FOUND
    if base == TPM_RC.NV_DEFINED:
        return ErrorCode.KEY_EXISTS
    return ErrorCode.TPM_ERROR


class TpmError(Exception):
    """Any device-side failure: ``code`` says what kind, ``tpm_rc``/``hresult`` say exactly."""

    def __init__(
        self,
        message: str | None = None,
        *,
        code: ErrorCode | str | None = None,
        tpm_rc: int | None = None,
        hresult: int | None = None,
        command: str | None = None,
        hint: str | None = None,
    ) -> None:
        if code is None:
            code = _code_for_rc(tpm_rc) if tpm_rc is not None else ErrorCode.TPM_ERROR
        self.code = ErrorCode(code)
        self.tpm_rc = tpm_rc
        self.hresult = hresult
        self.command = command
        self.hint = hint
        self.message = message or ""
        super().__init__(self._render())

    @property
    def rc_name(self) -> str | None:
        """Symbolic name of ``tpm_rc`` (e.g. 'TPM_RC_HANDLE')."""
        return decode(self.tpm_rc).name if self.tpm_rc is not None else None

    @property
    def hresult_name(self) -> str | None:
        """Symbolic name of ``hresult`` (e.g. 'TPM_E_COMMAND_BLOCKED')."""
        return hresult_name(self.hresult) if self.hresult is not None else None

    def _render(self) -> str:
        parts: list[str] = []
        if self.tpm_rc is not None:
            parts.append(str(decode(self.tpm_rc)))
        if self.hresult is not None:
            parts.append(f"{hresult_name(self.hresult)} (0x{self.hresult & 0xFFFFFFFF:08x})")
        detail = ", ".join(parts)
        head = f"{self.command}: " if self.command else ""
        body = self.message
        if detail:
            body = f"{detail}: {body}" if body else detail
        if not body:
            body = self.code.value
        return f"{head}{body}"

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready description (used by the CLI's --json output)."""
        return {
            "code": self.code.value,
            "message": str(self),
            "command": self.command,
            "tpm_rc": self.tpm_rc,
            "tpm_rc_name": self.rc_name,
            "hresult": self.hresult,
            "hresult_name": self.hresult_name,
            "hint": self.hint,
        }
