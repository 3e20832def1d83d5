"""Where firmware TPMs keep their EK certificates: Intel PTT and AMD fTPM serve them online.

The URLs are the ones tpm2-tools' ``tpm2_getekcertificate`` and go-attestation derive:

* Intel (``INTC``): ``https://ekop.intel.com/ekcertservice/`` + the URL-safe base64 (with
  ``=`` padding) of SHA-256(modulus || 0x01 0x00 0x01) for an RSA EK, SHA-256(x || y) for an
  ECC EK, percent-escaped as a query value (so ``=`` becomes ``%3D``). Only the default
  RSA exponent has a URL (tpm2-tools refuses others).
* AMD (``AMD``): ``https://ftpm.amd.com/pki/aia/`` + the first 16 bytes, in lowercase hex,
  of SHA-256(00 00 22 22 || exponent as u32 || modulus) for RSA, SHA-256(00 00 44 44 || x || y)
  for ECC.

The modulus and coordinates are hashed as the TPM returns them in the public area (what
tpm2-tools hashes); for a `cryptography` key, at the key's full width (a 2048-bit modulus
is 256 bytes, a P-256 coordinate 32). go-attestation hashes ``big.Int.Bytes()``, which
drops leading zero bytes: the same bytes for every well-formed RSA modulus, and for the
255 in 256 ECC coordinates whose first byte is not zero.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Final, Protocol
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..tpm2.constants import TPM_ALG
from ..tpm2.keys import parse_public
from ..tpm2.marshal import ParseError
from ..tpm2.structures import TPMS_ECC_POINT, TPMS_RSA_PARMS, TPMT_PUBLIC

__all__ = [
    "AMD_EK_SERVICE",
    "INTEL_EK_SERVICE",
    "VENDOR_AMD",
    "VENDOR_INTEL",
    "ek_certificate_url",
]

INTEL_EK_SERVICE: Final = "https://ekop.intel.com/ekcertservice/"
AMD_EK_SERVICE: Final = "https://ftpm.amd.com/pki/aia/"
VENDOR_INTEL: Final = 0x494E5443
"""TPM_PT_MANUFACTURER of Intel: "INTC"."""
VENDOR_AMD: Final = 0x414D4400
"""TPM_PT_MANUFACTURER of AMD: "AMD" and a NUL."""
_DEFAULT_EXPONENT: Final = 65537


class _HasPublic(Protocol):
    """An ``EkInfo`` or ``PublicKey``: anything carrying TPM2B_PUBLIC bytes as ``public``."""

    public: bytes


EkPublicInput = bytes | bytearray | memoryview | TPMT_PUBLIC | rsa.RSAPublicKey | ec.EllipticCurvePublicKey | _HasPublic


_NAMES: Final = {"INTEL": VENDOR_INTEL}
"""Vendor names some tools report instead of the TCG id (go-attestation's TCGVendorID says "Intel")."""


def _vendor_id(manufacturer: str | int) -> int | None:
    if isinstance(manufacturer, int):
        return manufacturer
    text = manufacturer.replace("\0", "").strip().upper()
    if text in _NAMES:
        return _NAMES[text]
    if not text or len(text) > 4 or not text.isascii():
        return None
    return int.from_bytes(text.encode("ascii").ljust(4, b"\0"), "big")


def _parts(ek_public: EkPublicInput) -> tuple[str, bytes, bytes, int]:
    """("rsa", modulus, b"", exponent) or ("ecc", x, y, 0), bytes as the TPM gives them."""
    if isinstance(ek_public, rsa.RSAPublicKey):
        nums = ek_public.public_numbers()
        return "rsa", nums.n.to_bytes((ek_public.key_size + 7) // 8, "big"), b"", nums.e
    if isinstance(ek_public, ec.EllipticCurvePublicKey):
        nums_ec = ek_public.public_numbers()
        size = (ek_public.curve.key_size + 7) // 8
        return "ecc", nums_ec.x.to_bytes(size, "big"), nums_ec.y.to_bytes(size, "big"), 0
    if isinstance(ek_public, TPMT_PUBLIC):
        area = ek_public
    else:
        raw = ek_public if isinstance(ek_public, bytes | bytearray | memoryview) else ek_public.public
        try:
            area = parse_public(bytes(raw))
        except ParseError as exc:
            raise ValueError(f"ek_public: not a TPM public area: {exc}") from exc
    if area.type == TPM_ALG.RSA and isinstance(area.parameters, TPMS_RSA_PARMS) and isinstance(area.unique, bytes):
        return "rsa", area.unique, b"", area.parameters.exponent or _DEFAULT_EXPONENT
    if area.type == TPM_ALG.ECC and isinstance(area.unique, TPMS_ECC_POINT):
        return "ecc", area.unique.x, area.unique.y, 0
    raise ValueError(f"ek_public: an EK is an RSA or ECC key, not type 0x{area.type:04x}")


def ek_certificate_url(ek_public: EkPublicInput, manufacturer: str | int) -> str | None:
    """The URL of the EK certificate of a firmware TPM, or None when its vendor has no service.

    `ek_public`: TPM2B_PUBLIC/TPMT_PUBLIC bytes, a TPMT_PUBLIC, an ``EkInfo``, or a
    `cryptography` RSA/EC key. `manufacturer`: the TPM's vendor id as ``Tpm.info()``
    reports it (``"INTC"``, ``"AMD"``; ``"Intel"`` too), or its integer value
    (``TpmInfo.manufacturer_id``).
    Raises ValueError for a public area that is not an RSA or ECC key.
    """
    vendor = _vendor_id(manufacturer)
    if vendor not in (VENDOR_INTEL, VENDOR_AMD):
        return None
    kind, a, b, exponent = _parts(ek_public)
    if vendor == VENDOR_INTEL:
        if kind == "rsa":
            if exponent != _DEFAULT_EXPONENT:
                return None
            digest = hashlib.sha256(a + b"\x01\x00\x01").digest()
        else:
            digest = hashlib.sha256(a + b).digest()
        return INTEL_EK_SERVICE + quote(base64.urlsafe_b64encode(digest).decode("ascii"), safe="")
    if kind == "rsa":
        data = b"\x00\x00\x22\x22" + exponent.to_bytes(4, "big") + a
    else:
        data = b"\x00\x00\x44\x44" + a + b
    return AMD_EK_SERVICE + hashlib.sha256(data).digest()[:16].hex()
