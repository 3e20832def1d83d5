"""The service and the trust material: the shipped vendor bundle as EK roots (real vendor EK
certificates enroll), an unusable EK nameAlg answered in JSON, and enrollment by AK
certificate (a GCE-style certified AK on swtpm), recorded as such."""

from __future__ import annotations

import base64
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gce import provision
from pki import der, make_ca, pem
from test_service import refused
from tpm2_attest import Tpm, trust
from tpm2_attest.service import ServiceClient, ServiceError, Settings, attest, create_app, enroll
from tpm2_attest.service.settings import parse_ca_spec
from tpm2_attest.tpm2 import templates as T
from tpm2_attest.tpm2.constants import TPM_ALG
from tpm2_attest.tpm2.structures import TPM2B_PUBLIC

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")
pytest.importorskip("httpx")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from tpm2_attest.service.store import DeviceRecord, Store

DATA = Path(__file__).parent / "data" / "ekcerts"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class InProcess(ServiceClient):
    def __init__(self, http: TestClient) -> None:
        super().__init__("http://testserver")
        self.http = http

    def post(self, path: str, body: Any) -> dict[str, Any]:
        r = self.http.post(path, json=body)
        if r.status_code >= 400:
            raise self._refusal(r.status_code, r.content)
        return self._decode(r.status_code, r.content)


def ek_public_for(cert_der: bytes) -> bytes:
    """The TPM2B_PUBLIC (TCG RSA EK template) of an RSA EK certificate's key."""
    from cryptography import x509

    key = x509.load_der_x509_certificate(cert_der).public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    return TPM2B_PUBLIC(replace(T.EK_RSA_TEMPLATE, unique=key.public_numbers().n.to_bytes(256, "big"))).to_bytes()


@pytest.fixture
def app(tmp_path: Path):  # type: ignore[no-untyped-def]
    def make(**kw: Any) -> TestClient:
        return TestClient(create_app(Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", **kw)))
    return make


def test_vendor_bundle_as_ek_roots(app) -> None:  # type: ignore[no-untyped-def]
    stm = (DATA / "stm-rsa-ek.der").read_bytes()
    (intel,) = trust.decode_certificates((DATA / "intel-rsa-ek.json").read_bytes())
    intel_public = (DATA / "tpm2-tools-rsa-ek.pub").read_bytes()
    with app(ek_vendor_cas=True) as http:
        for cert, public in ((stm, ek_public_for(stm[:4 + int.from_bytes(stm[2:4], "big")])), (intel, intel_public)):
            r = http.post("/v1/enroll/begin", json={"ek_public": b64(public), "ek_certificate": b64(cert)})
            assert r.status_code == 200, r.text
    # only some vendors, or one CA excluded: STMicroelectronics' chain no longer verifies
    stm_inter = next(e for e in trust.tpm_vendor_cas() if e.file.endswith("STM_RSA_05I.pem"))
    public = ek_public_for(stm[:4 + int.from_bytes(stm[2:4], "big")])
    for kw in ({"ek_vendor_cas": ("Intel",)}, {"ek_vendor_cas": True, "ek_ca_exclude": (stm_inter.sha256,)}):
        with app(**kw) as http:
            refused(http.post("/v1/enroll/begin", json={"ek_public": b64(public), "ek_certificate": b64(stm)}), 403, "EK_CERT_CHAIN")


def test_unusable_ek_name_alg_is_a_json_refusal(app) -> None:  # type: ignore[no-untyped-def]
    """An RSA EK with nameAlg SHA3-256 used to be a plain-text HTTP 500 (UnsupportedAlgorithm)."""
    n = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_numbers().n
    public = TPM2B_PUBLIC(replace(T.EK_RSA_TEMPLATE, name_alg=TPM_ALG.SHA3_256, unique=n.to_bytes(256, "big")))
    with app(require_ek_certificate=False) as http:
        refused(http.post("/v1/enroll/begin", json={"ek_public": b64(public.to_bytes())}), 403, "UNSUPPORTED_FORMAT")


def test_serve_options() -> None:
    from tpm2_attest.cli import build_parser

    args = build_parser().parse_args(["serve", "--ek-roots", "vendors", "--ek-root", "/etc/roots",
                                      "--ek-ca-exclude", "ab" * 32, "--enroll-by-ak-certificate",
                                      "--ak-root", "vendors:Google", "--ek-ca-validity", "at-time"])
    assert args.ek_root == ["vendors", "/etc/roots"] and args.ak_root == ["vendors:Google"]
    assert args.ek_ca_exclude == ["ab" * 32] and args.enroll_by_ak_certificate
    assert parse_ca_spec(args.ek_root) == ((Path("/etc/roots"),), True)


def test_parse_ca_spec_and_settings(tmp_path: Path) -> None:
    assert parse_ca_spec(["vendors", "/etc/x"]) == ((Path("/etc/x"),), True)
    assert parse_ca_spec(["vendors:Google, Intel", "vendors:Infineon"]) == ((), ("Google", "Intel", "Infineon"))
    assert parse_ca_spec(["vendors:Intel", "vendors"]) == ((), True)
    with pytest.raises(ValueError):
        parse_ca_spec(["vendors:"])
    s = Settings(ek_vendor_cas=("Google",))
    assert len(s.load_ek_roots()) == 2 and len(s.load_ek_intermediates()) == 3
    with pytest.raises(ValueError, match="unknown vendor"):
        Settings(ek_vendor_cas=("Nonesuch",)).load_ek_roots()
    with pytest.raises(ValueError):
        Settings(ek_ca_validity="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="AK root"):
        create_app(Settings(database_url=f"sqlite:///{tmp_path / 'x.sqlite'}",
                            ak_certificate_enrollment=True, require_ek_certificate=False))


@pytest.fixture
def gce_like(fresh_swtpm, tpm2_tools, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A swtpm with a certified ECC AK (test CA), and the files of that CA."""
    root = make_ca("Test vTPM AK Root")
    inter = make_ca("Test vTPM AK Intermediate", root)
    provision(tpm2_tools, fresh_swtpm, "ecc", (root, inter), tmp_path)
    (tmp_path / "ak-root.pem").write_bytes(pem(root[0]))
    (tmp_path / "ak-inter.pem").write_bytes(pem(inter[0]))
    return fresh_swtpm, tmp_path


@pytest.fixture
def ak_service(gce_like) -> Iterator[tuple[Any, TestClient, Path]]:  # type: ignore[no-untyped-def]
    sw, tmp = gce_like
    settings = Settings(database_url=f"sqlite:///{tmp / 'svc.sqlite'}", ek_roots=(Path(sw.ca_root_path),),
                        ek_intermediates=(Path(sw.ca_intermediate_path),), ak_certificate_enrollment=True,
                        ak_roots=(tmp / "ak-root.pem",), ak_intermediates=(tmp / "ak-inter.pem",))
    with TestClient(create_app(settings)) as http:
        yield sw, http, tmp


def test_enrollment_by_ak_certificate(ak_service) -> None:  # type: ignore[no-untyped-def]
    sw, http, tmp = ak_service
    client = InProcess(http)
    with Tpm.open(sw.tcti) as tpm:
        got = enroll(tpm, client, certified_ak="ecc")
        assert got.ak_blob.format == "TPP1" and got.info["enrolled_by"] == "ak_certificate"
        assert got.info["ek_certificate_verified"] is True
        verdict = attest(tpm, client, got.device_id, got.ak_blob, pcrs=[0, 7])
    assert verdict["ok"] is True
    device = Store(f"sqlite:///{tmp / 'svc.sqlite'}").device(got.device_id)
    assert isinstance(device, DeviceRecord) and device.enrolled_by == "ak_certificate"
    assert device.ak_format == "TPP1"


def test_ak_certificate_must_certify_the_ak(ak_service) -> None:  # type: ignore[no-untyped-def]
    sw, http, _ = ak_service
    other = make_ca("Not the AK")  # a certificate of another key
    with Tpm.open(sw.tcti) as tpm:
        r = http.post("/v1/enroll/begin", json={"ek_public": b64(tpm.ek("rsa").public),
                                                 "ek_certificate": b64(tpm.ek("rsa").certificate or b"")})
        begun = r.json()
        got = tpm.certified_ak("ecc", nonce=base64.b64decode(begun["nonce"]))
    r = http.post("/v1/enroll/ak-certificate", json={"enrollment_id": begun["enrollment_id"],
                                                       "ak_blob": b64(got.blob.to_bytes()),
                                                       "ak_certificate": b64(der(other[0]))})
    assert r.status_code == 403 and r.json()["error"]["code"] in ("AK_CERT_CHAIN", "AK_CERT_USAGE")
    # the enrollment failed: no second try with it
    r = http.post("/v1/enroll/ak-certificate", json={"enrollment_id": begun["enrollment_id"],
                                                       "ak_blob": b64(got.blob.to_bytes()),
                                                       "ak_certificate": b64(got.certificate)})
    assert r.status_code == 409 and r.json()["error"]["code"] == "ENROLLMENT_STATE"


def test_ak_certificate_enrollment_is_opt_in(gce_like) -> None:  # type: ignore[no-untyped-def]
    sw, tmp = gce_like
    settings = Settings(database_url=f"sqlite:///{tmp / 'off.sqlite'}", ek_roots=(Path(sw.ca_root_path),),
                        ek_intermediates=(Path(sw.ca_intermediate_path),))
    with TestClient(create_app(settings)) as http, Tpm.open(sw.tcti) as tpm, \
            pytest.raises(ServiceError) as e:
        enroll(tpm, InProcess(http), certified_ak="ecc")
    assert e.value.code == "AK_CERTIFICATE_ENROLLMENT_OFF" and e.value.status == 403


def _aia_chain(loopback) -> tuple[bytes, bytes, bytes]:  # type: ignore[no-untyped-def]
    """A GCE-shaped chain: the root is trusted, the EK certificate's issuer is only reachable
    through its authorityInfoAccess caIssuers URL (served on loopback)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    from pki import NOW, ek_extensions

    root = make_ca("AIA Service Root")
    inter = make_ca("AIA Service EK CA", root)
    loopback.add("/ca.crt", der(inter[0]))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    b = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(inter[0].subject).public_key(key)
         .serial_number(x509.random_serial_number()).not_valid_before(NOW)
         .not_valid_after(NOW.replace(year=NOW.year + 5)))
    for ext, critical in ek_extensions(key, eku=False):
        b = b.add_extension(ext, critical=critical)
    b = b.add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
        x509.AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(loopback.url("/ca.crt")))]),
        critical=False)
    cert = der(b.sign(inter[1], hashes.SHA256()))
    return der(root[0]), cert, ek_public_for(cert)


def test_missing_ek_intermediate_fetched_from_allowed_hosts(app, loopback, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Google Compute Engine EK certificates come from per-pool intermediates that no bundle
    ships (their caIssuers URL names the one): the service fetches a missing issuer from the
    hosts the operator allows (opt-in; the URL comes from an unverified certificate), and the
    fetched certificate is only an intermediate, the root still decides."""
    root, cert, public = _aia_chain(loopback)
    (tmp_path / "root.der").write_bytes(root)
    body = {"ek_public": b64(public), "ek_certificate": b64(cert)}
    with app(ek_roots=(tmp_path / "root.der",)) as http:  # off by default: nothing fetched
        refused(http.post("/v1/enroll/begin", json=body), 403, "EK_CERT_CHAIN")
    assert loopback.requests == []
    with app(ek_roots=(tmp_path / "root.der",), ca_issuer_hosts=("example.org",)) as http:  # not allowed
        refused(http.post("/v1/enroll/begin", json=body), 403, "EK_CERT_CHAIN")
    assert loopback.requests == []
    with app(ek_roots=(tmp_path / "root.der",), ca_issuer_hosts=("127.0.0.1",)) as http:
        r = http.post("/v1/enroll/begin", json=body)
        assert r.status_code == 200, r.text
        assert loopback.requests == ["/ca.crt"]
        r = http.post("/v1/enroll/begin", json=body)  # fetched once per process
        assert r.status_code == 200 and loopback.requests == ["/ca.crt"], r.text
    # a fetched issuer does not make an untrusted root trusted
    other = make_ca("Another Root")
    (tmp_path / "other.der").write_bytes(der(other[0]))
    with app(ek_roots=(tmp_path / "other.der",), ca_issuer_hosts=("127.0.0.1",)) as http:
        refused(http.post("/v1/enroll/begin", json=body), 403, "EK_CERT_CHAIN")


def test_fetch_issuers_option() -> None:
    from tpm2_attest.cli import build_parser
    from tpm2_attest.service.settings import describe

    args = build_parser().parse_args(["serve", "--fetch-issuers-from", "storage.googleapis.com",
                                      "--fetch-issuers-from", "ftpm.amd.com,tsci.intel.com"])
    assert args.fetch_issuers_from == ["storage.googleapis.com", "ftpm.amd.com,tsci.intel.com"]
    assert describe("ca_issuer_hosts") == "--fetch-issuers-from / TPM2_ATTEST_CA_ISSUER_HOSTS"
    assert Settings(ca_issuer_hosts="a.example, b.example").ca_issuer_hosts == ("a.example", "b.example")
