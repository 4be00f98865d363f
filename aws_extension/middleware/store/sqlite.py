"""The embedded table store: one SQLite file in WAL mode.

Every state change is one transaction; `update` runs under BEGIN IMMEDIATE (SQLite's write lock), so
reading the conditions and writing the change cannot interleave with another writer.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from aws_extension.middleware.store.base import INDEXED_FIELDS, DuplicateRecord, Page

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
]


def _matches(record: dict[str, Any], expect: dict[str, Any]) -> bool:
    for key, wanted in expect.items():
        value = record.get(key)
        if isinstance(wanted, (tuple, list)):
            if value not in wanted:
                return False
        elif value != wanted:
            return False
    return True


def _encode_key(created: float, record_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created, record_id]).encode()).decode()


def _decode_key(key: str) -> tuple[float, str]:
    try:
        created, record_id = json.loads(base64.urlsafe_b64decode(key.encode()))
        return float(created), str(record_id)
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
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _migrate(self) -> None:
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise RuntimeError(f"{self.path} has schema version {version}, newer than this program "
                                   f"({len(MIGRATIONS)}); upgrade sd-aws")
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

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
    def _row_values(table: str, record: dict[str, Any]) -> tuple:
        return (table, record["id"], *(record.get(f) for f in INDEXED_FIELDS), json.dumps(record))

    def create(self, table: str, record: dict[str, Any], *, unique_name: bool = False) -> None:
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            if unique_name and conn.execute(
                    "SELECT 1 FROM records WHERE tbl = ? AND name = ?", (table, record.get("name"))).fetchone():
                raise DuplicateRecord(f"{table} named {record.get('name')!r} exists")
            conn.execute(
                "INSERT INTO records (tbl, id, status, kind, name, created, queue_state, data) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                self._row_values(table, record))
            conn.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            conn.execute("ROLLBACK")
            raise DuplicateRecord(f"{table} record {record['id']} exists") from exc
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def get(self, table: str, record_id: str) -> dict[str, Any] | None:
        row = self._connect().execute(
            "SELECT data FROM records WHERE tbl = ? AND id = ?", (table, record_id)).fetchone()
        return json.loads(row[0]) if row else None

    def get_by_name(self, table: str, name: str) -> dict[str, Any] | None:
        row = self._connect().execute(
            "SELECT data FROM records WHERE tbl = ? AND name = ? ORDER BY created DESC LIMIT 1",
            (table, name)).fetchone()
        return json.loads(row[0]) if row else None

    def update(self, table: str, record_id: str, changes: dict[str, Any],
               expect: dict[str, Any] | None = None) -> dict[str, Any] | None:
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT data FROM records WHERE tbl = ? AND id = ?", (table, record_id)).fetchone()
            if row is None or (expect and not _matches(json.loads(row[0]), expect)):
                conn.execute("ROLLBACK")
                return None
            record = {**json.loads(row[0]), **changes}
            conn.execute(
                "UPDATE records SET status = ?, kind = ?, name = ?, created = ?, queue_state = ?, data = ? "
                "WHERE tbl = ? AND id = ?",
                (*(record.get(f) for f in INDEXED_FIELDS), json.dumps(record), table, record_id))
            conn.execute("COMMIT")
            return record
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _where(table: str, filters: dict[str, list[str]] | None) -> tuple[list[str], list[Any]]:
        where, args = ["tbl = ?"], [table]
        for field_name, values in (filters or {}).items():
            if field_name not in INDEXED_FIELDS:
                raise ValueError(f"cannot filter on {field_name}")
            if values:
                where.append(f"{field_name} IN ({', '.join('?' * len(values))})")
                args.extend(values)
        return where, args

    def list(self, table: str, *, filters: dict[str, list[str]] | None = None, limit: int = 100,
             after: str | None = None, oldest_first: bool = False) -> Page:
        where, args = self._where(table, filters)
        if after:
            created, record_id = _decode_key(after)
            op = ">" if oldest_first else "<"
            where.append(f"(created {op} ? OR (created = ? AND id {op} ?))")
            args.extend([created, created, record_id])
        order = "ASC" if oldest_first else "DESC"
        rows = self._connect().execute(
            f"SELECT data, created, id FROM records WHERE {' AND '.join(where)} "  # noqa: S608 - fixed columns
            f"ORDER BY created {order}, id {order} LIMIT ?", (*args, limit + 1)).fetchall()
        records = [json.loads(r[0]) for r in rows[:limit]]
        next_key = _encode_key(rows[limit - 1][1], rows[limit - 1][2]) if len(rows) > limit else None
        return Page(records, next_key)

    def count(self, table: str, *, filters: dict[str, list[str]] | None = None,
              before: dict[str, Any] | None = None) -> int:
        where, args = self._where(table, filters)
        if before:
            where.append("(created < ? OR (created = ? AND id < ?))")
            args.extend([before["created"], before["created"], before["id"]])
        return self._connect().execute(
            f"SELECT COUNT(*) FROM records WHERE {' AND '.join(where)}", args).fetchone()[0]  # noqa: S608

    def key_after(self, record: dict[str, Any]) -> str:
        return _encode_key(record["created"], record["id"])

    def delete(self, table: str, record_id: str) -> None:
        conn = self._connect()
        conn.execute("DELETE FROM records WHERE tbl = ? AND id = ?", (table, record_id))
