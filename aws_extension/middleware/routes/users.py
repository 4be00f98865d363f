"""Users and their keys, roles, the audit trail (issue 14). Permissions: `permissions.py`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from aws_extension.middleware import answers
from aws_extension.middleware.principals import Principal, current_principal
from aws_extension.middleware.routes.deps import get_services
from aws_extension.middleware.services.names import now
from aws_extension.middleware.services.users import key_status
from aws_extension.middleware.wiring import Services
from aws_extension.vocabulary import BUILT_IN_ROLES

router = APIRouter(tags=["users"])


class KeyExpiry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expires_in_days: float | None = Field(None, description="the key stops working this many days from now")
    expires_at: str | None = Field(None, description="or at this ISO 8601 time (UTC if no zone)")


class CreateUser(KeyExpiry):
    username: str
    roles: list[str] = Field(max_length=100)


class ChangeRoles(BaseModel):
    model_config = ConfigDict(extra="forbid")

    roles: list[str] = Field(max_length=100)


class CreateRole(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role_name: str
    permissions: list[str] = Field(max_length=100)
    max_queued_jobs: int | None = Field(None, description="queued inference jobs per user; none: no limit")
    max_concurrent_trainings: int | None = Field(None, description="trainings running at once per user")


def _user(services: Services, record) -> answers.UserAnswer:
    return answers.user_answer(record, services.users.principal_of(record).permissions)


def _key(record) -> answers.KeyAnswer:
    return answers.key_answer(record, key_status(record, now()))


@router.post("/users", response_model=answers.UserCreated, summary="Create a user and its first API key (shown once)")
def create_user(body: CreateUser, principal: Principal = Depends(current_principal),
                services: Services = Depends(get_services)):
    user, key = services.users.create_user(principal, body.username, body.roles, body.expires_in_days, body.expires_at)
    return answers.UserCreated(user=_user(services, user), username=user.username, roles=user.roles,
                               api_key=key.api_key, key_id=key.record.id, expires=key.record.expires)


@router.get("/users", response_model=answers.UserList, summary="Users, newest first; ?limit= and ?last_key= page them")
def list_users(limit: int = Query(100, ge=1, le=1000), last_key: str | None = None,
               services: Services = Depends(get_services)):
    records, next_key = services.users.page_users(limit, last_key)
    return answers.UserList(users=[_user(services, r) for r in records], last_key=next_key)


@router.put("/users/{username}", response_model=answers.OneUser, summary="Change a user's roles")
def change_roles(username: str, body: ChangeRoles, principal: Principal = Depends(current_principal),
                 services: Services = Depends(get_services)):
    return answers.OneUser(user=_user(services, services.users.set_roles(principal, username, body.roles)))


@router.delete("/users/{username}", response_model=answers.UserDeleted,
               summary="Delete a user: its keys stop at once; its name stays reserved and its records stay")
def delete_user(username: str, principal: Principal = Depends(current_principal),
                services: Services = Depends(get_services)):
    return answers.UserDeleted(user=_user(services, services.users.delete_user(principal, username)))


@router.post("/users/{username}/keys", response_model=answers.KeyCreated,
             summary="A new API key for the user (shown once): rotate by making one, then revoking the old")
def create_key(username: str, body: KeyExpiry | None = None, principal: Principal = Depends(current_principal),
               services: Services = Depends(get_services)):
    body = body or KeyExpiry()
    key = services.users.create_key(principal, username, body.expires_in_days, body.expires_at)
    return answers.KeyCreated(username=username, api_key=key.api_key, key_id=key.record.id,
                              expires=key.record.expires, key=_key(key.record))


@router.get("/users/{username}/keys", response_model=answers.KeyList,
            summary="The user's keys: ids, times, status (never the keys)")
def list_keys(username: str, services: Services = Depends(get_services)):
    return answers.KeyList(keys=[_key(r) for r in services.users.list_keys(username)])


@router.delete("/users/{username}/keys/{key_id}", response_model=answers.KeyRevoked,
               summary="Revoke a key: it stops at once")
def revoke_key(username: str, key_id: str, principal: Principal = Depends(current_principal),
               services: Services = Depends(get_services)):
    return answers.KeyRevoked(key=_key(services.users.revoke_key(principal, username, key_id)))


@router.post("/roles", response_model=answers.OneRole, summary="Create a role: permissions and per-user limits")
def create_role(body: CreateRole, principal: Principal = Depends(current_principal),
                services: Services = Depends(get_services)):
    role = services.users.create_role(principal, body.role_name, body.permissions, body.max_queued_jobs,
                                      body.max_concurrent_trainings)
    return answers.OneRole(role=answers.role_answer(role, built_in=False))


@router.get("/roles", response_model=answers.RoleList, summary="The built-in roles, then the others")
def list_roles(services: Services = Depends(get_services)):
    return answers.RoleList(roles=[answers.role_answer(r, built_in=r.role_name in BUILT_IN_ROLES)
                                   for r in services.users.list_roles()])


@router.delete("/roles/{role_name}", response_model=answers.RoleDeleted,
               summary="Delete a role (409 while a user has it; the built-in roles cannot be deleted)")
def delete_role(role_name: str, services: Services = Depends(get_services)):
    return answers.RoleDeleted(role_name=services.users.delete_role(role_name).role_name)


@router.get("/audit", response_model=answers.AuditList,
            summary="Who changed what, newest first; ?actor=, ?since= (Unix seconds or ISO time), ?limit=, ?last_key=")
def audit_trail(limit: int = Query(100, ge=1, le=1000), last_key: str | None = None, actor: str | None = None,
                since: str | None = None, services: Services = Depends(get_services)):
    entries, next_key = services.audit.page(limit, last_key, actor, since)
    return answers.AuditList(entries=[answers.audit_answer(e) for e in entries], last_key=next_key)
