"""Quote checks per second: ``verify_quote`` vs the bare `cryptography` signature check.

For an ECDSA P-256 AK and an RSA-2048 AK, quotes of PCRs 0-7 + 16 (SHA-256 bank) over a
32-byte nonce are verified two ways, interleaved round by round on one core:

* bare: ``key.verify(signature, attest, ...)`` with the padding/hash objects and (ECDSA) the
  DER signature prepared in advance: the OpenSSL floor, nothing checked but the signature;
* full: ``verify.verify_quote(ak, quote, nonce=nonce)`` with an ``AkPublic`` from
  ``check_ak``: signature, scheme, magic, type, exact parse, nonce, selection, PCR digest.

The figure of merit is full / bare (target <= 1.10). With a TPM, ``check_ak`` (an AK blob's
bytes in: parse, key checks, creation signature, Name, creation hash, nonce) is also timed
against its floor: loading the AK's key from its public numbers and verifying the creation
signature with it (target <= 1.5). Each round times ``--batch`` calls of
each in this thread's CPU time (``--wall`` for wall-clock); the ratio reported is the median
of per-round ratios (robust to a noisy neighbour), with min-based figures alongside. Quotes come from the embedded swtpm (or ``--tcti``); if no
TPM can be started, from a software key (the verifier cannot tell, and neither can the
timings). Run: ``python bench/bench_verify.py [--rounds N] [--batch N] [--profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key
from targets import record

from tpm2_attest.evidence import AkBlob, Quote
from tpm2_attest.tpm2 import templates as T
from tpm2_attest.tpm2.constants import TPM_ALG, TPM_GENERATED_VALUE, TPM_ST
from tpm2_attest.tpm2.structures import (
    TPM2B_PUBLIC,
    TPMS_ATTEST,
    TPMS_CLOCK_INFO,
    TPMS_ECC_POINT,
    TPMS_QUOTE_INFO,
    TPMT_SIGNATURE,
    pcr_selection,
)
from tpm2_attest.verify import AkPublic, check_ak, verify_quote

PCRS = [0, 1, 2, 3, 4, 5, 6, 7, 16]


BLOBS: dict[str, tuple[AkBlob, bytes]] = {}
"""The AK blobs (and their enrollment nonces) behind the TPM quotes, for the check_ak figures."""


def tpm_quotes(tcti: str | None) -> tuple[str, dict[str, tuple[AkPublic, Quote, bytes]]]:
    """(source, {kind: (ak, quote, nonce)}) from a real TPM (embedded swtpm by default)."""
    from tpm2_attest.tpm import Tpm

    tpm = Tpm.open(tcti) if tcti else Tpm.open_embedded()
    try:
        out = {}
        for kind in ("ecc", "rsa"):
            enroll_nonce = os.urandom(32)
            blob: AkBlob = tpm.provision_ak(algorithm=kind, nonce=enroll_nonce)
            BLOBS[kind] = (blob, enroll_nonce)
            nonce = os.urandom(32)
            out[kind] = (check_ak(blob), tpm.quote(blob, pcrs=PCRS, qualifying_data=nonce), nonce)
        return f"TPM at {tpm.tcti}", out
    finally:
        tpm.close()


def check_ak_floor(ak: AkPublic, blob: AkBlob) -> Callable[[], None]:
    """Load the AK's key from its numbers and verify the creation signature: check_ak's floor."""
    sig = TPMT_SIGNATURE.from_bytes(blob.signature)
    attest = blob.attest
    key = ak.key
    if isinstance(key, ec.EllipticCurvePublicKey):
        point, curve = key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint), type(key.curve)
        der = utils.encode_dss_signature(int.from_bytes(sig.r, "big"), int.from_bytes(sig.s, "big"))
        alg = ec.ECDSA(hashes.SHA256())
        return lambda: ec.EllipticCurvePublicKey.from_encoded_point(curve(), point).verify(der, attest, alg)
    assert isinstance(key, rsa.RSAPublicKey)
    nums = key.public_numbers()
    pad, h, raw = padding.PKCS1v15(), hashes.SHA256(), sig.sig
    return lambda: rsa.RSAPublicNumbers(nums.e, nums.n).public_key().verify(raw, attest, pad, h)


def software_quotes() -> dict[str, tuple[AkPublic, Quote, bytes]]:
    """Quotes signed by software keys behind AK-shaped public areas (same bytes, same work)."""
    out = {}
    values = {i: os.urandom(32) for i in PCRS}
    digest = hashes.Hash(hashes.SHA256())
    for i in PCRS:
        digest.update(values[i])
    info = TPMS_QUOTE_INFO(pcr_selection(TPM_ALG.SHA256, PCRS), digest.finalize())
    for kind in ("ecc", "rsa"):
        nonce = os.urandom(32)
        att = TPMS_ATTEST(TPM_GENERATED_VALUE, TPM_ST.ATTEST_QUOTE, b"\x00\x0b" + os.urandom(32), nonce,
                          TPMS_CLOCK_INFO(123456, 7, 0, True), 0x2023_0001_0000_0000, info).to_bytes()
        if kind == "ecc":
            key = ec.generate_private_key(ec.SECP256R1())
            n = key.public_key().public_numbers()
            area = replace(T.AK_ECC_TEMPLATE, unique=TPMS_ECC_POINT(n.x.to_bytes(32, "big"), n.y.to_bytes(32, "big")))
            r, s = utils.decode_dss_signature(key.sign(att, ec.ECDSA(hashes.SHA256())))
            sig = TPMT_SIGNATURE(TPM_ALG.ECDSA, TPM_ALG.SHA256, r=r.to_bytes(32, "big"), s=s.to_bytes(32, "big"))
        else:
            rkey = rsa.generate_private_key(65537, 2048)
            area = replace(T.AK_RSA_TEMPLATE, unique=rkey.public_key().public_numbers().n.to_bytes(256, "big"))
            sig = TPMT_SIGNATURE(TPM_ALG.RSASSA, TPM_ALG.SHA256, rkey.sign(att, padding.PKCS1v15(), hashes.SHA256()))
        ak = AkPublic.from_public(TPM2B_PUBLIC(area).to_bytes())
        out[kind] = (ak, Quote(att, sig.to_bytes(), {"sha256": values}), nonce)
    return out


def bare_check(ak: AkPublic, quote: Quote, *, fresh_key: bool = False) -> Callable[[], None]:
    """The OpenSSL floor: the signature alone, everything prepared in advance. With
    ``fresh_key``, on a key object loaded from the AK's SPKI DER for every call (the floor
    of a first check: OpenSSL sets up a key's arithmetic on its first operation)."""
    sig = TPMT_SIGNATURE.from_bytes(quote.signature)
    key, attest = ak.key, quote.attest
    spki = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    load = load_der_public_key
    if isinstance(key, ec.EllipticCurvePublicKey):
        der = utils.encode_dss_signature(int.from_bytes(sig.r, "big"), int.from_bytes(sig.s, "big"))
        alg = ec.ECDSA(hashes.SHA256())
        if fresh_key:
            return lambda: load(spki).verify(der, attest, alg)  # type: ignore[union-attr, call-arg, arg-type]
        return lambda: key.verify(der, attest, alg)
    assert isinstance(key, rsa.RSAPublicKey)
    pad, h, raw = padding.PKCS1v15(), hashes.SHA256(), sig.sig
    if fresh_key:
        return lambda: load(spki).verify(raw, attest, pad, h)  # type: ignore[union-attr, call-arg, arg-type]
    return lambda: key.verify(raw, attest, pad, h)


CLOCK: Callable[[], int] = time.thread_time_ns


def timed(fn: Callable[[], Any], n: int) -> float:
    """Nanoseconds per call over n calls (CLOCK: this thread's CPU time by default, so that
    other processes on a shared machine do not count; --wall for perf_counter)."""
    clock = CLOCK
    t0 = clock()
    for _ in range(n):
        fn()
    return (clock() - t0) / n


def measure(ak: AkPublic, quote: Quote, nonce: bytes, rounds: int, batch: int,
            pair: tuple[Callable[[], None], Callable[[], None]] | None = None) -> dict[str, float]:
    bare = bare_check(ak, quote)

    def full() -> None:
        verify_quote(ak, quote, nonce=nonce)

    if pair is not None:
        bare, full = pair

    for fn in (bare, full):  # warm up (the verifier learns the quote layout on its first call)
        timed(fn, max(10, batch // 10))
    b: list[float] = []
    f: list[float] = []
    for r in range(rounds):
        order = ((bare, b), (full, f)) if r % 2 else ((full, f), (bare, b))
        for fn, acc in order:
            acc.append(timed(fn, batch))
    ratios = [x / y for x, y in zip(f, b, strict=True)]
    return {
        "bare_min": min(b), "full_min": min(f), "bare_med": statistics.median(b), "full_med": statistics.median(f),
        "ratio_med": statistics.median(ratios), "ratio_min": min(f) / min(b),
        "ratio_q1": statistics.quantiles(ratios, n=4)[0], "ratio_q3": statistics.quantiles(ratios, n=4)[2],
    }


def options(doc: str | None, *, rounds: int, profile: str) -> argparse.ArgumentParser:
    """The options the verifier benches share."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--batch", type=int, default=0, help="calls per round (default: ~15-20 ms of work)")
    ap.add_argument("--tcti", default=None, help="TPM to make the quotes with (default: embedded swtpm)")
    ap.add_argument("--software", action="store_true", help="software-signed quotes, no TPM")
    ap.add_argument("--profile", action="store_true", help=profile)
    ap.add_argument("--wall", action="store_true", help="wall-clock time instead of thread CPU time")
    return ap


def setup(args: argparse.Namespace) -> tuple[str, dict[str, tuple[AkPublic, Quote, bytes]]]:
    """Apply --wall to ``timed`` and make the quotes: (where they came from, {kind: quote})."""
    global CLOCK
    if args.wall:
        CLOCK = time.perf_counter_ns
    if args.software:
        return "software keys (--software)", software_quotes()
    try:
        return tpm_quotes(args.tcti)
    except Exception as exc:  # no swtpm, no transport: still measure the verifier
        return f"software keys (no TPM: {type(exc).__name__}: {exc})", software_quotes()


def main(argv: list[str] | None = None) -> int:
    args = options(__doc__, rounds=40, profile="cProfile the full check and print the top").parse_args(argv)
    source, quotes = setup(args)
    print(f"quotes: PCRs {','.join(map(str, PCRS))} sha256, 32-byte nonce; made by {source}")
    print(f"python {sys.version.split()[0]}, one core, {args.rounds} interleaved rounds, "
          f"{'wall-clock' if args.wall else 'thread CPU'} time; load average {os.getloadavg()[0]:.2f}")
    print(f"{'AK':<16}{'bare µs':>10}{'full µs':>10}{'overhead µs':>13}{'bare/s':>9}{'full/s':>9}"
          f"{'full/bare':>11}{'(IQR)':>14}{'min-based':>11}")
    for kind, label in (("ecc", "ECDSA P-256"), ("rsa", "RSA-2048")):
        ak, quote, nonce = quotes[kind]
        verify_quote(ak, quote, nonce=nonce)  # must pass before it is timed
        batch = args.batch or (300 if kind == "ecc" else 800)
        m = measure(ak, quote, nonce, args.rounds, batch)
        iqr = f"{m['ratio_q1']:.3f}-{m['ratio_q3']:.3f}"
        print(f"{label:<16}{m['bare_med'] / 1e3:>10.2f}{m['full_med'] / 1e3:>10.2f}"
              f"{(m['full_med'] - m['bare_med']) / 1e3:>13.2f}{1e9 / m['bare_med']:>9.0f}{1e9 / m['full_med']:>9.0f}"
              f"{m['ratio_med']:>11.3f}{iqr:>14}{m['ratio_min']:>11.3f}")
        record(f"verify_quote, parsed AK, {label} / floor", m["ratio_med"], 1.10, spread=iqr)
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(batch * 4):
                verify_quote(ak, quote, nonce=nonce)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(8)
    print("target: full/bare <= 1.10 (bare = key.verify with a prepared signature: the OpenSSL floor)")
    if BLOBS:
        print(f"\n{'check_ak':<16}{'floor µs':>10}{'full µs':>10}{'overhead µs':>13}{'':>18}"
              f"{'full/floor':>11}{'(IQR)':>14}{'min-based':>11}")
        for kind, label in (("ecc", "ECDSA P-256"), ("rsa", "RSA-2048")):
            blob, enroll_nonce = BLOBS[kind]
            data = blob.to_bytes()
            ak = check_ak(data, nonce=enroll_nonce)

            def checked(data: bytes = data, n: bytes = enroll_nonce) -> None:
                check_ak(data, nonce=n)

            m = measure(ak, quotes[kind][1], b"", args.rounds, 150 if kind == "ecc" else 300,
                        pair=(check_ak_floor(ak, blob), checked))
            iqr = f"{m['ratio_q1']:.3f}-{m['ratio_q3']:.3f}"
            print(f"{label:<16}{m['bare_med'] / 1e3:>10.2f}{m['full_med'] / 1e3:>10.2f}"
                  f"{(m['full_med'] - m['bare_med']) / 1e3:>13.2f}{'':>18}"
                  f"{m['ratio_med']:>11.3f}{iqr:>14}{m['ratio_min']:>11.3f}")
            record(f"check_ak, {label} / (key load + verify)", m["ratio_med"], 1.5, spread=iqr)
        print("target: check_ak/floor <= 1.5 (floor = key loaded from its numbers + creation signature verified)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
