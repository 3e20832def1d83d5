"""Import keylime runtime policies (the JSON keylime's verifier and ``keylime-policy`` use).

```json
{"meta": {"version": 1, "generator": 3, "timestamp": "..."}, "release": 0,
 "digests": {"/usr/bin/bash": ["<hex>", ...]}, "excludes": ["/tmp/.*"],
 "keyrings": {".ima": ["<hex>"]}, "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1",
 "dm_policy": null}, "ima-buf": {"kexec-cmdline": ["<hex>"]},
 "verification-keys": "{\\"pubkeys\\": [\\"<base64 DER>\\"], \\"keyids\\": [4081397027]}"}
```

The document maps onto the ``ima`` section with keylime's meaning kept: digests match
whatever algorithm the entry used; an exclude matches when it matches the *start* of a path
(keylime applies ``re.match``; the section matches whole paths, so ``p`` becomes
``(?:p)(?s:.*)``); ``verification-keys`` (a JSON string) and the ``keys`` argument are the
trusted signing keys. ``ima.log_hash_alg`` is checked but not needed (the verifier reads the
algorithm from the list). Keys keylime does not define are errors naming them; so is a
device-mapper policy (``ima.dm_policy``), which this library does not evaluate, and a
DSSE-signed envelope (verify it and pass its payload).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .base import PolicyError, integer, join, mapping, only_keys, sequence, string
from .document import Policy
from .ima import Digests, ImaSection, KeySpec

TOP_KEYS = ("meta", "release", "digests", "excludes", "keyrings", "ima", "ima-buf", "verification-keys")
META_KEYS = ("version", "generator", "timestamp")
IMA_KEYS = ("ignored_keyrings", "log_hash_alg", "dm_policy")
LOG_HASH_ALGS = ("sha1", "sha256", "sha384", "sha512", "sm3_256")
"""keylime's ``algorithms.Hash`` names."""
RUNTIME_POLICY_VERSION = 1


def _load(doc: Any) -> Mapping[str, Any]:
    if isinstance(doc, bytes | bytearray):
        try:
            doc = bytes(doc).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyError("", f"not UTF-8 text: {exc}") from None
    if isinstance(doc, str):
        try:
            doc = json.loads(doc)
        except json.JSONDecodeError as exc:
            raise PolicyError("", f"not valid JSON: {exc}") from None
        except RecursionError:
            raise PolicyError("", "the document nests too deeply") from None
    top = mapping(doc, "")
    if "payload" in top and "signatures" in top:
        raise PolicyError("payload", "a DSSE-signed runtime policy: verify the envelope's signature "
                          "and import its decoded payload")
    return top


def _digests(value: Any, path: str) -> dict[str, Digests]:
    out: dict[str, Digests] = {}
    for name, v in mapping(value, path).items():
        out[name] = Digests.parse(v, join(path, name))
    return out


def _exclude(value: Any, path: str) -> str:
    pattern = string(value, path)
    converted = f"(?:{pattern})(?s:.*)"
    try:
        re.compile(converted)
    except re.error as exc:
        raise PolicyError(path, f"not a valid regular expression: {exc}") from None
    return converted


def _verification_keys(value: Any, path: str) -> list[KeySpec]:
    text = string(value, path)
    if not text.strip():
        return []
    try:
        obj = json.loads(text)
        if isinstance(obj, str):  # keylime stores it JSON-encoded twice at times
            obj = json.loads(obj)
    except json.JSONDecodeError as exc:
        raise PolicyError(path, f"not a JSON keyring: {exc}") from None
    ring = mapping(obj, path)
    only_keys(ring, path, ("meta", "pubkeys", "keyids"))
    if ring.get("meta") is not None:
        rmeta = mapping(ring["meta"], join(path, "meta"))
        only_keys(rmeta, join(path, "meta"), ("version",))
        integer(rmeta.get("version"), join(join(path, "meta"), "version"), minimum=1)
    pubkeys = sequence(ring.get("pubkeys", []), join(path, "pubkeys"))
    keyids = sequence(ring.get("keyids", []), join(path, "keyids"))
    if len(keyids) > len(pubkeys):
        raise PolicyError(join(path, "keyids"), f"{len(keyids)} key ids for {len(pubkeys)} keys")
    specs = []
    for i, b64 in enumerate(pubkeys):
        kpath = join(join(path, "pubkeys"), i)
        item: dict[str, Any] = {"key": string(b64, kpath)}
        if i < len(keyids):
            item["keyid"] = integer(keyids[i], join(join(path, "keyids"), i), minimum=0, maximum=0xFFFFFFFF)
        specs.append(KeySpec.parse(item, kpath))
    return specs


def _key_text(key: str | bytes) -> str:
    """A key file's content as a policy keeps it: PEM as it is, DER as base64 (decoding DER as
    text would mangle it)."""
    if not isinstance(key, bytes | bytearray):
        return key
    raw = bytes(key)
    if raw.lstrip().startswith(b"-----BEGIN"):
        return raw.decode("ascii", "replace")
    return base64.b64encode(raw).decode("ascii")


def ima_section_from_keylime(doc: Any, *, keys: Iterable[str | bytes] = (),
                             allow_violations: bool = True) -> ImaSection:
    """The ``ima`` section equivalent to a keylime runtime policy (see the module docstring)."""
    top = _load(doc)
    only_keys(top, "", TOP_KEYS)
    meta = mapping(top.get("meta", {"version": RUNTIME_POLICY_VERSION}), "meta")
    only_keys(meta, "meta", META_KEYS)
    version = integer(meta.get("version", RUNTIME_POLICY_VERSION), join("meta", "version"), minimum=0)
    if version != RUNTIME_POLICY_VERSION:
        raise PolicyError("meta.version", f"keylime runtime policy version {RUNTIME_POLICY_VERSION} "
                          f"is supported, got {version}")
    if meta.get("generator") is not None:
        integer(meta["generator"], "meta.generator", minimum=0)
    if meta.get("timestamp") is not None:
        string(meta["timestamp"], "meta.timestamp")
    if top.get("release") is not None:
        integer(top["release"], "release", minimum=0)
    ima = mapping(top.get("ima", {}), "ima")
    only_keys(ima, "ima", IMA_KEYS)
    ignored = tuple(string(k, join("ima.ignored_keyrings", i))
                    for i, k in enumerate(sequence(ima.get("ignored_keyrings", []), "ima.ignored_keyrings")))
    alg = ima.get("log_hash_alg", "sha1")
    if string(alg, "ima.log_hash_alg") not in LOG_HASH_ALGS:
        raise PolicyError("ima.log_hash_alg", f"expected one of {', '.join(LOG_HASH_ALGS)}, got {alg!r}")
    if ima.get("dm_policy") is not None:
        raise PolicyError("ima.dm_policy", "device-mapper policies are not evaluated by this library "
                          "(set it to null, or judge dm-crypt/dm-verity ima-buf entries by digest)")
    specs = _verification_keys(top.get("verification-keys", ""), "verification-keys")
    for i, k in enumerate(keys):
        specs.append(KeySpec.parse(_key_text(k), f"keys[{i}]"))
    excludes = tuple(_exclude(p, join("excludes", i))
                     for i, p in enumerate(sequence(top.get("excludes", []), "excludes")))
    return ImaSection(
        digests=_digests(top.get("digests", {}), "digests"),
        excludes=excludes,
        keys=tuple(specs),
        keyrings=_digests(top.get("keyrings", {}), "keyrings"),
        ignored_keyrings=ignored,
        buffers=_digests(top.get("ima-buf", {}), "ima-buf"),
        allow_violations=allow_violations,
        require_boot_aggregate=False,  # keylime judges boot_aggregate only as a listed file
    )


LEGACY_KEYS = ("meta", "release", "hashes", "excludes", "keyrings", "ima", "ima-buf", "verification-keys")
"""The keys of keylime's JSON allow-lists (versions 1-6) and what its converter carries over."""


def _text(value: Any, what: str) -> str:
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyError("", f"{what} is not UTF-8 text: {exc}") from None
    return string(value, "")


def _legacy_document(allowlist: Any) -> dict[str, Any]:
    """The runtime policy keylime's ``convert_runtime_policy`` makes of a legacy allow-list."""
    text = _text(allowlist, "the allow-list")
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        obj = None
    if obj is not None:  # a JSON allow-list: its "hashes" are the runtime policy's "digests"
        top = mapping(obj, "")
        if "digests" in top and "hashes" not in top:
            raise PolicyError("digests", "a runtime policy, not a legacy allow-list: import it with "
                              "from_keylime_runtime_policy")
        only_keys(top, "", LEGACY_KEYS)
        if not top.get("hashes"):
            raise PolicyError("hashes", "a JSON allow-list needs its 'hashes'")
        doc: dict[str, Any] = {"digests": top["hashes"]}
        for key in LEGACY_KEYS[3:]:
            if top.get(key):
                doc[key] = top[key]
        return doc
    digests: dict[str, list[str]] = {}
    keyrings: dict[str, list[str]] = {}
    for line in text.splitlines():  # '<digest> <path>' or '<digest> %keyring:<name>'
        pieces = line.strip().split(None, 1)
        if len(pieces) != 2:
            continue  # keylime skips what is not two fields
        digest, path = pieces
        if path.startswith("%keyring:"):
            keyrings.setdefault(path[len("%keyring:"):], []).append(digest)
        else:
            digests.setdefault(path, []).append(digest)
    return {"digests": digests, "keyrings": keyrings}


def from_keylime_allowlist(allowlist: str | bytes, *, excludes: str | bytes | None = None,
                           keys: Iterable[str | bytes] = (), allow_violations: bool = True,
                           name: str | None = None) -> Policy:
    """A :class:`Policy` from keylime's legacy allow-list and exclude list, converted as
    ``keylime_tenant --allowlist ... --exclude ...`` (keylime's ``convert_runtime_policy``)
    converts them.

    ``allowlist``: the flat format (``<digest>  <path>`` a line, ``<digest> %keyring:<name>``
    for a key loaded onto a keyring; other lines skipped) or a JSON allow-list (``hashes``,
    ``keyrings``, ``ima``...). ``excludes``: one regular expression a line, blank lines and
    ``#`` comments skipped. ``keys`` and ``allow_violations`` as in
    :func:`from_keylime_runtime_policy`. Raises :class:`PolicyError`."""
    doc = _legacy_document(allowlist)
    if excludes is not None:
        lines = (line.strip() for line in _text(excludes, "the exclude list").splitlines())
        extra = [line for line in lines if line and not line.startswith("#")]
        doc["excludes"] = [*sequence(doc.get("excludes", []), "excludes"), *extra]
    section = ima_section_from_keylime(doc, keys=keys, allow_violations=allow_violations)
    return Policy((section,), name=name)


def from_keylime_runtime_policy(doc: Any, *, keys: Iterable[str | bytes] = (),
                                allow_violations: bool = True, name: str | None = None) -> Policy:
    """A :class:`Policy` with the ``ima`` section of a keylime runtime policy.

    ``doc``: the policy as a dict, JSON text or bytes. ``keys``: extra trusted IMA signing
    keys (PEM or DER public keys or certificates), as keylime's ``--sign_verification_key``.
    ``allow_violations``: keylime ignores ToMToU/open-writers violations by default
    (``ignore_tomtou_errors``); pass False to refuse them. Raises :class:`PolicyError`
    naming the offending key.
    """
    return Policy((ima_section_from_keylime(doc, keys=keys, allow_violations=allow_violations),), name=name)


__all__ = ["from_keylime_allowlist", "from_keylime_runtime_policy", "ima_section_from_keylime"]
