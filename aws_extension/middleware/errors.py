"""Errors the services raise; the app turns each into API.md's error body with its status code."""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(ServiceError):
    status_code = 400


class Unauthorized(ServiceError):
    status_code = 401


class Forbidden(ServiceError):
    status_code = 403


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class Unprocessable(ServiceError):
    """A request whose shape is wrong for the route (422), e.g. a body meant for another route. `field` is the
    body field at fault, for the error's `detail` (as request-validation errors have)."""

    status_code = 422

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field
