"""create_app(services): the FastAPI application of API.md — routers, auth, error bodies, body limit."""

from __future__ import annotations

import hmac
import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from aws_extension import __version__
from aws_extension.middleware.answers import Health
from aws_extension.middleware.blobs.base import KeyConflict, ObjectTooLarge, StorageFull
from aws_extension.middleware.errors import (
    AccessDenied,
    InvalidRequest,
    MisdirectedRequest,
    NotAuthenticated,
    ServiceError,
    UnknownRecord,
    WorkerResultMissing,
    WrongState,
)
from aws_extension.middleware.routes import blobs, checkpoints, connection, datasets, endpoints, inference
from aws_extension.middleware.wiring import Services

log = logging.getLogger(__name__)

# The HTTP status of each error the services and the stores raise for a reason the user can act on (the
# first class in an error's MRO that is listed here); anything else is a 500.
ERROR_STATUS: dict[type[Exception], int] = {
    InvalidRequest: 400,
    NotAuthenticated: 401,
    AccessDenied: 403,
    UnknownRecord: 404,
    WrongState: 409,
    KeyConflict: 409,
    ObjectTooLarge: 413,
    MisdirectedRequest: 422,
    WorkerResultMissing: 502,
    StorageFull: 507,
}


def status_of(error: Exception) -> int:
    return next((ERROR_STATUS[cls] for cls in type(error).__mro__ if cls in ERROR_STATUS), 500)


def error_body(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse({"statusCode": status, "error": message, **extra}, status_code=status)


async def require_api_key(request: Request) -> None:
    """Every route but /healthz and the signed blob URLs: `x-api-key` or `Authorization: Bearer`."""
    key = request.headers.get("x-api-key")
    if key is None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else None
    if not key:
        raise NotAuthenticated("Missing API key: send it in the x-api-key header (or Authorization: Bearer <key>).")
    expected = request.app.state.api_key
    if not hmac.compare_digest(key.encode(), expected.encode()):
        raise AccessDenied("The API key is not valid.")


def _describe(error: dict) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
    return f"{where}: {error.get('msg', 'invalid value')}"


class BodySizeLimit:
    """Answers 413 for a request body over the limit (declared or streamed); blob uploads are exempt."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith("/blobs/"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        too_large = f"The request body is over {self.max_bytes} bytes; send large inputs through a signed upload URL."
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            return await error_body(413, too_large)(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # An HTTPException, because FastAPI turns any other error while reading a body into a 400.
                raise StarletteHTTPException(413, detail=too_large)
            return message

        return await self.app(scope, limited_receive, send)


def create_app(services: Services, api_key: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        services.start()
        yield
        services.stop()

    app = FastAPI(title="sd-aws middleware", version=__version__, lifespan=lifespan,
                  description="The Stable Diffusion AWS extension API (see API.md).")
    app.state.services = services
    app.state.api_key = api_key

    async def known_error(request: Request, exc: Exception):
        message = getattr(exc, "message", None) or str(exc)
        if isinstance(exc, MisdirectedRequest):
            return error_body(status_of(exc), message,
                              detail=[{"loc": ["body", exc.field], "msg": message, "type": "value_error"}])
        return error_body(status_of(exc), message)

    for error_class in (ServiceError, KeyConflict, ObjectTooLarge, StorageFull):
        app.add_exception_handler(error_class, known_error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        # FastAPI reads and validates the body before the routers' key check runs: check the key first, so
        # that a request without a valid key learns that, not what is wrong with its body.
        if not request.url.path.startswith("/blobs/"):
            try:
                await require_api_key(request)
            except ServiceError as auth_error:
                return error_body(status_of(auth_error), auth_error.message)
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_body(400, f"The request body is not valid JSON ({errors[0].get('ctx', {}).get('error', 'parse error')}).")
        return error_body(422, "Invalid request: " + "; ".join(_describe(e) for e in errors[:3]) + ".",
                          detail=jsonable_encoder(errors))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = {404: f"There is no route {request.method} {request.url.path}.",
                   405: f"{request.method} is not allowed on {request.url.path}."}.get(exc.status_code, str(exc.detail))
        return error_body(exc.status_code, message)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_body(500, "Internal server error; the server log has the details.")

    @app.get("/healthz", tags=["connection"], response_model=Health)
    def healthz():
        return Health()

    authenticated = [Depends(require_api_key)]
    app.include_router(blobs.router)
    app.include_router(connection.router, dependencies=authenticated)
    app.include_router(checkpoints.router, dependencies=authenticated)
    app.include_router(endpoints.router, dependencies=authenticated)
    app.include_router(inference.router, dependencies=authenticated)
    app.include_router(datasets.router, dependencies=authenticated)
    app.add_middleware(BodySizeLimit, max_bytes=services.settings.max_body_bytes)
    return app
