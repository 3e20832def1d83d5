"""The embedded swtpm harness: lifecycle, reboot, EK certificates, cleanup after crashes."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tpm2_attest import ErrorCode, TpmError
from tpm2_attest.embedded import TEMPLATE_ENV, EmbeddedSwtpm, swtpm_available, template_dir
from tpm2_attest.transport import open_transport

if TYPE_CHECKING:
    from conftest import Tpm2Tools

pytestmark = pytest.mark.skipif(not swtpm_available(), reason="swtpm is not installed")


def gone(pid: int) -> bool:
    """The process no longer runs (reaped, or a zombie awaiting a reaper that is not us)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_gone(pid: int, seconds: float = 5.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if gone(pid):
            return True
        time.sleep(0.02)
    return gone(pid)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def pcr_sha256(tpm2_tools: Tpm2Tools, sw: EmbeddedSwtpm, index: int) -> str:
    out = tpm2_tools("tpm2_pcrread", f"sha256:{index}", sw=sw).stdout
    m = re.search(rf"^\s*{index}\s*:\s*0x([0-9A-Fa-f]+)", out, re.M)
    assert m, out
    return m.group(1).lower()


def test_start_stop_leaves_no_process_or_files() -> None:
    sw = EmbeddedSwtpm()
    with pytest.raises(TpmError) as ei:
        _ = sw.tcti  # not started yet
    assert ei.value.code == ErrorCode.TPM_NOT_FOUND
    sw.start()
    pid, root, port = sw.pid, sw.root_dir, sw.port
    assert sw.running and sw.ctrl_port == port + 1
    assert sw.tcti == f"swtpm:host=127.0.0.1,port={port}"
    assert sw.state_dir.is_dir() and sw.state_dir.is_relative_to(root)
    assert sw.start() is sw  # already running: no second process
    sw.stop()
    assert wait_gone(pid) and not root.exists() and refused(port)
    assert not sw.running
    sw.stop()  # idempotent


def test_context_manager_and_private_paths() -> None:
    with EmbeddedSwtpm() as sw:
        root = sw.root_dir
        for p in (sw.state_dir, sw.ca_root_path, sw.ca_intermediate_path,
                  *sw.ek_cert_files.values()):
            assert p.exists() and p.is_relative_to(root), p
        assert not str(root).startswith(("/var/lib", str(Path.home())))
        assert sorted(sw.ek_cert_files) == ["ecc", "rsa"]
        with open_transport(sw.tcti) as t:
            assert t.send(bytes.fromhex("80010000000c0000017b0008"))[:10] == bytes.fromhex(
                "80010000001400000000")
    assert not root.exists()


def test_tools_env(swtpm: EmbeddedSwtpm) -> None:
    assert swtpm.tools_env() == {"TPM2TOOLS_TCTI": swtpm.tcti, "TPM2_ATTEST_TCTI": swtpm.tcti}


def test_reboot_resets_pcrs(fresh_swtpm: EmbeddedSwtpm, tpm2_tools: Tpm2Tools) -> None:
    zero = "0" * 64
    assert pcr_sha256(tpm2_tools, fresh_swtpm, 10) == zero
    tpm2_tools("tpm2_pcrextend", "10:sha256=" + "ab" * 32, sw=fresh_swtpm)
    extended = pcr_sha256(tpm2_tools, fresh_swtpm, 10)
    assert extended != zero
    fresh_swtpm.reboot()
    assert pcr_sha256(tpm2_tools, fresh_swtpm, 10) == zero
    assert fresh_swtpm.running


def test_ek_certificates_in_nv(swtpm: EmbeddedSwtpm, tpm2_tools: Tpm2Tools, tmp_path: Path) -> None:
    listing = tpm2_tools("tpm2_nvreadpublic").stdout
    indices = set(re.findall(r"^(0x[0-9a-fA-F]+):", listing, re.M))
    assert {"0x1c00002", "0x1c00016", "0x1c08000"} <= indices, listing
    for index, kind in (("0x1c00002", "rsa"), ("0x1c00016", "ecc")):
        out = tmp_path / f"{kind}.der"
        tpm2_tools("tpm2_nvread", index, "-C", "o", "-o", str(out))
        assert out.read_bytes() == swtpm.ek_cert_files[kind].read_bytes()


def _verify_with_openssl(sw: EmbeddedSwtpm, tmp_path: Path) -> dict[str, x509.Certificate]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    certs = {}
    for kind, path in sw.ek_cert_files.items():
        cert = x509.load_der_x509_certificate(path.read_bytes())
        pem = tmp_path / f"ek-{kind}.pem"
        pem.write_bytes(cert.public_bytes(Encoding.PEM))
        res = subprocess.run(["openssl", "verify", "-CAfile", str(sw.ca_root_path),
                              "-untrusted", str(sw.ca_intermediate_path), str(pem)],
                             capture_output=True, text=True, timeout=30, check=False)
        assert res.returncode == 0 and res.stdout.strip().endswith("OK"), res.stdout + res.stderr
        certs[kind] = cert
    return certs


def test_ek_certificates_verify_against_the_local_ca(swtpm: EmbeddedSwtpm, tmp_path: Path) -> None:
    certs = _verify_with_openssl(swtpm, tmp_path)
    assert certs["rsa"].public_key().key_size == 2048  # type: ignore[union-attr]
    assert certs["ecc"].public_key().curve.name == "secp384r1"  # type: ignore[union-attr]


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def test_instances_are_separate_copies(swtpm: EmbeddedSwtpm, fresh_swtpm: EmbeddedSwtpm,
                                       tpm2_tools: Tpm2Tools) -> None:
    assert fresh_swtpm.port not in (swtpm.port, swtpm.ctrl_port)
    assert fresh_swtpm.state_dir != swtpm.state_dir
    # Copied from one manufactured template: same EK certificate...
    assert fresh_swtpm.ek_cert_files["rsa"].read_bytes() == swtpm.ek_cert_files["rsa"].read_bytes()
    # ...but separate TPM state.
    before = pcr_sha256(tpm2_tools, swtpm, 11)
    tpm2_tools("tpm2_pcrextend", "11:sha256=" + "cd" * 32, sw=fresh_swtpm)
    assert pcr_sha256(tpm2_tools, swtpm, 11) == before


def test_fresh_identity_has_its_own_ek_under_the_same_ca(swtpm: EmbeddedSwtpm, tmp_path: Path) -> None:
    with EmbeddedSwtpm(fresh_identity=True) as other:
        assert other.ca_root_path.read_bytes() == swtpm.ca_root_path.read_bytes()
        mine = _verify_with_openssl(other, tmp_path)
        theirs = {k: x509.load_der_x509_certificate(p.read_bytes())
                  for k, p in swtpm.ek_cert_files.items()}
        for kind in ("rsa", "ecc"):
            assert _spki(mine[kind]) != _spki(theirs[kind])


def test_missing_binaries_are_unsupported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert not swtpm_available()
    with pytest.raises(TpmError) as ei:
        EmbeddedSwtpm().start()
    assert ei.value.code == ErrorCode.UNSUPPORTED
    assert ei.value.hint == "apt-get install swtpm swtpm-tools"


_CRASHER = """
import sys, time
import tpm2_attest.embedded as harness
sw = harness.EmbeddedSwtpm().start()
print(sw.pid, sw.root_dir, harness._template.root, flush=True)
if sys.argv[1] == "raise":
    raise RuntimeError("the program crashes")
time.sleep(60)
"""


def test_a_crashed_or_killed_program_leaves_no_swtpm(tmp_path: Path) -> None:
    crash = subprocess.Popen([sys.executable, "-c", _CRASHER, "raise"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    # This one copies our manufactured template instead of making its own (saves a second).
    killed = subprocess.Popen([sys.executable, "-c", _CRASHER, "sleep"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True,
                              env={**os.environ, TEMPLATE_ENV: str(template_dir())})
    try:
        # An uncaught exception: the finalizer stops swtpm and removes every file.
        out, err = crash.communicate(timeout=60)
        assert crash.returncode == 1 and "the program crashes" in err
        pid, root, template = out.split()
        assert wait_gone(int(pid)) and not Path(root).exists() and not Path(template).exists()

        # SIGKILL: nothing runs in the parent, but PR_SET_PDEATHSIG takes swtpm down.
        assert killed.stdout is not None
        line = killed.stdout.readline()
        assert line, "the child did not start swtpm"
        pid, root, template = line.split()
        assert template == str(template_dir())  # borrowed, not manufactured
        assert not gone(int(pid))
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
        if sys.platform.startswith("linux"):
            assert wait_gone(int(pid))
        else:  # pragma: no cover
            os.kill(int(pid), signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)  # files cannot be cleaned by a SIGKILLed process
        assert Path(template).is_dir()  # a borrowed template is never removed by the borrower
    finally:
        for p in (crash, killed):
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_cannot_stop_the_parents_swtpm(fresh_swtpm: EmbeddedSwtpm) -> None:
    pid = os.fork()
    if pid == 0:  # the child runs the cleanup a normal exit would run, then leaves
        try:
            fresh_swtpm.stop()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert fresh_swtpm.running and fresh_swtpm.root_dir.is_dir()
    with open_transport(fresh_swtpm.tcti) as t:
        assert t.send(bytes.fromhex("80010000000c0000017b0008"))[6:10] == bytes(4)
