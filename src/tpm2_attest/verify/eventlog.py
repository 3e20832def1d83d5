"""Check a TCG event log against quoted PCR values (replay), and read the machine state from it.

The quote proves PCR values; the log says what they mean. ``verify_event_log`` replays the
log in the quoted bank and raises unless every PCR the log touches that the quote covers
replays to the quoted value. Only events of those matching PCRs are returned as trusted, the
Secure Boot state is derived only when PCR 7 matched, and the machine state
(:class:`~tpm2_attest.eventlog.MachineState`) only from the matching PCRs.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from .._frozen import frozen
from ..eventlog import (
    Event,
    EventLog,
    EventLogBankError,
    EventLogError,
    SecureBootError,
    SecureBootState,
    bank_name,
    parse_event_log,
    resolve_bank,
    secure_boot_state,
)
from ..tpm2.constants import HASH_SIZES
from .errors import Reason, VerificationError

if TYPE_CHECKING:
    from ..eventlog.state import MachineState

_FF_RESET: Final = frozenset(range(17, 23))
"""PCRs 17-22 (DRTM) reset to all-ones at TPM2_Startup; the others to zeros."""


@frozen
class EventLogResult:
    """What a verified log explains.

    ``replayed``: every PCR the log touches, replayed in ``bank``.
    ``verified``: PCRs the log touches that the quote covers; all replayed to the quoted value.
    ``unexplained``: PCRs the quote covers, the log does not touch, and whose quoted value is
    not the reset value (something was measured that the log does not show).
    ``uncovered``: PCRs the log touches that the quote does not cover (their events are not
    verified and are left out of ``events``).
    ``events``: the extended events of the verified PCRs, in log order: the only ones to trust.
    ``secure_boot``: the Secure Boot state when PCR 7 is verified, else None.
    ``state``: the machine state read from the verified PCRs' events only (platform, Secure
    Boot, EFI applications, GRUB, Linux, Windows); ``state.summary()`` is its bounded form.
    """

    log: EventLog
    bank: str
    replayed: Mapping[int, bytes]
    verified: frozenset[int]
    unexplained: frozenset[int]
    uncovered: frozenset[int]
    events: tuple[Event, ...]
    secure_boot: SecureBootState | None
    state: MachineState

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the events themselves)."""
        return {
            "bank": self.bank,
            "replayed": {str(k): v.hex() for k, v in sorted(self.replayed.items())},
            "verified": sorted(self.verified),
            "unexplained": sorted(self.unexplained),
            "uncovered": sorted(self.uncovered),
            "events": len(self.events),
            "secure_boot": self.secure_boot.to_dict() if self.secure_boot else None,
            "state": self.state.summary(),
        }


def _quoted(quote_result_or_pcrs: Any, bank: str | int) -> tuple[dict[int, bytes], str | int]:
    """The {pcr: value} map and bank of a QuoteResult-like object or of a plain mapping."""
    if isinstance(quote_result_or_pcrs, Mapping):
        pcrs: Any = quote_result_or_pcrs
    else:
        pcrs = getattr(quote_result_or_pcrs, "pcrs", None)
        if not isinstance(pcrs, Mapping):
            raise VerificationError(Reason.MALFORMED,
                                    "expected a quote result with .pcrs or a {pcr: value} mapping")
        bank = getattr(quote_result_or_pcrs, "bank", bank)
    out: dict[int, bytes] = {}
    for k, v in pcrs.items():
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= 31:
            raise VerificationError(Reason.MALFORMED, f"PCR index {k!r} is not in 0..31")
        if not isinstance(v, bytes | bytearray | memoryview):
            raise VerificationError(Reason.MALFORMED, f"PCR {k} value is not bytes")
        out[k] = bytes(v)
    return out, bank


def _quoted_bank(quote_result_or_pcrs: Any, bank: str | int) -> tuple[dict[int, bytes], int, str, int]:
    """``_quoted``, with the bank resolved and every value checked to be of its size:
    (pcrs, TPM_ALG id, bank name, digest size)."""
    pcrs, bank = _quoted(quote_result_or_pcrs, bank)
    try:
        alg = resolve_bank(bank)
    except ValueError as exc:
        raise VerificationError(Reason.UNSUPPORTED_FORMAT, str(exc)) from None
    name = bank_name(alg)
    size = HASH_SIZES[alg]
    for k, v in pcrs.items():
        if len(v) != size:
            raise VerificationError(Reason.MALFORMED,
                                    f"PCR {k} value is {len(v)} bytes, a {name} PCR is {size}")
    return pcrs, alg, name, size


def _reset_value(pcr: int, size: int) -> bytes:
    return b"\xff" * size if pcr in _FF_RESET else bytes(size)


def verify_event_log(
    log: EventLog | bytes | bytearray | memoryview,
    quote_result_or_pcrs: Any,
    *,
    bank: str | int = "sha256",
    secure_boot: bool = True,
) -> EventLogResult:
    """Replay ``log`` against quoted PCRs; raise VerificationError unless they agree.

    ``log`` is a parsed :class:`EventLog` or the raw log bytes (parsed with ``strict=False``:
    malformed event data is kept, malformed framing fails). ``quote_result_or_pcrs`` is
    a verified quote result (anything with ``.pcrs: {index: bytes}`` and ``.bank``, whose bank
    then wins over ``bank``) or a plain ``{index: bytes}`` of bank ``bank``. Call this only
    with PCR values proven by a verified quote.

    Reasons: EVENT_LOG_MALFORMED (the log does not parse or replay), EVENT_LOG_BANK_MISSING
    (no digests for the bank), EVENT_LOG_REPLAY_MISMATCH (a covered PCR replays to another
    value), SECURE_BOOT (PCR 7 verified but its events are inconsistent; skipped when
    ``secure_boot`` is False, which also leaves ``state.secure_boot`` None), MALFORMED /
    UNSUPPORTED_FORMAT for bad arguments. The machine state never raises: what its events do
    not vouch for is left out (see :func:`~tpm2_attest.eventlog.machine_state`).
    """
    pcrs, alg, name, size = _quoted_bank(quote_result_or_pcrs, bank)

    if isinstance(log, bytes | bytearray | memoryview):
        try:
            # Framing is always strict; event data is not part of the replay, so a malformed
            # structure (kept as MalformedInfo) must not make the quoted PCRs unverifiable.
            # secure_boot_state decodes the PCR 7 variables strictly itself.
            log = parse_event_log(log, strict=False)
        except EventLogError as exc:
            raise VerificationError(Reason.EVENT_LOG_MALFORMED, str(exc)) from None
    elif not isinstance(log, EventLog):
        raise TypeError("log must be an EventLog or the raw log bytes")

    try:
        replayed = log.replay(alg)
    except EventLogBankError as exc:
        raise VerificationError(Reason.EVENT_LOG_BANK_MISSING, str(exc)) from None
    except EventLogError as exc:
        raise VerificationError(Reason.EVENT_LOG_MALFORMED, str(exc)) from None

    touched, covered = frozenset(replayed), frozenset(pcrs)
    verified = touched & covered
    bad = [p for p in sorted(verified) if not hmac.compare_digest(replayed[p], pcrs[p])]
    if bad:
        detail = "; ".join(f"PCR {p}: log replays to {replayed[p].hex()}, quoted {pcrs[p].hex()}"
                           for p in bad[:4])
        more = f" (and {len(bad) - 4} more)" if len(bad) > 4 else ""
        raise VerificationError(Reason.EVENT_LOG_REPLAY_MISMATCH,
                                f"{name} bank: {detail}{more}")

    unexplained = frozenset(p for p in covered - touched if pcrs[p] != _reset_value(p, size))
    events = tuple(e for e in log.events if e.extends and e.pcr in verified)

    state: SecureBootState | None = None
    if secure_boot and 7 in verified:
        try:
            state = secure_boot_state(log, alg)
        except EventLogBankError as exc:
            raise VerificationError(Reason.EVENT_LOG_BANK_MISSING, str(exc)) from None
        except SecureBootError as exc:
            raise VerificationError(Reason.SECURE_BOOT, str(exc)) from None
        except EventLogError as exc:  # pragma: no cover - secure_boot_state raises the above
            raise VerificationError(Reason.SECURE_BOOT, str(exc)) from None

    from ..eventlog.state import machine_state  # lazily: ~15 ms of dataclasses at import

    machine = machine_state(log, alg, verified, secure_boot=state)
    return EventLogResult(log, name, dict(sorted(replayed.items())), verified, unexplained,
                          touched - covered, events, state, machine)
