"""The HTTP face of the service: ``create_app(settings)`` returns a FastAPI application.

Device endpoints (``POST``, JSON, binary fields base64; see docs/service.md):

* ``/v1/enroll/begin`` {ek_public, ek_certificate?, ek_chain?} -> {enrollment_id, nonce, expires_at}
* ``/v1/enroll/ak`` {enrollment_id, ak_blob} -> {challenge}
* ``/v1/enroll/finish`` {enrollment_id, secret} -> {device_id, ...}
* ``/v1/enroll/ak-certificate`` {enrollment_id, ak_blob, ak_certificate} -> {device_id, ...}
  (opt-in: enrollment by a cloud vTPM's certified AK, instead of ``ak`` + ``finish``)
* ``/v1/attest/challenge`` {device_id} -> {challenge_id, nonce, expires_at}
* ``/v1/attest`` {challenge_id, quote, event_log?, ima_log?, ima_offset?} -> {ok, pcrs, status, ...}

plus ``GET /v1/health``, ``GET /metrics``, the operator API under ``/v1/admin``
(:mod:`.admin`) and the operator dashboard's pages under ``/dashboard`` (:mod:`.dashboard`). Refusals are ``{"error": {"code", "reason", "detail"}}`` with a 4xx status
(:mod:`.errors`), database failures 503, faults of the service 500, all JSON. Handlers are
plain ``def``: FastAPI runs them in its thread pool (sized by ``Settings.threads``, as is the
database pool), since the store and the signature checks block.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Final

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._version import __version__
from ..verify import VerificationError
from . import admin, policies
from .core import AttestationService, Clock
from .errors import VERIFICATION_STATUS, ServiceCode, ServiceError
from .hooks import StatusHooks
from .hotpath import DatabaseError
from .http import (
    LIMITS_KEY,
    ASGIApp,
    BodyTimeout,
    FastLane,
    JsonRoute,
    Lane,
    Observe,
    Receive,
    Scope,
    Send,
)
from .metrics import CONTENT_TYPE, Metrics
from .models import (
    AttestRequest,
    AttestResponse,
    ChallengeRequest,
    ChallengeResponse,
    CredentialChallengeModel,
    EnrollAkCertificateRequest,
    EnrollAkRequest,
    EnrollAkResponse,
    EnrollBeginRequest,
    EnrollBeginResponse,
    EnrollFinishRequest,
    EnrollFinishResponse,
    ErrorResponse,
    HealthResponse,
)
from .settings import Settings
from .store import Store
from .webhooks import Webhooks

log = logging.getLogger("tpm2_attest.service")

_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    status: {"model": ErrorResponse} for status in (403, 404, 409, 410, 413, 422, 429, 503)
}


def _error(err: ServiceError, request: Request | None = None) -> JSONResponse:
    metrics: Metrics | None = getattr(request.app.state, "metrics", None) if request is not None else None
    if metrics is not None:
        metrics.refusals.labels(err.code).inc()
    return JSONResponse(err.to_dict(), status_code=err.status, headers=err.headers or None)


def _dump(model: BaseModel) -> bytes:
    """A response model serialised once (FastAPI would validate the model again first)."""
    return model.__pydantic_serializer__.to_json(model)


class ServiceApp(FastAPI):
    """The FastAPI application behind a front of its own: every HTTP request goes through
    ``front`` (request id, metrics, access log, body timeout; then the device lane), which
    hands what it does not answer itself to FastAPI's stack (``framework``)."""

    front: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front is not None and scope["type"] == "http":
            await self.front(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI itself: its middleware, routing, dependencies and exception handlers."""
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, *, clock: Clock | None = None,
               store: Store | None = None, hooks: StatusHooks | None = None) -> ServiceApp:
    """Build the service for ``settings`` (defaults: :class:`Settings` from the environment).

    ``store`` defaults to one on ``settings.database_url`` (closed at shutdown; its schema is
    created when the database is empty, refused when behind: ``tpm2-attest db upgrade``);
    ``clock`` returns the current UTC time (tests inject one); ``hooks`` receives device status
    changes. Policies in ``settings.pcr_policy`` seed the database. Raises SettingsError (a
    ValueError) for settings the service cannot honour.
    """
    settings = settings or Settings()
    owned = store is None
    db = store if store is not None else Store(settings.database_url, pool_size=settings.threads)
    try:
        service = AttestationService(settings, db, clock=clock, hooks=hooks)
        if settings.pcr_policy is not None:
            with db.session() as s:
                policies.seed(s, settings.pcr_policy, service.clock())
    except BaseException:
        if owned:
            db.close()
        raise
    metrics = Metrics(db, service.clock)
    webhooks: Webhooks | None = None
    if settings.webhook_urls:
        try:
            webhooks = Webhooks(settings.webhook_urls, settings.webhook_secret(), timeout=settings.webhook_timeout,
                                attempts=settings.webhook_attempts, backoff=settings.webhook_backoff,
                                queue_size=settings.webhook_queue, metrics=metrics)
        except BaseException:
            if owned:
                db.close()
            raise
    pool: ThreadPoolExecutor | None = None  # the request threads of the device lane, per lifespan

    async def sweeper() -> None:
        while True:
            await asyncio.sleep(settings.sweep_interval)
            try:
                await anyio.to_thread.run_sync(service.sweep)
            except Exception:
                log.exception("the sweep of expired rows failed")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        nonlocal pool
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.threads
        pool = ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="tpm2-attest")
        task = asyncio.create_task(sweeper()) if settings.sweep_interval > 0 else None
        unsubscribe = None
        if webhooks is not None:
            webhooks.start()
            unsubscribe = service.hooks.subscribe(webhooks.notify)
        try:
            yield {LIMITS_KEY: (settings.header_timeout, settings.max_connections)}
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            pool.shutdown(wait=True)
            pool = None
            if webhooks is not None and unsubscribe is not None:  # the last changes get a few seconds more
                unsubscribe()
                await anyio.to_thread.run_sync(webhooks.stop, settings.webhook_timeout)
            if owned:
                db.close()

    extra: dict[str, Any] = {}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        # FastAPI's OpenTelemetry hooks look for providers on every request; the service's
        # metrics are Prometheus (/metrics).
        extra["telemetry"] = {"tracing": False, "metrics": False, "logs": False}
    app = ServiceApp(title="tpm2-attest", version=__version__, lifespan=lifespan, **extra,
                  max_body_size=settings.max_body_bytes,
                  description="TPM 2.0 device enrollment (EK certificate, AK, credential "
                              "activation), attestation (quotes over single-use nonces) and the "
                              "operator API.")
    app.router.route_class = JsonRoute
    app.state.service = service
    app.state.metrics = metrics
    app.state.webhooks = webhooks

    def refusal(exc: BaseException) -> ServiceError:
        """Every failure as the ServiceError the client sees (logged where it is the service's)."""
        if isinstance(exc, ServiceError):
            return exc
        if isinstance(exc, VerificationError):
            return ServiceError(exc.reason.value, exc.detail, status=VERIFICATION_STATUS, reason=exc.reason.value)
        if isinstance(exc, RequestValidationError):
            # Name the field and the problem, never echo the input (it may hold a secret).
            problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
                        for e in exc.errors()]
            return ServiceError(ServiceCode.INVALID_REQUEST, "; ".join(problems[:10]))
        if isinstance(exc, StarletteHTTPException):
            code = {413: ServiceCode.BODY_TOO_LARGE, 404: ServiceCode.NOT_FOUND}.get(exc.status_code)
            detail = (f"request bodies are limited to {settings.max_body_bytes} bytes"
                      if exc.status_code == 413 else str(exc.detail))
            return ServiceError(code or f"HTTP_{exc.status_code}", detail, status=exc.status_code)
        if isinstance(exc, BodyTimeout):
            return ServiceError(ServiceCode.REQUEST_TIMEOUT,
                                f"the request body must arrive within {settings.body_timeout:g} s",
                                headers={"Connection": "close"})
        if isinstance(exc, DBAPIError | DatabaseError):
            orig = getattr(exc, "orig", None) or exc.__cause__ or exc
            log.error("database error: %s", type(orig).__name__, exc_info=exc)
            return ServiceError(ServiceCode.DATABASE_UNAVAILABLE,
                                "the database cannot serve this request now; retry later",
                                headers={"Retry-After": "5"})
        log.error("internal error", exc_info=exc)
        return ServiceError(ServiceCode.INTERNAL_ERROR, "the service failed; the request id in the logs tells more")

    async def _handle(request: Request, exc: Exception) -> JSONResponse:
        return _error(refusal(exc), request)

    for kind in (ServiceError, VerificationError, RequestValidationError, StarletteHTTPException, BodyTimeout,
                 DBAPIError, DatabaseError, Exception):
        app.add_exception_handler(kind, _handle)

    @app.get("/v1/health")
    def health() -> HealthResponse:
        return HealthResponse(version=__version__)

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/v1/enroll/begin", responses=_ERRORS)
    def enroll_begin(body: EnrollBeginRequest) -> EnrollBeginResponse:
        """Start an enrollment: verify the EK certificate, get the nonce for the AK."""
        r = service.begin_enrollment(body.ek_public, body.ek_certificate, body.ek_chain)
        return EnrollBeginResponse(enrollment_id=r.enrollment_id, nonce=r.nonce, expires_at=r.expires_at)

    @app.post("/v1/enroll/ak", responses=_ERRORS)
    def enroll_ak(body: EnrollAkRequest) -> EnrollAkResponse:
        """Check the AK blob and its nonce binding; answer with a credential challenge."""
        ch = service.submit_ak(body.enrollment_id, body.ak_blob)
        return EnrollAkResponse(challenge=CredentialChallengeModel(
            credential_blob=ch.credential_blob, encrypted_secret=ch.encrypted_secret))

    @app.post("/v1/enroll/finish", responses=_ERRORS)
    def enroll_finish(body: EnrollFinishRequest) -> EnrollFinishResponse:
        """Check the activated secret and register the device."""
        d = service.finish_enrollment(body.enrollment_id, body.secret)
        return EnrollFinishResponse(device_id=d.device_id, ak_name=d.ak_name.hex(), ak_format=d.ak_format,
                                    ek_name=d.ek_name.hex(), ek_certificate_verified=d.ek_certificate_verified,
                                    replaced_devices=d.replaced_devices, enrolled_by=d.enrolled_by)

    @app.post("/v1/enroll/ak-certificate", responses=_ERRORS)
    def enroll_ak_certificate(body: EnrollAkCertificateRequest) -> EnrollFinishResponse:
        """Enroll by AK certificate (opt-in): check the AK blob's nonce binding and its
        certificate; register the device without a credential activation."""
        d = service.enroll_with_ak_certificate(body.enrollment_id, body.ak_blob, body.ak_certificate)
        return EnrollFinishResponse(device_id=d.device_id, ak_name=d.ak_name.hex(), ak_format=d.ak_format,
                                    ek_name=d.ek_name.hex(), ek_certificate_verified=d.ek_certificate_verified,
                                    replaced_devices=d.replaced_devices, enrolled_by=d.enrolled_by)

    def issue_challenge(body: ChallengeRequest) -> bytes:
        c = service.issue_challenge(body.device_id)
        return _dump(ChallengeResponse(challenge_id=c.challenge_id, nonce=c.nonce, expires_at=c.expires_at,
                                       ima_offset=c.ima_offset, ima_pcrs=list(c.ima_pcrs)))

    def answer_challenge(body: AttestRequest) -> bytes:
        started = time.perf_counter()
        outcome = "refused"
        try:
            r = service.attest(body.challenge_id, body.quote.model_dump(), body.event_log,
                               body.ima_log, body.ima_offset)
            outcome = "passed"
        finally:
            metrics.attestation.labels(outcome).observe(time.perf_counter() - started)
        return _dump(AttestResponse(attestation_id=r.attestation_id, device_id=r.device_id, policies=r.policies,
                                    status=r.status, fresh_until=r.fresh_until, **r.result))

    @app.post("/v1/attest/challenge", responses=_ERRORS, response_model=ChallengeResponse)
    def attest_challenge(body: ChallengeRequest) -> Response:
        """Issue a single-use nonce for an enrolled device."""
        return Response(issue_challenge(body), media_type="application/json")

    @app.post("/v1/attest", responses=_ERRORS, response_model=AttestResponse)
    def attest(body: AttestRequest) -> Response:
        """Verify a quote over a challenge's nonce with the device's enrolled AK, judge it by the
        device's policies."""
        return Response(answer_challenge(body), media_type="application/json")

    # The two requests every device makes skip FastAPI's routing and dependency machinery (same
    # parsing, validation, handlers and errors; the routes above document them and serve any
    # request the lane passes on).
    # With SQLite in one process, a challenge and an answer without logs take a fraction of a
    # millisecond of local work, less than handing them to a thread and back costs (the GIL
    # runs one at a time anyway): they run on the event loop. Logs (an IMA list may take a
    # while), and every request on PostgreSQL (network round trips), go to the threads.
    inline = db.backend == "sqlite" and settings.workers == 1
    lanes = {"/v1/attest/challenge": Lane(ChallengeRequest, issue_challenge,
                                          inline=(lambda _body: True) if inline else None),
             "/v1/attest": Lane(AttestRequest, answer_challenge,
                                inline=(lambda body: body.event_log is None and body.ima_log is None)
                                if inline else None)}

    def lane_refusal(exc: BaseException) -> ServiceError:
        err = refusal(exc)
        metrics.refusals.labels(err.code).inc()
        return err

    async def run_blocking(fn: Callable[[Any], bytes], arg: Any) -> bytes:
        """``fn(arg)`` in the request threads, with this request's context (its log id): an
        executor future costs a fraction of anyio's worker-thread machinery."""
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(pool, ctx.run, fn, arg)

    lane = FastLane(app.framework, lanes=lanes, max_body=settings.max_body_bytes, refusal=lane_refusal,
                    run=run_blocking)
    app.front = Observe(lane, body_timeout=settings.body_timeout,  # ids, metrics, log, body timeout
                        count=lambda route, method, status: metrics.requests.labels(route, method, str(status)).inc())

    app.include_router(admin.router(service))
    if settings.dashboard:
        from . import dashboard  # Jinja2 and the templates only when the pages are served

        app.include_router(dashboard.router(service, secure_cookie=settings.dashboard_secure_cookie))
    return app


__all__ = ["create_app"]
