"""The ``ima`` section: which files, keys and buffers a verified IMA list may show.

```json
"ima": {
  "digests": {"/usr/bin/bash": ["sha256:<hex>", "<hex>"], "boot_aggregate": ["<hex>"]},
  "excludes": ["/tmp/.*", "/var/log/.*"],
  "keys": ["-----BEGIN PUBLIC KEY-----...", {"key": "<base64 DER>", "keyid": "0x531f4025"}],
  "keyrings": {".ima": ["<hex>"]},
  "ignored_keyrings": [".builtin_trusted_keys"],
  "buffers": {"kexec-cmdline": ["<hex>"]},
  "allow_violations": false
}
```

Each verified entry of :class:`~tpm2_attest.verify.ImaResult` must be accounted for, in list
order, as keylime's runtime policies do:

- a path matching an ``excludes`` regular expression (whole path) is accepted;
- a ``boot_aggregate`` (the first entry, and the one a kernel started by kexec adds) is
  accepted when the verifier matched it to the quoted PCRs 0-9, or when its digest is listed
  under ``digests["boot_aggregate"]``;
- an entry with a file signature (``ima-sig``...) is accepted when its digest is listed, or
  when the signature (v2, or v3 over ``ima_file_id``) verifies under a trusted key: one of
  ``keys``, or a key the list itself shows loaded onto a keyring the policy allows;
- an ``ima-buf`` entry whose buffer is a key or certificate loaded onto keyring K is accepted
  when K is ignored (``ignored_keyrings``, ``*`` for all) or its digest is listed under
  ``keyrings[K]``, and then trusts that key for later signatures; any other buffer must be
  listed under ``buffers`` by its name;
- any other entry's path must be listed under ``digests`` with its digest: a bare hex value
  matches a digest of any algorithm, ``alg:hex`` only that algorithm;
- a violation (ToMToU / open-writers: the kernel extended 0xff... and the entry's fields are
  bound to nothing) is refused unless ``allow_violations``;
- a list verified from its first entry must start with ``boot_aggregate`` (the kernel always
  measures it first) unless ``require_boot_aggregate`` is false.

Rule ids: ``ima.no_evidence``, ``ima.unknown_file``, ``ima.digest``, ``ima.boot_aggregate``,
``ima.keyring``, ``ima.buffer``, ``ima.violation``, ``ima.template`` (an entry of a template
without a path or digest: unknown templates, malformed digests).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..ima import algorithms
from ..ima.aggregate import BOOT_AGGREGATE_NAME
from ..ima.entry import ImaDigest, ImaEntry
from ..ima.signatures import TrustedKey, key_from_bytes, keyid_of, load_key, parse_signature
from .base import (
    Evidence,
    PolicyError,
    Section,
    Violation,
    boolean,
    capped,
    join,
    mapping,
    only_keys,
    regex,
    sequence,
    string,
)

_KEYS = ("digests", "excludes", "keys", "keyrings", "ignored_keyrings", "buffers", "allow_violations",
         "require_boot_aggregate")
_HEX = re.compile(r"[0-9a-fA-F]{32,256}")
_MAX_KEY_BUFFER = 64 << 10
_REHASH = ("sha256", "sha1", "sha384", "sha512")


def _shown(name: str | None) -> str | None:
    """A path or name from the list as violations show it: the kernel lists file names as raw
    bytes, kept as surrogates by the parser (``surrogateescape``); those cannot be encoded as
    UTF-8 JSON, so undecodable bytes are shown as ``\\xNN``."""
    if name is None or name.isascii():
        return name
    raw = name.encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class Digests:
    """The acceptable digests of one name: bare values (any algorithm) and ``alg:value``."""

    any_alg: frozenset[bytes] = frozenset()
    by_alg: frozenset[tuple[str, bytes]] = frozenset()
    text: tuple[str, ...] = ()

    def accepts(self, d: ImaDigest) -> bool:
        if d.digest in self.any_alg:
            return True
        alg = algorithms.canonical(d.algorithm)
        return alg is not None and (alg, d.digest) in self.by_alg

    @classmethod
    def parse(cls, value: Any, path: str) -> Digests:
        items = sequence(value, path)
        if not items:
            raise PolicyError(path, "an empty list allows nothing; remove the key instead")
        any_alg: set[bytes] = set()
        by_alg: set[tuple[str, bytes]] = set()
        text: list[str] = []
        for i, item in enumerate(items):
            ipath = join(path, i)
            s = string(item, ipath).strip()
            alg_text, colon, hexpart = s.rpartition(":")
            if _HEX.fullmatch(hexpart) is None or len(hexpart) % 2:
                raise PolicyError(ipath, f"expected a hex digest or <algorithm>:<hex>, got {s[:80]!r}")
            raw = bytes.fromhex(hexpart)
            if colon:
                alg = algorithms.canonical(alg_text)
                if alg is None:
                    raise PolicyError(ipath, f"unknown hash algorithm {alg_text!r}")
                if algorithms.DIGEST_SIZES[alg] != len(raw):
                    raise PolicyError(ipath, f"a {alg} digest is {algorithms.DIGEST_SIZES[alg]} bytes, "
                                      f"got {len(raw)}")
                by_alg.add((alg, raw))
                text.append(f"{alg}:{raw.hex()}")
            else:
                any_alg.add(raw)
                text.append(raw.hex())
        return cls(frozenset(any_alg), frozenset(by_alg), tuple(dict.fromkeys(text)))

    def merged(self, other: Digests) -> Digests:
        return Digests(self.any_alg | other.any_alg, self.by_alg | other.by_alg,
                       tuple(dict.fromkeys(self.text + other.text)))


def _digest_map(value: Any, path: str) -> dict[str, Digests]:
    return {name: Digests.parse(v, join(path, name)) for name, v in mapping(value, path).items()}


@dataclass(frozen=True)
class KeySpec:
    """A trusted signing key as the document wrote it."""

    text: str
    keyid: int | None
    trusted: TrustedKey = field(compare=False)

    def to_dict(self) -> Any:
        return self.text if self.keyid is None else {"key": self.text, "keyid": f"0x{self.keyid:08x}"}

    @classmethod
    def parse(cls, value: Any, path: str) -> KeySpec:
        keyid: int | None = None
        if isinstance(value, Mapping):
            only_keys(value, path, ("key", "keyid"))
            text = string(value.get("key"), join(path, "key"))
            if value.get("keyid") is not None:
                kid = value["keyid"]
                try:
                    keyid = int(kid, 0) if isinstance(kid, str) else int(kid)
                except (TypeError, ValueError):
                    raise PolicyError(join(path, "keyid"), f"expected a 32-bit key id, got {kid!r}") from None
                if isinstance(kid, bool) or not 0 <= keyid <= 0xFFFFFFFF:
                    raise PolicyError(join(path, "keyid"), f"expected a 32-bit key id, got {kid!r}")
        else:
            text = string(value, path)
        try:
            trusted = load_key(text, keyid=keyid, source=path)
        except ValueError as exc:
            raise PolicyError(path, str(exc)) from None
        return cls(text, keyid, trusted)


@dataclass(frozen=True)
class ImaSection(Section):
    """Allowed files, keys and buffers of a verified IMA measurement list."""

    key: ClassVar[str] = "ima"
    rules: ClassVar[tuple[str, ...]] = (
        "ima.no_evidence", "ima.unknown_file", "ima.digest", "ima.boot_aggregate", "ima.keyring",
        "ima.buffer", "ima.violation", "ima.template")
    digests: Mapping[str, Digests] = field(default_factory=dict)
    excludes: tuple[str, ...] = ()
    keys: tuple[KeySpec, ...] = ()
    keyrings: Mapping[str, Digests] = field(default_factory=dict)
    ignored_keyrings: tuple[str, ...] = ()
    buffers: Mapping[str, Digests] = field(default_factory=dict)
    allow_violations: bool = False
    require_boot_aggregate: bool = True

    def __post_init__(self) -> None:
        try:
            compiled = [re.compile(p) for p in self.excludes]
        except re.error as exc:
            raise PolicyError(join(self.key, "excludes"), f"not a valid regular expression: {exc}") from None
        if compiled:  # one alternation: a whole path matches it iff it matches one of them
            with contextlib.suppress(re.error):  # global inline flags: keep them apart
                compiled = [re.compile("|".join(f"(?:{p})" for p in self.excludes))]
        object.__setattr__(self, "_excludes", compiled)

    # -- document ----------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, doc: Any) -> ImaSection:
        top = mapping(doc, cls.key)
        only_keys(top, cls.key, _KEYS)
        path = cls.key
        excludes = tuple(regex(p, join(join(path, "excludes"), i)).pattern
                         for i, p in enumerate(sequence(top.get("excludes", []), join(path, "excludes"))))
        keys = tuple(KeySpec.parse(k, join(join(path, "keys"), i))
                     for i, k in enumerate(sequence(top.get("keys", []), join(path, "keys"))))
        ignored = tuple(string(k, join(join(path, "ignored_keyrings"), i)) for i, k in
                        enumerate(sequence(top.get("ignored_keyrings", []), join(path, "ignored_keyrings"))))
        return cls(
            digests=_digest_map(top.get("digests", {}), join(path, "digests")),
            excludes=excludes,
            keys=keys,
            keyrings=_digest_map(top.get("keyrings", {}), join(path, "keyrings")),
            ignored_keyrings=ignored,
            buffers=_digest_map(top.get("buffers", {}), join(path, "buffers")),
            allow_violations=boolean(top.get("allow_violations", False), join(path, "allow_violations")),
            require_boot_aggregate=boolean(top.get("require_boot_aggregate", True),
                                           join(path, "require_boot_aggregate")),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.digests:
            out["digests"] = {k: list(v.text) for k, v in self.digests.items()}
        if self.excludes:
            out["excludes"] = list(self.excludes)
        if self.keys:
            out["keys"] = [k.to_dict() for k in self.keys]
        if self.keyrings:
            out["keyrings"] = {k: list(v.text) for k, v in self.keyrings.items()}
        if self.ignored_keyrings:
            out["ignored_keyrings"] = list(self.ignored_keyrings)
        if self.buffers:
            out["buffers"] = {k: list(v.text) for k, v in self.buffers.items()}
        if self.allow_violations:
            out["allow_violations"] = True
        if not self.require_boot_aggregate:
            out["require_boot_aggregate"] = False
        return out

    # -- judging -----------------------------------------------------------------------------

    def excluded(self, path: str) -> bool:
        """Does a regular expression of ``excludes`` match the whole of ``path``?"""
        return any(p.fullmatch(path) for p in self.__dict__["_excludes"])

    def evaluate(self, evidence: Evidence) -> Iterator[Violation]:
        """The violations of :meth:`violations`, at most MAX_LISTED per rule (and one counting
        the rest): a list of thousands of unknown files must not make a result of megabytes."""
        if evidence.ima is None:
            yield Violation("ima.no_evidence", "no verified IMA measurement list: runtime integrity "
                            "cannot be judged")
            return
        by_rule: dict[str, list[Violation]] = {}
        for v in self.violations(evidence.ima):
            by_rule.setdefault(v.rule, []).append(v)
        for group in by_rule.values():
            yield from capped(group)

    def violations(self, result: Any) -> Iterator[Violation]:
        """Every violation of a verified IMA result (an ``ImaResult``), one per entry, in list
        order, uncapped: for tools that list every unknown file."""
        trusted: list[TrustedKey] = [k.trusted for k in self.keys]
        for keyring, buf in getattr(result, "key_buffers", ()):
            self._trust_measured(keyring, buf, None, trusted)
        if self.require_boot_aggregate and getattr(result, "boot_aggregate", None) == "absent":
            yield Violation("ima.boot_aggregate", "the IMA list does not start with a boot_aggregate: "
                            "it is not bound to this boot", seen="absent", wanted="verified")
        for e in result.entries:
            yield from self._judge(e, result, trusted)

    def _trust_measured(self, keyring: str, buf: bytes, digest: ImaDigest | None,
                        trusted: list[TrustedKey]) -> str | None:
        """Judge a key loaded onto ``keyring``: None when accepted (and then trusted, unless the
        keyring is ignored), else why not."""
        try:
            key, skid = key_from_bytes(buf)
        except ValueError as exc:
            if "*" in self.ignored_keyrings or keyring in self.ignored_keyrings:
                return None
            return str(exc)
        if key is None:
            return "not a key"
        if "*" in self.ignored_keyrings or keyring in self.ignored_keyrings:
            return None
        allowed = self.keyrings.get(keyring)
        if not self.excluded(keyring):
            if allowed is None:
                return f"keyring {keyring} is not in the policy"
            if digest is not None and not allowed.accepts(digest):
                return f"its digest {digest} is not allowed for keyring {keyring}"
            if digest is None and not any(  # carried over from earlier entries: rehash
                    allowed.accepts(ImaDigest(a, algorithms.digest(a, buf))) for a in _REHASH):
                return f"it is not allowed for keyring {keyring}"
        trusted.append(TrustedKey(key, skid if skid is not None else keyid_of(key), f"keyring {keyring}"))
        return None

    def _judge(self, e: ImaEntry, result: Any, trusted: list[TrustedKey]) -> Iterator[Violation]:
        path = e.path
        if e.violation:
            if self.allow_violations or (path is not None and self.excluded(path)):
                return
            yield Violation("ima.violation", f"entry {e.index}: a ToMToU/open-writers violation on "
                            f"{path!r} (the kernel measured a file open for writing; nothing is bound)",
                            seen={"index": e.index, "path": _shown(path)}, wanted="no violation")
            return
        d = e.digest
        if path is None or d is None:
            yield Violation("ima.template", f"entry {e.index}: template {e.template_name!r} has no "
                            "path and digest this policy can judge",
                            seen={"index": e.index, "template": e.template_name})
            return
        if path == BOOT_AGGREGATE_NAME and e.buffer is None:
            # the first entry, and the one a kernel started by kexec adds mid-list
            if self._boot_aggregate_matched(e, result) or self.excluded(path):
                return
            listed = self.digests.get(BOOT_AGGREGATE_NAME)
            if listed is None or not listed.accepts(d):
                status = getattr(result, "boot_aggregate", None) if e.index == 0 else "unmatched"
                yield Violation("ima.boot_aggregate", f"entry {e.index}: boot_aggregate {d} is neither "
                                f"matched to the quoted PCRs ({status}) nor listed",
                                seen=str(d), wanted=list(listed.text) if listed else None)
            return
        buf = e.buffer
        if buf is not None:
            yield from self._judge_buffer(e, path, d, buf, trusted)
            return
        listed = self.digests.get(path)
        if listed is not None and listed.accepts(d):
            return
        if self.excluded(path):
            return
        sig_note = ""
        if e.signature:
            why = self._signature_ok(e.signature, d, trusted)
            if why is None:
                return
            sig_note = f"; its signature: {why}"
        if listed is None:
            yield Violation("ima.unknown_file", f"entry {e.index}: {path!r} ({d}) is not in the "
                            f"allow-list{sig_note}", seen={"path": _shown(path), "digest": str(d)})
        else:
            yield Violation("ima.digest", f"entry {e.index}: {path!r} has digest {d}, the allow-list "
                            f"has {', '.join(listed.text)}{sig_note}",
                            seen={"path": _shown(path), "digest": str(d)}, wanted=list(listed.text))

    @staticmethod
    def _boot_aggregate_matched(e: ImaEntry, result: Any) -> bool:
        """Did the verifier find ``e`` equal to the boot_aggregate of the quoted PCRs?"""
        if e.index in getattr(result, "boot_aggregates", ()):
            return True
        return e.index == 0 and getattr(result, "boot_aggregate", None) == "verified"

    @staticmethod
    def _signature_ok(data: bytes, d: ImaDigest, trusted: list[TrustedKey]) -> str | None:
        sig = parse_signature(data)
        if isinstance(sig, str):
            return sig
        keys = [k for k in trusted if k.keyid == sig.keyid]
        if not keys:
            return f"no trusted key has id 0x{sig.keyid:08x}"
        if any(k.verify(sig, d) for k in keys):
            return None
        return f"it does not verify under the trusted key 0x{sig.keyid:08x}"

    def _judge_buffer(self, e: ImaEntry, name: str, d: ImaDigest, buf: bytes,
                      trusted: list[TrustedKey]) -> Iterator[Violation]:
        if len(buf) <= _MAX_KEY_BUFFER:
            why = self._trust_measured(name, buf, d, trusted)
            if why is None:
                return
            if why != "not a key":
                yield Violation("ima.keyring", f"entry {e.index}: a key loaded onto {name}: {why}",
                                seen={"keyring": _shown(name), "digest": str(d)},
                                wanted=list(self.keyrings[name].text) if name in self.keyrings else None)
                return
        if self.excluded(name):
            return
        listed = self.buffers.get(name)
        if listed is None or not listed.accepts(d):
            yield Violation("ima.buffer", f"entry {e.index}: buffer {name!r} ({d}) is not allowed",
                            seen={"name": _shown(name), "digest": str(d)},
                            wanted=list(listed.text) if listed else None)

    # -- learning ----------------------------------------------------------------------------

    @classmethod
    def learn(cls, evidence: Evidence) -> ImaSection | None:
        """Every verified file, key and buffer of a known-good machine, at its digest."""
        result = evidence.ima
        if result is None:
            return None
        digests: dict[str, Digests] = {}
        keyrings: dict[str, Digests] = {}
        buffers: dict[str, Digests] = {}
        violations = False
        self_matched = cls._boot_aggregate_matched
        for e in result.entries:
            if e.violation:
                violations = True
                continue
            d, path = e.digest, e.path
            if d is None or path is None:
                continue
            if path == BOOT_AGGREGATE_NAME and self_matched(e, result):
                continue
            one = Digests.parse([f"{algorithms.canonical(d.algorithm) or d.algorithm}:{d.hex}"]
                                if algorithms.canonical(d.algorithm) else [d.hex], path)
            target = digests
            if e.buffer is not None:
                try:
                    is_key = key_from_bytes(e.buffer)[0] is not None
                except ValueError:
                    is_key = False
                target = keyrings if is_key else buffers
            target[path] = target[path].merged(one) if path in target else one
        return cls(digests=digests, keyrings=keyrings, buffers=buffers, allow_violations=violations)


__all__ = ["Digests", "ImaSection", "KeySpec"]
