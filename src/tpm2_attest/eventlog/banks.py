"""PCR banks: resolve a bank given by name or TPM_ALG, and hash with it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Final

from ..tpm2.constants import HASH_BY_NAME, HASH_NAMES, HASH_SIZES, TPM_ALG

HashFactory = Callable[[bytes], Any]
"""A hashlib-style constructor: ``f(data).digest()``."""


def _sm3() -> HashFactory | None:
    try:
        hashlib.new("sm3")
    except ValueError:
        pass
    else:
        return lambda data: hashlib.new("sm3", data)
    try:
        from cryptography.hazmat.primitives import hashes

        hashes.Hash(hashes.SM3())
    except Exception:  # pragma: no cover - depends on the OpenSSL build
        return None

    class _Sm3:
        __slots__ = ("_v",)

        def __init__(self, data: bytes) -> None:
            h = hashes.Hash(hashes.SM3())
            h.update(data)
            self._v = h.finalize()

        def digest(self) -> bytes:
            return self._v

    return _Sm3


def _factories() -> dict[int, HashFactory]:
    table: dict[int, HashFactory] = {
        TPM_ALG.SHA1: hashlib.sha1,
        TPM_ALG.SHA256: hashlib.sha256,
        TPM_ALG.SHA384: hashlib.sha384,
        TPM_ALG.SHA512: hashlib.sha512,
        TPM_ALG.SHA3_256: hashlib.sha3_256,
        TPM_ALG.SHA3_384: hashlib.sha3_384,
        TPM_ALG.SHA3_512: hashlib.sha3_512,
    }
    sm3 = _sm3()
    if sm3 is not None:
        table[TPM_ALG.SM3_256] = sm3
    return table


_HASHES: Final = _factories()


def resolve_bank(bank: str | int) -> int:
    """The TPM_ALG of a bank given as ``"sha256"``/``"SHA-256"`` or as a TPM_ALG value.

    Raises ValueError for anything that is not a known hash algorithm.
    """
    if isinstance(bank, str):
        key = bank.strip().lower().replace("-", "").replace("_", "")
        key = {"sm3256": "sm3_256", "sha3256": "sha3_256", "sha3384": "sha3_384",
               "sha3512": "sha3_512"}.get(key, key)
        alg = HASH_BY_NAME.get(key)
        if alg is None:
            raise ValueError(f"unknown PCR bank {bank!r}")
        return int(alg)
    alg = int(bank)
    if alg not in HASH_SIZES:
        raise ValueError(f"unknown PCR bank algorithm 0x{alg:04x}")
    return alg


def bank_name(alg: int) -> str:
    """The conventional lower-case name of a hash algorithm (``sha256``), or ``alg_0x....``."""
    return HASH_NAMES.get(alg, f"alg_0x{alg:04x}")


def digest_size(alg: int) -> int | None:
    """The digest size of a known hash algorithm."""
    return HASH_SIZES.get(alg)


def hash_factory(alg: int) -> HashFactory:
    """The hash constructor for a bank; ValueError when this Python cannot compute it."""
    f = _HASHES.get(alg)
    if f is None:
        raise ValueError(f"hash algorithm {bank_name(alg)} is not available")
    return f


def hash_data(alg: int, data: bytes) -> bytes:
    """``H_alg(data)``."""
    return bytes(hash_factory(alg)(data).digest())
