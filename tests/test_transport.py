"""Transports against a real swtpm, plus a hostile fake server for our response validation.

The fake TCP server and the pty-backed "device" only exercise *our* framing checks and
timeouts; every TPM answer in these tests comes from swtpm.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tpm2_attest import ErrorCode, TpmError
from tpm2_attest.embedded import EmbeddedSwtpm
from tpm2_attest.transport import TctiSpec, open_transport, parse_tcti, resolve_tcti, tcti
from tpm2_attest.transport.base import MAX_RESPONSE_SIZE
from tpm2_attest.transport.device import DeviceTransport
from tpm2_attest.transport.mssim import MssimTransport
from tpm2_attest.transport.swtpm_tcp import SwtpmTransport

# ---------------------------------------------------------------------------------------------
# Hand-built commands (the commands layer is not under test here)


def get_random(n: int) -> bytes:
    return struct.pack(">HIIH", 0x8001, 12, 0x17B, n)


def pcr_read_sha256(pcr: int) -> bytes:
    select_bits = bytearray(3)
    select_bits[pcr // 8] |= 1 << (pcr % 8)
    body = struct.pack(">IHB", 1, 0x000B, 3) + bytes(select_bits)
    return struct.pack(">HII", 0x8001, 10 + len(body), 0x17E) + body


def check_random(rsp: bytes, n: int) -> bytes:
    tag, size, rc = struct.unpack_from(">HII", rsp)
    assert (tag, size, rc) == (0x8001, 12 + n, 0), rsp.hex()
    assert struct.unpack_from(">H", rsp, 10)[0] == n
    return rsp[12:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# TCTI strings


@pytest.mark.parametrize(("text", "canonical"), [
    ("device", "device"),
    ("device:", "device"),
    ("device:/dev/tpmrm0", "device:/dev/tpmrm0"),
    ("device:/dev/tpm0", "device:/dev/tpm0"),
    ("swtpm", "swtpm:host=127.0.0.1,port=2321"),
    ("swtpm:", "swtpm:host=127.0.0.1,port=2321"),
    ("swtpm:port=2400", "swtpm:host=127.0.0.1,port=2400"),
    ("swtpm:host=localhost", "swtpm:host=localhost,port=2321"),
    ("swtpm:host=127.0.0.1,port=2321", "swtpm:host=127.0.0.1,port=2321"),
    ("swtpm:port=2400,host=10.0.0.1", "swtpm:host=10.0.0.1,port=2400"),
    (" swtpm : host = ::1 , port = 5 ", "swtpm:host=::1,port=5"),
    ("swtpm:host=[::1],port=5", "swtpm:host=::1,port=5"),
    ("mssim", "mssim:host=127.0.0.1,port=2321"),
    ("mssim:host=sim.example,port=2321", "mssim:host=sim.example,port=2321"),
    ("mssim:tcp://127.0.0.1:2400/", "mssim:host=127.0.0.1,port=2400"),
    ("mssim:tcp://[::1]:2400", "mssim:host=::1,port=2400"),
    ("mssim:tcp://localhost", "mssim:host=localhost,port=2321"),
    ("libtss2-tcti-swtpm.so.0:port=2400", "swtpm:host=127.0.0.1,port=2400"),
    ("libtss2-tcti-device.so:/dev/tpm0", "device:/dev/tpm0"),
    ("tcti-mssim", "mssim:host=127.0.0.1,port=2321"),
    ("tbs", "tbs"),
    ("TBS", "tbs"),
])
def test_parse_tcti(text: str, canonical: str) -> None:
    spec = parse_tcti(text)
    assert spec.canonical == canonical == str(spec)
    assert parse_tcti(canonical) == spec  # canonical form is a fixed point


@pytest.mark.parametrize(("text", "fragment"), [
    ("", "empty"),
    ("   ", "empty"),
    ("tabrmd", "does not implement"),
    ("tabrmd:bus_name=com.intel.tss2.Tabrmd", "does not implement"),
    ("libtpms", "does not implement"),
    ("nonsense:foo", "unknown TCTI kind"),
    ("swtpm:port=0", "port"),
    ("swtpm:port=65536", "port"),
    ("swtpm:port=abc", "port"),
    ("swtpm:port=²", "port"),
    ("swtpm:host=", "host"),
    ("swtpm:host=a b", "host"),
    ("swtpm:port=1,port=2", "twice"),
    ("swtpm:hots=x", "unknown swtpm option"),
    ("swtpm:2321", "key=value"),
    ("mssim:tcp://127.0.0.1:99999", "Port"),
    ("mssim:tcp://127.0.0.1:2321/path", "path"),
    ("tbs:foo", "no options"),
])
def test_parse_tcti_errors(text: str, fragment: str) -> None:
    with pytest.raises(TpmError) as ei:
        parse_tcti(text)
    assert ei.value.code == ErrorCode.INVALID_ARGUMENT
    assert fragment.lower() in str(ei.value).lower()


def test_tcti_spec_options_are_read_only() -> None:
    spec = parse_tcti("swtpm:port=2400")
    assert spec == TctiSpec("swtpm", {"host": "127.0.0.1", "port": "2400"})
    with pytest.raises(TypeError):
        spec.options["port"] = "1"  # type: ignore[index]


def test_resolve_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tcti, "default_tcti", lambda: "device:/dev/tpmrm0")
    assert resolve_tcti(None) == ("device:/dev/tpmrm0", "default")
    monkeypatch.setenv("TPM2TOOLS_TCTI", "swtpm:port=3")
    assert resolve_tcti(None) == ("swtpm:port=3", "TPM2TOOLS_TCTI")
    monkeypatch.setenv("TPM2_ATTEST_TCTI", "mssim:port=4")
    assert resolve_tcti(None) == ("mssim:port=4", "TPM2_ATTEST_TCTI")
    assert resolve_tcti("swtpm:port=5") == ("swtpm:port=5", "argument")
    monkeypatch.setenv("TPM2_ATTEST_TCTI", "  ")  # blank counts as unset
    assert resolve_tcti(None) == ("swtpm:port=3", "TPM2TOOLS_TCTI")


def test_default_tcti_per_platform() -> None:
    def only(*present: str) -> Callable[[str], bool]:
        return lambda p: p in present

    assert tcti.default_tcti("win32", only()) == "tbs"
    assert tcti.default_tcti("linux", only("/dev/tpmrm0", "/dev/tpm0")) == "device:/dev/tpmrm0"
    assert tcti.default_tcti("linux", only("/dev/tpm0")) == "device:/dev/tpm0"
    assert tcti.default_tcti("linux", only()) is None


def test_open_transport_without_any_tpm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tcti, "default_tcti", lambda: None)
    with pytest.raises(TpmError) as ei:
        open_transport()
    assert ei.value.code == ErrorCode.TPM_NOT_FOUND
    assert ei.value.hint and "TPM2_ATTEST_TCTI" in ei.value.hint


def test_open_transport_follows_environment(monkeypatch: pytest.MonkeyPatch, swtpm: EmbeddedSwtpm) -> None:
    monkeypatch.setenv("TPM2TOOLS_TCTI", swtpm.tcti)
    with open_transport() as t:
        assert (t.kind, t.tcti) == ("swtpm", swtpm.tcti)
        check_random(t.send(get_random(8)), 8)
    monkeypatch.setenv("TPM2_ATTEST_TCTI", "bogus:1")
    with pytest.raises(TpmError) as ei:
        open_transport()
    assert ei.value.code == ErrorCode.INVALID_ARGUMENT
    assert "$TPM2_ATTEST_TCTI" in str(ei.value)


# ---------------------------------------------------------------------------------------------
# swtpm and mssim framings against the real swtpm


def test_swtpm_get_random_and_pcr_read(tcti: str) -> None:
    with open_transport(tcti) as t:
        assert isinstance(t, SwtpmTransport)
        assert (t.kind, t.tcti) == ("swtpm", tcti)
        a, b = check_random(t.send(get_random(16)), 16), check_random(t.send(get_random(16)), 16)
        assert a != b
        rsp = t.send(pcr_read_sha256(0))
        tag, size, rc = struct.unpack_from(">HII", rsp)
        assert (tag, rc, size) == (0x8001, 0, len(rsp))
        assert rsp.endswith(struct.pack(">IH", 1, 32) + bytes(32))  # PCR 0 of a fresh TPM
    assert t.closed
    with pytest.raises(TpmError) as ei:
        t.send(get_random(1))
    assert ei.value.code == ErrorCode.TRANSPORT


def test_swtpm_tpm_error_is_a_response_not_an_exception(tcti: str) -> None:
    with open_transport(tcti) as t:
        rsp = t.send(struct.pack(">HII", 0x8001, 10, 0x7FFF))  # unknown command code
        assert struct.unpack_from(">I", rsp, 6)[0] != 0


def test_mssim_framing_against_swtpm(fresh_swtpm: EmbeddedSwtpm) -> None:
    spec = f"mssim:host=127.0.0.1,port={fresh_swtpm.port}"
    with open_transport(spec) as t:
        assert isinstance(t, MssimTransport) and t.tcti == spec
        seen = {check_random(t.send(get_random(16)), 16) for _ in range(20)}
        assert len(seen) == 20
        with ThreadPoolExecutor(4) as pool:
            for r in pool.map(lambda _: t.send(get_random(8)), range(40), timeout=30):
                check_random(r, 8)
    # closed: the swtpm data connection is free again for per-command clients
    with SwtpmTransport(port=fresh_swtpm.port, timeout=5) as s:
        check_random(s.send(get_random(4)), 4)


def test_command_validation(tcti: str) -> None:
    with open_transport(tcti) as t:
        for bad in (b"", b"\x80\x01\x00", get_random(4) + b"\x00", get_random(4)[:-1]):
            with pytest.raises(TpmError) as ei:
                t.send(bad)
            assert ei.value.code == ErrorCode.INVALID_ARGUMENT
        check_random(t.send(get_random(4)), 4)  # still usable


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), True])
def test_bad_timeout(timeout: float, tcti: str) -> None:
    with pytest.raises(TpmError) as ei:
        open_transport(tcti, timeout=timeout)
    assert ei.value.code == ErrorCode.INVALID_ARGUMENT


# ---------------------------------------------------------------------------------------------
# Concurrency: threads sharing a transport, and separate processes, on one swtpm

_WORKER = """
import struct, sys
from tpm2_attest.transport import open_transport
n = int(sys.argv[2])
seen = set()
with open_transport(sys.argv[1], timeout=20) as t:
    for _ in range(n):
        r = t.send(struct.pack(">HIIH", 0x8001, 12, 0x17B, 16))
        assert struct.unpack_from(">HIIH", r) == (0x8001, 28, 0, 16), r.hex()
        seen.add(r[12:])
print("ok", len(seen))
"""


def test_threads_and_processes_share_one_swtpm(swtpm: EmbeddedSwtpm) -> None:
    rounds = 150
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, swtpm.tcti, str(rounds)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        shared = open_transport(swtpm.tcti, timeout=20)
        own = open_transport(swtpm.tcti, timeout=20)

        def hammer(t: object) -> list[bytes]:
            assert isinstance(t, SwtpmTransport)
            return [check_random(t.send(get_random(16)), 16) for _ in range(rounds)]

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(hammer, t) for t in (shared, shared, shared, own)]
            results = [f.result(timeout=60) for f in futures]
        shared.close()
        own.close()
        assert len({r for rs in results for r in rs}) == 4 * rounds  # all distinct: no mix-ups
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            assert out.split() == ["ok", str(rounds)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


# ---------------------------------------------------------------------------------------------
# Errors: nothing listening, nonexistent device, permission denied


def test_connection_refused_is_tpm_not_found() -> None:
    port = free_port()
    for spec in (f"swtpm:port={port}", f"mssim:port={port}"):
        start = time.monotonic()
        with pytest.raises(TpmError) as ei:
            open_transport(spec)
        assert ei.value.code == ErrorCode.TPM_NOT_FOUND, spec
        assert time.monotonic() - start < 2


def test_swtpm_stopped_after_open_is_not_found(fresh_swtpm: EmbeddedSwtpm) -> None:
    t = open_transport(fresh_swtpm.tcti)
    fresh_swtpm.stop()
    with pytest.raises(TpmError) as ei:
        t.send(get_random(4))
    assert ei.value.code == ErrorCode.TPM_NOT_FOUND
    t.close()


def test_device_nonexistent_path(tmp_path: Path) -> None:
    with pytest.raises(TpmError) as ei:
        open_transport(f"device:{tmp_path / 'tpmrm9'}")
    assert ei.value.code == ErrorCode.TPM_NOT_FOUND


_EACCES = """
import os, sys, types
# Load the transport without the package __init__ (whose verifier needs a recent cryptography
# that the system interpreter may lack).
pkg = types.ModuleType("tpm2_attest")
pkg.__path__ = [os.path.join(os.environ["PYTHONPATH"], "tpm2_attest")]
sys.modules["tpm2_attest"] = pkg
from tpm2_attest.transport.device import DeviceTransport
from tpm2_attest.errors import TpmError
try:
    DeviceTransport(sys.argv[1])
except TpmError as e:
    print(e.code.value, e.hint)
"""


def test_device_permission_denied(tmp_path: Path) -> None:
    dev = tmp_path / "tpm0"
    dev.write_bytes(b"")
    dev.chmod(0o600)
    if os.geteuid() != 0:
        dev.chmod(0)
        with pytest.raises(TpmError) as ei:
            DeviceTransport(str(dev))
        assert ei.value.code == ErrorCode.REQUIRES_ELEVATION and "tss" in (ei.value.hint or "")
        return
    # As root, ask an unprivileged child (uid nobody) to open the root-only file. The venv's
    # interpreter may live under /root, so fall back to the system one.
    tmp_path.chmod(0o755)
    src = str(Path(__file__).resolve().parents[1] / "src")
    why = ""
    for python in dict.fromkeys([sys.executable, "/usr/bin/python3"]):
        try:
            res = subprocess.run([python, "-c", _EACCES, str(dev)], user=65534,
                                 env={"PYTHONPATH": src}, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            why = str(exc)
            continue
        if res.returncode != 0:
            why = res.stderr.strip()[-200:]
            continue
        assert res.stdout.startswith("REQUIRES_ELEVATION"), res.stdout + res.stderr
        assert "'tss' group" in res.stdout
        return
    pytest.skip(f"cannot run an unprivileged child here: {why}")


# ---------------------------------------------------------------------------------------------
# The device transport over a pty: swtpm behind a bridge, or a stalling / garbling "device"


class PtyDevice:
    """A pty whose far end answers like a TPM character device (for our device transport)."""

    def __init__(self, answer: Callable[[bytes], bytes | None]) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self._answer = answer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        buf = b""
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                buf += os.read(self.master, 65536)
            except OSError:
                return
            while len(buf) >= 10 and len(buf) >= struct.unpack_from(">I", buf, 2)[0]:
                n = struct.unpack_from(">I", buf, 2)[0]
                cmd, buf = buf[:n], buf[n:]
                rsp = self._answer(cmd)
                if rsp:
                    os.write(self.master, rsp)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def pty_device() -> Iterator[Callable[[Callable[[bytes], bytes | None]], PtyDevice]]:
    made: list[PtyDevice] = []

    def make(answer: Callable[[bytes], bytes | None]) -> PtyDevice:
        made.append(PtyDevice(answer))
        return made[-1]

    yield make
    for d in made:
        d.close()


def test_device_transport_round_trips(pty_device: Callable[..., PtyDevice], swtpm: EmbeddedSwtpm) -> None:
    upstream = SwtpmTransport(port=swtpm.port)
    dev = pty_device(upstream.send)
    with open_transport(f"device:{dev.path}", timeout=10) as t:
        assert isinstance(t, DeviceTransport) and t.path == dev.path
        assert t.tcti == f"device:{dev.path}"
        with ThreadPoolExecutor(3) as pool:
            for r in pool.map(lambda _: t.send(get_random(16)), range(30), timeout=30):
                check_random(r, 16)


def test_device_timeout_then_recovers(pty_device: Callable[..., PtyDevice], swtpm: EmbeddedSwtpm) -> None:
    upstream = SwtpmTransport(port=swtpm.port)
    stall = threading.Event()
    stall.set()
    dev = pty_device(lambda cmd: None if stall.is_set() else upstream.send(cmd))
    with DeviceTransport(dev.path, timeout=0.3) as t:
        start = time.monotonic()
        with pytest.raises(TpmError) as ei:
            t.send(get_random(4))
        assert ei.value.code == ErrorCode.TRANSPORT and "0.3 s" in str(ei.value)
        assert time.monotonic() - start < 1.5
        stall.clear()
        check_random(t.send(get_random(4)), 4)  # reopened, answered


@pytest.mark.parametrize(("reply", "fragment"), [
    (b"HTTP/1.1 400 Bad Request\r\n\r\n", "not a TPM response"),
    (struct.pack(">HII", 0x8001, 4, 0), "smaller than its header"),
    (struct.pack(">HII", 0x8001, 10, 0) + b"extra", "says 10 bytes, got 15"),
    (struct.pack(">HII", 0x8001, MAX_RESPONSE_SIZE + 1, 0), "exceeds"),
])
def test_device_garbled_responses(pty_device: Callable[..., PtyDevice], reply: bytes, fragment: str) -> None:
    dev = pty_device(lambda cmd: reply)
    with DeviceTransport(dev.path, timeout=2) as t, pytest.raises(TpmError) as ei:
        t.send(get_random(4))
    assert ei.value.code == ErrorCode.TRANSPORT
    assert fragment in str(ei.value)


# ---------------------------------------------------------------------------------------------
# A hostile TCP server: truncated, oversized, garbage, stalling and trickling responses


class HostileServer:
    """Accepts connections and lets ``behave(conn, request, index)`` answer however it likes."""

    def __init__(self, behave: Callable[[socket.socket, bytes, int], None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.stop = threading.Event()
        self._behave = behave
        self._count = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.05)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn, self._count), daemon=True).start()
            self._count += 1

    def _handle(self, conn: socket.socket, index: int) -> None:
        with conn:
            conn.settimeout(2)
            try:
                while True:  # serve requests on this connection until the client goes away
                    request = conn.recv(65536)
                    if not request:
                        return
                    self._behave(conn, request, index)
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self._thread.join(5)


@pytest.fixture
def hostile() -> Iterator[Callable[[Callable[[socket.socket, bytes, int], None]], HostileServer]]:
    servers: list[HostileServer] = []

    def make(behave: Callable[[socket.socket, bytes, int], None]) -> HostileServer:
        servers.append(HostileServer(behave))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


GOOD = struct.pack(">HIIH", 0x8001, 16, 0, 4) + b"abcd"


def _send(data: bytes, then_close: bool = True) -> Callable[[socket.socket, bytes, int], None]:
    def behave(conn: socket.socket, request: bytes, index: int) -> None:
        conn.sendall(data)
        if then_close:
            conn.shutdown(socket.SHUT_RDWR)

    return behave


HOSTILE_CASES = {
    "closed without answer": (b"", "connection closed after 0 of 10"),
    "truncated header": (b"\x80\x01\x00\x00", "connection closed after 4 of 10"),
    "truncated body": (GOOD[:13], "connection closed after 3 of 6"),
    "oversized": (struct.pack(">HII", 0x8001, 0x7FFFFFFF, 0), "exceeds"),
    "undersized": (struct.pack(">HII", 0x8001, 6, 0), "smaller than its header"),
    "garbage": (b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n", "not a TPM response"),
    "trailing bytes": (GOOD + b"junk", "4 unexpected bytes"),
}


@pytest.mark.parametrize("case", list(HOSTILE_CASES))
def test_swtpm_transport_rejects_bad_responses(hostile: Callable[..., HostileServer], case: str) -> None:
    reply, fragment = HOSTILE_CASES[case]
    server = hostile(_send(reply))
    t = SwtpmTransport(port=server.port, timeout=3)
    start = time.monotonic()
    with pytest.raises(TpmError) as ei:
        t.send(get_random(4))
    assert ei.value.code == ErrorCode.TRANSPORT
    assert fragment in str(ei.value)
    assert time.monotonic() - start < 2


def _mssim_frame(rsp: bytes, ack: int = 0, length: int | None = None) -> bytes:
    return struct.pack(">I", len(rsp) if length is None else length) + rsp + struct.pack(">I", ack)


MSSIM_CASES = {
    "bad ack": (_mssim_frame(GOOD, ack=1), "acknowledged with 1"),
    "length disagrees": (_mssim_frame(GOOD, length=20), "framing says 20"),
    "length too large": (_mssim_frame(GOOD, length=0x10000000), "out of range"),
    "trailing bytes": (_mssim_frame(GOOD) + b"junk", "unexpected bytes"),
    "no ack": (struct.pack(">I", len(GOOD)) + GOOD, "connection closed after 0 of 4"),
    "plain swtpm reply": (GOOD, "out of range"),
}


@pytest.mark.parametrize("case", list(MSSIM_CASES))
def test_mssim_transport_rejects_bad_framing(hostile: Callable[..., HostileServer], case: str) -> None:
    reply, fragment = MSSIM_CASES[case]
    server = hostile(_send(reply))
    with MssimTransport(port=server.port, timeout=3) as t, pytest.raises(TpmError) as ei:
        t.send(get_random(4))
    assert ei.value.code == ErrorCode.TRANSPORT
    assert fragment in str(ei.value)


def test_mssim_reconnects_after_a_bad_response(hostile: Callable[..., HostileServer]) -> None:
    def behave(conn: socket.socket, request: bytes, index: int) -> None:
        conn.sendall(b"garbage!garbage!garbage!" if index == 0 else _mssim_frame(GOOD))

    server = hostile(behave)
    with MssimTransport(port=server.port, timeout=3) as t:
        with pytest.raises(TpmError):
            t.send(get_random(4))
        assert t.send(get_random(4)) == GOOD


@pytest.mark.parametrize("kind", ["swtpm", "mssim"])
def test_stalling_server_times_out(hostile: Callable[..., HostileServer], kind: str) -> None:
    stop = threading.Event()
    server = hostile(lambda conn, req, i: stop.wait(10))
    t = open_transport(f"{kind}:port={server.port}", timeout=0.3)
    start = time.monotonic()
    with pytest.raises(TpmError) as ei:
        t.send(get_random(4))
    elapsed = time.monotonic() - start
    assert ei.value.code == ErrorCode.TRANSPORT and "within 0.3 s" in str(ei.value)
    assert 0.25 < elapsed < 1.5
    t.close()
    stop.set()


def test_trickling_server_cannot_stretch_the_deadline(hostile: Callable[..., HostileServer]) -> None:
    def trickle(conn: socket.socket, request: bytes, index: int) -> None:
        for byte in GOOD:
            if server.stop.wait(0.1):
                return
            conn.sendall(bytes([byte]))

    server = hostile(trickle)
    t = SwtpmTransport(port=server.port, timeout=0.5)
    start = time.monotonic()
    with pytest.raises(TpmError) as ei:
        t.send(get_random(4))  # 16 bytes at 10 bytes/s would take 1.6 s
    assert ei.value.code == ErrorCode.TRANSPORT
    assert time.monotonic() - start < 1.0


def test_fragmented_but_valid_response_is_reassembled(hostile: Callable[..., HostileServer]) -> None:
    def fragments(conn: socket.socket, request: bytes, index: int) -> None:
        for i in range(0, len(GOOD), 3):
            conn.sendall(GOOD[i:i + 3])
            time.sleep(0.005)

    server = hostile(fragments)
    assert SwtpmTransport(port=server.port, timeout=3).send(get_random(4)) == GOOD
