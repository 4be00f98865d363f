"""`sd-aws serve`: the middleware on uvicorn, with its API key and secrets in the data dir."""

from __future__ import annotations

import logging
import os
import secrets
import signal
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


def serve(host: str | None = None, port: int | None = None, data_dir: Path | None = None) -> int:
    logging.basicConfig(level=os.environ.get("SD_AWS_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load(MiddlewareSettings, host=host, port=port, data_dir=data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    api_key, generated = api_key_for(settings)
    services = build_services(settings)
    app = create_app(services, api_key)
    url = settings.public_url or f"http://{settings.host}:{settings.port}"
    print(f"sd-aws middleware: {url}  (data: {settings.data_dir})", flush=True)
    if generated:
        print(f"API key (shown once; kept in {settings.data_dir / 'api_key'}): {api_key}", flush=True)
    elif not settings.api_key:
        print(f"API key: in {settings.data_dir / 'api_key'}", flush=True)
    # uvicorn stops cleanly on SIGTERM/SIGINT (open requests finish, then the lifespan shutdown runs) and
    # then raises the signal again for the previous handler: make that one a no-op, so the exit code is 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", timeout_graceful_shutdown=10)
    print("sd-aws middleware stopped", flush=True)
    return 0
