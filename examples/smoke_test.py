#!/usr/bin/env python3
"""Smoke test of an *installed* tpm2-attest: run it in a fresh virtualenv after installing the wheel.

    python -m venv /tmp/venv && /tmp/venv/bin/pip install tpm2_attest-*.whl
    /tmp/venv/bin/python examples/smoke_test.py            # the real TPM if present, else swtpm

It checks the package, not the source tree: it refuses to run when ``tpm2_attest`` comes from a
source checkout's ``src/`` (an editable install included) unless ``--allow-source``. Each step
prints PASS or FAIL with its reason and time. Exit code: 0 all passed, 1 a step failed, 2 usage
error (or the source tree), 3 no TPM and no swtpm to fall back on. Public API only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_NO_TPM = 0, 1, 2, 3


def source_checkout(package_file: str) -> Path | None:
    """The checkout root when the package file lies in ``<root>/src/tpm2_attest/``, else None."""
    pkg = Path(package_file).resolve().parent
    src = pkg.parent
    if src.name == "src" and (src.parent / "pyproject.toml").is_file():
        return src.parent
    return None


class Steps:
    """Runs named steps, printing ``[PASS]``/``[FAIL]`` lines; a failure does not stop the run
    unless a later step needs what the failed one made."""

    def __init__(self) -> None:
        self.failed = 0
        self.passed = 0

    def run(self, name: str, fn: Callable[[], str]) -> bool:
        t0 = time.perf_counter()
        try:
            detail = fn()
        except Exception as exc:  # report every failure, whatever its type: this is the test
            ms = (time.perf_counter() - t0) * 1000
            code = getattr(exc, "code", None) or getattr(exc, "reason", None)
            tag = f" [{getattr(code, 'value', code)}]" if code is not None else ""
            print(f"[FAIL] {name}: {type(exc).__name__}{tag}: {exc}  ({ms:.1f} ms)", flush=True)
            self.failed += 1
            return False
        ms = (time.perf_counter() - t0) * 1000
        print(f"[PASS] {name}: {detail}  ({ms:.1f} ms)", flush=True)
        self.passed += 1
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tcti", help="TPM to test (default: $TPM2_ATTEST_TCTI or the device, "
                        "else an embedded swtpm)")
    parser.add_argument("--embedded", action="store_true", help="always use an embedded swtpm")
    parser.add_argument("--allow-source", action="store_true",
                        help="run even when tpm2_attest is imported from a source checkout")
    args = parser.parse_args(argv)

    import tpm2_attest
    from tpm2_attest import AkBlob, Tpm, TpmError, verify

    root = source_checkout(tpm2_attest.__file__)
    print(f"tpm2-attest {tpm2_attest.__version__} from {Path(tpm2_attest.__file__).parent}")
    if root is not None and not args.allow_source:
        print(f"refusing: tpm2_attest is imported from the source checkout {root}, not from an "
              "installed package (install the wheel in a fresh virtualenv, or pass --allow-source)",
              file=sys.stderr)
        return EXIT_USAGE

    steps = Steps()
    state: dict[str, Any] = {}

    def available() -> str:
        if args.embedded:
            state["embedded"] = True
            return "not asked: --embedded"
        found = Tpm.is_available(args.tcti)
        state["embedded"] = not found
        if found:
            where = args.tcti or os.environ.get("TPM2_ATTEST_TCTI") or "the default device"
            return f"a TPM answers at {where}"
        if args.tcti:
            raise RuntimeError(f"no TPM answers at {args.tcti}")
        return "no TPM device: using an embedded swtpm"

    if not steps.run("is_available", available):
        return EXIT_NO_TPM
    try:
        tpm = Tpm.open_embedded() if state["embedded"] else Tpm.open(args.tcti)
    except TpmError as exc:
        print(f"[FAIL] open: {exc} [{exc.code.value}]", flush=True)
        return EXIT_NO_TPM
    with tpm:
        print(f"       TPM: {tpm.tcti} ({'embedded swtpm' if tpm.embedded else tpm.tcti_source})")

        def info() -> str:
            i = tpm.info()
            return f"{i.manufacturer} firmware {i.firmware_version}, banks {', '.join(i.pcr_banks)}"

        def pcr_read() -> str:
            values = tpm.pcr.read(range(8))
            if len(values) != 8 or any(len(v) != 32 for v in values.values()):
                raise AssertionError(f"unexpected PCR values {values!r}")
            return f"sha256 PCRs 0-7, PCR 0 = {values[0].hex()[:16]}..."

        def provision() -> str:
            nonce = os.urandom(32)
            ek = tpm.ek("rsa")
            blob = tpm.provision_ak(nonce=nonce)
            again = AkBlob.from_bytes(blob.to_bytes())
            state.update(ek=ek, blob=again, nonce=nonce)
            return f"{blob.format} AK, {len(blob.to_bytes())} bytes; RSA EK certificate " + (
                f"{len(ek.certificate)} bytes" if ek.certificate else "absent")

        def quote() -> str:
            nonce = os.urandom(32)
            state["quote"] = tpm.quote(state["blob"], pcrs=[0, 1, 2, 3, 4, 5, 6, 7, 16],
                                       qualifying_data=nonce)
            state["quote_nonce"] = nonce
            return f"{len(state['quote'].attest)}-byte attestation over PCRs 0-7,16"

        def verify_all() -> str:
            ak = verify.check_ak(state["blob"].to_bytes(), nonce=state["nonce"])
            res = verify.verify_quote(ak, state["quote"].to_json(), nonce=state["quote_nonce"])
            state["ak"] = ak
            try:
                verify.verify_quote(ak, state["quote"], nonce=os.urandom(32))
            except verify.VerificationError as exc:
                if exc.reason != verify.Reason.NONCE_MISMATCH:
                    raise
            else:
                raise AssertionError("a quote verified against the wrong nonce")
            return f"AK and quote verified ({len(res.pcrs)} PCRs); a wrong nonce is refused"

        def activate() -> str:
            challenge, secret = verify.make_credential(state["ek"].public, state["ak"].name)
            verify.verify_activation(secret, tpm.activate_credential(state["blob"], challenge.to_bytes()))
            return "the TPM recovered the credential's secret"

        steps.run("info", info)
        steps.run("PCR read", pcr_read)
        if steps.run("provision", provision) and steps.run("quote", quote) \
                and steps.run("verify", verify_all):
            steps.run("activate", activate)
    print(f"\n{'OK' if not steps.failed else 'FAILED'}: {steps.passed} passed, {steps.failed} failed")
    return EXIT_OK if not steps.failed else EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
