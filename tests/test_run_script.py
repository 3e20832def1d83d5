"""./run: the demo installs only what the demo needs; the tests install the rest."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD_ONLY = {"gcc", "python3-dev", "libtss2-dev", "pkg-config", "mingw-w64-common", "tpm2-tools", "zsh",
              "chromium", "chromium-driver"}


def packages(job: str) -> dict[str, list[str]]:
    res = subprocess.run([str(ROOT / "run"), "packages", job], capture_output=True, text=True,
                         timeout=30, check=True)
    return {k: v.split() for k, v in (line.split(": ", 1) for line in res.stdout.splitlines())}


def test_demo_installs_no_compiler_headers_or_test_extras() -> None:
    demo = packages("demo")
    assert {"swtpm", "swtpm-tools", "python3-venv"} <= set(demo["apt"])
    assert not BUILD_ONLY & set(demo["apt"]), demo["apt"]
    assert demo["pip"] == ["-e", "."]  # the package and cryptography: no dev/service extras


def test_tests_install_everything_the_demo_does_and_more() -> None:
    demo, test = packages("demo"), packages("test")
    assert set(demo["apt"]) | BUILD_ONLY <= set(test["apt"])
    assert test["pip"] == ["-e", ".[dev,service,postgres]"]


def test_the_demo_path_never_reaches_the_test_install() -> None:
    """`demo` calls the demo set-up only; CI's `.ci/run` still runs `./run setup` (all)."""
    text = (ROOT / "run").read_text()
    assert 'demo) setup demo; exec "$VENV/bin/tpm2-attest" demo' in text
    assert "setup) setup test ;;" in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./run setup" in ci and "./run test" in ci
