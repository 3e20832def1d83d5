"""swtpm's TCP data port: plain TPM command bytes in, plain response bytes out.

swtpm serves one data connection at a time: a client that keeps its connection open
blocks every other client (tpm2-tools, another process, another Transport). So this
transport connects per command, like tpm2-tss's ``swtpm`` TCTI; on loopback that costs
about 0.05 ms. The TCP helpers here are shared with :mod:`.mssim`.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Final

from ..errors import ErrorCode, TpmError
from .base import (
    DEFAULT_TCP_TIMEOUT,
    HEADER_SIZE,
    RESPONSE_TAGS,
    Transport,
    check_timeout,
    response_size,
    transport_error,
)

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 2321
RECV_SIZE: Final = 8192
"""First read size: TPM responses are at most a few KiB (TPM_PT_MAX_RESPONSE_SIZE)."""

_SLACK: Final = 0.05
SockAddr = tuple[Any, ...]
"""(host, port) for IPv4, (host, port, flowinfo, scope_id) for IPv6."""


class StreamReader:
    """Reads exact byte counts from a socket under one overall deadline.

    The caller sets the socket's timeout once; a read lowers it only when the remaining budget
    is clearly smaller (by 50 ms), so a peer that trickles bytes cannot stretch the deadline
    and the common case costs no extra system call.
    """

    __slots__ = ("_buf", "_deadline", "_sock", "_timeout", "_where")

    def __init__(self, sock: socket.socket, deadline: float, timeout: float, where: str,
                 initial: bytes = b"") -> None:
        self._sock = sock
        self._deadline = deadline
        self._timeout = timeout
        self._where = where
        self._buf = initial

    @property
    def pending(self) -> int:
        """Bytes received beyond what was read (a protocol error on a framed stream)."""
        return len(self._buf)

    def read(self, n: int, what: str, *, check_tag: bool = False) -> bytes:
        """Exactly ``n`` bytes; TRANSPORT on EOF, TimeoutError past the deadline.

        ``check_tag``: as soon as two bytes are in, they must be a TPM response tag (a peer
        that is not a TPM, such as swtpm's control port answering a 4-byte result, fails at
        once instead of leaving us waiting for the rest of a header)."""
        buf = self._buf
        if check_tag and len(buf) >= 2:
            self._check_tag(buf)
            check_tag = False
        if len(buf) >= n:
            self._buf = buf[n:]
            return buf[:n]
        parts = [buf]
        have = len(buf)
        while have < n:
            if check_tag and have >= 2:
                self._check_tag(b"".join(parts))
                check_tag = False
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            if remaining < self._timeout - _SLACK:
                self._sock.settimeout(remaining)
                self._timeout = remaining
            chunk = self._sock.recv(max(n - have, 4096))
            if not chunk:
                raise transport_error(
                    f"{self._where}: connection closed after {have} of {n} bytes of the {what}")
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        self._buf = data[n:]
        return data[:n]

    def _check_tag(self, head: bytes) -> None:
        if int.from_bytes(head[:2], "big") not in RESPONSE_TAGS:
            raise transport_error(f"{self._where}: not a TPM response (it begins 0x{head[:4].hex()})")

    def read_response(self, expected: int | None = None) -> bytes:
        """One complete TPM response (header checked, then exactly its size).

        ``expected``: the size an outer framing announced; the header must agree."""
        header = self.read(HEADER_SIZE, "response header", check_tag=True)
        size = response_size(header, self._where)
        if expected is not None and size != expected:
            raise transport_error(f"{self._where}: framing says {expected} bytes but the "
                                  f"response header says {size}")
        if size == HEADER_SIZE:
            return header
        return header + self.read(size - HEADER_SIZE, "response")


def resolve_address(host: str, port: int, where: str) -> tuple[socket.AddressFamily, SockAddr]:
    """Resolve ``host``:``port`` once, so a command does not pay for getaddrinfo."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise TpmError(f"{where}: cannot resolve host {host!r}: {exc}",
                       code=ErrorCode.TPM_NOT_FOUND) from None
    family, _type, _proto, _canon, sockaddr = infos[0]
    return family, tuple(sockaddr)


def connect(family: socket.AddressFamily, address: SockAddr, timeout: float,
            where: str) -> socket.socket:
    """A connected TCP socket with TCP_NODELAY and ``timeout``; a refusal is TPM_NOT_FOUND."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(timeout)
        sock.connect(address)
    except ConnectionRefusedError:
        sock.close()
        raise TpmError(f"{where}: connection refused (nothing is listening)",
                       code=ErrorCode.TPM_NOT_FOUND,
                       hint="is the simulator running at that host and port?") from None
    except TimeoutError:
        sock.close()
        raise transport_error(f"{where}: connect timed out after {timeout:g} s") from None
    except OSError as exc:
        sock.close()
        raise TpmError(f"{where}: cannot connect: {exc.strerror or exc}",
                       code=ErrorCode.TPM_NOT_FOUND) from None
    return sock


def io_error(where: str, exc: OSError, timeout: float) -> TpmError:
    """Map a socket error during an exchange to TRANSPORT with a readable message."""
    if isinstance(exc, TimeoutError):
        return transport_error(f"{where}: no complete response within {timeout:g} s")
    return transport_error(f"{where}: {exc.strerror or exc}")


def tcp_tcti(kind: str, host: str, port: int) -> str:
    """Canonical TCTI string of a TCP simulator."""
    return f"{kind}:host={host},port={port}"


class SwtpmTransport(Transport):
    """swtpm's data port, one TCP connection per command (swtpm serves one at a time)."""

    kind = "swtpm"

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
                 timeout: float | None = None, probe: bool = True) -> None:
        """``probe`` connects once now, so a missing simulator is TPM_NOT_FOUND at open time."""
        super().__init__(tcp_tcti(self.kind, host, port), check_timeout(timeout, DEFAULT_TCP_TIMEOUT))
        self.host = host
        self.port = port
        self._family, self._address = resolve_address(host, port, self.tcti)
        if probe:
            connect(self._family, self._address, self.timeout, self.tcti).close()

    def _exchange(self, command: bytes) -> bytes:
        timeout = self.timeout
        deadline = time.monotonic() + timeout
        sock = connect(self._family, self._address, timeout, self.tcti)
        try:
            sock.sendall(command)
            data = sock.recv(RECV_SIZE)
            if len(data) >= HEADER_SIZE and response_size(data, self.tcti) == len(data):
                return data  # the usual case: the whole response in one segment
            reader = StreamReader(sock, deadline, timeout, self.tcti, data)
            response = reader.read_response()
            if reader.pending:
                raise transport_error(f"{self.tcti}: {reader.pending} unexpected bytes after "
                                      "the response")
            return response
        except OSError as exc:
            raise io_error(self.tcti, exc, timeout) from None
        finally:
            sock.close()
