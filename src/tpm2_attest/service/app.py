"""The HTTP face of the service: ``create_app(settings)`` returns a FastAPI application.

Endpoints (all ``POST``, JSON, binary fields base64; see docs/service.md):

* ``/v1/enroll/begin`` {ek_public, ek_certificate?} -> {enrollment_id, nonce, expires_at}
* ``/v1/enroll/ak`` {enrollment_id, ak_blob} -> {challenge}
* ``/v1/enroll/finish`` {enrollment_id, secret} -> {device_id, ...}
* ``/v1/enroll/ak-certificate`` {enrollment_id, ak_blob, ak_certificate} -> {device_id, ...}
  (opt-in: enrollment by a cloud vTPM's certified AK, instead of ``ak`` + ``finish``)
* ``/v1/attest/challenge`` {device_id} -> {challenge_id, nonce, expires_at}
* ``/v1/attest`` {challenge_id, quote, event_log?, ima_log?, ima_offset?} -> {ok, pcrs, ...}

plus ``GET /v1/health``. Refusals are ``{"error": {"code", "reason", "detail"}}`` with a 4xx
status (:mod:`.errors`). Handlers are plain ``def``: FastAPI runs them in its thread pool, since
the store and the signature checks block.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._version import __version__
from ..verify import VerificationError
from .core import AttestationService, Clock
from .errors import VERIFICATION_STATUS, ServiceCode, ServiceError
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

_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    status: {"model": ErrorResponse} for status in (403, 404, 409, 410, 413, 422)
}


def _error(code: str, detail: str, status: int, reason: str | None = None) -> JSONResponse:
    return JSONResponse(ServiceError(code, detail, status=status, reason=reason).to_dict(), status_code=status)


def create_app(settings: Settings | None = None, *, clock: Clock | None = None,
               store: Store | None = None) -> FastAPI:
    """Build the service for ``settings`` (defaults: :class:`Settings`).

    ``store`` defaults to one on ``settings.database_url`` (closed at shutdown); ``clock``
    returns the current UTC time (tests inject one). Raises ValueError for settings the
    service cannot honour (e.g. EK certificates required but no root configured).
    """
    settings = settings or Settings()
    owned = store is None
    db = store if store is not None else Store(settings.database_url)
    try:
        service = AttestationService(settings, db, clock=clock)
    except BaseException:
        if owned:
            db.close()
        raise

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if owned:
            db.close()

    app = FastAPI(title="tpm2-attest", version=__version__, lifespan=lifespan,
                  max_body_size=settings.max_body_bytes,
                  description="TPM 2.0 device enrollment (EK certificate, AK, credential "
                              "activation) and attestation (quotes over single-use nonces).")
    app.state.service = service

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.status)

    @app.exception_handler(VerificationError)
    async def _verification_error(_request: Request, exc: VerificationError) -> JSONResponse:
        return _error(exc.reason.value, exc.detail, VERIFICATION_STATUS, exc.reason.value)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # Name the field and the problem, never echo the input (it may hold a secret).
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
                    for e in exc.errors()]
        return _error(ServiceCode.INVALID_REQUEST, "; ".join(problems[:10]), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {413: ServiceCode.BODY_TOO_LARGE, 404: ServiceCode.NOT_FOUND}.get(exc.status_code)
        detail = (f"request bodies are limited to {settings.max_body_bytes} bytes"
                  if exc.status_code == 413 else str(exc.detail))
        return _error(code or f"HTTP_{exc.status_code}", detail, exc.status_code)

    @app.get("/v1/health")
    def health() -> HealthResponse:
        return HealthResponse(version=__version__)

    @app.post("/v1/enroll/begin", responses=_ERRORS)
    def enroll_begin(body: EnrollBeginRequest) -> EnrollBeginResponse:
        """Start an enrollment: verify the EK certificate, get the nonce for the AK."""
        r = service.begin_enrollment(body.ek_public, body.ek_certificate)
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
                                    replaced_devices=d.replaced_devices)

    @app.post("/v1/enroll/ak-certificate", responses=_ERRORS)
    def enroll_ak_certificate(body: EnrollAkCertificateRequest) -> EnrollFinishResponse:
        """Enroll by AK certificate (opt-in): check the AK blob's nonce binding and its
        certificate; register the device without a credential activation."""
        d = service.enroll_with_ak_certificate(body.enrollment_id, body.ak_blob, body.ak_certificate)
        return EnrollFinishResponse(device_id=d.device_id, ak_name=d.ak_name.hex(), ak_format=d.ak_format,
                                    ek_name=d.ek_name.hex(), ek_certificate_verified=d.ek_certificate_verified,
                                    replaced_devices=d.replaced_devices, enrolled_by=d.enrolled_by)

    @app.post("/v1/attest/challenge", responses=_ERRORS)
    def attest_challenge(body: ChallengeRequest) -> ChallengeResponse:
        """Issue a single-use nonce for an enrolled device."""
        c = service.issue_challenge(body.device_id)
        return ChallengeResponse(challenge_id=c.challenge_id, nonce=c.nonce, expires_at=c.expires_at,
                                 ima_offset=c.ima_offset)

    @app.post("/v1/attest", responses=_ERRORS)
    def attest(body: AttestRequest) -> AttestResponse:
        """Verify a quote over a challenge's nonce with the device's enrolled AK."""
        r = service.attest(body.challenge_id, body.quote.model_dump(), body.event_log,
                           body.ima_log, body.ima_offset)
        return AttestResponse(attestation_id=r.attestation_id, device_id=r.device_id, **r.result)

    return app
