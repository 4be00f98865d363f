"""The SQLite table store on a real file: migrations, conditional updates under races, paging, counts."""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest

from aws_extension.middleware.store.base import DuplicateRecord, list_all
from aws_extension.middleware.store.sqlite import MIGRATIONS, SQLiteStore


def _record(i: int, **extra) -> dict:
    return {"id": f"id-{i:04d}", "status": "inprogress", "kind": "txt2img", "name": "ep", "created": 1000.0 + i,
            **extra}


def test_migrates_an_old_file_and_refuses_a_newer_one(tmp_path):
    path = tmp_path / "store.sqlite3"
    old = sqlite3.connect(path)
    for statement in filter(str.strip, MIGRATIONS[0].split(";")):
        old.execute(statement)
    old.execute("PRAGMA user_version = 1")
    old.execute("INSERT INTO records (tbl, id, status, kind, name, created, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
                ("jobs", "a", "inprogress", "txt2img", "ep", 1.0, json.dumps({**_record(1), "id": "a",
                                                                                "queue_state": "queued"})))
    old.commit()
    old.close()
    store = SQLiteStore(path)
    assert store.schema_version == len(MIGRATIONS)
    assert store.count("jobs", filters={"queue_state": ["queued"]}) == 1  # the new column was filled in
    store.close()
    newer = sqlite3.connect(path)
    newer.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    newer.commit()
    newer.close()
    with pytest.raises(RuntimeError, match="newer than this program"):
        SQLiteStore(path)


def test_conditional_update_has_one_winner(tmp_path):
    store = SQLiteStore(tmp_path / "s.sqlite3")
    store.create("jobs", _record(1, queue_state="queued"))
    barrier, wins = threading.Barrier(8), []

    def claim(worker: int) -> None:
        barrier.wait()
        if store.update("jobs", "id-0001", {"queue_state": "running", "worker": worker}, expect={"queue_state": "queued"}):
            wins.append(worker)

    threads = [threading.Thread(target=claim, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and store.get("jobs", "id-0001")["worker"] == wins[0]
    assert store.update("jobs", "missing", {"x": 1}) is None
    with pytest.raises(DuplicateRecord):
        store.create("jobs", _record(1))


def test_paging_both_ways_and_counts(tmp_path):
    store = SQLiteStore(tmp_path / "s.sqlite3")
    for i in range(25):
        store.create("jobs", _record(i, queue_state="queued" if i % 2 else None))
    newest = list_all(store, "jobs")
    assert [r["id"] for r in newest] == [f"id-{i:04d}" for i in reversed(range(25))]
    oldest_queued = list_all(store, "jobs", {"queue_state": ["queued"]}, oldest_first=True)
    assert [r["id"] for r in oldest_queued] == [f"id-{i:04d}" for i in range(1, 25, 2)]
    page = store.list("jobs", limit=10)
    second = store.list("jobs", limit=10, after=page.next_key)
    assert [r["id"] for r in page.records + second.records] == [r["id"] for r in newest[:20]]
    assert store.list("jobs", limit=10, after=store.key_after(newest[9])).records == second.records
    assert store.count("jobs", filters={"queue_state": ["queued"]}) == 12
    assert store.count("jobs", filters={"queue_state": ["queued"]}, before=store.get("jobs", "id-0007")) == 3
    with pytest.raises(ValueError, match="cannot filter"):
        store.list("jobs", filters={"data": ["x"]})
