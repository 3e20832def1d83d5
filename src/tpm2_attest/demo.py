"""The end-to-end demo: enrollment (EK, AK, credential activation) then attestation (quotes).

Every step records what it did, how long it took and which TPM commands it sent, so the CLI
can print it for people (``tpm2-attest demo``) or as JSON (``--json``).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from . import verify
from .errors import TpmError
from .verify import Reason, VerificationError

if TYPE_CHECKING:
    from .tpm import Tpm  # passed in by callers; the device stack is theirs to load

Status = Literal["PASS", "FAIL", "SKIP"]
DEMO_PCRS = (0, 1, 2, 3, 4, 5, 6, 7, 16)
DEMO_EXTEND_PCR = 16


@dataclass
class Step:
    """One demo step's outcome."""

    name: str
    status: Status = "PASS"
    seconds: float = 0.0
    commands: dict[str, int] = field(default_factory=dict)
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "seconds": round(self.seconds, 6),
                "tpm_commands": sum(self.commands.values()), "commands": self.commands,
                "detail": self.detail, **({"data": self.data} if self.data else {})}


@dataclass
class DemoReport:
    tpm: dict[str, Any]
    steps: list[Step]

    @property
    def ok(self) -> bool:
        return all(s.status != "FAIL" for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "tpm": self.tpm, "steps": [s.to_dict() for s in self.steps],
                "total_seconds": round(sum(s.seconds for s in self.steps), 6),
                "total_tpm_commands": sum(sum(s.commands.values()) for s in self.steps)}


class _Runner:
    def __init__(self, tpm: Tpm, on_step: Callable[[Step], None] | None) -> None:
        self.tpm = tpm
        self.steps: list[Step] = []
        self.on_step = on_step
        self.failed = False

    @contextmanager
    def step(self, name: str) -> Iterator[Step]:
        st = Step(name)
        before = dict(self.tpm.stats.by_command)
        t0 = time.perf_counter()
        try:
            yield st
        except (TpmError, VerificationError) as exc:
            st.status = "FAIL"
            st.detail = f"{type(exc).__name__}: {exc}"
            self.failed = True
        finally:
            st.seconds = time.perf_counter() - t0
            after = self.tpm.stats.by_command
            st.commands = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
            self.steps.append(st)
            if self.on_step is not None:
                self.on_step(st)


def run_demo(tpm: Tpm, *, ek_roots: list[bytes] | None = None, ek_intermediates: list[bytes] | None = None,
             algorithm: str = "ecc", extend_pcr: int = DEMO_EXTEND_PCR,
             on_step: Callable[[Step], None] | None = None) -> DemoReport:
    """Run enrollment and attestation against ``tpm``; never raises for a failed check (the
    step is marked FAIL and later steps that depend on it are skipped)."""
    info = tpm.info()
    r = _Runner(tpm, on_step)
    if tpm.embedded is not None and ek_roots is None:
        ek_roots = [Path(tpm.embedded.ca_root_path).read_bytes()]
        ek_intermediates = [Path(tpm.embedded.ca_intermediate_path).read_bytes()]

    ek = None
    with r.step("Read the EK and its certificate") as st:
        ek = tpm.ek("rsa")
        where = f"persistent at 0x{ek.handle:08x}" if ek.persistent and ek.handle else "created from the TCG template"
        cert = f"{len(ek.certificate)} bytes" if ek.certificate else "absent"
        st.detail = f"RSA EK {where}; certificate {cert}"
        st.data = {"ek_name": ek.name.hex()}

    with r.step("Verify the EK certificate chain") as st:
        if ek is None or ek.certificate is None:
            st.status, st.detail = "SKIP", "no EK certificate in NV"
        elif not ek_roots:
            st.status, st.detail = "SKIP", "no EK root CA given"
        else:
            ekcert = verify.verify_ek_certificate(ek.certificate, roots=ek_roots,
                                                  intermediates=[*(ek_intermediates or []), *ek.chain],
                                                  ek_public=ek.public)
            st.detail = (f"chains to the given root ({len(ekcert.chain)} certificates), key matches the EK; "
                         f"TPM {ekcert.tpm_manufacturer or '?'} {ekcert.tpm_model or ''}".rstrip())

    enroll_nonce = os.urandom(32)
    ak_blob = None
    with r.step(f"Provision the AK ({algorithm}) with an enrollment nonce") as st:
        ak_blob = tpm.provision_ak(nonce=enroll_nonce, algorithm=algorithm)
        st.detail = f"{ak_blob.format} blob, {len(ak_blob.to_bytes())} bytes, parent 0x{ak_blob.parent:08x}"
        st.data = {"ak_name": ak_blob.name.hex()}

    ak = None
    with r.step("Verify the AK (attributes, creation attestation, nonce)") as st:
        if ak_blob is None:
            st.status, st.detail = "SKIP", "no AK"
        else:
            ak = verify.check_ak(ak_blob, nonce=enroll_nonce)
            st.detail = "restricted signing key created in a TPM, bound to the enrollment nonce"

    with r.step("Make a credential for the EK and AK Name; activate it on the device") as st:
        if ek is None or ak is None or ak_blob is None:
            st.status, st.detail = "SKIP", "no EK or AK"
        else:
            challenge, secret = verify.make_credential(ek.public, ak.name)
            got = tpm.activate_credential(ak_blob, challenge)
            if got != secret:
                raise VerificationError(Reason.CREDENTIAL_MISMATCH, "the device returned another secret")
            st.detail = "the device recovered the secret: the AK lives in the same TPM as the EK"

    pcrs = [p for p in DEMO_PCRS if p != extend_pcr] + [extend_pcr]
    expected: dict[int, bytes] = {}
    with r.step(f"Attest: quote PCRs {_fmt(pcrs)} over a fresh nonce and verify") as st:
        if ak is None or ak_blob is None:
            st.status, st.detail = "SKIP", "no verified AK"
        else:
            nonce = os.urandom(32)
            q = tpm.quote(ak_blob, pcrs=pcrs, qualifying_data=nonce)
            res = verify.verify_quote(ak, q, nonce=nonce)
            expected = dict(res.pcrs)
            st.detail = f"signature, nonce and PCR digest verified ({len(res.pcrs)} PCRs)"
            st.data = {"pcrs": {str(i): v.hex() for i, v in sorted(res.pcrs.items())}}

    data = b"tpm2-attest demo " + os.urandom(8).hex().encode()
    with r.step(f"Extend PCR {extend_pcr}; old expected values must now fail") as st:
        if ak is None or ak_blob is None or not expected:
            st.status, st.detail = "SKIP", "no baseline quote"
        else:
            tpm.pcr.extend(extend_pcr, data)
            nonce = os.urandom(32)
            q = tpm.quote(ak_blob, pcrs=pcrs, qualifying_data=nonce)
            try:
                verify.verify_quote(ak, q, nonce=nonce, expected_pcrs=expected)
            except VerificationError as exc:
                if exc.reason != Reason.PCR_VALUE_MISMATCH:
                    raise
                st.detail = f"refused as expected: {exc.reason.value}"
            else:
                raise VerificationError(Reason.PCR_VALUE_MISMATCH,
                                        "a quote after the extend still matched the old values")

    with r.step("A fresh quote verifies against the new expected values") as st:
        if ak is None or ak_blob is None or not expected:
            st.status, st.detail = "SKIP", "no baseline quote"
        else:
            new = dict(expected)
            new[extend_pcr] = hashlib.sha256(expected[extend_pcr] + hashlib.sha256(data).digest()).digest()
            nonce = os.urandom(32)
            q = tpm.quote(ak_blob, pcrs=pcrs, qualifying_data=nonce)
            verify.verify_quote(ak, q, nonce=nonce, expected_pcrs=new)
            st.detail = f"PCR {extend_pcr} = SHA256(old || SHA256(data)) as computed by the verifier"

    tpm_info = info.to_dict()
    tpm_info["source"] = tpm.tcti_source
    return DemoReport(tpm_info, r.steps)


def _fmt(pcrs: list[int]) -> str:
    return ",".join(str(p) for p in sorted(pcrs))
