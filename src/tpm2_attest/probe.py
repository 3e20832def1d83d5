"""``tpm2-attest probe [STEP]``: diagnose the TPM this machine (or a named TCTI) offers.

Each step says PASS, FAIL or SKIP, why, how long it took and which TPM commands it sent; a
failure shows the whole ``TpmError`` (code, decoded ``tpm_rc``, ``hresult`` name) and what to do
about it. ``probe`` examines the TPM it is pointed at: it never starts the embedded swtpm unless
``--embedded`` says so. ``--as-emulated standard|admin|system`` runs the Windows PCP logic over
``PcpEmulator`` (keys in a swtpm) to rehearse the Windows privilege model on any OS.

Exit codes: 0 every step passed (or was skipped), 1 a step failed, 2 usage error, 3 no TPM.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from . import verify
from ._files import write_atomic
from ._version import __version__
from .demo import Step
from .errors import ErrorCode, TpmError
from .progress import Progress
from .verify import VerificationError

if TYPE_CHECKING:
    from .evidence import AkBlob, EkInfo
    from .tpm import Tpm

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_NO_TPM = 0, 1, 2, 3

STEPS: Final = ("info", "pcrs", "ek", "ak", "quote", "extend", "activate", "pcp-capabilities")
"""The TPM steps, in the order ``all`` runs them (after ``open``)."""
CHOICES: Final = ("all", *STEPS, "help")
DEFAULT_EXTEND_PCR: Final = 16
BOOT_PCRS: Final = range(8)
"""Firmware and Secure Boot measurements: extending them breaks attestation until reboot."""
QUOTE_PCRS: Final = (0, 1, 2, 3, 4, 5, 6, 7, DEFAULT_EXTEND_PCR)
EXTEND_DATA: Final = b"tpm2-attest probe"
ELEVATED_STEPS: Final = frozenset({"extend", "activate"})
"""Steps a Windows standard user is refused by design (docs/windows.md, privileges); under
``all`` a REQUIRES_ELEVATION there is reported as SKIP, when named explicitly as FAIL."""

Status = Literal["PASS", "FAIL", "SKIP"]


class UsageError(Exception):
    """The command line asks for something impossible (exit code 2)."""


class _Mismatch(Exception):
    """A check the probe itself makes did not hold (the TPM answered, but wrongly)."""


# -- hints -------------------------------------------------------------------------------------

HINTS: Final[dict[ErrorCode, str]] = {
    ErrorCode.TPM_NOT_FOUND: "no TPM here: check that the TPM is enabled in the firmware and that "
    "/dev/tpmrm0 exists (Linux); name another TPM with --tcti (e.g. swtpm:port=2321) or use "
    "--embedded for a software TPM",
    ErrorCode.TPM_ERROR: "the TPM refused the command: see tpm_rc for why",
    ErrorCode.REQUIRES_ELEVATION: "run as root or add the user to the 'tss' group "
    "(sudo usermod -aG tss $USER, then log in again)",
    ErrorCode.KEY_NOT_FOUND: "the key this blob names is not on this TPM/provider: provision it on "
    "this machine (machine scope: as SYSTEM, see 'tpm2-attest probe help') or pass the right --blob",
    ErrorCode.KEY_EXISTS: "a key of that name exists: pass --overwrite to replace it (blobs of the "
    "old key stop working)",
    ErrorCode.BAD_BLOB: "the blob is malformed, truncated, of another TPM, or of the other "
    "platform (TPW1 is for a raw TPM, PCP1/PCP2 for Windows): provision a new one",
    ErrorCode.UNSUPPORTED: "this TPM or provider lacks the feature: see the message for the "
    "alternative",
    ErrorCode.LOCKOUT: "the TPM is in dictionary-attack lockout: wait for the lockout interval, or "
    "clear it with the lockout authorization (tpm2_dictionarylockout --clear-lockout)",
    ErrorCode.RETRY_EXHAUSTED: "the TPM stayed busy (self-test, or another program): try again",
    ErrorCode.TRANSPORT: "the command did not reach the TPM: is the swtpm still running, is the "
    "device held by another program (use /dev/tpmrm0, not /dev/tpm0)?",
    ErrorCode.BAD_RESPONSE: "the TPM's answer did not parse: report it with the --json output",
    ErrorCode.INVALID_ARGUMENT: "an argument is out of range or does not apply to this TPM "
    "(e.g. --key-name is for Windows PCP keys only)",
}
"""What to do about each ErrorCode (docs/errors.md explains them at length)."""
WINDOWS_ELEVATION_HINT: Final = ("run from an elevated (Administrator) shell, or as SYSTEM: "
                                 "'tpm2-attest probe help' shows a one-shot SYSTEM task")


def hint_for(exc: TpmError) -> str:
    """The advice shown under a failed step: the error's own hint, else one per code."""
    if exc.hint:
        return exc.hint
    if exc.code == ErrorCode.REQUIRES_ELEVATION and exc.hresult is not None:
        return WINDOWS_ELEVATION_HINT
    return HINTS.get(exc.code, HINTS[ErrorCode.TPM_ERROR])


# -- steps and report ----------------------------------------------------------------------------


@dataclass
class ProbeStep(Step):
    """A demo :class:`~tpm2_attest.demo.Step` plus the failure's structured error and hint."""

    error: dict[str, object] | None = None
    hint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.error is not None:
            out["error"] = self.error
        if self.hint is not None:
            out["hint"] = self.hint
        return out


@dataclass
class ProbeReport:
    """Everything one probe run found; ``to_dict`` is the --json schema."""

    target: dict[str, object]
    steps: list[ProbeStep] = field(default_factory=list)
    tpm: dict[str, object] | None = None
    no_tpm: bool = False

    @property
    def ok(self) -> bool:
        return not self.no_tpm and all(s.status != "FAIL" for s in self.steps)

    @property
    def exit_code(self) -> int:
        if self.no_tpm:
            return EXIT_NO_TPM
        return EXIT_OK if self.ok else EXIT_FAIL

    def counts(self) -> dict[str, int]:
        return {k: sum(1 for s in self.steps if s.status == v)
                for k, v in (("passed", "PASS"), ("failed", "FAIL"), ("skipped", "SKIP"))}

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "exit_code": self.exit_code,
            "version": __version__,
            "target": self.target,
            "tpm": self.tpm,
            "steps": [s.to_dict() for s in self.steps],
            "summary": {**self.counts(),
                        "seconds": round(sum(s.seconds for s in self.steps), 6),
                        "tpm_commands": sum(sum(s.commands.values()) for s in self.steps)},
        }


@dataclass
class ProbeOptions:
    """What the command line asked for (see ``tpm2-attest probe --help``)."""

    scope: str = "user"
    key_name: str | None = None
    overwrite: bool = False
    blob: Path | None = None
    save_blob: Path | None = None
    pcr: int = DEFAULT_EXTEND_PCR
    algorithm: str | None = None


class Prober:
    """Runs steps against one open Tpm, sharing the EK and AK between them."""

    def __init__(self, tpm: Tpm | None, report: ProbeReport, options: ProbeOptions, *,
                 explicit: bool, on_step: Callable[[ProbeStep], None] | None,
                 progress: Progress | None = None) -> None:
        self.tpm = tpm
        self.progress = progress
        self.report = report
        self.options = options
        self.explicit = explicit
        self.on_step = on_step
        self.ek: EkInfo | None = None
        self.ak: AkBlob | None = None
        self.ak_tried = False

    @contextmanager
    def step(self, name: str) -> Iterator[ProbeStep]:
        st = ProbeStep(name)
        before = dict(self.tpm.stats.by_command) if self.tpm is not None else {}
        t0 = time.perf_counter()
        try:
            yield st
        except TpmError as exc:
            st.status, st.detail = "FAIL", str(exc)
            st.error, st.hint = exc.to_dict(), hint_for(exc)
            if (not self.explicit and exc.code == ErrorCode.REQUIRES_ELEVATION
                    and exc.hresult is not None  # Windows' own refusal, not a Linux EACCES
                    and (name in ELEVATED_STEPS or (name == "ak" and self.options.scope == "machine"))):
                st.status = "SKIP"
                st.detail = f"needs elevation, as for any standard user: {exc}"
        except VerificationError as exc:
            st.status, st.detail = "FAIL", f"the verifier refused the TPM's evidence: {exc}"
            st.error = {"reason": exc.reason.value, "detail": exc.detail}
            st.hint = ("a --blob file was altered or is not an AK blob; otherwise the TPM made "
                       "evidence our verifier rejects: report it with the --json output")
        except _Mismatch as exc:
            st.status, st.detail = "FAIL", str(exc)
        except OSError as exc:
            st.status, st.detail = "FAIL", f"{type(exc).__name__}: {exc}"
            st.error = {"os_error": type(exc).__name__, "errno": exc.errno, "message": str(exc)}
        except BaseException as exc:
            st.status, st.detail = "FAIL", f"interrupted by {type(exc).__name__}: {exc}"
            raise
        finally:
            st.seconds = time.perf_counter() - t0
            if self.tpm is not None:
                after = self.tpm.stats.by_command
                st.commands = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
            self.report.steps.append(st)
            if self.on_step is not None:
                self.on_step(st)

    def _need_tpm(self) -> Tpm:
        assert self.tpm is not None
        return self.tpm

    # -- TPM steps ----------------------------------------------------------------------------

    def info(self, st: ProbeStep) -> None:
        info = self._need_tpm().info()
        self.report.tpm = info.to_dict()
        st.detail = (f"{info.manufacturer} ({info.vendor_string}), firmware {info.firmware_version}, "
                     f"TPM {info.spec_family} rev {info.spec_revision}, platform {info.platform}, "
                     f"banks {', '.join(info.pcr_banks)}")
        st.data = info.to_dict()

    def pcrs(self, st: ProbeStep) -> None:
        tpm = self._need_tpm()
        values = {bank: tpm.pcr.read(bank=bank) for bank in tpm.pcr.banks()}
        st.data = {bank: {str(i): v.hex() for i, v in vals.items()} for bank, vals in values.items()}
        parts = [f"{bank}: {len(vals)} PCRs" for bank, vals in values.items()]
        boot = values.get("sha256") or next(iter(values.values()), {})
        if boot and all(not any(boot[i]) for i in BOOT_PCRS if i in boot):
            parts.append("PCRs 0-7 are all zero (no firmware measurements: a software TPM?)")
        st.detail = "; ".join(parts)

    def _ek(self) -> EkInfo:
        if self.ek is None:
            self.ek = self._need_tpm().ek("rsa")
        return self.ek

    def ek_step(self, st: ProbeStep) -> None:
        ek = self._ek()
        if ek.persistent and ek.handle:
            where = f"persistent at 0x{ek.handle:08x}"
        elif self._need_tpm().backend.platform == "windows":
            where = "read from the provider (PCP_EKPUB)"
        else:
            where = "created from the TCG template"
        st.detail = f"RSA EK {where}; certificate {_describe_cert(ek.certificate)}"
        st.data = {"name": ek.name.hex(), "handle": f"0x{ek.handle:08x}" if ek.handle else None,
                   "persistent": ek.persistent,
                   "certificate_bytes": len(ek.certificate) if ek.certificate else None}

    def _load_blob(self) -> AkBlob:
        path = self.options.blob
        assert path is not None
        from .evidence import AkBlob  # loaded by the step that reads a blob

        return AkBlob.load(path.read_bytes())

    def _provision(self) -> tuple[AkBlob, bytes]:
        nonce = os.urandom(32)
        with self.progress.activity("creating the attestation key") if self.progress else nullcontext():
            blob = self._need_tpm().provision_ak(key_name=self.options.key_name, scope=self.options.scope,
                                                 overwrite=self.options.overwrite, nonce=nonce,
                                                 algorithm=self.options.algorithm)
        return blob, nonce

    def ak_step(self, st: ProbeStep) -> None:
        self.ak_tried = True
        if self.options.blob is not None:
            blob = self._load_blob()
            verify.check_ak(blob)
            self.ak = blob
            st.detail = (f"loaded a {blob.format} blob from {self.options.blob}"
                         f"{_key_name(blob)}; check_ak passed")
        else:
            blob, nonce = self._provision()
            verify.check_ak(blob, nonce=nonce)
            self.ak = blob
            st.detail = (f"provisioned a {blob.format} AK ({_alg(blob)}){_key_name(blob)}; "
                         "check_ak passed with the enrollment nonce")
            if self.options.save_blob is not None:
                # Not a secret (a locator plus public creation evidence): readable by others.
                write_atomic(self.options.save_blob, blob.to_bytes(), mode=0o644)
                st.detail += f"; saved to {self.options.save_blob}"
        st.data = {"format": blob.format, "key_name": blob.key_name or None, "name": blob.name.hex(),
                   "bytes": len(blob.to_bytes())}

    def _ak(self, st: ProbeStep) -> AkBlob | None:
        """The AK for quote/activate: the ak step's, the --blob file's, or a new user-scope one."""
        if self.ak is not None:
            return self.ak
        if self.ak_tried:
            st.status, st.detail = "SKIP", "no AK: the ak step did not produce one"
            return None
        self.ak_tried = True
        self.ak = self._load_blob() if self.options.blob is not None else self._provision()[0]
        return self.ak

    def quote(self, st: ProbeStep) -> None:
        blob = self._ak(st)
        if blob is None:
            return
        nonce = os.urandom(32)
        q = self._need_tpm().quote(blob, pcrs=QUOTE_PCRS, qualifying_data=nonce)
        res = verify.verify_quote(verify.check_ak(blob), q, nonce=nonce)
        st.detail = (f"quoted PCRs 0-7,{DEFAULT_EXTEND_PCR} ({res.bank}) with the {blob.format} AK "
                     f"({_alg(blob)}); signature, nonce and PCR digest verified locally")
        st.data = {"bank": res.bank, "pcrs": {str(i): v.hex() for i, v in sorted(res.pcrs.items())}}

    def extend(self, st: ProbeStep) -> None:
        tpm = self._need_tpm()
        index = self.options.pcr
        banks = tpm.pcr.banks()
        before = {bank: tpm.pcr.read([index], bank)[index] for bank in banks}
        tpm.pcr.extend(index, EXTEND_DATA)
        wrong = []
        for bank in banks:
            want = hashlib.new(bank, before[bank] + hashlib.new(bank, EXTEND_DATA).digest()).digest()
            if tpm.pcr.read([index], bank)[index] != want:
                wrong.append(bank)
        if wrong:
            raise _Mismatch(f"PCR {index} after the extend is not H(old || H(data)) in {', '.join(wrong)}")
        st.detail = f"PCR {index} extended in {', '.join(banks)}; each new value is H(old || H(data))"

    def activate(self, st: ProbeStep) -> None:
        blob = self._ak(st)
        if blob is None:
            return
        challenge, secret = verify.make_credential(self._ek().public, blob.name)
        verify.verify_activation(secret, self._need_tpm().activate_credential(blob, challenge))
        st.detail = "the TPM recovered the credential's secret: the AK is in the TPM of this EK"

    def pcp_capabilities(self, st: ProbeStep) -> None:
        tpm = self._need_tpm()
        from .backends.pcp import PcpBackend

        backend = tpm.backend
        if not isinstance(backend, PcpBackend):
            st.status = "SKIP"
            st.detail = (f"the Platform Crypto Provider is Windows-only; this TPM is used directly "
                         f"({tpm.tcti}). --as-emulated runs the PCP logic over a swtpm")
            return
        caps = _pcp_capabilities(backend)
        ek = self._ek()
        caps["ek_public_readable"] = True
        caps["ek_certificate_readable"] = ek.certificate is not None
        st.data = caps
        sd = caps["security_descr_support"]
        st.detail = (f"provider {caps['provider']!r} version {caps['provider_version']!r}; "
                     f"platform {caps['platform_type']!r}; Security Descr Support "
                     f"{'yes' if sd else 'no: machine-scope (PCP2) AKs are unavailable'}; EK public "
                     f"readable, EK certificate "
                     f"{'readable' if ek.certificate else 'not readable by this account'}")
        if not sd and self.options.scope == "machine":
            raise _Mismatch(st.detail + " -- and --scope machine was asked for")


def _pcp_capabilities(backend: Any) -> dict[str, object]:
    """Provider version, platform type and Security Descr Support, read through NCrypt."""
    from .backends.ncrypt_api import (
        NCRYPT_PCP_PLATFORM_TYPE_PROPERTY,
        NCRYPT_PCP_PROVIDER_VERSION_PROPERTY,
        NCRYPT_SECURITY_DESCR_SUPPORT_PROPERTY,
        NTE_NOT_FOUND,
        NTE_NOT_SUPPORTED,
        NCryptError,
        unpack_dword,
        unpack_wstr,
    )
    from .backends.pcp import ncrypt_error

    nc = backend.ncrypt
    out: dict[str, object] = {"provider": backend.provider_name}
    try:
        prov = nc.open_storage_provider(backend.provider_name, 0)
    except NCryptError as exc:
        raise ncrypt_error(exc, f"opening {backend.provider_name!r}") from exc
    try:
        for key, prop in (("provider_version", NCRYPT_PCP_PROVIDER_VERSION_PROPERTY),
                          ("platform_type", NCRYPT_PCP_PLATFORM_TYPE_PROPERTY)):
            try:
                out[key] = unpack_wstr(nc.get_property(prov, prop))
            except NCryptError as exc:
                out[key] = None
                out[f"{key}_error"] = f"0x{exc.hresult & 0xFFFFFFFF:08x}"
        try:
            out["security_descr_support"] = unpack_dword(
                nc.get_property(prov, NCRYPT_SECURITY_DESCR_SUPPORT_PROPERTY)) == 1
        except NCryptError as exc:
            if exc.hresult not in (NTE_NOT_SUPPORTED, NTE_NOT_FOUND):
                raise ncrypt_error(exc, "reading 'Security Descr Support'") from exc
            out["security_descr_support"] = False
    finally:
        with suppress(NCryptError):
            nc.free_object(prov)
    return out


def _describe_cert(der: bytes | None) -> str:
    if der is None:
        return "absent (none in NV, or not readable by this account)"
    from cryptography import x509

    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return f"{len(der)} bytes (not strict DER; verify_ek_certificate reads it leniently)"
    return f"{len(der)} bytes, issuer {cert.issuer.rfc4514_string()!r}"


def _alg(blob: AkBlob) -> str:
    area = blob.public_area
    params = area.parameters
    bits = getattr(params, "key_bits", None)
    return f"RSA-{bits}" if bits else "ECC"


def _key_name(blob: AkBlob) -> str:
    return f", key name {blob.key_name!r}" if blob.key_name else ""


# -- running ----------------------------------------------------------------------------------


def _steps_for(step: str) -> list[str]:
    return list(STEPS) if step == "all" else [step]


def check_options(step: str, options: ProbeOptions, *, force: bool) -> None:
    """Refuse impossible combinations before any TPM is touched (UsageError: exit code 2)."""
    if step == "extend" or step == "all":
        if not 0 <= options.pcr <= 23:
            raise UsageError(f"--pcr {options.pcr}: PCR indices are 0-23")
        if options.pcr in BOOT_PCRS and not force:
            raise UsageError(f"refusing to extend PCR {options.pcr}: PCRs 0-7 hold firmware and Secure "
                             "Boot measurements (use 16 or 23, or --force if you mean it)")
    if options.scope not in ("user", "machine"):
        raise UsageError(f"--scope {options.scope!r}: expected user or machine")
    if options.scope == "machine" and not options.key_name and options.blob is None:
        raise UsageError("--scope machine needs --key-name (a stable, vendor-prefixed name such as "
                         "my-app-device-ak)")
    if options.blob is not None and options.save_blob is not None:
        raise UsageError("--blob uses a saved AK and --save-blob saves a new one: give one of them")
    if options.blob is not None and not options.blob.is_file():
        raise UsageError(f"--blob {options.blob}: no such file")


def run_probe(tpm: Tpm, step: str = "all", options: ProbeOptions | None = None, *,
              target: dict[str, object] | None = None,
              on_step: Callable[[ProbeStep], None] | None = None,
              progress: Progress | None = None) -> ProbeReport:
    """Run ``step`` (or ``all``) against an open ``tpm``; never raises for a failed step."""
    options = options or ProbeOptions()
    report = ProbeReport(target or {"tcti": tpm.tcti, "source": tpm.tcti_source})
    prober = Prober(tpm, report, options, explicit=step != "all", on_step=on_step,
                     progress=progress)
    actions: dict[str, Callable[[ProbeStep], None]] = {
        "info": prober.info, "pcrs": prober.pcrs, "ek": prober.ek_step, "ak": prober.ak_step,
        "quote": prober.quote, "extend": prober.extend, "activate": prober.activate,
        "pcp-capabilities": prober.pcp_capabilities,
    }
    for name in _steps_for(step):
        with prober.step(name) as st:
            actions[name](st)
    return report


__all__ = ["CHOICES", "DEFAULT_EXTEND_PCR", "HINTS", "STEPS", "ProbeOptions", "ProbeReport", "ProbeStep",
           "Prober", "UsageError", "check_options", "hint_for", "run_probe"]
