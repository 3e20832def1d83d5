"""Shell completion: the generated script, run by a real bash (and zsh through bashcompinit)."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tpm2_attest.cli import build_parser, main
from tpm2_attest.cli.completion import bash_script, zsh_script


def script(shell: str) -> str:
    res = subprocess.run([sys.executable, "-m", "tpm2_attest.cli", "completion", shell],
                         capture_output=True, text=True, timeout=60, check=True)
    return res.stdout


def bash_complete(tmp_path: Path, *words: str) -> list[str]:
    """COMPREPLY of the script for the command line ``words`` (the last is being typed)."""
    (tmp_path / "c.bash").write_text(script("bash"))
    prog = ('source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); _tpm2_attest; '
            'printf "%s\\n" "${COMPREPLY[@]}"')
    res = subprocess.run(["bash", "--norc", "-c", prog, "bash", str(tmp_path / "c.bash"), *words],
                         capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    return [w for w in res.stdout.splitlines() if w]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_commands_options_choices_and_files(tmp_path: Path) -> None:
    (tmp_path / "ak.blob").write_bytes(b"x")
    (tmp_path / "state").mkdir()
    assert bash_complete(tmp_path, "tpm2-attest", "ver") == ["verify-ak", "verify-quote"]
    assert "completion" in bash_complete(tmp_path, "tpm2-attest", "")
    assert bash_complete(tmp_path, "tpm2-attest", "ek", "--k") == ["--kind"]
    assert bash_complete(tmp_path, "tpm2-attest", "ek", "--kind", "") == ["rsa", "ecc", "ecc384"]
    assert bash_complete(tmp_path, "tpm2-attest", "ek", "--kind=ecc") == ["ecc", "ecc384"]
    assert bash_complete(tmp_path, "tpm2-attest", "probe", "a") == ["all", "ak", "activate"]
    assert bash_complete(tmp_path, "tpm2-attest", "quote", "--ak", "ak") == ["ak.blob"]
    assert bash_complete(tmp_path, "tpm2-attest", "quote", "--bank", "sha2") == ["sha256"]
    assert bash_complete(tmp_path, "tpm2-attest", "probe", "--emulator-state", "") == ["state"]
    assert bash_complete(tmp_path, "tpm2-attest", "info", "--tcti", "sw") == ["swtpm:host=127.0.0.1,port=2321"]
    assert bash_complete(tmp_path, "tpm2-attest", "verify-quote", "--pcrs") == ["--pcrs-file"]
    assert bash_complete(tmp_path, "tpm2-attest", "completion", "") == ["bash", "zsh"]
    assert bash_complete(tmp_path, "tpm2-attest", "eventlog", "a") == ["ak.blob"]
    # verifier commands offer no TPM options
    assert "--tcti" not in bash_complete(tmp_path, "tpm2-attest", "verify-quote", "--")


def test_every_option_is_in_the_script() -> None:
    text = bash_script(build_parser())
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"{name}) opts="))
        for action in command._actions:
            for opt in action.option_strings:
                assert opt in line.split('"')[1].split(), (name, opt)


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed (./run setup installs it)")
def test_zsh_loads_it_through_bashcompinit(tmp_path: Path) -> None:
    """zsh registers the completion and, under the sh emulation bashcompinit calls it with,
    the function offers the same candidates (zsh's own matching then filters them)."""
    (tmp_path / "c.zsh").write_text(script("zsh"))
    prog = ('source "$1"; print -r -- "reg:$_comps[tpm2-attest]"; '
            'emulate sh -c \'COMP_WORDS=(tpm2-attest ek --kind ""); COMP_CWORD=3; _tpm2_attest; '
            'echo "kind:${COMPREPLY[*]}"\'; '
            'emulate sh -c \'COMP_WORDS=(tpm2-attest probe --j); COMP_CWORD=2; _tpm2_attest; '
            'echo "opts:${COMPREPLY[*]}"\'')
    res = subprocess.run(["zsh", "-f", "-c", prog, "zsh", str(tmp_path / "c.zsh")],
                         capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert "reg:_bash_complete -F _tpm2_attest" in res.stdout
    assert "kind:rsa ecc ecc384" in res.stdout
    assert "--json" in res.stdout.split("opts:")[1]


def test_completion_command_prints_the_generated_script(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "zsh"]) == 0
    out = capsys.readouterr().out
    assert out == zsh_script(build_parser()) and out.startswith("#compdef tpm2-attest")
