"""Real EK certificate shapes the first verifier refused or mishandled (independent review).

Each test names the real-world shape and the rule it follows: SHA-1 signed vendor
chains (Infineon's and Nuvoton's first TPM 2.0 CAs are SHA-1 signed), issuer names
encoded differently from their CA's subject (RFC 5280 §7.1 compares names after
normalization, not byte for byte), RSASSA-PSS signatures and larger EK keys.
"""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from pki import NOW, ek_extensions, ku, name, pem
from tpm2_attest.verify import Reason, VerificationError, verify_ek_certificate

_SHA256_RSA = bytes.fromhex("06092a864886f70d01010b")
_SHA1_RSA = bytes.fromhex("06092a864886f70d010105")

RsaIssuer = tuple[x509.Certificate, rsa.RSAPrivateKey]


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def _resign_sha1(cert: x509.Certificate, key: rsa.RSAPrivateKey) -> x509.Certificate:
    """`cert` signed again with sha1WithRSAEncryption (`cryptography` no longer signs SHA-1)."""
    tbs = cert.tbs_certificate_bytes.replace(_SHA256_RSA, _SHA1_RSA)
    signature = key.sign(tbs, padding.PKCS1v15(), hashes.SHA1())
    alg = _tlv(0x30, _SHA1_RSA + b"\x05\x00")
    return x509.load_der_x509_certificate(_tlv(0x30, tbs + alg + _tlv(0x03, b"\x00" + signature)))


def _builder(subject: x509.Name, issuer: x509.Name, key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
             days: int = 1000) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=10)).not_valid_after(NOW + dt.timedelta(days=days)))


def rsa_ca(label: str, issuer: RsaIssuer | None = None, *, sha1: bool = False, pss: bool = False,
           subject: x509.Name | None = None) -> RsaIssuer:
    key = rsa.generate_private_key(65537, 2048)
    subject = subject or name(label)
    issuer_name, signer = (subject, key) if issuer is None else (issuer[0].subject, issuer[1])
    b = (_builder(subject, issuer_name, key.public_key())
         .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
         .add_extension(ku(cert_sign=True), critical=True))
    if pss:
        return b.sign(signer, hashes.SHA256(), rsa_padding=padding.PSS(padding.MGF1(hashes.SHA256()), 32)), key
    cert = b.sign(signer, hashes.SHA256())
    return (_resign_sha1(cert, signer) if sha1 else cert), key


def ek_leaf(issuer: RsaIssuer, key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey, *, sha1: bool = False,
            pss: bool = False, issuer_name: x509.Name | None = None) -> x509.Certificate:
    b = _builder(x509.Name([]), issuer_name or issuer[0].subject, key, days=100)
    for ext, critical in ek_extensions(key):
        b = b.add_extension(ext, critical=critical)
    if pss:
        return b.sign(issuer[1], hashes.SHA384(), rsa_padding=padding.PSS(padding.MGF1(hashes.SHA384()), 48))
    cert = b.sign(issuer[1], hashes.SHA256())
    return _resign_sha1(cert, issuer[1]) if sha1 else cert


@pytest.fixture(scope="module")
def root() -> RsaIssuer:
    return rsa_ca("Review Root")


@pytest.fixture(scope="module")
def ek_key() -> rsa.RSAPublicKey:
    return rsa.generate_private_key(65537, 2048).public_key()


def test_sha1_signed_ek_certificate_and_intermediate(root: RsaIssuer, ek_key: rsa.RSAPublicKey) -> None:
    """Infineon's "IFX TPM EK Intermediate CA" and Nuvoton's "NTC TPM EK Root CA" certificates
    are sha1WithRSAEncryption, and so are EK certificates of that generation: keylime verifies
    them (public_key().verify with the certificate's own hash). Accepted, and said so in
    ``tolerated``; ``strict=True`` refuses them."""
    leaf = ek_leaf(root, ek_key, sha1=True)
    got = verify_ek_certificate(pem(leaf), [pem(root[0])], ek_public=ek_key)
    assert "sha1-signature" in got.tolerated and not got.lenient
    inter = rsa_ca("SHA-1 EK CA", root, sha1=True)
    got = verify_ek_certificate(pem(ek_leaf(inter, ek_key)), [pem(root[0])], [pem(inter[0])])
    assert "sha1-signature" in got.tolerated
    with pytest.raises(VerificationError) as e:
        verify_ek_certificate(pem(leaf), [pem(root[0])], strict=True)
    assert e.value.reason is Reason.EK_CERT_CHAIN and "SHA-1" in e.value.detail
    # a SHA-256 chain says nothing of SHA-1
    assert "sha1-signature" not in verify_ek_certificate(pem(ek_leaf(root, ek_key)), [pem(root[0])]).tolerated


def test_sha1_signature_is_still_checked(root: RsaIssuer, ek_key: rsa.RSAPublicKey) -> None:
    leaf = ek_leaf(root, ek_key, sha1=True)
    raw = bytearray(leaf.public_bytes(serialization.Encoding.DER))
    raw[-5] ^= 1
    with pytest.raises(VerificationError) as e:
        verify_ek_certificate(bytes(raw), [pem(root[0])])
    assert e.value.reason is Reason.EK_CERT_CHAIN
    other = rsa_ca("Review Root")  # same name, another key
    with pytest.raises(VerificationError):
        verify_ek_certificate(pem(leaf), [pem(other[0])])


def test_rsassa_pss_and_larger_ek_keys(root: RsaIssuer) -> None:
    pss_ca = rsa_ca("PSS EK CA", root, pss=True)
    keys: list[rsa.RSAPublicKey | ec.EllipticCurvePublicKey] = [
        rsa.generate_private_key(65537, 3072).public_key(),
        rsa.generate_private_key(65537, 4096).public_key(),
        ec.generate_private_key(ec.SECP384R1()).public_key(),
        ec.generate_private_key(ec.SECP521R1()).public_key(),
    ]
    for key in keys:
        got = verify_ek_certificate(pem(ek_leaf(pss_ca, key, pss=True)), [pem(root[0])], [pem(pss_ca[0])],
                                    ek_public=key, strict=True)
        assert got.public_key_der


def _dn(country: str, org: str, cn: str, kind: _ASN1Type) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, country),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, org, _type=kind),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn, _type=kind)])


def test_issuer_name_matched_as_rfc5280_compares_names(ek_key: rsa.RSAPublicKey) -> None:
    """RFC 5280 §7.1 (RFC 4518): names match whatever the string type (PrintableString or
    UTF8String), letter case and runs of spaces. A leaf whose issuer is encoded as UTF8String
    under a CA whose subject is a PrintableString was refused ("issuer name differs")."""
    ca = rsa_ca("x", subject=_dn("CH", "Vendor NV", "TPM EK CA 01", _ASN1Type.PrintableString))
    for issuer in (_dn("CH", "Vendor NV", "TPM EK CA 01", _ASN1Type.UTF8String),
                   _dn("ch", "VENDOR  nv", " TPM EK CA 01 ", _ASN1Type.UTF8String)):
        got = verify_ek_certificate(pem(ek_leaf(ca, ek_key, issuer_name=issuer)), [pem(ca[0])])
        assert len(got.chain) == 2
    # a different name is still a different name, and the signature still decides
    for issuer in (_dn("CH", "Vendor NV", "TPM EK CA 02", _ASN1Type.UTF8String),
                   _dn("CH", "VendorNV", "TPM EK CA 01", _ASN1Type.UTF8String)):
        with pytest.raises(VerificationError) as e:
            verify_ek_certificate(pem(ek_leaf(ca, ek_key, issuer_name=issuer)), [pem(ca[0])])
        assert e.value.reason is Reason.EK_CERT_CHAIN
    impostor = rsa_ca("x", subject=_dn("CH", "vendor nv", "tpm ek ca 01", _ASN1Type.UTF8String))
    with pytest.raises(VerificationError):
        verify_ek_certificate(pem(ek_leaf(impostor, ek_key)), [pem(ca[0])])


def test_bundle_infineon_intermediates_chain_to_the_infineon_root() -> None:
    """The bundle builder could not check SHA-1 signatures either, so it took the 17 SHA-1
    signed "IFX TPM EK Intermediate CA" certificates for anchors (trusted as given). They are
    intermediates under "IFX TPM EK Root CA": that CA is the anchor now."""
    from tpm2_attest.trust import tpm_vendor_cas
    from tpm2_attest.verify.certpath import verify_path

    b = tpm_vendor_cas()
    ifx = [e for e in b if e.subject.startswith("CN=IFX TPM EK Intermediate CA")]
    assert len(ifx) == 17
    for e in ifx:
        assert not e.anchor and e.der not in b.roots, e.file
        path = verify_path(e.der, b.roots, b.intermediates, at_time=min(e.not_after, NOW))
        assert path.chain[-1].subject.rfc4514_string().startswith("CN=IFX TPM EK Root CA")
        assert "sha1-signature" in path.tolerated


_ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")
_ECDSA_SHA256_NULL = bytes.fromhex("300c06082a8648ce3d0403020500")


def _content(der: bytes) -> bytes:
    """The content octets of one DER TLV."""
    n = der[1]
    if n < 0x80:
        return der[2:2 + n]
    k = n & 0x7F
    return der[2 + k:2 + k + int.from_bytes(der[2:2 + k], "big")]


def _with_ecdsa_null(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bytes:
    """`cert` with an explicit NULL in both ECDSA AlgorithmIdentifiers, signed again (as Intel's
    OnDie CA writes them; RFC 5758 §3.2 says the parameters MUST be absent)."""
    tbs_content = _content(cert.tbs_certificate_bytes)
    assert tbs_content.count(_ECDSA_SHA256) == 1
    tbs = _tlv(0x30, tbs_content.replace(_ECDSA_SHA256, _ECDSA_SHA256_NULL))
    signature = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    return _tlv(0x30, tbs + _ECDSA_SHA256_NULL + _tlv(0x03, b"\x00" + signature))


def test_ecdsa_signature_algorithm_with_null_parameters() -> None:
    """Intel's "OnDie CA RootCA" (the root of PTT EK certificates since 11th-generation Core,
    SHA-256 BEB40BB7...FC24) encodes ecdsa-with-SHA384 with a NULL parameter; `cryptography`
    refuses it (ExtraData), and so the whole Intel OnDie chain was EK_CERT_MALFORMED. Read
    through the repair path (``ecdsa-null-parameters``); the signature is checked over the bytes
    as signed."""
    from pki import make_ca

    root = make_ca("ODCA-like Root")
    inter = make_ca("ODCA-like CA", root)
    odd_inter = _with_ecdsa_null(inter[0], root[1])
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    leaf_builder = _builder(x509.Name([]), inter[0].subject, key, days=100)
    for ext, critical in ek_extensions(key):
        leaf_builder = leaf_builder.add_extension(ext, critical=critical)
    odd_leaf = _with_ecdsa_null(leaf_builder.sign(inter[1], hashes.SHA256()), inter[1])
    got = verify_ek_certificate(odd_leaf, [pem(root[0])], [odd_inter], ek_public=key)
    assert got.lenient and "ecdsa-null-parameters" in got.tolerated and len(got.chain) == 3
    # the bytes as signed decide: a flipped bit in the signed part fails
    tampered = bytearray(odd_leaf)
    tampered[len(tampered) // 2] ^= 1
    with pytest.raises(VerificationError):
        verify_ek_certificate(bytes(tampered), [pem(root[0])], [odd_inter])


def test_shipped_intel_ondie_root_reads() -> None:
    from tpm2_attest.trust import tpm_vendor_cas

    (ondie,) = [e for e in tpm_vendor_cas(["Intel"]) if "OnDie CA Root" in e.subject]
    assert ondie.anchor and ondie.parsed == "lenient: ecdsa-null-parameters"
    assert ondie.sha256.upper().startswith("BEB40BB7507B3396")


def test_excluded_directory_subtree_is_not_bypassed_by_case() -> None:
    """nameConstraints compared directoryNames byte for byte: an excluded subtree O=Other let
    O=OTHER (or "Other " with a trailing space) through. RFC 5280 §4.2.1.10 matches them with
    the §7.1 rules, so the exclusion holds; a permitted subtree admits the same variants."""
    from pki import make_ca, make_leaf

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    no_san = [e for e in ek_extensions(key) if not isinstance(e[0], x509.SubjectAlternativeName)]
    other = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Other")])
    anchor = make_ca("NC Case Root", extra=[(x509.NameConstraints(
        permitted_subtrees=None, excluded_subtrees=[x509.DirectoryName(other)]), True)])
    sub = make_ca("NC Case Sub", anchor)
    for org in ("Other", "OTHER", "other  ", " Other"):
        leaf = make_leaf(sub, key, subject=name("tpm", o=org), extensions=no_san)
        with pytest.raises(VerificationError) as e:
            verify_ek_certificate(pem(leaf), [pem(anchor[0])], [pem(sub[0])])
        assert "nameConstraints" in e.value.detail, org
    permit = make_ca("NC Case Permit", extra=[(x509.NameConstraints(
        permitted_subtrees=[x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME,
                                                                              "Vendor")]))],
        excluded_subtrees=None), True)])
    psub = make_ca("NC Case PSub", permit, subject=name("NC Case PSub", o="VENDOR"))
    leaf = make_leaf(psub, key, subject=name("tpm", o="vendor"), extensions=no_san)
    assert verify_ek_certificate(pem(leaf), [pem(permit[0])], [pem(psub[0])])
