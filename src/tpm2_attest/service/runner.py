"""The application factory of ``serve --workers N``: each worker process builds its application
from the settings the parent resolved (passed in the environment, flags and file included)."""

from __future__ import annotations

import os
from typing import Final

from fastapi import FastAPI

SETTINGS_ENV: Final = "TPM2_ATTEST_SERVE_SETTINGS"
"""The resolved settings as JSON, set by ``serve`` for its workers (not for operators)."""


def app_from_environment() -> FastAPI:
    """uvicorn's factory in a worker: settings from ``$TPM2_ATTEST_SERVE_SETTINGS``."""
    import json

    from .app import create_app
    from .logs import configure
    from .settings import Settings

    settings = Settings(**json.loads(os.environ[SETTINGS_ENV]))
    configure(settings.log_format, settings.log_level)
    return create_app(settings)


__all__ = ["SETTINGS_ENV", "app_from_environment"]
