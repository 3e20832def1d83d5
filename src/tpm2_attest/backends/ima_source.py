"""Read this machine's IMA measurement list from securityfs (device side; parsing is in ``ima``).

``/sys/kernel/security/ima/binary_runtime_measurements`` (SHA-1 template hashes), and on
kernels since 6.10 one file per PCR bank, ``binary_runtime_measurements_<alg>``, whose
template hashes are that bank's (``_sha256``, ``_sm3``...); the ``ascii_*`` twins hold the
same entries as text. Root-only. Reading from a byte offset returns only the entries after
those a verifier already has (securityfs lists are seekable).
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Final

from ..errors import ErrorCode, TpmError

SECURITYFS: Path = Path("/sys/kernel/security")
"""Where securityfs is mounted (a module attribute so tests can point it elsewhere)."""

_KERNEL_NAMES: Final = {"sha1": "sha1", "sha256": "sha256", "sha384": "sha384", "sha512": "sha512",
                        "sm3_256": "sm3", "sm3": "sm3", "sha3_256": "sha3-256", "sha3-256": "sha3-256",
                        "sha3_384": "sha3-384", "sha3-384": "sha3-384", "sha3_512": "sha3-512",
                        "sha3-512": "sha3-512"}
_ROOT_HINT: Final = ("run as root (or with CAP_SYS_ADMIN): securityfs "
                     "(/sys/kernel/security) is root-only")


def ima_list_path(bank: str | None = None, *, ascii: bool = False,
                  securityfs: str | os.PathLike[str] | None = None) -> Path:
    """The securityfs file of the list with ``bank``'s template hashes (None or ``sha1``: the
    classic file)."""
    root = Path(securityfs) if securityfs is not None else SECURITYFS
    stem = "ascii_runtime_measurements" if ascii else "binary_runtime_measurements"
    if bank is None or bank.lower() in ("sha1", "sha-1"):
        return root / "ima" / stem
    name = _KERNEL_NAMES.get(bank.lower().replace("-", "_"), _KERNEL_NAMES.get(bank.lower()))
    if name is None:
        raise TpmError(f"no IMA list for PCR bank {bank!r}", code=ErrorCode.INVALID_ARGUMENT)
    return root / "ima" / f"{stem}_{name}"


def read_ima_log(bank: str | None = None, *, ascii: bool = False, offset: int = 0,
                 securityfs: str | os.PathLike[str] | None = None) -> bytes:
    """The raw IMA measurement list from byte ``offset`` on (``b""`` when nothing is new).

    Raises TpmError: UNSUPPORTED on Windows, when the kernel has no IMA (or securityfs is
    not mounted) or no list for ``bank`` (kernels before 6.10 list SHA-1 template hashes
    only: read that list and verify any bank from it); REQUIRES_ELEVATION when unreadable;
    INVALID_ARGUMENT for a negative offset or an offset past the end.
    """
    if sys.platform == "win32" and securityfs is None:
        raise TpmError("Windows has no IMA measurement list", code=ErrorCode.UNSUPPORTED)
    if offset < 0:
        raise TpmError("offset must be >= 0", code=ErrorCode.INVALID_ARGUMENT)
    path = ima_list_path(bank, ascii=ascii, securityfs=securityfs)
    try:
        with open(path, "rb") as f:
            if offset:
                f.seek(offset)
            data = f.read()
            if offset and not data and f.seek(0, os.SEEK_END) < offset:
                raise TpmError(f"offset {offset} is past the end of {path} (reboot?)",
                               code=ErrorCode.INVALID_ARGUMENT)
    except PermissionError as exc:
        raise TpmError(f"cannot read the IMA list {path}: {exc.strerror}",
                       code=ErrorCode.REQUIRES_ELEVATION, hint=_ROOT_HINT) from None
    except FileNotFoundError:
        root = path.parent.parent
        if root.is_dir() and not os.access(root, os.R_OK | os.X_OK):
            raise TpmError(f"cannot read the IMA list {path}: securityfs is not accessible",
                           code=ErrorCode.REQUIRES_ELEVATION, hint=_ROOT_HINT) from None
        if (path.parent / "binary_runtime_measurements").exists():
            raise TpmError(f"this kernel has no IMA list {path.name}", code=ErrorCode.UNSUPPORTED,
                           hint="kernels before 6.10 list SHA-1 template hashes only; read the "
                                "SHA-1 list (bank sha1) and verify any PCR bank from it") from None
        raise TpmError(f"no IMA measurement list at {path}", code=ErrorCode.UNSUPPORTED,
                       hint="the kernel needs CONFIG_IMA and securityfs mounted "
                            "(mount -t securityfs securityfs /sys/kernel/security)") from None
    except OSError as exc:
        code = ErrorCode.UNSUPPORTED if exc.errno in (errno.ENODEV, errno.ENXIO) else ErrorCode.TRANSPORT
        raise TpmError(f"cannot read the IMA list {path}: {exc.strerror or exc}", code=code) from None
    return data
