"""Users, their API keys and roles; and the one place a user's key becomes a `Principal`.

A key is `sdk_<key id>_<secret>`: the id says which record to read, so checking a key costs a constant
number of store reads (the key, its user, each custom role of the user), never a scan. Nothing is cached:
a revoked or expired key, or a deleted user's, is refused by the next request on every process (the
Lambdas of the aws backend included; the store's `get` is strongly consistent).

Administrators are the active users holding `user:all` (`ADMIN_PERMISSION`). The bootstrap key (the
operator's, in the data dir or the stack's secret) is not a user and does not count as one: the last-admin
rule keeps the *users* able to administer themselves without it, and it would otherwise never apply.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from aws_extension.middleware.errors import (
    AccessDenied,
    InvalidRequest,
    NotAuthenticated,
    UnknownRecord,
    WrongState,
)
from aws_extension.middleware.principals import BOOTSTRAP_USERNAME, Principal
from aws_extension.middleware.records import API_KEYS, ROLES, USERS, ApiKey, Role, User
from aws_extension.middleware.services.names import check_name, new_id, now, time_text
from aws_extension.middleware.store.base import DuplicateRecord, Store
from aws_extension.middleware.store.typed import Records
from aws_extension.vocabulary import (
    ADMIN_PERMISSION,
    BUILT_IN_ROLES,
    ApiKeyStatus,
    Permission,
    UserStatus,
    grants,
)

KEY_PREFIX = "sdk"
SECRET_BYTES = 32
MAX_EXPIRY_DAYS = 3650
DAY_S = 86400.0
VALID_PERMISSIONS = tuple(p.value for p in Permission)
_KEY_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")  # names.new_id()


def secret_hash(salt: bytes, secret: str) -> str:
    """HMAC-SHA256 of the secret under the key's own salt. The secrets are 32 random bytes, not passwords:
    nobody can guess or brute-force them, so a slow password hash (bcrypt, scrypt) would add nothing but
    time to every request; the salt keeps equal secrets (there are none) and precomputed tables useless."""
    return hmac.new(salt, secret.encode(), hashlib.sha256).hexdigest()


def key_text(key_id: str, secret: str) -> str:
    return f"{KEY_PREFIX}_{key_id}_{secret}"


def is_user_key(key: str) -> bool:
    return key.startswith(f"{KEY_PREFIX}_")


def key_status(key: ApiKey, at: float) -> ApiKeyStatus:
    if key.revoked is not None:
        return ApiKeyStatus.REVOKED
    if key.expires is not None and at >= key.expires:
        return ApiKeyStatus.EXPIRED
    return ApiKeyStatus.ACTIVE


def _built_in(name: str) -> Role:
    return Role(id=name, role_name=name, created=0.0, permissions=sorted(BUILT_IN_ROLES[name]), creator="built-in")


def _most_generous(limits: list[int | None]) -> int | None:
    """The largest limit, None (no limit) if any role has none (or there are no roles)."""
    return None if not limits or None in limits else max(x for x in limits if x is not None)


def expiry_of(expires_in_days: float | None, expires_at: str | None, at: float) -> float | None:
    """When a new key expires: `expires_in_days` from now, or at the ISO time `expires_at` (UTC if it names
    no zone); neither: never."""
    if expires_in_days is not None and expires_at is not None:
        raise InvalidRequest("Give expires_in_days or expires_at, not both.")
    if expires_in_days is not None:
        if not 0 < expires_in_days <= MAX_EXPIRY_DAYS:
            raise InvalidRequest(f"expires_in_days must be more than 0 and at most {MAX_EXPIRY_DAYS}.")
        return at + expires_in_days * DAY_S
    if expires_at is not None:
        try:
            when = datetime.fromisoformat(expires_at)
        except ValueError:
            raise InvalidRequest(f"expires_at {expires_at!r} is not an ISO 8601 time "
                                 "(e.g. 2030-01-31T12:00:00Z).") from None
        timestamp = (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()
        if timestamp <= at:
            raise InvalidRequest(f"expires_at {expires_at!r} is in the past.")
        if timestamp > at + MAX_EXPIRY_DAYS * DAY_S:
            raise InvalidRequest(f"expires_at {expires_at!r} is more than {MAX_EXPIRY_DAYS} days away.")
        return timestamp
    return None


@dataclass(frozen=True)
class NewKey:
    """A key just made: its record and the key itself, which is shown this once."""

    record: ApiKey
    api_key: str


class UserService:
    def __init__(self, store: Store):
        self.users = Records(store, USERS, User)
        self.keys = Records(store, API_KEYS, ApiKey)
        self.roles = Records(store, ROLES, Role)

    # -- authentication ------------------------------------------------------------------------------------
    def principal_for_key(self, key: str) -> Principal:
        """The principal of a user's key; AccessDenied (403) for a key that is not one of ours, NotAuthenticated
        (401: the holder must get a new key) for one revoked, expired or of a deleted user."""
        _, key_id, secret = (key.split("_", 2) + ["", ""])[:3]
        record = self.keys.get(key_id) if _KEY_ID.match(key_id) and secret else None
        # The secret is checked before anything about the key is told, so only its holder learns it ended.
        if record is None or not hmac.compare_digest(secret_hash(bytes.fromhex(record.salt), secret),
                                                     record.secret_hash):
            raise AccessDenied("The API key is not valid.")
        user = self.users.get(record.username)
        if user is None or user.status != UserStatus.ACTIVE:
            raise NotAuthenticated(f"The user {record.username} of this API key was deleted.")
        status = key_status(record, now())
        if status == ApiKeyStatus.REVOKED:
            raise NotAuthenticated(f"This API key ({key_id}) was revoked at {time_text(record.revoked or 0)} UTC; "
                                   "ask an administrator for a new one.")
        if status == ApiKeyStatus.EXPIRED:
            raise NotAuthenticated(f"This API key ({key_id}) expired at {time_text(record.expires or 0)} UTC; "
                                   "ask an administrator for a new one.")
        return self.principal_of(user, key_id)

    def principal_of(self, user: User, key_id: str | None = None) -> Principal:
        roles = [role for role in (self._role_or_none(name) for name in user.roles) if role is not None]
        return Principal(username=user.username, roles=tuple(user.roles),
                         permissions=frozenset(p for role in roles for p in role.permissions), key_id=key_id,
                         max_queued_jobs=_most_generous([r.max_queued_jobs for r in roles]),
                         max_concurrent_trainings=_most_generous([r.max_concurrent_trainings for r in roles]))

    # -- users ---------------------------------------------------------------------------------------------
    def create_user(self, actor: Principal, username: str, roles: list[str], expires_in_days: float | None = None,
                    expires_at: str | None = None) -> tuple[User, NewKey]:
        """A new user and its first key."""
        check_username(username)
        roles = self._checked_roles(roles)
        at = now()
        expires = expiry_of(expires_in_days, expires_at, at)
        existing = self.users.get(username)
        if existing is not None:
            raise WrongState(f"The user {username} exists." if existing.status == UserStatus.ACTIVE else
                             f"The name {username} belonged to a user deleted at {time_text(existing.deleted or 0)} "
                             "UTC and stays reserved (their records keep it); choose another name.")
        user = User(id=username, username=username, status=UserStatus.ACTIVE, created=at, roles=roles,
                    creator=actor.username)
        try:
            self.users.create(user)
        except DuplicateRecord:
            raise WrongState(f"The user {username} exists.") from None
        return user, self._new_key(actor, username, expires)

    def get_user(self, username: str) -> User:
        user = self.users.get(username)
        if user is None or user.status != UserStatus.ACTIVE:
            raise UnknownRecord(f"There is no user {username}.")
        return user

    def page_users(self, limit: int, last_key: str | None) -> tuple[list[User], str | None]:
        """Active users, newest first, after the user named `last_key`; and the next page's key."""
        after = None
        if last_key:
            previous = self.users.get(last_key)
            if previous is None:
                raise InvalidRequest(f"last_key {last_key!r} is not a username.")
            after = self.users.key_after(previous)
        page = self.users.page({"status": [UserStatus.ACTIVE.value]}, limit, after)
        return page.records, page.records[-1].id if page.next_key else None

    def set_roles(self, actor: Principal, username: str, roles: list[str]) -> User:
        user = self.get_user(username)
        roles = self._checked_roles(roles)
        self._keep_an_admin(user, replace(user, roles=roles), "remove the administrator role of")
        updated = self.users.update(username, {"roles": roles}, expect={"status": UserStatus.ACTIVE.value})
        if updated is None:
            raise UnknownRecord(f"There is no user {username}.")
        return updated

    def delete_user(self, actor: Principal, username: str) -> User:
        """The user becomes a tombstone: its keys stop at once (the key check reads the user), and are marked
        revoked too, so its key list says so."""
        user = self.get_user(username)
        self._keep_an_admin(user, None, "delete")
        at = now()
        deleted = self.users.update(username, {"status": UserStatus.DELETED, "deleted": at,
                                               "deleted_by": actor.username},
                                    expect={"status": UserStatus.ACTIVE.value})
        if deleted is None:
            raise UnknownRecord(f"There is no user {username}.")
        for key in self.keys.iterate({"username": [username]}):
            self.keys.update(key.id, {"revoked": at, "revoked_by": actor.username}, expect={"revoked": None})
        return deleted

    def owner_label(self, username: str) -> str:
        """How a record's owner is shown: its name, or "deleted user NAME" once the user is deleted."""
        if username == BOOTSTRAP_USERNAME:
            return username
        user = self.users.get(username)
        return username if user is not None and user.status == UserStatus.ACTIVE else f"deleted user {username}"

    def is_admin(self, user: User) -> bool:
        return user.status == UserStatus.ACTIVE and grants(self.principal_of(user).permissions, ADMIN_PERMISSION)

    def _keep_an_admin(self, before: User, after: User | None, doing: str) -> None:
        """409 if the change leaves no active administrator where there was one. (Two administrators removed
        by two requests at the same instant could both pass; the bootstrap key can always make a new one.)"""
        if not self.is_admin(before) or (after is not None and self.is_admin(after)):
            return
        if not any(self.is_admin(u) for u in self.users.iterate({"status": [UserStatus.ACTIVE.value]})
                   if u.id != before.id):
            raise WrongState(f"Cannot {doing} {before.username}: they are the last administrator (a user holding "
                             f"{ADMIN_PERMISSION}); make another user an administrator first.")

    # -- keys ----------------------------------------------------------------------------------------------
    def create_key(self, actor: Principal, username: str, expires_in_days: float | None = None,
                   expires_at: str | None = None) -> NewKey:
        self.get_user(username)
        return self._new_key(actor, username, expiry_of(expires_in_days, expires_at, now()))

    def _new_key(self, actor: Principal, username: str, expires: float | None) -> NewKey:
        key_id, secret, salt = new_id(), secrets.token_urlsafe(SECRET_BYTES), secrets.token_bytes(16)
        record = ApiKey(id=key_id, username=username, created=now(), salt=salt.hex(),
                        secret_hash=secret_hash(salt, secret), creator=actor.username, expires=expires)
        self.keys.create(record)
        return NewKey(record, key_text(key_id, secret))

    def list_keys(self, username: str) -> list[ApiKey]:
        self.get_user(username)
        return self.keys.all({"username": [username]})

    def revoke_key(self, actor: Principal, username: str, key_id: str) -> ApiKey:
        key = self.keys.get(key_id)
        if key is None or key.username != username:
            raise UnknownRecord(f"The user {username} has no key {key_id}.")
        if key.revoked is not None:
            return key
        return self.keys.update(key_id, {"revoked": now(), "revoked_by": actor.username},
                                expect={"revoked": None}) or self.keys.get(key_id) or key

    # -- roles ---------------------------------------------------------------------------------------------
    def create_role(self, actor: Principal, role_name: str, permissions: list[str],
                    max_queued_jobs: int | None = None, max_concurrent_trainings: int | None = None) -> Role:
        check_name(role_name, "role name")
        if role_name in BUILT_IN_ROLES:
            raise WrongState(f"{role_name} is a built-in role; it cannot be created or changed.")
        unknown = [p for p in permissions if p not in VALID_PERMISSIONS]
        if unknown:
            raise InvalidRequest(f"Unknown permission(s) {', '.join(map(repr, unknown))}; the permissions are "
                                 f"{', '.join(VALID_PERMISSIONS)}.")
        if not permissions:
            raise InvalidRequest(f"A role needs at least one permission; the permissions are "
                                 f"{', '.join(VALID_PERMISSIONS)}.")
        for name, limit in (("max_queued_jobs", max_queued_jobs), ("max_concurrent_trainings", max_concurrent_trainings)):
            if limit is not None and limit < 0:
                raise InvalidRequest(f"{name} must be 0 or more (leave it out for no limit).")
        role = Role(id=role_name, role_name=role_name, created=now(), permissions=list(dict.fromkeys(permissions)),
                    creator=actor.username, max_queued_jobs=max_queued_jobs,
                    max_concurrent_trainings=max_concurrent_trainings)
        try:
            self.roles.create(role)
        except DuplicateRecord:
            raise WrongState(f"The role {role_name} exists.") from None
        return role

    def list_roles(self) -> list[Role]:
        """The built-in roles, then the others, newest first."""
        return [_built_in(name) for name in BUILT_IN_ROLES] + self.roles.all()

    def delete_role(self, role_name: str) -> Role:
        if role_name in BUILT_IN_ROLES:
            raise WrongState(f"{role_name} is a built-in role; it cannot be deleted.")
        role = self.roles.get(role_name)
        if role is None:
            raise UnknownRecord(f"There is no role {role_name}.")
        holders = [u.username for u in self.users.iterate({"status": [UserStatus.ACTIVE.value]})
                   if role_name in u.roles]
        if holders:
            raise WrongState(f"The role {role_name} is assigned to {', '.join(holders[:10])}"
                             f"{' and more' if len(holders) > 10 else ''}; remove it from them first.")
        self.roles.delete(role_name)
        return role

    def _role_or_none(self, name: str) -> Role | None:
        return _built_in(name) if name in BUILT_IN_ROLES else self.roles.get(name)

    def _checked_roles(self, roles: list[str]) -> list[str]:
        roles = list(dict.fromkeys(roles))
        if not roles:
            raise InvalidRequest("A user needs at least one role (e.g. \"user\").")
        unknown = [name for name in roles if self._role_or_none(name) is None]
        if unknown:
            known = [r.role_name for r in self.list_roles()]
            raise InvalidRequest(f"Unknown role(s) {', '.join(map(repr, unknown))}; the roles are {', '.join(known)}.")
        return roles


def check_username(username: str) -> str:
    check_name(username, "username")
    if username == BOOTSTRAP_USERNAME:
        raise WrongState(f"{BOOTSTRAP_USERNAME} is the bootstrap administrator's name (the middleware's own key); "
                         "choose another.")
    return username
