"""Secure Boot state from PCR 7: databases, authorities, flags, and go-attestation's rejections."""

from __future__ import annotations

import hashlib
import json

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

import eventlog_synth as synth
from tpm2_attest import policy, verify
from tpm2_attest.eventlog import (
    KNOWN_ACTIONS,
    EventLogBankError,
    SecureBootError,
    parse_event_log,
    parse_signature_lists,
    secure_boot_state,
)
from tpm2_attest.policy import Policy

LOGS = synth.LOGS_DIR


def real(name: str) -> bytes:
    return (LOGS / name).read_bytes()


@pytest.mark.parametrize("bank", ["sha1", "sha256", "sha384"])
def test_real_secure_boot_log(bank: str) -> None:
    log = parse_event_log(real("sb_cert_eventlog"))
    sb = secure_boot_state(log, bank)
    assert sb.enabled and sb.bank == bank
    assert sb.pk is not None and sb.pk.certificates[0].subject.rfc4514_string() == "CN=newpk"
    assert sb.kek is not None
    assert any("KEK CA 2011" in c.subject.rfc4514_string() for c in sb.kek.certificates)
    assert sb.db is not None and len(sb.db.entries) == 4
    assert sb.dbx is not None and len(sb.dbx.sha256_hashes) == len(sb.dbx.entries) == 77
    assert sb.pk.digest == log.events[sb.pk.event_index].digest(bank)
    assert len(sb.authorities) == 3 and sb.separator_seen and sb.spec_order
    assert not sb.debug_mode and not sb.dma_protection_disabled
    assert sb.pre_separator_authorities == ()
    first = sb.post_separator_authorities[0]
    assert first.certificate is not None and "Microsoft" in first.certificate.subject.rfc4514_string()
    assert first.certificate in sb.db.certificates
    json.dumps(sb.to_dict())


@pytest.mark.parametrize("name", ["ubuntu_2104_shielded_vm_no_secure_boot_eventlog",
                                  "coreos_36_shielded_vm_no_secure_boot_eventlog",
                                  "crypto_agile_eventlog", "ebs_event_missing_eventlog"])
def test_real_logs_without_secure_boot(name: str) -> None:
    log = parse_event_log(real(name))
    sb = secure_boot_state(log)  # default bank: sha256, or the log's only bank (SHA-1 log)
    assert not sb.enabled
    assert sb.pk is not None and sb.db is not None and sb.dbx is not None


def test_absent_secure_boot_variable_measured_empty() -> None:
    """crypto_agile_eventlog measures SecureBoot with no data: the variable does not exist."""
    sb = secure_boot_state(parse_event_log(real("crypto_agile_eventlog")), "sha256")
    assert not sb.enabled


@pytest.mark.parametrize("banks", [("sha256",), ("sha1", "sha384", "sha512")])
def test_synthesized_secure_boot(banks: tuple[str, ...]) -> None:
    s = synth.secure_boot_log(banks)
    log = parse_event_log(s.build())
    for bank in banks:
        sb = secure_boot_state(log, bank)
        assert sb.enabled
        assert sb.pk is not None
        assert sb.pk.certificates[0].public_bytes(Encoding.DER) == s.certs["PK"]
        assert sb.dbx is not None and list(sb.dbx.sha256_hashes) == s.dbx_hashes
        assert sb.dbx.value_sha256 == hashlib.sha256(log.events[sb.dbx.event_index].info.value).digest()
        (auth,) = sb.authorities
        assert auth.after_separator and auth.owner == synth.OWNER
        assert sb.db is not None and auth.certificate == sb.db.certificates[0]


def test_sha1_legacy_secure_boot() -> None:
    log = parse_event_log(synth.secure_boot_log(legacy=True).build())
    assert secure_boot_state(log).enabled and secure_boot_state(log, "sha1").bank == "sha1"
    with pytest.raises(EventLogBankError):
        secure_boot_state(log, "sha256")


def test_debug_mode_and_dma_flags() -> None:
    sb = secure_boot_state(parse_event_log(synth.secure_boot_log(debug=True).build()))
    assert sb.debug_mode and sb.enabled

    for text in (b"DMA Protection Disabled", b"DMA Protection Disabled\0"):
        def dma(b: synth.LogBuilder, text: bytes = text) -> None:
            b.event(7, synth.EV_EFI_ACTION, text)

        sb = secure_boot_state(parse_event_log(synth.secure_boot_log(extra_pcr7=dma).build()))
        assert sb.dma_protection_disabled


def test_other_variables_are_reported() -> None:
    def extra(b: synth.LogBuilder) -> None:
        b.event(7, synth.EV_EFI_VARIABLE_DRIVER_CONFIG,
                synth.uefi_variable(synth.EFI_GLOBAL_VARIABLE, "AuditMode", b"\x00"))
        b.event(7, synth.EV_EFI_VARIABLE_DRIVER_CONFIG,
                synth.uefi_variable(synth.EFI_IMAGE_SECURITY_DATABASE, "dbt", b""))

    sb = secure_boot_state(parse_event_log(synth.secure_boot_log(extra_pcr7=extra).build()))
    assert [v.name for v in sb.other_variables] == ["AuditMode"]
    assert sb.dbt is not None and sb.dbt.entries == ()


def _fails(extra, match: str, **kw: object) -> None:
    log = parse_event_log(synth.secure_boot_log(extra_pcr7=extra, **kw).build())
    with pytest.raises(SecureBootError, match=match) as exc:
        secure_boot_state(log)
    assert exc.value.offset is None or 0 < exc.value.offset < log.size


def test_duplicate_variable_is_rejected() -> None:
    def dup(b: synth.LogBuilder) -> None:
        b.event(7, synth.EV_EFI_VARIABLE_DRIVER_CONFIG,
                synth.uefi_variable(synth.EFI_GLOBAL_VARIABLE, "SecureBoot", b"\x00"))

    _fails(dup, "measured twice")


def test_variable_after_separator_is_rejected() -> None:
    s = synth.secure_boot_log()
    s.builder.event(7, synth.EV_EFI_VARIABLE_DRIVER_CONFIG,
                    synth.uefi_variable(synth.EFI_GLOBAL_VARIABLE, "MokSBState", b"\x00"))
    with pytest.raises(SecureBootError, match="after the separator"):
        secure_boot_state(parse_event_log(s.build()))


def test_second_separator_is_rejected() -> None:
    s = synth.secure_boot_log()
    s.builder.event(7, synth.EV_SEPARATOR, b"\0\0\0\0")
    with pytest.raises(SecureBootError, match="second separator"):
        secure_boot_state(parse_event_log(s.build()))


def test_error_separator_is_rejected() -> None:
    def err(b: synth.LogBuilder) -> None:
        b.event(7, synth.EV_SEPARATOR, b"\xff\xff\xff\xff")

    _fails(err, "separator data")


def test_relabelled_event_is_not_trusted() -> None:
    """A variable whose digest covers only its value (an EV_EFI_VARIABLE_BOOT measurement)
    presented as EV_EFI_VARIABLE_DRIVER_CONFIG: its data no longer hashes to the digest."""
    def relabel(b: synth.LogBuilder) -> None:
        b.event(7, synth.EV_EFI_VARIABLE_DRIVER_CONFIG,
                synth.uefi_variable(synth.EFI_GLOBAL_VARIABLE, "DeployedMode", b"\x01"),
                measured=b"\x01")

    _fails(relabel, "does not match its sha256 digest")


@pytest.mark.parametrize("etype", [synth.EV_IPL, synth.EV_EFI_VARIABLE_BOOT])
def test_unexpected_event_type_in_pcr7_is_rejected(etype: int) -> None:
    """A standard TCG event type that has no place in PCR 7 makes the log inconsistent."""
    def odd(b: synth.LogBuilder) -> None:
        b.event(7, etype, synth.uefi_variable(synth.EFI_GLOBAL_VARIABLE, "SecureBoot", b"\x01"))

    _fails(odd, "unexpected")


@pytest.mark.parametrize("etype", [0x8401, 0x12345678])
def test_vendor_event_in_pcr7_is_recorded_and_refused_unless_allowed(etype: int) -> None:
    """A vendor event type (AMD's TSME event is 0x8401, handled by canonical/secboot) does not
    make the log unverifiable; its digest, what was extended, is what a policy may allow."""
    def vendor(b: synth.LogBuilder) -> None:
        b.event(7, etype, b"\x01\x00 vendor data")

    b = synth.secure_boot_log(extra_pcr7=vendor).builder
    res = verify.verify_event_log(b.build(), b.expected("sha256"))
    sb = res.secure_boot
    assert sb is not None and sb.enabled
    (act,) = sb.actions
    digest = hashlib.sha256(b"\x01\x00 vendor data").digest().hex()
    assert act.event_type == f"0x{etype:08x}" or act.event_type.endswith(f"{etype:x}")
    assert act.text == f"{act.event_type} {digest}" and act.known is None
    r = Policy.from_dict({"secure_boot": {"required": True}}).evaluate(None, res)
    assert r.failed_rules() == ["secure_boot.unknown_action"]
    allowed = {"secure_boot": {"required": True, "allowed_actions": [act.text]}}
    assert Policy.from_dict(allowed).evaluate(None, res).ok


def test_unknown_efi_action_is_rejected() -> None:
    """An unknown PCR 7 action never passes silently: the log verifies and records it (the
    machine can attest), and a policy's secure_boot section refuses it unless it lists it."""
    def action(b: synth.LogBuilder) -> None:
        b.event(7, synth.EV_EFI_ACTION, b"Something else")

    b = synth.secure_boot_log(extra_pcr7=action).builder
    res = verify.verify_event_log(b.build(), b.expected("sha256"))
    sb = res.secure_boot
    assert sb is not None and sb.enabled and res.state.secure_boot == sb
    assert sb.unknown_actions == ("Something else",) and not sb.dma_protection_disabled
    for doc in ({"required": True}, {"required": False}, {}):
        r = Policy.from_dict({"secure_boot": doc}).evaluate(None, res)
        assert r.failed_rules() == ["secure_boot.unknown_action"]
        assert "'Something else'" in r.violations[0].detail
        assert r.violations[0].seen == {"event": sb.actions[0].event_index,
                                        "action": "Something else"}
    allowed = {"secure_boot": {"required": True, "allowed_actions": ["Something else"]}}
    assert Policy.from_dict(allowed).evaluate(None, res).ok
    assert not Policy.from_dict({"secure_boot": {"allowed_actions": ["Something"]}}).evaluate(
        None, res).ok  # the whole string, exactly


def test_an_action_that_does_not_match_its_digest_is_refused() -> None:
    """Recording actions is no license to forge one: its data must hash to its digest."""
    def forged(b: synth.LogBuilder) -> None:
        b.event(7, synth.EV_EFI_ACTION, b"Something else", measured=b"UEFI Debug Mode")

    _fails(forged, "EV_EFI_ACTION: event data does not match its sha256 digest")


# Action strings real firmware measures into PCR 7. HP (ZBook Ultra G1a, BIOS X89 01.05.07, with
# "Measure Additional DMA Settings: PCR7"), before the Secure Boot variables, as canonical/secboot
# recognizes it (efi: support HP pre-OS PCR measurements, #556; internal/efi/tcg_events.go).
HP_DMA = b'"SVM CPU Virtualization":"Enable";"DMA protection":"Enable";"Pre-boot DMA protection":"All PCIe devices";'
# Intel NUC8v5PNB firmware at Thunderbolt security level 0 (canonical/secboot#553, snapd#17467).
THUNDERBOLT = b"Security Level is Downgraded to 0"


def _real_actions_log() -> synth.LogBuilder:
    def after(lb: synth.LogBuilder) -> None:
        lb.event(7, synth.EV_EFI_ACTION, THUNDERBOLT + b"\0", measured=THUNDERBOLT)

    b = synth.secure_boot_log(extra_pcr7=after).builder
    hp = synth.LogBuilder(banks=b.banks).event(7, synth.EV_EFI_ACTION, HP_DMA).records[0]
    first = next(i for i, r in enumerate(b.records) if r.pcr == 7)
    b.records.insert(first, hp)  # before the SecureBoot variable, as HP measures it
    return b


def test_real_firmware_actions_are_recorded() -> None:
    b = _real_actions_log()
    res = verify.verify_event_log(b.build(), b.expected("sha256"))
    sb = res.secure_boot
    assert sb is not None and sb.enabled and sb.spec_order  # variables only: actions aside
    assert [(a.text, a.known, a.after_separator) for a in sb.actions] == [
        (HP_DMA.decode(), None, False), (THUNDERBOLT.decode(), None, False)]  # NUL not hashed
    assert sb.unknown_actions == (HP_DMA.decode(), THUNDERBOLT.decode())
    d = sb.to_dict()
    assert d["unknown_actions"] == [HP_DMA.decode(), THUNDERBOLT.decode()]
    assert d["actions"][1] == {"event": sb.actions[1].event_index, "text": THUNDERBOLT.decode(),
                               "after_separator": False, "known": None,
                               "type": "EV_EFI_ACTION"}
    summary = res.state.summary()["secure_boot"]
    assert (summary["actions"], summary["unknown_actions_count"]) == (2, 2)
    assert summary["unknown_actions"] == [HP_DMA.decode(), THUNDERBOLT.decode()]
    r = Policy.from_dict({"secure_boot": {"required": True}}).evaluate(None, res)
    assert [v.rule for v in r.violations] == ["secure_boot.unknown_action"] * 2
    learned = policy.learn(None, res)
    doc = learned.to_dict()["secure_boot"]
    assert doc["allowed_actions"] == [HP_DMA.decode(), THUNDERBOLT.decode()]
    assert Policy.from_dict(json.loads(json.dumps(learned.to_dict()))).evaluate(None, res).ok
    only_hp = {"secure_boot": {"required": True, "allowed_actions": [HP_DMA.decode()]}}
    r = Policy.from_dict(only_hp).evaluate(None, res)
    assert r.failed_rules() == ["secure_boot.unknown_action"] and "Downgraded" in str(r)


def test_action_text_is_the_measured_bytes() -> None:
    """One character per byte (Latin-1): two different measurements never read alike, and a
    policy string matches exactly the bytes it spells."""
    def actions(b: synth.LogBuilder) -> None:
        b.event(7, synth.EV_EFI_ACTION, "\u00e9".encode("utf-8"))
        b.event(7, synth.EV_EFI_ACTION, "\u00e9".encode("latin-1"))
        b.event(7, synth.EV_EFI_ACTION, b"\xff\xfe")

    sb = secure_boot_state(parse_event_log(synth.secure_boot_log(extra_pcr7=actions).build()))
    assert sb.unknown_actions == ("\u00c3\u00a9", "\u00e9", "\u00ff\u00fe")


def test_known_actions_set_their_flags_not_unknown_actions() -> None:
    sb = secure_boot_state(parse_event_log(synth.secure_boot_log(debug=True).build()))
    assert sb.debug_mode and sb.unknown_actions == ()
    assert [(a.text, a.known) for a in sb.actions] == [("UEFI Debug Mode", "debug_mode")]
    assert set(KNOWN_ACTIONS) == {"UEFI Debug Mode", "DMA Protection Disabled"}


def test_many_and_long_actions_stay_bounded() -> None:
    def actions(b: synth.LogBuilder) -> None:
        b.event(7, synth.EV_EFI_ACTION, b"x" * 1_000_000)
        for i in range(1000):
            b.event(7, synth.EV_EFI_ACTION, f"action {i}".encode())

    b = synth.secure_boot_log(extra_pcr7=actions).builder
    res = verify.verify_event_log(b.build(), b.expected("sha256"))
    assert res.secure_boot is not None and len(res.secure_boot.unknown_actions) == 1001
    summary = res.state.summary()
    assert len(json.dumps(summary)) < 16_000
    assert summary["secure_boot"]["unknown_actions_count"] == 1001
    assert len(summary["secure_boot"]["unknown_actions"]) == 16
    assert summary["secure_boot"]["unknown_actions"][0] == "x" * 253 + "..."
    r = Policy.from_dict({"secure_boot": {}}).evaluate(None, res)
    assert len(r.violations) == 17 and len(json.dumps(r.to_dict())) < 16_000


def test_enabled_without_authority_or_keys_is_rejected() -> None:
    log = parse_event_log(synth.secure_boot_log(authorities=False).build())
    with pytest.raises(SecureBootError, match="no authority"):
        secure_boot_state(log)
    b = synth.LogBuilder()
    b.event(7, synth.EV_EFI_VARIABLE_DRIVER_CONFIG,
            synth.uefi_variable(synth.EFI_GLOBAL_VARIABLE, "SecureBoot", b"\x01"))
    b.event(7, synth.EV_EFI_VARIABLE_DRIVER_CONFIG,
            synth.uefi_variable(synth.EFI_GLOBAL_VARIABLE, "PK", b""))
    with pytest.raises(SecureBootError, match="PK is empty"):
        secure_boot_state(parse_event_log(b.build()))


def test_bad_secure_boot_value_and_malformed_database() -> None:
    b = synth.LogBuilder().event(
        7, synth.EV_EFI_VARIABLE_DRIVER_CONFIG,
        synth.uefi_variable(synth.EFI_GLOBAL_VARIABLE, "SecureBoot", b"\x02"))
    with pytest.raises(SecureBootError, match="not 00 or 01"):
        secure_boot_state(parse_event_log(b.build()))
    bad_db = synth.signature_list(synth.EFI_CERT_SHA256, [(synth.OWNER, bytes(32))], sig_size=0)
    b = synth.LogBuilder().event(
        7, synth.EV_EFI_VARIABLE_DRIVER_CONFIG,
        synth.uefi_variable(synth.EFI_IMAGE_SECURITY_DATABASE, "db", bad_db))
    with pytest.raises(SecureBootError, match="SignatureSize 0"):
        secure_boot_state(parse_event_log(b.build()))


def test_variable_decoded_strictly_even_after_lenient_parse() -> None:
    b = synth.LogBuilder().event(
        7, synth.EV_EFI_VARIABLE_DRIVER_CONFIG,
        synth.uefi_variable(synth.EFI_GLOBAL_VARIABLE, "SecureBoot", b"\x01", name_len=2**62))
    log = parse_event_log(b.build(), strict=False)
    with pytest.raises(SecureBootError, match="UnicodeNameLength"):
        secure_boot_state(log)


def test_old_shim_authority_with_one_extra_byte() -> None:
    s = synth.secure_boot_log()
    var = synth.uefi_variable(synth.SHIM_LOCK, "Shim", synth.guid(synth.OWNER) + s.certs["db"])
    s.builder.event(7, synth.EV_EFI_VARIABLE_AUTHORITY, var + b"\0", measured=var)
    sb = secure_boot_state(parse_event_log(s.build()))
    assert [a.name for a in sb.authorities] == ["db", "Shim"]
    assert sb.authorities[1].certificate is not None


def test_signature_lists() -> None:
    cert = synth.self_signed_cert("x")
    raw = (synth.signature_list(synth.EFI_CERT_X509, [(synth.OWNER, cert)])
           + synth.signature_list(synth.EFI_CERT_SHA256, [(synth.OWNER, b"\x11" * 32)] * 2)
           + synth.signature_list(synth.EFI_CERT_X509, [(synth.OWNER, b"not DER")]))
    entries = parse_signature_lists(raw)
    assert [e.type_name for e in entries] == ["EFI_CERT_X509", "EFI_CERT_SHA256",
                                              "EFI_CERT_SHA256", "EFI_CERT_X509"]
    assert entries[0].certificate is not None and entries[1].hash_value == b"\x11" * 32
    assert entries[3].certificate is None and entries[3].certificate_error
    json.dumps([e.to_dict() for e in entries])
    assert parse_signature_lists(b"") == ()
