"""``tpm2-attest eventlog --state`` and ``tpm2-attest policy learn|check`` over files, with a
real log replayed into swtpm and quoted (so the evidence verifies as a verifier would see it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import eventlog_synth as synth
from replay_quote import quote_replayed
from tpm2_attest.cli import main
from tpm2_attest.embedded import EmbeddedSwtpm
from tpm2_attest.policy import Policy

LOGS = synth.LOGS_DIR
UBUNTU = LOGS / "ubuntu_2104_shielded_vm_no_secure_boot_eventlog"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# -- eventlog --state ----------------------------------------------------------------------------


def test_eventlog_state_text(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "eventlog", str(UBUNTU), "--state")
    assert rc == 0
    assert "not checked against a quote" in out
    assert 'scrtm_version_text: "GCE Virtual Firmware v1"' in out
    assert "gce_firmware_version: 1" in out
    assert '- "MS_THIRD_PARTY_UEFI_CA_2011"' in out  # db certificates by name, not every entry
    assert "kernel_cmdline: /boot/vmlinuz-5.11.0-1006-gcp" in out
    assert "- EventNum:" not in out  # the state instead of the events


def test_eventlog_state_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "eventlog", str(UBUNTU), "--state", "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["verified_against_quote"] is False
    s = doc["state"]
    assert s["platform"]["gce_firmware_version"] == 1 and s["efi"]["exit_boot_services"] is True
    assert s["secure_boot"]["well_known"]["PK"] == ["GCE_DEFAULT_PK"]
    assert set(s) == {"bank", "verified_pcrs", "platform", "secure_boot", "efi", "grub", "linux",
                      "windows", "notes"}
    rc, out, _ = run(capsys, "eventlog", str(UBUNTU), "--state", "--json", "--bank", "sha1")
    assert json.loads(out)["state"]["bank"] == "sha1"
    rc, _, err = run(capsys, "eventlog", str(UBUNTU), "--state", "--bank", "sha257")
    assert rc == 2 and "--bank" in err


def test_eventlog_state_text_shows_pcr7_actions(capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    """A log with a firmware action in PCR 7 reads (it used to be refused) and shows it."""
    def action(b: synth.LogBuilder) -> None:
        b.event(7, synth.EV_EFI_ACTION, b"Security Level is Downgraded to 0")

    path = tmp_path / "log.bin"
    path.write_bytes(synth.secure_boot_log(extra_pcr7=action).build())
    rc, out, _ = run(capsys, "eventlog", str(path), "--state")
    assert rc == 0 and "Secure Boot state not read" not in out
    assert "dma_protection_disabled: false" in out
    assert 'unknown_actions:\n    - "Security Level is Downgraded to 0"' in out


# -- policy learn / check -------------------------------------------------------------------------


@dataclass
class Files:
    ak: Path
    quote: Path
    log: Path
    nonce: str
    policy: Path

    def evidence(self) -> list[str]:
        return ["--ak", str(self.ak), "--quote", str(self.quote), "--nonce", self.nonce,
                "--event-log", str(self.log)]


@pytest.fixture
def files(fresh_swtpm: EmbeddedSwtpm, tmp_path: Path) -> Iterator[Files]:
    q = quote_replayed(fresh_swtpm.tcti, UBUNTU.read_bytes())
    f = Files(tmp_path / "ak.blob", tmp_path / "quote.json", tmp_path / "log.bin", q.nonce.hex(),
              tmp_path / "policy.json")
    f.ak.write_bytes(q.blob.to_bytes())
    f.quote.write_text(q.quote.to_json())
    f.log.write_bytes(q.log)
    yield f


def test_learn_then_check(capsys: pytest.CaptureFixture[str], files: Files) -> None:
    rc, out, err = run(capsys, "policy", "learn", *files.evidence(), "--out", str(files.policy),
                       "--name", "golden")
    assert rc == 0, err
    assert "sections pcrs, secure_boot, boot" in out
    p = Policy.load(files.policy)
    assert p.name == "golden" and [s.key for s in p.sections] == ["pcrs", "secure_boot", "boot"]
    rc, out, _ = run(capsys, "policy", "check", "--policy", str(files.policy), *files.evidence())
    assert rc == 0 and out.startswith("policy satisfied (pcrs, secure_boot, boot)")
    rc, out, _ = run(capsys, "policy", "check", "--policy", str(files.policy), *files.evidence(),
                     "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["ok"] is True and doc["state"]["platform"]["gce_firmware_version"] == 1


def test_check_lists_every_violation(capsys: pytest.CaptureFixture[str], files: Files) -> None:
    doc = {"version": 1, "secure_boot": {"required": True},
           "boot": {"kernel_cmdline": [{"regex": ".* quiet"}], "min_gce_firmware_version": 2},
           "pcrs": {"sha256": {"7": "00" * 32}}}
    files.policy.write_text(json.dumps(doc))
    rc, out, _ = run(capsys, "policy", "check", "--policy", str(files.policy), *files.evidence())
    assert rc == 1
    assert "policy refused: 4 violation(s)" in out
    for rule in ("pcrs.value", "secure_boot.required", "boot.kernel_cmdline",
                 "boot.gce_firmware_version"):
        assert f"  {rule}: " in out
    rc, out, _ = run(capsys, "policy", "check", "--policy", str(files.policy), *files.evidence(),
                     "--json")
    result = json.loads(out)
    assert rc == 1 and result["ok"] is False and len(result["violations"]) == 4


def test_learn_limited_to_sections_and_yaml(capsys: pytest.CaptureFixture[str], files: Files) -> None:
    out_file = files.policy.with_suffix(".yaml")
    rc, _, err = run(capsys, "policy", "learn", *files.evidence(), "--out", str(out_file),
                     "--section", "boot")
    assert rc == 0, err
    assert "boot:" in out_file.read_text() and [s.key for s in Policy.load(out_file).sections] == [
        "boot"]
    with pytest.raises(SystemExit):
        main(["policy", "learn", *files.evidence(), "--out", str(out_file), "--section", "bot"])


def test_bad_policy_file_names_the_key(capsys: pytest.CaptureFixture[str], files: Files) -> None:
    files.policy.write_text(json.dumps({"boot": {"kernel_cmdline": [{"regex": "("}]}}))
    rc, _, err = run(capsys, "policy", "check", "--policy", str(files.policy), *files.evidence())
    assert rc == 2 and "boot.kernel_cmdline.0.regex" in err and "--policy" in err


def test_evidence_that_does_not_verify_is_refused(capsys: pytest.CaptureFixture[str],
                                                  files: Files) -> None:
    files.policy.write_text(json.dumps({"version": 1}))
    args = files.evidence()
    args[args.index("--nonce") + 1] = "00" * 16
    rc, _, err = run(capsys, "policy", "check", "--policy", str(files.policy), *args)
    assert rc == 1 and "NONCE_MISMATCH" in err
    args = files.evidence()
    args[args.index("--event-log") + 1] = str(LOGS / "coreos_36_shielded_vm_no_secure_boot_eventlog")
    rc, _, err = run(capsys, "policy", "learn", *args, "--out", str(files.policy))
    assert rc == 1 and "EVENT_LOG_REPLAY_MISMATCH" in err
    assert json.loads(files.policy.read_text()) == {"version": 1}  # nothing written
