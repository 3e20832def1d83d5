"""tpm2_attest.policy: documents, learning, and the PCR rules, over real swtpm quotes."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tpm2_attest import Tpm, policy, verify
from tpm2_attest.embedded import EmbeddedSwtpm
from tpm2_attest.policy import Evidence, Policy, PolicyError, Section, Violation
from tpm2_attest.verify import QuoteResult

PCRS = [0, 7, 16]


@pytest.fixture(scope="module")
def quoting(swtpm: EmbeddedSwtpm) -> Iterator[Any]:
    """A function quoting PCRS (sha256 or sha1) of the session swtpm, verified."""
    with Tpm.open(swtpm.tcti) as tpm:
        blob = tpm.provision_ak()
        ak = verify.check_ak(blob.to_bytes())

        def quote(bank: str = "sha256", pcrs: list[int] = PCRS) -> QuoteResult:
            nonce = os.urandom(16)
            q = tpm.quote(blob, pcrs=pcrs, bank=bank, qualifying_data=nonce)
            return verify.verify_quote(ak, q, nonce=nonce)

        def extend(index: int, data: bytes | None = None) -> None:
            tpm.pcr.extend(index, os.urandom(8) if data is None else data)

        quote.extend = extend  # type: ignore[attr-defined]
        yield quote


def test_learned_policy_accepts_its_machine_and_names_the_changed_pcr(quoting: Any) -> None:
    golden = quoting()
    p = policy.learn(golden)
    assert [s.key for s in p.sections] == ["pcrs"]
    assert p.evaluate(golden).ok
    assert p.evaluate(quoting()).ok  # a new quote of the same state

    quoting.extend(16)
    r = p.evaluate(quoting())
    assert not r.ok and r.failed_rules() == ["pcrs.value"]
    (v,) = r.violations
    assert "sha256 PCR 16" in v.detail and golden.pcrs[16].hex() in v.detail
    assert v.wanted == {"16": golden.pcrs[16].hex()} and list(v.seen) == ["16"]
    assert json.loads(json.dumps(r.to_dict()))["violations"][0]["rule"] == "pcrs.value"


def test_several_acceptable_values_and_every_violation_reported(quoting: Any) -> None:
    before = quoting()
    quoting.extend(16)
    after = quoting()
    doc = {"pcrs": {"sha256": {"16": [before.pcrs[16].hex(), after.pcrs[16].hex()],
                               "7": "22" * 32, "0": "11" * 32}}}
    r = Policy.from_dict(doc).evaluate(after)
    assert [v.detail.split(" is ")[0] for v in r.violations] == ["sha256 PCR 0", "sha256 PCR 7"]
    doc["pcrs"]["sha256"] = {"16": doc["pcrs"]["sha256"]["16"]}
    assert Policy.from_dict(doc).evaluate(before).ok and Policy.from_dict(doc).evaluate(after).ok


def test_missing_evidence_fails_rather_than_passes(quoting: Any) -> None:
    q = quoting()
    p = policy.learn(q)
    assert p.evaluate(None).failed_rules() == ["pcrs.no_quote"]
    assert p.evaluate(quoting("sha1")).failed_rules() == ["pcrs.bank"]
    assert p.evaluate(quoting(pcrs=[0, 7])).failed_rules() == ["pcrs.not_quoted"]
    assert Policy().evaluate(None).ok and Policy().evaluate(None).rules == ()


def test_round_trips_through_dict_json_and_yaml(quoting: Any, tmp_path: Path) -> None:
    p = policy.learn(quoting(), name="golden")
    assert Policy.from_dict(p.to_dict()) == p
    for name in ("p.json", "p.yaml", "p.yml"):
        p.save(tmp_path / name)
        assert Policy.load(tmp_path / name) == p
    text = (tmp_path / "p.yaml").read_text()
    assert "pcrs:" in text and "name: golden" in text
    # YAML written by hand: unquoted PCR indices are integers to YAML, still PCR indices here.
    digest = p.to_dict()["pcrs"]["sha256"]["7"]
    hand = f"version: 1\npcrs:\n  sha256:\n    7: '{digest}'\n"
    assert Policy.from_text(hand, filename="x.yaml").to_dict()["pcrs"] == {"sha256": {"7": digest}}


@pytest.mark.parametrize(("doc", "key", "message"), [
    ([], "", "expected an object"),
    ({"version": 2}, "version", "reads policy version 1"),
    ({"version": True}, "version", "reads policy version 1"),
    ({"pcr": {}}, "pcr", "unknown policy section"),
    ({"pcrs": {"sha257": {}}}, "pcrs.sha257", "unknown PCR bank"),
    ({"pcrs": {"sha256": {"x": "00"}}}, "pcrs.sha256.x", "decimal"),
    ({"pcrs": {"sha256": {"٣": "00" * 32}}}, "pcrs.sha256.٣", "decimal"),
    ({"pcrs": {"sha256": {"32": "00" * 32}}}, "pcrs.sha256.32", "at most 31"),
    ({"pcrs": {"sha256": {"7": "00" * 20}}}, "pcrs.sha256.7", "expected 32 bytes, got 20"),
    ({"pcrs": {"sha256": {"7": "zz"}}}, "pcrs.sha256.7", "expected hex"),
    ({"pcrs": {"sha256": {"7": 7}}}, "pcrs.sha256.7", "expected a string"),
    ({"pcrs": {"sha256": {"7": []}}}, "pcrs.sha256.7", "empty list"),
    ({"pcrs": {"sha256": {"7": ["00" * 32, "zz"]}}}, "pcrs.sha256.7.1", "expected hex"),
    ({"pcrs": {"sha256": []}}, "pcrs.sha256", "expected an object"),
    ({"name": 5}, "name", "expected a string"),
])
def test_bad_documents_name_the_key(doc: Any, key: str, message: str) -> None:
    with pytest.raises(PolicyError) as ei:
        Policy.from_dict(doc)
    assert ei.value.key == key and message in str(ei.value)
    assert (repr(key) in str(ei.value)) if key else True


def test_bad_files_are_policy_errors(tmp_path: Path) -> None:
    cases = {"deep.json": "[" * 100_000 + "]" * 100_000, "bad.json": "{", "bad.yaml": "a: [",
             "latin.json": b"\xff\xfe{}", "list.yaml": "- 1\n"}
    for name, text in cases.items():
        path = tmp_path / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(PolicyError):
            Policy.load(path)
    with pytest.raises(PolicyError, match="larger than"):
        Policy.from_text(b" " * (policy.document.MAX_DOCUMENT_BYTES + 1))


def test_save_is_atomic(quoting: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "p.json"
    old = policy.learn(quoting())
    old.save(path)
    before = path.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        Policy().save(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["p.json"]


def test_a_failing_rule_implementation_fails_closed() -> None:
    class Broken(Section):
        key = "broken"

        @classmethod
        def from_dict(cls, doc: Any) -> Broken:
            return cls()

        def to_dict(self) -> Any:
            return {}

        def evaluate(self, evidence: Evidence) -> Iterator[Violation]:
            raise KeyError("boom")

    r = Policy((Broken(),)).evaluate(None)
    assert not r.ok and r.failed_rules() == ["broken.error"] and "KeyError" in r.violations[0].detail


def test_learn_refuses_unknown_sections_and_can_be_limited(quoting: Any) -> None:
    with pytest.raises(PolicyError, match="unknown policy section"):
        policy.learn(quoting(), sections=["nope"])
    assert policy.learn(quoting(), sections=[]).sections == ()
    assert policy.learn(None).sections == ()


def test_pcr_policy_matches_a_digest_computed_independently(quoting: Any) -> None:
    """The values a policy compares are the TPM's: predict PCR 16 after a known extend."""
    before = quoting()
    data = b"policy-test"
    expected = hashlib.sha256(before.pcrs[16] + hashlib.sha256(data).digest()).digest()
    p = Policy.from_dict({"pcrs": {"sha256": {"16": expected.hex()}}})
    assert p.evaluate(before).failed_rules() == ["pcrs.value"]
    quoting.extend(16, data)
    assert p.evaluate(quoting()).ok
