"""``tpm2-attest admin ...``: operate a running service from a shell.

``admin token`` works on the database directly (``--db``: the first token has to come from
somewhere); everything else goes through the operator API (``--server``, ``--token`` or
``$TPM2_ATTEST_TOKEN``), the same API any other front end uses. ``--json`` prints the API's
objects as they are.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..service.errors import ServiceError
from .common import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_USAGE,
    SERVER_ENV,
    SubParsers,
    UsageError,
    client_options,
    database_errors,
    emit,
    output_options,
    service_client,
    service_failure,
)

TOKEN_ENV = "TPM2_ATTEST_TOKEN"


def _client(args: argparse.Namespace) -> Any:
    server = args.server or os.environ.get(SERVER_ENV)
    token = args.token or os.environ.get(TOKEN_ENV)
    if not server:
        raise UsageError(f"give --server URL (or set ${SERVER_ENV})")
    if not token:
        raise UsageError(f"give --token (or set ${TOKEN_ENV})",
                         hint="make one with 'tpm2-attest admin token create --db URL --name NAME --role admin'")
    return service_client(args, server, token=token)


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _run(args: argparse.Namespace, call: Callable[[Any], Any],
         text: Callable[[dict[str, Any]], None]) -> int:
    try:
        obj = call(_client(args))
    except ServiceError as exc:
        return service_failure(args, exc, refused="refused")
    emit(args, obj, lambda: text(obj))
    return EXIT_OK


def _device_line(d: dict[str, Any]) -> str:
    tags = ",".join(d.get("tags") or []) or "-"
    return (f"{d['device_id']}  {d['status']:<8} last {d.get('last_attestation_at') or 'never':<32} "
            f"tags {tags}")


def _print_device(d: dict[str, Any]) -> None:
    print(_device_line(d))
    for key in ("enrolled_at", "status_since", "fresh_until", "revoked_at", "replaced_by", "ak_format",
                "ek_certificate_verified", "reenroll_allowed", "freshness"):
        print(f"  {key}: {d.get(key)}")
    if "policies" in d:
        print("  policies: " + (", ".join(f"{p['name']} v{p['version']}" for p in d["policies"]) or "none"))
    last = d.get("last_attestation")
    if last and not last.get("ok"):
        print(f"  last refusal: {last.get('code')}: {', '.join(last.get('rules') or []) or last.get('detail')}")


def _print_history(obj: dict[str, Any]) -> None:
    for a in obj["items"]:
        verdict = "passed" if a["ok"] else f"refused {a['code']}"
        rules = f" ({', '.join(a['rules'])})" if a.get("rules") else ""
        print(f"{a['attestation_id']:>8}  {a['at']}  {verdict}{rules}")
    if obj.get("next"):
        print(f"more: --cursor {obj['next']}")


# -- commands over the API ------------------------------------------------------------------------


def cmd_devices(args: argparse.Namespace) -> int:
    def call(c: Any) -> Any:
        return c.get("/v1/admin/devices", {"status": args.status, "tag": args.tag, "limit": args.limit,
                                           "cursor": args.cursor})

    def text(obj: dict[str, Any]) -> None:
        for d in obj["items"]:
            print(_device_line(d))
        if obj.get("next"):
            print(f"more: --cursor {obj['next']}")
    return _run(args, call, text)


def cmd_device(args: argparse.Namespace) -> int:
    return _run(args, lambda c: c.get(f"/v1/admin/devices/{_q(args.device_id)}"), _print_device)


def cmd_history(args: argparse.Namespace) -> int:
    return _run(args, lambda c: c.get(f"/v1/admin/devices/{_q(args.device_id)}/attestations",
                                      {"limit": args.limit, "cursor": args.cursor}), _print_history)


def cmd_revoke(args: argparse.Namespace) -> int:
    return _run(args, lambda c: c.post(f"/v1/admin/devices/{_q(args.device_id)}/revoke",
                                       {"reason": args.reason}), _print_device)


def cmd_allow_reenroll(args: argparse.Namespace) -> int:
    return _run(args, lambda c: c.post(f"/v1/admin/devices/{_q(args.device_id)}/allow-reenroll", {}),
                _print_device)


def cmd_tag(args: argparse.Namespace) -> int:
    return _run(args, lambda c: c.post(f"/v1/admin/devices/{_q(args.device_id)}/tags",
                                       {"add": args.add or [], "remove": args.remove or []}), _print_device)


def cmd_freshness(args: argparse.Namespace) -> int:
    seconds = None if args.seconds == "default" else float(args.seconds)
    return _run(args, lambda c: c.request("PATCH", f"/v1/admin/devices/{_q(args.device_id)}",
                                          {"freshness": seconds}), _print_device)


def cmd_status(args: argparse.Namespace) -> int:
    return _run(args, lambda c: c.get("/v1/admin/status"),
                lambda obj: print("  ".join(f"{k} {v}" for k, v in obj["devices"].items())))


def cmd_audit(args: argparse.Namespace) -> int:
    def text(obj: dict[str, Any]) -> None:
        for a in obj["items"]:
            print(f"{a['at']}  {a['actor']:<24} {a['action']:<22} {a.get('target') or ''}"
                  + (f"  {json.dumps(a['detail'])}" if a.get("detail") else ""))
        if obj.get("next"):
            print(f"more: --cursor {obj['next']}")
    return _run(args, lambda c: c.get("/v1/admin/audit", {"limit": args.limit, "cursor": args.cursor}), text)


def _target(args: argparse.Namespace) -> str:
    if args.default:
        return "/v1/admin/assignments/default"
    if args.tag:
        return f"/v1/admin/assignments/tag/{_q(args.tag)}"
    return f"/v1/admin/assignments/device/{_q(args.device)}"


def cmd_policy(args: argparse.Namespace) -> int:
    action = args.policy_command
    if action == "list":
        def text(obj: dict[str, Any]) -> None:
            for p in obj["items"]:
                print(f"{p['name']}  v{p['version']}  {p['created_at']}  by {p['created_by']}")
            for a in obj["assignments"]:
                print(f"  {a['kind']}{':' + a['target'] if a['target'] else ''} -> {a['policy']}")
        return _run(args, lambda c: c.get("/v1/admin/policies"), text)
    if action == "get":
        return _run(args, lambda c: c.get(f"/v1/admin/policies/{_q(args.name)}", {"version": args.version}),
                    lambda obj: print(json.dumps(obj["document"], indent=2)))
    if action == "put":
        from ..policy import Policy, PolicyError

        try:
            document = Policy.load(args.file).to_dict()
        except PolicyError as exc:
            print(f"error: {args.file}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        return _run(args, lambda c: c.request("PUT", f"/v1/admin/policies/{_q(args.name)}",
                                              {"document": document, "freshness": args.freshness}),
                    lambda obj: print(f"{obj['name']} v{obj['version']}"
                                      + ("" if obj.get("changed") else " (unchanged)")))
    if action == "assign":
        return _run(args, lambda c: c.request("PUT", _target(args), {"policy": args.name}),
                    lambda obj: print(f"{obj['kind']}{':' + obj['target'] if obj['target'] else ''} -> {obj['policy']}"))
    return _run(args, lambda c: c.request("DELETE", _target(args)),
                lambda obj: print(f"{obj['kind']}{':' + obj['target'] if obj['target'] else ''}: no policy"))


# -- tokens, on the database ------------------------------------------------------------------------


def cmd_token(args: argparse.Namespace) -> int:
    try:
        from ..service import auth, store
        from ..service.store import Store
    except ImportError as exc:
        print(f"error: 'admin token' needs the service extra ({exc.name or exc} is missing): "
              "pip install 'tpm2-attest[service]'", file=sys.stderr)
        return EXIT_USAGE
    from datetime import UTC, datetime

    from sqlalchemy.exc import IntegrityError

    url = args.db or os.environ.get("TPM2_ATTEST_DATABASE_URL")
    if not url:
        raise UsageError("give --db URL (or set $TPM2_ATTEST_DATABASE_URL)")
    if args.token_command == "create" and not auth.valid_name(args.name):
        raise UsageError(f"--name {args.name[:80]!r}: letters, digits, '.', '_' and '-', at most 64 "
                         "characters (as the operator API takes them)")
    actor = f"local:{getpass.getuser()}"
    now = datetime.now(UTC)
    with database_errors():
        db = Store(url, pool_size=1)
    try:
        with database_errors(), db.session() as s:
            if args.token_command == "create":
                try:
                    record, token = auth.create_token(s, args.name, args.role, actor, now)
                    s.commit()
                except IntegrityError:
                    print(f"error: a token named {args.name!r} exists (revoke it, or pick another name)",
                          file=sys.stderr)
                    return EXIT_FAIL
                obj = {"ok": True, "name": record.name, "role": record.role, "token": token}

                def shown() -> None:
                    print(token)
                    print(f"token {record.name!r} ({record.role}); it is shown only now: keep it secret "
                          f"(e.g. export {TOKEN_ENV}=...)", file=sys.stderr)
                emit(args, obj, shown)
                return EXIT_OK
            if args.token_command == "revoke":
                if not store.revoke_token(s, args.name, now):
                    print(f"error: no live token named {args.name!r}", file=sys.stderr)
                    return EXIT_FAIL
                store.audit(s, now, actor, "token.revoke", args.name)
                s.commit()
                emit(args, {"ok": True, "name": args.name, "revoked": True},
                     lambda: print(f"token {args.name!r} revoked"))
                return EXIT_OK
            from ..service.admin import token_json

            tokens = [token_json(t) for t in store.list_tokens(s)]

            def listed() -> None:
                for t in tokens:
                    print(f"{t['name']:<24} {t['role']:<6} {t['created_at']}  by {t['created_by']}"
                          + (f"  revoked {t['revoked_at']}" if t["revoked_at"] else ""))
            emit(args, {"items": tokens}, listed)
            return EXIT_OK
    finally:
        db.close()


def add_parser(subparsers: SubParsers) -> None:
    """Add ``admin`` and its sub-commands to the main CLI."""
    api = argparse.ArgumentParser(add_help=False, parents=[output_options(), client_options()])
    api.add_argument("--server", metavar="URL", help=f"the service (default ${SERVER_ENV})")
    api.add_argument("--token", help=f"operator token (default ${TOKEN_ENV}; the variable keeps it out of ps)")
    api.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                     help="seconds to wait for each HTTP request (default 30)")
    page = argparse.ArgumentParser(add_help=False)
    page.add_argument("--limit", type=int, metavar="N", help="items per page (at most 500)")
    page.add_argument("--cursor", help="the 'next' of the previous page")

    p = subparsers.add_parser("admin", help="operate a service: devices, policies, tokens, audit log",
                              description="Operator commands. 'admin token' works on the database (--db); "
                                          "the others on a running service (--server, --token).")
    sub = p.add_subparsers(dest="admin_command", required=True, metavar="ACTION")

    t = sub.add_parser("token", help="operator tokens (on the database: --db)")
    tsub = t.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    for name, what in (("create", "make a token and print it (once)"), ("list", "list tokens (never their value)"),
                       ("revoke", "revoke a token by name")):
        c = tsub.add_parser(name, parents=[output_options()], help=what)
        c.add_argument("--db", metavar="URL", help="the service's database (default $TPM2_ATTEST_DATABASE_URL)")
        if name in ("create", "revoke"):
            c.add_argument("--name", required=True, help="the token's name (letters, digits, . _ -)")
        if name == "create":
            c.add_argument("--role", required=True, choices=["read", "admin"],
                           help="read: the GET endpoints; admin: everything")
        c.set_defaults(func=cmd_token)

    c = sub.add_parser("devices", parents=[api, page], help="list devices")
    c.add_argument("--status", choices=["trusted", "failed", "stale", "revoked"], help="only devices of this status")
    c.add_argument("--tag", help="only devices with this tag")
    c.set_defaults(func=cmd_devices)
    for name, func, what in (("device", cmd_device, "show a device"),
                             ("history", cmd_history, "a device's attestations, newest first"),
                             ("revoke", cmd_revoke, "revoke a device"),
                             ("allow-reenroll", cmd_allow_reenroll, "let a device's EK enroll once more (lost AK)"),
                             ("tag", cmd_tag, "add or remove tags of a device"),
                             ("freshness", cmd_freshness, "set a device's freshness window")):
        c = sub.add_parser(name, parents=[api, page] if name == "history" else [api], help=what)
        c.add_argument("device_id", metavar="DEVICE_ID", help="the device")
        if name == "revoke":
            c.add_argument("--reason", help="why (kept in the audit log)")
        if name == "tag":
            c.add_argument("--add", action="append", metavar="TAG", help="a tag to add (repeatable)")
            c.add_argument("--remove", action="append", metavar="TAG", help="a tag to remove (repeatable)")
        if name == "freshness":
            c.add_argument("seconds", metavar="SECONDS|default",
                           help="how long a pass keeps it trusted; 'default': its policies' or the service's")
        c.set_defaults(func=func)
    c = sub.add_parser("status", parents=[api], help="devices per status")
    c.set_defaults(func=cmd_status)
    c = sub.add_parser("audit", parents=[api, page], help="the audit log, newest first")
    c.set_defaults(func=cmd_audit)

    pol = sub.add_parser("policy", help="policies and their assignments")
    psub = pol.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    c = psub.add_parser("list", parents=[api], help="policies (newest versions) and assignments")
    c.set_defaults(func=cmd_policy)
    c = psub.add_parser("get", parents=[api], help="print a policy document")
    c.add_argument("name", help="the policy")
    c.add_argument("--version", type=int, help="this version (default: the newest)")
    c.set_defaults(func=cmd_policy)
    c = psub.add_parser("put", parents=[api], help="store a policy file as the next version of NAME")
    c.add_argument("name", help="the policy (a new version of it when it exists)")
    c.add_argument("file", type=Path, help="the policy document (JSON, or YAML by its name)")
    c.add_argument("--freshness", type=float, metavar="SECONDS", help="how long a pass keeps a device trusted")
    c.set_defaults(func=cmd_policy)
    for name in ("assign", "unassign"):
        c = psub.add_parser(name, parents=[api], help=f"{name} a policy to the fleet, a tag or a device")
        if name == "assign":
            c.add_argument("name", help="the policy")
        g = c.add_mutually_exclusive_group(required=True)
        g.add_argument("--default", action="store_true", help="every device without its own or a tag's")
        g.add_argument("--tag", help="every device with this tag (all its tags' policies apply)")
        g.add_argument("--device", metavar="DEVICE_ID", help="this device (only this policy then)")
        c.set_defaults(func=cmd_policy)
