"""A Linux TPM character device: ``/dev/tpmrm0`` (kernel resource manager) or ``/dev/tpm0``.

The file descriptor stays open for the transport's life: with ``/dev/tpmrmN`` the kernel
keeps transient objects and sessions per open file, and closing it flushes them. The
device is opened non-blocking so that ``write`` queues the command and ``poll`` enforces
the timeout (kernels before 4.20 ignore O_NONBLOCK here and block in ``write``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import threading
import time
from typing import Final

from ..errors import ErrorCode, TpmError
from .base import (
    DEFAULT_DEVICE_TIMEOUT,
    HEADER_SIZE,
    MAX_RESPONSE_SIZE,
    Transport,
    check_timeout,
    response_size,
    transport_error,
)

DEFAULT_DEVICES: Final = ("/dev/tpmrm0", "/dev/tpm0")
"""Tried in order when no path is given (the resource manager first, like tpm2-tss)."""
ELEVATION_HINT: Final = "add the user to the 'tss' group or run as root"
BUSY_HINT: Final = ("another process (or a resource manager such as tpm2-abrmd) holds it; "
                    "use /dev/tpmrm0, which the kernel shares between processes")


def default_device_path() -> str | None:
    """The first of /dev/tpmrm0, /dev/tpm0 that exists, else None."""
    for path in DEFAULT_DEVICES:
        if os.path.exists(path):
            return path
    return None


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _open_error(path: str, exc: OSError) -> TpmError:
    err = exc.errno
    if err in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        return TpmError(f"no TPM device at {path}", code=ErrorCode.TPM_NOT_FOUND)
    if err in (errno.EACCES, errno.EPERM):
        return TpmError(f"permission denied opening {path}", code=ErrorCode.REQUIRES_ELEVATION,
                        hint=ELEVATION_HINT)
    if err == errno.EBUSY:
        return transport_error(f"{path} is busy", hint=BUSY_HINT)
    return transport_error(f"cannot open {path}: {exc.strerror or exc}")


class DeviceTransport(Transport):
    """A TPM character device, one file descriptor for the transport's life."""

    kind = "device"

    def __init__(self, path: str | None = None, *, timeout: float | None = None) -> None:
        if path is None:
            path = default_device_path()
            if path is None:
                raise TpmError("no TPM device (/dev/tpmrm0, /dev/tpm0)",
                               code=ErrorCode.TPM_NOT_FOUND)
        super().__init__(f"device:{path}", check_timeout(timeout, DEFAULT_DEVICE_TIMEOUT))
        self.path = path
        self._fd: int | None = self._open()

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
        try:
            return os.open(self.path, flags)
        except OSError as exc:
            raise _open_error(self.path, exc) from None

    def _exchange(self, command: bytes) -> bytes:
        fd = self._fd
        if fd is None:  # dropped after a timeout: start over on a fresh descriptor
            fd = self._fd = self._open()
        deadline = time.monotonic() + self.timeout
        try:
            written = os.write(fd, command)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise transport_error(f"{self.path} is busy", hint=BUSY_HINT) from None
            raise transport_error(f"{self.path}: write failed: {exc.strerror or exc}") from None
        if written != len(command):
            self._drop()
            raise transport_error(f"{self.path}: short write ({written} of {len(command)} bytes)")
        try:
            return self._read_response(fd, deadline)
        except BaseException:
            # A pending or half-read response would poison the next command. Closing waits
            # for a command still running in the TPM, so do that off this thread.
            self._drop(background=True)
            raise

    def _read_response(self, fd: int, deadline: float) -> bytes:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        data = b""
        expected: int | None = None
        while expected is None or len(data) < expected:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(max(1, int(remaining * 1000 + 0.999))):
                raise transport_error(f"{self.path}: no complete response within "
                                      f"{self.timeout:g} s")
            try:
                chunk = os.read(fd, MAX_RESPONSE_SIZE)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise transport_error(f"{self.path}: read failed: {exc.strerror or exc}") from None
            if not chunk:
                raise transport_error(f"{self.path}: end of file after {len(data)} bytes")
            data += chunk
            if expected is None and len(data) >= HEADER_SIZE:
                expected = response_size(data, self.path)
        if len(data) != expected:
            raise transport_error(f"{self.path}: response header says {expected} bytes, "
                                  f"got {len(data)}")
        return data

    def _drop(self, *, background: bool = False) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            if background:
                threading.Thread(target=_close_quietly, args=(fd,), daemon=True).start()
            else:
                _close_quietly(fd)

    def _close(self) -> None:
        self._drop()
