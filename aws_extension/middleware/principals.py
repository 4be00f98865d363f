"""Who a request acts for: the `Principal` its key belongs to. Routes that need it take
`principal: Principal = Depends(current_principal)`; the routers' dependency (`auth.authorize`) puts it on
`request.state.principal` before any route runs. Users' keys become principals in
`services/users.UserService.principal_for_key`.

The key the middleware has always had (env `SD_AWS_API_KEY`, `<data dir>/api_key`, or the stack's secret)
is the bootstrap administrator's (`BOOTSTRAP_ADMIN`), so every client that has it keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from aws_extension.vocabulary import ADMIN_PERMISSION, ADMIN_ROLE, BUILT_IN_ROLES, grants

BOOTSTRAP_USERNAME = "admin"


@dataclass(frozen=True)
class Principal:
    username: str
    roles: tuple[str, ...]
    permissions: frozenset[str]  # the union of its roles' permissions
    key_id: str | None = None  # None: the bootstrap key
    # The per-role limits, the most generous of its roles; None: no limit.
    max_queued_jobs: int | None = None
    max_concurrent_trainings: int | None = None

    def may(self, permission: str) -> bool:
        return grants(self.permissions, permission)

    @property
    def sees_everyone(self) -> bool:
        """Administrators (`user:all`) see and act on every owner's jobs, trainings and datasets; anyone
        else only on their own."""
        return self.may(ADMIN_PERMISSION)


BOOTSTRAP_ADMIN = Principal(username=BOOTSTRAP_USERNAME, roles=(ADMIN_ROLE,), permissions=BUILT_IN_ROLES[ADMIN_ROLE])


def current_principal(request: Request) -> Principal:
    """The routes' dependency: the principal the key check found."""
    return request.state.principal
