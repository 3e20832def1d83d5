"""Enrollment + attestation over HTTP: the server (``create_app``) and the device client.

The client (:func:`enroll`, :func:`attest`) and the error types need only the standard library
(the client is imported on first use too, so that the CLI does not load urllib/http.client).
The server needs the ``service`` extra (FastAPI, uvicorn, SQLAlchemy, Alembic, pydantic-settings,
prometheus-client: ``pip install 'tpm2-attest[service]'``); ``create_app``, ``Settings`` and
``Store`` are imported on first use so that a device without the extra can still enroll and attest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ServiceCode, ServiceError

if TYPE_CHECKING:
    from .app import create_app
    from .client import Enrollment, ServiceClient, attest, enroll
    from .hooks import StatusChange, StatusHooks
    from .settings import Settings, SettingsError
    from .store import Store

__all__ = [
    "Enrollment",
    "ServiceClient",
    "ServiceCode",
    "ServiceError",
    "Settings",
    "SettingsError",
    "StatusChange",
    "StatusHooks",
    "Store",
    "attest",
    "create_app",
    "enroll",
]


def __getattr__(name: str) -> Any:
    if name in ("Enrollment", "ServiceClient", "attest", "enroll"):  # urllib/http.client: ~10 ms
        from . import client

        return getattr(client, name)
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "Store":
        from .store import Store

        return Store
    if name in ("Settings", "SettingsError"):
        from . import settings

        return getattr(settings, name)
    if name in ("StatusChange", "StatusHooks"):
        from . import hooks

        return getattr(hooks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
