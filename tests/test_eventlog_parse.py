"""Parsing, decoding and replay of TCG event logs (formats, PCR 0 locality rules, UEFI data)."""

from __future__ import annotations

import json
import struct

import pytest

import eventlog_synth as synth
from tpm2_attest.eventlog import (
    EventLogBankError,
    EventLogError,
    EventType,
    FirmwareBlobInfo,
    GptInfo,
    GuidInfo,
    HandoffTablesInfo,
    HcrtmComponentInfo,
    ImageLoadInfo,
    LogFormat,
    MalformedInfo,
    NoActionInfo,
    SeparatorInfo,
    SpecIdInfo,
    StartupLocalityInfo,
    TaggedEventInfo,
    TextInfo,
    UefiAuthorityInfo,
    UefiVariableInfo,
    device_path_text,
    event_type_name,
    parse_device_path,
    parse_event_log,
    parse_load_option,
    resolve_bank,
)
from tpm2_attest.tpm2.constants import TPM_ALG

LOGS = synth.LOGS_DIR
REAL = sorted(LOGS.glob("*")) if LOGS.is_dir() else []


def real(name: str) -> bytes:
    return (LOGS / name).read_bytes()


# --- formats ---------------------------------------------------------------------------------


def test_crypto_agile_real_log_structure() -> None:
    log = parse_event_log(real("ubuntu_2104_shielded_vm_no_secure_boot_eventlog"))
    assert log.format is LogFormat.CRYPTO_AGILE
    assert log.banks == ("sha1", "sha256", "sha384")
    assert isinstance(log.spec_id, SpecIdInfo)
    assert log.spec_id.uintn_size == 2 and log.spec_id.spec_version_major == 2
    assert log.events[0].info is log.spec_id and log.events[0].type == EventType.EV_NO_ACTION
    assert [e.index for e in log.events] == list(range(len(log)))
    assert all(e.known for e in log.events)
    assert log.padding == 0 and log.size == len(real("ubuntu_2104_shielded_vm_no_secure_boot_eventlog"))


def test_sha1_legacy_real_log() -> None:
    log = parse_event_log(real("ebs_event_missing_eventlog"))
    assert log.format is LogFormat.SHA1 and log.spec_id is None and log.banks == ("sha1",)
    with pytest.raises(EventLogBankError):
        log.replay("sha256")


@pytest.mark.parametrize("banks", [("sha384",), ("sha512",), ("sha1", "sha256", "sha384", "sha512")])
def test_synthesized_banks_replay_to_prediction(banks: tuple[str, ...]) -> None:
    b = synth.rich_log(banks)
    log = parse_event_log(b.build())
    assert log.banks == banks
    for bank in banks:
        assert log.replay(bank) == b.expected(bank)
        assert log.replay(resolve_bank(bank)) == b.expected(bank)  # by TPM_ALG too


def test_synthesized_sha1_legacy_replay() -> None:
    b = synth.rich_log(legacy=True)
    log = parse_event_log(b.build())
    assert log.format is LogFormat.SHA1
    assert log.replay("sha1") == b.expected("sha1")
    assert log.replay(TPM_ALG.SHA1) == b.expected("sha1")


def test_bank_names() -> None:
    assert resolve_bank("SHA-256") == resolve_bank("sha256") == TPM_ALG.SHA256
    with pytest.raises(ValueError):
        resolve_bank("md5")
    with pytest.raises(ValueError):
        resolve_bank(0x9999)


def test_event_without_the_bank_digest_cannot_be_replayed() -> None:
    b = synth.LogBuilder(banks=("sha1", "sha256"))
    b.event(0, synth.EV_POST_CODE, b"x", digests={"sha1": bytes(20)})  # no sha256 digest
    log = parse_event_log(b.build())
    assert log.replay("sha1")
    with pytest.raises(EventLogBankError) as exc:
        log.replay("sha256")
    assert exc.value.event == 1 and exc.value.offset is not None


# --- PCR 0: StartupLocality and H-CRTM -------------------------------------------------------


@pytest.mark.parametrize("locality", [0, 3, 4])
def test_startup_locality_sets_pcr0_initial_value(locality: int) -> None:
    b = synth.LogBuilder(banks=("sha1", "sha256"))
    b.startup_locality(locality)
    b.event(0, synth.EV_S_CRTM_VERSION, b"v\0")
    b.event(1, synth.EV_POST_CODE, b"y")
    log = parse_event_log(b.build())
    assert log.startup_locality == locality
    assert isinstance(log.events[1].info, StartupLocalityInfo)
    for bank in ("sha1", "sha256"):
        assert log.replay(bank) == b.expected(bank)
    pcr0 = b.expected("sha256")[0]
    import hashlib

    start = bytes(31) + bytes((locality,))
    assert pcr0 == hashlib.sha256(start + hashlib.sha256(b"v\0").digest()).digest()


def test_startup_locality_alone_is_a_claim_about_pcr0() -> None:
    b = synth.LogBuilder().startup_locality(3).event(7, synth.EV_SEPARATOR, b"\0\0\0\0")
    log = parse_event_log(b.build())
    assert log.touched_pcrs == {0, 7}
    assert log.replay("sha256")[0] == bytes(31) + b"\x03"


def test_startup_locality_in_sha1_log() -> None:
    b = synth.LogBuilder(legacy=True).startup_locality(3).event(0, synth.EV_POST_CODE, b"z")
    log = parse_event_log(b.build())
    assert log.startup_locality == 3 and log.replay("sha1") == b.expected("sha1")


def test_hcrtm_event_starts_pcr0_at_4() -> None:
    b = synth.LogBuilder(banks=("sha256", "sha384"))
    b.hcrtm_event()
    b.event(0, synth.EV_POST_CODE, b"post")
    log = parse_event_log(b.build())
    assert log.hcrtm and log.events[1].type_name == "EV_EFI_HCRTM_EVENT"
    for bank in ("sha256", "sha384"):
        assert log.replay(bank) == b.expected(bank)


def test_several_hcrtm_sequences_and_component_events() -> None:
    """StartupLocality 4, TCG_HCRTMComponentEvent(s) and one EV_EFI_HCRTM_EVENT per H-CRTM
    sequence, all before any other PCR 0 measurement."""
    b = synth.LogBuilder(banks=("sha256",)).startup_locality(4)
    comp = (b"H-CRTM CompMeas\0" + bytes((7,)) + b"S-CRTM\0" + b"\x80"
            + struct.pack("<H", 4) + b"code")
    b.no_action(comp)
    b.hcrtm_event(b"first")
    b.hcrtm_event(b"second")
    b.event(0, synth.EV_POST_CODE, b"later")
    log = parse_event_log(b.build())
    assert log.hcrtm and log.startup_locality == 4
    info = log.events[2].info
    assert isinstance(info, HcrtmComponentInfo)
    assert (info.description, info.format, info.measurement) == ("S-CRTM", 0x80, b"code")
    assert log.replay("sha256") == b.expected("sha256")


def test_hcrtm_wins_over_startup_locality() -> None:
    b = synth.LogBuilder().startup_locality(3)
    b.hcrtm_event()
    log = parse_event_log(b.build())
    assert log.replay("sha256") == b.expected("sha256")  # the builder models H-CRTM first
    assert log.initial_value(0, 32)[-1] == 4


def test_no_action_events_are_not_extended() -> None:
    b = synth.LogBuilder()
    b.event(0, synth.EV_POST_CODE, b"a")
    b.no_action(b"SP800-155 Event\0" + b"payload")
    b.no_action(b"\x01\x02")  # too short for a signature
    log = parse_event_log(b.build())
    assert isinstance(log.events[2].info, NoActionInfo)
    assert log.events[2].info.signature == "SP800-155 Event"
    assert not log.events[2].extends
    assert log.replay("sha256") == b.expected("sha256")


# --- unknown types, padding ------------------------------------------------------------------


def test_unknown_event_types_are_kept_and_marked() -> None:
    b = synth.LogBuilder().event(3, 0x12345678, b"vendor").event(3, 0x800000AA, b"efi vendor")
    log = parse_event_log(b.build())
    ev = log.events[1]
    assert not ev.known and ev.event_type is None
    assert ev.type_name == "EV_UNKNOWN_0x12345678" == event_type_name(0x12345678)
    assert ev.info.kind == "raw" and ev.data == b"vendor"
    assert log.replay("sha256") == b.expected("sha256")  # unknown events still extend
    assert ev.to_dict()["known"] is False


def test_every_spec_event_type_has_its_name() -> None:
    for t in EventType:
        assert event_type_name(t) == t.name
    assert EventType.EV_EFI_SPDM_DEVICE_AUTHORITY == 0x800000E4
    assert EventType.EV_POST_CODE2 == 0x13 and EventType.EV_EFI_GPT_EVENT2 == 0x8000000D


@pytest.mark.parametrize("fill", [b"\0", b"\xff"])
@pytest.mark.parametrize("legacy", [False, True])
def test_trailing_unused_log_area_is_padding(fill: bytes, legacy: bool) -> None:
    b = synth.rich_log(legacy=legacy, no_action=False)
    raw = b.build()
    for extra in (32, 33, 64, 4096):
        log = parse_event_log(raw + fill * extra)
        assert log.padding == extra
        assert len(log) == len(parse_event_log(raw))
    with pytest.raises(EventLogError, match="truncated"):
        parse_event_log(raw + fill * 11)  # not even a whole header: truncation, not padding


def test_trailing_garbage_is_not_padding() -> None:
    raw = synth.rich_log(no_action=False).build()
    with pytest.raises(EventLogError) as exc:
        parse_event_log(raw + b"\0" * 20 + b"\x01")
    assert exc.value.offset is not None and exc.value.offset >= len(raw)


# --- decoding --------------------------------------------------------------------------------


def _by_type(log, etype: int):
    return [e for e in log.events if e.type == etype]


def test_rich_log_decodes_every_structure() -> None:
    log = parse_event_log(synth.rich_log(("sha256",)).build())
    kinds = {e.type_name: e.info for e in log.events}
    crtm = kinds["EV_S_CRTM_CONTENTS"]
    assert isinstance(crtm, FirmwareBlobInfo) and crtm.base == 0xFFF00000
    assert kinds["EV_S_CRTM_VERSION"] == GuidInfo("546bfb1e-1d0c-4055-a4ad-4ef4bf17b83a")
    assert kinds["EV_POST_CODE"] == TextInfo("ACPI DATA")
    blob2 = kinds["EV_EFI_PLATFORM_FIRMWARE_BLOB2"]
    assert isinstance(blob2, FirmwareBlobInfo) and blob2.description == "Fv(PEI)"
    tables = kinds["EV_EFI_HANDOFF_TABLES"]
    assert isinstance(tables, HandoffTablesInfo)
    assert tables.tables == (("eb9d2d31-2d88-11d3-9a16-0090273fc14d", 0x7F000000),)
    assert tables.to_dict()["tables"][0]["name"] == "SMBIOS_TABLE"
    tables2 = kinds["EV_EFI_HANDOFF_TABLES2"]
    assert isinstance(tables2, HandoffTablesInfo) and tables2.description == "SMBIOS3"
    driver = kinds["EV_EFI_BOOT_SERVICES_DRIVER"]
    assert isinstance(driver, ImageLoadInfo)
    assert driver.device_path_text == "PciRoot(0x0)/Pci(0x2,0x0)/Offset(0x0,0xFFFF)"
    gpt = kinds["EV_EFI_GPT_EVENT"]
    assert isinstance(gpt, GptInfo) and gpt.disk_guid == "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    assert [p.name for p in gpt.partitions] == ["EFI System"]
    assert gpt.partitions[0].starting_lba == 34
    tag = kinds["EV_EVENT_TAG"]
    assert tag == TaggedEventInfo(0x1234, b"abc")
    assert kinds["EV_SEPARATOR"] == SeparatorInfo(0) and not SeparatorInfo(0).is_error
    ipl = [e.info for e in _by_type(log, synth.EV_IPL)]
    assert ipl[0] == TextInfo("grub_cmd: linux /vmlinuz root=/dev/sda1")
    boots = [e.info for e in _by_type(log, synth.EV_EFI_VARIABLE_BOOT)]
    assert all(isinstance(v, UefiVariableInfo) for v in boots)
    assert boots[0].to_dict()["boot_order"] == ["Boot0001"]
    option = boots[1].to_dict()["load_option"]
    assert option["description"] == "Linux" and option["device_path"] == "\\EFI\\linux.efi"
    json.dumps(log.to_dict())


def test_real_logs_decode_to_known_forms_and_json() -> None:
    for path in REAL:
        log = parse_event_log(path.read_bytes())
        doc = log.to_dict()
        json.dumps(doc)
        assert not [e for e in log.events if isinstance(e.info, MalformedInfo)], path.name
    log = parse_event_log(real("coreos_36_shielded_vm_no_secure_boot_eventlog"))
    apps = [e.info for e in _by_type(log, synth.EV_EFI_BOOT_SERVICES_APPLICATION)]
    assert isinstance(apps[0], ImageLoadInfo)
    assert apps[0].device_path_text == (
        "PciRoot(0x0)/Pci(0x4,0x0)/NVMe(0x1,00-00-00-00-00-00-00-00)/"
        "HD(2,GPT,22b9d9d7-140b-473b-82e0-26ded9d03d28,0x1000,0x3F800)/\\EFI\\fedora\\shimx64.efi")
    assert apps[1].device_path_text == "\\EFI\\fedora\\grubx64.efi"
    version = _by_type(log, synth.EV_S_CRTM_VERSION)[0].info
    assert version == TextInfo("GCE Virtual Firmware v1", "utf-16")
    auth = [e.info for e in _by_type(log, synth.EV_EFI_VARIABLE_AUTHORITY)]
    assert all(isinstance(a, UefiAuthorityInfo) for a in auth)
    assert [a.name for a in auth] == ["SbatLevel", "MokListTrusted"]
    assert auth[0].to_dict()["text"].startswith("sbat,1,")


def test_authority_decodes_certificate() -> None:
    log = parse_event_log(real("sb_cert_eventlog"))
    auth = _by_type(log, synth.EV_EFI_VARIABLE_AUTHORITY)[0].info
    d = auth.to_dict()
    assert d["kind"] == "uefi_authority" and "Microsoft" in d["subject"]


def test_uintn_32_image_load() -> None:
    b = synth.LogBuilder()
    b.uintn = 1
    b.event(4, synth.EV_EFI_BOOT_SERVICES_APPLICATION,
            synth.image_load(synth.dp_file("\\a.efi") + synth.dp_end(), uintn=4), measured=b"pe")
    log = parse_event_log(b.build())
    assert log.spec_id is not None and log.spec_id.uintn_size == 1
    info = log.events[1].info
    assert isinstance(info, ImageLoadInfo) and info.device_path_text == "\\a.efi"


def test_crtm_and_post_code_variants() -> None:
    b = synth.LogBuilder()
    b.event(0, synth.EV_S_CRTM_CONTENTS, b"Boot Guard Measured S-CRTM\0", measured=b"acm")
    b.event(0, synth.EV_S_CRTM_VERSION, "1.2.3\0".encode("utf-16-le"))
    b.event(0, synth.EV_S_CRTM_VERSION, b"\x00\x00")
    b.event(0, synth.EV_POST_CODE, synth.blob(0xFF000000, 0x10000), measured=b"code")
    b.event(0, synth.EV_POST_CODE, b"\x01\x02\x03")
    b.event(0, EventType.EV_POST_CODE2, synth.blob2(b"Embedded", 1, 2), measured=b"c2")
    b.event(0, synth.EV_EFI_PLATFORM_FIRMWARE_BLOB, synth.blob(5, 6), measured=b"fw")
    b.event(0, synth.EV_SEPARATOR, b"\xff\xff\xff\xff")
    infos = [e.info for e in parse_event_log(b.build()).events[1:]]
    assert infos[0] == TextInfo("Boot Guard Measured S-CRTM")
    assert infos[1] == TextInfo("1.2.3", "utf-16")
    assert infos[2].kind == "raw"
    assert infos[3] == FirmwareBlobInfo(0xFF000000, 0x10000)
    assert infos[4].kind == "raw"
    assert infos[5] == FirmwareBlobInfo(1, 2, "Embedded")
    assert infos[6] == FirmwareBlobInfo(5, 6)
    assert isinstance(infos[7], SeparatorInfo) and infos[7].is_error


def test_digest_matches() -> None:
    log = parse_event_log(real("sb_cert_eventlog"))
    sb = log.events[2]
    assert sb.digest_matches("sha256") and sb.digest_matches("sha1") and sb.digest_matches("sha384")
    assert not sb.digest_matches("sha256", b"other")
    assert not sb.digest_matches("sha512")  # no such digest


def test_lenient_parsing_keeps_malformed_variables() -> None:
    b = synth.LogBuilder()
    b.event(7, synth.EV_EFI_VARIABLE_DRIVER_CONFIG,
            synth.uefi_variable(synth.EFI_GLOBAL_VARIABLE, "SecureBoot", b"\x01", data_len=2**40))
    raw = b.build()
    with pytest.raises(EventLogError):
        parse_event_log(raw)
    log = parse_event_log(raw, strict=False)
    info = log.events[1].info
    assert isinstance(info, MalformedInfo) and "VariableDataLength" in info.reason
    assert log.replay("sha256") == b.expected("sha256")


# --- device paths and load options -----------------------------------------------------------


def test_device_path_text_forms() -> None:
    n = synth.dp_node
    nodes = [
        (n(1, 3, struct.pack("<IQQ", 11, 0x1000, 0x1FFF)), "MemoryMapped(0xB,0x1000,0x1FFF)"),
        (n(1, 4, synth.guid("cf31fac5-c24e-11d2-85f3-00a0c93ec93b") + b"\x80"),
         "VenHw(cf31fac5-c24e-11d2-85f3-00a0c93ec93b,80)"),
        (n(2, 1, struct.pack("<II", 0x0A0841D0, 1)), "PcieRoot(0x1)"),
        (n(2, 1, struct.pack("<II", 0x0B0341D0, 0)), "Acpi(PNP0B03,0x0)"),
        (n(2, 1, struct.pack("<II", 0x050141D0, 2)), "Serial(0x2)"),
        (n(3, 5, bytes((1, 0))), "USB(0x1,0x0)"),
        (n(3, 0x12, struct.pack("<HHH", 1, 0xFFFF, 0)), "Sata(0x1,0xFFFF,0x0)"),
        (n(3, 0x0B, bytes(range(6)) + bytes(26) + b"\x01"), "MAC(000102030405,0x1)"),
        (n(3, 0x0C, bytes(4) + bytes((10, 0, 0, 1)) + bytes(19)), "IPv4(10.0.0.1)"),
        (n(3, 0x18, b"http://x/y.efi"), "Uri(http://x/y.efi)"),
        (n(4, 1, struct.pack("<IQQ", 1, 63, 100) + struct.pack("<I", 0xAABBCCDD) + bytes(12)
           + bytes((1, 1))), "HD(1,MBR,0xAABBCCDD,0x3F,0x64)"),
        (n(4, 2, struct.pack("<IQQ", 0, 1, 2)), "CDROM(0x0,0x1,0x2)"),
        (n(4, 6, synth.guid("462caa21-7614-4503-836e-8ab6f4662331")),
         "FvFile(462caa21-7614-4503-836e-8ab6f4662331)"),
        (n(5, 1, struct.pack("<HH", 2, 0) + b"Disk\0"), "BBS(0x2,Disk,0x0)"),
        (n(0x42, 7, b"\xab"), "Path(66,7,AB)"),
        (n(1, 1, b""), "Path(1,1)"),  # too short for Pci(): generic, never an exception
    ]
    for raw, text in nodes:
        assert device_path_text(raw + synth.dp_end()) == text
    multi = synth.dp_file("\\a") + synth.dp_node(0x7F, 0x01) + synth.dp_file("\\b") + synth.dp_end()
    assert device_path_text(multi) == "\\a,\\b"
    chain = synth.dp_pciroot() + synth.dp_pci(1, 2) + synth.dp_end() + b"ignored after end"
    assert device_path_text(chain) == "PciRoot(0x0)/Pci(0x1,0x2)"
    assert len(parse_device_path(chain)) == 2


@pytest.mark.parametrize("bad", [
    synth.dp_node(4, 4, b"", length=0),       # would loop forever without the length check
    synth.dp_node(4, 4, b"", length=3),
    synth.dp_node(4, 4, b"abcd", length=200),  # longer than the path
    b"\x04\x04",                               # truncated header
])
def test_malformed_device_paths_raise(bad: bytes) -> None:
    with pytest.raises(EventLogError):
        device_path_text(synth.dp_pciroot() + bad)


def test_image_load_with_malformed_device_path_is_kept() -> None:
    b = synth.LogBuilder().event(4, synth.EV_EFI_BOOT_SERVICES_APPLICATION,
                                 synth.image_load(synth.dp_node(4, 4, b"", length=0)),
                                 measured=b"pe")
    info = parse_event_log(b.build()).events[1].info
    assert isinstance(info, ImageLoadInfo) and info.device_path_text is None
    assert info.device_path_error and "node length 0" in info.device_path_error


def test_load_option() -> None:
    raw = synth.load_option("Windows Boot Manager",
                            synth.dp_file("\\EFI\\Microsoft\\Boot\\bootmgfw.efi") + synth.dp_end(),
                            attributes=1, optional=b"WINDOWS")
    opt = parse_load_option(raw)
    assert opt.active and opt.description == "Windows Boot Manager"
    assert opt.device_path == "\\EFI\\Microsoft\\Boot\\bootmgfw.efi"
    assert opt.optional_data == b"WINDOWS"
    with pytest.raises(EventLogError):
        parse_load_option(struct.pack("<IH", 1, 500) + "x\0".encode("utf-16-le"))
    with pytest.raises(EventLogError):
        parse_load_option(struct.pack("<IH", 1, 0) + b"n\0o\0 \0t\0e\0r\0m")


def test_events_for_and_touched_pcrs() -> None:
    log = parse_event_log(real("sb_cert_eventlog"))
    assert log.touched_pcrs == {0, 4, 5, 7}
    assert all(e.pcr == 7 for e in log.events_for(7))
    assert len(log.events_for(7)) == 9
