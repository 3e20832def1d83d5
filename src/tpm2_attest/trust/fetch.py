"""Fetch certificates over HTTP: EK certificates from TPM vendors' services, issuers from AIA.

Standard library only (``urllib``). Every exchange is bounded: http/https URLs only (also
after redirects, at most ``MAX_REDIRECTS``), a response size cap, and a hard deadline for
the whole exchange (a watchdog shuts the socket down when it passes, so a server that
dribbles bytes cannot hold the caller; name resolution is bounded by the system resolver).
Responses are read as DER, PEM, Intel's JSON wrapper (``{"pubhash": ..., "certificate":
"<base64url, %3D-escaped padding>"}``) or a certs-only PKCS#7 (RFC 5280 §4.2.2.1 allows it
for caIssuers). Nothing here verifies a certificate: that is :mod:`tpm2_attest.verify`'s job.

Caching: with ``cache_dir``, a certificate fetched once is kept as DER under the SHA-256 of
its URL (written atomically) and read from there afterwards; ``offline=True`` reads only
the cache and never opens a connection.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import http.client
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Final
from urllib.parse import unquote, urljoin, urlsplit

from .. import _der
from .._files import write_atomic
from .._version import __version__
from .errors import FetchError, FetchFailure

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_REDIRECTS",
    "MAX_RESPONSE_BYTES",
    "ca_issuer_urls",
    "decode_certificates",
    "fetch_ca_issuers",
    "fetch_certificates",
    "fetch_ek_certificate",
    "host_allowed",
]

DEFAULT_TIMEOUT: Final = 10.0
"""Seconds for one whole exchange (connection, redirects, response)."""
MAX_RESPONSE_BYTES: Final = 128 * 1024
"""Largest response read (an EK certificate is 1-2 KiB; Intel's JSON adds a third)."""
MAX_REDIRECTS: Final = 5
MAX_CERT_BYTES: Final = 64 * 1024
"""Largest single certificate accepted (the verifier's limit too)."""
MAX_ISSUERS: Final = 4
"""Most certificates ``fetch_ca_issuers`` follows up a chain."""

_PEM_BEGIN: Final = b"-----BEGIN CERTIFICATE-----"
_PEM_END: Final = b"-----END CERTIFICATE-----"
_OID_SIGNED_DATA: Final = bytes.fromhex("06092a864886f70d010702")
_OID_AIA: Final = bytes.fromhex("06082b06010505070101")
_OID_CA_ISSUERS: Final = bytes.fromhex("06082b06010505073002")
_READ_CHUNK: Final = 16 * 1024


# ----------------------------------------------------------------------- decoding


def _bad(url: str, detail: str) -> FetchError:
    return FetchError(FetchFailure.BAD_CONTENT, url, detail)


def _check_certificate(der: bytes, url: str) -> bytes:
    """`der` is exactly one Certificate SEQUENCE {tbs, algorithm, signature} (framing only)."""
    if len(der) > MAX_CERT_BYTES:
        raise _bad(url, f"a certificate of {len(der)} bytes")
    try:
        tag, start, end = _der.header(der, 0, len(der), set())
        if tag != 0x30 or end != len(der):
            raise _der.Malformed("not one DER SEQUENCE")
        parts = _der.children(der, start, end)
    except _der.Malformed as exc:
        raise _bad(url, f"not a DER certificate: {exc}") from exc
    if [p[0] for p in parts] != [0x30, 0x30, 0x03]:
        raise _bad(url, "not a DER certificate (SEQUENCE {tbs, algorithm, signature})")
    return der


def _pkcs7_certificates(der: bytes, url: str) -> list[bytes]:
    """The certificates of a certs-only CMS SignedData (ContentInfo) in DER."""
    try:
        _, start, end = _der.header(der, 0, len(der), set())
        info = _der.children(der, start, end)
        if len(info) != 2 or info[1][0] != 0xA0:
            raise _der.Malformed("ContentInfo is not {contentType, [0] content}")
        (sd,) = _der.children(der, info[1][2], info[1][3])
        if sd[0] != 0x30:
            raise _der.Malformed("SignedData is not a SEQUENCE")
        fields = _der.children(der, sd[2], sd[3])
        certs = [f for f in fields if f[0] == 0xA0]
        if not certs:
            raise _der.Malformed("no certificates in the SignedData")
        out = [der[c[1] : c[3]] for c in _der.children(der, certs[0][2], certs[0][3]) if c[0] == 0x30]
    except _der.Malformed as exc:
        raise _bad(url, f"PKCS#7: {exc}") from exc
    if not out:
        raise _bad(url, "PKCS#7 without certificates")
    return [_check_certificate(c, url) for c in out]


def _intel_json(body: bytes, url: str) -> list[bytes]:
    try:
        obj: Any = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise _bad(url, f"JSON: {exc}") from exc
    value = obj.get("certificate") if isinstance(obj, dict) else None
    if not isinstance(value, str) or not value:
        raise _bad(url, "JSON without a 'certificate' string")
    text = "".join(unquote(value).split()).replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        der = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad(url, f"JSON certificate is not base64url: {exc}") from exc
    return [_check_certificate(der, url)]


def _pem(body: bytes, url: str) -> list[bytes]:
    out = []
    pos = 0
    while True:
        begin = body.find(_PEM_BEGIN, pos)
        if begin < 0:
            break
        end = body.find(_PEM_END, begin)
        if end < 0:
            raise _bad(url, "PEM block without its END line")
        try:
            der = base64.b64decode(b"".join(body[begin + len(_PEM_BEGIN) : end].split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _bad(url, f"PEM: {exc}") from exc
        out.append(_check_certificate(der, url))
        pos = end + len(_PEM_END)
    return out


def decode_certificates(body: bytes, url: str = "<response>") -> list[bytes]:
    """The DER certificate(s) of a response: DER, PEM (one or more blocks), Intel's JSON
    wrapper, or a certs-only PKCS#7. Raises FetchError(BAD_CONTENT)."""
    head = body.lstrip()[:1]
    if head == b"{":
        return _intel_json(body, url)
    if _PEM_BEGIN in body:
        return _pem(body, url)
    if head == b"\x30" and body[:1] == b"\x30":
        try:
            _, start, _end = _der.header(body, 0, len(body), set())
        except _der.Malformed as exc:
            raise _bad(url, f"not DER: {exc}") from exc
        if body[start : start + len(_OID_SIGNED_DATA)] == _OID_SIGNED_DATA:
            return _pkcs7_certificates(body, url)
        return [_check_certificate(body, url)]
    raise _bad(url, "neither DER, PEM, PKCS#7 nor Intel's JSON")


# ----------------------------------------------------------------------- HTTP


class _Deadline:
    """A watchdog: when `seconds` pass, shut down every socket registered so far (and any
    registered later), so a blocked read returns at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.fired = False
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._timer.cancel()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            socks = list(self._socks)
        for s in socks:
            _shutdown(s)

    def register(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self._socks.append(sock)
            fired = self.fired
        if fired:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _HTTPConnection(http.client.HTTPConnection):
    deadline: _Deadline

    def connect(self) -> None:
        super().connect()
        self.deadline.register(self.sock)


class _HTTPSConnection(http.client.HTTPSConnection):
    deadline: _Deadline

    def connect(self) -> None:
        super().connect()
        self.deadline.register(self.sock)


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        deadline = self.deadline

        def factory(host: str, **kw: Any) -> _HTTPConnection:
            conn = _HTTPConnection(host, **kw)
            conn.deadline = deadline
            return conn

        return self.do_open(factory, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        deadline = self.deadline

        def factory(host: str, **kw: Any) -> _HTTPSConnection:
            conn = _HTTPSConnection(host, **kw)
            conn.deadline = deadline
            return conn

        return self.do_open(factory, req)


class _Redirects(urllib.request.HTTPRedirectHandler):
    """At most MAX_REDIRECTS redirects, to http/https URLs only (urllib allows ftp too), and
    to the allowed hosts when the caller names some."""

    max_redirections = MAX_REDIRECTS

    def __init__(self, hosts: tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.hosts = hosts

    def http_error_302(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                       headers: Any) -> Any:
        location = headers.get("location") or headers.get("uri")
        if location:
            target = urljoin(req.full_url, location)
            _check_url(target)
            if self.hosts is not None and not host_allowed(target, self.hosts):
                raise FetchError(FetchFailure.BAD_URL, target, "redirected to a host not allowed")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _check_url(url: str) -> None:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise FetchError(FetchFailure.BAD_URL, url, str(exc)) from exc
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise FetchError(FetchFailure.BAD_URL, url, "only http:// and https:// URLs are fetched")


def host_allowed(url: str, hosts: Iterable[str]) -> bool:
    """Whether `url`'s host is one of `hosts` or a subdomain of one (case-insensitive)."""
    try:
        host = (urlsplit(url).hostname or "").rstrip(".").lower()
    except ValueError:
        return False
    for allowed in hosts:
        a = allowed.strip().rstrip(".").lower()
        if a and (host == a or host.endswith("." + a)):
            return True
    return False


def _http_get(url: str, timeout: float, max_bytes: int, hosts: tuple[str, ...] | None = None) -> bytes:
    """GET `url` within `timeout` seconds in all; the body, at most `max_bytes`."""
    _check_url(url)
    if not timeout > 0:
        raise ValueError("timeout must be positive")
    request = urllib.request.Request(url, headers={
        "User-Agent": f"tpm2-attest/{__version__}",
        "Accept": "application/pkix-cert, application/x-x509-ca-cert, application/pkcs7-mime, "
                  "application/json, application/x-pem-file, */*;q=0.5",
    })
    deadline = _Deadline(timeout)
    opener = urllib.request.build_opener(_HTTPHandler(deadline), _HTTPSHandler(deadline), _Redirects(hosts))
    start = time.monotonic()
    try:
        with deadline, opener.open(request, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            if length is not None and length.strip().isdigit() and int(length) > max_bytes:
                raise FetchError(FetchFailure.TOO_LARGE, url, f"Content-Length {int(length)} > {max_bytes}")
            chunks: list[bytes] = []
            size = 0
            while True:
                chunk = resp.read1(_READ_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError(FetchFailure.TOO_LARGE, url, f"more than {max_bytes} bytes")
                chunks.append(chunk)
                if time.monotonic() - start > timeout:
                    raise FetchError(FetchFailure.TIMEOUT, url, f"no complete response in {timeout:g} s")
            if deadline.fired:
                raise FetchError(FetchFailure.TIMEOUT, url, f"no complete response in {timeout:g} s")
            return b"".join(chunks)
    except FetchError:
        raise
    except urllib.error.HTTPError as exc:
        exc.close()
        failure = FetchFailure.NOT_FOUND if exc.code in (404, 410) else FetchFailure.HTTP_ERROR
        raise FetchError(failure, url, f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if deadline.fired or isinstance(reason, TimeoutError | socket.timeout):
            raise FetchError(FetchFailure.TIMEOUT, url, f"no complete response in {timeout:g} s") from None
        raise FetchError(FetchFailure.NETWORK, url, f"{type(reason).__name__}: {reason}") from None


# ----------------------------------------------------------------------- cache


def _cache_path(cache_dir: str | os.PathLike[str], url: str) -> Path:
    return Path(cache_dir) / (hashlib.sha256(url.encode("utf-8")).hexdigest() + ".der")


def _read_cache(path: Path, url: str) -> list[bytes] | None:
    """The certificates cached for `url` (DER, back to back), or None when absent/unreadable."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_RESPONSE_BYTES + 1)
    except OSError:
        return None
    if not data or len(data) > MAX_RESPONSE_BYTES:
        return None
    try:
        return [_check_certificate(data[s:e], url) for _, s, _, e in _der.children(data)]
    except (FetchError, _der.Malformed):
        return None


def fetch_certificates(url: str, *, timeout: float = DEFAULT_TIMEOUT,
                       cache_dir: str | os.PathLike[str] | None = None, offline: bool = False,
                       max_bytes: int = MAX_RESPONSE_BYTES,
                       hosts: Iterable[str] | None = None) -> list[bytes]:
    """Every certificate (DER) served at `url`; cached by URL when `cache_dir` is given.
    With `hosts`, only a URL on one of them (or a subdomain) is fetched, redirects included.

    Raises FetchError: BAD_URL, NOT_FOUND, HTTP_ERROR, NETWORK, TIMEOUT, TOO_LARGE,
    BAD_CONTENT, NOT_CACHED (offline without a cache entry)."""
    _check_url(url)
    allowed = None if hosts is None else tuple(hosts)
    if allowed is not None and not host_allowed(url, allowed):
        raise FetchError(FetchFailure.BAD_URL, url, "host not allowed")
    path = _cache_path(cache_dir, url) if cache_dir is not None else None
    if path is not None:
        cached = _read_cache(path, url)
        if cached is not None:
            return cached
    if offline:
        detail = "no cache directory given" if path is None else f"not in {path.parent}"
        raise FetchError(FetchFailure.NOT_CACHED, url, detail)
    certs = decode_certificates(_http_get(url, timeout, max_bytes, allowed), url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, b"".join(certs), mode=0o644)
    return certs


def fetch_ek_certificate(url: str, *, timeout: float = DEFAULT_TIMEOUT,
                         cache_dir: str | os.PathLike[str] | None = None, offline: bool = False,
                         max_bytes: int = MAX_RESPONSE_BYTES) -> bytes:
    """The EK certificate (DER) at `url` (see ``ek_certificate_url``): Intel's JSON wrapper,
    DER or PEM. Not verified: pass it to ``verify.verify_ek_certificate``. Raises FetchError."""
    certs = fetch_certificates(url, timeout=timeout, cache_dir=cache_dir, offline=offline,
                               max_bytes=max_bytes)
    if len(certs) != 1:
        raise _bad(url, f"{len(certs)} certificates where one EK certificate was expected")
    return certs[0]


# ----------------------------------------------------------------------- AIA


def _certificate_der(data: bytes) -> bytes:
    """One certificate's DER from DER (NV header and trailing bytes allowed) or PEM."""
    if data[:3] == b"\x10\x01\x00" and len(data) > 5:
        data = data[5 : 5 + int.from_bytes(data[3:5], "big")]
    if _PEM_BEGIN in data and data[:1] != b"\x30":
        return _pem(data, "<certificate>")[0]
    try:
        _, _, end = _der.header(data, 0, len(data), set())
    except _der.Malformed as exc:
        raise ValueError(f"not a certificate: {exc}") from exc
    return data[:end]


def _tbs_fields(der: bytes) -> tuple[bytes, bytes, list[tuple[int, int, int, int]]]:
    """(issuer Name DER, subject Name DER, extensions TLVs) of a certificate."""
    _, start, end = _der.header(der, 0, len(der), set())
    tbs = _der.children(der, start, end)[0]
    fields = _der.children(der, tbs[2], tbs[3])
    i = 1 if fields and fields[0][0] == 0xA0 else 0
    if len(fields) < i + 6:
        raise _der.Malformed("TBSCertificate lacks fields")
    issuer, subject = fields[i + 2], fields[i + 4]
    exts: list[tuple[int, int, int, int]] = []
    for f in fields[i + 6 :]:
        if f[0] == 0xA3:
            (seq,) = _der.children(der, f[2], f[3])
            exts = _der.children(der, seq[2], seq[3])
    return der[issuer[1] : issuer[3]], der[subject[1] : subject[3]], exts


def _names(der: bytes) -> tuple[bytes, bytes]:
    issuer, subject, _ = _tbs_fields(der)
    return issuer, subject


def ca_issuer_urls(certificate: bytes) -> list[str]:
    """The authorityInfoAccess caIssuers URIs of a certificate (DER or PEM), in order.
    Raises ValueError for something that is not a certificate."""
    der = _certificate_der(bytes(certificate))
    try:
        _, _, exts = _tbs_fields(der)
        for ext in exts:
            parts = _der.children(der, ext[2], ext[3])
            if not parts or der[parts[0][1] : parts[0][3]] != _OID_AIA:
                continue
            octets = parts[-1]
            (seq,) = _der.children(der, octets[2], octets[3])
            urls = []
            for desc in _der.children(der, seq[2], seq[3]):
                method, location = _der.children(der, desc[2], desc[3])[:2]
                if der[method[1] : method[3]] == _OID_CA_ISSUERS and location[0] == 0x86:
                    urls.append(der[location[2] : location[3]].decode("ascii", "replace"))
            return urls
    except (_der.Malformed, ValueError) as exc:
        raise ValueError(f"unreadable certificate extensions: {exc}") from exc
    return []


def _subjects(known: Iterable[bytes]) -> set[bytes]:
    out: set[bytes] = set()
    for item in known:
        data = bytes(item)
        blocks = _pem(data, "<known>") if _PEM_BEGIN in data and data[:1] != b"\x30" else [data]
        for der in blocks:
            try:
                out.add(_names(_certificate_der(der))[1])
            except (ValueError, _der.Malformed):
                continue
    return out


def chain_top(certificate: bytes, intermediates: Iterable[bytes]) -> bytes:
    """The certificate reached from `certificate` by climbing `intermediates` by name (each
    step to the one whose subject is the current issuer; a self-signed one, or one already
    climbed, ends it): where fetching missing issuers starts when a device sent part of its
    chain (a TPM's EK chain NV indices). Names only, no signature is checked; returns
    `certificate` (DER) itself when no intermediate is its issuer. Raises ValueError for
    something that is not a certificate."""
    by_subject: dict[bytes, bytes] = {}
    for item in intermediates:
        try:
            der = _certificate_der(bytes(item))
            by_subject.setdefault(_names(der)[1], der)
        except (ValueError, _der.Malformed):
            continue
    current = _certificate_der(bytes(certificate))
    seen = {current}
    for _ in range(len(by_subject)):
        try:
            issuer, subject = _names(current)
        except _der.Malformed as exc:
            raise ValueError(f"not a certificate: {exc}") from exc
        nxt = by_subject.get(issuer)
        if issuer == subject or nxt is None or nxt in seen:
            break
        seen.add(nxt)
        current = nxt
    return current


def fetch_ca_issuers(certificate: bytes, *, known: Iterable[bytes] = (),
                     timeout: float = DEFAULT_TIMEOUT,
                     cache_dir: str | os.PathLike[str] | None = None, offline: bool = False,
                     max_certs: int = MAX_ISSUERS, max_bytes: int = MAX_RESPONSE_BYTES,
                     hosts: Iterable[str] | None = None) -> list[bytes]:
    """Fetch the issuers of `certificate` by following authorityInfoAccess caIssuers, up the
    chain, until an issuer is among `known` (the CA certificates you already have, DER or
    PEM), a certificate is self-signed, one has no caIssuers URL, or `max_certs` were
    fetched. Returns the fetched certificates (DER) to pass as intermediates; trusting
    them is the verifier's decision, not this function's. With `hosts`, only URLs on those
    hosts (or their subdomains) are followed: the URLs come from a certificate not yet
    verified, so a server should not fetch whatever one names. Raises FetchError (the last
    one, when every URL of a certificate failed) or ValueError (not a certificate)."""
    allowed = None if hosts is None else tuple(hosts)
    current = _certificate_der(bytes(certificate))
    known_subjects = _subjects(known)
    fetched: list[bytes] = []
    seen = {hashlib.sha256(current).digest()}
    while len(fetched) < max_certs:
        try:
            issuer, subject = _names(current)
        except _der.Malformed as exc:
            raise ValueError(f"not a certificate: {exc}") from exc
        if issuer == subject or issuer in known_subjects:
            break
        urls = [u for u in ca_issuer_urls(current) if u.lower().startswith(("http://", "https://"))
                and (allowed is None or host_allowed(u, allowed))]
        if not urls:
            break
        certs: list[bytes] | None = None
        error: FetchError | None = None
        for url in urls:
            try:
                certs = fetch_certificates(url, timeout=timeout, cache_dir=cache_dir,
                                           offline=offline, max_bytes=max_bytes, hosts=allowed)
                break
            except FetchError as exc:
                error = exc
        if certs is None:
            assert error is not None
            raise error
        nxt: bytes | None = None
        for c in certs:
            digest = hashlib.sha256(c).digest()
            if digest in seen:
                continue
            seen.add(digest)
            fetched.append(c)
            try:
                c_subject = _names(c)[1]
            except _der.Malformed:
                continue
            known_subjects.add(c_subject)
            if nxt is None and c_subject == issuer:
                nxt = c
        if nxt is None:
            break
        current = nxt
    return fetched[:max_certs]
