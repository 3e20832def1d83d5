"""check_ek / make_credential on EK parameters that used to slip through or crash.

An ECC EK on P-192 or P-224 got a credential (the seed protected by a ~96/112-bit curve);
an RSA EK whose nameAlg is SHA3-256 made `cryptography` raise UnsupportedAlgorithm (OAEP
with SHA-3 is not available), which the service answered with a plain-text HTTP 500.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tpm2_attest.tpm2 import templates as T
from tpm2_attest.tpm2.constants import TPM_ALG, TPM_ECC_CURVE
from tpm2_attest.tpm2.structures import TPM2B_PUBLIC, TPMS_ECC_POINT
from tpm2_attest.verify import Reason, VerificationError, check_ek, make_credential

AK_NAME = b"\x00\x0b" + bytes(32)


def ecc_ek(curve: ec.EllipticCurve, curve_id: int, name_alg: int = TPM_ALG.SHA256) -> bytes:
    """An EK public area (TCG ECC template) on `curve`, with a real point on it."""
    key = ec.generate_private_key(curve).public_key()
    raw = key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    size = (curve.key_size + 7) // 8
    area = replace(T.EK_ECC_TEMPLATE, name_alg=name_alg,
                   unique=TPMS_ECC_POINT(raw[1 : 1 + size], raw[1 + size :]),
                   parameters=replace(T.EK_ECC_TEMPLATE.parameters, curve_id=curve_id))
    return TPM2B_PUBLIC(area).to_bytes()


def rsa_ek(name_alg: int) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    n = key.public_numbers().n.to_bytes(256, "big")
    return TPM2B_PUBLIC(replace(T.EK_RSA_TEMPLATE, name_alg=name_alg, unique=n)).to_bytes()


@pytest.mark.parametrize(("curve", "curve_id"), [
    (ec.SECP192R1(), TPM_ECC_CURVE.NIST_P192),
    (ec.SECP224R1(), TPM_ECC_CURVE.NIST_P224),
])
def test_small_curves_are_weak(curve: ec.EllipticCurve, curve_id: int) -> None:
    public = ecc_ek(curve, curve_id)
    for call in (lambda: check_ek(public), lambda: make_credential(public, AK_NAME)):
        with pytest.raises(VerificationError) as e:
            call()
        assert e.value.reason is Reason.WEAK_KEY
    bare = ec.generate_private_key(curve).public_key()
    with pytest.raises(VerificationError) as e:
        make_credential(bare, AK_NAME)
    assert e.value.reason is Reason.WEAK_KEY


def test_p256_and_p384_still_fine() -> None:
    for curve, curve_id in ((ec.SECP256R1(), TPM_ECC_CURVE.NIST_P256), (ec.SECP384R1(), TPM_ECC_CURVE.NIST_P384)):
        challenge, secret = make_credential(ecc_ek(curve, curve_id), AK_NAME)
        assert len(secret) == 32 and challenge.encrypted_secret


def test_rsa_ek_with_a_name_alg_oaep_cannot_use() -> None:
    public = rsa_ek(TPM_ALG.SHA3_256)
    for call in (lambda: check_ek(public), lambda: make_credential(public, AK_NAME)):
        with pytest.raises(VerificationError) as e:
            call()
        assert e.value.reason is Reason.UNSUPPORTED_FORMAT
    # SHA-384 works with OAEP: accepted
    assert check_ek(rsa_ek(TPM_ALG.SHA384)).name_alg == TPM_ALG.SHA384
