"""The service's log lines: text or JSON, each carrying the id of the request it belongs to.

``configure`` is what ``serve`` calls. The request id comes from the ``X-Request-ID`` header
when it is a sane token (so a proxy's id carries through), else is made here; it is echoed in
the response. What the service logs never includes a nonce, a credential secret, a token, a
request body or a full enrollment/challenge id (those are bearer capabilities: a prefix only).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import secrets
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Final, Literal

request_id: ContextVar[str] = ContextVar("tpm2_attest_request_id", default="-")
"""The id of the request being served in this context ("-" outside of one)."""

_SANE_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")
LOGGERS: Final = ("tpm2_attest", "uvicorn", "uvicorn.error")


def new_request_id(header: str | None) -> str:
    """The request's id: the caller's ``X-Request-ID`` when sane, else a fresh one: 16 hex
    digits, a random prefix per process then a counter (unique, and no system call per
    request: an id names a request, it guards nothing)."""
    if header and _SANE_ID.fullmatch(header):
        return header
    return f"{_ids[0]}{next(_ids[1]) & 0xFFFFFFFF:08x}"


def _new_id_source() -> None:
    _ids[:] = [secrets.token_hex(4), itertools.count()]


_ids: list[Any] = []
_new_id_source()
if hasattr(os, "register_at_fork"):  # not on Windows, where workers are spawned, not forked
    os.register_at_fork(after_in_child=_new_id_source)  # a forked worker gets a prefix of its own


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request_id, message (and the exception)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
               "level": record.levelname.lower(), "logger": record.name,
               "request_id": getattr(record, "request_id", "-"), "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def configure(fmt: Literal["text", "json"] = "text", level: str = "info",
              stream: object = None) -> logging.Handler:
    """Send the service's and uvicorn's log lines to ``stream`` (stderr) in ``fmt``; returns
    the handler (tests remove it again)."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "_tpm2_attest", False)]:
            logger.removeHandler(old)
        handler._tpm2_attest = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.setLevel(level.upper())
        logger.propagate = False
    return handler


def unconfigure(handler: logging.Handler) -> None:
    """Undo :func:`configure` (tests, and programs that configure logging their own way)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


__all__ = ["JsonFormatter", "RequestIdFilter", "configure", "new_request_id", "request_id", "unconfigure"]
