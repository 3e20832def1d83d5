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
  still holds the AK and its PCRs had these values; then the device's policies judge them.
  It says nothing about which process or user asked for the quote.

Each call uses one database session. ``attest`` reads the challenge and its device in one
query, verifies outside any write, then spends the challenge and records the outcome in ONE
transaction: a crash leaves a challenge either unspent or spent with its record.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import os
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy.orm import Session

from .. import verify
from ..errors import TpmError
from ..evidence import CredentialChallenge, Quote
from ..verify import Reason, VerificationError
from . import store
from .errors import ServiceCode, ServiceError
from .hooks import StatusChange, StatusHooks
from .hotpath import DeviceRevoked, HotConnection, PendingAttestation
from .policies import PolicyCache, Verdict, judge
from .settings import Settings, SettingsError, describe
from .store import (
    AK_CERTIFICATE,
    AK_RECEIVED,
    BEGUN,
    CREDENTIAL_ACTIVATION,
    FAILED,
    FAILED_STATUS,
    STALE,
    TRUSTED,
    AlreadyEnrolled,
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

DEVICE_FAULTS: Final = frozenset({
    Reason.PCR_DIGEST_MISMATCH, Reason.PCR_VALUE_MISMATCH, Reason.PCR_SELECTION,
    Reason.EVENT_LOG_MALFORMED, Reason.EVENT_LOG_REPLAY_MISMATCH, Reason.EVENT_LOG_BANK_MISSING,
    Reason.SECURE_BOOT, Reason.IMA_LOG_MALFORMED, Reason.IMA_TEMPLATE_HASH_MISMATCH,
    Reason.IMA_TEMPLATE_UNSUPPORTED, Reason.IMA_PCR_NOT_QUOTED, Reason.IMA_REPLAY_MISMATCH,
    Reason.IMA_BOOT_AGGREGATE_MISMATCH,
})
"""Refusals that turn a device ``failed``: raised only after the quote verified as the device's
own over the fresh nonce. Anything earlier (a bad signature, a wrong nonce, a used or expired
challenge) is recorded but leaves the status alone: anyone can post to a device's challenge."""


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
    """``credential_activation`` (the AK is bound to the EK) or ``ak_certificate``."""


def _applied_refs(applied: list[tuple[str, int, Any, float | None]]) -> list[dict[str, Any]]:
    """``[{"name", "version"}]`` of the policies ``policies_for`` applies, as a verdict lists them."""
    return [{"name": n, "version": v} for n, v, _doc, _fresh in applied]


@dataclass(frozen=True)
class ChallengeIssued:
    challenge_id: str
    nonce: bytes
    expires_at: datetime
    ima_offset: int = 0
    """Where the device's IMA list should start: past the entries already verified."""
    ima_pcrs: tuple[int, ...] = ()
    """The PCRs the verified entries extended (10, and any an IMA policy's pcr= rule chose):
    the quote must cover them even when the new entries do not extend them."""


@dataclass(frozen=True)
class AttestationPassed:
    attestation_id: int
    device_id: str
    result: dict[str, Any]
    """bank, pcrs {index: hex}, clock, reset_count, restart_count, safe, firmware_version,
    event_log (the ``EventLogResult`` summary) when a log was posted, ima (the ``ImaResult``
    summary with its incremental state) when an IMA list was."""
    policies: list[dict[str, Any]]
    status: str
    fresh_until: datetime


@functools.lru_cache(maxsize=4096)
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


def _device_chain(chain: Sequence[bytes]) -> list[bytes]:
    """The EK chain a device sent, one certificate per entry (DER as received); an entry that is
    not one is refused as EK_CERT_MALFORMED naming it."""
    from ..verify.certpath import parse_certificates  # x509 only where certificates are checked

    out: list[bytes] = []
    for i, entry in enumerate(chain):
        parsed = parse_certificates(entry, f"ek_chain #{i}")
        if len(parsed) != 1:
            raise VerificationError(Reason.EK_CERT_MALFORMED,
                                    f"ek_chain #{i}: {len(parsed)} certificates, expected one")
        out.append(parsed[0].der)
    return out


@dataclass
class _Outcome:
    """What answering one challenge came to, before it is recorded."""

    error: ServiceError | VerificationError | None = None
    result: dict[str, Any] | None = None
    verdict: Verdict | None = None
    state: dict[str, Any] | None = None
    device_fault: bool = False

    @property
    def code(self) -> str | None:
        if self.error is None:
            return None
        return self.error.code if isinstance(self.error, ServiceError) else self.error.reason.value


_T = TypeVar("_T")
_ISSUER_FETCH_TIMEOUT: Final = 5.0
"""Seconds for one caIssuers fetch while a device waits (``ca_issuer_hosts``)."""
_MAX_FETCHED_ISSUERS: Final = 256


class AttestationService:
    """The protocol over a :class:`Store`; raises ServiceError or VerificationError to refuse.

    ``clock`` returns the current UTC time (tests inject one to expire nonces); ``hooks``
    receives every device status change.
    """

    def __init__(self, settings: Settings, store_: Store, *, clock: Clock | None = None,
                 hooks: StatusHooks | None = None) -> None:
        self.settings = settings
        self.store = store_
        self.clock: Clock = clock or utc_now
        self.hooks = hooks or StatusHooks()
        self.policy_cache = PolicyCache()
        self._fetched_issuers: dict[tuple[str, ...], list[bytes]] = {}
        self.ek_roots = settings.load_ek_roots()
        self.ek_intermediates = settings.load_ek_intermediates()
        self.ak_roots = settings.load_ak_roots() if settings.ak_certificate_enrollment else []
        self.ak_intermediates = settings.load_ak_intermediates() if settings.ak_certificate_enrollment else []
        if settings.ak_certificate_enrollment and not self.ak_roots:
            raise SettingsError("enrollment by AK certificate is on but no AK root CA is configured: give "
                                f"{describe('ak_roots')} (a file, or vendors:Google)")
        if settings.require_ek_certificate and not self.ek_roots:
            raise SettingsError(
                f"an EK certificate is required but no EK root CA is configured: give {describe('ek_roots')}, "
                f"or pass --allow-missing-ek-certificate (TPM2_ATTEST_REQUIRE_EK_CERTIFICATE=false) to "
                "trust EKs on first use")

    # -- certificate paths ----------------------------------------------------------------------

    def _with_fetched_issuers(self, check: Callable[[list[bytes]], _T], certificate: bytes,
                              known: list[bytes], via: Sequence[bytes] = ()) -> _T:
        """``check(extra_intermediates)``; when the path is missing an issuer and the operator
        allows hosts (``ca_issuer_hosts``), fetch it from the certificate's caIssuers URLs on
        them (once per process and URL set) and check again; ``via``: the device's own
        intermediates, climbed first (the fetch starts from the top one). A fetched certificate
        is only an intermediate: the configured roots still decide."""
        try:
            return check([])
        except VerificationError as exc:
            hosts = self.settings.ca_issuer_hosts
            if not hosts or exc.reason not in (Reason.EK_CERT_CHAIN, Reason.AK_CERT_CHAIN):
                raise
            from .. import trust  # the network path loads only when it is used

            try:
                top = trust.chain_top(certificate, via)
                urls = tuple(trust.ca_issuer_urls(top))
                fetched = self._fetched_issuers.get(urls)
                if fetched is None:
                    fetched = trust.fetch_ca_issuers(top, known=known, hosts=hosts,
                                                     timeout=_ISSUER_FETCH_TIMEOUT)
                    if len(self._fetched_issuers) >= _MAX_FETCHED_ISSUERS:
                        self._fetched_issuers.clear()
                    self._fetched_issuers[urls] = fetched
            except (ValueError, trust.FetchError) as fetch_error:
                log.warning("fetching the issuer of a certificate failed: %s", fetch_error)
                raise exc from None
            if not fetched:
                raise
            log.info("fetched %d issuer certificate(s) from %s", len(fetched), ", ".join(urls))
            return check(fetched)

    # -- enrollment -----------------------------------------------------------------------------

    def begin_enrollment(self, ek_public: bytes, ek_certificate: bytes | None,
                         ek_chain: Sequence[bytes] = ()) -> EnrollmentBegun:
        """Check the EK (and its certificate) and open an enrollment with a fresh nonce.
        ``ek_chain``: intermediates the device read from its TPM (``EkInfo.chain``), used only
        as untrusted intermediates of the path to the configured roots."""
        name = ek_name(ek_public)
        # make_credential is the verifier's EK check (a restricted decryption key with AES-CFB
        # of adequate strength): run it now so a bad EK fails before the device makes an AK.
        verify.make_credential(ek_public, name)
        fingerprint: str | None = None
        verified = False
        if ek_certificate is not None:
            if self.ek_roots:
                chain = _device_chain(ek_chain)
                cert = self._with_fetched_issuers(
                    lambda extra: verify.verify_ek_certificate(
                        ek_certificate, roots=self.ek_roots,
                        intermediates=[*self.ek_intermediates, *chain, *extra],
                        ek_public=ek_public, ca_validity=self.settings.ek_ca_validity),
                    ek_certificate, [*self.ek_roots, *self.ek_intermediates], chain)
                fingerprint = hashlib.sha256(cert.der).hexdigest()
                verified = True
                for stale in cert.expired_cas:
                    log.warning("EK certificate accepted through an expired CA: %s", stale)
            else:  # no roots configured: the certificate is remembered, not trusted
                fingerprint = hashlib.sha256(ek_certificate).hexdigest()
        elif self.settings.require_ek_certificate:
            raise ServiceError(ServiceCode.EK_CERTIFICATE_REQUIRED,
                               "this service enrolls only TPMs whose EK certificate chains to its roots")
        now = self.clock()
        key_id = ek_key_id(ek_public)
        record = EnrollmentRecord(
            id=secrets.token_urlsafe(24), state=BEGUN, created_at=now,
            expires_at=now + timedelta(seconds=self.settings.enrollment_ttl),
            ek_public=bytes(ek_public), ek_name=name, ek_key_id=key_id, ek_cert_fingerprint=fingerprint,
            ek_cert_verified=verified, nonce=os.urandom(NONCE_SIZE))
        with self.store.session() as s:
            existing = store.active_device_for_ek(s, name, key_id)
            if existing is not None and not (self.settings.allow_reenroll or existing.reenroll_allowed):
                raise ServiceError(ServiceCode.ALREADY_ENROLLED, "this EK already belongs to an enrolled device")
            window = self.settings.challenge_rate_window
            if (self.settings.challenge_rate > 0 and store.enrollments_since(s, key_id, now - timedelta(
                    seconds=window)) >= self.settings.challenge_rate):
                raise ServiceError(ServiceCode.RATE_LIMITED,
                                   f"at most {self.settings.challenge_rate} enrollments per EK every {window:g} s",
                                   headers={"Retry-After": str(max(1, round(window)))})
            s.add(record)
            s.commit()
        log.info("enrollment %s begun: EK %s, certificate %s", _short(record.id), name.hex()[:16],
                 "verified" if verified else ("unverified" if fingerprint else "absent"))
        return EnrollmentBegun(record.id, record.nonce, record.expires_at)

    def submit_ak(self, enrollment_id: str, ak_blob: bytes) -> CredentialChallenge:
        """Check the AK blob against the enrollment nonce; answer with a credential challenge."""
        with self.store.session() as s:
            rec = self._open_enrollment(s, enrollment_id, BEGUN)
            try:
                ak = verify.check_ak(ak_blob, nonce=rec.nonce, allow_sha1=self.settings.allow_sha1)
                challenge, secret = verify.make_credential(rec.ek_public, ak.name)
            except VerificationError as exc:
                self._fail(s, rec, BEGUN, exc.reason.value)
                raise
            if not store.advance_enrollment(
                    s, rec.id, BEGUN, AK_RECEIVED, ak_public=ak.public, ak_public_der=ak.public_der,
                    ak_name=ak.name, ak_format=ak.format, secret_hash=hashlib.sha256(secret).digest()):
                raise ServiceError(ServiceCode.ENROLLMENT_STATE, "the AK step of this enrollment already ran")
            s.commit()
        log.info("enrollment %s: %s AK %s accepted, credential challenge sent", _short(rec.id),
                 ak.format, ak.name.hex()[:16])
        return challenge

    def finish_enrollment(self, enrollment_id: str, secret: bytes) -> DeviceEnrolled:
        """Compare the activated secret (constant time, as hashes) and register the device."""
        with self.store.session() as s:
            rec = self._open_enrollment(s, enrollment_id, AK_RECEIVED)
            assert rec.secret_hash is not None and rec.ak_public is not None
            assert rec.ak_public_der is not None and rec.ak_name is not None and rec.ak_format is not None
            try:
                verify.verify_activation(rec.secret_hash, hashlib.sha256(secret).digest())
            except VerificationError as exc:
                self._fail(s, rec, AK_RECEIVED, exc.reason.value)
                raise
            device = self._new_device(rec, rec.ak_public, rec.ak_public_der, rec.ak_name, rec.ak_format,
                                      CREDENTIAL_ACTIVATION)
            return self._register(s, rec, device, AK_RECEIVED)

    def enroll_with_ak_certificate(self, enrollment_id: str, ak_blob: bytes,
                                   ak_certificate: bytes) -> DeviceEnrolled:
        """Enroll by AK certificate (``Settings.ak_certificate_enrollment``), in place of the ak
        and finish steps: the AK blob is bound to this enrollment's nonce (``check_ak``) and a
        configured AK CA certified its key (``verify_ak_certificate``). No credential
        activation: the EK of ``begin`` is recorded, not bound to the AK (``enrolled_by``)."""
        if not self.settings.ak_certificate_enrollment:
            raise ServiceError(ServiceCode.AK_CERTIFICATE_ENROLLMENT_OFF,
                               "this service enrolls devices by credential activation only")
        with self.store.session() as s:
            rec = self._open_enrollment(s, enrollment_id, BEGUN)
            try:
                ak = verify.check_ak(ak_blob, nonce=rec.nonce, allow_sha1=self.settings.allow_sha1)
                cert = self._with_fetched_issuers(
                    lambda extra: verify.verify_ak_certificate(
                        ak_certificate, self.ak_roots, [*self.ak_intermediates, *extra],
                        ak_public=ak, ca_validity=self.settings.ek_ca_validity),
                    ak_certificate, [*self.ak_roots, *self.ak_intermediates])
            except VerificationError as exc:
                self._fail(s, rec, BEGUN, exc.reason.value)
                raise
            log.info("enrollment %s: AK certified by %s", _short(rec.id), cert.subject or cert.issuer)
            device = self._new_device(rec, ak.public, ak.public_der, ak.name, ak.format or "", AK_CERTIFICATE)
            return self._register(s, rec, device, BEGUN)

    def _new_device(self, rec: EnrollmentRecord, ak_public: bytes, ak_public_der: bytes, ak_name: bytes,
                    ak_format: str, enrolled_by: str) -> DeviceRecord:
        """The device an enrollment registers: its EK (from ``begin``) and its AK."""
        now = self.clock()
        return DeviceRecord(
            id=str(uuid.uuid4()), enrolled_at=now, revoked_at=None, ek_public=rec.ek_public,
            ek_name=rec.ek_name, ek_key_id=ek_key_id(rec.ek_public), ek_cert_fingerprint=rec.ek_cert_fingerprint,
            ek_cert_verified=rec.ek_cert_verified, ak_public=ak_public, ak_public_der=ak_public_der,
            ak_name=ak_name, ak_format=ak_format, enrolled_by=enrolled_by, status=STALE, status_since=now,
            reenroll_allowed=False)

    def _register(self, s: Session, rec: EnrollmentRecord, device: DeviceRecord, from_state: str) -> DeviceEnrolled:
        """Register ``device`` and finish ``rec`` (in state ``from_state``), once per EK unless
        re-enrollment is allowed; tell the hooks."""
        now = device.enrolled_at
        try:
            replaced = store.register_device(s, rec.id, device, replace=self.settings.allow_reenroll, now=now,
                                             from_state=from_state)
        except StateConflict:
            raise ServiceError(ServiceCode.ENROLLMENT_STATE, "this enrollment already went on") from None
        except AlreadyEnrolled:
            self._fail(s, rec, from_state, ServiceCode.ALREADY_ENROLLED.value)
            raise ServiceError(ServiceCode.ALREADY_ENROLLED,
                               "this EK already belongs to an enrolled device") from None
        replaced_ids = [old.id for old in replaced]
        log.info("device %s enrolled by %s (%s AK, EK certificate %s)%s", device.id,
                 device.enrolled_by.replace("_", " "), device.ak_format,
                 "verified" if device.ek_cert_verified else "not verified",
                 f", replacing {', '.join(replaced_ids)}" if replaced_ids else "")
        self.hooks.emit(StatusChange(device.id, None, STALE, now, "enrolled"))
        for old in replaced:
            self.hooks.emit(StatusChange(old.id, None, store.REVOKED, now, "replaced"))
        return DeviceEnrolled(device.id, device.ek_name, device.ak_name, device.ak_format,
                              device.ek_cert_verified, replaced_ids, device.enrolled_by)

    def _open_enrollment(self, s: Session, enrollment_id: str, state: str) -> EnrollmentRecord:
        rec = s.get(EnrollmentRecord, enrollment_id)
        if rec is None:
            raise ServiceError(ServiceCode.UNKNOWN_ENROLLMENT, "no such enrollment")
        if rec.state != state:
            expected = _NEXT_STEP.get(rec.state)
            raise ServiceError(ServiceCode.ENROLLMENT_STATE,
                               f"enrollment is {rec.state}" + (f"; the next step is {expected}" if expected
                                                               else "; start again with POST /v1/enroll/begin"))
        if self.clock() >= rec.expires_at:
            self._fail(s, rec, state, ServiceCode.ENROLLMENT_EXPIRED.value)
            raise ServiceError(ServiceCode.ENROLLMENT_EXPIRED,
                               f"enrollments must finish within {self.settings.enrollment_ttl:g} s")
        return rec

    def _fail(self, s: Session, rec: EnrollmentRecord, state: str, code: str) -> None:
        s.rollback()
        store.advance_enrollment(s, rec.id, state, FAILED, failure=code)
        s.commit()
        log.warning("enrollment %s failed: %s", _short(rec.id), code)

    # -- attestation ----------------------------------------------------------------------------

    def issue_challenge(self, device_id: str) -> ChallengeIssued:
        """A fresh single-use nonce for ``device_id`` to quote over (within its rate limit)."""
        now = self.clock()
        secret = os.urandom(24 + NONCE_SIZE)  # one system call: the id (a capability) and the nonce
        issued = ChallengeIssued(base64.urlsafe_b64encode(secret[:24]).decode("ascii"), secret[24:],
                                 now + timedelta(seconds=self.settings.nonce_ttl))
        window = self.settings.challenge_rate_window
        limit = self.settings.challenge_rate if self.settings.challenge_rate > 0 else None
        with self.store.hot.connection() as db:
            with self.store.writer():
                offset = db.issue_challenge(issued.challenge_id, device_id, issued.nonce, now, issued.expires_at,
                                            now - timedelta(seconds=window), limit)
                db.commit() if offset is not None else db.rollback()
            if offset is not None:
                state, judged_by = self._ima_state(db, device_id) if offset else (None, [])
                # a state continues only where it ends and under the policies that judged it
                pcrs = tuple(sorted(state.pcrs)) if state is not None and state.offset == offset and \
                    judged_by == _applied_refs(db.policies_for(device_id)) else ()
                issued = replace(issued, ima_offset=offset if pcrs else 0, ima_pcrs=pcrs)
            else:
                if not db.device_is_active(device_id):
                    raise ServiceError(ServiceCode.UNKNOWN_DEVICE, "no enrolled device has this id")
                raise ServiceError(ServiceCode.RATE_LIMITED,
                                   f"at most {self.settings.challenge_rate} challenges per device every "
                                   f"{window:g} s", headers={"Retry-After": str(max(1, round(window)))})
        return issued

    def attest(self, challenge_id: str, quote: Quote | Mapping[str, Any],
               event_log: bytes | None = None, ima_log: bytes | None = None,
               ima_offset: int = 0) -> AttestationPassed:
        """Verify a quote over a challenge's nonce with the device's enrolled AK, judge it by
        the device's policies, and record the outcome.

        Every answer to a known challenge is recorded and spends it, with the record, in one
        transaction. ``quote`` is a Quote or its JSON object form; ``event_log`` the raw TCG
        log, replayed against the quoted PCRs when given; ``ima_log`` the binary IMA list from
        byte ``ima_offset`` on (the challenge's), verified from the state the device's previous
        attestation left (after any refusal the device sends its whole list again).
        """
        now = self.clock()
        with self.store.hot.connection() as db:
            pending = db.pending(challenge_id)
            if pending is None:
                raise ServiceError(ServiceCode.UNKNOWN_CHALLENGE, "no such challenge")
            used = ServiceError(ServiceCode.CHALLENGE_USED, "this challenge was already answered")
            if pending.consumed:
                with self.store.writer():
                    db.record_used(self._row(pending, now, _Outcome(used)))
                log.warning("attestation of device %s refused: %s", pending.device_id, used.code)
                raise used
            outcome = self._judge(db, pending, now, quote, event_log, ima_log, ima_offset)
            old = store.status_of(pending, now)
            new, fresh_until, device_update = self._status_update(outcome, old, now)
            row = self._row(pending, now, outcome)
            ima = (outcome.result or {}).get("ima") if outcome.error is None else None
            columns = {**(device_update or {}),
                       "ima_offset": ima["state"].get("offset") if isinstance(ima, dict) and
                       isinstance(ima.get("state"), dict) else None}
            with self.store.writer():
                try:
                    claimed, attestation_id = db.record_outcome(challenge_id, now, row, columns)
                except DeviceRevoked:  # by an operator or a re-enrollment while this was judged
                    outcome, device_update = _Outcome(self._revoked()), None
                    claimed, attestation_id = db.record_outcome(challenge_id, now, self._row(pending, now, outcome),
                                                                {"ima_offset": None})
                if not claimed:  # a concurrent answer spent it between our read and our write
                    db.record_used(self._row(pending, now, _Outcome(used)))
            if not claimed:
                raise used
        if device_update is not None:
            self.hooks.emit(StatusChange(pending.device_id, old, new, now, "attestation", attestation_id,
                                         tuple(outcome.verdict.failed_rules() if outcome.verdict and
                                               not outcome.verdict.ok else [outcome.code] if outcome.code else [])))
        if outcome.error is not None:
            log.warning("attestation of device %s refused: %s", pending.device_id, outcome.code)
            raise outcome.error
        assert outcome.result is not None and outcome.verdict is not None and fresh_until is not None
        log.info("attestation of device %s passed (%d PCRs, %d policies)", pending.device_id,
                 len(outcome.result["pcrs"]), len(outcome.verdict.policies))
        return AttestationPassed(attestation_id, pending.device_id, outcome.result, outcome.verdict.policies,
                                 new, fresh_until)

    def _judge(self, db: HotConnection, p: PendingAttestation, now: datetime,
               quote: Quote | Mapping[str, Any], event_log: bytes | None,
               ima_log: bytes | None = None, ima_offset: int = 0) -> _Outcome:
        """Verify and judge an answer; never raises for a refusal (it is the outcome)."""
        if now >= p.expires_at:
            return _Outcome(ServiceError(ServiceCode.CHALLENGE_EXPIRED,
                                         f"challenges must be answered within {self.settings.nonce_ttl:g} s"))
        if p.revoked:
            return _Outcome(self._revoked())
        out = _Outcome()
        try:
            if not isinstance(quote, Quote):
                try:
                    quote = Quote.from_dict(dict(quote))
                except TpmError as exc:
                    raise VerificationError(Reason.MALFORMED, str(exc)) from None
            allow_sha1 = self.settings.allow_sha1
            res = verify.verify_quote(_ak_public(p.ak_public, allow_sha1), quote, nonce=p.nonce,
                                      allow_sha1=allow_sha1)
            result = res.to_dict()
            for key in ("extra_data", "signer_name", "pcr_digest"):  # the nonce and what we already know
                result.pop(key, None)
            result["event_log"] = None
            out.result = result
            log_result = None
            if event_log is not None:
                log_result = verify.verify_event_log(event_log, res)
                result["event_log"] = log_result.to_dict()
                out.state = log_result.state.summary()  # bounded, JSON-ready
            result["ima"] = None
            ima_result = None
            applied = db.policies_for(p.device_id)
            if ima_log is not None:
                state = None
                if ima_offset:
                    state, judged_by = self._ima_state(db, p.device_id)
                    if state is None or state.offset != ima_offset:
                        raise VerificationError(Reason.IMA_STATE_MISMATCH, f"no verified IMA state ends at "
                                                f"offset {ima_offset}: send the whole list")
                    # the entries verified before were judged by the policies of then
                    if judged_by != _applied_refs(applied):
                        raise VerificationError(Reason.IMA_STATE_MISMATCH, "the device's policies changed "
                                                "since its IMA list was judged: send the whole list")
                ima_result = verify.verify_ima_log(ima_log, res, state=state)
                result["ima"] = ima_result.to_dict()
            out.verdict = judge(self.policy_cache, applied, res, log_result, ima_result)
            if not out.verdict.ok:
                rules = out.verdict.failed_rules()
                out.device_fault = True
                out.error = ServiceError(
                    ServiceCode.POLICY_VIOLATION,
                    "; ".join(f"{v['rule']}: {v['detail']}" for v in out.verdict.violations[:20]),
                    extra={"rules": rules})
        except VerificationError as exc:
            out.error = exc
            out.device_fault = exc.reason in DEVICE_FAULTS
        return out

    @staticmethod
    def _revoked() -> ServiceError:
        return ServiceError(ServiceCode.UNKNOWN_DEVICE, "the device was revoked")

    def _ima_state(self, db: HotConnection, device_id: str) -> tuple[verify.ImaState | None, list[Any]]:
        """The IMA state the device's latest attestation left, if it passed with an IMA list,
        and the policies that judged the entries it covers."""
        last = db.last_result(device_id)
        if last is None:
            return None, []
        ima = last[0].get("ima")
        if not isinstance(ima, dict) or not isinstance(ima.get("state"), dict):
            return None, []
        try:
            return verify.ImaState.from_dict(ima["state"]), last[1]
        except VerificationError:
            return None, []

    def _status_update(self, outcome: _Outcome, old: str, now: datetime
                       ) -> tuple[str, datetime | None, dict[str, Any] | None]:
        """The device's new status, the end of its window, and the columns to write (None:
        the outcome says nothing about the device)."""
        if outcome.error is None:
            assert outcome.verdict is not None
            window = outcome.verdict.freshness or self.settings.freshness
            fresh_until = now + timedelta(seconds=window)
            values: dict[str, Any] = {"status": TRUSTED, "last_attestation_at": now, "last_ok_at": now,
                                      "fresh_until": fresh_until}
            new = TRUSTED
        elif outcome.device_fault:
            values, new, fresh_until = {"status": FAILED_STATUS, "last_attestation_at": now}, FAILED_STATUS, None
        else:
            return old, None, None
        if new != old:
            values["status_since"] = now
        return new, fresh_until, values

    def _row(self, p: PendingAttestation, now: datetime, outcome: _Outcome) -> dict[str, Any]:
        """The attestations row of an outcome."""
        error = outcome.error
        detail = None if error is None else error.detail
        result = outcome.result
        if result is not None and isinstance(result.get("event_log"), dict) and "state" in result["event_log"]:
            # the machine state has its own column: not twice per row
            result = {**result, "event_log": {k: v for k, v in result["event_log"].items() if k != "state"}}
        return {"device_id": p.device_id, "challenge_id": p.challenge_id, "at": now, "ok": error is None,
                "code": outcome.code, "detail": detail, "result": result,
                "policies": outcome.verdict.policies if outcome.verdict else None,
                "violations": (outcome.verdict.violations or None) if outcome.verdict else None,
                "state": outcome.state}

    def freshness_of(self, device: DeviceRecord) -> float:
        """The device's own freshness window, else the service default (policies may set a
        shorter one at the next attestation)."""
        return device.freshness or self.settings.freshness

    # -- housekeeping ---------------------------------------------------------------------------

    def sweep(self) -> tuple[int, int, list[str]]:
        """Delete expired challenges and enrollments past the retention time; write down
        devices that went stale (and tell the hooks). Returns (challenges, enrollments,
        stale device ids)."""
        now = self.clock()
        with self.store.session() as s:
            challenges, enrollments = store.sweep(s, now, grace=timedelta(seconds=self.settings.retention))
            stale = store.mark_stale(s, now)
        for device_id in stale:
            self.hooks.emit(StatusChange(device_id, TRUSTED, STALE, now, "stale"))
        if challenges or enrollments or stale:
            log.info("sweep: %d challenges and %d enrollments deleted, %d devices stale",
                     challenges, enrollments, len(stale))
        return challenges, enrollments, stale
