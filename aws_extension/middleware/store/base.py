"""The table store port: records are JSON objects in named tables, with a few indexed fields.

Every record has `id`; the indexed fields (`status`, `kind`, `name`, `created`, `queue_state`) are
copied from the record so that lists can filter, sort and count on them without reading every record. `update` is the only way
to change a record and takes conditions, so that a state transition is one conditional write: of two
racing requests exactly one wins (the same contract as DynamoDB's conditional updates).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

INDEXED_FIELDS = ("status", "kind", "name", "created", "queue_state")


class DuplicateRecord(Exception):
    """A record with this id, or this unique name, already exists in the table."""


@dataclass(frozen=True)
class Page:
    records: list[dict[str, Any]]
    next_key: str | None  # pass as `after` to get the next page; None when this is the last one


class Store(Protocol):
    def create(self, table: str, record: dict[str, Any], *, unique_name: bool = False) -> None:
        """Insert a new record; raises DuplicateRecord if its id (or name, with unique_name) exists."""

    def get(self, table: str, record_id: str) -> dict[str, Any] | None: ...

    def get_by_name(self, table: str, name: str) -> dict[str, Any] | None:
        """The newest record of that name."""

    def update(self, table: str, record_id: str, changes: dict[str, Any],
               expect: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Apply `changes` if every `expect` field has the given value (a tuple/list = one of these
        values, None = absent or null). Returns the new record, or None if the record is missing or a
        condition failed. Atomic."""

    def list(self, table: str, *, filters: dict[str, list[str]] | None = None, limit: int = 100,
             after: str | None = None, oldest_first: bool = False) -> Page:
        """Records newest first (or oldest first); `filters` maps an indexed field to the values it may take."""

    def count(self, table: str, *, filters: dict[str, list[str]] | None = None,
              before: dict[str, Any] | None = None) -> int:
        """How many records match `filters` (and, with `before`, come before that record, oldest first)."""

    def delete(self, table: str, record_id: str) -> None: ...

    def key_after(self, record: dict[str, Any]) -> str:
        """The `after` key that lists the records following `record` (for paging by a record's id)."""


def list_all(store: Store, table: str, filters: dict[str, list[str]] | None = None,
             oldest_first: bool = False) -> list[dict[str, Any]]:
    """Every record matching `filters`, newest (or oldest) first, read page by page."""
    records: list[dict[str, Any]] = []
    after = None
    while True:
        page = store.list(table, filters=filters, limit=1000, after=after, oldest_first=oldest_first)
        records.extend(page.records)
        if not page.next_key:
            return records
        after = page.next_key
