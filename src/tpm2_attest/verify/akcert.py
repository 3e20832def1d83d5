"""AK certificate verification: an X.509 certificate a CA issued for an attestation key.

Cloud vTPMs (Google Compute Engine) come with an AK whose certificate the cloud's CA
signed: it lets a verifier trust the AK without a credential activation round trip. The
path is built and checked as for EK certificates (:mod:`.certpath`); the leaf must be an
AK certificate (keyUsage with digitalSignature, not a CA, an extendedKeyUsage, when
present, with tcg-kp-AIKCertificate, no unknown critical extension), and the key it
certifies must be the AK presented.

What it proves: the CA vouches that this key is an AK of a TPM it provisioned. Pair it
with ``check_ak`` (the key's attributes and the nonce bound into its creation
attestation) so the device also proves it holds that AK now.
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

from ..evidence import AkBlob
from .ak import AkPublic
from .certpath import CaValidity, CertInput, key_der, usage_problem, validity, verify_path
from .errors import Reason, VerificationError

__all__ = ["AkCertificate", "verify_ak_certificate"]

_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
_DER = serialization.Encoding.DER
_AS_AK: Final = {
    Reason.EK_CERT_MALFORMED: Reason.AK_CERT_MALFORMED,
    Reason.EK_CERT_CHAIN: Reason.AK_CERT_CHAIN,
    Reason.EK_CERT_EXPIRED: Reason.AK_CERT_EXPIRED,
}


@dataclass(frozen=True)
class AkCertificate:
    """A verified AK certificate: chain checked, and key matched when an AK public was given."""

    certificate: x509.Certificate
    """The parsed certificate (a re-encoded copy when ``lenient``)."""
    der: bytes
    public_key: CertificatePublicKeyTypes
    public_key_der: bytes
    """SubjectPublicKeyInfo DER of the certified key."""
    subject: str
    """RFC 4514 form (GCE: the VM's zone, project and instance id)."""
    issuer: str
    serial_number: int
    not_before: datetime
    not_after: datetime
    chain: list[x509.Certificate]
    """Leaf first, the trusted root last."""
    lenient: bool = False
    tolerated: tuple[str, ...] = ()
    expired_cas: tuple[str, ...] = ()
    """CAs of the chain that have expired since they issued (see ``ca_validity``)."""


def _fail(reason: Reason, detail: str) -> VerificationError:
    return VerificationError(reason, detail)


AkPublicInput = AkPublic | AkBlob | bytes | bytearray | memoryview | PublicKeyTypes


def _ak_public_der(ak_public: AkPublicInput) -> bytes:
    if isinstance(ak_public, AkPublic | AkBlob):
        try:
            return ak_public.public_der
        except ValueError as exc:  # ParseError of a blob's public area
            raise _fail(Reason.MALFORMED, f"AK public area: {exc}") from exc
    return key_der(ak_public, "AK")


def verify_ak_certificate(
    cert: CertInput,
    roots: Sequence[CertInput],
    intermediates: Sequence[CertInput] = (),
    *,
    ak_public: AkPublicInput | None = None,
    at_time: datetime | None = None,
    ca_validity: CaValidity = "at-issuance",
) -> AkCertificate:
    """Verify an AK certificate (DER or PEM) chains to one of `roots` and certifies `ak_public`.

    The path is checked as for EK certificates (``verify_ek_certificate``, same
    ``ca_validity`` policy). The leaf must be an AK certificate (module docstring).
    `ak_public` (an ``AkPublic``, an ``AkBlob``, TPM2B_PUBLIC/TPMT_PUBLIC bytes or a
    `cryptography` key) must equal the certified key. Raises VerificationError:
    AK_CERT_MALFORMED, AK_CERT_CHAIN, AK_CERT_EXPIRED, AK_CERT_USAGE, AK_KEY_MISMATCH, or
    MALFORMED (AK public area).
    """
    try:
        path = verify_path(cert, roots, intermediates, at_time=at_time, ca_validity=ca_validity,
                           what="AK certificate")
    except VerificationError as exc:
        raise _fail(_AS_AK.get(exc.reason, exc.reason), exc.detail) from exc
    leaf = path.certificate
    try:
        public_key = leaf.public_key()
        public_key_der = public_key.public_bytes(_DER, _SPKI)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _fail(Reason.AK_CERT_MALFORMED, f"AK certificate key: {exc}") from exc
    problem = usage_problem(leaf, "ak")
    if problem is not None:
        raise _fail(Reason.AK_CERT_USAGE, problem)
    if ak_public is not None and _ak_public_der(ak_public) != public_key_der:
        raise _fail(Reason.AK_KEY_MISMATCH, "the certificate's key is not the AK presented")
    not_before, not_after = validity(leaf)
    return AkCertificate(
        certificate=leaf,
        der=path.der,
        public_key=public_key,
        public_key_der=public_key_der,
        subject=path.subject.rfc4514_string(),
        issuer=path.issuer.rfc4514_string(),
        serial_number=path.serial_number,
        not_before=not_before,
        not_after=not_after,
        chain=path.chain,
        lenient=path.lenient,
        tolerated=path.tolerated,
        expired_cas=path.expired_cas,
    )
