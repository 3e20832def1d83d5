"""``tpm2-attest probe [STEP]``: the command line of :mod:`tpm2_attest.probe` and, for the
``windows-report`` step, of :mod:`tpm2_attest.probe_windows`.

Opens what the command line names (--embedded, --as-emulated, --tcti or the default TPM),
runs the probe's steps and prints them. Exit codes: 0 every step passed (or was skipped),
1 a step failed, 2 usage error, 3 no TPM.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Final, cast

from ..errors import ErrorCode, TpmError
from ..probe import (
    CHOICES,
    DEFAULT_EXTEND_PCR,
    ProbeOptions,
    Prober,
    ProbeReport,
    ProbeStep,
    UsageError,
    check_options,
    run_probe,
)
from ..progress import terminal_progress
from .common import EXIT_FAIL, EXIT_NO_TPM, EXIT_OK, EXIT_USAGE, SubParsers

WINDOWS_REPORT: Final = "windows-report"
"""The step that runs :mod:`tpm2_attest.probe_windows` instead of the probe's steps."""

if TYPE_CHECKING:
    from ..backends.pcp_emulator import Privilege
    from ..tpm import Tpm


@contextmanager
def _open_target(args: argparse.Namespace, on_command: Callable[[str], None] | None,
                 ) -> Iterator[tuple[Tpm, dict[str, object]]]:
    """Open what the command line names: --embedded, --as-emulated, --tcti or the default TPM.
    The embedded swtpm is started only with --embedded."""
    from ..tpm import Tpm  # the device stack loads only when a probe runs

    with ExitStack() as stack:
        if args.as_emulated:
            privilege = cast("Privilege", args.as_emulated)
            if args.embedded:
                from ..embedded import EmbeddedSwtpm

                sw = stack.enter_context(EmbeddedSwtpm())
                swtpm_tcti, source = sw.tcti, "embedded"
            else:
                from ..transport.tcti import resolve_tcti

                chosen, source = resolve_tcti(args.tcti)
                assert chosen is not None  # _check_target
                swtpm_tcti = chosen
            if args.emulator_state:
                state = Path(args.emulator_state)
            else:
                state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pcp-state-")))
            tpm = stack.enter_context(Tpm.open_pcp_emulator(swtpm_tcti, state, privilege=privilege,
                                                            on_command=on_command))
            target: dict[str, object] = {"tcti": tpm.tcti, "source": source, "emulated": privilege,
                                         "emulator_state": str(state)}
        elif args.embedded:
            tpm = stack.enter_context(Tpm.open_embedded(on_command=on_command))
            target = {"tcti": tpm.tcti, "source": "embedded", "emulated": None}
        else:
            tpm = stack.enter_context(Tpm.open(args.tcti, embedded_fallback=False,
                                               on_command=on_command))
            target = {"tcti": tpm.tcti, "source": tpm.tcti_source, "emulated": None}
        yield tpm, target


def _print_step(st: ProbeStep) -> None:
    print(f"[{st.status}] {st.name:<17}{st.detail}  ({st.seconds * 1000:.1f} ms)")
    if st.error is not None and "code" in st.error:
        e = st.error
        rc = f"{e['tpm_rc_name']} (0x{cast(int, e['tpm_rc']):x})" if e.get("tpm_rc") is not None else "-"
        hr = (f"{e['hresult_name']} (0x{cast(int, e['hresult']) & 0xFFFFFFFF:08x})"
              if e.get("hresult") is not None else "-")
        print(f"       code {e['code']}, tpm_rc {rc}, hresult {hr}, command {e.get('command') or '-'}")
    elif st.error is not None and "reason" in st.error:
        print(f"       reason {st.error['reason']}")
    if st.hint:
        print(f"       hint: {st.hint}")
    sys.stdout.flush()


def _usage(args: argparse.Namespace, message: str) -> int:
    if args.json:
        print(json.dumps({"ok": False, "exit_code": EXIT_USAGE, "usage_error": message}, indent=2))
    else:
        print(f"tpm2-attest probe: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def cmd_windows_report(args: argparse.Namespace) -> int:
    """``probe windows-report``: every PCP assumption checked, one report (--json, --output)."""
    from ..backends.pcp import PcpBackend
    from ..probe_windows import ReportOptions, run_windows_report, write_report

    handoff = Path(args.handoff) if args.handoff else None
    cleanup = Path(args.cleanup_handoff) if args.cleanup_handoff else None
    try:
        if handoff is not None and cleanup is not None:
            raise UsageError("--handoff starts a hand-over, --cleanup-handoff ends one: give one")
        if cleanup is not None and not cleanup.is_file():
            raise UsageError(f"--cleanup-handoff {cleanup}: no such file")
        for flag in ("blob", "save_blob", "key_name", "overwrite", "algorithm", "force"):
            if getattr(args, flag):
                raise UsageError(f"--{flag.replace('_', '-')} is for the probe steps; "
                                 f"{WINDOWS_REPORT} makes and deletes its own keys")
        _check_target(args)
        with _open_target(args, None) as (tpm, target):
            backend = tpm.backend
            if not isinstance(backend, PcpBackend):
                raise UsageError(f"{WINDOWS_REPORT} checks the Windows Platform Crypto Provider: "
                                 f"run it on Windows (this TPM is used directly: {tpm.tcti}), or "
                                 "rehearse it with --as-emulated standard|admin|system")
            report = run_windows_report(backend, ReportOptions(handoff, cleanup), target=target)
    except UsageError as exc:
        return _usage(args, str(exc))
    except TpmError as exc:
        code = EXIT_NO_TPM if exc.code == ErrorCode.TPM_NOT_FOUND else EXIT_FAIL
        if args.json:
            print(json.dumps({"ok": False, "exit_code": code, "error": exc.to_dict()}, indent=2))
        else:
            print(f"tpm2-attest probe {WINDOWS_REPORT}: {exc}", file=sys.stderr)
        return code
    if args.output:
        write_report(report, Path(args.output))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for ck in report.checks:
            flag = " (breaks a feature)" if ck.breaks else ""
            status = f"[{ck.status}]"
            print(f"{status:<12}{ck.name:<26}{ck.detail}{flag}")
        left = [k for k in report.keys_left if not k.get("handoff")]
        c = report.counts()
        print(f"\n{'OK' if report.ok else 'ATTENTION'}: " + ", ".join(
            f"{n} {s}" for s, n in c.items() if n) + f"; keys created {len(report.keys_created)}, "
            f"deleted {len(report.keys_deleted)}, left {len(left)}"
            + (f"; kept for the standard-user run: {report.handoff['key_name']}"
               if report.handoff else "")
            + (f"; report written to {args.output}" if args.output else ""))
    return report.exit_code


def cmd_probe(args: argparse.Namespace) -> int:
    """The ``probe`` sub-command (see the module docstring)."""
    if args.step == WINDOWS_REPORT:
        return cmd_windows_report(args)
    for flag in ("output", "handoff", "cleanup_handoff"):
        if getattr(args, flag):
            return _usage(args, f"--{flag.replace('_', '-')} is for the {WINDOWS_REPORT} step")
    if args.step == "help":
        if args.json:
            print(json.dumps({"ok": True, "step": "help", "text": WINDOWS_RECIPE}, indent=2))
        else:
            print(WINDOWS_RECIPE)
        return EXIT_OK
    options = ProbeOptions(scope=args.scope, key_name=args.key_name, overwrite=args.overwrite,
                           blob=Path(args.blob) if args.blob else None,
                           save_blob=Path(args.save_blob) if args.save_blob else None,
                           pcr=args.pcr, algorithm=args.algorithm)
    show = None if args.json else _print_step
    try:
        check_options(args.step, options, force=args.force)
        _check_target(args)
        report = _probe(args, options, show)
    except UsageError as exc:
        if args.json:
            print(json.dumps({"ok": False, "exit_code": EXIT_USAGE, "usage_error": str(exc)}, indent=2))
        else:
            print(f"tpm2-attest probe: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        c = report.counts()
        total = sum(s.seconds for s in report.steps) * 1000
        print(f"\n{'OK' if report.ok else 'FAILED'}: {c['passed']} passed, {c['failed']} failed, "
              f"{c['skipped']} skipped ({total:.0f} ms)")
    return report.exit_code


def _probe(args: argparse.Namespace, options: ProbeOptions,
           show: Callable[[ProbeStep], None] | None) -> ProbeReport:
    progress = terminal_progress()
    report = ProbeReport({"tcti": args.tcti, "source": "argument" if args.tcti else None})
    opener = Prober(None, report, options, explicit=True, on_step=show)
    try:
        with ExitStack() as stack:
            opened: list[tuple[Tpm, dict[str, object]]] = []
            with opener.step("open") as st:
                opened.append(stack.enter_context(_open_target(args, progress)))
                tpm, target = opened[0]
                report.target = target
                st.detail = f"{tpm.tcti} (from {target['source']})" + (
                    f", PCP emulator as {target['emulated']}" if target.get("emulated") else "")
            if not opened:
                code = (report.steps[-1].error or {}).get("code")
                if code == ErrorCode.INVALID_ARGUMENT.value:
                    raise UsageError(report.steps[-1].detail)
                report.no_tpm = code == ErrorCode.TPM_NOT_FOUND.value
                return report
            tpm, target = opened[0]
            sub = run_probe(tpm, args.step, options, target=target, on_step=show,
                            progress=progress)
            report.steps.extend(sub.steps)
            report.tpm = sub.tpm
    finally:
        if progress is not None:
            progress.close()
    return report


def _check_target(args: argparse.Namespace) -> None:
    """A --tcti must parse; --as-emulated needs a swtpm: --embedded, or a swtpm TCTI."""
    from ..transport.tcti import parse_tcti, resolve_tcti

    if args.tcti is not None:
        try:
            parse_tcti(args.tcti)
        except TpmError as exc:
            raise UsageError(f"--tcti {args.tcti!r}: {exc}") from exc
    if not args.as_emulated or args.embedded:
        return

    chosen, _source = resolve_tcti(args.tcti)
    try:
        kind = parse_tcti(chosen).kind if chosen is not None else None
    except TpmError as exc:
        raise UsageError(str(exc)) from exc
    if kind != "swtpm":
        raise UsageError("--as-emulated runs the PCP emulator over a swtpm: give "
                         "--tcti swtpm:host=...,port=... or --embedded")


# -- the Windows recipe (probe help) -----------------------------------------------------------

WINDOWS_RECIPE: Final = r"""tpm2-attest probe help: provision a machine AK as SYSTEM, then quote as a standard user

On Windows, machine-scope attestation keys (PCP2) are created by an elevated account, and
fleet tools (Intune, SCCM, Group Policy) run enrollment as SYSTEM. To rehearse that on a test
machine without extra tools, run the provisioning once as SYSTEM from a one-shot scheduled
task, then quote from a standard shell with the saved blob.

Below, tpm2-attest is installed in C:\MyApp\venv (a path without spaces: the task's command
line is split on them) and the key name is my-app-device-ak (use your own product prefix).

1. From an elevated (Administrator) PowerShell:

   New-Item -ItemType Directory -Force C:\ProgramData\MyApp | Out-Null
   schtasks /Create /TN "MyApp-ProvisionAk" /RU SYSTEM /SC ONCE /ST 00:00 /F /TR "cmd /c C:\MyApp\venv\Scripts\tpm2-attest.exe probe ak --scope machine --key-name my-app-device-ak --overwrite --save-blob C:\ProgramData\MyApp\ak.blob --json > C:\ProgramData\MyApp\provision.json 2>&1"
   schtasks /Run /TN "MyApp-ProvisionAk"
   schtasks /Query /TN "MyApp-ProvisionAk" /V /FO LIST     # wait for "Last Result: 0"
   Get-Content C:\ProgramData\MyApp\provision.json        # the SYSTEM run's report
   schtasks /Delete /TN "MyApp-ProvisionAk" /F

   (/SC ONCE /ST 00:00 never fires by itself: /Run starts it now; Windows warns that the start
   time is in the past, which is expected.)

2. From a standard (non-elevated) PowerShell:

   C:\MyApp\venv\Scripts\tpm2-attest.exe probe quote --blob C:\ProgramData\MyApp\ak.blob
   C:\MyApp\venv\Scripts\tpm2-attest.exe probe all --blob C:\ProgramData\MyApp\ak.blob

   The quote must PASS: a standard user quotes with the key SYSTEM made. Under "all", extend
   and activate report SKIP with REQUIRES_ELEVATION: Windows refuses them to standard users.
   "probe pcp-capabilities" shows whether the provider has Security Descr Support, which
   machine keys need.

The blob is a locator (magic, key name, public creation evidence), not a secret: any process
that can read it can quote with the key. A quote proves the enrolled device, not which
program or user asked for it (docs/concepts.md).

To check every assumption the Windows backend makes and send us one report, run
"tpm2-attest probe windows-report --output report.json" once from a standard shell and once
as SYSTEM with a task like the one above (docs/windows.md, "The Windows report", has the
recipe, including --handoff so the standard-user run can prove the machine key's DACL). It
deletes every key it creates.

Rehearse the same flow on Linux with the PCP emulator over one swtpm and one state dir:

   tpm2-attest probe ak --as-emulated system --tcti swtpm:port=2321 --emulator-state ./pcp \
       --scope machine --key-name my-app-device-ak --overwrite --save-blob ak.blob
   tpm2-attest probe quote --as-emulated standard --tcti swtpm:port=2321 --emulator-state ./pcp \
       --blob ak.blob
"""


# -- argparse ----------------------------------------------------------------------------------


def add_parser(sub: SubParsers) -> argparse.ArgumentParser:
    """Register ``probe`` on the CLI's sub-parsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "probe", help="diagnose the TPM: PASS/FAIL/SKIP per step, with hints",
        description="Diagnose the TPM step by step. Exit codes: 0 all passed, 1 a step failed, "
                    "2 usage error, 3 no TPM. Never starts the embedded swtpm unless --embedded.")
    p.add_argument("step", nargs="?", default="all", choices=[*CHOICES, WINDOWS_REPORT],
                   help="all (default), one step, help (the Windows SYSTEM recipe), or "
                        f"{WINDOWS_REPORT} (check every Windows PCP assumption, one report)")
    p.add_argument("-T", "--tcti", help="TPM to probe, e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321 "
                   "(default: $TPM2_ATTEST_TCTI, $TPM2TOOLS_TCTI, then the platform's TPM)")
    p.add_argument("--json", action="store_true", help="print one machine-readable report")
    p.add_argument("--embedded", action="store_true", help="probe a fresh embedded swtpm")
    p.add_argument("--scope", choices=["user", "machine"], default="user",
                   help="AK scope for the ak step (machine: Windows PCP2, needs --key-name)")
    p.add_argument("--key-name", help="PCP key name (Windows, or --as-emulated)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing PCP key of that name")
    p.add_argument("--algorithm", choices=["ecc", "rsa"], help="AK algorithm on a raw TPM (default ecc)")
    p.add_argument("--save-blob", metavar="FILE", help="write the provisioned AK blob (atomically)")
    p.add_argument("--blob", metavar="FILE", help="use a saved AK blob for ak/quote/activate")
    p.add_argument("--pcr", type=int, default=DEFAULT_EXTEND_PCR,
                   help=f"PCR for the extend step (default {DEFAULT_EXTEND_PCR})")
    p.add_argument("--force", action="store_true", help="allow extending PCRs 0-7")
    p.add_argument("--as-emulated", choices=["standard", "admin", "system"],
                   help="run the Windows PCP logic over the PCP emulator, with this privilege, "
                        "on the swtpm of --tcti (or --embedded)")
    p.add_argument("--emulator-state", metavar="DIR",
                   help="the emulator's key-name directory (default: a temporary one); share it "
                        "between runs to quote with a key another run provisioned")
    p.add_argument("--output", metavar="FILE",
                   help=f"{WINDOWS_REPORT}: also write the JSON report to FILE (atomically)")
    p.add_argument("--handoff", metavar="FILE",
                   help=f"{WINDOWS_REPORT}: elevated, keep one machine key and write its blob to "
                        "FILE; as a standard user, quote with the key of FILE")
    p.add_argument("--cleanup-handoff", metavar="FILE",
                   help=f"{WINDOWS_REPORT}: elevated, delete the machine key an earlier --handoff "
                        "kept (and FILE)")
    p.set_defaults(func=cmd_probe)
    return p
