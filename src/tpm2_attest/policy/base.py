"""The vocabulary every policy section shares: violations, results, evidence, document reading.

A policy judges *verified* evidence only (a :class:`~tpm2_attest.verify.QuoteResult`, an
:class:`~tpm2_attest.verify.EventLogResult`, ...): authenticity is ``verify``'s job, acceptability
is this package's. Each section of a policy document is a :class:`Section`: it reads its part
of the document (naming the key of every error), writes it back, evaluates it into
:class:`Violation`\\ s under stable rule ids, and can learn itself from a known-good machine.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self

if TYPE_CHECKING:
    from ..verify import EventLogResult, QuoteResult


class PolicyError(ValueError):
    """A policy document that cannot be used; ``key`` is the dotted path of the offending key."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"policy key {key!r}: {message}" if key else f"policy: {message}")


@dataclass(frozen=True, slots=True)
class Violation:
    """One rule that the evidence did not satisfy.

    ``rule`` is a stable id (``"secure_boot.required"``, ``"pcrs.value"``) to match on;
    ``detail`` says in words what was seen and what was wanted; ``seen``/``wanted`` carry the
    same as JSON-ready values (None when there is nothing to show)."""

    rule: str
    detail: str
    seen: Any = None
    wanted: Any = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; ``seen``/``wanted`` only when present."""
        out: dict[str, Any] = {"rule": self.rule, "detail": self.detail}
        if self.seen is not None:
            out["seen"] = self.seen
        if self.wanted is not None:
            out["wanted"] = self.wanted
        return out


@dataclass(frozen=True, slots=True)
class PolicyResult:
    """The verdict of :meth:`Policy.evaluate`: every violation, never only the first.

    ``ok`` is True only when no rule was violated. ``rules`` lists the rule groups that were
    evaluated (the policy's sections), so an empty policy is visible as such."""

    violations: tuple[Violation, ...]
    rules: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the evidence satisfied every rule of the policy."""
        return not self.violations

    def failed_rules(self) -> list[str]:
        """The distinct rule ids that failed, in order of first failure."""
        return list(dict.fromkeys(v.rule for v in self.violations))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"ok", "rules", "violations": [...]}``."""
        return {"ok": self.ok, "rules": list(self.rules),
                "violations": [v.to_dict() for v in self.violations]}

    def __str__(self) -> str:
        if self.ok:
            return "policy satisfied"
        return "; ".join(f"{v.rule}: {v.detail}" for v in self.violations)


@dataclass(frozen=True, slots=True)
class Evidence:
    """The verified results a policy is evaluated over; any of them may be absent.

    ``quote``: a :class:`~tpm2_attest.verify.QuoteResult`; ``event_log``: an
    :class:`~tpm2_attest.verify.EventLogResult` (its machine state included); ``ima``: a
    verified IMA measurement list result. Sections that need evidence that is absent report
    a violation rather than pass."""

    quote: QuoteResult | None = None
    event_log: EventLogResult | None = None
    ima: Any = None


class Section(ABC):
    """One top-level key of a policy document and the rules under it."""

    key: ClassVar[str]
    """The document key of the section, also the prefix of its rule ids."""
    rules: ClassVar[tuple[str, ...]] = ()
    """Every rule id the section can report (``<key>.error`` aside); each is documented."""

    @classmethod
    @abstractmethod
    def from_dict(cls, doc: Any) -> Self:
        """Read the section's value from a document; raise :class:`PolicyError` naming the key."""

    @abstractmethod
    def to_dict(self) -> Any:
        """The section's JSON-ready value (``from_dict(to_dict())`` gives an equal section)."""

    @abstractmethod
    def evaluate(self, evidence: Evidence) -> Iterable[Violation]:
        """Every violation of this section's rules by ``evidence`` (nothing when satisfied)."""

    @classmethod
    def learn(cls, evidence: Evidence) -> Self | None:
        """The section that exactly describes ``evidence`` (a known-good machine), or None when
        the evidence says nothing this section judges."""
        return None


# -- reading documents with errors that name the key -------------------------------------------


def join(path: str, key: str | int) -> str:
    """The dotted path of ``key`` under ``path``."""
    return f"{path}.{key}" if path else str(key)


def mapping(value: Any, path: str) -> Mapping[str, Any]:
    """``value`` as a mapping with string keys, else :class:`PolicyError`."""
    if not isinstance(value, Mapping):
        raise PolicyError(path, f"expected an object, got {type(value).__name__}")
    for k in value:
        if not isinstance(k, str):
            raise PolicyError(path, f"keys must be strings, got {k!r}")
    return value


def only_keys(value: Mapping[str, Any], path: str, allowed: Iterable[str]) -> None:
    """Refuse keys that ``allowed`` does not list (a typo must not silently disable a rule)."""
    known = list(allowed)
    unknown = [k for k in value if k not in known]
    if unknown:
        raise PolicyError(join(path, unknown[0]),
                          f"unknown key (known here: {', '.join(known) or 'none'})")


def string(value: Any, path: str) -> str:
    """A string, else :class:`PolicyError`."""
    if not isinstance(value, str):
        raise PolicyError(path, f"expected a string, got {type(value).__name__}")
    return value


def boolean(value: Any, path: str) -> bool:
    """A JSON boolean (not 0/1, not "yes"), else :class:`PolicyError`."""
    if not isinstance(value, bool):
        raise PolicyError(path, f"expected true or false, got {value!r}")
    return value


def integer(value: Any, path: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer within bounds (booleans are not integers here), else :class:`PolicyError`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(path, f"expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise PolicyError(path, f"must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise PolicyError(path, f"must be at most {maximum}, got {value}")
    return value


def sequence(value: Any, path: str) -> list[Any]:
    """A JSON array, else :class:`PolicyError`."""
    if not isinstance(value, list | tuple):
        raise PolicyError(path, f"expected a list, got {type(value).__name__}")
    return list(value)


_HEX = re.compile(r"(?:0x)?([0-9a-fA-F]*)")


def hex_bytes(value: Any, path: str, *, sizes: Iterable[int] | None = None) -> bytes:
    """Bytes written as hex (an optional ``0x`` prefix), of one of ``sizes`` when given."""
    text = string(value, path)
    m = _HEX.fullmatch(text)
    if m is None or len(m.group(1)) % 2:
        raise PolicyError(path, f"expected hex bytes, got {text[:80]!r}")
    data = bytes.fromhex(m.group(1))
    allowed = None if sizes is None else sorted(set(sizes))
    if allowed is not None and len(data) not in allowed:
        raise PolicyError(path, f"expected {' or '.join(map(str, allowed))} bytes, got {len(data)}")
    return data


def regex(value: Any, path: str) -> re.Pattern[str]:
    """A regular expression (matched against whole strings by the rules), else :class:`PolicyError`."""
    text = string(value, path)
    try:
        return re.compile(text)
    except re.error as exc:
        raise PolicyError(path, f"not a valid regular expression: {exc}") from None


def one_or_many(value: Any, path: str) -> list[tuple[Any, str]]:
    """A single value or a list of them, each with its own path (for per-item errors)."""
    if isinstance(value, list | tuple):
        if not value:
            raise PolicyError(path, "an empty list allows nothing; remove the key instead")
        return [(v, join(path, i)) for i, v in enumerate(value)]
    return [(value, path)]


MAX_LISTED = 16
"""A rule reports at most this many offending items one by one (then one violation for the
rest), so a hostile log with thousands of offending items cannot make a result of megabytes."""


def capped(violations: list[Violation]) -> Iterator[Violation]:
    """``violations`` (all of one rule), at most :data:`MAX_LISTED` and one for the rest."""
    yield from violations[:MAX_LISTED]
    if len(violations) > MAX_LISTED:
        yield Violation(violations[0].rule,
                        f"and {len(violations) - MAX_LISTED} more such violations",
                        seen={"more": len(violations) - MAX_LISTED})


def pcrs_missing(event_log: Any, pcrs: Iterable[int]) -> str:
    """Why an event log result holds no verified facts from ``pcrs``, in words."""
    want = sorted(pcrs)
    names = "/".join(map(str, want))
    if event_log is None:
        return "no verified event log"
    verified: frozenset[int] = getattr(event_log, "verified", frozenset())
    if any(p in verified for p in want):
        return f"the log has no such measurements in PCR {names}"
    uncovered: frozenset[int] = getattr(event_log, "uncovered", frozenset())
    if any(p in uncovered for p in want):
        return f"PCR {names} not covered by the quote"
    return f"the log measures nothing into PCR {names}"


def violations_of(sections: Iterable[Section], evidence: Evidence) -> Iterator[Violation]:
    """Every section's violations in order. A section that fails unexpectedly yields a
    ``<key>.error`` violation instead of passing: evaluation fails closed, and never raises."""
    for section in sections:
        try:
            yield from section.evaluate(evidence)
        except Exception as exc:  # fail closed: an error in a rule is a refusal, never a pass
            yield Violation(f"{section.key}.error",
                            f"the {section.key} rules could not be evaluated: "
                            f"{type(exc).__name__}: {exc}")


__all__ = [
    "MAX_LISTED",
    "Evidence",
    "PolicyError",
    "PolicyResult",
    "Section",
    "Violation",
    "boolean",
    "capped",
    "hex_bytes",
    "integer",
    "join",
    "mapping",
    "one_or_many",
    "only_keys",
    "pcrs_missing",
    "regex",
    "sequence",
    "string",
    "violations_of",
]
