"""The enrollment and attestation protocol, without HTTP: state machine, policy, records.

What each step proves (see docs/service.md):

* ``begin``: the EK certificate chains to a configured root and certifies this EK public
  area (so the EK belongs to a genuine TPM); the service issues a fresh enrollment nonce.
* ``submit_ak``: the AK is a restricted signing key created inside a TPM (``check_ak``: key
  attributes and the creation attestation, signed by the AK itself, bound to the nonce; for
  PCP blobs the binding is SHA-1(nonce), which ``check_ak`` handles). The service encrypts
  a secret to the EK for the AK's Name (``make_credential``).
* ``finish``: the device recovered the secret, which a TPM releases only when it holds both
  the EK's private key and an object with that AK Name: the AK lives in the same TPM as the
  EK. Only then is the device registered, once.
* ``attest``: a quote signed by the registered AK over a single-use nonce: the enrolled TPM
  still holds the AK and its PCRs had these values. It says nothing about which process or
  user asked for the quote (the brief's threat model).

Verification is delegated to :mod:`tpm2_attest.verify`; this module decides what is asked,
what is remembered and in which order steps may come.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .. import verify
from ..errors import TpmError
from ..evidence import CredentialChallenge, Quote
from ..verify import Reason, VerificationError
from .errors import ServiceCode, ServiceError
from .settings import Settings
from .store import (
    AK_RECEIVED,
    BEGUN,
    FAILED,
    AlreadyEnrolled,
    AttestationRecord,
    ChallengeRecord,
    DeviceRecord,
    EnrollmentRecord,
    StateConflict,
    Store,
)

log = logging.getLogger("tpm2_attest.service")

NONCE_SIZE: Final = 32
"""Bytes of every nonce: within TPM2_Quote's 64-byte qualifyingData limit on any TPM."""

Clock = Callable[[], datetime]

_NEXT_STEP: Final = {BEGUN: "POST /v1/enroll/ak", AK_RECEIVED: "POST /v1/enroll/finish"}


def utc_now() -> datetime:
    return datetime.now(UTC)


def _short(identifier: str) -> str:
    """Enrollment and challenge ids are bearer capabilities: log a prefix only."""
    return identifier[:8] + "..."


@dataclass(frozen=True)
class EnrollmentBegun:
    enrollment_id: str
    nonce: bytes
    expires_at: datetime


@dataclass(frozen=True)
class DeviceEnrolled:
    device_id: str
    ek_name: bytes
    ak_name: bytes
    ak_format: str
    ek_certificate_verified: bool
    replaced_devices: list[str]
    enrolled_by: str = "credential_activation"


@dataclass(frozen=True)
class ChallengeIssued:
    challenge_id: str
    nonce: bytes
    expires_at: datetime
    ima_offset: int = 0
    """Where the device's IMA list should start: past the entries already verified."""


@dataclass(frozen=True)
class AttestationPassed:
    attestation_id: int
    device_id: str
    result: dict[str, Any]
    """bank, pcrs {index: hex}, clock, reset_count, restart_count, safe, firmware_version,
    event_log (the ``EventLogResult`` summary) when a log was posted, ima (the ``ImaResult``
    summary with its incremental state) when an IMA list was."""


@functools.lru_cache(maxsize=1024)
def _ak_public(public: bytes, allow_sha1: bool) -> verify.AkPublic:
    """AkPublic of a stored AK, parsed once (it also caches the AK's quote layouts)."""
    return verify.AkPublic.from_public(public, allow_sha1=allow_sha1)


def ek_key_id(ek_public: bytes) -> bytes:
    """SHA-256 of the EK's SubjectPublicKeyInfo DER: the EK's identity independent of the public
    area it was presented in (its Name is not: MakeCredential and the EK certificate check do not
    depend on authPolicy or attributes, so one EK key has many acceptable Names)."""
    key = verify.check_ek(ek_public).key
    return hashlib.sha256(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).digest()


def ek_name(ek_public: bytes) -> bytes:
    """The TPM Name of an EK public area (TPM2B_PUBLIC or TPMT_PUBLIC): the EK's identity.
    ``verify.check_ek`` also refuses keys that are not EKs (restricted decryption keys)."""
    try:
        name = verify.check_ek(ek_public).name
    except ValueError as exc:  # unsupported nameAlg
        raise VerificationError(Reason.MALFORMED, f"EK public area: {exc}") from None
    assert name is not None  # bytes always carry a public area
    return name


class AttestationService:
    """The protocol over a :class:`Store`; raises ServiceError or VerificationError to refuse.

    ``clock`` returns the current UTC time (tests inject one to expire nonces).
    """

    def __init__(self, settings: Settings, store: Store, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.store = store
        self.clock: Clock = clock or utc_now
        self.ek_roots = settings.load_ek_roots()
        self.ek_intermediates = settings.load_ek_intermediates()
        self.ak_roots = settings.load_ak_roots() if settings.ak_certificate_enrollment else []
        self.ak_intermediates = settings.load_ak_intermediates() if settings.ak_certificate_enrollment else []
        if settings.ak_certificate_enrollment and not self.ak_roots:
            raise ValueError("enrollment by AK certificate is on but no AK root CA is configured "
                             "(serve: --ak-root FILE or --ak-root vendors:Google; Settings: ak_roots, "
                             "ak_vendor_cas)")
        if settings.require_ek_certificate and not self.ek_roots:
            raise ValueError("require_ek_certificate is set but no EK root CA is configured "
                             "(give ek_roots, or turn require_ek_certificate off to trust EKs on first use)")

    # -- enrollment -----------------------------------------------------------------------------

    def begin_enrollment(self, ek_public: bytes, ek_certificate: bytes | None) -> EnrollmentBegun:
        """Check the EK (and its certificate) and open an enrollment with a fresh nonce."""
        name = ek_name(ek_public)
        # make_credential is the verifier's EK check (a restricted decryption key with AES-CFB
        # of adequate strength): run it now so a bad EK fails before the device makes an AK.
        verify.make_credential(ek_public, name)
        fingerprint: str | None = None
        verified = False
        if ek_certificate is not None:
            if self.ek_roots:
                cert = verify.verify_ek_certificate(ek_certificate, roots=self.ek_roots,
                                                    intermediates=self.ek_intermediates,
                                                    ek_public=ek_public,
                                                    ca_validity=self.settings.ek_ca_validity)
                fingerprint = hashlib.sha256(cert.der).hexdigest()
                verified = True
                for stale in cert.expired_cas:
                    log.warning("EK certificate accepted through an expired CA: %s", stale)
            else:  # no roots configured: the certificate is remembered, not trusted
                fingerprint = hashlib.sha256(ek_certificate).hexdigest()
        elif self.settings.require_ek_certificate:
            raise ServiceError(ServiceCode.EK_CERTIFICATE_REQUIRED,
                               "this service enrolls only TPMs whose EK certificate chains to its roots")
        if (not self.settings.allow_reenroll
                and self.store.active_device_for_ek(name, ek_key_id(ek_public)) is not None):
            raise ServiceError(ServiceCode.ALREADY_ENROLLED, "this EK already belongs to an enrolled device")
        now = self.clock()
        record = EnrollmentRecord(
            id=secrets.token_urlsafe(24), state=BEGUN, created_at=now,
            expires_at=now + timedelta(seconds=self.settings.enrollment_ttl),
            ek_public=bytes(ek_public), ek_name=name, ek_cert_fingerprint=fingerprint,
            ek_cert_verified=verified, nonce=os.urandom(NONCE_SIZE))
        self.store.add(record)
        log.info("enrollment %s begun: EK %s, certificate %s", _short(record.id), name.hex()[:16],
                 "verified" if verified else ("unverified" if fingerprint else "absent"))
        return EnrollmentBegun(record.id, record.nonce, record.expires_at)

    def submit_ak(self, enrollment_id: str, ak_blob: bytes) -> CredentialChallenge:
        """Check the AK blob against the enrollment nonce; answer with a credential challenge."""
        rec = self._open_enrollment(enrollment_id, BEGUN)
        try:
            ak = verify.check_ak(ak_blob, nonce=rec.nonce, allow_sha1=self.settings.allow_sha1)
            challenge, secret = verify.make_credential(rec.ek_public, ak.name)
        except VerificationError as exc:
            self._fail(rec, BEGUN, exc.reason.value)
            raise
        if not self.store.advance_enrollment(
                rec.id, BEGUN, AK_RECEIVED, ak_public=ak.public, ak_public_der=ak.public_der,
                ak_name=ak.name, ak_format=ak.format, secret_hash=hashlib.sha256(secret).digest()):
            raise ServiceError(ServiceCode.ENROLLMENT_STATE, "the AK step of this enrollment already ran")
        log.info("enrollment %s: %s AK %s accepted, credential challenge sent", _short(rec.id),
                 ak.format, ak.name.hex()[:16])
        return challenge

    def finish_enrollment(self, enrollment_id: str, secret: bytes) -> DeviceEnrolled:
        """Compare the activated secret (constant time, as hashes) and register the device."""
        rec = self._open_enrollment(enrollment_id, AK_RECEIVED)
        assert rec.secret_hash is not None and rec.ak_public is not None
        assert rec.ak_public_der is not None and rec.ak_name is not None and rec.ak_format is not None
        try:
            verify.verify_activation(rec.secret_hash, hashlib.sha256(secret).digest())
        except VerificationError as exc:
            self._fail(rec, AK_RECEIVED, exc.reason.value)
            raise
        now = self.clock()
        device = DeviceRecord(
            id=str(uuid.uuid4()), enrolled_at=now, revoked_at=None, ek_public=rec.ek_public,
            ek_name=rec.ek_name, ek_key_id=ek_key_id(rec.ek_public), ek_cert_fingerprint=rec.ek_cert_fingerprint,
            ek_cert_verified=rec.ek_cert_verified, ak_public=rec.ak_public,
            ak_public_der=rec.ak_public_der, ak_name=rec.ak_name, ak_format=rec.ak_format)
        try:
            replaced = self.store.register_device(rec.id, device, replace=self.settings.allow_reenroll, now=now)
        except StateConflict:
            raise ServiceError(ServiceCode.ENROLLMENT_STATE, "this enrollment already finished") from None
        except AlreadyEnrolled:
            self._fail(rec, AK_RECEIVED, ServiceCode.ALREADY_ENROLLED.value)
            raise ServiceError(ServiceCode.ALREADY_ENROLLED,
                               "this EK already belongs to an enrolled device") from None
        log.info("device %s enrolled (%s AK, EK certificate %s)%s", device.id, device.ak_format,
                 "verified" if device.ek_cert_verified else "not verified",
                 f", replacing {', '.join(replaced)}" if replaced else "")
        return DeviceEnrolled(device.id, device.ek_name, device.ak_name, device.ak_format,
                              device.ek_cert_verified, replaced)

    def enroll_with_ak_certificate(self, enrollment_id: str, ak_blob: bytes,
                                   ak_certificate: bytes) -> DeviceEnrolled:
        """Enroll by AK certificate (``Settings.ak_certificate_enrollment``), in place of the ak
        and finish steps: the AK blob is bound to this enrollment's nonce (``check_ak``) and a
        configured AK CA certified its key (``verify_ak_certificate``). No credential
        activation: the EK of ``begin`` is recorded, not bound to the AK (``enrolled_by``)."""
        if not self.settings.ak_certificate_enrollment:
            raise ServiceError(ServiceCode.AK_CERTIFICATE_ENROLLMENT_OFF,
                               "this service enrolls devices by credential activation only")
        rec = self._open_enrollment(enrollment_id, BEGUN)
        try:
            ak = verify.check_ak(ak_blob, nonce=rec.nonce, allow_sha1=self.settings.allow_sha1)
            cert = verify.verify_ak_certificate(ak_certificate, self.ak_roots, self.ak_intermediates,
                                                ak_public=ak,
                                                ca_validity=self.settings.ek_ca_validity)
        except VerificationError as exc:
            self._fail(rec, BEGUN, exc.reason.value)
            raise
        now = self.clock()
        device = DeviceRecord(
            id=str(uuid.uuid4()), enrolled_at=now, revoked_at=None, ek_public=rec.ek_public,
            ek_name=rec.ek_name, ek_key_id=ek_key_id(rec.ek_public), ek_cert_fingerprint=rec.ek_cert_fingerprint,
            ek_cert_verified=rec.ek_cert_verified, ak_public=ak.public, ak_public_der=ak.public_der,
            ak_name=ak.name, ak_format=ak.format or "", enrolled_by="ak_certificate")
        try:
            replaced = self.store.register_device(rec.id, device, replace=self.settings.allow_reenroll,
                                                  now=now, from_state=BEGUN)
        except StateConflict:
            raise ServiceError(ServiceCode.ENROLLMENT_STATE, "this enrollment already went on") from None
        except AlreadyEnrolled:
            self._fail(rec, BEGUN, ServiceCode.ALREADY_ENROLLED.value)
            raise ServiceError(ServiceCode.ALREADY_ENROLLED,
                               "this EK already belongs to an enrolled device") from None
        log.info("device %s enrolled by AK certificate (%s AK, certificate %s)%s", device.id,
                 device.ak_format, cert.subject or cert.issuer,
                 f", replacing {', '.join(replaced)}" if replaced else "")
        return DeviceEnrolled(device.id, device.ek_name, device.ak_name, device.ak_format,
                              device.ek_cert_verified, replaced, "ak_certificate")

    def _open_enrollment(self, enrollment_id: str, state: str) -> EnrollmentRecord:
        rec = self.store.enrollment(enrollment_id)
        if rec is None:
            raise ServiceError(ServiceCode.UNKNOWN_ENROLLMENT, "no such enrollment")
        if rec.state != state:
            expected = _NEXT_STEP.get(rec.state)
            raise ServiceError(ServiceCode.ENROLLMENT_STATE,
                               f"enrollment is {rec.state}" + (f"; the next step is {expected}" if expected
                                                               else "; start again with POST /v1/enroll/begin"))
        if self.clock() >= rec.expires_at:
            self._fail(rec, state, ServiceCode.ENROLLMENT_EXPIRED.value)
            raise ServiceError(ServiceCode.ENROLLMENT_EXPIRED,
                               f"enrollments must finish within {self.settings.enrollment_ttl:g} s")
        return rec

    def _fail(self, rec: EnrollmentRecord, state: str, code: str) -> None:
        self.store.advance_enrollment(rec.id, state, FAILED, failure=code)
        log.warning("enrollment %s failed: %s", _short(rec.id), code)

    # -- attestation ----------------------------------------------------------------------------

    def issue_challenge(self, device_id: str) -> ChallengeIssued:
        """A fresh single-use nonce for ``device_id`` to quote over."""
        device = self.store.device(device_id)
        if device is None or device.revoked_at is not None:
            raise ServiceError(ServiceCode.UNKNOWN_DEVICE, "no enrolled device has this id")
        now = self.clock()
        record = ChallengeRecord(id=secrets.token_urlsafe(24), device_id=device.id,
                                 nonce=os.urandom(NONCE_SIZE), created_at=now,
                                 expires_at=now + timedelta(seconds=self.settings.nonce_ttl),
                                 consumed_at=None)
        self.store.add(record)
        state = self._ima_state(device.id)
        return ChallengeIssued(record.id, record.nonce, record.expires_at, state.offset if state else 0)

    def _ima_state(self, device_id: str) -> verify.ImaState | None:
        """The IMA state the device's latest attestation left, if it passed with an IMA list
        (after any refusal the device sends its whole list again)."""
        last = self.store.latest_attestation(device_id)
        ima = last.result.get("ima") if last is not None and last.ok and last.result else None
        if not isinstance(ima, dict) or not isinstance(ima.get("state"), dict):
            return None
        try:
            return verify.ImaState.from_dict(ima["state"])
        except VerificationError:
            return None

    def attest(self, challenge_id: str, quote: Quote | Mapping[str, Any],
               event_log: bytes | None = None, ima_log: bytes | None = None,
               ima_offset: int = 0) -> AttestationPassed:
        """Verify a quote over a challenge's nonce with the device's enrolled AK.

        The challenge is spent first (committed), whatever follows; every outcome of a known
        challenge is recorded. ``quote`` is a Quote or its JSON object form; ``event_log`` the
        raw TCG log, replayed against the quoted PCRs when given; ``ima_log`` the binary IMA
        list from byte ``ima_offset`` on (the challenge's), verified from the state of the
        device's previous attestation.
        """
        now = self.clock()
        got = self.store.consume_challenge(challenge_id, now)
        if got is None:
            raise ServiceError(ServiceCode.UNKNOWN_CHALLENGE, "no such challenge")
        challenge, first = got
        try:
            result = self._verify(challenge, first, now, quote, event_log, ima_log, ima_offset)
        except (ServiceError, VerificationError) as exc:
            code = exc.code if isinstance(exc, ServiceError) else exc.reason.value
            self.store.record_attestation(AttestationRecord(
                device_id=challenge.device_id, challenge_id=challenge.id, at=now, ok=False,
                code=code, detail=exc.detail, result=None))
            log.warning("attestation of device %s refused: %s", challenge.device_id, code)
            raise
        attestation_id = self.store.record_attestation(AttestationRecord(
            device_id=challenge.device_id, challenge_id=challenge.id, at=now, ok=True,
            code=None, detail=None, result=result))
        log.info("attestation of device %s passed (%d PCRs)", challenge.device_id, len(result["pcrs"]))
        return AttestationPassed(attestation_id, challenge.device_id, result)

    def _verify(self, challenge: ChallengeRecord, first: bool, now: datetime,
                quote: Quote | Mapping[str, Any], event_log: bytes | None,
                ima_log: bytes | None = None, ima_offset: int = 0) -> dict[str, Any]:
        if not first:
            raise ServiceError(ServiceCode.CHALLENGE_USED, "this challenge was already answered")
        if now >= challenge.expires_at:
            raise ServiceError(ServiceCode.CHALLENGE_EXPIRED,
                               f"challenges must be answered within {self.settings.nonce_ttl:g} s")
        device = self.store.device(challenge.device_id)
        if device is None or device.revoked_at is not None:
            raise ServiceError(ServiceCode.UNKNOWN_DEVICE, "the device was revoked")
        if not isinstance(quote, Quote):
            try:
                quote = Quote.from_dict(dict(quote))
            except TpmError as exc:
                raise VerificationError(Reason.MALFORMED, str(exc)) from None
        allow_sha1 = self.settings.allow_sha1
        res = verify.verify_quote(_ak_public(device.ak_public, allow_sha1), quote, nonce=challenge.nonce,
                                  expected_pcrs=self.settings.policy_for(device.id), allow_sha1=allow_sha1)
        out = res.to_dict()
        for key in ("extra_data", "signer_name", "pcr_digest"):  # the nonce and what we already know
            out.pop(key, None)
        out["event_log"] = None
        if event_log is not None:
            out["event_log"] = verify.verify_event_log(event_log, res).to_dict()
        out["ima"] = None
        if ima_log is not None:
            state = self._ima_state(device.id) if ima_offset else None
            if ima_offset and (state is None or state.offset != ima_offset):
                raise VerificationError(Reason.IMA_STATE_MISMATCH,
                                        f"no verified IMA state ends at offset {ima_offset}: send the whole list")
            out["ima"] = verify.verify_ima_log(ima_log, res, state=state).to_dict()
        return out
