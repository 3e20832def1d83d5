"""IMA list throughput: parse + verify + policy of a large list, against the hashing floor and
(optionally) keylime's process_measurement_list.

    .venv/bin/python bench/bench_ima.py [--entries 100000] [--runs 5] [--keylime-python PY]

The list (generated once, not timed) looks like a busy server's: ``ima-sig`` entries for
every file (SHA-256 file digests, SHA-1 template hashes as in the classic binary list),
one in 20 carrying an ECDSA P-256 ``security.ima`` signature, a boot_aggregate first. The
quote is of the SHA-256 bank (PCRs 0-10), so verification rehashes every entry natively:
SHA-1 to bind the fields, SHA-256 for the bank's template digest, SHA-256 to extend. The
policy allow-lists 90% of the files by digest, admits the signed ones by their signature
and excludes the rest by a regular expression.

Each run starts from the raw bytes: nothing is cached across runs (the policy row times the
policy alone, on a list parsed and verified afresh for that run). Figures are entries/s of
process CPU time (the host is shared: wall time would measure the neighbours), median of
``--runs`` with the spread (min..max).

Floors: ``sha1`` hashes every entry's template data once (the least any verifier must do);
``all hashing`` does the three hashes verification needs per entry, in a bare loop.

keylime: ``--keylime-python`` names the Python of a throwaway virtualenv with keylime
installed (never a dependency of this project); it runs keylime's
``ima.process_measurement_list`` on the same list (ASCII, as keylime's agent sends it), with
the same allow-list, key and exclude as a keylime runtime policy, in the SHA-256 bank.
Prints figures; not a test.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from tpm2_attest.ima import parse_ima_log
from tpm2_attest.policy import Policy, from_keylime_runtime_policy
from tpm2_attest.verify import verify_ima_log

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import ima_synth as synth

KEYLIME_SNIPPET = r"""
import json, sys, time, logging, statistics
logging.disable(logging.CRITICAL)
from keylime.ima import ima, file_signatures
from keylime.agentstates import AgentAttestState
from keylime.common.algorithms import Hash
lines_path, policy_path, pcr10, boot_aggregate, runs = sys.argv[1:6]
text = open(lines_path).read()
policy = json.load(open(policy_path))
times = []
for _ in range(int(runs)):
    t0 = time.process_time()
    lines = text.splitlines()
    keyrings = file_signatures.ImaKeyrings()
    keyrings.set_tenant_keyring(file_signatures.ImaKeyring.from_string(policy["verification-keys"]))
    pol = json.loads(json.dumps(policy))
    running, failure = ima.process_measurement_list(
        AgentAttestState("bench"), lines, pol, pcrval=pcr10, ima_keyrings=keyrings,
        boot_aggregates={"sha256": [boot_aggregate]}, hash_alg=Hash.SHA256)
    times.append(time.process_time() - t0)
    ok = not failure and running == pcr10
events = [f"{e.event_id}: {e.context}" for e in failure.events][:3] if failure else []
print(json.dumps({"times": times, "ok": ok, "events": events}))
"""


def build(n: int) -> tuple[list[synth.Entry], dict[int, bytes], dict[str, Any], dict[str, Any]]:
    """(entries, quoted PCRs, our policy document, the same as a keylime runtime policy)."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    pcrs0 = {i: hashlib.sha256(b"firmware %d" % i).digest() for i in range(10)}
    entries = [synth.boot_aggregate_entry(pcrs0, "sha256", template="ima-sig")]
    digests: dict[str, list[str]] = {}
    for i in range(1, n):
        if i % 10 == 9:
            path = f"/var/cache/app/tmp{i:06d}.bin"  # excluded
            entries.append(synth.ima_sig(path))
            continue
        path = f"/usr/lib/x86_64-linux-gnu/lib{i:06d}/libmodule{i % 97}.so.{i % 7}"
        d = synth.file_digest(path)
        if i % 20 == 0:  # signed, not allow-listed: admitted by its signature
            entries.append(synth.ima_sig(path, sig=synth.sign_digest(key, d), digest=d))
            continue
        entries.append(synth.ima_sig(path, digest=d))
        digests[path] = [d.hex()]
    log = parse_ima_log(synth.binary(entries))
    quoted = {**pcrs0, **log.replay_all("sha256")}
    ours = {"ima": {"digests": digests, "excludes": ["/var/cache/app/.*"], "keys": [pem]}}
    keylime = {"meta": {"version": 1, "generator": 0}, "release": 0, "digests": digests,
               "excludes": ["/var/cache/app/"], "keyrings": {},
               "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": None},
               "ima-buf": {}, "verification-keys": json.dumps(
                   {"pubkeys": [base64.b64encode(der).decode()], "keyids": [synth.ima_keyid(key.public_key())]})}
    return entries, quoted, ours, keylime


def timed(fn: Callable[[], object], runs: int, setup: Callable[[], Any] | None = None) -> list[float]:
    """CPU seconds of ``fn(setup())`` (or ``fn()``) per run; ``setup`` is not timed."""
    def call() -> float:
        arg = setup() if setup is not None else None
        t0 = time.process_time()
        fn(arg) if setup is not None else fn()  # type: ignore[call-arg]
        return time.process_time() - t0

    call()  # warm-up (imports, hash constructors): not counted
    return [call() for _ in range(runs)]


def rate(n: int, times: list[float]) -> str:
    r = [n / t for t in times]
    return f"{statistics.median(r):>10,.0f} entries/s  ({min(r):,.0f}..{max(r):,.0f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--keylime-python", help="python of a virtualenv with keylime installed")
    args = ap.parse_args()
    n, runs = args.entries, args.runs

    t0 = time.perf_counter()
    entries, quoted, ours_doc, keylime_doc = build(n)
    raw = synth.binary(entries)
    text = synth.ascii(entries)
    datas = [e.hash_input() for e in entries]
    pol = Policy.from_dict(ours_doc)
    print(f"list: {n:,} entries, {len(raw) / 1e6:.1f} MB binary, {len(text) / 1e6:.1f} MB ASCII "
          f"(built in {time.perf_counter() - t0:.1f} s); {runs} runs each, median (min..max)")

    def full(data: bytes) -> Callable[[], object]:
        def run() -> object:
            res = verify_ima_log(parse_ima_log(data), quoted)
            verdict = pol.evaluate(ima=res)
            assert verdict.ok and res.count == n, verdict
            return verdict
        return run

    result = verify_ima_log(parse_ima_log(raw), quoted)
    assert result.template_digests == "native" and result.boot_aggregate == "verified"

    rows = [
        ("parse (binary)", timed(lambda: parse_ima_log(raw), runs)),
        ("parse (ASCII)", timed(lambda: parse_ima_log(text), runs)),
        ("verify (freshly parsed list)", timed(lambda log: verify_ima_log(log, quoted), runs,
                                               lambda: parse_ima_log(raw))),
        ("policy (freshly verified list)", timed(lambda res: pol.evaluate(ima=res), runs,
                                                 lambda: verify_ima_log(parse_ima_log(raw), quoted))),
        ("parse+verify+policy, binary", timed(full(raw), runs)),
        ("parse+verify+policy, ASCII", timed(full(text), runs)),
    ]
    sha1, sha256 = hashlib.sha1, hashlib.sha256

    def floor_sha1() -> None:
        for d in datas:
            sha1(d).digest()

    def floor_all() -> None:
        pcr = bytes(32)
        for d in datas:
            sha1(d).digest()
            pcr = sha256(pcr + sha256(d).digest()).digest()

    from tpm2_attest.ima.signatures import load_key, parse_signature

    signed = [(parse_signature(e.fields[2][1]), synth.file_digest(e.path)) for e in entries[1:] if e.fields[2][1]]
    verifier = load_key(ours_doc["ima"]["keys"][0])

    def floor_sigs() -> None:
        floor_all()
        for sig, d in signed:
            assert not isinstance(sig, str)
            verifier.key.verify(sig.signature, d, ec.ECDSA(Prehashed(hashes.SHA256())))

    rows += [("floor: sha1 of the template data", timed(floor_sha1, runs)),
             ("floor: all hashing verification needs", timed(floor_all, runs)),
             (f"floor: + the {len(signed):,} ECDSA verifications", timed(floor_sigs, runs))]
    for label, times in rows:
        print(f"  {label:<40} {rate(n, times)}")

    tracemalloc.start()
    full(raw)()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"  peak traced memory, parse+verify+policy (binary): {peak / 1e6:.0f} MB "
          f"for {len(raw) / 1e6:.1f} MB of list")

    # incremental: 1,000 new entries on top of the verified list
    more = [synth.ima_ng(f"/usr/bin/new{i}") for i in range(1000)]
    raw2 = raw + synth.binary(more)
    quoted2 = {**quoted, **parse_ima_log(raw2).replay_all("sha256")}
    tail = raw2[result.state.offset:]
    inc = timed(lambda: verify_ima_log(tail, quoted2, state=result.state), runs)
    print(f"  {'incremental: 1,000 new entries':<40} {rate(1000, inc)}")

    if args.keylime_python:
        with tempfile.TemporaryDirectory() as tmp:
            lines_path = os.path.join(tmp, "ascii_runtime_measurements")
            Path(lines_path).write_bytes(text)
            policy_path = os.path.join(tmp, "policy.json")
            Path(policy_path).write_text(json.dumps(keylime_doc))
            assert from_keylime_runtime_policy(keylime_doc).evaluate(ima=result).ok
            agg = entries[0].fields[0][1].split(b"\0", 1)[1].hex()
            proc = subprocess.run([args.keylime_python, "-c", KEYLIME_SNIPPET, lines_path, policy_path,
                                   quoted[10].hex(), agg, str(runs)],
                                  capture_output=True, text=True, check=False, cwd=tmp)
            if proc.returncode != 0:
                print("  keylime: failed to run:", proc.stderr.strip().splitlines()[-1:])
            else:
                out = json.loads(proc.stdout.strip().splitlines()[-1])
                print(f"  {'keylime process_measurement_list (ASCII)':<40} {rate(n, out['times'])}"
                      f"  verdict ok={out['ok']} {out['events'] or ''}")
    else:
        print("  keylime: not run (pass --keylime-python)")


if __name__ == "__main__":
    main()
