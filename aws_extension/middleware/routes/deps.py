"""What every router needs from the app: the services, and query lists in the seed's two spellings."""

from __future__ import annotations

from fastapi import Request

from aws_extension.middleware.wiring import Services


def get_services(request: Request) -> Services:
    return request.app.state.services


def query_list(request: Request, name: str) -> list[str]:
    """`?types=a&types=b` and `?types=a,b` alike."""
    return [v.strip() for raw in request.query_params.getlist(name) for v in raw.split(",") if v.strip()]
