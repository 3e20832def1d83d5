"""TCTI strings (tpm2-tss syntax) and the choice of TPM: argument, environment, platform default.

Accepted forms (``name`` may also be a tpm2-tss library name such as ``libtss2-tcti-swtpm.so.0``)::

    device                      /dev/tpmrm0 if present, else /dev/tpm0
    device:/dev/tpmrm0
    swtpm | swtpm: | swtpm:port=2321 | swtpm:host=127.0.0.1,port=2321
    mssim | mssim:host=..,port=.. | mssim:tcp://127.0.0.1:2321   (older tpm2-tss URI form)
    tbs                         Windows TPM Base Services

swtpm and mssim default to host 127.0.0.1 and port 2321.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import field
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from .._frozen import frozen
from ..errors import ErrorCode, TpmError

if TYPE_CHECKING:
    from .base import Transport

KINDS: Final = ("device", "swtpm", "mssim", "tbs")
ENV_VARS: Final = ("TPM2_ATTEST_TCTI", "TPM2TOOLS_TCTI")
"""Consulted in this order when no TCTI is passed (tpm2-tools reads TPM2TOOLS_TCTI too)."""
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 2321

# tpm2-tss TCTIs this library does not implement: named in the error instead of "unknown".
_TSS_ONLY: Final = frozenset({"tabrmd", "abrmd", "cmd", "pcap", "libtpms", "spi-helper", "spi-ltt2go",
                              "spidev", "spi-ftdi", "i2c-helper", "i2c-ftdi", "fuzzing", "none"})
INSTEAD: Final = ("device:/dev/tpmrm0 (the kernel's resource manager, which shares the TPM "
                  "between programs as tpm2-abrmd does) or swtpm:host=...,port=...")
"""What to use instead of a tpm2-tss TCTI this library does not implement."""
_DIGITS: Final = re.compile(r"[0-9]{1,5}")
_LIBNAME: Final = re.compile(r"^(?:lib)?(?:tss2-)?(?:tcti-)?(?P<name>[a-z0-9-]+?)(?:\.so(?:\.\d+)*)?$")

FIRST_RESPONSE_TIMEOUT: Final = 5.0
"""Seconds a TPM gets to answer the first command at open time (a TPM2_GetCapability, which
every TPM answers in milliseconds): what is silent that long is not a TPM, or not this one's
data port. A ``timeout`` given to :meth:`Tpm.open` replaces it."""
NOT_A_TPM_HINT: Final = ("check that this is a TPM: for swtpm, its data port (swtpm socket --server "
                         "port=N), not its control port (--ctrl, usually N + 1); a TPM that needs "
                         "longer to answer: open it with a longer timeout")
"""The hint of a first response that did not come: the peer may be another port or program."""


def _bad(message: str) -> TpmError:
    return TpmError(message, code=ErrorCode.INVALID_ARGUMENT)


@frozen
class TctiSpec:
    """A parsed TCTI: ``kind`` is device/swtpm/mssim/tbs; ``options`` its settings.

    device: ``path`` (absent = the platform default); swtpm/mssim: ``host``, ``port``
    (always present after parsing); tbs: none.
    """

    kind: str
    options: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def canonical(self) -> str:
        """The normalized string, e.g. ``swtpm:host=127.0.0.1,port=2321``."""
        if self.kind in ("swtpm", "mssim"):
            return f"{self.kind}:host={self.options['host']},port={self.options['port']}"
        if self.kind == "device" and "path" in self.options:
            return f"device:{self.options['path']}"
        return self.kind

    def __str__(self) -> str:
        return self.canonical

    def open(self, *, timeout: float | None = None) -> Transport:
        """Open this TCTI's transport (TPM_NOT_FOUND if nothing answers there)."""
        if self.kind == "device":
            from .device import DeviceTransport

            return DeviceTransport(self.options.get("path"), timeout=timeout)
        if self.kind == "swtpm":
            from .swtpm_tcp import SwtpmTransport

            return SwtpmTransport(self.options["host"], int(self.options["port"]), timeout=timeout)
        if self.kind == "mssim":
            from .mssim import MssimTransport

            return MssimTransport(self.options["host"], int(self.options["port"]), timeout=timeout)
        from .tbs import TbsTransport

        return TbsTransport(timeout=timeout)


def _kind_of(name: str) -> str:
    m = _LIBNAME.match(name.lower())
    kind = m.group("name") if m else name
    if kind in KINDS:
        return kind
    supported = ", ".join(KINDS)
    if kind in _TSS_ONLY or name.lower() in _TSS_ONLY:
        raise TpmError(f"TCTI {name!r} is a tpm2-tss TCTI that tpm2-attest does not implement "
                       f"(supported: {supported})", code=ErrorCode.INVALID_ARGUMENT,
                       hint=f"use {INSTEAD}")
    raise _bad(f"unknown TCTI kind {name!r} (supported: {supported})")


def _port(value: str, where: str) -> str:
    if not _DIGITS.fullmatch(value) or not 0 < int(value) < 65536:
        raise _bad(f"{where!r}: port must be 1..65535, not {value!r}")
    return str(int(value))


def _host(value: str, where: str) -> str:
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    if not value or any(c.isspace() or c in ",/[]" for c in value):
        raise _bad(f"{where!r}: bad host {value!r}")
    return value


def _network_options(kind: str, conf: str, text: str) -> dict[str, str]:
    opts = {"host": DEFAULT_HOST, "port": str(DEFAULT_PORT)}
    if not conf:
        return opts
    if conf.startswith("tcp://"):  # tpm2-tss before 2.2: tcp://host:port/
        from urllib.parse import urlsplit

        try:
            url = urlsplit(conf)
            port = url.port
        except ValueError as exc:
            raise _bad(f"{text!r}: {exc}") from None
        if url.hostname:
            opts["host"] = _host(url.hostname, text)
        if port is not None:
            opts["port"] = _port(str(port), text)
        if url.path not in ("", "/") or url.query or url.fragment:
            raise _bad(f"{text!r}: unexpected URI path or query")
        return opts
    seen: set[str] = set()
    for item in conf.split(","):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not eq:
            raise _bad(f"{text!r}: expected key=value, got {item!r}")
        if key in seen:
            raise _bad(f"{text!r}: {key} given twice")
        seen.add(key)
        if key == "host":
            opts["host"] = _host(value, text)
        elif key == "port":
            opts["port"] = _port(value, text)
        else:
            raise _bad(f"{text!r}: unknown {kind} option {key!r} (host, port)")
    return opts


def parse_tcti(text: str) -> TctiSpec:
    """Parse a TCTI string; TpmError(INVALID_ARGUMENT) on bad syntax or an unknown kind."""
    if not isinstance(text, str):
        raise _bad(f"TCTI must be a string, not {type(text).__name__}")
    s = text.strip()
    if not s:
        raise _bad("empty TCTI string")
    name, _, conf = s.partition(":")
    kind = _kind_of(name.strip())
    conf = conf.strip()
    if kind == "device":
        return TctiSpec("device", MappingProxyType({"path": conf} if conf else {}))
    if kind == "tbs":
        if conf:
            raise _bad(f"{text!r}: the tbs TCTI takes no options")
        return TctiSpec("tbs")
    return TctiSpec(kind, MappingProxyType(_network_options(kind, conf, text)))


def default_tcti(platform: str | None = None,
                 exists: Callable[[str], bool] = os.path.exists) -> str | None:
    """The platform default: Windows ``tbs``; elsewhere /dev/tpmrm0, then /dev/tpm0; else None."""
    platform = sys.platform if platform is None else platform
    if platform == "win32":
        return "tbs"
    for path in ("/dev/tpmrm0", "/dev/tpm0"):
        if exists(path):
            return f"device:{path}"
    return None


def resolve_tcti(explicit: str | None = None) -> tuple[str | None, str]:
    """Which TCTI to use and why: ``(tcti, source)``.

    source is "argument", "TPM2_ATTEST_TCTI", "TPM2TOOLS_TCTI" or "default"; tcti is None
    when nothing is configured and no TPM device exists. Empty variables count as unset.
    """
    if explicit is not None:
        return explicit, "argument"
    for var in ENV_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            return value, var
    return default_tcti(), "default"


def env_hint(var: str, exc: TpmError) -> str:
    """What to do about a TCTI from environment variable ``var`` that does not parse."""
    if var == "TPM2TOOLS_TCTI":
        return (f"$TPM2TOOLS_TCTI is tpm2-tools' setting; tpm2-attest reads $TPM2_ATTEST_TCTI "
                f"first: set it to {INSTEAD}")
    return exc.hint or f"set ${var} to {INSTEAD}, or unset it"


def open_transport(tcti: str | None = None, *, timeout: float | None = None) -> Transport:
    """Open the TPM named by ``tcti`` (or chosen by :func:`resolve_tcti`).

    Raises TpmError: TPM_NOT_FOUND when there is none; INVALID_ARGUMENT for a bad string.
    """
    chosen, source = resolve_tcti(tcti)
    if chosen is None:
        raise TpmError("no TPM found: no /dev/tpmrm0 or /dev/tpm0, no TCTI given",
                       code=ErrorCode.TPM_NOT_FOUND,
                       hint="pass a TCTI or set $TPM2_ATTEST_TCTI, e.g. "
                            "swtpm:host=127.0.0.1,port=2321")
    try:
        spec = parse_tcti(chosen)
    except TpmError as exc:
        if source in ENV_VARS:
            raise TpmError(f"${source}={chosen!r}: {exc.message}", code=exc.code,
                           hint=env_hint(source, exc)) from None
        raise
    return spec.open(timeout=timeout)
