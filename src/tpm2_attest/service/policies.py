"""Policies in the database: validating documents, seeding them from a file, judging evidence.

A policy is a ``tpm2_attest.policy.Policy`` document stored under a name, in versions that are
never changed (``PUT`` adds one). Assignments say which policy judges the fleet (``default``),
a tag, or one device; the newest version of the assigned policy judges the next attestation
(no restart: every attestation reads its assignments). A device with its own assignment is
judged by that policy only; otherwise by the policies of all its tags (each must pass);
otherwise by the default; otherwise by none.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..policy import Policy, PolicyError
from ..policy.document import _unique_keys
from . import store

SEED_ACTOR: Final = "seed:--pcr-policy"
NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""Policy names and tags: letters, digits, ``.``, ``_``, ``-``; at most 64 characters."""


def parse(document: Any) -> Policy:
    """Validate a policy document; :class:`PolicyError` names the offending key."""
    try:
        return Policy.from_dict(document)
    except RecursionError:
        raise PolicyError("", "the document nests too deeply") from None


@dataclass(frozen=True)
class Verdict:
    """The judgement of verified evidence by the policies that apply to a device."""

    policies: list[dict[str, Any]]
    """``[{"name", "version"}]``."""
    violations: list[dict[str, Any]]
    """``Violation.to_dict()`` plus ``policy``: the name of the policy that was violated."""
    freshness: float | None
    """The shortest freshness of the applied policies (None when none sets one)."""

    @property
    def ok(self) -> bool:
        return not self.violations

    def failed_rules(self) -> list[str]:
        return list(dict.fromkeys(v["rule"] for v in self.violations))


class PolicyCache:
    """Parsed policies by (name, version): versions never change, so parsing each once per
    process is exact. Bounded (least recently used out)."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._items: OrderedDict[tuple[str, int], Policy] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str, version: int, document: Any) -> Policy:
        key = (name, version)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        policy = parse(document)
        with self._lock:
            self._items[key] = policy
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return policy


def judge(cache: PolicyCache, applied: list[tuple[str, int, Any, float | None]], quote_result: Any,
          event_log_result: Any, ima_result: Any = None) -> Verdict:
    """Evaluate every applied policy over the verified results."""
    refs: list[dict[str, Any]] = []
    violations: list[dict[str, Any]] = []
    windows = [f for *_x, f in applied if f is not None]
    for name, version, document, _freshness in applied:
        refs.append({"name": name, "version": version})
        try:
            policy = cache.get(name, version, document)
        except PolicyError as exc:  # stored before this release's rules: fail closed
            violations.append({"rule": "policy.invalid", "detail": str(exc), "policy": name})
            continue
        result = policy.evaluate(quote_result, event_log_result, ima=ima_result)
        violations.extend({**v.to_dict(), "policy": name} for v in result.violations)
    return Verdict(refs, violations, min(windows) if windows else None)


# -- seeding from a file ------------------------------------------------------------------------


def documents_from_file(path: str | Path) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """Read a ``--pcr-policy`` file: a policy document (``tpm2_attest.policy``), or the PCR
    file of earlier releases ``{"default": {bank: {index: hex}}, "devices": {id: {...}}}``.
    Returns (the default policy document, {device id: document}); PolicyError names the key."""
    p = Path(path)
    with p.open("rb") as f:
        raw = f.read(16 << 20)
    try:  # a key given twice is an error, as Policy.load has it (json keeps the last one)
        obj = json.loads(raw, object_pairs_hook=_unique_keys)
    except PolicyError:
        raise
    except (ValueError, RecursionError):
        return parse_text(raw, p.name).to_dict(), {}
    if isinstance(obj, dict) and obj and set(obj) <= {"default", "devices"}:
        default = parse({"pcrs": obj["default"]}).to_dict() if "default" in obj else None
        devices_in = obj.get("devices", {})
        if not isinstance(devices_in, dict):
            raise PolicyError("devices", "expected an object mapping device ids to PCR values")
        devices = {}
        for device_id, pcrs in devices_in.items():
            try:
                devices[str(device_id)] = parse({"pcrs": pcrs}).to_dict()
            except PolicyError as exc:
                raise PolicyError(f"devices.{device_id}.{exc.key}", exc.message) from None
        return default, devices
    return parse(obj).to_dict(), {}


def parse_text(raw: bytes, filename: str) -> Policy:
    return Policy.from_text(raw, filename=filename)


def seed(s: Session, path: str | Path, now: datetime) -> list[str]:
    """Store the file's policies (a new version only where the document changed) and assign
    them where nothing is assigned yet: ``default`` to the fleet, ``device-<id>`` to each listed
    device. Returns the names
    that got a new version. Committed; safe when several processes seed at once."""
    default, devices = documents_from_file(path)
    wanted: list[tuple[str, str, str, dict[str, Any]]] = []
    if default is not None:
        wanted.append(("default", "", "default", default))
    wanted.extend(("device", device_id, f"device-{device_id}"[:64], doc) for device_id, doc in devices.items())
    changed = []
    for kind, target, name, doc in wanted:
        try:
            current = store.latest_policy(s, name)
            if current is None or current.document != doc:
                store.add_policy_version(s, name, doc, None, SEED_ACTOR, now)
                store.audit(s, now, SEED_ACTOR, "policy.put", name, {"source": str(path)})
                changed.append(name)
            if store.assignment(s, kind, target) is None:  # seed, never override an operator
                store.assign_policy(s, kind, target, name, SEED_ACTOR, now)
            s.commit()
        except IntegrityError:  # another process seeded the same version first
            s.rollback()
    return changed


__all__ = ["NAME_PATTERN", "PolicyCache", "Verdict", "documents_from_file", "judge", "parse", "seed"]
