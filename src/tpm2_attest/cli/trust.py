"""``tpm2-attest trust list``: the CA certificates shipped with the package (``trust.tpm_vendor_cas``)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from .. import trust
from .common import EXIT_OK, SubParsers, emit, output_options


def _short(subject: str) -> str:
    """The CN of an RFC 4514 name (its first attribute), else the whole name."""
    first = subject.split(",", 1)[0]
    return first[3:] if first.startswith("CN=") else subject


def cmd_list(args: argparse.Namespace) -> int:
    bundle = trust.tpm_vendor_cas(args.vendor)
    now = datetime.now(UTC)
    entries = list(bundle)
    if args.expired:
        entries = [e for e in entries if e.expired(now)]
    obj = {"count": len(entries), "roots": len(bundle.roots), "intermediates": len(bundle.intermediates),
           "vendors": list(bundle.vendors), "certificates": [e.to_dict(now) for e in entries]}

    def text() -> None:
        rows = [("VENDOR", "ROLE", "NOT AFTER", "SHA-256", "SUBJECT", "FILE")]
        for e in entries:
            role = e.role + (" (anchor)" if e.anchor and e.role != "root" else "")
            until = e.not_after.strftime("%Y-%m-%d") + (" EXPIRED" if e.expired(now) else "")
            rows.append((e.vendor, role, until, e.sha256[:16], _short(e.subject)[:48], e.file))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
        print(f"{len(entries)} certificates ({len(bundle.roots)} trust anchors, "
              f"{len(bundle.intermediates)} intermediates in the bundle); origins in "
              "tpm2_attest/trust/ca/README.md")

    emit(args, obj, text)
    return EXIT_OK


def add_parser(sub: SubParsers) -> None:
    """Register ``trust`` and its actions."""
    p = sub.add_parser("trust", help="the shipped TPM vendor / cloud vTPM CA bundle",
                       description="The CA certificates shipped with tpm2-attest for EK and AK "
                                   "certificates (serve --ek-root vendors uses them).")
    actions = p.add_subparsers(dest="trust_command", required=True, metavar="ACTION")
    s = actions.add_parser("list", parents=[output_options()], help="list the bundle's CA certificates")
    s.add_argument("--vendor", action="append", metavar="NAME",
                   help="only this vendor, e.g. Infineon (repeatable)")
    s.add_argument("--expired", action="store_true", help="only the certificates expired today")
    s.set_defaults(func=cmd_list)
