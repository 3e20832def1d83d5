"""``tpm2-attest policy learn|check``: write a policy from a known-good machine's evidence, and
judge evidence against a policy file (no TPM needed).

Both verify the evidence first (the AK blob, the quote over the nonce, the event log against the
quoted PCRs) with :mod:`tpm2_attest.verify`, then call :mod:`tpm2_attest.policy`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, overload

from .. import verify
from .common import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_USAGE,
    SubParsers,
    emit,
    hex_or_file,
    output_options,
    read_input,
    read_quote,
)


class _SectionKeys(Sequence[str]):
    """The policy section keys, for --section's choices: read from tpm2_attest.policy when argparse
    first asks (the policy package loads cryptography.x509; other commands need not)."""

    def _keys(self) -> list[str]:
        from ..policy import SECTIONS

        return [c.key for c in SECTIONS]

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[str]: ...

    def __getitem__(self, i: int | slice) -> str | Sequence[str]:
        return self._keys()[i]

    def __len__(self) -> int:
        return len(self._keys())

    def __contains__(self, key: object) -> bool:
        return key in self._keys()


def _evidence(args: argparse.Namespace) -> tuple[verify.QuoteResult, verify.EventLogResult | None]:
    """Verify --ak, --quote over --nonce, and --event-log against the quote."""
    ak = verify.check_ak(read_input(args.ak, "--ak"))
    quote = read_quote(args.quote)
    nonce = hex_or_file(args.nonce) or b""
    result = verify.verify_quote(ak, quote, nonce=nonce, allow_empty_nonce=args.allow_empty_nonce)
    log = None
    if args.event_log:
        log = verify.verify_event_log(read_input(args.event_log, "--event-log"), result)
    return result, log


def cmd_learn(args: argparse.Namespace) -> int:
    """Verify the evidence, learn the policy that describes it exactly, write it atomically."""
    from ..policy import PolicyError, learn  # (cryptography.x509: loaded by the policy commands)

    quote, log = _evidence(args)
    try:
        p = learn(quote, log, name=args.name, sections=args.section)
    except PolicyError as exc:
        print(f"tpm2-attest policy learn: --section: {exc}", file=sys.stderr)
        return EXIT_USAGE
    p.save(args.out)
    keys = [s.key for s in p.sections]
    emit(args, {"ok": True, "out": str(args.out), "sections": keys},
         lambda: print(f"wrote {args.out}: sections {', '.join(keys) or '(none)'}"))
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    """Verify the evidence and judge it against --policy; 1 with every violation when refused."""
    from ..policy import Policy, PolicyError

    try:
        p = Policy.load(args.policy)
    except PolicyError as exc:
        print(f"tpm2-attest policy check: --policy {args.policy}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    quote, log = _evidence(args)
    result = p.evaluate(quote, log)
    doc: dict[str, Any] = result.to_dict()
    if log is not None:
        doc["state"] = log.state.summary()

    def text() -> None:
        if result.ok:
            print(f"policy satisfied ({', '.join(result.rules) or 'no rules'})")
            return
        print(f"policy refused: {len(result.violations)} violation(s) of "
              f"{', '.join(result.failed_rules())}")
        for v in result.violations:
            print(f"  {v.rule}: {v.detail}")

    emit(args, doc, text)
    return EXIT_OK if result.ok else EXIT_FAIL


def _evidence_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ak", required=True, metavar="FILE", help="the device's AK blob")
    p.add_argument("--quote", required=True, metavar="FILE", help="the quote (JSON)")
    p.add_argument("--nonce", help="the nonce the quote must carry (hex or @FILE)")
    p.add_argument("--allow-empty-nonce", action="store_true",
                   help="accept a quote without a nonce (replayable: for offline files only)")
    p.add_argument("--event-log", metavar="FILE",
                   help="the binary TCG event log of the same boot (needed by the secure_boot and "
                   "boot sections)")


def add_parser(sub: SubParsers) -> None:
    """Register ``policy learn`` and ``policy check``."""
    out = output_options()
    p = sub.add_parser("policy", help="(verifier) learn a policy from a good machine, check "
                       "evidence against a policy")
    actions = p.add_subparsers(dest="policy_command", required=True, metavar="ACTION")

    s = actions.add_parser("learn", parents=[out],
                           help="write the policy that exactly describes verified evidence")
    _evidence_options(s)
    s.add_argument("--out", required=True, metavar="FILE",
                   help="the policy file to write (JSON, or YAML for .yaml/.yml; atomic)")
    s.add_argument("--name", help="the policy's name")
    s.add_argument("--section", action="append", metavar="KEY",
                   choices=_SectionKeys(),
                   help="learn only these sections (repeatable; default: every section with "
                   "something to say)")
    s.set_defaults(func=cmd_learn)

    s = actions.add_parser("check", parents=[out],
                           help="verify evidence and judge it against a policy file")
    s.add_argument("--policy", required=True, metavar="FILE", help="the policy file (JSON or YAML)")
    _evidence_options(s)
    s.set_defaults(func=cmd_check)


__all__ = ["add_parser", "cmd_check", "cmd_learn"]
