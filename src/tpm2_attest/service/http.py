"""Hardening of the HTTP layer: JSON that cannot hurt, request ids and timing, slow clients.

* :class:`JsonRoute` parses request bodies itself: invalid UTF-8, nesting deeper than Python's
  parser goes, integers longer than Python converts, non-finite numbers, lone UTF-16
  surrogates and a key given twice in one object are ``422 INVALID_REQUEST`` like any other
  bad body, never a 500 (nor a silent choice between the two values).
* :class:`FastLane` (ASGI middleware) answers the two requests every device makes with the
  same parsing, validation, handlers and errors as their FastAPI routes, without FastAPI's
  per-request machinery (it was half the server's CPU per attestation).
* :class:`Observe` (ASGI middleware) gives each request its id (log lines, ``X-Request-ID``),
  counts it in the metrics, writes one access-log line (method, route, status, milliseconds;
  never a body), and bounds the time the request's body may take (``body_timeout``: 408).
* :func:`protocol` returns uvicorn HTTP protocols that close a connection whose request
  headers do not arrive within ``header_timeout`` (slow clients holding connections open),
  and answer ``503`` (JSON) to connections beyond ``max_connections``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Final

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from .errors import ServiceCode, ServiceError
from .logs import new_request_id, request_id

log = logging.getLogger("tpm2_attest.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LIMITS_KEY: Final = "tpm2_attest_limits"
"""The lifespan-state key the guarded protocols read (header_timeout, max_connections)."""
_SURROGATE: Final = re.compile(r"\\u[dD][89a-fA-F]")
MAX_INT_DIGITS: Final = 100


class BadJson(ValueError):
    """A request body that is not acceptable JSON."""


class BodyTimeout(Exception):
    """The request body did not arrive in time."""


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise BadJson(f"an integer of more than {MAX_INT_DIGITS} digits")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadJson("a number too large for a double")
    return value


def _constant(name: str) -> Any:
    raise BadJson(f"{name} is not JSON")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys all differ: parsers keep one of two equal keys (Python the
    last, others the first), so a rule written twice would vanish without a word, and a body
    could mean one thing to a proxy and another here."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                shown = repr(key) if len(key) <= 64 else "a key"
                raise BadJson(f"{shown} is given twice in one object")
            seen.add(key)
    return out


def _no_surrogates(value: Any, depth: int = 0) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadJson("a string holds a lone UTF-16 surrogate") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _no_surrogates(k, depth + 1)
            _no_surrogates(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _no_surrogates(v, depth + 1)


def parse_json(body: bytes) -> Any:
    """Parse a request body strictly (UTF-8, finite numbers, bounded integers, no key twice in
    an object); BadJson if not."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadJson(f"the body is not UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant,
                           object_pairs_hook=_object)
    except BadJson:
        raise
    except RecursionError:
        raise BadJson("the body nests too deeply") from None
    except json.JSONDecodeError as exc:
        raise BadJson(f"not JSON: {exc.msg} at position {exc.pos}") from None
    except ValueError as exc:
        raise BadJson(f"not JSON: {exc}") from None
    if _SURROGATE.search(text):
        _no_surrogates(value)
    return value


class JsonRoute(APIRoute):
    """An APIRoute whose JSON bodies go through :func:`parse_json`."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            if request.method in ("POST", "PUT", "PATCH"):
                body = await request.body()
                if body:
                    try:
                        request._json = parse_json(body)
                    except BadJson as exc:
                        raise RequestValidationError([{"loc": ("body",), "msg": str(exc),
                                                       "type": "json_invalid"}]) from None
            response: Response = await handler(request)
            return response

        return route


class Observe:
    """Request id, metrics, access log and the body timeout, for every HTTP request."""

    def __init__(self, app: ASGIApp, *, body_timeout: float,
                 count: Callable[[str, str, int], None] | None = None) -> None:
        self.app = app
        self.body_timeout = body_timeout
        self.count = count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope.get("headers", ()) if k == b"x-request-id"), b"")
        rid = new_request_id(header.decode("latin-1") if header else None)
        token = request_id.set(rid)
        status = 500
        started = time.perf_counter()
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout(self.body_timeout):  # a timer, not a task per message
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout() from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode("ascii"))]
            await send(message)

        try:
            await self.app(scope, timed_receive, observed_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            if self.count is not None:
                self.count(template, method, status)
            log.info("%s %s %d %.1fms", method, template, status, (time.perf_counter() - started) * 1000)
            request_id.reset(token)


# -- the device lane -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lane:
    """One device endpoint: its request model and the blocking handler that answers it.
    ``inline``: which requests are short enough to answer on the event loop itself (no thread
    handoff); None: every request goes to the thread pool."""

    model: type[BaseModel]
    handler: Callable[[Any], bytes]
    inline: Callable[[Any], bool] | None = None


@dataclass(frozen=True)
class _Route:
    path: str


class FastLane:
    """ASGI middleware answering ``POST`` to the paths in ``lanes`` itself: body read within
    ``max_body`` (413), parsed by :func:`parse_json`, validated by the lane's model (422 naming
    the field), handled by ``run`` (in the thread pool), errors mapped by ``refusal``. What FastAPI would do
    for these routes, without its per-request machinery; anything else goes on to ``app``,
    except a request of any path whose Content-Length is over ``max_body`` (a JSON 413 here)."""

    def __init__(self, app: ASGIApp, *, lanes: dict[str, Lane], max_body: int,
                 refusal: Callable[[BaseException], Any],
                 run: Callable[[Callable[[Any], bytes], Any], Awaitable[bytes]]) -> None:
        self.app = app
        self.lanes = lanes
        self.max_body = max_body
        self.refusal = refusal
        self.run = run
        self.routes = {path: _Route(path) for path in lanes}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = self.lanes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if lane is not None and scope.get("method") == "POST":
            scope["route"] = self.routes[scope["path"]]
        else:
            lane = None
        if scope["type"] == "http" and _declared_length(scope) > self.max_body:
            # Any path: FastAPI's own limiter would replace whatever is answered (a 401, a
            # 404...) with a plain-text 413. Refused before the body is read, the connection
            # closed (the body may still be on its way).
            err = self.refusal(StarletteHTTPException(413))
            err.headers["Connection"] = "close"
            await self._answer(send, err)
            return
        if lane is None:
            await self.app(scope, receive, send)
            return
        try:
            body = await self._body(scope, receive)
            try:
                request = lane.model.model_validate(parse_json(body) if body else None)
            except BadJson as exc:
                raise RequestValidationError([{"loc": ("body",), "msg": str(exc), "type": "json_invalid"}]) from None
            except ValidationError as exc:
                raise RequestValidationError([{**e, "loc": ("body", *e.get("loc", ()))}
                                              for e in exc.errors(include_input=False)]) from None
            if lane.inline is not None and lane.inline(request):
                payload = lane.handler(request)
            else:
                payload = await self.run(lane.handler, request)
            status, headers = 200, [(b"content-type", b"application/json")]
        except ClientDisconnect:
            return  # nobody to answer
        except Exception as exc:
            await self._answer(send, self.refusal(exc))
            return
        headers.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    @staticmethod
    async def _answer(send: Send, err: Any) -> None:
        """Send the JSON error of a ServiceError."""
        payload = json.dumps(err.to_dict()).encode()
        headers = [(b"content-type", b"application/json"),
                   *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in err.headers.items()),
                   (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": err.status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        kind = next((v for k, v in scope.get("headers", ()) if k == b"content-type"), None)
        if kind is not None:
            media = kind.split(b";", 1)[0].strip().lower()
            if not (media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))):
                raise RequestValidationError([{"loc": ("body",), "msg": "the body must be application/json",
                                               "type": "content_type"}])
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise StarletteHTTPException(413)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _declared_length(scope: Scope) -> int:
    """The request's Content-Length (-1 when absent or not a number)."""
    value = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
    return int(value) if value is not None and value.isdigit() and len(value) <= 18 else -1


# -- connection guards (uvicorn protocols) --------------------------------------------------------


def _busy_response() -> bytes:
    payload = json.dumps(ServiceError(ServiceCode.SERVER_BUSY,
                                      "too many open connections; retry later").to_dict()).encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"retry-after: 1\r\ncontent-length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)


class _Coalesced:
    """A transport whose writes within one event-loop step leave as one ``write``: uvicorn
    writes a response's status line and headers, then its body, as two sends (two syscalls,
    two TCP segments); a small JSON answer costs one of each this way."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()  # what was written goes before the FIN, as with the plain transport
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, pause_reading, abort...
        return getattr(self._transport, name)


class _Guard:
    """Mixin over a uvicorn HTTP protocol: header timeout, connection cap, coalesced writes."""

    _header_timer: asyncio.TimerHandle | None = None

    def _limits(self) -> tuple[float, int]:
        limits = getattr(self, "app_state", {}).get(LIMITS_KEY)
        return limits if limits else (10.0, 1024)

    def connection_made(self, transport: asyncio.Transport) -> None:
        transport = _Coalesced(transport, self.loop)  # type: ignore[attr-defined, assignment]
        super().connection_made(transport)  # type: ignore[misc]
        timeout, cap = self._limits()
        if len(self.connections) > cap:  # type: ignore[attr-defined]
            transport.write(_busy_response())
            transport.close()
            return
        self._arm(timeout)

    def _arm(self, timeout: float) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(timeout, self._headers_late)  # type: ignore[attr-defined]

    def _in_request(self) -> bool:
        cycle = getattr(self, "cycle", None)
        return cycle is not None and not cycle.response_complete

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self._in_request():
            transport = self.transport  # type: ignore[attr-defined]
            if not transport.is_closing():
                transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self._in_request():
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
        else:  # between requests, a new one has begun to arrive
            self._arm(self._limits()[0])

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)  # type: ignore[misc]


def protocol() -> str:
    """The import string of the guarded uvicorn protocol: httptools when installed, else h11."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "tpm2_attest.service.http:GuardedH11Protocol"
    return "tpm2_attest.service.http:GuardedHttpToolsProtocol"


@functools.cache
def _guarded(name: str) -> type:
    if name == "GuardedH11Protocol":
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return type(name, (_Guard, H11Protocol), {"__module__": __name__})
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    return type(name, (_Guard, HttpToolsProtocol), {"__module__": __name__})


def __getattr__(name: str) -> Any:
    """The protocol classes are built on first use (uvicorn imports them by name; httptools
    is optional)."""
    if name in ("GuardedH11Protocol", "GuardedHttpToolsProtocol"):
        return _guarded(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LIMITS_KEY", "BadJson", "BodyTimeout", "FastLane", "JsonRoute", "Lane", "Observe", "parse_json",
           "protocol"]
