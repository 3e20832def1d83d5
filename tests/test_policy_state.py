"""Policies over the machine state: the ``secure_boot`` and ``boot`` sections, every rule on real
logs and on logs synthesized to break exactly that rule, learning, documents, missing evidence."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

import eventlog_synth as synth
from replay_quote import quote_replayed
from tpm2_attest import policy, verify
from tpm2_attest.embedded import EmbeddedSwtpm
from tpm2_attest.eventlog import parse_event_log
from tpm2_attest.eventlog import wellknown as wk
from tpm2_attest.policy import BootSection, Policy, PolicyError, SecureBootSection

LOGS = synth.LOGS_DIR
ROOT = Path(__file__).resolve().parent.parent
DBX = ROOT / "tests" / "data" / "secureboot"
UBUNTU = (LOGS / "ubuntu_2104_shielded_vm_no_secure_boot_eventlog").read_bytes()
SB_CERT = (LOGS / "sb_cert_eventlog").read_bytes()
H = hashlib.sha256


def result(raw: bytes, drop: tuple[int, ...] = ()) -> verify.EventLogResult:
    pcrs = {k: v for k, v in parse_event_log(raw).replay("sha256").items() if k not in drop}
    return verify.verify_event_log(raw, pcrs)


def built(b: synth.LogBuilder) -> verify.EventLogResult:
    return verify.verify_event_log(b.build(), b.expected("sha256"))


def rules(doc: dict[str, Any], log: verify.EventLogResult | None) -> list[str]:
    return Policy.from_dict(doc).evaluate(None, log).failed_rules()


# -- a Secure Boot log with chosen databases ----------------------------------------------------


def sb_log(*, enabled: bool = True, pk: tuple[str, ...] = ("GCE_DEFAULT_PK",),
           kek: tuple[str, ...] = ("MS_THIRD_PARTY_KEK_CA_2011",),
           db: tuple[str, ...] = ("MS_WINDOWS_PROD_PCA_2011", "MS_THIRD_PARTY_UEFI_CA_2011"),
           dbx_hashes: tuple[bytes, ...] = (H(b"revoked").digest(),),
           dbx_certs: tuple[str, ...] = (), authority: str = "MS_THIRD_PARTY_UEFI_CA_2011",
           dbx: bool = True) -> synth.LogBuilder:
    """PCR 7 as UEFI measures it, with well-known certificates in PK/KEK/db/dbx and the db
    certificate that verified the boot application."""
    b = synth.LogBuilder()

    def certs(names: tuple[str, ...]) -> bytes:
        return b"".join(synth.signature_list(synth.EFI_CERT_X509,
                                             [(synth.OWNER, wk.certificate_der(n))]) for n in names)

    gv, sdb = synth.EFI_GLOBAL_VARIABLE, synth.EFI_IMAGE_SECURITY_DATABASE
    b.event(7, synth.EV_EFI_VARIABLE_DRIVER_CONFIG,
            synth.uefi_variable(gv, "SecureBoot", b"\x01" if enabled else b"\0"))
    b.event(7, synth.EV_EFI_VARIABLE_DRIVER_CONFIG, synth.uefi_variable(gv, "PK", certs(pk)))
    b.event(7, synth.EV_EFI_VARIABLE_DRIVER_CONFIG, synth.uefi_variable(gv, "KEK", certs(kek)))
    b.event(7, synth.EV_EFI_VARIABLE_DRIVER_CONFIG, synth.uefi_variable(sdb, "db", certs(db)))
    if dbx:
        value = (synth.signature_list(synth.EFI_CERT_SHA256, [(synth.OWNER, h) for h in dbx_hashes])
                 if dbx_hashes else b"") + certs(dbx_certs)
        b.event(7, synth.EV_EFI_VARIABLE_DRIVER_CONFIG, synth.uefi_variable(sdb, "dbx", value))
    synth.gce_boot(b)
    b.event(7, synth.EV_EFI_VARIABLE_AUTHORITY,
            synth.uefi_variable(sdb, "db", synth.guid(synth.OWNER) + wk.certificate_der(authority)))
    return b


# -- secure_boot -------------------------------------------------------------------------------


def test_required() -> None:
    doc = {"secure_boot": {"required": True}}
    assert rules(doc, result(SB_CERT)) == []
    assert rules(doc, result(UBUNTU)) == ["secure_boot.required"]
    r = Policy.from_dict(doc).evaluate(None, result(UBUNTU))
    assert r.violations[0].seen is False and r.violations[0].wanted is True
    assert rules({"secure_boot": {"required": False}}, result(UBUNTU)) == []


@pytest.mark.parametrize("db", ["pk", "kek", "db"])
def test_required_members_by_name_and_fingerprint(db: str) -> None:
    log = built(sb_log())
    present = {"pk": "GCE_DEFAULT_PK", "kek": "MS_THIRD_PARTY_KEK_CA_2011",
               "db": "MS_WINDOWS_PROD_PCA_2011"}[db]
    fp = wk.fingerprint_of(present).hex()
    assert rules({"secure_boot": {db: [present]}}, log) == []
    assert rules({"secure_boot": {db: [fp.upper()]}}, log) == []
    absent = "DEBIAN_BOOTHOLE"
    r = Policy.from_dict({"secure_boot": {db: [present, absent]}}).evaluate(None, log)
    assert r.failed_rules() == [f"secure_boot.{db}"] and r.violations[0].wanted == absent
    assert present in r.violations[0].seen


def test_forbidden_in_db_unless_dbx_revokes_it() -> None:
    doc = {"secure_boot": {"forbidden": ["CANONICAL_BOOTHOLE"]}}
    trusting = built(sb_log(db=("MS_THIRD_PARTY_UEFI_CA_2011", "CANONICAL_BOOTHOLE")))
    assert rules(doc, trusting) == ["secure_boot.forbidden"]
    revoked = built(sb_log(db=("MS_THIRD_PARTY_UEFI_CA_2011", "CANONICAL_BOOTHOLE"),
                           dbx_certs=("CANONICAL_BOOTHOLE",)))
    assert rules(doc, revoked) == []
    assert rules(doc, built(sb_log())) == []


def test_forbidden_signer_that_verified_the_boot() -> None:
    log = built(sb_log(db=("CISCO_BOOTHOLE",), dbx_certs=("CISCO_BOOTHOLE",),
                       authority="CISCO_BOOTHOLE"))
    r = Policy.from_dict({"secure_boot": {"forbidden": ["CISCO_BOOTHOLE"]}}).evaluate(None, log)
    assert r.failed_rules() == ["secure_boot.forbidden"] and "verified a boot component" in str(r)


def test_boothole_signers_forbidden_by_default_when_required() -> None:
    log = built(sb_log(db=("MS_THIRD_PARTY_UEFI_CA_2011", "DEBIAN_BOOTHOLE")))
    assert rules({"secure_boot": {"required": True}}, log) == ["secure_boot.forbidden"]
    assert rules({"secure_boot": {"required": True, "forbidden": []}}, log) == []
    assert rules({"secure_boot": {"required": False}}, log) == []
    p = SecureBootSection.from_dict({"required": True})
    assert [r.text for r in p.forbidden] == list(wk.BOOTHOLE_SIGNERS)


def test_dbx_contains_a_microsoft_update_inline() -> None:
    ubuntu = result(UBUNTU)  # its dbx is Microsoft's 2020-10-12 update, BootHole included
    for name, failed in (("dbxupdate_x64-2020-10-12.bin", []),
                         ("dbxupdate_x64-2021-04-29.bin", ["secure_boot.dbx_contains"])):
        update = base64.b64encode((DBX / name).read_bytes()).decode()
        doc = {"secure_boot": {"dbx": {"contains": {"update": update}}}}
        assert rules(doc, ubuntu) == failed, name
    r = Policy.from_dict({"secure_boot": {"dbx": {"contains": {"update": update}}}}).evaluate(
        None, result(SB_CERT))
    (v,) = r.violations
    assert v.seen["missing_hashes"] > 100 and len(v.seen["first_missing"]) == 16


def test_dbx_contains_digests_and_certificates() -> None:
    h = H(b"revoked").digest().hex()
    log = built(sb_log(dbx_certs=("CANONICAL_BOOTHOLE",)))
    assert rules({"secure_boot": {"dbx": {"contains": {"hashes": [h],
                                                       "certificates": ["CANONICAL_BOOTHOLE"]}}}},
                 log) == []
    assert rules({"secure_boot": {"dbx": {"contains": {"hashes": ["00" * 32]}}}}, log) == [
        "secure_boot.dbx_contains"]
    r = Policy.from_dict({"secure_boot": {"dbx": {"contains": {"certificates": ["CISCO_BOOTHOLE"]}}}}
                         ).evaluate(None, log)
    assert r.violations[0].seen["missing_certificates"] == ["CISCO_BOOTHOLE"]
    assert rules({"secure_boot": {"dbx": {"contains": {"hashes": [h]}}}},
                 built(sb_log(dbx=False))) == ["secure_boot.dbx_contains"]


def test_dbx_contains_document_helper_round_trips() -> None:
    raw = (DBX / "dbxupdate_x64-2020-10-12.bin").read_bytes()
    contains = policy.dbx_contains_document(raw)
    assert len(contains["hashes"]) == 183 and contains["certificates"] == [
        "CANONICAL_BOOTHOLE", "CISCO_BOOTHOLE", "DEBIAN_BOOTHOLE"]
    inline = Policy.from_dict({"secure_boot": {"dbx": {"contains": {
        "update": base64.b64encode(raw).decode()}}}})
    assert Policy.from_dict({"secure_boot": {"dbx": {"contains": contains}}}) == inline


def test_dbx_min_entries() -> None:
    assert rules({"secure_boot": {"dbx": {"min_entries": 186}}}, result(UBUNTU)) == []
    r = Policy.from_dict({"secure_boot": {"dbx": {"min_entries": 187}}}).evaluate(None, result(UBUNTU))
    assert r.failed_rules() == ["secure_boot.dbx_min_entries"]
    assert (r.violations[0].seen, r.violations[0].wanted) == (186, 187)
    assert rules({"secure_boot": {"dbx": {"min_entries": 1}}}, built(sb_log(dbx=False))) == [
        "secure_boot.dbx_min_entries"]


FULL_SB = {"secure_boot": {"required": True, "pk": ["GCE_DEFAULT_PK"], "kek": ["MS_THIRD_PARTY_KEK_CA_2011"],
                           "db": ["MS_WINDOWS_PROD_PCA_2011"], "dbx": {"min_entries": 1, "contains": {
                               "hashes": ["11" * 32]}}}}


def test_missing_secure_boot_evidence_violates_every_configured_rule() -> None:
    expected = ["secure_boot.required", "secure_boot.unknown_action", "secure_boot.pk",
                "secure_boot.kek", "secure_boot.db", "secure_boot.forbidden",
                "secure_boot.dbx_contains", "secure_boot.dbx_min_entries"]
    assert rules(FULL_SB, None) == expected
    # Present, the section always checks PCR 7's actions: without PCR 7 they are unknown.
    assert rules({"secure_boot": {"required": False}}, None) == ["secure_boot.unknown_action"]
    r = Policy.from_dict(FULL_SB).evaluate(None, result(SB_CERT, drop=(7,)))
    assert r.failed_rules() == expected and "PCR 7 not covered by the quote" in r.violations[0].detail
    r = Policy.from_dict(FULL_SB).evaluate(None, result(SB_CERT))
    assert r.failed_rules() == ["secure_boot.dbx_contains"]


@pytest.mark.parametrize(("doc", "key", "message"), [
    ({"required": "yes"}, "secure_boot.required", "true or false"),
    ({"pk": "GCE_DEFAULT_PK"}, "secure_boot.pk", "expected a list"),
    ({"kek": ["MS_KEK"]}, "secure_boot.kek.0", "well-known certificate name"),
    ({"db": ["ab" * 31]}, "secure_boot.db.0", "SHA-256 fingerprint"),
    ({"forbiden": []}, "secure_boot.forbiden", "unknown key"),
    ({"dbx": {"min_entries": -1}}, "secure_boot.dbx.min_entries", "at least 0"),
    ({"dbx": {"contain": {}}}, "secure_boot.dbx.contain", "unknown key"),
    ({"dbx": {"contains": {"hashes": ["zz"]}}}, "secure_boot.dbx.contains.hashes.0", "image hash"),
    ({"dbx": {"contains": {"update": "not base64!"}}}, "secure_boot.dbx.contains.update", "base64"),
    ({"dbx": {"contains": {"update": base64.b64encode(b"\x01" * 40).decode()}}},
     "secure_boot.dbx.contains.update", "not a signature database update"),
    ({"allowed_actions": "Security Level is Downgraded to 0"}, "secure_boot.allowed_actions",
     "expected a list"),
    ({"allowed_actions": ["ok", 0]}, "secure_boot.allowed_actions.1", "string"),
])
def test_bad_secure_boot_documents_name_the_key(doc: Any, key: str, message: str) -> None:
    with pytest.raises(PolicyError) as ei:
        Policy.from_dict({"secure_boot": doc})
    assert ei.value.key == key and message in str(ei.value)


def _with_actions(*actions: bytes, debug: bool = False) -> verify.EventLogResult:
    def extra(b: synth.LogBuilder) -> None:
        for a in actions:
            b.event(7, synth.EV_EFI_ACTION, a)

    return built(synth.secure_boot_log(("sha256",), extra_pcr7=extra, debug=debug).builder)


def test_dma_protection_disabled_fails_required_unless_allowed() -> None:
    """"DMA Protection Disabled" (EDK II, measured into PCR 7 when pre-boot DMA protection is
    supported but off): a device could rewrite memory while firmware verifies the boot. It
    fails secure_boot.required unless allowed_actions lists it (secboot's
    PermitInsufficientDMAProtection); it is no unknown action."""
    res = _with_actions(b"DMA Protection Disabled\0")
    sb = res.state.secure_boot
    assert sb is not None and sb.dma_protection_disabled and sb.unknown_actions == ()
    required = {"required": True, "forbidden": []}
    r = Policy.from_dict({"secure_boot": required}).evaluate(None, res)
    assert r.failed_rules() == ["secure_boot.required"] and "DMA" in r.violations[0].detail
    assert r.violations[0].seen == {"dma_protection_disabled": True}
    assert rules({"secure_boot": {**required, "allowed_actions": ["DMA Protection Disabled"]}},
                 res) == []
    assert rules({"secure_boot": {"required": False}}, res) == []
    assert rules({"secure_boot": required}, _with_actions()) == []


def test_learned_policies_allow_the_actions_seen_but_a_debugger() -> None:
    res = _with_actions(b"DMA Protection Disabled", b"Vendor setting: on", b"Vendor setting: on")
    learned = policy.learn(None, res)
    section = learned.to_dict()["secure_boot"]
    assert section["allowed_actions"] == ["DMA Protection Disabled", "Vendor setting: on"]
    assert learned.evaluate(None, res).ok
    assert Policy.from_dict(learned.to_dict()) == learned
    other = _with_actions(b"Vendor setting: off")  # (a log with other keys: judge actions only)
    r = Policy.from_dict({"secure_boot": {"allowed_actions": section["allowed_actions"]}}).evaluate(
        None, other)
    assert r.failed_rules() == ["secure_boot.unknown_action"] and "'Vendor setting: off'" in str(r)
    debugged = _with_actions(debug=True)
    learned = policy.learn(None, debugged)
    assert "allowed_actions" not in learned.to_dict()["secure_boot"]
    assert learned.evaluate(None, debugged).failed_rules() == ["secure_boot.required"]
    allowing = {"secure_boot": {"required": True, "allowed_actions": ["UEFI Debug Mode"]}}
    assert rules(allowing, debugged) == ["secure_boot.required"]  # never acceptable


def test_an_update_with_other_entry_types_cannot_be_required() -> None:
    sha1 = synth.signature_list("826ca512-cf10-4ac9-b187-be01496631bd", [(synth.OWNER, b"\x01" * 20)])
    with pytest.raises(PolicyError, match="EFI_CERT_SHA1"):
        Policy.from_dict({"secure_boot": {"dbx": {"contains": {
            "update": base64.b64encode(sha1).decode()}}}})


def test_learned_secure_boot_describes_the_machine() -> None:
    log = result(SB_CERT)
    p = policy.learn(None, log, sections=["secure_boot"])
    sb = p.to_dict()["secure_boot"]
    assert sb["required"] is True and sb["pk"] == ["GCE_DEFAULT_PK"]
    assert "MS_WINDOWS_PROD_PCA_2011" in sb["db"] and len(sb["db"]) == 4
    assert sb["forbidden"] == list(wk.BOOTHOLE_SIGNERS)
    assert sb["dbx"]["min_entries"] == 77 and len(sb["dbx"]["contains"]["hashes"]) == 77
    assert p.evaluate(None, log).ok and Policy.from_dict(p.to_dict()) == p
    assert not p.evaluate(None, result(UBUNTU)).ok  # Secure Boot off there
    # a machine trusting a BootHole signer learns a policy it satisfies (not forbidding it)
    bad = built(sb_log(db=("MS_THIRD_PARTY_UEFI_CA_2011", "DEBIAN_BOOTHOLE")))
    p = policy.learn(None, bad, sections=["secure_boot"])
    assert "DEBIAN_BOOTHOLE" not in p.to_dict()["secure_boot"]["forbidden"]
    assert p.evaluate(None, bad).ok


# -- boot ---------------------------------------------------------------------------------------


def test_efi_apps_allow_list_per_bank() -> None:
    log = result(UBUNTU)
    assert log.state.efi is not None
    digests = [a.digest.hex() for a in log.state.efi.apps]
    assert rules({"boot": {"efi_apps": {"sha256": digests}}}, log) == []
    r = Policy.from_dict({"boot": {"efi_apps": {"sha256": digests[:1]}}}).evaluate(None, log)
    (v,) = r.violations
    assert v.rule == "boot.efi_apps" and "grubx64.efi" in v.detail and v.seen["digest"] == digests[1]
    assert rules({"boot": {"efi_apps": {"sha1": ["00" * 20]}}}, log) == ["boot.efi_apps"]
    assert rules({"boot": {"efi_apps": {"sha256": digests}}}, result(UBUNTU, drop=(4,))) == [
        "boot.efi_apps"]


def test_efi_apps_cover_opaque_pcr4_measurements() -> None:
    b = synth.gce_boot(synth.LogBuilder(), apps=[("\\shim.efi", b"shim")])
    b.event(4, synth.EV_EFI_ACTION, b"Calling EFI Application from Boot Option",
            measured=b"a hidden application")
    log = built(b)
    r = Policy.from_dict({"boot": {"efi_apps": {"sha256": [H(b"shim").hexdigest()]}}}).evaluate(None, log)
    assert r.failed_rules() == ["boot.efi_apps"] and "EV_EFI_ACTION" in r.violations[0].detail
    learned = policy.learn(None, log, sections=["boot"])
    assert learned.evaluate(None, log).ok


def test_violations_per_rule_are_capped() -> None:
    b = synth.gce_boot(synth.LogBuilder(), apps=[(f"\\a{i}.efi", bytes((i,))) for i in range(100)])
    r = Policy.from_dict({"boot": {"efi_apps": {"sha256": ["00" * 32]}}}).evaluate(None, built(b))
    assert len(r.violations) == 17 and r.violations[-1].detail == "and 84 more such violations"
    assert set(r.failed_rules()) == {"boot.efi_apps"}


def test_grub_files() -> None:
    log = result(UBUNTU)
    assert log.state.grub is not None and log.state.grub.files is not None
    digests = sorted({f.digest.hex() for f in log.state.grub.files})
    assert rules({"boot": {"grub_files": {"sha256": digests}}}, log) == []
    kernel = next(f for f in log.state.grub.files if "vmlinuz" in f.name).digest.hex()
    r = Policy.from_dict({"boot": {"grub_files": {"sha256": [d for d in digests if d != kernel]}}}
                         ).evaluate(None, log)
    assert r.failed_rules() == ["boot.grub_files"] and "vmlinuz-5.11.0-1006-gcp" in str(r)
    no_grub = result((LOGS / "crypto_agile_eventlog").read_bytes())
    r = Policy.from_dict({"boot": {"grub_files": {"sha256": digests}}}).evaluate(None, no_grub)
    assert r.failed_rules() == ["boot.grub_files"] and "nothing into PCR 9" in str(r)
    assert rules({"boot": {"grub_files": {"sha256": digests}}}, result(UBUNTU, drop=(9,))) == [
        "boot.grub_files"]


def test_kernel_cmdline_exact_and_regex_fullmatch() -> None:
    log = result(UBUNTU)
    assert log.state.linux is not None and log.state.linux.cmdline is not None
    cmdline = log.state.linux.cmdline
    assert rules({"boot": {"kernel_cmdline": [cmdline]}}, log) == []
    assert rules({"boot": {"kernel_cmdline": [{"regex": r"/boot/vmlinuz-\S+ root=PARTUUID=[-0-9a-f]+ ro"
                                                        r" console=ttyS0 panic=-1"}]}}, log) == []
    # fullmatch, not search: a pattern matching part of the line does not allow it
    assert rules({"boot": {"kernel_cmdline": [{"regex": "ro console"}]}}, log) == ["boot.kernel_cmdline"]
    assert rules({"boot": {"kernel_cmdline": [cmdline + " quiet"]}}, log) == ["boot.kernel_cmdline"]
    r = Policy.from_dict({"boot": {"kernel_cmdline": ["x"]}}).evaluate(None, result(SB_CERT))
    assert r.failed_rules() == ["boot.kernel_cmdline"] and "no verified kernel command line" in str(r)


def test_kernel_cmdline_every_measured_line_must_be_allowed() -> None:
    b = synth.gce_boot(synth.LogBuilder())
    synth.grub_string(b, "kernel_cmdline", "/vmlinuz ro")
    synth.grub_string(b, "kernel_cmdline", "/vmlinuz ro init=/bin/sh")
    assert rules({"boot": {"kernel_cmdline": ["/vmlinuz ro"]}}, built(b)) == ["boot.kernel_cmdline"]
    assert rules({"boot": {"kernel_cmdline": [{"regex": "/vmlinuz ro( init=/bin/sh)?"}]}},
                 built(b)) == []


def test_kernel_cmdline_refuses_unexplained_pcr8_measurements() -> None:
    b = synth.gce_boot(synth.LogBuilder())
    synth.grub_string(b, "kernel_cmdline", "/vmlinuz ro")
    b.event(8, synth.EV_IPL, b"grub_cmd: echo hello\0", measured=b"/vmlinuz ro init=/bin/sh")
    r = Policy.from_dict({"boot": {"kernel_cmdline": ["/vmlinuz ro"]}}).evaluate(None, built(b))
    assert r.failed_rules() == ["boot.kernel_cmdline"] and "does not explain" in str(r)


def test_kernel_cmdline_from_systemd() -> None:
    b = synth.gce_boot(synth.LogBuilder())
    synth.systemd_cmdline(b, "root=/dev/vda2 rw")
    assert rules({"boot": {"kernel_cmdline": ["root=/dev/vda2 rw"]}}, built(b)) == []
    assert rules({"boot": {"kernel_cmdline": ["root=/dev/vda2 ro"]}}, built(b)) == [
        "boot.kernel_cmdline"]


def test_an_oversized_command_line_is_refused_without_matching() -> None:
    b = synth.gce_boot(synth.LogBuilder())
    synth.grub_string(b, "kernel_cmdline", "a" * (64 * 1024 + 1))
    assert rules({"boot": {"kernel_cmdline": [{"regex": "a*"}]}}, built(b)) == ["boot.kernel_cmdline"]


def test_scrtm_versions() -> None:
    assert rules({"boot": {"scrtm_versions": ["GCE Virtual Firmware v1"]}}, result(UBUNTU)) == []
    assert rules({"boot": {"scrtm_versions": ["GCE Virtual Firmware v2"]}}, result(UBUNTU)) == [
        "boot.scrtm_version"]
    assert rules({"boot": {"scrtm_versions": [{"hex": "0000"}]}}, result(SB_CERT)) == []
    raw = "GCE Virtual Firmware v1\0".encode("utf-16-le").hex()
    assert rules({"boot": {"scrtm_versions": [{"hex": raw}]}}, result(UBUNTU)) == []
    assert rules({"boot": {"scrtm_versions": ["x"]}}, result(UBUNTU, drop=(0,))) == [
        "boot.scrtm_version"]


def test_min_gce_firmware_version() -> None:
    assert rules({"boot": {"min_gce_firmware_version": 1}}, result(UBUNTU)) == []
    r = Policy.from_dict({"boot": {"min_gce_firmware_version": 2}}).evaluate(None, result(UBUNTU))
    assert r.failed_rules() == ["boot.gce_firmware_version"] and r.violations[0].seen == 1
    assert rules({"boot": {"min_gce_firmware_version": 0}}, result(SB_CERT)) == [
        "boot.gce_firmware_version"]  # an empty S-CRTM string: not a GCE version
    assert rules({"boot": {"min_gce_firmware_version": 1}}, None) == ["boot.gce_firmware_version"]


def test_missing_boot_evidence_violates_every_configured_rule() -> None:
    doc = {"boot": {"efi_apps": {"sha256": ["00" * 32]}, "grub_files": {"sha256": ["00" * 32]},
                    "kernel_cmdline": ["x"], "scrtm_versions": ["x"], "min_gce_firmware_version": 1}}
    assert rules(doc, None) == list(BootSection.rules)


@pytest.mark.parametrize(("doc", "key", "message"), [
    ({"efi_app": {}}, "boot.efi_app", "unknown key"),
    ({"efi_apps": {}}, "boot.efi_apps", "at least one bank"),
    ({"efi_apps": {"sha256": ["00" * 20]}}, "boot.efi_apps.sha256.0", "expected 32 bytes"),
    ({"grub_files": {"md5": []}}, "boot.grub_files.md5", "unknown bank"),
    ({"kernel_cmdline": []}, "boot.kernel_cmdline", "empty list"),
    ({"kernel_cmdline": [{"regex": "("}]}, "boot.kernel_cmdline.0.regex", "regular expression"),
    ({"kernel_cmdline": [{"re": "x"}]}, "boot.kernel_cmdline.0.re", "unknown key"),
    ({"kernel_cmdline": [{}]}, "boot.kernel_cmdline.0", "regex"),
    ({"scrtm_versions": [{"hex": "zz"}]}, "boot.scrtm_versions.0.hex", "hex"),
    ({"scrtm_versions": [7]}, "boot.scrtm_versions.0", "expected an object"),
    ({"min_gce_firmware_version": -1}, "boot.min_gce_firmware_version", "at least 0"),
    ({"min_gce_firmware_version": True}, "boot.min_gce_firmware_version", "integer"),
])
def test_bad_boot_documents_name_the_key(doc: Any, key: str, message: str) -> None:
    with pytest.raises(PolicyError) as ei:
        Policy.from_dict({"boot": doc})
    assert ei.value.key == key and message in str(ei.value)


def test_learned_boot_describes_the_machine_exactly() -> None:
    log = result(UBUNTU)
    p = policy.learn(None, log, sections=["boot"])
    d = p.to_dict()["boot"]
    assert set(d) == {"efi_apps", "grub_files", "kernel_cmdline", "scrtm_versions",
                      "min_gce_firmware_version"}
    assert d["scrtm_versions"] == ["GCE Virtual Firmware v1"] and d["min_gce_firmware_version"] == 1
    assert p.evaluate(None, log).ok and Policy.from_dict(p.to_dict()) == p
    coreos = result((LOGS / "coreos_36_shielded_vm_no_secure_boot_eventlog").read_bytes())
    assert set(p.evaluate(None, coreos).failed_rules()) == {
        "boot.efi_apps", "boot.grub_files", "boot.kernel_cmdline"}
    assert policy.learn(None, result(SB_CERT), sections=["boot"]).to_dict()["boot"][
        "scrtm_versions"] == [{"hex": "0000"}]


# -- the whole flow -----------------------------------------------------------------------------


def test_learn_and_evaluate_over_a_real_quote(fresh_swtpm: EmbeddedSwtpm, tmp_path: Path) -> None:
    """The API as documented: learn from a golden machine's verified evidence, save, reload,
    evaluate the next attestation; a different boot is refused with every failed rule."""
    q = quote_replayed(fresh_swtpm.tcti, UBUNTU)
    p = policy.learn(q.quote_result, q.log_result, name="gce-ubuntu")
    assert [s.key for s in p.sections] == ["pcrs", "secure_boot", "boot"]
    p.save(tmp_path / "p.yaml")
    p2 = Policy.load(tmp_path / "p.yaml")
    assert p2 == p
    r = p2.evaluate(q.quote_result, q.log_result)
    assert r.ok and r.rules == ("pcrs", "secure_boot", "boot")
    other = result((LOGS / "coreos_36_shielded_vm_no_secure_boot_eventlog").read_bytes())
    r = p2.evaluate(q.quote_result, other)
    assert not r.ok and "boot.kernel_cmdline" in r.failed_rules()
    json.dumps(r.to_dict())
    r = Policy.from_dict({**p.to_dict(), "secure_boot": {"required": True}}).evaluate(
        q.quote_result, q.log_result)
    assert r.failed_rules() == ["secure_boot.required"]


def test_every_rule_id_is_documented() -> None:
    text = (ROOT / "docs" / "verifier.md").read_text()
    for section in policy.SECTIONS:
        assert section.rules, section
        for rule in section.rules:
            assert rule.startswith(section.key + ".")
            assert re.search(rf"`{re.escape(rule)}`", text), f"docs/verifier.md: {rule}"


def test_policy_is_a_lazy_attribute_of_the_package() -> None:
    import subprocess
    import sys

    code = ("import sys, tpm2_attest; before = 'tpm2_attest.policy' in sys.modules; "
            "p = tpm2_attest.policy; print(before, p.Policy.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "tpm2_attest.policy.document"]


def test_hostile_labels_do_not_make_large_violations() -> None:
    b = synth.gce_boot(synth.LogBuilder(), apps=[])
    path = b"".join(synth.dp_file("\\" + "x" * 30_000) for _ in range(4)) + synth.dp_end()
    b.event(4, synth.EV_EFI_BOOT_SERVICES_APPLICATION, synth.image_load(path), measured=b"evil")
    synth.grub_file(b, "/" + "y" * 100_000, b"evil")
    synth.grub_string(b, "kernel_cmdline", "z" * 100_000)
    doc = {"boot": {"efi_apps": {"sha256": ["00" * 32]}, "grub_files": {"sha256": ["00" * 32]},
                    "kernel_cmdline": ["nothing"]}}
    r = Policy.from_dict(doc).evaluate(None, built(b))
    assert r.failed_rules() == ["boot.efi_apps", "boot.grub_files", "boot.kernel_cmdline"]
    assert len(json.dumps(r.to_dict())) < 4_000
