"""The Microsoft TPM 2.0 simulator's TCP protocol (also spoken by IBM's tpm_server).

Command port: ``u32 TPM_SEND_COMMAND(8) | u8 locality | u32 length | command`` and back
``u32 length | response | u32 0``. The connection is kept open (the simulator serves one
client per connection). swtpm's data port accepts this framing too, but then this
transport holds swtpm's only data connection until it is closed. The platform port
(command port + 1) takes ``u32 signal`` and answers ``u32 0``: see :meth:`power_on`.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Final

from .base import (
    DEFAULT_TCP_TIMEOUT,
    HEADER_SIZE,
    MAX_RESPONSE_SIZE,
    Transport,
    check_timeout,
    transport_error,
)
from .swtpm_tcp import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    StreamReader,
    connect,
    io_error,
    resolve_address,
    tcp_tcti,
)

TPM_SEND_COMMAND: Final = 8
TPM_SESSION_END: Final = 20
TPM_SIGNAL_POWER_ON: Final = 1
TPM_SIGNAL_POWER_OFF: Final = 2
TPM_SIGNAL_NV_ON: Final = 11
TPM_SIGNAL_NV_OFF: Final = 12

_SEND: Final = struct.Struct(">IBI")
_U32: Final = struct.Struct(">I")


class MssimTransport(Transport):
    """MS simulator framing over one persistent TCP connection (reconnects after an error)."""

    kind = "mssim"

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
                 timeout: float | None = None, locality: int = 0) -> None:
        if not 0 <= locality <= 4:
            raise ValueError("locality must be 0..4")
        super().__init__(tcp_tcti(self.kind, host, port), check_timeout(timeout, DEFAULT_TCP_TIMEOUT))
        self.host = host
        self.port = port
        self.platform_port = port + 1
        self.locality = locality
        self._family, self._address = resolve_address(host, port, self.tcti)
        self._sock: socket.socket | None = connect(self._family, self._address, self.timeout,
                                                   self.tcti)

    def _exchange(self, command: bytes) -> bytes:
        timeout = self.timeout
        deadline = time.monotonic() + timeout
        sock = self._sock
        if sock is None:
            sock = self._sock = connect(self._family, self._address, timeout, self.tcti)
        else:
            sock.settimeout(timeout)
        try:
            sock.sendall(_SEND.pack(TPM_SEND_COMMAND, self.locality, len(command)) + command)
            reader = StreamReader(sock, deadline, timeout, self.tcti)
            length = _U32.unpack(reader.read(4, "response length"))[0]
            if not HEADER_SIZE <= length <= MAX_RESPONSE_SIZE:
                raise transport_error(f"{self.tcti}: response length {length} out of range")
            response = reader.read_response(length)
            ack = _U32.unpack(reader.read(4, "acknowledgement"))[0]
            if ack != 0:
                raise transport_error(f"{self.tcti}: simulator acknowledged with {ack}, not 0")
            if reader.pending:
                raise transport_error(f"{self.tcti}: {reader.pending} unexpected bytes after "
                                      "the response")
            return response
        except BaseException as exc:
            # The stream position is unknown now: never reuse this connection.
            self._drop()
            if isinstance(exc, OSError):
                raise io_error(self.tcti, exc, timeout) from None
            raise

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _close(self) -> None:
        sock = self._sock
        if sock is not None:
            try:
                sock.settimeout(1.0)
                sock.sendall(_U32.pack(TPM_SESSION_END))
            except OSError:
                pass
            self._drop()

    # -- platform port (the MS simulator / tpm_server only; swtpm's control port differs) ---

    def platform_signal(self, signal: int) -> None:
        """Send one platform signal (TPM_SIGNAL_*) on the platform port; TRANSPORT on failure."""
        where = f"{self.tcti} (platform port {self.platform_port})"
        family, address = resolve_address(self.host, self.platform_port, where)
        sock = connect(family, address, self.timeout, where)
        try:
            sock.sendall(_U32.pack(signal))
            reader = StreamReader(sock, time.monotonic() + self.timeout, self.timeout, where)
            result = _U32.unpack(reader.read(4, "platform result"))[0]
        except OSError as exc:
            raise io_error(where, exc, self.timeout) from None
        finally:
            sock.close()
        if result != 0:
            raise transport_error(f"{where}: signal {signal} failed with {result}")

    def power_on(self) -> None:
        """TPM_SIGNAL_POWER_ON then TPM_SIGNAL_NV_ON: what a fresh simulator needs before Startup."""
        self.platform_signal(TPM_SIGNAL_POWER_ON)
        self.platform_signal(TPM_SIGNAL_NV_ON)
