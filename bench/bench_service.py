"""The attestation service under load, on loopback: attestations/s, latency, server CPU per pair.

For each backend (SQLite file, PostgreSQL) and each number of server processes (``serve
--workers``), a real ``tpm2-attest serve`` runs on 127.0.0.1 with ``--devices`` devices whose
AKs live in an embedded swtpm (the devices are written to the database directly: enrollment is
not what is measured). Then for each number of clients:

1. unmeasured: ``--pairs`` challenges are issued and quoted by the swtpm over their nonces
   (the TPM's time is not the server's);
2. measured: each client (a thread; at most 16 per client process, so the client's own GIL
   does not make the latencies) runs *pairs*: ``POST /v1/attest/challenge`` (a fresh
   challenge, as a device would ask) then ``POST /v1/attest`` with one of the quotes made in
   step 1, over a keep-alive connection, until the quotes are used up.

Reported per run: attestations/s (pairs/s), p50/p99 of the pair's wall time, errors, and the
server's CPU time per pair (user+system of every server process, read from /proc before and
after) in microseconds and as a multiple of ``verify_quote`` (timed in this process on the
same kind of quote). ``--repeat`` runs each point several times: the median and the spread
(min-max) are shown. PostgreSQL's own CPU is shown separately (its backends, from /proc).

Bounded: at most ``--pairs`` pairs per run and ``--time-limit`` seconds per measured phase.
Run: ``python bench/bench_service.py [--clients 1,16,64] [--backends sqlite,postgres]
[--workers 1,4] [--pairs 600] [--repeat 3]``; PostgreSQL needs ``TPM2_ATTEST_TEST_POSTGRES_URL``
(``eval "$(.ci/postgres.sh start)"``; its tables are dropped).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tpm2_attest import Tpm
from tpm2_attest.evidence import AkBlob
from tpm2_attest.verify import AkPublic, verify_quote

CLK_TCK = os.sysconf("SC_CLK_TCK")
PCRS = [0, 1, 2, 3, 4, 5, 6, 7]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return out


def cpu_seconds(pids: list[int]) -> float:
    """user+system CPU of these processes (children that exited are in cutime/cstime)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def postgres_pids(url: str | None) -> list[int]:
    """The PostgreSQL cluster's processes (postmaster and backends), when it runs here."""
    if not url:
        return []
    pgdir = os.environ.get("PGTEST_DIR", "/tmp/tpm2-attest-pgtest")
    pidfile = Path(pgdir) / "data" / "postmaster.pid"
    try:
        return descendants(int(pidfile.read_text().split()[0]))
    except (OSError, ValueError, IndexError):
        return []


@dataclass
class Device:
    device_id: str
    blob: AkBlob


def setup_database(url: str, tpm: Tpm, n: int) -> list[Device]:
    """A fresh schema with ``n`` devices whose AKs are in ``tpm``."""
    from sqlalchemy import text

    from tpm2_attest.service.store import Store
    from tpm2_attest.service.tables import DeviceRecord

    if url.startswith("postgresql"):
        s = Store(url, create_schema=False, pool_size=1)
        with s.engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        s.close()
    store = Store(url, pool_size=1)
    devices = []
    now = datetime.now(UTC)
    try:
        for _ in range(n):
            blob = tpm.provision_ak(algorithm="ecc")
            d = Device(str(uuid.uuid4()), blob)
            store.add(DeviceRecord(id=d.device_id, enrolled_at=now, revoked_at=None, ek_public=b"bench",
                                   ek_name=os.urandom(34), ek_key_id=os.urandom(32), ek_cert_fingerprint=None,
                                   ek_cert_verified=False, ak_public=blob.public, ak_public_der=blob.ak_public_der,
                                   ak_name=blob.name, ak_format=blob.format, status="stale", status_since=now))
            devices.append(d)
    finally:
        store.close()
    return devices


class Server:
    """``tpm2-attest serve`` in a subprocess."""

    def __init__(self, url: str, workers: int, threads: int) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "tpm2_attest.cli", "serve", "--db", url, "--port", str(self.port),
               "--workers", str(workers), "--threads", str(threads), "--allow-missing-ek-certificate",
               "--challenge-rate", "0", "--nonce-ttl", "3600", "--log-level", "warning",
               "--sweep-interval", "0", "--max-connections", "4096"]
        self.log = tempfile.NamedTemporaryFile(prefix="bench-serve-", suffix=".log", delete=False)  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log,
                                     start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/v1/health")
                if conn.getresponse().status == 200:
                    conn.close()
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start: " + Path(self.log.name).read_text()[-2000:])
            time.sleep(0.1)
        time.sleep(0.5 if workers == 1 else 2.0)  # every worker up

    def pids(self) -> list[int]:
        return descendants(self.proc.pid)

    def stop(self) -> None:
        self.log.close()
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def post(conn: http.client.HTTPConnection, path: str, body: bytes) -> tuple[int, bytes]:
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    return r.status, r.read()


def premake(port: int, tpm: Tpm, devices: list[Device], n: int) -> list[tuple[bytes, bytes]]:
    """(challenge request body, attest request body) for ``n`` pairs, quotes made now."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out = []
    for i in range(n):
        d = devices[i % len(devices)]
        ch_body = json.dumps({"device_id": d.device_id}).encode()
        status, raw = post(conn, "/v1/attest/challenge", ch_body)
        if status != 200:
            raise RuntimeError(f"challenge refused: {raw!r}; see the server log")
        issued = json.loads(raw)
        q = tpm.quote(d.blob, pcrs=PCRS, qualifying_data=base64.b64decode(issued["nonce"]))
        out.append((ch_body, json.dumps({"challenge_id": issued["challenge_id"], "quote": q.to_dict()}).encode()))
    conn.close()
    return out


def _client_threads(port: int, work: list[tuple[bytes, bytes]], clients: int, deadline: float,
                    start: Any) -> tuple[list[float], int]:
    """``clients`` threads sharing ``work``; they begin when ``start`` is set."""
    lock = threading.Lock()
    todo = list(reversed(work))
    latencies: list[float] = []
    errors = [0]

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        start.wait()
        mine: list[float] = []
        bad = 0
        while time.monotonic() < deadline:
            with lock:
                if not todo:
                    break
                ch_body, at_body = todo.pop()
            t0 = time.perf_counter()
            try:
                s1, _ = post(conn, "/v1/attest/challenge", ch_body)
                s2, _raw = post(conn, "/v1/attest", at_body)
            except (OSError, http.client.HTTPException):
                bad += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                continue
            mine.append(time.perf_counter() - t0)
            if s1 != 200 or s2 != 200:
                bad += 1
        conn.close()
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors[0]


def _client_process(port: int, work: list[tuple[bytes, bytes]], clients: int, deadline: float, start: Any,
                    out: Any) -> None:
    out.send(_client_threads(port, work, clients, deadline, start))
    out.close()


CLIENTS_PER_PROCESS = 16
"""Client threads per client process: more threads in one Python process starve each other
on its GIL, and the latencies would measure the client rather than the server."""


def run_clients(port: int, work: list[tuple[bytes, bytes]], clients: int, time_limit: float
                ) -> tuple[list[float], int, float]:
    """Pairs over ``clients`` connections (threads, at most 16 per process); (pair latencies,
    errors, wall seconds)."""
    import multiprocessing as mp

    procs = max(1, -(-clients // CLIENTS_PER_PROCESS))
    deadline = time.monotonic() + time_limit
    if procs == 1:
        start = threading.Event()
        result: list[tuple[list[float], int]] = []
        runner = threading.Thread(target=lambda: result.append(_client_threads(port, work, clients, deadline, start)))
        runner.start()
        time.sleep(0.2)  # every client connected and waiting
        t0 = time.perf_counter()
        start.set()
        runner.join()
        wall = time.perf_counter() - t0
        return result[0][0], result[0][1], wall
    ctx = mp.get_context("fork")
    start_event = ctx.Event()
    shares = [work[i::procs] for i in range(procs)]
    pipes, workers = [], []
    for i in range(procs):
        here, there = ctx.Pipe(duplex=False)
        n = clients // procs + (1 if i < clients % procs else 0)
        w = ctx.Process(target=_client_process, args=(port, shares[i], n, deadline, start_event, there))
        w.start()
        pipes.append(here)
        workers.append(w)
    time.sleep(0.5)
    t0 = time.perf_counter()
    start_event.set()
    latencies: list[float] = []
    errors = 0
    for here in pipes:
        lat, bad = here.recv()
        latencies.extend(lat)
        errors += bad
    wall = time.perf_counter() - t0
    for w in workers:
        w.join()
    return latencies, errors, wall


def verify_quote_seconds(tpm: Tpm, blob: AkBlob) -> float:
    """Median seconds of one ``verify_quote`` (cached AkPublic, like the service)."""
    nonce = os.urandom(32)
    quote = tpm.quote(blob, pcrs=PCRS, qualifying_data=nonce)
    ak = AkPublic.from_public(blob.public)
    rounds = []
    for _ in range(7):
        t0 = time.process_time()
        for _ in range(300):
            verify_quote(ak, quote, nonce=nonce)
        rounds.append((time.process_time() - t0) / 300)
    return statistics.median(rounds)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", default="1,16,64")
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--workers", default="1,4")
    ap.add_argument("--threads", type=int, default=16, help="serve --threads")
    ap.add_argument("--devices", type=int, default=16)
    ap.add_argument("--pairs", type=int, default=600, help="pairs per measured run")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--time-limit", type=float, default=60.0, help="seconds per measured run at most")
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    pg_url = os.environ.get("TPM2_ATTEST_TEST_POSTGRES_URL")

    tpm = Tpm.open_embedded()
    try:
        probe_blob = tpm.provision_ak(algorithm="ecc")
        vq = verify_quote_seconds(tpm, probe_blob)
        print(f"verify_quote (ECDSA P-256 AK, PCRs 0-7): {vq * 1e6:.0f} us per call (median of 7 x 300)")
        print(f"{os.cpu_count()} CPUs; {args.devices} devices; {args.pairs} pairs per run; {args.repeat} runs per row;"
              " CPU = all server processes, per challenge+attest pair")
        print(f"{'backend':<9}{'procs':>6}{'clients':>8}{'att/s':>17}{'p50 ms':>9}{'p99 ms':>22}"
              f"{'errors':>7}{'CPU us/pair':>20}{'x verify':>18}{'db CPU us':>11}")
        for backend in args.backends.split(","):
            if backend == "postgres" and not pg_url:
                print("postgres: skipped (set TPM2_ATTEST_TEST_POSTGRES_URL)")
                continue
            for workers in [int(w) for w in args.workers.split(",")]:
                with tempfile.TemporaryDirectory() as tmp:
                    url = f"sqlite:///{tmp}/bench.db" if backend == "sqlite" else str(pg_url)
                    devices = setup_database(url, tpm, args.devices)
                    server = Server(url, workers, args.threads)
                    try:
                        for c in clients:
                            rates, p50s, p99s, cpus, dbs, errs = [], [], [], [], [], 0
                            for _ in range(args.repeat):
                                work = premake(server.port, tpm, devices, args.pairs)
                                pids, dbp = server.pids(), postgres_pids(pg_url if backend == "postgres" else None)
                                cpu0, db0 = cpu_seconds(pids), cpu_seconds(dbp)
                                lat, bad, wall = run_clients(server.port, work, c, args.time_limit)
                                cpu1, db1 = cpu_seconds(pids), cpu_seconds(dbp)
                                done = max(1, len(lat))
                                rates.append(len(lat) / wall)
                                p50s.append(pct(lat, 50) * 1000)
                                p99s.append(pct(lat, 99) * 1000)
                                cpus.append((cpu1 - cpu0) / done * 1e6)
                                dbs.append((db1 - db0) / done * 1e6)
                                errs += bad

                            def spread(v: list[float], f: str = ".0f") -> str:
                                return f"{statistics.median(v):{f}} ({min(v):{f}}-{max(v):{f}})"
                            print(f"{backend:<9}{workers:>6}{c:>8}{spread(rates):>17}"
                                  f"{statistics.median(p50s):>9.1f}{spread(p99s, '.1f'):>22}{errs:>7}"
                                  f"{spread(cpus):>20}{spread([x / (vq * 1e6) for x in cpus], '.1f'):>18}"
                                  f"{statistics.median(dbs):>11.0f}", flush=True)
                    finally:
                        server.stop()
    finally:
        tpm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
