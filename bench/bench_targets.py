"""Every performance target of the verifier and the device side, measured in one run.

Runs, in this process and in turn: ``bench_verify`` (verify_quote with a parsed AK, check_ak),
``bench_stateless`` (AK bytes + quote JSON, warm and cold), ``bench_credential`` (make_credential
from RSA EK bytes; against keylime's when ``--keylime-python`` names an interpreter with keylime),
``bench_device`` (Tpm.quote against a bare-socket replay, on the embedded swtpm) and
``bench_import`` (import time, ``tpm2-attest eventlog`` as a process). Each prints its own detail
(floors, spreads, load average); the table at the end gives every figure against its target.
Ratios are medians of per-round ratios on interleaved rounds; ``spread`` is their IQR.
Run: ``python bench/bench_targets.py [--rounds N] [--keylime-python PATH]``.
"""

from __future__ import annotations

import argparse
import os
import sys

import bench_credential
import bench_device
import bench_import
import bench_stateless
import bench_verify
from targets import FIGURES, table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds of the in-process benches")
    ap.add_argument("--keylime-python", help="an interpreter with keylime, for its make_credential figure")
    args = ap.parse_args(argv)
    rounds = str(args.rounds)
    steps = [
        ("verify_quote and check_ak", lambda: bench_verify.main(["--rounds", rounds])),
        ("stateless verifier", lambda: bench_stateless.main(["--rounds", rounds])),
        ("make_credential", lambda: bench_credential.main(
            ["--no-chain"] + (["--keylime-python", args.keylime_python] if args.keylime_python else []))),
        ("Tpm.quote on swtpm", lambda: bench_device.main(["--rounds", rounds, "--quote-only"])),
        ("import and start-up", lambda: bench_import.main(["--runs", str(max(5, args.rounds // 2)),
                                                            "--regime", "installed"])),
    ]
    for title, step in steps:
        print(f"\n== {title} " + "=" * (70 - len(title)), flush=True)
        step()
    print(f"\n== all targets (python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}) " + "=" * 20)
    print(table(FIGURES))
    scored = [f for f in FIGURES if f.met is not None]
    missed = [f.name for f in scored if not f.met]
    print(f"\n{len(scored) - len(missed)} of {len(scored)} targets met"
          + (f"; missed: {'; '.join(missed)}" if missed else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
