"""The operator dashboard: read-only HTML pages under ``/dashboard`` for people (the operator
API, :mod:`.admin`, is for programs). Server-rendered, no JavaScript: links and forms.

Pages: devices (status, tags, last attestation; filtered by status or tag; pages of
:data:`PAGE_SIZE`), one device (its policies, its history with the refusals' rules and
details, the machine state its event log showed), one attestation, policies and their
assignments, one policy's versions and document, the audit log. They read through the same
functions as the API (:func:`.admin.device_listing`, :func:`.admin.device_detail`, ...): one
query and one JSON form per concept; the templates only render those dicts, autoescaped, and
every string passes :func:`inert` (machine-state strings come from event logs, that is from
devices).

Login: a form posts an operator token once (any role: reading is all the dashboard does); the
answer sets an ``HttpOnly``, ``SameSite=Strict`` cookie (``Secure`` over HTTPS or when told)
holding a session secret bound to the token (:func:`.auth.open_session`), never the token.
Every page is a GET; the two POSTs (login, logout) refuse cross-site requests (``Origin``,
``Sec-Fetch-Site``). Every answer carries a Content-Security-Policy that allows no script, no
frame and no other origin; pages are ``no-store``.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from importlib import resources
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from .._version import __version__
from . import admin, auth, store
from .auth import Operator
from .core import AttestationService
from .errors import ServiceCode, ServiceError
from .policies import NAME_PATTERN
from .tables import STATUSES

PREFIX: Final = "/dashboard"
COOKIE: Final = "tpm2_attest_session"
PAGE_SIZE: Final = 50
MAX_FORM: Final = 4096
"""The largest login or logout form body read (a token is 47 characters)."""
MAX_TEXT: Final = 2000
"""Strings longer than this are cut on the pages (the API has them whole)."""
CSP: Final = ("default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; "
              "base-uri 'none'")
"""No script, object, frame, font, image or connection anywhere; the style sheet and forms of
this origin only; no page may be framed (clickjacking)."""
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would make browsers send "Origin: null" with the forms
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_PAGE_HEADERS: Final = {**SECURITY_HEADERS, "Cache-Control": "no-store"}
_STYLE_HEADERS: Final = {**SECURITY_HEADERS, "Cache-Control": "max-age=86400"}
_NAME: Final = re.compile(NAME_PATTERN)
_HEX: Final = frozenset("0123456789abcdefABCDEF")
_SECTIONS: Final = {"devices.html": "devices", "device.html": "devices", "attestation.html": "devices",
                    "policies.html": "policies", "policy.html": "policies", "audit.html": "audit"}
_UNSEEN: Final = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
"""Controls, zero-width and bidirectional formatting characters: shown as ``\\uXXXX`` so that
a string cannot hide text or reorder what is displayed around it."""


def inert(value: Any, limit: int = MAX_TEXT) -> str:
    """A string as the pages show it: invisible and reordering characters made visible, cut at
    ``limit`` characters (HTML escaping is the templates' autoescape)."""
    text = str(value)
    cut = len(text) > limit
    text = _UNSEEN.sub(lambda m: f"\\u{ord(m.group()):04x}", text[:limit])
    return text + f"… ({len(str(value)) - limit} more characters)" if cut else text


def _when(value: str | None) -> str:
    """An ISO timestamp of the JSON forms as ``2026-01-02 03:04:05 UTC``."""
    if not value:
        return "—"
    try:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return inert(value, 64)


def _ago(now: datetime) -> Callable[[str | None], str]:
    def ago(value: str | None) -> str:
        """``5 min ago`` / ``in 3 h`` from ``now``."""
        if not value:
            return ""
        try:
            seconds = (now - datetime.fromisoformat(value)).total_seconds()
        except (ValueError, TypeError):
            return ""
        span = abs(seconds)
        text = (f"{int(span)} s" if span < 60 else f"{int(span // 60)} min" if span < 3600
                else f"{int(span // 3600)} h" if span < 172800 else f"{int(span // 86400)} days")
        return f"{text} ago" if seconds >= 0 else f"in {text}"
    return ago


def _segment(value: Any) -> str:
    """One path segment of a link, percent-encoded ('/' included)."""
    return urllib.parse.quote(str(value), safe="")


def _query(**params: Any) -> str:
    """``?a=1&b=2`` of the params that are set (empty string when none)."""
    given = {k: v for k, v in params.items() if v not in (None, "")}
    return "?" + urllib.parse.urlencode(given) if given else ""


def _pretty(value: Any) -> str:
    """A JSON document, indented (ASCII: escapes for everything else)."""
    return inert(json.dumps(value, indent=2, ensure_ascii=True), 200_000)


def _hexdigest(value: Any) -> bool:
    """A digest or Name in hex (shown in a monospace font)."""
    return isinstance(value, str) and 16 <= len(value) <= 1024 and all(c in _HEX for c in value)


def environment() -> Environment:
    """The templates (package data), autoescaped, failing on an undefined name."""
    env = Environment(loader=PackageLoader("tpm2_attest.service", "templates/dashboard"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(inert=inert, when=_when, seg=_segment, pretty=_pretty)
    env.tests["hexdigest"] = _hexdigest
    env.globals.update(query=_query, prefix=PREFIX, version=__version__, statuses=STATUSES)
    return env


def _same_origin(request: Request) -> bool:
    """A form post from a page of this service (not another site's form or a script)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True  # browsers send Origin with POSTs; other clients are not a CSRF vector
    return urllib.parse.urlsplit(origin).netloc == request.headers.get("host", "") != ""


def _safe_next(value: str | None) -> str:
    """Where to go after login: a dashboard path of this origin, else the devices page."""
    default = f"{PREFIX}/devices"
    if not value or len(value) > 1000 or "\\" in value or any(c < " " for c in value):
        return default
    parts = urllib.parse.urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith(PREFIX + "/") or value.startswith("//"):
        return default
    return value


async def _form(request: Request) -> dict[str, str] | None:
    """The fields of a urlencoded form body of at most :data:`MAX_FORM` bytes (None: too large)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return None
    try:
        fields = urllib.parse.parse_qs(body.decode("utf-8"), max_num_fields=8)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v[0] for k, v in fields.items()}


def router(service: AttestationService, *, secure_cookie: bool = False) -> APIRouter:
    """The ``/dashboard`` pages over ``service``'s store and clock. ``secure_cookie``: mark
    the session cookie ``Secure`` on plain HTTP too (behind a TLS-terminating proxy)."""
    web = APIRouter(prefix=PREFIX, include_in_schema=False)
    db = service.store
    env = environment()
    style = resources.files("tpm2_attest.service").joinpath("templates/dashboard/dashboard.css").read_bytes()

    def render(name: str, http_status: int = 200, /, **ctx: Any) -> HTMLResponse:
        ctx.setdefault("who", None)
        ctx.setdefault("section", _SECTIONS.get(name, ""))
        ctx.setdefault("ago", _ago(service.clock()))
        return HTMLResponse(env.get_template(name).render(**ctx), status_code=http_status, headers=_PAGE_HEADERS)

    def redirect(url: str) -> RedirectResponse:
        return RedirectResponse(url, status_code=303, headers=_PAGE_HEADERS)

    def error(err: ServiceError, who: Operator | None) -> HTMLResponse:
        status = 400 if err.status == 422 else err.status
        return render("error.html", status, who=who, code=err.code, detail=err.detail, status=status)

    @contextmanager
    def reading(request: Request) -> Iterator[tuple[Session, Operator | None]]:
        """One session for the page and its operator (None: not logged in)."""
        with db.session() as s:
            yield s, auth.session_operator(s, request.cookies.get(COOKIE), service.clock())

    def to_login(request: Request) -> RedirectResponse:
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return redirect(f"{PREFIX}/login" + _query(next=_safe_next(here)))

    def page(request: Request, name: str, build: Callable[[Session], dict[str, Any]]) -> Response:
        """A page for a logged-in operator: ``build`` reads its data (ServiceError: an error page)."""
        with reading(request) as (s, who):
            if who is None:
                return to_login(request)
            try:
                ctx = build(s)
            except ServiceError as err:
                return error(err, who)
            return render(name, who=who, **ctx)

    def param(request: Request, name: str, limit: int = 400) -> str | None:
        value = request.query_params.get(name)
        if value is not None and len(value) > limit:
            raise ServiceError(ServiceCode.INVALID_REQUEST, f"{name}: at most {limit} characters")
        return value or None

    @web.get("/static/dashboard.css")
    def stylesheet() -> Response:
        return Response(style, media_type="text/css", headers=_STYLE_HEADERS)

    @web.get("")
    @web.get("/")
    def home() -> Response:
        return redirect(f"{PREFIX}/devices")

    @web.get("/login")
    def login_form(request: Request) -> Response:
        with reading(request) as (_s, who):
            target = _safe_next(request.query_params.get("next"))
            if who is not None:
                return redirect(target)
        return render("login.html", next=target, message=None,
                      notice="You are logged out." if "out" in request.query_params else None)

    @web.post("/login")
    async def login(request: Request) -> Response:
        if not _same_origin(request):
            return render("error.html", 403, code="FORBIDDEN", status=403,
                          detail="a login must come from this service's own login page")
        form = await _form(request)
        if form is None:
            return render("error.html", 413, code="BODY_TOO_LARGE", status=413, detail="the form is too large")
        target = _safe_next(form.get("next"))
        previous = request.cookies.get(COOKIE)

        def open_session() -> str:
            with db.session() as s:
                _who, secret = auth.open_session(s, form.get("token", ""), service.clock())
                if previous and len(previous) <= auth.MAX_SECRET:  # the cookie it replaces ends too
                    store.delete_session(s, store.token_hash(previous))
                s.commit()
                return secret

        try:
            secret = await run_in_threadpool(open_session)
        except ServiceError:  # never echo what was typed
            return render("login.html", 401, next=target, notice=None,
                          message="Unknown or revoked token.")
        response = redirect(target)
        response.set_cookie(COOKIE, secret, max_age=int(auth.SESSION_TTL.total_seconds()), path=PREFIX,
                            httponly=True, samesite="strict",
                            secure=secure_cookie or request.url.scheme == "https")
        return response

    @web.post("/logout")
    async def logout(request: Request) -> Response:
        if not _same_origin(request):
            return render("error.html", 403, code="FORBIDDEN", status=403,
                          detail="a logout must come from this service's own pages")
        secret = request.cookies.get(COOKIE)

        def close_session() -> None:
            with db.session() as s:
                auth.close_session(s, secret, service.clock())
                s.commit()

        await run_in_threadpool(close_session)
        response = redirect(f"{PREFIX}/login?out=1")
        response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict",
                               secure=secure_cookie or request.url.scheme == "https")
        return response

    @web.get("/devices")
    def devices(request: Request) -> Response:
        def build(s: Session) -> dict[str, Any]:
            status, tag, cursor = param(request, "status", 16), param(request, "tag", 64), param(request, "cursor")
            if status is not None and status not in STATUSES:
                raise ServiceError(ServiceCode.INVALID_REQUEST, f"status must be one of {', '.join(STATUSES)}")
            now = service.clock()
            listing = admin.device_listing(s, now, status=status, tag=tag, limit=PAGE_SIZE, cursor=cursor,
                                           last=True)
            return {"devices": listing["items"], "next": listing["next"], "status": status, "tag": tag,
                    "cursor": cursor, "counts": admin.fleet_status(s, now)["devices"]}
        return page(request, "devices.html", build)

    @web.get("/devices/{device_id}")
    def device(request: Request, device_id: str) -> Response:
        def build(s: Session) -> dict[str, Any]:
            cursor = param(request, "cursor")
            detail = admin.device_detail(s, device_id, service.clock())
            history = admin.device_history(s, device_id, limit=PAGE_SIZE, cursor=cursor)
            stated = [a for a in ([detail["last_attestation"]] if detail["last_attestation"] else [])
                      + history["items"] if a.get("state")]
            return {"device": detail, "history": history["items"], "next": history["next"], "cursor": cursor,
                    "stated": stated[0] if stated else None}
        return page(request, "device.html", build)

    @web.get("/devices/{device_id}/attestations/{attestation_id}")
    def attestation(request: Request, device_id: str, attestation_id: str) -> Response:
        def build(s: Session) -> dict[str, Any]:
            if not attestation_id.isdigit() or len(attestation_id) > 18:
                raise ServiceError(ServiceCode.NOT_FOUND, "this device has no attestation of this id")
            found = admin.attestation_detail(s, device_id, int(attestation_id))
            return {"device_id": device_id, "a": found}
        return page(request, "attestation.html", build)

    @web.get("/policies")
    def policies(request: Request) -> Response:
        return page(request, "policies.html", lambda s: admin.policy_listing(s))

    @web.get("/policies/{name}")
    def policy(request: Request, name: str) -> Response:
        def build(s: Session) -> dict[str, Any]:
            version = param(request, "version", 9)
            if not _NAME.match(name) or (version is not None and not version.isdigit()):
                raise ServiceError(ServiceCode.UNKNOWN_POLICY, "no such policy")
            found = admin.policy_detail(s, name, int(version) if version else None)
            assigned = [a for a in admin.policy_listing(s)["assignments"] if a["policy"] == name]
            return {"policy": found, "assigned": assigned}
        return page(request, "policy.html", build)

    @web.get("/audit")
    def audit(request: Request) -> Response:
        def build(s: Session) -> dict[str, Any]:
            cursor = param(request, "cursor")
            listing = admin.audit_listing(s, limit=PAGE_SIZE, cursor=cursor)
            return {"entries": listing["items"], "next": listing["next"], "cursor": cursor}
        return page(request, "audit.html", build)

    return web


__all__ = ["COOKIE", "CSP", "PAGE_SIZE", "PREFIX", "SECURITY_HEADERS", "environment", "inert", "router"]
