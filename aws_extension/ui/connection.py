"""Where the tabs get the middleware's URL and API key: the WebUI's settings or the standalone flags."""

from __future__ import annotations

from typing import Protocol
from urllib.parse import urlsplit

from aws_extension.client import ApiError, MiddlewareClient


class ConnectionStore(Protocol):
    def api_url(self) -> str: ...

    def api_key(self) -> str | None: ...

    def save(self, api_url: str, api_key: str | None) -> None:
        """Keep a new URL, and a new key unless `api_key` is None (None keeps the saved one)."""


class MemoryConnectionStore:
    """The standalone app's connection: the flags or environment, changed from Settings for this process."""

    def __init__(self, api_url: str | None, api_key: str | None):
        self._api_url = api_url or ""
        self._api_key = api_key or None

    def api_url(self) -> str:
        return self._api_url

    def api_key(self) -> str | None:
        return self._api_key

    def save(self, api_url: str, api_key: str | None) -> None:
        self._api_url = api_url.strip()
        if api_key is not None:
            self._api_key = api_key.strip() or None


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0")


def normalise_api_url(api_url: str) -> str:
    """The middleware URL with its scheme: "127.0.0.1:8080" → "http://127.0.0.1:8080" (loopback) and
    "api.example.com/prod" → "https://api.example.com/prod"; ApiError (status 0) naming what is wrong."""
    text = (api_url or "").strip().rstrip("/")
    if not text:
        return ""
    if "://" not in text:
        host = urlsplit(f"//{text}").hostname or ""
        text = f"{'http' if host in LOOPBACK_HOSTS else 'https'}://{text}"
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise ApiError(0, f"The API URL {api_url.strip()} is not an http(s) URL: enter it as "
                          "http://host:port or https://host/stage.")
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if not parts.hostname or not port_ok or " " in text:
        raise ApiError(0, f"The API URL {api_url.strip()} has no valid host: enter it as http://host:port or "
                          "https://host/stage.")
    return text


def is_loopback(api_url: str) -> bool:
    """Whether the URL names this machine (the embedded default middleware of `sd-aws up` listens there)."""
    try:
        return urlsplit(normalise_api_url(api_url)).hostname in LOOPBACK_HOSTS
    except ApiError:
        return False


def make_client(store: ConnectionStore) -> MiddlewareClient:
    """A client for the saved connection; ApiError (status 0) when no URL is set or it is not a URL."""
    return MiddlewareClient(normalise_api_url(store.api_url()), store.api_key())


def masked_key(api_key: str | None) -> str:
    """How a saved key is shown: never in clear, only its last characters when it is long enough."""
    if not api_key:
        return "no API key saved"
    return f"API key saved (…{api_key[-4:]})" if len(api_key) >= 16 else "API key saved"


def error_text(exc: Exception) -> str:
    """One sentence a user can act on, for an error raised by a client call."""
    if isinstance(exc, ApiError):
        if exc.status == 401:
            return "The middleware asks for an API key: enter it in Settings and save."
        if exc.status == 403:
            return "The middleware refused the API key: check the key in Settings."
        return exc.message if exc.status in (0, 400, 404, 409, 422) else str(exc)
    return str(exc)
