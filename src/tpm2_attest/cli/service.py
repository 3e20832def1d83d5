"""``tpm2-attest serve | db | enroll | attest``: run the service, or be a device talking to it.

``enroll`` and ``attest`` need only the standard library (and a TPM); ``serve`` needs the
``service`` extra and says how to install it when it is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .._files import write_atomic
from ..errors import TpmError
from ..service.errors import ServiceError
from .common import (
    EXIT_ENROLL_AGAIN,
    EXIT_FAIL,
    EXIT_OK,
    EXIT_USAGE,
    SERVER_ENV,
    CommandError,
    SubParsers,
    UsageError,
    check_listen,
    client_options,
    database_errors,
    device_options,
    emit,
    one_bank,
    open_tpm,
    output_options,
    pcr_bank,
    pcr_selection,
    read_input,
    service_client,
    service_failure,
)

INSTALL_HINT = "pip install 'tpm2-attest[service]'"
DEFAULT_DATABASE_URL = "sqlite:///tpm2-attest.db"
"""The same as ``service.settings.DEFAULT_DATABASE_URL`` (that module needs the extra)."""
DEFAULT_AK_FILE = "tpm2-attest-ak.json"


def duration(text: str) -> float:
    """argparse type: a duration (``30s``, ``5m``, ``1h30m``, or seconds)."""
    from ..agent import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def fraction(text: str) -> float:
    """argparse type: a fraction between 0 and 0.5, as ``0.1`` or ``10%``."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a fraction: {text!r} (e.g. 0.1 or 10%)") from None
    if not 0 <= value <= 0.5:
        raise argparse.ArgumentTypeError(f"{text}: must be between 0 and 0.5 (50%)")
    return value


def _split_hosts(values: list[str] | None) -> tuple[str, ...] | None:
    """--fetch-issuers-from, repeated or comma-separated."""
    if not values:
        return None
    return tuple(h.strip() for v in values for h in v.split(",") if h.strip())


def _server_settings(args: argparse.Namespace) -> Any:
    """Settings from the serve flags that were given, the environment and the config file."""
    from ..service.settings import Settings

    flags = {
        "database_url": args.db, "ek_roots": args.ek_root, "ek_intermediates": args.ek_intermediate,
        "ek_ca_exclude": args.ek_ca_exclude, "ek_ca_validity": args.ek_ca_validity,
        "ca_issuer_hosts": _split_hosts(args.fetch_issuers_from),
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
        "tls_cert": args.tls_cert, "tls_key": args.tls_key, "tls_client_ca": args.tls_client_ca,
        "webhook_urls": args.webhook, "webhook_secret_file": args.webhook_secret_file,
        "webhook_timeout": args.webhook_timeout, "webhook_attempts": args.webhook_attempts,
        "webhook_backoff": args.webhook_backoff, "webhook_queue": args.webhook_queue,
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
        settings.check_tls()
        if settings.webhook_urls:
            settings.webhook_secret()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:  # create an empty schema once, before any worker starts; refuse one that is behind
        with database_errors():
            Store(settings.database_url, pool_size=1).close()
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    check_listen(settings.host, settings.port)
    common: dict[str, Any] = {"host": settings.host, "port": settings.port, "log_config": None,
                              "access_log": False, "http": protocol(), "timeout_keep_alive": 5,
                              "proxy_headers": False}
    if settings.tls_cert is not None:
        import ssl

        common.update(ssl_certfile=str(settings.tls_cert), ssl_keyfile=settings.tls_key and str(settings.tls_key))
        if settings.tls_client_ca is not None:  # mutual TLS: no certificate, no request
            common.update(ssl_ca_certs=str(settings.tls_client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
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
        with database_errors():
            if args.db_command == "upgrade":
                before, after = migrate.upgrade(store.engine, args.revision)
                obj = {"ok": True, "before": before, "after": after}
                emit(args, obj, lambda: print(f"database at revision {after}" + (
                    f" (was {before or 'a release before migrations or empty'})" if before != after else
                    " (already up to date)")))
                return EXIT_OK
            st = migrate.state(store.engine)
        advice = ("up to date" if st.up_to_date else
                  "a newer release made it; run that release (downgrades are not supported)" if st.newer else
                  "run 'tpm2-attest db upgrade'")
        obj = {"ok": st.up_to_date, "current": st.current, "head": st.head, "legacy": st.legacy, "empty": st.empty,
               "newer": st.newer}
        emit(args, obj, lambda: print(
            f"revision {st.current or ('none (a release before migrations)' if st.legacy else 'none (empty)')}, "
            f"this release needs {st.head}: {advice}"))
        return EXIT_OK if st.up_to_date else EXIT_FAIL
    finally:
        store.close()


def _embedded_state(args: argparse.Namespace) -> None:
    """``enroll``/``attest --embedded`` keep the embedded TPM in a directory (default: the
    user's state directory), so that the AK made at enrollment loads when attesting."""
    if getattr(args, "embedded", False) and not getattr(args, "embedded_state", None):
        from ..embedded import user_state_dir

        args.embedded_state = str(user_state_dir())


def cmd_enroll(args: argparse.Namespace) -> int:
    """Enroll this TPM and write the AK blob with the device id (atomically)."""
    from ..service.client import enroll

    out = Path(args.ak_out)
    if out.exists() and not args.force:
        print(f"error: {out} exists (it may hold the AK of an earlier enrollment); pass --force to replace it",
              file=sys.stderr)
        return EXIT_USAGE
    server = args.server or os.environ.get(SERVER_ENV)
    if not server:
        raise UsageError(f"give --server URL (or set ${SERVER_ENV})")
    client = service_client(args, server)
    _embedded_state(args)
    with open_tpm(args, fallback=False) as tpm:
        try:
            result = enroll(tpm, client, ek_kind=args.ek_kind, key_name=args.key_name, scope=args.scope,
                            overwrite=args.overwrite, algorithm=args.algorithm,
                            certified_ak=args.certified_ak, fetch_ek_certificate=args.fetch_ek_certificate)
        except ServiceError as exc:
            return service_failure(args, exc)
    write_atomic(out, result.to_json().encode("utf-8"))
    obj = {"ok": True, "device_id": result.device_id, "ak_file": str(out), **result.info}
    emit(args, obj, lambda: print(f"enrolled: device {result.device_id} ({result.ak_blob.format} AK in {out})"))
    return EXIT_OK


def cmd_attest(args: argparse.Namespace) -> int:
    """Quote over the server's nonce and print its verdict (exit 1 when refused); with
    ``--every``, do so until stopped (the agent)."""
    from ..service.client import Enrollment, attest

    raw = read_input(args.ak, "--ak")
    try:
        saved: Enrollment | None = Enrollment.from_json(raw)
    except ValueError:
        saved = None  # an AK blob without a device id (--device-id names it)
    except TpmError as exc:  # an enrollment file whose AK blob is damaged
        raise UsageError(f"--ak {args.ak}: {exc.message}") from None
    device_id = args.device_id or (saved.device_id if saved else None)
    if device_id is None:
        raise UsageError(f"--ak {args.ak} carries no device id; pass --device-id")
    server = args.server or os.environ.get(SERVER_ENV) or (saved.server if saved else None)
    if not server:
        raise UsageError(f"give --server URL (or set ${SERVER_ENV}); --ak {args.ak} names no server")
    bank, pcrs = one_bank(args.pcrs, args.bank)
    _embedded_state(args)
    if args.every is not None:
        return _agent(args, raw, device_id, server, bank, pcrs)
    client = service_client(args, server)
    with open_tpm(args, fallback=False) as tpm:
        log: bytes | None = None
        if args.event_log == "auto":
            log = tpm.event_log()
        elif args.event_log:
            log = read_input(args.event_log, "--event-log")
        try:
            verdict: dict[str, Any] = attest(tpm, client, device_id, raw, pcrs=pcrs, bank=bank, event_log=log,
                                             ima=args.ima, ima_securityfs=args.ima_securityfs)
        except ServiceError as exc:
            return service_failure(args, exc)
    emit(args, verdict, lambda: print(f"attested: device {device_id}, {len(verdict.get('pcrs', {}))} "
                                       f"{verdict.get('bank', '')} PCRs verified"))
    return EXIT_OK


class _Abandon(BaseException):
    """A second SIGTERM/SIGINT: leave the round in progress now."""


def _agent(args: argparse.Namespace, raw: bytes, device_id: str, server: str, bank: str, pcrs: list[int]) -> int:
    """``attest --every``: rounds until SIGTERM/SIGINT (exit 0) or until the device must enroll
    again (exit 4); one line per round on stdout (JSON with --json)."""
    import signal
    import threading

    from ..agent import Agent, Round, Schedule, StopReason, format_duration
    from ..evidence import AkBlob

    try:
        ak = AkBlob.load(raw)
    except (TpmError, ValueError) as exc:
        raise UsageError(f"--ak {args.ak}: not an AK blob or enrollment file: {exc}") from None
    try:
        schedule = Schedule(args.every, jitter=args.jitter, backoff_min=min(5.0, args.every),
                            backoff_max=args.backoff_max)
    except ValueError as exc:
        raise UsageError(f"--every / --jitter / --backoff-max: {exc}") from None
    if args.event_log and args.event_log != "auto":
        read_input(args.event_log, "--event-log")  # there now; read again each round
    stop = threading.Event()
    client = service_client(args, server, stop=stop)
    with open_tpm(args, fallback=False):  # the TPM is there (exit 3 now, not later)
        pass

    def event_log(tpm: Any) -> bytes | None:
        if args.event_log == "auto":
            return bytes(tpm.event_log())
        return Path(args.event_log).read_bytes() if args.event_log else None

    def line(obj: dict[str, Any], text: str) -> None:
        print(json.dumps(obj) if args.json else text, flush=True)

    def report(r: Round) -> None:
        line(r.to_dict(), r.text())

    def now() -> str:
        return datetime.now(UTC).isoformat(timespec="seconds")

    agent = Agent(lambda: open_tpm(args, fallback=False, announce=False), client, device_id, ak,
                  schedule=schedule, pcrs=pcrs, bank=bank, event_log=event_log if args.event_log else None,
                  ima=args.ima, ima_securityfs=args.ima_securityfs, report=report, stop=stop)

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise _Abandon(signum)
        stop.set()

    line({"time": now(), "event": "start", "device_id": device_id, "server": server, "every": args.every,
          "jitter": args.jitter, "pid": os.getpid()},
         f"{now()} agent: device {device_id} attests to {server} every {format_duration(args.every)} "
         f"(jitter {args.jitter:.0%}; pid {os.getpid()})")
    handled = (signal.SIGTERM, signal.SIGINT) if threading.current_thread() is threading.main_thread() else ()
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}  # signals reach the main thread only
    try:
        try:
            reason = agent.run()
        except _Abandon:
            reason = StopReason.STOPPED
            line({"time": now(), "event": "abandoned", "round": agent.done + 1},
                 f"{now()} agent: round {agent.done + 1} abandoned (signalled twice)")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    code = EXIT_ENROLL_AGAIN if reason is StopReason.NOT_ENROLLED else EXIT_OK
    why = {StopReason.STOPPED: "asked to stop", StopReason.ROUNDS: "rounds done",
           StopReason.NOT_ENROLLED: "the device must enroll again (the service does not know it, or its AK "
                                    "no longer loads on this TPM)"}[reason]
    line({"time": now(), "event": "stop", "reason": reason.value, "rounds": agent.done, "exit_code": code},
         f"{now()} agent: stopped after {agent.done} round(s): {why} (exit {code})")
    return code


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
    s.add_argument("--fetch-issuers-from", action="append", metavar="HOST[,HOST]",
                   help="fetch an EK/AK certificate's missing issuer from its caIssuers URL when it is "
                        "on one of these hosts (e.g. storage.googleapis.com for GCE; repeatable)")
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
    s.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM, with its chain)")
    s.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM; default: in --tls-cert)")
    s.add_argument("--tls-client-ca", metavar="FILE",
                   help="require client certificates issued by these CAs (PEM): mutual TLS for every request")
    s.add_argument("--webhook", action="append", metavar="URL",
                   help="POST every device status change to URL, signed (repeatable; needs --webhook-secret-file)")
    s.add_argument("--webhook-secret-file", metavar="FILE", help="the HMAC-SHA256 key of the webhooks (>= 16 bytes)")
    s.add_argument("--webhook-timeout", type=float, metavar="SECONDS", help="per webhook attempt (default 5)")
    s.add_argument("--webhook-attempts", type=int, metavar="N", help="attempts per status change (default 8)")
    s.add_argument("--webhook-backoff", type=float, metavar="SECONDS",
                   help="wait before the second attempt, doubling after (default 1; at most 300)")
    s.add_argument("--webhook-queue", type=int, metavar="N",
                   help="status changes waiting per receiver before new ones are dropped (default 1000)")
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

    s = subparsers.add_parser("enroll", parents=[*parents, client_options()], help="enroll this TPM with a service",
                              description="Enroll this TPM with a service. With --embedded, the embedded "
                                          "swtpm is kept in --embedded-state (default "
                                          "$XDG_STATE_HOME/tpm2-attest/embedded-tpm) for 'attest --embedded'.")
    s.add_argument("--server", metavar="URL", help=f"the service's base URL (default ${SERVER_ENV})")
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

    s = subparsers.add_parser(
        "attest", parents=[*parents, client_options()], help="attest this TPM to a service (once, or --every)",
        description="Attest this TPM to a service once (exit 0 accepted, 1 refused), or with --every until "
                    "SIGTERM/SIGINT: one line per round; refusals are reported and the agent goes on; errors "
                    "(no answer, busy service, TPM away) are tried again sooner, waiting longer each time; "
                    "exit 0 when stopped, 4 when the device must enroll again, 2 for a configuration error.")
    s.add_argument("--server", metavar="URL",
                   help=f"the service's base URL (default ${SERVER_ENV}, else the one in the --ak file)")
    s.add_argument("--ak", required=True, metavar="FILE", help="the file 'enroll' wrote (or any AK blob)")
    s.add_argument("--device-id", metavar="ID", help="default: the one in the --ak file")
    s.add_argument("--pcrs", default="0-7", type=pcr_selection, metavar="SELECTION",
                   help="PCRs to quote: sha256:0,1,2, sha256:all or 0-7,16 (default 0-7)")
    s.add_argument("--bank", type=pcr_bank, metavar="BANK",
                   help="PCR bank when --pcrs names none (default sha256)")
    s.add_argument("--event-log", metavar="FILE|auto", help="send the firmware event log ('auto': read it from the OS)")
    s.add_argument("--ima", action="store_true",
                   help="also quote PCR 10 and send the IMA measurement list (only the entries the "
                        "server has not verified yet)")
    s.add_argument("--ima-securityfs", metavar="DIR",
                   help="read the IMA list from DIR/ima/ (default /sys/kernel/security)")
    s.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="seconds to wait for each HTTP request (default 30)")
    s.add_argument("--every", type=duration, metavar="DURATION",
                   help="attest again and again, this long apart (30s, 5m, 1h, 1h30m): the agent")
    s.add_argument("--jitter", type=fraction, default=0.1, metavar="FRACTION",
                   help="spread each interval randomly by this fraction either way (0.1 or 10%%; default 10%%; "
                        "at most 50%%)")
    s.add_argument("--backoff-max", type=duration, metavar="DURATION",
                   help="after errors, retries come 5 s, 10 s, 20 s... apart, at most this (default: --every)")
    s.set_defaults(func=cmd_attest)
