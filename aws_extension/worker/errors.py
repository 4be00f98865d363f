"""What the worker answers for each exception, in one table: `/invocations` and `/sdapi/v1/*` both use it.

`/sdapi/v1/*` answers in A1111's error shape (`{"error", "detail", "body", "errors"}`), `/invocations` with a
`wire.InvocationAnswer`; the status and the sentence are the same for both.
"""

from __future__ import annotations

import logging

from aws_extension.engine.base import EngineError, Interrupted
from aws_extension.wire import WireError
from aws_extension.worker.model_cache import ModelFetchError
from aws_extension.worker.webui_engine import WebUIError

log = logging.getLogger(__name__)

INTERRUPTED_MESSAGE = "The job was interrupted."


class InvocationError(Exception):
    """An invocation that cannot run as asked (400) or a transfer it names that failed (`status`)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class EngineNotReady(Exception):
    """The engine is still starting (or failed to start); the message says which."""


# (exception class, HTTP status); the first match wins. InvocationError and ModelFetchError carry their own.
STATUSES: tuple[tuple[type[Exception], int], ...] = (
    (WireError, 400),  # the request has not the shape of wire.InvocationRequest
    (EngineError, 400),  # the engine refuses the job (a bad parameter, a model it cannot use)
    (Interrupted, 409),
    (EngineNotReady, 503),
    (WebUIError, 502),  # the WebUI the job was forwarded to failed
)


def http_status(exc: Exception) -> int:
    """The status the worker answers for `exc`: its own, the table's, or 500 (a bug)."""
    if isinstance(exc, (InvocationError, ModelFetchError)):
        return exc.status
    return next((status for cls, status in STATUSES if isinstance(exc, cls)), 500)


def error_message(exc: Exception) -> str:
    """The one sentence of the answer; an unexpected exception (a 500) is logged with its trace here."""
    if isinstance(exc, Interrupted):
        return INTERRUPTED_MESSAGE
    if http_status(exc) == 500:
        log.error("Job failed", exc_info=exc)
        return f"Internal error: {type(exc).__name__}: {exc}"
    return str(exc)
