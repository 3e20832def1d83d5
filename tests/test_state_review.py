"""Review of the machine state and its policies against what real machines and real boot
components measure: two more real logs (CentOS Stream 9 with shim + GRUB + Secure Boot, and a
Windows GCE shielded VM with its quoted PCRs), and one test per finding, each failing before
its fix. The synthesized logs follow shim's, GRUB's, systemd's and Windows' documented formats
and model an OS-level attacker: one who can extend PCRs after boot and rewrite the log, but
cannot change what firmware and boot loaders measured."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from typing import Any

import pytest

import eventlog_synth as synth
from tpm2_attest import policy, verify
from tpm2_attest.eventlog import MachineState, parse_event_log
from tpm2_attest.policy import Policy, PolicyError

LOGS = synth.LOGS_DIR
CENTOS = (LOGS / "centos_stream9_secure_boot_shim_grub_eventlog").read_bytes()
WINDOWS = (LOGS / "windows_gce_shielded_vm_eventlog").read_bytes()
H = hashlib.sha256
SHIM_LOCK = synth.SHIM_LOCK
EV_NONHOST_INFO = synth.EV_NONHOST_INFO


def verified(raw: bytes, bank: str = "sha256", drop: tuple[int, ...] = ()) -> verify.EventLogResult:
    pcrs = {k: v for k, v in parse_event_log(raw).replay(bank).items() if k not in drop}
    return verify.verify_event_log(raw, pcrs, bank=bank)


def built(b: synth.LogBuilder, drop: tuple[int, ...] = ()) -> verify.EventLogResult:
    pcrs = {k: v for k, v in b.expected("sha256").items() if k not in drop}
    return verify.verify_event_log(b.build(), pcrs)


def state_of(b: synth.LogBuilder) -> MachineState:
    return built(b).state


def failed(doc: dict[str, Any], log: verify.EventLogResult) -> list[str]:
    return Policy.from_dict(doc).evaluate(None, log).failed_rules()


# -- real logs ----------------------------------------------------------------------------------


def test_centos_stream9_shim_grub_secure_boot() -> None:
    """keylime's test log: OVMF with Red Hat keys, shim 15 (CentOS), GRUB with BLS entries.
    Every fact below was read by hand from the log (tpm2_eventlog prints the same events)."""
    res = verified(CENTOS)
    s = res.state
    assert s.verified_pcrs == frozenset({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14}) and s.notes == ()
    sb = s.secure_boot
    assert sb is not None and sb.enabled and sb.pk is not None and sb.pk.well_known == ()
    assert sb.kek is not None and sb.kek.well_known == ("MS_THIRD_PARTY_KEK_CA_2011",)
    assert sb.db is not None and sb.db.well_known == ("MS_WINDOWS_PROD_PCA_2011",
                                                      "MS_THIRD_PARTY_UEFI_CA_2011")
    # Firmware verified shim with Microsoft's UEFI CA (db); shim verified GRUB with the CentOS
    # certificate built into it: a bare DER certificate logged as "Shim", shim's GUID, no owner.
    first, second = sb.authorities
    assert (first.name, first.well_known, first.after_separator) == ("db",
                                                                     "MS_THIRD_PARTY_UEFI_CA_2011",
                                                                     True)
    assert (second.name, second.guid, second.owner) == ("Shim", SHIM_LOCK, None)
    assert second.certificate is not None
    assert "CentOS Secure Boot CA 2" in second.certificate.subject.rfc4514_string()
    assert not sb.shim_validation_disabled and sb.sbat_level is None
    e = s.efi
    assert e is not None and e.boot_option_called and e.exit_boot_services
    assert [a.path.rsplit("\\", 1)[-1] if a.path else None for a in e.apps] == [
        "shimx64.efi", "grubx64.efi", None, None]  # shim measured the kernel (shim_lock) twice
    assert e.apps[2].digest == e.apps[3].digest
    g = s.grub
    assert g is not None and g.files is not None and g.commands is not None and g.unverified == ()
    assert len(g.files) == 8 and len(g.commands) == 60 and g.other == ()
    assert g.files[0].name == "(hd0,gpt1)/EFI/centos/grub.cfg"
    assert "grub_cmd: blscfg" in g.commands
    lx = s.linux
    assert lx is not None and lx.cmdline_source == "grub" and lx.unexplained == ()
    assert lx.cmdline is not None and lx.cmdline.startswith(
        "(hd0,gpt2)/vmlinuz-5.14.0-183.el9.x86_64 root=/dev/mapper/cs-root ro ")
    assert lx.kernel is not None and lx.kernel.label == "grub:(hd0,gpt2)/vmlinuz-5.14.0-183.el9.x86_64"
    # GRUB hashes the file (PCR 9); shim the PE Authenticode image (PCR 4): different digests.
    assert lx.kernel.digest != e.apps[2].digest
    assert [m.label for m in lx.initrds] == ["grub:(hd0,gpt2)/initramfs-5.14.0-183.el9.x86_64.img"]
    learned = policy.learn(None, res)
    assert learned.evaluate(None, res).ok
    assert Policy.from_dict(json.loads(json.dumps(learned.to_dict()))) == learned


# The SHA-1 PCR values quoted by that VM, as go-attestation's windows_gcp_shielded_vm.json
# records them ("Log.PCRs"); PCRs 1-3, 6, 8-10 and 15-16 were zero, 17-22 all ones.
WINDOWS_QUOTED = {
    0: "UcMj3gwMaU9GAc3QK+tY/xNin3Q=", 4: "DKS0pHhL9O7Zw1Vquh2sVYWllRo=",
    5: "KwIil9Tx4BAcjJhr4inI3QNQUU0=", 7: "hZpYdyZrXJCWE0aAkaczgKU4Z4Y=",
    11: "67mN92YTKA8g3DgiEUOp5yc5lIY=", 12: "dfPha27wtFUoLtj7vfzD2pq9JB0=",
    13: "OD3nn73eYpYgXir+RIAODAU/yC8=", 14: "J1pon51fgkSkuZn6vmAMWBa+VRE=",
}


def test_windows_gce_shielded_vm_against_the_quote_and_go_attestation() -> None:
    """The Windows log of a GCE shielded VM, verified against the PCRs its TPM quoted; the
    Windows facts are the ones go-attestation's TestParseWinEvents expects of the same log."""
    pcrs = {i: base64.b64decode(v) for i, v in WINDOWS_QUOTED.items()}
    pcrs.update({i: bytes(20) for i in (1, 2, 3, 6, 8, 9, 10, 15, 16)})
    res = verify.verify_event_log(WINDOWS, pcrs, bank="sha1")
    assert res.verified == frozenset(WINDOWS_QUOTED) and res.unexplained == frozenset()
    s = res.state
    w = s.windows
    assert w is not None and s.notes == ()
    assert (w.boot_count, w.cold_boot, w.dep, w.code_integrity) == (4, True, True, True)
    assert w.bitlocker_unlocks == (0, 0)
    assert not (w.boot_debugging or w.kernel_debugging or w.test_signing or w.safe_mode)
    assert w.separators == (12, 13, 14) and w.unverified == ()
    assert w.boot_manager is not None and w.boot_manager.path is not None
    assert w.boot_manager.path.endswith("\\EFI\\Microsoft\\Boot\\bootmgfw.efi")
    by_hash = {m.authenticode_hash.hex(): m for m in w.modules
               if m.authenticode_hash is not None and m.path is not None}
    vioscsi = by_hash["0fdce7d71936f79445e7d2c84cbeb97c948d3730e0b839166b0a4e625c2d4547"]
    assert (vioscsi.path, vioscsi.hash_algorithm, vioscsi.image_validated) == (
        "\\Windows\\System32\\drivers\\vioscsi.sys", "sha256", True)
    assert vioscsi.authority_issuer == "Microsoft Windows Third Party Component CA 2014"
    assert vioscsi.authority_publisher == "Microsoft Windows Hardware Compatibility Publisher"
    for digest, path in (
            ("055a36a9921b98cc04042ca95249c7eca655536868dafcec7508947ebe5e71f4",
             "\\Windows\\System32\\Drivers\\ksecpkg.sys"),
            ("2bedd1589410b6fa13c82f35db735025b6a160595922750248771f5abd0fee58",
             "\\Windows\\System32\\drivers\\volmgrx.sys")):
        m = by_hash[digest]
        assert (m.path, m.authority_issuer, m.authority_publisher) == (
            path, "Microsoft Windows Production PCA 2011", "Microsoft Windows")
    sb = s.secure_boot
    assert sb is not None and sb.enabled and sb.pk is not None
    assert sb.pk.well_known == ("GCE_DEFAULT_PK",)
    (auth,) = sb.authorities  # the boot manager, verified by Microsoft's 2010 root in GCE's db
    assert auth.certificate is not None
    assert "Microsoft Root Certificate Authority 2010" in auth.certificate.subject.rfc4514_string()
    assert s.linux is None and s.grub is None


# -- PCR 0: nothing after the separator is believed, whatever the separator claims to be ------


def _gce_with_disguised_separator(separator: tuple[int, bytes]) -> synth.LogBuilder:
    b = synth.LogBuilder()
    b.event(0, synth.EV_S_CRTM_VERSION, synth.gce_scrtm_version(3))
    b.event(0, EV_NONHOST_INFO, synth.gce_nonhost_info(0))
    etype, data = separator
    b.event(0, etype, data, measured=b"\0\0\0\0")  # the firmware's PCR 0 separator
    # extended from the OS after boot, with a log rewritten to hide the boundary:
    b.event(0, synth.EV_S_CRTM_VERSION, synth.gce_scrtm_version(99))
    b.event(0, EV_NONHOST_INFO, synth.gce_nonhost_info(5))
    return b


@pytest.mark.parametrize("separator", [
    (synth.EV_POST_CODE, b"\0\0\0\0"),         # relabelled: its data still matches the digest
    (synth.EV_SEPARATOR, b"\x01\0\0\0"),       # data rewritten: no longer matches the digest
    (synth.EV_S_CRTM_CONTENTS, b"anything"),   # both
])
def test_pcr0_facts_after_a_disguised_separator_are_not_believed(
        separator: tuple[int, bytes]) -> None:
    """go-tpm-tools stops at any PCR 0 event carrying a separator's digest: the event type and
    data are claims of the log, the digest is what the firmware extended."""
    res = built(_gce_with_disguised_separator(separator))
    p = res.state.platform
    assert p is not None and p.gce_firmware_version == 3
    assert p.confidential_computing == "NONE"
    assert failed({"boot": {"min_gce_firmware_version": 10}}, res) == ["boot.gce_firmware_version"]


# -- kernel command lines that the log hides ----------------------------------------------------


def _systemd_boot(b: synth.LogBuilder, cmdline: str = "root=/dev/vda2 ro") -> synth.LogBuilder:
    synth.gce_boot(b)
    return synth.systemd_cmdline(b, cmdline)


CMDLINE_POLICY = {"boot": {"kernel_cmdline": ["root=/dev/vda2 ro"]}}


def test_an_unexplained_pcr8_measurement_fails_kernel_cmdline_without_grub() -> None:
    """systemd-boot before 251 measured the command line into PCR 8; rewriting its data hides
    it, and an allowed line appended to PCR 12 after boot must not make the rule pass."""
    b = _systemd_boot(synth.LogBuilder())
    b.event(8, synth.EV_IPL, synth.ucs2z("root=/dev/vda2 ro"),
            measured="init=/bin/sh".encode("utf-16-le"))
    res = built(b)
    assert res.state.grub is None
    assert res.state.linux is not None and res.state.linux.unexplained == (
        next(e.index for e in res.log.events if e.pcr == 8),)
    assert failed(CMDLINE_POLICY, res) == ["boot.kernel_cmdline"]


def test_a_rewritten_pcr12_command_line_fails_kernel_cmdline() -> None:
    b = _systemd_boot(synth.LogBuilder())
    b.event(12, synth.EV_IPL, synth.ucs2z("root=/dev/vda2 ro"),
            measured="root=/dev/vda2 init=/bin/sh".encode("utf-16-le"))
    assert failed(CMDLINE_POLICY, built(b)) == ["boot.kernel_cmdline"]


def test_systemd_measurements_that_are_not_command_lines_do_not_fail_it() -> None:
    b = _systemd_boot(synth.LogBuilder())
    for name in ("Credentials initrd", "Global credentials initrd",
                 "Configuration extension initrd"):
        b.event(12, synth.EV_IPL, synth.ucs2z(name), measured=name.encode() + b" cpio")
    b.event(12, synth.EV_EVENT_TAG, synth.tagged(0x6C46F751, synth.ucs2z("board.dtb")),
            measured=b"devicetree")
    b.event(13, synth.EV_IPL, synth.ucs2z("System extension initrd"), measured=b"sysext cpio")
    res = built(b)
    assert res.state.linux is not None and res.state.linux.unexplained == ()
    assert failed(CMDLINE_POLICY, res) == []


def test_command_lines_of_an_unquoted_pcr_fail_kernel_cmdline() -> None:
    """GRUB's command line sits in PCR 8; a quote without PCR 8 cannot vouch for it, even if
    PCR 12 shows an allowed line."""
    b = _systemd_boot(synth.LogBuilder())
    synth.grub_string(b, "kernel_cmdline", "/vmlinuz root=/dev/vda2 init=/bin/sh")
    assert failed(CMDLINE_POLICY, built(b)) == ["boot.kernel_cmdline"]  # seen when quoted
    assert failed(CMDLINE_POLICY, built(b, drop=(8,))) == ["boot.kernel_cmdline"]


# -- PCR 9: every digest is a file GRUB may have read -------------------------------------------


def test_a_relabelled_pcr9_measurement_is_still_judged_by_grub_files() -> None:
    """A file measurement's type and name are not covered by its digest: relabelled as the
    kernel EFI stub's initrd event, an unlisted kernel must not slip past the allow-list."""
    b = synth.gce_boot(synth.LogBuilder())
    synth.grub_file(b, "(hd0,gpt2)/grub2/grub.cfg", b"config")
    b.event(9, synth.EV_EVENT_TAG, synth.tagged(0x8F3B22EC, b"Linux initrd\0"),
            measured=b"evil kernel")
    res = built(b)
    g = res.state.grub
    assert g is not None and [m.digest for m in g.other] == [H(b"evil kernel").digest()]
    doc = {"boot": {"grub_files": {"sha256": [H(b"config").hexdigest()]}}}
    assert failed(doc, res) == ["boot.grub_files"]
    learned = policy.learn(None, res, sections=["boot"])
    assert learned.evaluate(None, res).ok
    assert H(b"evil kernel").hexdigest() in learned.to_dict()["boot"]["grub_files"]["sha256"]


# -- Windows: the boot configuration ends at the WBCL separator ---------------------------------


def _wbcl(*events: bytes) -> bytes:
    return synth.tagged(0x40010001, b"".join(events))


def test_wbcl_events_after_the_separator_are_not_read() -> None:
    """As go-attestation reads the WBCL: after Windows closed PCR 12 with its "WBCL"
    separator, tagged events are extensions from the running OS, not the boot's."""
    b = synth.LogBuilder()
    b.event(12, synth.EV_EVENT_TAG, _wbcl(synth.sipa(0x00020002, struct.pack("<Q", 7)),
                                          synth.sipa(0x00020003, struct.pack("<I", 2)),
                                          synth.sipa(0x00050002, b"\x00")))
    b.event(12, synth.EV_SEPARATOR, b"WBCL")
    b.event(12, synth.EV_EVENT_TAG, _wbcl(synth.sipa(0x00020003, struct.pack("<I", 1)),
                                          synth.sipa(0x00020002, struct.pack("<Q", 8)),
                                          synth.sipa(0x00050003, b"\x01")))
    s = state_of(b)
    w = s.windows
    assert w is not None and w.boot_count == 7 and w.cold_boot is False
    assert w.code_integrity is False and not w.test_signing
    assert any("after the WBCL separator" in n for n in s.notes)


# -- Secure Boot: on, but not enforced ----------------------------------------------------------


def _authority(name: str, value: bytes, guid: str = SHIM_LOCK) -> bytes:
    return synth.uefi_variable(guid, name, value)


def test_shim_with_validation_disabled_fails_secure_boot_required() -> None:
    """`mokutil --disable-validation` sets MokSBState; shim then verifies nothing, and measures
    the variable into PCR 7 as an authority event (shim README.tpm, mok.c)."""
    s = synth.secure_boot_log(("sha256",))
    s.builder.event(7, synth.EV_EFI_VARIABLE_AUTHORITY, _authority("MokSBState", b"\x01"))
    s.builder.event(7, synth.EV_EFI_VARIABLE_AUTHORITY,
                    _authority("SbatLevel", b"sbat,1,2022052400\ngrub,2\n"))
    res = built(s.builder)
    sb = res.state.secure_boot
    assert sb is not None and sb.enabled and sb.shim_validation_disabled
    assert sb.sbat_level == "sbat,1,2022052400\ngrub,2\n"
    assert sb.to_dict()["shim_validation_disabled"] is True
    assert res.state.summary()["secure_boot"]["shim_validation_disabled"] is True
    r = Policy.from_dict({"secure_boot": {"required": True, "forbidden": []}}).evaluate(None, res)
    assert r.failed_rules() == ["secure_boot.required"]
    assert "MokSBState" in str(r)
    learned = policy.learn(None, res, sections=["secure_boot"])
    assert not learned.evaluate(None, res).ok  # learning never blesses a disabled shim


def test_shim_validation_enabled_again_passes() -> None:
    s = synth.secure_boot_log(("sha256",))
    s.builder.event(7, synth.EV_EFI_VARIABLE_AUTHORITY, _authority("MokSBState", b"\x00"))
    res = built(s.builder)
    assert res.state.secure_boot is not None and not res.state.secure_boot.shim_validation_disabled
    assert failed({"secure_boot": {"required": True, "forbidden": []}}, res) == []


def test_a_uefi_debugger_fails_secure_boot_required() -> None:
    """go-attestation refuses a log whose PCR 7 says "UEFI Debug Mode": a debugger can
    bypass every signature check, so Secure Boot is not in force."""
    res = built(synth.secure_boot_log(("sha256",), debug=True).builder)
    assert res.state.secure_boot is not None and res.state.secure_boot.enabled
    r = Policy.from_dict({"secure_boot": {"required": True, "forbidden": []}}).evaluate(None, res)
    assert r.failed_rules() == ["secure_boot.required"] and "debug" in str(r).lower()


# -- policy documents: a key given twice -------------------------------------------------------


@pytest.mark.parametrize("text", [
    '{"version": 1, "secure_boot": {"required": true}, "secure_boot": {}}',
    '{"version": 1, "secure_boot": {"required": true, "required": false}}',
    '{"pcrs": {"sha256": {"7": "%s", "7": "%s"}}}'.replace("%s", "00" * 32),
])
def test_a_key_given_twice_in_json_is_an_error(text: str) -> None:
    """JSON parsers keep the last of duplicate keys: the first (a required rule) would vanish
    silently."""
    with pytest.raises(PolicyError, match="twice"):
        Policy.from_text(text)


@pytest.mark.parametrize("text", [
    "version: 1\nsecure_boot:\n  required: true\nsecure_boot: {}\n",
    "secure_boot:\n  required: true\n  required: false\n",
    "pcrs:\n  sha256:\n    7: '%s'\n    '7': '%s'\n".replace("%s", "11" * 32),
])
def test_a_key_given_twice_in_yaml_is_an_error(text: str) -> None:
    with pytest.raises(PolicyError, match="twice"):
        Policy.from_text(text, filename="p.yaml")


def test_yaml_aliases_are_refused_before_they_expand() -> None:
    """A few hundred bytes of nested aliases expand to 10**depth items when the document is
    walked (billion laughs): a policy needs no aliases, so none is accepted."""
    lines = ['l0: &l0 ["x","x","x","x","x","x","x","x","x","x"]']
    lines += [f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 7)]
    with pytest.raises(PolicyError, match="alias"):
        Policy.from_text("\n".join(lines) + "\n", filename="p.yaml")
    with pytest.raises(PolicyError, match="alias"):
        Policy.from_text("secure_boot: &s {required: true}\nboot: *s\n", filename="p.yaml")


@pytest.mark.parametrize(("text", "filename"), [
    ('{"version": ' + "1" * 5000 + "}", None),
    ("version: " + "1" * 5000 + "\n", "p.yaml"),
    ('{"boot": {"min_gce_firmware_version": ' + "9" * 5000 + "}}", "p.json"),
])
def test_a_number_beyond_pythons_digit_limit_is_a_policy_error(text: str,
                                                              filename: str | None) -> None:
    """Python refuses to convert integers of more than 4300 digits with a plain ValueError;
    the CLI catches PolicyError, so that was a traceback."""
    with pytest.raises(PolicyError, match="cannot read the document"):
        Policy.from_text(text, filename=filename)
