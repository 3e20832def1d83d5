"""verify.check_ak / AkPublic / verify_creation / make_credential against real swtpm evidence.

Every tampered input must fail with its exact Reason. Evidence a real TPM cannot produce
(a restricted key signing a bad magic, trailing bytes inside a signed structure) is made with
a software key whose public area claims to be an AK: that is what an attacker can present,
and the checks after the signature must still catch it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from tpm2_attest.commands import TpmCommands
from tpm2_attest.evidence import AkBlob, EkInfo
from tpm2_attest.tpm import Tpm
from tpm2_attest.tpm2 import templates as T
from tpm2_attest.tpm2.constants import (
    TPM_ALG,
    TPM_ECC_CURVE,
    TPM_GENERATED_VALUE,
    TPM_RH,
    TPM_ST,
    TPMA_OBJECT,
)
from tpm2_attest.tpm2.keys import object_name
from tpm2_attest.tpm2.structures import (
    TPM2B_PUBLIC,
    TPML_PCR_SELECTION,
    TPMS_ATTEST,
    TPMS_CLOCK_INFO,
    TPMS_CREATION_DATA,
    TPMS_CREATION_INFO,
    TPMS_ECC_PARMS,
    TPMS_ECC_POINT,
    TPMS_RSA_PARMS,
    TPMT_SCHEME,
    TPMT_SIGNATURE,
)
from tpm2_attest.verify import (
    AkPublic,
    Reason,
    VerificationError,
    check_ak,
    make_credential,
    verify_activation,
    verify_creation,
)

NONCE = b"enrollment-nonce-0123456789abcdef"
SHA1_SCHEME = TPMT_SCHEME(TPM_ALG.RSASSA, TPM_ALG.SHA1)
PCP_TEMPLATE = replace(T.AK_RSA_TEMPLATE, parameters=TPMS_RSA_PARMS(T.SYM_NULL, SHA1_SCHEME, 2048, 0))
"""PCP identity key: RSA-2048, attributes 0x00050472, RSASSA-SHA1 (as issue #4 documents)."""


def reason(exc: pytest.ExceptionInfo[VerificationError]) -> Reason:
    return exc.value.reason


def flip(data: bytes, pos: int, bit: int = 0) -> bytes:
    b = bytearray(data)
    b[pos] ^= 1 << bit
    return bytes(b)


# -- evidence from swtpm ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tpm(swtpm: Any) -> Iterator[Tpm]:
    with Tpm.open(swtpm.tcti) as t:
        yield t


@pytest.fixture(scope="module")
def ecc_blob(tpm: Tpm) -> AkBlob:
    return tpm.provision_ak(nonce=NONCE)


@pytest.fixture(scope="module")
def rsa_blob(tpm: Tpm) -> AkBlob:
    return tpm.provision_ak(nonce=NONCE, algorithm="rsa")


def create_key(cmds: TpmCommands, template: Any, *, outside_info: bytes = b"") -> tuple[int, Any]:
    """Create and load a key under a transient ECC SRK (flushed); return (handle, CreateResult)."""
    srk = cmds.create_primary(TPM_RH.OWNER, T.SRK_ECC_TEMPLATE)
    try:
        res = cmds.create(srk.handle, template, outside_info=outside_info)
        handle, _ = cmds.load(srk.handle, res.private, res.public_bytes)
    finally:
        cmds.flush_context(srk.handle)
    return handle, res


def pcp_blob(cmds: TpmCommands, nonce: bytes | None, *, key_name: str = "vendor-device-ak",
             outside: bytes | None = None) -> AkBlob:
    """PCP1 evidence as the PCP provider makes it: IDBINDING with SHA-1(nonce) as both
    outsideInfo and qualifyingData, self-certified under the key's own RSASSA-SHA1."""
    digest = hashlib.sha1(nonce).digest() if nonce is not None else b""
    handle, res = create_key(cmds, PCP_TEMPLATE, outside_info=digest if outside is None else outside)
    try:
        signed = cmds.certify_creation(handle, handle, digest, res.creation_hash, TPMT_SCHEME(),
                                       res.creation_ticket)
    finally:
        cmds.flush_context(handle)
    return AkBlob("PCP1", res.public_bytes, b"", res.creation_data_bytes[2:], signed.attest,
                  signed.signature, key_name=key_name)


# -- evidence made in software (what an attacker could present) ---------------------------------


def soft_ak(kind: str = "ecc") -> tuple[Any, bytes]:
    """A software key and a TPM2B_PUBLIC that claims it is a restricted TPM AK."""
    if kind == "ecc":
        key = ec.generate_private_key(ec.SECP256R1())
        n = key.public_key().public_numbers()
        area = replace(T.AK_ECC_TEMPLATE, unique=TPMS_ECC_POINT(n.x.to_bytes(32, "big"), n.y.to_bytes(32, "big")))
    else:
        key = rsa.generate_private_key(65537, 2048)
        area = replace(T.AK_RSA_TEMPLATE, unique=key.public_key().public_numbers().n.to_bytes(256, "big"))
    return key, TPM2B_PUBLIC(area).to_bytes()


def soft_sign(key: Any, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = utils.decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return TPMT_SIGNATURE(TPM_ALG.ECDSA, TPM_ALG.SHA256, r=r.to_bytes(32, "big"), s=s.to_bytes(32, "big")).to_bytes()
    sig = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return TPMT_SIGNATURE(TPM_ALG.RSASSA, TPM_ALG.SHA256, sig).to_bytes()


def soft_creation(key: Any, public: bytes, *, magic: int = TPM_GENERATED_VALUE, nonce: bytes = NONCE,
                  trailing: bytes = b"") -> tuple[bytes, bytes, bytes]:
    """(creation_data, attest, signature) certifying ``public``'s creation, signed by ``key``."""
    cd = TPMS_CREATION_DATA(TPML_PCR_SELECTION(), hashlib.sha256().digest(), 0, TPM_ALG.SHA256,
                            b"\x40\x00\x00\x01", b"\x40\x00\x00\x01", nonce).to_bytes()
    info = TPMS_CREATION_INFO(object_name(public[2:]), hashlib.sha256(cd).digest())
    att = TPMS_ATTEST(magic, TPM_ST.ATTEST_CREATION, b"\x00\x0b" + bytes(32), nonce,
                      TPMS_CLOCK_INFO(1, 2, 3, True), 4, info).to_bytes() + trailing
    return cd, att, soft_sign(key, att)


# -- happy paths -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ecc", "rsa"])
def test_check_ak_tpw1(kind: str, ecc_blob: AkBlob, rsa_blob: AkBlob) -> None:
    blob = ecc_blob if kind == "ecc" else rsa_blob
    ak = check_ak(blob, nonce=NONCE)
    assert ak.format == "TPW1"
    assert ak.name == blob.name
    assert ak.public_der == blob.ak_public_der
    assert ak.public == blob.public
    if kind == "ecc":
        assert (ak.scheme.scheme, ak.scheme.hash_alg) == (TPM_ALG.ECDSA, TPM_ALG.SHA256)
        assert isinstance(ak.key, ec.EllipticCurvePublicKey)
    else:
        assert (ak.scheme.scheme, ak.scheme.hash_alg) == (TPM_ALG.RSASSA, TPM_ALG.SHA256)
        assert isinstance(ak.key, rsa.RSAPublicKey) and ak.key.key_size == 2048
    # Every accepted input form gives the same key; without a nonce the binding is not checked.
    assert check_ak(blob.to_bytes()) == ak
    assert check_ak(blob.to_json()) == ak
    assert AkPublic.from_public(blob.public).name == ak.name
    assert AkPublic.from_public(blob.public[2:]).name == ak.name  # bare TPMT_PUBLIC
    with pytest.raises(AttributeError):
        ak.name = b"x"  # type: ignore[misc]


def test_check_ak_pcp(tpm: Tpm) -> None:
    assert tpm.commands is not None
    blob = pcp_blob(tpm.commands, NONCE)
    ak = check_ak(blob, nonce=NONCE)
    assert ak.format == "PCP1"
    assert (ak.scheme.scheme, ak.scheme.hash_alg) == (TPM_ALG.RSASSA, TPM_ALG.SHA1)
    # PCP binds SHA-1(nonce): the raw nonce is not what the provider signed.
    with pytest.raises(VerificationError) as e:
        check_ak(blob, nonce=b"another nonce")
    assert reason(e) == Reason.NONCE_MISMATCH
    # SHA-1 can be refused: every PCP identity key signs RSASSA-SHA1.
    with pytest.raises(VerificationError) as e:
        check_ak(blob, nonce=NONCE, allow_sha1=False)
    assert reason(e) == Reason.WEAK_KEY
    # Same format, machine scope.
    pcp2 = replace(blob, format="PCP2")
    assert check_ak(pcp2.to_bytes(), nonce=NONCE).format == "PCP2"


def test_check_ak_pcp_outside_info_must_carry_the_nonce(tpm: Tpm) -> None:
    assert tpm.commands is not None
    blob = pcp_blob(tpm.commands, NONCE, outside=b"\x00" * 20)
    check_ak(blob)  # the attestation itself is genuine
    with pytest.raises(VerificationError) as e:
        check_ak(blob, nonce=NONCE)
    assert reason(e) == Reason.NONCE_MISMATCH


# -- tampering, each with its Reason ---------------------------------------------------------------


def test_wrong_nonce(ecc_blob: AkBlob) -> None:
    with pytest.raises(VerificationError) as e:
        check_ak(ecc_blob, nonce=NONCE + b"x")
    assert reason(e) == Reason.NONCE_MISMATCH


@pytest.mark.parametrize("kind", ["ecc", "rsa"])
def test_flipped_attest(kind: str, ecc_blob: AkBlob, rsa_blob: AkBlob) -> None:
    blob = ecc_blob if kind == "ecc" else rsa_blob
    for pos in (0, 5, len(blob.attest) // 2, len(blob.attest) - 1):
        with pytest.raises(VerificationError) as e:
            check_ak(replace(blob, attest=flip(blob.attest, pos)))
        assert reason(e) == Reason.BAD_SIGNATURE, pos


@pytest.mark.parametrize("kind", ["ecc", "rsa"])
def test_flipped_signature(kind: str, ecc_blob: AkBlob, rsa_blob: AkBlob) -> None:
    blob = ecc_blob if kind == "ecc" else rsa_blob
    with pytest.raises(VerificationError) as e:
        check_ak(replace(blob, signature=flip(blob.signature, len(blob.signature) - 1)))
    assert reason(e) == Reason.BAD_SIGNATURE
    # The signature's hash is not the key's scheme.
    alg_swapped = blob.signature[:2] + (TPM_ALG.SHA384).to_bytes(2, "big") + blob.signature[4:]
    with pytest.raises(VerificationError) as e:
        check_ak(replace(blob, signature=alg_swapped))
    assert reason(e) == Reason.SCHEME_MISMATCH
    with pytest.raises(VerificationError) as e:
        check_ak(replace(blob, signature=blob.signature + b"\0"))
    assert reason(e) == Reason.MALFORMED


def test_flipped_public(ecc_blob: AkBlob, rsa_blob: AkBlob) -> None:
    # A bit of the RSA modulus: another key, whose signature check fails.
    with pytest.raises(VerificationError) as e:
        check_ak(replace(rsa_blob, public=flip(rsa_blob.public, len(rsa_blob.public) - 1)))
    assert reason(e) == Reason.BAD_SIGNATURE
    # A bit of the ECC point: not on the curve.
    with pytest.raises(VerificationError) as e:
        check_ak(replace(ecc_blob, public=flip(ecc_blob.public, len(ecc_blob.public) - 1)))
    assert reason(e) == Reason.MALFORMED
    # Attributes: clear restricted (bit 16 of objectAttributes at offset 2+4).
    attrs_at = 2 + 2 + 2
    unrestricted = flip(ecc_blob.public, attrs_at + 1, 0)
    with pytest.raises(VerificationError) as e:
        check_ak(replace(ecc_blob, public=unrestricted))
    assert reason(e) == Reason.AK_ATTRIBUTES
    # Set decrypt (bit 17).
    with pytest.raises(VerificationError) as e:
        check_ak(replace(ecc_blob, public=flip(ecc_blob.public, attrs_at + 1, 1)))
    assert reason(e) == Reason.AK_ATTRIBUTES


def test_flipped_creation_data(ecc_blob: AkBlob) -> None:
    cd = ecc_blob.creation_data
    TPMS_CREATION_DATA.from_bytes(cd)
    # The last byte of outsideInfo (the nonce): still parses, no longer hashes to creationHash.
    with pytest.raises(VerificationError) as e:
        check_ak(replace(ecc_blob, creation_data=flip(cd, len(cd) - 1)))
    assert reason(e) == Reason.CREATION_HASH_MISMATCH
    with pytest.raises(VerificationError) as e:
        verify_creation(check_ak(ecc_blob), ecc_blob.public, cd + b"\0", ecc_blob.attest, ecc_blob.signature)
    assert reason(e) == Reason.MALFORMED


def test_creation_of_another_object(ecc_blob: AkBlob, rsa_blob: AkBlob) -> None:
    ak = check_ak(ecc_blob)
    with pytest.raises(VerificationError) as e:
        verify_creation(ak, rsa_blob.public, ecc_blob.creation_data, ecc_blob.attest, ecc_blob.signature)
    assert reason(e) == Reason.NAME_MISMATCH
    # The RSA AK did not sign the ECC AK's creation.
    with pytest.raises(VerificationError) as e:
        verify_creation(check_ak(rsa_blob), ecc_blob.public, ecc_blob.creation_data, ecc_blob.attest,
                        ecc_blob.signature)
    assert reason(e) == Reason.SCHEME_MISMATCH


def test_quote_is_not_a_creation_attestation(tpm: Tpm, ecc_blob: AkBlob) -> None:
    q = tpm.quote(ecc_blob, pcrs=[0], qualifying_data=NONCE)
    with pytest.raises(VerificationError) as e:
        verify_creation(check_ak(ecc_blob), ecc_blob.public, ecc_blob.creation_data, q.attest, q.signature)
    assert reason(e) == Reason.WRONG_TYPE


def test_blob_framing() -> None:
    with pytest.raises(VerificationError) as e:
        check_ak(b"XYZ1" + bytes(40))
    assert reason(e) == Reason.UNSUPPORTED_FORMAT
    with pytest.raises(VerificationError) as e:
        check_ak(b"TPW1" + bytes(3))
    assert reason(e) == Reason.MALFORMED


def test_blob_trailing_bytes(ecc_blob: AkBlob) -> None:
    with pytest.raises(VerificationError) as e:
        check_ak(ecc_blob.to_bytes() + b"\0")
    assert reason(e) == Reason.MALFORMED
    with pytest.raises(VerificationError) as e:
        AkPublic.from_public(ecc_blob.public[2:] + b"\0")
    assert reason(e) == Reason.MALFORMED


def test_software_evidence_after_the_signature() -> None:
    """Checks that follow the signature, on evidence no TPM would sign."""
    key, public = soft_ak("ecc")
    ak = AkPublic.from_public(public)
    cd, att, sig = soft_creation(key, public)
    res = verify_creation(ak, public, cd, att, sig, nonce=NONCE)
    assert res.object_name == ak.name and res.extra_data == NONCE
    cd, att, sig = soft_creation(key, public, magic=0x12345678)
    with pytest.raises(VerificationError) as e:
        verify_creation(ak, public, cd, att, sig)
    assert reason(e) == Reason.BAD_MAGIC
    cd, att, sig = soft_creation(key, public, trailing=b"\0")
    with pytest.raises(VerificationError) as e:
        verify_creation(ak, public, cd, att, sig)
    assert reason(e) == Reason.MALFORMED
    # The creation data may also come as TPM2B_CREATION_DATA.
    cd, att, sig = soft_creation(key, public)
    verify_creation(ak, public, len(cd).to_bytes(2, "big") + cd, att, sig, nonce=NONCE)


# -- keys that are not acceptable AKs ----------------------------------------------------------------


def key_public(tpm: Tpm, template: Any) -> bytes:
    assert tpm.commands is not None
    handle, res = create_key(tpm.commands, template)
    tpm.commands.flush_context(handle)
    return bytes(res.public_bytes)


def test_unrestricted_signing_key(tpm: Tpm) -> None:
    attrs = T.AK_ATTRIBUTES & ~TPMA_OBJECT.restricted
    public = key_public(tpm, replace(T.AK_ECC_TEMPLATE, object_attributes=attrs))
    with pytest.raises(VerificationError) as e:
        AkPublic.from_public(public)
    assert reason(e) == Reason.AK_ATTRIBUTES


def test_storage_key_is_not_an_ak(tpm: Tpm) -> None:
    assert tpm.commands is not None
    srk = tpm.commands.create_primary(TPM_RH.OWNER, T.SRK_ECC_TEMPLATE)
    tpm.commands.flush_context(srk.handle)
    with pytest.raises(VerificationError) as e:
        AkPublic.from_public(srk.public_bytes)
    assert reason(e) == Reason.AK_ATTRIBUTES


def test_rsa_1024_is_weak(tpm: Tpm) -> None:
    template = replace(T.AK_RSA_TEMPLATE, parameters=TPMS_RSA_PARMS(
        T.SYM_NULL, TPMT_SCHEME(TPM_ALG.RSASSA, TPM_ALG.SHA256), 1024, 0))
    public = key_public(tpm, template)
    with pytest.raises(VerificationError) as e:
        AkPublic.from_public(public)
    assert reason(e) == Reason.WEAK_KEY


def test_non_nist_curve_is_weak(tpm: Tpm) -> None:
    template = replace(T.AK_ECC_TEMPLATE, parameters=TPMS_ECC_PARMS(
        T.SYM_NULL, TPMT_SCHEME(TPM_ALG.ECDSA, TPM_ALG.SHA256), TPM_ECC_CURVE.BN_P256, T.SCHEME_NULL))
    public = key_public(tpm, template)  # swtpm (libtpms) implements BN P-256
    with pytest.raises(VerificationError) as e:
        AkPublic.from_public(public)
    assert reason(e) == Reason.WEAK_KEY
    p192 = replace(template, parameters=replace(template.parameters, curve_id=TPM_ECC_CURVE.NIST_P192),
                   unique=TPMS_ECC_POINT(bytes(24), bytes(24)))
    with pytest.raises(VerificationError) as e:
        AkPublic.from_public(TPM2B_PUBLIC(p192).to_bytes())
    assert reason(e) == Reason.WEAK_KEY


def test_sha1_name_alg_refused_when_asked(tpm: Tpm) -> None:
    public = key_public(tpm, replace(T.AK_ECC_TEMPLATE, name_alg=TPM_ALG.SHA1))
    AkPublic.from_public(public)
    with pytest.raises(VerificationError) as e:
        AkPublic.from_public(public, allow_sha1=False)
    assert reason(e) == Reason.WEAK_KEY


# -- credential challenges ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "ecc"])
def test_make_credential_activates(tpm: Tpm, ecc_blob: AkBlob, kind: str) -> None:
    ek = tpm.ek(kind)  # type: ignore[arg-type]
    ak = check_ak(ecc_blob)
    challenge, secret = make_credential(ek.public, ak.name)
    assert len(secret) == 32
    verify_activation(secret, tpm.activate_credential(ecc_blob, challenge))
    # Other input forms: EkInfo, TPMT_PUBLIC bytes, the AkPublic itself, a chosen secret.
    challenge, secret = make_credential(ek, ak, secret=b"s" * 16)
    assert tpm.activate_credential(ecc_blob, challenge.to_bytes()) == b"s" * 16
    with pytest.raises(VerificationError) as e:
        verify_activation(secret, b"t" * 16)
    assert reason(e) == Reason.CREDENTIAL_MISMATCH


def test_make_credential_from_a_bare_key(tpm: Tpm, ecc_blob: AkBlob) -> None:
    ek = tpm.ek("rsa")
    key = check_ak(ecc_blob)  # the AK's Name
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    challenge, secret = make_credential(load_der_public_key(ek.public_der), key.name)
    assert tpm.activate_credential(ecc_blob, challenge) == secret


def test_make_credential_refuses_non_ek(ecc_blob: AkBlob) -> None:
    with pytest.raises(VerificationError) as e:
        make_credential(ecc_blob.public, check_ak(ecc_blob).name)  # a signing key
    assert reason(e) == Reason.EK_ATTRIBUTES
    ek_like = replace(T.EK_RSA_TEMPLATE, unique=os.urandom(255) + b"\x01",
                      parameters=replace(T.EK_RSA_TEMPLATE.parameters, symmetric=T.SYM_NULL))
    with pytest.raises(VerificationError) as e:
        make_credential(TPM2B_PUBLIC(ek_like).to_bytes(), check_ak(ecc_blob).name)
    assert reason(e) == Reason.EK_ATTRIBUTES
    with pytest.raises(VerificationError) as e:
        make_credential(EkInfo("rsa", TPM2B_PUBLIC(T.EK_RSA_TEMPLATE).to_bytes(), b"", None), b"\x00\x0b" + bytes(5))
    assert reason(e) == Reason.MALFORMED


def test_make_credential_rejects_oversized_secret(tpm: Tpm, ecc_blob: AkBlob) -> None:
    ek = tpm.ek("rsa")
    with pytest.raises(ValueError):
        make_credential(ek.public, check_ak(ecc_blob).name, secret=bytes(33))


@pytest.mark.parametrize("kind", ["rsa", "ecc", "ecc384"])
def test_check_ek_names_the_tpms_ek(tpm: Tpm, kind: str) -> None:
    from tpm2_attest.verify import check_ek

    ek = tpm.ek(kind)  # type: ignore[arg-type]
    checked = check_ek(ek.public)
    assert checked.name == ek.name
    assert checked.name_alg == ek.public_area.name_alg
    assert check_ek(checked.key).name is None  # a bare key has no public area, so no Name


def test_check_ek_refuses_signing_keys(ecc_blob: AkBlob) -> None:
    from tpm2_attest.verify import check_ek

    with pytest.raises(VerificationError) as ei:
        check_ek(ecc_blob.public)
    assert ei.value.reason == Reason.EK_ATTRIBUTES
    with pytest.raises(VerificationError) as ei:
        check_ek(b"\x00\x02\x00")
    assert ei.value.reason == Reason.MALFORMED
