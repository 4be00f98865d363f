"""Who owns a record and who may see it: the rules every service applies to the `Principal` of a request.

- Jobs, trainings, training bases and datasets are their owner's: a principal that does not see everyone
  (`Principal.sees_everyone`: administrators) lists only its own and gets another owner's id answered as
  unknown (404, the answer of an id that does not exist, so ids cannot be probed). Administrators see
  every owner's and may filter lists with `?owner=`.
- Checkpoints are everyone's, unless their `allowed_roles` limit them; endpoints likewise with their
  `assign_to_roles`. A principal outside those roles does not see them listed, and a job naming them is
  refused as if they did not exist.
- Records written before owners existed have no `owner`: they are the bootstrap administrator's
  (`owner_name`). The SQLite store's migration writes that owner into them; on DynamoDB they keep none,
  so `?owner=admin` does not list them there.
- A deleted user's records stay, answered as owned by "deleted user NAME" (`UserService.owner_label`, which
  the routes and the job service give the answers as their `label`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from aws_extension.middleware.errors import AccessDenied, InvalidRequest, TooManyRequests
from aws_extension.middleware.principals import BOOTSTRAP_USERNAME, Principal
from aws_extension.middleware.records import Checkpoint
from aws_extension.middleware.store.typed import Records
from aws_extension.vocabulary import Permission

R = TypeVar("R")

# Retry-After of a 429: a queued job usually ends within seconds; a training slot frees up in minutes.
QUEUED_JOBS_RETRY_AFTER_S = 10
TRAININGS_RETRY_AFTER_S = 60


def owner_name(owner: str | None) -> str:
    """The username that owns a record (records from before owners are the bootstrap administrator's)."""
    return owner or BOOTSTRAP_USERNAME


# How answers name an owner (a username): `UserService.owner_label` says "deleted user NAME" once the user is
# deleted; `as_named` is the name as it is.
OwnerLabel = Callable[[str], str]


def as_named(username: str) -> str:
    return username


def sees_owner(principal: Principal, owner: str | None) -> bool:
    return principal.sees_everyone or owner_name(owner) == principal.username


def listed_owners(principal: Principal, requested: str | None) -> list[str]:
    """The `owner` values a list may show (the store's `where` list; empty: every owner). A principal that
    does not see everyone sees its own; only administrators may ask for another owner's."""
    if principal.sees_everyone:
        return [requested] if requested else []
    if requested and requested != principal.username:
        raise AccessDenied(f"user {principal.username} may list only their own records; ?owner= another user "
                           "needs the user:all permission.")
    return [principal.username]


def owned_page(records: Records[R], where: dict[str, list[Any]], limit: int, last_key: str | None,
               principal: Principal, owner: str | None, what: str) -> tuple[list[R], str | None]:
    """One page of the principal's records (administrators: everyone's, or `owner`'s) matching `where`,
    newest first, after the record whose id is `last_key` (a list route's); and the next page's `last_key`
    (None on the last page)."""
    after = None
    if last_key:
        previous = records.get(last_key)
        if previous is None or not sees_owner(principal, previous.owner):
            raise InvalidRequest(f"last_key {last_key!r} is not the id of a {what}.")
        after = records.key_after(previous)
    page = records.page({**where, "owner": listed_owners(principal, owner)}, limit, after)
    return page.records, page.records[-1].id if page.next_key else None


def in_roles(principal: Principal, roles: Iterable[str]) -> bool:
    """Whether a record limited to `roles` (empty: not limited) is the principal's to see and use."""
    roles = list(roles)
    return not roles or principal.sees_everyone or bool(set(roles) & set(principal.roles))


def may_use_checkpoint(principal: Principal, record: Checkpoint) -> bool:
    """Who sees a checkpoint and may use it in jobs: anyone when it has no `allowed_roles`; else those roles,
    its owner, and whoever manages the catalogue (`checkpoint:all`)."""
    return (in_roles(principal, record.allowed_roles) or owner_name(record.owner) == principal.username
            or principal.may(Permission.CHECKPOINT_ALL.value))


def check_roles(roles: object, field: str = "allowed_roles") -> list[str]:
    """A list of role names (`allowed_roles`, `assign_to_roles`): [] when absent."""
    if roles is None:
        return []
    if not isinstance(roles, list) or not all(isinstance(r, str) and r.strip() for r in roles):
        raise InvalidRequest(f"{field} must be a list of role names, like [\"user\"], not {roles!r}.")
    return list(dict.fromkeys(r.strip() for r in roles))


def _roles_text(principal: Principal) -> str:
    names = ", ".join(repr(r) for r in principal.roles)
    return f"role {names}" if len(principal.roles) == 1 else f"roles {names}"


def check_queued_jobs(principal: Principal, queued: int) -> None:
    """TooManyRequests when the principal already has its most queued (created or in progress) jobs."""
    limit = principal.max_queued_jobs
    if limit is not None and queued >= limit:
        raise TooManyRequests(
            f"user {principal.username} has {queued} queued jobs, the limit of {_roles_text(principal)} "
            f"(max_queued_jobs={limit}); wait for one to finish.", QUEUED_JOBS_RETRY_AFTER_S)


def check_trainings(principal: Principal, training: int) -> None:
    """TooManyRequests when the principal already has its most trainings running."""
    limit = principal.max_concurrent_trainings
    if limit is not None and training >= limit:
        raise TooManyRequests(
            f"user {principal.username} has {training} trainings running, the limit of {_roles_text(principal)} "
            f"(max_concurrent_trainings={limit}); wait for one to finish or stop one.", TRAININGS_RETRY_AFTER_S)
