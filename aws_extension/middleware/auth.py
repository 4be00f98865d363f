"""The API key: `x-api-key: <key>` or `Authorization: Bearer <key>` on every route but /healthz, the docs
and the signed blob URLs (their signature is the credential). Compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from fastapi import Request

from aws_extension.middleware.errors import AccessDenied, NotAuthenticated, ServiceError
from aws_extension.middleware.principals import BOOTSTRAP_ADMIN


def presented_key(headers: Mapping[str, str]) -> str | None:
    key = headers.get("x-api-key")
    if key is None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else None
    return key or None


def key_problem(headers: Mapping[str, str], expected: str) -> ServiceError | None:
    """Why a request with these headers may not pass, or None."""
    key = presented_key(headers)
    if not key:
        return NotAuthenticated("Missing API key: send it in the x-api-key header (or Authorization: Bearer <key>).")
    if not hmac.compare_digest(key.encode(), expected.encode()):
        return AccessDenied("The API key is not valid.")
    return None


async def require_api_key(request: Request) -> None:
    """The routers' dependency: the key is checked and its principal put on `request.state.principal`."""
    problem = key_problem(request.headers, request.app.state.api_key)
    if problem:
        raise problem
    request.state.principal = BOOTSTRAP_ADMIN
