"""The ``boot`` section: which firmware, boot applications, GRUB files and kernel command lines.

```json
"boot": {
  "efi_apps": {"sha256": ["<digest hex>", ...]},
  "grub_files": {"sha256": ["<digest hex>", ...]},
  "kernel_cmdline": ["/vmlinuz root=/dev/sda1 ro", {"regex": "/vmlinuz-[0-9.]+ root=\\\\S+ ro( quiet)?"}],
  "scrtm_versions": ["GCE Virtual Firmware v1", {"hex": "0000"}],
  "min_gce_firmware_version": 1
}
```

Each key is an optional rule over ``EventLogResult.state``; a rule whose evidence is missing
(the PCRs it needs were not quoted, or the log has no such measurements) is violated.

- ``efi_apps`` (rule ``boot.efi_apps``): allow-list per bank of the digests measured into PCR 4
  (the boot applications' PE Authenticode digests, and any other PCR 4 measurement whose data
  does not describe itself). Every one must be listed.
- ``grub_files`` (``boot.grub_files``): allow-list per bank of the digests of the files GRUB
  measured into PCR 9 (configuration, kernel, initrd, modules lists), and of every other PCR 9
  measurement (its event type is not covered by its digest). Every one must be listed.
- ``kernel_cmdline`` (``boot.kernel_cmdline``): every kernel command line measured (GRUB's
  ``kernel_cmdline``, systemd's PCR 12 or PCR 8 command line) must equal one of the strings or
  fully match one of the ``{"regex": ...}`` patterns. GRUB's string begins with the kernel path.
  PCR 8/12 measurements the log does not explain violate it too (a hidden command line), and
  so does a log that measures into PCR 8 or 12 when the quote does not cover that PCR.
- ``scrtm_versions`` (``boot.scrtm_version``): the S-CRTM version (the firmware version PCR 0
  records) must be one of these: its text, or ``{"hex": ...}`` for the raw event data.
- ``min_gce_firmware_version`` (``boot.gce_firmware_version``): a GCE VM's virtual firmware
  version (from its S-CRTM version string) must be at least this.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..tpm2.constants import HASH_BY_NAME, HASH_SIZES
from .base import (
    MAX_LISTED,
    Evidence,
    PolicyError,
    Section,
    Violation,
    capped,
    hex_bytes,
    integer,
    join,
    mapping,
    only_keys,
    pcrs_missing,
    regex,
    sequence,
)

_Why = Callable[..., str]

MAX_CMDLINE = 64 << 10
"""A measured command line longer than this (no kernel accepts one) is refused unmatched, so a
hostile log cannot make a policy's regular expressions work on megabytes."""


@dataclass(frozen=True)
class CmdlinePattern:
    """An allowed kernel command line: an exact string, or a regular expression (fullmatch)."""

    text: str
    is_regex: bool = False
    compiled: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def matches(self, cmdline: str) -> bool:
        """True when ``cmdline`` is this string, or fully matches this expression."""
        if self.compiled is not None:
            return self.compiled.fullmatch(cmdline) is not None
        return cmdline == self.text

    def to_doc(self) -> Any:
        """The document form: the string, or ``{"regex": ...}``."""
        return {"regex": self.text} if self.is_regex else self.text


@dataclass(frozen=True)
class ScrtmVersion:
    """An allowed S-CRTM version: its text, or its raw bytes."""

    text: str | None = None
    raw: bytes | None = None

    def to_doc(self) -> Any:
        """The document form: the text, or ``{"hex": ...}``."""
        return self.text if self.raw is None else {"hex": self.raw.hex()}


def _digest_lists(value: Any, path: str) -> dict[str, frozenset[bytes]]:
    out: dict[str, frozenset[bytes]] = {}
    for bank, values in mapping(value, path).items():
        bpath = join(path, bank)
        alg = HASH_BY_NAME.get(bank)
        if alg is None:
            raise PolicyError(bpath, f"unknown bank (known: {', '.join(sorted(HASH_BY_NAME))})")
        size = HASH_SIZES[alg]
        out[bank] = frozenset(hex_bytes(v, join(bpath, i), sizes=(size,))
                              for i, v in enumerate(sequence(values, bpath)))
    if not out:
        raise PolicyError(path, "list the allowed digests of at least one bank")
    return out


@dataclass(frozen=True)
class BootSection(Section):
    """Boot chain rules over ``EventLogResult.state`` (PCRs 0, 4, 8, 9, 12)."""

    key: ClassVar[str] = "boot"
    rules: ClassVar[tuple[str, ...]] = (
        "boot.efi_apps", "boot.grub_files", "boot.kernel_cmdline", "boot.scrtm_version",
        "boot.gce_firmware_version")

    efi_apps: Mapping[str, frozenset[bytes]] | None = None
    grub_files: Mapping[str, frozenset[bytes]] | None = None
    kernel_cmdline: tuple[CmdlinePattern, ...] = ()
    scrtm_versions: tuple[ScrtmVersion, ...] = ()
    min_gce_firmware_version: int | None = None

    @classmethod
    def from_dict(cls, doc: Any) -> BootSection:
        """Read the section (see the module docstring); :class:`PolicyError` names the key."""
        top = mapping(doc, cls.key)
        only_keys(top, cls.key, ("efi_apps", "grub_files", "kernel_cmdline", "scrtm_versions",
                                 "min_gce_firmware_version"))
        efi = _digest_lists(top["efi_apps"], join(cls.key, "efi_apps")) if "efi_apps" in top else None
        grub = (_digest_lists(top["grub_files"], join(cls.key, "grub_files"))
                if "grub_files" in top else None)
        cmdlines: list[CmdlinePattern] = []
        if "kernel_cmdline" in top:
            path = join(cls.key, "kernel_cmdline")
            items = sequence(top["kernel_cmdline"], path)
            if not items:
                raise PolicyError(path, "an empty list allows nothing; remove the key instead")
            for i, item in enumerate(items):
                ipath = join(path, i)
                if isinstance(item, str):
                    cmdlines.append(CmdlinePattern(item))
                else:
                    m = mapping(item, ipath)
                    only_keys(m, ipath, ("regex",))
                    if "regex" not in m:
                        raise PolicyError(ipath, 'expected a string or {"regex": "..."}')
                    rx = regex(m["regex"], join(ipath, "regex"))
                    cmdlines.append(CmdlinePattern(rx.pattern, True, rx))
        versions: list[ScrtmVersion] = []
        if "scrtm_versions" in top:
            path = join(cls.key, "scrtm_versions")
            items = sequence(top["scrtm_versions"], path)
            if not items:
                raise PolicyError(path, "an empty list allows nothing; remove the key instead")
            for i, item in enumerate(items):
                ipath = join(path, i)
                if isinstance(item, str):
                    versions.append(ScrtmVersion(text=item))
                else:
                    m = mapping(item, ipath)
                    only_keys(m, ipath, ("hex",))
                    if "hex" not in m:
                        raise PolicyError(ipath, 'expected a string or {"hex": "..."}')
                    versions.append(ScrtmVersion(raw=hex_bytes(m["hex"], join(ipath, "hex"))))
        gce = None
        if "min_gce_firmware_version" in top:
            gce = integer(top["min_gce_firmware_version"], join(cls.key, "min_gce_firmware_version"),
                          minimum=0, maximum=0xFFFFFFFF)
        return cls(efi, grub, tuple(dict.fromkeys(cmdlines)), tuple(dict.fromkeys(versions)), gce)

    def to_dict(self) -> dict[str, Any]:
        """The section as a document (``from_dict(to_dict())`` gives an equal section)."""
        out: dict[str, Any] = {}
        if self.efi_apps is not None:
            out["efi_apps"] = {b: sorted(d.hex() for d in v) for b, v in self.efi_apps.items()}
        if self.grub_files is not None:
            out["grub_files"] = {b: sorted(d.hex() for d in v) for b, v in self.grub_files.items()}
        if self.kernel_cmdline:
            out["kernel_cmdline"] = [c.to_doc() for c in self.kernel_cmdline]
        if self.scrtm_versions:
            out["scrtm_versions"] = [v.to_doc() for v in self.scrtm_versions]
        if self.min_gce_firmware_version is not None:
            out["min_gce_firmware_version"] = self.min_gce_firmware_version
        return out

    # -- judging --------------------------------------------------------------------------------

    def evaluate(self, evidence: Evidence) -> Iterator[Violation]:
        """Every violated boot rule (each configured rule, when its evidence is missing)."""
        state = getattr(evidence.event_log, "state", None)
        why = _missing(evidence)
        if self.efi_apps is not None:
            yield from self._efi_apps(state, why)
        if self.grub_files is not None:
            yield from self._grub_files(state, why)
        if self.kernel_cmdline:
            uncovered = frozenset(getattr(evidence.event_log, "uncovered", frozenset()))
            yield from self._kernel_cmdline(state, why, uncovered)
        if self.scrtm_versions:
            yield from self._scrtm(state, why)
        if self.min_gce_firmware_version is not None:
            yield from self._gce(state, why)

    def _efi_apps(self, state: Any, why: _Why) -> Iterator[Violation]:
        rule = "boot.efi_apps"
        efi = getattr(state, "efi", None)
        if efi is None:
            yield Violation(rule, f"no verified EFI boot applications: {why(4)}")
            return
        allowed = _bank(rule, self.efi_apps or {}, state.bank)
        if isinstance(allowed, Violation):
            yield allowed
            return
        yield from capped(_unlisted(rule, state.bank, allowed, 4, efi.other,
                                    ((a, f"EFI application {_cut(a.path) or '(no path)'}", "path", _cut(a.path))
                                     for a in efi.apps)))

    def _grub_files(self, state: Any, why: _Why) -> Iterator[Violation]:
        rule = "boot.grub_files"
        grub = getattr(state, "grub", None)
        if grub is None or grub.files is None:
            yield Violation(rule, "no verified GRUB file measurements: "
                            + (why(9) if grub is None else "PCR 9 not covered by the quote"))
            return
        allowed = _bank(rule, self.grub_files or {}, state.bank)
        if isinstance(allowed, Violation):
            yield allowed
            return
        yield from capped(_unlisted(rule, state.bank, allowed, 9, getattr(grub, "other", ()),
                                    ((f, f"GRUB file {_cut(f.name)}", "name", _cut(f.name)) for f in grub.files)))

    def _kernel_cmdline(self, state: Any, why: _Why, uncovered: frozenset[int]) -> Iterator[Violation]:
        rule = "boot.kernel_cmdline"
        linux = getattr(state, "linux", None)
        grub = getattr(state, "grub", None)
        hidden = sorted(set(grub.unverified if grub is not None else ())
                        | set(getattr(linux, "unexplained", ()) or ()))
        if hidden:
            yield Violation(rule, f"PCR 8/12 hold {len(hidden)} measurement(s) the log does "
                            "not explain (a command line may be hidden)",
                            seen={"events": hidden[:MAX_LISTED]})
        unquoted = sorted(uncovered & {8, 12})
        if unquoted:
            yield Violation(rule, f"the log measures into PCR {'/'.join(map(str, unquoted))}, which "
                            "the quote does not cover: the command lines there are not verified",
                            seen={"pcrs": unquoted})
        cmdlines = linux.cmdlines if linux is not None else ()
        if not cmdlines:
            yield Violation(rule, f"no verified kernel command line: {why(8, 12)}")
            return
        wanted = [c.to_doc() for c in self.kernel_cmdline[:MAX_LISTED]]
        found = []
        for c in cmdlines:
            if len(c.text) > MAX_CMDLINE:
                ok = False
            else:
                ok = any(p.matches(c.text) for p in self.kernel_cmdline)
            if not ok:
                found.append(Violation(rule, f"kernel command line {_cut(c.text)!r} ({c.source}, "
                                       f"event {c.index}) is not allowed",
                                       seen=_cut(c.text), wanted=wanted))
        yield from capped(found)

    def _scrtm(self, state: Any, why: _Why) -> Iterator[Violation]:
        rule = "boot.scrtm_version"
        p = getattr(state, "platform", None)
        if p is None or p.scrtm_version is None:
            yield Violation(rule, "no verified S-CRTM version: "
                            + (why(0) if p is None else "PCR 0 holds no EV_S_CRTM_VERSION event"))
            return
        for v in self.scrtm_versions:
            if (v.raw is not None and v.raw == p.scrtm_version) or (
                    v.text is not None and v.text == p.scrtm_version_text):
                return
        seen = p.scrtm_version_text if p.scrtm_version_text is not None else p.scrtm_version.hex()
        yield Violation(rule, f"S-CRTM version {_cut(seen)!r} is not allowed", seen=_cut(seen),
                        wanted=[v.to_doc() for v in self.scrtm_versions[:MAX_LISTED]])

    def _gce(self, state: Any, why: _Why) -> Iterator[Violation]:
        rule = "boot.gce_firmware_version"
        p = getattr(state, "platform", None)
        minimum = self.min_gce_firmware_version
        if p is None:
            yield Violation(rule, f"no verified GCE firmware version: {why(0)}", wanted=minimum)
        elif p.gce_firmware_version is None:
            yield Violation(rule, "the S-CRTM version is not a GCE virtual firmware version",
                            seen=_cut(p.scrtm_version_text), wanted=minimum)
        elif minimum is not None and p.gce_firmware_version < minimum:
            yield Violation(rule, f"GCE firmware version {p.gce_firmware_version} is below "
                            f"{minimum}", seen=p.gce_firmware_version, wanted=minimum)

    @classmethod
    def learn(cls, evidence: Evidence) -> BootSection | None:
        """Exactly the boot seen: its PCR 4 digests, GRUB file digests, command lines, S-CRTM
        version and GCE firmware version (each only when the log showed it)."""
        state = getattr(evidence.event_log, "state", None)
        if state is None:
            return None
        efi = {state.bank: frozenset(state.efi.digests)} if state.efi is not None else None
        grub = None
        if state.grub is not None and state.grub.files is not None:
            grub = {state.bank: frozenset(state.grub.digests)}
        cmdlines: tuple[CmdlinePattern, ...] = ()
        if state.linux is not None:
            cmdlines = tuple(dict.fromkeys(CmdlinePattern(c.text) for c in state.linux.cmdlines))
        versions: tuple[ScrtmVersion, ...] = ()
        gce = None
        p = state.platform
        if p is not None and p.scrtm_version is not None:
            versions = ((ScrtmVersion(text=p.scrtm_version_text),) if p.scrtm_version_text is not None
                        else (ScrtmVersion(raw=p.scrtm_version),))
            gce = p.gce_firmware_version
        section = cls(efi, grub, cmdlines, versions, gce)
        return section if section.to_dict() else None


def _bank(rule: str, lists: Mapping[str, frozenset[bytes]], bank: str) -> frozenset[bytes] | Violation:
    allowed = lists.get(bank)
    if allowed is None:
        return Violation(rule, f"the log was verified in the {bank} bank; the policy lists "
                         f"{', '.join(sorted(lists))} digests", seen=bank, wanted=sorted(lists))
    return allowed


def _cut(text: str | None, limit: int = 256) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 3] + "..."


def _unlisted(rule: str, bank: str, allowed: Any, pcr: int, other: Iterable[Any],
              named: Iterable[tuple[Any, str, str, str | None]]) -> list[Violation]:
    """A violation for each measurement whose digest the policy does not allow: the named
    ones (measurement, what it is, the key and value ``seen`` names it by), then the PCR's
    other measurements (by event type)."""
    found = [Violation(rule, f"{what} (event {m.index}) has {bank} digest {m.digest.hex()}, "
                       "which the policy does not allow", seen={"digest": m.digest.hex(), key: value})
             for m, what, key, value in named if m.digest not in allowed]
    found += [Violation(rule, f"PCR {pcr} {m.event_type} measurement (event {m.index}) has {bank} digest "
                        f"{m.digest.hex()}, which the policy does not allow",
                        seen={"digest": m.digest.hex(), "event_type": m.event_type})
              for m in other if m.digest not in allowed]
    return found


def _missing(evidence: Evidence) -> _Why:
    """A function naming why the evidence of some PCRs is missing."""
    log = evidence.event_log

    def why(*pcrs: int) -> str:
        return pcrs_missing(log, pcrs)

    return why


__all__ = ["MAX_CMDLINE", "BootSection", "CmdlinePattern", "ScrtmVersion"]
