"""The operator API (``/v1/admin``): devices, their history and status, tags, policies and their
assignments, tokens and the audit log. Every endpoint needs a bearer token (:mod:`.auth`);
every write is audited in the same transaction as the change it records.

The JSON forms of records (:func:`device_json`, :func:`attestation_json`, ...) and the reads
that assemble them (:func:`device_listing`, :func:`device_detail`, ...) are public: the admin
CLI prints what the API returns, the dashboard (:mod:`.dashboard`) renders the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..policy import PolicyError
from . import store
from .auth import Operator, authenticate, create_token
from .core import AttestationService
from .errors import ServiceCode, ServiceError
from .hooks import StatusChange
from .http import JsonRoute
from .policies import NAME_PATTERN, parse
from .settings import MAX_SECONDS
from .tables import (
    ADMIN,
    READ,
    REVOKED,
    STALE,
    STATUSES,
    TRUSTED,
    AttestationRecord,
    AuditRecord,
    DeviceRecord,
    PolicyAssignment,
    PolicyRecord,
    TokenRecord,
)

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
NamePath = Annotated[str, Path(pattern=NAME_PATTERN)]
Limit = Annotated[int, Query(ge=1, le=store.MAX_PAGE)]
Auth = Annotated[str | None, Header(alias="Authorization", include_in_schema=False)]
"""The bearer token (module level: FastAPI resolves the string annotations in these globals)."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RevokeRequest(_Body):
    reason: str | None = Field(default=None, max_length=500)


class TagsRequest(_Body):
    add: list[Name] = Field(default_factory=list, max_length=64)
    remove: list[Name] = Field(default_factory=list, max_length=64)


class DevicePatch(_Body):
    freshness: float | None = Field(default=None, gt=0, le=MAX_SECONDS,
                                   description="seconds; null: the policy's or default")


class PolicyPut(_Body):
    document: dict[str, Any] = Field(description="a tpm2_attest.policy document")
    freshness: float | None = Field(default=None, gt=0, le=MAX_SECONDS,
                                   description="seconds a pass keeps a device trusted")


class AssignRequest(_Body):
    policy: Name


class TokenRequest(_Body):
    name: Name
    role: Literal["read", "admin"]


# -- JSON forms -----------------------------------------------------------------------------------


def _t(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def device_json(d: DeviceRecord, status: str, tags: list[str]) -> dict[str, Any]:
    """A device as the operator API shows it."""
    return {
        "device_id": d.id, "status": status, "status_since": _t(d.status_since), "tags": tags,
        "enrolled_at": _t(d.enrolled_at), "revoked_at": _t(d.revoked_at), "replaced_by": d.replaced_by,
        "last_attestation_at": _t(d.last_attestation_at), "last_attestation_id": d.last_attestation_id,
        "last_ok_at": _t(d.last_ok_at), "fresh_until": _t(d.fresh_until), "freshness": d.freshness,
        "reenroll_allowed": d.reenroll_allowed, "ak_format": d.ak_format, "ak_name": d.ak_name.hex(),
        "ek_name": d.ek_name.hex(), "ek_certificate_verified": d.ek_cert_verified,
        "ek_cert_fingerprint": d.ek_cert_fingerprint,
    }


def attestation_json(a: AttestationRecord) -> dict[str, Any]:
    """One attestation of a device's history: outcome, failed rules, what was seen."""
    return {"attestation_id": a.id, "device_id": a.device_id, "at": _t(a.at), "ok": a.ok, "code": a.code,
            "detail": a.detail, "policies": a.policies, "violations": a.violations,
            "rules": list(dict.fromkeys(v.get("rule") for v in a.violations or [] if isinstance(v, dict))),
            "result": a.result, "state": a.state}


def policy_json(p: PolicyRecord) -> dict[str, Any]:
    return {"name": p.name, "version": p.version, "document": p.document, "freshness": p.freshness,
            "created_at": _t(p.created_at), "created_by": p.created_by}


def audit_json(a: AuditRecord) -> dict[str, Any]:
    return {"id": a.id, "at": _t(a.at), "actor": a.actor, "action": a.action, "target": a.target,
            "detail": a.detail}


def token_json(t: TokenRecord) -> dict[str, Any]:
    return {"name": t.name, "role": t.role, "created_at": _t(t.created_at), "created_by": t.created_by,
            "revoked_at": _t(t.revoked_at)}


def assignment_json(a: PolicyAssignment) -> dict[str, Any]:
    return {"kind": a.kind, "target": a.target or None, "policy": a.policy_name,
            "assigned_at": _t(a.assigned_at), "assigned_by": a.assigned_by}


def page_json(page: store.Page, render: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    return {"items": [render(item) for item in page.items], "next": page.next}


# -- what a reader sees: the operator API returns these, the dashboard renders them ---------------


def paged(fn: Callable[[], store.Page]) -> store.Page:
    """A listing, with a cursor it did not make as ``INVALID_REQUEST``."""
    try:
        return fn()
    except store.BadCursor as exc:
        raise ServiceError(ServiceCode.INVALID_REQUEST, f"cursor: {exc}") from None


def device_record(s: Session, device_id: str) -> DeviceRecord:
    """The device of this id; ``UNKNOWN_DEVICE`` when there is none."""
    d = s.get(DeviceRecord, device_id) if len(device_id) <= 64 else None
    if d is None:
        raise ServiceError(ServiceCode.UNKNOWN_DEVICE, "no device has this id")
    return d


def device_view(s: Session, d: DeviceRecord, now: datetime) -> dict[str, Any]:
    """A device with its status at ``now``, its tags and the policies that judge it now."""
    out = device_json(d, store.status_of(d, now), store.tags_of(s, [d.id])[d.id])
    out["policies"] = [{"name": n, "version": v} for n, v, _doc, _f in store.policies_for(s, d.id)]
    return out


def device_detail(s: Session, device_id: str, now: datetime) -> dict[str, Any]:
    """:func:`device_view` with the device's last attestation (``UNKNOWN_DEVICE``)."""
    d = device_record(s, device_id)
    out = device_view(s, d, now)
    last = s.get(AttestationRecord, d.last_attestation_id) if d.last_attestation_id else None
    out["last_attestation"] = attestation_json(last) if last is not None else None
    return out


def device_listing(s: Session, now: datetime, *, status: str | None = None, tag: str | None = None,
                   limit: int = 100, cursor: str | None = None, last: bool = False) -> dict[str, Any]:
    """One page of devices (``next``: the cursor of the following one); ``last``: each with its
    ``last_attestation`` too."""
    page = paged(lambda: store.list_devices(s, now, status=status, tag=tag, limit=limit, cursor=cursor))
    tags = store.tags_of(s, [d.id for d, _st in page.items])
    items = [device_json(d, st, tags[d.id]) for d, st in page.items]
    if last:
        records = store.attestations_by_id(s, [d.last_attestation_id for d, _st in page.items
                                               if d.last_attestation_id is not None])
        for item in items:
            rec = records.get(item["last_attestation_id"])
            item["last_attestation"] = attestation_json(rec) if rec is not None else None
    return {"items": items, "next": page.next}


def device_history(s: Session, device_id: str, *, limit: int = 50, cursor: str | None = None) -> dict[str, Any]:
    """One page of a device's attestations, newest first (``UNKNOWN_DEVICE``)."""
    device_record(s, device_id)
    return page_json(paged(lambda: store.attestation_history(s, device_id, limit=limit, cursor=cursor)),
                     attestation_json)


def attestation_detail(s: Session, device_id: str, attestation_id: int) -> dict[str, Any]:
    """One attestation of a device (``UNKNOWN_DEVICE``, ``NOT_FOUND``)."""
    device_record(s, device_id)
    a = s.get(AttestationRecord, attestation_id) if 0 < attestation_id <= store.MAX_ID else None
    if a is None or a.device_id != device_id:
        raise ServiceError(ServiceCode.NOT_FOUND, "this device has no attestation of this id")
    return attestation_json(a)


def policy_listing(s: Session) -> dict[str, Any]:
    """The newest version of every policy, and every assignment."""
    return {"items": [policy_json(p) for p in store.list_policies(s)],
            "assignments": [assignment_json(a) for a in store.list_assignments(s)]}


def policy_detail(s: Session, name: str, version: int | None = None) -> dict[str, Any]:
    """A policy's newest version (or ``version``) with the numbers of all its versions
    (``UNKNOWN_POLICY``)."""
    p = store.latest_policy(s, name, version)
    if p is None:
        raise ServiceError(ServiceCode.UNKNOWN_POLICY, f"no policy {name!r}"
                           + (f" version {version}" if version else ""))
    out = policy_json(p)
    out["versions"] = [v.version for v in store.policy_versions(s, name)]
    return out


def audit_listing(s: Session, *, limit: int = 100, cursor: str | None = None) -> dict[str, Any]:
    """One page of the audit log, newest first."""
    return page_json(paged(lambda: store.audit_entries(s, limit=limit, cursor=cursor)), audit_json)


def fleet_status(s: Session, now: datetime) -> dict[str, Any]:
    """How many devices have each status."""
    return {"devices": store.count_by_status(s, now), "statuses": list(STATUSES)}


# -- the router -------------------------------------------------------------------------------------


def router(service: AttestationService) -> APIRouter:
    """The ``/v1/admin`` endpoints over ``service``'s store, clock and hooks."""
    db = service.store

    def token(request: Request, authorization: Auth = None) -> None:
        """The token, checked before the request's parameters and body are: without one every
        operator endpoint answers 401, with a read token every write 403, never a 422 that
        tells what it would accept. (Each endpoint checks its own role again: GET /tokens.)"""
        with db.session() as s:
            authenticate(s, authorization, READ if request.method in ("GET", "HEAD") else ADMIN)

    api = APIRouter(prefix="/v1/admin", tags=["operator"], route_class=JsonRoute, dependencies=[Depends(token)])

    @contextmanager
    def _op(authorization: str | None, role: str) -> Iterator[tuple[Session, Operator]]:
        """One session for the request, its operator authenticated for ``role``."""
        with db.session() as s:
            yield s, authenticate(s, authorization, role)

    @api.get("/devices")
    def list_devices(authorization: Auth = None, status: Literal["trusted", "failed", "stale", "revoked"] | None = None,
                     tag: str | None = Query(default=None, max_length=64), limit: Limit = 100,
                     cursor: str | None = Query(default=None, max_length=400)) -> dict[str, Any]:
        """Devices in enrollment order; filter by status or tag; ``next`` is the next page's cursor."""
        with _op(authorization, READ) as (s, _who):
            return device_listing(s, service.clock(), status=status, tag=tag, limit=limit, cursor=cursor)

    @api.get("/devices/{device_id}")
    def get_device(device_id: str, authorization: Auth = None) -> dict[str, Any]:
        """One device: status, tags, the policies that judge it now, its last attestation."""
        with _op(authorization, READ) as (s, _who):
            return device_detail(s, device_id, service.clock())

    @api.get("/devices/{device_id}/attestations")
    def device_attestations(device_id: str, authorization: Auth = None, limit: Limit = 50,
                            cursor: str | None = Query(default=None, max_length=400)) -> dict[str, Any]:
        """The device's attestations, newest first, refusals with their rules."""
        with _op(authorization, READ) as (s, _who):
            return device_history(s, device_id, limit=limit, cursor=cursor)

    @api.get("/devices/{device_id}/attestations/{attestation_id}")
    def device_attestation(device_id: str, attestation_id: int, authorization: Auth = None) -> dict[str, Any]:
        """One attestation of the device: outcome, violations, what was seen, machine state."""
        with _op(authorization, READ) as (s, _who):
            return attestation_detail(s, device_id, attestation_id)

    @api.post("/devices/{device_id}/revoke")
    def revoke(device_id: str, body: RevokeRequest | None = None, authorization: Auth = None) -> dict[str, Any]:
        """Revoke a device: its challenges and attestations are refused from now on."""
        with _op(authorization, ADMIN) as (s, op):
            d = device_record(s, device_id)
            now = service.clock()
            old = store.status_of(d, now)
            changed = d.revoked_at is None
            if changed:
                d.revoked_at, d.status, d.status_since, d.reenroll_allowed = now, REVOKED, now, False
                store.audit(s, now, op.actor, "device.revoke", device_id,
                            {"reason": body.reason} if body and body.reason else None)
                s.commit()
            out = device_view(s, d, now)
        if changed:
            service.hooks.emit(StatusChange(device_id, old, REVOKED, now, "revoked"))
        return out

    @api.post("/devices/{device_id}/allow-reenroll")
    def allow_reenroll(device_id: str, authorization: Auth = None) -> dict[str, Any]:
        """Let this device's EK enroll once more (the lost-AK case); the new enrollment revokes
        this device and inherits its tags, policy and freshness."""
        with _op(authorization, ADMIN) as (s, op):
            d = device_record(s, device_id)
            if d.revoked_at is not None:
                raise ServiceError(ServiceCode.CONFLICT, "the device is revoked: its EK may enroll anew")
            now = service.clock()
            if not d.reenroll_allowed:
                d.reenroll_allowed = True
                store.audit(s, now, op.actor, "device.allow_reenroll", device_id)
                s.commit()
            return device_view(s, d, now)

    @api.post("/devices/{device_id}/tags")
    def tags(device_id: str, body: TagsRequest, authorization: Auth = None) -> dict[str, Any]:
        """Add and remove tags; the device's policies follow at its next attestation."""
        with _op(authorization, ADMIN) as (s, op):
            d = device_record(s, device_id)
            now = service.clock()
            store.set_tags(s, device_id, body.add, body.remove)
            store.audit(s, now, op.actor, "device.tags", device_id, {"add": body.add, "remove": body.remove})
            s.commit()
            return device_view(s, d, now)

    @api.patch("/devices/{device_id}")
    def patch_device(device_id: str, body: DevicePatch, authorization: Auth = None) -> dict[str, Any]:
        """Set the device's own freshness window (null: its policies' or the default)."""
        revived = None
        with _op(authorization, ADMIN) as (s, op):
            d = device_record(s, device_id)
            now = service.clock()
            d.freshness = body.freshness
            if d.last_ok_at is not None:  # the new window applies to the last pass too
                d.fresh_until = d.last_ok_at + timedelta(seconds=service.freshness_of(d))
                if (d.status == STALE and d.revoked_at is None and d.fresh_until > now
                        and d.last_attestation_at == d.last_ok_at):
                    # The sweeper wrote down 'stale' for the old window of the device's last
                    # answer, which passed: it counts again in the new one.
                    d.status, d.status_since = TRUSTED, now
                    revived = StatusChange(device_id, STALE, TRUSTED, now, "freshness")
            store.audit(s, now, op.actor, "device.freshness", device_id, {"freshness": body.freshness})
            s.commit()
            out = device_view(s, d, now)
        if revived is not None:
            service.hooks.emit(revived)
        return out

    # -- policies ---------------------------------------------------------------------------------

    @api.get("/policies")
    def list_policies(authorization: Auth = None) -> dict[str, Any]:
        """The newest version of every policy, and every assignment."""
        with _op(authorization, READ) as (s, _who):
            return policy_listing(s)

    @api.get("/policies/{name}")
    def get_policy(name: NamePath, authorization: Auth = None,
                   version: int | None = Query(default=None, ge=1)) -> dict[str, Any]:
        """A policy's newest version, or ``?version=N``."""
        with _op(authorization, READ) as (s, _who):
            return policy_detail(s, name, version)

    @api.put("/policies/{name}")
    def put_policy(name: NamePath, body: PolicyPut, authorization: Auth = None) -> dict[str, Any]:
        """Store a new version of a policy (validated; an unchanged document adds none)."""
        with _op(authorization, ADMIN) as (s, op):
            try:
                document = parse(body.document).to_dict()
            except PolicyError as exc:
                raise ServiceError(ServiceCode.INVALID_REQUEST, f"document.{exc.key}: {exc.message}"
                                   if exc.key else f"document: {exc.message}", extra={"key": exc.key}) from None
            now = service.clock()
            current = store.latest_policy(s, name)
            if current is not None and current.document == document and current.freshness == body.freshness:
                return {**policy_json(current), "changed": False}
            try:
                record = store.add_policy_version(s, name, document, body.freshness, op.actor, now)
                store.audit(s, now, op.actor, "policy.put", name, {"version": record.version})
                s.commit()
            except IntegrityError:
                s.rollback()
                raise ServiceError(ServiceCode.CONFLICT, "another version was stored at the same time; retry") from None
            return {**policy_json(record), "changed": True}

    @api.get("/assignments")
    def list_assignments(authorization: Auth = None) -> dict[str, Any]:
        with _op(authorization, READ) as (s, _who):
            return {"items": [assignment_json(a) for a in store.list_assignments(s)]}

    def _assign(kind: str, target: str, policy: str | None, authorization: str | None) -> dict[str, Any]:
        with _op(authorization, ADMIN) as (s, op):
            if kind == "device":
                device_record(s, target)
            if policy is not None and store.latest_policy(s, policy) is None:
                raise ServiceError(ServiceCode.UNKNOWN_POLICY, f"no policy {policy!r}: PUT it first")
            now = service.clock()
            store.assign_policy(s, kind, target, policy, op.actor, now)
            store.audit(s, now, op.actor, "policy.assign" if policy else "policy.unassign",
                        f"{kind}:{target}" if target else kind, {"policy": policy})
            s.commit()
            return {"kind": kind, "target": target or None, "policy": policy}

    @api.put("/assignments/default")
    def assign_default(body: AssignRequest, authorization: Auth = None) -> dict[str, Any]:
        """The policy of every device that has neither its own nor a tag's."""
        return _assign("default", "", body.policy, authorization)

    @api.delete("/assignments/default")
    def unassign_default(authorization: Auth = None) -> dict[str, Any]:
        return _assign("default", "", None, authorization)

    @api.put("/assignments/{kind}/{target}")
    def assign(kind: Literal["tag", "device"], target: NamePath, body: AssignRequest,
               authorization: Auth = None) -> dict[str, Any]:
        """Assign a policy to a tag (all its devices) or to one device (only that policy then)."""
        return _assign(kind, target, body.policy, authorization)

    @api.delete("/assignments/{kind}/{target}")
    def unassign(kind: Literal["tag", "device"], target: NamePath, authorization: Auth = None) -> dict[str, Any]:
        return _assign(kind, target, None, authorization)

    # -- tokens and audit -------------------------------------------------------------------------

    @api.get("/tokens")
    def list_tokens(authorization: Auth = None) -> dict[str, Any]:
        with _op(authorization, ADMIN) as (s, _who):
            return {"items": [token_json(t) for t in store.list_tokens(s)]}

    @api.post("/tokens")
    def new_token(body: TokenRequest, authorization: Auth = None) -> dict[str, Any]:
        """Make a token; the answer is the only place it is ever shown."""
        with _op(authorization, ADMIN) as (s, op):
            try:
                record, token = create_token(s, body.name, body.role, op.actor, service.clock())
                s.commit()
            except IntegrityError:
                s.rollback()
                raise ServiceError(ServiceCode.CONFLICT, f"a token named {body.name!r} exists") from None
            return {**token_json(record), "token": token}

    @api.delete("/tokens/{name}")
    def revoke_token(name: NamePath, authorization: Auth = None) -> dict[str, Any]:
        with _op(authorization, ADMIN) as (s, op):
            now = service.clock()
            if not store.revoke_token(s, name, now):
                raise ServiceError(ServiceCode.CONFLICT, f"no live token named {name!r}")
            store.audit(s, now, op.actor, "token.revoke", name)
            s.commit()
            return {"name": name, "revoked": True}

    @api.get("/audit")
    def audit_log(authorization: Auth = None, limit: Limit = 100,
                  cursor: str | None = Query(default=None, max_length=400)) -> dict[str, Any]:
        """Every operator action, newest first."""
        with _op(authorization, READ) as (s, _who):
            return audit_listing(s, limit=limit, cursor=cursor)

    @api.get("/status")
    def status_counts(authorization: Auth = None) -> dict[str, Any]:
        """How many devices have each status."""
        with _op(authorization, READ) as (s, _who):
            return fleet_status(s, service.clock())

    return api


__all__ = ["assignment_json", "attestation_detail", "attestation_json", "audit_json", "audit_listing",
           "device_detail", "device_history", "device_json", "device_listing", "device_record", "device_view",
           "fleet_status", "page_json", "paged", "policy_detail", "policy_json", "policy_listing", "router",
           "token_json"]
