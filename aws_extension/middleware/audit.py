"""`AuditTrail`: the ASGI middleware that writes one audit entry (`services/audit.AuditLog`) for every
successful (status < 400) POST, PUT and DELETE a key made. The entry is written just before the answer's
last bytes are sent, so a client that has its answer finds the entry. The principal, the route's template
and its path parameters come from the request's state, where `auth.authorize` put them; the answer is read
only for the ids it names. Requests without a principal (the signed blob URLs) are not recorded.
"""

from __future__ import annotations

import json
import logging

from starlette.concurrency import run_in_threadpool

from aws_extension.middleware.services.audit import AuditLog

log = logging.getLogger(__name__)

AUDITED_METHODS = frozenset({"POST", "PUT", "DELETE"})
MAX_ANSWER_BYTES = 1024 * 1024  # answers of changes are small; a larger one is recorded without its ids


class AuditTrail:
    def __init__(self, app, audit: AuditLog):
        self.app = app
        self.audit = audit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in AUDITED_METHODS:
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})  # shared with the request, even if a router copies the scope
        status, body = 0, bytearray()

        async def recording_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                if len(body) <= MAX_ANSWER_BYTES:
                    body.extend(message.get("body", b""))
                if not message.get("more_body", False) and status < 400 and state.get("principal") is not None:
                    await self._record(scope["method"], state, status, body)
            await send(message)

        await self.app(scope, receive, recording_send)

    async def _record(self, method: str, state: dict, status: int, body: bytearray) -> None:
        principal, route_path = state["principal"], state.get("route_path")
        try:
            answer = json.loads(body) if len(body) <= MAX_ANSWER_BYTES else None
        except ValueError:
            answer = None
        try:
            await run_in_threadpool(self.audit.record, principal, method, route_path,
                                    state.get("path_params") or {}, status, answer)
        except Exception:  # the change is done; a lost entry must not turn its answer into an error
            log.exception("could not write the audit entry of %s %s by %s", method, route_path,
                          principal.username)
