"""Verifier-side commands (no TPM needed): ``make-credential``, ``verify-ak``, ``verify-quote``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import verify
from .._files import write_atomic
from ..evidence import AkBlob, Quote
from .common import EXIT_OK, SubParsers, emit, hex_or_file, output_options


def cmd_make_credential(args: argparse.Namespace) -> int:
    ek_public = Path(args.ek_public).read_bytes()
    ak_name = bytes.fromhex(args.ak_name) if args.ak_name else AkBlob.load(Path(args.ak).read_bytes()).name
    challenge, secret = verify.make_credential(ek_public, ak_name, hex_or_file(args.secret))
    write_atomic(args.out, challenge.to_tpm2_tools() if args.tpm2_tools else challenge.to_json().encode())
    if args.secret_out:
        write_atomic(args.secret_out, secret)
    return EXIT_OK


def cmd_verify_ak(args: argparse.Namespace) -> int:
    ak = verify.check_ak(Path(args.ak).read_bytes(), nonce=hex_or_file(args.nonce))
    obj = {"ok": True, "name": ak.name.hex()}
    emit(args, obj, lambda: print(f"AK OK; Name {ak.name.hex()}"))
    return EXIT_OK


def cmd_verify_quote(args: argparse.Namespace) -> int:
    ak = verify.check_ak(Path(args.ak).read_bytes())
    q = Quote.from_json(Path(args.quote).read_bytes())
    nonce = hex_or_file(args.nonce) or b""
    res = verify.verify_quote(ak, q, nonce=nonce, allow_empty_nonce=args.allow_empty_nonce)
    obj = {"ok": True, "pcrs": {str(i): v.hex() for i, v in res.pcrs.items()}}
    emit(args, obj, lambda: print(f"Quote OK ({len(res.pcrs)} PCRs)"))
    return EXIT_OK


def add_parser(sub: SubParsers) -> None:
    """Register the verifier-side commands."""
    out = output_options()
    s = sub.add_parser("make-credential", parents=[out], help="(verifier) make a credential challenge")
    s.add_argument("--ek-public", required=True, metavar="FILE", help="EK TPM2B_PUBLIC")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--ak", metavar="FILE", help="AK blob (its Name is used)")
    g.add_argument("--ak-name", help="AK Name (hex)")
    s.add_argument("--secret", help="secret (hex or @FILE; default random)")
    s.add_argument("--out", required=True, metavar="FILE")
    s.add_argument("--secret-out", metavar="FILE")
    s.add_argument("--tpm2-tools", action="store_true", help="write tpm2-tools' credential format")
    s.set_defaults(func=cmd_make_credential)

    s = sub.add_parser("verify-ak", parents=[out], help="(verifier) check an AK blob")
    s.add_argument("--ak", required=True, metavar="FILE")
    s.add_argument("--nonce", help="enrollment nonce (hex or @FILE)")
    s.set_defaults(func=cmd_verify_ak)

    s = sub.add_parser("verify-quote", parents=[out], help="(verifier) check a quote")
    s.add_argument("--ak", required=True, metavar="FILE")
    s.add_argument("--quote", required=True, metavar="FILE")
    s.add_argument("--nonce", help="expected qualifying data (hex or @FILE)")
    s.add_argument("--allow-empty-nonce", action="store_true")
    s.set_defaults(func=cmd_verify_quote)
