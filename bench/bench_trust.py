"""The cost of trust material: importing it, loading the shipped CA bundle cold, and verifying
real vendor EK certificates against the whole bundle.

Every "cold" figure is one fresh interpreter per run (nothing cached, as a service or CLI
starts); runs repeat to show the noise (median, min, max over N runs; the machine is shared).
"Warm" figures are in one process after a first call, with the caches the real path keeps
(the bundle is loaded once per process; parsed CA certificates and verified signature links
are cached by the verifier) — that is what a long-running verifier pays per EK certificate.
Not a test: run ``python bench/bench_trust.py [--runs N]``.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "ekcerts"


def _python(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return res.stdout + res.stderr


def _importtime(module: str) -> dict[str, int]:
    """Cumulative import time (us) per module from ``python -X importtime -c 'import module'``."""
    res = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                         capture_output=True, text=True, check=True)
    out: dict[str, int] = {}
    for m in re.finditer(r"import time:\s+\d+ \|\s+(\d+) \|\s+(\S.*)$", res.stderr, re.M):
        out[m.group(2).strip()] = int(m.group(1))
    return out


def _stats(values: list[float]) -> str:
    return (f"median {statistics.median(values):8.2f}  min {min(values):8.2f}  max {max(values):8.2f}"
            f"  (n={len(values)})")


def bench_imports(runs: int) -> None:
    print("import cost, ms (python -X importtime, cumulative; one fresh interpreter per run)")
    pkg, trust, pulled = [], [], []
    for _ in range(runs):
        t = _importtime("tpm2_attest")
        pkg.append(t["tpm2_attest"] / 1000)
        pulled.append(1.0 if any(k.startswith("tpm2_attest.trust") for k in t) else 0.0)
        t = _importtime("tpm2_attest.trust")
        trust.append(t["tpm2_attest.trust"] / 1000 - t.get("tpm2_attest", 0) / 1000)
    print(f"  import tpm2_attest                       {_stats(pkg)}")
    print(f"  ... loads any tpm2_attest.trust module   {'yes' if any(pulled) else 'no'}")
    print(f"  import tpm2_attest.trust (on top)        {_stats(trust)}")


COLD_LOAD = """
import time
import tpm2_attest
t0 = time.perf_counter()
import tpm2_attest.trust as t
from tpm2_attest.trust import bundle
t1 = time.perf_counter()
b = t.tpm_vendor_cas()
t2 = time.perf_counter()
b2 = t.tpm_vendor_cas()
t3 = time.perf_counter()
import sys
print(f"{(t1 - t0) * 1000:.4f} {(t2 - t1) * 1000:.4f} {(t3 - t2) * 1e6:.4f} {len(b)} "
      f"{int('cryptography.x509' in sys.modules)}")
"""

COLD_VERIFY = """
import time
from pathlib import Path
data = Path({data!r})
stm = (data / "stm-rsa-ek.der").read_bytes()
t0 = time.perf_counter()
from tpm2_attest import trust, verify
b = trust.tpm_vendor_cas()
got = verify.verify_ek_certificate(stm, b.roots, b.intermediates)
print(f"{{(time.perf_counter() - t0) * 1000:.4f}}")
"""


def bench_bundle(runs: int) -> None:
    print("\nshipped CA bundle (56 certificates, every file checked against its SHA-256);"
          " fresh interpreter per run, after import tpm2_attest")
    mods, cold, warm = [], [], []
    x509_loaded = False
    count = 0
    for _ in range(runs):
        m, ms, us, n, x509 = _python(COLD_LOAD).split()
        mods.append(float(m))
        cold.append(float(ms))
        warm.append(float(us))
        count = int(n)
        x509_loaded = x509_loaded or x509 == "1"
    print(f"  import trust.bundle (+ json, hashlib...), ms {_stats(mods)}")
    print(f"  tpm_vendor_cas() first call, ms          {_stats(cold)}")
    print(f"  tpm_vendor_cas() again, us               {_stats(warm)}  (the per-process cache)")
    print(f"  certificates {count}; cryptography.x509 imported by the load: {'yes' if x509_loaded else 'no'}")
    first = [float(_python(COLD_VERIFY.format(data=str(DATA))).strip()) for _ in range(runs)]
    print(f"  load + first verify_ek_certificate (STM RSA EK; imports cryptography.x509,"
          f" parses the 50 CAs), ms\n"
          f"                                           {_stats(first)}")


def bench_warm_verify(seconds: float) -> None:
    from tpm2_attest import trust, verify

    bundle = trust.tpm_vendor_cas()
    (intel,) = trust.decode_certificates((DATA / "intel-rsa-ek.json").read_bytes())
    intel_pub = (DATA / "tpm2-tools-rsa-ek.pub").read_bytes()
    cases = {
        "Intel PTT RSA EK (+ key match, lenient DER)": (intel, intel_pub),
        "STMicroelectronics RSA EK (4-certificate path)": ((DATA / "stm-rsa-ek.der").read_bytes(), None),
        "STMicroelectronics ECC EK": ((DATA / "stm-ecc-ek.der").read_bytes(), None),
    }
    print("\nwarm verify_ek_certificate against the whole bundle (one process; CA parses and "
          "signature links cached as in a running verifier), us per call")
    for label, (cert, public) in cases.items():
        verify.verify_ek_certificate(cert, bundle.roots, bundle.intermediates, ek_public=public)
        rounds = []
        for _ in range(5):
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                verify.verify_ek_certificate(cert, bundle.roots, bundle.intermediates, ek_public=public)
                n += 1
            rounds.append((time.perf_counter() - t0) / n * 1e6)
        print(f"  {label:48s} {_stats(rounds)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=9, help="fresh interpreters per cold figure")
    ap.add_argument("--seconds", type=float, default=0.3, help="per warm round")
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {args.runs} runs per cold figure\n")
    bench_imports(args.runs)
    bench_bundle(args.runs)
    bench_warm_verify(args.seconds)


if __name__ == "__main__":
    main()
