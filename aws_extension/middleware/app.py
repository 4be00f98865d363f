"""create_app(services): the FastAPI application of API.md: routers, the key check, error bodies, guards."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from aws_extension import __version__
from aws_extension.middleware.answers import Health
from aws_extension.middleware.audit import AuditTrail
from aws_extension.middleware.auth import Authenticator, authorize, check_permission
from aws_extension.middleware.blobs.base import KeyConflict, ObjectTooLarge, StorageFull
from aws_extension.middleware.blobs.local import LocalBlobStore
from aws_extension.middleware.errors import (
    AccessDenied,
    InvalidRequest,
    MisdirectedRequest,
    NotAuthenticated,
    ServiceError,
    TooLarge,
    TooManyRequests,
    UnknownRecord,
    WorkerResultMissing,
    WrongState,
)
from aws_extension.middleware.guards import RequestBodyGuard, UnexpectedErrors, error_body
from aws_extension.middleware.routes import (
    blobs,
    checkpoints,
    connection,
    datasets,
    endpoints,
    inference,
    training,
    users,
)
from aws_extension.middleware.wiring import Services

# The routers whose every route needs a key and the route's permission (`permissions.ROUTE_PERMISSIONS`).
KEYED_ROUTERS = (connection.router, checkpoints.router, endpoints.router, inference.router, datasets.router,
                 training.router, users.router)

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
    TooLarge: 413,
    MisdirectedRequest: 422,
    TooManyRequests: 429,
    WorkerResultMissing: 502,
    StorageFull: 507,
}


def status_of(error: Exception) -> int:
    return next((ERROR_STATUS[cls] for cls in type(error).__mro__ if cls in ERROR_STATUS), 500)


def _describe(error: dict) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
    return f"{where}: {error.get('msg', 'invalid value')}"


class Readiness:
    """What the stack still waits for before it can take jobs (empty: ready). `sd-aws serve` is ready once it
    answers; `sd-aws up` waits for its tiny model and its endpoint."""

    def __init__(self, waiting_for: list[str] | None = None, backend: str = "local"):
        self.waiting_for = list(waiting_for or [])
        self.backend = backend

    def done(self, what: str) -> None:
        if what in self.waiting_for:
            self.waiting_for.remove(what)

    def health(self) -> Health:
        waiting = list(self.waiting_for)
        return Health(backend=self.backend, ready=not waiting, waiting_for=waiting)


def create_app(services: Services, api_key: str, readiness: Readiness | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        services.start()
        yield
        services.stop()

    app = FastAPI(title="sd-aws middleware", version=__version__, lifespan=lifespan,
                  description="The Stable Diffusion AWS extension API (see API.md).")
    app.state.services = services
    authenticator = app.state.authenticator = Authenticator(api_key, services.users)
    readiness = readiness or Readiness()
    readiness.backend = services.settings.backend

    async def known_error(request: Request, exc: Exception):
        message = getattr(exc, "message", None) or str(exc)
        if isinstance(exc, MisdirectedRequest):
            return error_body(status_of(exc), message,
                              detail=[{"loc": ["body", exc.field], "msg": message, "type": "value_error"}])
        answer = error_body(status_of(exc), message)
        if isinstance(exc, TooManyRequests):
            answer.headers["Retry-After"] = str(exc.retry_after_s)
        return answer

    for error_class in (ServiceError, KeyConflict, ObjectTooLarge, StorageFull):
        app.add_exception_handler(error_class, known_error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        # FastAPI reads and validates the body before the routers' dependency runs: check the key and the
        # route's permission first, so that a request that may not pass learns that, not what is wrong
        # with its body.
        if not request.url.path.startswith("/blobs/"):
            found = await run_in_threadpool(authenticator.authenticate, request.headers)
            route = request.scope.get("route")
            try:
                if isinstance(found, ServiceError):
                    raise found
                if route is not None:
                    check_permission(found, request.method, route.path)
            except ServiceError as refused:
                return error_body(status_of(refused), refused.message)
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

    @app.get("/healthz", tags=["connection"], response_model=Health,
             summary="Liveness (always 200 while the server runs) and readiness (`ready`, `waiting_for`)")
    def healthz():
        return readiness.health()

    @app.get("/readyz", tags=["connection"], response_model=Health,
             summary="200 when the stack can take jobs, else 503 with what it waits for")
    def readyz():
        health = readiness.health()
        return health if health.ready else JSONResponse(health.model_dump(), status_code=503)

    authenticated = [Depends(authorize)]  # the key, then the route's permission (permissions.py)
    if isinstance(services.blobs, LocalBlobStore):  # signed URLs of other stores point at the store itself
        app.include_router(blobs.router)
    for router in KEYED_ROUTERS:
        app.include_router(router, dependencies=authenticated)
    app.add_middleware(AuditTrail, audit=services.audit)
    app.add_middleware(RequestBodyGuard, max_bytes=services.settings.max_body_bytes,
                       authenticate=authenticator.authenticate, status_of=status_of)
    app.add_middleware(UnexpectedErrors)
    return app
