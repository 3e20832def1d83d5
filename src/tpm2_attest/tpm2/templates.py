"""Standard key templates: TCG EK (low range), TCG SRK (ECC P-256), and our AK templates.

Sources: TCG EK Credential Profile for TPM Family 2.0 (templates L-1 and L-2) and TCG TPM v2.0
Provisioning Guidance (SRK). The EK authPolicy is PolicySecret(TPM_RH_ENDORSEMENT).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Final

from .constants import HASH_NAMES, TPM_ALG, TPM_CC, TPM_ECC_CURVE, TPM_RH, TPMA_OBJECT
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

def policy_secret_digest(hash_alg: int, auth_name: bytes, policy_ref: bytes = b"") -> bytes:
    """Policy digest of a fresh session after TPM2_PolicySecret(auth_name) (Part 3, 23.4)."""
    name = HASH_NAMES[hash_alg]
    size = hashlib.new(name).digest_size
    d = hashlib.new(name, bytes(size) + TPM_CC.PolicySecret.to_bytes(4, "big") + auth_name).digest()
    return hashlib.new(name, d + policy_ref).digest()


def policy_or_digest(hash_alg: int, branches: list[bytes]) -> bytes:
    """Policy digest after TPM2_PolicyOR(branches) (Part 3, 23.6)."""
    name = HASH_NAMES[hash_alg]
    size = hashlib.new(name).digest_size
    return hashlib.new(name, bytes(size) + TPM_CC.PolicyOR.to_bytes(4, "big") + b"".join(branches)).digest()


EK_POLICY_A: Final[dict[int, bytes]] = {
    alg: policy_secret_digest(alg, TPM_RH.ENDORSEMENT.to_bytes(4, "big"))
    for alg in (TPM_ALG.SHA256, TPM_ALG.SHA384, TPM_ALG.SHA512)
}
"""PolicyA of the EK Credential Profile: PolicySecret(TPM_RH_ENDORSEMENT) per hash."""

EK_POLICY_C: Final[dict[int, bytes]] = {
    TPM_ALG.SHA256: bytes.fromhex("3767e2edd43ff45a3a7e1eaefcef78643dca964632e7aad82c673a30d8633fde"),
    TPM_ALG.SHA384: bytes.fromhex(
        "d6032ce61f2fb3c240eb3cf6a33237ef2b6a16f4293c22b455e261cffd217ad5"
        "b4947c2d73e63005eed2dc2b3593d165"),
    TPM_ALG.SHA512: bytes.fromhex(
        "589ee1e146544716e8deafe6db247b01b81e9f9c7dd16b814aa159138749105f"
        "ba5388dd1dea702f35240c184933121e2c61b8f50d3ef91393a49a38c3f73fc8"),
}
"""PolicyC of the EK Credential Profile: PolicyAuthorizeNV of the EK policy NV index (fixed
values from the profile; tests check PolicyOR(A, C) reproduces PolicyB)."""

EK_POLICY_B: Final[dict[int, bytes]] = {
    alg: policy_or_digest(alg, [EK_POLICY_A[alg], EK_POLICY_C[alg]]) for alg in EK_POLICY_C
}
"""PolicyB = PolicyOR(PolicyA, PolicyC): the authPolicy of the high-range EK templates."""

EK_POLICY_B_SHA384: Final = EK_POLICY_B[TPM_ALG.SHA384]

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
