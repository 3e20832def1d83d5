"""The device side of online EK certificates (tpm.ek(fetch=True), EkInfo.certificate_url) and
the ``tpm2-attest trust list`` / ``tpm2-attest ek --fetch`` commands. The "vendor service" is a
loopback server; a swtpm without an EK certificate in NV plays the firmware TPM."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tpm2_attest import Tpm
from tpm2_attest.cli import EXIT_FAIL, main
from tpm2_attest.trust import FetchError, FetchFailure
from tpm2_attest.verify import verify_ek_certificate

RSA_CERT_INDEX = "0x01c00002"


@pytest.fixture
def firmware_tpm(fresh_swtpm, tpm2_tools):  # type: ignore[no-untyped-def]
    """A swtpm whose RSA EK certificate is not in NV (as on Intel PTT / AMD fTPM); returns the
    swtpm and the certificate it had (what the vendor's service would serve)."""
    cert = fresh_swtpm.ek_cert_files["rsa"].read_bytes()
    tpm2_tools("tpm2_nvundefine", "-C", "p", RSA_CERT_INDEX, sw=fresh_swtpm)
    return fresh_swtpm, cert


def test_nv_certificate_first(swtpm, loopback) -> None:  # type: ignore[no-untyped-def]
    url = loopback.add("/ek", b"never served")
    with Tpm.open(swtpm.tcti) as tpm:
        ek = tpm.ek("rsa", fetch=True, url=url)
        assert ek.certificate == swtpm.ek_cert_files["rsa"].read_bytes()
        assert ek.certificate_url == url  # named, not used
        plain = tpm.ek("rsa")
    assert loopback.requests == []
    # swtpm's manufacturer (IBM) publishes no EK certificates online: no URL
    assert plain.certificate_url is None


def test_fetch_from_the_vendor_url(firmware_tpm, loopback, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sw, cert = firmware_tpm
    url = loopback.add("/ekcertservice/abc", cert)
    with Tpm.open(sw.tcti) as tpm:
        assert tpm.ek("rsa").certificate is None
        ek = tpm.ek("rsa", fetch=True, url=url, cache_dir=tmp_path)
        assert ek.certificate == cert and ek.certificate_url == url
        # cached: offline works without the server
        loopback.routes.clear()
        assert tpm.ek("rsa", fetch=True, url=url, cache_dir=tmp_path, offline=True).certificate == cert
    got = verify_ek_certificate(ek.certificate, [sw.ca_root_path.read_bytes()],
                                [sw.ca_intermediate_path.read_bytes()], ek_public=ek.public)
    assert got.tpm_model == "swtpm"


def test_fetch_failures_are_typed(firmware_tpm, loopback) -> None:  # type: ignore[no-untyped-def]
    sw, _ = firmware_tpm
    with Tpm.open(sw.tcti) as tpm:
        with pytest.raises(FetchError) as e:
            tpm.ek("rsa", fetch=True, url=loopback.url("/unknown-key"))
        assert e.value.failure is FetchFailure.NOT_FOUND
        with pytest.raises(FetchError) as e:
            tpm.ek("rsa", fetch=True, url=loopback.url("/x"), offline=True)
        assert e.value.failure is FetchFailure.NOT_CACHED
        # no URL at all (a vendor without a service): nothing to fetch, no certificate
        assert tpm.ek("rsa", fetch=True).certificate is None


def test_cli_ek_fetch(firmware_tpm, loopback, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sw, cert = firmware_tpm
    url = loopback.add("/ek.pem", b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(cert)
                       + b"-----END CERTIFICATE-----\n")
    out_cert = tmp_path / "ek.der"
    rc = main(["ek", "--tcti", sw.tcti, "--json", "--fetch", "--certificate-url", url, "--out-cert", str(out_cert)])
    obj = json.loads(capsys.readouterr().out)
    assert rc == 0 and obj["certificate"] == len(cert) and obj["certificate_url"] == url
    assert out_cert.read_bytes() == cert
    rc = main(["ek", "--tcti", sw.tcti, "--fetch", "--certificate-url", loopback.url("/gone")])
    err = capsys.readouterr().err
    assert rc == EXIT_FAIL and "NOT_FOUND" in err and "/gone" in err
    rc = main(["ek", "--tcti", sw.tcti, "--json", "--offline", "--cache-dir", str(tmp_path / "empty"),
               "--certificate-url", url])
    obj = json.loads(capsys.readouterr().out)
    assert rc == EXIT_FAIL and obj["fetch_failure"] == "NOT_CACHED"


def test_cli_trust_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trust", "list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["VENDOR", "ROLE", "NOT"] and len(lines) == 61 + 2
    ifx1 = next(line for line in lines if line.rstrip().endswith("tpm-vendor-cas/IFX1.pem"))
    assert "EXPIRED" in ifx1 and "Infineon" in ifx1
    assert main(["trust", "list", "--json", "--vendor", "Google", "--vendor", "intel"]) == 0
    obj: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert obj["count"] == 8 and obj["vendors"] == ["Google", "Intel"]
    assert all(c["origin"]["licence"] == ("BSD-3-Clause" if c["file"].startswith("tpm-ca-certificates/")
                                          else "Apache-2.0") for c in obj["certificates"])
    assert main(["trust", "list", "--json", "--expired"]) == 0
    expired = json.loads(capsys.readouterr().out)["certificates"]
    assert expired and all(c["expired"] for c in expired)
    assert main(["trust", "list", "--vendor", "Nonesuch"]) == EXIT_FAIL
    assert "unknown vendor" in capsys.readouterr().err
