"""How the command line fails: exit codes, messages that name its options and environment
variables (never Python parameters), TCTIs from the environment, files, pipes, help text."""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tpm2_attest import Tpm
from tpm2_attest.cli import EXIT_FAIL, EXIT_NO_TPM, EXIT_OK, EXIT_USAGE, build_parser, main
from tpm2_attest.cli.common import hint
from tpm2_attest.errors import ErrorCode, TpmError

SRC = Path(__file__).resolve().parents[1] / "src" / "tpm2_attest"


def run_cli(*args: str, env: dict[str, str] | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    return subprocess.run([sys.executable, "-m", "tpm2_attest.cli", *args], capture_output=True,
                          text=True, timeout=120, env={**base, **(env or {})}, **kw)


# -- TCTIs: where they came from, the same exit code everywhere -----------------------------------


@pytest.mark.parametrize("command", [["info"], ["probe"], ["ek"], ["provision-ak", "--out", "{out}"]])
def test_tcti_typo_is_a_usage_error_for_every_command(command: list[str], tmp_path: Path) -> None:
    command = [c.format(out=tmp_path / "ak") for c in command]
    res = run_cli(*command, "--tcti", "swtpmm:port=2321")
    assert res.returncode == EXIT_USAGE, (command, res.stderr)
    assert "--tcti 'swtpmm:port=2321'" in res.stderr and "unknown TCTI kind" in res.stderr


@pytest.mark.parametrize("command", [["info"], ["probe"], ["ek"]])
def test_tss_only_tcti_from_tpm2tools_tcti_says_where_and_what_instead(command: list[str]) -> None:
    res = run_cli(*command, env={"TPM2TOOLS_TCTI": "tabrmd:bus_type=session"})
    assert res.returncode == EXIT_USAGE, res.stderr
    said = res.stdout + res.stderr  # probe shows its failed open step (and hint) on stdout
    assert "$TPM2TOOLS_TCTI='tabrmd:bus_type=session'" in res.stderr and "tpm2-tss TCTI" in res.stderr
    assert "device:/dev/tpmrm0" in said and "$TPM2_ATTEST_TCTI" in said


def test_tcti_spelled_as_tpm2_tools_takes_it(swtpm: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """``-T``, ``--tcti=``, the port alone, the options in any order, the library name: the
    forms a tpm2-tools user types all reach the same TPM."""
    port = swtpm.port
    for argv in (["-T", f"swtpm:port={port}"], [f"--tcti=swtpm:port={port},host=127.0.0.1"],
                 ["-T", f"libtss2-tcti-swtpm.so.0:port={port}"], [f"-Tmssim:host=127.0.0.1,port={port}"]):
        assert main(["info", "--json", *argv]) == EXIT_OK, argv
        out = json.loads(capsys.readouterr().out)
        assert out["tcti"].endswith(f"host=127.0.0.1,port={port}") and out["source"] == "argument"
    assert main(["probe", "info", "--json", "-T", f"swtpm:port={port}"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_bad_tpm2_attest_tcti_is_named() -> None:
    res = run_cli("info", env={"TPM2_ATTEST_TCTI": "swtpm:port=99999"})
    assert res.returncode == EXIT_USAGE
    assert "$TPM2_ATTEST_TCTI='swtpm:port=99999'" in res.stderr and "port must be" in res.stderr


def test_library_names_the_variable_and_the_alternative(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TPM2TOOLS_TCTI", "libtss2-tcti-tabrmd.so.0")
    with pytest.raises(TpmError) as info:
        Tpm.open()
    exc = info.value
    assert exc.code == ErrorCode.INVALID_ARGUMENT
    assert "$TPM2TOOLS_TCTI" in exc.message and exc.hint is not None
    assert "TPM2_ATTEST_TCTI" in exc.hint and "device:/dev/tpmrm0" in exc.hint
    assert "--" not in str(exc) + exc.hint  # the library does not speak of CLI flags


def test_library_no_tpm_message_names_no_cli_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    import tpm2_attest.transport.tcti as tcti

    monkeypatch.setattr(tcti, "default_tcti", lambda *a, **k: None)
    with pytest.raises(TpmError) as info:
        Tpm.open()
    assert info.value.code == ErrorCode.TPM_NOT_FOUND
    assert "--tcti" not in str(info.value) and "TPM2_ATTEST_TCTI" in str(info.value)


# -- files name the option they came from ---------------------------------------------------------


@pytest.mark.parametrize(("args", "option"), [
    (["quote", "--ak", "{missing}"], "--ak"),
    (["activate", "--ak", "{missing}", "--challenge", "x"], "--ak"),
    (["verify-ak", "--ak", "{missing}"], "--ak"),
    (["verify-quote", "--ak", "{missing}", "--quote", "q"], "--ak"),
    (["make-credential", "--ek-public", "{missing}", "--ak-name", "00", "--out", "{out}"], "--ek-public"),
    (["verify-ak", "--ak", "{missing}", "--nonce", "@{missing}"], "--nonce"),
    (["demo", "--embedded", "--ek-root", "{missing}"], "--ek-root"),
    (["attest", "--server", "http://127.0.0.1:1", "--ak", "{missing}"], "--ak"),
    (["policy", "learn", "--ak", "{missing}", "--quote", "q", "--out", "{out}"], "--ak"),
])
def test_missing_file_names_its_option(tmp_path: Path, args: list[str], option: str) -> None:
    missing = str(tmp_path / "no-such-file")
    argv = [a.format(missing=missing, out=tmp_path / "out") for a in args]
    res = run_cli(*argv)
    assert res.returncode == EXIT_USAGE, res.stderr
    assert f"{option} {missing}: No such file or directory" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and "[Errno" not in res.stderr


def test_unwritable_output_names_its_option(tcti: str, tmp_path: Path) -> None:
    res = run_cli("ek", "--tcti", tcti, "--out-public", str(tmp_path / "no" / "dir" / "ek.pub"))
    assert res.returncode == EXIT_FAIL and "--out-public" in res.stderr and "Traceback" not in res.stderr


def test_bad_hex_names_its_option() -> None:
    res = run_cli("verify-ak", "--ak", "x", "--nonce", "xyz")
    assert res.returncode == EXIT_USAGE and "--nonce: not hex: 'xyz'" in res.stderr
    res = run_cli("make-credential", "--ek-public", "/dev/null", "--ak-name", "zz", "--out", "/tmp/x")
    assert res.returncode == EXIT_USAGE and "--ak-name: not hex" in res.stderr


# -- provision-ak does not overwrite --------------------------------------------------------------


def test_provision_ak_refuses_to_overwrite_without_force(tcti: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ak.blob"
    out.write_bytes(b"an earlier enrollment's AK")
    assert main(["provision-ak", "--tcti", tcti, "--out", str(out)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"--out {out} exists; pass --force" in err
    assert out.read_bytes() == b"an earlier enrollment's AK"
    assert main(["provision-ak", "--tcti", tcti, "--out", str(out), "--force"]) == EXIT_OK
    assert out.read_bytes()[:4] == b"TPW1"


# -- messages speak the CLI's language ------------------------------------------------------------


def test_empty_nonce_names_the_cli_options(tcti: str, tmp_path: Path) -> None:
    ak, q = tmp_path / "ak", tmp_path / "q.json"
    assert run_cli("provision-ak", "--tcti", tcti, "--out", str(ak)).returncode == 0
    assert run_cli("quote", "--tcti", tcti, "--ak", str(ak), "--out", str(q)).returncode == 0
    res = run_cli("verify-quote", "--ak", str(ak), "--quote", str(q))
    assert res.returncode == EXIT_FAIL
    assert "EMPTY_NONCE" in res.stderr and "--allow-empty-nonce" in res.stderr and "--nonce" in res.stderr
    assert "allow_empty_nonce" not in res.stderr
    res = run_cli("verify-quote", "--json", "--ak", str(ak), "--quote", str(q))
    out = json.loads(res.stdout)
    assert out["reason"] == "EMPTY_NONCE" and "--allow-empty-nonce" in out["hint"]
    assert run_cli("verify-quote", "--ak", str(ak), "--quote", str(q), "--allow-empty-nonce").returncode == 0


def test_key_exists_hint_names_the_cli_flag(tmp_path: Path) -> None:
    """The PCP backend says what a library caller does; the CLI says --overwrite."""
    with Tpm.open_embedded() as sw_tpm:
        tcti = sw_tpm.tcti
        with Tpm.open_pcp_emulator(tcti, tmp_path, privilege="admin") as tpm:
            tpm.provision_ak(key_name="k", scope="machine")
            with pytest.raises(TpmError) as info:
                tpm.provision_ak(key_name="k", scope="machine")
    exc = info.value
    assert exc.code == ErrorCode.KEY_EXISTS and "--" not in (exc.hint or "")
    advice = hint(exc)
    assert advice is not None and "--overwrite" in advice and "=True" not in advice


FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+")
PARAM = re.compile(r"\b[a-z][a-z0-9_]*=(True|False|None)\b|\bpass [a-z_]+=")
ERROR_CALLS = {"_fail", "_bad", "transport_error", "TpmError", "VerificationError", "UsageError",
               "PcrSelectionError", "ParseError"}
LIBRARY_WORDS_THE_CLI_REPLACES = {("backends/pcp.py", "overwrite=True replaces it")}
"""A library hint naming a Python parameter, which cli.common.hint() replaces."""
EMULATOR_KNOBS = {"backends/pcp_emulator.py"}
CLI_SIDE = ("cli/", "probe.py", "probe_windows.py", "service/")
"""Modules whose messages are for command-line users (the service's settings errors name the
``serve`` flag next to the Settings field, by their own rule)."""
"""The PCP emulator (a test device) says which of its knobs (``knob x=True``) made an error."""


def test_cli_replaces_every_library_hint_that_names_a_parameter() -> None:
    from tpm2_attest.cli.common import _CLI_WORDS

    for _where, words in LIBRARY_WORDS_THE_CLI_REPLACES:
        said = hint(TpmError("x", code=ErrorCode.KEY_EXISTS, hint=words))
        assert said == _CLI_WORDS[words] and not PARAM.search(said) and FLAG.search(said)
    nv = TpmError(tpm_rc=0x14C)  # TPM_RC_NV_DEFINED is KEY_EXISTS too: no PCP advice for it
    assert nv.code == ErrorCode.KEY_EXISTS and "--overwrite" not in (hint(nv) or "")


def _messages() -> list[tuple[str, int, str]]:
    out = []
    for f in sorted(SRC.rglob("*.py")):
        rel = f.relative_to(SRC).as_posix()
        for node in ast.walk(ast.parse(f.read_text())):
            parts: list[ast.AST] = []
            if isinstance(node, ast.Raise) and node.exc is not None:
                parts = [node.exc]
            elif isinstance(node, ast.keyword) and node.arg == "hint":
                parts = [node.value]
            elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in ERROR_CALLS:
                parts = [node]
            for part in parts:
                for n in ast.walk(part):
                    if isinstance(n, ast.Constant) and isinstance(n.value, str):
                        out.append((rel, getattr(node, "lineno", 0), n.value))
    return out


def test_library_errors_name_no_cli_flag_and_no_error_names_a_python_parameter() -> None:
    """Library errors speak library words (the CLI translates); nothing names ``x=True``."""
    messages = _messages()
    assert len(messages) > 300  # the scan sees the error messages
    flags = [m for m in messages if not m[0].startswith(CLI_SIDE) and FLAG.search(m[2])]
    params = [m for m in messages if PARAM.search(m[2]) and (m[0], m[2]) not in LIBRARY_WORDS_THE_CLI_REPLACES
              and m[0] not in EMULATOR_KNOBS]
    assert not flags, flags
    assert not params, params


# -- exit codes -----------------------------------------------------------------------------------


def test_serve_on_a_busy_port_fails_with_exit_1_not_3(tmp_path: Path) -> None:
    pytest.importorskip("uvicorn")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = run_cli("serve", "--port", str(port), "--db", f"sqlite:///{tmp_path / 'db.sqlite'}",
                      "--allow-missing-ek-certificate")
    assert res.returncode == EXIT_FAIL, res.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in res.stderr and "--port" in res.stderr


def test_dead_tcti_is_no_tpm_for_every_device_command() -> None:
    for command in (["info"], ["ek"], ["probe"]):
        res = run_cli(*command, "--tcti", "swtpm:host=127.0.0.1,port=1")
        assert res.returncode == EXIT_NO_TPM, (command, res.stderr)


def test_closed_stdout_ends_quietly(tcti: str) -> None:
    """``tpm2-attest info | head -1``: the reader is gone before we print; no traceback, no
    "Broken pipe", no "Exception ignored" at interpreter exit."""
    for args in (["info", "--tcti", tcti], ["info", "--tcti", tcti, "--json"]):
        r, w = os.pipe()
        os.close(r)  # the reader has already gone: every write fails with EPIPE
        try:
            res = subprocess.run([sys.executable, "-m", "tpm2_attest.cli", *args], stdout=w,
                                 stderr=subprocess.PIPE, text=True, timeout=60,
                                 env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
        finally:
            os.close(w)
        assert res.stderr == "", res.stderr
        assert res.returncode == EXIT_OK


def test_head_minus_one_through_a_shell(tcti: str) -> None:
    res = subprocess.run(f"{sys.executable} -m tpm2_attest.cli info --tcti '{tcti}' | head -1",
                         shell=True, capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    assert res.stdout.startswith("TPM:") and res.stderr == ""


def test_exit_codes_are_documented() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    for needle in ("0 success", "1 a check", "2 usage error", "3 no TPM"):
        assert needle in text, needle
    assert "Exit codes: 0 success" in build_parser().format_help().replace("\n", " ")


# -- help text ------------------------------------------------------------------------------------


def _commands() -> dict[str, argparse.ArgumentParser]:
    """Every command and sub-command (``policy learn``) with its parser."""
    out: dict[str, argparse.ArgumentParser] = {}

    def walk(prefix: str, parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    out[f"{prefix}{name}"] = sub
                    walk(f"{prefix}{name} ", sub)

    walk("", build_parser())
    return out


def test_every_option_of_every_command_has_help() -> None:
    missing = []
    for name, parser in _commands().items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):  # each sub-command has a help line
                missing += [f"{name} {c.dest}" for c in action._choices_actions if not c.help]
                continue
            if not (action.help or "").strip():
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert "policy learn" in _commands()  # sub-commands are walked too
    assert not missing, missing


VERIFIER_COMMANDS = {"make-credential", "verify-ak", "verify-quote", "eventlog", "serve",
                     "policy learn", "policy check"}


def test_verifier_commands_offer_no_tpm_options() -> None:
    commands = _commands()
    assert set(commands) >= VERIFIER_COMMANDS
    for name in VERIFIER_COMMANDS:
        options = {o for a in commands[name]._actions for o in a.option_strings}
        assert not options & {"--tcti", "--embedded"}, name
        assert "--tcti" not in commands[name].format_help()
    assert "--tcti" in commands["quote"].format_help()


@pytest.mark.parametrize("argv", [
    ["quote", "--json", "--ak", "x", "--pcrs", "sha256:24"],   # a value argparse refuses
    ["verify-quote", "--json", "--ak", "x"],                   # a required option missing
    ["make-credential", "--json", "--ek-public", "x", "--ak", "a", "--ak-name", "00", "--out", "o"],
    ["probe", "--json", "--no-such-option"],
    ["ek", "--json", "--kind", "dsa"],
])
def test_json_commands_report_parse_errors_as_json(argv: list[str]) -> None:
    """Under --json a command line that does not parse is the same JSON as any other usage
    error (stdout, exit 2), so a caller parsing stdout always gets a document."""
    res = run_cli(*argv)
    assert res.returncode == EXIT_USAGE, res.stderr
    out = json.loads(res.stdout)
    assert out["ok"] is False and out["exit_code"] == EXIT_USAGE and out["usage_error"]
    assert res.stderr == ""
    res = run_cli(*[a for a in argv if a != "--json"])
    assert res.returncode == EXIT_USAGE and res.stdout == "" and "usage:" in res.stderr
