"""What every router needs from the app: the services, and query lists in the seed's two spellings."""

from __future__ import annotations

import functools

from fastapi import Request

from aws_extension.middleware.services.ownership import OwnerLabel
from aws_extension.middleware.wiring import Services


def get_services(request: Request) -> Services:
    return request.app.state.services


def owner_labels(services: Services) -> OwnerLabel:
    """How this request's answers name owners ("deleted user NAME" for a deleted one), each owner read once."""
    return functools.cache(services.users.owner_label)


def query_list(request: Request, name: str) -> list[str]:
    """`?types=a&types=b` and `?types=a,b` alike."""
    return [v.strip() for raw in request.query_params.getlist(name) for v in raw.split(",") if v.strip()]
