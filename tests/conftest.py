"""Shared fixtures: a real swtpm per session (and per test when state matters), tpm2-tools runner.

Tests never mock the TPM: they talk to swtpm. They also never depend on the developer's
environment: TPM2_ATTEST_TCTI / TPM2TOOLS_TCTI are removed for every test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Protocol

import pytest

from tpm2_attest.embedded import EmbeddedSwtpm, swtpm_available

TCTI_ENV_VARS = ("TPM2_ATTEST_TCTI", "TPM2TOOLS_TCTI")


@pytest.fixture(autouse=True)
def _isolate_tcti_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's TCTI variables (a test may set them itself)."""
    for var in TCTI_ENV_VARS:
        monkeypatch.delenv(var, raising=False)


def _require_swtpm() -> None:
    if not swtpm_available():
        pytest.skip("swtpm is not installed (apt-get install swtpm swtpm-tools)")


@pytest.fixture(scope="session")
def swtpm() -> Iterator[EmbeddedSwtpm]:
    """One embedded swtpm (with EK certificates) shared by the whole session."""
    _require_swtpm()
    with EmbeddedSwtpm() as sw:
        yield sw


@pytest.fixture
def fresh_swtpm() -> Iterator[EmbeddedSwtpm]:
    """A new swtpm for this test alone: just-started, PCRs at reset, the session's EK."""
    _require_swtpm()
    with EmbeddedSwtpm() as sw:
        yield sw


@pytest.fixture
def tcti(swtpm: EmbeddedSwtpm) -> str:
    """The session swtpm's TCTI string."""
    return swtpm.tcti


class Tpm2Tools(Protocol):
    def __call__(self, *args: str, sw: EmbeddedSwtpm | None = None, input: str | None = None,
                 check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]: ...


@pytest.fixture
def tpm2_tools(swtpm: EmbeddedSwtpm) -> Tpm2Tools:
    """Run a tpm2-tools command against ``sw`` (default: the session swtpm).

    ``tpm2_tools("tpm2_pcrread", "sha256:0")``; fails the test with the command's stderr
    when it exits non-zero (unless ``check=False``). Skips when tpm2-tools is missing.
    """

    def run(*args: str, sw: EmbeddedSwtpm | None = None, input: str | None = None,
            check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        if not args:
            raise ValueError("tpm2_tools needs a command")
        if shutil.which(args[0]) is None:
            pytest.skip(f"{args[0]} is not installed (apt-get install tpm2-tools)")
        target = sw or swtpm
        env = {**os.environ, **target.tools_env()}
        res = subprocess.run(list(args), env=env, input=input,
                             capture_output=True, text=True, timeout=timeout, check=False)
        if check and res.returncode != 0:
            pytest.fail(f"{' '.join(args)} exited {res.returncode} against {target.tcti}:\n"
                        f"{res.stderr.strip() or res.stdout.strip()}", pytrace=False)
        return res

    return run


@pytest.fixture
def loopback(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """A loopback HTTP server (tests/httpserver.py) standing in for vendor services and AIA
    URLs; proxy variables are removed so nothing leaves the machine."""
    from httpserver import loopback_server

    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    with loopback_server() as srv:
        yield srv
