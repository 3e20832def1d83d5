"""The ``pcrs`` section: expected PCR values per bank, checked against a verified quote.

```json
"pcrs": {"sha256": {"7": "<hex>", "4": ["<hex>", "<hex>"]}}
```

Each PCR lists the value it must have, or several acceptable values. The quote must be of
one of the listed banks (a device quoting another bank cannot be judged by this section and
fails it), and must cover every listed PCR of that bank. A quote over several banks is judged
in each listed bank it covers.

Rule ids: ``pcrs.no_quote`` (no verified quote to judge), ``pcrs.bank`` (the quoted bank has no
expectations), ``pcrs.not_quoted`` (a listed PCR is missing from the quote), ``pcrs.value``
(a PCR has a value the policy does not list).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..tpm2.constants import HASH_BY_NAME, HASH_SIZES
from .base import (
    Evidence,
    PolicyError,
    Section,
    Violation,
    hex_bytes,
    integer,
    join,
    mapping,
    one_or_many,
)

MAX_PCR = 31


@dataclass(frozen=True)
class PcrSection(Section):
    """Expected PCR values: {bank: {index: (acceptable values, ...)}}."""

    key: ClassVar[str] = "pcrs"
    rules: ClassVar[tuple[str, ...]] = ("pcrs.no_quote", "pcrs.bank", "pcrs.not_quoted", "pcrs.value")
    banks: Mapping[str, Mapping[int, tuple[bytes, ...]]]

    @classmethod
    def from_dict(cls, doc: Any) -> PcrSection:
        """Read ``{"sha256": {"7": "<hex>" | ["<hex>", ...]}}``."""
        banks: dict[str, dict[int, tuple[bytes, ...]]] = {}
        for bank, values in mapping(doc, cls.key).items():
            path = join(cls.key, bank)
            alg = HASH_BY_NAME.get(bank)
            if alg is None:
                raise PolicyError(path, f"unknown PCR bank (known: {', '.join(sorted(HASH_BY_NAME))})")
            size = HASH_SIZES[alg]
            per: dict[int, tuple[bytes, ...]] = {}
            for index, value in mapping(values, path).items():
                ipath = join(path, index)
                if not index.isascii() or not index.isdigit():
                    raise PolicyError(ipath, "PCR indices are decimal numbers")
                i = integer(int(index), ipath, maximum=MAX_PCR)
                if i in per:
                    raise PolicyError(ipath, f"PCR {i} is listed twice")
                per[i] = tuple(dict.fromkeys(hex_bytes(v, p, sizes=(size,))
                                             for v, p in one_or_many(value, ipath)))
            banks[bank] = dict(sorted(per.items()))
        return cls(banks)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{bank: {"index": "<hex>" or ["<hex>", ...]}}``."""
        return {bank: {str(i): vals[0].hex() if len(vals) == 1 else [v.hex() for v in vals]
                       for i, vals in per.items()}
                for bank, per in self.banks.items()}

    def evaluate(self, evidence: Evidence) -> Iterator[Violation]:
        """Compare the quoted PCRs with the expected values of the quoted bank."""
        if not self.banks:
            return
        quote = evidence.quote
        if quote is None:
            yield Violation("pcrs.no_quote", "no verified quote: expected PCR values cannot be checked",
                            wanted=sorted(self.banks))
            return
        quoted_banks = _banks_of(quote)
        judged = [bank for bank in quoted_banks if bank in self.banks]
        if not judged:
            seen = quote.bank if len(quoted_banks) == 1 else sorted(quoted_banks)
            yield Violation("pcrs.bank", f"the quote is of the {' and '.join(quoted_banks)} bank; the policy "
                            f"expects values for {', '.join(self.banks)}", seen=seen, wanted=sorted(self.banks))
            return
        for bank in judged:
            quoted = quoted_banks[bank]
            for index, allowed in self.banks[bank].items():
                value = quoted.get(index)
                if value is None:
                    yield Violation("pcrs.not_quoted", f"{bank} PCR {index} is not in the quote",
                                    seen=sorted(quoted), wanted=index)
                elif value not in allowed:
                    wanted = [v.hex() for v in allowed]
                    yield Violation("pcrs.value", f"{bank} PCR {index} is {value.hex()}, expected "
                                    f"{' or '.join(wanted)}", seen={str(index): value.hex()},
                                    wanted={str(index): wanted[0] if len(wanted) == 1 else wanted})

    @classmethod
    def learn(cls, evidence: Evidence) -> PcrSection | None:
        """Every quoted PCR at exactly its quoted value."""
        if evidence.quote is None:
            return None
        return cls({bank: {i: (v,) for i, v in sorted(pcrs.items())}
                    for bank, pcrs in _banks_of(evidence.quote).items()})


def _banks_of(quote: Any) -> Mapping[str, Mapping[int, bytes]]:
    """Every bank a verified quote covers (one, unless it was made over several)."""
    banks = getattr(quote, "banks", None)
    return banks if isinstance(banks, Mapping) else {quote.bank: quote.pcrs}


__all__ = ["PcrSection"]
