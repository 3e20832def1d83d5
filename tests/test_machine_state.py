"""The machine state of a verified event log (``EventLogResult.state``): real logs (GCE shielded
VMs with GRUB, a Secure Boot log, workstation logs), logs synthesized from what GCE firmware,
GRUB, systemd, the Linux EFI stub and Windows measure, tampered logs, hostile logs; and the
well-known certificates."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

import eventlog_synth as synth
from replay_quote import quote_replayed
from tpm2_attest import verify
from tpm2_attest.embedded import EmbeddedSwtpm
from tpm2_attest.eventlog import (
    WELL_KNOWN_NAMES,
    MachineState,
    gce_firmware_version,
    machine_state,
    parse_event_log,
    parse_variable_update,
    well_known_certificate,
)
from tpm2_attest.eventlog import wellknown as wk

LOGS = synth.LOGS_DIR
DATA = Path(__file__).resolve().parent / "data"
UBUNTU = LOGS / "ubuntu_2104_shielded_vm_no_secure_boot_eventlog"
COREOS = LOGS / "coreos_36_shielded_vm_no_secure_boot_eventlog"
SB_CERT = LOGS / "sb_cert_eventlog"
SB_CERT_RAW = SB_CERT.read_bytes()
H = hashlib.sha256


def verified(raw: bytes, pcrs: dict[int, bytes] | None = None, **kw: Any) -> verify.EventLogResult:
    """verify_event_log over PCR values computed from the log by replay (the test's 'quote')."""
    log = parse_event_log(raw)
    values = log.replay("sha256") if pcrs is None else pcrs
    return verify.verify_event_log(raw, values, **kw)


def state_of(builder: synth.LogBuilder, **kw: Any) -> MachineState:
    """The state of a synthesized log, verified against the PCRs synth predicts independently."""
    return verify.verify_event_log(builder.build(), builder.expected("sha256"), **kw).state


# -- real logs ---------------------------------------------------------------------------------


def test_gce_ubuntu_state_from_a_real_quote(fresh_swtpm: EmbeddedSwtpm) -> None:
    """A real GCE log replayed into swtpm, quoted and verified: every part of the state."""
    q = quote_replayed(fresh_swtpm.tcti, UBUNTU.read_bytes())
    s = q.log_result.state
    assert s.bank == "sha256" and s.verified_pcrs == frozenset({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14})
    p = s.platform
    assert p is not None
    assert p.scrtm_version == "GCE Virtual Firmware v1\0".encode("utf-16-le")
    assert p.scrtm_version_text == "GCE Virtual Firmware v1" and p.gce_firmware_version == 1
    assert p.confidential_computing == "NONE" and p.confidential_computing_id == 0
    assert s.secure_boot is not None and s.secure_boot.enabled is False
    assert s.secure_boot.pk is not None and s.secure_boot.pk.well_known == ("GCE_DEFAULT_PK",)
    assert s.efi is not None and s.efi.exit_boot_services is True and s.efi.boot_option_called
    assert [a.path.rsplit("\\", 1)[-1] for a in s.efi.apps if a.path] == ["shimx64.efi",
                                                                          "grubx64.efi"]
    log = parse_event_log(UBUNTU.read_bytes())
    assert [a.digest for a in s.efi.apps] == [
        e.digest("sha256") for e in log.events if e.type == synth.EV_EFI_BOOT_SERVICES_APPLICATION]
    g = s.grub
    assert g is not None and g.files is not None and g.commands is not None
    pcr8 = [e for e in log.events if e.pcr == 8]
    assert len(g.commands) == len(pcr8) and g.unverified == ()  # every GRUB string verified
    assert g.commands[0] == "grub_cmd: search.fs_uuid fadc363a-fae5-4b46-9bf5-303a0043410b root"
    assert [f.name for f in g.files][:1] == ["(hd0,gpt15)/EFI/ubuntu/grub.cfg"]
    lx = s.linux
    assert lx is not None and lx.cmdline_source == "grub"
    assert lx.cmdline == ("/boot/vmlinuz-5.11.0-1006-gcp root=PARTUUID=6443a6ae-e5e9-4df7-9a06-"
                          "d1329e50f33c ro console=ttyS0 panic=-1")
    assert lx.kernel is not None and lx.kernel.label == "grub:/boot/vmlinuz-5.11.0-1006-gcp"
    assert lx.initrd_digest is None  # this image boots without an initrd
    assert s.windows is None and s.notes == ()
    json.dumps(s.to_dict())
    assert q.log_result.to_dict()["state"] == s.summary()


def test_gce_coreos_is_a_confidential_vm_with_an_initrd() -> None:
    s = verified(COREOS.read_bytes()).state
    assert s.platform is not None and s.platform.confidential_computing == "AMD_SEV"
    assert s.linux is not None and s.linux.initrd_digest is not None
    (initrd,) = s.linux.initrds
    assert initrd.label is not None and initrd.label.endswith("initramfs-5.18.13-200.fc36.x86_64.img")
    log = parse_event_log(COREOS.read_bytes())
    assert initrd.digest == log.events[initrd.index].digest("sha256") and initrd.pcr == 9
    assert s.linux.cmdline is not None and "ignition.platform.id=gcp" in s.linux.cmdline


def test_secure_boot_log_names_well_known_certificates() -> None:
    s = verified(SB_CERT.read_bytes()).state
    sb = s.secure_boot
    assert sb is not None and sb.enabled
    assert sb.kek is not None and sb.kek.well_known == ("MS_THIRD_PARTY_KEK_CA_2011",)
    assert sb.db is not None and set(sb.db.well_known) == {"MS_WINDOWS_PROD_PCA_2011",
                                                           "MS_THIRD_PARTY_UEFI_CA_2011"}
    assert [a.well_known for a in sb.authorities] == ["MS_THIRD_PARTY_UEFI_CA_2011", None, None]
    d = s.to_dict()["secure_boot"]
    assert d["well_known"]["PK"] == ["GCE_DEFAULT_PK"]
    assert any(e.get("well_known") == "MS_WINDOWS_PROD_PCA_2011" for e in d["db"]["entries"])
    assert d["authorities"][0]["well_known"] == "MS_THIRD_PARTY_UEFI_CA_2011"
    # The S-CRTM version of this (old GCE) log is an empty UCS-2 string: raw, no text.
    assert s.platform is not None and s.platform.scrtm_version == b"\0\0"
    assert s.platform.scrtm_version_text is None and s.platform.gce_firmware_version is None


def test_workstation_logs() -> None:
    s = verified((LOGS / "crypto_agile_eventlog").read_bytes()).state
    assert s.platform is not None
    assert s.platform.scrtm_version_text == "546bfb1e-1d0c-4055-a4ad-4ef4bf17b83a"  # a GUID
    assert [c.event_type for c in s.platform.firmware_blobs] == ["EV_S_CRTM_CONTENTS",
                                                                 "EV_POST_CODE"]
    assert s.platform.firmware_blobs[1].base == 0xFFA20000
    assert s.grub is None and s.linux is None
    raw = (LOGS / "ebs_event_missing_eventlog").read_bytes()
    s = verify.verify_event_log(raw, parse_event_log(raw).replay("sha1"), bank="sha1").state
    assert s.bank == "sha1" and s.efi is not None and s.efi.exit_boot_services is False


# -- only verified PCRs ------------------------------------------------------------------------


@pytest.mark.parametrize(("dropped", "absent"), [
    (0, "platform"), (7, "secure_boot"), (4, "efi"), (9, "grub.files"), (8, "grub.commands"),
    (5, "efi.exit_boot_services"), (2, "platform.option_roms"),
])
def test_a_fact_of_an_unquoted_pcr_is_absent(dropped: int, absent: str) -> None:
    raw = UBUNTU.read_bytes()
    pcrs = parse_event_log(raw).replay("sha256")
    full = verified(raw).state
    del pcrs[dropped]
    s = verified(raw, pcrs).state
    assert dropped not in s.verified_pcrs

    def get(obj: Any, path: str) -> Any:
        for part in path.split("."):
            obj = getattr(obj, part)
        return obj

    assert get(full, absent) is not None and get(s, absent) is None


def test_without_pcr_8_and_9_there_is_no_grub_and_no_linux() -> None:
    raw = UBUNTU.read_bytes()
    pcrs = {k: v for k, v in parse_event_log(raw).replay("sha256").items() if k not in (8, 9)}
    s = verified(raw, pcrs).state
    assert s.grub is None and s.linux is None


def test_secure_boot_false_leaves_the_state_without_it() -> None:
    assert verified(SB_CERT.read_bytes(), secure_boot=False).state.secure_boot is None


# -- tampered logs: data that does not match its digest is not believed ------------------------


def _tamper(raw: bytes, index: int, data: bytes, etype: int | None = None) -> bytes:
    """Rebuild the crypto-agile log with event ``index``'s data (and type) replaced, digests kept:
    the replay is unchanged, only the unmeasured claims differ."""
    log = parse_event_log(raw)
    first = log.events[1].offset
    out = bytearray(raw[:first])
    for ev in log.events[1:]:
        d = data if ev.index == index else ev.data
        t = etype if (ev.index == index and etype is not None) else ev.type
        out += synth.agile_record(ev.pcr, t, [(a, v) for a, v in ev.digests], d)
    return bytes(out)


def test_a_rewritten_grub_command_is_unverified_not_believed() -> None:
    raw = UBUNTU.read_bytes()
    log = parse_event_log(raw)
    cmd = next(e for e in log.events if e.data.startswith(b"kernel_cmdline: "))
    evil = _tamper(raw, cmd.index, b"kernel_cmdline: /boot/vmlinuz ro quiet\0")
    s = verified(evil).state
    assert s.grub is not None and s.grub.unverified == (cmd.index,)
    assert s.linux is not None and s.linux.cmdlines == ()  # the only command line was forged
    assert any("does not match its digest" in n for n in s.notes)


def test_a_rewritten_scrtm_version_is_not_believed() -> None:
    raw = UBUNTU.read_bytes()
    evil = _tamper(raw, 1, synth.gce_scrtm_version(99))
    s = verified(evil).state
    assert s.platform is not None and s.platform.scrtm_version is None
    assert s.platform.gce_firmware_version is None


def test_an_app_retyped_as_an_action_stays_an_opaque_pcr4_measurement() -> None:
    raw = UBUNTU.read_bytes()
    log = parse_event_log(raw)
    grub = [e for e in log.events if e.type == synth.EV_EFI_BOOT_SERVICES_APPLICATION][1]
    evil = _tamper(raw, grub.index, b"Calling EFI Application from Boot Option",
                   synth.EV_EFI_ACTION)
    s = verified(evil).state
    assert s.efi is not None and len(s.efi.apps) == 1
    assert [m.digest for m in s.efi.other] == [grub.digest("sha256")]
    assert grub.digest("sha256") in s.efi.digests


def test_a_forged_exit_boot_services_is_not_believed() -> None:
    b = synth.gce_boot(synth.LogBuilder(), ebs=False)
    b.event(5, synth.EV_EFI_ACTION, b"Exit Boot Services Invocation", measured=b"something else")
    s = state_of(b)
    assert s.efi is not None and s.efi.exit_boot_services is False


# -- platform ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "version"), [
    (synth.gce_scrtm_version(1), 1),
    (synth.gce_scrtm_version(12345), 12345),
    (synth.gce_scrtm_version(4294967295), 4294967295),
    (synth.gce_scrtm_version(4294967296), None),           # does not fit a uint32
    ("GCE Virtual Firmware v".encode("utf-16-le"), None),  # no digits
    ("GCE Virtual Firmware v1".encode("utf-16-le"), 1),    # no terminator: still read
    (synth.ucs2z("GCE Virtual Firmware vX"), None),
    (synth.ucs2z("GCE Virtual Firmware v-1"), None),
    (synth.ucs2z("GCE Virtual Firmware v1") + b"\0", None),  # odd length
    (synth.ucs2z("GCE Virtual Firmware v\u0131"), None),     # a non-NUL high byte
    (synth.ucs2z("GCE Virtual Firmware v1\u00002"), 12),     # NULs skipped, as go-tpm-tools does
    (synth.ucs2z("GCE Virtual Firmware v"), None),
    (b"\0\0", None),
    (synth.ucs2z("Virtual Firmware v1"), None),
])
def test_gce_firmware_version_is_go_tpm_tools_format(data: bytes, version: int | None) -> None:
    assert gce_firmware_version(data) == version


@pytest.mark.parametrize(("tech", "name"), [(0, "NONE"), (1, "AMD_SEV"), (2, "AMD_SEV_ES"),
                                            (4, "AMD_SEV_SNP"), (5, "INTEL_TDX"),
                                            (3, "UNKNOWN_3"), (None, None)])
def test_confidential_computing_from_gce_nonhost_info(tech: int | None, name: str | None) -> None:
    s = state_of(synth.gce_boot(synth.LogBuilder(), technology=tech))
    assert s.platform is not None and s.platform.confidential_computing == name
    assert s.platform.confidential_computing_id == tech


def test_option_roms_and_facts_after_the_pcr0_separator() -> None:
    b = synth.gce_boot(synth.LogBuilder(), version=3)
    b.event(0, synth.EV_S_CRTM_VERSION, synth.gce_scrtm_version(9))  # after the separator
    b.event(2, synth.EV_EFI_BOOT_SERVICES_DRIVER,
            synth.image_load(synth.dp_pciroot() + synth.dp_pci(3, 0) + synth.dp_end()),
            measured=b"option rom")
    s = state_of(b)
    assert s.platform is not None and s.platform.gce_firmware_version == 3
    assert s.platform.option_roms is not None
    (rom,) = s.platform.option_roms
    assert rom.digest == H(b"option rom").digest() and rom.description == "PciRoot(0x0)/Pci(0x3,0x0)"


# -- GRUB, systemd, the Linux EFI stub ----------------------------------------------------------


def test_grub_commands_files_kernel_and_initrd() -> None:
    b = synth.gce_boot(synth.LogBuilder())
    synth.grub_file(b, "(hd0,gpt1)/boot/grub/grub.cfg", b"menuentry")
    synth.grub_string(b, "grub_cmd", "linux /vmlinuz-6.1 root=/dev/sda1 ro")
    synth.grub_file(b, "/vmlinuz-6.1", b"kernel")
    synth.grub_string(b, "kernel_cmdline", "/vmlinuz-6.1 root=/dev/sda1 ro")
    synth.grub_string(b, "grub_cmd", "initrd /ucode.img /initrd-6.1.img")
    synth.grub_file(b, "/ucode.img", b"ucode")
    synth.grub_file(b, "/initrd-6.1.img", b"initrd")
    s = state_of(b)
    assert s.grub is not None and s.grub.commands == (
        "grub_cmd: linux /vmlinuz-6.1 root=/dev/sda1 ro",
        "kernel_cmdline: /vmlinuz-6.1 root=/dev/sda1 ro",
        "grub_cmd: initrd /ucode.img /initrd-6.1.img")
    lx = s.linux
    assert lx is not None and lx.cmdline == "/vmlinuz-6.1 root=/dev/sda1 ro"
    assert lx.kernel is not None and lx.kernel.digest == H(b"kernel").digest()
    assert [m.digest for m in lx.initrds] == [H(b"ucode").digest(), H(b"initrd").digest()]
    assert lx.initrd_digest == H(b"initrd").digest()


def test_old_fedora_grub_prefixes_and_a_nul_in_the_digest() -> None:
    b = synth.gce_boot(synth.LogBuilder())
    b.event(8, synth.EV_IPL, b"grub_kernel_cmdline /vmlinuz ro\0", measured=b"/vmlinuz ro")
    b.event(8, synth.EV_IPL, b"grub_cmd set x=1\0", measured=b"set x=1\0")  # NUL hashed too
    s = state_of(b)
    assert s.grub is not None and s.grub.unverified == ()
    assert s.linux is not None and s.linux.cmdline == "/vmlinuz ro"


@pytest.mark.parametrize(("pcr", "with_nul"), [(12, True), (12, False), (8, True)])
def test_systemd_command_line(pcr: int, with_nul: bool) -> None:
    b = synth.gce_boot(synth.LogBuilder())
    synth.systemd_cmdline(b, "root=/dev/vda2 rw quiet", pcr=pcr, with_nul=with_nul)
    # a credentials initrd: UTF-16 description, opaque digest (not a command line)
    b.event(12, synth.EV_IPL, synth.ucs2z("Credentials initrd"), measured=b"cpio")
    s = state_of(b)
    assert s.linux is not None and s.linux.cmdline == "root=/dev/vda2 rw quiet"
    assert s.linux.cmdline_source == "systemd" and s.linux.cmdlines[0].pcr == pcr
    assert len(s.linux.cmdlines) == 1
    assert s.grub is None  # systemd's PCR 8 line is not GRUB's


def test_uki_sections_and_the_efi_stub_initrd() -> None:
    b = synth.gce_boot(synth.LogBuilder())
    for name, contents in ((".linux", b"vmlinux"), (".osrel", b"ID=fedora"),
                           (".cmdline", b"root=/dev/vda2"), (".initrd", b"cpio")):
        synth.uki_section(b, name, contents)
    synth.systemd_cmdline(b, "root=/dev/vda2 rw")
    b.event(9, synth.EV_EVENT_TAG, synth.tagged(0x8F3B22EC, b"Linux initrd\0"),
            measured=b"stub initrd")
    b.event(9, synth.EV_EVENT_TAG, synth.tagged(0x8F3B22ED, b"LOADED_IMAGE::LoadOptions\0"),
            measured="root=/dev/vda2 rw".encode("utf-16-le"))
    s = state_of(b)
    lx = s.linux
    assert lx is not None
    assert [(u.name, u.digest) for u in lx.uki_sections] == [
        (".linux", H(b"vmlinux").digest()), (".osrel", H(b"ID=fedora").digest()),
        (".cmdline", H(b"root=/dev/vda2").digest()), (".initrd", H(b"cpio").digest())]
    assert lx.kernel is not None and lx.kernel.label == "uki:.linux"
    assert [m.label for m in lx.initrds] == ["uki:.initrd", "efi-stub:initrd"]
    assert lx.initrd_digest == H(b"stub initrd").digest()
    assert lx.load_options_digest == H("root=/dev/vda2 rw".encode("utf-16-le")).digest()
    assert s.grub is None


def test_a_uki_section_name_that_does_not_match_its_digest_is_not_a_section() -> None:
    b = synth.gce_boot(synth.LogBuilder())
    b.event(11, synth.EV_IPL, synth.ucs2z(".linux"), measured=b"not the name")
    b.event(11, synth.EV_IPL, synth.ucs2z(".linux"), measured=b"vmlinux")
    s = state_of(b)
    assert s.linux is None


# -- Windows (WBCL) ------------------------------------------------------------------------------


def _wbcl(*events: bytes) -> bytes:
    return synth.tagged(0x40010001, b"".join(events))  # a trust boundary container


def _module(path: str, digest: bytes) -> bytes:
    return synth.sipa(0x40010003, b"".join([
        synth.sipa(0x00070001, synth.ucs2z(path)),
        synth.sipa(0x00070003, struct.pack("<I", 0x800C)),
        synth.sipa(0x00070004, digest),
        synth.sipa(0x0007000A, b"\x01"),
        synth.sipa(0x00070005, synth.ucs2z("Microsoft Windows Production PCA 2011")),
    ]))


def test_windows_boot_configuration_log() -> None:
    b = synth.LogBuilder()
    b.event(0, synth.EV_S_CRTM_VERSION, synth.ucs2z("1.0"))
    for pcr in range(8):
        b.event(pcr, synth.EV_SEPARATOR, b"\0\0\0\0")
    b.event(4, synth.EV_EFI_BOOT_SERVICES_APPLICATION,
            synth.image_load(synth.dp_file("\\EFI\\Microsoft\\Boot\\bootmgfw.efi") + synth.dp_end()),
            measured=b"bootmgr")
    b.event(12, synth.EV_EVENT_TAG, _wbcl(
        synth.sipa(0x00020002, struct.pack("<Q", 42)),            # boot counter
        synth.sipa(0x00040001, b"\x00"),                          # boot debugging off
        synth.sipa(0x00050002, b"\x01"),                          # code integrity on
        synth.sipa(0x00050004, struct.pack("<Q", 1)),             # DEP on
        synth.sipa(0x00020005, b"\x14"),                          # BitLocker: TPM + PIN
        synth.sipa(0x40010002, synth.sipa(0x00090001, synth.ucs2z("ELAM"))),  # ELAM: counted
        _module("\\Windows\\System32\\winload.efi", b"\x11" * 32),
        synth.sipa(0x00020003, struct.pack("<I", 1)),             # transfer control: winload
    ))
    b.event(13, synth.EV_EVENT_TAG, _wbcl(
        synth.sipa(0x00050003, b"\x01"),                          # test signing ON
        synth.sipa(0x00050002, b"\x00"),                          # code integrity off once
        synth.sipa(0x00020005, b"\x14"),                          # repeated in PCR 13: ignored
        _module("\\Windows\\System32\\ntoskrnl.exe", b"\x22" * 32),
    ))
    b.event(12, synth.EV_SEPARATOR, b"WBCL")
    b.event(13, synth.EV_EVENT_TAG, _wbcl(synth.sipa(0x00050001, b"\x01")),
            measured=b"tampered")  # kernel debugging claimed, data not matching: ignored
    s = state_of(b)
    w = s.windows
    assert w is not None
    assert w.boot_manager is not None and w.boot_manager.digest == H(b"bootmgr").digest()
    assert w.boot_count == 42 and w.cold_boot is True
    assert w.test_signing and not w.boot_debugging and not w.kernel_debugging
    assert w.code_integrity is False and w.dep is True
    assert w.bitlocker_unlocks == (0x14,)
    assert [(m.pcr, m.path, m.authenticode_hash, m.hash_algorithm, m.image_validated)
            for m in w.modules] == [
        (12, "\\Windows\\System32\\winload.efi", b"\x11" * 32, "sha256", True),
        (13, "\\Windows\\System32\\ntoskrnl.exe", b"\x22" * 32, "sha256", True)]
    assert w.modules[0].authority_issuer == "Microsoft Windows Production PCA 2011"
    assert w.separators == (12,) and len(w.unverified) == 1
    d = s.to_dict()["windows"]
    assert d["bitlocker_unlocks"] == [{"flags": 0x14, "names": ["tpm", "pin"]}]
    assert s.summary()["windows"]["modules"] == 2


def _load(digest: bytes | None, *fields: bytes) -> bytes:
    """A loaded-module aggregation: its Authenticode hash (when given) and other fields."""
    head = [] if digest is None else [synth.sipa(0x00070004, digest)]
    return synth.sipa(0x40010003, b"".join(head + list(fields)))


def test_windows_modules_are_merged_by_authenticode_hash() -> None:
    """Windows measures each module twice: its hash alone in PCR 12, the hash with its path,
    size and signer in PCR 13. go-attestation keys LoadedModules by hash (a later load
    replacing an earlier one): one module per hash here too, every PCR and load counted."""
    winload, ntos, anon = b"\x11" * 32, b"\x22" * 32, b"\x33" * 32
    b = synth.LogBuilder()
    b.event(12, synth.EV_EVENT_TAG, _wbcl(_load(winload), _load(ntos), _load(anon),
                                          _load(None, synth.sipa(0x00070001, synth.ucs2z("a")))))
    b.event(13, synth.EV_EVENT_TAG, _wbcl(
        _module("\\Windows\\System32\\winload.efi", winload),
        _load(ntos, synth.sipa(0x00070001, synth.ucs2z("\\Windows\\System32\\ntoskrnl.exe")),
              synth.sipa(0x0007000A, b"\x00")),       # not validated by this load
        _load(ntos, synth.sipa(0x0007000A, b"\x01")),  # validated by a third one: still not
        _load(None, synth.sipa(0x00070001, synth.ucs2z("b")))))
    b.event(12, synth.EV_SEPARATOR, b"WBCL")
    w = state_of(b).windows
    assert w is not None
    assert [(m.authenticode_hash, m.path, m.pcrs, m.loads, m.image_validated)
            for m in w.modules] == [
        (winload, "\\Windows\\System32\\winload.efi", (12, 13), 2, True),
        (ntos, "\\Windows\\System32\\ntoskrnl.exe", (12, 13), 3, False),
        (anon, None, (12,), 1, None),
        (None, "a", (12,), 1, None),   # no hash: nothing to merge by, a module of its own
        (None, "b", (13,), 1, None)]
    assert w.modules[0].authority_issuer == "Microsoft Windows Production PCA 2011"
    assert w.modules[0].hash_algorithm == "sha256" and w.sipa_events == 8 + 15
    d = w.to_dict()["modules"][1]
    assert (d["pcr"], d["pcrs"], d["loads"]) == (12, [12, 13], 3)


def test_real_windows_modules_merge_into_one_per_hash() -> None:
    """The GCE Windows log: 128 loads, 64 hashes each measured in PCR 12 then PCR 13."""
    raw = (LOGS / "windows_gce_shielded_vm_eventlog").read_bytes()
    log = parse_event_log(raw)
    res = verify.verify_event_log(raw, log.replay("sha1"), bank="sha1")
    w = res.state.windows
    assert w is not None and len(w.modules) == 64 and w.sipa_events == 904
    assert all(m.pcrs == (12, 13) and m.loads == 2 and m.path and m.image_validated
               and m.hash_algorithm == "sha256" for m in w.modules)
    assert len({m.authenticode_hash for m in w.modules}) == 64
    summary = res.state.summary()["windows"]
    assert (summary["modules"], summary["module_loads"]) == (64, 128)


def test_the_windows_state_is_read_on_first_use_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The WBCL is the bulk of a Windows log and policies judge other parts: it is read when
    the Windows facts, the notes, to_dict() or summary() are first asked for, once, and the
    result is the same as reading it at once."""
    from tpm2_attest import policy
    from tpm2_attest.eventlog import state as state_module

    raw = (LOGS / "windows_gce_shielded_vm_eventlog").read_bytes()
    log = parse_event_log(raw)
    pcrs = log.replay("sha1")
    eager = verify.verify_event_log(raw, pcrs, bank="sha1").state
    expected = (eager.windows, eager.notes, eager.to_dict(), eager.summary())
    calls: list[int] = []
    real = state_module._windows

    def counted(*args: Any) -> Any:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(state_module, "_windows", counted)
    res = verify.verify_event_log(raw, pcrs, bank="sha1")
    learned = policy.learn(None, res)
    assert learned.evaluate(None, res).ok and calls == []
    s = res.state
    assert (s.windows, s.notes, s.to_dict(), s.summary()) == expected and calls == [1]
    assert s == eager and len(calls) == 1
    read = MachineState(s.bank, s.verified_pcrs, s.platform, s.secure_boot, s.efi, s.grub,
                        s.linux, s.windows, s.notes)
    assert read == s and hash(read) == hash(s)


def test_a_failure_reading_the_windows_state_is_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    from tpm2_attest.eventlog import state as state_module

    def broken(*args: Any) -> Any:
        raise KeyError("boom")

    raw = (LOGS / "windows_gce_shielded_vm_eventlog").read_bytes()
    monkeypatch.setattr(state_module, "_windows", broken)
    s = verify.verify_event_log(raw, parse_event_log(raw).replay("sha1"), bank="sha1").state
    assert s.windows is None and s.efi is not None
    assert s.notes == ("the Windows state could not be read: KeyError: 'boom'",)
    assert s.summary()["windows"] is None and s.summary()["notes"] == 1


def test_notes_of_the_windows_state_share_the_bound() -> None:
    b = synth.gce_boot(synth.LogBuilder())
    for i in range(30):
        b.event(8, synth.EV_IPL, f"grub_cmd: c{i}\0".encode(), measured=b"forged")
    b.event(12, synth.EV_EVENT_TAG, _wbcl(synth.sipa(0x00020002, struct.pack("<Q", 1)),
                                          synth.sipa(0x00020002, struct.pack("<Q", 2)),
                                          struct.pack("<II", 0x00020002, 99)))
    for _ in range(5):
        b.event(13, synth.EV_EVENT_TAG, _wbcl(), measured=b"forged")
    s = state_of(b)
    notes = s.notes
    assert len(notes) == 33 and notes[-1].startswith("... and ") and notes[-1].endswith(" more notes")
    assert sum(1 for n in notes if n.startswith("WBCL:")) == 1  # the room left: 32 - 31
    assert s.summary()["notes"] == 33


def test_hostile_wbcl_nesting_and_lengths_are_bounded() -> None:
    nested = synth.sipa(0x00020002, struct.pack("<Q", 7))
    for _ in range(5000):
        nested = synth.sipa(0x40010001, nested)
    b = synth.LogBuilder()
    b.event(12, synth.EV_EVENT_TAG, _wbcl(nested, struct.pack("<II", 0x00020002, 999) + b"x"))
    s = state_of(b)
    assert s.windows is not None and s.windows.boot_count == 7
    assert any("overruns" in n for n in s.notes)


# -- bounded summary and hostile input ----------------------------------------------------------


def test_summary_of_a_hostile_log_stays_small() -> None:
    """15,000 dbx entries, 3,000 applications, a 1 MB command line, 3,000 GRUB files."""
    b = synth.LogBuilder()
    b.event(7, synth.EV_EFI_VARIABLE_DRIVER_CONFIG,
            synth.uefi_variable(synth.EFI_GLOBAL_VARIABLE, "SecureBoot", b"\0"))
    hashes = [(synth.OWNER, H(i.to_bytes(4, "little")).digest()) for i in range(15000)]
    b.event(7, synth.EV_EFI_VARIABLE_DRIVER_CONFIG, synth.uefi_variable(
        synth.EFI_IMAGE_SECURITY_DATABASE, "dbx", synth.signature_list(synth.EFI_CERT_SHA256, hashes)))
    synth.gce_boot(b, apps=[(f"\\EFI\\app{i}.efi" + "x" * 300, i.to_bytes(4, "little"))
                            for i in range(3000)])
    synth.grub_string(b, "kernel_cmdline", "a" * 1_000_000)
    for i in range(3000):
        synth.grub_file(b, f"/f{i}" + "y" * 500, i.to_bytes(4, "little"))
    res = verify.verify_event_log(b.build(), b.expected("sha256"))
    s = res.state
    assert s.secure_boot is not None and s.secure_boot.dbx is not None
    assert len(s.secure_boot.dbx.entries) == 15000
    summary = json.dumps(s.summary())
    assert len(summary) < 16_000, len(summary)
    assert len(json.dumps(res.to_dict()["state"])) < 16_000
    sm = s.summary()
    assert sm["secure_boot"]["dbx"]["entries"] == 15000 and sm["efi"]["apps_count"] == 3000
    assert len(sm["efi"]["apps"]) == 16 and sm["grub"]["files"] == 3000
    assert sm["linux"]["cmdline"].endswith("...") and len(sm["linux"]["cmdline"]) == 1024
    assert sm["linux"]["cmdline_sha256"] == H(b"a" * 1_000_000).hexdigest()


def test_summary_changes_when_the_state_changes() -> None:
    a = state_of(synth.gce_boot(synth.LogBuilder(), apps=[("\\a.efi", b"one")]))
    b = state_of(synth.gce_boot(synth.LogBuilder(), apps=[("\\a.efi", b"two")]))
    assert a.summary()["efi"]["apps_sha256"] != b.summary()["efi"]["apps_sha256"]
    assert a.summary()["efi"]["apps_count"] == b.summary()["efi"]["apps_count"] == 1


def test_notes_are_bounded() -> None:
    b = synth.gce_boot(synth.LogBuilder())
    for i in range(200):
        b.event(8, synth.EV_IPL, f"grub_cmd: c{i}\0".encode(), measured=b"forged")
    s = state_of(b)
    assert s.grub is not None and len(s.grub.unverified) == 200
    assert len(s.notes) == 33 and s.notes[-1] == "... and 169 more notes"  # 32 + the count


def test_machine_state_directly_refuses_unknown_banks() -> None:
    log = parse_event_log(UBUNTU.read_bytes())
    with pytest.raises(ValueError):
        machine_state(log, "sha257", {0})
    assert machine_state(log, "sha256", ()).platform is None


# -- well-known certificates and dbx updates ------------------------------------------------------

# SHA-256 fingerprints as `openssl x509 -inform DER -fingerprint -sha256` prints them for the
# certificates of go-tpm-tools server/secure-boot (an independent computation).
OPENSSL_FINGERPRINTS = {
    "GCE_DEFAULT_PK": "D1:D2:17:AC:F6:0B:A4:E4:A8:90:21:03:22:D0:06:D6:73:C0:B8:2D:E9:D6:5A:D7:F2:D5:58:97:63:54:29:E2",
    "MS_THIRD_PARTY_KEK_CA_2011": "A1:11:7F:51:6A:32:CE:FC:BA:3F:2D:1A:CE:10:A8:79:72:FD:6B:BE:8F:E0:D0:B9:96:E0:9E:65:D8:02:A5:03",
    "MS_THIRD_PARTY_UEFI_CA_2011": "48:E9:9B:99:1F:57:FC:52:F7:61:49:59:9B:FF:0A:58:C4:71:54:22:9B:9F:8D:60:3A:C4:0D:35:00:24:85:07",
    "MS_WINDOWS_PROD_PCA_2011": "E8:E9:5F:07:33:A5:5E:8B:AD:7B:E0:A1:41:3E:E2:3C:51:FC:EA:64:B3:C8:FA:6A:78:69:35:FD:DC:C7:19:61",
    "CANONICAL_BOOTHOLE": "90:24:4C:C2:21:E0:0C:1F:E0:A7:B7:8B:3C:E9:45:DD:73:BF:16:33:01:9E:B6:C1:5F:A5:64:6F:9C:8D:2E:1E",
    "CISCO_BOOTHOLE": "20:E3:94:D1:5C:62:05:FA:F6:5F:A6:96:DF:13:B8:36:9D:31:53:CB:5D:2C:D0:56:B4:8C:0D:B0:0E:16:00:84",
    "DEBIAN_BOOTHOLE": "F1:56:D2:4F:5D:4E:77:5D:A0:E6:A9:11:1F:07:4C:FC:E7:01:93:9D:68:8C:64:DB:A0:93:F9:77:53:43:4F:2C",
}


@pytest.mark.parametrize("name", WELL_KNOWN_NAMES)
def test_well_known_certificates(name: str) -> None:
    der = wk.certificate_der(name)
    cert = x509.load_der_x509_certificate(der)
    assert well_known_certificate(der) == name and well_known_certificate(cert) == name
    assert wk.fingerprint_of(name).hex() == OPENSSL_FINGERPRINTS[name].replace(":", "").lower()
    assert set(OPENSSL_FINGERPRINTS) == set(WELL_KNOWN_NAMES)


def test_unknown_certificates_are_not_well_known() -> None:
    assert well_known_certificate(synth.self_signed_cert("Microsoft Windows Production PCA 2011")) is None
    assert well_known_certificate(wk.certificate_der("GCE_DEFAULT_PK")[:-1] + b"\0") is None


def test_importing_the_verifier_reads_no_certificate() -> None:
    import subprocess
    import sys

    code = ("import tpm2_attest.verify, tpm2_attest.eventlog.wellknown as w, sys; "
            "print(w._der.cache_info().currsize, 'tpm2_attest.eventlog.state' in sys.modules, "
            "'importlib.resources' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["0", "False", "False"]


def _independent_signature_lists(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type GUID bytes, entry data) of EFI_SIGNATURE_LISTs, read with struct alone."""
    out, pos = [], 0
    while pos < len(data):
        t, list_size, header, size = struct.unpack_from("<16sIII", data, pos)
        body = pos + 28 + header
        out += [(t, data[p + 16 : p + size]) for p in range(body, pos + list_size, size)]
        pos += list_size
    return out


@pytest.mark.parametrize(("name", "hashes", "certs"), [
    ("dbxupdate-2014-08-11.bin", 13, 0),
    ("dbxupdate_x64-2020-10-12.bin", 183, 3),
    ("dbxupdate_x64-2021-04-29.bin", 211, 0),
])
def test_microsoft_dbx_updates(name: str, hashes: int, certs: int) -> None:
    raw = (DATA / "secureboot" / name).read_bytes()
    entries = parse_variable_update(raw)
    (length,) = struct.unpack_from("<I", raw, 16)  # EFI_TIME, then WIN_CERTIFICATE.dwLength
    assert [e.data for e in entries] == [d for _, d in _independent_signature_lists(raw[16 + length:])]
    assert sum(e.type_name == "EFI_CERT_SHA256" for e in entries) == hashes
    assert sorted(e.well_known or "" for e in entries if e.is_certificate) == (
        ["CANONICAL_BOOTHOLE", "CISCO_BOOTHOLE", "DEBIAN_BOOTHOLE"] if certs else [])
    # bare signature lists read the same
    assert parse_variable_update(raw[16 + length:]) == entries


def test_a_truncated_dbx_update_is_an_error() -> None:
    from tpm2_attest.eventlog import EventLogError

    raw = (DATA / "secureboot" / "dbxupdate-2014-08-11.bin").read_bytes()
    with pytest.raises(EventLogError):
        parse_variable_update(raw[:-5])
    with pytest.raises(EventLogError):
        parse_variable_update(raw[:16] + struct.pack("<I", 1 << 30) + raw[20:])


def test_a_padded_certificate_entry_is_still_recognised() -> None:
    from tpm2_attest.eventlog import parse_signature_lists

    der = wk.certificate_der("MS_WINDOWS_PROD_PCA_2011")
    (entry,) = parse_signature_lists(synth.signature_list(synth.EFI_CERT_X509,
                                                          [(synth.OWNER, der + bytes(7))]))
    assert entry.certificate is not None and entry.certificate_error is None
    assert entry.fingerprint == H(der).digest() != entry.sha256
    assert entry.well_known == "MS_WINDOWS_PROD_PCA_2011"
    assert entry.to_dict()["sha256"] == H(der).hexdigest()


def test_nul_terminated_action_strings_hashed_without_their_nul() -> None:
    b = synth.LogBuilder()
    b.event(4, synth.EV_EFI_ACTION, b"Calling EFI Application from Boot Option\0",
            measured=b"Calling EFI Application from Boot Option")
    b.event(4, synth.EV_SEPARATOR, b"\0\0\0\0")
    b.event(5, synth.EV_EFI_ACTION, b"Exit Boot Services Invocation\0",
            measured=b"Exit Boot Services Invocation")
    s = state_of(b)
    assert s.efi is not None and s.efi.other == () and s.efi.boot_option_called
    assert s.efi.exit_boot_services is True


def test_an_empty_device_path_is_no_path() -> None:
    s = verified(SB_CERT_RAW).state
    assert s.efi is not None and [a.path is None for a in s.efi.apps] == [False, True, True]


def test_thousands_of_digits_in_a_gce_version_are_not_a_version() -> None:
    assert gce_firmware_version(synth.ucs2z("GCE Virtual Firmware v" + "9" * 5000)) is None
    assert gce_firmware_version(synth.ucs2z("GCE Virtual Firmware v" + "0" * 5000 + "7")) == 7
    b = synth.LogBuilder()
    b.event(0, synth.EV_S_CRTM_VERSION, synth.ucs2z("GCE Virtual Firmware v" + "9" * 5000))
    s = state_of(b)
    assert s.platform is not None and s.platform.gce_firmware_version is None


def test_an_internal_failure_leaves_an_empty_state_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    from tpm2_attest.eventlog import state as state_module

    def broken(*args: Any) -> Any:
        raise KeyError("boom")

    monkeypatch.setattr(state_module, "_efi", broken)
    res = verified(UBUNTU.read_bytes())
    assert res.verified and res.state.platform is None and res.state.efi is None
    assert res.state.notes == ("the machine state could not be read: KeyError: 'boom'",)
    from tpm2_attest.policy import Policy

    r = Policy.from_dict({"boot": {"min_gce_firmware_version": 1}}).evaluate(None, res)
    assert r.failed_rules() == ["boot.gce_firmware_version"]  # fails closed
