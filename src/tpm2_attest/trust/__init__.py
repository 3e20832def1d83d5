"""Trust material for real TPMs: the shipped CA bundle, EK certificate URLs, fetching.

* :func:`tpm_vendor_cas` — TPM vendor and cloud vTPM CA certificates, as the verifier's
  ``roots`` / ``intermediates`` (:class:`TrustBundle`), with their origin and validity.
* :func:`ek_certificate_url` — where Intel PTT and AMD fTPM publish an EK's certificate.
* :func:`fetch_ek_certificate`, :func:`fetch_ca_issuers` — bounded HTTP fetching with an
  optional cache (``offline=True`` reads only the cache); failures are :class:`FetchError`;
  :func:`chain_top` says where to start when the device sent part of the chain.

No verification happens here (that is :mod:`tpm2_attest.verify`). Everything loads on
first use, so ``import tpm2_attest.trust`` costs nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .bundle import CaEntry, CaSource, TrustBundle, load_bundle, tpm_vendor_cas
    from .errors import BundleError, FetchError, FetchFailure
    from .fetch import (
        ca_issuer_urls,
        chain_top,
        decode_certificates,
        fetch_ca_issuers,
        fetch_certificates,
        fetch_ek_certificate,
    )
    from .urls import AMD_EK_SERVICE, INTEL_EK_SERVICE, ek_certificate_url

_LAZY: dict[str, str] = {
    "CaEntry": ".bundle",
    "CaSource": ".bundle",
    "TrustBundle": ".bundle",
    "tpm_vendor_cas": ".bundle",
    "load_bundle": ".bundle",
    "BundleError": ".errors",
    "FetchError": ".errors",
    "FetchFailure": ".errors",
    "ca_issuer_urls": ".fetch",
    "chain_top": ".fetch",
    "decode_certificates": ".fetch",
    "fetch_ca_issuers": ".fetch",
    "fetch_certificates": ".fetch",
    "fetch_ek_certificate": ".fetch",
    "AMD_EK_SERVICE": ".urls",
    "INTEL_EK_SERVICE": ".urls",
    "ek_certificate_url": ".urls",
}

__all__ = [
    "AMD_EK_SERVICE",
    "INTEL_EK_SERVICE",
    "BundleError",
    "CaEntry",
    "CaSource",
    "FetchError",
    "FetchFailure",
    "TrustBundle",
    "ca_issuer_urls",
    "chain_top",
    "decode_certificates",
    "ek_certificate_url",
    "fetch_ca_issuers",
    "fetch_certificates",
    "fetch_ek_certificate",
    "load_bundle",
    "tpm_vendor_cas",
]


def __getattr__(name: str) -> Any:
    """Import the public names on first access (PEP 562)."""
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'tpm2_attest.trust' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
