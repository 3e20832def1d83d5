"""The ``tpm2-attest`` command line: thin wrappers over ``Tpm``, evidence, ``verify`` and the service.

One module per topic (``device``, ``verifier``, ``trust``, ``probe``, ``eventlog``, ``policy``,
``service``, ``admin``, ``completion``), each with an
``add_parser(subparsers)``; shared helpers are in :mod:`.common`. The CLI holds no logic of its own:
it parses arguments, calls the layers below and reports their errors in its own words.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from .._version import __version__
from ..errors import TpmError
from ..trust.errors import FetchError
from ..verify import VerificationError
from . import admin, completion, device, eventlog, policy, probe, service, trust, verifier
from .common import (
    EXIT_FAIL,
    EXIT_NO_TPM,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    UsageError,
    exit_code,
    hint,
    verification_hint,
)

TOPICS = (device, verifier, trust, probe, eventlog, policy, service, admin, completion)
"""The sub-command modules, in the order ``--help`` lists their commands."""


def build_parser() -> argparse.ArgumentParser:
    """The whole ``tpm2-attest`` argument parser."""
    p = argparse.ArgumentParser(
        prog="tpm2-attest", description="TPM 2.0 device attestation and verification",
        epilog="Exit codes: 0 success, 1 a check or step failed, 2 usage error, 3 no TPM.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.set_defaults(root_parser=p)  # for `completion`, which describes the whole parser
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for topic in TOPICS:
        topic.add_parser(sub)
    return p


def _report(args: argparse.Namespace, code: int, obj: dict[str, Any], text: str,
            advice: str | None) -> int:
    """Print one error: ``obj`` (with ok/exit_code/hint) under --json, else ``text`` and the
    hint on stderr. Returns ``code``."""
    if getattr(args, "json", False):
        print(json.dumps({"ok": False, "exit_code": code, **obj, "hint": advice}, indent=2))
    else:
        print(text, file=sys.stderr)
        if advice:
            print(f"hint: {advice}", file=sys.stderr)
    return code


def _run(args: argparse.Namespace) -> int:
    prog = f"tpm2-attest {args.command}"
    try:
        rc: int = args.func(args)
        return rc
    except BrokenPipeError:
        raise  # an OSError, but not the command's: main() ends quietly
    except UsageError as exc:
        return _report(args, EXIT_USAGE, {"usage_error": str(exc)}, f"{prog}: error: {exc}",
                       exc.hint)
    except TpmError as exc:
        return _report(args, exit_code(exc), {"error": exc.to_dict()},
                       f"error: {exc} [{exc.code.value}]", hint(exc))
    except VerificationError as exc:
        return _report(args, EXIT_FAIL, {"reason": exc.reason.value, "detail": exc.detail},
                       f"verification failed: {exc}", verification_hint(exc))
    except FetchError as exc:
        return _report(args, EXIT_FAIL, {"fetch_failure": exc.failure.value, "url": exc.url,
                                         "detail": exc.detail},
                       f"error: fetching {exc.url} failed [{exc.failure.value}]: {exc.detail}", None)
    except (CommandError, OSError, ValueError) as exc:
        return _report(args, EXIT_FAIL, {"error": {"message": str(exc)}}, f"{prog}: error: {exc}",
                       None)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (see :data:`.common.EXIT_OK` and the others).

    A reader that closes stdout early (``tpm2-attest info | head -1``) ends the command
    quietly: no traceback, no "Broken pipe" message, the command's own exit code (0 when it
    was cut short while printing)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    rc = EXIT_OK
    try:
        rc = _run(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would report the pipe again when it flushes stdout at exit: point it at
        # /dev/null instead (the recipe of the Python documentation, "Note on SIGPIPE").
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except KeyboardInterrupt:  # pragma: no cover
        return 130
    return rc


__all__ = ["EXIT_FAIL", "EXIT_NO_TPM", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]
