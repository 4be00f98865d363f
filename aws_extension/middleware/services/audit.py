"""The audit trail: who changed what, when. `AuditLog.record` is called for every successful POST, PUT and
DELETE by one ASGI middleware (`middleware/audit.py`), never by the services.

An entry holds the actor (username and key id), the action (method + route template), the path
parameters and the ids found in the answer (`ids_in`), the status and the time. Never a key, a secret, a
signed URL or a request body: only fields named as ids are taken from the answer, and no value that looks
like a key or a URL.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timezone
from typing import Any

from aws_extension.middleware.errors import InvalidRequest
from aws_extension.middleware.principals import Principal
from aws_extension.middleware.records import AUDIT, AuditEntry
from aws_extension.middleware.services.names import new_id, now
from aws_extension.middleware.services.users import is_user_key
from aws_extension.middleware.store.base import Store
from aws_extension.middleware.store.typed import Records

log = logging.getLogger(__name__)

MAX_IDS = 50
# Answer fields that name records: ids and names (`inference_id`, `EndpointDeploymentJobId`, `key_id`,
# `endpoint_name`, `datasetName`, `username`, ...).
_ID_FIELD = re.compile(r"^(id|username|role_name)$|_id$|Id$|ID$|_name$|Name$")
# ... except these, which are credentials or lead to data.
_SECRET_FIELD = re.compile(r"url|secret|token|password|api_key|upload_id", re.IGNORECASE)
_RESULTS_FIELD = "results"  # DELETE /endpoints: {name: outcome}


def _safe(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 200 and "://" not in value and "?" not in value \
        and not is_user_key(value)


def ids_in(answer: Any, depth: int = 0) -> list[str]:
    """The record ids and names an answer carries (nested up to three levels), without secrets."""
    found: list[str] = []
    if depth > 3:
        return found
    if isinstance(answer, list):
        for item in answer:
            found += ids_in(item, depth + 1)
    elif isinstance(answer, dict):
        for field, value in answer.items():
            if not isinstance(field, str) or _SECRET_FIELD.search(field):
                continue
            if field == _RESULTS_FIELD and isinstance(value, dict):
                found += [name for name in value if _safe(name)]
            elif _ID_FIELD.search(field) and _safe(value):
                found.append(value)
            elif isinstance(value, (dict, list)):
                found += ids_in(value, depth + 1)
    return list(dict.fromkeys(found))[:MAX_IDS]


def parse_since(since: str) -> float:
    """`?since=`: Unix seconds, or an ISO 8601 time (UTC if it names no zone)."""
    try:
        return float(since)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(since)
    except ValueError:
        raise InvalidRequest(f"since {since!r} is neither Unix seconds nor an ISO 8601 time "
                             "(e.g. 2030-01-31T12:00:00Z).") from None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


class AuditLog:
    def __init__(self, store: Store):
        self.entries = Records(store, AUDIT, AuditEntry)

    def record(self, principal: Principal, method: str, route_path: str, path_params: dict[str, Any],
               status: int, answer: Any) -> AuditEntry:
        params = {k: str(v) for k, v in path_params.items() if _safe(str(v))}
        entry = AuditEntry(id=new_id(), created=now(), actor=principal.username, key_id=principal.key_id,
                           action=f"{method} {route_path}", status=status, path_params=params,
                           record_ids=list(dict.fromkeys([*params.values(), *ids_in(answer)]))[:MAX_IDS])
        self.entries.create(entry)
        return entry

    def page(self, limit: int, last_key: str | None, actor: str | None = None,
             since: str | None = None) -> tuple[list[AuditEntry], str | None]:
        """Entries newest first (by `actor`, from `since` on), after the entry whose id is `last_key`."""
        after = None
        if last_key:
            previous = self.entries.get(last_key)
            if previous is None:
                raise InvalidRequest(f"last_key {last_key!r} is not the id of an audit entry.")
            after = self.entries.key_after(previous)
        start = parse_since(since) if since else None
        page = self.entries.page({"actor": [actor] if actor else []}, limit, after)
        records = [e for e in page.records if start is None or e.created >= start]
        more = page.next_key is not None and len(records) == len(page.records)  # newest first: older ones end it
        return records, records[-1].id if more and records else None
