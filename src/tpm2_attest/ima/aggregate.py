"""The ``boot_aggregate``: the first IMA measurement, binding the list to the boot (PCRs 0-9).

The kernel (ima_crypto.c, ``ima_calc_boot_aggregate``) hashes the values of PCRs 0-7, and for
any bank but SHA-1 also PCRs 8-9 (kernel command line and image on a typical allocation;
since 5.8, and every backport of the non-SHA-1 aggregate), with the bank's own algorithm.
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


def boot_aggregate(pcrs: Mapping[int, bytes], algorithm: str) -> bytes:
    """The boot_aggregate the kernel computes from the values of PCRs 0-7 (0-9) of the bank
    of ``algorithm`` (kernel or bank name). KeyError when a needed PCR is missing."""
    alg = algorithms.canonical(algorithm)
    if alg is None:
        raise ValueError(f"unknown algorithm {algorithm!r}")
    return algorithms.digest(alg, b"".join(bytes(pcrs[i]) for i in boot_aggregate_pcrs(alg)))
