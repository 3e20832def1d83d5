"""``tpm2-attest serve | db | enroll | attest``: run the service, or be a device talking to it.

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
    output_options,
    pcr_selection,
    read_input,
)

INSTALL_HINT = "pip install 'tpm2-attest[service]'"
DEFAULT_DATABASE_URL = "sqlite:///tpm2-attest.db"
"""The same as ``service.settings.DEFAULT_DATABASE_URL`` (that module needs the extra)."""
DEFAULT_AK_FILE = "tpm2-attest-ak.json"


def _refused(args: argparse.Namespace, exc: ServiceError) -> int:
    if getattr(args, "json", False):
        print(json.dumps({"ok": False, "status": exc.status, **exc.to_dict()}, indent=2))
    else:
        print(f"refused by the server (HTTP {exc.status}): {exc}", file=sys.stderr)
    return EXIT_FAIL


def _server_settings(args: argparse.Namespace) -> Any:
    """Settings from the serve flags that were given, the environment and the config file."""
    from ..service.settings import Settings

    flags = {
        "database_url": args.db, "ek_roots": args.ek_root, "ek_intermediates": args.ek_intermediate,
        "ek_ca_exclude": args.ek_ca_exclude, "ek_ca_validity": args.ek_ca_validity,
        "ak_certificate_enrollment": True if args.enroll_by_ak_certificate else None,
        "ak_roots": args.ak_root, "ak_intermediates": args.ak_intermediate,
        "require_ek_certificate": False if args.allow_missing_ek_certificate else None,
        "allow_reenroll": True if args.allow_reenroll else None, "nonce_ttl": args.nonce_ttl,
        "enrollment_ttl": args.enrollment_ttl, "allow_sha1": False if args.no_sha1 else None,
        "pcr_policy": args.pcr_policy, "max_body_bytes": args.max_body, "freshness": args.freshness,
        "challenge_rate": args.challenge_rate, "challenge_rate_window": args.challenge_rate_window,
        "sweep_interval": args.sweep_interval, "retention": args.retention, "threads": args.threads,
        "workers": args.workers, "host": args.host, "port": args.port, "log_format": args.log_format,
        "log_level": args.log_level, "header_timeout": args.header_timeout,
        "body_timeout": args.body_timeout, "max_connections": args.max_connections,
        "dashboard": False if args.no_dashboard else None,
        "dashboard_secure_cookie": True if args.dashboard_secure_cookie else None,
    }
    return Settings.load(args.config, **flags)


def _missing_extra(exc: ImportError) -> int:
    print(f"error: this command needs the service extra ({exc.name or exc} is missing): {INSTALL_HINT}",
          file=sys.stderr)
    return EXIT_USAGE


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the service under uvicorn until interrupted (several processes with --workers)."""
    try:
        import uvicorn

        from ..service import migrate
        from ..service.app import create_app
        from ..service.http import protocol
        from ..service.logs import configure
        from ..service.runner import SETTINGS_ENV
        from ..service.settings import SettingsError
        from ..service.store import Store
    except ImportError as exc:
        return _missing_extra(exc)
    try:
        settings = _server_settings(args)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:  # create an empty schema once, before any worker starts; refuse one that is behind
        Store(settings.database_url, pool_size=1).close()
    except migrate.SchemaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    check_listen(settings.host, settings.port)
    common = {"host": settings.host, "port": settings.port, "log_config": None, "access_log": False,
              "http": protocol(), "timeout_keep_alive": 5, "proxy_headers": False}
    try:
        if settings.workers == 1:
            try:
                app = create_app(settings)
            except (SettingsError, migrate.SchemaError) as exc:
                print(f"error: {exc}", file=sys.stderr)
                return EXIT_USAGE
            configure(settings.log_format, settings.log_level)
            uvicorn.run(app, **common)
            return EXIT_OK
        import os
        import tempfile

        configure(settings.log_format, settings.log_level)
        os.environ[SETTINGS_ENV] = settings.model_dump_json()
        with tempfile.TemporaryDirectory(prefix="tpm2-attest-metrics-") as shared:
            os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", shared)  # counters summed over workers
            uvicorn.run("tpm2_attest.service.runner:app_from_environment", factory=True,
                        workers=settings.workers, **common)
    except SystemExit as exc:  # uvicorn exits 3 when it cannot start; 3 means "no TPM" here
        if exc.code == 3:
            print("error: the service did not start (uvicorn's reason is above)", file=sys.stderr)
            return EXIT_FAIL
        raise
    return EXIT_OK


def cmd_db(args: argparse.Namespace) -> int:
    """``db upgrade`` / ``db status``: the schema of the service's database."""
    try:
        from ..service import migrate
        from ..service.store import Store
    except ImportError as exc:
        return _missing_extra(exc)
    from ..service.settings import DEFAULT_DATABASE_URL

    url = args.db or __import__("os").environ.get("TPM2_ATTEST_DATABASE_URL") or DEFAULT_DATABASE_URL
    store = Store(url, create_schema=False, pool_size=1)
    try:
        if args.db_command == "upgrade":
            before, after = migrate.upgrade(store.engine, args.revision)
            obj = {"ok": True, "before": before, "after": after}
            emit(args, obj, lambda: print(f"database at revision {after}" + (
                f" (was {before or 'a release before migrations or empty'})" if before != after else
                " (already up to date)")))
            return EXIT_OK
        st = migrate.state(store.engine)
        obj = {"ok": st.up_to_date, "current": st.current, "head": st.head, "legacy": st.legacy, "empty": st.empty}
        emit(args, obj, lambda: print(
            f"revision {st.current or ('none (a release before migrations)' if st.legacy else 'none (empty)')}, "
            f"this release needs {st.head}: " + ("up to date" if st.up_to_date else "run 'tpm2-attest db upgrade'")))
        return EXIT_OK if st.up_to_date else EXIT_FAIL
    finally:
        store.close()


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
    """Add ``serve``, ``db``, ``enroll`` and ``attest`` to the main CLI."""
    parents = [device_options(timeout=False)]  # --timeout is the HTTP timeout here
    s = subparsers.add_parser(
        "serve", help="run the enrollment + attestation service (needs the service extra)",
        description="Run the HTTP service (uvicorn). Every option can also come from the environment "
                    "(TPM2_ATTEST_<SETTING>, e.g. TPM2_ATTEST_NONCE_TTL) or a config file (--config); "
                    "flags win over the environment, the environment over the file. Put it behind TLS "
                    "in production.")
    s.add_argument("--config", metavar="FILE", help="TOML (or .json) file of settings (default: $TPM2_ATTEST_CONFIG)")
    s.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="default 8080")
    s.add_argument("--workers", type=int, metavar="N", help="server processes (default 1; use PostgreSQL for more)")
    s.add_argument("--threads", type=int, metavar="N",
                   help="request threads per process, and database connections (default 16)")
    s.add_argument("--db", metavar="URL",
                   help=f"SQLAlchemy URL (default {DEFAULT_DATABASE_URL}; postgresql://... needs the postgres extra)")
    s.add_argument("--ek-root", "--ek-roots", dest="ek_root", action="append", metavar="PATH|vendors[:NAMES]",
                   help="trusted EK root CA: PEM/DER file or directory; 'vendors' trusts the shipped TPM "
                        "vendor / cloud CA bundle, 'vendors:Infineon,Intel' part of it (repeatable)")
    s.add_argument("--ek-intermediate", action="append", metavar="PATH", help="EK intermediate CA file or directory (repeatable)")
    s.add_argument("--ek-ca-exclude", action="append", metavar="SHA256",
                   help="a CA of the shipped bundle not to trust, by fingerprint (repeatable; see 'trust list')")
    s.add_argument("--ek-ca-validity", choices=["at-issuance", "at-time"],
                   help="accept CAs that expired after issuing (default), or want every CA valid now")
    s.add_argument("--enroll-by-ak-certificate", action="store_true",
                   help="also enroll devices by a certified AK (cloud vTPMs) instead of credential activation")
    s.add_argument("--ak-root", "--ak-roots", dest="ak_root", action="append", metavar="PATH|vendors[:NAMES]",
                   help="trusted AK certificate CA, as --ek-root (e.g. vendors:Google) (repeatable)")
    s.add_argument("--ak-intermediate", action="append", metavar="PATH", help="AK intermediate CA (repeatable)")
    s.add_argument("--allow-missing-ek-certificate", action="store_true",
                   help="enroll TPMs without an EK certificate (trust on first use)")
    s.add_argument("--allow-reenroll", action="store_true",
                   help="let every enrolled EK enroll again (revokes its old device); see 'admin allow-reenroll' for one")
    s.add_argument("--nonce-ttl", type=float, metavar="SECONDS", help="how long a challenge stays open (default 300)")
    s.add_argument("--enrollment-ttl", type=float, metavar="SECONDS", help="how long an enrollment stays open (default 300)")
    s.add_argument("--no-sha1", action="store_true", help="refuse SHA-1 AKs and quotes (refuses Windows PCP AKs)")
    s.add_argument("--pcr-policy", metavar="FILE",
                   help="seed the database's policies: a policy document, or "
                        '{"default": {"sha256": {"7": "<hex>"}}, "devices": {"<id>": {...}}}')
    s.add_argument("--freshness", type=float, metavar="SECONDS",
                   help="how long a passing attestation keeps a device trusted (default 3600)")
    s.add_argument("--challenge-rate", type=int, metavar="N", help="challenges per device per window (default 10; 0: no limit)")
    s.add_argument("--challenge-rate-window", type=float, metavar="SECONDS", help="default 60")
    s.add_argument("--sweep-interval", type=float, metavar="SECONDS",
                   help="seconds between sweeps of expired rows and stale devices (default 60; 0: never)")
    s.add_argument("--retention", type=float, metavar="SECONDS",
                   help="keep expired challenges and unfinished enrollments this long (default 3600)")
    s.add_argument("--max-body", type=int, metavar="BYTES", help="largest request body (default 1 MiB)")
    s.add_argument("--header-timeout", type=float, metavar="SECONDS",
                   help="close connections whose request headers take longer (default 10)")
    s.add_argument("--body-timeout", type=float, metavar="SECONDS", help="408 when a body takes longer (default 30)")
    s.add_argument("--max-connections", type=int, metavar="N", help="503 beyond this many open connections (default 1024)")
    s.add_argument("--no-dashboard", action="store_true", help="do not serve the operator dashboard (/dashboard)")
    s.add_argument("--dashboard-secure-cookie", action="store_true",
                   help="mark the dashboard's session cookie Secure on plain HTTP too (behind a TLS proxy)")
    s.add_argument("--log-format", choices=["text", "json"], help="default text")
    s.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"], help="default info")
    s.set_defaults(func=cmd_serve)

    s = subparsers.add_parser("db", parents=[output_options()], help="the service database's schema (migrations)",
                              description="Show or upgrade the schema of the service's database. 'serve' "
                                          "creates it in an empty database and refuses one that is behind.")
    db = s.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    for name, what in (("upgrade", "upgrade the schema to this release's (back the database up first)"),
                       ("status", "show the schema's revision (exit 1 when behind)")):
        d = db.add_parser(name, parents=[output_options()], help=what)
        d.add_argument("--db", metavar="URL", help="SQLAlchemy URL (default $TPM2_ATTEST_DATABASE_URL, "
                       f"else {DEFAULT_DATABASE_URL})")
        if name == "upgrade":
            d.add_argument("--revision", default="head", help=argparse.SUPPRESS)
        d.set_defaults(func=cmd_db)

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
