"""The middleware's client (requests only)."""

from aws_extension.client.api import ApiError, MiddlewareClient, default_api_key

__all__ = ["ApiError", "MiddlewareClient", "default_api_key"]
