"""Ownership (issue 14, parts 3 and 4): owners on records, who sees what (another owner's id is unknown),
checkpoints and endpoints limited to roles, round-robin dispatch across owners, and per-user limits.

The services are built over each store (SQLite on a file, DynamoDB in moto) with `Principal`s made here;
the round-robin also runs on a real middleware (in this process, served on 127.0.0.1) with a real worker
on the tiny model.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import uvicorn

from aws_extension.client import MiddlewareClient
from aws_extension.middleware.app import create_app, status_of
from aws_extension.middleware.blobs.local import LocalBlobStore
from aws_extension.middleware.compute.local.compute import LocalCompute
from aws_extension.middleware.errors import (
    AccessDenied,
    InvalidRequest,
    ServiceError,
    TooManyRequests,
    UnknownRecord,
    WrongState,
)
from aws_extension.middleware.principals import BOOTSTRAP_ADMIN, Principal
from aws_extension.middleware.records import (
    JOBS,
    Checkpoint,
    CheckpointFile,
    Endpoint,
    InferenceJob,
    TrainingJob,
)
from aws_extension.middleware.services.checkpoints import CheckpointService
from aws_extension.middleware.services.datasets import DatasetService, FileToAdd
from aws_extension.middleware.services.endpoints import EndpointService
from aws_extension.middleware.services.jobs import JobService
from aws_extension.middleware.services.queue import JobQueue
from aws_extension.middleware.services.webhooks import WebhookSender
from aws_extension.middleware.store.sqlite import MIGRATIONS, SQLiteStore
from aws_extension.middleware.store.typed import Records
from aws_extension.middleware.wiring import build_services
from aws_extension.payload import PayloadLimits
from aws_extension.settings import MiddlewareSettings, WorkerSettings, load
from aws_extension.vocabulary import (
    BUILT_IN_ROLES,
    USER_ROLE,
    CheckpointStatus,
    DeploymentStatus,
    EndpointStatus,
    JobStatus,
    TrainingStatus,
)
from tests.aws_stack import atomic_moto_dynamodb_writes
from tests.helpers import free_port
from tests.inference.conftest import API_KEY as STACK_KEY
from tests.inference.conftest import (
    SEED_BODY,
    SEED_MODEL,
    deploy,
    register_tiny_models,
    stack,  # noqa: F401 - the inference stack fixture, for the HTTP test
)


def user(name: str, *roles: str, **limits) -> Principal:
    roles = roles or (USER_ROLE,)
    permissions = frozenset().union(*(BUILT_IN_ROLES.get(r, BUILT_IN_ROLES[USER_ROLE]) for r in roles))
    return Principal(username=name, roles=roles, permissions=permissions, **limits)


ALICE, BOB, CAROL = user("alice"), user("bob"), user("carol", "artist")
ADMIN = BOOTSTRAP_ADMIN


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
    for owner, name, locked in atomic_moto_dynamodb_writes():
        monkeypatch.setattr(owner, name, locked)
    with moto.mock_aws():
        dynamodb_store = DynamoDBStore("test")
        dynamodb_store.ensure_tables()
        yield dynamodb_store
        dynamodb_store.close()


@dataclass
class World:
    jobs: JobService
    queue: JobQueue
    checkpoints: CheckpointService
    endpoints: EndpointService
    datasets: DatasetService


def _endpoint(name: str, roles: list[str], created: float) -> Endpoint:
    return Endpoint(id=f"deploy-{name}", endpoint_name=name, live_name=name, created=created, start_time="",
                    deployment_status=DeploymentStatus.SUCCESS, endpoint_status=EndpointStatus.IN_SERVICE,
                    instance_type="local", initial_instance_count=1, min_instance_number=1, max_instance_number=1,
                    assign_to_roles=roles)


def _checkpoint(checkpoint_id: str, filename: str, roles: list[str]) -> Checkpoint:
    return Checkpoint(id=checkpoint_id, type="Stable-diffusion", status=CheckpointStatus.ACTIVE, created=1.0,
                      source="upload", s3_location="", allowed_roles=roles, owner="admin",
                      files=[CheckpointFile(filename=filename, key=f"models/Stable-diffusion/{checkpoint_id}/{filename}",
                                            sha256=checkpoint_id * 8, size=1)])


@pytest.fixture
def world(store, tmp_path) -> World:
    """The services over the store; endpoints `shared` (anyone) and `studio` (role artist); checkpoints
    base.safetensors (anyone) and secret.safetensors (role artist). Local compute with no instance running:
    jobs stay queued."""
    settings = load(MiddlewareSettings, environ={}, data_dir=tmp_path / "data", backend="local")
    blobs = LocalBlobStore(tmp_path / "data", b"secret", "http://127.0.0.1:9", 3600, 5 * 2**20, 100)
    queue = JobQueue(store)
    compute = LocalCompute(queue, settings)
    checkpoints = CheckpointService(store, blobs, max_parts=100, max_files=10, completion_wait_s=1)
    endpoints = EndpointService(store, compute, max_instances=4, max_endpoints=10)
    jobs = JobService(queue, blobs, compute, checkpoints, endpoints, WebhookSender(b"s", 1, 1.0, False),
                      PayloadLimits.from_settings(load(WorkerSettings, environ={})), 2**20)
    endpoints.records.create(_endpoint("shared", [], 1.0))
    endpoints.records.create(_endpoint("studio", ["artist"], 2.0))
    checkpoints.records.create(_checkpoint("a" * 8, "base.safetensors", []))
    checkpoints.records.create(_checkpoint("b" * 8, "secret.safetensors", ["artist"]))
    return World(jobs, queue, checkpoints, endpoints, DatasetService(store, blobs, 3600, 10))


def body(checkpoint: str = "base.safetensors", endpoint: str | None = "shared", **extra) -> dict:
    request = {"task_type": "txt2img", "models": {"Stable-diffusion": [checkpoint]}, "prompt": "a cat",
               "width": 64, "height": 64, "steps": 1, **extra}
    if endpoint:
        request["sagemaker_endpoint_name"] = endpoint
    return request


def _refused(call, *args, **kwargs) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        call(*args, **kwargs)
    return caught.value


# -- owners and visibility --------------------------------------------------------------------------------
def test_each_user_lists_and_reads_only_their_jobs_and_another_users_id_is_unknown(world):
    alice_jobs = [world.jobs.create(body(), ALICE).inference_id for _ in range(2)]
    bob_job = world.jobs.create(body(run=False), BOB).inference_id
    assert [j.InferenceJobId for j in world.jobs.list(None, None, None, 100, None, ALICE)] == alice_jobs[::-1]
    assert {j.owner for j in world.jobs.list(None, None, None, 100, None, ALICE)} == {"alice"}
    assert [j.InferenceJobId for j in world.jobs.list(None, None, None, 100, None, BOB)] == [bob_job]
    everyone = world.jobs.list(None, None, None, 100, None, ADMIN)
    assert {j.InferenceJobId: j.owner for j in everyone} == {**dict.fromkeys(alice_jobs, "alice"), bob_job: "bob"}
    assert [j.InferenceJobId for j in world.jobs.list(None, None, None, 100, None, ADMIN, owner="bob")] == [bob_job]
    assert [j.InferenceJobId for j in world.jobs.list("created", None, None, 100, None, ADMIN, owner="bob")] == [bob_job]
    assert world.jobs.list("created", None, None, 100, None, ADMIN, owner="alice") == []
    assert isinstance(_refused(world.jobs.list, None, None, None, 100, None, ALICE, owner="bob"), AccessDenied)
    # paging from another owner's job id is as if that id did not exist
    assert isinstance(_refused(world.jobs.list, None, None, None, 100, bob_job, ALICE), InvalidRequest)

    unknown = "0" * 32
    for route in (world.jobs.describe, world.jobs.image_urls, world.jobs.param_urls, world.jobs.cancel,
                  world.jobs.run):
        theirs, nobodys = _refused(route, bob_job, ALICE), _refused(route, unknown, ALICE)
        assert isinstance(theirs, UnknownRecord), route
        assert theirs.message == nobodys.message.replace(unknown, bob_job), route
    assert world.jobs.get(bob_job).status == JobStatus.CREATED  # alice's cancel and run changed nothing
    assert world.jobs.describe(bob_job, ADMIN).owner == "bob"
    assert world.jobs.run(bob_job, BOB).status == JobStatus.INPROGRESS
    assert world.jobs.cancel(bob_job, ADMIN).status == JobStatus.CANCELLED  # administrators act on any job


def test_datasets_are_their_owners_and_administrators_filter_by_owner(world):
    world.datasets.create("alices-cats", [FileToAdd("1.png", "1.png", "image")], {}, ALICE)
    assert [d.name for d in world.datasets.page([], 100, None, ALICE)[0]] == ["alices-cats"]
    assert world.datasets.page([], 100, None, BOB)[0] == []
    assert [d.owner for d in world.datasets.page([], 100, None, ADMIN, owner="alice")[0]] == ["alice"]
    for call in (world.datasets.get, world.datasets.files, world.datasets.delete):
        assert isinstance(_refused(call, "alices-cats", BOB), UnknownRecord)
    assert isinstance(_refused(world.datasets.set_status, "alices-cats", "Enabled", BOB), UnknownRecord)
    assert world.datasets.get("alices-cats", ADMIN).owner == "alice"


def test_records_from_before_owners_are_the_bootstrap_administrators(world):
    old = world.jobs.create(body(), ADMIN).inference_id
    world.queue.jobs.update(old, {"owner": None})  # as written by a version without owners
    assert world.jobs.describe(old, ADMIN).owner == "admin"
    assert isinstance(_refused(world.jobs.describe, old, ALICE), UnknownRecord)


def test_the_sqlite_migration_gives_old_records_to_the_bootstrap_administrator(tmp_path):
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    before_owners = MIGRATIONS.index(next(m for m in MIGRATIONS if "ADD COLUMN owner" in m))
    for script in MIGRATIONS[:before_owners]:
        for statement in filter(str.strip, script.split(";")):
            old.execute(statement)
    old.execute(f"PRAGMA user_version = {before_owners}")
    item = {"id": "old", "task": "txt2img", "status": "inprogress", "endpoint": "e", "queue_state": "queued",
            "created": 1.0, "start_time": "", "params_key": "k", "output_path": "o"}
    old.execute("INSERT INTO records (tbl, id, status, kind, name, queue_state, created, data) VALUES "
                "('inference_jobs', 'old', 'inprogress', 'txt2img', 'e', 'queued', 1.0, ?)", (json.dumps(item),))
    old.commit()
    old.close()
    jobs = Records(SQLiteStore(path), JOBS, InferenceJob)
    assert jobs.get("old").owner == "admin"
    assert [j.id for j in jobs.all({"owner": ["admin"]})] == ["old"]
    assert jobs.count({"live_owner": ["admin"]}) == 1  # it counts against the bootstrap admin's (absent) limit


# -- checkpoints and endpoints limited to roles -----------------------------------------------------------
def test_a_checkpoint_limited_to_roles_is_unknown_to_everyone_else(world):
    refused = _refused(world.jobs.create, body("secret.safetensors"), ALICE)
    unknown = _refused(world.jobs.create, body("nothing.safetensors"), ALICE)
    assert isinstance(refused, InvalidRequest)
    assert refused.message == unknown.message.replace("nothing", "secret")
    assert world.jobs.create(body("secret.safetensors"), CAROL).status == JobStatus.INPROGRESS
    assert world.checkpoints.active_file_names("Stable-diffusion", ALICE) == ["base.safetensors"]
    assert sorted(world.checkpoints.active_file_names("Stable-diffusion", CAROL)) == ["base.safetensors",
                                                                                       "secret.safetensors"]
    assert isinstance(_refused(world.checkpoints.get, "b" * 8, ALICE), UnknownRecord)
    assert world.checkpoints.get("b" * 8, ADMIN).allowed_roles == ["artist"]
    assert world.checkpoints.set_allowed_roles("b" * 8, [], ADMIN).allowed_roles == []  # shared again
    assert world.jobs.create(body("secret.safetensors"), ALICE).status == JobStatus.INPROGRESS
    assert isinstance(_refused(world.checkpoints.set_allowed_roles, "b" * 8, "artist", ADMIN), InvalidRequest)


def test_an_endpoint_assigned_to_roles_runs_only_their_jobs(world):
    refused = _refused(world.jobs.create, body(endpoint="studio"), ALICE)
    assert isinstance(refused, UnknownRecord)
    assert refused.message == _refused(world.jobs.create, body(endpoint="nowhere"), ALICE).message.replace(
        "nowhere", "studio")
    assert world.jobs.create(body(endpoint="studio"), CAROL).endpoint_name == "studio"
    assert [e.endpoint_name for e in world.endpoints.page(None, None, 100, None, ALICE)] == ["shared"]
    assert [e.endpoint_name for e in world.endpoints.page(None, None, 100, None, CAROL)] == ["studio", "shared"]
    assert isinstance(_refused(world.endpoints.get, "deploy-studio", ALICE), UnknownRecord)
    # without a name, a job goes to an endpoint its owner may use
    assert {world.jobs.create(body(endpoint=None), ALICE).endpoint_name for _ in range(3)} == {"shared"}
    world.endpoints.records.update("deploy-shared", {"endpoint_status": EndpointStatus.FAILED, "live_name": None})
    assert isinstance(_refused(world.jobs.create, body(endpoint=None), ALICE), WrongState)
    assert world.jobs.create(body(endpoint=None), CAROL).endpoint_name == "studio"


# -- limits -----------------------------------------------------------------------------------------------
def test_queued_jobs_over_the_limit_are_429_with_retry_after_until_one_ends(world):
    dana = user("dana", max_queued_jobs=2)
    held = world.jobs.create(body(run=False), dana).inference_id  # created jobs count too
    world.jobs.create(body(), dana)
    refused = _refused(world.jobs.create, body(), dana)
    assert isinstance(refused, TooManyRequests) and status_of(refused) == 429
    assert refused.message == ("user dana has 2 queued jobs, the limit of role 'user' (max_queued_jobs=2); "
                               "wait for one to finish.")
    assert refused.retry_after_s > 0
    world.jobs.create(body(), ALICE)  # another user's jobs do not count
    world.jobs.cancel(held, dana)
    assert world.jobs.create(body(), dana).status == JobStatus.INPROGRESS


def test_trainings_over_the_limit_are_429_and_another_users_training_is_unknown(world, store, tmp_path):
    from aws_extension.middleware.compute.local.training import LocalTraining
    from aws_extension.middleware.services.training import TrainingModelService, TrainingService

    blobs = world.datasets.blobs
    models = TrainingModelService(store, blobs, world.checkpoints, 10.0)
    training = TrainingService(store, blobs, models, world.datasets, world.checkpoints,
                               LocalTraining(tmp_path / "data", blobs, 1, None), stop_wait_s=10.0, signed_url_ttl_s=60)
    erin = user("erin", max_concurrent_trainings=1)

    def job(job_id: str, status: TrainingStatus, owner: str) -> TrainingJob:
        record = TrainingJob(id=job_id, train_type="Lora", status=status, created=time.time(), model_id="m",
                             dataset_name="d", instance_type="local", params={}, hyperparameters={},
                             model_name=job_id, owner=owner)
        training.records.create(record)
        return record

    job("running", TrainingStatus.TRAINING, "erin")
    job("next", TrainingStatus.INITIAL, "erin")
    job("franks", TrainingStatus.TRAINING, "frank")
    refused = _refused(training.start, "next", erin)
    assert isinstance(refused, TooManyRequests) and refused.retry_after_s > 0
    assert refused.message == ("user erin has 1 trainings running, the limit of role 'user' "
                               "(max_concurrent_trainings=1); wait for one to finish or stop one.")
    assert training.get("next").status == TrainingStatus.INITIAL
    assert [r.id for r in training.page([], [], 100, None, erin)[0]] == ["next", "running"]
    assert {r.id for r in training.page([], [], 100, None, ADMIN)[0]} == {"running", "next", "franks"}
    # GET /trains a page at a time: the next page's key is the last id, null on the last page
    first, key = training.page([], [], 2, None, ADMIN)
    rest, end = training.page([], [], 2, key, ADMIN)
    assert len(first) == 2 and key == first[-1].id and [r.id for r in rest] == ["running"] and end is None
    assert isinstance(_refused(training.page, [], [], 2, "franks", erin), InvalidRequest)  # not erin's
    assert isinstance(_refused(training.page, [], [], 2, "no-such-job", ADMIN), InvalidRequest)
    for call in (training.get, training.describe, training.start):
        assert isinstance(_refused(call, "franks", erin), UnknownRecord)
    assert isinstance(_refused(asyncio.run, training.stop("franks", erin)), UnknownRecord)


def test_a_429_answer_carries_retry_after(tmp_path):
    services = build_services(load(MiddlewareSettings, environ={}, data_dir=tmp_path / "data", backend="local"))
    app = create_app(services, "key")
    handler = app.exception_handlers[ServiceError]
    answer = asyncio.run(handler(None, TooManyRequests("user x has 5 queued jobs (max_queued_jobs=5).", 10)))
    assert answer.status_code == 429 and answer.headers["Retry-After"] == "10"
    assert json.loads(answer.body) == {"statusCode": 429, "error": "user x has 5 queued jobs (max_queued_jobs=5)."}
    services.store.close()


# -- round-robin ------------------------------------------------------------------------------------------
def _queued(queue: JobQueue, owner: str, number: int, endpoint: str = "e") -> InferenceJob:
    job = InferenceJob(id=f"{owner}-{number:02d}", task="txt2img", endpoint=endpoint,
                       created=time.time(), start_time="", params_key="", output_path="", owner=owner,
                       **queue.queued_fields(endpoint, owner))
    queue.add(job)
    return job


def test_the_queue_is_round_robin_across_owners_oldest_first_within_one_and_across_restarts(store):
    queue = JobQueue(store)
    queue.round_robin = True
    for i in range(5):
        _queued(queue, "a", i)
    _queued(queue, "b", 0)
    for i in range(2):
        _queued(queue, "c", i)
    order = ["a-00", "b-00", "c-00", "a-01", "c-01", "a-02", "a-03", "a-04"]
    assert [queue.position(queue.jobs.get(i)) for i in order] == list(range(8))
    assert [queue.claim_next("e", "w1").id for _ in range(3)] == order[:3]
    restarted = JobQueue(store)  # a new process: the rounds are on the records
    restarted.round_robin = True
    assert [restarted.position(restarted.jobs.get(i)) for i in order[3:]] == list(range(5))
    _queued(restarted, "b", 1)  # b has nothing queued: it joins the round being served, after c-01 (older)
    assert [restarted.claim_next("e", "w1").id for _ in range(3)] == ["a-01", "c-01", "b-01"]
    back = restarted.jobs.get("c-01")
    restarted.requeue(back, back.attempts - 1)  # its worker was lost: back at its place, first
    assert restarted.position(restarted.jobs.get("c-01")) == 0
    assert [restarted.claim_next("e", "w1").id for _ in range(4)] == ["c-01", "a-02", "a-03", "a-04"]
    assert restarted.claim_next("e", "w1") is None


def test_racing_dispatchers_claim_each_job_once_in_round_robin_order(store):
    queue = JobQueue(store)
    queue.round_robin = True
    for i in range(6):
        _queued(queue, "a", i)
    for i in range(3):
        _queued(queue, "b", i)
    claims: list[tuple[str, str]] = []
    lock = threading.Lock()

    def dispatch(worker: str) -> None:
        while (job := queue.claim_next("e", worker)) is not None:
            with lock:
                claims.append((job.id, worker))

    threads = [threading.Thread(target=dispatch, args=(f"w{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [job_id for job_id, _ in claims]
    assert sorted(ids) == sorted([f"a-{i:02d}" for i in range(6)] + [f"b-{i:02d}" for i in range(3)])
    assert all(queue.jobs.get(i).attempts == 1 for i in ids)
    # every b job was claimed by the time a's jobs of its round were (3 workers may swap neighbours)
    assert max(ids.index(f"b-{i:02d}") for i in range(3)) <= 7  # oldest first overall would make it 8


def test_once_the_queue_is_empty_a_newcomer_goes_before_an_owner_just_served(store):
    queue = JobQueue(store)
    queue.round_robin = True
    _queued(queue, "a", 0)
    _queued(queue, "a", 1)
    assert queue.claim_next("e", "w").id == "a-00"
    assert queue.claim_next("e", "w").id == "a-01"
    assert queue.claim_next("e", "w") is None  # the clock stays at the round served last
    _queued(queue, "b", 0)
    _queued(queue, "a", 2)
    assert [queue.claim_next("e", "w").id for _ in range(2)] == ["b-00", "a-02"]


# -- the real dispatcher and worker -----------------------------------------------------------------------
class InProcessMiddleware:
    """The middleware app on 127.0.0.1 in this process (so its services can be called with any principal)."""

    def __init__(self, data_dir: Path, api_key: str):
        self.port = free_port()
        settings = load(MiddlewareSettings, environ={}, data_dir=data_dir, backend="local", host="127.0.0.1",
                        port=self.port)
        self.services = build_services(settings)
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.services, api_key), host="127.0.0.1",
                                                    port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.client = MiddlewareClient(f"http://127.0.0.1:{self.port}", api_key, timeout_s=60)

    def __enter__(self) -> InProcessMiddleware:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the middleware did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(120)


def test_one_users_twenty_queued_jobs_do_not_hold_back_another_users_job(tmp_path, tiny_models_dir):
    with InProcessMiddleware(tmp_path / "data", "fair-key") as middleware:
        register_tiny_models(middleware.client, tiny_models_dir, tmp_path, "tiny.safetensors")
        deploy(middleware.client, "fair", 1)
        jobs = middleware.services.jobs
        alices = [jobs.create(body("tiny.safetensors", "fair", seed=i), ALICE).inference_id for i in range(20)]
        bobs = jobs.create(body("tiny.safetensors", "fair", seed=99), BOB).inference_id
        position = jobs.describe(bobs, BOB).queue_position
        assert position is not None and position <= 1  # behind alice's first job at most
        assert jobs.describe(alices[-1], ALICE).queue_position >= 18
        deadline = time.monotonic() + 600
        while any(not jobs.get(i).status.is_terminal for i in [*alices, bobs]):
            assert time.monotonic() < deadline, "the jobs did not finish"
            time.sleep(0.5)
        ended = {i: jobs.get(i) for i in [*alices, bobs]}
        assert {j.status for j in ended.values()} == {JobStatus.SUCCEED}
        started = sorted(ended, key=lambda i: ended[i].dispatched_at)
        assert started.index(bobs) <= 1  # bob's job started before alice's second
        assert [i for i in started if i != bobs] == alices  # alice's own jobs, oldest first


# -- over HTTP, with users' keys (both backends) ----------------------------------------------------------


class Key:
    """Requests with one key to the stack."""

    def __init__(self, url: str, key: str):
        self.url, self.key = url, key

    def __call__(self, method: str, path: str, **kwargs) -> requests.Response:
        return requests.request(method, self.url + path, headers={"x-api-key": self.key}, timeout=60, **kwargs)


def _user_key(stack, name: str, roles: list[str]) -> Key:  # noqa: F811
    answer = stack.client.create_user(name, roles)
    return Key(stack.url, answer["api_key"])


def test_over_http_two_users_and_an_administrator_each_see_their_own(stack):  # noqa: F811
    suffix = uuid.uuid4().hex[:6]
    alice_name, bob_name = f"alice-{suffix}", f"bob-{suffix}"
    alice, bob, admin = _user_key(stack, alice_name, ["user"]), _user_key(stack, bob_name, ["user"]), \
        Key(stack.url, STACK_KEY)
    seed = {**SEED_BODY, "width": 64, "height": 64, "steps": 1}
    alices = alice("POST", "/inference/v2", json=seed).json()["inference_id"]
    bobs = bob("POST", "/inference/v2", json={**seed, "run": False}).json()["inference_id"]
    assert MiddlewareClient(stack.url, alice.key).wait_for_job(alices, timeout_s=600)["status"] == "succeed"

    def listed(key: Key, **params) -> set[str]:
        answer = key("GET", "/inference/list-inference-jobs", params={"limit": 1000, **params})
        assert answer.status_code == 200, answer.text
        return {j["InferenceJobId"] for j in answer.json()}

    assert listed(alice) == {alices} and listed(bob) == {bobs}
    assert {alices, bobs} <= listed(admin)
    assert listed(admin, owner=alice_name) == {alices}
    assert bob("GET", "/inference/list-inference-jobs", params={"owner": alice_name}).status_code == 403
    job = alice("GET", "/inference/get-inference-job", params={"jobID": alices}).json()
    assert job["owner"] == alice_name

    unknown = str(uuid.uuid4())
    for method, path, params in [("GET", "/inference/get-inference-job", {"jobID": "{id}"}),
                                 ("GET", "/inference/get-inference-job-image-output", {"jobID": "{id}"}),
                                 ("GET", "/inference/get-inference-job-param-output", {"jobID": "{id}"}),
                                 ("PUT", "/inference/v2/{id}/cancel", {}),
                                 ("PUT", "/inference/v2/{id}/run", {})]:
        for asker, theirs in ((bob, alices), (alice, bobs)):
            answers = [asker(method, path.format(id=job_id), params={k: v.format(id=job_id) for k, v in params.items()})
                       for job_id in (theirs, unknown)]
            assert [a.status_code for a in answers] == [404, 404], (method, path)
            assert answers[0].json()["error"] == answers[1].json()["error"].replace(unknown, theirs), (method, path)
    assert admin("GET", "/inference/get-inference-job", params={"jobID": bobs}).json()["status"] == "created"
    assert alice("GET", "/inference/get-inference-job-image-output", params={"jobID": alices}).status_code == 200

    # a role with a queued-jobs limit: 429 with Retry-After, naming it
    limited = f"limited-{suffix}"
    stack.client.create_role(limited, ["inference:all", "checkpoint:list", "sagemaker_endpoint:list"],
                             max_queued_jobs=1)
    carol = _user_key(stack, f"carol-{suffix}", [limited])
    assert carol("POST", "/inference/v2", json={**seed, "run": False}).status_code == 200
    refused = carol("POST", "/inference/v2", json={**seed, "run": False})
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert refused.json()["error"] == (f"user carol-{suffix} has 1 queued jobs, the limit of role '{limited}' "
                                       "(max_queued_jobs=1); wait for one to finish.")

    # a checkpoint limited to a role is unknown to the others
    checkpoint = next(c for c in stack.client.list_checkpoints(["Stable-diffusion"]) if SEED_MODEL in c["name"])
    limit = admin("PUT", "/checkpoint", json={"checkpoint_id": checkpoint["id"], "allowed_roles": ["artist"]})
    try:
        assert limit.status_code == 200 and limit.json()["checkpoint"]["allowed_roles"] == ["artist"]
        assert checkpoint["id"] not in {c["id"] for c in alice("GET", "/checkpoints").json()["checkpoints"]}
        assert alice("GET", f"/checkpoint/{checkpoint['id']}").status_code == 404
        refused = alice("POST", "/inference/v2", json=seed)
        assert refused.status_code == 400 and SEED_MODEL in refused.json()["error"], refused.text
    finally:
        admin("PUT", "/checkpoint", json={"checkpoint_id": checkpoint["id"], "allowed_roles": []})
    assert alice("POST", "/inference/v2", json={**seed, "run": False}).status_code == 200

    # a deleted user's records stay, owned by "deleted user NAME"
    stack.client.delete_user(bob_name)
    assert admin("GET", "/inference/get-inference-job", params={"jobID": bobs}).json()["owner"] == \
        f"deleted user {bob_name}"
