"""Standard key templates: TCG EK (low range), TCG SRK (ECC P-256), and our AK templates.

Sources: TCG EK Credential Profile for TPM Family 2.0 (templates L-1 and L-2) and TCG TPM v2.0
Provisioning Guidance (SRK). The EK authPolicy is PolicySecret(TPM_RH_ENDORSEMENT).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from .constants import TPM_ALG, TPM_ECC_CURVE, TPMA_OBJECT
from .structures import (
    TPMS_ECC_PARMS,
    TPMS_ECC_POINT,
    TPMS_RSA_PARMS,
    TPMT_PUBLIC,
    TPMT_SCHEME,
    TPMT_SYM_DEF_OBJECT,
)

A = TPMA_OBJECT

EK_POLICY_ENDORSEMENT: Final = bytes.fromhex(
    "837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa"
)
"""PolicySecret(TPM_RH_ENDORSEMENT) digest under SHA-256: the low-range EK authPolicy."""

EK_ATTRIBUTES: Final = int(
    A.fixedTPM | A.fixedParent | A.sensitiveDataOrigin | A.adminWithPolicy | A.restricted | A.decrypt
)  # 0x000300b2
SRK_ATTRIBUTES: Final = int(
    A.fixedTPM | A.fixedParent | A.sensitiveDataOrigin | A.userWithAuth | A.noDA | A.restricted | A.decrypt
)  # 0x00030472
AK_ATTRIBUTES: Final = int(
    A.fixedTPM | A.fixedParent | A.sensitiveDataOrigin | A.userWithAuth | A.noDA | A.restricted | A.sign_encrypt
)  # 0x00050472

AES128_CFB: Final = TPMT_SYM_DEF_OBJECT(TPM_ALG.AES, 128, TPM_ALG.CFB)
SYM_NULL: Final = TPMT_SYM_DEF_OBJECT()
SCHEME_NULL: Final = TPMT_SCHEME()

EK_RSA_TEMPLATE: Final = TPMT_PUBLIC(
    type=TPM_ALG.RSA,
    name_alg=TPM_ALG.SHA256,
    object_attributes=EK_ATTRIBUTES,
    auth_policy=EK_POLICY_ENDORSEMENT,
    parameters=TPMS_RSA_PARMS(AES128_CFB, SCHEME_NULL, 2048, 0),
    unique=bytes(256),
)
"""TCG EK Credential Profile template L-1 (RSA 2048, AES-128-CFB, SHA-256)."""

EK_ECC_TEMPLATE: Final = TPMT_PUBLIC(
    type=TPM_ALG.ECC,
    name_alg=TPM_ALG.SHA256,
    object_attributes=EK_ATTRIBUTES,
    auth_policy=EK_POLICY_ENDORSEMENT,
    parameters=TPMS_ECC_PARMS(AES128_CFB, SCHEME_NULL, TPM_ECC_CURVE.NIST_P256, SCHEME_NULL),
    unique=TPMS_ECC_POINT(bytes(32), bytes(32)),
)
"""TCG EK Credential Profile template L-2 (ECC NIST P-256, AES-128-CFB, SHA-256)."""

SRK_ECC_TEMPLATE: Final = TPMT_PUBLIC(
    type=TPM_ALG.ECC,
    name_alg=TPM_ALG.SHA256,
    object_attributes=SRK_ATTRIBUTES,
    auth_policy=b"",
    parameters=TPMS_ECC_PARMS(AES128_CFB, SCHEME_NULL, TPM_ECC_CURVE.NIST_P256, SCHEME_NULL),
    unique=TPMS_ECC_POINT(bytes(32), bytes(32)),
)
"""TCG Provisioning Guidance ECC P-256 SRK template (the AK parent)."""

AK_ECC_TEMPLATE: Final = TPMT_PUBLIC(
    type=TPM_ALG.ECC,
    name_alg=TPM_ALG.SHA256,
    object_attributes=AK_ATTRIBUTES,
    auth_policy=b"",
    parameters=TPMS_ECC_PARMS(
        SYM_NULL, TPMT_SCHEME(TPM_ALG.ECDSA, TPM_ALG.SHA256), TPM_ECC_CURVE.NIST_P256, SCHEME_NULL
    ),
    unique=TPMS_ECC_POINT(b"", b""),
)
"""Restricted ECDSA P-256 / SHA-256 attestation key."""

AK_RSA_TEMPLATE: Final = TPMT_PUBLIC(
    type=TPM_ALG.RSA,
    name_alg=TPM_ALG.SHA256,
    object_attributes=AK_ATTRIBUTES,
    auth_policy=b"",
    parameters=TPMS_RSA_PARMS(SYM_NULL, TPMT_SCHEME(TPM_ALG.RSASSA, TPM_ALG.SHA256), 2048, 0),
    unique=b"",
)
"""Restricted RSA-2048 RSASSA / SHA-256 attestation key."""


def with_unique(template: TPMT_PUBLIC, unique: bytes | TPMS_ECC_POINT) -> TPMT_PUBLIC:
    """The template with another unique field (the EK nonce NV indices supply one)."""
    return replace(template, unique=unique)


def matches_template(public: TPMT_PUBLIC, template: TPMT_PUBLIC) -> bool:
    """True when a key was made from ``template``: everything but ``unique`` must be equal."""
    return (
        public.type == template.type
        and public.name_alg == template.name_alg
        and public.object_attributes == template.object_attributes
        and public.auth_policy == template.auth_policy
        and public.parameters == template.parameters
    )

EK_POLICY_B_SHA384: Final = bytes.fromhex(
    "b26e7d28d11a50bc53d882bcf5fd3a1a074148bb35d3b4e4cb1c0ad9bde419ca"
    "cb47ba09699646150f9fc000f3f80e12"
)
"""PolicyB (SHA-384) of the TCG EK Credential Profile high-range templates."""

EK_HIGH_ATTRIBUTES: Final = EK_ATTRIBUTES | int(A.userWithAuth)  # 0x000300f2

EK_ECC_P384_TEMPLATE: Final = TPMT_PUBLIC(
    type=TPM_ALG.ECC,
    name_alg=TPM_ALG.SHA384,
    object_attributes=EK_HIGH_ATTRIBUTES,
    auth_policy=EK_POLICY_B_SHA384,
    parameters=TPMS_ECC_PARMS(
        TPMT_SYM_DEF_OBJECT(TPM_ALG.AES, 256, TPM_ALG.CFB), SCHEME_NULL, TPM_ECC_CURVE.NIST_P384, SCHEME_NULL
    ),
    unique=TPMS_ECC_POINT(b"", b""),
)
"""TCG EK Credential Profile high-range template H-4 (ECC NIST P-384, AES-256-CFB, SHA-384);
swtpm_setup provisions it at 0x81010016."""
