"""verify.verify_quote against real swtpm quotes, and every kind of tampering with its Reason.

Quotes come from swtpm through ``Tpm`` (TPW1 AKs) and through the command layer for shapes
``Tpm`` does not make (two banks, PCP's RSASSA-SHA1 scheme, a key that is not an AK). Evidence
no TPM would sign with a restricted key (bad magic, trailing bytes inside the signed
structure) is made with a software key whose public area claims to be an AK.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from tpm2_attest.commands import PasswordSession, TpmCommands
from tpm2_attest.evidence import AkBlob, Quote
from tpm2_attest.tpm import Tpm
from tpm2_attest.tpm2 import templates as T
from tpm2_attest.tpm2.constants import (
    TPM_ALG,
    TPM_CC,
    TPM_GENERATED_VALUE,
    TPM_RH,
    TPM_ST,
    TPMA_OBJECT,
)
from tpm2_attest.tpm2.marshal import Writer
from tpm2_attest.tpm2.structures import (
    TPM2B_PUBLIC,
    TPML_PCR_SELECTION,
    TPMS_ATTEST,
    TPMS_CLOCK_INFO,
    TPMS_ECC_POINT,
    TPMS_PCR_SELECTION,
    TPMS_QUOTE_INFO,
    TPMS_RSA_PARMS,
    TPMT_SCHEME,
    TPMT_SIGNATURE,
    pcr_selection,
)
from tpm2_attest.verify import (
    AkPublic,
    QuoteResult,
    Reason,
    VerificationError,
    check_ak,
    verify_quote,
)

PCRS = [0, 1, 2, 3, 4, 5, 6, 7, 16]
ECDSA_SHA256 = TPMT_SCHEME(TPM_ALG.ECDSA, TPM_ALG.SHA256)
PCP_TEMPLATE = replace(T.AK_RSA_TEMPLATE, parameters=TPMS_RSA_PARMS(
    T.SYM_NULL, TPMT_SCHEME(TPM_ALG.RSASSA, TPM_ALG.SHA1), 2048, 0))


def reason_of(ak: Any, quote: Any, **kw: Any) -> Reason:
    kw.setdefault("nonce", NONCE)
    with pytest.raises(VerificationError) as e:
        verify_quote(ak, quote, **kw)
    return e.value.reason


def flip(data: bytes, pos: int, bit: int = 0) -> bytes:
    b = bytearray(data)
    b[pos] ^= 1 << bit
    return bytes(b)


NONCE = os.urandom(32)


# -- evidence ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tpm(swtpm: Any) -> Iterator[Tpm]:
    with Tpm.open(swtpm.tcti) as t:
        # Distinct PCR values, so that swapping two of them changes the digest.
        for i, data in ((16, b"sixteen"), (7, b"seven")):
            t.pcr.extend(i, data)
        yield t


@pytest.fixture(scope="module")
def cmds(tpm: Tpm) -> TpmCommands:
    assert tpm.commands is not None
    return tpm.commands


@pytest.fixture(scope="module", params=["ecc", "rsa"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def blob(tpm: Tpm, kind: str) -> AkBlob:
    return tpm.provision_ak(algorithm=kind)


@pytest.fixture(scope="module")
def ak(blob: AkBlob) -> AkPublic:
    return check_ak(blob)


@pytest.fixture(scope="module")
def quote(tpm: Tpm, blob: AkBlob) -> Quote:
    return tpm.quote(blob, pcrs=PCRS, qualifying_data=NONCE)


def loaded_key(cmds: TpmCommands, template: Any) -> tuple[int, bytes]:
    """Create and load a key under a transient SRK (flushed): (handle, TPM2B_PUBLIC)."""
    srk = cmds.create_primary(TPM_RH.OWNER, T.SRK_ECC_TEMPLATE)
    try:
        res = cmds.create(srk.handle, template)
        handle, _ = cmds.load(srk.handle, res.private, res.public_bytes)
    finally:
        cmds.flush_context(srk.handle)
    return handle, bytes(res.public_bytes)


def tpm_sign(cmds: TpmCommands, handle: int, digest: bytes, scheme: TPMT_SCHEME) -> bytes:
    """TPM2_Sign of an external digest (NULL ticket: only unrestricted keys accept it)."""
    w = Writer().tpm2b(digest)
    scheme.marshal(w)
    w.u16(TPM_ST.HASHCHECK).u32(TPM_RH.NULL).tpm2b(b"")
    _, r = cmds.execute(TPM_CC.Sign, [handle], w.getvalue(), [PasswordSession()])
    start = r.pos
    TPMT_SIGNATURE.unmarshal(r)
    r.done("TPM2_Sign")
    return r.buffer[start : r.pos]


def read_pcrs(cmds: TpmCommands, bank: int, idx: list[int]) -> dict[int, bytes]:
    return cmds.pcr_read(bank, idx)[1]


# -- happy paths -------------------------------------------------------------------------------------


def test_verifies(tpm: Tpm, ak: AkPublic, quote: Quote) -> None:
    res = verify_quote(ak, quote, nonce=NONCE)
    assert isinstance(res, QuoteResult)
    assert res.bank == "sha256" and res.hash_alg == TPM_ALG.SHA256
    assert dict(res.pcrs) == tpm.pcr.read(PCRS) == quote.pcrs["sha256"]
    assert list(res.pcrs) == PCRS
    assert res.extra_data == NONCE
    assert res.signer_name[:2] == ak.name[:2] and len(res.signer_name) == len(ak.name)
    assert res.clock_info == TPMS_CLOCK_INFO(res.clock, res.reset_count, res.restart_count, res.safe)
    att = TPMS_ATTEST.from_bytes(quote.attest)
    assert res.firmware_version == att.firmware_version and res.clock_info == att.clock_info
    assert isinstance(att.attested, TPMS_QUOTE_INFO) and res.pcr_digest == att.attested.pcr_digest
    # The hot path (layout learnt by the first call) gives the same answer.
    again = verify_quote(ak, quote, nonce=NONCE)
    assert again == res and again.to_dict() == res.to_dict()
    with pytest.raises(AttributeError):
        res.bank = "sha1"  # type: ignore[misc]
    with pytest.raises(TypeError):
        res.pcrs[0] = b""  # type: ignore[index]


def test_input_forms(blob: AkBlob, ak: AkPublic, quote: Quote) -> None:
    flat = quote.pcrs["sha256"]
    expected = verify_quote(ak, quote, nonce=NONCE)
    assert verify_quote(ak, quote.to_json(), nonce=NONCE) == expected
    assert verify_quote(ak, (quote.attest, quote.signature, quote.pcrs), nonce=NONCE) == expected
    assert verify_quote(ak, (quote.attest, quote.signature, flat), nonce=NONCE) == expected
    assert verify_quote(blob, quote, nonce=NONCE) == expected
    assert verify_quote(blob.to_bytes(), quote, nonce=NONCE) == expected
    assert verify_quote(blob.public, quote, nonce=NONCE) == expected
    assert verify_quote(ak, quote, nonce=bytearray(NONCE)) == expected


def test_expected_pcrs(ak: AkPublic, quote: Quote) -> None:
    vals = quote.pcrs["sha256"]
    verify_quote(ak, quote, nonce=NONCE, expected_pcrs={16: vals[16], 0: vals[0]})
    verify_quote(ak, quote, nonce=NONCE, expected_pcrs={"sha256": {7: vals[7]}, "sha1": {}})
    assert reason_of(ak, quote, expected_pcrs={16: vals[0]}) == Reason.PCR_VALUE_MISMATCH
    assert reason_of(ak, quote, expected_pcrs={8: bytes(32)}) == Reason.PCR_VALUE_MISMATCH  # not quoted
    assert reason_of(ak, quote, expected_pcrs={"sha1": {0: bytes(20)}}) == Reason.PCR_VALUE_MISMATCH


def test_empty_nonce(tpm: Tpm, blob: AkBlob, ak: AkPublic) -> None:
    q = tpm.quote(blob, pcrs=[0], qualifying_data=b"")
    assert reason_of(ak, q, nonce=b"") == Reason.EMPTY_NONCE
    assert reason_of(ak, q, nonce=None) == Reason.EMPTY_NONCE
    assert verify_quote(ak, q, nonce=b"", allow_empty_nonce=True).extra_data == b""
    assert reason_of(ak, q, nonce=NONCE) == Reason.NONCE_MISMATCH


# -- tampering ------------------------------------------------------------------------------------------


def test_wrong_nonce(ak: AkPublic, quote: Quote) -> None:
    assert reason_of(ak, quote, nonce=NONCE[:-1] + bytes([NONCE[-1] ^ 1])) == Reason.NONCE_MISMATCH
    assert reason_of(ak, quote, nonce=NONCE + b"\0") == Reason.NONCE_MISMATCH


def test_flipped_attest(ak: AkPublic, quote: Quote) -> None:
    verify_quote(ak, quote, nonce=NONCE)  # the layout is learnt: flips go through the hot path
    for pos in range(0, len(quote.attest), 7):
        assert reason_of(ak, replace(quote, attest=flip(quote.attest, pos))) == Reason.BAD_SIGNATURE, pos
    assert reason_of(ak, replace(quote, attest=quote.attest + b"\0")) == Reason.BAD_SIGNATURE
    assert reason_of(ak, replace(quote, attest=quote.attest[:-1])) == Reason.BAD_SIGNATURE


def test_flipped_signature(ak: AkPublic, quote: Quote) -> None:
    sig = quote.signature
    assert reason_of(ak, replace(quote, signature=flip(sig, len(sig) - 1))) == Reason.BAD_SIGNATURE
    assert reason_of(ak, replace(quote, signature=flip(sig, 10))) == Reason.BAD_SIGNATURE
    assert reason_of(ak, replace(quote, signature=sig + b"\0")) == Reason.MALFORMED
    assert reason_of(ak, replace(quote, signature=sig[:-1])) == Reason.MALFORMED
    assert reason_of(ak, replace(quote, signature=sig[:3])) == Reason.MALFORMED
    other_hash = sig[:2] + TPM_ALG.SHA384.to_bytes(2, "big") + sig[4:]
    assert reason_of(ak, replace(quote, signature=other_hash)) == Reason.SCHEME_MISMATCH
    other_alg = TPM_ALG.RSAPSS.to_bytes(2, "big") + sig[2:]
    assert reason_of(ak, replace(quote, signature=other_alg)) == Reason.SCHEME_MISMATCH


def test_signed_by_another_ak(tpm: Tpm, blob: AkBlob, quote: Quote, kind: str) -> None:
    other = check_ak(tpm.provision_ak(algorithm=kind))
    assert reason_of(other, quote) == Reason.BAD_SIGNATURE


def test_relabeled_pcr_index(ak: AkPublic, quote: Quote) -> None:
    vals = dict(quote.pcrs["sha256"])
    assert vals[16] != vals[0] != vals[7]
    # PCR 16's value presented as PCR 17: 17 is not quoted, 16 is missing.
    moved = {i: v for i, v in vals.items() if i != 16} | {17: vals[16]}
    assert reason_of(ak, replace(quote, pcrs={"sha256": moved})) == Reason.PCR_SELECTION
    # Two quoted PCRs swapping their values: same set of values, other indices.
    swapped = vals | {0: vals[16], 16: vals[0]}
    assert reason_of(ak, replace(quote, pcrs={"sha256": swapped})) == Reason.PCR_DIGEST_MISMATCH
    # Values as a list in some other order must not be accepted under the right indices either.
    order = sorted(vals)
    rotated = {i: vals[j] for i, j in zip(order, order[1:] + order[:1], strict=True)}
    assert reason_of(ak, replace(quote, pcrs={"sha256": rotated})) == Reason.PCR_DIGEST_MISMATCH


def test_supplied_and_selected_pcrs_must_match(ak: AkPublic, quote: Quote) -> None:
    vals = dict(quote.pcrs["sha256"])
    extra = vals | {8: bytes(32)}
    assert reason_of(ak, replace(quote, pcrs={"sha256": extra})) == Reason.PCR_SELECTION
    missing = {i: v for i, v in vals.items() if i != 3}
    assert reason_of(ak, replace(quote, pcrs={"sha256": missing})) == Reason.PCR_SELECTION
    assert reason_of(ak, replace(quote, pcrs={})) == Reason.PCR_SELECTION
    assert reason_of(ak, replace(quote, pcrs={"sha1": {i: bytes(20) for i in vals}})) == Reason.PCR_SELECTION
    two_banks = {"sha256": vals, "sha1": {i: bytes(20) for i in vals}}
    assert reason_of(ak, replace(quote, pcrs=two_banks)) == Reason.PCR_SELECTION
    assert reason_of(ak, (quote.attest, quote.signature, extra)) == Reason.PCR_SELECTION


def test_pcr_values(ak: AkPublic, quote: Quote) -> None:
    vals = dict(quote.pcrs["sha256"])
    assert reason_of(ak, replace(quote, pcrs={"sha256": vals | {5: flip(vals[5], 0)}})) == Reason.PCR_DIGEST_MISMATCH
    # Bytes moved from one value to its neighbour keep the concatenation: refused by length.
    shifted = vals | {0: vals[0] + vals[1][:1], 1: vals[1][1:]}
    assert reason_of(ak, replace(quote, pcrs={"sha256": shifted})) == Reason.MALFORMED
    assert reason_of(ak, replace(quote, pcrs={"sha256": vals | {2: vals[2][:20]}})) == Reason.MALFORMED


def load_blob(cmds: TpmCommands, blob: AkBlob) -> int:
    """Load a TPW1 blob under a transient SRK (flushed); return the AK handle."""
    srk = cmds.create_primary(TPM_RH.OWNER, T.SRK_ECC_TEMPLATE)
    try:
        handle, _ = cmds.load(srk.handle, len(blob.private).to_bytes(2, "big") + blob.private, blob.public)
    finally:
        cmds.flush_context(srk.handle)
    return handle


def test_two_banks_in_the_selection_are_verified_whole(cmds: TpmCommands, tpm: Tpm, ak: AkPublic, blob: AkBlob) -> None:
    if "sha1" not in tpm.pcr.banks():
        pytest.skip("swtpm without a SHA-1 bank")
    handle = load_blob(cmds, blob)
    try:
        sel = TPML_PCR_SELECTION.of({TPM_ALG.SHA1: [0], TPM_ALG.SHA256: [0]})
        signed = cmds.quote(handle, NONCE, ak.scheme, sel)
    finally:
        cmds.flush_context(handle)
    pcrs = {"sha1": read_pcrs(cmds, TPM_ALG.SHA1, [0]), "sha256": read_pcrs(cmds, TPM_ALG.SHA256, [0])}
    res = verify_quote(ak, Quote(signed.attest, signed.signature, pcrs), nonce=NONCE)  # verified whole
    assert res.bank == "sha256" and {b: dict(v) for b, v in res.banks.items()} == pcrs
    assert reason_of(ak, Quote(signed.attest, signed.signature, {"sha256": pcrs["sha256"]})) == Reason.PCR_SELECTION
    assert reason_of(ak, Quote(signed.attest, signed.signature, pcrs), allow_sha1=False) == Reason.WEAK_KEY


def test_sha1_bank(tpm: Tpm, blob: AkBlob, ak: AkPublic, kind: str) -> None:
    if "sha1" not in tpm.pcr.banks():
        pytest.skip("swtpm without a SHA-1 bank")
    q = tpm.quote(blob, pcrs=[0, 16], bank="sha1", qualifying_data=NONCE)
    res = verify_quote(ak, q, nonce=NONCE)
    assert res.bank == "sha1" and len(res.pcrs[16]) == 20
    assert reason_of(ak, q, allow_sha1=False) == Reason.WEAK_KEY


def test_creation_attestation_is_not_a_quote(blob: AkBlob, ak: AkPublic) -> None:
    assert reason_of(ak, Quote(blob.attest, blob.signature, {})) == Reason.WRONG_TYPE


def test_quote_shaped_blob_from_an_unrestricted_key(cmds: TpmCommands, ak: AkPublic, quote: Quote,
                                                     kind: str) -> None:
    """An unrestricted key signs anything, so it can sign a forged TPMS_ATTEST claiming any PCR
    values: refused for the key (not a restricted AK), and never valid under the real AK."""
    attrs = T.AK_ATTRIBUTES & ~TPMA_OBJECT.restricted
    template = T.AK_ECC_TEMPLATE if kind == "ecc" else T.AK_RSA_TEMPLATE
    handle, public = loaded_key(cmds, replace(template, object_attributes=attrs))
    att = TPMS_ATTEST.from_bytes(quote.attest)
    forged_vals = {i: bytes(32) for i in PCRS}
    info = TPMS_QUOTE_INFO(pcr_selection(TPM_ALG.SHA256, PCRS), hashlib.sha256(bytes(32 * len(PCRS))).digest())
    forged = replace(att, attested=info).to_bytes()
    try:
        sig = tpm_sign(cmds, handle, hashlib.sha256(forged).digest(), ak.scheme)
    finally:
        cmds.flush_context(handle)
    forged_quote = Quote(forged, sig, {"sha256": forged_vals})
    # The forgery is a valid signature by that key over well-formed quote bytes...
    with pytest.raises(VerificationError) as e:
        AkPublic.from_public(public)
    assert e.value.reason == Reason.AK_ATTRIBUTES
    assert reason_of(public, forged_quote) == Reason.AK_ATTRIBUTES
    # ...and means nothing for the real AK.
    assert reason_of(ak, forged_quote) == Reason.BAD_SIGNATURE


def test_weak_keys_quote(cmds: TpmCommands) -> None:
    rsa1024 = replace(T.AK_RSA_TEMPLATE, parameters=TPMS_RSA_PARMS(
        T.SYM_NULL, TPMT_SCHEME(TPM_ALG.RSASSA, TPM_ALG.SHA256), 1024, 0))
    handle, public = loaded_key(cmds, rsa1024)
    try:
        signed = cmds.quote(handle, NONCE, TPMT_SCHEME(), pcr_selection(TPM_ALG.SHA256, [0]))
    finally:
        cmds.flush_context(handle)
    q = Quote(signed.attest, signed.signature, {"sha256": read_pcrs(cmds, TPM_ALG.SHA256, [0])})
    assert reason_of(public, q) == Reason.WEAK_KEY


# -- PCP: RSASSA-SHA1 quotes, SHA-1 pcrDigest over the SHA-256 bank ---------------------------------


def test_pcp_quote(cmds: TpmCommands) -> None:
    handle, public = loaded_key(cmds, PCP_TEMPLATE)
    try:
        # PCP passes inScheme TPM_ALG_NULL: the key's own RSASSA-SHA1 is used.
        signed = cmds.quote(handle, NONCE, TPMT_SCHEME(), pcr_selection(TPM_ALG.SHA256, PCRS))
    finally:
        cmds.flush_context(handle)
    vals = read_pcrs(cmds, TPM_ALG.SHA256, PCRS)
    q = Quote(signed.attest, signed.signature, {"sha256": vals})
    ak = AkPublic.from_public(public)
    res = verify_quote(ak, q, nonce=NONCE)
    assert res.pcr_digest == hashlib.sha1(b"".join(vals[i] for i in PCRS)).digest()
    assert TPMT_SIGNATURE.from_bytes(signed.signature).hash_alg == TPM_ALG.SHA1
    assert reason_of(ak, q, allow_sha1=False) == Reason.WEAK_KEY
    assert reason_of(ak, replace(q, pcrs={"sha256": vals | {16: bytes(32)}})) == Reason.PCR_DIGEST_MISMATCH
    # A SHA-256 signature is not what this key's scheme says.
    forged = TPMT_SIGNATURE(TPM_ALG.RSASSA, TPM_ALG.SHA256, TPMT_SIGNATURE.from_bytes(signed.signature).sig)
    assert reason_of(ak, replace(q, signature=forged.to_bytes())) == Reason.SCHEME_MISMATCH


# -- structure checks after the signature (software-signed evidence) ----------------------------------


def soft_key() -> tuple[ec.EllipticCurvePrivateKey, AkPublic]:
    """A software key and the AkPublic of a public area claiming it is a restricted AK."""
    key = ec.generate_private_key(ec.SECP256R1())
    n = key.public_key().public_numbers()
    area = replace(T.AK_ECC_TEMPLATE, unique=TPMS_ECC_POINT(n.x.to_bytes(32, "big"), n.y.to_bytes(32, "big")))
    return key, AkPublic.from_public(TPM2B_PUBLIC(area).to_bytes())


def soft_quote(key: ec.EllipticCurvePrivateKey, *, magic: int = TPM_GENERATED_VALUE,
               typ: int = TPM_ST.ATTEST_QUOTE, nonce: bytes = NONCE, sel: TPML_PCR_SELECTION | None = None,
               values: dict[int, bytes] | None = None, trailing: bytes = b"",
               safe_byte: int | None = None) -> Quote:
    values = values if values is not None else {0: bytes(32), 16: b"\x16" * 32}
    sel = sel or pcr_selection(TPM_ALG.SHA256, sorted(values))
    digest = hashlib.sha256(b"".join(values[i] for i in sorted(values))).digest()
    att = TPMS_ATTEST(magic, TPM_ST.ATTEST_QUOTE, b"\x00\x0b" + bytes(32), nonce, TPMS_CLOCK_INFO(10, 1, 0, True),
                      7, TPMS_QUOTE_INFO(sel, digest)).to_bytes()
    att = att[:4] + typ.to_bytes(2, "big") + att[6:] + trailing
    if safe_byte is not None:
        pos = 4 + 2 + 2 + 34 + 2 + len(nonce) + 16
        att = att[:pos] + bytes([safe_byte]) + att[pos + 1:]
    r, s = utils.decode_dss_signature(key.sign(att, ec.ECDSA(hashes.SHA256())))
    sig = TPMT_SIGNATURE(TPM_ALG.ECDSA, TPM_ALG.SHA256, r=r.to_bytes(32, "big"), s=s.to_bytes(32, "big"))
    return Quote(att, sig.to_bytes(), {"sha256": values})


def test_software_quote_baseline() -> None:
    key, ak = soft_key()
    q = soft_quote(key)
    assert verify_quote(ak, q, nonce=NONCE) == verify_quote(ak, q, nonce=NONCE)


@pytest.mark.parametrize("warm", [False, True])
def test_structure_after_signature(warm: bool) -> None:
    """Each case through the generic parser, and (warm) after the AK learnt a good layout of
    the same length, so that the precompiled path meets the bad bytes."""
    key, ak = soft_key()

    def check(q: Quote, want: Reason) -> None:
        ak_ = ak
        if warm:
            key2, ak_ = soft_key()
            good = soft_quote(key2)
            verify_quote(ak_, good, nonce=NONCE)
            q = _resign(key2, q)
            if len(good.attest) != len(q.attest):
                pytest.fail("the warm case needs quotes of the same length")
        assert reason_of(ak_, q) == want

    check(soft_quote(key, magic=0x12345678), Reason.BAD_MAGIC)
    check(soft_quote(key, typ=TPM_ST.ATTEST_CERTIFY), Reason.WRONG_TYPE)
    check(soft_quote(key, safe_byte=2), Reason.MALFORMED)
    check(soft_quote(key, nonce=NONCE[:-1] + b"\x01"), Reason.NONCE_MISMATCH)
    if not warm:  # other lengths: the layout cache cannot apply
        check(soft_quote(key, trailing=b"\0"), Reason.MALFORMED)
        two = TPML_PCR_SELECTION((TPMS_PCR_SELECTION.from_indices(TPM_ALG.SHA256, [0, 16]),
                                  TPMS_PCR_SELECTION.from_indices(TPM_ALG.SHA256, [0, 16])))
        check(soft_quote(key, sel=two), Reason.PCR_SELECTION)
        check(soft_quote(key, sel=TPML_PCR_SELECTION()), Reason.PCR_SELECTION)
        check(soft_quote(key, sel=pcr_selection(TPM_ALG.SHA256, []), values={}), Reason.PCR_SELECTION)


def _resign(key: ec.EllipticCurvePrivateKey, q: Quote) -> Quote:
    r, s = utils.decode_dss_signature(key.sign(q.attest, ec.ECDSA(hashes.SHA256())))
    sig = TPMT_SIGNATURE(TPM_ALG.ECDSA, TPM_ALG.SHA256, r=r.to_bytes(32, "big"), s=s.to_bytes(32, "big"))
    return replace(q, signature=sig.to_bytes())


def test_hot_path_two_layouts_of_one_length() -> None:
    """Same AK, same attest length, different layouts (nonce one byte shorter, bitmap one byte
    longer): each must be parsed by its own layout, alternately."""
    key, ak = soft_key()
    q1 = soft_quote(key)
    q2 = soft_quote(key, nonce=NONCE[:-1], sel=pcr_selection(TPM_ALG.SHA256, [0, 16], size=4))
    assert len(q2.attest) == len(q1.attest)
    for _ in range(3):
        assert verify_quote(ak, q1, nonce=NONCE).extra_data == NONCE
        res = verify_quote(ak, q2, nonce=NONCE[:-1])
        assert res.extra_data == NONCE[:-1] and list(res.pcrs) == [0, 16]
    assert reason_of(ak, q1, nonce=NONCE[:-1]) == Reason.NONCE_MISMATCH
    assert reason_of(ak, q2, nonce=NONCE) == Reason.NONCE_MISMATCH


# -- hostile bytes: only VerificationError, whatever the mutation ----------------------------------


def test_mutated_and_resigned_quotes_fail_cleanly() -> None:
    """Truncations, extensions and byte changes of a signed quote, re-signed so that the
    parser (generic and learnt-layout paths) meets them: the verifier either accepts a
    consistent quote or raises VerificationError, never anything else."""
    import random

    rnd = random.Random(1234)
    key, ak = soft_key()
    base = soft_quote(key)
    verify_quote(ak, base, nonce=NONCE)  # learn the layout
    outcomes: set[str] = set()
    for _ in range(400):
        att = bytearray(base.attest)
        op = rnd.randrange(3)
        if op == 0:
            for _ in range(rnd.randint(1, 3)):
                att[rnd.randrange(len(att))] = rnd.randrange(256)
        elif op == 1:
            del att[rnd.randrange(len(att)):]
        else:
            att[rnd.randrange(len(att)):rnd.randrange(len(att))] = rnd.randbytes(rnd.randint(1, 8))
        q = _resign(key, replace(base, attest=bytes(att)))
        try:
            verify_quote(ak, q, nonce=NONCE)
            outcomes.add("ok")
        except VerificationError as exc:
            outcomes.add(exc.reason.value)
    assert {"MALFORMED", "NONCE_MISMATCH", "PCR_DIGEST_MISMATCH"} <= outcomes


def test_hostile_signatures_and_pcrs_fail_cleanly(ak: AkPublic, quote: Quote) -> None:
    import random

    rnd = random.Random(99)
    for _ in range(200):
        sig = bytearray(quote.signature)
        cut = rnd.randrange(len(sig))
        sig[cut:cut + rnd.randint(0, 3)] = rnd.randbytes(rnd.randint(0, 3))
        if sig == quote.signature:
            continue
        with pytest.raises(VerificationError):
            verify_quote(ak, replace(quote, signature=bytes(sig)), nonce=NONCE)
    for bad in ({"sha256": {0: "00" * 32}}, {"sha256": None}, {"sha256": {"0": bytes(32)}}, {0: None}):
        with pytest.raises(VerificationError):
            verify_quote(ak, replace(quote, pcrs=bad), nonce=NONCE)  # type: ignore[arg-type]
