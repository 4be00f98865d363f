"""The answers of API.md: one pydantic model per shape (the routes' `response_model`, so `/openapi.json`
documents them) and the functions that make them from records. Field names are the seed's.

Every record's answer has its `owner`: `label(owner_name(record.owner))`, where `label` is
`UserService.owner_label` ("deleted user NAME" once that user is deleted) when the caller has it, else the
name as it is (records from before owners are the bootstrap administrator's: `ownership.owner_name`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from aws_extension import __version__
from aws_extension.middleware.records import (
    ApiKey,
    AuditEntry,
    Checkpoint,
    Dataset,
    Endpoint,
    InferenceJob,
    Role,
    TrainingJob,
    TrainingModel,
    User,
)
from aws_extension.middleware.services.datasets import DatasetFileState
from aws_extension.middleware.services.names import time_text
from aws_extension.middleware.services.ownership import OwnerLabel, as_named, owner_name
from aws_extension.vocabulary import DatasetStatus


class Health(BaseModel):
    status: str = "ok"
    version: str = __version__
    backend: str  # "local" (this machine's worker processes) or "aws" (SageMaker)
    ready: bool  # false while the stack is still being set up (e.g. `sd-aws up` registering its model)
    waiting_for: list[str]  # what it waits for, in words


class ConnectionAnswer(BaseModel):
    """Also who the key is, so a client learns its name and what it may do."""

    message: str = "Success"
    username: str
    roles: list[str]
    permissions: list[str]


# -- endpoints ---------------------------------------------------------------------------------------------
class DeploymentStarted(BaseModel):
    EndpointDeploymentJobId: str
    endpoint_name: str
    status: str
    endpoint_status: str
    startTime: str


class EndpointAnswer(BaseModel):
    EndpointDeploymentJobId: str
    startTime: str
    endTime: str | None
    error: str | None
    status: str
    endpoint_name: str
    endpoint_status: str
    instance_type: str
    current_instance_count: int
    autoscaling: bool
    min_instance_number: int
    max_instance_number: int
    assign_to_roles: list[str] = []  # who may see it and run jobs on it; empty: everyone
    owner: str = ""


class EndpointsDeleted(BaseModel):
    message: str = "Endpoint deleted"
    results: dict[str, str]  # name → "deleted" or the reason it was not


def deployment_started(record: Endpoint) -> DeploymentStarted:
    return DeploymentStarted(EndpointDeploymentJobId=record.id, endpoint_name=record.endpoint_name,
                             status=record.deployment_status, endpoint_status=record.endpoint_status,
                             startTime=record.start_time)


def endpoint_answer(record: Endpoint, label: OwnerLabel = as_named) -> EndpointAnswer:
    return EndpointAnswer(
        EndpointDeploymentJobId=record.id, startTime=record.start_time, endTime=record.end_time, error=record.error,
        status=record.deployment_status, endpoint_name=record.endpoint_name, endpoint_status=record.endpoint_status,
        instance_type=record.instance_type, current_instance_count=record.current_instance_count,
        autoscaling=record.autoscaling, min_instance_number=record.min_instance_number,
        max_instance_number=record.max_instance_number, assign_to_roles=record.assign_to_roles,
        owner=label(owner_name(record.owner)))


# -- inference jobs ------------------------------------------------------------------------------------------
class JobStarted(BaseModel):
    inference_id: str
    status: str
    endpoint_name: str
    output_path: str
    api_params_upload_url: str | None = None  # `run: false` jobs: a signed PUT URL for the parameters


class JobAnswer(BaseModel):
    InferenceJobId: str
    status: str
    taskType: str
    startTime: str
    completeTime: str | None
    endpoint_name: str
    image_names: list[str]
    inference_info_name: str
    sagemakerRaw: str | None
    error: str | None
    progress: float
    queue_position: int | None
    timings: dict[str, float]
    output_path: str
    attempts: int
    checkpoint_id: str | None  # merges: the checkpoint the job fills
    callback: dict[str, Any] | None  # webhook deliveries
    owner: str = ""


class MergeStarted(BaseModel):
    primary_model_name: str
    secondary_model_name: str | None
    tertiary_model_name: str | None
    inference_id: str
    checkpoint_id: str
    endpoint_name: str


def job_started(job: InferenceJob, upload_url: str | None) -> JobStarted:
    return JobStarted(inference_id=job.id, status=job.status, endpoint_name=job.endpoint,
                      output_path=job.output_path, api_params_upload_url=upload_url)


def job_answer(job: InferenceJob, queue_position: int | None = None, label: OwnerLabel = as_named) -> JobAnswer:
    return JobAnswer(
        InferenceJobId=job.id, status=job.status, taskType=job.task, startTime=job.start_time,
        completeTime=job.complete_time, endpoint_name=job.endpoint, image_names=job.image_names,
        inference_info_name=f"{job.id}_param.json", sagemakerRaw=job.worker_answer, error=job.error,
        progress=job.progress, queue_position=queue_position, timings=job.timings, output_path=job.output_path,
        attempts=job.attempts, checkpoint_id=job.merge.checkpoint_id if job.merge else None, callback=job.callback,
        owner=label(owner_name(job.owner)))


def merge_started(job: InferenceJob) -> MergeStarted:
    params = job.merge.params
    return MergeStarted(primary_model_name=params["primary_model_name"],
                        secondary_model_name=params.get("secondary_model_name"),
                        tertiary_model_name=params.get("tertiary_model_name"), inference_id=job.id,
                        checkpoint_id=job.merge.checkpoint_id, endpoint_name=job.endpoint)


# -- checkpoints ---------------------------------------------------------------------------------------------
class PublicCheckpoint(BaseModel):
    """The `checkpoint` of POST/PUT /checkpoint and POST /upload_checkpoint answers."""

    id: str
    type: str
    s3_location: str
    status: str
    params: dict[str, Any]
    name: list[str]
    sha256: str | None
    size: int | None
    error: str | None
    completing: bool  # an upload's completion is going on in the background
    owner: str = ""
    allowed_roles: list[str] = []  # who may see and use it; empty: everyone


class CheckpointAnswer(BaseModel):
    statusCode: int = 200
    checkpoint: PublicCheckpoint


class CheckpointUploadStarted(CheckpointAnswer):
    s3PresignUrl: dict[str, list[str]]  # file name → its parts' signed PUT URLs
    existing: bool = False  # the declared content is Active already: this is that checkpoint, nothing to upload


class CheckpointDeleted(BaseModel):
    statusCode: int = 200
    message: str = "Checkpoint deleted"
    checkpoint_id: str


class CheckpointFileEntry(BaseModel):
    filename: str
    sha256: str | None
    size: int | None


class ListedCheckpoint(BaseModel):
    """One entry of GET /checkpoints."""

    id: str
    s3Location: str
    type: str
    status: str
    name: list[str]
    created: float
    sha256: str | None
    size: int | None
    params: dict[str, Any]
    files: list[CheckpointFileEntry]
    error: str | None = None
    progress: dict[str, Any] | None = None  # imports: files and bytes so far
    completing: bool = False  # an upload's completion is going on in the background
    owner: str = ""
    allowed_roles: list[str] = []  # who may see and use it; empty: everyone


class CheckpointList(BaseModel):
    statusCode: int = 200
    checkpoints: list[ListedCheckpoint]
    last_key: str | None = None  # the key of the next page, None on the last one


class OneCheckpoint(BaseModel):
    statusCode: int = 200
    checkpoint: ListedCheckpoint


def public_checkpoint(record: Checkpoint, label: OwnerLabel = as_named) -> PublicCheckpoint:
    return PublicCheckpoint(id=record.id, type=record.type, s3_location=record.s3_location, status=record.status,
                            params=record.params, name=record.names, sha256=record.sha256, size=record.size,
                            error=record.error, completing=record.completing is not None,
                            owner=label(owner_name(record.owner)), allowed_roles=record.allowed_roles)


def listed_checkpoint(record: Checkpoint, label: OwnerLabel = as_named) -> ListedCheckpoint:
    return ListedCheckpoint(
        id=record.id, s3Location=record.s3_location, type=record.type, status=record.status, name=record.names,
        created=record.created, sha256=record.sha256, size=record.size, params=record.params,
        files=[CheckpointFileEntry(filename=f.filename, sha256=f.sha256, size=f.size) for f in record.files],
        error=record.error, progress=record.progress, completing=record.completing is not None,
        owner=label(owner_name(record.owner)), allowed_roles=record.allowed_roles)


# -- datasets ------------------------------------------------------------------------------------------------
class DatasetCreated(BaseModel):
    statusCode: int = 200
    datasetName: str
    s3PresignUrl: dict[str, str]  # file name → signed PUT URL


class DatasetStatusAnswer(BaseModel):
    statusCode: int = 200
    datasetName: str
    status: str


class DatasetDeleted(BaseModel):
    statusCode: int = 200
    message: str = "Dataset deleted"
    datasetName: str


class ListedDataset(BaseModel):
    """One entry of GET /datasets: the seed's fields, then the params the dataset was created with."""

    model_config = ConfigDict(extra="allow")

    datasetName: str
    s3: str
    status: str
    timestamp: float
    owner: str = ""


class DatasetList(BaseModel):
    statusCode: int = 200
    datasets: list[ListedDataset]
    last_key: str | None = None  # the key of the next page, None on the last one


class DatasetFileEntry(BaseModel):
    key: str
    name: str
    type: str
    filename: str
    preview_url: str | None
    dataStatus: str  # Enabled once the file has arrived, else Initialed


class DatasetData(BaseModel):
    statusCode: int = 200
    dataset_name: str
    data: list[DatasetFileEntry]


def listed_dataset(record: Dataset, label: OwnerLabel = as_named) -> ListedDataset:
    return ListedDataset(**{**record.params, "datasetName": record.name, "s3": record.s3,
                            "status": record.status, "timestamp": record.created, "owner": label(owner_name(record.owner))})


def dataset_data(dataset_name: str, files: list[DatasetFileState]) -> DatasetData:
    return DatasetData(dataset_name=dataset_name, data=[DatasetFileEntry(
        key=f.file.key, name=f.file.name, type=f.file.type, filename=f.file.filename, preview_url=f.preview_url,
        dataStatus=DatasetStatus.ENABLED if f.arrived else DatasetStatus.INITIALED) for f in files])


# -- training ------------------------------------------------------------------------------------------------
class TrainingModelJob(BaseModel):
    """The `job` of POST /model, and each entry of GET /models (the seed's fields, then ours)."""

    id: str
    model_name: str
    status: str
    s3_base: str
    output_s3_location: str
    model_type: str
    created: float
    params: dict[str, Any]
    checkpoint_id: str | None
    sha256: str | None
    error: str | None
    owner: str = ""


class TrainingModelCreated(BaseModel):
    statusCode: int = 200
    job: TrainingModelJob
    s3PresignUrl: dict[str, list[str]] | None  # an upload: file name → its parts' signed PUT URLs


class TrainingModelCreating(BaseModel):
    """PUT /model: the seed's job shape (`jobStatus` is the model's status)."""

    statusCode: int = 200
    job: dict[str, Any]


class TrainingModelList(BaseModel):
    statusCode: int = 200
    models: list[TrainingModelJob]
    last_key: str | None = None  # the next page's (null on the last page)


def training_model_job(record: TrainingModel, location: str, label: OwnerLabel = as_named) -> TrainingModelJob:
    return TrainingModelJob(id=record.id, model_name=record.name, status=record.status, s3_base=location,
                            output_s3_location=location, model_type=record.model_type, created=record.created,
                            params=record.params, checkpoint_id=record.checkpoint_id, sha256=record.sha256,
                            error=record.error, owner=label(owner_name(record.owner)))


def training_model_creating(record: TrainingModel, location: str) -> TrainingModelCreating:
    return TrainingModelCreating(job={"output_path": location, "id": record.id, "endpointName": None,
                                      "jobStatus": record.status, "jobType": record.model_type,
                                      "error": record.error})


class TrainingJobAnswer(BaseModel):
    """A training job (POST/PUT /train, GET /train/{id}, each entry of GET /trains): the seed's fields, then
    its progress."""

    id: str
    status: str
    trainType: str
    modelName: str
    model_id: str
    created: float
    params: dict[str, Any]
    input_location: str
    sagemakerTrainName: str | None = None  # SageMaker training jobs only
    dataset_name: str
    instance_type: str
    step: int = 0
    total_steps: int
    loss: float | None = None
    steps_per_s: float | None = None
    eta_s: float | None = None
    samples: list[str] = []  # signed GET URLs of the sample images so far
    queue_position: int | None = None  # waiting for a training slot (0: next)
    attempts: int = 0
    checkpoint_id: str | None = None  # Complete: the Active checkpoint it made
    error: str | None = None
    start_time: str | None = None
    end_time: str | None = None
    owner: str = ""


class TrainingJobCreated(BaseModel):
    statusCode: int = 200
    job: TrainingJobAnswer
    s3PresignUrl: None = None


class OneTrainingJob(BaseModel):
    statusCode: int = 200
    job: TrainingJobAnswer


class TrainingJobList(BaseModel):
    statusCode: int = 200
    trainJobs: list[TrainingJobAnswer]
    last_key: str | None = None  # the next page's (null on the last page)


def training_job(record: TrainingJob, input_location: str, progress: dict[str, Any] | None = None,
                 samples: list[str] | None = None, queue_position: int | None = None,
                 label: OwnerLabel = as_named) -> TrainingJobAnswer:
    progress = {**(record.progress or {}), **(progress or {})}
    return TrainingJobAnswer(
        id=record.id, status=record.status, trainType=record.train_type, modelName=record.model_name,
        model_id=record.model_id, created=record.created, params=record.params, input_location=input_location,
        sagemakerTrainName=record.run_name,
        dataset_name=record.dataset_name, instance_type=record.instance_type, step=progress.get("step") or 0,
        total_steps=progress.get("total_steps") or record.total_steps, loss=progress.get("loss"),
        steps_per_s=progress.get("steps_per_s"), eta_s=progress.get("eta_s"), samples=samples or [],
        queue_position=queue_position, attempts=record.attempts, checkpoint_id=record.checkpoint_id,
        error=record.error, start_time=record.start_time, end_time=record.end_time, owner=label(owner_name(record.owner)))


# -- users, keys, roles, the audit trail -----------------------------------------------------------------------
class UserAnswer(BaseModel):
    username: str
    roles: list[str]
    permissions: list[str]  # what its roles allow, together
    status: str
    created: float
    creator: str


class KeyAnswer(BaseModel):
    """A key as listed: never the key itself (it is shown once, when made)."""

    key_id: str
    username: str
    status: str  # active | revoked | expired
    created: float
    expires: float | None  # Unix seconds; None: never
    revoked: float | None
    creator: str


class UserCreated(BaseModel):
    statusCode: int = 200
    user: UserAnswer
    username: str
    roles: list[str]
    api_key: str  # shown this once
    key_id: str
    expires: float | None


class OneUser(BaseModel):
    statusCode: int = 200
    user: UserAnswer


class UserDeleted(BaseModel):
    statusCode: int = 200
    message: str = "User deleted"
    user: UserAnswer


class UserList(BaseModel):
    statusCode: int = 200
    users: list[UserAnswer]
    last_key: str | None = None  # the key of the next page, None on the last one


class KeyCreated(BaseModel):
    statusCode: int = 200
    username: str
    api_key: str  # shown this once
    key_id: str
    expires: float | None
    key: KeyAnswer


class KeyList(BaseModel):
    statusCode: int = 200
    keys: list[KeyAnswer]


class KeyRevoked(BaseModel):
    statusCode: int = 200
    message: str = "Key revoked"
    key: KeyAnswer


class RoleAnswer(BaseModel):
    role_name: str
    permissions: list[str]
    built_in: bool
    creator: str
    created: float
    max_queued_jobs: int | None
    max_concurrent_trainings: int | None


class OneRole(BaseModel):
    statusCode: int = 200
    role: RoleAnswer


class RoleList(BaseModel):
    statusCode: int = 200
    roles: list[RoleAnswer]


class RoleDeleted(BaseModel):
    statusCode: int = 200
    message: str = "Role deleted"
    role_name: str


class AuditEntryAnswer(BaseModel):
    id: str
    created: float
    time: str  # the seed's time format, UTC
    actor: str
    key_id: str | None
    action: str
    status: int
    path_params: dict[str, str]
    record_ids: list[str]


class AuditList(BaseModel):
    statusCode: int = 200
    entries: list[AuditEntryAnswer]
    last_key: str | None = None


def user_answer(record: User, permissions: frozenset[str] | set[str]) -> UserAnswer:
    return UserAnswer(username=record.username, roles=record.roles, permissions=sorted(permissions),
                      status=record.status, created=record.created, creator=record.creator)


def key_answer(record: ApiKey, status: str) -> KeyAnswer:
    return KeyAnswer(key_id=record.id, username=record.username, status=status, created=record.created,
                     expires=record.expires, revoked=record.revoked, creator=record.creator)


def role_answer(record: Role, built_in: bool) -> RoleAnswer:
    return RoleAnswer(role_name=record.role_name, permissions=record.permissions, built_in=built_in,
                      creator=record.creator, created=record.created, max_queued_jobs=record.max_queued_jobs,
                      max_concurrent_trainings=record.max_concurrent_trainings)


def audit_answer(record: AuditEntry) -> AuditEntryAnswer:
    return AuditEntryAnswer(id=record.id, created=record.created, time=time_text(record.created), actor=record.actor,
                            key_id=record.key_id, action=record.action, status=record.status,
                            path_params=record.path_params, record_ids=record.record_ids)
