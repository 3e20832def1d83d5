"""Hostile logs: truncated, oversized, looping and lying inputs raise EventLogError with the
offset, quickly, without allocating what the lengths claim."""

from __future__ import annotations

import hashlib
import struct
import time

import pytest

import eventlog_synth as synth
from tpm2_attest.eventlog import (
    EventLogError,
    GptInfo,
    HandoffTablesInfo,
    MalformedInfo,
    parse_event_log,
    secure_boot_state,
)

LOGS = synth.LOGS_DIR
SHA1, SHA256, SHA384 = 0x4, 0xB, 0xC
U32_MAX = 0xFFFFFFFF


def agile(*records: bytes, banks: tuple[str, ...] = ("sha256",), **spec: object) -> bytes:
    return synth.spec_id_record(banks, **spec) + b"".join(records)


def ev(pcr: int, etype: int, data: bytes, **kw: object) -> bytes:
    return synth.agile_record(pcr, etype, [(SHA256, hashlib.sha256(data).digest())], data, **kw)  # type: ignore[arg-type]


def fails(raw: bytes, match: str | None = None, *, strict: bool = True) -> EventLogError:
    t0 = time.perf_counter()
    with pytest.raises(EventLogError, match=match) as exc:
        parse_event_log(raw, strict=strict)
    assert time.perf_counter() - t0 < 1.0
    e = exc.value
    assert isinstance(e, ValueError)
    assert e.offset is not None and 0 <= e.offset <= len(raw)
    return e


# --- framing ---------------------------------------------------------------------------------


def test_empty_and_short() -> None:
    assert fails(b"").offset == 0
    assert fails(b"\0" * 31).offset == 0


def test_legacy_first_event_size_lies() -> None:
    raw = synth.legacy_record(0, synth.EV_POST_CODE, bytes(20), b"abc", size=U32_MAX)
    assert fails(raw, "exceeds the log").offset == 28


@pytest.mark.parametrize("size", [U32_MAX, 0x7FFFFFFF, 5])
def test_agile_event_size_lies(size: int) -> None:
    good = ev(0, synth.EV_POST_CODE, b"ok")
    raw = agile(good, ev(1, synth.EV_POST_CODE, b"abcd", size=size))
    e = fails(raw, "exceeds the log") if size > 4 else None
    if e is not None:
        assert e.event == 2
    else:  # a smaller size shifts the framing: the rest is garbage and must fail too
        fails(raw)


@pytest.mark.parametrize("count", [U32_MAX, 2, 0x10000])
def test_digest_count_lies(count: int) -> None:
    raw = agile(ev(0, synth.EV_POST_CODE, b"x", count=count))
    assert "digest count" in str(fails(raw))


def test_unknown_and_duplicate_algorithms() -> None:
    rec = synth.agile_record(0, synth.EV_POST_CODE, [(0x12, bytes(32))], b"x")
    fails(agile(rec), "not in the Spec ID")
    dup = synth.agile_record(0, synth.EV_POST_CODE, [(SHA256, bytes(32)), (SHA256, bytes(32))], b"x")
    fails(agile(dup, banks=("sha1", "sha256")), "twice")


def test_truncated_digest_and_size() -> None:
    rec = ev(0, synth.EV_POST_CODE, b"data")
    for cut in (13, 14, 20, 46, 47):
        fails(agile(rec[:cut]))


@pytest.mark.parametrize(("spec", "match"), [
    ({"count": 0}, "no algorithm"),
    ({"count": U32_MAX}, "numberOfAlgorithms"),
    ({"count": 2}, None),                       # claims more algorithms than present
    ({"vendor_size": 200}, "vendorInfo"),
    ({"vendor": b"abc", "vendor_size": 1}, "after the Spec ID"),
])
def test_lying_spec_id_event(spec: dict, match: str | None) -> None:
    fails(agile(ev(0, synth.EV_POST_CODE, b"x"), **spec), match)


@pytest.mark.parametrize(("algs", "match"), [
    ([(SHA256, 20)], "not 32"),
    ([(0x7777, 0)], "digest size 0"),
    ([(0x7777, 1000)], "digest size 1000"),
    ([(SHA256, 32), (SHA256, 32)], "twice"),
])
def test_impossible_spec_id_algorithms(algs: list[tuple[int, int]], match: str) -> None:
    raw = synth.legacy_record(0, synth.EV_NO_ACTION, bytes(20), synth.spec_id_data(algs))
    fails(raw, match)


def test_spec_id_event_must_be_pcr0_with_zero_digest() -> None:
    data = synth.spec_id_data([(SHA256, 32)])
    fails(synth.legacy_record(1, synth.EV_NO_ACTION, bytes(20), data), "PCR 1")
    fails(synth.legacy_record(0, synth.EV_NO_ACTION, b"\x01" * 20, data), "digest is not zero")


def test_pcr_index_out_of_range() -> None:
    fails(agile(ev(U32_MAX, synth.EV_POST_CODE, b"x")), "PCR index")
    fails(agile(ev(32, synth.EV_POST_CODE, b"x")), "PCR index")
    no_action = synth.agile_record(U32_MAX, synth.EV_NO_ACTION, [(SHA256, bytes(32))], b"note")
    assert len(parse_event_log(agile(no_action))) == 2  # EV_NO_ACTION is never extended


# --- PCR 0 rules -----------------------------------------------------------------------------


def _locality(loc_data: bytes) -> bytes:
    return synth.agile_record(0, synth.EV_NO_ACTION, [(SHA256, bytes(32))], loc_data)


def test_startup_locality_lies() -> None:
    loc = _locality(synth.startup_locality_data(3))
    fails(agile(loc, loc), "second StartupLocality")
    fails(agile(ev(0, synth.EV_POST_CODE, b"x"), loc), "after PCR 0 was extended")
    fails(agile(_locality(synth.startup_locality_data(3) + b"\0")), "not 17")
    fails(agile(_locality(synth.startup_locality_data(9))), "not a TPM locality")


def test_hcrtm_lies() -> None:
    fails(agile(ev(0, synth.EV_POST_CODE, b"x"), ev(0, synth.EV_EFI_HCRTM_EVENT, b"HCRTM")),
          "H-CRTM event after")
    fails(agile(ev(0, synth.EV_EFI_HCRTM_EVENT, b"NOT IT")), "HCRTM")
    ok = agile(ev(0, synth.EV_EFI_HCRTM_EVENT, b"HCRTM"), ev(0, synth.EV_EFI_HCRTM_EVENT, b"HCRTM"))
    assert parse_event_log(ok).hcrtm  # one H-CRTM event per sequence, several are fine


# --- event data ------------------------------------------------------------------------------


@pytest.mark.parametrize("var", [
    synth.uefi_variable(synth.EFI_GLOBAL_VARIABLE, "PK", b"", name_len=2**63),
    synth.uefi_variable(synth.EFI_GLOBAL_VARIABLE, "PK", b"", data_len=2**64 - 1),
    synth.uefi_variable(synth.EFI_GLOBAL_VARIABLE, "PK", b"ab", data_len=3),
    synth.uefi_variable(synth.EFI_GLOBAL_VARIABLE, "PK", b"")[:20],
])
def test_lying_uefi_variable(var: bytes) -> None:
    raw = agile(ev(7, synth.EV_EFI_VARIABLE_DRIVER_CONFIG, var))
    e = fails(raw)
    assert e.offset is not None and e.offset >= len(raw) - len(var)
    log = parse_event_log(raw, strict=False)
    assert isinstance(log.events[1].info, MalformedInfo)


@pytest.mark.parametrize("data", [
    synth.image_load(b"", dp_len=2**63),
    synth.image_load(b"\x7f\xff\x04\x00", dp_len=5),
    b"\0" * 10,
])
def test_lying_image_load(data: bytes) -> None:
    fails(agile(ev(4, synth.EV_EFI_BOOT_SERVICES_APPLICATION, data)))


def test_short_firmware_blob() -> None:
    fails(agile(ev(0, synth.EV_EFI_PLATFORM_FIRMWARE_BLOB, b"\0" * 8)))


def test_lying_counts_in_lenient_types_do_not_allocate() -> None:
    gpt = synth.gpt_data("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", [], count=2**60)
    tables = synth.handoff_tables([], count=2**60)
    t0 = time.perf_counter()
    log = parse_event_log(agile(ev(5, synth.EV_EFI_GPT_EVENT, gpt),
                                ev(1, synth.EV_EFI_HANDOFF_TABLES, tables)))
    assert time.perf_counter() - t0 < 0.5
    assert isinstance(log.events[1].info, MalformedInfo)
    assert "NumberOfPartitions" in log.events[1].info.reason
    assert isinstance(log.events[2].info, MalformedInfo)
    ok = parse_event_log(agile(ev(5, synth.EV_EFI_GPT_EVENT,
                                  synth.gpt_data("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", [])),
                               ev(1, synth.EV_EFI_HANDOFF_TABLES, synth.handoff_tables([]))))
    assert isinstance(ok.events[1].info, GptInfo) and isinstance(ok.events[2].info, HandoffTablesInfo)


def test_long_device_path_is_linear() -> None:
    """A 'looping' device path: 100 000 nodes. The walk is iterative and linear."""
    path = synth.dp_pci(1, 0) * 100_000 + synth.dp_end()
    raw = agile(ev(4, synth.EV_EFI_BOOT_SERVICES_APPLICATION, synth.image_load(path)))
    t0 = time.perf_counter()
    info = parse_event_log(raw).events[1].info
    assert time.perf_counter() - t0 < 2.0
    assert info.device_path_text.count("Pci(0x1,0x0)") == 100_000  # type: ignore[attr-defined]


# --- scale: no quadratic behaviour -----------------------------------------------------------


def test_many_events_parse_linearly() -> None:
    rec = ev(3, synth.EV_POST_CODE, b"")
    raw = agile(*([rec] * 50_000))
    t0 = time.perf_counter()
    log = parse_event_log(raw)
    log.replay("sha256")
    assert time.perf_counter() - t0 < 5.0
    assert len(log) == 50_001


def test_thousands_of_banks_stay_linear() -> None:
    """A Spec ID listing 10 000 (unknown, 1-byte) algorithms and events carrying all of them:
    duplicate detection and parsing stay linear in the input."""
    algs = [(0x1000 + i, 1) for i in range(10_000)]
    spec = synth.legacy_record(0, synth.EV_NO_ACTION, bytes(20), synth.spec_id_data(algs))
    rec = synth.agile_record(0, synth.EV_POST_CODE, [(a, b"\x00") for a, _ in algs], b"")
    t0 = time.perf_counter()
    log = parse_event_log(spec + rec * 5)
    assert time.perf_counter() - t0 < 3.0
    assert len(log.algorithms) == 10_000 and len(log.events[1].digests) == 10_000
    dup = synth.agile_record(0, synth.EV_POST_CODE, [(0x1000, b"\x00")] * 2, b"")
    fails(spec + dup, "twice")


def test_many_null_headers_before_garbage_stay_linear() -> None:
    """All-zero headers (candidate padding) followed by one non-zero byte: each header is a
    real (empty, digest-less) event, and detecting that must not rescan the tail each time."""
    raw = agile(*([bytes(16)] * 50_000)) + b"\x01"
    t0 = time.perf_counter()
    with pytest.raises(EventLogError):
        parse_event_log(raw)
    assert time.perf_counter() - t0 < 5.0


def test_many_pcr7_variables_secure_boot_linear() -> None:
    recs = [ev(7, synth.EV_EFI_VARIABLE_DRIVER_CONFIG,
               synth.uefi_variable(synth.EFI_GLOBAL_VARIABLE, f"V{i}", b"")) for i in range(20_000)]
    log = parse_event_log(agile(*recs))
    t0 = time.perf_counter()
    sb = secure_boot_state(log)
    assert time.perf_counter() - t0 < 5.0
    assert len(sb.other_variables) == 20_000


# --- truncation of real logs -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["sb_cert_eventlog", "ebs_event_missing_eventlog"])
def test_truncations_of_real_logs(name: str) -> None:
    raw = (LOGS / name).read_bytes()
    log = parse_event_log(raw)
    bounds = [e.offset for e in log.events[1:]] + [len(raw)]
    for b in bounds:
        assert len(parse_event_log(raw[:b])) == sum(1 for e in log.events if e.offset < b)
        for delta in (1, 3, 11, 31, 40):
            cut = b - delta
            if cut > 0 and cut not in bounds:
                fails(raw[:cut])


def test_errors_locate_the_event() -> None:
    raw = (LOGS / "crypto_agile_eventlog").read_bytes()
    log = parse_event_log(raw)
    target = log.events[10]
    bad = bytearray(raw)
    struct.pack_into("<I", bad, target.offset + 8, 7)  # digest count 7 in a 1-bank log
    e = fails(bytes(bad))
    assert e.event == 10 and e.offset == target.offset + 8
    assert "event 10" in str(e) and f"offset {target.offset + 8}" in str(e)
