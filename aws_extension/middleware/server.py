"""`sd-aws serve`: the middleware on uvicorn, with its API key and secrets in the data dir."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from aws_extension.middleware.app import Readiness, create_app
from aws_extension.middleware.wiring import build_services, read_or_create_secret, stack_api_key
from aws_extension.settings import MiddlewareSettings, load

log = logging.getLogger("aws_extension.middleware")


class HeaderDeadline(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request's head: a client that has not sent its
    request line and headers `header_timeout_s` after connecting (or after its previous answer) is
    disconnected, so slow clients cannot hold connections for ever (keep-alive idling has uvicorn's own
    timeout; a request's body is bounded by the body limit)."""

    header_timeout_s = 10.0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        self._arm_header_deadline()  # first: the next pipelined request may start (and disarm it) at once
        super().on_response_complete()

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and not self.cycle.response_complete:  # a request's head has arrived
            self._disarm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._head_too_slow)

    def _disarm_header_deadline(self) -> None:
        deadline = getattr(self, "_header_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._header_deadline = None

    def _head_too_slow(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()


class MiddlewareServer(uvicorn.Server):
    """uvicorn's server that tells compute first when it is asked to exit (SIGTERM/SIGINT): uvicorn then stops
    taking requests at once, the image uploads of a job that is finishing among them, and only later (in the
    lifespan's shutdown) stops compute. Told first, compute claims no more jobs and queues again a job that
    fails in between, instead of ending it `failed`."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]):
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame) -> None:  # type: ignore[override]
        self._on_exit()
        super().handle_exit(sig, frame)


def api_key_for(settings: MiddlewareSettings) -> tuple[str, bool]:
    """The bootstrap administrator's API key (env SD_AWS_API_KEY, else `<data dir>/api_key`, or the stack's
    secret); True when it was just generated. Users' keys are in the store (`services/users.py`)."""
    if settings.api_key:
        return settings.api_key, False
    if settings.backend == "aws":
        return stack_api_key(settings), False
    path = settings.data_dir / "api_key"
    existed = path.exists()
    return read_or_create_secret(path, lambda: secrets.token_urlsafe(32)), not existed


def run_middleware(settings: MiddlewareSettings, announce_key: bool,
                   on_started: Callable[[uvicorn.Server, str], None] | None = None,
                   readiness: Readiness | None = None) -> int:
    """Run the middleware until SIGTERM/SIGINT (or until `server.should_exit`); `on_started(server, api_key)`
    runs in a thread once the app is built (it waits for /healthz itself)."""
    logging.basicConfig(level=os.environ.get("SD_AWS_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    api_key, generated = api_key_for(settings)
    services = build_services(settings)
    app = create_app(services, api_key, readiness)
    url = settings.public_url or f"http://{settings.host}:{settings.port}"
    print(f"sd-aws middleware: {url}  (data: {settings.data_dir})", flush=True)
    if generated and announce_key:
        print(f"API key (shown once; kept in {settings.data_dir / 'api_key'}): {api_key}", flush=True)
        print("It is the bootstrap administrator's key: give each person a key of their own with "
              "`sd-aws user create NAME --role user`.", flush=True)
    elif not settings.api_key and announce_key and settings.backend == "local":
        print(f"API key: in {settings.data_dir / 'api_key'}", flush=True)
    protocol = type("HeaderDeadlineH11", (HeaderDeadline,), {"header_timeout_s": settings.header_timeout_s})
    # Only a backend that dispatches jobs itself (local compute) has to know; SageMaker keeps its own queue.
    begin_stopping = getattr(services.compute, "begin_stopping", lambda: None)
    server = MiddlewareServer(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                                             timeout_graceful_shutdown=10, http=protocol), on_exit=begin_stopping)
    if on_started:
        threading.Thread(target=on_started, args=(server, api_key), name="on-started", daemon=True).start()
    # uvicorn stops cleanly on SIGTERM/SIGINT (open requests finish, then the lifespan shutdown runs) and
    # then raises the signal again for the previous handler: make that one a no-op, so the exit code is 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run()
    print("sd-aws middleware stopped", flush=True)
    return 0


def serve(host: str | None = None, port: int | None = None, data_dir: Path | None = None,
          backend: str | None = None) -> int:
    return run_middleware(load(MiddlewareSettings, host=host, port=port, data_dir=data_dir, backend=backend),
                          announce_key=True)
