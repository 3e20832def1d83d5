"""EK certificate URLs of firmware TPMs: the vectors of tpm2-tools/go-attestation/go-tpm-kit,
every input form, and a cross-check against the installed tpm2_getekcertificate."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tpm2_attest.evidence import EkInfo
from tpm2_attest.tpm import Tpm
from tpm2_attest.tpm2 import templates as T
from tpm2_attest.tpm2.keys import parse_public
from tpm2_attest.tpm2.structures import TPM2B_PUBLIC
from tpm2_attest.trust import AMD_EK_SERVICE, INTEL_EK_SERVICE, ek_certificate_url

DATA = Path(__file__).parent / "data" / "ekcerts"
RSA_EK = (DATA / "tpm2-tools-rsa-ek.pub").read_bytes()
ECC_EK = (DATA / "tpm2-tools-ecc-ek.pub").read_bytes()
INTEL_RSA_URL = INTEL_EK_SERVICE + "WVEG2rRwkQ7m3RpXlUphgo6Y2HLxl18h6ZZkkOAdnBE%3D"
INTEL_ECC_URL = INTEL_EK_SERVICE + "eXT1X6I9wqIMOXll9LoXf0adQelkeaBccmoYU8Kth8o%3D"


def test_intel_vectors_of_other_implementations() -> None:
    assert ek_certificate_url(RSA_EK, "INTC") == INTEL_RSA_URL
    assert ek_certificate_url(ECC_EK, "INTC") == INTEL_ECC_URL


def test_amd_url_layout() -> None:
    """tpm2-tools' AMD form: SHA-256(00 00 22 22 || u32 exponent || modulus) or
    SHA-256(00 00 44 44 || x || y), first 16 bytes in lowercase hex, after the AIA base."""
    rsa_area = parse_public(RSA_EK)
    assert isinstance(rsa_area.unique, bytes)
    want = hashlib.sha256(b"\x00\x00\x22\x22" + (65537).to_bytes(4, "big") + rsa_area.unique).hexdigest()[:32]
    url = ek_certificate_url(RSA_EK, "AMD")
    assert url == AMD_EK_SERVICE + want and url.removeprefix(AMD_EK_SERVICE).islower()
    ecc_area = parse_public(ECC_EK)
    point = ecc_area.unique
    want = hashlib.sha256(b"\x00\x00\x44\x44" + point.x + point.y).hexdigest()[:32]  # type: ignore[union-attr]
    assert ek_certificate_url(ECC_EK, "AMD") == AMD_EK_SERVICE + want


def test_input_forms_agree() -> None:
    area = parse_public(RSA_EK)
    key = rsa.RSAPublicNumbers(65537, int.from_bytes(area.unique, "big")).public_key()  # type: ignore[arg-type]
    forms: list[object] = [RSA_EK, bytearray(RSA_EK), RSA_EK[2:], area, key,
                           EkInfo("rsa", RSA_EK, b"", None)]
    for form in forms:
        assert ek_certificate_url(form, "INTC") == INTEL_RSA_URL, type(form)  # type: ignore[arg-type]
    ecc_area = parse_public(ECC_EK)
    point = ecc_area.unique
    eckey = ec.EllipticCurvePublicNumbers(int.from_bytes(point.x, "big"), int.from_bytes(point.y, "big"),  # type: ignore[union-attr]
                                          ec.SECP256R1()).public_key()
    assert ek_certificate_url(eckey, "INTC") == INTEL_ECC_URL
    assert ek_certificate_url(eckey, "AMD") == ek_certificate_url(ECC_EK, "AMD")


@pytest.mark.parametrize("manufacturer", ["INTC", "intc", " INTC ", 0x494E5443, "Intel"])
def test_intel_manufacturer_spellings(manufacturer: str | int) -> None:
    assert ek_certificate_url(RSA_EK, manufacturer) == INTEL_RSA_URL


@pytest.mark.parametrize("manufacturer", ["AMD", "AMD\0", 0x414D4400])
def test_amd_manufacturer_spellings(manufacturer: str | int) -> None:
    assert (ek_certificate_url(RSA_EK, manufacturer) or "").startswith(AMD_EK_SERVICE)


@pytest.mark.parametrize("manufacturer", ["IFX", "NTC", "STM ", "MSFT", "IBM", "", "Infineon", 0x49465800, "\u00e9"])
def test_vendors_without_a_service(manufacturer: str | int) -> None:
    assert ek_certificate_url(RSA_EK, manufacturer) is None


def test_exponents() -> None:
    area = parse_public(RSA_EK)
    odd = replace(area, parameters=replace(area.parameters, exponent=3))  # type: ignore[arg-type]
    assert ek_certificate_url(odd, "INTC") is None  # tpm2-tools refuses non-default exponents
    explicit = replace(area, parameters=replace(area.parameters, exponent=65537))  # type: ignore[arg-type]
    assert ek_certificate_url(explicit, "INTC") == INTEL_RSA_URL
    assert ek_certificate_url(explicit, "AMD") == ek_certificate_url(area, "AMD")
    assert ek_certificate_url(odd, "AMD") != ek_certificate_url(area, "AMD")


def test_not_an_ek_key() -> None:
    with pytest.raises(ValueError):
        ek_certificate_url(b"\x00\x01\x02", "INTC")
    sealed = replace(T.SRK_ECC_TEMPLATE, type=0x0008)  # TPM_ALG_KEYEDHASH: not an asymmetric key
    with pytest.raises(ValueError):
        ek_certificate_url(sealed, "AMD")
    assert ek_certificate_url(b"junk", "IFX") is None  # no service: the key is not even read


@pytest.fixture
def getekcertificate(swtpm, loopback):  # type: ignore[no-untyped-def]
    """Run the installed tpm2_getekcertificate (offline, -u EK public) against the loopback
    server and return the path it requested."""
    if shutil.which("tpm2_getekcertificate") is None:
        pytest.skip("tpm2-tools is not installed")

    def run(public: bytes, tmp: Path) -> str:
        loopback.requests.clear()
        pub = tmp / "ek.pub"
        pub.write_bytes(public)
        # any path answers: the tool asks for <server>/<encoded EK hash>
        loopback.routes.clear()
        env = {**os.environ, **swtpm.tools_env()}
        res = subprocess.run(["tpm2_getekcertificate", "-x", "-u", str(pub), "-o", str(tmp / "out.pem"),
                              loopback.url("/ekcertservice/")], env=env, capture_output=True, text=True,
                             timeout=60, check=False)
        assert loopback.requests, res.stderr
        path: str = loopback.requests[-1]
        return path

    return run


def test_intel_urls_match_tpm2_getekcertificate(getekcertificate, swtpm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The installed tpm2-tools derives the same Intel URL for the swtpm's EKs, the sample EKs
    and fresh keys (whatever the server answers)."""
    with Tpm.open(swtpm.tcti) as tpm:
        publics = [tpm.ek("rsa").public, tpm.ek("ecc").public]
    publics += [RSA_EK, ECC_EK]
    for _ in range(3):
        n = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_numbers().n
        publics.append(TPM2B_PUBLIC(replace(T.EK_RSA_TEMPLATE, unique=n.to_bytes(256, "big"))).to_bytes())
    for public in publics:
        path = getekcertificate(public, tmp_path)
        ours = ek_certificate_url(public, "INTC")
        assert ours is not None and path == "/ekcertservice/" + ours.removeprefix(INTEL_EK_SERVICE)
