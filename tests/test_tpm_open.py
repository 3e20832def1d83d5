"""Opening a TPM: fail fast on what is not a TPM, say why a TPM is unavailable, explain a full
TPM. Against swtpm's real data and control ports, a silent TCP listener, a device path that
refuses to open, and tpm2-tools leaving objects loaded."""

from __future__ import annotations

import errno
import glob
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tpm2_attest import Tpm
from tpm2_attest.cli import EXIT_FAIL, EXIT_OK
from tpm2_attest.errors import ErrorCode, TpmError
from tpm2_attest.tpm import FIRST_RESPONSE_TIMEOUT, Availability


def run_cli(*args: str, timeout: float = 40) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess; ``timeout`` bounds it well below the 60 s a TCP TPM gets per
    command, so a CLI that waits that long fails the test."""
    return subprocess.run([sys.executable, "-m", "tpm2_attest.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections (the kernel completes them from the backlog) and
    never says a word."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


# -- fail fast ------------------------------------------------------------------------------------


def test_swtpm_control_port_fails_at_once_with_a_hint(swtpm: Any) -> None:
    res = run_cli("info", "--tcti", f"swtpm:port={swtpm.ctrl_port}")
    assert res.returncode == EXIT_FAIL, res.stderr
    assert "does not answer like a TPM" in res.stderr and "not a TPM response" in res.stderr
    assert "--ctrl" in res.stderr and "--timeout" in res.stderr and "--tcti" in res.stderr


def test_swtpm_control_port_library(swtpm: Any) -> None:
    with pytest.raises(TpmError) as info:
        Tpm.open(f"swtpm:port={swtpm.ctrl_port}")
    assert info.value.code == ErrorCode.TRANSPORT
    assert info.value.hint is not None and "control port" in info.value.hint
    assert "--" not in info.value.hint.replace("--server", "").replace("--ctrl", "")


def test_silent_listener_fails_after_the_first_response_timeout(silent_port: int) -> None:
    res = run_cli("info", "--tcti", f"swtpm:port={silent_port}")
    assert res.returncode == EXIT_FAIL, res.stderr
    assert f"no complete response within {FIRST_RESPONSE_TIMEOUT:g} s" in res.stderr
    assert "--timeout" in res.stderr


def test_timeout_option_sets_the_wait(silent_port: int) -> None:
    res = run_cli("info", "--tcti", f"mssim:port={silent_port}", "--timeout", "0.5", timeout=20)
    assert res.returncode == EXIT_FAIL, res.stderr
    assert "no complete response within 0.5 s" in res.stderr
    res = run_cli("quote", "--ak", "x", "--timeout", "-1")
    assert res.returncode == 2 and "argument --timeout" in res.stderr


def test_library_timeout_bounds_the_first_command(silent_port: int) -> None:
    with pytest.raises(TpmError) as info:
        Tpm.open(f"swtpm:port={silent_port}", timeout=0.3)
    assert info.value.code == ErrorCode.TRANSPORT and "within 0.3 s" in str(info.value)


def test_real_tpm_still_opens_and_counts_no_extra_command(swtpm: Any) -> None:
    with Tpm.open(swtpm.tcti) as tpm:
        assert tpm.stats.total == 0  # the first-response check is not a counted command
        assert tpm.pcr.banks()


# -- availability says why ------------------------------------------------------------------------


def _eacces_path() -> str:
    """A path whose read-write open fails with EACCES for this user, root included: a
    write-only sysfs attribute (kernfs refuses to open it for reading), or for a normal user
    a file without permissions."""
    if os.geteuid() != 0:
        fd, path = tempfile.mkstemp(prefix="tpm2-attest-eacces-")
        os.close(fd)
        os.chmod(path, 0)
        return path
    for path in [*sorted(glob.glob("/sys/bus/*/drivers_probe")), "/sys/bus/pci/rescan"]:
        try:
            os.close(os.open(path, os.O_RDONLY))  # read-only: never writes to the attribute
        except OSError as exc:
            if exc.errno == errno.EACCES:
                return path
    pytest.fail("no path refuses to open with EACCES here (no sysfs write-only attribute)")


def test_permission_denied_is_not_no_tpm() -> None:
    path = _eacces_path()
    got = Tpm.is_available(f"device:{path}")
    assert isinstance(got, Availability)
    assert not got
    assert got.code == ErrorCode.REQUIRES_ELEVATION and got.present
    assert "permission denied" in got.reason and got.hint and "tss" in got.hint
    assert got.tcti == f"device:{path}"


def test_availability_tells_the_other_cases_apart(swtpm: Any, silent_port: int) -> None:
    ok = Tpm.is_available(swtpm.tcti)
    assert ok and ok.available and ok.code is None and ok.present
    none = Tpm.is_available("swtpm:host=127.0.0.1,port=1")
    assert not none and none.code == ErrorCode.TPM_NOT_FOUND and not none.present
    bad = Tpm.is_available("tabrmd")
    assert not bad and bad.code == ErrorCode.INVALID_ARGUMENT
    silent = Tpm.is_available(f"swtpm:port={silent_port}", timeout=0.3)
    assert not silent and silent.code == ErrorCode.TRANSPORT


def test_cli_permission_denied_exit_code_and_hint() -> None:
    res = run_cli("info", "--tcti", f"device:{_eacces_path()}")
    assert res.returncode == EXIT_FAIL and "REQUIRES_ELEVATION" in res.stderr and "tss" in res.stderr


# -- a TPM full of other programs' objects ---------------------------------------------------------


def test_object_memory_explains_leftover_objects(fresh_swtpm: Any, tpm2_tools: Any,
                                                  tmp_path: Path) -> None:
    """tpm2-tools talking to swtpm without a resource manager leaves every primary it creates
    loaded; swtpm holds 3. Then our AK cannot be made, and the error says why and what to do."""
    for n in range(3):
        tpm2_tools("tpm2_createprimary", "-C", "o", "-c", str(tmp_path / f"p{n}.ctx"), sw=fresh_swtpm)
    res = run_cli("provision-ak", "--tcti", fresh_swtpm.tcti, "--out", str(tmp_path / "ak"))
    assert res.returncode == EXIT_FAIL, res.stderr
    assert "TPM_RC_OBJECT_MEMORY" in res.stderr
    assert "tpm2_flushcontext -t" in res.stderr and "/dev/tpmrm0" in res.stderr
    tpm2_tools("tpm2_flushcontext", "-t", sw=fresh_swtpm)
    res = run_cli("provision-ak", "--tcti", fresh_swtpm.tcti, "--out", str(tmp_path / "ak"))
    assert res.returncode == EXIT_OK, res.stderr
