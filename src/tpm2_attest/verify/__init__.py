"""The verifier: pure functions over evidence that raise ``VerificationError`` on any failure.

Nothing here returns a boolean verdict: a function returns only when every check passed.
"""

from .ak import AkPublic, CreationResult, check_ak, verify_creation
from .akcert import AkCertificate, verify_ak_certificate
from .credential import EkPublic, check_ek, make_credential, verify_activation
from .ekcert import EkCertificate, verify_ek_certificate
from .errors import Reason, VerificationError
from .eventlog import EventLogResult, verify_event_log
from .ima import ImaResult, ImaState, verify_ima_log
from .inputs import load_ak, load_public, quote_from_files, read_pcrs_file
from .quote import QuoteResult, verify_quote

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
