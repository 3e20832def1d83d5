"""The verifier: pure functions over evidence that raise ``VerificationError`` on any failure."""

from .errors import Reason, VerificationError

__all__ = ["Reason", "VerificationError"]
