"""verify_event_log: replay against quoted PCRs, what is verified/unexplained/uncovered."""

from __future__ import annotations

import struct
from pathlib import Path
from types import SimpleNamespace

import pytest

import eventlog_synth as synth
from tpm2_attest.eventlog import EventType, parse_event_log
from tpm2_attest.verify.errors import Reason, VerificationError
from tpm2_attest.verify.eventlog import EventLogResult, verify_event_log

LOGS = synth.LOGS_DIR
REAL = sorted(p for p in LOGS.glob("*") if p.name != "short_no_action_eventlog")


def quote_of(raw: bytes, bank: str, pcrs: range | None = None) -> dict[int, bytes]:
    """What a TPM whose firmware wrote this log would quote (reset values elsewhere: zeros,
    all-ones for the DRTM PCRs 17-22)."""
    replayed = parse_event_log(raw).replay(bank)
    size = synth.BANKS[bank][1]

    def reset(p: int) -> bytes:
        return b"\xff" * size if 17 <= p <= 22 else bytes(size)

    return {p: replayed.get(p, reset(p)) for p in (pcrs if pcrs is not None else replayed)}


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_real_logs_verify_against_their_replay(path: Path) -> None:
    raw = path.read_bytes()
    log = parse_event_log(raw)
    for bank in log.banks:
        quoted = quote_of(raw, bank, range(24))
        result = verify_event_log(raw, quoted, bank=bank)
        assert isinstance(result, EventLogResult)
        assert result.bank == bank
        assert result.verified == log.touched_pcrs
        assert result.unexplained == frozenset() and result.uncovered == frozenset()
        assert len(result.events) == sum(1 for e in log.events if e.extends)
        assert (result.secure_boot is not None) == (7 in log.touched_pcrs)
        result.to_dict()


def test_quote_result_object_bank_wins() -> None:
    raw = (LOGS / "sb_cert_eventlog").read_bytes()
    q = SimpleNamespace(pcrs=quote_of(raw, "sha384"), bank="sha384")
    result = verify_event_log(parse_event_log(raw), q)  # bank= default sha256 is overridden
    assert result.bank == "sha384" and result.secure_boot is not None
    assert result.secure_boot.enabled and result.secure_boot.bank == "sha384"


def test_replay_mismatch() -> None:
    raw = (LOGS / "ubuntu_2104_shielded_vm_no_secure_boot_eventlog").read_bytes()
    quoted = quote_of(raw, "sha256")
    quoted[4] = bytes(32)
    with pytest.raises(VerificationError) as exc:
        verify_event_log(raw, quoted)
    assert exc.value.reason is Reason.EVENT_LOG_REPLAY_MISMATCH and "PCR 4" in exc.value.detail


def test_tampered_log_digest_is_caught() -> None:
    raw = bytearray((LOGS / "crypto_agile_eventlog").read_bytes())
    quoted = quote_of(bytes(raw), "sha256")
    log = parse_event_log(bytes(raw))
    ev = log.events_for(4)[-1]
    raw[ev.offset + 12 + 2] ^= 1  # first byte of its sha256 digest
    with pytest.raises(VerificationError) as exc:
        verify_event_log(bytes(raw), quoted)
    assert exc.value.reason is Reason.EVENT_LOG_REPLAY_MISMATCH


def test_unexplained_and_uncovered() -> None:
    raw = (LOGS / "sb_cert_eventlog").read_bytes()  # touches 0, 4, 5, 7
    quoted = quote_of(raw, "sha256", range(24))
    quoted[10] = b"\x01" * 32       # something measured that the log does not show
    assert quoted[17] == b"\xff" * 32  # DRTM PCR at its reset value: nothing to explain
    del quoted[5]                   # not covered: its events are not trusted
    result = verify_event_log(raw, quoted)
    assert result.verified == {0, 4, 7}
    assert result.unexplained == {10}
    assert result.uncovered == {5}
    assert 5 in result.replayed
    assert all(e.pcr in {0, 4, 7} for e in result.events)


def test_secure_boot_only_from_a_verified_pcr7() -> None:
    raw = (LOGS / "sb_cert_eventlog").read_bytes()
    quoted = quote_of(raw, "sha256")
    del quoted[7]
    assert verify_event_log(raw, quoted).secure_boot is None
    quoted = quote_of(raw, "sha256")
    assert verify_event_log(raw, quoted, secure_boot=False).secure_boot is None


def test_relabelled_event_type_fails_secure_boot_though_replay_matches() -> None:
    """Event types are not covered by digests: relabelling the SecureBoot variable event
    keeps the replay intact, so the Secure Boot check must refuse the unexpected type."""
    s = synth.secure_boot_log(("sha256",))
    raw = bytearray(s.build())
    quoted = quote_of(bytes(raw), "sha256")
    log = parse_event_log(bytes(raw))
    target = next(e for e in log.events_for(7) if e.type == EventType.EV_EFI_VARIABLE_DRIVER_CONFIG)
    struct.pack_into("<I", raw, target.offset + 4, EventType.EV_EFI_VARIABLE_BOOT)
    with pytest.raises(VerificationError) as exc:
        verify_event_log(bytes(raw), quoted)
    assert exc.value.reason is Reason.SECURE_BOOT


def test_secure_boot_inconsistency_is_reported_as_secure_boot() -> None:
    s = synth.secure_boot_log(("sha256",))
    s.builder.event(7, synth.EV_SEPARATOR, b"\0\0\0\0")
    raw = s.build()
    with pytest.raises(VerificationError) as exc:
        verify_event_log(raw, quote_of(raw, "sha256"))
    assert exc.value.reason is Reason.SECURE_BOOT


def test_bank_missing() -> None:
    raw = (LOGS / "ebs_event_missing_eventlog").read_bytes()  # SHA-1 only
    with pytest.raises(VerificationError) as exc:
        verify_event_log(raw, {0: bytes(32)}, bank="sha256")
    assert exc.value.reason is Reason.EVENT_LOG_BANK_MISSING
    b = synth.LogBuilder(banks=("sha1", "sha256"))
    b.event(0, synth.EV_POST_CODE, b"x", digests={"sha1": bytes(20)})
    with pytest.raises(VerificationError) as exc:
        verify_event_log(b.build(), {0: bytes(32)})
    assert exc.value.reason is Reason.EVENT_LOG_BANK_MISSING


def test_malformed_log() -> None:
    raw = (LOGS / "crypto_agile_eventlog").read_bytes()
    with pytest.raises(VerificationError) as exc:
        verify_event_log(raw[:-3], {0: bytes(32)})
    assert exc.value.reason is Reason.EVENT_LOG_MALFORMED and "offset" in exc.value.detail


@pytest.mark.parametrize(("pcrs", "bank", "reason"), [
    ({0: bytes(20)}, "sha256", Reason.MALFORMED),
    ({"0": bytes(32)}, "sha256", Reason.MALFORMED),
    ({40: bytes(32)}, "sha256", Reason.MALFORMED),
    ({0: "00" * 32}, "sha256", Reason.MALFORMED),
    ({0: bytes(32)}, "md5", Reason.UNSUPPORTED_FORMAT),
])
def test_bad_arguments(pcrs: dict, bank: str, reason: Reason) -> None:
    raw = (LOGS / "crypto_agile_eventlog").read_bytes()
    with pytest.raises(VerificationError) as exc:
        verify_event_log(raw, pcrs, bank=bank)
    assert exc.value.reason is reason


def test_not_a_quote() -> None:
    with pytest.raises(VerificationError):
        verify_event_log(b"", object())
    with pytest.raises(TypeError):
        verify_event_log("not a log", {})  # type: ignore[arg-type]


def test_startup_locality_verified() -> None:
    b = synth.LogBuilder(banks=("sha256",)).startup_locality(3)
    b.event(0, synth.EV_S_CRTM_VERSION, b"v\0")
    raw = b.build()
    assert verify_event_log(raw, b.expected("sha256")).verified == {0}
    wrong = dict(b.expected("sha256"))
    wrong[0] = parse_event_log(synth.LogBuilder().event(0, synth.EV_S_CRTM_VERSION, b"v\0")
                               .build()).replay("sha256")[0]  # as if locality were ignored
    with pytest.raises(VerificationError):
        verify_event_log(raw, wrong)
