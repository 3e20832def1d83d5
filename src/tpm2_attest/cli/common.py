"""What every ``tpm2-attest`` sub-command shares: exit codes, opening the TPM, output, parsing,
and putting library errors in the CLI's words (its flags and environment variables).

The sub-command modules of this package (``device``, ``verifier``, ``eventlog``, ``probe``,
``service``) import these helpers; nothing below the CLI layer imports this module.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from .._files import write_atomic
from ..errors import ErrorCode, TpmError
from ..progress import terminal_progress
from ..tpm2.selection import PcrSelectionError, parse_bank, parse_pcr_selection
from ..transport.tcti import (
    ENV_VARS,
    FIRST_RESPONSE_TIMEOUT,
    NOT_A_TPM_HINT,
    env_hint,
    parse_tcti,
    resolve_tcti,
)
from ..verify import Reason, VerificationError

if TYPE_CHECKING:
    from ..evidence import Quote
    from ..tpm import Tpm

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_NO_TPM, EXIT_ENROLL_AGAIN = 0, 1, 2, 3, 4
"""Exit codes of every command: 0 success; 1 a check, step or request failed (``TpmError``,
``VerificationError``, a refusal by the server, a service that cannot start); 2 a usage error
(bad option or value, a missing input file, a TCTI that does not parse, an output file that
exists without --force); 3 no TPM (``TPM_NOT_FOUND``); 4 (``attest --every``) the device must
enroll again: the service does not know it (revoked, replaced) or its AK no longer loads."""

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What ``add_subparsers()`` returns: each topic module registers its commands on it."""

DEFAULT_BANK: Final = "sha256"


class UsageError(Exception):
    """A command line the user must fix (exit 2); the message names the option at fault."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


# -- options shared by several commands ----------------------------------------------------------


def device_options(*, timeout: bool = True) -> argparse.ArgumentParser:
    """The options of commands that talk to a TPM: --tcti, --embedded, --timeout, --json.

    ``timeout=False`` leaves out --timeout for a command that uses that name for something
    else (its TPM then gets the default timeouts)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-T", "--tcti", help="TPM to use, as tpm2-tools' -T takes it: device:/dev/tpmrm0 or "
                   "swtpm:host=127.0.0.1,port=2321 (default: $TPM2_ATTEST_TCTI, $TPM2TOOLS_TCTI, then "
                   "the platform device)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--embedded", action="store_true", help="use a fresh embedded swtpm")
    p.add_argument("--embedded-state", metavar="DIR",
                   help="use the embedded swtpm kept in DIR (made there on first use; keys made in one "
                        "run load in the next); implies --embedded")
    if timeout:
        p.add_argument("--timeout", dest="tpm_timeout", type=seconds, metavar="SECONDS",
                       help="seconds each TPM command may take (default: 60 over TCP, 120 for a "
                            f"device); without it the TPM must answer a first command within "
                            f"{FIRST_RESPONSE_TIMEOUT:g} s")
    return p


def output_options() -> argparse.ArgumentParser:
    """The options of commands that need no TPM (verifier side): --json only."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


SERVER_ENV: Final = "TPM2_ATTEST_SERVER"
"""The service's URL when --server is not given (enroll, attest, admin)."""
CA_FILE_ENV: Final = "TPM2_ATTEST_CA_FILE"
CLIENT_CERT_ENV: Final = "TPM2_ATTEST_CLIENT_CERT"
CLIENT_KEY_ENV: Final = "TPM2_ATTEST_CLIENT_KEY"


def client_options() -> argparse.ArgumentParser:
    """The options of commands that talk to the service: TLS, mutual TLS, retries."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--ca-file", metavar="FILE",
                   help=f"CA certificates (PEM) the server's certificate must chain to (default ${CA_FILE_ENV}, "
                        "else the system's)")
    p.add_argument("--client-cert", metavar="FILE",
                   help=f"client certificate (PEM) for a server that wants one: mutual TLS (default ${CLIENT_CERT_ENV})")
    p.add_argument("--client-key", metavar="FILE",
                   help=f"its private key (PEM; default ${CLIENT_KEY_ENV}, else in --client-cert)")
    p.add_argument("--retries", type=int, default=3, metavar="N",
                   help="tries more when the server cannot be reached, waiting 1, 2, 4... s; never after "
                        "a refusal (default 3)")
    return p


def service_client(args: argparse.Namespace, server: str, *, token: str | None = None,
                   stop: Any = None) -> Any:
    """The ServiceClient of the client options (UsageError naming the flag or variable at fault)."""
    from ..service.client import ServiceClient, TlsConfigError

    def given(attr: str, flag: str, env: str) -> tuple[str | None, str]:
        value = getattr(args, attr, None)
        if value:
            return value, flag
        value = os.environ.get(env) or None
        return value, f"${env}" if value else f"{flag} (or ${env})"

    ca_file, ca_name = given("ca_file", "--ca-file", CA_FILE_ENV)
    cert, cert_name = given("client_cert", "--client-cert", CLIENT_CERT_ENV)
    key, key_name = given("client_key", "--client-key", CLIENT_KEY_ENV)
    retries = getattr(args, "retries", 0)
    if retries < 0:
        raise UsageError(f"--retries {retries}: must be 0 or more")
    if (ca_file or cert or key) and not server.lower().startswith("https://"):
        used = ", ".join(n for v, n in ((ca_file, ca_name), (cert, cert_name), (key, key_name)) if v)
        raise UsageError(f"{used} need an https:// server, not {server}")
    if key and not cert:
        raise UsageError(f"{key_name} needs {cert_name} (the certificate of that key)")
    for value, name in ((ca_file, ca_name), (cert, cert_name), (key, key_name)):
        if value:
            read_input(value, name)  # a clear usage error for a file that cannot be read
    try:
        return ServiceClient(server, timeout=getattr(args, "timeout", 30.0), token=token, ca_file=ca_file,
                             client_cert=cert, client_key=key, retries=retries, stop=stop)
    except TlsConfigError as exc:
        names = ca_name if exc.which == "ca_file" else cert_name + (f" / {key_name}" if key else "")
        raise UsageError(f"{names}: {exc}") from None
    except ValueError as exc:
        raise UsageError(f"--server {server}: {exc}") from None


def service_failure(args: argparse.Namespace, exc: Any, *, refused: str = "refused by the server") -> int:
    """Report a ServiceError (exit 1): the server's refusal, or what kept the request from it,
    with a hint in the CLI's words."""
    advice = None
    client_side = exc.code in ("UNREACHABLE", "TLS_FAILURE", "BAD_RESPONSE")
    tls = exc.extra.get("tls")
    if tls == "server_untrusted":
        advice = f"pass the CA that issued the server's certificate: --ca-file FILE (or ${CA_FILE_ENV})"
    elif tls in ("client_certificate_required", "client_certificate_refused"):
        advice = ("pass a client certificate the server accepts: --client-cert FILE --client-key FILE "
                  f"(or ${CLIENT_CERT_ENV}, ${CLIENT_KEY_ENV})")
    elif tls == "not_tls":
        advice = "the server speaks plain HTTP there: use an http:// --server URL, or its HTTPS port"
    elif exc.code == "UNREACHABLE":
        advice = "check --server and that the service runs; --retries N tries longer"
    if getattr(args, "json", False):
        print(json.dumps({"ok": False, "status": exc.status, **exc.to_dict(), "hint": advice}, indent=2))
    else:
        print(f"error: {exc}" if client_side else f"{refused} (HTTP {exc.status}): {exc}", file=sys.stderr)
        if advice:
            print(f"hint: {advice}", file=sys.stderr)
    return EXIT_FAIL


def seconds(text: str) -> float:
    """argparse type: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1000000 seconds, not {text}")
    return value


# -- opening the TPM ------------------------------------------------------------------------------


def tcti_origin(source: str) -> str:
    """Where a TCTI came from, in the CLI's words: ``--tcti`` or ``$TPM2TOOLS_TCTI``..."""
    return "--tcti" if source == "argument" else f"${source}" if source in ENV_VARS else source


def check_tcti(tcti: str | None) -> tuple[str | None, str]:
    """The TCTI to use and its source; a TCTI that does not parse is a UsageError naming
    where it came from (--tcti, $TPM2_ATTEST_TCTI or $TPM2TOOLS_TCTI) and what to use instead."""
    chosen, source = resolve_tcti(tcti)
    if chosen is None:
        return None, source
    try:
        parse_tcti(chosen)
    except TpmError as exc:
        if source in ENV_VARS:
            raise UsageError(f"${source}={chosen!r}: {exc.message}",
                             hint=f"{env_hint(source, exc)}; or pass --tcti") from None
        raise UsageError(f"--tcti {chosen!r}: {exc.message}", hint=exc.hint) from None
    return chosen, source


def open_tpm(args: argparse.Namespace, *, fallback: bool, announce: bool = True) -> Tpm:
    """Open --tcti / the environment / the device; the embedded swtpm only when allowed and
    nothing was named (an explicit TPM that is down is an error, not a silent swap).
    ``announce``: say on stderr when an embedded swtpm is used."""
    from ..tpm import Tpm  # the device stack loads only for commands that use a TPM

    progress = terminal_progress() if announce else None  # a spinner on a terminal for slow key creation
    source = "embedded"
    state = getattr(args, "embedded_state", None)
    try:
        if getattr(args, "embedded", False) or state:
            tpm = Tpm.open_embedded(on_command=progress, state_dir=state)
        else:
            _chosen, source = check_tcti(args.tcti)
            tpm = Tpm.open(args.tcti, timeout=getattr(args, "tpm_timeout", None),
                           embedded_fallback=fallback, on_command=progress)
    except TpmError as exc:
        if exc.code == ErrorCode.TRANSPORT and exc.hint == NOT_A_TPM_HINT:
            exc.hint = (f"check that {tcti_origin(source)} names a TPM: for swtpm its data port "
                        "(swtpm socket --server port=N), not its control port (--ctrl, usually "
                        "N + 1); for a TPM that needs longer to answer, pass --timeout SECONDS")
        elif exc.code == ErrorCode.TPM_NOT_FOUND and source == "default":
            exc.hint = "no TPM device here: pass --tcti, set $TPM2_ATTEST_TCTI, or use --embedded"
        raise
    if tpm.embedded is not None and announce and not getattr(args, "json", False):
        if state:
            print(f"Using the embedded software TPM kept in {state} (swtpm at {tpm.tcti})", file=sys.stderr)
        else:
            print(f"No TPM found: using an embedded software TPM (swtpm at {tpm.tcti})", file=sys.stderr)
    return tpm


# -- input and output -----------------------------------------------------------------------------


def emit(args: argparse.Namespace, obj: dict[str, Any], text: Callable[[], None]) -> None:
    """Print ``obj`` as JSON under --json, else call ``text`` to print the human form."""
    if getattr(args, "json", False):
        print(json.dumps(obj, indent=2, sort_keys=False))
    else:
        text()


def read_input(path: str, option: str) -> bytes:
    """The bytes of an input file; a UsageError naming ``option`` when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{option} {path}: {exc.strerror or exc}") from None


def check_output(path: str, option: str, *, force: bool) -> None:
    """Refuse (UsageError) to replace an existing output file unless ``force``."""
    if os.path.lexists(path) and not force:
        raise UsageError(f"{option} {path} exists; pass --force to replace it")


class CommandError(Exception):
    """The command could not do its work for a reason outside the TPM and the evidence: an
    output file that cannot be written, a port that is taken (exit 1)."""


DATABASE_OPTION: Final = "--db / TPM2_ATTEST_DATABASE_URL"


@contextmanager
def database_errors(option: str = DATABASE_OPTION) -> Iterator[None]:
    """The service's database that cannot be opened or reached, or whose schema is not this
    release's, as a CommandError naming ``option`` (one line, no traceback)."""
    try:
        yield
    except Exception as exc:
        from sqlalchemy.exc import DBAPIError

        from ..service.migrate import SchemaError

        if isinstance(exc, SchemaError):
            raise CommandError(f"{option}: {exc}") from None
        if isinstance(exc, DBAPIError):
            orig = exc.orig if exc.orig is not None else exc
            first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
            raise CommandError(f"{option}: cannot use the database: {first}") from None
        raise


def write_output(path: str, data: bytes, option: str) -> None:
    """Write an output file atomically; a CommandError naming ``option`` when that fails."""
    try:
        write_atomic(path, data)
    except OSError as exc:
        raise CommandError(f"{option} {path}: {exc.strerror or exc}") from None


def read_quote(path: str, option: str = "--quote") -> Quote:
    """The quote JSON ``tpm2-attest quote`` wrote; malformed, it is a VerificationError
    (MALFORMED) naming ``option``, in the verifier's words."""
    from ..evidence import Quote

    raw = read_input(path, option)
    try:
        return Quote.from_json(raw)
    except TpmError as exc:
        raise VerificationError(Reason.MALFORMED, f"{option} {path}: {exc.message} (a quote as "
                                "'tpm2-attest quote' writes it)") from None


def hex_or_file(value: str | None, option: str = "--nonce") -> bytes | None:
    """A byte string given as hex, or as ``@FILE`` for a file's contents."""
    if value is None:
        return None
    if value.startswith("@"):
        return read_input(value[1:], option)
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise UsageError(f"{option}: not hex: {value!r} (give hex digits, or @FILE for a "
                         "file's contents)") from None


def check_listen(host: str, port: int) -> None:
    """Refuse (CommandError naming --host/--port) an address a server could not listen on,
    before the server starts (uvicorn exits 3 on that, which here means "no TPM")."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        raise UsageError(f"--host {host}: cannot resolve it: {exc}") from None
    family, kind, proto, _canon, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        if os.name == "posix":  # as uvicorn: a port in TIME_WAIT is free to listen on
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose "
                               "another --port (or stop the program that holds it)") from None


# -- PCR selections -------------------------------------------------------------------------------


def pcr_selection(text: str) -> dict[str | None, tuple[int, ...]]:
    """argparse type: a PCR selection as tpm2-tools writes it (``sha256:0,1,2+sha1:0``,
    ``sha256:all``) or a bare list (``0-7,16``); see :mod:`tpm2_attest.tpm2.selection`."""
    try:
        return parse_pcr_selection(text)
    except PcrSelectionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def pcr_bank(text: str) -> str:
    """argparse type: a PCR bank as a selection names it (``sha256``, ``0x000B``)."""
    try:
        return parse_bank(text)
    except PcrSelectionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_pcrs(text: str) -> list[int]:
    """The indices of a PCR list such as ``0-7,16`` (a bank, if named, is ignored)."""
    sel = pcr_selection(text)
    return sorted({i for idx in sel.values() for i in idx})


def one_bank(selection: dict[str | None, tuple[int, ...]], bank: str | None,
             option: str = "--pcrs") -> tuple[str, list[int]]:
    """(bank, indices) of a selection for a quote, which covers one bank: the bank named in
    the selection, else ``bank`` (--bank), else sha256. UsageError when the two disagree or
    the selection names several banks."""
    named = [b for b in selection if b is not None]
    if len(selection) > 1:
        raise UsageError(f"{option} selects banks {', '.join(named)}: a quote here covers one "
                         "bank (the verifier refuses quotes over several); quote each bank alone")
    (sel_bank, idx), = selection.items()
    if sel_bank is not None and bank is not None and sel_bank != bank:
        raise UsageError(f"{option} names bank {sel_bank} but --bank says {bank}")
    if not idx:
        raise UsageError(f"{option} selects no PCR")
    return sel_bank or bank or DEFAULT_BANK, list(idx)


# -- errors in the CLI's words --------------------------------------------------------------------

_TPM_HINTS: Final = {
    ErrorCode.TPM_NOT_FOUND: "no TPM: pass --tcti, set TPM2_ATTEST_TCTI, or use --embedded",
    ErrorCode.REQUIRES_ELEVATION: "run elevated (Windows: Administrator or SYSTEM; Linux: the tss group)",
    ErrorCode.LOCKOUT: "the TPM is in dictionary-attack lockout; wait or reset it",
    ErrorCode.BAD_BLOB: "the blob is malformed or was made by another TPM",
}
_CLI_WORDS: Final = {
    "overwrite=True replaces it": "pass --overwrite to replace it (blobs of the old key stop working)",
}
"""Library hints that name Python parameters, and what the CLI says instead."""

_VERIFY_HINTS: Final = {
    Reason.EMPTY_NONCE: "pass --nonce with the nonce the quote was made over, or "
                        "--allow-empty-nonce to accept a quote that can be replayed",
    Reason.NONCE_MISMATCH: "--nonce must be the value given to the device for this quote or key",
}


def hint(exc: TpmError) -> str | None:
    """What to do about a device-side error, in the CLI's words."""
    if exc.hint:
        return _CLI_WORDS.get(exc.hint, exc.hint)
    return _TPM_HINTS.get(exc.code)


def verification_hint(exc: VerificationError) -> str | None:
    """What to do about a verifier refusal, in the CLI's words (None when the reason says it)."""
    return _VERIFY_HINTS.get(exc.reason)


def exit_code(exc: TpmError) -> int:
    """The exit code of a device-side error: 3 when there is no TPM, else 1."""
    return EXIT_NO_TPM if exc.code == ErrorCode.TPM_NOT_FOUND else EXIT_FAIL


__all__ = [
    "DEFAULT_BANK",
    "EXIT_ENROLL_AGAIN",
    "EXIT_FAIL",
    "EXIT_NO_TPM",
    "EXIT_OK",
    "EXIT_USAGE",
    "SERVER_ENV",
    "CommandError",
    "SubParsers",
    "UsageError",
    "check_listen",
    "check_output",
    "check_tcti",
    "client_options",
    "device_options",
    "emit",
    "exit_code",
    "hex_or_file",
    "hint",
    "one_bank",
    "open_tpm",
    "output_options",
    "parse_pcrs",
    "pcr_bank",
    "pcr_selection",
    "read_input",
    "read_quote",
    "seconds",
    "service_client",
    "service_failure",
    "tcti_origin",
    "verification_hint",
    "write_output",
]
