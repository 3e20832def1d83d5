"""Well-known UEFI Secure Boot certificates, recognised by the SHA-256 of their DER encoding.

The certificates ship with the package (``eventlog/certs/``, see its README for their origin);
they are read and hashed on the first lookup, never at import, so importing the verifier costs
nothing for them. A name is a stable identifier a policy may use instead of a fingerprint.
"""

from __future__ import annotations

import hashlib
from functools import cache
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from cryptography import x509

MS_WINDOWS_PROD_PCA_2011: Final = "MS_WINDOWS_PROD_PCA_2011"
MS_THIRD_PARTY_UEFI_CA_2011: Final = "MS_THIRD_PARTY_UEFI_CA_2011"
MS_THIRD_PARTY_KEK_CA_2011: Final = "MS_THIRD_PARTY_KEK_CA_2011"
GCE_DEFAULT_PK: Final = "GCE_DEFAULT_PK"
CANONICAL_BOOTHOLE: Final = "CANONICAL_BOOTHOLE"
CISCO_BOOTHOLE: Final = "CISCO_BOOTHOLE"
DEBIAN_BOOTHOLE: Final = "DEBIAN_BOOTHOLE"

FILES: Final[dict[str, str]] = {
    MS_WINDOWS_PROD_PCA_2011: "MicWinProPCA2011_2011-10-19.crt",
    MS_THIRD_PARTY_UEFI_CA_2011: "MicCorUEFCA2011_2011-06-27.crt",
    MS_THIRD_PARTY_KEK_CA_2011: "MicCorKEKCA2011_2011-06-24.crt",
    GCE_DEFAULT_PK: "GcePk.crt",
    CANONICAL_BOOTHOLE: "canonical-boothole.crt",
    CISCO_BOOTHOLE: "cisco-boothole.crt",
    DEBIAN_BOOTHOLE: "debian-boothole.crt",
}
"""Each well-known name and the package data file holding its DER certificate."""

WELL_KNOWN_NAMES: Final = tuple(FILES)
"""Every name :func:`well_known_certificate` can return."""

BOOTHOLE_SIGNERS: Final = (CANONICAL_BOOTHOLE, CISCO_BOOTHOLE, DEBIAN_BOOTHOLE)
"""Signing certificates revoked after the 2020 BootHole GRUB vulnerabilities (CVE-2020-10713)."""


def certificate_der(name: str) -> bytes:
    """The DER bytes of a well-known certificate; KeyError for an unknown name."""
    return _der()[name]


@cache
def _der() -> dict[str, bytes]:
    from importlib import resources  # 5 ms of imports: only on the first lookup

    folder = resources.files(__package__ or "tpm2_attest.eventlog") / "certs"
    return {name: (folder / file).read_bytes() for name, file in FILES.items()}


@cache
def fingerprints() -> dict[bytes, str]:
    """``{SHA-256 of the DER certificate: name}`` for every well-known certificate."""
    return {hashlib.sha256(der).digest(): name for name, der in _der().items()}


def fingerprint_of(name: str) -> bytes:
    """The SHA-256 fingerprint of a well-known certificate; KeyError for an unknown name."""
    return hashlib.sha256(certificate_der(name)).digest()


def _der_of(cert: x509.Certificate | bytes | bytearray | memoryview) -> bytes:
    if isinstance(cert, bytes | bytearray | memoryview):
        return bytes(cert)
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.DER)


def well_known_certificate(cert: x509.Certificate | bytes | bytearray | memoryview) -> str | None:
    """The well-known name of a certificate (an ``x509.Certificate`` or its DER bytes), e.g.
    ``"MS_THIRD_PARTY_UEFI_CA_2011"``, or None when it is not one of :data:`WELL_KNOWN_NAMES`."""
    return fingerprints().get(hashlib.sha256(_der_of(cert)).digest())


def name_of_fingerprint(fingerprint: bytes) -> str | None:
    """The well-known name for a SHA-256 certificate fingerprint, or None."""
    return fingerprints().get(bytes(fingerprint))


__all__ = [
    "BOOTHOLE_SIGNERS",
    "CANONICAL_BOOTHOLE",
    "CISCO_BOOTHOLE",
    "DEBIAN_BOOTHOLE",
    "GCE_DEFAULT_PK",
    "MS_THIRD_PARTY_KEK_CA_2011",
    "MS_THIRD_PARTY_UEFI_CA_2011",
    "MS_WINDOWS_PROD_PCA_2011",
    "WELL_KNOWN_NAMES",
    "certificate_der",
    "fingerprint_of",
    "fingerprints",
    "name_of_fingerprint",
    "well_known_certificate",
]
