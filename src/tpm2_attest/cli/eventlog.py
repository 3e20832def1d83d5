"""``tpm2-attest eventlog FILE [--replay] [--state] [--json]``: print a log's events, replayed
PCRs, or the machine state it describes.

The text output follows ``tpm2_eventlog``'s YAML-like layout; ``--json`` prints one JSON
document. Control characters from the (untrusted) log are always escaped. ``--state`` reads
the log alone, not checked against a quote: the state is what the log claims (``tpm2-attest
policy check`` verifies it against a quote first).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from ..eventlog.banks import bank_name
from ..eventlog.errors import EventLogError
from ..eventlog.events import EventLog
from ..eventlog.parser import parse_event_log
from ..eventlog.secureboot import secure_boot_state
from .common import CommandError, SubParsers, UsageError


def add_parser(subparsers: SubParsers) -> argparse.ArgumentParser:
    """Add the ``eventlog`` sub-command to the main CLI's sub-parsers."""
    p = subparsers.add_parser(
        "eventlog",
        help="parse a TCG event log, print its events and replayed PCRs",
        description="Parse a TCG PC Client event log (SHA-1 or crypto-agile), e.g. "
        "/sys/kernel/security/tpm0/binary_bios_measurements, and print its events.",
    )
    configure(p)
    return p


def configure(p: argparse.ArgumentParser) -> None:
    """Declare the sub-command's arguments on ``p``."""
    p.add_argument("file", metavar="FILE", help="the binary event log ('-' reads stdin)")
    p.add_argument("--replay", action="store_true",
                   help="also print the PCR values the log replays to, per bank")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--bank", action="append", metavar="BANK",
                   help="with --replay: only these banks (repeatable; default: all of the log)")
    p.add_argument("--secure-boot", action="store_true",
                   help="also print the Secure Boot state read from PCR 7")
    p.add_argument("--state", action="store_true",
                   help="print the machine state the log describes instead of its events "
                   "(platform, Secure Boot, EFI applications, GRUB, Linux, Windows); the first "
                   "--bank authenticates event data (default sha256)")
    p.add_argument("--lenient", action="store_true",
                   help="keep events whose data does not match their type instead of failing")
    p.set_defaults(func=run)


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    with open(path, "rb") as f:
        return f.read()


def _replays(log: EventLog, banks: Sequence[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for bank in banks or log.banks:
        try:
            out[bank] = {str(k): v.hex() for k, v in sorted(log.replay(bank).items())}
        except (EventLogError, ValueError) as exc:
            out[bank] = {"error": str(exc)}
    return out


def _scalar(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, int):
        return str(v)
    return json.dumps(str(v))


def _yaml(out: TextIO, value: Any, indent: int) -> None:
    """Render our own to_dict() output (bounded depth) as YAML-like lines."""
    pad = " " * indent
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, dict | list) and v:
                out.write(f"{pad}{k}:\n")
                _yaml(out, v, indent + 2)
            else:
                out.write(f"{pad}{k}: {_scalar(v) if not isinstance(v, dict | list) else v}\n")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and item:
                first = True
                for k, v in item.items():
                    lead = f"{pad}- " if first else f"{pad}  "
                    first = False
                    if isinstance(v, dict | list) and v:
                        out.write(f"{lead}{k}:\n")
                        _yaml(out, v, indent + 4)
                    else:
                        out.write(f"{lead}{k}: {_scalar(v) if not isinstance(v, dict | list) else v}\n")
            else:
                out.write(f"{pad}- {_scalar(item)}\n")


def _text(out: TextIO, log: EventLog, pcrs: dict[str, Any] | None, sb: Any) -> None:
    out.write("---\nversion: 1\n")
    out.write(f"format: {log.format.value}\n")
    if log.startup_locality is not None:
        out.write(f"startup_locality: {log.startup_locality}\n")
    if log.padding:
        out.write(f"padding: {log.padding}\n")
    out.write("events:\n")
    for e in log.events:
        out.write(f"- EventNum: {e.index}\n  PCRIndex: {e.pcr}\n  EventType: {e.type_name}\n")
        out.write(f"  DigestCount: {len(e.digests)}\n  Digests:\n")
        for d in e.digests:
            out.write(f"  - AlgorithmId: {bank_name(d.alg)}\n    Digest: \"{d.value.hex()}\"\n")
        out.write(f"  EventSize: {len(e.data)}\n")
        info = e.info.to_dict()
        if info.get("kind") in ("raw", "malformed"):
            info["data"] = e.data.hex()
        out.write("  Event:\n")
        _yaml(out, info, 4)
    if pcrs is not None:
        out.write("pcrs:\n")
        for bank, values in pcrs.items():
            out.write(f"  {bank}:\n")
            if "error" in values:
                out.write(f"    error: {json.dumps(values['error'])}\n")
                continue
            for k, v in values.items():
                out.write(f"    {k:<3}: 0x{v}\n")
    if sb is not None:
        out.write("secure_boot:\n")
        _yaml(out, sb, 2)


def _state_bank(log: EventLog, banks: Sequence[str] | None) -> str:
    if banks:
        return banks[0]
    return "sha256" if "sha256" in log.banks else (log.banks[0] if log.banks else "sha256")


def _readable_state(doc: dict[str, Any]) -> dict[str, Any]:
    """The state for reading: databases as their certificates and counts, not every entry."""
    sb = doc.get("secure_boot")
    if sb is not None:
        compact: dict[str, Any] = {"enabled": sb["enabled"]}
        for name in ("PK", "KEK", "db", "dbx", "dbt", "dbr"):
            db = sb.get(name)
            if db is None:
                continue
            entries = db["entries"]
            compact[name] = {
                "entries": len(entries),
                "certificates": [e.get("well_known") or e.get("subject") or e.get("sha256")
                                 for e in entries if e["type"] == "EFI_CERT_X509"],
            }
        compact["authorities"] = [a.get("well_known") or a.get("subject") or a.get("variable")
                                  for a in sb["authorities"]]
        compact["debug_mode"] = sb["debug_mode"]
        compact["dma_protection_disabled"] = sb["dma_protection_disabled"]
        compact["unknown_actions"] = sb["unknown_actions"]
        doc = {**doc, "secure_boot": compact}
    return doc


def _run_state(args: argparse.Namespace, log: EventLog) -> int:
    from ..eventlog.state import machine_state

    bank = _state_bank(log, getattr(args, "bank", None))
    note = None
    sb = None
    try:
        sb = secure_boot_state(log, bank)
    except (EventLogError, ValueError) as exc:
        note = f"Secure Boot state not read: {exc}"
    try:
        state = machine_state(log, bank, log.touched_pcrs, secure_boot=sb)
    except ValueError as exc:
        raise UsageError(f"--bank: {exc}") from None
    doc = state.to_dict()
    if note:
        doc["notes"] = [note, *doc["notes"]]
    try:
        if args.json:
            json.dump({"verified_against_quote": False, "state": doc}, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            sys.stdout.write("---\n# the state this log claims; not checked against a quote\n")
            _yaml(sys.stdout, _readable_state(doc), 0)
        sys.stdout.flush()
    except BrokenPipeError:
        return 0
    return 0


def run(args: argparse.Namespace) -> int:
    """Execute the sub-command; 0 on success. Raises UsageError (exit 2) for a file that
    cannot be read or a bad option, CommandError (exit 1) for a malformed log: the CLI reports
    them as every command does (JSON under --json)."""
    try:
        raw = _read(args.file)
    except OSError as exc:
        raise UsageError(f"{args.file}: {exc.strerror or exc}") from None
    try:
        log = parse_event_log(raw, strict=not getattr(args, "lenient", False))
    except EventLogError as exc:
        raise CommandError(f"{args.file}: malformed event log: {exc}") from None
    if getattr(args, "state", False):
        return _run_state(args, log)
    pcrs = _replays(log, getattr(args, "bank", None)) if args.replay else None
    sb: Any = None
    if getattr(args, "secure_boot", False):
        try:
            sb = secure_boot_state(log).to_dict()
        except (EventLogError, ValueError) as exc:
            sb = {"error": str(exc)}
    try:
        if args.json:
            doc = log.to_dict()
            if pcrs is not None:
                doc["pcrs"] = pcrs
            if sb is not None:
                doc["secure_boot"] = sb
            json.dump(doc, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            _text(sys.stdout, log, pcrs, sb)
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into head
        return 0
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (``python -m tpm2_attest.eventlog``)."""
    p = argparse.ArgumentParser(prog="tpm2-attest eventlog")
    configure(p)
    try:
        return run(p.parse_args(argv))
    except UsageError as exc:
        print(f"tpm2-attest eventlog: error: {exc}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"tpm2-attest eventlog: error: {exc}", file=sys.stderr)
        return 1
