"""Every TPM 2.0 structure round-trips, and malformed bytes raise ParseError (never a crash)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tpm2_attest.tpm2 import templates as T
from tpm2_attest.tpm2.constants import TPM_ALG, TPM_CAP, TPM_GENERATED_VALUE, TPM_ST
from tpm2_attest.tpm2.keys import object_name, parse_public, public_der, public_key_from_public
from tpm2_attest.tpm2.marshal import ParseError, Reader, Writer
from tpm2_attest.tpm2.rc import decode
from tpm2_attest.tpm2.structures import (
    TPM2B_CREATION_DATA,
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_NV_PUBLIC,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPML_DIGEST,
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMS_ALG_PROPERTY,
    TPMS_ATTEST,
    TPMS_CAPABILITY_DATA,
    TPMS_CERTIFY_INFO,
    TPMS_CLOCK_INFO,
    TPMS_COMMAND_AUDIT_INFO,
    TPMS_CREATION_DATA,
    TPMS_CREATION_INFO,
    TPMS_NV_CERTIFY_INFO,
    TPMS_NV_DIGEST_CERTIFY_INFO,
    TPMS_NV_PUBLIC,
    TPMS_PCR_SELECTION,
    TPMS_QUOTE_INFO,
    TPMS_SENSITIVE_CREATE,
    TPMS_SESSION_AUDIT_INFO,
    TPMS_TAGGED_PCR_SELECT,
    TPMS_TAGGED_PROPERTY,
    TPMS_TIME_ATTEST_INFO,
    TPMS_TIME_INFO,
    TPMT_HA,
    TPMT_SCHEME,
    TPMT_SIGNATURE,
    TPMT_SYM_DEF_OBJECT,
    TPMT_TK_CREATION,
    Marshallable,
    pcr_selection,
)

CLOCK = TPMS_CLOCK_INFO(123456789, 7, 3, True)
SEL = pcr_selection(TPM_ALG.SHA256, [0, 1, 2, 7, 16])
NAME = b"\x00\x0b" + bytes(range(32))


def _attest(typ: int, info: object) -> TPMS_ATTEST:
    return TPMS_ATTEST(TPM_GENERATED_VALUE, typ, NAME, b"nonce", CLOCK, 0x0102030405060708, info)  # type: ignore[arg-type]


SAMPLES: list[Marshallable] = [
    T.EK_RSA_TEMPLATE,
    T.EK_ECC_TEMPLATE,
    T.EK_ECC_P384_TEMPLATE,
    T.SRK_ECC_TEMPLATE,
    T.AK_ECC_TEMPLATE,
    T.AK_RSA_TEMPLATE,
    TPM2B_PUBLIC(T.AK_ECC_TEMPLATE),
    TPMS_SENSITIVE_CREATE(b"auth", b"data"),
    TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(b"a", b"")),
    SEL,
    TPML_PCR_SELECTION(),
    TPML_DIGEST((bytes(32), b"\x01" * 20)),
    TPML_DIGEST_VALUES((TPMT_HA(TPM_ALG.SHA1, bytes(20)), TPMT_HA(TPM_ALG.SHA256, b"\x02" * 32))),
    TPMT_SYM_DEF_OBJECT(TPM_ALG.AES, 128, TPM_ALG.CFB),
    TPMT_SYM_DEF_OBJECT(TPM_ALG.XOR, TPM_ALG.SHA256),
    TPMT_SYM_DEF_OBJECT(),
    TPMT_SCHEME(TPM_ALG.ECDSA, TPM_ALG.SHA256),
    TPMT_SCHEME(TPM_ALG.ECDAA, TPM_ALG.SHA256, 5),
    TPMT_SCHEME(TPM_ALG.RSAES),
    CLOCK,
    TPMS_TIME_INFO(99, CLOCK),
    _attest(TPM_ST.ATTEST_QUOTE, TPMS_QUOTE_INFO(SEL, bytes(32))),
    _attest(TPM_ST.ATTEST_CREATION, TPMS_CREATION_INFO(NAME, bytes(32))),
    _attest(TPM_ST.ATTEST_CERTIFY, TPMS_CERTIFY_INFO(NAME, NAME)),
    _attest(TPM_ST.ATTEST_COMMAND_AUDIT, TPMS_COMMAND_AUDIT_INFO(5, TPM_ALG.SHA256, bytes(32), bytes(32))),
    _attest(TPM_ST.ATTEST_SESSION_AUDIT, TPMS_SESSION_AUDIT_INFO(True, bytes(32))),
    _attest(TPM_ST.ATTEST_TIME, TPMS_TIME_ATTEST_INFO(TPMS_TIME_INFO(1, CLOCK), 42)),
    _attest(TPM_ST.ATTEST_NV, TPMS_NV_CERTIFY_INFO(NAME, 4, b"contents")),
    _attest(TPM_ST.ATTEST_NV_DIGEST, TPMS_NV_DIGEST_CERTIFY_INFO(NAME, bytes(32))),
    TPMS_CREATION_DATA(SEL, bytes(32), 1, TPM_ALG.SHA256, NAME, NAME, b"outside"),
    TPM2B_CREATION_DATA(TPMS_CREATION_DATA(TPML_PCR_SELECTION(), b"", 0, TPM_ALG.NULL, b"", b"", b"")),
    TPMT_TK_CREATION(TPM_ST.CREATION, 0x40000001, bytes(32)),
    TPMT_SIGNATURE(TPM_ALG.RSASSA, TPM_ALG.SHA256, b"\x05" * 256),
    TPMT_SIGNATURE(TPM_ALG.RSAPSS, TPM_ALG.SHA1, b"\x05" * 256),
    TPMT_SIGNATURE(TPM_ALG.ECDSA, TPM_ALG.SHA256, b"", b"\x01" * 32, b"\x02" * 32),
    TPMT_SIGNATURE(TPM_ALG.HMAC, TPM_ALG.SHA256, b"\x03" * 32),
    TPMT_SIGNATURE(TPM_ALG.NULL),
    TPMS_CAPABILITY_DATA(TPM_CAP.TPM_PROPERTIES, (TPMS_TAGGED_PROPERTY(0x100, 0x322E3000),)),
    TPMS_CAPABILITY_DATA(TPM_CAP.ALGS, (TPMS_ALG_PROPERTY(TPM_ALG.RSA, 9),)),
    TPMS_CAPABILITY_DATA(TPM_CAP.HANDLES, (0x81000001, 0x81010001)),
    TPMS_CAPABILITY_DATA(TPM_CAP.PCRS, SEL),
    TPMS_CAPABILITY_DATA(TPM_CAP.PCR_PROPERTIES, (TPMS_TAGGED_PCR_SELECT(0, b"\xff\xff\xff"),)),
    TPMS_CAPABILITY_DATA(TPM_CAP.ECC_CURVES, (3, 4)),
    TPMS_NV_PUBLIC(0x01C00002, TPM_ALG.SHA256, 0x62072001, b"", 1016),
    TPM2B_NV_PUBLIC(TPMS_NV_PUBLIC(0x01C00002, TPM_ALG.SHA256, 0, b"", 1)),
    TPM2B_ID_OBJECT(b"\x00\x20" + bytes(32) + b"enc"),
    TPM2B_ENCRYPTED_SECRET(bytes(256)),
]


@pytest.mark.parametrize("obj", SAMPLES, ids=lambda o: type(o).__name__)
def test_round_trip(obj: Marshallable) -> None:
    data = obj.to_bytes()
    again = type(obj).from_bytes(data)
    assert again == obj
    assert again.to_bytes() == data


@pytest.mark.parametrize("obj", SAMPLES, ids=lambda o: type(o).__name__)
def test_every_truncation_and_trailing_byte_raises_parse_error(obj: Marshallable) -> None:
    data = obj.to_bytes()
    for n in range(len(data)):
        with pytest.raises(ParseError):
            type(obj).from_bytes(data[:n])
    with pytest.raises(ParseError, match="trailing"):
        type(obj).from_bytes(data + b"\0")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SAMPLES), st.data())
def test_mutations_never_crash(obj: Marshallable, data: st.DataObject) -> None:
    raw = bytearray(obj.to_bytes())
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] = data.draw(st.integers(0, 255))
    with contextlib.suppress(ParseError):
        type(obj).from_bytes(bytes(raw))


def test_oversized_lengths_rejected_before_allocation() -> None:
    # A TPML_PCR_SELECTION claiming 2**32-1 banks, a TPML_DIGEST claiming 9 digests.
    with pytest.raises(ParseError, match="count"):
        TPML_PCR_SELECTION.from_bytes(b"\xff\xff\xff\xff")
    with pytest.raises(ParseError, match="exceeds maximum"):
        TPML_DIGEST.from_bytes((9).to_bytes(4, "big") + b"\x00\x00" * 9)
    with pytest.raises(ParseError, match="sizeofSelect"):
        TPMS_PCR_SELECTION.from_bytes(b"\x00\x0b\xff" + b"\xff" * 255)
    with pytest.raises(ParseError, match="exceeds maximum"):
        TPMS_ATTEST.from_bytes(TPM_GENERATED_VALUE.to_bytes(4, "big") + b"\x80\x18\x01\x00" + bytes(300))


def test_unknown_selectors_raise() -> None:
    with pytest.raises(ParseError, match="unknown attestation type"):
        TPMS_ATTEST.from_bytes(b"\xff\x54\x43\x47\x80\x99" + bytes(40))
    with pytest.raises(ParseError, match="unknown signature"):
        TPMT_SIGNATURE.from_bytes(b"\x00\x99")
    with pytest.raises(ParseError, match="unknown public type"):
        parse_public(b"\x00\x99\x00\x0b" + bytes(20))
    with pytest.raises(ParseError, match="TPMI_YES_NO"):
        TPMS_CLOCK_INFO.from_bytes(bytes(16) + b"\x02")


def test_reader_never_raises_index_error() -> None:
    r = Reader(b"\x01")
    with pytest.raises(ParseError):
        r.u16()
    with pytest.raises(ParseError):
        r.raw(-1)
    w = Writer()
    with pytest.raises(ValueError):
        w.tpm2b(bytes(70000))


def test_pcr_selection_bitmap() -> None:
    s = TPMS_PCR_SELECTION.from_indices(TPM_ALG.SHA256, [0, 7, 8, 23])
    assert s.pcr_select == b"\x81\x01\x80"
    assert s.indices() == [0, 7, 8, 23]
    assert TPMS_PCR_SELECTION.from_indices(TPM_ALG.SHA1, [30]).pcr_select == b"\0\0\0\x40"
    assert TPMS_PCR_SELECTION(TPM_ALG.SHA256, bytearray(b"\x81\x01\x80")).indices() == [0, 7, 8, 23]


def test_names_and_public_keys() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    from tpm2_attest.tpm2.keys import ecc_point_of

    _cid, point = ecc_point_of(key)
    pub = T.with_unique(T.AK_ECC_TEMPLATE, point)
    assert public_key_from_public(pub).public_numbers() == key.public_numbers()
    assert public_der(pub) == public_der(key)
    name = object_name(pub)
    assert name[:2] == b"\x00\x0b" and len(name) == 34
    # TPM2B and TPMT forms are both accepted and give the same Name.
    assert object_name(parse_public(TPM2B_PUBLIC(pub).to_bytes())) == name
    assert object_name(parse_public(pub.to_bytes())) == name
    rkey = rsa.generate_private_key(65537, 2048).public_key()
    rpub = T.with_unique(T.AK_RSA_TEMPLATE, rkey.public_numbers().n.to_bytes(256, "big"))
    assert public_key_from_public(rpub).public_numbers() == rkey.public_numbers()
    # A point that is not on the curve is refused.
    with pytest.raises(ParseError):
        public_key_from_public(T.with_unique(T.AK_ECC_TEMPLATE, type(point)(b"\x01" * 32, b"\x02" * 32)))


def test_template_attributes_match_the_spec() -> None:
    assert T.EK_ATTRIBUTES == 0x000300B2
    assert T.SRK_ATTRIBUTES == 0x00030472
    assert T.AK_ATTRIBUTES == 0x00050472
    # The L-1 RSA EK template marshals to the size the EK profile gives (314 bytes with
    # a 256-byte zero unique) and its Name is deterministic.
    assert len(T.EK_RSA_TEMPLATE.to_bytes()) == 314


@pytest.mark.parametrize(
    ("rc", "text"),
    [
        (0x18B, "TPM_RC_HANDLE (0x18b) on handle 1"),
        (0x1C4, "TPM_RC_VALUE (0x1c4) on parameter 1"),
        (0x98E, "TPM_RC_AUTH_FAIL (0x98e) on session 1"),
        (0x921, "TPM_RC_LOCKOUT (0x921)"),
        (0x922, "TPM_RC_RETRY (0x922)"),
        (0x101, "TPM_RC_FAILURE (0x101)"),
        (0x143, "TPM_RC_COMMAND_CODE (0x143)"),
        (0x080A0001, "TSS2_TCTI_RC_LAYER"),
    ],
)
def test_rc_decoding(rc: int, text: str) -> None:
    assert str(decode(rc)).startswith(text)


def test_vendor_rc() -> None:
    d = decode(0x500 | 0x12)
    assert d.kind == "vendor"


def test_ek_policies_reproduce_the_profile_values() -> None:
    # Published in the TCG EK Credential Profile ("Computing PolicyA/PolicyB"); we compute A and
    # B from the policy commands, so a wrong formula or constant fails here.
    assert T.EK_POLICY_A[TPM_ALG.SHA256] == T.EK_POLICY_ENDORSEMENT
    assert T.EK_POLICY_A[TPM_ALG.SHA384].hex() == (
        "8bbf2266537c171cb56e403c4dc1d4b64f432611dc386e6f532050c3278c930e"
        "143e8bb1133824ccb431053871c6db53")
    assert T.EK_POLICY_B[TPM_ALG.SHA256].hex() == (
        "ca3d0a99a2b93906f7a3342414efcfb3a385d44cd1fd459089d19b5071c0b7a0")
    assert T.EK_POLICY_B[TPM_ALG.SHA384].hex() == (
        "b26e7d28d11a50bc53d882bcf5fd3a1a074148bb35d3b4e4cb1c0ad9bde419ca"
        "cb47ba09699646150f9fc000f3f80e12")
    assert T.EK_POLICY_B[TPM_ALG.SHA512].hex() == (
        "b8221ca69e8550a4914de3faa6a18c072cc01208073a928d5d66d59ef79e49a4"
        "29c41a6b269571d57edb25fbdb1838425608b413cd616a5f6db5b6071af99bea")
