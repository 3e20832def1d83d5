"""Certified AKs as Google Compute Engine vTPMs provide them, on swtpm: the AK template
(TPMT_PUBLIC) at NV 0x01c10001/0x01c10003, its certificate at 0x01c10000/0x01c10002 issued
by a test CA; the key derived in the endorsement hierarchy; and verify_ak_certificate on
these and on a real GCE AK certificate."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509

from gce import INDICES, TEMPLATES, nv_put, provision
from pki import ak_extensions, der, ec_key, ek_extensions, make_ca, make_leaf, name
from tpm2_attest import AkBlob, Tpm, trust
from tpm2_attest.errors import ErrorCode, TpmError
from tpm2_attest.tpm2.constants import TPM_RH
from tpm2_attest.verify import (
    Reason,
    VerificationError,
    check_ak,
    verify_ak_certificate,
    verify_quote,
)

DATA = Path(__file__).parent / "data" / "ekcerts"
@pytest.fixture(scope="module")
def ca():  # type: ignore[no-untyped-def]
    root = make_ca("Test EK/AK CA Root")
    return root, make_ca("Test EK/AK CA Intermediate", root)


@pytest.mark.parametrize("kind", ["rsa", "ecc"])
def test_certified_ak_quotes_and_verifies(fresh_swtpm, tpm2_tools, ca, kind: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert len(TEMPLATES[kind].to_bytes()) == {"rsa": 280, "ecc": 88}[kind]
    cert_der = provision(tpm2_tools, fresh_swtpm, kind, ca, tmp_path)
    nonce = os.urandom(32)
    with Tpm.open(fresh_swtpm.tcti) as tpm:
        got = tpm.certified_ak(kind, nonce=nonce)
        assert got.certificate == cert_der and got.blob.format == "TPP1"
        assert (got.certificate_index, got.template_index) == INDICES[kind]
        blob = got.blob
        assert blob.parent == TPM_RH.ENDORSEMENT and blob.template == TEMPLATES[kind]
        # the blob travels like any other
        assert AkBlob.from_bytes(blob.to_bytes()) == blob == AkBlob.from_json(blob.to_json())
        ak = check_ak(blob.to_bytes(), nonce=nonce)
        cert = verify_ak_certificate(got.certificate, [ca[0][0]], [ca[1][0]], ak_public=blob)
        assert cert.subject.startswith("CN=1234567890") and len(cert.chain) == 3
        assert cert.public_key_der == ak.public_der
        # the same key each time; quotes verify under the certified key
        assert tpm.certified_ak(kind).blob.public == blob.public
        q_nonce = os.urandom(32)
        quote = tpm.quote(blob, pcrs=[0, 7], qualifying_data=q_nonce)
    verify_quote(ak, quote, nonce=q_nonce)
    with pytest.raises(VerificationError) as e:
        check_ak(blob, nonce=b"another nonce")
    assert e.value.reason is Reason.NONCE_MISMATCH


def test_certified_ak_belongs_to_its_tpm(fresh_swtpm, tpm2_tools, ca, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    provision(tpm2_tools, fresh_swtpm, "ecc", ca, tmp_path)
    with Tpm.open(fresh_swtpm.tcti) as tpm:
        blob = tpm.certified_ak("ecc").blob
        # a blob whose template was swapped derives another key: refused
        tampered = replace(blob, private=replace(TEMPLATES["ecc"], object_attributes=
                                                 TEMPLATES["ecc"].object_attributes ^ 0x400).to_bytes())
        with pytest.raises(TpmError) as e:
            tpm.quote(tampered, pcrs=[0])
        assert e.value.code is ErrorCode.BAD_BLOB
    # another endorsement seed (another TPM) derives another key from the same template
    tpm2_tools("tpm2_changeeps", sw=fresh_swtpm)
    with Tpm.open(fresh_swtpm.tcti) as tpm, pytest.raises(TpmError) as e:
        tpm.quote(blob, pcrs=[0])
    assert e.value.code is ErrorCode.BAD_BLOB and "another TPM" in str(e.value)


def test_no_certified_ak(fresh_swtpm, tpm2_tools, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with Tpm.open(fresh_swtpm.tcti) as tpm:
        for kind in ("rsa", "ecc"):
            with pytest.raises(TpmError) as e:
                tpm.certified_ak(kind)
            assert e.value.code is ErrorCode.KEY_NOT_FOUND
        with pytest.raises(TpmError) as e:
            tpm.certified_ak("dsa")
        assert e.value.code is ErrorCode.INVALID_ARGUMENT
        with pytest.raises(TpmError) as e:
            tpm.certified_ak("rsa", nonce=bytes(65))
        assert e.value.code is ErrorCode.INVALID_ARGUMENT
    # a template index holding garbage
    nv_put(tpm2_tools, fresh_swtpm, 0x01C10001, b"\x00\x01garbage", tmp_path)
    nv_put(tpm2_tools, fresh_swtpm, 0x01C10000, b"\x30\x00", tmp_path)
    with Tpm.open(fresh_swtpm.tcti) as tpm, pytest.raises(TpmError) as e:
        tpm.certified_ak("rsa")
    assert e.value.code is ErrorCode.BAD_RESPONSE


def test_tpp1_blob_validation() -> None:
    good_template = TEMPLATES["ecc"].to_bytes()
    for bad in ({"key_name": "x"}, {"parent": 0x81000001}, {"private": b"\x00\x23"}):
        fields = {"format": "TPP1", "public": b"", "private": good_template, "creation_data": b"",
                  "attest": b"", "signature": b"", "parent": TPM_RH.ENDORSEMENT, **bad}
        with pytest.raises(TpmError) as e:
            AkBlob(**fields)  # type: ignore[arg-type]
        assert e.value.code is ErrorCode.BAD_BLOB


# ------------------------------------------------------------------ verify_ak_certificate


def test_ak_certificate_shapes(ca) -> None:  # type: ignore[no-untyped-def]
    root, inter = ca
    k = ec_key("ak-shapes").public_key()

    def reason(exts, **kw) -> Reason:  # type: ignore[no-untyped-def]
        with pytest.raises(VerificationError) as e:
            verify_ak_certificate(der(make_leaf(inter, k, subject=name("vm"), extensions=exts)), [root[0]],
                                  [inter[0]], **kw)
        return e.value.reason

    ok = verify_ak_certificate(der(make_leaf(inter, k, subject=name("vm"), extensions=ak_extensions())),
                               [root[0]], [inter[0]], ak_public=k)
    assert ok.expired_cas == ()
    aik = x509.ObjectIdentifier("2.23.133.8.3")
    assert verify_ak_certificate(der(make_leaf(inter, k, extensions=ak_extensions(eku=aik))), [root[0]], [inter[0]])
    # an EK certificate is not an AK certificate, nor is a TLS certificate or a CA
    assert reason(ek_extensions(k)) is Reason.AK_CERT_USAGE
    assert reason(ak_extensions(eku=x509.oid.ExtendedKeyUsageOID.SERVER_AUTH)) is Reason.AK_CERT_USAGE
    ca_like = [(x509.BasicConstraints(ca=True, path_length=None), True), *ak_extensions()[:1]]
    assert reason(ca_like) is Reason.AK_CERT_USAGE
    assert reason([(x509.BasicConstraints(ca=False, path_length=None), True)]) is Reason.AK_CERT_USAGE
    assert reason(ak_extensions(), ak_public=ec_key("not-the-ak").public_key()) is Reason.AK_KEY_MISMATCH
    # chain, time, parse failures carry AK reasons
    with pytest.raises(VerificationError) as e:
        verify_ak_certificate(der(make_leaf(inter, k, extensions=ak_extensions())), [make_ca("Elsewhere")[0]])
    assert e.value.reason is Reason.AK_CERT_CHAIN
    old = make_leaf(inter, k, extensions=ak_extensions(), not_after=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
                    not_before=dt.datetime(2019, 1, 1, tzinfo=dt.UTC))
    with pytest.raises(VerificationError) as e:
        verify_ak_certificate(der(old), [root[0]], [inter[0]])
    assert e.value.reason is Reason.AK_CERT_EXPIRED
    with pytest.raises(VerificationError) as e:
        verify_ak_certificate(b"\x30\x03junk", [root[0]])
    assert e.value.reason is Reason.AK_CERT_MALFORMED
    with pytest.raises(VerificationError) as e:
        verify_ak_certificate(der(make_leaf(inter, k, extensions=ak_extensions())), [root[0]], [inter[0]],
                              ak_public=b"\x00\x02\x00")
    assert e.value.reason is Reason.MALFORMED


def test_real_gce_ak_certificate_against_the_bundle() -> None:
    google = trust.tpm_vendor_cas(["Google"])
    gce_ak = (DATA / "gce-rsa-ak.pem").read_bytes()
    cert = verify_ak_certificate(gce_ak, google.roots, google.intermediates)
    assert "O=Google Compute Engine" in cert.subject and len(cert.chain) == 3
    assert cert.chain[-1].subject.rfc4514_string().startswith("CN=EK/AK CA Root")
    with pytest.raises(VerificationError) as e:
        verify_ak_certificate(gce_ak, google.roots, google.intermediates,
                              ak_public=x509.load_pem_x509_certificate((DATA / "gce-rsa-ek.pem").read_bytes()).public_key())
    assert e.value.reason is Reason.AK_KEY_MISMATCH
