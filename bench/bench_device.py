"""Device-side cost: TPM commands and wall time per quote and per enrollment.

Compares, against one embedded swtpm in one run:
  * tpm2-attest (`Tpm.quote`, also with the AK kept loaded by `Tpm.loaded`; `Tpm.provision_ak` +
    `activate_credential`),
  * the bare-socket floor: the very command bytes our library sent, replayed over a raw
    socket with no marshalling or parsing (what the TPM itself costs),
  * the same flow as tpm2-tools processes (how people script it today).

Quote figures: median wall ms per quote over --rounds interleaved rounds of 5 calls each, and
the median of per-round ratios ours / replay (targets: <= 1.3, and <= 1.2 with the AK kept).
Run: .venv/bin/python bench/bench_device.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from targets import record

from tpm2_attest import Tpm, verify
from tpm2_attest.embedded import EmbeddedSwtpm
from tpm2_attest.evidence import AkBlob
from tpm2_attest.tpm2 import templates as T
from tpm2_attest.tpm2.constants import TPM_RH

PCRS = [0, 1, 2, 3, 4, 5, 6, 7, 16]


def per_call_ms(fn: Callable[[], object], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1000


def median_ms(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


class Recorder:
    """Wraps a transport and keeps the command bytes sent (for the bare-socket replay)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.sent: list[bytes] = []
        self.recording = False

    def send(self, cmd: bytes) -> bytes:
        if self.recording:
            self.sent.append(cmd)
        return self.inner.send(cmd)  # type: ignore[attr-defined]


def bare_replay(port: int, commands: list[bytes]) -> None:
    for cmd in commands:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(cmd)
            buf = b""
            while len(buf) < 10 or len(buf) < int.from_bytes(buf[2:6], "big"):
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError("swtpm closed the connection")
                buf += chunk
            if buf[6:10] != b"\0\0\0\0":
                raise RuntimeError(f"replayed command failed: rc {buf[6:10].hex()}")


def tools(sw: EmbeddedSwtpm, *args: str) -> None:
    subprocess.run(list(args), env={**os.environ, "TPM2TOOLS_TCTI": sw.tcti}, check=True,
                   capture_output=True, timeout=60)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--quote-only", action="store_true", help="skip the tpm2-tools and enrollment figures")
    args = ap.parse_args(argv)
    n = args.rounds

    with EmbeddedSwtpm() as sw, tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        tpm = Tpm.open(sw.tcti)
        rec = Recorder(tpm.commands.channel)  # type: ignore[union-attr]
        tpm.commands.channel = rec  # type: ignore[union-attr]

        print(f"swtpm at {sw.tcti}; {n} rounds each; medians\n")
        print(f"{'flow':58s} {'cmds':>5s} {'ms':>8s}")

        def quote_vs_floor(label: str, blob: AkBlob | None = None, limit: float = 1.3) -> float:
            """Quote once recording the bytes, then time ours vs a bare replay of those bytes,
            interleaved round by round (median and min of per-round ratios)."""
            blob = blob or tpm.provision_ak()
            before = tpm.stats.total
            rec.sent.clear()
            rec.recording = True
            tpm.quote(blob, pcrs=PCRS, qualifying_data=b"n" * 32)
            rec.recording = False
            cmds = tpm.stats.total - before
            replay = list(rec.sent)
            ours_r: list[float] = []
            floor_r: list[float] = []
            for r in range(n):
                pair = [(ours_r, lambda: tpm.quote(blob, pcrs=PCRS, qualifying_data=b"n" * 32)),
                        (floor_r, lambda: bare_replay(sw.port, replay))]
                for acc, fn in (pair if r % 2 else pair[::-1]):
                    acc.append(per_call_ms(fn, 5))
            ratios = [a / b for a, b in zip(ours_r, floor_r, strict=True)]
            ours, floor = statistics.median(ours_r), statistics.median(floor_r)
            q = statistics.quantiles(ratios, n=4)
            record(f"Tpm.quote{label.removeprefix('tpm2-attest quote')} / replay",
                   statistics.median(ratios), limit, spread=f"{q[0]:.3f}-{q[2]:.3f}")
            print(f"{label:58s} {cmds:5d} {ours:8.3f}")
            print(f"{'  bare-socket floor (same command bytes)':58s} {cmds:5d} {floor:8.3f}   "
                  f"ours/floor {statistics.median(ratios):.3f}x (IQR {statistics.quantiles(ratios, n=4)[0]:.3f}-"
                  f"{statistics.quantiles(ratios, n=4)[2]:.3f}, min-based {min(ours_r) / min(floor_r):.3f})")
            return ours

        quote_vs_floor("tpm2-attest quote (transient SRK re-created)")
        kept_blob = tpm.provision_ak()
        keeps = hasattr(tpm, "loaded")  # (an older tree has no Tpm.loaded)
        if keeps:
            with tpm.loaded(kept_blob):
                quote_vs_floor("tpm2-attest quote, AK kept loaded (tpm.loaded)", kept_blob, 1.2)

        # Persist the standard SRK and reopen, so new blobs name it as their parent.
        res = tpm.commands.create_primary(TPM_RH.OWNER, T.SRK_ECC_TEMPLATE)  # type: ignore[union-attr]
        tpm.commands.evict_control(res.handle, 0x81000001)  # type: ignore[union-attr]
        tpm.commands.flush_context(res.handle)  # type: ignore[union-attr]
        tpm.close()
        tpm = Tpm.open(sw.tcti)
        rec = Recorder(tpm.commands.channel)  # type: ignore[union-attr]
        tpm.commands.channel = rec  # type: ignore[union-attr]
        ours_p = quote_vs_floor("tpm2-attest quote (persistent SRK 0x81000001)")
        if keeps:
            with tpm.loaded(kept_blob):
                quote_vs_floor("tpm2-attest quote, AK kept loaded, persistent SRK", kept_blob, 1.2)

        if args.quote_only:
            tpm.close()
            return

        # -- tpm2-tools quote ----------------------------------------------------------------
        tools(sw, "tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", "ecc256:null:aes128cfb", "-c", str(d / "p.ctx"))
        tools(sw, "tpm2_create", "-C", str(d / "p.ctx"), "-G", "ecc256:ecdsa-sha256:null", "-a",
              "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign|noda",
              "-u", str(d / "ak.pub"), "-r", str(d / "ak.priv"))
        tools(sw, "tpm2_flushcontext", "-t")
        pcr_arg = "sha256:" + ",".join(map(str, PCRS))

        def tools_quote() -> None:
            tools(sw, "tpm2_load", "-C", "0x81000001", "-u", str(d / "ak.pub"), "-r", str(d / "ak.priv"),
                  "-c", str(d / "ak.ctx"))
            tools(sw, "tpm2_quote", "-c", str(d / "ak.ctx"), "-l", pcr_arg, "-q", "6e" * 32,
                  "-m", str(d / "m"), "-s", str(d / "s"), "-o", str(d / "o"), "-g", "sha256")
            tools(sw, "tpm2_flushcontext", "-t")

        # The persistent SRK above is what tpm2_load uses; re-create the AK under it.
        tools(sw, "tpm2_create", "-C", "0x81000001", "-G", "ecc256:ecdsa-sha256:null", "-a",
              "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign|noda",
              "-u", str(d / "ak.pub"), "-r", str(d / "ak.priv"))
        tq = median_ms(tools_quote, max(5, n // 3))
        print(f"{'tpm2-tools load + quote + flushcontext (3 processes)':58s} {'':>5s} {tq:8.2f}   "
              f"ours {tq / ours_p:.1f}x faster")

        # -- enrollment -------------------------------------------------------------------------
        def enroll() -> None:
            nonce = os.urandom(32)
            ek = tpm.ek("rsa")
            ak = tpm.provision_ak(nonce=nonce)
            akp = verify.check_ak(ak, nonce=nonce)
            ch, secret = verify.make_credential(ek.public, akp.name)
            if tpm.activate_credential(ak, ch) != secret:
                raise RuntimeError("secret mismatch")

        before = tpm.stats.total
        enroll()
        enroll_cmds = tpm.stats.total - before
        te = median_ms(enroll, max(5, n // 3))
        print(f"{'tpm2-attest enrollment (EK, AK+certify, verify, make+activate)':58s} {enroll_cmds:5d} {te:8.2f}")

        def tools_enroll() -> None:
            tools(sw, "tpm2_createek", "-c", str(d / "ek.ctx"), "-G", "rsa", "-u", str(d / "ek.pub"))
            tools(sw, "tpm2_createak", "-C", str(d / "ek.ctx"), "-c", str(d / "ak2.ctx"), "-G", "ecc",
                  "-g", "sha256", "-s", "ecdsa", "-u", str(d / "ak2.pub"), "-n", str(d / "ak2.name"))
            tools(sw, "tpm2_flushcontext", "-t")
            (d / "sec").write_bytes(os.urandom(32))
            name = (d / "ak2.name").read_bytes().hex()
            tools(sw, "tpm2_makecredential", "-T", "none", "-u", str(d / "ek.pub"), "-s", str(d / "sec"),
                  "-n", name, "-o", str(d / "cred"))
            tools(sw, "tpm2_startauthsession", "--policy-session", "-S", str(d / "sess.ctx"))
            tools(sw, "tpm2_policysecret", "-S", str(d / "sess.ctx"), "-c", "e")
            tools(sw, "tpm2_activatecredential", "-c", str(d / "ak2.ctx"), "-C", str(d / "ek.ctx"),
                  "-i", str(d / "cred"), "-o", str(d / "out"), "-P", f"session:{d / 'sess.ctx'}")
            tools(sw, "tpm2_flushcontext", str(d / "sess.ctx"))
            tools(sw, "tpm2_flushcontext", "-t")

        tte = median_ms(tools_enroll, 5)
        print(f"{'tpm2-tools enrollment (createek, createak, make/activate: 9 processes)':58s} {'':>5s} "
              f"{tte:8.2f}   ours {tte / te:.1f}x faster")
        tpm.close()


if __name__ == "__main__":
    main()
