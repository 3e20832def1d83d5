"""The wheel as users get it: built from a copy of the source, installed into a clean virtualenv
(no system site-packages, no access to src/), then examples/smoke_test.py runs there against an
embedded swtpm. Also: pure py3-none-any, py.typed shipped, ``tpm2-attest --version`` is the one
version in ``_version.py``.

Offline by design where it can be: ``python -m build --no-isolation`` uses the dev
environment's setuptools (the ``dev`` extra); installing its one dependency (cryptography) uses pip's configuration
(a local index or wheelhouse when configured, PyPI otherwise — CI reaches PyPI).
"""

from __future__ import annotations

import email
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tpm2_attest._version import __version__
from tpm2_attest.embedded import swtpm_available

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "examples" / "smoke_test.py"
TIMEOUT = 180


def _run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
         timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=timeout, check=False)
    return res


def _clean_env(venv: Path | None = None) -> dict[str, str]:
    """The user's environment without TCTI variables or PYTHONPATH (which could reach src/)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TPM2_ATTEST_TCTI", "TPM2TOOLS_TCTI", "PYTHONPATH", "VIRTUAL_ENV")}
    if venv is not None:
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    return env


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build --no-isolation`` (sdist, then the wheel from the sdist) on a copy of the
    tree, so the build leaves nothing in the checkout and needs no network."""
    work = tmp_path_factory.mktemp("build")
    src = work / "src-copy"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "MANIFEST.in", "run"):
        shutil.copy2(ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc", ".hypothesis")
    for name in ("src", "docs", "examples", "tests", "tools"):
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    out = work / "dist"
    res = _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, src, cwd=work,
               env=_clean_env())
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def wheel(dist: Path) -> Path:
    (whl,) = dist.glob("*.whl")
    return whl


def test_sdist_carries_docs_examples_and_tests(dist: Path) -> None:
    (sdist,) = dist.glob("*.tar.gz")
    assert sdist.name == f"tpm2_attest-{__version__}.tar.gz"
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {"pyproject.toml", "README.md", "src/tpm2_attest/py.typed", "docs/index.md",
            "examples/smoke_test.py", "tests/conftest.py", "tests/test_docs.py",
            "tools/build_trust_bundle.py", "src/tpm2_attest/trust/ca/manifest.json",
            "src/tpm2_attest/trust/ca/tpm-vendor-cas/IFX1.pem"} <= names
    assert not any(n.endswith(".pyc") or "__pycache__" in n for n in names)


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A clean virtualenv with the wheel installed (pip runs from outside: ``pip --python``)."""
    path = tmp_path_factory.mktemp("venv") / "v"
    res = _run(sys.executable, "-m", "venv", "--without-pip", path)
    assert res.returncode == 0, res.stderr
    py = path / "bin" / "python"
    res = _run(sys.executable, "-m", "pip", "--python", py, "install", "--disable-pip-version-check",
               "-q", wheel, env=_clean_env())
    assert res.returncode == 0, res.stdout + res.stderr
    yield path


def z_read(wheel: Path, name: str) -> bytes:
    with zipfile.ZipFile(wheel) as z:
        return z.read(name)


def test_wheel_is_pure_and_typed(wheel: Path) -> None:
    assert wheel.name == f"tpm2_attest-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        dist = f"tpm2_attest-{__version__}.dist-info"
        wheel_meta = email.message_from_bytes(z.read(f"{dist}/WHEEL"))
        meta = email.message_from_bytes(z.read(f"{dist}/METADATA"))
        entry_points = z.read(f"{dist}/entry_points.txt").decode()
    assert "tpm2_attest/py.typed" in names
    # the well-known Secure Boot certificates are package data (eventlog.well_known_certificate)
    assert {f"tpm2_attest/eventlog/certs/{f}" for f in
            ("GcePk.crt", "MicWinProPCA2011_2011-10-19.crt", "debian-boothole.crt", "README.md")} <= names
    # the CA bundle: manifest, origin README and every certificate file it lists
    manifest = json.loads(z_read(wheel, "tpm2_attest/trust/ca/manifest.json"))
    assert {"tpm2_attest/trust/ca/README.md"} | {f"tpm2_attest/trust/ca/{e['file']}"
                                                  for e in manifest["certificates"]} <= names
    assert len(manifest["certificates"]) == 61
    assert {"tpm2_attest/probe.py", "tpm2_attest/progress.py", "tpm2_attest/backends/pcp.py"} <= names
    # the dashboard's templates and style sheet, and the migrations
    assert {f"tpm2_attest/service/templates/dashboard/{f}" for f in
            ("base.html", "devices.html", "device.html", "state.html", "dashboard.css")} <= names
    assert "tpm2_attest/service/migrations/versions/0003_dashboard_sessions.py" in names
    assert not any(n.startswith(("tests/", "src/", "docs/")) for n in names)
    assert not any(n.endswith((".so", ".pyd", ".pyc")) for n in names)
    assert wheel_meta["Root-Is-Purelib"] == "true" and wheel_meta["Tag"] == "py3-none-any"
    assert meta["Version"] == __version__ and meta["Requires-Python"] == ">=3.11"
    runtime = [r for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r]
    assert runtime == ["cryptography>=41"]  # stdlib + cryptography only
    assert "tpm2-attest = tpm2_attest.cli:main" in entry_points


def test_installed_version_and_location(venv: Path, tmp_path: Path) -> None:
    res = _run(venv / "bin" / "tpm2-attest", "--version", cwd=tmp_path, env=_clean_env(venv))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"tpm2-attest {__version__}"
    res = _run(venv / "bin" / "python", "-c",
               "import tpm2_attest; print(tpm2_attest.__file__)",
               cwd=tmp_path, env=_clean_env(venv))
    location = Path(res.stdout.splitlines()[0])
    assert venv in location.parents and ROOT / "src" not in location.parents
    code = ("from tpm2_attest.eventlog import wellknown as w, well_known_certificate as f; "
            "print(f(w.certificate_der('GCE_DEFAULT_PK')))")
    res = _run(venv / "bin" / "python", "-c", code, cwd=tmp_path, env=_clean_env(venv))
    assert res.stdout.strip() == "GCE_DEFAULT_PK", res.stderr
    res = _run(venv / "bin" / "python", "-c",
               "import tpm2_attest.trust as t; b = t.tpm_vendor_cas(); print(len(b), len(b.roots))",
               cwd=tmp_path, env=_clean_env(venv))
    assert res.returncode == 0 and res.stdout.split()[0] == "61", res.stdout + res.stderr


@pytest.mark.skipif(not swtpm_available(), reason="swtpm is not installed")
def test_smoke_test_in_the_clean_venv(venv: Path, tmp_path: Path, swtpm: Any) -> None:
    # The real TPM when present, else the smoke test's own embedded swtpm (its default path).
    has_device = any(os.path.exists(p) for p in ("/dev/tpmrm0", "/dev/tpm0"))
    extra = ["--embedded"] if has_device else []
    res = _run(venv / "bin" / "python", SMOKE, *extra, cwd=tmp_path, env=_clean_env(venv))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "OK: 7 passed, 0 failed" in res.stdout
    for step in ("is_available", "info", "PCR read", "provision", "quote", "verify", "activate"):
        assert f"[PASS] {step}:" in res.stdout
    # And the installed CLI's probe, against the session swtpm.
    res = _run(venv / "bin" / "tpm2-attest", "probe", "quote", "--tcti", swtpm.tcti, cwd=tmp_path,
               env=_clean_env(venv))
    assert res.returncode == 0, res.stdout + res.stderr


def test_smoke_test_refuses_the_source_tree(tmp_path: Path) -> None:
    import tpm2_attest

    if ROOT / "src" not in Path(tpm2_attest.__file__).resolve().parents:
        pytest.skip("tpm2_attest is not imported from this checkout's src/ here")
    res = _run(sys.executable, SMOKE, cwd=tmp_path, env=_clean_env())
    assert res.returncode == 2
    assert "source checkout" in res.stderr
