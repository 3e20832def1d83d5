"""Enrollment with the EK certificate chain a TPM keeps in NV (0x01C00100 on): the client sends
it (``ek_chain``), the service uses it as untrusted intermediates only, bounded."""

from __future__ import annotations

import base64
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from pki import der, make_ca, make_leaf, name, pem
from test_ek_chain import nv_put, swtpm_issuer
from test_service import refused
from test_service_trust import InProcess, ek_public_for
from tpm2_attest import Tpm, trust
from tpm2_attest.embedded import EmbeddedSwtpm
from tpm2_attest.evidence import EK_CHAIN_MAX_BYTES, EK_CHAIN_MAX_CERTS
from tpm2_attest.service import Settings, create_app, enroll
from tpm2_attest.tpm2.constants import NV_EK_CHAIN_FIRST

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")
pytest.importorskip("httpx")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def app(tmp_path: Path) -> Callable[..., TestClient]:
    def make(**kw: Any) -> TestClient:
        return TestClient(create_app(Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", **kw)))
    return make


def rsa_leaf(issuer: Any) -> tuple[bytes, bytes]:
    """An RSA EK certificate issued by ``issuer`` and the EK public area it certifies."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    cert = der(make_leaf(issuer, key))
    return cert, ek_public_for(cert)


def test_enroll_sends_the_nv_chain_and_the_service_verifies_through_it(
        fresh_swtpm: EmbeddedSwtpm, tpm2_tools: Any, tmp_path: Path, app: Callable[..., TestClient]) -> None:
    """Intel PTT's layout on swtpm: the EK certificate's issuing CA only in NV 0x01C00100, the
    service trusting the root alone (no intermediates configured). enroll() verifies; the same
    certificate without the chain does not."""
    nv_put(tpm2_tools, fresh_swtpm, tmp_path, NV_EK_CHAIN_FIRST, swtpm_issuer(fresh_swtpm))
    with app(ek_roots=(Path(fresh_swtpm.ca_root_path),)) as http, Tpm.open(fresh_swtpm.tcti) as tpm:
        ek = tpm.ek("rsa")
        assert ek.certificate is not None and len(ek.chain) == 1
        refused(http.post("/v1/enroll/begin", json={"ek_public": b64(ek.public), "ek_certificate": b64(ek.certificate)}), 403, "EK_CERT_CHAIN")
        done = enroll(tpm, InProcess(http))
        assert done.info["ek_certificate_verified"] is True


def test_a_chain_from_the_device_never_makes_an_untrusted_root_pass(app: Callable[..., TestClient],
                                                                   tmp_path: Path) -> None:
    """The device's chain is intermediates, never anchors: a self-signed root sent in it, even
    one named like the trusted root, does not make the path it ends verify."""
    trusted = make_ca("Trusted EK Root")
    (tmp_path / "root.der").write_bytes(der(trusted[0]))
    impostor = make_ca("impostor-key", subject=trusted[0].subject)      # same name, another key
    rogue = make_ca("Rogue EK Root")
    for top in (impostor, rogue):
        ica = make_ca(f"Rogue CA under {top[0].subject.rfc4514_string()}", top)
        cert, public = rsa_leaf(ica)
        body = {"ek_public": b64(public), "ek_certificate": b64(cert), "ek_chain": [b64(der(ica[0])), b64(der(top[0]))]}
        with app(ek_roots=(tmp_path / "root.der",)) as http:
            refused(http.post("/v1/enroll/begin", json=body), 403, "EK_CERT_CHAIN")
    # the same shape under the trusted root passes: the chain is used
    ica = make_ca("Good EK CA", trusted)
    cert, public = rsa_leaf(ica)
    with app(ek_roots=(tmp_path / "root.der",)) as http:
        r = http.post("/v1/enroll/begin", json={"ek_public": b64(public), "ek_certificate": b64(cert),
                                                "ek_chain": [b64(der(ica[0]))]})
    assert r.status_code == 200, r.text


def test_chain_bounds_and_malformed_entries(app: Callable[..., TestClient], tmp_path: Path) -> None:
    root = make_ca("Bounds EK Root")
    ica = make_ca("Bounds EK CA", root)
    (tmp_path / "root.der").write_bytes(der(root[0]))
    cert, public = rsa_leaf(ica)
    base = {"ek_public": b64(public), "ek_certificate": b64(cert)}
    one = b64(der(ica[0]))
    with app(ek_roots=(tmp_path / "root.der",)) as http:
        def post(chain: list[str]) -> Any:
            return http.post("/v1/enroll/begin", json={**base, "ek_chain": chain})

        r = post([one] * (EK_CHAIN_MAX_CERTS + 1))
        assert r.status_code == 422 and r.json()["error"]["code"] == "INVALID_REQUEST", r.text
        assert "ek_chain" in r.json()["error"]["detail"]
        big = b64(b"\x30\x82" + (EK_CHAIN_MAX_BYTES // 2).to_bytes(2, "big") + bytes(EK_CHAIN_MAX_BYTES // 2))
        r = post([big, big])
        assert r.status_code == 422 and "ek_chain" in r.json()["error"]["detail"], r.text
        r = post([one, b64(b"\x30\x03\x02\x01\x05")])
        assert r.status_code == 403 and r.json()["error"]["code"] == "EK_CERT_MALFORMED", r.text
        assert "ek_chain #1" in r.json()["error"]["detail"]
        r = post([b64(pem(ica[0]) + pem(root[0]))])  # one entry, two certificates
        assert r.status_code == 403 and r.json()["error"]["code"] == "EK_CERT_MALFORMED", r.text
        r = post(["not base64!"])
        assert r.status_code == 422 and r.json()["error"]["code"] == "INVALID_REQUEST", r.text
        assert post([one] * EK_CHAIN_MAX_CERTS).status_code == 200  # the limit itself is fine


def test_missing_issuers_are_fetched_from_the_top_of_the_device_chain(app: Callable[..., TestClient],
                                                                     loopback: Any, tmp_path: Path) -> None:
    """Intel's layout: the TPM keeps the chip's CAs; the CA above them is named by the top one's
    caIssuers URL (tsci.intel.com). With fetching allowed, the service climbs the device's
    chain and fetches from its top; the fetched CA is still only an intermediate."""
    root = make_ca("ODCA-like Root")
    product = make_ca("ODCA-like Issuing CA", root)
    loopback.add("/issuing.crt", der(product[0]))
    aia = x509.AuthorityInformationAccess([x509.AccessDescription(
        x509.AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(loopback.url("/issuing.crt")))])
    kernel = make_ca("Chip Kernel CA", product, extra=[(aia, False)])
    ptt = make_ca("Chip PTT CA", kernel)
    cert, public = rsa_leaf(ptt)
    (tmp_path / "root.der").write_bytes(der(root[0]))
    body = {"ek_public": b64(public), "ek_certificate": b64(cert),
            "ek_chain": [b64(der(kernel[0])), b64(der(ptt[0]))]}
    assert trust.chain_top(cert, [der(kernel[0]), der(ptt[0])]) == der(kernel[0])
    with app(ek_roots=(tmp_path / "root.der",)) as http:  # fetching off: the chain alone is not enough
        refused(http.post("/v1/enroll/begin", json=body), 403, "EK_CERT_CHAIN")
    assert loopback.requests == []
    with app(ek_roots=(tmp_path / "root.der",), ca_issuer_hosts=("127.0.0.1",)) as http:
        r = http.post("/v1/enroll/begin", json=body)
        assert r.status_code == 200, r.text
    assert loopback.requests == ["/issuing.crt"]
    other = make_ca("Not This Root")
    (tmp_path / "other.der").write_bytes(der(other[0]))
    with app(ek_roots=(tmp_path / "other.der",), ca_issuer_hosts=("127.0.0.1",)) as http:
        refused(http.post("/v1/enroll/begin", json=body), 403, "EK_CERT_CHAIN")


def test_chain_top_climbs_by_name_and_stops() -> None:
    root = make_ca("Top Root")
    a = make_ca("Top A", root)
    b = make_ca("Top B", a)
    leaf = der(make_leaf(b, rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(),
                         subject=name("leaf")))
    assert trust.chain_top(leaf, []) == leaf
    assert trust.chain_top(leaf, [der(a[0]), der(b[0])]) == der(a[0])
    assert trust.chain_top(leaf, [der(b[0]), der(a[0]), der(root[0])]) == der(root[0])  # self-signed: ends
    assert trust.chain_top(leaf, [b"junk", pem(b[0])]) == der(b[0])
    # two CAs naming each other: the climb ends
    x = make_ca("Loop X", subject=name("Loop Y"))
    y = make_ca("Loop Y", subject=name("Loop X"))
    assert trust.chain_top(der(x[0]), [der(y[0]), der(x[0])]) in (der(x[0]), der(y[0]))
    with pytest.raises(ValueError):
        trust.chain_top(b"\x01\x02", [])


def test_client_without_a_chain_sends_no_field(fresh_swtpm: EmbeddedSwtpm, app: Callable[..., TestClient]) -> None:
    """No chain in NV: the request is what it was before the field existed (older servers
    refuse unknown fields)."""
    sent: list[dict[str, Any]] = []

    class Recording(InProcess):
        def post(self, path: str, body: Any) -> dict[str, Any]:
            sent.append(body)
            return super().post(path, body)

    with app(ek_roots=(Path(fresh_swtpm.ca_root_path),), ek_intermediates=(Path(fresh_swtpm.ca_intermediate_path),)) \
            as http, Tpm.open(fresh_swtpm.tcti) as tpm:
        enroll(tpm, Recording(http))
    assert "ek_chain" not in sent[0] and sent[0]["ek_certificate"]
