"""Review findings: what real-world logs contain that the synthetic tests missed."""

from __future__ import annotations

import struct

import eventlog_synth as synth
from tpm2_attest.eventlog import SeparatorInfo, parse_event_log
from tpm2_attest.verify.eventlog import verify_event_log


def test_windows_wbcl_separators_are_not_errors() -> None:
    """Windows' boot manager closes PCRs 12-14 with EV_SEPARATOR data "WBCL"; only the PFP
    error values (0x00000001, legacy 0xFFFFFFFF) mean a firmware error."""
    b = synth.LogBuilder(banks=("sha1", "sha256"))
    for pcr in range(8):
        b.event(pcr, synth.EV_SEPARATOR, b"\0\0\0\0")
    b.event(12, synth.EV_EVENT_TAG, struct.pack("<II", 0x40010001, 4) + b"\0\0\0\0")
    for pcr in (12, 13, 14):
        b.event(pcr, synth.EV_SEPARATOR, b"WBCL")
    b.event(1, synth.EV_SEPARATOR, struct.pack("<I", 1))
    b.event(2, synth.EV_SEPARATOR, b"\xff\xff\xff\xff")
    log = parse_event_log(b.build())
    seps = {(e.pcr, e.data): e.info for e in log.events if e.type == synth.EV_SEPARATOR}
    for pcr in (12, 13, 14):
        info = seps[(pcr, b"WBCL")]
        assert isinstance(info, SeparatorInfo) and not info.is_error
        assert info.to_dict()["error"] is False
    assert not seps[(0, b"\0\0\0\0")].is_error  # type: ignore[attr-defined]
    assert seps[(1, b"\1\0\0\0")].is_error  # type: ignore[attr-defined]
    assert seps[(2, b"\xff\xff\xff\xff")].is_error  # type: ignore[attr-defined]
    assert log.replay("sha256") == b.expected("sha256")


def test_verify_is_not_failed_by_event_data_it_does_not_need() -> None:
    """Event data is not part of the replay: a firmware that writes a malformed
    UEFI_VARIABLE_DATA into PCR 1 (tpm2-tools #2881 shows such real logs) must not make the
    quoted PCRs 0 and 7 unverifiable. The Secure Boot variables are still decoded strictly."""
    s = synth.secure_boot_log(("sha256",))
    s.builder.event(1, synth.EV_EFI_VARIABLE_BOOT, b"\x01\x00", measured=b"\x01\x00")
    raw = s.build()
    quoted = s.builder.expected("sha256")
    result = verify_event_log(raw, quoted)
    assert result.verified == frozenset(quoted)
    assert result.secure_boot is not None and result.secure_boot.enabled
    bad = [e for e in result.events if e.type == synth.EV_EFI_VARIABLE_BOOT]
    assert len(bad) == 1 and bad[0].info.kind == "malformed"


def test_real_world_no_action_events_are_not_extended() -> None:
    b = synth.LogBuilder(banks=("sha1", "sha256"))
    b.startup_locality(3)
    for sig in (b"NvIndexInstance\0", b"NvIndexDynamic\0\0", b"SP800-155 Event\0",
                b"SP800-155 Event3"):
        b.event(0, synth.EV_NO_ACTION, sig + b"\x01" * 24,
                digests={"sha1": b"\x11" * 20, "sha256": b"\x22" * 32})
    b.event(0, synth.EV_S_CRTM_VERSION, b"1.0\0")
    b.event(0, synth.EV_NO_ACTION, b"")  # zero-size data
    raw = b.build()
    log = parse_event_log(raw)
    assert log.replay("sha256") == b.expected("sha256")
    assert verify_event_log(raw, b.expected("sha1"), bank="sha1").verified == {0}


def test_unknown_spec_id_algorithm_with_its_declared_size() -> None:
    algs = [(0x000B, 32), (0x00B0, 40)]
    raw = synth.legacy_record(0, synth.EV_NO_ACTION, bytes(20), synth.spec_id_data(algs))
    import hashlib
    d = hashlib.sha256(b"x").digest()
    raw += synth.agile_record(0, synth.EV_S_CRTM_VERSION, [(0x000B, d), (0x00B0, b"\7" * 40)],
                              b"x")
    raw += synth.agile_record(4, synth.EV_SEPARATOR, [(0x000B, hashlib.sha256(bytes(4)).digest())],
                              bytes(4))  # only the allocated bank
    log = parse_event_log(raw)
    assert log.algorithms == ((0x000B, 32), (0x00B0, 40))
    assert set(log.replay("sha256")) == {0, 4}
