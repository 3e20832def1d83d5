"""Hostile evidence: mutated AK blobs, quotes and quote JSON give typed errors, never a crash
or a false "valid"."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tpm2_attest import AkBlob, ErrorCode, Quote, Tpm, TpmError, verify
from tpm2_attest.verify import VerificationError

NONCE = b"fuzz-enroll-nonce"
QNONCE = os.urandom(32)


@pytest.fixture(scope="module", params=["ecc", "rsa"])
def evidence(request: Any, swtpm: Any) -> tuple[AkBlob, Quote]:
    with Tpm.open(swtpm.tcti) as tpm:
        blob = tpm.provision_ak(nonce=NONCE, algorithm=request.param)
        quote = tpm.quote(blob, pcrs=[0, 1, 2, 16], qualifying_data=QNONCE)
    return blob, quote


def _mutate(data: bytes, draw: Any) -> bytes:
    raw = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = draw(st.integers(0, max(len(raw) - 1, 0)))
        if kind == "flip" and raw:
            raw[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del raw[pos:pos + draw(st.integers(1, 8))]
        else:
            raw[pos:pos] = bytes([draw(st.integers(0, 255))])
    return bytes(raw)


SETTINGS = settings(max_examples=250, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(data=st.data())
def test_mutated_ak_blob(evidence: tuple[AkBlob, Quote], data: st.DataObject) -> None:
    blob, _ = evidence
    bad = _mutate(blob.to_bytes(), data.draw)
    try:
        parsed = AkBlob.from_bytes(bad)
    except TpmError as exc:
        assert exc.code == ErrorCode.BAD_BLOB
        parsed = None
    try:
        ak = verify.check_ak(bad, nonce=NONCE)
    except VerificationError:
        return
    # Accepted: only bytes the verifier does not rely on (the TPM-wrapped private part) may
    # have changed; everything that was checked is the original.
    assert parsed is not None
    assert ak.name == blob.name and ak.public == blob.public
    assert parsed.attest == blob.attest and parsed.signature == blob.signature
    assert parsed.creation_data == blob.creation_data


@SETTINGS
@given(data=st.data())
def test_mutated_quote(evidence: tuple[AkBlob, Quote], data: st.DataObject) -> None:
    blob, quote = evidence
    ak = verify.check_ak(blob)
    field = data.draw(st.sampled_from(["attest", "signature"]))
    attest = _mutate(quote.attest, data.draw) if field == "attest" else quote.attest
    sig = _mutate(quote.signature, data.draw) if field == "signature" else quote.signature
    if (attest, sig) == (quote.attest, quote.signature):
        return
    with pytest.raises(VerificationError):
        verify.verify_quote(ak, (attest, sig, quote.pcrs), nonce=QNONCE)


@SETTINGS
@given(data=st.data())
def test_mutated_quote_json(evidence: tuple[AkBlob, Quote], data: st.DataObject) -> None:
    blob, quote = evidence
    ak = verify.check_ak(blob)
    text = _mutate(quote.to_json().encode(), data.draw)
    try:
        q = Quote.from_json(text)
    except TpmError as exc:
        assert exc.code == ErrorCode.BAD_BLOB
        return
    try:
        res = verify.verify_quote(ak, q, nonce=QNONCE)
    except VerificationError:
        return
    # Still valid only if the parsed content is exactly the original (e.g. a JSON whitespace edit).
    assert (q.attest, q.signature) == (quote.attest, quote.signature)
    assert dict(res.pcrs) == quote.pcrs["sha256"]


def test_json_type_confusion(evidence: tuple[AkBlob, Quote]) -> None:
    _, quote = evidence
    base = quote.to_dict()
    for patch in ({"version": 2}, {"version": True}, {"version": 1.0}, {"version": "1"}, {"attest": 5}, {"pcrs": []}, {"pcrs": {"sha256": {"x": "AA=="}}},
                  {"pcrs": {"md5": {}}}, {"pcrs": {"sha256": {"0": "not base64!"}}},
                  {"pcrs": {"sha256": {"0": "AAAA"}}}):
        with pytest.raises(TpmError) as ei:
            Quote.from_json(json.dumps({**base, **patch}))
        assert ei.value.code == ErrorCode.BAD_BLOB
    for bad in (b"", b"[]", b"{", b"\xff\xfe"):
        with pytest.raises(TpmError):
            Quote.from_json(bad)


@SETTINGS
@given(data=st.data())
def test_mutated_quote_json_text_given_to_the_stateless_verifier(evidence: tuple[AkBlob, Quote],
                                                                 data: st.DataObject) -> None:
    """The JSON text path (scanner first, then the one-pass PCR decode) refuses what the
    one-by-one checks refuse, and passes only the original content."""
    blob, quote = evidence
    ak = verify.check_ak(blob)
    text = quote.to_json()
    chars = list(text)
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(chars) - 1))
        kind = data.draw(st.sampled_from(["replace", "cut", "insert"]))
        ch = data.draw(st.sampled_from([*'0123456789=+/"{}[],: \n\u00b2\u0660Aa\\', "\udcff"]))
        if kind == "replace":
            chars[pos] = ch
        elif kind == "cut":
            del chars[pos]
        else:
            chars.insert(pos, ch)
    try:
        res = verify.verify_quote(ak, "".join(chars), nonce=QNONCE)
    except VerificationError:
        return
    assert dict(res.pcrs) == quote.pcrs["sha256"]
    assert res.extra_data == QNONCE and res.clock == verify.verify_quote(ak, quote, nonce=QNONCE).clock


def test_quote_pcr_values_of_the_wrong_type_or_spelling_are_refused(evidence: tuple[AkBlob, Quote]) -> None:
    _, quote = evidence
    base = quote.to_dict()
    good = base["pcrs"]["sha256"]["0"]
    for vals in ({"0": good.encode()}, {"0": None}, {"0": 0}, {0: good}, {"0": good, "1": good[:-4]},
                 {"0": good, "1": good + "===="}, {"0": good, "1": " " + good}, {"0": good, "1": "AAAA" + good},
                 {"0": good, "1": good.replace("=", "")}, {"0": good, "00": good}, {"1000": good}):
        with pytest.raises(TpmError) as ei:
            Quote.from_dict({**base, "pcrs": {"sha256": vals}})
        assert ei.value.code == ErrorCode.BAD_BLOB, vals
    # The non-canonical index spelling alone is still read (as before), by the checked path.
    assert Quote.from_dict({**base, "pcrs": {"sha256": {"00": good}}}).pcrs == {"sha256": {0: quote.pcrs["sha256"][0]}}
    # Leading/trailing JSON whitespace takes the json.loads path and parses the same.
    assert Quote.from_json(" \n" + quote.to_json() + "\n") == quote
