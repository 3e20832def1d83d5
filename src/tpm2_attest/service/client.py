"""The device side of the protocol: ``enroll`` and ``attest`` over HTTP with the standard library.

Runs wherever the device runs (no FastAPI, no HTTP client package): ``urllib`` carries JSON,
the :class:`~tpm2_attest.Tpm` does the TPM work. Refusals raise :class:`ServiceError` with the
server's ``code`` (a ``ServiceCode`` or the verifier's ``Reason``), ``detail`` and HTTP status.

Nothing the device sends here is secret from the server's point of view; the credential
secret goes back to the server that made it, over the channel you chose (use ``https://`` in
production: the protocol itself does not authenticate the server).
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import os
import random
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ..errors import ErrorCode, TpmError
from ..evidence import AK_JSON_VERSION, AkBlob, CredentialChallenge
from ..tpm import Tpm
from .errors import ServiceCode, ServiceError

MAX_RESPONSE: Final = 4 << 20
"""Bytes read from any response at most (the largest legitimate one is a few KiB)."""
DEFAULT_TIMEOUT: Final = 30.0
RETRY_BASE: Final = 1.0
"""Seconds before the first retry of a request that could not reach the server (then doubling)."""
RETRY_CAP: Final = 30.0
"""The longest wait between two attempts of one request."""
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "PUT", "DELETE"})
"""Methods retried even when the connection broke after the request was sent."""


@dataclass(frozen=True)
class Enrollment:
    """The outcome of :func:`enroll`: keep both, the AK blob is needed for every quote."""

    device_id: str
    ak_blob: AkBlob
    server: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    """The server's answer to ``/v1/enroll/finish`` (ak_name, ek_name, ek_certificate_verified...)."""

    def to_json(self) -> str:
        """The AK blob's JSON form plus ``device_id`` and ``server``; ``AkBlob.load`` reads it."""
        obj = json.loads(self.ak_blob.to_json())
        obj.update(device_id=self.device_id, server=self.server)
        return json.dumps(obj, indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> Enrollment:
        obj = json.loads(text)
        if not isinstance(obj, dict) or obj.get("version") != AK_JSON_VERSION or not isinstance(obj.get("device_id"), str):
            raise ValueError("not an enrollment file (AK JSON with a device_id)")
        return cls(obj["device_id"], AkBlob.from_json(text), str(obj.get("server", "")))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(obj: Mapping[str, Any], key: str) -> bytes:
    value = obj.get(key)
    try:
        if not isinstance(value, str):
            raise ValueError("not a string")
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ServiceError(ServiceCode.BAD_RESPONSE, f"{key}: expected base64 ({exc})") from None


def _str(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise ServiceError(ServiceCode.BAD_RESPONSE, f"{key}: expected a string")
    return value


class ServiceClient:
    """JSON requests to one service; returns the decoded object or raises ServiceError.

    ``request`` is the only transport method: a subclass may carry the same requests another
    way (the tests drive the in-process application through it). ``token`` is sent as
    ``Authorization: Bearer`` (the operator API needs one; device endpoints ignore it).

    TLS (``https://``): ``ca_file`` names the CA certificates (PEM) that the server's
    certificate must chain to (default: the system's); ``client_cert`` / ``client_key`` the
    certificate and key (PEM; the key may be in the certificate file) presented to a server
    that wants one (mutual TLS). Files that cannot be used raise TlsConfigError (a ValueError).

    ``retries``: how many more times a request is tried when it could not reach the server
    (connection refused or reset, no route, a timeout while connecting), after a wait that
    doubles from :data:`RETRY_BASE` seconds with jitter. A request that was sent and then lost
    its connection is tried again only when it is idempotent (GET, PUT, DELETE): a POST may
    have been acted on. Refusals (any HTTP answer) and TLS failures are never retried.
    ``stop``: an event that, once set, ends the waiting between attempts (the agent's stop).
    """

    def __init__(self, server_url: str, *, timeout: float = DEFAULT_TIMEOUT, token: str | None = None,
                 ca_file: str | os.PathLike[str] | None = None,
                 client_cert: str | os.PathLike[str] | None = None,
                 client_key: str | os.PathLike[str] | None = None, retries: int = 0,
                 retry_base: float = RETRY_BASE, stop: threading.Event | None = None) -> None:
        parts = urllib.parse.urlsplit(server_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"server URL must be http:// or https://, not {server_url!r}")
        if (ca_file or client_cert or client_key) and parts.scheme != "https":
            raise ValueError(f"a CA file or client certificate needs an https:// server URL, not {server_url!r}")
        if client_key and not client_cert:
            raise ValueError("a client key needs its client certificate")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.base = server_url.rstrip("/")
        self.timeout = timeout
        self.token = token
        self.retries = retries
        self.retry_base = retry_base
        self.stop = stop
        self.attempts = 0
        """Requests sent so far, every attempt counted (for reports and tests)."""
        handlers: list[urllib.request.BaseHandler] = []
        self._tls: ssl.SSLContext | None = None
        self._has_client_cert = bool(client_cert)
        if parts.scheme == "https":
            self._tls = tls_context(ca_file, client_cert, client_key)
            handlers.append(urllib.request.HTTPSHandler(context=self._tls))
        self._opener = urllib.request.build_opener(*handlers)

    def post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("POST", path, body)

    def get(self, path: str, query: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """GET ``path`` with ``query`` parameters (None values left out)."""
        params = {k: v for k, v in (query or {}).items() if v is not None}
        return self.request("GET", path + (f"?{urllib.parse.urlencode(params)}" if params else ""))

    def request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        failed = 0
        while True:
            try:
                return self._exchange(method, path, data, headers)
            except _Lost as lost:
                if failed >= self.retries or (lost.sent and method not in IDEMPOTENT):
                    raise lost.error from None
                failed += 1
                if self._wait(retry_delay(failed, self.retry_base)):
                    raise lost.error from None  # told to stop: no more attempts

    def _wait(self, seconds: float) -> bool:
        """Sleep before another attempt; True when ``stop`` was set meanwhile."""
        if self.stop is not None:
            return self.stop.wait(seconds)
        time.sleep(seconds)
        return False

    def _exchange(self, method: str, path: str, data: bytes | None, headers: dict[str, str]) -> dict[str, Any]:
        """One attempt. urllib raises URLError for what fails before the request is sent
        (connecting, the TLS handshake, sending); what fails after (reading the answer) comes
        as the socket's or http.client's own exception."""
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        self.attempts += 1
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                raw = resp.read(MAX_RESPONSE + 1)
                status = int(resp.status)
        except urllib.error.HTTPError as exc:
            with exc:
                raise self._refusal(exc.code, exc.read(MAX_RESPONSE + 1), exc.headers.get("Retry-After")) from None
        except urllib.error.URLError as exc:
            reason = exc.reason if isinstance(exc.reason, BaseException) else OSError(str(exc.reason))
            raise self._lost(reason, sent=False) from None
        except (OSError, http.client.HTTPException) as exc:
            raise self._lost(exc, sent=True) from None
        return self._decode(status, raw)

    def _lost(self, exc: BaseException, *, sent: bool) -> BaseException:
        """A failed attempt: a TLS failure is final (a ServiceError), anything else a _Lost
        connection that may be retried."""
        tls = tls_failure(exc)
        if tls is None and self._tls is not None and isinstance(exc, _CLOSED) and self._refuses_sessions():
            # A server that refuses the client's certificate may just close the connection
            # (uvicorn does: no TLS alert reaches the client), which looks like a broken one.
            tls = (("client_certificate_refused", "the server ends every TLS session before a request: it does not "
                    "accept the client certificate") if self._has_client_cert else
                   ("client_certificate_required", "the server ends every TLS session before a request: it requires "
                    "a client certificate"))
        if tls is not None:
            return ServiceError(ServiceCode.TLS_FAILURE, f"{self.base}: {tls[1]}", extra={"tls": tls[0]})
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or type(exc).__name__)
        when = "the connection broke after the request was sent" if sent else "could not connect"
        return _Lost(ServiceError(ServiceCode.UNREACHABLE, f"{self.base}: {when}: {reason}"), sent=sent)

    def _refuses_sessions(self) -> bool:
        """Probe: does the server close a fresh TLS session before it gets any request? (A
        server that is merely restarting or overloaded refuses the connection or waits.)"""
        assert self._tls is not None
        parts = urllib.parse.urlsplit(self.base)
        host = parts.hostname or ""
        try:
            with socket.create_connection((host, parts.port or 443), timeout=min(self.timeout, 5.0)) as raw, \
                    self._tls.wrap_socket(raw, server_hostname=host) as tls:
                tls.settimeout(min(self.timeout, 2.0))
                try:
                    return tls.recv(1) == b""
                except TimeoutError:
                    return False  # it waits for our request: the session is fine
                except (ssl.SSLError, ConnectionError):
                    return True
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError):
            return True  # closed during the handshake (TLS 1.2 checks the certificate there)
        except OSError:
            return False

    def _decode(self, status: int, raw: bytes) -> dict[str, Any]:
        if len(raw) > MAX_RESPONSE:
            raise ServiceError(ServiceCode.BAD_RESPONSE, f"response larger than {MAX_RESPONSE} bytes", status=status)
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ServiceError(ServiceCode.BAD_RESPONSE, f"HTTP {status} without a JSON body", status=status) from None
        if not isinstance(obj, dict):
            raise ServiceError(ServiceCode.BAD_RESPONSE, "expected a JSON object", status=status)
        return obj

    def _refusal(self, status: int, raw: bytes, retry_after: str | None = None) -> ServiceError:
        kept = {"Retry-After": retry_after} if retry_after else None
        try:
            err = self._decode(status, raw).get("error")
        except ServiceError:
            err = None
        if not isinstance(err, dict) or not isinstance(err.get("code"), str):
            if status == 413:  # the framework's own limit answers a declared oversize body in text
                return ServiceError(ServiceCode.BODY_TOO_LARGE, "the request body is too large", status=status)
            return ServiceError(ServiceCode.BAD_RESPONSE, f"HTTP {status} without an error object", status=status,
                                headers=kept)
        reason = err.get("reason")
        extra = {k: v for k, v in err.items() if k not in ("code", "reason", "detail")}
        return ServiceError(err["code"], str(err.get("detail") or ""), status=status,
                            reason=reason if isinstance(reason, str) else None, extra=extra, headers=kept)


_CLOSED: Final = (http.client.RemoteDisconnected, ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError,
                  BrokenPipeError)
"""How a connection the server closed shows (before or after the request went out)."""


class _Lost(Exception):
    """An attempt that did not get an answer: ``error`` to raise, and whether the request
    may have reached the server (``sent``)."""

    def __init__(self, error: ServiceError, *, sent: bool) -> None:
        super().__init__(str(error))
        self.error, self.sent = error, sent


def retry_delay(failed: int, base: float = RETRY_BASE, cap: float = RETRY_CAP) -> float:
    """Seconds to wait after the ``failed``-th failed attempt: ``base`` doubling per failure,
    at most ``cap``, times a random factor in [0.5, 1] so that many clients spread out."""
    return min(cap, base * 2.0 ** min(failed - 1, 60)) * random.uniform(0.5, 1.0)


class TlsConfigError(ValueError):
    """A CA file or client certificate that cannot be used; ``which`` says which input
    (``ca_file`` or ``client_cert``)."""

    def __init__(self, which: Literal["ca_file", "client_cert"], message: str) -> None:
        super().__init__(message)
        self.which = which


def tls_context(ca_file: str | os.PathLike[str] | None = None, client_cert: str | os.PathLike[str] | None = None,
                client_key: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """The client's TLS context: the system's CAs or ``ca_file``'s, hostname checks on, and
    the client certificate when given. Raises TlsConfigError naming the file that cannot be used."""
    try:
        ctx = ssl.create_default_context(cafile=os.fspath(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError("ca_file", f"CA file {ca_file}: {_why(exc)} (expected PEM certificates)") from None
    if client_cert:
        try:
            ctx.load_cert_chain(os.fspath(client_cert), os.fspath(client_key) if client_key else None)
        except (OSError, ssl.SSLError) as exc:
            files = f"{client_cert}" + (f" / {client_key}" if client_key else "")
            raise TlsConfigError("client_cert", f"client certificate {files}: {_why(exc)} (expected a PEM "
                                 "certificate and its private key)") from None
    return ctx


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


TLS_PROBLEMS: Final = ("server_untrusted", "client_certificate_required", "client_certificate_refused",
                        "not_tls", "other")
"""The ``tls`` member of a TLS_FAILURE error: what went wrong, for programs to branch on."""


def tls_failure(exc: BaseException) -> tuple[str, str] | None:
    """(kind, what it means in words) of a TLS failure, or None when ``exc`` is not one;
    ``kind`` is one of :data:`TLS_PROBLEMS`."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ("server_untrusted", f"the server's certificate is not trusted ({exc.verify_message or exc.reason}): "
                "name the CA that issued it as the CA file")
    if not isinstance(exc, ssl.SSLError) or isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return None  # a connection the server closed says nothing by itself (see _refuses_sessions)
    what = (exc.reason or str(exc)).upper()
    if "CERTIFICATE_REQUIRED" in what:
        return "client_certificate_required", f"the server requires a client certificate ({exc.reason})"
    if "ALERT_HANDSHAKE_FAILURE" in what:
        return ("client_certificate_required",
                f"the server refused the handshake: it may require a client certificate ({exc.reason})")
    if "UNKNOWN_CA" in what or "BAD_CERTIFICATE" in what or "CERTIFICATE_UNKNOWN" in what:
        return "client_certificate_refused", f"the server does not accept the client certificate ({exc.reason})"
    if "WRONG_VERSION_NUMBER" in what or "RECORD_LAYER_FAILURE" in what:
        return "not_tls", f"the server does not speak TLS on this port (http://?) ({exc.reason})"
    return "other", f"TLS failed: {exc.reason or exc}"


def _client(server: str | ServiceClient, timeout: float) -> ServiceClient:
    return server if isinstance(server, ServiceClient) else ServiceClient(server, timeout=timeout)


def enroll(tpm: Tpm, server: str | ServiceClient, *, ek_kind: Literal["rsa", "ecc"] = "rsa", key_name: str | None = None,
           scope: str = "user", overwrite: bool = False, algorithm: str | None = None,
           timeout: float = DEFAULT_TIMEOUT, certified_ak: Literal["rsa", "ecc"] | None = None,
           fetch_ek_certificate: bool = False) -> Enrollment:
    """Enroll this TPM: send the EK (and its certificate), make an AK over the server's nonce,
    activate the server's credential challenge, and get a device id.

    ``ek_kind``: "rsa" or "ecc" (the EK the challenge is made for). ``key_name``, ``scope``,
    ``overwrite``, ``algorithm`` go to ``Tpm.provision_ak`` (Windows PCP: machine scope needs a
    stable ``key_name`` and an elevated caller). ``certified_ak``: enroll instead with the
    TPM's certified AK of that kind (``Tpm.certified_ak``; the server must allow enrollment
    by AK certificate). ``fetch_ek_certificate``: a TPM without its EK certificate in NV gets
    it from its vendor (``Tpm.ek(fetch=True)``). The intermediates the TPM keeps in its EK
    chain NV indices (``EkInfo.chain``) go along with the certificate (``ek_chain``). ``server``: the service's base URL, or a
    ServiceClient. Raises ServiceError, TpmError or trust.FetchError.
    """
    client = _client(server, timeout)
    ek = tpm.ek(ek_kind, fetch=fetch_ek_certificate)
    body: dict[str, Any] = {"ek_public": _b64(ek.public),
                            "ek_certificate": _b64(ek.certificate) if ek.certificate else None}
    if ek.certificate and ek.chain:  # only then: a server older than the field refuses it
        body["ek_chain"] = [_b64(der) for der in ek.chain]
    begun = client.post("/v1/enroll/begin", body)
    enrollment_id = _str(begun, "enrollment_id")
    if certified_ak is not None:
        got = tpm.certified_ak(certified_ak, nonce=_unb64(begun, "nonce"))
        done = client.post("/v1/enroll/ak-certificate", {
            "enrollment_id": enrollment_id, "ak_blob": _b64(got.blob.to_bytes()),
            "ak_certificate": _b64(got.certificate)})
        return Enrollment(_str(done, "device_id"), got.blob, client.base, done)
    blob = tpm.provision_ak(key_name=key_name, scope=scope, overwrite=overwrite,
                            nonce=_unb64(begun, "nonce"), algorithm=algorithm)
    sent = client.post("/v1/enroll/ak", {"enrollment_id": enrollment_id, "ak_blob": _b64(blob.to_bytes())})
    ch = sent.get("challenge")
    if not isinstance(ch, dict):
        raise ServiceError(ServiceCode.BAD_RESPONSE, "challenge: expected an object")
    challenge = CredentialChallenge.from_bytes(_unb64(ch, "credential_blob") + _unb64(ch, "encrypted_secret"))
    secret = tpm.activate_credential(blob, challenge)
    done = client.post("/v1/enroll/finish", {"enrollment_id": enrollment_id, "secret": _b64(secret)})
    return Enrollment(_str(done, "device_id"), blob, client.base, done)


def _ima_pcrs(raw: bytes, offset: int) -> set[int]:
    """The PCRs the entries of an IMA list (tail) extend; none when it does not parse (the
    service then says why)."""
    from ..ima import ImaLogError, parse_ima_log

    try:
        return set(parse_ima_log(raw, offset=offset).pcrs)
    except ImaLogError:
        return set()


def attest(tpm: Tpm, server: str | ServiceClient, device_id: str, ak_blob: AkBlob | bytes | str, *,
           pcrs: Iterable[int] | None = None, bank: str = "sha256", event_log: bytes | None = None,
           ima: bool = False, ima_securityfs: str | os.PathLike[str] | None = None,
           timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Ask for a challenge, quote ``pcrs`` (default 0-7) of ``bank`` over its nonce, send the
    quote (and ``event_log`` when given) and return the server's verdict (``ok``, ``pcrs``...).

    ``ima``: also quote PCR 10 (and by default 0-9, which the IMA list's boot_aggregate
    covers) and send the IMA measurement list, read after quoting and only
    from the offset the server asks (the entries it has not verified); when the server no
    longer holds that state (a reboot), the whole list is sent once more on a new challenge.
    The quote also covers the PCRs the server's state tracks and those the list extends (an
    IMA policy's ``pcr=`` rules), quoting again when the list read after it shows more.
    ``ima_securityfs``: where to read it (``Tpm.ima_log``). Raises ServiceError when the
    server refuses (``code`` says why) or TpmError."""
    client = _client(server, timeout)
    blob = AkBlob.load(ak_blob)
    base = list(pcrs) if pcrs is not None else None
    if ima:  # PCR 10, and PCRs 0-9 unless told otherwise: what the boot_aggregate covers
        base = sorted({*(range(10) if base is None else base), 10})
    for attempt in range(2 if ima else 1):
        issued = client.post("/v1/attest/challenge", {"device_id": device_id})
        nonce = _unb64(issued, "nonce")
        quoted = base
        ima_raw = b""
        offset = 0
        if ima:
            offset = issued.get("ima_offset", 0)
            if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
                raise ServiceError(ServiceCode.BAD_RESPONSE, "ima_offset: expected an integer >= 0")
            extra = issued.get("ima_pcrs", [])
            if not isinstance(extra, list) or not all(type(p) is int and 0 <= p <= 31 for p in extra):
                raise ServiceError(ServiceCode.BAD_RESPONSE, "ima_pcrs: expected a list of PCR indices")
            quoted = sorted({*(quoted or ()), *extra})
        while True:
            quote = tpm.quote(blob, pcrs=quoted, bank=bank, qualifying_data=nonce)
            if not ima:
                break
            try:  # read after quoting: the list may run ahead of the quote, never behind
                ima_raw = tpm.ima_log(offset=offset, securityfs=ima_securityfs)
            except TpmError as exc:
                if not offset or exc.code != ErrorCode.INVALID_ARGUMENT:
                    raise
                ima_raw = b""  # past the end of a shorter list: rebooted; refused, then resent
            more = _ima_pcrs(ima_raw, offset) - set(quoted or ())
            if not more:  # an IMA policy's pcr= rules: quote every PCR the list extends
                break
            quoted = sorted({*(quoted or ()), *more})
        body: dict[str, Any] = {"challenge_id": _str(issued, "challenge_id"), "quote": quote.to_dict()}
        if event_log is not None:
            body["event_log"] = _b64(event_log)
        if ima:
            body["ima_log"] = _b64(ima_raw)
            body["ima_offset"] = offset
        try:
            return client.post("/v1/attest", body)
        except ServiceError as exc:
            if not (ima and attempt == 0 and body.get("ima_offset") and exc.code == "IMA_STATE_MISMATCH"):
                raise
    raise AssertionError("unreachable")  # pragma: no cover
