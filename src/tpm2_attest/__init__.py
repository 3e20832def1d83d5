"""tpm2-attest: TPM 2.0 device attestation (device side) and the verifier for its evidence.

Device side: :class:`Tpm`. Evidence: :class:`AkBlob`, :class:`Quote`, :class:`EkInfo`,
:class:`CredentialChallenge`. Verifier: :mod:`tpm2_attest.verify`.

The heavy parts (the device API, ``cryptography.x509`` for the verifier) load on first use,
so ``import tpm2_attest`` and the CLI start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import ErrorCode, TpmError

if TYPE_CHECKING:
    from . import policy, verify
    from .backends.base import TpmInfo
    from .evidence import AkBlob, CredentialChallenge, EkInfo, PublicKey, Quote
    from .tpm import Availability, Tpm

_LAZY: dict[str, tuple[str, str | None]] = {
    "verify": (".verify", None),
    "policy": (".policy", None),
    "TpmInfo": (".backends.base", "TpmInfo"),
    "AkBlob": (".evidence", "AkBlob"),
    "CredentialChallenge": (".evidence", "CredentialChallenge"),
    "EkInfo": (".evidence", "EkInfo"),
    "PublicKey": (".evidence", "PublicKey"),
    "Quote": (".evidence", "Quote"),
    "Tpm": (".tpm", "Tpm"),
    "Availability": (".tpm", "Availability"),
}

__all__ = [
    "AkBlob",
    "Availability",
    "CredentialChallenge",
    "EkInfo",
    "ErrorCode",
    "PublicKey",
    "Quote",
    "Tpm",
    "TpmError",
    "TpmInfo",
    "__version__",
    "policy",
    "verify",
]


def __getattr__(name: str) -> Any:
    """Import the public names on first access (PEP 562)."""
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'tpm2_attest' has no attribute {name!r}") from None
    mod = __import__(__name__ + module, fromlist=("*",))  # importlib itself costs ~3 ms
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value
