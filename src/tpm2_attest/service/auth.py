"""Operator authentication: bearer tokens with a role (``read`` or ``admin``), and the
dashboard's login sessions bound to them.

A token is shown once, when it is made; the database keeps its SHA-256 only. Requests to the
operator API carry ``Authorization: Bearer <token>``: none or an unknown/revoked token is 401,
a ``read`` token on a write endpoint 403. Device endpoints need no token: a device proves
itself by its TPM.

The dashboard logs in with a token once (:func:`open_session`) and then carries a random
session secret in a cookie, never the token: the database keeps the secret's SHA-256 and the
token it is bound to; the session ends at logout, after :data:`SESSION_TTL`, or when its token
is revoked.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy.orm import Session

from . import store
from .errors import ServiceCode, ServiceError
from .policies import NAME_PATTERN
from .tables import ADMIN, READ, ROLES, SessionRecord, TokenRecord

TOKEN_PREFIX: Final = "tpa_"
"""Every token starts so (easy to spot in a leaked file, and by secret scanners)."""
MAX_SECRET: Final = 256
"""Longer tokens and session secrets are refused unread (ours are 47 and 43 characters)."""
SESSION_TTL: Final = timedelta(hours=8)
"""How long a dashboard login lasts (whatever the activity: log in again after it)."""
SESSIONS_PER_TOKEN: Final = 32
"""The newest sessions of one token that are kept; logging in again ends the oldest."""


@dataclass(frozen=True)
class Operator:
    """Who made an operator request: the token's name and role."""

    name: str
    role: str

    @property
    def actor(self) -> str:
        """How the audit log names this operator."""
        return f"token:{self.name}"


def new_token() -> str:
    """A fresh token: the prefix and 256 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def valid_name(name: str) -> bool:
    """A token name the operator API can name: letters, digits, ``.``, ``_``, ``-``, at most 64."""
    return re.fullmatch(NAME_PATTERN, name) is not None


def create_token(s: Session, name: str, role: str, actor: str, now: datetime) -> tuple[TokenRecord, str]:
    """Store a new token and audit it (not committed); returns the record and the token, which
    exists nowhere else from here on."""
    if not valid_name(name):
        raise ServiceError(ServiceCode.INVALID_REQUEST, "a token name is letters, digits, '.', '_' and '-', "
                           "at most 64 characters")
    if role not in ROLES:
        raise ServiceError(ServiceCode.INVALID_REQUEST, f"role must be one of {', '.join(ROLES)}")
    token = new_token()
    record = TokenRecord(id=secrets.token_hex(8), name=name, role=role, token_hash=store.token_hash(token),
                         created_at=now, created_by=actor[:128])
    store.add_token(s, record)
    store.audit(s, now, actor, "token.create", name, {"role": role})
    return record, token


def authenticate(s: Session, authorization: str | None, role: str) -> Operator:
    """The operator behind an ``Authorization`` header, allowed ``role``; else ServiceError."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ServiceError(ServiceCode.UNAUTHORIZED, "the operator API needs 'Authorization: Bearer <token>'",
                           headers={"WWW-Authenticate": "Bearer"})
    record = store.token_for(s, token) if len(token) <= MAX_SECRET else None
    if record is None:
        raise ServiceError(ServiceCode.UNAUTHORIZED, "unknown or revoked token",
                           headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    if role == ADMIN and record.role != ADMIN:
        raise ServiceError(ServiceCode.FORBIDDEN, f"token {record.name!r} has role {record.role}; this needs admin")
    return Operator(record.name, record.role)


def open_session(s: Session, token: str, now: datetime) -> tuple[Operator, str]:
    """Log in to the dashboard with a token of any role: returns its operator and a new session
    secret bound to it (for the cookie; the database keeps its SHA-256). Audited, not
    committed; ServiceError UNAUTHORIZED for an unknown or revoked token."""
    token = token.strip()
    record = store.token_for(s, token) if token and len(token) <= MAX_SECRET else None
    if record is None:
        raise ServiceError(ServiceCode.UNAUTHORIZED, "unknown or revoked token")
    secret = secrets.token_urlsafe(32)
    store.add_session(s, SessionRecord(id=store.token_hash(secret), token_id=record.id, created_at=now,
                                       expires_at=now + SESSION_TTL), now, keep=SESSIONS_PER_TOKEN)
    operator = Operator(record.name, record.role)
    store.audit(s, now, operator.actor, "dashboard.login")
    return operator, secret


def session_operator(s: Session, secret: str | None, now: datetime) -> Operator | None:
    """The operator of a live dashboard session (None: no session, expired, or its token revoked)."""
    if not secret or len(secret) > MAX_SECRET:
        return None
    record = store.session_token(s, store.token_hash(secret), now)
    return None if record is None else Operator(record.name, record.role)


def close_session(s: Session, secret: str | None, now: datetime) -> Operator | None:
    """Log out: end the session (audited, not committed); its operator, None if it was not live."""
    operator = session_operator(s, secret, now)
    if secret and len(secret) <= MAX_SECRET:
        store.delete_session(s, store.token_hash(secret))
    if operator is not None:
        store.audit(s, now, operator.actor, "dashboard.logout")
    return operator


__all__ = ["ADMIN", "READ", "SESSION_TTL", "TOKEN_PREFIX", "Operator", "authenticate", "close_session",
           "create_token", "new_token", "open_session", "session_operator", "valid_name"]
