"""The kernel's hash algorithm names and numbers as IMA writes them, and hashing with them.

IMA names algorithms by the kernel's ``hash_algo_name[]`` (crypto/hash_info.c): ``sha256``,
``sm3``, ``sha3-256``... and numbers them by ``enum hash_algo`` in signature headers. PCR
banks use TPM_ALG names (``sm3_256``, ``sha3_256``); :func:`canonical` maps both spellings
to the kernel name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Final

from ..tpm2.constants import TPM_ALG

HASH_ALGO_NAMES: Final[tuple[str, ...]] = (
    "md4", "md5", "sha1", "rmd160", "sha256", "sha384", "sha512", "sha224", "rmd128",
    "rmd256", "rmd320", "wp256", "wp384", "wp512", "tgr128", "tgr160", "tgr192", "sm3",
    "streebog256", "streebog512", "sha3-256", "sha3-384", "sha3-512", "ascon-hash256",
)
"""``enum hash_algo`` order: index = the number a signature header carries."""

DIGEST_SIZES: Final[dict[str, int]] = {
    "md4": 16, "md5": 16, "sha1": 20, "rmd160": 20, "sha256": 32, "sha384": 48, "sha512": 64,
    "sha224": 28, "rmd128": 16, "rmd256": 32, "rmd320": 40, "wp256": 32, "wp384": 48,
    "wp512": 64, "tgr128": 16, "tgr160": 20, "tgr192": 24, "sm3": 32, "streebog256": 32,
    "streebog512": 64, "sha3-256": 32, "sha3-384": 48, "sha3-512": 64, "ascon-hash256": 32,
}

TPM_ALGS: Final[dict[str, int]] = {
    "sha1": TPM_ALG.SHA1, "sha256": TPM_ALG.SHA256, "sha384": TPM_ALG.SHA384,
    "sha512": TPM_ALG.SHA512, "sm3": TPM_ALG.SM3_256, "sha3-256": TPM_ALG.SHA3_256,
    "sha3-384": TPM_ALG.SHA3_384, "sha3-512": TPM_ALG.SHA3_512,
}
"""Kernel name -> TPM_ALG of the PCR bank of that algorithm."""

KERNEL_NAMES: Final[dict[int, str]] = {v: k for k, v in TPM_ALGS.items()}

_ALIASES: Final[dict[str, str]] = {
    "sm3_256": "sm3", "sm3-256": "sm3", "sha3_256": "sha3-256", "sha3_384": "sha3-384",
    "sha3_512": "sha3-512", "sha-1": "sha1", "sha-256": "sha256", "sha-384": "sha384",
    "sha-512": "sha512", "sha_1": "sha1", "sha_256": "sha256", "sha_384": "sha384",
    "sha_512": "sha512",
}

_HASHLIB: Final[dict[str, str]] = {
    "md4": "md4", "md5": "md5", "sha1": "sha1", "sha224": "sha224", "sha256": "sha256",
    "sha384": "sha384", "sha512": "sha512", "sha3-256": "sha3_256", "sha3-384": "sha3_384",
    "sha3-512": "sha3_512", "sm3": "sm3", "rmd160": "ripemd160",
}


def canonical(name: str) -> str | None:
    """The kernel name of an algorithm given as ``sha256``, ``SHA-256``, ``sm3_256``...; None
    when it is no algorithm the kernel knows."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    return key if key in DIGEST_SIZES else None


def _factory(name: str) -> Callable[[bytes], Any] | None:
    lib = _HASHLIB.get(name)
    if lib is None:
        return None
    try:
        hashlib.new(lib)
    except ValueError:
        if name == "sm3":  # OpenSSL may lack sm3 in hashlib yet have it in cryptography
            from ..eventlog.banks import hash_factory

            try:
                return hash_factory(TPM_ALG.SM3_256)
            except ValueError:
                return None
        return None
    ctor = getattr(hashlib, lib, None)
    if ctor is not None:
        return ctor  # type: ignore[no-any-return]
    return lambda data: hashlib.new(lib, data)


_FACTORIES: dict[str, Callable[[bytes], Any] | None] = {}


def hasher(name: str) -> Callable[[bytes], Any] | None:
    """A hashlib-style constructor for a kernel algorithm name (None when unavailable here)."""
    try:
        return _FACTORIES[name]
    except KeyError:
        f = _FACTORIES[name] = _factory(name)
        return f


def digest(name: str, data: bytes) -> bytes:
    """``H_name(data)``; ValueError when this Python cannot compute ``name``."""
    f = hasher(name)
    if f is None:
        raise ValueError(f"hash algorithm {name!r} is not available")
    return bytes(f(data).digest())
