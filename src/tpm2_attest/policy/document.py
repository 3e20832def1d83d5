"""A policy document: versioned data an operator writes, reviews and keeps in version control.

```json
{"version": 1, "name": "fleet-2026", "description": "...", "pcrs": {...}, ...}
```

Top-level keys other than ``version``, ``name`` and ``description`` are sections, each read by
its :class:`~.base.Section` class (``SECTIONS``). Unknown keys are errors, never ignored: a
misspelt rule must not pass silently; so is a key given twice (parsers keep the last one). Files are JSON, or YAML when PyYAML is installed
(``pip install 'tpm2-attest[yaml]'``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._files import write_atomic
from .base import Evidence, PolicyError, PolicyResult, Section, mapping, string, violations_of
from .boot import BootSection
from .ima import ImaSection
from .pcrs import PcrSection
from .secure_boot import SecureBootSection

VERSION = 1
"""The document format this library reads and writes."""

SECTIONS: tuple[type[Section], ...] = (PcrSection, SecureBootSection, BootSection, ImaSection)
"""Every section class, in the order documents list them and evaluation runs them."""

_BY_KEY: dict[str, type[Section]] = {s.key: s for s in SECTIONS}
_META = ("version", "name", "description")
MAX_DOCUMENT_BYTES = 16 << 20
"""Refuse policy files larger than this (a policy with a very large IMA allow-list fits)."""


@dataclass(frozen=True)
class Policy:
    """An attestation policy: its sections, each a set of rules over verified evidence."""

    sections: tuple[Section, ...] = ()
    name: str | None = None
    description: str | None = None

    def __post_init__(self) -> None:
        keys = [s.key for s in self.sections]
        if len(set(keys)) != len(keys):
            raise PolicyError("", f"a section appears twice: {keys}")
        object.__setattr__(self, "sections", tuple(sorted(
            self.sections, key=lambda s: list(_BY_KEY).index(s.key) if s.key in _BY_KEY else len(_BY_KEY))))

    # -- reading and writing ------------------------------------------------------------------

    @classmethod
    def from_dict(cls, doc: Any) -> Policy:
        """Read a policy document; :class:`PolicyError` names the first offending key."""
        top = mapping(doc, "")
        version = top.get("version", VERSION)
        if isinstance(version, bool) or version != VERSION:
            raise PolicyError("version", f"this library reads policy version {VERSION}, got {version!r}")
        for key in top:
            if key not in _META and key not in _BY_KEY:
                raise PolicyError(key, "unknown policy section (known: "
                                  f"{', '.join((*_META, *_BY_KEY))})")
        name = string(top["name"], "name") if top.get("name") is not None else None
        description = (string(top["description"], "description")
                       if top.get("description") is not None else None)
        sections = tuple(_BY_KEY[key].from_dict(value) for key, value in top.items() if key in _BY_KEY)
        return cls(sections, name=name, description=description)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready document (``Policy.from_dict(p.to_dict()) == p``)."""
        out: dict[str, Any] = {"version": VERSION}
        if self.name is not None:
            out["name"] = self.name
        if self.description is not None:
            out["description"] = self.description
        for section in self.sections:
            out[section.key] = section.to_dict()
        return out

    @classmethod
    def from_text(cls, text: str | bytes, *, filename: str | None = None) -> Policy:
        """Read a JSON or YAML document (YAML when ``filename`` ends in .yaml/.yml, or when the
        text is not JSON and PyYAML is installed)."""
        if len(text) > MAX_DOCUMENT_BYTES:
            raise PolicyError("", f"the document is larger than {MAX_DOCUMENT_BYTES} bytes")
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise PolicyError("", f"not UTF-8 text: {exc}") from None
        want_yaml = filename is not None and filename.lower().endswith((".yaml", ".yml"))
        if not want_yaml:
            try:
                doc = json.loads(text, object_pairs_hook=_unique_keys)
            except json.JSONDecodeError as exc:
                if filename is not None and filename.lower().endswith(".json"):
                    raise PolicyError("", f"not valid JSON: {exc}") from None
                json_error = exc
            except RecursionError:
                raise PolicyError("", "the document nests too deeply") from None
            except PolicyError:
                raise
            except ValueError as exc:  # a number beyond Python's 4300-digit conversion limit
                raise PolicyError("", f"cannot read the document: {exc}") from None
            else:
                return cls.from_dict(doc)
            try:
                import yaml  # noqa: F401
            except ImportError:
                raise PolicyError("", f"not valid JSON: {json_error}") from None
        return cls.from_dict(_load_yaml(text))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Policy:
        """Read a policy file (JSON, or YAML by its .yaml/.yml name)."""
        p = Path(path)
        with p.open("rb") as f:
            data = f.read(MAX_DOCUMENT_BYTES + 1)
        return cls.from_text(data, filename=p.name)

    def to_json(self) -> str:
        """The document as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the document atomically: JSON, or YAML when the name ends in .yaml/.yml."""
        p = Path(path)
        if p.name.lower().endswith((".yaml", ".yml")):
            yaml = _yaml_module()
            text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)
        else:
            text = self.to_json()
        write_atomic(p, text.encode("utf-8"), mode=0o644)

    # -- judging ------------------------------------------------------------------------------

    def section(self, key: str) -> Section | None:
        """The section stored under ``key``, if the policy has it."""
        return next((s for s in self.sections if s.key == key), None)

    def evaluate(self, quote_result: Any = None, event_log_result: Any = None, *,
                 ima: Any = None) -> PolicyResult:
        """Judge verified evidence: every violation of every rule, never an exception for a
        failing rule. ``quote_result``: a ``verify.QuoteResult``; ``event_log_result``: a
        ``verify.EventLogResult``; ``ima``: a verified IMA result. Pass what you verified."""
        evidence = Evidence(quote=quote_result, event_log=event_log_result, ima=ima)
        return PolicyResult(tuple(violations_of(self.sections, evidence)),
                            tuple(s.key for s in self.sections))


def learn(quote_result: Any = None, event_log_result: Any = None, *, ima: Any = None,
          name: str | None = None, sections: Iterable[str] | None = None) -> Policy:
    """A policy that exactly describes a known-good machine's verified evidence.

    Start from a golden machine, then loosen rules by hand. ``sections`` limits what is
    learned to those keys (default: every section that has something to say)."""
    wanted = set(_BY_KEY) if sections is None else set(sections)
    unknown = wanted - set(_BY_KEY)
    if unknown:
        raise PolicyError(sorted(unknown)[0], f"unknown policy section (known: {', '.join(_BY_KEY)})")
    evidence = Evidence(quote=quote_result, event_log=event_log_result, ima=ima)
    learned = [s for cls in SECTIONS if cls.key in wanted and (s := cls.learn(evidence)) is not None]
    return Policy(tuple(learned), name=name)


def _unique_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """A JSON object whose keys are all different: parsers keep the last of a repeated key, so
    a rule written first would vanish without a word."""
    out: dict[Any, Any] = {}
    for key, value in pairs:
        if key in out:
            raise PolicyError(str(key), "given twice in the same object")
        out[key] = value
    return out


def _yaml_module() -> Any:
    try:
        import yaml
    except ImportError:
        raise PolicyError("", "YAML policies need PyYAML: pip install 'tpm2-attest[yaml]'") from None
    return yaml


def _load_yaml(text: str) -> Mapping[str, Any]:
    yaml = _yaml_module()

    class UniqueKeyLoader(yaml.SafeLoader):  # type: ignore[name-defined,misc]
        """SafeLoader refusing a key given twice in one mapping (PyYAML keeps the last) and any
        alias (nested aliases expand exponentially when the document is walked)."""

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise PolicyError("", f"YAML aliases are not accepted in a policy (line "
                                  f"{mark.line + 1}): write the value out")
            return super().compose_node(parent, index)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if duplicate:
                    raise PolicyError(str(key), "given twice in the same mapping")
            return super().construct_mapping(node, deep=deep)

    try:
        doc = yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader subclass: safe
    except yaml.YAMLError as exc:
        raise PolicyError("", f"not valid YAML: {exc}") from None
    except RecursionError:
        raise PolicyError("", "the document nests too deeply") from None
    except PolicyError:
        raise
    except ValueError as exc:  # a number beyond Python's 4300-digit conversion limit
        raise PolicyError("", f"cannot read the document: {exc}") from None
    try:
        return mapping(_string_keys(doc), "")
    except RecursionError:
        raise PolicyError("", "the document nests too deeply") from None


def _string_keys(value: Any) -> Any:
    """YAML reads ``7:`` as the integer 7: policy keys are strings (PCR indices included); ``7``
    and ``'7'`` in one mapping are then the same key given twice."""
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for k, v in value.items():
            key = str(k) if isinstance(k, int) and not isinstance(k, bool) else k
            if key in out:
                raise PolicyError(str(key), "given twice in the same mapping")
            out[key] = _string_keys(v)
        return out
    if isinstance(value, list):
        return [_string_keys(v) for v in value]
    return value


__all__ = ["MAX_DOCUMENT_BYTES", "SECTIONS", "VERSION", "Policy", "learn"]
