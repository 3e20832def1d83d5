"""``tpm2-attest serve | enroll | attest``: run the service, or be a device talking to it.

``enroll`` and ``attest`` need only the standard library (and a TPM); ``serve`` needs the
``service`` extra and says how to install it when it is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .._files import write_atomic
from ..service.errors import ServiceError
from ..service.settings import DEFAULT_DATABASE_URL, Settings, load_pcr_policy_file, parse_ca_spec
from .common import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_USAGE,
    SubParsers,
    check_listen,
    device_options,
    emit,
    one_bank,
    open_tpm,
    pcr_selection,
    read_input,
)

INSTALL_HINT = "pip install 'tpm2-attest[service]'"
DEFAULT_AK_FILE = "tpm2-attest-ak.json"


def _refused(args: argparse.Namespace, exc: ServiceError) -> int:
    if getattr(args, "json", False):
        print(json.dumps({"ok": False, "status": exc.status, **exc.to_dict()}, indent=2))
    else:
        print(f"refused by the server (HTTP {exc.status}): {exc}", file=sys.stderr)
    return EXIT_FAIL


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the service under uvicorn until interrupted."""
    try:
        import uvicorn

        from ..service.app import create_app
    except ImportError as exc:
        print(f"error: 'serve' needs the service extra ({exc.name or exc} is missing): {INSTALL_HINT}",
              file=sys.stderr)
        return EXIT_USAGE
    default_pcrs, device_pcrs = (load_pcr_policy_file(args.pcr_policy) if args.pcr_policy else (None, {}))
    ek_roots, ek_vendors = parse_ca_spec(args.ek_root or [])
    ak_roots, ak_vendors = parse_ca_spec(args.ak_root or [])
    settings = Settings(
        database_url=args.db, ek_roots=ek_roots, ek_vendor_cas=ek_vendors,
        ek_intermediates=tuple(Path(p) for p in args.ek_intermediate or ()),
        ek_ca_exclude=tuple(args.ek_ca_exclude or ()), ek_ca_validity=args.ek_ca_validity,
        ak_certificate_enrollment=args.enroll_by_ak_certificate, ak_roots=ak_roots, ak_vendor_cas=ak_vendors,
        ak_intermediates=tuple(Path(p) for p in args.ak_intermediate or ()),
        require_ek_certificate=not args.allow_missing_ek_certificate, allow_reenroll=args.allow_reenroll,
        nonce_ttl=args.nonce_ttl, enrollment_ttl=args.enrollment_ttl, allow_sha1=not args.no_sha1,
        expected_pcrs=default_pcrs, device_pcrs=device_pcrs, max_body_bytes=args.max_body)
    check_listen(args.host, args.port)
    app = create_app(settings)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    except SystemExit as exc:  # uvicorn exits 3 when it cannot start; 3 means "no TPM" here
        if exc.code == 3:
            print("error: the service did not start (uvicorn's reason is above)", file=sys.stderr)
            return EXIT_FAIL
        raise
    return EXIT_OK


def cmd_enroll(args: argparse.Namespace) -> int:
    """Enroll this TPM and write the AK blob with the device id (atomically)."""
    from ..service.client import enroll

    out = Path(args.ak_out)
    if out.exists() and not args.force:
        print(f"error: {out} exists (it may hold the AK of an earlier enrollment); pass --force to replace it",
              file=sys.stderr)
        return EXIT_USAGE
    with open_tpm(args, fallback=False) as tpm:
        try:
            result = enroll(tpm, args.server, ek_kind=args.ek_kind, key_name=args.key_name, scope=args.scope,
                            overwrite=args.overwrite, algorithm=args.algorithm, timeout=args.timeout,
                            certified_ak=args.certified_ak, fetch_ek_certificate=args.fetch_ek_certificate)
        except ServiceError as exc:
            return _refused(args, exc)
    write_atomic(out, result.to_json().encode("utf-8"))
    obj = {"ok": True, "device_id": result.device_id, "ak_file": str(out), **result.info}
    emit(args, obj, lambda: print(f"enrolled: device {result.device_id} ({result.ak_blob.format} AK in {out})"))
    return EXIT_OK


def cmd_attest(args: argparse.Namespace) -> int:
    """Quote over the server's nonce and print its verdict (exit 1 when refused)."""
    from ..service.client import Enrollment, attest

    raw = read_input(args.ak, "--ak")
    device_id = args.device_id
    if device_id is None:
        try:
            device_id = Enrollment.from_json(raw).device_id
        except ValueError:
            print(f"error: {args.ak} carries no device id; pass --device-id", file=sys.stderr)
            return EXIT_USAGE
    with open_tpm(args, fallback=False) as tpm:
        log: bytes | None = None
        if args.event_log == "auto":
            log = tpm.event_log()
        elif args.event_log:
            log = read_input(args.event_log, "--event-log")
        try:
            bank, pcrs = one_bank(args.pcrs, args.bank)
            verdict: dict[str, Any] = attest(tpm, args.server, device_id, raw, pcrs=pcrs,
                                             bank=bank, event_log=log, ima=args.ima,
                                             timeout=args.timeout)
        except ServiceError as exc:
            return _refused(args, exc)
    emit(args, verdict, lambda: print(f"attested: device {device_id}, {len(verdict.get('pcrs', {}))} "
                                       f"{verdict.get('bank', '')} PCRs verified"))
    return EXIT_OK


def add_parser(subparsers: SubParsers) -> None:
    """Add ``serve``, ``enroll`` and ``attest`` to the main CLI."""
    parents = [device_options(timeout=False)]  # --timeout is the HTTP timeout here
    s = subparsers.add_parser("serve", help="run the enrollment + attestation service (needs the service extra)",
                              description="Run the HTTP service (uvicorn). Put it behind TLS in production.")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8080, help="TCP port to listen on (default 8080)")
    s.add_argument("--db", default=DEFAULT_DATABASE_URL, metavar="URL",
                   help=f"SQLAlchemy URL (default {DEFAULT_DATABASE_URL}; postgresql://... needs the postgres extra)")
    s.add_argument("--ek-root", "--ek-roots", dest="ek_root", action="append", metavar="PATH|vendors[:NAMES]",
                   help="trusted EK root CA: PEM/DER file or directory; 'vendors' trusts the shipped TPM "
                        "vendor / cloud CA bundle, 'vendors:Infineon,Intel' part of it (repeatable)")
    s.add_argument("--ek-intermediate", action="append", metavar="PATH", help="EK intermediate CA file or directory (repeatable)")
    s.add_argument("--ek-ca-exclude", action="append", metavar="SHA256",
                   help="a CA of the shipped bundle not to trust, by fingerprint (repeatable; see 'trust list')")
    s.add_argument("--ek-ca-validity", choices=["at-issuance", "at-time"], default="at-issuance",
                   help="accept CAs that expired after issuing (default), or want every CA valid now")
    s.add_argument("--enroll-by-ak-certificate", action="store_true",
                   help="also enroll devices by a certified AK (cloud vTPMs) instead of credential activation")
    s.add_argument("--ak-root", "--ak-roots", dest="ak_root", action="append", metavar="PATH|vendors[:NAMES]",
                   help="trusted AK certificate CA, as --ek-root (e.g. vendors:Google) (repeatable)")
    s.add_argument("--ak-intermediate", action="append", metavar="PATH", help="AK intermediate CA (repeatable)")
    s.add_argument("--allow-missing-ek-certificate", action="store_true",
                   help="enroll TPMs without an EK certificate (trust on first use)")
    s.add_argument("--allow-reenroll", action="store_true", help="let an enrolled EK enroll again (revokes its old device)")
    s.add_argument("--nonce-ttl", type=float, default=300.0, metavar="SECONDS",
                   help="how long an attestation nonce stays valid (default 300)")
    s.add_argument("--enrollment-ttl", type=float, default=300.0, metavar="SECONDS",
                   help="how long an enrollment challenge stays valid (default 300)")
    s.add_argument("--no-sha1", action="store_true", help="refuse SHA-1 AKs and quotes (refuses Windows PCP AKs)")
    s.add_argument("--pcr-policy", metavar="FILE",
                   help='expected PCRs: {"default": {"sha256": {"7": "<hex>"}}, "devices": {"<id>": {...}}}')
    s.add_argument("--max-body", type=int, default=1 << 20, metavar="BYTES",
                   help="largest request body accepted (default 1 MiB; larger ones get HTTP 413)")
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="server log level (default info)")
    s.set_defaults(func=cmd_serve)

    s = subparsers.add_parser("enroll", parents=parents, help="enroll this TPM with a service")
    s.add_argument("--server", required=True, metavar="URL", help="the service's base URL")
    s.add_argument("--ak-out", default=DEFAULT_AK_FILE, metavar="FILE",
                   help=f"where to write the AK blob and device id (default {DEFAULT_AK_FILE})")
    s.add_argument("--force", action="store_true", help="replace an existing --ak-out file")
    s.add_argument("--ek-kind", choices=["rsa", "ecc"], default="rsa", help="which EK to enroll (default rsa)")
    s.add_argument("--algorithm", choices=["ecc", "rsa"], help="AK algorithm")
    s.add_argument("--key-name", help="PCP key name (Windows; required for --scope machine)")
    s.add_argument("--scope", choices=["user", "machine"], default="user",
                   help="PCP key scope (Windows; machine needs an elevated account)")
    s.add_argument("--overwrite", action="store_true", help="replace a PCP key of the same name")
    s.add_argument("--certified-ak", choices=["rsa", "ecc"],
                   help="enroll with the TPM's certified AK (GCE vTPMs) and its certificate, no activation")
    s.add_argument("--fetch-ek-certificate", action="store_true",
                   help="no EK certificate in NV: fetch it from the TPM vendor (Intel PTT, AMD fTPM)")
    s.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="seconds to wait for each HTTP request (default 30)")
    s.set_defaults(func=cmd_enroll)

    s = subparsers.add_parser("attest", parents=parents, help="attest this TPM to a service")
    s.add_argument("--server", required=True, metavar="URL", help="the service's base URL")
    s.add_argument("--ak", required=True, metavar="FILE", help="the file 'enroll' wrote (or any AK blob)")
    s.add_argument("--device-id", metavar="ID", help="default: the one in the --ak file")
    s.add_argument("--pcrs", default="0-7", type=pcr_selection, metavar="SELECTION",
                   help="PCRs to quote: sha256:0,1,2, sha256:all or 0-7,16 (default 0-7)")
    s.add_argument("--bank", help="PCR bank when --pcrs names none (default sha256)")
    s.add_argument("--event-log", metavar="FILE|auto", help="send the firmware event log ('auto': read it from the OS)")
    s.add_argument("--ima", action="store_true",
                   help="also quote PCR 10 and send the IMA measurement list (only the entries the "
                        "server has not verified yet)")
    s.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="seconds to wait for each HTTP request (default 30)")
    s.set_defaults(func=cmd_attest)
