"""``tpm2-attest probe``: every step against swtpm, each failure class's exit code and report,
the --json schema, the PCP emulator's privilege model, and the progress hook."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tpm2_attest import AkBlob, ErrorCode, Tpm, TpmError
from tpm2_attest.cli import main
from tpm2_attest.cli.probe import WINDOWS_RECIPE
from tpm2_attest.probe import (
    CHOICES,
    HINTS,
    STEPS,
    ProbeOptions,
    hint_for,
    run_probe,
)
from tpm2_attest.progress import Progress, terminal_progress

STEP_KEYS = {"name", "status", "seconds", "tpm_commands", "commands", "detail"}
ERROR_KEYS = {"code", "message", "command", "tpm_rc", "tpm_rc_name", "hresult", "hresult_name", "hint"}


def probe_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    rc = main(["probe", *args, "--json"])
    out = capsys.readouterr().out
    return rc, json.loads(out)


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in report["steps"]}


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("TPM2_ATTEST_TCTI", "TPM2TOOLS_TCTI")}


# -- passing runs -------------------------------------------------------------------------------


def test_probe_all_passes_against_swtpm(swtpm: Any, capsys: pytest.CaptureFixture[str]) -> None:
    rc, report = probe_json(capsys, "--tcti", swtpm.tcti)
    assert rc == 0, report
    assert set(report) == {"ok", "exit_code", "version", "target", "tpm", "steps", "summary"}
    assert report["ok"] is True and report["exit_code"] == 0
    assert report["target"] == {"tcti": swtpm.tcti, "source": "argument", "emulated": None}
    assert report["tpm"]["manufacturer"] == "IBM"
    steps = by_name(report)
    assert list(steps) == ["open", *STEPS]
    for st in report["steps"]:
        assert set(st) >= STEP_KEYS, st
        assert isinstance(st["seconds"], float) and st["seconds"] >= 0
        assert st["tpm_commands"] == sum(st["commands"].values())
    assert all(steps[n]["status"] == "PASS" for n in ("open", *STEPS[:-1])), report["steps"]
    assert steps["pcp-capabilities"]["status"] == "SKIP"
    assert "Windows-only" in steps["pcp-capabilities"]["detail"]
    assert "TPM2_Quote" in steps["quote"]["commands"]
    assert "TPM2_ActivateCredential" in steps["activate"]["commands"]
    assert report["summary"]["passed"] == 8 and report["summary"]["skipped"] == 1
    assert report["summary"]["failed"] == 0


def test_human_output_and_single_steps(swtpm: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "--tcti", swtpm.tcti, "--algorithm", "rsa"]) == 0
    out = capsys.readouterr().out
    assert out.count("[PASS]") == 8 and out.count("[SKIP]") == 1
    assert "[PASS] quote" in out and " ms)" in out
    assert "OK: 8 passed, 0 failed, 1 skipped" in out
    for step in ("info", "pcrs", "ek", "quote", "activate"):
        rc, report = probe_json(capsys, step, "--tcti", swtpm.tcti)
        assert rc == 0, report
        assert [s["name"] for s in report["steps"]] == ["open", step]


def test_extend_checks_the_new_value_and_force_for_boot_pcrs(fresh_swtpm: Any,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    rc, report = probe_json(capsys, "extend", "--tcti", fresh_swtpm.tcti, "--pcr", "23")
    assert rc == 0 and "PCR 23 extended in sha1, sha256" in by_name(report)["extend"]["detail"]
    rc, report = probe_json(capsys, "extend", "--tcti", fresh_swtpm.tcti, "--pcr", "7", "--force")
    assert rc == 0, report


def test_save_blob_then_quote_with_it(swtpm: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blob = tmp_path / "ak.blob"
    rc, report = probe_json(capsys, "ak", "--tcti", swtpm.tcti, "--save-blob", str(blob))
    assert rc == 0, report
    assert AkBlob.from_bytes(blob.read_bytes()).format == "TPW1"
    assert stat.S_IMODE(blob.stat().st_mode) == 0o644  # a locator, not a secret
    rc, report = probe_json(capsys, "--tcti", swtpm.tcti, "--blob", str(blob))
    assert rc == 0, report
    assert "loaded a TPW1 blob" in by_name(report)["ak"]["detail"]


def test_embedded_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    rc, report = probe_json(capsys, "info", "--embedded")
    assert rc == 0 and report["target"]["source"] == "embedded"


# -- the Windows privilege model over the PCP emulator -----------------------------------------


def test_emulated_standard_user_all_skips_what_needs_elevation(
        swtpm: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, report = probe_json(capsys, "--tcti", swtpm.tcti, "--as-emulated", "standard",
                            "--emulator-state", str(tmp_path / "pcp"))
    assert rc == 0, report
    steps = by_name(report)
    assert report["target"]["emulated"] == "standard"
    assert steps["ak"]["status"] == "PASS" and "PCP1" in steps["ak"]["detail"]
    assert steps["quote"]["status"] == "PASS"
    for name, hresult in (("extend", "TPM_E_COMMAND_BLOCKED"), ("activate", "NTE_DEVICE_NOT_READY")):
        assert steps[name]["status"] == "SKIP", steps[name]
        assert steps[name]["error"]["code"] == "REQUIRES_ELEVATION"
        assert steps[name]["error"]["hresult_name"] == hresult
    caps = steps["pcp-capabilities"]
    assert caps["status"] == "PASS"
    assert caps["data"]["security_descr_support"] is True
    assert caps["data"]["ek_certificate_readable"] is False
    assert caps["data"]["provider_version"]


def test_blocked_extend_as_standard_exits_1(swtpm: Any, capsys: pytest.CaptureFixture[str]) -> None:
    rc, report = probe_json(capsys, "extend", "--tcti", swtpm.tcti, "--as-emulated", "standard")
    assert rc == 1 and report["exit_code"] == 1 and report["ok"] is False
    step = by_name(report)["extend"]
    assert step["status"] == "FAIL"
    assert set(step["error"]) == ERROR_KEYS
    assert step["error"]["code"] == "REQUIRES_ELEVATION"
    assert step["error"]["hresult"] == 0x80280400
    assert step["error"]["hresult_name"] == "TPM_E_COMMAND_BLOCKED"
    assert "SYSTEM" in step["hint"]
    # The human form shows the same: code, hresult name, hint.
    assert main(["probe", "extend", "--tcti", swtpm.tcti, "--as-emulated", "standard"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] extend" in out and "code REQUIRES_ELEVATION" in out
    assert "hresult TPM_E_COMMAND_BLOCKED (0x80280400)" in out and "hint: run from an elevated" in out


def test_system_provisions_standard_quotes(swtpm: Any, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    state, blob = tmp_path / "pcp", tmp_path / "ak.blob"
    common = ["--tcti", swtpm.tcti, "--emulator-state", str(state)]
    rc, report = probe_json(capsys, "ak", *common, "--as-emulated", "standard", "--scope", "machine",
                            "--key-name", "acme-probe-ak")
    assert rc == 1 and by_name(report)["ak"]["error"]["code"] == "REQUIRES_ELEVATION"
    rc, report = probe_json(capsys, "ak", *common, "--as-emulated", "system", "--scope", "machine",
                            "--key-name", "acme-probe-ak", "--overwrite", "--save-blob", str(blob))
    assert rc == 0, report
    assert AkBlob.from_bytes(blob.read_bytes()).format == "PCP2"
    rc, report = probe_json(capsys, "quote", *common, "--as-emulated", "standard", "--blob", str(blob))
    assert rc == 0, report
    rc, report = probe_json(capsys, "activate", *common, "--as-emulated", "admin", "--blob", str(blob))
    assert rc == 0, report


def test_pcp_capabilities_without_security_descr_support(swtpm: Any, tmp_path: Path) -> None:
    with Tpm.open_pcp_emulator(swtpm.tcti, tmp_path, privilege="system",
                               security_descr_support=False) as tpm:
        report = run_probe(tpm, "pcp-capabilities")
        step = report.steps[0]
        assert step.status == "PASS" and step.data["security_descr_support"] is False
        assert "machine-scope (PCP2) AKs are unavailable" in step.detail
        report = run_probe(tpm, "pcp-capabilities", ProbeOptions(scope="machine", key_name="k"))
        assert report.steps[0].status == "FAIL" and report.exit_code == 1


# -- failure classes ----------------------------------------------------------------------------


def test_no_tpm_exits_3_and_never_starts_the_embedded_swtpm(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    if any(os.path.exists(p) for p in ("/dev/tpmrm0", "/dev/tpm0")):
        pytest.skip("this machine has a TPM device")
    from tpm2_attest import embedded as swtpm_mod

    def tripwire(self: Any) -> Any:
        raise AssertionError("probe started the embedded swtpm without --embedded")

    monkeypatch.setattr(swtpm_mod.EmbeddedSwtpm, "start", tripwire)
    rc, report = probe_json(capsys)
    assert rc == 3 and report["exit_code"] == 3 and report["ok"] is False
    (step,) = report["steps"]
    assert step["name"] == "open" and step["status"] == "FAIL"
    assert step["error"]["code"] == "TPM_NOT_FOUND" and "/dev/tpmrm0" in step["hint"]
    # The installed command, in a clean environment: same answer, nothing embedded.
    res = subprocess.run([sys.executable, "-m", "tpm2_attest.cli", "probe"], capture_output=True,
                         text=True, timeout=60, env=clean_env())
    assert res.returncode == 3, res.stdout + res.stderr
    assert "TPM_NOT_FOUND" in res.stdout and "embedded" not in res.stderr


def test_dead_tcti_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    rc, report = probe_json(capsys, "--tcti", "swtpm:host=127.0.0.1,port=1")
    assert rc == 3 and report["steps"][0]["error"]["code"] == "TPM_NOT_FOUND"


def test_bad_blob_exits_1(swtpm: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.blob"
    bad.write_bytes(b"PCP2\x00")
    rc, report = probe_json(capsys, "quote", "--tcti", swtpm.tcti, "--blob", str(bad))
    assert rc == 1
    step = by_name(report)["quote"]
    assert step["status"] == "FAIL" and step["error"]["code"] == "BAD_BLOB"
    assert step["hint"] == HINTS[ErrorCode.BAD_BLOB]


def test_tampered_blob_fails_verification(swtpm: Any, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    blob = tmp_path / "ak.blob"
    assert main(["probe", "ak", "--tcti", swtpm.tcti, "--save-blob", str(blob), "--json"]) == 0
    capsys.readouterr()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1  # the creation signature's last byte
    blob.write_bytes(bytes(data))
    rc, report = probe_json(capsys, "ak", "--tcti", swtpm.tcti, "--blob", str(blob))
    assert rc == 1
    step = by_name(report)["ak"]
    assert step["status"] == "FAIL" and step["error"]["reason"] == "BAD_SIGNATURE"
    assert "--blob" in step["hint"]


@pytest.mark.parametrize("args", [
    ["extend", "--pcr", "3"],                         # boot PCRs need --force
    ["extend", "--pcr", "24"],
    ["ak", "--scope", "machine"],                     # machine scope needs a key name
    ["quote", "--blob", "/nonexistent/ak.blob"],
    ["--blob", "x", "--save-blob", "y"],
    ["--as-emulated", "standard", "--tcti", "device:/dev/tpmrm0"],
    ["--tcti", "tabrmd"],
])
def test_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", *args]) == 2
    assert "tpm2-attest probe: error:" in capsys.readouterr().err
    rc, report = probe_json(capsys, *args)
    assert rc == 2 and report["exit_code"] == 2 and report["usage_error"]


def test_argparse_usage_error_exits_2() -> None:
    res = subprocess.run([sys.executable, "-m", "tpm2_attest.cli", "probe", "bogus"], capture_output=True,
                         text=True, timeout=60, env=clean_env())
    assert res.returncode == 2 and "invalid choice" in res.stderr


def test_help_prints_the_windows_system_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "help"]) == 0
    out = capsys.readouterr().out
    assert "/RU SYSTEM" in out and "schtasks /Run" in out and "--blob" in out
    assert "--scope machine" in out and "--save-blob" in out
    rc, report = probe_json(capsys, "help")
    assert rc == 0 and report["text"] == WINDOWS_RECIPE
    assert set(CHOICES) == {"all", "help", *STEPS}


def test_hints() -> None:
    assert set(HINTS) == set(ErrorCode)
    linux = TpmError("permission denied opening /dev/tpmrm0", code=ErrorCode.REQUIRES_ELEVATION)
    assert "tss" in hint_for(linux)
    windows = TpmError(code=ErrorCode.REQUIRES_ELEVATION, hresult=0x80280400)
    assert "SYSTEM" in hint_for(windows)
    own = TpmError(code=ErrorCode.TPM_ERROR, hint="use PCP 16")
    assert hint_for(own) == "use PCP 16"


# -- progress -----------------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    """A text stream that says it is a terminal (what the hook draws on is the test's subject)."""

    def isatty(self) -> bool:
        return True


def test_progress_draws_during_key_creation_on_a_terminal(swtpm: Any) -> None:
    term = FakeTerminal()
    progress = Progress(term, delay=0.0)
    try:
        with Tpm.open(swtpm.tcti, on_command=progress) as tpm:
            tpm.provision_ak(algorithm="rsa")
    finally:
        progress.close()
    text = term.getvalue()
    assert "creating a key in the TPM (TPM2_Create)" in text
    assert text.endswith("\r\x1b[K")  # the line is erased once the key exists


def test_progress_is_silent_when_piped(swtpm: Any) -> None:
    assert terminal_progress(io.StringIO()) is None
    pipe = io.StringIO()
    progress = Progress(pipe, delay=0.0)
    assert not progress.enabled
    with Tpm.open(swtpm.tcti, on_command=progress) as tpm:
        tpm.provision_ak()
    with progress.activity("creating"):
        pass
    progress.close()
    assert pipe.getvalue() == ""


def test_progress_activity_label() -> None:
    term = FakeTerminal()
    progress = Progress(term, delay=0.0)
    import time

    with progress.activity("creating the attestation key"):
        time.sleep(0.25)
    progress.close()
    assert "creating the attestation key..." in term.getvalue()
    assert term.getvalue().endswith("\r\x1b[K")
