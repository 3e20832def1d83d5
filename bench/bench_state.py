"""Machine state + policy evaluation against parse + replay, on the largest real event log.

    .venv/bin/python bench/bench_state.py [--rounds 7] [--seconds 1]

Measured in one run, on the same log, each call from scratch (no result reused across calls;
the well-known certificate fingerprints are cached per process, as in the real path):

  parse+replay      parse_event_log(raw) + replay of the quoted bank (sha256)
  old verify        parse + replay + secure_boot_state: what verify_event_log did before the
                    machine state existed
  state             machine_state() over the parsed log (Secure Boot state given, as
                    verify_event_log passes it)
  evaluate          Policy.evaluate() of the policy learned from this log (secure_boot with its
                    183 dbx hashes, boot with its allow-lists and command line)
  state+evaluate    the two above: the new work per attestation (target: <= 2x parse+replay)
  new verify+eval   verify_event_log(raw) (now with the state) + evaluate: the whole path

Each figure is µs per call: the best, median and worst of ``--rounds`` rounds (each round ~50 ms
of back-to-back calls for ``--seconds``/rounds), so the spread shows the host's noise.
Prints figures; not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tpm2_attest import policy, verify
from tpm2_attest.eventlog import machine_state, parse_event_log, secure_boot_state

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import eventlog_synth as synth

BANK = "sha256"


def rounds(fn: Callable[[], object], n_rounds: int, seconds: float) -> list[float]:
    """µs per call of ``fn`` in each of ``n_rounds`` rounds of ~``seconds / n_rounds``."""
    fn()
    n = 1
    while True:  # calibrate a batch to ~20 ms
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t0 > 0.02:
            break
        n *= 2
    out = []
    per_round = seconds / n_rounds
    for _ in range(n_rounds):
        calls, spent = 0, 0.0
        while spent < per_round:
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            spent += time.perf_counter() - t0
            calls += n
        out.append(spent / calls * 1e6)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=1.0, help="per measured function")
    a = ap.parse_args()
    path = max((p for p in synth.LOGS_DIR.glob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    raw = path.read_bytes()
    log = parse_event_log(raw, strict=False)
    pcrs = log.replay(BANK)
    verified = frozenset(pcrs)
    result = verify.verify_event_log(raw, pcrs, bank=BANK)
    learned = policy.learn(None, result)
    sb = secure_boot_state(log, BANK)
    assert learned.evaluate(None, result).ok

    def parse_replay() -> None:
        parse_event_log(raw, strict=False).replay(BANK)

    def old_verify() -> None:
        parsed = parse_event_log(raw, strict=False)
        parsed.replay(BANK)
        secure_boot_state(parsed, BANK)

    def state() -> None:
        machine_state(log, BANK, verified, secure_boot=sb)

    def evaluate() -> None:
        learned.evaluate(None, result)

    def state_evaluate() -> None:
        s = machine_state(log, BANK, verified, secure_boot=sb)
        learned.evaluate(None, _WithState(result, s))

    def new_verify_eval() -> None:
        learned.evaluate(None, verify.verify_event_log(raw, pcrs, bank=BANK))

    print(f"{path.name}: {len(raw)} bytes, {len(log)} events; policy sections "
          f"{', '.join(s.key for s in learned.sections)}")
    print(f"{'':18} {'best':>9} {'median':>9} {'worst':>9}  (µs per call, {a.rounds} rounds)")
    figures: dict[str, list[float]] = {}
    for name, fn in (("parse+replay", parse_replay), ("old verify", old_verify), ("state", state),
                     ("evaluate", evaluate), ("state+evaluate", state_evaluate),
                     ("new verify+eval", new_verify_eval)):
        r = rounds(fn, a.rounds, a.seconds)
        figures[name] = r
        print(f"{name:18} {min(r):9.1f} {statistics.median(r):9.1f} {max(r):9.1f}")
    base = statistics.median(figures["parse+replay"])
    for name in ("state+evaluate", "new verify+eval"):
        print(f"{name} / parse+replay (medians): {statistics.median(figures[name]) / base:.2f}x")
    print(f"new verify+eval / old verify (medians): "
          f"{statistics.median(figures['new verify+eval']) / statistics.median(figures['old verify']):.2f}x")
    print(f"(Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")


class _WithState:
    """An EventLogResult stand-in carrying a freshly computed state (for state+evaluate)."""

    def __init__(self, result: verify.EventLogResult, state: object) -> None:
        self.verified = result.verified
        self.uncovered = result.uncovered
        self.state = state


if __name__ == "__main__":
    main()
