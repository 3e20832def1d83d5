"""The verifier: pure functions over evidence that raise ``VerificationError`` on any failure.

Nothing here returns a boolean verdict: a function returns only when every check passed.
Each name is imported from its module on first use (PEP 562), so a verifier of quotes does not
load ``cryptography.x509`` (EK and AK certificates) or the event-log decoders at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import Reason, VerificationError

if TYPE_CHECKING:
    from .ak import AkPublic, CreationResult, check_ak, verify_creation
    from .akcert import AkCertificate, verify_ak_certificate
    from .credential import EkPublic, check_ek, make_credential, verify_activation
    from .ekcert import EkCertificate, verify_ek_certificate
    from .eventlog import EventLogResult, verify_event_log
    from .ima import ImaResult, ImaState, verify_ima_log
    from .inputs import load_ak, load_public, quote_from_files, read_pcrs_file
    from .quote import QuoteResult, verify_quote

_LAZY: dict[str, str] = {
    "AkPublic": ".ak", "CreationResult": ".ak", "check_ak": ".ak", "verify_creation": ".ak",
    "AkCertificate": ".akcert", "verify_ak_certificate": ".akcert",
    "EkPublic": ".credential", "check_ek": ".credential", "make_credential": ".credential",
    "verify_activation": ".credential",
    "EkCertificate": ".ekcert", "verify_ek_certificate": ".ekcert",
    "EventLogResult": ".eventlog", "verify_event_log": ".eventlog",
    "ImaResult": ".ima", "ImaState": ".ima", "verify_ima_log": ".ima",
    "load_ak": ".inputs", "load_public": ".inputs", "quote_from_files": ".inputs",
    "read_pcrs_file": ".inputs",
    "QuoteResult": ".quote", "verify_quote": ".quote",
}

__all__ = [
    "AkCertificate",
    "AkPublic",
    "CreationResult",
    "EkCertificate",
    "EkPublic",
    "EventLogResult",
    "ImaResult",
    "ImaState",
    "QuoteResult",
    "Reason",
    "VerificationError",
    "check_ak",
    "check_ek",
    "load_ak",
    "load_public",
    "make_credential",
    "quote_from_files",
    "read_pcrs_file",
    "verify_activation",
    "verify_ak_certificate",
    "verify_creation",
    "verify_ek_certificate",
    "verify_event_log",
    "verify_ima_log",
    "verify_quote",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first access (then it is a plain attribute)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(__import__(__name__ + module, fromlist=(name,)), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
