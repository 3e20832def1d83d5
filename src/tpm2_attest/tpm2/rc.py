"""TPM 2.0 response-code decoding (Part 2, 6.6): format-zero, format-one, warnings, vendor."""

from __future__ import annotations

from typing import Final

from .._frozen import frozen

RC_VER1: Final = 0x100
RC_FMT1: Final = 0x080
RC_WARN: Final = 0x900
RC_SUCCESS: Final = 0x000

# Format-zero, version-1 errors (TPM_RC_VER1 + n).
_VER1: Final[dict[int, str]] = {
    0x000: "TPM_RC_INITIALIZE",
    0x001: "TPM_RC_FAILURE",
    0x003: "TPM_RC_SEQUENCE",
    0x00B: "TPM_RC_PRIVATE",
    0x019: "TPM_RC_HMAC",
    0x020: "TPM_RC_DISABLED",
    0x021: "TPM_RC_EXCLUSIVE",
    0x024: "TPM_RC_AUTH_TYPE",
    0x025: "TPM_RC_AUTH_MISSING",
    0x026: "TPM_RC_POLICY",
    0x027: "TPM_RC_PCR",
    0x028: "TPM_RC_PCR_CHANGED",
    0x02D: "TPM_RC_UPGRADE",
    0x02E: "TPM_RC_TOO_MANY_CONTEXTS",
    0x02F: "TPM_RC_AUTH_UNAVAILABLE",
    0x030: "TPM_RC_REBOOT",
    0x031: "TPM_RC_UNBALANCED",
    0x042: "TPM_RC_COMMAND_SIZE",
    0x043: "TPM_RC_COMMAND_CODE",
    0x044: "TPM_RC_AUTHSIZE",
    0x045: "TPM_RC_AUTH_CONTEXT",
    0x046: "TPM_RC_NV_RANGE",
    0x047: "TPM_RC_NV_SIZE",
    0x048: "TPM_RC_NV_LOCKED",
    0x049: "TPM_RC_NV_AUTHORIZATION",
    0x04A: "TPM_RC_NV_UNINITIALIZED",
    0x04B: "TPM_RC_NV_SPACE",
    0x04C: "TPM_RC_NV_DEFINED",
    0x050: "TPM_RC_BAD_CONTEXT",
    0x051: "TPM_RC_CPHASH",
    0x052: "TPM_RC_PARENT",
    0x053: "TPM_RC_NEEDS_TEST",
    0x054: "TPM_RC_NO_RESULT",
    0x055: "TPM_RC_SENSITIVE",
    0x07F: "TPM_RC_MAX_FM0",
}

# Format-one errors (TPM_RC_FMT1 + n), n in 0..0x3f.
_FMT1: Final[dict[int, str]] = {
    0x001: "TPM_RC_ASYMMETRIC",
    0x002: "TPM_RC_ATTRIBUTES",
    0x003: "TPM_RC_HASH",
    0x004: "TPM_RC_VALUE",
    0x005: "TPM_RC_HIERARCHY",
    0x007: "TPM_RC_KEY_SIZE",
    0x008: "TPM_RC_MGF",
    0x009: "TPM_RC_MODE",
    0x00A: "TPM_RC_TYPE",
    0x00B: "TPM_RC_HANDLE",
    0x00C: "TPM_RC_KDF",
    0x00D: "TPM_RC_RANGE",
    0x00E: "TPM_RC_AUTH_FAIL",
    0x00F: "TPM_RC_NONCE",
    0x010: "TPM_RC_PP",
    0x012: "TPM_RC_SCHEME",
    0x015: "TPM_RC_SIZE",
    0x016: "TPM_RC_SYMMETRIC",
    0x017: "TPM_RC_TAG",
    0x018: "TPM_RC_SELECTOR",
    0x01A: "TPM_RC_INSUFFICIENT",
    0x01B: "TPM_RC_SIGNATURE",
    0x01C: "TPM_RC_KEY",
    0x01D: "TPM_RC_POLICY_FAIL",
    0x01F: "TPM_RC_INTEGRITY",
    0x020: "TPM_RC_TICKET",
    0x021: "TPM_RC_RESERVED_BITS",
    0x022: "TPM_RC_BAD_AUTH",
    0x023: "TPM_RC_EXPIRED",
    0x024: "TPM_RC_POLICY_CC",
    0x025: "TPM_RC_BINDING",
    0x026: "TPM_RC_CURVE",
    0x027: "TPM_RC_ECC_POINT",
}

# Warnings (TPM_RC_WARN + n).
_WARN: Final[dict[int, str]] = {
    0x001: "TPM_RC_CONTEXT_GAP",
    0x002: "TPM_RC_OBJECT_MEMORY",
    0x003: "TPM_RC_SESSION_MEMORY",
    0x004: "TPM_RC_MEMORY",
    0x005: "TPM_RC_SESSION_HANDLES",
    0x006: "TPM_RC_OBJECT_HANDLES",
    0x007: "TPM_RC_LOCALITY",
    0x008: "TPM_RC_YIELDED",
    0x009: "TPM_RC_CANCELED",
    0x00A: "TPM_RC_TESTING",
    0x010: "TPM_RC_REFERENCE_H0",
    0x011: "TPM_RC_REFERENCE_H1",
    0x012: "TPM_RC_REFERENCE_H2",
    0x013: "TPM_RC_REFERENCE_H3",
    0x014: "TPM_RC_REFERENCE_H4",
    0x015: "TPM_RC_REFERENCE_H5",
    0x016: "TPM_RC_REFERENCE_H6",
    0x018: "TPM_RC_REFERENCE_S0",
    0x019: "TPM_RC_REFERENCE_S1",
    0x01A: "TPM_RC_REFERENCE_S2",
    0x01B: "TPM_RC_REFERENCE_S3",
    0x01C: "TPM_RC_REFERENCE_S4",
    0x01D: "TPM_RC_REFERENCE_S5",
    0x01E: "TPM_RC_REFERENCE_S6",
    0x020: "TPM_RC_NV_RATE",
    0x021: "TPM_RC_LOCKOUT",
    0x022: "TPM_RC_RETRY",
    0x023: "TPM_RC_NV_UNAVAILABLE",
    0x07F: "TPM_RC_NOT_USED",
}

_BY_NAME: Final[dict[str, int]] = {
    **{v: RC_VER1 + k for k, v in _VER1.items()},
    **{v: RC_FMT1 + k for k, v in _FMT1.items()},
    **{v: RC_WARN + k for k, v in _WARN.items()},
    "TPM_RC_SUCCESS": 0,
    "TPM_RC_BAD_TAG": 0x01E,
}


class TPM_RC:
    """Named response codes (attributes resolve to the base code, e.g. TPM_RC.HANDLE == 0x8b)."""

    SUCCESS: Final = 0x000
    BAD_TAG: Final = 0x01E
    INITIALIZE: Final = 0x100
    FAILURE: Final = 0x101
    SEQUENCE: Final = 0x103
    DISABLED: Final = 0x120
    AUTH_MISSING: Final = 0x125
    POLICY: Final = 0x126
    PCR: Final = 0x127
    PCR_CHANGED: Final = 0x128
    REBOOT: Final = 0x130
    COMMAND_SIZE: Final = 0x142
    COMMAND_CODE: Final = 0x143
    NV_RANGE: Final = 0x146
    NV_SIZE: Final = 0x147
    NV_LOCKED: Final = 0x148
    NV_AUTHORIZATION: Final = 0x149
    NV_UNINITIALIZED: Final = 0x14A
    NV_SPACE: Final = 0x14B
    NV_DEFINED: Final = 0x14C
    NEEDS_TEST: Final = 0x153
    ASYMMETRIC: Final = 0x081
    ATTRIBUTES: Final = 0x082
    HASH: Final = 0x083
    VALUE: Final = 0x084
    HIERARCHY: Final = 0x085
    KEY_SIZE: Final = 0x087
    TYPE: Final = 0x08A
    HANDLE: Final = 0x08B
    KDF: Final = 0x08C
    RANGE: Final = 0x08D
    AUTH_FAIL: Final = 0x08E
    NONCE: Final = 0x08F
    SCHEME: Final = 0x092
    SIZE: Final = 0x095
    SYMMETRIC: Final = 0x096
    TAG: Final = 0x097
    SELECTOR: Final = 0x098
    INSUFFICIENT: Final = 0x09A
    SIGNATURE: Final = 0x09B
    KEY: Final = 0x09C
    POLICY_FAIL: Final = 0x09D
    INTEGRITY: Final = 0x09F
    BAD_AUTH: Final = 0x0A2
    BINDING: Final = 0x0A5
    CURVE: Final = 0x0A6
    ECC_POINT: Final = 0x0A7
    CONTEXT_GAP: Final = 0x901
    OBJECT_MEMORY: Final = 0x902
    SESSION_MEMORY: Final = 0x903
    MEMORY: Final = 0x904
    SESSION_HANDLES: Final = 0x905
    OBJECT_HANDLES: Final = 0x906
    LOCALITY: Final = 0x907
    YIELDED: Final = 0x908
    CANCELED: Final = 0x909
    TESTING: Final = 0x90A
    NV_RATE: Final = 0x920
    LOCKOUT: Final = 0x921
    RETRY: Final = 0x922
    NV_UNAVAILABLE: Final = 0x923


RETRYABLE: Final = frozenset({TPM_RC.RETRY, TPM_RC.YIELDED, TPM_RC.TESTING})


@frozen
class DecodedRc:
    """A response code split into its parts."""

    rc: int
    base: int
    """The code with the parameter/handle/session number stripped (compare with TPM_RC.*)."""
    name: str
    kind: str
    """'success', 'error', 'warning', 'fmt1', 'vendor', 'tpm12' or 'layer'."""
    parameter: int | None = None
    handle: int | None = None
    session: int | None = None
    layer: int = 0

    def __str__(self) -> str:
        s = f"{self.name} (0x{self.rc:x})"
        if self.parameter is not None:
            s += f" on parameter {self.parameter}"
        elif self.handle is not None:
            s += f" on handle {self.handle}"
        elif self.session is not None:
            s += f" on session {self.session}"
        return s


_LAYERS: Final[dict[int, str]] = {
    0x06: "TSS2_FEATURE_RC_LAYER",
    0x07: "TSS2_ESAPI_RC_LAYER",
    0x08: "TSS2_SYS_RC_LAYER",
    0x09: "TSS2_MU_RC_LAYER",
    0x0A: "TSS2_TCTI_RC_LAYER",
    0x0B: "TSS2_RESMGR_RC_LAYER",
    0x0C: "TSS2_RESMGR_TPM_RC_LAYER",
}


def decode(rc: int) -> DecodedRc:
    """Decode a 32-bit TPM response code into name, kind and the handle/parameter/session it names."""
    layer = (rc >> 16) & 0xFF
    low = rc & 0xFFFF
    if rc == 0:
        return DecodedRc(0, 0, "TPM_RC_SUCCESS", "success")
    if rc > 0xFFFF:
        lname = _LAYERS.get(layer, f"layer 0x{layer:02x}")
        inner = decode(low) if low else None
        name = f"{lname}:{inner.name}" if inner else lname
        return DecodedRc(rc, rc, name, "layer", layer=layer)
    if low & RC_FMT1:
        n = low & 0x3F
        base = RC_FMT1 + n
        name = _FMT1.get(n, f"TPM_RC_FMT1_0x{n:02x}")
        num = (low >> 8) & 0x0F
        if low & 0x040:
            return DecodedRc(rc, base, name, "fmt1", parameter=num)
        if num == 0:
            return DecodedRc(rc, base, name, "fmt1")
        if num & 0x8:
            return DecodedRc(rc, base, name, "fmt1", session=num & 0x7)
        return DecodedRc(rc, base, name, "fmt1", handle=num)
    if not low & RC_VER1:
        # TPM 1.2 style code, or TPM_RC_BAD_TAG (0x1e).
        if low == 0x1E:
            return DecodedRc(rc, low, "TPM_RC_BAD_TAG", "error")
        return DecodedRc(rc, low, f"TPM1.2 error 0x{low:x}", "tpm12")
    if low & 0x400:
        return DecodedRc(rc, low, f"vendor error 0x{low & 0x7F:02x}", "vendor")
    n = low & 0x7F
    if low & 0x800:
        return DecodedRc(rc, low, _WARN.get(n, f"TPM_RC_WARN_0x{n:02x}"), "warning")
    return DecodedRc(rc, low, _VER1.get(n, f"TPM_RC_VER1_0x{n:02x}"), "error")


def rc_name(rc: int) -> str:
    """The symbolic name of a response code, e.g. 'TPM_RC_HANDLE'."""
    return decode(rc).name


def rc_value(name: str) -> int:
    """The base code for a TPM_RC_* name (inverse of rc_name for base codes)."""
    return _BY_NAME[name]
