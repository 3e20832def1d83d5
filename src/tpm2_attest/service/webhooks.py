"""Webhooks: every device status change POSTed to receivers as JSON signed with HMAC-SHA256.

A :class:`Webhooks` is a :class:`~.hooks.StatusHooks` subscriber. Its ``notify`` only puts the
change on a bounded queue per receiver (never blocking the request that made the change; a
full queue drops it, counted in ``/metrics`` and logged); one background thread per receiver
delivers its queue in order, trying each notification ``attempts`` times with waits doubling
from ``backoff`` seconds (with jitter, at most :data:`BACKOFF_CAP`). A slow or dead receiver
delays only its own notifications.

What a receiver gets (the bytes that are signed are the timestamp header's value, a ``.``,
and the body exactly as sent)::

    POST <url>
    Content-Type: application/json
    X-TPM2-Attest-Delivery: 6f1c...   (one id per notification, the same on each attempt)
    X-TPM2-Attest-Timestamp: 1767225600   (Unix seconds of this attempt)
    X-TPM2-Attest-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>

    {"id": "6f1c...", "type": "device.status", "device_id": "...", "old": "stale",
     "new": "trusted", "at": "2026-...", "cause": "attestation", "attestation_id": 7, "rules": []}

A receiver checks the signature in constant time, refuses timestamps more than a few minutes
away from its clock (a recorded request cannot be replayed later) and may drop an ``id`` it
has seen (a retry of a notification it already acted on): :func:`verify_signature`.
Redirects are not followed (the signed body goes only where it was configured to).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import queue
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from .._version import __version__
from .hooks import StatusChange
from .settings import redact_url

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger("tpm2_attest.service.webhooks")

EVENT_TYPE: Final = "device.status"
DELIVERY_HEADER: Final = "X-TPM2-Attest-Delivery"
TIMESTAMP_HEADER: Final = "X-TPM2-Attest-Timestamp"
SIGNATURE_HEADER: Final = "X-TPM2-Attest-Signature"
SIGNATURE_PREFIX: Final = "sha256="
TOLERANCE: Final = 300
"""Seconds a receiver should accept between a signature's timestamp and its own clock."""
BACKOFF_CAP: Final = 300.0
"""The longest wait between two attempts of one notification."""
DROP_LOG_INTERVAL: Final = 10.0
"""Seconds between two log lines about dropped notifications of one receiver."""
_READ_LIMIT: Final = 64 << 10


class WebhookSignatureError(ValueError):
    """A webhook request whose signature or timestamp does not check out."""


def signed_bytes(timestamp: int | str, body: bytes) -> bytes:
    """What the signature covers: the timestamp header's value, ``.``, the body."""
    return str(timestamp).encode("ascii") + b"." + body


def sign(secret: bytes, timestamp: int | str, body: bytes) -> str:
    """The ``X-TPM2-Attest-Signature`` value: ``sha256=`` and the hex HMAC-SHA256."""
    return SIGNATURE_PREFIX + hmac.new(secret, signed_bytes(timestamp, body), hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, timestamp: str | None, signature: str | None, *,
                     now: float | None = None, tolerance: float = TOLERANCE) -> int:
    """Check a received webhook (the receiver's side): the signature over ``timestamp`` and
    ``body`` under ``secret``, and the timestamp within ``tolerance`` seconds of ``now``.
    Returns the timestamp; raises :class:`WebhookSignatureError` saying what is wrong."""
    if not timestamp or not signature:
        raise WebhookSignatureError(f"missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER}")
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        raise WebhookSignatureError(f"{TIMESTAMP_HEADER} is not a Unix time")
    if not hmac.compare_digest(sign(secret, timestamp, body).encode(), signature.strip().encode("utf-8", "replace")):
        raise WebhookSignatureError("the signature does not match (another secret, or a modified body)")
    when = int(timestamp)
    if abs((time.time() if now is None else now) - when) > tolerance:
        raise WebhookSignatureError(f"the timestamp is more than {tolerance:g} s away from now (a replay?)")
    return when


def payload(change: StatusChange, delivery_id: str) -> bytes:
    """The JSON body of one notification."""
    return json.dumps({"id": delivery_id, "type": EVENT_TYPE, **change.to_dict()},
                      separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True)
class _Notification:
    delivery_id: str
    body: bytes


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx is an answer like any other failure: the signed body is not sent elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Receiver:
    """One URL: its queue and the thread that delivers it."""

    def __init__(self, owner: Webhooks, index: int, url: str) -> None:
        self.owner, self.index, self.url = owner, index, url
        self.name = f"#{index} {redact_url(url)}"
        self.queue: queue.Queue[_Notification | None] = queue.Queue(maxsize=owner.queue_size)
        self.thread = self.new_thread()
        self._dropped = 0
        self._shutdown_drops = 0
        self._last_drop_log = float("-inf")
        self._lock = threading.Lock()

    def new_thread(self) -> threading.Thread:
        return threading.Thread(target=self._run, name=f"tpm2-attest-webhook-{self.index}", daemon=True)

    def offer(self, item: _Notification) -> None:
        """Queue ``item`` or drop it (never waits)."""
        try:
            self.queue.put_nowait(item)
        except queue.Full:
            self.owner.count_dropped("queue_full")
            with self._lock:
                self._dropped += 1
                now = time.monotonic()
                if now - self._last_drop_log < DROP_LOG_INTERVAL:
                    return
                dropped, self._dropped, self._last_drop_log = self._dropped, 0, now
            log.warning("webhook %s: queue full (%d waiting): dropped %d status change(s)",
                        self.name, self.owner.queue_size, dropped)
            return
        self.owner.queued(1)

    def _run(self) -> None:
        self._shutdown_drops = 0
        try:
            while True:
                try:  # once stopping, until the queue is empty (stop's wake-up may not have fit in it)
                    item = self.queue.get(block=not self.owner.stopping.is_set())
                except queue.Empty:
                    return
                if item is None:
                    return
                self.owner.queued(-1)
                if self.owner.past_deadline():
                    self._dropped_at_shutdown()
                    continue
                self._deliver(item)
        finally:
            if self._shutdown_drops:  # one line, however many
                log.warning("webhook %s: shutting down: dropped %d status change(s) not delivered",
                            self.name, self._shutdown_drops)

    def _dropped_at_shutdown(self) -> None:
        self.owner.count_dropped("shutdown")
        self._shutdown_drops += 1

    def _deliver(self, item: _Notification) -> None:
        owner = self.owner
        for attempt in range(1, owner.attempts + 1):
            error = self._post(item)
            if error is None:
                owner.count("deliveries", "delivered")
                return
            if attempt == owner.attempts:
                break
            delay = min(BACKOFF_CAP, owner.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            log.info("webhook %s: attempt %d of %d failed (%s); again in %.1f s",
                     self.name, attempt, owner.attempts, error, delay)
            if owner.stopping.wait(delay):  # shutting down: no more waiting
                self._dropped_at_shutdown()
                return
        owner.count("deliveries", "failed")
        log.warning("webhook %s: gave up on delivery %s after %d attempts (%s)",
                    self.name, item.delivery_id, owner.attempts, error)

    def _post(self, item: _Notification) -> str | None:
        """One attempt; None when the receiver took it (2xx), else why not."""
        timestamp = str(int(time.time()))
        req = urllib.request.Request(self.url, data=item.body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": f"tpm2-attest/{__version__}",
            DELIVERY_HEADER: item.delivery_id, TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self.owner.secret, timestamp, item.body)})
        try:
            with self.owner.opener.open(req, timeout=self.owner.timeout) as resp:
                resp.read(_READ_LIMIT)
                status = int(resp.status)
        except urllib.error.HTTPError as exc:
            with exc:
                status = exc.code
        except (OSError, ValueError) as exc:  # URLError, timeouts, resets, TLS
            reason = getattr(exc, "reason", None) or exc
            self.owner.count("attempts", "error")
            return f"{type(reason).__name__}: {reason}" if not isinstance(reason, str) else reason
        if 200 <= status < 300:
            self.owner.count("attempts", "ok")
            return None
        self.owner.count("attempts", "error")
        return f"HTTP {status}"


class Webhooks:
    """Deliver status changes to ``urls``, signed with ``secret`` (a StatusHooks subscriber:
    ``hooks.subscribe(webhooks.notify)``). Threads start with the first change or
    :meth:`start`; :meth:`stop` gives queued notifications ``grace`` seconds more."""

    def __init__(self, urls: tuple[str, ...] | list[str], secret: bytes, *, timeout: float = 5.0,
                 attempts: int = 8, backoff: float = 1.0, queue_size: int = 1000,
                 metrics: Metrics | None = None) -> None:
        if not secret:
            raise ValueError("webhooks need a secret")
        self.secret, self.timeout, self.attempts, self.backoff = secret, timeout, attempts, backoff
        self.queue_size = queue_size
        self.metrics = metrics
        self.opener = urllib.request.build_opener(_NoRedirect)
        self.stopping = threading.Event()
        self._deadline: float | None = None
        self._lock = threading.Lock()
        self._started = False
        self.receivers = [_Receiver(self, i, url) for i, url in enumerate(urls, 1)]

    def notify(self, change: StatusChange) -> None:
        """Queue ``change`` for every receiver; returns at once (the subscriber)."""
        if self.stopping.is_set():
            self.count_dropped("shutdown")
            return
        if not self._started:
            self.start()
        delivery_id = uuid.uuid4().hex
        item = _Notification(delivery_id, payload(change, delivery_id))
        for r in self.receivers:
            r.offer(item)

    def start(self) -> None:
        """Start the delivery threads (again, after a stop)."""
        with self._lock:
            if self._started:
                return
            self._started, self._deadline = True, None
            self.stopping.clear()
            for r in self.receivers:
                if r.thread.ident is not None:
                    r.thread = r.new_thread()
                r.thread.start()

    def stop(self, grace: float = 5.0) -> None:
        """Give what is queued ``grace`` seconds more (one attempt each: a failure is not
        retried now), drop the rest (counted); then end the threads."""
        with self._lock:
            self._deadline = time.monotonic() + grace
            self.stopping.set()
            started, self._started = self._started, False
        if not started:
            return
        for r in self.receivers:
            with contextlib.suppress(queue.Full):  # wakes a thread waiting for work; a full queue needs none
                r.queue.put_nowait(None)
        end = time.monotonic() + grace + self.timeout
        for r in self.receivers:
            r.thread.join(timeout=max(0.0, end - time.monotonic()))
            if r.thread.is_alive():
                log.warning("webhook %s: still delivering at shutdown", r.name)

    def past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    # -- metrics ----------------------------------------------------------------------------

    def count(self, what: str, label: str) -> None:
        if self.metrics is not None:
            counter = self.metrics.webhook_deliveries if what == "deliveries" else self.metrics.webhook_attempts
            counter.labels(label).inc()

    def count_dropped(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.webhook_dropped.labels(reason).inc()

    def queued(self, delta: int) -> None:
        if self.metrics is not None:
            self.metrics.webhook_queue.inc(delta)


__all__ = ["DELIVERY_HEADER", "EVENT_TYPE", "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "TOLERANCE",
           "WebhookSignatureError", "Webhooks", "payload", "sign", "signed_bytes",
           "verify_signature"]
