"""The ``boot_aggregate``: the first IMA measurement, binding the list to the boot (PCRs 0-9).

The kernel (ima_crypto.c, ``ima_calc_boot_aggregate``) hashes the values of PCRs 0-7, and for
any bank but SHA-1 also PCRs 8-9 (kernel command line and image on a typical allocation;
since 5.8), with the bank's own algorithm. 5.7, and the stable kernels that took its switch
to a non-SHA-1 aggregate ("ima: Switch to ima_hash_algo for boot aggregate": 5.4.y, 5.6.y)
without 5.8's "extend boot_aggregate with kernel measurements", hash PCRs 0-7 in any bank.
The bank is the one of ``ima_hash`` if allocated, else SHA-256, else SHA-1; the ``ima``
template always records the SHA-1 aggregate. Without a TPM the aggregate is all zeros.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from . import algorithms

BOOT_AGGREGATE_NAME: Final = "boot_aggregate"


def boot_aggregate_pcrs(algorithm: str) -> tuple[int, ...]:
    """The PCRs a boot_aggregate of ``algorithm`` covers: 0-7 for SHA-1, else 0-9."""
    return tuple(range(8)) if algorithms.canonical(algorithm) == "sha1" else tuple(range(10))


def boot_aggregate_variants(algorithm: str) -> tuple[tuple[int, ...], ...]:
    """Every PCR set a kernel's boot_aggregate of ``algorithm`` may cover: 0-7 for SHA-1; for
    other banks 0-9 (since 5.8) or 0-7 (5.7 and the stable kernels of its switch)."""
    pcrs = boot_aggregate_pcrs(algorithm)
    return (pcrs,) if len(pcrs) == 8 else (pcrs, pcrs[:8])


def boot_aggregate(pcrs: Mapping[int, bytes], algorithm: str,
                   indices: tuple[int, ...] | None = None) -> bytes:
    """The boot_aggregate the kernel computes from the values of PCRs 0-7 (0-9) of the bank
    of ``algorithm`` (kernel or bank name), or of ``indices``. KeyError when a needed PCR is
    missing."""
    alg = algorithms.canonical(algorithm)
    if alg is None:
        raise ValueError(f"unknown algorithm {algorithm!r}")
    use = boot_aggregate_pcrs(alg) if indices is None else indices
    return algorithms.digest(alg, b"".join(bytes(pcrs[i]) for i in use))
