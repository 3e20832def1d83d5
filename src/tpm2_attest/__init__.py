"""tpm2-attest: TPM 2.0 device attestation (device side) and the verifier for its evidence.

Device side: :class:`Tpm`. Evidence: :class:`AkBlob`, :class:`Quote`, :class:`EkInfo`,
:class:`CredentialChallenge`. Verifier: :mod:`tpm2_attest.verify`.
"""

from . import verify
from ._version import __version__
from .backends.base import TpmInfo
from .errors import ErrorCode, TpmError
from .evidence import AkBlob, CredentialChallenge, EkInfo, PublicKey, Quote
from .tpm import Tpm

__all__ = [
    "AkBlob",
    "CredentialChallenge",
    "EkInfo",
    "ErrorCode",
    "PublicKey",
    "Quote",
    "Tpm",
    "TpmError",
    "TpmInfo",
    "__version__",
    "verify",
]
