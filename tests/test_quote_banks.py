"""Quotes over several PCR banks (``tpm2_quote -l sha1:0,1,16+sha256:0,16``), made by
tpm2-tools on swtpm: verified whole, every bank reported, every tampering refused."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_cli_interop import Tools
from test_cli_interop import sw as sw  # fixtures: re-exported for the tests that take them
from test_cli_interop import tools as tools
from tpm2_attest.tpm2 import templates
from tpm2_attest.tpm2.constants import TPM_ALG, TPM_GENERATED_VALUE, TPM_ST
from tpm2_attest.tpm2.structures import (
    TPM2B_PUBLIC,
    TPML_PCR_SELECTION,
    TPMS_ATTEST,
    TPMS_CLOCK_INFO,
    TPMS_ECC_POINT,
    TPMS_PCR_SELECTION,
    TPMS_QUOTE_INFO,
    TPMT_SIGNATURE,
)
from tpm2_attest.verify import AkPublic, Reason, VerificationError, verify_event_log, verify_quote
from tpm2_attest.verify.inputs import quote_from_files

NONCE = bytes.fromhex("c0ffee0123456789")
Quoted = tuple[AkPublic, bytes, bytes, dict[str, dict[int, bytes]]]


@pytest.fixture(scope="module")
def made(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Quoted]:
    d = tmp_path_factory.mktemp("banks")
    tools("tpm2_pcrextend", f"16:sha1={hashlib.sha1(b'x').hexdigest()},sha256={hashlib.sha256(b'x').hexdigest()}")
    tools("tpm2_createek", "-c", f"{d}/ek.ctx", "-G", "rsa")
    made: dict[tuple[str, str], Quoted] = {}

    def make(alg: str, selection: str) -> Quoted:
        if (alg, selection) not in made:
            name = f"ak{alg}"
            if not (d / f"{name}.pub").exists():
                tools("tpm2_createak", "-C", f"{d}/ek.ctx", "-c", f"{d}/{name}.ctx", "-G", alg, "-g", "sha256",
                      "-s", "rsassa" if alg == "rsa" else "ecdsa", "-u", f"{d}/{name}.pub")
            q = f"{d}/{name}-{len(made)}"
            tools("tpm2_quote", "-c", f"{d}/{name}.ctx", "-l", selection, "-q", NONCE.hex(), "-m", f"{q}.msg",
                  "-s", f"{q}.sig", "-o", f"{q}.pcrs")
            ak = AkPublic.from_public((d / f"{name}.pub").read_bytes())
            attest, sig, pcrs = quote_from_files(ak, Path(f"{q}.msg").read_bytes(), Path(f"{q}.sig").read_bytes(),
                                                 Path(f"{q}.pcrs").read_bytes())
            made[alg, selection] = (ak, attest, sig, {b: dict(v) for b, v in pcrs.items()})
        return made[alg, selection]

    return make


@pytest.mark.parametrize("alg", ["rsa", "ecc"])
def test_a_quote_over_two_banks_verifies_and_reports_both(made: Callable[[str, str], Quoted], alg: str) -> None:
    ak, attest, sig, pcrs = made(alg, "sha1:0,1,16+sha256:0,16")
    assert set(pcrs) == {"sha1", "sha256"} and sorted(pcrs["sha1"]) == [0, 1, 16]
    res = verify_quote(ak, (attest, sig, pcrs), nonce=NONCE)
    assert res.bank == "sha256" and dict(res.pcrs) == pcrs["sha256"]
    assert {b: dict(v) for b, v in res.banks.items()} == pcrs and list(res.banks) == ["sha1", "sha256"]
    assert res.pcrs[16] == hashlib.sha256(bytes(32) + hashlib.sha256(b"x").digest()).digest()
    assert res.to_dict()["banks"]["sha1"]["16"] == pcrs["sha1"][16].hex()
    assert res.extra_data == NONCE and res.reset_count >= 0
    # expected values by bank, and {index: value} for the reported bank
    verify_quote(ak, (attest, sig, pcrs), nonce=NONCE, expected_pcrs={"sha1": {16: pcrs["sha1"][16]}, 0: pcrs["sha256"][0]})
    with pytest.raises(VerificationError) as e:
        verify_quote(ak, (attest, sig, pcrs), nonce=NONCE, expected_pcrs={"sha1": {16: bytes(20)}})
    assert e.value.reason == Reason.PCR_VALUE_MISMATCH and "sha1:16" in e.value.detail
    # the event-log verifier takes the reported bank's values
    with pytest.raises(VerificationError) as e:
        verify_event_log(b"", res)
    assert e.value.reason != Reason.PCR_SELECTION


def test_verify_quote_command_takes_tpm2_quote_files_over_two_banks(tools: Tools, tmp_path: Path) -> None:
    import json
    import sys

    d = str(tmp_path)
    tools("tpm2_createek", "-c", f"{d}/ek.ctx", "-G", "rsa")
    tools("tpm2_createak", "-C", f"{d}/ek.ctx", "-c", f"{d}/ak.ctx", "-G", "ecc", "-g", "sha256", "-s", "ecdsa",
          "-u", f"{d}/ak.pub")
    tools("tpm2_quote", "-c", f"{d}/ak.ctx", "-l", "sha1:0,16+sha256:0,16", "-q", NONCE.hex(), "-m", f"{d}/q.msg",
          "-s", f"{d}/q.sig", "-o", f"{d}/q.pcrs")
    args = [sys.executable, "-m", "tpm2_attest.cli", "verify-quote", "--json", "--ak", f"{d}/ak.pub",
            "--message", f"{d}/q.msg", "--signature", f"{d}/q.sig", "--pcrs-file", f"{d}/q.pcrs",
            "--nonce", NONCE.hex()]
    res = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    text = json.dumps(out)
    assert '"sha1"' in text and '"sha256"' in text
    bad = subprocess.run([*args[:-1], "00" * 8], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "NONCE_MISMATCH" in bad.stdout


def test_a_policy_judges_each_listed_bank_a_two_bank_quote_covers(made: Callable[[str, str], Quoted]) -> None:
    from tpm2_attest.policy import Policy, learn

    ak, attest, sig, pcrs = made("rsa", "sha1:0,1,16+sha256:0,16")
    res = verify_quote(ak, (attest, sig, pcrs), nonce=NONCE)
    learned = learn(res, sections=["pcrs"])
    assert learned.to_dict()["pcrs"].keys() == {"sha1", "sha256"} and learned.evaluate(res).ok
    sha1_only = Policy.from_dict({"pcrs": {"sha1": {"16": pcrs["sha1"][16].hex()}}})
    assert sha1_only.evaluate(res).ok  # judged in the SHA-1 bank the quote also covers
    wrong = Policy.from_dict({"pcrs": {"sha1": {"16": "00" * 20}, "sha256": {"16": pcrs["sha256"][16].hex()}}})
    assert wrong.evaluate(res).failed_rules() == ["pcrs.value"]
    other = Policy.from_dict({"pcrs": {"sha384": {"16": "00" * 48}}})
    assert other.evaluate(res).failed_rules() == ["pcrs.bank"]


def test_a_single_bank_result_reports_one_bank(made: Callable[[str, str], Quoted]) -> None:
    ak, attest, sig, pcrs = made("ecc", "sha256:0,16")
    res = verify_quote(ak, (attest, sig, pcrs), nonce=NONCE)
    assert dict(res.banks) == {"sha256": res.pcrs} and "banks" not in res.to_dict()


def test_expectations_of_one_pcr_under_two_spellings_are_each_checked(made: Callable[[str, str], Quoted]) -> None:
    """{0: A} with {"sha256": {0: B}}, or a bank under its name and its TPM_ALG id, are two
    expectations: a value meeting only one of them fails, whichever is given last."""
    for selection in ("sha256:0,16", "sha1:0,1,16+sha256:0,16"):
        ak, attest, sig, pcrs = made("ecc", selection)
        have, wrong = pcrs["sha256"][16], bytes(32)
        for expected in ({16: wrong, "sha256": {16: have}}, {"sha256": {16: wrong}, 16: have},
                         {"sha256": {16: wrong}, 0x000B: {16: have}}, {0x000B: {16: wrong}, "SHA256": {16: have}}):
            with pytest.raises(VerificationError) as e:
                verify_quote(ak, (attest, sig, pcrs), nonce=NONCE, expected_pcrs=expected)
            assert e.value.reason == Reason.PCR_VALUE_MISMATCH and "sha256:16" in e.value.detail, (selection, e.value)
        verify_quote(ak, (attest, sig, pcrs), nonce=NONCE, expected_pcrs={16: have, "sha256": {16: have}})
    ak, attest, sig, pcrs = made("ecc", "sha1:0,1,16+sha256:0,16")
    with pytest.raises(VerificationError) as e:
        verify_quote(ak, (attest, sig, pcrs), nonce=NONCE,
                     expected_pcrs={"sha1": {16: bytes(20)}, 0x0004: {16: pcrs["sha1"][16]}})
    assert e.value.reason == Reason.PCR_VALUE_MISMATCH and "sha1:16" in e.value.detail


def _refused(reason: Reason, ak: AkPublic, attest: bytes, sig: bytes, pcrs: Any, **kw: Any) -> str:
    with pytest.raises(VerificationError) as e:
        verify_quote(ak, (attest, sig, pcrs), **{"nonce": NONCE, **kw})
    assert e.value.reason == reason, e.value
    return e.value.detail


def test_every_tampering_of_a_two_bank_quote_is_refused(made: Callable[[str, str], Quoted]) -> None:
    ak, attest, sig, pcrs = made("rsa", "sha1:0,1,16+sha256:0,16")
    sha1, sha256 = pcrs["sha1"], pcrs["sha256"]
    _refused(Reason.PCR_SELECTION, ak, attest, sig, {"sha256": sha256})  # a bank left out
    _refused(Reason.PCR_SELECTION, ak, attest, sig, sha256)  # {index: value}: which bank?
    _refused(Reason.PCR_SELECTION, ak, attest, sig, {**pcrs, "sha384": {0: bytes(48)}})  # a bank too many
    _refused(Reason.PCR_SELECTION, ak, attest, sig, {"sha1": {**sha1, 2: bytes(20)}, "sha256": sha256})
    _refused(Reason.PCR_SELECTION, ak, attest, sig, {"sha1": {0: sha1[0], 1: sha1[1]}, "sha256": sha256})
    _refused(Reason.PCR_SELECTION, ak, attest, sig, {"sha1": sha1, "SHA1": sha1, "sha256": sha256})
    changed = {"sha1": {**sha1, 16: bytes(20)}, "sha256": sha256}
    _refused(Reason.PCR_DIGEST_MISMATCH, ak, attest, sig, changed)
    swapped = {"sha1": {0: sha1[1], 1: sha1[0], 16: sha1[16]}, "sha256": sha256}
    if sha1[0] != sha1[1]:
        _refused(Reason.PCR_DIGEST_MISMATCH, ak, attest, sig, swapped)
    _refused(Reason.MALFORMED, ak, attest, sig, {"sha1": {**sha1, 16: sha256[16]}, "sha256": sha256})  # size
    _refused(Reason.NONCE_MISMATCH, ak, attest, sig, pcrs, nonce=b"another nonce")
    _refused(Reason.WEAK_KEY, ak, attest, sig, pcrs, allow_sha1=False)
    _refused(Reason.BAD_SIGNATURE, ak, attest[:-1] + bytes([attest[-1] ^ 1]), sig, pcrs)


# -- a hostile AK owner: any selection, signed ----------------------------------------------------

_KEY = ec.generate_private_key(ec.SECP256R1())
_N = _KEY.public_key().public_numbers()
_SOFT_AK = AkPublic.from_public(TPM2B_PUBLIC(
    __import__("dataclasses").replace(templates.AK_ECC_TEMPLATE, unique=TPMS_ECC_POINT(
        _N.x.to_bytes(32, "big"), _N.y.to_bytes(32, "big")))).to_bytes())
_SIZES = {TPM_ALG.SHA1: 20, TPM_ALG.SHA256: 32, TPM_ALG.SHA384: 48, 0x0099: 32}
_NAMES = {TPM_ALG.SHA1: "sha1", TPM_ALG.SHA256: "sha256", TPM_ALG.SHA384: "sha384", 0x0099: "x"}


def _signed(selections: list[tuple[int, bytes]], digest: bytes) -> tuple[bytes, bytes]:
    info = TPMS_QUOTE_INFO(TPML_PCR_SELECTION(tuple(TPMS_PCR_SELECTION(a, b) for a, b in selections)), digest)
    att = TPMS_ATTEST(TPM_GENERATED_VALUE, TPM_ST.ATTEST_QUOTE, b"\x00\x0b" + bytes(32), NONCE,
                      TPMS_CLOCK_INFO(1, 2, 3, True), 4, info).to_bytes()
    r, s = utils.decode_dss_signature(_KEY.sign(att, ec.ECDSA(hashes.SHA256())))
    sig = TPMT_SIGNATURE(TPM_ALG.ECDSA, TPM_ALG.SHA256, r=r.to_bytes(32, "big"), s=s.to_bytes(32, "big"))
    return att, sig.to_bytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sels=st.lists(st.tuples(st.sampled_from(sorted(_SIZES)), st.binary(min_size=0, max_size=4)), max_size=4),
       honest=st.booleans(), drop=st.booleans())
def test_any_signed_selection_is_verified_exactly_or_refused_by_reason(
        sels: list[tuple[int, bytes]], honest: bool, drop: bool) -> None:
    """Duplicated, unknown, empty and oversized selections, signed by the AK itself: the
    verdict is a typed refusal, or a pass whose every bank and value was hashed."""
    values: dict[str, dict[int, bytes]] = {}
    joined = b""
    for alg, bitmap in sels:
        idx = [8 * j + i for j, byte in enumerate(bitmap) for i in range(8) if byte >> i & 1]
        vals = {i: hashlib.sha256(bytes([alg & 0xFF, i])).digest()[:1] * _SIZES[alg] for i in idx}
        joined += b"".join(vals[i] for i in sorted(vals))
        if idx:
            values.setdefault(_NAMES[alg], {}).update(vals)
    digest = hashlib.sha256(joined).digest() if honest else bytes(32)
    att, sig = _signed(sels, digest)
    supplied = {b: dict(v) for b, v in values.items()}
    if drop and supplied:
        supplied.pop(next(iter(supplied)))
    try:
        res = verify_quote(_SOFT_AK, (att, sig, supplied), nonce=NONCE)
    except VerificationError as exc:
        assert exc.reason in {Reason.PCR_SELECTION, Reason.PCR_DIGEST_MISMATCH, Reason.UNSUPPORTED_FORMAT,
                              Reason.MALFORMED}, exc
        return
    algs = [a for a, _ in sels]
    assert honest and not (drop and values) and len(set(algs)) == len(algs) and 0x0099 not in algs
    assert {b: dict(v) for b, v in res.banks.items()} == values
