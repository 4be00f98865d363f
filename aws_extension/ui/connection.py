"""Where the tabs get the middleware's URL and API key: the WebUI's settings or the standalone flags."""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from aws_extension.client import ApiError, MiddlewareClient
from aws_extension.ui.compat import gr
from aws_extension.vocabulary import Permission, grants


class ConnectionStore(Protocol):
    def api_url(self) -> str: ...

    def api_key(self) -> str | None: ...

    def save(self, api_url: str, api_key: str | None) -> None:
        """Keep a new URL, and a new key unless `api_key` is None (None keeps the saved one)."""

    def for_user(self, username: str | None) -> ConnectionStore:
        """The connection of the WebUI user `username` (a WebUI with --gradio-auth keeps one per user); this
        store itself when every user shares one (no gradio auth, or no user named)."""


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

    def for_user(self, username: str | None) -> ConnectionStore:
        return self  # the standalone app has no gradio auth: one connection


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
        # The middleware's own words where they say more than the Settings sentence: a key revoked, expired or
        # of a deleted user (401), a permission the key's roles lack (403)
        if exc.status == 401:
            return exc.message if exc.message and not exc.message.startswith("Missing API key") else \
                "The middleware asks for an API key: enter it in Settings and save."
        if exc.status == 403:
            return exc.message if "lacks the permission" in (exc.message or "") else \
                "The middleware refused the API key: check the key in Settings."
        return exc.message if exc.status in (0, 400, 404, 409, 422) else str(exc)
    return str(exc)


# -- per WebUI user -------------------------------------------------------------------------------------------
Handler = TypeVar("Handler", bound=Callable[..., Any])


def per_user(method: Handler) -> Handler:
    """A handler of an object with a `store` (a tab) that runs with the connection of the WebUI user who
    clicked: gradio passes its `gr.Request` to the added last parameter `request`, and the method runs on a
    copy of the object whose `store` is `store.for_user(request.username)`, so no client, key or answer is
    shared between two users of one WebUI. Called without a request (tests, other handlers), it runs on the
    object as it is."""
    signature = inspect.signature(method)
    if "request" in signature.parameters:
        raise TypeError(f"{method.__name__} already has a `request` parameter")
    request_parameter = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                          annotation=gr.Request)
    full_signature = signature.replace(parameters=[*signature.parameters.values(), request_parameter])

    def bound_to_user(args: tuple, kwargs: dict) -> inspect.BoundArguments:
        bound = full_signature.bind(*args, **kwargs)
        request = bound.arguments.pop("request", None)
        owner = bound.arguments["self"]
        bound.arguments["self"] = as_user(owner, getattr(request, "username", None))
        return bound

    if inspect.isgeneratorfunction(method):  # gradio streams a generator's values: the wrapper must be one
        @functools.wraps(method)
        def handler(*args: Any, **kwargs: Any) -> Any:
            bound = bound_to_user(args, kwargs)
            return (yield from method(*bound.args, **bound.kwargs))
    else:
        @functools.wraps(method)
        def handler(*args: Any, **kwargs: Any) -> Any:
            bound = bound_to_user(args, kwargs)
            return method(*bound.args, **bound.kwargs)

    handler.__signature__ = full_signature  # what gradio reads to pass the request (and gr.Progress)
    # gradio finds the request by this annotation (typing.get_type_hints): the object itself, not a string
    handler.__annotations__ = {**getattr(method, "__annotations__", {}), "request": gr.Request}
    return handler  # type: ignore[return-value]


def as_user(owner: Any, username: str | None) -> Any:
    """`owner` (an object with a `store`) for WebUI user `username`: a shallow copy with that user's store,
    or `owner` itself when the user shares its store."""
    store = owner.store.for_user(username) if username else owner.store
    if store is owner.store:
        return owner
    view = copy.copy(owner)
    view.store = store
    return view


# -- what the key may do ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Access:
    """Who a key is, from GET /inference/test-connection; `permissions` None: a middleware that does not say
    (older than users and roles), which lets every key do everything."""

    username: str | None
    roles: tuple[str, ...]
    permissions: frozenset[str] | None

    @classmethod
    def of(cls, answer: dict) -> Access:
        if "permissions" not in answer:
            return cls(None, (), None)
        return cls(answer.get("username"), tuple(answer.get("roles") or ()), frozenset(answer["permissions"] or ()))

    def may(self, permission: Permission | str) -> bool:
        return self.permissions is None or grants(self.permissions, str(permission))

    def who(self) -> str:
        """"Connected as alice (roles: user)", or "Connected" for a middleware that does not say."""
        if self.username is None:
            return "Connected"
        roles = ", ".join(self.roles) or "none"
        return f"Connected as {self.username} (roles: {roles})"


def key_access(store: ConnectionStore) -> Access:
    """Who the saved key is; ApiError when the middleware cannot be asked or refuses the key."""
    return Access.of(make_client(store).whoami())


def missing_permission_text(permission: Permission | str) -> str:
    return f"Not shown: your key's roles do not include {permission}."


@dataclass
class Gate:
    """Controls shown only to a key that has `permission`; `note` (a Markdown) says why when they are hidden."""

    permission: Permission
    components: list
    note: Any

    def updates(self, access: Access | None) -> list:
        """gradio updates for the components and the note; `access` None (not known now): everything shown,
        the middleware refuses what the key may not do anyway."""
        allowed = access is None or access.may(self.permission)
        return [*(gr.update(visible=allowed) for _ in self.components),
                gr.update(visible=not allowed, value="" if allowed else missing_permission_text(self.permission))]
