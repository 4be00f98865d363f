"""Typed records over the store: a dataclass per table, encoded to items and decoded back.

`Records(store, table, JobRecord)` is what services use: `create(record)`, `get(id)`, `update(id,
{field: value}, expect={field: value})`, `list(where=...)`, all in the dataclass's field names (which are
checked, so a misspelt field fails at once instead of writing a new key). Decoding rebuilds nested
dataclasses and `Word` enums and ignores item keys the dataclass does not have (written by a newer
version), so records stay readable across versions.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, TypeVar

from aws_extension.middleware.store.base import Item, Page, Store, Table

R = TypeVar("R")


def encode(record: Any) -> Item:
    """A dataclass record as a store item (enums stay `str` subclasses, which every backend writes as text)."""
    return dataclasses.asdict(record)


def _encode_value(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [_encode_value(v) for v in value]
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode_value(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _decode_value(inner[0], value) if len(inner) == 1 else value
    if origin is list:
        (element,) = typing.get_args(hint) or (Any,)
        return [_decode_value(element, v) for v in value]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return decode(hint, value)
    if isinstance(hint, type) and issubclass(hint, Enum):
        return hint(value)
    return value


def decode(cls: type[R], item: Item) -> R:
    hints = _hints(cls)
    return cls(**{f.name: _decode_value(hints[f.name], item[f.name])
                  for f in dataclasses.fields(cls) if f.name in item})  # type: ignore[arg-type]


@dataclass(frozen=True)
class TypedPage(Generic[R]):
    records: list[R]
    next_key: str | None


class Records(Generic[R]):
    """One table of the store, as records of `record_type`."""

    def __init__(self, store: Store, table: Table, record_type: type[R]):
        self.store = store
        self.table = table
        self.record_type = record_type
        self._fields = {f.name for f in dataclasses.fields(record_type)}  # type: ignore[arg-type]
        unknown = set(table.indexed) - self._fields
        if unknown:
            raise TypeError(f"table {table.name} indexes {unknown}, which {record_type.__name__} lacks")

    def _checked(self, fields: Item | None) -> Item | None:
        unknown = set(fields or ()) - self._fields
        if unknown:
            raise TypeError(f"{self.record_type.__name__} has no fields {sorted(unknown)}")
        return fields

    def _decoded(self, item: Item | None) -> R | None:
        return None if item is None else decode(self.record_type, item)

    def create(self, record: R) -> None:
        self.store.create(self.table, encode(record))

    def get(self, record_id: str) -> R | None:
        return self._decoded(self.store.get(self.table, record_id))

    def find(self, field: str, value: Any) -> R | None:
        """The newest record whose indexed `field` is `value`."""
        return self._decoded(self.store.find(self.table, field, value))

    def update(self, record_id: str, changes: Item, expect: Item | None = None) -> R | None:
        """Change fields if `expect` holds (see Store.update); the new record, or None."""
        changes = {key: _encode_value(value) for key, value in self._checked(changes).items()}  # type: ignore[union-attr]
        return self._decoded(self.store.update(self.table, record_id, changes, self._checked(expect)))

    def page(self, where: dict[str, list[Any]] | None = None, limit: int = 100, after: str | None = None,
             oldest_first: bool = False) -> TypedPage[R]:
        page: Page = self.store.list(self.table, where=self._checked(where), limit=limit, after=after,
                                     oldest_first=oldest_first)
        return TypedPage([decode(self.record_type, item) for item in page.items], page.next_key)

    def iterate(self, where: dict[str, list[Any]] | None = None, oldest_first: bool = False) -> Iterator[R]:
        """Every matching record, read page by page."""
        after = None
        while True:
            page = self.page(where, limit=1000, after=after, oldest_first=oldest_first)
            yield from page.records
            if not page.next_key:
                return
            after = page.next_key

    def all(self, where: dict[str, list[Any]] | None = None, oldest_first: bool = False) -> list[R]:
        return list(self.iterate(where, oldest_first))

    def count(self, where: dict[str, list[Any]] | None = None, before: R | None = None) -> int:
        return self.store.count(self.table, where=self._checked(where),
                                before=None if before is None else encode(before))

    def with_keywords(self, keywords: list[str]) -> list[R]:
        """The records that have at least one of these keywords (`Table.keywords`), newest first."""
        items = sorted(self.store.with_keywords(self.table, list(keywords)),
                       key=lambda item: (item["created"], item["id"]), reverse=True)
        return [decode(self.record_type, item) for item in items]

    def key_after(self, record: R) -> str:
        return self.store.key_after(self.table, encode(record))

    def delete(self, record_id: str) -> None:
        self.store.delete(self.table, record_id)
