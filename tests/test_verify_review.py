"""Security review of the verifier (verify.ak, verify.quote, verify.credential, evidence).

Each test is an attack on the verifier with evidence the attacker controls (AK blob, quote
bytes, PCR values, JSON); each must end in ``VerificationError`` with the right Reason, never
in a false "valid" nor in another exception. Quotes are made with a software key whose public
area claims to be an AK (what an attacker can present), so no TPM is needed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from tpm2_attest.evidence import Quote
from tpm2_attest.tpm2 import templates as T
from tpm2_attest.tpm2.constants import TPM_ALG, TPM_GENERATED_VALUE, TPM_ST
from tpm2_attest.tpm2.structures import (
    TPM2B_PUBLIC,
    TPML_PCR_SELECTION,
    TPMS_ATTEST,
    TPMS_CLOCK_INFO,
    TPMS_CREATION_DATA,
    TPMS_CREATION_INFO,
    TPMS_ECC_POINT,
    TPMS_QUOTE_INFO,
    TPMT_PUBLIC,
    TPMT_SIGNATURE,
    pcr_selection,
)
from tpm2_attest.verify import (
    AkPublic,
    Reason,
    VerificationError,
    check_ak,
    verify_creation,
    verify_quote,
)

NONCE = os.urandom(32)
VALUES = {0: bytes(32), 16: b"\x16" * 32}


def soft_ak() -> tuple[ec.EllipticCurvePrivateKey, AkPublic]:
    key = ec.generate_private_key(ec.SECP256R1())
    n = key.public_key().public_numbers()
    area = replace(T.AK_ECC_TEMPLATE, unique=TPMS_ECC_POINT(n.x.to_bytes(32, "big"), n.y.to_bytes(32, "big")))
    return key, AkPublic.from_public(TPM2B_PUBLIC(area).to_bytes())


def ecdsa_sig(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = utils.decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return TPMT_SIGNATURE(TPM_ALG.ECDSA, TPM_ALG.SHA256, r=r.to_bytes(32, "big"), s=s.to_bytes(32, "big")).to_bytes()


def soft_quote(key: ec.EllipticCurvePrivateKey, values: dict[int, bytes] = VALUES) -> Quote:
    digest = hashlib.sha256(b"".join(values[i] for i in sorted(values))).digest()
    att = TPMS_ATTEST(TPM_GENERATED_VALUE, TPM_ST.ATTEST_QUOTE, b"\x00\x0b" + bytes(32), NONCE,
                      TPMS_CLOCK_INFO(10, 1, 0, True), 7,
                      TPMS_QUOTE_INFO(pcr_selection(TPM_ALG.SHA256, sorted(values)), digest)).to_bytes()
    return Quote(att, ecdsa_sig(key, att), {"sha256": dict(values)})


def reason_of(ak: Any, quote: Any, **kw: Any) -> Reason:
    kw.setdefault("nonce", NONCE)
    with pytest.raises(VerificationError) as e:
        verify_quote(ak, quote, **kw)
    return e.value.reason


# -- JSON evidence: only VerificationError, whatever the text ---------------------------------


def test_quote_json_with_a_non_ascii_digit_pcr_index_is_malformed() -> None:
    """'²' passes str.isdigit() but int() refuses it: a ValueError escaped Quote.from_dict."""
    key, ak = soft_ak()
    q = soft_quote(key)
    assert verify_quote(ak, q.to_json(), nonce=NONCE).pcrs == VALUES
    for index in ("\u00b2", "\u0661\u0666"):  # superscript two; Arabic-Indic "16"
        obj = q.to_dict()
        vals = obj["pcrs"]["sha256"]
        vals[index] = vals.pop("16")
        assert reason_of(ak, json.dumps(obj)) == Reason.MALFORMED


def test_quote_json_with_two_spellings_of_one_pcr_index_is_malformed() -> None:
    """"0" and "00" are the same PCR: keeping whichever comes last lets two readers of one
    piece of evidence disagree on PCR 0's value."""
    key, ak = soft_ak()
    obj = soft_quote(key).to_dict()
    obj["pcrs"]["sha256"]["00"] = obj["pcrs"]["sha256"]["0"]
    assert reason_of(ak, json.dumps(obj)) == Reason.MALFORMED


@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000,  # RecursionError in the JSON decoder
    '{"version": ' + "1" * 5000 + "}",  # ValueError: int digit limit (not a JSONDecodeError)
])
def test_hostile_json_text_is_malformed(text: str) -> None:
    _, ak = soft_ak()
    assert reason_of(ak, text) == Reason.MALFORMED
    with pytest.raises(VerificationError) as e:
        check_ak(text)
    assert e.value.reason == Reason.MALFORMED
    with pytest.raises(VerificationError):  # bytes: "[" is no blob magic, "{" is JSON
        check_ak(text.encode())


# -- supplied PCR values ------------------------------------------------------------------------


@pytest.mark.parametrize("pcrs", [
    {"sha256": [VALUES[0], VALUES[16]]},  # a list: itemgetter indexes it by position
    {"sha256": b"\0" * 2},  # bytes of the bank's length
    {"sha256": {0: 0, 16: 16}},  # ints: len() of an int
    {"sha256": {0: None, 16: None}},
    {0: 5, 16: 6},
])
def test_non_mapping_or_non_bytes_pcr_values_are_refused(pcrs: Any) -> None:
    key, ak = soft_ak()
    q = soft_quote(key)
    for _ in range(2):  # generic parse, then the learnt layout
        assert reason_of(ak, replace(q, pcrs=pcrs)) in (Reason.MALFORMED, Reason.PCR_SELECTION)
        verify_quote(ak, q, nonce=NONCE)


def test_result_pcrs_are_the_values_that_were_verified() -> None:
    """Mutable values (bytearray) changed after verify_quote returned must not show in the
    result: QuoteResult.pcrs is built lazily, so it must not keep references to them."""
    key, ak = soft_ak()
    q = soft_quote(key)
    vals = {i: bytearray(v) for i, v in VALUES.items()}
    res = verify_quote(ak, replace(q, pcrs={"sha256": vals}), nonce=NONCE)  # type: ignore[dict-item]
    vals[0][:] = b"\xff" * 32
    assert res.pcrs == VALUES and all(type(v) is bytes for v in res.pcrs.values())
    assert res == verify_quote(ak, q, nonce=NONCE)
    mv = {i: memoryview(bytearray(v)) for i, v in VALUES.items()}
    res = verify_quote(ak, (q.attest, q.signature, {"sha256": mv}), nonce=NONCE)
    mv[16][0] = 0
    assert res.pcrs == VALUES


# -- SHA-1 refused means refused everywhere ------------------------------------------------------


def _creation(key: ec.EllipticCurvePrivateKey, public: bytes, name_alg_hash: Any) -> tuple[bytes, bytes, bytes]:
    """(creation data, attest, signature) certifying the creation of ``public`` (TPMT bytes)."""
    cd = TPMS_CREATION_DATA(TPML_PCR_SELECTION(), b"", 0, TPM_ALG.SHA256, b"\x40\x00\x00\x01", b"", b"").to_bytes()
    area = TPMT_PUBLIC.from_bytes(public)
    name = area.name_alg.to_bytes(2, "big") + name_alg_hash(public).digest()
    att = TPMS_ATTEST(TPM_GENERATED_VALUE, TPM_ST.ATTEST_CREATION, b"\x00\x0b" + bytes(32), NONCE,
                      TPMS_CLOCK_INFO(10, 1, 0, True), 7,
                      TPMS_CREATION_INFO(name, name_alg_hash(cd).digest())).to_bytes()
    return cd, att, ecdsa_sig(key, att)


def test_verify_creation_refuses_a_sha1_named_object_when_sha1_is_refused() -> None:
    """allow_sha1=False refused SHA-1 in the signer only: an object whose Name and
    creationHash are SHA-1 (nameAlg SHA-1) was still certified."""
    key, ak = soft_ak()
    obj = replace(T.AK_ECC_TEMPLATE, name_alg=TPM_ALG.SHA1, unique=TPMS_ECC_POINT(b"\x01" * 32, b"\x02" * 32))
    public = obj.to_bytes()
    cd, att, sig = _creation(key, public, hashlib.sha1)
    assert verify_creation(ak, public, cd, att, sig, nonce=NONCE).object_name[:2] == b"\x00\x04"
    with pytest.raises(VerificationError) as e:
        verify_creation(ak, public, cd, att, sig, nonce=NONCE, allow_sha1=False)
    assert e.value.reason == Reason.WEAK_KEY
    # The same with a SHA-256 object passes.
    public = replace(obj, name_alg=TPM_ALG.SHA256).to_bytes()
    cd, att, sig = _creation(key, public, hashlib.sha256)
    verify_creation(ak, public, cd, att, sig, nonce=NONCE, allow_sha1=False)


# -- EK strength -------------------------------------------------------------------------------------


def test_rsa_ek_strength_is_the_modulus_not_the_keybits_field() -> None:
    """keyBits says 2048 but the modulus is 1024 bits: the secret was encrypted to it."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    from tpm2_attest.verify import check_ek, make_credential

    def area(bits: int) -> bytes:
        n = rsa.generate_private_key(65537, bits).public_key().public_numbers().n
        return replace(T.EK_RSA_TEMPLATE, unique=n.to_bytes(bits // 8, "big")).to_bytes()

    _, ak = soft_ak()
    check_ek(area(2048))
    make_credential(area(2048), ak)
    weak = area(1024)
    for f in (lambda: check_ek(weak), lambda: make_credential(weak, ak)):
        with pytest.raises(VerificationError) as e:
            f()
        assert e.value.reason == Reason.WEAK_KEY
