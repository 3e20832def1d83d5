"""Event-log parse + replay throughput (MB/s) against tpm2_eventlog on the same file.

    .venv/bin/python bench/bench_eventlog.py [--seconds 2] [--runs 30]

Ours: parse_event_log (full decoding) + replay of every bank of the log, in-process, repeated
for ``--seconds``. tpm2_eventlog: ``--runs`` process executions on the same file (output to
/dev/null), measured as child CPU time (user + sys) and wall time, so its figure includes
process start-up, which dominates for small logs; a large synthesized log shows the
steady-state rates too. Every figure is the best round, so a busy host skews it least.
Prints figures; not a test.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tpm2_attest.eventlog import parse_event_log

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import eventlog_synth as synth

LOGS = synth.LOGS_DIR


def _best(fn: Callable[[], object], seconds: float) -> float:
    """Best seconds per call over rounds of ~50 ms for ``seconds`` (robust on a busy host)."""
    fn()
    n = 1
    while True:  # calibrate a round to ~50 ms
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t0 > 0.05:
            break
        n *= 2
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def ours(raw: bytes, seconds: float) -> tuple[float, float, float]:
    """(parse+replay MB/s, parse-only MB/s, µs per parse+replay), best round."""
    def parse_replay() -> None:
        log = parse_event_log(raw)
        for bank in log.banks:
            log.replay(bank)

    t = _best(parse_replay, seconds)
    t_parse = _best(lambda: parse_event_log(raw), seconds / 2)
    mb = len(raw) / 1e6
    return mb / t, mb / t_parse, t * 1e6


def referee(path: Path, runs: int) -> tuple[float, float] | None:
    """(MB/s by child CPU time, MB/s by wall time) of tpm2_eventlog, best of ``runs``."""
    exe = shutil.which("tpm2_eventlog")
    if exe is None:
        return None
    size = path.stat().st_size / 1e6
    best_cpu = best_wall = float("inf")
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run([exe, str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        best_wall = min(best_wall, wall)
        if cpu > 0:
            best_cpu = min(best_cpu, cpu)
    return size / best_cpu, size / best_wall


def big_log(target: int) -> bytes:
    """A crypto-agile SHA-1+SHA-256+SHA-384 log of about ``target`` bytes (types tpm2-tools
    5.4 knows, no EV_NO_ACTION) built from the rich synthetic log's events."""
    b = synth.rich_log(("sha1", "sha256", "sha384"), no_action=False)
    one = b.records[:]
    b.records = one * max(1, target // len(b.build()))
    return b.build()


def report(name: str, path: Path, seconds: float, runs: int) -> None:
    raw = path.read_bytes()
    log = parse_event_log(raw)
    mbps, parse_mbps, us = ours(raw, seconds)
    print(f"{name}: {len(raw)} bytes, {len(log)} events, banks {', '.join(log.banks)}")
    print(f"  tpm2-attest  parse+replay: {mbps:8.1f} MB/s  ({us:,.0f} µs per log; "
          f"parse only {parse_mbps:.1f} MB/s)")
    ref = referee(path, runs)
    if ref is None:
        print("  tpm2_eventlog: not installed")
        return
    cpu, wall = ref
    print(f"  tpm2_eventlog (process):   {cpu:8.1f} MB/s CPU time, {wall:.1f} MB/s wall "
          f"(best of {runs} runs)")
    print(f"  ratio ours / tpm2_eventlog CPU: {mbps / cpu:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--big-mb", type=float, default=4.0, help="size of the synthesized log")
    a = ap.parse_args()
    largest = max((p for p in LOGS.glob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    report(f"largest real log ({largest.name})", largest, a.seconds, a.runs)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "big.bin"
        path.write_bytes(big_log(int(a.big_mb * 1e6)))
        report("synthesized large log", path, a.seconds, max(3, a.runs // 10))
    print(f"(Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
