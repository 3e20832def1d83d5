"""make_credential throughput for RSA-2048 and ECC P-256/P-384 EKs, with its floors.

Prints ops/s (best of several timed rounds: the machine is shared, noise only slows) for the full software MakeCredential,
for the asymmetric step alone (the floor: OAEP encryption, or ephemeral key +
ECDH), and for KDFa. Also ``verify.make_credential`` from an EK's TPM2B_PUBLIC bytes (what a
server receives: EK checks, key load, MakeCredential, the challenge object), and with
``--keylime-python PATH`` (an interpreter with keylime installed, e.g. a throwaway venv:
keylime is never a dependency of this project) keylime's ``tpm_util.makecredential`` on the
same EK bytes, measured in that interpreter the same way. Also the EK certificate chain
check against its two bare signature verifications.
Not a test: run ``python bench/bench_credential.py [--keylime-python PATH]``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import time
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from targets import record

from tpm2_attest.tpm2.constants import TPM_ALG
from tpm2_attest.tpm2.crypto import IDENTITY_LABEL, kdfa, make_credential
from tpm2_attest.verify.ekcert import verify_ek_certificate

AK_NAME = bytes.fromhex("000b") + bytes(range(32))


def ops_per_second(fn: Callable[[], object], seconds: float = 0.25, rounds: int = 5) -> float:
    """Best ops/s over `rounds` rounds of about `seconds` each."""
    n = 1
    while True:  # calibrate
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t0 > seconds / 10:
            break
        n *= 2
    per_round = max(1, int(n * seconds / (time.perf_counter() - t0)))
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(per_round):
            fn()
        rates.append(per_round / (time.perf_counter() - t0))
    return max(rates)


def line(label: str, rate: float, floor: float | None = None) -> None:
    ratio = f"   {floor / rate:5.2f}x the floor's cost" if floor else ""
    print(f"{label:46s} {rate:10.0f} ops/s {1e6 / rate:9.1f} us{ratio}")


def _cert(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePublicKey,
    signer: ec.EllipticCurvePrivateKey,
    ca: bool,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(signer, hashes.SHA256())
    )


KEYLIME = """
import os, sys, time
from keylime.tpm.tpm_util import makecredential
ek, name, secret = bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2]), os.urandom(32)
def rate(fn, seconds=0.25, rounds=5):
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n): fn()
        if time.perf_counter() - t0 > seconds / 10: break
        n *= 2
    per = max(1, int(n * seconds / (time.perf_counter() - t0)))
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(per): fn()
        best = max(best, per / (time.perf_counter() - t0))
    return best
print(rate(lambda: makecredential(ek, secret, name)))
"""


def ek_bytes_figures(keylime_python: str | None) -> None:
    """verify.make_credential from TPM2B_PUBLIC bytes of an RSA EK, and keylime's on the same bytes."""
    import subprocess

    from tpm2_attest.tpm2 import templates as T
    from tpm2_attest.tpm2.structures import TPM2B_PUBLIC
    from tpm2_attest.verify import make_credential as verify_make_credential

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    ek_public = TPM2B_PUBLIC(T.with_unique(T.EK_RSA_TEMPLATE, key.public_numbers().n.to_bytes(256, "big"))).to_bytes()
    ours = ops_per_second(lambda: verify_make_credential(ek_public, AK_NAME))
    line("RSA-2048 EK bytes: verify.make_credential", ours)
    if keylime_python:
        out = subprocess.run([keylime_python, "-c", KEYLIME, ek_public.hex(), AK_NAME.hex()],
                             capture_output=True, text=True, check=True).stdout
        theirs = float(out)
        line("RSA-2048 EK bytes: keylime tpm_util.makecredential", theirs)
        again = ops_per_second(lambda: verify_make_credential(ek_public, AK_NAME))
        line("RSA-2048 EK bytes: verify.make_credential (again)", again)
        record("make_credential, RSA EK bytes / keylime's", theirs / max(ours, again), 1.0)
    else:  # no keylime here: the figure the issue recorded for it on this machine (64 µs)
        record("make_credential, RSA EK bytes (keylime's: 64 µs)", 1e6 / ours, 64.0, unit=" µs")


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--keylime-python", help="python of a venv with keylime, to time its makecredential")
    ap.add_argument("--no-chain", action="store_true", help="skip the EK certificate chain figures")
    args = ap.parse_args(argv)
    print(f"make_credential, secret 32 bytes, AES-128-CFB; {os.cpu_count()} CPUs\n")
    rsa_ek = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    h = hashes.SHA256()
    oaep = padding.OAEP(mgf=padding.MGF1(algorithm=h), algorithm=h, label=IDENTITY_LABEL)
    seed = os.urandom(32)
    floor = ops_per_second(lambda: rsa_ek.encrypt(seed, oaep))
    line("RSA-2048 floor: OAEP encrypt of the seed", floor)
    full = ops_per_second(
        lambda: make_credential(rsa_ek, ek_name_alg=TPM_ALG.SHA256, ak_name=AK_NAME, secret=seed)
    )
    line("RSA-2048 EK make_credential", full, floor)
    ek_bytes_figures(args.keylime_python)

    for curve, alg, bits in (
        (ec.SECP256R1(), TPM_ALG.SHA256, 128),
        (ec.SECP384R1(), TPM_ALG.SHA384, 256),
    ):
        ek = ec.generate_private_key(curve).public_key()

        def bare(curve: ec.EllipticCurve = curve, ek: ec.EllipticCurvePublicKey = ek) -> bytes:
            return ec.generate_private_key(curve).exchange(ec.ECDH(), ek)

        floor = ops_per_second(bare)
        line(f"{curve.name} floor: ephemeral key + ECDH", floor)
        secret = os.urandom(32)

        def full_make(
            ek: ec.EllipticCurvePublicKey = ek, alg: int = alg, bits: int = bits, s: bytes = secret
        ) -> tuple[bytes, bytes]:
            return make_credential(ek, ek_name_alg=alg, sym_bits=bits, ak_name=AK_NAME, secret=s)

        full = ops_per_second(full_make)
        line(f"{curve.name} EK make_credential", full, floor)

    print()
    line("KDFa SHA-256, 128 bits", ops_per_second(
        lambda: kdfa(TPM_ALG.SHA256, seed, b"STORAGE", AK_NAME, b"", 128)))  # fmt: skip
    if args.no_chain:
        return

    print("\nEK certificate chain (P-256 root -> P-256 CA -> EK): a new DER leaf per call,")
    print("parsed CA objects (verified CA links are cached across calls, leaves are not)")
    root_key, ca_key, ek_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bench Root")])
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bench EK CA")])
    root = _cert(root_name, root_name, root_key.public_key(), root_key, True)
    ca = _cert(ca_name, root_name, ca_key.public_key(), root_key, True)
    leaves = [
        _cert(x509.Name([]), ca_name, ek_key.public_key(), ca_key, False).public_bytes(Encoding.DER)
        for _ in range(6000)
    ]
    fresh = itertools.cycle(leaves)

    def bare_chain() -> None:
        x509.load_der_x509_certificate(next(fresh)).verify_directly_issued_by(ca)
        ca.verify_directly_issued_by(root)

    def bare_leaf() -> None:
        x509.load_der_x509_certificate(next(fresh)).verify_directly_issued_by(ca)

    ek_pub = ek_key.public_key()
    # ours first, so that every leaf it sees is new (the list is cycled afterwards)
    full = ops_per_second(
        lambda: verify_ek_certificate(next(fresh), [root], [ca], ek_public=ek_pub),
        seconds=0.2,
        rounds=3,
    )
    floor = ops_per_second(bare_chain, seconds=0.2, rounds=3)
    line("floor: load leaf + 2 verify_directly_issued_by", floor)
    line("verify_ek_certificate (+ key match)", full, floor)
    line("load leaf + 1 verify_directly_issued_by", ops_per_second(bare_leaf, 0.2, 3))


if __name__ == "__main__":
    main()
