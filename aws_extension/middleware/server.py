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

from aws_extension.middleware.app import create_app
from aws_extension.middleware.wiring import build_services, read_or_create_secret
from aws_extension.settings import MiddlewareSettings, load

log = logging.getLogger("aws_extension.middleware")


def api_key_for(settings: MiddlewareSettings) -> tuple[str, bool]:
    """The API key (env SD_AWS_API_KEY, else `<data dir>/api_key`); True when it was just generated."""
    if settings.api_key:
        return settings.api_key, False
    path = settings.data_dir / "api_key"
    existed = path.exists()
    return read_or_create_secret(path, lambda: secrets.token_urlsafe(32)), not existed


def run_middleware(settings: MiddlewareSettings, announce_key: bool,
                   on_started: Callable[[uvicorn.Server, str], None] | None = None) -> int:
    """Run the middleware until SIGTERM/SIGINT (or until `server.should_exit`); `on_started(server, api_key)`
    runs in a thread once the app is built (it waits for /healthz itself)."""
    logging.basicConfig(level=os.environ.get("SD_AWS_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    api_key, generated = api_key_for(settings)
    app = create_app(build_services(settings), api_key)
    url = settings.public_url or f"http://{settings.host}:{settings.port}"
    print(f"sd-aws middleware: {url}  (data: {settings.data_dir})", flush=True)
    if generated and announce_key:
        print(f"API key (shown once; kept in {settings.data_dir / 'api_key'}): {api_key}", flush=True)
    elif not settings.api_key and announce_key:
        print(f"API key: in {settings.data_dir / 'api_key'}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                                           timeout_graceful_shutdown=10))
    if on_started:
        threading.Thread(target=on_started, args=(server, api_key), name="on-started", daemon=True).start()
    # uvicorn stops cleanly on SIGTERM/SIGINT (open requests finish, then the lifespan shutdown runs) and
    # then raises the signal again for the previous handler: make that one a no-op, so the exit code is 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run()
    print("sd-aws middleware stopped", flush=True)
    return 0


def serve(host: str | None = None, port: int | None = None, data_dir: Path | None = None) -> int:
    return run_middleware(load(MiddlewareSettings, host=host, port=port, data_dir=data_dir), announce_key=True)
