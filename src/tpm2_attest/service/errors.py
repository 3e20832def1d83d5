"""The service's error vocabulary, shared by the server and the stdlib client.

Every refusal travels as ``{"error": {"code": ..., "reason": ..., "detail": ...}}`` with an HTTP
status. ``code`` is a stable string: a :class:`ServiceCode` for protocol failures (unknown ids,
steps out of order, expired or used nonces), or the verifier's ``Reason`` value when evidence
failed a check (then ``reason`` carries the same value; it is null otherwise). Clients branch on
``code``; ``detail`` is a sentence for people. This module is stdlib-only so the device-side
client can import it without the ``service`` extra.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Final


class ServiceCode(StrEnum):
    """Protocol-level failures (verification failures use ``verify.Reason`` values instead)."""

    INVALID_REQUEST = "INVALID_REQUEST"
    """The body is not JSON, misses a field, has an unknown one, or a field is not valid base64."""
    BODY_TOO_LARGE = "BODY_TOO_LARGE"
    """The request body exceeds ``Settings.max_body_bytes``."""
    NOT_FOUND = "NOT_FOUND"
    """No such endpoint."""
    UNKNOWN_ENROLLMENT = "UNKNOWN_ENROLLMENT"
    UNKNOWN_DEVICE = "UNKNOWN_DEVICE"
    """No enrolled (and not revoked) device has this id."""
    UNKNOWN_CHALLENGE = "UNKNOWN_CHALLENGE"
    ENROLLMENT_STATE = "ENROLLMENT_STATE"
    """An enrollment step came out of order or a second time (each step runs once)."""
    ENROLLMENT_EXPIRED = "ENROLLMENT_EXPIRED"
    """The enrollment was not finished within ``Settings.enrollment_ttl``."""
    EK_CERTIFICATE_REQUIRED = "EK_CERTIFICATE_REQUIRED"
    """No EK certificate was sent and ``Settings.require_ek_certificate`` is set."""
    ALREADY_ENROLLED = "ALREADY_ENROLLED"
    """This EK already belongs to an enrolled device and re-enrollment is not allowed."""
    AK_CERTIFICATE_ENROLLMENT_OFF = "AK_CERTIFICATE_ENROLLMENT_OFF"
    """An enrollment by AK certificate, and ``Settings.ak_certificate_enrollment`` is off."""
    CHALLENGE_USED = "CHALLENGE_USED"
    """The attestation challenge was already answered (nonces are single-use)."""
    CHALLENGE_EXPIRED = "CHALLENGE_EXPIRED"
    """The attestation challenge is older than ``Settings.nonce_ttl``."""
    POLICY_VIOLATION = "POLICY_VIOLATION"
    """The quote verified, but the device's policies refuse the state it shows; ``rules``
    in the error object lists the rule ids that failed."""
    RATE_LIMITED = "RATE_LIMITED"
    """The device asked for more challenges, or the EK began more enrollments, than
    ``challenge_rate`` per window (Retry-After)."""
    UNAUTHORIZED = "UNAUTHORIZED"
    """The operator API needs a bearer token (missing, unknown or revoked)."""
    FORBIDDEN = "FORBIDDEN"
    """The token's role (``read``) does not allow this operator action."""
    UNKNOWN_POLICY = "UNKNOWN_POLICY"
    """No policy (or policy version) has this name."""
    CONFLICT = "CONFLICT"
    """The operator action clashes with the current state (e.g. a token name in use)."""
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
    """The request's body did not arrive within ``body_timeout``."""
    DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
    """The database refused or failed the operation (read-only, full, unreachable, busy)."""
    SERVER_BUSY = "SERVER_BUSY"
    """More connections are open than ``max_connections``: retry later."""
    INTERNAL_ERROR = "INTERNAL_ERROR"
    """A fault in the service itself (logged with the request id)."""
    UNREACHABLE = "UNREACHABLE"
    """(client side) the server could not be reached (refused, reset, timed out)."""
    BAD_RESPONSE = "BAD_RESPONSE"
    """(client side) the server answered, but not with the JSON this protocol defines."""
    TLS_FAILURE = "TLS_FAILURE"
    """(client side) the TLS handshake failed: the server's certificate is not trusted, or the
    server wants a client certificate it did not get (or does not accept). Never retried."""


HTTP_STATUS: Final[dict[ServiceCode, int]] = {
    ServiceCode.INVALID_REQUEST: 422,
    ServiceCode.BODY_TOO_LARGE: 413,
    ServiceCode.NOT_FOUND: 404,
    ServiceCode.UNKNOWN_ENROLLMENT: 404,
    ServiceCode.UNKNOWN_DEVICE: 404,
    ServiceCode.UNKNOWN_CHALLENGE: 404,
    ServiceCode.ENROLLMENT_STATE: 409,
    ServiceCode.ENROLLMENT_EXPIRED: 410,
    ServiceCode.EK_CERTIFICATE_REQUIRED: 403,
    ServiceCode.ALREADY_ENROLLED: 409,
    ServiceCode.AK_CERTIFICATE_ENROLLMENT_OFF: 403,
    ServiceCode.CHALLENGE_USED: 409,
    ServiceCode.CHALLENGE_EXPIRED: 410,
    ServiceCode.POLICY_VIOLATION: 403,
    ServiceCode.RATE_LIMITED: 429,
    ServiceCode.UNAUTHORIZED: 401,
    ServiceCode.FORBIDDEN: 403,
    ServiceCode.UNKNOWN_POLICY: 404,
    ServiceCode.CONFLICT: 409,
    ServiceCode.REQUEST_TIMEOUT: 408,
    ServiceCode.DATABASE_UNAVAILABLE: 503,
    ServiceCode.SERVER_BUSY: 503,
    ServiceCode.INTERNAL_ERROR: 500,
    ServiceCode.UNREACHABLE: 502,
    ServiceCode.BAD_RESPONSE: 502,
    ServiceCode.TLS_FAILURE: 502,
}
"""HTTP status of each protocol failure. Evidence refused by the verifier is 403."""

VERIFICATION_STATUS: Final = 403


class ServiceError(Exception):
    """A request the service refused (server side), or a refusal the client received.

    ``code`` is a :class:`ServiceCode` value or a ``verify.Reason`` value; ``reason`` is the
    ``Reason`` value for verification failures and None otherwise; ``status`` the HTTP status;
    ``extra`` more members of the error object (``rules`` of a POLICY_VIOLATION); ``headers``
    HTTP headers of the refusal (``Retry-After``).
    """

    def __init__(self, code: str, detail: str = "", *, status: int | None = None,
                 reason: str | None = None, extra: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.code = str(code)
        self.detail = detail
        self.reason = reason
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})
        if status is None:
            try:
                status = HTTP_STATUS[ServiceCode(self.code)]
            except ValueError:
                status = VERIFICATION_STATUS
        self.status = status
        super().__init__(f"{self.code}: {detail}" if detail else self.code)

    def to_dict(self) -> dict[str, Any]:
        """The JSON error body (without the HTTP status)."""
        return {"error": {"code": self.code, "reason": self.reason, "detail": self.detail, **self.extra}}
