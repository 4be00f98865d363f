"""Errors the services raise, named for what happened; `app.py` maps each to its HTTP status in one table.

The message is one sentence the user can act on; it becomes the `error` of API.md's error body.
"""

from __future__ import annotations


class ServiceError(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidRequest(ServiceError):
    """The request cannot be done as asked: a bad value, a name that does not resolve, a missing file."""


class MisdirectedRequest(ServiceError):
    """A body meant for another route (e.g. a delete body sent to deploy); `field` is the field that says so."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


class UnknownRecord(ServiceError):
    """No record has this id or name."""


class TooLarge(ServiceError):
    """What the request asks for is over a size limit (the message says which)."""


class TooManyRequests(ServiceError):
    """A per-user limit is reached (the message names it and its value); try again after `retry_after_s`
    (the answer's `Retry-After` header)."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class WrongState(ServiceError):
    """The record exists but its status does not allow this (API.md's refused transitions)."""


class WorkerResultMissing(ServiceError):
    """A worker reported success but what it made did not arrive (the job fails with this)."""


class NotAuthenticated(ServiceError):
    """The request carries no credential (API key)."""


class AccessDenied(ServiceError):
    """The request's credential (an API key, a URL's signature) is not valid, or has expired."""

