"""The CA bundle shipped with the package: TPM vendor and cloud vTPM CA certificates.

``tpm_vendor_cas()`` reads ``ca/manifest.json`` and the certificate files beside it (once
per process; later calls return the cached bundle) and hands the verifier what it takes:
``roots`` (the trust anchors: self-signed roots, and intermediates whose root is not
published with them) and ``intermediates`` (the others), both as DER bytes. Nothing is
parsed as X.509 here: the manifest already says what each file is, and every file is
checked against its SHA-256 in the manifest, so a damaged installation fails loudly.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

from .errors import BundleError

__all__ = ["CaEntry", "CaSource", "TrustBundle", "load_bundle", "tpm_vendor_cas"]

_PEM_RE: Final = re.compile(
    rb"-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]*?)-----END CERTIFICATE-----"
)

Role = Literal["root", "intermediate"]


@dataclass(frozen=True)
class CaSource:
    """Where a folder of the bundle was copied from."""

    name: str
    repository: str
    path: str
    commit: str
    date: str
    licence: str
    description: str = ""


@dataclass(frozen=True)
class CaEntry:
    """One CA certificate of the bundle, with its manifest metadata."""

    file: str
    """Path inside the bundle, e.g. ``tpm-vendor-cas/IFX1.pem``."""
    vendor: str
    source: CaSource
    der: bytes
    sha256: str
    """SHA-256 of the certificate DER (hex): its fingerprint."""
    file_sha256: str
    subject: str
    issuer: str
    serial: str
    """Serial number in hex."""
    not_before: datetime
    not_after: datetime
    role: Role
    """``root`` (self-signed) or ``intermediate``."""
    anchor: bool
    """Passed to the verifier as a root: self-signed, or no issuer of it in the bundle."""
    key: str
    """e.g. ``RSA-2048``, ``EC-P256``."""
    parsed: str
    """``strict``, or ``lenient: ...`` with the DER deviations the verifier tolerates."""
    duplicate_of: str | None = None
    """The file holding the same certificate first, when this one repeats it."""

    def expired(self, at: datetime | None = None) -> bool:
        """Whether the certificate is outside its validity at `at` (default now)."""
        when = at or datetime.now(UTC)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return not self.not_before <= when <= self.not_after

    def to_dict(self, at: datetime | None = None) -> dict[str, Any]:
        """JSON-ready metadata (no certificate bytes), with ``expired`` at `at`."""
        return {
            "file": self.file,
            "vendor": self.vendor,
            "role": self.role,
            "anchor": self.anchor,
            "subject": self.subject,
            "issuer": self.issuer,
            "serial": self.serial,
            "not_before": self.not_before.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "not_after": self.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "expired": self.expired(at),
            "key": self.key,
            "sha256": self.sha256,
            "parsed": self.parsed,
            "duplicate_of": self.duplicate_of,
            "origin": {"repository": self.source.repository, "path": self.source.path,
                       "commit": self.source.commit, "licence": self.source.licence},
        }


@dataclass(frozen=True)
class TrustBundle:
    """CA certificates with metadata; ``roots`` and ``intermediates`` are what
    ``verify.verify_ek_certificate`` takes (DER bytes, each certificate once)."""

    entries: tuple[CaEntry, ...]
    _roots: tuple[bytes, ...] = field(init=False, repr=False)
    _intermediates: tuple[bytes, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        roots: list[bytes] = []
        inters: list[bytes] = []
        for e in self.entries:
            if e.sha256 in seen:
                continue
            seen.add(e.sha256)
            (roots if e.anchor else inters).append(e.der)
        object.__setattr__(self, "_roots", tuple(roots))
        object.__setattr__(self, "_intermediates", tuple(inters))

    @property
    def roots(self) -> tuple[bytes, ...]:
        """Trust anchors (DER): self-signed roots and intermediates whose issuer is not shipped."""
        return self._roots

    @property
    def intermediates(self) -> tuple[bytes, ...]:
        """CAs (DER) that chain to an anchor of the bundle."""
        return self._intermediates

    @property
    def vendors(self) -> tuple[str, ...]:
        return tuple(sorted({e.vendor for e in self.entries}))

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[CaEntry]:
        return iter(self.entries)

    def select(self, vendors: Iterable[str]) -> TrustBundle:
        """The entries of these vendors only (case-insensitive); ValueError for an unknown one."""
        wanted = {v.strip().lower() for v in vendors if v.strip()}
        known = {v.lower() for v in self.vendors}
        unknown = wanted - known
        if unknown:
            raise ValueError(f"unknown vendor(s) {', '.join(sorted(unknown))}; "
                             f"the bundle has {', '.join(self.vendors)}")
        return TrustBundle(tuple(e for e in self.entries if e.vendor.lower() in wanted))

    def without(self, fingerprints: Iterable[str]) -> TrustBundle:
        """The bundle minus the certificates with these SHA-256 fingerprints (hex, any case,
        colons allowed): how an operator removes a CA it no longer trusts."""
        drop = {f.replace(":", "").strip().lower() for f in fingerprints}
        return TrustBundle(tuple(e for e in self.entries if e.sha256 not in drop))


def _der_of(data: bytes, name: str) -> bytes:
    """The certificate DER of a bundle file: PEM (text around it allowed) or DER."""
    if data[:1] == b"\x30":
        return data
    m = _PEM_RE.search(data)
    if m is None:
        raise BundleError(f"{name}: neither DER nor a PEM CERTIFICATE block")
    try:
        return base64.b64decode(b"".join(m.group(1).split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BundleError(f"{name}: bad PEM base64: {exc}") from exc


def _time(text: str, name: str) -> datetime:
    """``YYYY-MM-DDTHH:MM:SSZ`` (fromisoformat: strptime alone would cost more than the load)."""
    try:
        if not text.endswith("Z"):
            raise ValueError("not UTC")
        return datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)
    except (AttributeError, TypeError, ValueError) as exc:
        raise BundleError(f"{name}: bad time {text!r}") from exc


def _entry(raw: Mapping[str, Any], sources: Mapping[str, CaSource], read: Callable[[str], bytes]) -> CaEntry:
    name = str(raw.get("file", "?"))
    try:
        data = read(name)
    except OSError as exc:
        raise BundleError(f"{name}: listed in the manifest but unreadable: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != raw["file_sha256"]:
        raise BundleError(f"{name}: differs from its manifest entry (file SHA-256)")
    der = _der_of(data, name)
    if hashlib.sha256(der).hexdigest() != raw["sha256"]:
        raise BundleError(f"{name}: certificate differs from its manifest entry (SHA-256)")
    role = raw["role"]
    if role not in ("root", "intermediate"):
        raise BundleError(f"{name}: role {role!r}")
    return CaEntry(
        file=name, vendor=raw["vendor"], source=sources[raw["source"]], der=der,
        sha256=raw["sha256"], file_sha256=raw["file_sha256"], subject=raw["subject"],
        issuer=raw["issuer"], serial=raw["serial"], not_before=_time(raw["not_before"], name),
        not_after=_time(raw["not_after"], name), role=role, anchor=bool(raw["anchor"]),
        key=raw["key"], parsed=raw["parsed"], duplicate_of=raw.get("duplicate_of"),
    )


def _directory_reader(directory: str) -> Callable[[str], bytes]:
    def read(name: str) -> bytes:
        if name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/"):
            raise OSError(f"{name}: outside the bundle directory")
        with open(os.path.join(directory, name), "rb") as f:
            return f.read()

    return read


def load_bundle(directory: str | os.PathLike[str]) -> TrustBundle:
    """A bundle laid out like the shipped one: ``manifest.json`` (as written by
    ``tools/build_trust_bundle.py``) and the certificate files it lists, each checked
    against its SHA-256. Raises BundleError."""
    return _read(_directory_reader(os.fspath(directory)))


@functools.cache
def _load() -> TrustBundle:
    here = os.path.join(os.path.dirname(__file__), "ca")
    if os.path.isdir(here):  # installed or source tree: plain files, no importlib.resources
        return _read(_directory_reader(here))
    from importlib import resources  # a zipped install

    root = resources.files(__package__).joinpath("ca")
    return _read(lambda name: root.joinpath(name).read_bytes())


def _read(read: Callable[[str], bytes]) -> TrustBundle:
    try:
        manifest = json.loads(read("manifest.json").decode("utf-8"))
        sources = {k: CaSource(name=k, **v) for k, v in manifest["sources"].items()}
        entries = tuple(_entry(e, sources, read) for e in manifest["certificates"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, BundleError):
            raise
        raise BundleError(f"the CA bundle manifest is unreadable: {exc}") from exc
    return TrustBundle(entries)


def tpm_vendor_cas(vendors: Iterable[str] | None = None) -> TrustBundle:
    """The shipped CA bundle (TPM vendors and cloud vTPMs), or only the given `vendors`
    (e.g. ``["Infineon", "Google"]``). Loaded on first use, then cached."""
    bundle = _load()
    return bundle if vendors is None else bundle.select(vendors)
