"""The command line: the demo end to end, info, and the file-based device/verifier commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tpm2_attest.cli import EXIT_FAIL, EXIT_NO_TPM, main
from tpm2_attest.evidence import AkBlob, Quote


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tpm2_attest.cli", *args], capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})


def test_demo_json_against_swtpm(swtpm: Any, capsys: pytest.CaptureFixture[str]) -> None:
    root = swtpm.ca_root_path
    inter = swtpm.ca_intermediate_path
    rc = main(["demo", "--tcti", swtpm.tcti, "--json", "--ek-root", str(root), "--ek-intermediate", str(inter)])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0, out
    assert out["ok"] is True
    names = [s["name"] for s in out["steps"]]
    assert len(names) == 8
    assert all(s["status"] == "PASS" for s in out["steps"]), out["steps"]
    quote_step = out["steps"][5]
    assert quote_step["tpm_commands"] >= 3 and "TPM2_Quote" in quote_step["commands"]


def test_demo_rsa_human_output(swtpm: Any, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["demo", "--tcti", swtpm.tcti, "--algorithm", "rsa"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.count("[PASS]") == 7 and "[SKIP] Verify the EK certificate chain" in out
    assert "OK: 8 steps" in out


def test_demo_embedded_when_no_tpm() -> None:
    res = run_cli("demo", "--embedded", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["ok"] and out["tpm"]["source"] == "embedded"
    assert out["steps"][1]["status"] == "PASS"  # the embedded swtpm's CA is used for the chain


def test_explicit_dead_tcti_is_an_error_not_a_fallback() -> None:
    res = run_cli("info", "--tcti", "swtpm:host=127.0.0.1,port=1")
    assert res.returncode == EXIT_NO_TPM
    assert "TPM_NOT_FOUND" in res.stderr and "embedded" not in res.stdout


def test_info_json(swtpm: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--tcti", swtpm.tcti, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["manufacturer"] == "IBM" and "sha256" in out["pcrs"]
    assert len(out["pcrs"]["sha256"]) == 24


def test_file_flow(swtpm: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ak = tmp_path / "ak.blob"
    q = tmp_path / "quote.json"
    nonce = "00" * 16
    assert main(["provision-ak", "--tcti", swtpm.tcti, "--out", str(ak), "--nonce", "ab" * 8]) == 0
    assert AkBlob.from_bytes(ak.read_bytes()).format == "TPW1"
    assert main(["verify-ak", "--ak", str(ak), "--nonce", "ab" * 8]) == 0
    assert main(["verify-ak", "--ak", str(ak), "--nonce", "cd" * 8]) == EXIT_FAIL
    assert main(["quote", "--tcti", swtpm.tcti, "--ak", str(ak), "--pcrs", "0-3,16", "--nonce", nonce,
                 "--out", str(q)]) == 0
    assert sorted(Quote.from_json(q.read_bytes()).pcrs["sha256"]) == [0, 1, 2, 3, 16]
    assert main(["verify-quote", "--ak", str(ak), "--quote", str(q), "--nonce", nonce]) == 0
    assert main(["verify-quote", "--ak", str(ak), "--quote", str(q), "--nonce", "11" * 16]) == EXIT_FAIL
    ekpub = tmp_path / "ek.pub"
    assert main(["ek", "--tcti", swtpm.tcti, "--out-public", str(ekpub)]) == 0
    ch = tmp_path / "challenge.json"
    sec = tmp_path / "secret"
    assert main(["make-credential", "--ek-public", str(ekpub), "--ak", str(ak), "--out", str(ch),
                 "--secret-out", str(sec)]) == 0
    out = tmp_path / "got"
    assert main(["activate", "--tcti", swtpm.tcti, "--ak", str(ak), "--challenge", str(ch),
                 "--out", str(out)]) == 0
    assert out.read_bytes() == sec.read_bytes()
    capsys.readouterr()


def test_bad_blob_exit_code(swtpm: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"TPW1\x00")
    assert main(["quote", "--tcti", swtpm.tcti, "--ak", str(bad)]) == EXIT_FAIL
    assert "BAD_BLOB" in capsys.readouterr().err


def test_version() -> None:
    from tpm2_attest import __version__

    res = run_cli("--version")
    assert res.returncode == 0 and __version__ in res.stdout


def test_the_command_table_names_each_commands_topic() -> None:
    """cli.COMMANDS lets a command build only its topic's parser: it must list every command of
    every topic (but `completion`, which describes the whole parser) under the right topic."""
    import argparse

    from tpm2_attest import cli

    seen: dict[str, str] = {}
    for name in cli.TOPICS:
        p = argparse.ArgumentParser()
        cli.topic(name).add_parser(p.add_subparsers())
        for action in p._subparsers._group_actions:  # type: ignore[union-attr]
            for command in action.choices:
                seen[command] = name
    seen.pop("completion")
    assert seen == cli.COMMANDS


def test_one_command_builds_only_its_topic(capsys: Any) -> None:
    from tpm2_attest import cli

    only = cli.build_parser("eventlog")
    sub = only._subparsers._group_actions[0]  # type: ignore[union-attr]
    assert set(sub.choices) == {"eventlog"}
    whole = cli.build_parser()
    assert set(whole._subparsers._group_actions[0].choices) >= set(cli.COMMANDS) | {"completion"}  # type: ignore[union-attr]
    with pytest.raises(SystemExit):  # --help of the program still lists every command
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert all(command in out for command in cli.COMMANDS)
