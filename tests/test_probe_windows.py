"""``probe windows-report`` over PcpEmulator (keys in swtpm): the checks as a standard user and
as SYSTEM, the hand-over of a machine key between them, each assumption made to fail through an
emulator knob, and the promise that no key the report creates stays behind."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tpm2_attest import Tpm
from tpm2_attest.backends import ncrypt_api as api
from tpm2_attest.backends.pcp import PcpBackend
from tpm2_attest.backends.pcp_emulator import EMULATED_USER_SID, PcpEmulator, open_emulated_backend
from tpm2_attest.cli import main
from tpm2_attest.errors import NTE_DEVICE_NOT_READY
from tpm2_attest.probe_windows import (
    REPORT_KEY_PREFIX,
    SCHEMA,
    STATUSES,
    ReportOptions,
    WindowsReport,
    WindowsReporter,
    flag_names,
    run_windows_report,
    write_report,
)
from tpm2_attest.transport import tbs
from tpm2_attest.verify import Reason, VerificationError

ELEVATED_CHECKS = ["caller", "provider", "security-descr-support", "ekpub", "ecc-ekpub",
                   "ek-certificates",
                   "ek-chain", "idbinding", "quote-user-key", "idactivation", "dacl-before-finalize",
                   "quote-machine-key", "machine-key-standard-user", "tbs-event-log",
                   "hresults-seen", "elevation-detection"]
STANDARD_CHECKS = [c if c != "dacl-before-finalize" else "machine-key-refused"
                   for c in ELEVATED_CHECKS if c != "quote-machine-key"]


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "pcp-state"


@contextmanager
def backend(swtpm: Any, state: Path, privilege: str, **knobs: Any) -> Iterator[PcpBackend]:
    be = open_emulated_backend(swtpm.tcti, state, privilege, **knobs)  # type: ignore[arg-type]
    try:
        yield be
    finally:
        be.close()


def report_for(swtpm: Any, state: Path, privilege: str, options: ReportOptions | None = None,
               **knobs: Any) -> WindowsReport:
    with backend(swtpm, state, privilege, **knobs) as be:
        report = run_windows_report(be, options)
        emulator = be.ncrypt
        assert isinstance(emulator, PcpEmulator)
        assert emulator.open_handles == 0  # every provider and key handle freed
    return report


def key_files(state: Path) -> list[Path]:
    return sorted(state.rglob("*.json"))


def statuses(report: WindowsReport) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


def calls(report: WindowsReport, check: str, api_name: str) -> list[dict[str, Any]]:
    return [c.to_dict() for c in report.check(check).calls if c.api == api_name]


# -- the two runs of the recipe, everything as the references describe it ---------------------


def test_system_run_confirms_every_assumption_and_leaves_no_key(swtpm: Any, state: Path) -> None:
    report = report_for(swtpm, state, "system")
    assert [c.name for c in report.checks] == ELEVATED_CHECKS
    assert statuses(report) == {
        "caller": "OBSERVED", "provider": "OBSERVED", "security-descr-support": "CONFIRMED",
        "ekpub": "CONFIRMED", "ecc-ekpub": "CONFIRMED", "ek-certificates": "CONFIRMED", "ek-chain": "OBSERVED", "idbinding": "CONFIRMED",
        "quote-user-key": "CONFIRMED", "idactivation": "CONFIRMED",
        "dacl-before-finalize": "CONFIRMED", "quote-machine-key": "CONFIRMED",
        "machine-key-standard-user": "SKIPPED", "tbs-event-log": "OBSERVED",
        "hresults-seen": "OBSERVED", "elevation-detection": "CONFIRMED"}
    assert report.ok and report.exit_code == 0
    assert report.caller == {"token_is_elevated": True, "user_sid": "S-1-5-18", "is_system": True,
                             "elevated": True}
    # Two keys made (a user key and a machine key), both deleted, none left; nothing on disk.
    assert [k["scope"] for k in report.keys_created] == ["user", "machine"]
    assert sorted(map(str, report.keys_deleted)) == sorted(map(str, report.keys_created))
    assert report.keys_left == [] and key_files(state) == []
    assert all(str(k["name"]).startswith(REPORT_KEY_PREFIX) for k in report.keys_created)
    # Each step records the API, its flags, the HRESULT and the outcome.
    sd_set = [c for c in calls(report, "dacl-before-finalize", "NCryptSetProperty")
              if c["target"].startswith("Security Descr ")]
    assert sd_set and sd_set[0]["flag_names"] == ["DACL_SECURITY_INFORMATION"]
    assert sd_set[0]["hresult"] == "0x00000000" and sd_set[0]["outcome"] == "ok"
    create = calls(report, "dacl-before-finalize", "NCryptCreatePersistedKey")
    assert create[0]["flag_names"] == ["NCRYPT_MACHINE_KEY_FLAG"]
    act = [c for c in calls(report, "idactivation", "NCryptGetProperty")
           if "PCP_TPM12_IDACTIVATION" in c["target"]]
    assert act[0]["target"].endswith("(NULL-buffer size query, then the read)")
    assert report.check("ek-certificates").data["ek_certificate_in"] == ["PCP_RSA_EKNVCERT",
                                                                         "PCP_EKNVCERT"]
    tbs_call = report.check("tbs-event-log").calls[0].to_dict()
    assert tbs_call["api"] == "Tbsi_Get_TCG_Log" and tbs_call["hresult_name"] == "TBS_E_INTERNAL_ERROR"


def test_standard_run_confirms_the_refusals(swtpm: Any, state: Path) -> None:
    report = report_for(swtpm, state, "standard")
    assert [c.name for c in report.checks] == STANDARD_CHECKS
    got = statuses(report)
    assert got["caller"] == "OBSERVED" and report.caller is not None
    assert report.caller["user_sid"] == EMULATED_USER_SID and report.caller["elevated"] is False
    for name in ("security-descr-support", "ekpub", "ek-certificates", "idbinding",
                 "quote-user-key", "idactivation", "machine-key-refused", "elevation-detection"):
        assert got[name] == "CONFIRMED", (name, report.check(name).detail)
    assert got["machine-key-standard-user"] == "SKIPPED"
    assert "--handoff" in report.check("machine-key-standard-user").detail
    # Which HRESULTs a standard user gets, and at which call.
    refused = report.check("machine-key-refused")
    assert refused.data["refused_at"] == "NCryptFinalizeKey"
    finalize = calls(report, "machine-key-refused", "NCryptFinalizeKey")
    assert finalize[0]["hresult_name"] == "NTE_PERM"
    activation = report.check("idactivation").data["error"]
    assert isinstance(activation, dict)
    assert activation["hresult"] == NTE_DEVICE_NOT_READY and activation["command"] == "NCryptGetProperty"
    seen = report.check("hresults-seen").data["failures"]
    assert isinstance(seen, list)
    assert {(c["api"], c["hresult_name"]) for c in seen} >= {
        ("NCryptFinalizeKey", "NTE_PERM"), ("NCryptGetProperty", "NTE_DEVICE_NOT_READY"),
        ("NCryptGetProperty+CertEnumCertificatesInStore", "NTE_PERM")}
    assert report.ok and report.keys_left == [] and key_files(state) == []


def test_machine_key_handoff_between_system_and_a_standard_user(swtpm: Any, state: Path,
                                                                tmp_path: Path) -> None:
    handoff = tmp_path / "handoff.blob"
    first = report_for(swtpm, state, "system", ReportOptions(handoff=handoff))
    assert first.ok and first.handoff is not None and handoff.is_file()
    kept = first.handoff["key_name"]
    assert first.keys_left == [{"name": kept, "scope": "machine", "handoff": True}]
    assert stat.S_IMODE(handoff.stat().st_mode) == 0o644 and len(key_files(state)) == 1

    second = report_for(swtpm, state, "standard", ReportOptions(handoff=handoff))
    assert second.check("machine-key-standard-user").status == "CONFIRMED"
    assert second.check("machine-key-standard-user").data["key_name"] == kept
    assert second.ok and second.keys_left == []

    third = report_for(swtpm, state, "system", ReportOptions(cleanup_handoff=handoff))
    assert [c.name for c in third.checks] == ["caller", "cleanup-handoff"]
    assert third.check("cleanup-handoff").status == "CONFIRMED"
    assert third.keys_deleted == [{"name": kept, "scope": "machine"}]
    assert not handoff.exists() and key_files(state) == []


def test_cleanup_refuses_keys_the_report_did_not_make(swtpm: Any, state: Path,
                                                      tmp_path: Path) -> None:
    with Tpm.open_pcp_emulator(swtpm.tcti, state, privilege="system") as tpm:
        blob = tpm.provision_ak(key_name="acme-device-ak", scope="machine")
    path = tmp_path / "app.blob"
    path.write_bytes(blob.to_bytes())
    report = report_for(swtpm, state, "system", ReportOptions(cleanup_handoff=path))
    assert report.check("cleanup-handoff").status == "ERROR" and not report.ok
    assert path.exists() and len(key_files(state)) == 1  # the application's key is untouched


# -- each assumption made to fail ----------------------------------------------------------------


@pytest.mark.parametrize(("privilege", "knobs", "check", "status", "breaks"), [
    ("system", {"security_descr_support": False}, "security-descr-support", "DIFFERS", True),
    ("system", {"dacl_before_finalize": False}, "dacl-before-finalize", "DIFFERS", True),
    ("system", {"idactivation_size_query": False}, "idactivation", "DIFFERS", True),
    ("admin", {"activation_device_not_ready": True}, "idactivation", "DIFFERS", True),
    ("system", {"idbinding_trailing": b"\x00pad"}, "idbinding", "DIFFERS", False),
    ("standard", {"ekpub_trailing": b"\x01\x02"}, "ekpub", "DIFFERS", False),
    ("standard", {"ecc_ekpub": None}, "ecc-ekpub", "OBSERVED", False),
    ("standard", {"ecc_ekpub": "ECS3"}, "ecc-ekpub", "CONFIRMED", False),
    ("system", {"ek_nv_certificates": False}, "ek-certificates", "DIFFERS", False),
    ("system", {"event_log_result": tbs.TBS_E_IOERROR}, "tbs-event-log", "DIFFERS", True),
    ("system", {"event_log": b"\x00" * 32}, "tbs-event-log", "CONFIRMED", False),
    ("admin", {"token": api.ProcessToken(False, EMULATED_USER_SID)}, "elevation-detection",
     "DIFFERS", True),
    ("standard", {"token": api.ProcessToken(True, EMULATED_USER_SID)}, "elevation-detection",
     "DIFFERS", True),
])
def test_each_assumption_can_fail_and_no_key_stays(swtpm: Any, state: Path, privilege: str,
                                                   knobs: dict[str, Any], check: str,
                                                   status: str, breaks: bool) -> None:
    report = report_for(swtpm, state, privilege, **knobs)
    ck = report.check(check)
    assert (ck.status, ck.breaks) == (status, breaks), ck.detail
    assert report.ok is not any(c.breaks for c in report.checks)
    assert report.ok is (not breaks)
    assert [c.status for c in report.checks].count("ERROR") == 0, \
        [(c.name, c.detail) for c in report.checks if c.status == "ERROR"]
    assert report.keys_left == [] and key_files(state) == []


def test_details_of_the_failures(swtpm: Any, state: Path) -> None:
    report = report_for(swtpm, state, "system", dacl_before_finalize=False,
                        activation_device_not_ready=True)
    sd = [c for c in calls(report, "dacl-before-finalize", "NCryptSetProperty")
          if c["target"].startswith("Security Descr ")]
    assert sd[0]["hresult_name"] == "NTE_BAD_KEY_STATE"
    assert calls(report, "dacl-before-finalize", "NCryptFinalizeKey") == []  # never finalized
    assert report.check("quote-machine-key").status == "SKIPPED"
    err = report.check("idactivation").data["error"]
    assert isinstance(err, dict) and err["code"] == "TPM_ERROR" and err["hint"]
    # NTE_DEVICE_NOT_READY for an elevated caller is not evidence against its elevation: with
    # the machine key refused too, nothing this run did tells elevated from standard.
    assert report.check("elevation-detection").status == "OBSERVED"
    assert report.check("elevation-detection").data["evidence"] == {}
    alone = report_for(swtpm, state, "admin", activation_device_not_ready=True)
    assert alone.check("elevation-detection").status == "CONFIRMED"
    assert alone.check("elevation-detection").data["evidence"] == {"machine_key": True}


def test_a_standard_user_kept_out_of_a_machine_key(swtpm: Any, state: Path, tmp_path: Path) -> None:
    handoff = tmp_path / "handoff.blob"
    assert report_for(swtpm, state, "system", ReportOptions(handoff=handoff)).ok
    report = report_for(swtpm, state, "standard", ReportOptions(handoff=handoff),
                        honor_key_dacl=False)
    ck = report.check("machine-key-standard-user")
    assert (ck.status, ck.breaks) == ("DIFFERS", True) and not report.ok
    assert calls(report, "machine-key-standard-user", "NCryptOpenKey")[0]["hresult_name"] == "NTE_PERM"
    report_for(swtpm, state, "system", ReportOptions(cleanup_handoff=handoff))
    assert key_files(state) == []


def test_ek_certificate_found_in_windows_ek_store(swtpm: Any, state: Path) -> None:
    with Tpm.open(swtpm.tcti) as raw:
        cert = raw.ek("rsa").certificate
    assert cert is not None
    report = report_for(swtpm, state, "system", ek_nv_certificates=False, ek_cert_store=[cert])
    ck = report.check("ek-certificates")
    assert ck.status == "CONFIRMED"
    assert ck.data["ek_certificate_in"] == ["PCP_RSA_EKCERT", "PCP_EKCERT"]


# -- no key left behind, whatever happens ---------------------------------------------------------


def test_keys_are_deleted_when_a_check_errors(swtpm: Any, state: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import tpm2_attest.probe_windows as pw

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise VerificationError(Reason.BAD_SIGNATURE, "injected")

    monkeypatch.setattr(pw.verify, "verify_quote", broken)
    report = report_for(swtpm, state, "system")
    assert report.check("quote-user-key").status == "ERROR"
    assert report.check("quote-machine-key").status == "ERROR"
    assert not report.ok and report.keys_left == [] and key_files(state) == []


def test_keys_are_deleted_when_the_run_is_interrupted(swtpm: Any, state: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(self: WindowsReporter) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(WindowsReporter, "machine_key", interrupt)
    with backend(swtpm, state, "system") as be:
        report = WindowsReport({"tcti": be.tcti})
        with pytest.raises(KeyboardInterrupt):
            WindowsReporter(be, ReportOptions(), report).run()
    assert len(report.keys_created) == 1 and report.keys_left == [] and key_files(state) == []


def test_a_key_that_cannot_be_deleted_is_named(swtpm: Any, state: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: PcpEmulator, key: int, flags: int = 0) -> None:
        raise api.NCryptError("NCryptDeleteKey", api.NTE_PERM, "injected")

    monkeypatch.setattr(PcpEmulator, "delete_key", refuse)
    report = report_for(swtpm, state, "system")
    assert not report.ok and report.exit_code == 1
    assert {k["scope"] for k in report.keys_left} == {"user", "machine"}
    assert len(key_files(state)) == 2  # really there: the report says so instead of hiding it


# -- the report's form and the command line -------------------------------------------------------


def test_report_json_schema(swtpm: Any, state: Path, tmp_path: Path) -> None:
    report = report_for(swtpm, state, "standard")
    path = tmp_path / "out" / "report.json"
    path.parent.mkdir()
    write_report(report, path)
    data = json.loads(path.read_text())
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert set(data) == {"schema", "version", "ok", "exit_code", "generated_at", "platform",
                         "target", "caller", "checks", "keys", "handoff", "summary"}
    assert data["schema"] == SCHEMA and data["summary"] == report.counts()
    assert set(data["summary"]) == {s.lower() for s in STATUSES}
    for ck in data["checks"]:
        assert set(ck) == {"name", "assumption", "status", "breaks", "detail", "seconds", "data",
                           "calls"}
        for call in ck["calls"]:
            assert set(call) == {"api", "target", "flags", "flag_names", "hresult",
                                 "hresult_name", "outcome"}
    assert flag_names(0x20 | 0x80) == ["NCRYPT_MACHINE_KEY_FLAG", "NCRYPT_OVERWRITE_KEY_FLAG"]
    assert flag_names(0x4 | 0x100, security=True) == ["DACL_SECURITY_INFORMATION", "0x100"]


def test_cli_windows_report(swtpm: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "system.json"
    state = tmp_path / "pcp"
    rc = main(["probe", "windows-report", "--as-emulated", "system", "--tcti", swtpm.tcti,
               "--emulator-state", str(state), "--json", "--output", str(out)])
    printed = json.loads(capsys.readouterr().out)
    assert rc == 0 and printed["ok"] is True
    assert json.loads(out.read_text())["checks"] == printed["checks"]
    assert printed["target"]["emulated"] == "system" and printed["keys"]["left"] == []
    # Human output, as a standard user.
    rc = main(["probe", "windows-report", "--as-emulated", "standard", "--tcti", swtpm.tcti,
               "--emulator-state", str(state)])
    text = capsys.readouterr().out
    assert rc == 0 and "[CONFIRMED] machine-key-refused" in text and "left 0" in text
    assert key_files(state) == []


@pytest.mark.parametrize("args", [
    ["windows-report", "--tcti", "swtpm:port=1"],  # a raw TPM is not the PCP
    ["windows-report", "--as-emulated", "system", "--blob", "x.blob"],
    ["windows-report", "--as-emulated", "system", "--handoff", "a", "--cleanup-handoff", "b"],
    ["windows-report", "--as-emulated", "system", "--cleanup-handoff", "/nonexistent/blob"],
    ["quote", "--output", "report.json"],
])
def test_cli_windows_report_usage_errors(args: list[str], swtpm: Any,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    if "--as-emulated" in args or args[0] == "quote":
        args = [*args, "--tcti", swtpm.tcti]
    else:
        args = [a if a != "swtpm:port=1" else swtpm.tcti for a in args]
    assert main(["probe", *args, "--json"]) == 2
    assert "usage_error" in json.loads(capsys.readouterr().out)
