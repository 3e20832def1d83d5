"""The ``tpm2-attest`` command line: thin wrappers over ``Tpm``, evidence, ``verify`` and the service.

One module per topic (``device``, ``verifier``, ``trust``, ``probe``, ``eventlog``, ``policy``,
``service``, ``admin``, ``completion``), each with an
``add_parser(subparsers)``; shared helpers are in :mod:`.common`. The CLI holds no logic of its own:
it parses arguments, calls the layers below and reports their errors in its own words.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from contextvars import ContextVar
from types import ModuleType
from typing import Any, NoReturn

from .._version import __version__
from ..errors import TpmError
from ..trust.errors import FetchError
from ..verify import VerificationError
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

TOPICS = ("device", "verifier", "trust", "probe", "eventlog", "policy", "service", "admin",
          "completion")
"""The sub-command modules (in this package), in the order ``--help`` lists their commands."""

COMMANDS: dict[str, str] = {
    "info": "device", "demo": "device", "ek": "device", "provision-ak": "device",
    "quote": "device", "activate": "device",
    "make-credential": "verifier", "verify-ak": "verifier", "verify-quote": "verifier",
    "trust": "trust", "probe": "probe", "eventlog": "eventlog", "policy": "policy",
    "serve": "service", "enroll": "service", "attest": "service", "db": "service",
    "admin": "admin",
}
"""Which topic module registers each command, so running one command imports and builds only
its topic's parser (start-up time is most of a short command's time). ``completion`` describes
the whole parser and is not listed: it builds everything. A test keeps this table exact."""


_JSON_ERRORS: ContextVar[bool] = ContextVar("_JSON_ERRORS", default=False)
"""Set while main() parses a command line that asks for --json."""


class CliParser(argparse.ArgumentParser):
    """The parser of every command and sub-command: under --json, a command line that does
    not parse is reported as the JSON every other usage error is (stdout, exit 2)."""

    def error(self, message: str) -> NoReturn:
        if _JSON_ERRORS.get():
            print(json.dumps({"ok": False, "exit_code": EXIT_USAGE, "usage_error": message}, indent=2))
            self.exit(EXIT_USAGE)
        super().error(message)


def topic(name: str) -> ModuleType:
    """The sub-command module ``name`` of this package."""
    return importlib.import_module(f".{name}", __name__)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``tpm2-attest`` argument parser: every command, or only the topic of ``command``
    when it names one (``--help`` of the program lists every command)."""
    names = (COMMANDS[command],) if command in COMMANDS else TOPICS
    p = CliParser(
        prog="tpm2-attest", description="TPM 2.0 device attestation and verification",
        epilog="Exit codes: 0 success, 1 a check or step failed, 2 usage error, 3 no TPM, "
               "4 (attest --every) the device must enroll again.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.set_defaults(root_parser=p)  # for `completion`, which describes the whole parser
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in names:
        topic(name).add_parser(sub)
    return p


def _command(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names (its first word), when it is a known one."""
    first = next(iter(argv), None)
    return first if first in COMMANDS else None


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
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command(words))
    options = words[:words.index("--")] if "--" in words else words
    token = _JSON_ERRORS.set("--json" in options)
    try:
        args = parser.parse_args(words)
    finally:
        _JSON_ERRORS.reset(token)
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


__all__ = ["COMMANDS", "EXIT_FAIL", "EXIT_NO_TPM", "EXIT_OK", "EXIT_USAGE", "TOPICS", "build_parser",
           "main", "topic"]
