"""The table store on DynamoDB (the AWS backend): the `Store` port of `base.py`, one DynamoDB table per `Table`.

Layout of a table `<prefix>-<table.name>` (on-demand capacity, partition key `id`):

- An item holds the record's own fields as they are (explicit nulls included) plus internal attributes,
  all starting with `_` (record fields never do; `get` and lists strip them):
  `_sk` = `<created as 16 ordered hex digits>#<id>`, the sort key of every GSI: it sorts exactly like
  SQLite's (created, id), with no rounding of `created`; `_all` = "1", the partition key of the `by_all`
  GSI (unfiltered lists and counts); `_i_<field>` = the value of an indexed field, the partition key of
  its `by_<field>` GSI, present only while the value is a non-empty string (GSI keys can be neither null
  nor empty), so an item whose field is None is absent from that index but still in `by_all`; and
  `_f_<field>`, the JSON list of paths inside the field that hold integral floats (DynamoDB keeps
  numbers without their type: 1000.0 would come back as 1000).
- The unique field: a marker item `{"id": "unique#<field>#<value>", "_owner": <item id>}` in the same
  table, written in one transaction with the item (both under `attribute_not_exists(id)`), moved or
  deleted in one transaction with the update or delete that changes the value. Markers have none of the
  GSI keys, so no index, list or count sees them, and `get`/`update` treat them as missing.
- `after` keys are `(created, id)` (opaque base64 JSON, like SQLite's): a page goes on with the key
  condition `_sk < key` (`>` oldest first) on whatever GSI serves the filters, so one key works for
  every value of a multi-value filter (one query per value, merged by `_sk`), and `key_after(item)` needs
  no query. No call scans.

GSI reads are eventually consistent on AWS (the unique marker and `get` are not): a list, count or find
right after a write may not show it yet.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import json
import math
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import boto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from aws_extension.middleware.records import (
    API_KEYS,
    AUDIT,
    CHECKPOINTS,
    DATASETS,
    ENDPOINTS,
    JOBS,
    ROLES,
    TRAINING_JOBS,
    TRAINING_MODELS,
    USERS,
)
from aws_extension.middleware.store.base import DuplicateRecord, Item, Page, Table

ALL_TABLES = (CHECKPOINTS, DATASETS, ENDPOINTS, JOBS, TRAINING_MODELS, TRAINING_JOBS, USERS, API_KEYS, ROLES, AUDIT)

# Which GSI serves a query that filters on several fields (a field, or a pair of `Table.pairs` when both
# are filtered; the other filters filter its pages). First the fields whose values are transient (a job's
# queue_state is cleared when it ends, so the queue's queries read the jobs waiting, not the endpoint's
# history), then the pairs, then single fields; by default the pairs, then the order of `table.indexed`.
PREFERRED: dict[str, tuple[str | tuple[str, str], ...]] = {
    "inference_jobs": ("fair_slot", "live_owner", "queue_state", "owner", ("status", "endpoint"), "endpoint", "status",
                       "task"),
    "checkpoints": ("sha256", ("status", "type"), "type", "status"),  # content lookups read only that content
    "endpoints": ("live_name", "endpoint_name", "endpoint_status", "deployment_status"),
}
TRANSACTION_ITEMS = 100  # DynamoDB's most writes in one TransactWriteItems

_SERIALIZER = TypeSerializer()
_DESERIALIZER = TypeDeserializer()
_ALL_INDEX = "by_all"


def _sort_key(created: float, item_id: str) -> str:
    """`created` as 16 hex digits that sort like the float (the IEEE bits, sign-flipped), then the id."""
    bits = struct.unpack(">Q", struct.pack(">d", float(created)))[0]
    bits = bits ^ 0xFFFF_FFFF_FFFF_FFFF if bits >> 63 else bits | 1 << 63
    return f"{bits:016x}#{item_id}"


def _encode_key(created: float, item_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created, item_id]).encode()).decode()


def _decode_key(key: str) -> tuple[float, str]:
    try:
        created, item_id = json.loads(base64.urlsafe_b64decode(key.encode()))
    except (ValueError, TypeError) as exc:
        raise ValueError("last_key is not a key this server gave out") from exc
    if isinstance(created, bool) or not isinstance(created, (int, float)) or not isinstance(item_id, str) \
            or not math.isfinite(created):
        raise ValueError("last_key is not a key this server gave out")
    return float(created), item_id


def _indexable(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _pair_prefix(value: str) -> str:
    """The start of a pair index's sort key for `value`: its JSON string (no JSON string is the start of
    another one, so one value's keys are one contiguous range), then `#`."""
    return json.dumps(value) + "#"


# After a pair prefix come `_sk`'s 16 hex digits: every key of a value is below prefix + "~".
_PAIR_END = "~"


# -- values: JSON-like Python ⇄ DynamoDB attribute values ---------------------------------------------------
def _to_dynamo(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))  # repr round-trips exactly
    if isinstance(value, dict):
        return {key: _to_dynamo(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_dynamo(v) for v in value]
    return value


def _from_dynamo(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {key: _from_dynamo(v) for key, v in value.items()}
    if isinstance(value, list):
        return [_from_dynamo(v) for v in value]
    return value


def _serialized(value: Any) -> dict[str, Any]:
    return _SERIALIZER.serialize(_to_dynamo(value))


def _float_paths(value: Any, path: tuple[Any, ...] = ()) -> list[list[Any]]:
    """Where inside `value` integral floats are (the ones DynamoDB would give back as ints)."""
    if isinstance(value, float) and value.is_integer():
        return [list(path)]
    if isinstance(value, dict):
        return [p for key, v in value.items() for p in _float_paths(v, (*path, key))]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in _float_paths(v, (*path, i))]
    return []


def _floated(value: Any, path: list[Any]) -> Any:
    if not path:
        return float(value)
    value[path[0]] = _floated(value[path[0]], path[1:])
    return value


def _decoded(raw: dict[str, Any] | None) -> Item | None:
    """The record item of a DynamoDB item (None for a missing item, a unique marker or a posting item)."""
    if raw is None or "_owner" in raw or "_kind" in raw:
        return None
    item: Item = {}
    for key, attribute in raw.items():
        if key.startswith("_"):
            continue
        value = _from_dynamo(_DESERIALIZER.deserialize(attribute))
        for path in json.loads(raw[f"_f_{key}"]["S"]) if f"_f_{key}" in raw else ():
            value = _floated(value, path)
        item[key] = value
    return item


class _Expression:
    """Placeholders for one request's expressions (`#n0`, `:v0`, ...)."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.values: dict[str, Any] = {}

    def name(self, attribute: str) -> str:
        placeholder = f"#n{len(self.names)}"
        self.names[placeholder] = attribute
        return placeholder

    def value(self, value: Any) -> str:
        placeholder = f":v{len(self.values)}"
        self.values[placeholder] = _serialized(value)
        return placeholder

    def equals(self, field: str, wanted: Any) -> str:
        """`field` has the value `wanted` (a tuple/list: one of them; None: absent or null)."""
        if not isinstance(wanted, (tuple, list)):
            wanted = [wanted]
        name, options = self.name(field), []
        if None in wanted:
            options.append(f"attribute_not_exists({name}) OR attribute_type({name}, {self.value('NULL')})")
        present = [v for v in wanted if v is not None]
        if present:
            options.append(f"{name} IN ({', '.join(self.value(v) for v in present)})")
        return "(" + " OR ".join(options or ["attribute_exists(id) AND attribute_not_exists(id)"]) + ")"

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"ExpressionAttributeNames": self.names}
        if self.values:
            params["ExpressionAttributeValues"] = self.values
        return params


@dataclass(frozen=True)
class _Plan:
    """How a list or count runs: queries of one GSI, one per key (its partition key's value and, on a pair
    index, the second field's value), the other filters on their pages."""

    index: str
    key_attribute: str
    keys: list[tuple[str, str | None]]
    filters: dict[str, list[Any]]
    sort_attribute: str = "_sk"  # a pair index's: `_p_<second field>` = its value's prefix + `_sk`


def _error_code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


class DynamoDBStore:
    def __init__(self, table_prefix: str, client: Any = None):
        self.table_prefix = table_prefix
        # The standard configuration (AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, credentials...) picks the service.
        self.client = client if client is not None else boto3.client("dynamodb")

    def table_name(self, table: Table) -> str:
        return f"{self.table_prefix}-{table.name}"

    # -- tables ------------------------------------------------------------------------------------------
    @staticmethod
    def _index(name: str, key_attribute: str) -> dict[str, Any]:
        return {"IndexName": name, "Projection": {"ProjectionType": "ALL"},
                "KeySchema": [{"AttributeName": key_attribute, "KeyType": "HASH"},
                              {"AttributeName": "_sk", "KeyType": "RANGE"}]}

    def _indexes(self, table: Table) -> dict[str, dict[str, Any]]:
        indexes = {_ALL_INDEX: self._index(_ALL_INDEX, "_all")}
        indexes.update({f"by_{field}": self._index(f"by_{field}", f"_i_{field}") for field in table.indexed})
        for first, second in table.pairs:
            index = self._index(f"by_{first}_{second}", f"_i_{first}")
            index["KeySchema"][1]["AttributeName"] = f"_p_{second}"
            indexes[index["IndexName"]] = index
        return indexes

    @staticmethod
    def _attributes(indexes: Iterable[dict[str, Any]]) -> list[dict[str, str]]:
        names = {"id", "_sk"} | {key["AttributeName"] for index in indexes for key in index["KeySchema"]}
        return [{"AttributeName": name, "AttributeType": "S"} for name in sorted(names)]

    def ensure_tables(self, tables: Iterable[Table] = ALL_TABLES, poll_s: float = 5.0) -> None:
        """Create the tables and GSIs that are missing, and wait until they are active."""
        for table in tables:
            name, indexes = self.table_name(table), self._indexes(table)
            try:
                existing = self.client.describe_table(TableName=name)["Table"]
            except ClientError as exc:
                if _error_code(exc) != "ResourceNotFoundException":
                    raise
                self.client.create_table(
                    TableName=name, BillingMode="PAY_PER_REQUEST",
                    KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                    AttributeDefinitions=self._attributes(indexes.values()),
                    GlobalSecondaryIndexes=list(indexes.values()))
                self._wait_active(name, poll_s)
                continue
            have = {index["IndexName"] for index in existing.get("GlobalSecondaryIndexes", [])}
            for index_name in indexes.keys() - have:  # UpdateTable adds one GSI at a time
                self.client.update_table(
                    TableName=name, AttributeDefinitions=self._attributes([indexes[index_name]]),
                    GlobalSecondaryIndexUpdates=[{"Create": indexes[index_name]}])
                self._wait_active(name, poll_s)

    def _wait_active(self, name: str, poll_s: float) -> None:
        while True:
            described = self.client.describe_table(TableName=name)["Table"]
            statuses = [described["TableStatus"]] + [
                index.get("IndexStatus", "ACTIVE") for index in described.get("GlobalSecondaryIndexes", [])]
            if all(status == "ACTIVE" for status in statuses):
                return
            time.sleep(poll_s)

    # -- items -------------------------------------------------------------------------------------------
    @staticmethod
    def _internal(table: Table, field: str, value: Any) -> dict[str, Any]:
        """The internal attributes that go with `field` = `value`: (name → value), None meaning remove."""
        attributes: dict[str, Any] = {}
        if field in table.indexed:
            attributes[f"_i_{field}"] = value if _indexable(value) else None
        paths = _float_paths(value)
        attributes[f"_f_{field}"] = json.dumps(paths) if paths else None
        return attributes

    @staticmethod
    def _derived(table: Table, item: Item) -> dict[str, Any]:
        """The attributes made from several fields of the whole item (None: remove): each pair's sort key,
        and the item's keywords (`_kw`, a JSON list: what `with_keywords` checks the posting items against)."""
        attributes: dict[str, Any] = {}
        for _, second in table.pairs:
            value = item.get(second)
            attributes[f"_p_{second}"] = (_pair_prefix(value) + _sort_key(item["created"], item["id"])
                                          if _indexable(value) else None)
        if table.keywords:
            attributes["_kw"] = json.dumps(table.keywords(item))
        return attributes

    def _encoded(self, table: Table, item: Item) -> dict[str, Any]:
        if any(key.startswith("_") for key in item):
            raise ValueError("item fields may not start with '_' (the store's own attributes do)")
        attributes: dict[str, Any] = {**item, "_all": "1", "_sk": _sort_key(item["created"], item["id"])}
        for field, value in item.items():
            attributes.update(self._internal(table, field, value))
        attributes.update(self._derived(table, item))
        return {key: _serialized(value) for key, value in attributes.items() if value is not None or key in item}

    @staticmethod
    def _posting_id(word: str) -> str:
        return f"keyword#{word}"

    def _posting_writes(self, table: Table, item_id: str, old: list[str], new: list[str]) -> list[dict[str, Any]]:
        """The transaction items that take `item_id` out of the posting items of the words it loses and into
        those of the words it gains. A posting item (`keyword#<word>`) holds the ids of the items having the
        word in a string set (`_ids`); ADD and DELETE change it without reading it."""
        writes = []
        for words, action in ((dict.fromkeys(w for w in old if w not in new), "DELETE"),
                              (dict.fromkeys(w for w in new if w not in old), "ADD")):
            writes += [{"Update": {
                "TableName": self.table_name(table), "Key": self._key(self._posting_id(word)),
                "UpdateExpression": f"SET #k = :k {action} #i :i",
                "ExpressionAttributeNames": {"#k": "_kind", "#i": "_ids"},
                "ExpressionAttributeValues": {":k": {"S": "keyword"}, ":i": {"SS": [item_id]}}}} for word in words]
        return writes

    @staticmethod
    def _marker_id(table: Table, value: str) -> str:
        return f"unique#{table.unique}#{value}"

    def _key(self, item_id: str) -> dict[str, Any]:
        return {"id": {"S": item_id}}

    def create(self, table: Table, item: Item) -> None:
        name, attributes = self.table_name(table), self._encoded(table, item)
        unique = item.get(table.unique) if table.unique else None
        new = {"TableName": name, "Item": attributes, "ConditionExpression": "attribute_not_exists(id)"}
        writes = self._posting_writes(table, item["id"], [], json.loads(attributes["_kw"]["S"])) if table.keywords else []
        if _indexable(unique):
            marker = {"id": {"S": self._marker_id(table, unique)}, "_owner": {"S": item["id"]}}
            writes.insert(0, {"Put": {"TableName": name, "Item": marker, "ConditionExpression": "attribute_not_exists(id)"}})
        try:
            if writes:
                self.client.transact_write_items(TransactItems=self._checked_size([{"Put": new}, *writes]))
            else:
                self.client.put_item(**new)
        except ClientError as exc:
            if _error_code(exc) in ("ConditionalCheckFailedException", "TransactionCanceledException"):
                raise DuplicateRecord(f"{table.name} item {item['id']} or its {table.unique} exists") from exc
            raise

    def _get_raw(self, table: Table, item_id: str) -> dict[str, Any] | None:
        return self.client.get_item(TableName=self.table_name(table), Key=self._key(item_id),
                                    ConsistentRead=True).get("Item")

    def get(self, table: Table, item_id: str) -> Item | None:
        return _decoded(self._get_raw(table, item_id))

    def _changed(self, table: Table, item_id: str, changes: Item) -> dict[str, Any]:
        """The attributes an update sets (None: removes, for the internal ones; a field keeps its null)."""
        if "id" in changes or any(key.startswith("_") for key in changes):
            raise ValueError("an update may not change the id or the store's own attributes")
        attributes: dict[str, Any] = {"_all": "1"}  # an UpdateExpression may not be empty
        for field, value in changes.items():
            attributes.update(self._internal(table, field, value))
        if "created" in changes:
            attributes["_sk"] = _sort_key(changes["created"], item_id)
        return attributes

    def _update_request(self, table: Table, item_id: str, changes: Item, expect: Item | None,
                        derived: dict[str, Any] | None = None, version: int | None = None) -> dict[str, Any]:
        """An UpdateItem's parameters: the changes with their internal attributes, under `expect`; with
        `derived` (an update that read the item first), those attributes too, under the version read."""
        expression = _Expression()
        internal = {**self._changed(table, item_id, changes), **(derived or {})}
        sets = [f"{expression.name(k)} = {expression.value(v)}" for k, v in changes.items()]
        sets += [f"{expression.name(k)} = {expression.value(v)}" for k, v in internal.items() if v is not None]
        removes = [expression.name(k) for k, v in internal.items() if v is None]
        update = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        # attribute_exists(id): no upsert; no _owner or _kind: a unique marker or posting item is not an item
        conditions = ["attribute_exists(id)", f"attribute_not_exists({expression.name('_owner')})",
                      f"attribute_not_exists({expression.name('_kind')})"]
        conditions += [expression.equals(field, wanted) for field, wanted in (expect or {}).items()]
        if derived is not None:
            conditions.append(self._version_condition(expression, version))
        return {"TableName": self.table_name(table), "Key": self._key(item_id), "UpdateExpression": update,
                "ConditionExpression": " AND ".join(conditions), **expression.params()}

    @staticmethod
    def _version_condition(expression: _Expression, version: int | None) -> str:
        """The item is as it was read: its `_v`, which every update that reads first increments."""
        name = expression.name("_v")
        return f"attribute_not_exists({name})" if version is None else f"{name} = {expression.value(version)}"

    @staticmethod
    def _reads_first(table: Table, changes: Item) -> bool:
        """Whether an update needs the item's other fields: it moves the unique marker, changes the keywords'
        inputs, or changes what a pair's sort key is made of (DynamoDB cannot build a string from attributes)."""
        return bool((table.unique and table.unique in changes)
                    or (table.keywords and set(changes) & set(table.keyword_inputs))
                    or any(second in changes or "created" in changes for _, second in table.pairs))

    def update(self, table: Table, item_id: str, changes: Item, expect: Item | None = None) -> Item | None:
        if self._reads_first(table, changes):
            return self._update_read_first(table, item_id, changes, expect)
        try:
            answer = self.client.update_item(**self._update_request(table, item_id, changes, expect),
                                             ReturnValues="ALL_NEW")
        except ClientError as exc:
            if _error_code(exc) == "ConditionalCheckFailedException":
                return None
            raise
        return _decoded(answer["Attributes"])

    def _marker_writes(self, table: Table, item_id: str, old: Any, new: Any) -> list[dict[str, Any]]:
        """The transaction items that move the unique marker from `old` to `new` (either may be None)."""
        name, writes = self.table_name(table), []
        if _indexable(old) and old != new:
            writes.append({"Delete": {
                "TableName": name, "Key": self._key(self._marker_id(table, old)),
                "ConditionExpression": "attribute_not_exists(id) OR #o = :o",
                "ExpressionAttributeNames": {"#o": "_owner"}, "ExpressionAttributeValues": {":o": {"S": item_id}}}})
        if _indexable(new) and old != new:
            writes.append({"Put": {
                "TableName": name, "Item": {"id": {"S": self._marker_id(table, new)}, "_owner": {"S": item_id}},
                "ConditionExpression": "attribute_not_exists(id)"}})
        return writes

    @staticmethod
    def _checked_size(writes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if len(writes) > TRANSACTION_ITEMS:
            raise ValueError(f"one write would change {len(writes)} items; DynamoDB allows {TRANSACTION_ITEMS} "
                             "(fewer files per checkpoint)")
        return writes

    def _transact(self, writes: list[dict[str, Any]]) -> list[str] | None:
        """Run a transaction: None when it committed, else each write's cancellation code."""
        try:
            self.client.transact_write_items(TransactItems=self._checked_size(writes))
            return None
        except ClientError as exc:
            if _error_code(exc) != "TransactionCanceledException":
                raise
            return [reason.get("Code", "") for reason in exc.response.get("CancellationReasons", [])]

    @staticmethod
    def _version(raw: dict[str, Any]) -> int | None:
        return int(raw["_v"]["N"]) if "_v" in raw else None

    @staticmethod
    def _keywords_of(raw: dict[str, Any]) -> list[str]:
        return json.loads(raw["_kw"]["S"]) if "_kw" in raw else []

    def _update_read_first(self, table: Table, item_id: str, changes: Item, expect: Item | None) -> Item | None:
        """An update that needs the whole item (`_reads_first`): read it, write the changes with what they
        derive (the unique marker moved, the posting items, the pairs' sort keys) in one transaction under
        the version read; read again if another writer changed the item meanwhile."""
        while True:
            raw = self._get_raw(table, item_id)
            current = _decoded(raw)
            if raw is None or current is None or not _matches(current, expect or {}):
                return None
            new, version = {**current, **changes}, self._version(raw)
            derived = {**self._derived(table, new), "_v": (version or 0) + 1}
            writes = []
            if table.unique and table.unique in changes:
                writes += self._marker_writes(table, item_id, current.get(table.unique), changes[table.unique])
            if table.keywords:
                writes += self._posting_writes(table, item_id, self._keywords_of(raw), json.loads(derived["_kw"]))
            request = self._update_request(table, item_id, changes, expect, derived, version)
            if not writes:
                try:
                    return _decoded(self.client.update_item(**request, ReturnValues="ALL_NEW")["Attributes"])
                except ClientError as exc:
                    if _error_code(exc) != "ConditionalCheckFailedException":
                        raise
                    continue
            codes = self._transact([{"Update": request}, *writes])
            if codes is None:
                return self.get(table, item_id)
            if codes[0] != "ConditionalCheckFailed" and "ConditionalCheckFailed" in codes[1:]:
                raise DuplicateRecord(f"{table.name} with {table.unique} {changes.get(table.unique or '')!r} exists")

    # -- queries -----------------------------------------------------------------------------------------
    def _plan(self, table: Table, where: dict[str, list[Any]] | None) -> _Plan:
        active: dict[str, list[Any]] = {}
        for field, values in (where or {}).items():
            if field not in table.indexed:
                raise ValueError(f"cannot filter {table.name} on {field}")
            if values:
                active[field] = list(dict.fromkeys(values))
        if not active:
            return _Plan(_ALL_INDEX, "_all", [("1", None)], {})
        choice = next(c for c in PREFERRED.get(table.name, (*table.pairs, *table.indexed))
                      if (set(c) <= set(active) if isinstance(c, tuple) else c in active))
        if isinstance(choice, tuple):
            first, second = choice
            firsts, seconds = active.pop(first), active.pop(second)
            keys = [(a, _pair_prefix(b)) for a in firsts if _indexable(a) for b in seconds if _indexable(b)]
            return _Plan(f"by_{first}_{second}", f"_i_{first}", keys, active, f"_p_{second}")
        keys = [(value, None) for value in active.pop(choice) if _indexable(value)]  # no item has another key
        return _Plan(f"by_{choice}", f"_i_{choice}", keys, active)

    def _query(self, table: Table, plan: _Plan, key: tuple[str, str | None],
               bound: tuple[str, str] | None, exact: str | None = None) -> dict[str, Any]:
        """A Query's parameters for one key of the plan; `bound` = (operator, `_sk` value). On a pair index
        the sort key's range is the second value's prefix, up to or from the bound, inclusive (BETWEEN is
        the only way to give both ends): the bound's own item is left out by `_stream` and `count`."""
        expression = _Expression()
        value, prefix = key
        condition = f"{expression.name(plan.key_attribute)} = {expression.value(value)}"
        if exact is not None:  # one sort key value
            condition += f" AND {expression.name(plan.sort_attribute)} = {expression.value(exact)}"
        elif prefix is not None:
            low, high = prefix, prefix + _PAIR_END
            if bound:
                low, high = (prefix, prefix + bound[1]) if bound[0] == "<" else (prefix + bound[1], high)
            condition += (f" AND {expression.name(plan.sort_attribute)} BETWEEN {expression.value(low)} "
                          f"AND {expression.value(high)}")
        elif bound:
            condition += f" AND {expression.name('_sk')} {bound[0]} {expression.value(bound[1])}"
        request = {"TableName": self.table_name(table), "IndexName": plan.index,
                   "KeyConditionExpression": condition}
        if plan.filters:
            request["FilterExpression"] = " AND ".join(
                expression.equals(field, values) for field, values in plan.filters.items())
        return {**request, **expression.params()}

    def _pages(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every page of a Query. `Limit` counts items read before the filter, so with a filter the pages
        grow (twice as many each time) until enough items match or the index ends."""
        while True:
            answer = self.client.query(**request)
            yield answer
            if "LastEvaluatedKey" not in answer:
                return
            request = {**request, "ExclusiveStartKey": answer["LastEvaluatedKey"]}
            if "Limit" in request and "FilterExpression" in request:
                request["Limit"] = max(request["Limit"], min(request["Limit"] * 2, 1000))

    def _stream(self, request: dict[str, Any], skip: str | None = None) -> Iterator[dict[str, Any]]:
        for answer in self._pages(request):
            yield from (raw for raw in answer["Items"] if raw["_sk"]["S"] != skip)

    def list(self, table: Table, *, where: dict[str, list[Any]] | None = None, limit: int = 100,
             after: str | None = None, oldest_first: bool = False) -> Page:
        plan = self._plan(table, where)
        bound = (">" if oldest_first else "<", _sort_key(*_decode_key(after))) if after else None
        extra = 1 if bound and plan.sort_attribute != "_sk" else 0  # the bound's own item may come first
        streams = [self._stream({**self._query(table, plan, key, bound), "ScanIndexForward": oldest_first,
                                 "Limit": limit + 1 + extra}, bound[1] if extra and bound else None)
                   for key in plan.keys]
        # each value's query is in `_sk` order: merging them gives the page, reading only what it needs
        merged = heapq.merge(*streams, key=lambda raw: raw["_sk"]["S"], reverse=not oldest_first)
        rows = list(itertools.islice(merged, limit + 1))
        items = [_decoded(raw) or {} for raw in rows[:limit]]  # GSIs hold no markers: never {}
        last = items[-1] if items else None
        next_key = _encode_key(last["created"], last["id"]) if len(rows) > limit and last else None
        return Page(items, next_key)

    def count(self, table: Table, *, where: dict[str, list[Any]] | None = None,
              before: Item | None = None) -> int:
        plan = self._plan(table, where)
        bound = ("<", _sort_key(before["created"], before["id"])) if before else None
        total = sum(answer["Count"] for key in plan.keys
                    for answer in self._pages({**self._query(table, plan, key, bound), "Select": "COUNT"}))
        if bound and plan.sort_attribute != "_sk":  # BETWEEN counted the bound's own item if it matches
            total -= sum(answer["Count"] for key in plan.keys for answer in self._pages(
                {**self._query(table, plan, key, None, exact=f"{key[1]}{bound[1]}"), "Select": "COUNT"}))
        return total

    def find(self, table: Table, field: str, value: Any) -> Item | None:
        if field not in table.indexed:
            raise ValueError(f"cannot filter {table.name} on {field}")
        if not _indexable(value):
            return None
        plan = _Plan(f"by_{field}", f"_i_{field}", [(value, None)], {})
        answer = self.client.query(**self._query(table, plan, (value, None), None), ScanIndexForward=False, Limit=1)
        return _decoded(answer["Items"][0]) if answer["Items"] else None

    def _batch_get(self, table: Table, ids: list[str]) -> Iterator[dict[str, Any]]:
        """The items with these ids that exist, read consistently (BatchGetItem: 100 keys a call)."""
        name = self.table_name(table)
        for start in range(0, len(ids), 100):
            request: dict[str, Any] = {name: {"Keys": [self._key(i) for i in ids[start:start + 100]],
                                              "ConsistentRead": True}}
            while request:
                answer = self.client.batch_get_item(RequestItems=request)
                yield from answer["Responses"].get(name, [])
                request = answer.get("UnprocessedKeys") or {}
                if request:
                    time.sleep(0.05)  # throttled: DynamoDB's advice is to back off before asking again

    def with_keywords(self, table: Table, keywords: list[str]) -> list[Item]:
        """Two BatchGetItems (per 100 keys): the words' posting items, then the items they name, kept only
        if they have one of the words now (their `_kw`), so a posting item never needs to be exact."""
        wanted = set(keywords)
        ids: set[str] = set()
        for posting in self._batch_get(table, [self._posting_id(word) for word in dict.fromkeys(keywords)]):
            ids.update(posting.get("_ids", {}).get("SS", []))
        return [item for raw in self._batch_get(table, sorted(ids))
                if wanted & set(self._keywords_of(raw)) and (item := _decoded(raw)) is not None]

    def key_after(self, table: Table, item: Item) -> str:
        return _encode_key(item["created"], item["id"])

    def delete(self, table: Table, item_id: str) -> None:
        if not table.unique and not table.keywords:
            self.client.delete_item(TableName=self.table_name(table), Key=self._key(item_id))
            return
        while True:  # the item, its marker and its posting entries together, under the version read
            raw = self._get_raw(table, item_id)
            current = _decoded(raw)
            if raw is None or current is None:
                return
            expression = _Expression()
            delete = {"TableName": self.table_name(table), "Key": self._key(item_id),
                      "ConditionExpression": self._version_condition(expression, self._version(raw)),
                      **expression.params()}
            writes = self._posting_writes(table, item_id, self._keywords_of(raw), [])
            if table.unique:
                writes += self._marker_writes(table, item_id, current.get(table.unique), None)
            if not writes:
                try:
                    self.client.delete_item(**delete)
                    return
                except ClientError as exc:
                    if _error_code(exc) != "ConditionalCheckFailedException":
                        raise
                    continue
            if self._transact([{"Delete": delete}, *writes]) is None:
                return

    def close(self) -> None:
        self.client.close()


def _matches(item: Item, expect: Item) -> bool:
    for key, wanted in expect.items():
        value = item.get(key)
        if value not in (wanted if isinstance(wanted, (tuple, list)) else [wanted]):
            return False
    return True
