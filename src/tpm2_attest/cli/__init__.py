"""The ``tpm2-attest`` command line: thin wrappers over ``Tpm``, evidence, ``verify`` and the service.

One module per topic (``device``, ``verifier``, ``trust``, ``probe``, ``eventlog``, ``policy``,
``service``), each with an
``add_parser(subparsers)``; shared helpers are in :mod:`.common`. The CLI holds no logic of its own:
it parses arguments, calls the layers below and reports their errors in its own words.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .._version import __version__
from ..errors import ErrorCode, TpmError
from ..trust.errors import FetchError
from ..verify import VerificationError
from . import device, eventlog, policy, probe, service, trust, verifier
from .common import EXIT_FAIL, EXIT_NO_TPM, EXIT_OK, EXIT_USAGE, hint

TOPICS = (device, verifier, trust, probe, eventlog, policy, service)
"""The sub-command modules, in the order ``--help`` lists their commands."""


def build_parser() -> argparse.ArgumentParser:
    """The whole ``tpm2-attest`` argument parser."""
    p = argparse.ArgumentParser(prog="tpm2-attest", description="TPM 2.0 device attestation and verification")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for topic in TOPICS:
        topic.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (see :mod:`.common` for their meaning)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc: int = args.func(args)
        return rc
    except TpmError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": exc.to_dict()}, indent=2))
        else:
            print(f"error: {exc} [{exc.code.value}]", file=sys.stderr)
            what = hint(exc)
            if what:
                print(f"hint: {what}", file=sys.stderr)
        return EXIT_NO_TPM if exc.code == ErrorCode.TPM_NOT_FOUND else EXIT_FAIL
    except VerificationError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "reason": exc.reason.value, "detail": exc.detail}, indent=2))
        else:
            print(f"verification failed: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except FetchError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "fetch_failure": exc.failure.value, "url": exc.url,
                              "detail": exc.detail}, indent=2))
        else:
            print(f"error: fetching {exc.url} failed [{exc.failure.value}]: {exc.detail}", file=sys.stderr)
        return EXIT_FAIL
    except (OSError, argparse.ArgumentTypeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, argparse.ArgumentTypeError) else EXIT_FAIL
    except KeyboardInterrupt:  # pragma: no cover
        return 130


__all__ = ["EXIT_FAIL", "EXIT_NO_TPM", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]
