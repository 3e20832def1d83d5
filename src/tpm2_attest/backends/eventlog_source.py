"""Read the firmware's TCG event log of this machine (device side; parsing is in ``eventlog``).

Linux: ``/sys/kernel/security/tpmN/binary_bios_measurements`` for the TPM behind the opened
``/dev/tpmN`` or ``/dev/tpmrmN`` (securityfs is root-only). Windows: ``Tbsi_Get_TCG_Log``
through :mod:`tpm2_attest.transport.tbs`. A software TPM has no firmware log.
"""

from __future__ import annotations

import errno
import importlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final, cast

from ..errors import ErrorCode, TpmError

SECURITYFS: Path = Path("/sys/kernel/security")
"""Where securityfs is mounted (a module attribute so tests can point it elsewhere)."""

_DEVICE: Final = re.compile(r"tpm(?:rm)?(\d+)\Z")
_ROOT_HINT: Final = ("run as root (or with CAP_SYS_ADMIN): securityfs "
                     "(/sys/kernel/security) is root-only")


def tpm_index(device_path: str | None) -> int:
    """The N of the TPM behind ``/dev/tpmN``, ``/dev/tpmrmN`` or a ``device:`` TCTI string.

    None means the first TPM (0). Raises TpmError(UNSUPPORTED) for simulators, which have no
    firmware log, and TpmError(INVALID_ARGUMENT) for paths that name no TPM device.
    """
    if device_path is None:
        return 0
    path = device_path
    if ":" in path and not path.startswith("/"):
        scheme, _, rest = path.partition(":")
        if scheme in ("swtpm", "mssim", "tbs"):
            raise TpmError(f"{scheme} has no firmware event log", code=ErrorCode.UNSUPPORTED,
                           hint="event logs come from platform firmware; tests synthesize them")
        if scheme != "device":
            raise TpmError(f"cannot tell which TPM {device_path!r} is",
                           code=ErrorCode.INVALID_ARGUMENT)
        path = rest.split(",", 1)[0] or "/dev/tpmrm0"
    for candidate in (path, os.path.realpath(path)):
        m = _DEVICE.search(os.path.basename(candidate))
        if m:
            return int(m.group(1))
    raise TpmError(f"{device_path!r} is not a /dev/tpmN or /dev/tpmrmN device",
                   code=ErrorCode.INVALID_ARGUMENT)


def _read_linux(device_path: str | None) -> bytes:
    n = tpm_index(device_path)
    path = SECURITYFS / f"tpm{n}" / "binary_bios_measurements"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except PermissionError as exc:
        raise TpmError(f"cannot read the event log {path}: {exc.strerror}",
                       code=ErrorCode.REQUIRES_ELEVATION, hint=_ROOT_HINT) from None
    except FileNotFoundError:
        if SECURITYFS.is_dir() and not os.access(SECURITYFS, os.R_OK | os.X_OK):
            raise TpmError(f"cannot read the event log {path}: securityfs is not accessible",
                           code=ErrorCode.REQUIRES_ELEVATION, hint=_ROOT_HINT) from None
        hint = ("is securityfs mounted? (mount -t securityfs securityfs /sys/kernel/security); "
                "the firmware may also provide no log (legacy BIOS, TPM without ACPI log area)")
        raise TpmError(f"no TCG event log at {path}", code=ErrorCode.TPM_NOT_FOUND,
                       hint=hint) from None
    except OSError as exc:
        code = (ErrorCode.TPM_NOT_FOUND if exc.errno in (errno.ENODEV, errno.ENXIO)
                else ErrorCode.TRANSPORT)
        raise TpmError(f"cannot read the event log {path}: {exc.strerror or exc}",
                       code=code) from None
    if not data:
        raise TpmError(f"the event log {path} is empty", code=ErrorCode.TPM_NOT_FOUND)
    return data


def _read_windows() -> bytes:
    tbs = importlib.import_module("tpm2_attest.transport.tbs")
    get_tcg_log = cast(Callable[[], bytes], tbs.get_tcg_log)
    data = bytes(get_tcg_log())
    if not data:
        raise TpmError("Tbsi_Get_TCG_Log returned an empty log", code=ErrorCode.TPM_NOT_FOUND)
    return data


def read_event_log(device_path: str | None = None) -> bytes:
    """The raw TCG event log of the TPM at ``device_path`` (None: the first/only TPM).

    Raises TpmError: TPM_NOT_FOUND when there is no log, REQUIRES_ELEVATION (with a hint)
    when it exists but is unreadable, UNSUPPORTED for simulators.
    """
    if sys.platform == "win32":
        return _read_windows()
    return _read_linux(device_path)
