"""ASGI middlewares that keep bad requests and unexpected errors from reaching (or leaving) the app badly.

`RequestBodyGuard` reads every JSON body before the app does: over the limit → 413 (declared or streamed);
not UTF-8, `NaN`/`Infinity` (not JSON) or a number too large for a double, or a string with a lone UTF-16 surrogate (it cannot be encoded in
any answer, so one stored would break every list that shows it) → 400. The key is checked first
(`auth.Authenticator.authenticate`), so a request without a valid key learns that, whatever its body.
Blob URLs are exempt (they take files).

`UnexpectedErrors` answers an error the app did not handle with API.md's 500 body and keeps the
connection open (Starlette's own handler re-raises, and the server then drops the keep-alive connection).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from aws_extension.middleware.errors import ServiceError

log = logging.getLogger(__name__)


def error_body(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"statusCode": status, "error": message, **extra}, status_code=status)


class _NotJson(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotJson(f"{name}, which is not JSON (send a number or null)")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _NotJson(f"the number {text[:40]}, which is too large for a double (send a smaller number)")
    return value


def _lone_surrogate_at(value: Any, path: str = "body") -> str | None:
    """Where in a decoded JSON value a string holds a lone surrogate, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((f"[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for key, item in items:
        if _lone_surrogate_at(key) is not None:
            return f"{path} (a key)"
        found = _lone_surrogate_at(item, f"{path}.{key}" if isinstance(value, dict) else f"{path}{key}")
        if found:
            return found
    return None


def body_problem(body: bytes) -> str | None:
    """Why a JSON body is refused at the door, or None (malformed JSON is left to FastAPI's own 400)."""
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite)
    except UnicodeDecodeError:
        return "The request body is not UTF-8 text."
    except _NotJson as exc:
        return f"The request body has {exc}."
    except ValueError:
        return None
    where = _lone_surrogate_at(value)
    if where:
        return f"The request body has a lone UTF-16 surrogate (half of a character) in {where}; send valid Unicode text."
    return None


class RequestBodyGuard:
    def __init__(self, app, max_bytes: int, authenticate: Callable[[Headers], Any],
                 status_of: Callable[[Exception], int]):
        self.app = app
        self.max_bytes = max_bytes
        self.authenticate = authenticate  # the key's Principal, or the ServiceError refusing it
        self.status_of = status_of

    async def _refusal(self, headers: Headers, status: int, message: str) -> JSONResponse:
        found = await run_in_threadpool(self.authenticate, headers)  # it may read the store
        if isinstance(found, ServiceError):
            return error_body(self.status_of(found), found.message)
        return error_body(status, message)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith("/blobs/"):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        too_large = (f"The request body is over {self.max_bytes} bytes; send large inputs through a signed upload URL "
                     "(an inference job: create it with \"run\": false, PUT its parameters to the "
                     "api_params_upload_url it answers, then PUT /inference/v2/{id}/run).")
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await (await self._refusal(headers, 413, too_large))(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await (await self._refusal(headers, 413, too_large))(scope, receive, send)
        problem = body_problem(body) if body.strip() else None
        if problem:
            return await (await self._refusal(headers, 400, problem))(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


class UnexpectedErrors:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            if started:  # the answer is half sent: only dropping the connection tells the client
                raise
            await error_body(500, "Internal server error; the server log has the details.")(scope, receive, send)
