"""Import time of the verifier and start-up time of ``tpm2-attest eventlog``, against their floors.

Each figure is a fresh interpreter, run ``--runs`` times in interleaved rounds (so load drift on a
shared machine hits every line alike); the table gives the median and minimum wall time and CPU time
(user + sys of the child); the ratio to the floor is of the median CPU times (a process's own
work: on a shared machine the wall clock also counts the time others had the cores):

* ``python -c pass``: the interpreter's bare start-up;
* ``cryptography``: start-up + importing what the verifier uses of `cryptography`
  (``x509`` and the RSA/EC/padding/hash primitives): the floor;
* ``import tpm2_attest.verify``; ``from tpm2_attest.verify import verify_quote, check_ak`` (what a
  stateless quote verifier loads); ``from tpm2_attest.verify import *`` (everything: EK
  certificates, event logs);
* ``tpm2-attest eventlog LOG`` (parse and print a real event log) as a process.

Also the ``-X importtime`` figure of ``import tpm2_attest.verify`` (its cumulative line, the
median of the runs). Two regimes: ``installed`` (bytecode cached, as after ``pip install``: a
private ``PYTHONPYCACHEPREFIX`` warmed by one run) and ``source`` (no bytecode cache for our
modules: each run compiles ``src/``, as in a checkout with ``PYTHONDONTWRITEBYTECODE=1``).
Targets: importtime <= 60 ms; eventlog process <= 1.5x the cryptography floor.
Run: ``python bench/bench_import.py [--runs N] [--regime installed|source|both]``.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from targets import record

ROOT = Path(__file__).resolve().parents[1]
LOG = ROOT / "tests" / "data" / "eventlogs" / "ubuntu_2104_shielded_vm_no_secure_boot_eventlog"
CRYPTO = ("import cryptography.x509, cryptography.exceptions; "
          "from cryptography.hazmat.primitives import hashes, serialization; "
          "from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils")
CLI = "import sys; from tpm2_attest.cli import main; sys.exit(main())"
LINES: list[tuple[str, list[str]]] = [
    ("python -c pass", ["-c", "pass"]),
    ("cryptography (floor)", ["-c", CRYPTO]),
    ("import tpm2_attest.verify", ["-c", "import tpm2_attest.verify"]),
    ("from .verify import verify_quote, check_ak", ["-c", "from tpm2_attest.verify import verify_quote, check_ak"]),
    ("from .verify import * (everything)", ["-c", "from tpm2_attest.verify import *"]),
    ("tpm2-attest eventlog LOG", ["-c", CLI, "eventlog", str(LOG)]),
]


def run(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of one interpreter run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def importtime(env: dict[str, str], runs: int) -> float:
    """Median cumulative -X importtime microseconds of tpm2_attest.verify."""
    vals = []
    for _ in range(runs):
        err = subprocess.run([sys.executable, "-X", "importtime", "-c", "import tpm2_attest.verify"],
                             env=env, check=True, capture_output=True, text=True).stderr
        m = re.search(r"import time:\s+\d+ \|\s+(\d+) \| tpm2_attest\.verify$", err, re.M)
        assert m, err[-500:]
        vals.append(int(m.group(1)))
    return statistics.median(vals)


def regime(name: str, env: dict[str, str], runs: int) -> None:
    for _, args in LINES:  # warm the page cache (and, when installed, the bytecode cache)
        run(args, env)
    got: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in LINES}
    for r in range(runs):
        order = LINES[r % len(LINES):] + LINES[: r % len(LINES)]
        for label, args in order:
            got[label].append(run(args, env))
    floor = statistics.median(c for _, c in got["cryptography (floor)"])
    print(f"\n[{name}] {runs} interleaved runs each; load average {os.getloadavg()[0]:.2f}")
    print(f"{'':44s}{'wall med':>10s}{'wall min':>10s}{'cpu med':>10s}{'cpu min':>10s}{'/floor':>8s}")
    for label, _ in LINES:
        walls = [w for w, _ in got[label]]
        cpus = [c for _, c in got[label]]
        print(f"{label:44s}{statistics.median(walls) * 1e3:8.1f}ms{min(walls) * 1e3:8.1f}ms"
              f"{statistics.median(cpus) * 1e3:8.1f}ms{min(cpus) * 1e3:8.1f}ms{statistics.median(cpus) / floor:8.2f}")
    it = importtime(env, max(5, runs // 2))
    print(f"python -X importtime -c 'import tpm2_attest.verify': {it / 1e3:.1f} ms (median; target <= 60 ms)")
    print("target: tpm2-attest eventlog LOG <= 1.5 x the cryptography floor")
    tag = name.split(":")[0]
    record(f"-X importtime import tpm2_attest.verify ({tag})", it / 1e3, 60.0, unit=" ms")
    record(f"tpm2-attest eventlog LOG process / floor ({tag})",
           statistics.median(c for _, c in got["tpm2-attest eventlog LOG"]) / floor, 1.5)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--regime", choices=("installed", "source", "both"), default="both")
    args = ap.parse_args(argv)
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE")}
    print(f"python {sys.version.split()[0]}; {os.cpu_count()} CPUs; event log {LOG.name} ({LOG.stat().st_size} bytes)")
    if args.regime in ("installed", "both"):
        with tempfile.TemporaryDirectory(prefix="tpm2-attest-pyc-") as cache:
            regime("installed: bytecode cached", {**base, "PYTHONPYCACHEPREFIX": cache}, args.runs)
    if args.regime in ("source", "both"):
        regime("source: our modules compiled on every run", {**base, "PYTHONDONTWRITEBYTECODE": "1"}, args.runs)


if __name__ == "__main__":
    main()
