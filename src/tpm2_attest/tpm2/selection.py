"""PCR selections in the text form tpm2-tools and tpm2-pytss use: ``sha256:0,1,2+sha1:0``.

A selection is one or more ``BANK:LIST`` joined by ``+``, or a bare ``LIST`` (no bank named).
``BANK`` is a hash name (``sha1``, ``sha256``, ``sha384``, ``sha512``, ``sm3_256``, ``sha3_*``,
any case) or a TPM_ALG id (``0x000B``, ``11``), as tpm2-tools' ``tpm2_alg_util_from_optarg``
accepts. ``LIST`` is ``all`` (PCRs 0-23, as in tpm2-tools and tpm2-pytss) or indices joined
by ``,``: decimal or ``0x`` hexadecimal (tpm2-tools 5.4 reads an item of at most three
characters with strtoul, so ``0x1``..``0xf``; tpm2-pytss also ``0x10``..``0x17``, as we do),
and ranges ``0-7`` (an extension of ours: tpm2-tools refuses them). A bank named twice
selects the union. Spaces around items are ignored (tpm2-pytss does the same).

Refused, with a message saying why: a decimal index with a leading zero such as ``010``
(tpm2-tools reads it as octal 8, tpm2-pytss refuses it: ambiguous), an index beyond 23
(tpm2-tools silently selects nothing for it), empty items (``1,,2``), ``none`` (selects
nothing), and unknown banks.
"""

from __future__ import annotations

import re
from typing import Final

from .constants import HASH_BY_NAME, HASH_NAMES

__all__ = ["MAX_PCR", "PcrSelectionError", "format_pcr_selection", "parse_bank", "parse_pcr_selection"]

MAX_PCR: Final = 23
"""Highest PCR index of a PC Client TPM (24 PCRs); ``all`` selects 0..MAX_PCR."""

_DEC: Final = re.compile(r"0|[1-9][0-9]{0,2}")
_HEX: Final = re.compile(r"0[xX][0-9a-fA-F]{1,4}")
_ALG_ID: Final = re.compile(r"(?:0[xX][0-9a-fA-F]{1,4}|[0-9]{1,5})")


class PcrSelectionError(ValueError):
    """A PCR selection string that does not parse; the message says which part and why."""


def _index(item: str, where: str) -> int:
    if _DEC.fullmatch(item):
        value = int(item)
    elif _HEX.fullmatch(item):
        value = int(item, 16)
    elif re.fullmatch(r"0[0-9]+", item):
        raise PcrSelectionError(
            f"{where}: PCR index {item!r} has a leading zero (tpm2-tools would read it as "
            f"octal {int(item, 8)}); write it without the zero, or as hex 0x..")
    else:
        raise PcrSelectionError(f"{where}: {item!r} is not a PCR index (decimal, 0x hex, "
                                "a range such as 0-7, or all)")
    if value > MAX_PCR:
        raise PcrSelectionError(f"{where}: PCR {value} out of range 0..{MAX_PCR}")
    return value


def parse_bank(text: str) -> str:
    """A PCR bank as a selection names it (``sha256``, ``SHA256``, ``0x000B``, ``11``): its hash
    name. Raises :class:`PcrSelectionError` for anything else."""
    return _bank(text, None)


def _bank(text: str, where: str | None) -> str:
    name = text.strip().lower()
    if name in HASH_BY_NAME:
        return name
    if _ALG_ID.fullmatch(name):
        alg = int(name, 0) if name.startswith("0x") else int(name)
        if alg in HASH_NAMES:
            return HASH_NAMES[alg]
    known = ", ".join(HASH_BY_NAME)
    message = f"unknown PCR bank {text.strip()!r} (known: {known})"
    raise PcrSelectionError(f"{where}: {message}" if where is not None else message)


def _indices(text: str, where: str) -> set[int]:
    body = text.strip()
    if not body:
        raise PcrSelectionError(f"{where}: no PCR index after the bank")
    if body.lower() == "all":
        return set(range(MAX_PCR + 1))
    out: set[int] = set()
    for raw in body.split(","):
        item = raw.strip()
        if not item:
            raise PcrSelectionError(f"{where}: empty item in {body!r}")
        if item.lower() in ("all", "none"):
            raise PcrSelectionError(f"{where}: {item!r} must stand alone" if item.lower() == "all"
                                    else f"{where}: 'none' selects no PCR")
        lo, dash, hi = item.partition("-")
        if dash:
            first, last = _index(lo.strip(), where), _index(hi.strip(), where)
            if first > last:
                raise PcrSelectionError(f"{where}: range {item!r} runs backwards")
            out.update(range(first, last + 1))
        else:
            out.add(_index(item, where))
    return out


def parse_pcr_selection(text: str) -> dict[str | None, tuple[int, ...]]:
    """Parse a selection into ``{bank: ascending indices}`` in the order the banks were named;
    a bare list (``0-7,16``) gives ``{None: (...)}``. Raises :class:`PcrSelectionError`."""
    if not isinstance(text, str) or not text.strip():
        raise PcrSelectionError("empty PCR selection")
    if len(text) > 4096:
        raise PcrSelectionError("PCR selection longer than 4096 characters")
    parts = text.split("+")
    out: dict[str | None, set[int]] = {}
    for part in parts:
        if not part.strip():
            raise PcrSelectionError(f"empty bank selection in {text!r}")
        bank_text, colon, body = part.partition(":")
        if colon:
            bank: str | None = _bank(bank_text, part.strip())
        elif len(parts) > 1:
            raise PcrSelectionError(f"{part.strip()!r}: name the bank (e.g. sha256:{part.strip()}) "
                                    "when joining selections with '+'")
        else:
            bank, body = None, part
        out.setdefault(bank, set()).update(_indices(body, part.strip()))
    return {bank: tuple(sorted(idx)) for bank, idx in out.items()}


def format_pcr_selection(selection: dict[str, tuple[int, ...]] | dict[str | None, tuple[int, ...]]) -> str:
    """The canonical text of a selection (``sha256:0,1,2+sha1:0``), parseable by tpm2-tools
    (which knows no ranges) when every bank is named."""
    parts = []
    for bank, idx in selection.items():
        body = ",".join(str(i) for i in idx)
        parts.append(f"{bank}:{body}" if bank else body)
    return "+".join(parts)
