"""The ``ima`` policy section and keylime runtime-policy import, over lists verified by
verify_ima_log: keylime's own test vectors (real kernel lines and keys), and synthesized
lists signed with RSA, P-256 and secp256k1 keys (v2 and v3 signatures)."""

from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

import ima_synth as synth
from tpm2_attest import policy
from tpm2_attest.ima import parse_ima_log
from tpm2_attest.policy import ImaSection, Policy, PolicyError, from_keylime_runtime_policy
from tpm2_attest.verify import ImaResult, verify_ima_log

DATA = Path(__file__).parent / "data" / "ima"
KEYLIME_LINES = (DATA / "keylime_ima_sig.ascii").read_bytes().splitlines(keepends=True)
MEASUREMENTS = b"".join(KEYLIME_LINES[:3])
SIGNATURES = b"".join(KEYLIME_LINES[3:5])
KEYRINGS = KEYLIME_LINES[5]
RSA_B64 = ("MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA1cD7bW5tX5qIVgWskS5tzY+XpqWzcW6HFq5npj8dHFIWsAJJCUdo"
           "SU631hkyY8HP/RfXDPq/J4IeKvx35EVXj49t1Z1FTJBgUlEbkKvqm0rY6jo7PnJ6BsDRrauXtiEXVKNXcWXDk8ES+9v9Cz26BJYA"
           "r+5Xgm2aEyAbj8GhicxUZfsjDm8eJ7ZnQKuhF7jejG5dYAYxnBVu99bQJHI5Fsu3dAjGbys9v7ToNbonS+1bJXdHyEE0swhxBOPv"
           "vV6vx5CzRNw1Sou3rT19T4j8wpsFOyYXVcbbRVBAmBE2Qy2UHvojFqaJN/A9lztllyER1S5heGG6CxK3GoR6pkOXAQIDAQAB")
SECP256K1_B64 = "MFYwEAYHKoZIzj0CAQYFK4EEAAoDQgAEnNH3Y/xOTwRRd8D6hpodRLnVx71qDTLvJHouno7nU7JSzcXWN1PxK+HQEh1V7sMdwBER4KFKE635JTv6C+BRBg=="
KEYRING_STRING = json.dumps({"pubkeys": [RSA_B64, SECP256K1_B64], "keyids": [4081397027, 1394556965]})

# keylime's RUNTIME_POLICY_TEST (test/test_ima_verification.py), in its current full form
KEYLIME_POLICY: dict[str, Any] = {
    "meta": {"version": 1, "generator": 3, "timestamp": "2024-08-28 15:13:11.952478"},
    "release": 0,
    "digests": {
        "boot_aggregate": ["e4cb9f5709c88376b5fc3743cd88e76b9aae8f3d992d845678de5215edb31216"],
        "/lib/modules/5.4.48-openpower1/kernel/drivers/usb/common/usb-common.ko":
            ["f1125b940480d20ad841d26d5ea253edc0704b5ec1548c891edf212cb1a9365e"],
        "/lib/modules/5.4.48-openpower1/kernel/drivers/gpu/drm/drm_panel_orientation_quirks.ko":
            ["cd026b58efdf66658685430ff526490d54a430a3f0066a35ac26a8acab66c55d"],
        "/usr/bin/dd": ["d33d5d13792292e202dbf69a6f1b07bc8a02f01424db8489ba7bb7d43c0290ef"],
        "/usr/bin/zmore": ["b8ae0b8dd04a5935cd8165aa2260cd11b658bd71629bdb52256a675a1f73907b"],
        "/usr/bin/zless": ["233ad3a8e77c63a7d9a56063ec2cad1eafa58850"],
    },
    "excludes": [],
    "keyrings": {".ima": ["a7d52aaa18c23d2d9bb2abb4308c0eeee67387a42259f4a6b1a42257065f3d5a"]},
    "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": None},
    "ima-buf": {},
    "verification-keys": "",
}
EMPTY: dict[str, Any] = {**KEYLIME_POLICY, "digests": {}, "keyrings": {}}
WRONG: dict[str, Any] = {**KEYLIME_POLICY, "digests": {
    "/usr/bin/dd": ["bad05d13792292e202dbf69a6f1b07bc8a02f01424db8489ba7bb7d43c0290ef"],
    "/usr/bin/zmore": ["bad00b8dd04a5935cd8165aa2260cd11b658bd71629bdb52256a675a1f73907b"]}}


def verified(data: bytes, bank: str = "sha1", **kw: Any) -> ImaResult:
    """The list verified against the PCR 10 it replays to (as a quote of it would show)."""
    log = parse_ima_log(data)
    return verify_ima_log(log, {10: log.replay(bank)}, bank=bank, **kw)


PCRS0 = {i: hashlib.sha256(b"boot %d" % i).digest() for i in range(10)}


def booted(entries: list[synth.Entry]) -> ImaResult:
    """A list that starts with the kernel's boot_aggregate, verified against a sha256 quote of
    PCRs 0-10 (so the boot_aggregate is matched to the quote)."""
    full = [synth.boot_aggregate_entry(PCRS0, "sha256"), *entries]
    log = parse_ima_log(synth.binary(full))
    res = verify_ima_log(log, {**PCRS0, **log.replay_all("sha256")})
    assert res.boot_aggregate == "verified"
    return res


def judge(doc: dict[str, Any], data: bytes, **kw: Any) -> list[str]:
    return from_keylime_runtime_policy(doc, **kw).evaluate(ima=verified(data)).failed_rules()


# -- keylime's own scenarios ------------------------------------------------------------------------


def test_keylime_measurements_against_allow_lists() -> None:
    assert judge(KEYLIME_POLICY, MEASUREMENTS) == []
    assert judge(EMPTY, MEASUREMENTS) == ["ima.boot_aggregate", "ima.unknown_file"]
    r = from_keylime_runtime_policy(EMPTY).evaluate(ima=verified(MEASUREMENTS))
    assert [v.seen for v in r.violations][1]["path"].endswith("usb-common.ko")
    assert len(r.violations) == 3  # every unknown file, not only the first


def test_keylime_signatures_need_trusted_keys() -> None:
    assert judge(EMPTY, SIGNATURES) == ["ima.unknown_file"]
    one = {**EMPTY, "verification-keys": json.dumps({"pubkeys": [RSA_B64], "keyids": [4081397027]})}
    r = from_keylime_runtime_policy(one).evaluate(ima=verified(SIGNATURES))
    assert [v.seen["path"] for v in r.violations] == ["/usr/bin/zmore"]
    assert "no trusted key has id 0x531f4025" in r.violations[0].detail
    both = {**EMPTY, "verification-keys": KEYRING_STRING}
    assert judge(both, SIGNATURES) == []
    # keys given as PEM, with their key ids computed (no keyids in the document)
    pems = [serialization.load_der_public_key(base64.b64decode(k)).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo) for k in (RSA_B64, SECP256K1_B64)]
    assert judge(EMPTY, SIGNATURES, keys=pems) == []


def test_keylime_mixed_allow_list_and_signatures() -> None:
    combined = MEASUREMENTS + SIGNATURES
    assert judge(KEYLIME_POLICY, combined) == []
    assert judge({**EMPTY, "verification-keys": KEYRING_STRING}, combined) == \
        ["ima.boot_aggregate", "ima.unknown_file"]
    # a valid signature admits a file whose allow-list digest is wrong, or that is not listed
    assert judge({**WRONG, "verification-keys": KEYRING_STRING}, SIGNATURES) == []
    # the allow-list admits a file whose signature cannot be checked
    assert judge(KEYLIME_POLICY, SIGNATURES) == []
    r = from_keylime_runtime_policy(WRONG).evaluate(ima=verified(SIGNATURES))
    assert r.failed_rules() == ["ima.digest"] and "no trusted key" in r.violations[0].detail
    # excludes (keylime matches the start of the path)
    excl = {**WRONG, "excludes": ["boot_aggregate", "/lib/modules/", "/usr/bin/d"]}
    r = from_keylime_runtime_policy(excl).evaluate(ima=verified(combined))
    assert [v.seen["path"] for v in r.violations] == ["/usr/bin/zmore"]


def test_a_malformed_signature_is_refused_by_the_binding() -> None:
    """keylime's BAD_SIGNATURES line (its size field changed) no longer hashes to its template
    hash: the verifier refuses it before any policy sees it."""
    line = KEYLIME_LINES[4].replace(b"531f402500483046", b"531f402548003046")
    log = parse_ima_log(line)
    with pytest.raises(Exception) as exc:
        verify_ima_log(log, {10: log.replay("sha1")}, bank="sha1")
    assert getattr(exc.value, "reason", None) == "IMA_TEMPLATE_HASH_MISMATCH"


def test_keylime_keyring_measurements() -> None:
    assert judge(KEYLIME_POLICY, KEYRINGS) == []
    assert judge(EMPTY, KEYRINGS) == ["ima.keyring"]
    ignored = {**EMPTY, "ima": {"ignored_keyrings": ["*"], "log_hash_alg": "sha1", "dm_policy": None}}
    assert judge(ignored, KEYRINGS) == []
    by_name = {**EMPTY, "ima": {"ignored_keyrings": [".ima"], "log_hash_alg": "sha1", "dm_policy": None}}
    assert judge(by_name, KEYRINGS) == []
    wrong = {**EMPTY, "keyrings": {".ima": ["00" * 32]}}
    r = from_keylime_runtime_policy(wrong).evaluate(ima=verified(KEYRINGS))
    assert r.failed_rules() == ["ima.keyring"] and "not allowed" in r.violations[0].detail


# -- signatures and keys, synthesized ----------------------------------------------------------------

def _cert(key: Any) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ima test key")])
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(7).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


KEYS = {
    "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "p256": ec.generate_private_key(ec.SECP256R1()),
    "secp256k1": ec.generate_private_key(ec.SECP256K1()),
    "p384": ec.generate_private_key(ec.SECP384R1()),
}


def _pem(key: Any) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def signed_entry(path: str, key: Any, alg: str = "sha256", version: int = 2, **kw: Any) -> synth.Entry:
    d = synth.file_digest(path, alg)
    return synth.ima_sig(path, sig=synth.sign_digest(key, d, alg, version, **kw), alg=alg, digest=d)


@pytest.mark.parametrize("kind", sorted(KEYS))
@pytest.mark.parametrize("version", [2, 3])
def test_signed_files_are_admitted_by_trusted_keys(kind: str, version: int) -> None:
    key = KEYS[kind]
    entries = [signed_entry(f"/usr/bin/{kind}-{alg}", key, alg, version) for alg in ("sha256", "sha1", "sha512")]
    trusted = Policy.from_dict({"ima": {"keys": [_pem(key)]}})
    assert trusted.evaluate(ima=booted(entries)).ok
    nobody = Policy.from_dict({"ima": {"keys": [_pem(KEYS["p384" if kind != "p384" else "rsa"])]}})
    r = nobody.evaluate(ima=booted(entries))
    assert r.failed_rules() == ["ima.unknown_file"] and len(r.violations) == 3
    # a key whose id collides but does not verify
    forged = {"ima": {"keys": [{"key": _pem(KEYS["p384" if kind != "p384" else "rsa"]),
                                "keyid": f"0x{synth.ima_keyid(key.public_key()):08x}"}]}}
    r = Policy.from_dict(forged).evaluate(ima=booted(entries))
    assert "does not verify" in r.violations[0].detail


def test_signature_failures_are_explained() -> None:
    key = KEYS["p256"]
    good = signed_entry("/bin/ok", key)
    other_digest = synth.file_digest("/bin/other")
    wrong_file = synth.ima_sig("/bin/moved", sig=good.fields[2][1], digest=other_digest)
    sha1_sig_on_sha256 = synth.ima_sig("/bin/mixed", digest=synth.file_digest("/bin/mixed"),
                                       sig=synth.sign_digest(key, synth.file_digest("/bin/mixed", "sha1"), "sha1"))
    short = synth.ima_sig("/bin/short", sig=b"\x03\x02\x04")
    not_sig = synth.ima_sig("/bin/hash-xattr", sig=b"\x04\x04" + bytes(40))
    r = Policy.from_dict({"ima": {"keys": [_pem(key)]}}).evaluate(
        ima=booted([good, wrong_file, sha1_sig_on_sha256, short, not_sig]))
    details = {v.seen["path"]: v.detail for v in r.violations}
    assert "/bin/ok" not in details
    assert "does not verify" in details["/bin/moved"]
    assert "does not verify" in details["/bin/mixed"]
    assert "too short" in details["/bin/short"]
    assert "not a signature" in details["/bin/hash-xattr"]


def test_keys_loaded_onto_a_keyring_sign_later_files() -> None:
    key = KEYS["secp256k1"]
    cert = _cert(key)
    key_entry = synth.ima_buf(".ima", cert)
    before = signed_entry("/usr/bin/before", key)
    after = signed_entry("/usr/bin/after", key)
    three = [before, key_entry, after]
    allowed = {"ima": {"keyrings": {".ima": [hashlib.sha256(cert).hexdigest()]}}}
    r = Policy.from_dict(allowed).evaluate(ima=booted(three))
    assert [v.seen["path"] for v in r.violations] == ["/usr/bin/before"]  # order matters
    r = Policy.from_dict({"ima": {"ignored_keyrings": [".ima"]}}).evaluate(ima=booted(three))
    assert [v.seen["path"] for v in r.violations] == ["/usr/bin/before", "/usr/bin/after"]  # ignored: not trusted
    r = Policy.from_dict({"ima": {}}).evaluate(ima=booted(three))
    assert r.failed_rules() == ["ima.unknown_file", "ima.keyring"]
    # incremental: the key was verified in an earlier call and is carried in the state
    first = verified(synth.binary([key_entry]))
    raw = synth.binary([key_entry, after])
    log = parse_ima_log(raw)
    second = verify_ima_log(raw[first.state.offset:], {10: log.replay("sha1")}, bank="sha1", state=first.state)
    assert [e.path for e in second.entries] == ["/usr/bin/after"] and second.key_buffers == ((".ima", cert),)
    no_boot = {"ima": {**allowed["ima"], "require_boot_aggregate": False}}
    assert Policy.from_dict(no_boot).evaluate(ima=second).ok
    other_key = {"ima": {"keyrings": {".ima": ["00" * 32]}, "require_boot_aggregate": False}}
    assert Policy.from_dict(other_key).evaluate(ima=second).failed_rules() == ["ima.unknown_file"]


def test_buffers_and_unsupported_keys() -> None:
    kexec = synth.ima_buf("kexec-cmdline", b"root=/dev/sda1 quiet")
    ed = synth.ima_buf(".ima", __import__("cryptography.hazmat.primitives.asymmetric.ed25519",
                                          fromlist=["x"]).Ed25519PrivateKey.generate().public_key()
                       .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    r = Policy.from_dict({"ima": {}}).evaluate(ima=booted([kexec, ed]))
    assert r.failed_rules() == ["ima.buffer", "ima.keyring"]
    assert "not an IMA signing key" in r.violations[1].detail
    ok = {"ima": {"buffers": {"kexec-cmdline": [hashlib.sha256(b"root=/dev/sda1 quiet").hexdigest()]},
                  "ignored_keyrings": ["*"]}}
    assert Policy.from_dict(ok).evaluate(ima=booted([kexec, ed])).ok


def test_violations_boot_aggregate_templates() -> None:
    entries = [synth.ima_ng("/bin/a"), synth.violation("/var/log/x"), synth.unknown("/u")]
    data = synth.binary(entries)
    doc = {"ima": {"digests": {"/bin/a": [f"sha256:{synth.file_digest('/bin/a').hex()}"]}}}
    r = Policy.from_dict(doc).evaluate(ima=verified(data))
    assert r.failed_rules() == ["ima.boot_aggregate", "ima.violation", "ima.template"]
    doc["ima"]["allow_violations"] = True
    assert Policy.from_dict(doc).evaluate(ima=verified(data)).failed_rules() == ["ima.boot_aggregate", "ima.template"]
    doc["ima"]["allow_violations"] = False
    doc["ima"]["excludes"] = ["/var/log/.*"]
    assert "ima.violation" not in Policy.from_dict(doc).evaluate(ima=verified(data)).failed_rules()
    # a digest of another algorithm does not match an alg:hex value, a bare value matches any
    sha1 = synth.binary([synth.ima_ng("/bin/a", alg="sha1", digest=synth.file_digest("/bin/a"))])
    assert "ima.digest" in Policy.from_dict(doc).evaluate(ima=verified(sha1)).failed_rules()
    doc["ima"]["digests"]["/bin/a"] = [synth.file_digest("/bin/a").hex()]
    assert "ima.digest" not in Policy.from_dict(doc).evaluate(ima=verified(sha1)).failed_rules()


def test_boot_aggregate_verified_by_the_quote_needs_no_listing() -> None:
    pcrs0 = {i: hashlib.sha256(b"%d" % i).digest() for i in range(10)}
    entries = [synth.boot_aggregate_entry(pcrs0, "sha256"), synth.ima_ng("/bin/a")]
    log = parse_ima_log(synth.binary(entries))
    res = verify_ima_log(log, {**pcrs0, 10: log.replay("sha256")})
    assert res.boot_aggregate == "verified"
    doc = {"ima": {"digests": {"/bin/a": [synth.file_digest("/bin/a").hex()]}}}
    assert Policy.from_dict(doc).evaluate(ima=res).ok
    unquoted = verify_ima_log(log, {10: log.replay("sha256")})
    assert Policy.from_dict(doc).evaluate(ima=unquoted).failed_rules() == ["ima.boot_aggregate"]


def test_kexec_boot_aggregate_in_the_middle_of_the_list() -> None:
    """After a kexec the new kernel restores the old list and measures its own boot_aggregate
    (ima_init: ima_load_kexec_buffer, then ima_add_boot_aggregate) without a TPM reset: a
    second boot_aggregate, over the same PCRs 0-9, in the middle of the list. keylime accepts
    any boot_aggregate equal to the one of the quoted PCRs; so must we."""
    files = [synth.ima_ng("/bin/a"), synth.ima_ng("/bin/b")]
    kexec = synth.boot_aggregate_entry(PCRS0, "sha256")
    res = booted([files[0], kexec, files[1]])
    assert res.entries[2].path == "boot_aggregate" and res.boot_aggregates == (0, 2)
    digests = {f.path: [synth.file_digest(f.path).hex()] for f in files}
    assert Policy.from_dict({"ima": {"digests": digests}}).evaluate(ima=res).ok
    keylime = {**EMPTY, "digests": digests}
    assert from_keylime_runtime_policy(keylime).evaluate(ima=res).ok
    assert policy.learn(ima=res).to_dict()["ima"]["digests"].keys() == set(digests)
    # one that does not hash the quoted PCRs is judged like a first one: listed or refused
    other = synth.boot_aggregate_entry({**PCRS0, 4: b"\x44" * 32}, "sha256")
    res = booted([files[0], other, files[1]])
    assert res.boot_aggregates == (0,)
    r = Policy.from_dict({"ima": {"digests": digests}}).evaluate(ima=res)
    assert r.failed_rules() == ["ima.boot_aggregate"] and "entry 2" in r.violations[0].detail
    listed = {**digests, "boot_aggregate": [other.fields[0][1][8:].hex()]}
    assert Policy.from_dict({"ima": {"digests": listed}}).evaluate(ima=res).ok
    assert from_keylime_runtime_policy({**EMPTY, "digests": listed}).evaluate(ima=res).ok
    # incremental: the kexec entry arrives in a later call, matched all the same
    head = parse_ima_log(synth.binary([synth.boot_aggregate_entry(PCRS0, "sha256"), files[0]]))
    first = verify_ima_log(head, {**PCRS0, **head.replay_all("sha256")})
    full = parse_ima_log(synth.binary([synth.boot_aggregate_entry(PCRS0, "sha256"), files[0], kexec]))
    later = verify_ima_log(full, {**PCRS0, **full.replay_all("sha256")}, state=first.state)
    assert [e.index for e in later.entries] == [2] and later.boot_aggregates == (2,)
    assert Policy.from_dict({"ima": {"digests": digests}}).evaluate(ima=later).ok


def test_learned_policy_and_evaluate_with_the_other_sections() -> None:
    entries = synth.every_template()
    res = booted(entries)
    p = policy.learn(ima=res)
    assert [s.key for s in p.sections] == ["ima"]
    assert p.evaluate(ima=res).ok
    assert Policy.from_dict(json.loads(p.to_json())).evaluate(ima=res).ok
    changed = copy.deepcopy(entries)
    changed[1] = synth.ima_ng("/usr/bin/bash", digest=bytes(32))
    r = p.evaluate(ima=booted(changed))
    assert r.failed_rules() == ["ima.digest"] and r.violations[0].seen["path"] == "/usr/bin/bash"
    assert p.evaluate().failed_rules() == ["ima.no_evidence"]
    learned = p.section("ima")
    assert isinstance(learned, ImaSection) and learned.allow_violations


# -- documents ---------------------------------------------------------------------------------------


def test_round_trip_and_errors_name_the_key() -> None:
    doc = {"ima": {"digests": {"/a": ["sha256:" + "11" * 32, "22" * 20]}, "excludes": ["/tmp/.*"],
                   "keys": [_pem(KEYS["rsa"]), {"key": _pem(KEYS["p256"]), "keyid": "0x01020304"}],
                   "keyrings": {".ima": ["33" * 32]}, "ignored_keyrings": [".evm"],
                   "buffers": {"kexec-cmdline": ["44" * 32]}, "allow_violations": True}}
    p = Policy.from_dict(doc)
    assert p.to_dict()["ima"] == doc["ima"] and Policy.from_dict(p.to_dict()) == p
    bad = [({"nope": 1}, "ima.nope"), ({"digests": {"/a": ["zz"]}}, "ima.digests./a.0"),
           ({"digests": {"/a": []}}, "ima.digests./a"), ({"digests": {"/a": ["sha256:" + "11" * 20]}}, "ima.digests./a.0"),
           ({"digests": {"/a": ["crc:" + "11" * 20]}}, "ima.digests./a.0"), ({"excludes": ["("]}, "ima.excludes.0"),
           ({"keys": ["not a key"]}, "ima.keys.0"), ({"keys": [{"key": _pem(KEYS["rsa"]), "keyid": "x"}]}, "ima.keys.0.keyid"),
           ({"keys": [{"key": _pem(KEYS["rsa"]), "extra": 1}]}, "ima.keys.0.extra"),
           ({"allow_violations": 1}, "ima.allow_violations"), ({"keyrings": []}, "ima.keyrings")]
    for section, key in bad:
        with pytest.raises(PolicyError) as exc:
            Policy.from_dict({"ima": section})
        assert exc.value.key == key, (section, exc.value)


def test_keylime_import_refuses_what_it_cannot_honour() -> None:
    cases = [({**KEYLIME_POLICY, "allowlist": {}}, "allowlist"),
             ({**KEYLIME_POLICY, "meta": {"version": 1, "color": "red"}}, "meta.color"),
             ({**KEYLIME_POLICY, "meta": {"version": 2}}, "meta.version"),
             ({**KEYLIME_POLICY, "ima": {"ignored_keyrings": [], "log_hash_alg": "md5", "dm_policy": None}},
              "ima.log_hash_alg"),
             ({**KEYLIME_POLICY, "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": {"rules": {}}}},
              "ima.dm_policy"),
             ({**KEYLIME_POLICY, "ima": {"ignored_keyrings": [], "extra": 1}}, "ima.extra"),
             ({**KEYLIME_POLICY, "verification-keys": "{not json"}, "verification-keys"),
             ({**KEYLIME_POLICY, "verification-keys": json.dumps({"pubkeys": ["AAAA"]})}, "verification-keys.pubkeys.0"),
             ({**KEYLIME_POLICY, "verification-keys": json.dumps({"pubkeys": [], "keyids": [1]})},
              "verification-keys.keyids"),
             ({**KEYLIME_POLICY, "excludes": ["(("]}, "excludes.0"),
             ({**KEYLIME_POLICY, "digests": {"/a": ["xyz"]}}, "digests./a.0"),
             ({**KEYLIME_POLICY, "release": -1}, "release"),
             ({"payloadType": "application/vnd.keylime+json", "payload": "e30=", "signatures": []}, "payload")]
    for doc, key in cases:
        with pytest.raises(PolicyError) as exc:
            from_keylime_runtime_policy(doc)
        assert exc.value.key == key, (key, exc.value)
    with pytest.raises(PolicyError):
        from_keylime_runtime_policy("not json")
    with pytest.raises(PolicyError):
        from_keylime_runtime_policy(b"\xff")


def test_keylime_import_accepts_its_documents_as_they_are() -> None:
    text = json.dumps(KEYLIME_POLICY)
    assert from_keylime_runtime_policy(text) == from_keylime_runtime_policy(text.encode())
    # the policy keylime-policy writes (test/data/create-runtime-policy/policy-sha256)
    minimal = {"meta": {"version": 1, "generator": 3, "timestamp": "2024-09-12 13:44:44.797331"}, "release": 0,
               "digests": {"/base_policy_data": ["35f6036dcbb4d819a90cc3282659754ab1a225e60f593a209c27b80174ba3180"]},
               "excludes": [], "keyrings": {}, "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": None},
               "ima-buf": {}, "verification-keys": ""}
    sec = from_keylime_runtime_policy(minimal).section("ima")
    assert isinstance(sec, ImaSection) and list(sec.digests) == ["/base_policy_data"]
    # twice-encoded verification keys (as keylime's database holds them)
    doubled = {**EMPTY, "verification-keys": json.dumps(KEYRING_STRING)}
    assert judge(doubled, SIGNATURES) == []
    # keylime's keyring JSON may carry a meta version
    with_meta = {**EMPTY, "verification-keys": json.dumps({**json.loads(KEYRING_STRING), "meta": {"version": 1}})}
    assert judge(with_meta, SIGNATURES) == []
    with pytest.raises(PolicyError) as exc:
        from_keylime_runtime_policy({**EMPTY, "verification-keys": json.dumps({"pubkeys": [], "meta": {}})})
    assert exc.value.key == "verification-keys.meta.version"
    # violations: keylime ignores them by default; refusable
    data = synth.binary([synth.violation("/tmp/x")])
    assert judge(EMPTY, data) == []
    assert judge(EMPTY, data, allow_violations=False) == ["ima.violation"]


KEYLIME_DATA = DATA / "keylime-create-runtime-policy"


@pytest.mark.parametrize("alg", ["sha1", "sha256", "sha384", "sha512", "sm3_256"])
def test_keylime_log_hash_alg_takes_keylime_names(alg: str) -> None:
    """keylime's algorithms.Hash (the names ``ima.log_hash_alg`` takes) includes ``sm3_256``."""
    doc = {**EMPTY, "ima": {**EMPTY["ima"], "log_hash_alg": alg}}
    assert isinstance(from_keylime_runtime_policy(doc).section("ima"), ImaSection)
    with pytest.raises(PolicyError) as exc:
        from_keylime_runtime_policy({**EMPTY, "ima": {**EMPTY["ima"], "log_hash_alg": "md5"}})
    assert exc.value.key == "ima.log_hash_alg"


def test_keylime_policies_from_its_test_data_judge_its_lists() -> None:
    """keylime's own files: policy-sha256 knows none of ima-log-sha256's entries; a policy of
    that list's digests (what `keylime-policy create runtime --ima-measurement-list` makes)
    accepts it; policy-unknown (a 31-byte digest) imports."""
    raw = (KEYLIME_DATA / "ima-log-sha256").read_bytes()
    res = verified(raw)
    assert judge(json.loads((KEYLIME_DATA / "policy-sha256").read_text()), raw) == [
        "ima.boot_aggregate", "ima.unknown_file"]  # no quoted PCRs 0-9 to match its boot_aggregate
    learned = {**EMPTY, "digests": {e.path: [e.digest.hex] for e in res.entries if e.digest and e.path}}
    assert from_keylime_runtime_policy(learned).evaluate(ima=res).ok
    unknown = from_keylime_runtime_policy((KEYLIME_DATA / "policy-unknown").read_bytes()).section("ima")
    assert isinstance(unknown, ImaSection) and list(unknown.digests) == ["/rootfs_data"]


def test_keylime_import_takes_der_key_files() -> None:
    """``keys`` are key files as keylime's --sign_verification_key reads them: PEM or DER."""
    der = base64.b64decode(RSA_B64)
    pem = serialization.load_der_public_key(der).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for key in (der, pem, pem.decode()):
        assert from_keylime_runtime_policy(EMPTY, keys=[key]).evaluate(ima=verified(SIGNATURES[:SIGNATURES.index(
            b"\n") + 1])).ok


def test_keylime_legacy_allowlists_and_exclude_lists() -> None:
    """keylime_tenant --allowlist/--exclude still take the legacy formats (converted by
    keylime's convert_runtime_policy): a flat list of '<digest> <path>' lines with
    '%keyring:<name>' entries, or a JSON allow-list with 'hashes'; an exclude list is one
    regular expression a line, '#' comments and blank lines skipped."""
    flat = (DATA / "keylime-ima-allowlist-short.txt").read_bytes()  # sha256 6b010e35... as keylime's test
    assert hashlib.sha256(flat).hexdigest() == "6b010e359bbcebafb9b3e5010c302c94d29e249f86ae6293339506041aeebd41"
    sec = policy.from_keylime_allowlist(flat).section("ima")
    assert isinstance(sec, ImaSection) and len(sec.digests) == 21
    assert list(sec.digests["/boot/grub2/i386-pc/testload.mod"].text) == ["68e1d012e3f193dcde955e6ffbbc80e22b0f8778"]
    assert list(sec.digests["boot_aggregate"].text) == [
        "sha256:4309217e9709def327c3409407f4d52907aeba46ef1b4f46529fd095f2ef9fb2"]
    assert list(sec.keyrings[".ima"].text) == ["a7d52aaa18c23d2d9bb2abb4308c0eeee67387a42259f4a6b1a42257065f3d5a"]
    assert policy.from_keylime_allowlist(flat.decode()) == policy.from_keylime_allowlist(flat)
    # keylime's own legacy JSON allow-list (test_ima_verification.ALLOWLIST) judges its lines
    legacy_json = {"meta": {"version": 6}, "hashes": KEYLIME_POLICY["digests"],
                   "keyrings": KEYLIME_POLICY["keyrings"], "ima": {"dm_policy": None}}
    p = policy.from_keylime_allowlist(json.dumps(legacy_json), keys=[base64.b64decode(RSA_B64)])
    assert p.evaluate(ima=verified(MEASUREMENTS + SIGNATURES)).ok
    assert policy.from_keylime_allowlist(json.dumps({**legacy_json, "hashes": {"/other": ["00" * 32]}})).evaluate(
        ima=verified(MEASUREMENTS)).failed_rules() == ["ima.boot_aggregate", "ima.unknown_file"]
    # exclude lists: start-anchored regular expressions, as keylime applies them
    excl = "# generated\n\nboot_aggregate\n/lib/modules/\n"
    p = policy.from_keylime_allowlist(json.dumps({**legacy_json, "hashes": {"x": ["00" * 20]}}), excludes=excl)
    assert p.evaluate(ima=verified(MEASUREMENTS)).ok
    # a runtime policy is not an allow-list, nor is JSON without hashes; bad lines name themselves
    for doc, key in [(json.dumps(KEYLIME_POLICY), "digests"), (json.dumps({"meta": {}}), "hashes"),
                     ("zz /bin/a\n", "digests./bin/a.0"), (b"\xff\xfe", "")]:
        with pytest.raises(PolicyError) as exc:
            policy.from_keylime_allowlist(doc)
        assert exc.value.key == key
    with pytest.raises(PolicyError) as exc:
        policy.from_keylime_allowlist(flat, excludes="(unclosed\n")
    assert exc.value.key == "excludes.0"
    # keylime skips lines that are not '<digest> <path>'
    assert list(policy.from_keylime_allowlist("onlyonetoken\n" + "ab" * 20 + " /a\n").section("ima").digests) == ["/a"]


def test_many_offending_files_are_capped_per_rule() -> None:
    from tpm2_attest.policy.base import MAX_LISTED

    res = booted([synth.ima_ng(f"/tmp/x{i}") for i in range(40)] + [synth.violation("/v")])
    p = Policy.from_dict({"ima": {}})
    r = p.evaluate(ima=res)
    unknown = [v for v in r.violations if v.rule == "ima.unknown_file"]
    assert len(unknown) == MAX_LISTED + 1 and unknown[-1].seen == {"more": 40 - MAX_LISTED}
    assert r.failed_rules() == ["ima.unknown_file", "ima.violation"]
    section = p.section("ima")
    assert isinstance(section, ImaSection)
    assert len([v for v in section.violations(res) if v.rule == "ima.unknown_file"]) == 40
