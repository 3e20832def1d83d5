"""The stateless verifier: AK public bytes + quote JSON in, verdict out, against the bare signature check.

For an ECDSA P-256 AK and an RSA-2048 AK (quotes of PCRs 0-7 + 16, SHA-256 bank, 32-byte nonce),
three ways, interleaved round by round on one core, in this thread's CPU time:

* floor: ``key.verify(signature, attest, ...)`` with the key loaded and the DER signature
  prepared in advance (the OpenSSL floor, as in bench_verify.py);
* warm: ``verify_quote(ak_public_bytes, quote_json, nonce=nonce)``, the AK seen before: its
  checked ``AkPublic`` comes from the bounded cache keyed by the AK bytes (what a server that
  receives the same AK bytes again gets); the quote JSON is parsed and every check runs;
* cold: the same call with that cache emptied before every call: the AK public area is
  parsed and checked and its key loaded on every call (the first call for an AK).

Also shown, for the cold path: the cold floor, ``load_der_public_key(spki).verify(...)`` with a
new key object per call. OpenSSL sets up a key's Montgomery context on its first operation, so
any verifier's first check of an AK pays this, whatever its language (RSA-2048 here: about 1.37x
the floor before a byte of evidence is parsed).

Nothing else is cached across calls but what the library keeps for any caller: the learnt
quote layout (keyed by the attestation's length, re-checked field by field on every use) and
the decoded PCR selections. Figures: median of per-round ratios to the floor, with the
interquartile range and the ratio of the minima. Target: <= 1.5 for both, cold and warm.
Run: ``python bench/bench_stateless.py [--rounds N] [--batch N] [--software] [--profile]``.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import statistics
import sys

from bench_verify import bare_check, options, setup, timed
from targets import record

from tpm2_attest.verify import quote as quote_module
from tpm2_attest.verify import verify_quote


def main(argv: list[str] | None = None) -> int:
    args = options(__doc__, rounds=30, profile="cProfile the cold call and print the top").parse_args(argv)
    source, quotes = setup(args)
    print(f"quotes made by {source}; {args.rounds} interleaved rounds, "
          f"{'wall-clock' if args.wall else 'thread CPU'} time; load average {os.getloadavg()[0]:.2f}")
    print(f"python {sys.version.split()[0]}; AK and quote as bytes + JSON on every call")
    print(f"{'AK':<13}{'path':<11}{'floor µs':>9}{'µs':>9}{'ratio':>8}{'(IQR)':>14}{'min-based':>11}")
    cache: dict[object, object] = getattr(quote_module, "_AKS", {})  # (an older tree has no cache)
    for kind, label in (("ecc", "ECDSA P-256"), ("rsa", "RSA-2048")):
        ak, quote, nonce = quotes[kind]
        ak_bytes, quote_json = ak.public, quote.to_json()
        floor = bare_check(ak, quote)
        cold_floor = bare_check(ak, quote, fresh_key=True)

        def warm(b: bytes = ak_bytes, j: str = quote_json, n: bytes = nonce) -> None:
            verify_quote(b, j, nonce=n)

        def cold(b: bytes = ak_bytes, j: str = quote_json, n: bytes = nonce) -> None:
            cache.clear()
            verify_quote(b, j, nonce=n)

        res = verify_quote(ak_bytes, quote_json, nonce=nonce)  # must pass before it is timed
        assert res.pcrs == quote.pcrs["sha256"]
        batch = args.batch or (200 if kind == "ecc" else 600)
        fns = {"floor": floor, "warm": warm, "cold": cold, "cold floor": cold_floor}
        got: dict[str, list[float]] = {k: [] for k in fns}
        for fn in fns.values():
            timed(fn, max(10, batch // 10))
        order = list(fns.items())
        for r in range(args.rounds):
            rot = order[r % len(order):] + order[: r % len(order)]
            for name, fn in rot:
                got[name].append(timed(fn, batch))
        f = got["floor"]
        for path in ("warm", "cold", "cold floor"):
            xs = got[path]
            ratios = [x / y for x, y in zip(xs, f, strict=True)]
            q = statistics.quantiles(ratios, n=4)
            print(f"{label:<13}{path:<11}{statistics.median(f) / 1e3:>9.2f}{statistics.median(xs) / 1e3:>9.2f}"
                  f"{statistics.median(ratios):>8.3f}{f'{q[0]:.3f}-{q[2]:.3f}':>14}{min(xs) / min(f):>11.3f}")
            record(f"stateless {path}, {label} / floor", statistics.median(ratios),
                   None if path == "cold floor" else 1.5, spread=f"{q[0]:.3f}-{q[2]:.3f}")
        cold_ratios = [x / y for x, y in zip(got["cold"], got["cold floor"], strict=True)]
        print(f"{label:<13}cold / cold floor: {statistics.median(cold_ratios):.3f} "
              f"(the parse and checks a first call adds to any verifier's first call)")
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(batch * 2):
                cold()
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    print("target: ratio <= 1.5 (floor = key.verify of the same signature, key loaded, DER prepared)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
