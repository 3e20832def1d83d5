"""Errors of the trust layer: fetching certificates, reading the shipped CA bundle."""

from __future__ import annotations

from enum import StrEnum


class FetchFailure(StrEnum):
    """Why a certificate could not be fetched (stable names; documented in docs/trust.md)."""

    BAD_URL = "BAD_URL"
    """Not an http:// or https:// URL (a redirect to another scheme counts too)."""
    NOT_FOUND = "NOT_FOUND"
    """HTTP 404 or 410: the service has no certificate for this key."""
    HTTP_ERROR = "HTTP_ERROR"
    """Any other HTTP status than 200, or too many redirects."""
    NETWORK = "NETWORK"
    """Name resolution, connection, TLS or transfer failed."""
    TIMEOUT = "TIMEOUT"
    """The whole exchange took longer than the timeout."""
    TOO_LARGE = "TOO_LARGE"
    """The response is larger than the size cap."""
    BAD_CONTENT = "BAD_CONTENT"
    """The response is not a certificate in a known form (DER, PEM, Intel's JSON, PKCS#7)."""
    NOT_CACHED = "NOT_CACHED"
    """Offline mode, and the cache has no (readable) entry for this URL."""


class FetchError(Exception):
    """A certificate could not be fetched: ``failure`` says why, ``url`` where from."""

    def __init__(self, failure: FetchFailure, url: str, detail: str = "") -> None:
        self.failure = FetchFailure(failure)
        self.url = url
        self.detail = detail
        text = f"{self.failure.value}: {url}"
        super().__init__(f"{text}: {detail}" if detail else text)


class BundleError(ValueError):
    """The shipped CA bundle is damaged (a file is missing or differs from its manifest entry)."""
