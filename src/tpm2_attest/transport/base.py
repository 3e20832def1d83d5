"""The transport contract: one command's bytes in, one complete, framing-checked response out.

Every transport validates what comes back before anyone parses it: the 10-byte header
(tag u16, size u32, rc u32) must carry a response tag and a size between 10 and
:data:`MAX_RESPONSE_SIZE`, and exactly ``size`` bytes must arrive before the deadline.
Anything else is ``TpmError(code=TRANSPORT)``, never a hang.
"""

from __future__ import annotations

import math
import struct
import threading
from abc import ABC, abstractmethod
from types import TracebackType
from typing import ClassVar, Final, Self

from ..errors import ErrorCode, TpmError

HEADER: Final = struct.Struct(">HII")
"""TPM command/response header: tag, size (of the whole buffer), command or response code."""
HEADER_SIZE: Final = 10
MAX_RESPONSE_SIZE: Final = 64 * 1024
"""Upper bound on a response (real TPMs answer at most a few KiB; TBS allows 256 KiB input)."""
MAX_COMMAND_SIZE: Final = 64 * 1024
RESPONSE_TAGS: Final = frozenset({0x8001, 0x8002, 0x00C4})
"""TPM_ST_NO_SESSIONS, TPM_ST_SESSIONS, and TPM_ST_RSP_COMMAND (a TPM's answer to a bad tag)."""

DEFAULT_TCP_TIMEOUT: Final = 60.0
"""Seconds for a TCP simulator to answer one command (swtpm RSA keygen takes ~50 ms)."""
DEFAULT_DEVICE_TIMEOUT: Final = 120.0
"""Seconds for a hardware TPM: RSA key generation on a discrete TPM can take a minute."""


def transport_error(message: str, *, hint: str | None = None) -> TpmError:
    """A ``TpmError(code=TRANSPORT)``: the bytes could not be exchanged."""
    return TpmError(message, code=ErrorCode.TRANSPORT, hint=hint)


def check_command(command: bytes) -> None:
    """Refuse a command whose header size disagrees with its length.

    A stream transport would otherwise wait for bytes that never come (or send the
    TPM a desynchronized stream), so this is caught before anything is sent.
    """
    n = len(command)
    if n < HEADER_SIZE:
        raise TpmError(f"command of {n} bytes is shorter than a TPM header",
                       code=ErrorCode.INVALID_ARGUMENT)
    if n > MAX_COMMAND_SIZE:
        raise TpmError(f"command of {n} bytes exceeds {MAX_COMMAND_SIZE} bytes",
                       code=ErrorCode.INVALID_ARGUMENT)
    size = HEADER.unpack_from(command)[1]
    if size != n:
        raise TpmError(f"command header says {size} bytes but {n} were given",
                       code=ErrorCode.INVALID_ARGUMENT)


def response_size(header: bytes | bytearray | memoryview, where: str) -> int:
    """The total size announced by a response header, after checking tag and bounds."""
    tag, size, _rc = HEADER.unpack_from(header)
    if tag not in RESPONSE_TAGS:
        raise transport_error(f"{where}: not a TPM response (tag 0x{tag:04x})")
    if size < HEADER_SIZE:
        raise transport_error(f"{where}: response size {size} is smaller than its header")
    if size > MAX_RESPONSE_SIZE:
        raise transport_error(f"{where}: response size {size} exceeds {MAX_RESPONSE_SIZE} bytes")
    return int(size)


def check_response(data: bytes, where: str) -> bytes:
    """Validate a response that arrived as one buffer (TBS, a device read)."""
    if len(data) < HEADER_SIZE:
        raise transport_error(f"{where}: truncated response ({len(data)} bytes, no header)")
    size = response_size(data, where)
    if size != len(data):
        raise transport_error(f"{where}: response header says {size} bytes, got {len(data)}")
    return data


def check_timeout(timeout: float | None, default: float) -> float:
    """The timeout to use: ``default`` for None, else a positive finite number of seconds."""
    if timeout is None:
        return default
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
            timeout > 0 and math.isfinite(timeout)):
        raise TpmError(f"timeout must be a positive number of seconds, not {timeout!r}",
                       code=ErrorCode.INVALID_ARGUMENT)
    return float(timeout)


class Transport(ABC):
    """Sends one TPM command, returns one complete response; thread-safe, a context manager.

    ``send`` holds a lock for the whole exchange, so one Transport can be shared between
    threads (commands never interleave on the wire). Subclasses implement ``_exchange``.
    """

    kind: ClassVar[str]
    """"device" | "swtpm" | "mssim" | "tbs"."""

    def __init__(self, tcti: str, timeout: float) -> None:
        self.tcti: str = tcti
        """The canonical TCTI string of this transport (e.g. ``swtpm:host=127.0.0.1,port=2321``)."""
        self.timeout: float = timeout
        """Seconds allowed for one command's round trip."""
        self._lock = threading.Lock()
        self._closed = False

    def send(self, command: bytes) -> bytes:
        """Send ``command`` (a complete TPM command) and return the complete response."""
        if type(command) is not bytes:
            command = bytes(command)
        check_command(command)
        with self._lock:
            if self._closed:
                raise transport_error(f"{self.tcti}: transport is closed")
            return self._exchange(command)

    @abstractmethod
    def _exchange(self, command: bytes) -> bytes:
        """One round trip (called with the lock held, command already checked)."""

    def close(self) -> None:
        """Release the connection/handle; idempotent. Later ``send`` calls raise TRANSPORT."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close()

    def _close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release OS resources (called once, with the lock held)."""

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<{type(self).__name__} {self.tcti}{state}>"
