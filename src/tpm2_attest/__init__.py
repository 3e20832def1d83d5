"""tpm2-attest: TPM 2.0 device attestation (device side) and the verifier for its evidence."""

from ._version import __version__
from .errors import ErrorCode, TpmError

__all__ = ["ErrorCode", "TpmError", "__version__"]
