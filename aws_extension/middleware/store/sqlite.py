"""The embedded table store: one SQLite file in WAL mode.

All tables share one `records` table: `tbl`, `id`, the item as JSON in `data`, `created`, and generic
index columns (`INDEX_COLUMNS`) that each table's indexed fields map to (`COLUMNS`). Every state change
is one transaction; `update` runs under BEGIN IMMEDIATE (SQLite's write lock), so reading the conditions and writing the change cannot interleave with another writer.
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aws_extension.middleware.blobs.base import StorageFull
from aws_extension.middleware.records import CHECKPOINTS
from aws_extension.middleware.store.base import DuplicateRecord, Item, Page, Table

# Each table's indexed fields → the index column holding them.
COLUMNS: dict[str, dict[str, str]] = {
    "checkpoints": {"status": "status", "type": "kind", "sha256": "name"},
    "datasets": {"status": "status", "owner": "owner"},
    "endpoints": {"deployment_status": "status", "endpoint_status": "kind", "live_name": "name",
                  "endpoint_name": "queue_state"},
    "inference_jobs": {"status": "status", "task": "kind", "endpoint": "name", "queue_state": "queue_state",
                       "owner": "owner", "live_owner": "live_owner", "fair_slot": "fair_slot"},
    "training_models": {"status": "status", "model_type": "kind", "owner": "owner"},
    "training_jobs": {"status": "status", "train_type": "kind", "owner": "owner"},
    "users": {"status": "status"},
    "api_keys": {"username": "name"},
    "roles": {},
    "audit": {"actor": "name"},
}
INDEX_COLUMNS = ("status", "kind", "name", "queue_state", "owner", "live_owner", "fair_slot")


def _renamed(table: str, renames: dict[str, str]) -> str:
    """A statement that renames JSON keys of a table's items (old → new)."""
    removed = ", ".join(f"'$.{old}'" for old in renames)
    added = ", ".join(f"'$.{new}', json_extract(data, '$.{old}')" for old, new in renames.items())
    return f"UPDATE records SET data = json_set(json_remove(data, {removed}), {added}) WHERE tbl = '{table}'"


# Each entry moves the schema one version up; never edit a released entry, append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE records (
        tbl TEXT NOT NULL,
        id TEXT NOT NULL,
        status TEXT,
        kind TEXT,
        name TEXT,
        created REAL NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (tbl, id)
    );
    CREATE INDEX records_by_created ON records (tbl, created DESC, id DESC);
    CREATE INDEX records_by_status ON records (tbl, status, created DESC, id DESC);
    CREATE INDEX records_by_kind ON records (tbl, kind, created DESC, id DESC);
    CREATE INDEX records_by_name ON records (tbl, name, created DESC);
    """,
    # The inference queue: claiming the oldest queued job of an endpoint and counting the jobs ahead of
    # one are index lookups, not scans of every job in progress.
    """
    ALTER TABLE records ADD COLUMN queue_state TEXT;
    UPDATE records SET queue_state = json_extract(data, '$.queue_state');
    CREATE INDEX records_by_queue ON records (tbl, name, queue_state, created, id);
    """,
    # Items in the records' own field names (the index columns keep their values).
    ";".join([
        _renamed("checkpoints", {"kind": "type"}),
        _renamed("endpoints", {"status": "deployment_status", "kind": "endpoint_status", "name": "live_name",
                               "startTime": "start_time", "endTime": "end_time"}),
        _renamed("inference_jobs", {"kind": "task", "name": "endpoint", "startTime": "start_time",
                                    "completeTime": "complete_time", "sagemakerRaw": "worker_answer"}),
    ]),
    # Checkpoints found by content: their sha256 in the `name` column.
    "UPDATE records SET name = json_extract(data, '$.sha256') WHERE tbl = 'checkpoints'",
    # Lists by two fields (`Table.pairs`: jobs by status and endpoint, checkpoints by status and type), the
    # endpoints by name, and the items' keywords (`Table.keywords`, filled by `_fill_keywords`).
    """
    CREATE INDEX records_by_status_name ON records (tbl, status, name, created DESC, id DESC);
    CREATE INDEX records_by_status_kind ON records (tbl, status, kind, created DESC, id DESC);
    UPDATE records SET queue_state = json_extract(data, '$.endpoint_name') WHERE tbl = 'endpoints';
    CREATE INDEX records_by_queue_state ON records (tbl, queue_state, created DESC, id DESC);
    CREATE TABLE keywords (tbl TEXT NOT NULL, keyword TEXT NOT NULL, id TEXT NOT NULL,
                           PRIMARY KEY (tbl, keyword, id));
    CREATE INDEX keywords_by_id ON keywords (tbl, id);
    """,
    # Owners: records written before them are the bootstrap administrator's ("admin"); `live_owner` is a
    # job's owner while it has not ended, `fair_slot` its round-robin place while queued (services/queue.py).
    """
    ALTER TABLE records ADD COLUMN owner TEXT;
    ALTER TABLE records ADD COLUMN live_owner TEXT;
    ALTER TABLE records ADD COLUMN fair_slot TEXT;
    UPDATE records SET data = json_set(data, '$.owner', 'admin') WHERE json_extract(data, '$.owner') IS NULL
        AND tbl IN ('checkpoints', 'datasets', 'endpoints', 'inference_jobs', 'training_models', 'training_jobs');
    UPDATE records SET owner = 'admin' WHERE tbl IN ('datasets', 'inference_jobs', 'training_models', 'training_jobs');
    UPDATE records SET data = json_set(data, '$.live_owner', 'admin'), live_owner = 'admin'
        WHERE tbl = 'inference_jobs' AND status IN ('created', 'inprogress', 'cancelling');
    CREATE INDEX records_by_owner ON records (tbl, owner, created DESC, id DESC);
    CREATE INDEX records_by_live_owner ON records (tbl, live_owner, created, id);
    CREATE INDEX records_by_fair_slot ON records (tbl, fair_slot, created, id)
    """,
]
KEYWORDS_VERSION = 5  # the migration that adds the keywords table: items written before it get theirs then
KEYWORD_TABLES = (CHECKPOINTS,)  # the tables with keywords at that migration (a later one fills its own)


# A JSON escape of a UTF-16 surrogate: how a stored string could hold a lone one (the door refuses them now;
# an item written before, or by another program, must not make every list that shows it fail).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _valid_text(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {_valid_text(k): _valid_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_valid_text(v) for v in value]
    return value


def _load(data: str) -> Item:
    """An item from its JSON; a lone surrogate in a string becomes U+FFFD."""
    item = json.loads(data)
    return _valid_text(item) if _SURROGATE_ESCAPE.search(data) else item


def _matches(item: Item, expect: Item) -> bool:
    for key, wanted in expect.items():
        value = item.get(key)
        if isinstance(wanted, (tuple, list)):
            if value not in wanted:
                return False
        elif value != wanted:
            return False
    return True


def _encode_key(created: float, item_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created, item_id]).encode()).decode()


def _decode_key(key: str) -> tuple[float, str]:
    try:
        created, item_id = json.loads(base64.urlsafe_b64decode(key.encode()))
        return float(created), str(item_id)
    except (ValueError, TypeError) as exc:
        raise ValueError("last_key is not a key this server gave out") from exc


class SQLiteStore:
    def __init__(self, path: Path):
        self.path = path
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._migrate()

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under SQLite's write lock; rolled back on any error. A full disk is
        StorageFull (the API's 507), as for the blob store of the same data dir."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError) and (
                    getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)):
                raise StorageFull() from exc
            raise

    def _migrate(self) -> None:
        with self._transaction() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise RuntimeError(f"{self.path} has schema version {version}, newer than this program "
                                   f"({len(MIGRATIONS)}); upgrade sd-aws")
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    conn.execute(statement)
                if number == KEYWORDS_VERSION:
                    self._fill_keywords(conn)
                conn.execute(f"PRAGMA user_version = {number}")

    def _fill_keywords(self, conn: sqlite3.Connection) -> None:
        for table in KEYWORD_TABLES:
            if table.keywords:
                for item_id, data in conn.execute("SELECT id, data FROM records WHERE tbl = ?", (table.name,)).fetchall():
                    self._set_keywords(conn, table, item_id, _load(data))

    @staticmethod
    def _set_keywords(conn: sqlite3.Connection, table: Table, item_id: str, item: Item | None) -> None:
        """The item's keywords, in the write transaction that changes it (None: it is deleted)."""
        if not table.keywords:
            return
        conn.execute("DELETE FROM keywords WHERE tbl = ? AND id = ?", (table.name, item_id))
        conn.executemany("INSERT INTO keywords (tbl, keyword, id) VALUES (?, ?, ?)",
                         [(table.name, word, item_id) for word in dict.fromkeys(table.keywords(item))] if item else [])

    @property
    def schema_version(self) -> int:
        return self._connect().execute("PRAGMA user_version").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    @staticmethod
    def _column(table: Table, field: str) -> str:
        column = COLUMNS[table.name].get(field)
        if column is None or field not in table.indexed:
            raise ValueError(f"cannot filter {table.name} on {field}")
        return column

    @staticmethod
    def _index_values(table: Table, item: Item) -> list[Any]:
        by_column = {column: item.get(field) for field, column in COLUMNS[table.name].items()}
        return [by_column.get(column) for column in INDEX_COLUMNS]

    def create(self, table: Table, item: Item) -> None:
        try:
            with self._transaction() as conn:
                unique = table.unique and item.get(table.unique)
                if unique and conn.execute(
                        f"SELECT 1 FROM records WHERE tbl = ? AND {self._column(table, table.unique)} = ?",  # noqa: S608 - fixed columns
                        (table.name, unique)).fetchone():
                    raise DuplicateRecord(f"{table.name} with {table.unique} {unique!r} exists")
                conn.execute(
                    f"INSERT INTO records (tbl, id, {', '.join(INDEX_COLUMNS)}, created, data) "  # noqa: S608
                    f"VALUES (?, ?, {', '.join('?' * len(INDEX_COLUMNS))}, ?, ?)",
                    (table.name, item["id"], *self._index_values(table, item), item["created"], json.dumps(item)))
                self._set_keywords(conn, table, item["id"], item)
        except sqlite3.IntegrityError as exc:
            raise DuplicateRecord(f"{table.name} item {item['id']} exists") from exc

    def get(self, table: Table, item_id: str) -> Item | None:
        row = self._connect().execute(
            "SELECT data FROM records WHERE tbl = ? AND id = ?", (table.name, item_id)).fetchone()
        return _load(row[0]) if row else None

    def find(self, table: Table, field: str, value: Any) -> Item | None:
        row = self._connect().execute(
            f"SELECT data FROM records WHERE tbl = ? AND {self._column(table, field)} = ? "  # noqa: S608
            "ORDER BY created DESC LIMIT 1", (table.name, value)).fetchone()
        return _load(row[0]) if row else None

    def update(self, table: Table, item_id: str, changes: Item, expect: Item | None = None) -> Item | None:
        with self._transaction() as conn:
            row = conn.execute("SELECT data FROM records WHERE tbl = ? AND id = ?", (table.name, item_id)).fetchone()
            if row is None or (expect and not _matches(_load(row[0]), expect)):
                return None
            item = {**_load(row[0]), **changes}
            conn.execute(
                f"UPDATE records SET {''.join(f'{c} = ?, ' for c in INDEX_COLUMNS)}created = ?, data = ? "  # noqa: S608
                "WHERE tbl = ? AND id = ?",
                (*self._index_values(table, item), item["created"], json.dumps(item), table.name, item_id))
            if set(changes) & set(table.keyword_inputs):
                self._set_keywords(conn, table, item_id, item)
            return item

    def _where(self, table: Table, where: dict[str, list[Any]] | None) -> tuple[list[str], list[Any]]:
        clauses, args = ["tbl = ?"], [table.name]
        for field, values in (where or {}).items():
            column = self._column(table, field)
            if values:
                clauses.append(f"{column} IN ({', '.join('?' * len(values))})")
                args.extend(values)
        return clauses, args

    def list(self, table: Table, *, where: dict[str, list[Any]] | None = None, limit: int = 100,
             after: str | None = None, oldest_first: bool = False) -> Page:
        clauses, args = self._where(table, where)
        if after:
            created, item_id = _decode_key(after)
            op = ">" if oldest_first else "<"
            clauses.append(f"(created {op} ? OR (created = ? AND id {op} ?))")
            args.extend([created, created, item_id])
        order = "ASC" if oldest_first else "DESC"
        rows = self._connect().execute(
            f"SELECT data, created, id FROM records WHERE {' AND '.join(clauses)} "  # noqa: S608 - fixed columns
            f"ORDER BY created {order}, id {order} LIMIT ?", (*args, limit + 1)).fetchall()
        items = [_load(r[0]) for r in rows[:limit]]
        next_key = _encode_key(rows[limit - 1][1], rows[limit - 1][2]) if len(rows) > limit else None
        return Page(items, next_key)

    def count(self, table: Table, *, where: dict[str, list[Any]] | None = None,
              before: Item | None = None) -> int:
        clauses, args = self._where(table, where)
        if before:
            clauses.append("(created < ? OR (created = ? AND id < ?))")
            args.extend([before["created"], before["created"], before["id"]])
        return self._connect().execute(
            f"SELECT COUNT(*) FROM records WHERE {' AND '.join(clauses)}", args).fetchone()[0]  # noqa: S608

    def with_keywords(self, table: Table, keywords: list[str]) -> list[Item]:
        if not keywords:
            return []
        rows = self._connect().execute(
            "SELECT data FROM records WHERE tbl = ? AND id IN (SELECT id FROM keywords WHERE tbl = ? AND "  # noqa: S608
            f"keyword IN ({', '.join('?' * len(keywords))}))", (table.name, table.name, *keywords)).fetchall()
        return [_load(row[0]) for row in rows]

    def key_after(self, table: Table, item: Item) -> str:
        return _encode_key(item["created"], item["id"])

    def delete(self, table: Table, item_id: str) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM records WHERE tbl = ? AND id = ?", (table.name, item_id))
            self._set_keywords(conn, table, item_id, None)
