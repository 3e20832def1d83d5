"""Linux IMA runtime measurement lists: parse (binary and ASCII), replay into PCR values.

Verifier side: pure functions over bytes, no OS calls (``tpm.ima_log()`` reads the list on
the device). ``parse_ima_log(data) -> ImaLog``; ``ImaLog.replay("sha256")`` -> PCR 10;
verification against a quote is ``tpm2_attest.verify.verify_ima_log``. Every malformed or
hostile list raises :class:`ImaLogError` (a ValueError) with the offset and line.
"""

from .aggregate import (
    BOOT_AGGREGATE_NAME,
    boot_aggregate,
    boot_aggregate_pcrs,
    boot_aggregate_variants,
)
from .algorithms import HASH_ALGO_NAMES, canonical
from .entry import ImaDigest, ImaEntry
from .errors import ImaLogError
from .log import IMA_PCR, DigestMode, ImaLog
from .parser import parse_ima_log
from .templates import FIELDS, TEMPLATES, template_fields

__all__ = [
    "BOOT_AGGREGATE_NAME",
    "FIELDS",
    "HASH_ALGO_NAMES",
    "IMA_PCR",
    "TEMPLATES",
    "DigestMode",
    "ImaDigest",
    "ImaEntry",
    "ImaLog",
    "ImaLogError",
    "boot_aggregate",
    "boot_aggregate_pcrs",
    "boot_aggregate_variants",
    "canonical",
    "parse_ima_log",
    "template_fields",
]
