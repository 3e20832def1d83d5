"""What every ``tpm2-attest`` sub-command shares: exit codes, opening the TPM, output, parsing.

The sub-command modules of this package (``device``, ``verifier``, ``eventlog``, ``probe``,
``service``) import these helpers; nothing below the CLI layer imports this module.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias

from ..errors import ErrorCode, TpmError
from ..progress import terminal_progress
from ..tpm import Tpm

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_NO_TPM = 0, 1, 2, 3
"""Exit codes of every command: success, a refusal or failure, a usage error, no TPM."""

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What ``add_subparsers()`` returns: each topic module registers its commands on it."""


def device_options() -> argparse.ArgumentParser:
    """The options of commands that talk to a TPM: --tcti, --embedded, --json."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--tcti", help="TPM to use, e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321 "
                   "(default: $TPM2_ATTEST_TCTI, $TPM2TOOLS_TCTI, then the platform device)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--embedded", action="store_true", help="use a fresh embedded swtpm")
    return p


def output_options() -> argparse.ArgumentParser:
    """The options of commands that need no TPM (verifier side): --json only."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def open_tpm(args: argparse.Namespace, *, fallback: bool) -> Tpm:
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


def emit(args: argparse.Namespace, obj: dict[str, Any], text: Callable[[], None]) -> None:
    """Print ``obj`` as JSON under --json, else call ``text`` to print the human form."""
    if getattr(args, "json", False):
        print(json.dumps(obj, indent=2, sort_keys=False))
    else:
        text()


def parse_pcrs(text: str) -> list[int]:
    """A PCR list such as ``0-7,16``."""
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


def hex_or_file(value: str | None) -> bytes | None:
    """A byte string given as hex, or as ``@FILE`` for a file's contents."""
    if value is None:
        return None
    if value.startswith("@"):
        return Path(value[1:]).read_bytes()
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not hex: {value!r} (use @FILE for a file)") from None


def hint(exc: TpmError) -> str | None:
    """What to do about a device-side error, in the CLI's words."""
    if exc.hint:
        return exc.hint
    return {
        ErrorCode.TPM_NOT_FOUND: "no TPM: pass --tcti, set TPM2_ATTEST_TCTI, or use --embedded",
        ErrorCode.REQUIRES_ELEVATION: "run elevated (Windows: Administrator or SYSTEM; Linux: the tss group)",
        ErrorCode.LOCKOUT: "the TPM is in dictionary-attack lockout; wait or reset it",
        ErrorCode.BAD_BLOB: "the blob is malformed or was made by another TPM",
    }.get(exc.code)


__all__ = [
    "EXIT_FAIL",
    "EXIT_NO_TPM",
    "EXIT_OK",
    "EXIT_USAGE",
    "SubParsers",
    "device_options",
    "emit",
    "hex_or_file",
    "hint",
    "open_tpm",
    "output_options",
    "parse_pcrs",
]
