"""Machine state + policy evaluation against parse + replay, on the largest real event log.

    .venv/bin/python bench/bench_state.py [--rounds 9] [--seconds 2] [--log PATH | --all]

Measured in one run, on the same log, each call from scratch (no result reused across calls;
the well-known certificate fingerprints are cached per process, as in the real path):

  parse+replay       parse_event_log(raw) + replay of the quoted bank (sha256 when the log has it)
  verify, no state   verify_event_log(raw) with the machine-state step switched off: the
                     verifier as it was before the machine state existed
  verify             verify_event_log(raw) as it is now (with the state)
  state              machine_state() over the parsed log (Secure Boot state given, as
                     verify_event_log passes it)
  evaluate           Policy.evaluate() of the policy learned from this log (secure_boot with its
                     183 dbx hashes, boot with its allow-lists and command line)
  state+evaluate     the two above: the new work per attestation (target: <= 2x parse+replay)
  state+eval+summary state+evaluate, then MachineState.summary(): what the service does per
                     attestation (it stores the summary). The Windows part of a state is read
                     from its events on first use, which the summary is: on a Windows log this
                     line includes reading the ~1,000 SIPA events that state+evaluate does not

Rounds are interleaved (each round times every function in turn), so a busy host slows them
alike; each figure is µs per call, best / median / worst of ``--rounds`` rounds.
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
from tpm2_attest.eventlog import bank_name, machine_state, parse_event_log, secure_boot_state
from tpm2_attest.eventlog import state as state_module

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import eventlog_synth as synth

BANK = "sha256"
"""The bank measured in, when the log has it (else the log's first bank: the Windows log is SHA-1)."""


def calibrate(fn: Callable[[], object]) -> int:
    """Calls per batch so that a batch takes ~20 ms."""
    fn()
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t0 > 0.02:
            return n
        n *= 2


def measure(fns: dict[str, Callable[[], object]], n_rounds: int, seconds: float
            ) -> dict[str, list[float]]:
    """µs per call of each function in each round; rounds interleave the functions."""
    batches = {name: calibrate(fn) for name, fn in fns.items()}
    out: dict[str, list[float]] = {name: [] for name in fns}
    per_round = seconds / n_rounds
    for _ in range(n_rounds):
        for name, fn in fns.items():
            n, calls, spent = batches[name], 0, 0.0
            while spent < per_round:
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                spent += time.perf_counter() - t0
                calls += n
            out[name].append(spent / calls * 1e6)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--seconds", type=float, default=2.0, help="per measured function")
    ap.add_argument("--log", type=Path, help="the log to measure (default: the largest real log)")
    ap.add_argument("--all", action="store_true", help="measure every real log, one after another")
    a = ap.parse_args()
    logs = sorted(p for p in synth.LOGS_DIR.glob("*") if p.is_file())
    if a.all:
        for path in logs:
            bench(path, a.rounds, a.seconds)
            print()
    else:
        bench(a.log or max(logs, key=lambda p: p.stat().st_size), a.rounds, a.seconds)
    print(f"(Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")


def bench(path: Path, rounds: int, seconds: float) -> None:
    """Measure one log and print its figures."""
    raw = path.read_bytes()
    log = parse_event_log(raw, strict=False)
    banks = [bank_name(alg) for alg, _ in log.algorithms]
    bank = BANK if BANK in banks else banks[0]
    pcrs = log.replay(bank)
    verified = frozenset(pcrs)
    result = verify.verify_event_log(raw, pcrs, bank=bank)
    learned = policy.learn(None, result)
    sb = secure_boot_state(log, bank)
    assert learned.evaluate(None, result).ok

    def parse_replay() -> None:
        parse_event_log(raw, strict=False).replay(bank)

    def verify_no_state() -> None:
        state_module.machine_state = _no_state
        try:
            verify.verify_event_log(raw, pcrs, bank=bank)
        finally:
            state_module.machine_state = machine_state

    def verify_now() -> None:
        verify.verify_event_log(raw, pcrs, bank=bank)

    def state() -> None:
        machine_state(log, bank, verified, secure_boot=sb)

    def evaluate() -> None:
        learned.evaluate(None, result)

    def state_evaluate() -> None:
        s = machine_state(log, bank, verified, secure_boot=sb)
        learned.evaluate(None, _WithState(result, s))

    def state_evaluate_summary() -> None:
        s = machine_state(log, bank, verified, secure_boot=sb)
        learned.evaluate(None, _WithState(result, s))
        s.summary()

    print(f"{path.name}: {len(raw)} bytes, {len(log)} events, {bank} bank; policy sections "
          f"{', '.join(s.key for s in learned.sections)}")
    fns = {"parse+replay": parse_replay, "verify, no state": verify_no_state,
           "verify": verify_now, "state": state, "evaluate": evaluate,
           "state+evaluate": state_evaluate, "state+eval+summary": state_evaluate_summary}
    figures = measure(fns, rounds, seconds)
    print(f"{'':18} {'best':>9} {'median':>9} {'worst':>9}  (µs per call, {rounds} rounds)")
    for name, r in figures.items():
        print(f"{name:18} {min(r):9.1f} {statistics.median(r):9.1f} {max(r):9.1f}")
    med = {name: statistics.median(r) for name, r in figures.items()}
    print(f"state+evaluate / parse+replay (medians): "
          f"{med['state+evaluate'] / med['parse+replay']:.2f}x")
    print(f"state+eval+summary / parse+replay (medians): "
          f"{med['state+eval+summary'] / med['parse+replay']:.2f}x")
    print(f"(verify + evaluate - verify, no state) / parse+replay (medians): "
          f"{(med['verify'] + med['evaluate'] - med['verify, no state']) / med['parse+replay']:.2f}x")


def _no_state(log: object, bank: object, verified: object, **kw: object) -> None:
    return None


class _WithState:
    """An EventLogResult stand-in carrying a freshly computed state (for state+evaluate)."""

    def __init__(self, result: verify.EventLogResult, state: object) -> None:
        self.verified = result.verified
        self.uncovered = result.uncovered
        self.state = state


if __name__ == "__main__":
    main()
