"""Verifier-side commands (no TPM needed): ``make-credential``, ``verify-ak``, ``verify-quote``.

They read what other tools write too: PEM/DER keys and certificates, tpm2-tools public areas
(``ak.pub``, ``ek.pub``) and ``tpm2_quote``'s message/signature/PCR files (see
:mod:`tpm2_attest.verify.inputs`). Malformed input is a ``VerificationError`` (exit 1) that
names the option it came from.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from .. import verify
from ..tpm2.constants import HASH_BY_NAME, HASH_SIZES
from ..tpm2.selection import PcrSelectionError, parse_pcr_selection
from ..tpm2.tools_formats import PcrBanks
from ..verify import Reason, VerificationError
from .common import (
    EXIT_OK,
    SubParsers,
    UsageError,
    check_output,
    emit,
    hex_or_file,
    output_options,
    read_input,
    read_quote,
    write_output,
)

if TYPE_CHECKING:
    from ..evidence import Quote  # annotations only: read_quote loads it

_AK_HELP = ("the AK: an AK blob (provision-ak, enroll), its TPM2B_PUBLIC (tpm2_createak -u) or a "
            "PEM/DER public key")


def cmd_make_credential(args: argparse.Namespace) -> int:
    check_output(args.out, "--out", force=args.force)
    if args.ak_name:  # hex, or @FILE: the binary Name tpm2_createak -n and tpm2_readpublic -n write
        ak_name = hex_or_file(args.ak_name, "--ak-name") or b""
    ek_public = verify.load_public(read_input(args.ek_public, "--ek-public"), f"--ek-public {args.ek_public}")
    if not args.ak_name:
        ak, kind = verify.load_ak(read_input(args.ak, "--ak"), f"--ak {args.ak}")
        if kind == "key":
            raise VerificationError(Reason.UNSUPPORTED_FORMAT,
                                    f"--ak {args.ak}: a bare public key has no TPM Name; give the "
                                    "AK blob, its TPM2B_PUBLIC, or --ak-name")
        ak_name = ak.name
    secret = hex_or_file(args.secret, "--secret")
    try:
        challenge, secret = verify.make_credential(ek_public, ak_name, secret,
                                                   name_what=f"--ak-name {args.ak_name}" if args.ak_name
                                                   else f"--ak {args.ak}")
    except ValueError as exc:
        if isinstance(exc, VerificationError):
            raise
        raise UsageError(f"--secret: {exc}") from None
    write_output(args.out, challenge.to_tpm2_tools() if args.tpm2_tools else challenge.to_json().encode(),
                 "--out")
    if args.secret_out:
        write_output(args.secret_out, secret, "--secret-out")
    return EXIT_OK


def cmd_verify_ak(args: argparse.Namespace) -> int:
    nonce = hex_or_file(args.nonce)
    ak, kind = verify.load_ak(read_input(args.ak, "--ak"), f"--ak {args.ak}", nonce=nonce)
    if kind == "key":
        raise VerificationError(Reason.UNSUPPORTED_FORMAT,
                                f"--ak {args.ak}: a PEM/DER key carries no TPM attributes to check; "
                                "give the AK blob, or its TPM2B_PUBLIC (tpm2_createak -u ak.pub, "
                                "tpm2_readpublic -f tss)")
    obj = {"ok": True, "name": ak.name.hex(), "evidence": kind, "nonce_checked": nonce is not None}
    what = ("AK OK: key and creation attestation checked" if kind == "blob" else
            "AK public area OK: attributes and scheme checked (no creation evidence in this file)")
    emit(args, obj, lambda: print(f"{what}; Name {ak.name.hex()}"))
    return EXIT_OK


def _expected_file(path: str, attest: bytes) -> PcrBanks:
    """--expect-pcrs: JSON {bank: {index: hex}}, or a tpm2-tools PCR file (a values file is
    read with the quote's own selection)."""
    data = read_input(path, "--expect-pcrs")
    if data.lstrip()[:1] == b"{":
        try:
            doc = json.loads(data)
            return {str(bank).lower(): {int(i): bytes.fromhex(v) for i, v in vals.items()}
                    for bank, vals in doc.items()}
        except (ValueError, AttributeError, TypeError) as exc:
            raise UsageError(f"--expect-pcrs {path}: not JSON of the form "
                             f'{{"sha256": {{"7": "<hex>"}}}}: {exc}') from None
    try:
        return verify.read_pcrs_file(data, attest, what=f"--expect-pcrs {path}")
    except VerificationError as exc:
        raise UsageError(exc.detail) from None


def _expected(args: argparse.Namespace, attest: bytes) -> PcrBanks | None:
    """The expected PCR values of --expect-pcrs and --expect-pcr (the latter wins)."""
    out: PcrBanks = {}
    if args.expect_pcrs:
        for bank, vals in _expected_file(args.expect_pcrs, attest).items():
            out.setdefault(bank, {}).update(vals)
    for item in args.expect_pcr or ():
        where, eq, value = item.partition("=")
        try:
            sel = parse_pcr_selection(where)
            digest = bytes.fromhex(value)
        except (PcrSelectionError, ValueError) as exc:
            raise UsageError(f"--expect-pcr {item!r}: {exc}; write BANK:INDEX=HEX") from None
        if not eq or len(sel) != 1 or None in sel or sum(len(v) for v in sel.values()) != 1:
            raise UsageError(f"--expect-pcr {item!r}: write one PCR as BANK:INDEX=HEX, "
                             "e.g. sha256:7=<64 hex digits>")
        ((named, (index,)),) = sel.items()
        size = HASH_SIZES[HASH_BY_NAME[str(named)]]
        if len(digest) != size:
            raise UsageError(f"--expect-pcr {item!r}: a {named} value has {size} bytes "
                             f"({2 * size} hex digits), not {len(digest)}")
        out.setdefault(str(named), {})[index] = digest
    return out or None


def cmd_verify_quote(args: argparse.Namespace) -> int:
    nonce = hex_or_file(args.nonce) or b""
    ak_data = read_input(args.ak, "--ak")
    quote: Quote | tuple[bytes, bytes, PcrBanks]
    if args.quote:
        extra = [o for o, v in (("--signature", args.signature), ("--pcrs-file", args.pcrs_file)) if v]
        if extra:
            raise UsageError(f"{' and '.join(extra)} go with --message (tpm2_quote's files), "
                             "not with --quote")
        quote = read_quote(args.quote)
        ak, kind = verify.load_ak(ak_data, f"--ak {args.ak}", signature=quote.signature)
        attest = quote.attest
    else:
        missing = [o for o, v in (("--signature", args.signature), ("--pcrs-file", args.pcrs_file)) if not v]
        if missing:
            raise UsageError(f"--message needs {' and '.join(missing)} (tpm2_quote -s and -o)")
        attest = read_input(args.message, "--message")
        sig = read_input(args.signature, "--signature")
        pcrs = read_input(args.pcrs_file, "--pcrs-file")
        ak, kind = verify.load_ak(ak_data, f"--ak {args.ak}", signature=sig)
        quote = verify.quote_from_files(ak, attest, sig, pcrs, names=(
            f"--message {args.message}", f"--signature {args.signature}", f"--pcrs-file {args.pcrs_file}"))
    expected = _expected(args, attest)
    res = verify.verify_quote(ak, quote, nonce=nonce, expected_pcrs=expected,
                              allow_empty_nonce=args.allow_empty_nonce)
    obj = {"ok": True, "bank": res.bank, "pcrs": {str(i): v.hex() for i, v in res.pcrs.items()},
           "expected_checked": sorted(i for v in (expected or {}).values() for i in v),
           "ak": kind}
    if len(res.banks) > 1:  # tpm2_quote -l sha1:..+sha256:..: every bank was verified
        obj["banks"] = {b: {str(i): v.hex() for i, v in vals.items()} for b, vals in res.banks.items()}
    counted = " + ".join(f"{len(vals)} {b}" for b, vals in res.banks.items())
    emit(args, obj, lambda: print(f"Quote OK ({counted} PCRs"
                                  f"{', expected values match' if expected else ''})"))
    return EXIT_OK


def add_parser(sub: SubParsers) -> None:
    """Register the verifier-side commands."""
    out = output_options()
    s = sub.add_parser("make-credential", parents=[out], help="(verifier) make a credential challenge")
    s.add_argument("--ek-public", required=True, metavar="FILE",
                   help="the EK: TPM2B_PUBLIC (ek --out-public, tpm2_createek -u), a PEM/DER "
                        "public key, or the EK certificate")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--ak", metavar="FILE", help="the AK whose Name the challenge binds: an AK blob "
                   "or its TPM2B_PUBLIC")
    g.add_argument("--ak-name", metavar="HEX|@FILE",
                   help="the AK's Name: hex, or @FILE for the binary Name tpm2_createak -n writes")
    s.add_argument("--secret", help="secret (hex or @FILE; default random)")
    s.add_argument("--out", required=True, metavar="FILE", help="where to write the challenge")
    s.add_argument("--force", action="store_true", help="replace an existing --out file")
    s.add_argument("--secret-out", metavar="FILE", help="where to write the secret (keep it for the check)")
    s.add_argument("--tpm2-tools", action="store_true",
                   help="write tpm2-tools' credential format (for tpm2_activatecredential)")
    s.set_defaults(func=cmd_make_credential)

    s = sub.add_parser("verify-ak", parents=[out], help="(verifier) check an AK blob or public area")
    s.add_argument("--ak", required=True, metavar="FILE",
                   help="an AK blob (key and creation evidence are checked) or its TPM2B_PUBLIC "
                        "(tpm2-tools ak.pub: its attributes and scheme are checked)")
    s.add_argument("--nonce", help="enrollment nonce (hex or @FILE; needs an AK blob)")
    s.set_defaults(func=cmd_verify_ak)

    s = sub.add_parser("verify-quote", parents=[out], help="(verifier) check a quote")
    s.add_argument("--ak", required=True, metavar="FILE", help=_AK_HELP)
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--quote", metavar="FILE", help="the quote JSON 'tpm2-attest quote' wrote")
    g.add_argument("--message", metavar="FILE", help="tpm2_quote -m: the quoted TPMS_ATTEST")
    s.add_argument("--signature", metavar="FILE", help="tpm2_quote -s (format tss or plain)")
    s.add_argument("--pcrs-file", metavar="FILE",
                   help="tpm2_quote -o or tpm2_pcrread -o: the PCR values (serialized, "
                        "marshaled or values)")
    s.add_argument("--nonce", help="expected qualifying data (hex or @FILE; tpm2_quote -q)")
    s.add_argument("--allow-empty-nonce", action="store_true",
                   help="accept a quote made without a nonce (it can be replayed)")
    s.add_argument("--expect-pcr", action="append", metavar="BANK:INDEX=HEX",
                   help="a PCR value the quote must hold, e.g. sha256:7=<hex> (repeatable)")
    s.add_argument("--expect-pcrs", metavar="FILE",
                   help='expected PCR values: JSON {"sha256": {"7": "<hex>"}} or a tpm2-tools '
                        "PCR file (tpm2_pcrread -o)")
    s.set_defaults(func=cmd_verify_quote)


__all__ = ["add_parser"]
