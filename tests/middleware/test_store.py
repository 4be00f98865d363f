"""The table stores: SQLite on a real file (and its migrations), DynamoDB in moto; conditional updates under
races, the unique field, paging, counts, values round-tripping. Store-level tests run on both."""

from __future__ import annotations

import base64
import json
import sqlite3
import threading

import pytest

from aws_extension.middleware.records import (
    CHECKPOINTS,
    ENDPOINTS,
    JOBS,
    Checkpoint,
    CheckpointFile,
    Endpoint,
    InferenceJob,
    name_keyword,
    sha256_keyword,
    word_keyword,
)
from aws_extension.middleware.store.base import DuplicateRecord, Store
from aws_extension.middleware.store.sqlite import KEYWORDS_VERSION, MIGRATIONS, SQLiteStore
from aws_extension.middleware.store.typed import Records, encode
from aws_extension.vocabulary import CheckpointStatus, DeploymentStatus, EndpointStatus, JobStatus
from tests.aws_stack import atomic_moto_dynamodb_writes


def _record(i: int, **extra) -> InferenceJob:
    fields = {"status": JobStatus.INPROGRESS, "task": "txt2img", "endpoint": "ep", **extra}
    return InferenceJob(id=f"id-{i:04d}", created=1000.0 + i, start_time="", params_key="", output_path="", **fields)


def _jobs(path) -> Records[InferenceJob]:
    return Records(SQLiteStore(path), JOBS, InferenceJob)


@pytest.fixture(params=["sqlite", "dynamodb"])
def store(request, tmp_path, monkeypatch):
    if request.param == "sqlite":
        sqlite_store = SQLiteStore(tmp_path / "s.sqlite3")
        yield sqlite_store
        sqlite_store.close()
        return
    moto = pytest.importorskip("moto")
    from aws_extension.middleware.store.dynamodb import DynamoDBStore

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    _atomic_moto_writes(monkeypatch)
    with moto.mock_aws():
        dynamodb_store = DynamoDBStore("test")
        dynamodb_store.ensure_tables()
        yield dynamodb_store
        dynamodb_store.close()


def _atomic_moto_writes(monkeypatch) -> None:
    for owner, name, locked in atomic_moto_dynamodb_writes():
        monkeypatch.setattr(owner, name, locked)


@pytest.fixture
def jobs(store: Store) -> Records[InferenceJob]:
    return Records(store, JOBS, InferenceJob)


def _endpoint(i: int, name: str | None) -> Endpoint:
    return Endpoint(id=f"ep-{i}", endpoint_name=name or "gone", deployment_status=DeploymentStatus.INPROGRESS,
                    endpoint_status=EndpointStatus.CREATING, created=2000.0 + i, start_time="",
                    instance_type="ml.g5.xlarge", initial_instance_count=1, min_instance_number=1,
                    max_instance_number=1, live_name=name)


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


def test_conditional_update_has_one_winner(jobs):
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


def test_fields_are_checked_against_the_record(jobs):
    jobs.create(_record(1))
    with pytest.raises(TypeError, match="no fields"):
        jobs.update("id-0001", {"progres": 1.0})  # a typo must not write a new key
    with pytest.raises(TypeError, match="no fields"):
        jobs.update("id-0001", {"progress": 1.0}, expect={"state": "x"})
    with pytest.raises(ValueError, match="cannot filter"):
        jobs.page({"error": ["x"]})  # a field, but not an indexed one


def test_paging_both_ways_and_counts(jobs):
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


def test_the_unique_field_is_unique_while_set_and_free_again_once_cleared(store):
    endpoints = Records(store, ENDPOINTS, Endpoint)
    endpoints.create(_endpoint(1, "alpha"))
    with pytest.raises(DuplicateRecord):
        endpoints.create(_endpoint(2, "alpha"))
    assert endpoints.get("ep-2") is None
    endpoints.create(_endpoint(3, None))
    endpoints.create(_endpoint(4, None))  # None is not a value: any number of items may lack one
    assert endpoints.find("live_name", "alpha").id == "ep-1"
    assert endpoints.update("ep-1", {"live_name": None}, expect={"live_name": "other"}) is None
    cleared = endpoints.update("ep-1", {"live_name": None, "endpoint_status": EndpointStatus.DELETED},
                               expect={"live_name": "alpha"})
    assert cleared.live_name is None and cleared.endpoint_status is EndpointStatus.DELETED
    assert endpoints.find("live_name", "alpha") is None
    endpoints.create(_endpoint(2, "alpha"))  # the name is free again
    assert endpoints.find("live_name", "alpha").id == "ep-2"
    endpoints.delete("ep-2")
    endpoints.create(_endpoint(5, "alpha"))  # and after a delete
    # nothing but the records in lists and counts (DynamoDB keeps markers in the same table)
    assert sorted(e.id for e in endpoints.all()) == ["ep-1", "ep-3", "ep-4", "ep-5"]
    assert endpoints.count() == 4 and endpoints.count({"live_name": ["alpha"]}) == 1
    assert [e.id for e in endpoints.all({"endpoint_status": [EndpointStatus.CREATING]})] == ["ep-5", "ep-4", "ep-3"]


def test_paging_with_a_filter_on_two_values_and_another_filter(jobs):
    for i in range(30):
        jobs.create(_record(i, endpoint=("a", "b", "c")[i % 3], queue_state="queued" if i % 2 else None))
    where = {"endpoint": ["a", "b"], "queue_state": ["queued"]}
    expected = [f"id-{i:04d}" for i in reversed(range(30)) if i % 3 != 2 and i % 2]
    for oldest_first in (False, True):
        seen, after = [], None
        while True:
            page = jobs.page(where, limit=3, after=after, oldest_first=oldest_first)
            seen += [r.id for r in page.records]
            if not page.next_key:
                break
            after = page.next_key
        assert seen == (expected[::-1] if oldest_first else expected)
    assert jobs.count(where) == len(expected) == 10
    assert jobs.count(where, before=jobs.get("id-0013")) == 4  # 1, 3, 7, 9
    assert jobs.count({"endpoint": ["a", "b"]}, before=jobs.get("id-0003")) == 2  # 0, 1
    assert jobs.count({"endpoint": ["missing"]}) == 0 and jobs.page({"endpoint": ["missing"]}).records == []


def test_none_valued_indexed_fields_are_out_of_that_index_only(jobs):
    jobs.create(_record(1, queue_state="queued"))
    jobs.create(_record(2))
    assert [r.id for r in jobs.all({"queue_state": ["queued"]})] == ["id-0001"]
    assert [r.id for r in jobs.all()] == ["id-0002", "id-0001"] and jobs.count() == 2
    jobs.update("id-0001", {"queue_state": None})
    assert jobs.all({"queue_state": ["queued"]}) == [] and jobs.count({"queue_state": ["queued"]}) == 0
    assert jobs.count() == 2 and jobs.get("id-0001").queue_state is None
    assert jobs.update("id-0001", {"progress": 0.5}, expect={"queue_state": None}).progress == 0.5
    assert jobs.update("id-0001", {"progress": 0.7}, expect={"queue_state": ("running", None)}).progress == 0.7
    assert jobs.update("id-0001", {"progress": 0.9}, expect={"queue_state": ["running", "queued"]}) is None
    assert jobs.find("queue_state", "queued") is None
    jobs.update("id-0002", {"queue_state": "queued"})
    assert jobs.find("queue_state", "queued").id == "id-0002"


def test_values_round_trip_exactly(store):
    item = {"id": "x", "created": 1000.0, "status": "inprogress", "n": 3, "f": 0.1, "big": 2**53 + 1,
            "neg": -2.5, "whole": 2.0, "empty": "", "none": None, "flag": True,
            "nested": {"a": [1, 1.0, {"b": 3.0, "c": None}], "d": {}, "e": []}}
    store.create(JOBS, item)
    got = store.get(JOBS, "x")
    assert got == item
    assert [type(got[k]) for k in ("created", "n", "whole", "big")] == [float, int, float, int]
    assert type(got["nested"]["a"][1]) is float and type(got["nested"]["a"][2]["b"]) is float
    assert type(got["nested"]["a"][0]) is int
    changed = store.update(JOBS, "x", {"whole": 5, "n": 4.0, "nested": {"t": 1.0}})
    assert changed == store.get(JOBS, "x") == {**item, "whole": 5, "n": 4.0, "nested": {"t": 1.0}}
    assert [type(changed[k]) for k in ("whole", "n")] == [int, float]
    assert type(changed["nested"]["t"]) is float
    assert store.list(JOBS).items == [changed]


def test_a_forged_after_key_is_refused(jobs):
    jobs.create(_record(1))
    for forged in ("not base64 at all!", "bm9wZQ==", base64.urlsafe_b64encode(b'["x", 1]').decode(),
                   base64.urlsafe_b64encode(b'[1.0]').decode()):
        with pytest.raises(ValueError, match="not a key this server gave out"):
            jobs.page(after=forged)


def test_racing_creates_of_one_unique_value_have_one_winner(store):
    endpoints = Records(store, ENDPOINTS, Endpoint)
    barrier, wins = threading.Barrier(6), []

    def create(i: int) -> None:
        barrier.wait()
        try:
            endpoints.create(_endpoint(i, "shared"))
            wins.append(i)
        except DuplicateRecord:
            pass

    threads = [threading.Thread(target=create, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and endpoints.find("live_name", "shared").id == f"ep-{wins[0]}"
    assert endpoints.count() == 1


@pytest.mark.parametrize("store", ["dynamodb"], indirect=True)
def test_dynamodb_queries_never_scan_and_read_on_past_a_sparse_filter(store):
    jobs = Records(store, JOBS, InferenceJob)
    for i in range(40):
        jobs.create(_record(i, task="img2img" if i % 10 == 0 else "txt2img"))
    calls: list[str] = []
    store.client.meta.events.register("before-call.dynamodb", lambda model, **_: calls.append(model.name))
    # the endpoint's GSI serves it; 4 of its 40 items match the task filter, found over growing pages
    page = jobs.page({"endpoint": ["ep"], "task": ["img2img"]}, limit=3)
    assert [r.id for r in page.records] == ["id-0030", "id-0020", "id-0010"] and page.next_key
    assert [r.id for r in jobs.page({"endpoint": ["ep"], "task": ["img2img"]}, limit=3,
                                    after=page.next_key).records] == ["id-0000"]
    assert jobs.count({"task": ["txt2img"]}) == 36
    assert jobs.find("endpoint", "ep").id == "id-0039"
    assert set(calls) == {"Query"}
    store.ensure_tables()  # idempotent; and a table that lacks a GSI gets it
    store.client.delete_table(TableName=store.table_name(JOBS))
    store.client.create_table(TableName=store.table_name(JOBS), BillingMode="PAY_PER_REQUEST",
                              KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                              AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}])
    store.ensure_tables([JOBS])
    described = store.client.describe_table(TableName=store.table_name(JOBS))["Table"]
    assert {i["IndexName"] for i in described["GlobalSecondaryIndexes"]} == {
        "by_all", "by_status", "by_task", "by_endpoint", "by_queue_state", "by_owner", "by_live_owner", "by_fair_slot",
        "by_status_endpoint"}


# -- pairs of filters (`Table.pairs`) and keywords (`Table.keywords`) ----------------------------------------------
def _expected(records: list[InferenceJob], statuses: list[str], endpoints: list[str]) -> list[str]:
    return [r.id for r in sorted(records, key=lambda r: (r.created, r.id), reverse=True)
            if r.status in statuses and r.endpoint in endpoints]


def test_a_pair_of_filters_pages_counts_and_follows_updates(jobs):
    made = [_record(i, endpoint=f"ep{i % 3}", status=[JobStatus.INPROGRESS, JobStatus.SUCCEED, JobStatus.CREATED][i % 4 % 3])
            for i in range(30)]
    for record in made:
        jobs.create(record)
    live, names = [JobStatus.INPROGRESS, JobStatus.CREATED], ["ep0", "ep2"]
    where = {"status": live, "endpoint": names}
    want = _expected(made, live, names)
    assert [r.id for r in jobs.all(where)] == want
    pages, after = [], None
    while True:  # pages of 2: the bound's own item is never repeated nor lost
        page = jobs.page(where, limit=2, after=after)
        pages += [r.id for r in page.records]
        if not page.next_key:
            break
        after = page.next_key
    assert pages == want
    assert [r.id for r in jobs.all(where, oldest_first=True)] == list(reversed(want))
    middle = jobs.get(want[3])
    assert jobs.count(where) == len(want) and jobs.count(where, before=middle) == len(want) - 4
    # a status change moves the item in the pair's index; so does a change of the second field (read first)
    jobs.update(want[0], {"status": JobStatus.SUCCEED})
    jobs.update(want[1], {"endpoint": "ep1"}, expect={"status": live})
    assert [r.id for r in jobs.all(where)] == want[2:]
    assert jobs.get(want[1]).endpoint == "ep1" and jobs.update(want[1], {"endpoint": "x"}, expect={"status": "failed"}) is None
    assert jobs.all({"status": [JobStatus.SUCCEED], "endpoint": [made[int(want[0][3:])].endpoint]})[0].id == want[0]


def _checkpoint(i: int, files: list[str], status=CheckpointStatus.ACTIVE, kind="Lora") -> Checkpoint:
    return Checkpoint(id=f"ck-{i}", type=kind, status=status, created=3000.0 + i, source="upload", s3_location="",
                      files=[CheckpointFile(filename=f, key=f"k/{f}", sha256=f"{i:02d}{n}" * 4) for n, f in enumerate(files)])


def test_keywords_follow_the_items(store):
    checkpoints = Records(store, CHECKPOINTS, Checkpoint)
    checkpoints.create(_checkpoint(1, ["a.safetensors", "sub/b.safetensors"]))
    checkpoints.create(_checkpoint(2, ["a.safetensors"], status=CheckpointStatus.INITIALED))
    checkpoints.create(_checkpoint(3, ["bad-hands v2.pt"], kind="embeddings"))

    def found(*words: str) -> set[str]:
        return {r.id for r in checkpoints.with_keywords(list(words))}

    assert found(name_keyword("Lora", "a.safetensors")) == {"ck-1"}  # Initialed: not looked up
    assert found(name_keyword("Lora", "sub/b"), word_keyword("bad-hands")) == {"ck-1", "ck-3"}
    assert found(sha256_keyword("Lora", "010" * 4), name_keyword("VAE", "a")) == {"ck-1"}
    assert found() == set() and found("nothing") == set()
    assert checkpoints.update("ck-2", {"status": CheckpointStatus.ACTIVE}, expect={"status": CheckpointStatus.INITIALED})
    assert found(name_keyword("Lora", "a")) == {"ck-1", "ck-2"}
    checkpoints.update("ck-1", {"error": "a field that is no input"})
    checkpoints.update("ck-1", {"files": [CheckpointFile(filename="c.safetensors", key="k/c")]})
    assert found(name_keyword("Lora", "a"), name_keyword("Lora", "sub/b")) == {"ck-2"}
    assert found(name_keyword("Lora", "c")) == {"ck-1"}
    checkpoints.update("ck-2", {"status": CheckpointStatus.DISABLED})
    checkpoints.delete("ck-1")
    assert found(name_keyword("Lora", "a"), name_keyword("Lora", "c")) == set()
    assert checkpoints.all() and {r.id for r in checkpoints.all()} == {"ck-2", "ck-3"}  # no posting item is listed
    assert checkpoints.count() == 2 and checkpoints.get("keyword#" + name_keyword("Lora", "a")) is None


def test_racing_keyword_updates_end_with_the_winners_keywords(store):
    checkpoints = Records(store, CHECKPOINTS, Checkpoint)
    checkpoints.create(_checkpoint(1, ["a.safetensors"], status=CheckpointStatus.INITIALED))
    barrier, wins = threading.Barrier(4), []

    def rename(n: int) -> None:
        barrier.wait()
        if checkpoints.update("ck-1", {"status": CheckpointStatus.ACTIVE,
                                       "files": [CheckpointFile(filename=f"n{n}.safetensors", key="k")]},
                              expect={"status": CheckpointStatus.INITIALED}):
            wins.append(n)

    threads = [threading.Thread(target=rename, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert [r.id for r in checkpoints.with_keywords([name_keyword("Lora", f"n{n}") for n in range(4)])] == ["ck-1"]
    assert checkpoints.with_keywords([name_keyword("Lora", f"n{n}") for n in range(4) if n != wins[0]]) == []


def test_the_keywords_migration_fills_them_for_existing_items(tmp_path):
    path = tmp_path / "store.sqlite3"
    old = sqlite3.connect(path)
    for script in MIGRATIONS[:KEYWORDS_VERSION - 1]:
        for statement in filter(str.strip, script.split(";")):
            old.execute(statement)
    old.execute(f"PRAGMA user_version = {KEYWORDS_VERSION - 1}")
    item = encode(_checkpoint(1, ["a.safetensors"]))
    old.execute("INSERT INTO records (tbl, id, status, kind, name, created, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
                ("checkpoints", "ck-1", "Active", "Lora", item["sha256"], item["created"], json.dumps(item)))
    endpoint = encode(_endpoint(1, "live"))
    old.execute("INSERT INTO records (tbl, id, status, kind, name, created, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
                ("endpoints", "ep-1", "inprogress", "Creating", "live", endpoint["created"], json.dumps(endpoint)))
    old.commit()
    old.close()
    store = SQLiteStore(path)
    assert [r.id for r in Records(store, CHECKPOINTS, Checkpoint).with_keywords([name_keyword("Lora", "a")])] == ["ck-1"]
    assert Records(store, ENDPOINTS, Endpoint).all({"endpoint_name": ["live"]})[0].id == "ep-1"
    store.close()


@pytest.mark.parametrize("store", ["dynamodb"], indirect=True)
def test_dynamodb_reads_only_what_a_pair_or_keywords_answer(store):
    """Items read (ScannedCount, BatchGetItem answers) do not grow with the items that do not match."""
    jobs, checkpoints = Records(store, JOBS, InferenceJob), Records(store, CHECKPOINTS, Checkpoint)
    read: list[tuple[str, int]] = []

    def count(model, parsed, **_):
        read.append((model.name, parsed.get("ScannedCount", sum(len(v) for v in parsed.get("Responses", {}).values()))))

    store.client.meta.events.register("after-call.dynamodb", count)
    made = 0
    for size in (5, 40):
        while made < size:
            jobs.create(_record(made, status=JobStatus.SUCCEED))
            checkpoints.create(_checkpoint(made, [f"other-{made}.safetensors"]))
            made += 1
        jobs.create(_record(1000 + size, status=JobStatus.INPROGRESS))
        read.clear()
        live = jobs.all({"status": [JobStatus.INPROGRESS, JobStatus.CANCELLING], "endpoint": ["ep"]})
        found = checkpoints.with_keywords([name_keyword("Lora", "other-3"), name_keyword("Lora", "none")])
        assert len(live) == (1 if size == 5 else 2) and [r.id for r in found] == ["ck-3"]
        assert read == [("Query", len(live)), ("Query", 0), ("BatchGetItem", 1), ("BatchGetItem", 1)], size
