"""Fetching EK certificates and CA issuers from a loopback server: every response format,
the cache and offline mode, and hostile servers (slow, huge, redirecting elsewhere)."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import textwrap
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from pki import der, ec_key, make_ca, make_leaf, pem
from tpm2_attest import trust
from tpm2_attest.trust import FetchError, FetchFailure
from tpm2_attest.verify import Reason, VerificationError, verify_ek_certificate

DATA = Path(__file__).parent / "data" / "ekcerts"
INTEL_JSON = (DATA / "intel-rsa-ek.json").read_bytes()


def intel_der() -> bytes:
    (d,) = trust.decode_certificates(INTEL_JSON)
    return d


def failure(call) -> FetchFailure:  # type: ignore[no-untyped-def]
    with pytest.raises(FetchError) as e:
        call()
    return e.value.failure


# ------------------------------------------------------------------ formats


def test_intel_json_wrapper_decodes_to_the_intel_ek_certificate() -> None:
    d = intel_der()
    assert d[:2] == b"\x30\x82" and len(d) == int.from_bytes(d[2:4], "big") + 4
    # the same bytes tpm2-tools gets by its sed/base64 recipe (-_ -> +/, %3D -> =)
    value = json.loads(INTEL_JSON)["certificate"]
    assert d == base64.b64decode(value.replace("-", "+").replace("_", "/").replace("%3D", "="))


@pytest.mark.parametrize("form", ["json", "der", "pem", "pem-with-text", "pkcs7", "chunked-der"])
def test_every_response_format(loopback, form: str) -> None:  # type: ignore[no-untyped-def]
    d = intel_der()
    p7_ca = make_ca("P7 CA")[0]
    body = {
        "json": INTEL_JSON,
        "der": d,
        "pem": _pem(d),
        "pem-with-text": b"Certificate:\n    Data: ...\n" + _pem(d),
        "pkcs7": pkcs7.serialize_certificates([p7_ca], Encoding.DER),
        "chunked-der": d,
    }[form]
    url = loopback.add("/ek/" + form, body, chunked=form == "chunked-der")
    got = trust.fetch_ek_certificate(url, timeout=5)
    assert got == (der(p7_ca) if form == "pkcs7" else d)


def _pem(d: bytes) -> bytes:
    b64 = base64.b64encode(d).decode()
    return ("-----BEGIN CERTIFICATE-----\n" + "\n".join(textwrap.wrap(b64, 64))
            + "\n-----END CERTIFICATE-----\n").encode()


def test_fetched_intel_certificate_verifies_against_the_bundle(loopback) -> None:  # type: ignore[no-untyped-def]
    public = (DATA / "tpm2-tools-rsa-ek.pub").read_bytes()
    url = trust.ek_certificate_url(public, "INTC")
    assert url is not None
    path = "/" + url.split("/", 3)[3]  # the Intel path, served on loopback
    local = loopback.add(path, INTEL_JSON)
    got = trust.fetch_ek_certificate(local, timeout=5)
    bundle = trust.tpm_vendor_cas()
    ek = verify_ek_certificate(got, bundle.roots, bundle.intermediates, ek_public=public)
    assert ek.tpm_manufacturer == "id:494E5443" and ek.tpm_model == "SPT"


@pytest.mark.parametrize(("body", "what"), [
    (b"", "empty"),
    (b"<html>not here</html>", "html"),
    (b'{"pubhash": "x"}', "json without certificate"),
    (b'{"certificate": "!!!"}', "json bad base64"),
    (b'{"certificate": "AAAA"}', "json not a certificate"),
    (b"[" * 100000, "json nesting"),
    (b"\x30\x03\x02\x01\x00", "DER not a certificate"),
    (b"\x30\x84\xff\xff\xff\xff", "DER length past the end"),
    (b"-----BEGIN CERTIFICATE-----\nAAAA", "PEM without END"),
])
def test_bad_content(loopback, body: bytes, what: str) -> None:  # type: ignore[no-untyped-def]
    url = loopback.add("/bad", body)
    assert failure(lambda: trust.fetch_ek_certificate(url, timeout=5)) is FetchFailure.BAD_CONTENT, what


def test_trailing_bytes_after_der_are_refused(loopback) -> None:  # type: ignore[no-untyped-def]
    url = loopback.add("/trail", intel_der() + b"\x00")
    assert failure(lambda: trust.fetch_ek_certificate(url, timeout=5)) is FetchFailure.BAD_CONTENT


def test_two_certificates_where_one_ek_certificate_is_expected(loopback) -> None:  # type: ignore[no-untyped-def]
    url = loopback.add("/two", _pem(intel_der()) + _pem(der(make_ca("Other")[0])))
    assert failure(lambda: trust.fetch_ek_certificate(url, timeout=5)) is FetchFailure.BAD_CONTENT
    assert len(trust.fetch_certificates(url, timeout=5)) == 2


# ------------------------------------------------------------------ HTTP failures


def test_http_statuses(loopback) -> None:  # type: ignore[no-untyped-def]
    assert failure(lambda: trust.fetch_ek_certificate(loopback.url("/missing"), timeout=5)) is FetchFailure.NOT_FOUND
    gone = loopback.add("/gone", b"", status=410)
    assert failure(lambda: trust.fetch_ek_certificate(gone, timeout=5)) is FetchFailure.NOT_FOUND
    boom = loopback.add("/boom", b"oops", status=500)
    assert failure(lambda: trust.fetch_ek_certificate(boom, timeout=5)) is FetchFailure.HTTP_ERROR


def test_redirects(loopback) -> None:  # type: ignore[no-untyped-def]
    target = loopback.add("/real", intel_der())
    hop = loopback.add("/hop", b"", status=302, headers={"Location": target})
    assert trust.fetch_ek_certificate(hop, timeout=5) == intel_der()
    elsewhere = loopback.add("/file", b"", status=302, headers={"Location": "file:///etc/passwd"})
    assert failure(lambda: trust.fetch_ek_certificate(elsewhere, timeout=5)) is FetchFailure.BAD_URL
    loop = loopback.add("/loop", b"", status=302, headers={"Location": loopback.url("/loop")})
    assert failure(lambda: trust.fetch_ek_certificate(loop, timeout=5)) is FetchFailure.HTTP_ERROR
    for i in range(12):  # a long chain of distinct redirects: refused after MAX_REDIRECTS
        loopback.add(f"/r{i}", b"", status=302, headers={"Location": loopback.url(f"/r{i + 1}")})
    loopback.add("/r12", intel_der())
    assert failure(lambda: trust.fetch_ek_certificate(loopback.url("/r0"), timeout=5)) is FetchFailure.HTTP_ERROR


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.org/x", "gopher://h/", "http://", "not a url",
                                 "http://[::1"])
def test_only_http_urls(url: str) -> None:
    assert failure(lambda: trust.fetch_ek_certificate(url, timeout=5)) is FetchFailure.BAD_URL


def test_size_cap(loopback) -> None:  # type: ignore[no-untyped-def]
    announced = loopback.add("/announced", b"x" * 10, content_length=10 * 1024 * 1024)
    assert failure(lambda: trust.fetch_ek_certificate(announced, timeout=5)) is FetchFailure.TOO_LARGE
    streamed = loopback.add("/streamed", b"\x30" * (300 * 1024), chunked=True)
    assert failure(lambda: trust.fetch_ek_certificate(streamed, timeout=5)) is FetchFailure.TOO_LARGE
    small = loopback.add("/small", intel_der())
    assert failure(lambda: trust.fetch_ek_certificate(small, timeout=5, max_bytes=100)) is FetchFailure.TOO_LARGE


def test_slow_servers_hit_the_deadline(loopback) -> None:  # type: ignore[no-untyped-def]
    """A server that never answers, or dribbles one byte at a time, cannot hold the caller:
    the whole exchange ends with TIMEOUT (a hang would fail the suite's own time limit)."""
    stall = loopback.add("/stall", intel_der(), stall=30)
    dribble = loopback.add("/dribble", intel_der(), dribble=0.05)
    for url in (stall, dribble):
        start = time.monotonic()
        assert failure(lambda u=url: trust.fetch_ek_certificate(u, timeout=0.5)) is FetchFailure.TIMEOUT
        assert time.monotonic() - start < 10


def test_connection_refused() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert failure(lambda: trust.fetch_ek_certificate(f"http://127.0.0.1:{port}/x", timeout=5)) is FetchFailure.NETWORK


def test_bad_timeout(loopback) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        trust.fetch_ek_certificate(loopback.url("/x"), timeout=0)


# ------------------------------------------------------------------ cache and offline


def test_cache_and_offline(loopback, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url = loopback.add("/ek", INTEL_JSON)
    cache = tmp_path / "cache"
    assert trust.fetch_ek_certificate(url, timeout=5, cache_dir=cache) == intel_der()
    assert loopback.requests == ["/ek"]
    entry = cache / (hashlib.sha256(url.encode()).hexdigest() + ".der")
    assert entry.read_bytes() == intel_der()  # stored as DER, not as the JSON wrapper
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary files left
    # served from the cache: no second request, and offline works
    assert trust.fetch_ek_certificate(url, timeout=5, cache_dir=cache) == intel_der()
    assert trust.fetch_ek_certificate(url, cache_dir=cache, offline=True) == intel_der()
    assert loopback.requests == ["/ek"]
    # offline without an entry, or without a cache at all
    other = loopback.url("/other")
    assert failure(lambda: trust.fetch_ek_certificate(other, cache_dir=cache, offline=True)) is FetchFailure.NOT_CACHED
    assert failure(lambda: trust.fetch_ek_certificate(url, offline=True)) is FetchFailure.NOT_CACHED
    assert loopback.requests == ["/ek"]
    # a damaged entry is not served: online it is fetched again, offline it is missing
    entry.write_bytes(b"\x30\x82garbage")
    assert failure(lambda: trust.fetch_ek_certificate(url, cache_dir=cache, offline=True)) is FetchFailure.NOT_CACHED
    assert trust.fetch_ek_certificate(url, timeout=5, cache_dir=cache) == intel_der()
    assert entry.read_bytes() == intel_der() and loopback.requests == ["/ek", "/ek"]


def test_failures_are_not_cached(loopback, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url = loopback.add("/flaky", b"", status=503)
    assert failure(lambda: trust.fetch_ek_certificate(url, timeout=5, cache_dir=tmp_path)) is FetchFailure.HTTP_ERROR
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ AIA caIssuers


@pytest.fixture
def aia_pki(loopback):  # type: ignore[no-untyped-def]
    """root -> mid -> sub -> leaf; each certificate's AIA points at its issuer on loopback."""
    root = make_ca("AIA Root")
    mid = _with_aia(make_ca("AIA Mid", root), root, loopback.url("/root.cer"))
    sub = _with_aia(make_ca("AIA Sub", mid), mid, loopback.url("/mid.cer"))
    key = ec_key("aia-ek").public_key()
    leaf = make_leaf(sub, key, aia=loopback.url("/sub.p7c"))
    loopback.add("/root.cer", der(root[0]))
    loopback.add("/mid.cer", der(mid[0]))
    loopback.add("/sub.p7c", pkcs7.serialize_certificates([sub[0]], Encoding.DER))
    return root, mid, sub, leaf


def _with_aia(ca, issuer, url: str):  # type: ignore[no-untyped-def]
    """Re-issue `ca` with an AIA caIssuers URL (make_ca has no AIA parameter)."""
    cert, key = ca
    b = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
         .public_key(cert.public_key()).serial_number(cert.serial_number)
         .not_valid_before(cert.not_valid_before_utc).not_valid_after(cert.not_valid_after_utc))
    for ext in cert.extensions:
        b = b.add_extension(ext.value, critical=ext.critical)
    b = b.add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
        x509.AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(url))]), critical=False)
    return b.sign(issuer[1], hashes.SHA256()), key


def test_aia_fetches_missing_intermediates(aia_pki, loopback, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, mid, sub, leaf = aia_pki
    with pytest.raises(VerificationError) as e:
        verify_ek_certificate(pem(leaf), [root[0]])
    assert e.value.reason is Reason.EK_CERT_CHAIN
    assert trust.ca_issuer_urls(pem(leaf)) == [loopback.url("/sub.p7c")]
    fetched = trust.fetch_ca_issuers(pem(leaf), known=[pem(root[0])], timeout=5, cache_dir=tmp_path)
    assert fetched == [der(sub[0]), der(mid[0])]  # stops below the known root
    assert verify_ek_certificate(pem(leaf), [root[0]], fetched).chain[1:] == [sub[0], mid[0], root[0]]
    # cached: offline gives the same, with no new request
    n = len(loopback.requests)
    assert trust.fetch_ca_issuers(der(leaf), known=[der(root[0])], cache_dir=tmp_path, offline=True) == fetched
    assert len(loopback.requests) == n
    # nothing known: up to the self-signed root, and never past max_certs
    assert trust.fetch_ca_issuers(der(leaf), timeout=5) == [der(sub[0]), der(mid[0]), der(root[0])]
    assert trust.fetch_ca_issuers(der(leaf), timeout=5, max_certs=1) == [der(sub[0])]
    # an issuer already known: nothing to fetch
    assert trust.fetch_ca_issuers(der(leaf), known=[der(sub[0])], timeout=5) == []


def test_aia_failures(aia_pki, loopback) -> None:  # type: ignore[no-untyped-def]
    root, _mid, sub, leaf = aia_pki
    del loopback.routes["/sub.p7c"]
    assert failure(lambda: trust.fetch_ca_issuers(der(leaf), known=[der(root[0])], timeout=5)) is FetchFailure.NOT_FOUND
    assert failure(lambda: trust.fetch_ca_issuers(der(leaf), offline=True)) is FetchFailure.NOT_CACHED
    no_aia = make_leaf(sub, ec_key("aia-ek").public_key())
    assert trust.ca_issuer_urls(der(no_aia)) == []
    assert trust.fetch_ca_issuers(der(no_aia), timeout=5) == []
    with pytest.raises(ValueError):
        trust.fetch_ca_issuers(b"not a certificate")


def test_aia_loops_are_bounded(loopback) -> None:  # type: ignore[no-untyped-def]
    """Two CAs that name each other as issuer, each pointing at the other: bounded."""
    a = make_ca("Loop A")
    b = make_ca("Loop B", a)
    a_by_b = _with_aia(make_ca("Loop A", b), b, loopback.url("/b.cer"))
    b_by_a = _with_aia(b, a, loopback.url("/a.cer"))
    loopback.add("/a.cer", der(a_by_b[0]))
    loopback.add("/b.cer", der(b_by_a[0]))
    leaf = make_leaf(b_by_a, ec_key("aia-ek").public_key(), aia=loopback.url("/b.cer"))
    got = trust.fetch_ca_issuers(der(leaf), timeout=5)
    assert 1 <= len(got) <= trust.fetch.MAX_ISSUERS  # type: ignore[attr-defined]


def test_real_certificates_name_their_issuers() -> None:
    assert trust.ca_issuer_urls(intel_der()) == [
        "http://upgrades.intel.com/content/CRL/ekcert/SPTHEPIDPROD_EK_Platform_Public_Key.cer"]
    gce = (DATA / "gce-rsa-ek.pem").read_bytes()
    (url,) = trust.ca_issuer_urls(gce)
    assert url.startswith("http://privateca-content-") and url.endswith("/ca.crt")


def test_allowed_hosts(loopback) -> None:  # type: ignore[no-untyped-def]
    """``hosts``: caIssuers URLs elsewhere are not followed, nor redirects that leave them."""
    from tpm2_attest.trust.fetch import host_allowed

    assert host_allowed("http://a.storage.googleapis.com/x", ["storage.googleapis.com"])
    assert host_allowed("http://STORAGE.googleapis.com./x", ["storage.googleapis.com"])
    assert not host_allowed("http://evilstorage.googleapis.com.example/x", ["storage.googleapis.com"])
    assert not host_allowed("http://notstorage.googleapis.com/x", ["storage.googleapis.com"])
    root = make_ca("Hosts Root")
    inter = make_ca("Hosts EK CA", root)
    loopback.add("/inter.cer", der(inter[0]))
    leaf = make_leaf(inter, ec_key("hosts-ek").public_key(), aia=loopback.url("/inter.cer"))
    assert trust.fetch_ca_issuers(der(leaf), hosts=["example.org"], timeout=5) == []
    assert loopback.requests == []
    assert trust.fetch_ca_issuers(der(leaf), hosts=["127.0.0.1"], timeout=5) == [der(inter[0])]
    with pytest.raises(FetchError) as e:
        trust.fetch_certificates(loopback.url("/inter.cer"), hosts=["example.org"], timeout=5)
    assert e.value.failure is FetchFailure.BAD_URL
    loopback.add("/away", status=302, headers={"Location": "http://localhost:1/inter.cer"})
    with pytest.raises(FetchError) as e:
        trust.fetch_certificates(loopback.url("/away"), hosts=["127.0.0.1"], timeout=5)
    assert e.value.failure is FetchFailure.BAD_URL and "not allowed" in e.value.detail
