"""Continuous attestation on the device: attest to the service every so often until stopped.

:class:`Agent` repeats *rounds*: open the TPM, ask the service for a challenge, quote over it
(with the event log and the IMA list when asked), send the answer
(:func:`tpm2_attest.service.attest`), close the TPM. Each round ends in one of three outcomes:

* ``passed``: the service accepted the quote; the next round comes after the interval;
* ``refused``: the service refused what the device showed (a policy violation, a PCR or log
  mismatch...): reported, and the next round comes after the interval as usual (attesting
  sooner would show the same state);
* ``error``: no verdict (the service cannot be reached, is busy or failing, the TPM is not
  answering): the next round comes sooner, after a wait that doubles from
  ``Schedule.backoff_min`` up to ``Schedule.backoff_max`` (and never sooner than a
  ``Retry-After`` the service sent).

Two things stop the agent, as no later round could pass: the service does not know the device
(revoked, replaced by a re-enrollment, or never enrolled: ``UNKNOWN_DEVICE``), or the AK no longer
loads on this TPM (``BAD_BLOB``, ``KEY_NOT_FOUND``: the TPM was cleared, the key deleted, the
file belongs to another TPM). Both mean: enroll again. Setting the ``stop`` event ends the agent
after the round in progress (whose waits for retries end at once) or during its sleep.

Intervals carry jitter (``Schedule.jitter``, a fraction of the interval either way) so that a
fleet started together spreads out; retries carry jitter too.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from .errors import ErrorCode, TpmError
from .evidence import AkBlob
from .service.client import ServiceClient, attest
from .service.errors import ServiceCode, ServiceError
from .tpm import Tpm

_DURATION: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d)")
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_DURATION: Final = 366 * 86400.0

TRANSIENT: Final = frozenset({
    ServiceCode.UNREACHABLE, ServiceCode.TLS_FAILURE, ServiceCode.BAD_RESPONSE, ServiceCode.RATE_LIMITED,
    ServiceCode.DATABASE_UNAVAILABLE, ServiceCode.SERVER_BUSY, ServiceCode.INTERNAL_ERROR,
    ServiceCode.REQUEST_TIMEOUT, ServiceCode.CHALLENGE_EXPIRED, ServiceCode.CHALLENGE_USED,
    ServiceCode.UNKNOWN_CHALLENGE,
})
"""Service codes after which a round is an ``error`` (tried again sooner), not a ``refused``:
the service gave no verdict on the device (it could not, or the challenge went stale)."""
AK_LOST: Final = frozenset({ErrorCode.BAD_BLOB, ErrorCode.KEY_NOT_FOUND})
"""TPM error codes that mean the AK does not load on this TPM any more."""
RETRY_AFTER_CAP: Final = 3600.0


def parse_duration(text: str) -> float:
    """Seconds in a duration: ``90`` (seconds), ``30s``, ``5m``, ``1h``, ``1h30m``, ``250ms``,
    ``1.5h``. Raises ValueError for anything else (or longer than 32 characters), and for
    zero or more than a year."""
    s = text.strip().lower()
    if not s or len(s) > 32:
        raise ValueError(f"not a duration: {text[:40]!r} (e.g. 30s, 5m, 1h, 1h30m)")
    try:
        total = float(s)
    except ValueError:
        pos, total = 0, 0.0
        for m in _DURATION.finditer(s):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(s) or pos == 0:
            raise ValueError(f"not a duration: {text!r} (e.g. 30s, 5m, 1h, 1h30m)") from None
    if not 0 < total <= MAX_DURATION:
        raise ValueError(f"{text!r}: a duration must be more than 0 and at most a year")
    return total


def format_duration(seconds: float) -> str:
    """``300`` -> ``5m``, ``90`` -> ``1m30s``, ``2.5`` -> ``2.5s`` (for log lines)."""
    if seconds < 60:
        return f"{seconds:.3g}s"
    out, rest = "", round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out += f"{rest // size}{unit}"
            rest %= size
    return out


class Outcome(StrEnum):
    """How a round ended."""

    PASSED = "passed"
    REFUSED = "refused"
    ERROR = "error"


class StopReason(StrEnum):
    """Why :meth:`Agent.run` returned."""

    STOPPED = "stopped"
    """The ``stop`` event was set (SIGTERM/SIGINT in the CLI)."""
    NOT_ENROLLED = "not_enrolled"
    """The service does not know the device, or the AK no longer loads: enroll again."""
    ROUNDS = "rounds"
    """``rounds`` rounds were made."""


@dataclass(frozen=True)
class Schedule:
    """When the next round comes: ``every`` seconds after a verdict (times a random factor
    in [1 - jitter, 1 + jitter]); after the n-th error in a row, ``backoff_min * 2**(n-1)``
    seconds (at most ``backoff_max``, default ``every``; times [0.5, 1]), and no sooner than
    a Retry-After of the service."""

    every: float
    jitter: float = 0.1
    backoff_min: float = 5.0
    backoff_max: float | None = None

    def __post_init__(self) -> None:
        if not self.every > 0:
            raise ValueError("the interval must be more than 0 seconds")
        if not 0 <= self.jitter <= 0.5:
            raise ValueError("jitter must be between 0 and 0.5 (a fraction of the interval)")
        if not self.backoff_min > 0 or (self.backoff_max is not None and not self.backoff_max > 0):
            raise ValueError("backoff waits must be more than 0 seconds")

    def after(self, outcome: Outcome, errors: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait after a round of ``outcome``, the ``errors``-th error in a row."""
        if outcome is not Outcome.ERROR:
            return self.every * rng.uniform(1 - self.jitter, 1 + self.jitter)
        cap = self.backoff_max if self.backoff_max is not None else self.every
        first = min(self.backoff_min, cap)
        delay = min(cap, first * 2.0 ** min(errors - 1, 60)) * rng.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(retry_after, RETRY_AFTER_CAP))
        return delay


@dataclass(frozen=True)
class Round:
    """One round's report (``next_in``: seconds until the next one, None when the agent stops)."""

    number: int
    outcome: Outcome
    at: datetime
    seconds: float
    device_id: str
    code: str | None = None
    detail: str | None = None
    status: str | None = None
    fresh_until: str | None = None
    attestation_id: int | None = None
    pcrs: int | None = None
    rules: tuple[str, ...] = field(default=())
    next_in: float | None = None
    stop: StopReason | None = None
    verdict: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    """The service's whole answer to a passed round."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON line: the fields above (not the whole verdict), with how many events of
        the event log and IMA entries the service verified this round."""
        v = self.verdict or {}
        log, ima = v.get("event_log"), v.get("ima")
        return {"time": self.at.isoformat(timespec="milliseconds"), "event": "round", "round": self.number,
                "outcome": self.outcome.value, "device_id": self.device_id, "code": self.code,
                "detail": self.detail, "rules": list(self.rules), "status": self.status,
                "fresh_until": self.fresh_until, "attestation_id": self.attestation_id, "pcrs": self.pcrs,
                "event_log_events": log.get("events") if isinstance(log, dict) else None,
                "ima": {"count": ima.get("count"), "verified": ima.get("verified")} if isinstance(ima, dict) else None,
                "seconds": round(self.seconds, 3),
                "next_in": None if self.next_in is None else round(self.next_in, 3),
                "stop": None if self.stop is None else self.stop.value}

    def text(self) -> str:
        head = f"{self.at.isoformat(timespec='seconds')} round {self.number} {self.outcome.value}"
        if self.outcome is Outcome.PASSED:
            body = (f"device {self.device_id}, {self.pcrs} PCRs, status {self.status} until {self.fresh_until} "
                    f"(attestation {self.attestation_id})")
        else:
            rules = f" [{', '.join(self.rules)}]" if self.rules else ""
            body = f"{self.code}{rules}: {self.detail}"
        if self.next_in is None:
            tail = "; stopping"
        else:
            tail = f"; {'retry' if self.outcome is Outcome.ERROR else 'next'} in {format_duration(self.next_in)}"
        return f"{head}: {body} ({self.seconds:.2f} s){tail}"


@dataclass
class _Result:
    outcome: Outcome
    code: str | None = None
    detail: str | None = None
    verdict: dict[str, Any] | None = None
    rules: tuple[str, ...] = ()
    retry_after: float | None = None
    stop: StopReason | None = None


def classify(exc: BaseException) -> _Result | None:
    """The result of a round that raised ``exc`` (None: not an error a round reports)."""
    if isinstance(exc, ServiceError):
        rules = exc.extra.get("rules")
        result = _Result(Outcome.REFUSED, exc.code, exc.detail,
                         rules=tuple(str(r) for r in rules) if isinstance(rules, list) else ())
        if exc.code == ServiceCode.UNKNOWN_DEVICE:
            result.stop = StopReason.NOT_ENROLLED
        elif exc.code in TRANSIENT or exc.status >= 500:
            result.outcome = Outcome.ERROR
            result.retry_after = _retry_after(exc.headers.get("Retry-After"))
        return result
    if isinstance(exc, TpmError):
        return _Result(Outcome.ERROR, exc.code.value, str(exc),
                       stop=StopReason.NOT_ENROLLED if exc.code in AK_LOST else None)
    if isinstance(exc, OSError):  # reading the event log file
        return _Result(Outcome.ERROR, "OS_ERROR", f"{getattr(exc, 'filename', None) or ''}: "
                       f"{exc.strerror or exc}".lstrip(": "))
    return None


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is not used by the service)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


class Agent:
    """Attest ``device_id`` with ``ak`` to ``client``'s service every ``schedule.every``
    seconds until ``stop`` is set or the device can no longer attest (:class:`StopReason`).

    ``open_tpm`` opens the TPM for one round (closed after it): a TPM that went away comes
    back at the next round. ``event_log(tpm)`` returns the event log to send with each round
    (or None); ``ima``/``ima_securityfs``/``pcrs``/``bank`` are :func:`attest`'s. ``report`` gets
    each :class:`Round`. ``rounds``: stop after that many (None: never). ``client.stop`` should
    be ``stop`` too, so that retries inside a round end when asked.
    """

    def __init__(self, open_tpm: Callable[[], Tpm], client: ServiceClient, device_id: str, ak: AkBlob, *,
                 schedule: Schedule, pcrs: Iterable[int] | None = None, bank: str = "sha256",
                 event_log: Callable[[Tpm], bytes | None] | None = None, ima: bool = False,
                 ima_securityfs: str | None = None, report: Callable[[Round], None] | None = None,
                 stop: threading.Event | None = None, rounds: int | None = None,
                 rng: random.Random | None = None, clock: Callable[[], datetime] | None = None) -> None:
        self.open_tpm, self.client, self.device_id, self.ak = open_tpm, client, device_id, ak
        self.schedule = schedule
        self.pcrs = None if pcrs is None else list(pcrs)
        self.bank, self.event_log, self.ima, self.ima_securityfs = bank, event_log, ima, ima_securityfs
        self.report = report or (lambda _round: None)
        self.stop = stop or threading.Event()
        self.rounds = rounds
        self.rng = rng or random.Random()
        self.clock = clock or (lambda: datetime.now(UTC))
        self.done = 0
        """Rounds finished so far."""

    def run(self) -> StopReason:
        """Rounds until stopped; returns why it stopped."""
        errors = 0
        while not self.stop.is_set():
            at, started = self.clock(), time.monotonic()
            result = self._attempt()
            elapsed = time.monotonic() - started
            self.done += 1
            errors = errors + 1 if result.outcome is Outcome.ERROR else 0
            stop = result.stop
            if stop is None and self.rounds is not None and self.done >= self.rounds:
                stop = StopReason.ROUNDS
            if stop is None and self.stop.is_set():
                stop = StopReason.STOPPED
            wait = None if stop is not None else self.schedule.after(result.outcome, errors, result.retry_after,
                                                                      self.rng)
            self.report(self._round(at, elapsed, result, wait, stop))
            if stop is not None:
                return stop
            assert wait is not None
            if self.stop.wait(wait):
                break
        return StopReason.STOPPED

    def _attempt(self) -> _Result:
        try:
            with self.open_tpm() as tpm:
                log = self.event_log(tpm) if self.event_log is not None else None
                verdict = attest(tpm, self.client, self.device_id, self.ak, pcrs=self.pcrs, bank=self.bank,
                                 event_log=log, ima=self.ima, ima_securityfs=self.ima_securityfs)
        except Exception as exc:
            result = classify(exc)
            if result is None:
                raise
            return result
        return _Result(Outcome.PASSED, verdict=verdict)

    def _round(self, at: datetime, elapsed: float, result: _Result, wait: float | None,
               stop: StopReason | None) -> Round:
        v = result.verdict or {}
        pcrs = v.get("pcrs")
        return Round(self.done, result.outcome, at, elapsed, self.device_id, code=result.code,
                     detail=result.detail, status=_str_or_none(v.get("status")),
                     fresh_until=_str_or_none(v.get("fresh_until")),
                     attestation_id=v.get("attestation_id") if isinstance(v.get("attestation_id"), int) else None,
                     pcrs=len(pcrs) if isinstance(pcrs, dict) else None, rules=result.rules, next_in=wait,
                     stop=stop, verdict=result.verdict)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


__all__ = ["AK_LOST", "TRANSIENT", "Agent", "Outcome", "Round", "Schedule", "StopReason", "classify",
           "format_duration", "parse_duration"]
