"""EK certificates must look like EK certificates (TCG EK Credential Profile), not just chain.

Each case here was accepted before the profile checks existed: a CA certificate, a TLS
server certificate or an AK certificate issued under a trusted root passed as an "EK
certificate".
"""

from __future__ import annotations

import warnings

import pytest
from cryptography import x509

from pki import (
    AK_EKU,
    EK_EKU,
    SERVER_AUTH,
    TCG_SAN,
    ak_extensions,
    ec_key,
    ek_extensions,
    ku,
    make_ca,
    make_leaf,
    name,
    pem,
    rsa_key,
)
from tpm2_attest.verify import Reason, VerificationError, verify_ek_certificate

UNKNOWN = x509.ObjectIdentifier("1.3.6.1.4.1.99999.1")


@pytest.fixture(scope="module")
def pki():  # type: ignore[no-untyped-def]
    root = make_ca("Profile Root")
    inter = make_ca("Profile EK CA", root)
    return root, inter


def reason(leaf: x509.Certificate, pki, **kw) -> Reason:  # type: ignore[no-untyped-def]
    root, inter = pki
    with pytest.raises(VerificationError) as e:
        verify_ek_certificate(pem(leaf), [root[0]], [inter[0]], **kw)
    return e.value.reason


def ok(leaf: x509.Certificate, pki, **kw):  # type: ignore[no-untyped-def]
    root, inter = pki
    return verify_ek_certificate(pem(leaf), [root[0]], [inter[0]], **kw)


def test_profile_shaped_rsa_and_ecc_eks_pass(pki) -> None:
    for key in (rsa_key("ek-rsa").public_key(), ec_key("ek-ecc").public_key()):
        got = ok(make_leaf(pki[1], key), pki, ek_public=key, strict=True)
        assert got.tpm_manufacturer == "id:53544D20" and got.expired_cas == ()


def test_ca_certificate_is_not_an_ek_certificate(pki) -> None:
    key = rsa_key("ek-rsa").public_key()
    exts = [e for e in ek_extensions(key) if not isinstance(e[0], x509.BasicConstraints)]
    leaf = make_leaf(pki[1], key, extensions=[*exts, (x509.BasicConstraints(ca=True, path_length=0), True)])
    assert reason(leaf, pki) is Reason.EK_CERT_USAGE


def test_eku_must_name_ek_certificates_when_present(pki) -> None:
    key = rsa_key("ek-rsa").public_key()
    base = ek_extensions(key, eku=False)
    tls = make_leaf(pki[1], key, extensions=[*base, (x509.ExtendedKeyUsage([SERVER_AUTH]), False)])
    assert reason(tls, pki) is Reason.EK_CERT_USAGE
    both = make_leaf(pki[1], key, extensions=[*base, (x509.ExtendedKeyUsage([SERVER_AUTH, EK_EKU]), False)])
    assert ok(both, pki)
    # no EKU at all (Google's vTPM EK certificates): accepted unless strict
    bare = make_leaf(pki[1], key, extensions=base)
    assert ok(bare, pki)
    assert reason(bare, pki, strict=True) is Reason.EK_CERT_USAGE


@pytest.mark.parametrize(("kind", "usage", "accepted"), [
    ("rsa", ku(encipher=True), True),
    ("rsa", ku(encipher=True, sign=True), True),
    ("rsa", ku(sign=True), False),
    ("rsa", ku(agree=True), False),
    ("rsa", ku(encipher=True, cert_sign=True), False),
    ("ecc", ku(agree=True), True),
    ("ecc", ku(sign=True), False),
    ("ecc", ku(encipher=True), True),   # not the profile's keyAgreement, still no signer
])
def test_key_usage_must_fit_the_ek(pki, kind: str, usage: x509.KeyUsage, accepted: bool) -> None:
    key = rsa_key("ek-rsa").public_key() if kind == "rsa" else ec_key("ek-ecc").public_key()
    leaf = make_leaf(pki[1], key, extensions=ek_extensions(key, usage=usage))
    if accepted:
        assert ok(leaf, pki)
    else:
        assert reason(leaf, pki) is Reason.EK_CERT_USAGE


def test_an_ecc_ek_with_key_encipherment_is_refused_only_when_strict(pki) -> None:
    key = ec_key("ek-ecc").public_key()
    leaf = make_leaf(pki[1], key, extensions=ek_extensions(key, usage=ku(encipher=True)))
    assert ok(leaf, pki)
    assert reason(leaf, pki, strict=True) is Reason.EK_CERT_USAGE


def test_missing_key_usage_only_refused_when_strict(pki) -> None:
    key = rsa_key("ek-rsa").public_key()
    leaf = make_leaf(pki[1], key, extensions=[(TCG_SAN, True), (x509.ExtendedKeyUsage([EK_EKU]), False)])
    assert ok(leaf, pki)
    assert reason(leaf, pki, strict=True) is Reason.EK_CERT_USAGE


def test_ak_certificate_posing_as_ek_certificate(pki) -> None:
    """A GCE-shaped AK certificate (digitalSignature only) is not an EK certificate."""
    key = rsa_key("ek-rsa").public_key()
    for exts in (ak_extensions(), ak_extensions(eku=AK_EKU)):
        leaf = make_leaf(pki[1], key, subject=name("instance-1"), extensions=exts)
        assert reason(leaf, pki, ek_public=key) is Reason.EK_CERT_USAGE


def test_unknown_critical_extensions(pki) -> None:
    key = ec_key("ek-ecc").public_key()
    odd = (x509.UnrecognizedExtension(UNKNOWN, b"\x05\x00"), True)
    assert reason(make_leaf(pki[1], key, extensions=[*ek_extensions(key), odd]), pki) is Reason.EK_CERT_USAGE
    # the same extension, not critical, is ignored
    quiet = (x509.UnrecognizedExtension(UNKNOWN, b"\x05\x00"), False)
    assert ok(make_leaf(pki[1], key, extensions=[*ek_extensions(key), quiet]), pki)
    # an intermediate with an unknown critical extension cannot issue; critical policies can
    root = pki[0]
    bad_ca = make_ca("Odd EK CA", root, extra=[odd])
    with pytest.raises(VerificationError) as e:
        verify_ek_certificate(pem(make_leaf(bad_ca, key)), [root[0]], [bad_ca[0]])
    assert e.value.reason is Reason.EK_CERT_CHAIN and UNKNOWN.dotted_string in e.value.detail
    policies = x509.CertificatePolicies([x509.PolicyInformation(x509.ObjectIdentifier("2.5.29.32.0"), None)])
    pol_ca = make_ca("Policy EK CA", root, extra=[(policies, True)])
    assert verify_ek_certificate(pem(make_leaf(pol_ca, key)), [root[0]], [pol_ca[0]])


def test_name_constraints_are_enforced(pki) -> None:
    root = pki[0]
    key = ec_key("ek-ecc").public_key()
    permit_vendor = x509.NameConstraints(
        permitted_subtrees=[x509.DirectoryName(x509.Name([
            x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, "Vendor")]))],
        excluded_subtrees=None)
    ca = make_ca("NC EK CA", root, extra=[(permit_vendor, True)])
    no_san = [e for e in ek_extensions(key) if not isinstance(e[0], x509.SubjectAlternativeName)]
    inside = make_leaf(ca, key, subject=name("tpm 1", o="Vendor"), extensions=no_san)
    outside = make_leaf(ca, key, subject=name("tpm 2", o="Other"), extensions=no_san)
    assert verify_ek_certificate(pem(inside), [root[0]], [ca[0]])
    with pytest.raises(VerificationError) as e:
        verify_ek_certificate(pem(outside), [root[0]], [ca[0]])
    assert e.value.reason is Reason.EK_CERT_CHAIN and "nameConstraints" in e.value.detail
    # the TCG SubjectAltName directoryName is a name too: a permitted subtree must cover it
    tcg_only = make_leaf(ca, key)  # empty subject, SAN dirName with the TCG attributes
    with pytest.raises(VerificationError):
        verify_ek_certificate(pem(tcg_only), [root[0]], [ca[0]])
    # excluded subtrees, and constraints on a trust anchor apply below it too
    exclude_other = x509.NameConstraints(permitted_subtrees=None, excluded_subtrees=[
        x509.DirectoryName(x509.Name([x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, "Other")]))])
    anchor = make_ca("NC Root", extra=[(exclude_other, True)])
    sub = make_ca("NC Sub CA", anchor)
    assert verify_ek_certificate(pem(make_leaf(sub, key, subject=name("a", o="Vendor"))), [anchor[0]], [sub[0]])
    with pytest.raises(VerificationError) as e:
        verify_ek_certificate(pem(make_leaf(sub, key, subject=name("b", o="Other"), extensions=no_san)),
                              [anchor[0]], [sub[0]])
    assert e.value.reason is Reason.EK_CERT_CHAIN
    # DNS constraints against DNS SubjectAltNames
    dns = x509.NameConstraints(permitted_subtrees=[x509.DNSName("tpm.example")], excluded_subtrees=None)
    dns_ca = make_ca("DNS EK CA", root, extra=[(dns, True)])
    for host, good in (("a.tpm.example", True), ("tpm.example", True), ("evil.example", False)):
        leaf = make_leaf(dns_ca, key, extensions=[*no_san, (x509.SubjectAlternativeName([x509.DNSName(host)]), False)])
        if good:
            assert verify_ek_certificate(pem(leaf), [root[0]], [dns_ca[0]])
        else:
            with pytest.raises(VerificationError):
                verify_ek_certificate(pem(leaf), [root[0]], [dns_ca[0]])


def test_pem_after_an_openssl_text_dump(pki) -> None:
    """Vendor files (Alibaba's, Nationz's) put `openssl x509 -text` output before the PEM."""
    root, inter = pki
    key = ec_key("ek-ecc").public_key()
    leaf = make_leaf(inter, key)
    dump = b"Certificate:\n    Data:\n        Version: 3 (0x2)\n        Subject: -----\n"
    assert verify_ek_certificate(dump + pem(leaf), [dump + pem(root[0])], [dump + pem(inter[0])])


def test_long_name_attributes_do_not_warn(pki) -> None:
    """Google's vTPM CA names exceed X.520's 64 characters; reading them must stay quiet."""
    root, _ = pki
    long_cn = "tpm_ek_v1_cloud_host-signer-0-2020-10-22T14:02:08-07:00 K:1, 2:HBNpwXkvAF4xxxxxxxxxxxx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ca = make_ca("long", root, subject=x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, long_cn, _validate=False)]))
        key = ec_key("ek-ecc").public_key()
        leaf = make_leaf(ca, key)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert verify_ek_certificate(pem(leaf), [root[0]], [pem(ca[0])])
