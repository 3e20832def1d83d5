"""The ``eventlog`` CLI sub-command and log retrieval (securityfs / TBS)."""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

import eventlog_synth as synth
from tpm2_attest.backends import eventlog_source as retrieve
from tpm2_attest.cli import eventlog as cli
from tpm2_attest.errors import ErrorCode, TpmError
from tpm2_attest.eventlog import parse_event_log

LOGS = synth.LOGS_DIR
REAL = sorted(LOGS.glob("*"))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_text_output_for_real_logs(capsys: pytest.CaptureFixture[str], path: Path) -> None:
    rc, out, _ = run(capsys, str(path), "--replay")
    assert rc == 0
    log = parse_event_log(path.read_bytes())
    assert out.count("- EventNum:") == len(log)
    assert "pcrs:" in out
    for bank in log.banks:
        for pcr, value in log.replay(bank).items():
            assert f"    {pcr:<3}: 0x{value.hex()}\n" in out


@pytest.mark.skipif(shutil.which("tpm2_eventlog") is None, reason="tpm2_eventlog not installed")
@pytest.mark.parametrize("path", [p for p in REAL if p.name != "short_no_action_eventlog"],
                         ids=lambda p: p.name)
def test_pcrs_section_is_identical_to_tpm2_eventlog(capsys: pytest.CaptureFixture[str],
                                                    path: Path) -> None:
    ref = subprocess.run(["tpm2_eventlog", str(path)], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    _, out, _ = run(capsys, str(path), "--replay")
    assert out[out.index("pcrs:\n"):] == ref[ref.index("pcrs:\n"):]


def test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    path = LOGS / "sb_cert_eventlog"
    rc, out, _ = run(capsys, str(path), "--json", "--replay", "--secure-boot", "--bank", "sha256")
    assert rc == 0
    doc = json.loads(out)
    assert doc["format"] == "crypto-agile" and len(doc["events"]) == 15
    assert list(doc["pcrs"]) == ["sha256"]
    assert doc["pcrs"]["sha256"]["7"] == parse_event_log(path.read_bytes()).replay()[7].hex()
    assert doc["secure_boot"]["enabled"] is True


def test_secure_boot_text_and_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, out, _ = run(capsys, str(LOGS / "sb_cert_eventlog"), "--secure-boot")
    assert rc == 0 and "secure_boot:\n  bank: \"sha256\"\n  enabled: true" in out
    s = synth.secure_boot_log()
    s.builder.event(7, synth.EV_SEPARATOR, b"\0\0\0\0")
    p = tmp_path / "dup.bin"
    p.write_bytes(s.build())
    rc, out, _ = run(capsys, str(p), "--json", "--secure-boot")
    assert rc == 0 and "second separator" in json.loads(out)["secure_boot"]["error"]


def test_malformed_and_missing_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.bin"
    bad.write_bytes((LOGS / "crypto_agile_eventlog").read_bytes()[:-5])
    rc, out, err = run(capsys, str(bad))
    assert rc == 1 and out == "" and "malformed event log" in err and "offset" in err
    rc, _, err = run(capsys, str(tmp_path / "nope"))
    assert rc == 2 and "nope" in err


def test_lenient_flag(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    b = synth.LogBuilder().event(7, synth.EV_EFI_VARIABLE_DRIVER_CONFIG,
                                 synth.uefi_variable(synth.EFI_GLOBAL_VARIABLE, "X", b"",
                                                     data_len=99))
    p = tmp_path / "l.bin"
    p.write_bytes(b.build())
    assert run(capsys, str(p))[0] == 1
    rc, out, _ = run(capsys, str(p), "--lenient")
    assert rc == 0 and 'kind: "malformed"' in out


def test_untrusted_text_is_escaped(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    b = synth.LogBuilder().event(5, synth.EV_EFI_ACTION, b"\x1b[2J\x1b]0;pwned\x07\r\nEventNum: 9")
    p = tmp_path / "esc.bin"
    p.write_bytes(b.build())
    for flags in ((), ("--json",)):
        rc, out, _ = run(capsys, str(p), *flags)
        assert rc == 0 and "\x1b" not in out and "\x07" not in out and "\r" not in out


def test_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    raw = (LOGS / "crypto_agile_eventlog").read_bytes()
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(raw)))
    rc, out, _ = run(capsys, "-", "--json")
    assert rc == 0 and len(json.loads(out)["events"]) == 27


def test_add_parser_wires_into_a_main_cli(capsys: pytest.CaptureFixture[str]) -> None:
    main = argparse.ArgumentParser(prog="tpm2-attest")
    sub = main.add_subparsers(dest="command", required=True)
    p = cli.add_parser(sub)
    assert p.prog.endswith("eventlog")
    args = main.parse_args(["eventlog", str(LOGS / "crypto_agile_eventlog"), "--replay"])
    assert args.func is cli.run and cli.run(args) == 0
    assert "pcrs:" in capsys.readouterr().out


def test_module_entry_point() -> None:
    proc = subprocess.run([sys.executable, "-m", "tpm2_attest.eventlog",
                           str(LOGS / "crypto_agile_eventlog"), "--replay"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and "sha256:" in proc.stdout


# --- retrieval -------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "index"), [
    (None, 0), ("/dev/tpm0", 0), ("/dev/tpmrm1", 1), ("device:/dev/tpmrm2", 2),
    ("device:/dev/tpm3", 3), ("device:", 0),
])
def test_tpm_index(path: str | None, index: int) -> None:
    assert retrieve.tpm_index(path) == index


def test_tpm_index_follows_symlinks(tmp_path: Path) -> None:
    link = tmp_path / "mytpm"
    link.symlink_to(tmp_path / "tpmrm5")
    assert retrieve.tpm_index(str(link)) == 5


@pytest.mark.parametrize(("path", "code"), [
    ("swtpm:host=127.0.0.1,port=2321", ErrorCode.UNSUPPORTED),
    ("mssim:", ErrorCode.UNSUPPORTED),
    ("/dev/sda", ErrorCode.INVALID_ARGUMENT),
    ("weird:thing", ErrorCode.INVALID_ARGUMENT),
])
def test_tpm_index_errors(path: str, code: ErrorCode) -> None:
    with pytest.raises(TpmError) as exc:
        retrieve.tpm_index(path)
    assert exc.value.code is code


@pytest.fixture
def securityfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(retrieve, "SECURITYFS", tmp_path)
    monkeypatch.setattr(retrieve.sys, "platform", "linux")
    return tmp_path


def test_read_event_log_linux(securityfs: Path) -> None:
    raw = (LOGS / "sb_cert_eventlog").read_bytes()
    (securityfs / "tpm1").mkdir()
    (securityfs / "tpm1" / "binary_bios_measurements").write_bytes(raw)
    assert retrieve.read_event_log("/dev/tpmrm1") == raw
    assert retrieve.read_event_log("device:/dev/tpm1") == raw


def test_read_event_log_absent(securityfs: Path) -> None:
    with pytest.raises(TpmError) as exc:
        retrieve.read_event_log("/dev/tpm0")
    assert exc.value.code is ErrorCode.TPM_NOT_FOUND
    assert exc.value.hint and "securityfs" in exc.value.hint
    (securityfs / "tpm0").mkdir()
    (securityfs / "tpm0" / "binary_bios_measurements").write_bytes(b"")
    with pytest.raises(TpmError) as exc:
        retrieve.read_event_log(None)
    assert exc.value.code is ErrorCode.TPM_NOT_FOUND and "empty" in str(exc.value)


def test_read_event_log_unreadable(securityfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (securityfs / "tpm0").mkdir()
    (securityfs / "tpm0" / "binary_bios_measurements").write_bytes(b"x")

    def denied(*_a: object, **_k: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(retrieve, "open", denied, raising=False)
    with pytest.raises(TpmError) as exc:
        retrieve.read_event_log("/dev/tpmrm0")
    assert exc.value.code is ErrorCode.REQUIRES_ELEVATION
    assert exc.value.hint and "root" in exc.value.hint and "securityfs" in exc.value.hint


def test_read_event_log_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = (LOGS / "crypto_agile_eventlog").read_bytes()
    fake = types.ModuleType("tpm2_attest.transport.tbs")
    fake.get_tcg_log = lambda: raw  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tpm2_attest.transport.tbs", fake)
    monkeypatch.setattr(retrieve.sys, "platform", "win32")
    assert retrieve.read_event_log(None) == raw
    fake.get_tcg_log = lambda: b""  # type: ignore[attr-defined]
    with pytest.raises(TpmError) as exc:
        retrieve.read_event_log(None)
    assert exc.value.code is ErrorCode.TPM_NOT_FOUND


def test_errors_under_json_are_json_like_every_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from tpm2_attest.cli import main as tpm2_attest

    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"abc")
    assert tpm2_attest(["eventlog", "--json", str(bad)]) == 1
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["ok"] is False and doc["exit_code"] == 1 and "malformed event log" in doc["error"]["message"]
    assert err == ""
    assert tpm2_attest(["eventlog", "--json", str(tmp_path / "nope")]) == 2
    assert json.loads(capsys.readouterr().out)["usage_error"].endswith("No such file or directory")
    assert tpm2_attest(["eventlog", "--state", "--bank", "md5", str(LOGS / "crypto_agile_eventlog")]) == 2
    assert "--bank" in capsys.readouterr().err
