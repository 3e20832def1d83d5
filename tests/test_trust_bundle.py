"""The CA bundle shipped in the package: manifest in step with the files, every CA usable by
the verifier, real vendor EK certificates verifying against it, and a cheap, lazy load."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tpm2_attest import trust
from tpm2_attest.trust import BundleError, load_bundle, tpm_vendor_cas
from tpm2_attest.verify import Reason, VerificationError, verify_ek_certificate
from tpm2_attest.verify.certpath import parse_certificates, verify_path

ROOT = Path(__file__).resolve().parent.parent
CA_DIR = ROOT / "src" / "tpm2_attest" / "trust" / "ca"
TOOL = ROOT / "tools" / "build_trust_bundle.py"
DATA = Path(__file__).parent / "data" / "ekcerts"


def _tool():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("build_trust_bundle", TOOL)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_manifest_matches_the_files() -> None:
    """manifest.json is exactly what the tool computes from the certificate files."""
    tool = _tool()
    on_disk = json.loads((CA_DIR / "manifest.json").read_text())
    assert tool.build_manifest(CA_DIR) == on_disk
    res = subprocess.run([sys.executable, str(TOOL), "--check"], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr


def test_manifest_check_notices_a_change(tmp_path: Path) -> None:
    tool = _tool()
    copy = tmp_path / "ca"
    shutil.copytree(CA_DIR, copy)
    (copy / "tpm-vendor-cas" / "IFX1.pem").unlink()
    assert tool.build_manifest(copy) != json.loads((CA_DIR / "manifest.json").read_text())


def test_bundle_contents() -> None:
    b = tpm_vendor_cas()
    assert len(b) == 61 and tpm_vendor_cas() is b  # loaded once
    assert set(b.vendors) == {"AMD", "Alibaba Cloud", "GlobalSign", "Google", "Infineon", "Intel", "Microsoft",
                              "Nationz", "Nuvoton", "STMicroelectronics"}
    files = {e.file for e in b}
    assert len([f for f in files if f.startswith("tpm-vendor-cas/")]) == 51
    assert len([f for f in files if f.startswith("cloud-vtpm-cas/")]) == 5
    assert len([f for f in files if f.startswith("tpm-ca-certificates/")]) == 5
    distinct = {e.sha256 for e in b}
    assert len(b.roots) + len(b.intermediates) == len(distinct)  # duplicates passed once
    assert {e.duplicate_of for e in b if e.duplicate_of} <= files
    for e in b:
        assert e.source.licence == ("BSD-3-Clause" if e.file.startswith("tpm-ca-certificates/") else "Apache-2.0")
        assert e.source.commit and e.source.repository
        assert e.anchor or e.role == "intermediate"  # every root is an anchor
        assert e.to_dict()["origin"]["repository"] == e.source.repository


def test_every_ca_parses_and_nuvoton_needs_the_lenient_path() -> None:
    lenient = set()
    for e in tpm_vendor_cas():
        (p,) = parse_certificates(e.der, e.file)
        assert p.fingerprint.hex() == e.sha256
        if not p.strict:
            lenient.add(Path(e.file).stem)
            assert e.parsed.startswith("lenient")
    assert lenient == {"NTC1", "NTC2", "NUVO_0100", "NUVO_1110", "NUVO_1111", "NUVO_2110", "NUVO_2111",
                       "INTEL_OnDie_CA_RT"}


def test_every_intermediate_chains_to_an_anchor_of_the_bundle() -> None:
    b = tpm_vendor_cas()
    for e in b:
        if e.anchor:
            continue
        # judged while it is valid: an expired intermediate (IFX1) still chains
        when = min(e.not_after, dt.datetime.now(dt.UTC))
        path = verify_path(e.der, b.roots, b.intermediates, what=e.file, at_time=when)
        assert len(path.chain) >= 2, e.file


def test_expired_cas_are_flagged() -> None:
    b = tpm_vendor_cas()
    by_file = {Path(e.file).stem: e for e in b}
    assert by_file["IFX1"].expired(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert not by_file["IFX2"].expired(dt.datetime(2026, 12, 1, tzinfo=dt.UTC))
    assert by_file["IFX2"].expired(dt.datetime(2027, 1, 1))  # naive = UTC
    assert not by_file["INTEL_RT"].expired()


def test_select_and_without() -> None:
    b = tpm_vendor_cas()
    google = b.select(["google"])
    assert {e.vendor for e in google} == {"Google"} and len(google) == 5
    assert len(b.select(["Infineon", "Intel"])) == len([e for e in b if e.vendor in ("Infineon", "Intel")])
    with pytest.raises(ValueError, match="unknown vendor"):
        b.select(["Nonesuch"])
    assert tpm_vendor_cas(["Intel"]).vendors == ("Intel",)
    intel_rt = next(e for e in b if e.file.endswith("INTEL_RT.pem"))
    fewer = b.without([intel_rt.sha256.upper()])
    assert len(fewer) == len(b) - 1 and intel_rt.der not in fewer.roots


# ------------------------------------------------------------------ real EK certificates


def test_real_vendor_ek_certificates_verify_against_the_bundle() -> None:
    b = tpm_vendor_cas()
    (intel,) = trust.decode_certificates((DATA / "intel-rsa-ek.json").read_bytes())
    cases = [
        # (certificate, EK public, manufacturer, model, chain length)
        (intel, (DATA / "tpm2-tools-rsa-ek.pub").read_bytes(), "id:494E5443", "SPT", 3),
        ((DATA / "stm-rsa-ek.der").read_bytes(), None, "id:53544D20", "ST33HTPHAHB4", 4),
        ((DATA / "stm-ecc-ek.der").read_bytes(), None, "id:53544D20", "ST33HTPHAHB4", 3),
    ]
    for cert, public, manufacturer, model, length in cases:
        got = verify_ek_certificate(cert, b.roots, b.intermediates, ek_public=public)
        assert (got.tpm_manufacturer, got.tpm_model, len(got.chain)) == (manufacturer, model, length)
        # the strict profile holds for these vendors too (EKU and keyUsage present)
        verify_ek_certificate(cert, b.roots, b.intermediates, strict=True, ca_validity="at-time")


def test_gce_ek_certificate_needs_its_own_intermediate() -> None:
    """GCE's EK certificate (no EKU, keyEncipherment) comes from an "EK/AK CA Intermediate" other
    than the one go-tpm-tools publishes: same name, another key. Without it: EK_CERT_CHAIN."""
    b = tpm_vendor_cas()
    gce = (DATA / "gce-rsa-ek.pem").read_bytes()
    with pytest.raises(VerificationError) as e:
        verify_ek_certificate(gce, b.roots, b.intermediates)
    assert e.value.reason is Reason.EK_CERT_CHAIN and "signature does not verify" in e.value.detail


def test_gce_ak_certificate_is_not_an_ek_certificate() -> None:
    b = tpm_vendor_cas()
    ak = (DATA / "gce-rsa-ak.pem").read_bytes()
    with pytest.raises(VerificationError) as e:
        verify_ek_certificate(ak, b.roots, b.intermediates)
    assert e.value.reason is Reason.EK_CERT_USAGE


# ------------------------------------------------------------------ damage and laziness


def test_a_damaged_bundle_fails_loudly(tmp_path: Path) -> None:
    copy = tmp_path / "ca"
    shutil.copytree(CA_DIR, copy)
    assert len(load_bundle(copy)) == 61
    target = copy / "tpm-vendor-cas" / "STM_RSA_RT.pem"
    target.write_bytes(target.read_bytes().replace(b"M", b"N", 1))
    with pytest.raises(BundleError, match="STM_RSA_RT"):
        load_bundle(copy)
    target.unlink()
    with pytest.raises(BundleError, match="unreadable"):
        load_bundle(copy)
    (copy / "manifest.json").write_text("{")
    with pytest.raises(BundleError):
        load_bundle(copy)


def test_import_is_lazy() -> None:
    code = ("import sys, tpm2_attest, tpm2_attest.trust; "
            "bad = [m for m in sys.modules if m.startswith(('cryptography', 'tpm2_attest.trust.', 'json', "
            "'urllib.request', 'http.client'))]; print(bad); assert not bad")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    code = ("import sys, tpm2_attest.trust as t; t.tpm_vendor_cas(); "
            "assert 'cryptography.x509' not in sys.modules and 'urllib.request' not in sys.modules")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
