"""Configuration of the service: flags, environment variables and a config file (pydantic-settings).

Precedence, highest first: values given to :meth:`Settings.load` (``serve`` flags), environment
variables ``TPM2_ATTEST_<FIELD>``, the config file (TOML, or JSON by its ``.json`` name), the
defaults. The trust decisions have safe defaults: an EK certificate chaining to a configured
root is required, an EK enrolls once, nonces live five minutes.

Errors name what an operator typed (``--nonce-ttl`` / ``TPM2_ATTEST_NONCE_TTL``), never a
Python field: see :class:`SettingsError`.
"""

from __future__ import annotations

import json
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

if TYPE_CHECKING:
    from ..trust import TrustBundle

CA_SUFFIXES: Final = frozenset({".pem", ".crt", ".cer", ".der"})
"""Files read from a CA directory (other files, e.g. a README, are ignored)."""

DEFAULT_DATABASE_URL: Final = "sqlite:///tpm2-attest.db"
MAX_SECONDS: Final = 10 * 366 * 86400.0
"""The longest duration any setting or window takes (ten years): the end of a longer window
would be past the calendar's (``datetime`` stops at the year 9999) and fail every request
it applies to."""
ENV_PREFIX: Final = "TPM2_ATTEST_"
CONFIG_ENV: Final = "TPM2_ATTEST_CONFIG"
"""The environment variable naming a config file (``serve --config`` wins over it)."""

FLAGS: Final[dict[str, str]] = {
    "database_url": "--db",
    "ek_roots": "--ek-root",
    "ek_intermediates": "--ek-intermediate",
    "ek_vendor_cas": "--ek-root",
    "ek_ca_exclude": "--ek-ca-exclude",
    "ek_ca_validity": "--ek-ca-validity",
    "ca_issuer_hosts": "--fetch-issuers-from",
    "ak_certificate_enrollment": "--enroll-by-ak-certificate",
    "ak_roots": "--ak-root",
    "ak_intermediates": "--ak-intermediate",
    "ak_vendor_cas": "--ak-root",
    "require_ek_certificate": "--allow-missing-ek-certificate",
    "allow_reenroll": "--allow-reenroll",
    "nonce_ttl": "--nonce-ttl",
    "enrollment_ttl": "--enrollment-ttl",
    "allow_sha1": "--no-sha1",
    "pcr_policy": "--pcr-policy",
    "max_body_bytes": "--max-body",
    "freshness": "--freshness",
    "challenge_rate": "--challenge-rate",
    "challenge_rate_window": "--challenge-rate-window",
    "sweep_interval": "--sweep-interval",
    "retention": "--retention",
    "threads": "--threads",
    "workers": "--workers",
    "host": "--host",
    "port": "--port",
    "log_format": "--log-format",
    "log_level": "--log-level",
    "header_timeout": "--header-timeout",
    "body_timeout": "--body-timeout",
    "max_connections": "--max-connections",
    "dashboard": "--no-dashboard",
    "dashboard_secure_cookie": "--dashboard-secure-cookie",
    "tls_cert": "--tls-cert",
    "tls_key": "--tls-key",
    "tls_client_ca": "--tls-client-ca",
    "webhook_urls": "--webhook",
    "webhook_secret_file": "--webhook-secret-file",
    "webhook_timeout": "--webhook-timeout",
    "webhook_attempts": "--webhook-attempts",
    "webhook_backoff": "--webhook-backoff",
    "webhook_queue": "--webhook-queue",
}
"""The ``serve`` flag of each setting (its environment variable is ``TPM2_ATTEST_`` + the
upper-case field name, its config-file key the field name)."""

_config_file: ContextVar[Path | None] = ContextVar("tpm2_attest_config_file", default=None)


class SettingsError(ValueError):
    """Settings that cannot be used; the message names the flag, variable or config key."""


def describe(field: str) -> str:
    """How an operator sets ``field``: ``--nonce-ttl / TPM2_ATTEST_NONCE_TTL``."""
    flag = FLAGS.get(field)
    env = ENV_PREFIX + field.upper()
    return f"{flag} / {env}" if flag else env


class Settings(BaseSettings):
    """What the service trusts, how long its nonces live, and how it runs.

    ``database_url``: an SQLAlchemy URL; SQLite by default, ``postgresql://`` for PostgreSQL.
    ``ek_roots`` / ``ek_intermediates``: PEM or DER files or directories of them; ``vendors``
    or ``vendors:Name,Name`` among the roots (``--ek-root vendors``) trusts the CA bundle shipped
    with the package, as ``ek_vendor_cas`` does (True, or vendor names); ``ek_ca_exclude``:
    SHA-256 fingerprints (hex) of bundle CAs not to trust; ``ek_ca_validity``: ``at-issuance``
    accepts CAs that expired after issuing, ``at-time`` wants the whole path valid now.
    ``ca_issuer_hosts``: when an EK or AK certificate does not chain, fetch its missing issuers
    from its authorityInfoAccess caIssuers URLs on these hosts (or their subdomains) and try
    again (Google Compute Engine's per-pool intermediates); off when empty.
    ``ak_certificate_enrollment``: also enroll devices by an AK certificate (a cloud vTPM's
    certified AK) instead of a credential activation; its CAs are ``ak_roots`` /
    ``ak_intermediates`` / ``ak_vendor_cas`` (same forms).
    ``require_ek_certificate``: refuse devices that send no EK certificate (without it and
    without roots the service trusts an EK on first use). ``allow_reenroll``: let any enrolled
    EK enroll again, revoking its old device (operators can allow it for one device instead).
    ``nonce_ttl`` / ``enrollment_ttl``: seconds a challenge / an enrollment stays open.
    ``allow_sha1``: accept SHA-1 AKs and quotes (Windows PCP identity keys need it).
    ``pcr_policy``: a file whose policies seed the database at start. ``freshness``: seconds a
    passing attestation keeps a device trusted, unless its policy or the device says otherwise.
    ``challenge_rate`` per ``challenge_rate_window`` seconds: challenges one device may ask for,
    and enrollments one EK may begin (0: unlimited). ``sweep_interval``: seconds between sweeps of expired rows; ``retention``:
    how long expired challenges and unfinished enrollments are kept. ``dashboard``: serve the
    operator dashboard under ``/dashboard``; ``dashboard_secure_cookie``: mark its session cookie
    ``Secure`` even on plain HTTP (behind a TLS-terminating proxy; it is whenever the request
    came over HTTPS).
    ``tls_cert`` / ``tls_key``: ``serve`` speaks HTTPS with this certificate (PEM; the key may
    be in the certificate file); ``tls_client_ca``: and requires client certificates issued by
    these CAs (mutual TLS). ``webhook_urls``: receivers of status changes, POSTed as JSON signed
    with HMAC-SHA256 under the secret in ``webhook_secret_file`` (see :mod:`.webhooks`), each
    within ``webhook_timeout`` seconds, tried ``webhook_attempts`` times with waits doubling from
    ``webhook_backoff`` seconds; at most ``webhook_queue`` changes wait per receiver (more are
    dropped, counted and logged). The rest is for ``serve``.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True,
                                      validate_default=True)

    database_url: str = DEFAULT_DATABASE_URL
    ek_roots: Annotated[tuple[Path, ...], NoDecode] = ()
    ek_intermediates: Annotated[tuple[Path, ...], NoDecode] = ()
    ek_vendor_cas: Annotated[bool | tuple[str, ...], NoDecode] = False
    ek_ca_exclude: Annotated[tuple[str, ...], NoDecode] = ()
    ek_ca_validity: Literal["at-issuance", "at-time"] = "at-issuance"
    ca_issuer_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    ak_certificate_enrollment: bool = False
    ak_roots: Annotated[tuple[Path, ...], NoDecode] = ()
    ak_intermediates: Annotated[tuple[Path, ...], NoDecode] = ()
    ak_vendor_cas: Annotated[bool | tuple[str, ...], NoDecode] = False
    require_ek_certificate: bool = True
    allow_reenroll: bool = False
    nonce_ttl: float = Field(default=300.0, gt=0, le=MAX_SECONDS)
    enrollment_ttl: float = Field(default=300.0, gt=0, le=MAX_SECONDS)
    allow_sha1: bool = True
    pcr_policy: Path | None = None
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    freshness: float = Field(default=3600.0, gt=0, le=MAX_SECONDS)
    challenge_rate: int = Field(default=10, ge=0)
    challenge_rate_window: float = Field(default=60.0, gt=0, le=MAX_SECONDS)
    sweep_interval: float = Field(default=60.0, ge=0, le=MAX_SECONDS)
    retention: float = Field(default=3600.0, ge=0, le=MAX_SECONDS)
    threads: int = Field(default=16, ge=1, le=512)
    workers: int = Field(default=1, ge=1, le=64)
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    header_timeout: float = Field(default=10.0, gt=0, le=MAX_SECONDS)
    body_timeout: float = Field(default=30.0, gt=0, le=MAX_SECONDS)
    max_connections: int = Field(default=1024, ge=1)
    dashboard: bool = True
    dashboard_secure_cookie: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    webhook_urls: Annotated[tuple[str, ...], NoDecode] = ()
    webhook_secret_file: Path | None = None
    webhook_timeout: float = Field(default=5.0, gt=0, le=300)
    webhook_attempts: int = Field(default=8, ge=1, le=100)
    webhook_backoff: float = Field(default=1.0, gt=0, le=3600)
    webhook_queue: int = Field(default=1000, ge=1, le=1_000_000)

    @field_validator("ek_roots", "ek_intermediates", "ak_roots", "ak_intermediates", "ek_ca_exclude",
                     "webhook_urls", "ca_issuer_hosts", mode="before")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        """A list, or one string of comma-separated items (how an environment variable says it)."""
        if isinstance(value, str):
            return tuple(p.strip() for p in value.split(",") if p.strip())
        if isinstance(value, Path):
            return (value,)
        return value

    @field_validator("ek_vendor_cas", "ak_vendor_cas", mode="before")
    @classmethod
    def _vendors(cls, value: Any) -> Any:
        """True/False, or vendor names (a list, or comma-separated in the environment)."""
        if isinstance(value, str):
            if value.strip().lower() in ("true", "1", "yes", "all"):
                return True
            if value.strip().lower() in ("false", "0", "no", ""):
                return False
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return value

    @model_validator(mode="before")
    @classmethod
    def _vendor_roots(cls, data: Any) -> Any:
        """``vendors`` / ``vendors:Name,...`` given among ``ek_roots`` / ``ak_roots`` (as the
        ``--ek-root`` flag takes them) select the shipped CA bundle."""
        if not isinstance(data, dict):
            return data
        for roots, vendors in (("ek_roots", "ek_vendor_cas"), ("ak_roots", "ak_vendor_cas")):
            value = data.get(roots)
            if isinstance(value, str):
                value = [p.strip() for p in value.split(",") if p.strip()]
            if isinstance(value, list | tuple) and any(str(v).startswith("vendors") for v in value):
                try:
                    paths, chosen = parse_ca_spec([str(v) for v in value])
                except ValueError as exc:
                    raise ValueError(f"{describe(roots)}: {exc}") from None
                data = {**data, roots: paths}
                given = data.get(vendors, False)
                if chosen is True or given is True:
                    data[vendors] = True
                elif chosen or given:
                    data[vendors] = (*(given or ()), *(chosen or ()))
        return data

    @field_validator("webhook_urls")
    @classmethod
    def _webhook_urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        import urllib.parse

        for url in value:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"not an http:// or https:// URL: {redact_url(url)!r}")
        return value

    @model_validator(mode="after")
    def _pairs(self) -> Settings:
        """Options that need another one."""
        if (self.tls_key or self.tls_client_ca) and not self.tls_cert:
            raise ValueError(f"{describe('tls_key')} and {describe('tls_client_ca')} need "
                             f"{describe('tls_cert')}")
        if self.webhook_urls and self.webhook_secret_file is None:
            raise ValueError(f"{describe('webhook_urls')} needs {describe('webhook_secret_file')} "
                             "(webhooks are signed)")
        return self

    def webhook_secret(self) -> bytes:
        """The webhook signing secret: the file's bytes without surrounding whitespace (at
        least 16); SettingsError naming the option when it cannot be used."""
        path = self.webhook_secret_file
        if path is None:
            raise SettingsError(f"{describe('webhook_secret_file')}: not set")
        try:
            secret = path.read_bytes().strip()
        except OSError as exc:
            raise SettingsError(f"{describe('webhook_secret_file')}: cannot read {path}: "
                                f"{exc.strerror or exc}") from None
        if len(secret) < 16:
            raise SettingsError(f"{describe('webhook_secret_file')}: {path} holds {len(secret)} bytes; "
                                "use a secret of at least 16 (e.g. openssl rand -hex 32)")
        return secret

    def check_tls(self) -> None:
        """Load the TLS files as the server will (SettingsError naming the option at fault)."""
        import ssl

        if self.tls_cert is None:
            return
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(f"{describe('tls_cert')} {self.tls_cert}"
                                + (f" / {describe('tls_key')} {self.tls_key}" if self.tls_key else "")
                                + f": {getattr(exc, 'reason', None) or getattr(exc, 'strerror', None) or exc} "
                                "(expected a PEM certificate and its private key)") from None
        if self.tls_client_ca is not None:
            try:
                ctx.load_verify_locations(cafile=self.tls_client_ca)
            except (OSError, ssl.SSLError) as exc:
                raise SettingsError(f"{describe('tls_client_ca')} {self.tls_client_ca}: "
                                    f"{getattr(exc, 'reason', None) or getattr(exc, 'strerror', None) or exc} "
                                    "(expected PEM CA certificates)") from None

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _ConfigFile(settings_cls)

    @classmethod
    def load(cls, config_file: str | Path | None = None, **given: Any) -> Settings:
        """Settings from ``given`` (None values are "not given"), the environment and
        ``config_file`` (or ``$TPM2_ATTEST_CONFIG``); raises :class:`SettingsError`."""
        import os

        path = config_file or os.environ.get(CONFIG_ENV) or None
        token = _config_file.set(Path(path) if path else None)
        try:
            return cls(**{k: v for k, v in given.items() if v is not None})
        except ValidationError as exc:
            raise SettingsError(explain(exc)) from None
        finally:
            _config_file.reset(token)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes``, validated again."""
        try:
            return type(self)(**{**self.model_dump(), **changes})
        except ValidationError as exc:
            raise SettingsError(explain(exc)) from None

    def load_ek_roots(self) -> list[bytes]:
        """The bytes of every root CA file, then the bundle's anchors when ``ek_vendor_cas``
        (raises SettingsError on an unusable path or an unknown vendor)."""
        return _read(self.ek_roots, "ek_roots") + list(self._bundle(self.ek_vendor_cas).roots)

    def load_ek_intermediates(self) -> list[bytes]:
        return _read(self.ek_intermediates, "ek_intermediates") + list(self._bundle(self.ek_vendor_cas).intermediates)

    def load_ak_roots(self) -> list[bytes]:
        return _read(self.ak_roots, "ak_roots") + list(self._bundle(self.ak_vendor_cas).roots)

    def load_ak_intermediates(self) -> list[bytes]:
        return _read(self.ak_intermediates, "ak_intermediates") + list(self._bundle(self.ak_vendor_cas).intermediates)

    def _bundle(self, vendors: bool | tuple[str, ...]) -> TrustBundle:
        """The shipped CA bundle (or the named vendors of it) minus ``ek_ca_exclude``."""
        from ..trust import TrustBundle, tpm_vendor_cas

        if vendors is False or vendors == ():
            return TrustBundle(())
        try:
            bundle = tpm_vendor_cas(None if vendors is True else vendors)
            return bundle.without(self.ek_ca_exclude) if self.ek_ca_exclude else bundle
        except ValueError as exc:
            raise SettingsError(f"--ek-root / --ak-root vendors: {exc}") from None


def explain(exc: ValidationError) -> str:
    """A pydantic error in the operator's words: the flag / variable of each bad setting."""
    parts = []
    for err in exc.errors()[:5]:
        loc = [str(p) for p in err.get("loc", ())]
        field = loc[0] if loc else ""
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            parts.append(f"unknown setting {field!r} in the config file")
        elif not field:  # a rule over several settings: its message names them
            parts.append(msg)
        else:
            parts.append(f"{describe(field)}: {msg}")
    return "; ".join(parts)


class _ConfigFile(PydanticBaseSettingsSource):
    """The config file named by :meth:`Settings.load`: TOML (a table of settings, or a
    ``[tpm2-attest]`` table), or JSON by a ``.json`` name."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _config_file.get()
        if path is None:
            return {}
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SettingsError(f"--config / {CONFIG_ENV}: cannot read {path}: {exc.strerror or exc}") from None
        try:
            if path.suffix.lower() == ".json":
                doc = json.loads(data)
            else:
                doc = tomllib.loads(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise SettingsError(f"{path}: not a valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'} "
                                f"config file: {exc}") from None
        if isinstance(doc, dict) and isinstance(doc.get("tpm2-attest"), dict):
            doc = doc["tpm2-attest"]
        if not isinstance(doc, dict):
            raise SettingsError(f"{path}: expected a table of settings")
        unknown = sorted(set(doc) - set(Settings.model_fields))
        if unknown:
            raise SettingsError(f"{path}: unknown setting {unknown[0]!r} (known: "
                                f"{', '.join(Settings.model_fields)})")
        return dict(doc)


def redact_url(url: str) -> str:
    """A URL fit for logs: scheme, host, port and path (no user info, query or fragment,
    which may carry credentials)."""
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable URL>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _read(paths: tuple[Path, ...], field: str) -> list[bytes]:
    try:
        return read_certificates(paths)
    except (OSError, ValueError) as exc:
        raise SettingsError(f"{describe(field)}: {exc}") from None


def parse_ca_spec(values: list[str] | tuple[str, ...]) -> tuple[tuple[Path, ...], bool | tuple[str, ...]]:
    """Values of ``--ek-root`` / ``--ak-root``: paths, and ``vendors`` (the whole shipped
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


__all__ = ["CONFIG_ENV", "DEFAULT_DATABASE_URL", "FLAGS", "MAX_SECONDS", "Settings", "SettingsError", "describe",
           "parse_ca_spec", "read_certificates", "redact_url"]
