"""The table store port: records as JSON-like items in tables, a few fields indexed, conditional updates.

A `Table` names its indexed fields (what lists filter, sort and count on) and at most one unique field.
The services speak only domain field names (`endpoint=`, `endpoint_status=`); each implementation maps
them to its own indexes:

- SQLite (`sqlite.py`, the embedded default): one `records` table; each table's indexed fields map to
  the generic index columns `status`, `kind`, `name`, `queue_state`, with `created` for ordering.
- DynamoDB (`dynamodb.py`, the AWS backend, the same interface): one table per `Table`, partition key
  `id`; one GSI per indexed field (partition key the field's value, in its own `_i_<field>` attribute
  while it is a non-empty string, so None-valued items are out of that index; sort key `_sk` =
  `created#id`, `created` as ordered hex so it sorts exactly like SQLite's), plus one with a constant
  partition key for unfiltered lists. `create` is a PutItem conditional on `attribute_not_exists(id)`
  (with the unique field, a transaction that also puts a `unique#<field>#<value>` marker item under the
  same condition; an update or delete that changes the value moves or deletes the marker in its own
  transaction); `update` is an UpdateItem whose ConditionExpression is `expect` (returning ALL_NEW, or
  None on ConditionalCheckFailed); `list` queries the GSI of one filter (a fixed per-table preference,
  one query per value merged by `created#id`; the other filters are a FilterExpression on its pages),
  newest first, and `after` is `(created, id)` encoded opaquely, continued with a key condition on the
  sort key; `count` is the same query with Select=COUNT. No call scans. GSI reads are eventually
  consistent: only `get`, `with_keywords` and the unique markers read what was just written. A pair of
  `Table.pairs` has its own GSI (partition key the first field's `_i_`, sort key `_p_<second>` = the second
  value's JSON + `#` + `_sk`); keywords are posting items `keyword#<word>` (a string set of item ids).

Every item has `id` and `created` (Unix seconds, the sort order). `update` is the only way to change an
item and takes conditions, so a state transition is one conditional write: of two racing requests
exactly one wins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

Item = dict[str, Any]


@dataclass(frozen=True)
class Table:
    name: str
    indexed: tuple[str, ...]  # fields that lists may filter on and counts count
    unique: str | None = None  # no two items may have the same non-null value of this field
    # Pairs of indexed fields (a, b) that lists often filter on together: one index serves both filters,
    # so such a list reads only the items it answers with (a job list by status and endpoint).
    pairs: tuple[tuple[str, str], ...] = ()
    # Words an item is found by (`Store.with_keywords`), made from the item by `keywords`, which reads only
    # the fields `keyword_inputs` (for a list-valued thing, such as a checkpoint's file names).
    keywords: Callable[[Item], list[str]] | None = None
    keyword_inputs: tuple[str, ...] = ()


class DuplicateRecord(Exception):
    """An item with this id, or this value of the table's unique field, already exists."""


@dataclass(frozen=True)
class Page:
    items: list[Item]
    next_key: str | None  # pass as `after` to get the next page; None when this is the last one


class Store(Protocol):
    def create(self, table: Table, item: Item) -> None:
        """Insert a new item; DuplicateRecord if its id, or its unique field's value, is taken."""

    def get(self, table: Table, item_id: str) -> Item | None: ...

    def find(self, table: Table, field: str, value: Any) -> Item | None:
        """The newest item whose indexed `field` equals `value`."""

    def update(self, table: Table, item_id: str, changes: Item, expect: Item | None = None) -> Item | None:
        """Apply `changes` if every `expect` field has the given value (a tuple/list: one of these values;
        None: absent or null). Returns the new item, or None if the item is missing or a condition failed.
        Atomic."""

    def list(self, table: Table, *, where: dict[str, list[Any]] | None = None, limit: int = 100,
             after: str | None = None, oldest_first: bool = False) -> Page:
        """Items newest first (or oldest first); `where` maps indexed fields to the values they may take
        (an empty list: any value)."""

    def count(self, table: Table, *, where: dict[str, list[Any]] | None = None,
              before: Item | None = None) -> int:
        """How many items match `where` (and, with `before`, come before that item, oldest first)."""

    def with_keywords(self, table: Table, keywords: list[str]) -> list[Item]:
        """The items that have at least one of `keywords` now (read consistently), in no order."""

    def key_after(self, table: Table, item: Item) -> str:
        """The `after` key that lists the items following `item`."""

    def delete(self, table: Table, item_id: str) -> None: ...

    def close(self) -> None: ...
