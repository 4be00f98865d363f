"""The SQLite table store on a real file: migrations, conditional updates under races, paging, counts."""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest

from aws_extension.middleware.records import JOBS, InferenceJob
from aws_extension.middleware.store.base import DuplicateRecord
from aws_extension.middleware.store.sqlite import MIGRATIONS, SQLiteStore
from aws_extension.middleware.store.typed import Records
from aws_extension.vocabulary import JobStatus


def _record(i: int, **extra) -> InferenceJob:
    return InferenceJob(id=f"id-{i:04d}", status=JobStatus.INPROGRESS, task="txt2img", endpoint="ep",
                        created=1000.0 + i, start_time="", params_key="", output_path="", **extra)


def _jobs(path) -> Records[InferenceJob]:
    return Records(SQLiteStore(path), JOBS, InferenceJob)


def test_migrates_an_old_file_to_the_records_field_names_and_refuses_a_newer_one(tmp_path):
    path = tmp_path / "store.sqlite3"
    old = sqlite3.connect(path)
    for statement in filter(str.strip, MIGRATIONS[0].split(";")):
        old.execute(statement)
    old.execute("PRAGMA user_version = 1")
    old_job = {"id": "a", "status": "inprogress", "kind": "txt2img", "name": "ep", "created": 1.0,
               "startTime": "2026-01-01 00:00:00.000000", "queue_state": "queued", "params_key": "k",
               "output_path": "o", "models": [{"type": "Lora", "name": "l.safetensors", "sha256": "0" * 64, "key": "x"}]}
    old.execute("INSERT INTO records (tbl, id, status, kind, name, created, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
                ("inference_jobs", "a", "inprogress", "txt2img", "ep", 1.0, json.dumps(old_job)))
    old.commit()
    old.close()
    jobs = _jobs(path)
    assert jobs.store.schema_version == len(MIGRATIONS)
    assert jobs.count({"queue_state": ["queued"], "endpoint": ["ep"]}) == 1  # the new column was filled in
    job = jobs.get("a")
    assert (job.task, job.endpoint, job.start_time, job.status) == ("txt2img", "ep", old_job["startTime"], "inprogress")
    assert job.status is JobStatus.INPROGRESS and job.models[0].name == "l.safetensors"  # enums, nested records
    jobs.store.close()
    newer = sqlite3.connect(path)
    newer.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    newer.commit()
    newer.close()
    with pytest.raises(RuntimeError, match="newer than this program"):
        SQLiteStore(path)


def test_conditional_update_has_one_winner(tmp_path):
    jobs = _jobs(tmp_path / "s.sqlite3")
    jobs.create(_record(1, queue_state="queued"))
    barrier, wins = threading.Barrier(8), []

    def claim(worker: int) -> None:
        barrier.wait()
        if jobs.update("id-0001", {"queue_state": "running", "worker": str(worker)}, expect={"queue_state": "queued"}):
            wins.append(str(worker))

    threads = [threading.Thread(target=claim, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and jobs.get("id-0001").worker == wins[0]
    assert jobs.update("missing", {"progress": 1.0}) is None
    with pytest.raises(DuplicateRecord):
        jobs.create(_record(1))


def test_fields_are_checked_against_the_record(tmp_path):
    jobs = _jobs(tmp_path / "s.sqlite3")
    jobs.create(_record(1))
    with pytest.raises(TypeError, match="no fields"):
        jobs.update("id-0001", {"progres": 1.0})  # a typo must not write a new key
    with pytest.raises(TypeError, match="no fields"):
        jobs.update("id-0001", {"progress": 1.0}, expect={"state": "x"})
    with pytest.raises(ValueError, match="cannot filter"):
        jobs.page({"error": ["x"]})  # a field, but not an indexed one


def test_paging_both_ways_and_counts(tmp_path):
    jobs = _jobs(tmp_path / "s.sqlite3")
    for i in range(25):
        jobs.create(_record(i, queue_state="queued" if i % 2 else None))
    newest = jobs.all()
    assert [r.id for r in newest] == [f"id-{i:04d}" for i in reversed(range(25))]
    oldest_queued = jobs.all({"queue_state": ["queued"]}, oldest_first=True)
    assert [r.id for r in oldest_queued] == [f"id-{i:04d}" for i in range(1, 25, 2)]
    page = jobs.page(limit=10)
    second = jobs.page(limit=10, after=page.next_key)
    assert [r.id for r in page.records + second.records] == [r.id for r in newest[:20]]
    assert jobs.page(limit=10, after=jobs.key_after(newest[9])).records == second.records
    assert jobs.count({"queue_state": ["queued"]}) == 12
    assert jobs.count({"queue_state": ["queued"]}, before=jobs.get("id-0007")) == 3
