"""Transport cost: our swtpm transport against a bare socket to the same embedded swtpm.

Prints, for TPM2_GetRandom(16) and TPM2_PCR_Read(sha256, PCR 0): round trips per second and
median latency through
  * ``SwtpmTransport`` (connect per command, framing checks, lock, deadline),
  * a bare socket, connect per command (the floor for any client that shares swtpm),
  * a bare socket kept open (the floor when one client owns swtpm's only connection),
  * ``MssimTransport`` over its persistent connection (for scale),
the ratio ours / bare connect-per-command (target <= 1.2), and the import time of
``tpm2_attest`` with the transport modules' share of it.

Methods run interleaved in rounds so load drift on a shared machine hits them alike.
Run: .venv/bin/python bench/bench_transport.py [--rounds R] [--batch N]
"""

from __future__ import annotations

import argparse
import re
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable

from tpm2_attest.embedded import EmbeddedSwtpm
from tpm2_attest.transport.mssim import MssimTransport
from tpm2_attest.transport.swtpm_tcp import SwtpmTransport

GET_RANDOM_16 = struct.pack(">HIIH", 0x8001, 12, 0x17B, 16)
PCR_READ_0 = struct.pack(">HIIIHB3s", 0x8001, 20, 0x17E, 1, 0x000B, 3, b"\x01\x00\x00")

Send = Callable[[bytes], bytes]


def recv_response(sock: socket.socket) -> bytes:
    """The minimum a correct client must do: read the header, then the announced size."""
    buf = sock.recv(4096)
    while len(buf) < 10:
        buf += sock.recv(4096)
    size = struct.unpack_from(">I", buf, 2)[0]
    while len(buf) < size:
        buf += sock.recv(size - len(buf))
    return buf


def bare_per_command(port: int) -> Send:
    addr = ("127.0.0.1", port)

    def send(cmd: bytes) -> bytes:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.connect(addr)
            s.sendall(cmd)
            return recv_response(s)
        finally:
            s.close()

    return send


class BarePersistent:
    """One socket held open for a batch (it blocks every other swtpm client meanwhile)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None

    def __enter__(self) -> Send:
        self.sock = socket.create_connection(("127.0.0.1", self.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = self.sock

        def send(cmd: bytes) -> bytes:
            sock.sendall(cmd)
            return recv_response(sock)

        return send

    def __exit__(self, *exc: object) -> None:
        assert self.sock is not None
        self.sock.close()


def run_batch(send: Send, cmd: bytes, n: int, lat: list[float]) -> float:
    """n round trips; appends each latency, returns the batch's round trips per second."""
    perf = time.perf_counter
    start = perf()
    for _ in range(n):
        t0 = perf()
        rsp = send(cmd)
        lat.append(perf() - t0)
        if rsp[6:10] != b"\x00\x00\x00\x00":
            raise SystemExit(f"TPM error {rsp[6:10].hex()} for {cmd.hex()}")
    return n / (perf() - start)


def import_times() -> tuple[float, float]:
    """(median wall ms of `import tpm2_attest` over a bare interpreter, transport share ms)."""
    def wall(code: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - t0

    base = statistics.median(wall("pass") for _ in range(5))
    full = statistics.median(wall("import tpm2_attest") for _ in range(5))
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import tpm2_attest"],
                         capture_output=True, text=True, check=True).stderr
    share = 0
    for m in re.finditer(r"import time:\s+(\d+) \|\s+\d+ \|\s+(\S+)", out):
        if m.group(2).startswith("tpm2_attest.transport"):
            share += int(m.group(1))  # self time, microseconds
    return (full - base) * 1000, share / 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--batch", type=int, default=200)
    args = ap.parse_args()

    with EmbeddedSwtpm() as sw:
        ours = SwtpmTransport(port=sw.port)
        bare = bare_per_command(sw.port)
        print(f"swtpm at {sw.tcti}; {args.rounds} interleaved rounds x {args.batch} round trips\n")
        for label, cmd in (("GetRandom(16)", GET_RANDOM_16), ("PCR_Read(sha256, PCR 0)", PCR_READ_0)):
            lat: dict[str, list[float]] = {k: [] for k in
                                           ("ours", "bare", "bare-persistent", "ours-mssim")}
            rate: dict[str, list[float]] = {k: [] for k in lat}
            run_batch(ours.send, cmd, 50, [])  # warm-up
            run_batch(bare, cmd, 50, [])
            for _ in range(args.rounds):
                rate["ours"].append(run_batch(ours.send, cmd, args.batch, lat["ours"]))
                rate["bare"].append(run_batch(bare, cmd, args.batch, lat["bare"]))
                with BarePersistent(sw.port) as persistent:
                    rate["bare-persistent"].append(
                        run_batch(persistent, cmd, args.batch, lat["bare-persistent"]))
                with MssimTransport(port=sw.port) as mssim:
                    rate["ours-mssim"].append(run_batch(mssim.send, cmd, args.batch,
                                                        lat["ours-mssim"]))
            print(f"{label}")
            print(f"  {'method':42} {'round trips/s':>14} {'median latency':>15}")
            names = {"ours": "tpm2-attest SwtpmTransport (per command)",
                     "bare": "bare socket, connect per command",
                     "bare-persistent": "bare socket, persistent",
                     "ours-mssim": "tpm2-attest MssimTransport (persistent)"}
            med = {k: statistics.median(v) * 1e6 for k, v in lat.items()}
            for k, name in names.items():
                print(f"  {name:42} {statistics.median(rate[k]):14,.0f} {med[k]:12.1f} us")
            print(f"  ratio ours / bare per command: {med['ours'] / med['bare']:.3f} (median latency), "
                  f"{statistics.median(rate['bare']) / statistics.median(rate['ours']):.3f} (throughput)\n")
        ours.close()

    total, share = import_times()
    print(f"import tpm2_attest: {total:.0f} ms over a bare interpreter "
          f"(tpm2_attest.transport.* self time {share:.1f} ms)")


if __name__ == "__main__":
    main()
