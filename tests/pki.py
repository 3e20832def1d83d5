"""A small test PKI: CAs and EK/AK-shaped leaves with chosen extensions (for certificate tests)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

UTC = dt.UTC
NOW = dt.datetime.now(UTC)
DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo

EK_EKU = x509.ObjectIdentifier("2.23.133.8.1")
AK_EKU = x509.ObjectIdentifier("2.23.133.8.3")
SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
TCG_SAN = x509.SubjectAlternativeName([x509.DirectoryName(x509.Name([
    x509.RelativeDistinguishedName([x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.1"), "id:53544D20")]),
    x509.RelativeDistinguishedName([x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.2"), "ST33")]),
    x509.RelativeDistinguishedName([x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.3"), "id:00490004")]),
]))])

_KEYS: dict[str, ec.EllipticCurvePrivateKey] = {}
_RSA: dict[str, rsa.RSAPrivateKey] = {}

Issuer = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def ec_key(label: str) -> ec.EllipticCurvePrivateKey:
    """One P-256 key per label, generated once."""
    if label not in _KEYS:
        _KEYS[label] = ec.generate_private_key(ec.SECP256R1())
    return _KEYS[label]


def rsa_key(label: str) -> rsa.RSAPrivateKey:
    """One RSA-2048 key per label, generated once."""
    if label not in _RSA:
        _RSA[label] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _RSA[label]


def name(cn: str, **attrs: str) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if "o" in attrs:
        parts.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, attrs["o"]))
    return x509.Name(parts)


def ku(*, sign: bool = False, encipher: bool = False, agree: bool = False,
       cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(sign, False, encipher, False, agree, cert_sign, cert_sign, False, False)


def make_ca(label: str, issuer: Issuer | None = None, *, subject: x509.Name | None = None,
            extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
            not_before: dt.datetime = NOW - dt.timedelta(days=1000),
            not_after: dt.datetime = NOW + dt.timedelta(days=3650)) -> Issuer:
    """A CA certificate (self-signed without `issuer`) with basicConstraints and keyUsage."""
    key = ec_key(label)
    subject = subject or name(label)
    issuer_name, signer = (subject, key) if issuer is None else (issuer[0].subject, issuer[1])
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(not_before).not_valid_after(not_after)
         .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
         .add_extension(ku(cert_sign=True), critical=True))
    for ext, critical in extra:
        b = b.add_extension(ext, critical=critical)
    return b.sign(signer, hashes.SHA256()), key


def make_leaf(issuer: Issuer, key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey, *,
              subject: x509.Name | None = None,
              extensions: Sequence[tuple[x509.ExtensionType, bool]] | None = None,
              not_before: dt.datetime = NOW - dt.timedelta(days=1),
              not_after: dt.datetime = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
              aia: str | None = None) -> x509.Certificate:
    """A leaf with the given extensions (default: the TCG EK shape for the key's type)."""
    if extensions is None:
        extensions = ek_extensions(key)
    b = (x509.CertificateBuilder().subject_name(subject or x509.Name([]))
         .issuer_name(issuer[0].subject).public_key(key)
         .serial_number(x509.random_serial_number())
         .not_valid_before(not_before).not_valid_after(not_after))
    for ext, critical in extensions:
        b = b.add_extension(ext, critical=critical)
    if aia is not None:
        b = b.add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
            x509.AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(aia))]),
            critical=False)
    return b.sign(issuer[1], hashes.SHA256())


def ek_extensions(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey, *, eku: bool = True,
                  usage: x509.KeyUsage | None = None) -> list[tuple[x509.ExtensionType, bool]]:
    """What the TCG EK Credential Profile asks of an EK certificate."""
    if usage is None:
        usage = ku(encipher=True) if isinstance(key, rsa.RSAPublicKey) else ku(agree=True)
    exts: list[tuple[x509.ExtensionType, bool]] = [
        (TCG_SAN, True),
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (usage, True),
    ]
    if eku:
        exts.append((x509.ExtendedKeyUsage([EK_EKU]), False))
    return exts


def ak_extensions(*, eku: x509.ObjectIdentifier | None = None) -> list[tuple[x509.ExtensionType, bool]]:
    """A GCE-shaped AK certificate: digitalSignature, not a CA, no EKU unless given."""
    exts: list[tuple[x509.ExtensionType, bool]] = [
        (ku(sign=True), True),
        (x509.BasicConstraints(ca=False, path_length=None), True),
    ]
    if eku is not None:
        exts.append((x509.ExtendedKeyUsage([eku]), False))
    return exts


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(DER)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(PEM)


def tls_files(directory: Path, *, client_eku: bool = True) -> dict[str, Path]:
    """A TLS test PKI written as PEM files in ``directory``: ``ca`` (the server's CA),
    ``server_cert``/``server_key`` (127.0.0.1 and localhost), ``client_ca``,
    ``client_cert``/``client_key`` (issued by ``client_ca``), ``other_ca`` (trusted by nobody)
    and ``stranger_cert``/``stranger_key`` (a client certificate issued by ``other_ca``)."""
    import ipaddress

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    def leaf(issuer: Issuer, label: str, eku: x509.ObjectIdentifier,
             san: list[x509.GeneralName] | None = None) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        exts: list[tuple[x509.ExtensionType, bool]] = [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (ku(sign=True), True),
            (x509.ExtendedKeyUsage([eku]), False),
            (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
            (x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), False),
        ]
        if san:
            exts.append((x509.SubjectAlternativeName(san), False))
        return make_leaf(issuer, key.public_key(), subject=name(label), extensions=exts,
                         not_after=NOW + dt.timedelta(days=30)), key

    def ca(label: str) -> Issuer:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(label)).issuer_name(name(label))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(ku(cert_sign=True), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        return cert, key

    directory.mkdir(parents=True, exist_ok=True)
    server_ca, client_ca, other_ca = ca("test server CA"), ca("test client CA"), ca("test other CA")
    server, server_key = leaf(server_ca, "tpm2-attest test server", SERVER_AUTH,
                              [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    client_eku_oid = ExtendedKeyUsageOID.CLIENT_AUTH if client_eku else SERVER_AUTH
    client, client_key = leaf(client_ca, "device-1", client_eku_oid)
    stranger, stranger_key = leaf(other_ca, "stranger", ExtendedKeyUsageOID.CLIENT_AUTH)
    files = {"ca": pem(server_ca[0]), "server_cert": pem(server), "server_key": key_pem(server_key),
             "client_ca": pem(client_ca[0]), "client_cert": pem(client), "client_key": key_pem(client_key),
             "other_ca": pem(other_ca[0]), "stranger_cert": pem(stranger), "stranger_key": key_pem(stranger_key)}
    out = {}
    for label, data in files.items():
        path = directory / f"{label}.pem"
        path.write_bytes(data)
        out[label] = path
    return out
