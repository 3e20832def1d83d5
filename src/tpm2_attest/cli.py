"""The ``tpm2-attest`` command line: thin wrappers over ``Tpm``, evidence and ``verify``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import verify
from ._files import write_atomic
from ._version import __version__
from .errors import ErrorCode, TpmError
from .evidence import AkBlob, CredentialChallenge, Quote
from .progress import terminal_progress
from .tpm import Tpm
from .verify import VerificationError

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_NO_TPM = 0, 1, 2, 3


def _open(args: argparse.Namespace, *, fallback: bool) -> Tpm:
    """Open --tcti / the environment / the device; the embedded swtpm only when allowed and
    nothing was named (an explicit TPM that is down is an error, not a silent swap)."""
    progress = terminal_progress()  # a spinner on a terminal for slow key creation; None when piped
    if getattr(args, "embedded", False):
        tpm = Tpm.open_embedded(on_command=progress)
    else:
        tpm = Tpm.open(args.tcti, embedded_fallback=fallback, on_command=progress)
    if tpm.embedded is not None and not getattr(args, "json", False):
        print(f"No TPM found: using an embedded software TPM (swtpm at {tpm.tcti})", file=sys.stderr)
    return tpm


def _emit(args: argparse.Namespace, obj: dict[str, Any], text: Callable[[], None]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(obj, indent=2, sort_keys=False))
    else:
        text()


def _parse_pcrs(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1))
        else:
            out.append(int(part))
    return out


def _hex_or_file(value: str | None) -> bytes | None:
    if value is None:
        return None
    if value.startswith("@"):
        return Path(value[1:]).read_bytes()
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not hex: {value!r} (use @FILE for a file)") from None


# -- commands -------------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    with _open(args, fallback=True) as tpm:
        info = tpm.info()
        pcrs = {bank: tpm.pcr.read(bank=bank) for bank in info.pcr_banks}
        obj = {**info.to_dict(), "source": tpm.tcti_source,
               "pcrs": {b: {str(i): v.hex() for i, v in vals.items()} for b, vals in pcrs.items()}}

        def text() -> None:
            print(f"TPM:          {info.manufacturer} ({info.vendor_string}), firmware {info.firmware_version}")
            print(f"Spec:         TPM {info.spec_family} revision {info.spec_revision} ({info.spec_year})")
            print(f"Transport:    {info.tcti} [{info.platform}, from {tpm.tcti_source}]")
            print(f"PCR banks:    {', '.join(info.pcr_banks)}")
            for bank, vals in pcrs.items():
                print(f"{bank}:")
                for i, v in vals.items():
                    print(f"  {i:2d}: {v.hex()}")

        _emit(args, obj, text)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import Step, run_demo

    roots = [Path(p).read_bytes() for p in args.ek_root] if args.ek_root else None
    inter = [Path(p).read_bytes() for p in args.ek_intermediate] if args.ek_intermediate else None

    def show(st: Step) -> None:
        if args.json:
            return
        cmds = ", ".join(f"{k.removeprefix('TPM2_')}x{v}" if v > 1 else k.removeprefix("TPM2_")
                         for k, v in st.commands.items())
        print(f"[{st.status}] {st.name}  ({st.seconds * 1000:.1f} ms, {sum(st.commands.values())} TPM commands)")
        if st.detail:
            print(f"       {st.detail}")
        if cmds:
            print(f"       commands: {cmds}")

    with _open(args, fallback=True) as tpm:
        if not args.json:
            print(f"Demo against {tpm.tcti} ({'embedded swtpm' if tpm.embedded else tpm.tcti_source})\n")
        report = run_demo(tpm, ek_roots=roots, ek_intermediates=inter, algorithm=args.algorithm,
                          on_step=show)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        d = report.to_dict()
        print(f"\n{'OK' if report.ok else 'FAILED'}: {len(report.steps)} steps, "
              f"{d['total_tpm_commands']} TPM commands, {d['total_seconds'] * 1000:.0f} ms")
    return EXIT_OK if report.ok else EXIT_FAIL


def cmd_ek(args: argparse.Namespace) -> int:
    with _open(args, fallback=False) as tpm:
        ek = tpm.ek(args.kind)
        if args.out_public:
            write_atomic(args.out_public, ek.public)
        if args.out_cert and ek.certificate:
            write_atomic(args.out_cert, ek.certificate)
        obj = {"kind": ek.kind, "handle": f"0x{ek.handle:08x}" if ek.handle else None,
               "persistent": ek.persistent, "name": ek.name.hex(),
               "certificate": len(ek.certificate) if ek.certificate else None}
        _emit(args, obj, lambda: print("\n".join(f"{k}: {v}" for k, v in obj.items())))
    return EXIT_OK


def cmd_provision_ak(args: argparse.Namespace) -> int:
    with _open(args, fallback=False) as tpm:
        blob = tpm.provision_ak(key_name=args.key_name, scope=args.scope, overwrite=args.overwrite,
                                nonce=_hex_or_file(args.nonce), algorithm=args.algorithm)
    write_atomic(args.out, blob.to_bytes())
    obj = {"format": blob.format, "file": args.out, "name": blob.name.hex(), "key_name": blob.key_name}
    _emit(args, obj, lambda: print(f"{blob.format} AK written to {args.out}; Name {blob.name.hex()}"))
    return EXIT_OK


def cmd_quote(args: argparse.Namespace) -> int:
    blob = AkBlob.load(Path(args.ak).read_bytes())
    with _open(args, fallback=False) as tpm:
        q = tpm.quote(blob, pcrs=_parse_pcrs(args.pcrs), bank=args.bank,
                      qualifying_data=_hex_or_file(args.nonce) or b"")
    data = q.to_json().encode()
    if args.out:
        write_atomic(args.out, data)
    else:
        print(data.decode())
    return EXIT_OK


def cmd_activate(args: argparse.Namespace) -> int:
    blob = AkBlob.load(Path(args.ak).read_bytes())
    raw = Path(args.challenge).read_bytes()
    ch = CredentialChallenge.from_json(raw) if raw.lstrip().startswith(b"{") else CredentialChallenge.from_bytes(raw)
    with _open(args, fallback=False) as tpm:
        secret = tpm.activate_credential(blob, ch)
    if args.out:
        write_atomic(args.out, secret)
    else:
        print(secret.hex())
    return EXIT_OK


def cmd_make_credential(args: argparse.Namespace) -> int:
    ek_public = Path(args.ek_public).read_bytes()
    ak_name = bytes.fromhex(args.ak_name) if args.ak_name else AkBlob.load(Path(args.ak).read_bytes()).name
    challenge, secret = verify.make_credential(ek_public, ak_name, _hex_or_file(args.secret))
    write_atomic(args.out, challenge.to_tpm2_tools() if args.tpm2_tools else challenge.to_json().encode())
    if args.secret_out:
        write_atomic(args.secret_out, secret)
    return EXIT_OK


def cmd_verify_ak(args: argparse.Namespace) -> int:
    ak = verify.check_ak(Path(args.ak).read_bytes(), nonce=_hex_or_file(args.nonce))
    obj = {"ok": True, "name": ak.name.hex()}
    _emit(args, obj, lambda: print(f"AK OK; Name {ak.name.hex()}"))
    return EXIT_OK


def cmd_verify_quote(args: argparse.Namespace) -> int:
    ak = verify.check_ak(Path(args.ak).read_bytes())
    q = Quote.from_json(Path(args.quote).read_bytes())
    nonce = _hex_or_file(args.nonce) or b""
    res = verify.verify_quote(ak, q, nonce=nonce, allow_empty_nonce=args.allow_empty_nonce)
    obj = {"ok": True, "pcrs": {str(i): v.hex() for i, v in res.pcrs.items()}}
    _emit(args, obj, lambda: print(f"Quote OK ({len(res.pcrs)} PCRs)"))
    return EXIT_OK


# -- parser ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--tcti", help="TPM to use, e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321 "
                        "(default: $TPM2_ATTEST_TCTI, $TPM2TOOLS_TCTI, then the platform device)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("--embedded", action="store_true", help="use a fresh embedded swtpm")

    p = argparse.ArgumentParser(prog="tpm2-attest", description="TPM 2.0 device attestation and verification")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("info", parents=[common], help="TPM identity, banks and PCRs")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("demo", parents=[common], help="end-to-end enrollment and attestation")
    s.add_argument("--ek-root", action="append", metavar="PEM/DER", help="trusted EK root CA (repeatable)")
    s.add_argument("--ek-intermediate", action="append", metavar="PEM/DER", help="EK intermediate CA")
    s.add_argument("--algorithm", choices=["ecc", "rsa"], default="ecc", help="AK algorithm")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("ek", parents=[common], help="read the endorsement key and certificate")
    s.add_argument("--kind", choices=["rsa", "ecc", "ecc384"], default="rsa")
    s.add_argument("--out-public", metavar="FILE", help="write the TPM2B_PUBLIC")
    s.add_argument("--out-cert", metavar="FILE", help="write the certificate (DER)")
    s.set_defaults(func=cmd_ek)

    s = sub.add_parser("provision-ak", parents=[common], help="create an attestation key blob")
    s.add_argument("--out", required=True, metavar="FILE", help="AK blob file (written atomically)")
    s.add_argument("--nonce", help="enrollment nonce (hex, or @FILE)")
    s.add_argument("--algorithm", choices=["ecc", "rsa"])
    s.add_argument("--key-name", help="PCP key name (Windows)")
    s.add_argument("--scope", choices=["user", "machine"], default="user")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_provision_ak)

    s = sub.add_parser("quote", parents=[common], help="quote PCRs with an AK blob")
    s.add_argument("--ak", required=True, metavar="FILE")
    s.add_argument("--pcrs", default="0-7", help="e.g. 0-7,16")
    s.add_argument("--bank", default="sha256")
    s.add_argument("--nonce", help="qualifying data (hex, or @FILE)")
    s.add_argument("--out", metavar="FILE", help="quote JSON file (default: stdout)")
    s.set_defaults(func=cmd_quote)

    s = sub.add_parser("activate", parents=[common], help="activate a credential challenge")
    s.add_argument("--ak", required=True, metavar="FILE")
    s.add_argument("--challenge", required=True, metavar="FILE", help="our JSON/binary form or a tpm2-tools file")
    s.add_argument("--out", metavar="FILE", help="write the secret (default: hex on stdout)")
    s.set_defaults(func=cmd_activate)

    s = sub.add_parser("make-credential", parents=[common], help="(verifier) make a credential challenge")
    s.add_argument("--ek-public", required=True, metavar="FILE", help="EK TPM2B_PUBLIC")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--ak", metavar="FILE", help="AK blob (its Name is used)")
    g.add_argument("--ak-name", help="AK Name (hex)")
    s.add_argument("--secret", help="secret (hex or @FILE; default random)")
    s.add_argument("--out", required=True, metavar="FILE")
    s.add_argument("--secret-out", metavar="FILE")
    s.add_argument("--tpm2-tools", action="store_true", help="write tpm2-tools' credential format")
    s.set_defaults(func=cmd_make_credential)

    s = sub.add_parser("verify-ak", parents=[common], help="(verifier) check an AK blob")
    s.add_argument("--ak", required=True, metavar="FILE")
    s.add_argument("--nonce", help="enrollment nonce (hex or @FILE)")
    s.set_defaults(func=cmd_verify_ak)

    s = sub.add_parser("verify-quote", parents=[common], help="(verifier) check a quote")
    s.add_argument("--ak", required=True, metavar="FILE")
    s.add_argument("--quote", required=True, metavar="FILE")
    s.add_argument("--nonce", help="expected qualifying data (hex or @FILE)")
    s.add_argument("--allow-empty-nonce", action="store_true")
    s.set_defaults(func=cmd_verify_quote)

    from .probe import add_parser as add_probe

    add_probe(sub)

    try:
        from .eventlog.cli import add_parser as add_eventlog
    except ImportError:  # pragma: no cover - the event log package is part of the distribution
        pass
    else:
        add_eventlog(sub)

    try:  # serve / enroll / attest; 'serve' itself says how to install the service extra
        from .service.cli import add_parsers as add_service
    except ImportError:  # pragma: no cover - the client part is stdlib-only and always present
        pass
    else:
        add_service(sub, parents=[common])

    return p


def _hint(exc: TpmError) -> str | None:
    if exc.hint:
        return exc.hint
    return {
        ErrorCode.TPM_NOT_FOUND: "no TPM: pass --tcti, set TPM2_ATTEST_TCTI, or use --embedded",
        ErrorCode.REQUIRES_ELEVATION: "run elevated (Windows: Administrator or SYSTEM; Linux: the tss group)",
        ErrorCode.LOCKOUT: "the TPM is in dictionary-attack lockout; wait or reset it",
        ErrorCode.BAD_BLOB: "the blob is malformed or was made by another TPM",
    }.get(exc.code)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc: int = args.func(args)
        return rc
    except TpmError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": exc.to_dict()}, indent=2))
        else:
            print(f"error: {exc} [{exc.code.value}]", file=sys.stderr)
            hint = _hint(exc)
            if hint:
                print(f"hint: {hint}", file=sys.stderr)
        return EXIT_NO_TPM if exc.code == ErrorCode.TPM_NOT_FOUND else EXIT_FAIL
    except VerificationError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "reason": exc.reason.value, "detail": exc.detail}, indent=2))
        else:
            print(f"verification failed: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except (OSError, argparse.ArgumentTypeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, argparse.ArgumentTypeError) else EXIT_FAIL
    except KeyboardInterrupt:  # pragma: no cover
        return 130


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
