"""Where the tabs get the middleware's URL and API key: the WebUI's settings or the standalone flags."""

from __future__ import annotations

from typing import Protocol

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


def make_client(store: ConnectionStore) -> MiddlewareClient:
    """A client for the saved connection; ApiError (status 0) when no URL is set."""
    return MiddlewareClient(store.api_url().strip(), store.api_key())


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
