"""The status-change hook point: who wants to know when a device becomes trusted, failed,
stale or revoked (webhooks, notifications, metrics).

Subscribers are called after the change is committed, in the thread that made it (a request
thread, the event loop's for the device requests it answers itself, or the sweeper's for
``stale``); they must return quickly (hand the change to a queue) and their exceptions are
logged, never passed to the request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

log = logging.getLogger("tpm2_attest.service")


@dataclass(frozen=True)
class StatusChange:
    """A device moved from ``old`` to ``new`` status at ``at``.

    ``cause``: ``attestation``, ``revoked``, ``replaced``, ``enrolled``, ``stale`` or
    ``freshness`` (a widened window made a stale device's last pass count again);
    ``attestation_id`` the attestation that caused it (when one did); ``rules`` the failed
    policy rules or the refusal code of a ``failed`` device."""

    device_id: str
    old: str | None
    new: str
    at: datetime
    cause: str
    attestation_id: int | None = None
    rules: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what a webhook would send)."""
        return {"device_id": self.device_id, "old": self.old, "new": self.new, "at": self.at.isoformat(),
                "cause": self.cause, "attestation_id": self.attestation_id, "rules": list(self.rules)}


Subscriber = Callable[[StatusChange], None]


class StatusHooks:
    """The subscribers of one service."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Call ``fn`` on every status change; returns a function that unsubscribes it."""
        with self._lock:
            self._subscribers.append(fn)

        def unsubscribe() -> None:
            with self._lock:
                if fn in self._subscribers:
                    self._subscribers.remove(fn)
        return unsubscribe

    def emit(self, change: StatusChange) -> None:
        """Deliver ``change`` to every subscriber (only when it is a change)."""
        if change.old == change.new:
            return
        with self._lock:
            subscribers = list(self._subscribers)
        for fn in subscribers:
            try:
                fn(change)
            except Exception:
                log.exception("a status-change subscriber failed on device %s", change.device_id)


__all__ = ["StatusChange", "StatusHooks", "Subscriber"]
