"""Who a request is: its API key (`x-api-key: <key>` or `Authorization: Bearer <key>`) on every route but
/healthz, /readyz, the docs and the signed blob URLs (their signature is the credential).

`Authenticator.authenticate(headers)` is the one check, used by the routers' dependency (`authorize`),
the validation-error handler and `guards.RequestBodyGuard` (both answer before the routers run). The
bootstrap key (the middleware's own, compared in constant time) is `BOOTSTRAP_ADMIN`'s; a user's key
(`sdk_...`) is checked by `UserService.principal_for_key`. Missing key: 401; a key that is not one of
ours: 403; a user's key revoked, expired or of a deleted user: 401 (get a new one).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from fastapi import Request

from aws_extension.middleware.errors import AccessDenied, NotAuthenticated, ServiceError
from aws_extension.middleware.permissions import RouteNotListed, permission_for
from aws_extension.middleware.principals import BOOTSTRAP_ADMIN, Principal
from aws_extension.middleware.services.users import UserService, is_user_key


def presented_key(headers: Mapping[str, str]) -> str | None:
    key = headers.get("x-api-key")
    if key is None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else None
    return key or None


class Authenticator:
    def __init__(self, bootstrap_key: str, users: UserService):
        self._bootstrap_key = bootstrap_key.encode()
        self.users = users

    def authenticate(self, headers: Mapping[str, str]) -> Principal | ServiceError:
        """The principal of the request's key, or the error that refuses it. Reads the store (a user's key):
        call it off the event loop."""
        key = presented_key(headers)
        if not key:
            return NotAuthenticated("Missing API key: send it in the x-api-key header (or Authorization: Bearer <key>).")
        if hmac.compare_digest(key.encode(), self._bootstrap_key):
            return BOOTSTRAP_ADMIN
        if not is_user_key(key):
            return AccessDenied("The API key is not valid.")
        try:
            return self.users.principal_for_key(key)
        except ServiceError as refused:
            return refused


def authorize(request: Request) -> None:
    """The routers' dependency (sync: FastAPI runs it in a thread, since it reads the store): the key's
    principal on `request.state.principal` (and, for the audit trail, the route's template and path
    parameters on `request.state.route_path` and `.path_params`), then the route's permission (`permissions.ROUTE_PERMISSIONS`)."""
    found = request.app.state.authenticator.authenticate(request.headers)
    if isinstance(found, ServiceError):
        raise found
    route_path = request.scope["route"].path
    request.state.principal, request.state.route_path = found, route_path
    request.state.path_params = dict(request.path_params)
    check_permission(found, request.method, route_path)


def check_permission(principal: Principal, method: str, route_path: str) -> None:
    """AccessDenied (403, naming the permission and the key's user) unless `principal` may call the route."""
    try:
        needed = permission_for(method, route_path)
    except RouteNotListed:
        raise AccessDenied(f"{method} {route_path} has no permission defined, so no key may call it.") from None
    if needed is not None and not principal.may(needed):
        raise AccessDenied(f"The key of {principal.username} lacks the permission {needed} "
                           f"(needed for {method} {route_path}); ask an administrator for a role with it.")
