"""RSASSA signatures are checked as RFC 8017 8.2.2 does: OpenSSL recovers the encoded message
and checks its 00 01 FF..FF 00 frame, we compare the rest with DigestInfo || H(message).

Each case is a signature made by the raw private operation over a crafted encoded message, so
that frames OpenSSL's verify refuses can be made at all; for every case our verdict (quote and
bare TPMT_SIGNATURE check) must be OpenSSL's ``key.verify`` verdict, and the well-formed one
must pass (which shows the crafting is right).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tpm2_attest.evidence import Quote
from tpm2_attest.tpm2.constants import TPM_ALG, TPM_GENERATED_VALUE, TPM_ST
from tpm2_attest.tpm2.structures import (
    TPMS_ATTEST,
    TPMS_CLOCK_INFO,
    TPMS_QUOTE_INFO,
    TPMT_SIGNATURE,
    pcr_selection,
)
from tpm2_attest.verify import AkPublic, Reason, VerificationError, verify_quote

NONCE = b"\x5a" * 32
HASHES = {  # TPM_ALG: (hashlib name, cryptography class, DER OID of the hash)
    TPM_ALG.SHA1: ("sha1", hashes.SHA1, "06052b0e03021a"),
    TPM_ALG.SHA256: ("sha256", hashes.SHA256, "0609608648016503040201"),
    TPM_ALG.SHA384: ("sha384", hashes.SHA384, "0609608648016503040202"),
    TPM_ALG.SHA512: ("sha512", hashes.SHA512, "0609608648016503040203"),
}


def digest_info(alg: int, digest: bytes, *, null: bool = True) -> bytes:
    """DER DigestInfo built field by field (not the library's table), optionally without NULL."""
    oid = bytes.fromhex(HASHES[alg][2])
    algid = oid + (b"\x05\x00" if null else b"")
    algid = b"\x30" + bytes([len(algid)]) + algid
    body = algid + b"\x04" + bytes([len(digest)]) + digest
    return b"\x30" + bytes([len(body)]) + body


def frame(t: bytes, size: int = 256, *, block: int = 1, ff: int | None = None, sep: bytes = b"\x00") -> bytes:
    """00 block FF*ff sep T, FF-count filled to `size` unless given (then padded or cut at the end)."""
    n_ff = size - 3 - len(t) if ff is None else ff
    em = b"\x00" + bytes([block]) + b"\xff" * n_ff + sep + t
    return em[:size] if len(em) >= size else em + b"\x00" * (size - len(em))


KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def raw_sign(em: bytes) -> bytes:
    nums = KEY.private_numbers()
    n = nums.public_numbers.n
    return pow(int.from_bytes(em, "big") % n, nums.d, n).to_bytes(256, "big")


def attest_for(alg: int, clock: int = 10) -> tuple[bytes, dict[int, bytes]]:
    values = {0: bytes(32), 7: b"\x07" * 32}
    digest = hashlib.new(HASHES[alg][0], b"".join(values[i] for i in sorted(values))).digest()
    att = TPMS_ATTEST(TPM_GENERATED_VALUE, TPM_ST.ATTEST_QUOTE, b"\x00\x0b" + bytes(32), NONCE,
                      TPMS_CLOCK_INFO(clock, 1, 0, True), 7,
                      TPMS_QUOTE_INFO(pcr_selection(TPM_ALG.SHA256, sorted(values)), digest)).to_bytes()
    return att, values


def cases(alg: int, att: bytes) -> dict[str, bytes]:
    """Encoded messages: the right one, and frames or DigestInfos that differ from it."""
    h = hashlib.new(HASHES[alg][0], att).digest()
    t = digest_info(alg, h)
    other = next(a for a in HASHES if a != alg)
    return {
        "right": frame(t),
        "no NULL parameters": frame(digest_info(alg, h, null=False)),
        "another hash's DigestInfo": frame(digest_info(other, hashlib.new(HASHES[other][0], att).digest())),
        "another hash's OID, this digest": frame(digest_info(other, h)),
        "bare digest, no DigestInfo": frame(h),
        "digest of other bytes": frame(digest_info(alg, hashlib.new(HASHES[alg][0], att + b"x").digest())),
        "block type 2": frame(t, block=2),
        "block type 0": frame(t, block=0),
        "7 FF bytes": frame(t, ff=7),
        "a byte after the digest": frame(t + b"\x00", ff=256 - 3 - len(t) - 1),
        "a byte before the DigestInfo": frame(b"\x00" + t, ff=256 - 3 - len(t) - 1),
        "a zero inside the FF run": frame(t)[:40] + b"\x00" + frame(t)[41:],
        "FE inside the FF run": frame(t)[:40] + b"\xfe" + frame(t)[41:],
        "01 as the last padding byte": frame(t)[: 256 - len(t) - 2] + b"\x01" + frame(t)[256 - len(t) - 1 :],
        "no zero separator": frame(t, sep=b"\xff"),
        "leading byte 01": b"\x01" + frame(t)[1:],
    }


def openssl_says(sig: bytes, att: bytes, alg: int) -> bool:
    try:
        KEY.public_key().verify(sig, att, padding.PKCS1v15(), HASHES[alg][1]())
    except InvalidSignature:
        return False
    return True


def ours_says(check: Callable[[], object]) -> bool:
    try:
        check()
    except VerificationError as exc:
        assert exc.reason == Reason.BAD_SIGNATURE, exc
        return False
    return True


@pytest.mark.parametrize("alg", list(HASHES), ids=[HASHES[a][0] for a in HASHES])
def test_rsassa_verdicts_are_openssls(alg: int) -> None:
    ak = AkPublic.from_key(KEY.public_key(), hash_alg=alg)
    att, values = attest_for(alg)
    verdicts = {}
    for label, em in cases(alg, att).items():
        raw = raw_sign(em)
        tpmt = TPMT_SIGNATURE(TPM_ALG.RSASSA, alg, raw).to_bytes()
        quote = Quote(att, tpmt, {"sha256": values})
        expected = openssl_says(raw, att, alg)
        assert ours_says(lambda t=tpmt: ak.verify_signature(att, t)) == expected, label
        assert ours_says(lambda q=quote: verify_quote(ak, q, nonce=NONCE)) == expected, label
        assert ours_says(lambda q=quote: verify_quote(ak.public, q.to_json(), nonce=NONCE)) == expected, label
        verdicts[label] = expected
    assert verdicts.pop("right") is True
    assert not any(verdicts.values()), verdicts  # OpenSSL refuses every other frame too


def test_signature_not_below_the_modulus_is_refused() -> None:
    ak = AkPublic.from_key(KEY.public_key())
    att, values = attest_for(TPM_ALG.SHA256)
    n = KEY.public_key().public_numbers().n
    for raw in (n.to_bytes(256, "big"), (n + 1).to_bytes(256, "big"), b"\xff" * 256):
        quote = Quote(att, TPMT_SIGNATURE(TPM_ALG.RSASSA, TPM_ALG.SHA256, raw).to_bytes(), {"sha256": values})
        assert not openssl_says(raw, att, TPM_ALG.SHA256)
        assert not ours_says(lambda q=quote: verify_quote(ak, q, nonce=NONCE))


def test_signature_shorter_than_the_modulus_is_refused() -> None:
    """RFC 8017 8.2.2 step 1: a signature is exactly k octets. OpenSSL's recover takes a valid
    signature with its leading zero byte dropped (its verify does not): the TPMT_SIGNATURE
    length check is what keeps the recover-and-compare check equal to verify there."""
    ak = AkPublic.from_key(KEY.public_key())
    for clock in range(10, 20_000):  # a valid signature whose top byte is zero (about 1 in 200)
        att, values = attest_for(TPM_ALG.SHA256, clock)
        raw = KEY.sign(att, padding.PKCS1v15(), hashes.SHA256())
        if raw[0] == 0:
            break
    else:
        pytest.fail("no signature with a leading zero byte")
    assert len(raw) == 256 and openssl_says(raw, att, TPM_ALG.SHA256)
    assert not openssl_says(raw[1:], att, TPM_ALG.SHA256)
    recovered = KEY.public_key().recover_data_from_signature(raw[1:], padding.PKCS1v15(), None)
    assert recovered == digest_info(TPM_ALG.SHA256, hashlib.sha256(att).digest())  # the gap
    for sig, ok in ((raw, True), (raw[1:], False)):
        tpmt = TPMT_SIGNATURE(TPM_ALG.RSASSA, TPM_ALG.SHA256, sig).to_bytes()
        quote = Quote(att, tpmt, {"sha256": values})
        for check in (lambda t=tpmt: ak.verify_signature(att, t),
                      lambda q=quote: verify_quote(ak, q, nonce=NONCE),
                      lambda q=quote: verify_quote(ak.public, q.to_json(), nonce=NONCE)):
            if ok:
                check()
            else:
                with pytest.raises(VerificationError) as ei:
                    check()
                assert ei.value.reason == Reason.MALFORMED
