"""EK certificate verification: chain to given roots, TCG profile checks, key match.

The path is built and checked by :mod:`.certpath` (lenient parsing of vendor
certificates, path search, CA constraints, nameConstraints, the validity policy for
CAs). On top of that an EK certificate must look like one (TCG EK Credential Profile):
not a CA, an extendedKeyUsage that includes tcg-kp-EKCertificate when it has one, a
keyUsage that fits an EK's key (keyEncipherment for RSA, keyAgreement for ECC; an AK
certificate with digitalSignature only is refused), and no critical extension we do not
understand. Certificates without any extendedKeyUsage exist (Google Compute Engine's
vTPM EK certificates): accepted unless ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PublicKeyTypes,
)

from .certpath import (
    MAX_CERT_SIZE,
    MAX_CHAIN_LENGTH,
    OID_TCG_KP_EK_CERTIFICATE,
    CaValidity,
    CertInput,
    key_der,
    usage_problem,
    validity,
    verify_path,
)
from .errors import Reason, VerificationError

__all__ = [
    "MAX_CERT_SIZE",
    "MAX_CHAIN_LENGTH",
    "OID_TCG_KP_EK_CERTIFICATE",
    "OID_TPM_MANUFACTURER",
    "OID_TPM_MODEL",
    "OID_TPM_VERSION",
    "CaValidity",
    "EkCertificate",
    "verify_ek_certificate",
]

OID_TPM_MANUFACTURER: Final = x509.ObjectIdentifier("2.23.133.2.1")
"""tcg-at-tpmManufacturer, e.g. ``id:49465800`` (TCG EK Credential Profile §3.1.2)."""
OID_TPM_MODEL: Final = x509.ObjectIdentifier("2.23.133.2.2")
"""tcg-at-tpmModel."""
OID_TPM_VERSION: Final = x509.ObjectIdentifier("2.23.133.2.3")
"""tcg-at-tpmVersion, e.g. ``id:00070002``."""

_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
_DER = serialization.Encoding.DER


@dataclass(frozen=True)
class EkCertificate:
    """A verified EK certificate: chain checked, and key matched when an EK public was given."""

    certificate: x509.Certificate
    """The parsed certificate (a re-encoded copy when ``lenient``)."""
    der: bytes
    """The certificate as received (DER, NV header and trailing bytes removed)."""
    public_key: CertificatePublicKeyTypes
    public_key_der: bytes
    """SubjectPublicKeyInfo DER of the certified key."""
    subject: str
    """RFC 4514 form; usually empty for EK certificates."""
    issuer: str
    serial_number: int
    """As encoded in the certificate (may be negative for non-conforming vendors)."""
    not_before: datetime
    not_after: datetime
    tpm_manufacturer: str | None
    """SubjectAltName directoryName tcg-at-tpmManufacturer, e.g. ``id:4E544300``."""
    tpm_model: str | None
    tpm_version: str | None
    chain: list[x509.Certificate]
    """Leaf first, the trusted root last."""
    lenient: bool = False
    """True when `certificate` is a repaired copy (see :mod:`.certpath`)."""
    tolerated: tuple[str, ...] = ()
    """The deviations from RFC 5280 / DER that were tolerated, by name."""
    expired_cas: tuple[str, ...] = ()
    """CAs of the chain that are expired (or not yet valid) now; accepted because they were
    valid when they issued (``ca_validity="at-issuance"``). Worth logging: the vendor CA is stale."""

    @property
    def tpm_manufacturer_id(self) -> int | None:
        """The TCG vendor id from ``id:XXXXXXXX`` (e.g. 0x4E544300 for "NTC"), if well formed."""
        value = self.tpm_manufacturer
        if value is None or not value.lower().startswith("id:"):
            return None
        try:
            return int(value[3:], 16)
        except ValueError:
            return None


def _fail(reason: Reason, detail: str) -> VerificationError:
    return VerificationError(reason, detail)


def _tcg_attributes(cert: x509.Certificate) -> dict[x509.ObjectIdentifier, str]:
    """tcg-at-tpmManufacturer/Model/Version from the SubjectAltName directoryName."""
    found: dict[x509.ObjectIdentifier, str] = {}
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return found
    for name in san.get_values_for_type(x509.DirectoryName):
        for attr in name:
            if attr.oid in (OID_TPM_MANUFACTURER, OID_TPM_MODEL, OID_TPM_VERSION):
                value = attr.value
                found.setdefault(attr.oid, value if isinstance(value, str) else value.hex())
    return found


def verify_ek_certificate(
    cert: CertInput,
    roots: Sequence[CertInput],
    intermediates: Sequence[CertInput] = (),
    *,
    ek_public: bytes | PublicKeyTypes | None = None,
    at_time: datetime | None = None,
    ca_validity: CaValidity = "at-issuance",
    strict: bool = False,
) -> EkCertificate:
    """Verify an EK certificate (DER or PEM) chains to one of `roots` and certifies `ek_public`.

    Intermediates are looked up by issuer name; every CA between the leaf and the root
    needs basicConstraints cA=true (and keyCertSign when keyUsage is present), no unknown
    critical extension, and respects the nameConstraints above it. A root is trusted as
    given. The leaf must be valid at `at_time` (default now; naive datetimes are UTC).
    ``ca_validity``: ``"at-issuance"`` (default) accepts a CA that was valid when it issued
    the certificate below it and has expired since (listed in ``expired_cas``);
    ``"at-time"`` requires every certificate of the path to be valid at `at_time`.
    The leaf must be shaped like an EK certificate (module docstring); ``strict=True``
    also requires its extendedKeyUsage and keyUsage extensions. `ek_public`
    (TPM2B_PUBLIC/TPMT_PUBLIC bytes or a `cryptography` key) must equal the certified key.
    Raises VerificationError: EK_CERT_MALFORMED, EK_CERT_CHAIN, EK_CERT_EXPIRED,
    EK_CERT_USAGE, EK_KEY_MISMATCH, or MALFORMED (EK public area).
    """
    path = verify_path(cert, roots, intermediates, at_time=at_time, ca_validity=ca_validity,
                       what="EK certificate", allow_sha1=not strict)
    leaf_cert = path.certificate
    try:
        public_key = leaf_cert.public_key()
        public_key_der = public_key.public_bytes(_DER, _SPKI)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _fail(Reason.EK_CERT_MALFORMED, f"EK certificate key: {exc}") from exc
    problem = usage_problem(leaf_cert, "ek", strict=strict)
    if problem is not None:
        raise _fail(Reason.EK_CERT_USAGE, problem)
    if ek_public is not None and key_der(ek_public, "EK") != public_key_der:
        raise _fail(Reason.EK_KEY_MISMATCH, "the certificate's key is not the EK presented")

    attrs = _tcg_attributes(leaf_cert)
    not_before, not_after = validity(leaf_cert)
    return EkCertificate(
        certificate=leaf_cert,
        der=path.der,
        public_key=public_key,
        public_key_der=public_key_der,
        subject=path.subject.rfc4514_string(),
        issuer=path.issuer.rfc4514_string(),
        serial_number=path.serial_number,
        not_before=not_before,
        not_after=not_after,
        tpm_manufacturer=attrs.get(OID_TPM_MANUFACTURER),
        tpm_model=attrs.get(OID_TPM_MODEL),
        tpm_version=attrs.get(OID_TPM_VERSION),
        chain=path.chain,
        lenient=path.lenient,
        tolerated=path.tolerated,
        expired_cas=path.expired_cas,
    )
