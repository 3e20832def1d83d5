"""Configuration of the enrollment + attestation service (stdlib only).

The trust decisions live here, each with a safe default: an EK certificate chaining to a
configured root is required, an EK enrolls once, nonces live five minutes, and PCR values are
checked only against a policy you write down (``expected_pcrs`` / ``device_pcrs``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias

if TYPE_CHECKING:
    from ..trust import TrustBundle

PcrPolicy: TypeAlias = Mapping[str, Mapping[int, bytes]]
"""Expected PCR values: ``{bank: {index: digest}}``, e.g. ``{"sha256": {7: b"..."}}``."""

CA_SUFFIXES: Final = frozenset({".pem", ".crt", ".cer", ".der"})
"""Files read from a CA directory (other files, e.g. a README, are ignored)."""

DEFAULT_DATABASE_URL: Final = "sqlite:///tpm2-attest.db"


@dataclass(frozen=True)
class Settings:
    """What the service trusts and how long its nonces live.

    ``database_url``: an SQLAlchemy URL; SQLite by default, ``postgresql://`` or
    ``postgresql+psycopg://`` for PostgreSQL (the ``postgres`` extra).
    ``ek_roots`` / ``ek_intermediates``: PEM or DER files (several PEM blocks per file are
    fine), or directories of them; an EK certificate must chain to one of the roots.
    ``ek_vendor_cas``: also trust the CA bundle shipped with the package
    (``trust.tpm_vendor_cas``): True for all of it, or a tuple of vendor names;
    ``ek_ca_exclude``: SHA-256 fingerprints (hex) of bundle CAs not to trust.
    ``ek_ca_validity``: ``"at-issuance"`` accepts CAs that expired after issuing (reported in
    the log), ``"at-time"`` wants every certificate of the path valid now (docs/trust.md).
    ``ak_certificate_enrollment``: allow enrolling a device by an AK certificate (a cloud
    vTPM's certified AK) instead of a credential activation; its CAs are ``ak_roots`` /
    ``ak_intermediates`` / ``ak_vendor_cas`` (same forms as for EKs).
    ``require_ek_certificate``: refuse devices that send no EK certificate. Without it (and
    without roots) the service trusts an EK on first use: it proves the AK lives in the same
    TPM as that EK, not that the EK belongs to a genuine TPM.
    ``allow_reenroll``: let an already enrolled EK enroll again, revoking its old device
    record (default: refuse with 409).
    ``nonce_ttl`` / ``enrollment_ttl``: seconds an attestation challenge / an enrollment may
    stay open.
    ``allow_sha1``: accept SHA-1 AKs and quotes; Windows PCP identity keys sign RSASSA-SHA1,
    so False refuses every PCP1/PCP2 device.
    ``expected_pcrs``: PCR values every device must quote; ``device_pcrs``: per device id,
    replacing the global policy for that device. A quote must cover every expected PCR.
    ``max_body_bytes``: larger request bodies are refused with 413.
    """

    database_url: str = DEFAULT_DATABASE_URL
    ek_roots: tuple[Path, ...] = ()
    ek_intermediates: tuple[Path, ...] = ()
    ek_vendor_cas: bool | tuple[str, ...] = False
    ek_ca_exclude: tuple[str, ...] = ()
    ek_ca_validity: Literal["at-issuance", "at-time"] = "at-issuance"
    ak_certificate_enrollment: bool = False
    ak_roots: tuple[Path, ...] = ()
    ak_intermediates: tuple[Path, ...] = ()
    ak_vendor_cas: bool | tuple[str, ...] = False
    require_ek_certificate: bool = True
    allow_reenroll: bool = False
    nonce_ttl: float = 300.0
    enrollment_ttl: float = 300.0
    allow_sha1: bool = True
    expected_pcrs: PcrPolicy | None = None
    device_pcrs: Mapping[str, PcrPolicy] = field(default_factory=dict)
    max_body_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        object.__setattr__(self, "ek_roots", tuple(Path(p) for p in self.ek_roots))
        object.__setattr__(self, "ek_intermediates", tuple(Path(p) for p in self.ek_intermediates))
        object.__setattr__(self, "ak_roots", tuple(Path(p) for p in self.ak_roots))
        object.__setattr__(self, "ak_intermediates", tuple(Path(p) for p in self.ak_intermediates))
        if self.ek_ca_validity not in ("at-issuance", "at-time"):
            raise ValueError("ek_ca_validity must be 'at-issuance' or 'at-time'")
        if self.nonce_ttl <= 0 or self.enrollment_ttl <= 0:
            raise ValueError("nonce_ttl and enrollment_ttl must be positive")
        if self.max_body_bytes < 1024:
            raise ValueError("max_body_bytes below 1 KiB cannot carry an enrollment")
        if self.expected_pcrs is not None:
            _check_policy(self.expected_pcrs, "expected_pcrs")
        for device_id, policy in self.device_pcrs.items():
            _check_policy(policy, f"device_pcrs[{device_id!r}]")

    def policy_for(self, device_id: str) -> PcrPolicy | None:
        """The expected PCR values for ``device_id`` (its own policy, else the global one)."""
        return self.device_pcrs.get(device_id, self.expected_pcrs)

    def load_ek_roots(self) -> list[bytes]:
        """The bytes of every root CA file, then the bundle's anchors when ``ek_vendor_cas``
        (raises OSError/ValueError on an unusable path or an unknown vendor)."""
        return read_certificates(self.ek_roots) + list(self._bundle(self.ek_vendor_cas).roots)

    def load_ek_intermediates(self) -> list[bytes]:
        return read_certificates(self.ek_intermediates) + list(self._bundle(self.ek_vendor_cas).intermediates)

    def load_ak_roots(self) -> list[bytes]:
        return read_certificates(self.ak_roots) + list(self._bundle(self.ak_vendor_cas).roots)

    def load_ak_intermediates(self) -> list[bytes]:
        return read_certificates(self.ak_intermediates) + list(self._bundle(self.ak_vendor_cas).intermediates)

    def _bundle(self, vendors: bool | tuple[str, ...]) -> TrustBundle:
        """The shipped CA bundle (or the named vendors of it) minus ``ek_ca_exclude``."""
        from ..trust import TrustBundle, tpm_vendor_cas

        if vendors is False or vendors == ():
            return TrustBundle(())
        bundle = tpm_vendor_cas(None if vendors is True else vendors)
        return bundle.without(self.ek_ca_exclude) if self.ek_ca_exclude else bundle


def parse_ca_spec(values: list[str] | tuple[str, ...]) -> tuple[tuple[Path, ...], bool | tuple[str, ...]]:
    """CLI values of ``--ek-root`` / ``--ak-root``: paths, and ``vendors`` (the whole shipped
    bundle) or ``vendors:Name,Name`` (those vendors of it). Returns (paths, vendor_cas)."""
    paths: list[Path] = []
    vendors: bool | tuple[str, ...] = False
    for value in values:
        if value == "vendors":
            vendors = True
        elif value.startswith("vendors:"):
            names = tuple(v.strip() for v in value[len("vendors:"):].split(",") if v.strip())
            if not names:
                raise ValueError(f"{value!r}: name at least one vendor after 'vendors:'")
            if vendors is not True:
                vendors = (*(vendors or ()), *names)
        else:
            paths.append(Path(value))
    return tuple(paths), vendors


def read_certificates(paths: tuple[Path, ...]) -> list[bytes]:
    """Read CA files; a directory contributes its ``*.pem/*.crt/*.cer/*.der`` files, sorted.

    The bytes are passed to ``verify.verify_ek_certificate`` as they are (it reads PEM, with
    any number of blocks, and DER).
    """
    out: list[bytes] = []
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in CA_SUFFIXES)
            if not files:
                raise ValueError(f"{path}: no {', '.join(sorted(CA_SUFFIXES))} files")
            out.extend(p.read_bytes() for p in files)
        else:
            out.append(path.read_bytes())
    return out


def _check_policy(policy: PcrPolicy, what: str) -> None:
    for bank, values in policy.items():
        try:
            size = hashlib.new(bank).digest_size
        except (ValueError, TypeError):
            raise ValueError(f"{what}: unknown PCR bank {bank!r}") from None
        for index, digest in values.items():
            if not isinstance(index, int) or not 0 <= index < 32:
                raise ValueError(f"{what}: PCR index {index!r} out of range")
            if not isinstance(digest, bytes) or len(digest) != size:
                raise ValueError(f"{what}: {bank}:{index} must be {size} bytes")


def parse_pcr_policy(obj: Any, what: str = "policy") -> PcrPolicy:
    """``{"sha256": {"7": "<hex>"}}`` (JSON form) -> ``{"sha256": {7: b"..."}}``."""
    if not isinstance(obj, dict):
        raise ValueError(f"{what}: expected {{bank: {{index: hex}}}}")
    out: dict[str, dict[int, bytes]] = {}
    for bank, values in obj.items():
        if not isinstance(values, dict):
            raise ValueError(f"{what}.{bank}: expected {{index: hex}}")
        try:
            out[str(bank).lower()] = {int(k): bytes.fromhex(v) for k, v in values.items()}
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{what}.{bank}: {exc}") from None
    _check_policy(out, what)
    return out


def load_pcr_policy_file(path: str | Path) -> tuple[PcrPolicy | None, dict[str, PcrPolicy]]:
    """Read ``{"default": {bank: {index: hex}}, "devices": {device_id: {...}}}`` (both optional).

    Returns ``(expected_pcrs, device_pcrs)`` for :class:`Settings`.
    """
    obj = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(obj, dict) or set(obj) - {"default", "devices"}:
        raise ValueError(f"{path}: expected an object with 'default' and/or 'devices'")
    default = parse_pcr_policy(obj["default"], "default") if "default" in obj else None
    devices_in = obj.get("devices", {})
    if not isinstance(devices_in, dict):
        raise ValueError(f"{path}: 'devices' must map device ids to policies")
    devices = {str(k): parse_pcr_policy(v, f"devices.{k}") for k, v in devices_in.items()}
    return default, devices
