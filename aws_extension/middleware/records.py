"""The middleware's records, one dataclass per table, and the tables' indexed fields.

Statuses are the `vocabulary` enums. `owner` is the username of the principal that created a record through
the API (None on records written before owners existed: they are the bootstrap administrator's, see
`services/ownership.py`). Times are Unix seconds (`created`, ...) plus the seed's text form
where API.md shows one (`start_time`, ...). The answers of API.md are made from these in `answers.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from aws_extension.middleware.store.base import Item, Table
from aws_extension.vocabulary import (
    CheckpointStatus,
    CheckpointType,
    DatasetStatus,
    DeploymentStatus,
    EndpointStatus,
    JobStatus,
    TrainingModelStatus,
    TrainingStatus,
    UserStatus,
    model_stem,
)


@dataclass
class CheckpointFile:
    filename: str
    key: str  # blob key: models/<type>/<checkpoint id>/<filename>
    sha256: str | None = None  # set once the file is complete
    size: int | None = None
    declared_sha256: str | None = None  # uploads: what the client said the file hashes to
    parts_number: int | None = None  # uploads: the multipart upload in progress
    upload_id: str | None = None
    url: str | None = None  # imports: where it came from


@dataclass
class Checkpoint:
    id: str
    type: str  # a CheckpointType
    status: CheckpointStatus
    created: float
    source: str  # "upload" | "url" | "merge"
    s3_location: str
    params: dict[str, Any] = field(default_factory=dict)
    files: list[CheckpointFile] = field(default_factory=list)
    sha256: str | None = None  # of the first file
    size: int | None = None  # of all files
    error: str | None = None
    completing: str | None = None  # the claim of the request completing the upload
    progress: dict[str, Any] | None = None  # imports: files and bytes so far
    urls: list[str] = field(default_factory=list)  # imports
    owner: str | None = None  # the uploader or importer; a trained checkpoint: its training job's owner
    allowed_roles: list[str] = field(default_factory=list)  # who may see and use it; empty: everyone

    @property
    def names(self) -> list[str]:
        return [f.filename for f in self.files]


# What a job's model names are looked up by (`services/models.py`): an Active checkpoint's files, each by
# its stem (`vocabulary.model_stem`: a name or an A1111 title without its hash has the same stem) and its
# sha256, and an embedding also by the first word of its stem (what a prompt that uses it must contain).
_FIRST_WORD = re.compile(r"[\w-]*")


def name_keyword(checkpoint_type: str, name: str) -> str:
    return f"{checkpoint_type}|name|{model_stem(name)}"


def sha256_keyword(checkpoint_type: str, sha256: str) -> str:
    return f"{checkpoint_type}|sha256|{sha256}"


def word_keyword(word: str) -> str:
    """An embedding whose stem begins with `word` (the empty word: one that begins with another character)."""
    return f"{CheckpointType.EMBEDDINGS}|word|{word}"


def catalogue_keywords(item: Item) -> list[str]:
    if item.get("status") != CheckpointStatus.ACTIVE:
        return []
    words: list[str] = []
    for entry in item.get("files") or []:
        words.append(name_keyword(item["type"], entry["filename"]))
        if entry.get("sha256"):
            words.append(sha256_keyword(item["type"], entry["sha256"]))
        if item["type"] == CheckpointType.EMBEDDINGS:
            words.append(word_keyword(_FIRST_WORD.match(model_stem(entry["filename"])).group()))  # type: ignore[union-attr]
    return list(dict.fromkeys(words))


CHECKPOINTS = Table("checkpoints", indexed=("status", "type", "sha256"),  # sha256: the catalogue is content-addressed
                    pairs=(("status", "type"),), keywords=catalogue_keywords,
                    keyword_inputs=("status", "type", "files"))


@dataclass
class DatasetFile:
    filename: str
    name: str
    type: str
    key: str  # blob key: dataset/<dataset name>/<filename>


@dataclass
class Dataset:
    id: str  # the dataset's name
    name: str
    status: DatasetStatus
    created: float
    s3: str
    params: dict[str, Any] = field(default_factory=dict)
    files: list[DatasetFile] = field(default_factory=list)
    owner: str | None = None


DATASETS = Table("datasets", indexed=("status", "owner"))


@dataclass
class Endpoint:
    """An endpoint and its deployment job (one record: the seed lists deployment jobs)."""

    id: str  # the deployment job's id
    endpoint_name: str
    deployment_status: DeploymentStatus
    endpoint_status: EndpointStatus
    created: float
    start_time: str
    instance_type: str
    initial_instance_count: int
    min_instance_number: int
    max_instance_number: int
    autoscaling: bool = False
    current_instance_count: int = 0
    assign_to_roles: list[str] = field(default_factory=list)
    live_name: str | None = None  # the name while the endpoint is not deleted: live names are unique
    end_time: str | None = None
    error: str | None = None
    owner: str | None = None


ENDPOINTS = Table("endpoints", indexed=("deployment_status", "endpoint_status", "live_name", "endpoint_name"),
                  unique="live_name")


@dataclass
class JobModel:
    """A catalogue file a job uses, resolved when the job was created."""

    type: str
    name: str
    sha256: str
    key: str


@dataclass
class MergeSpec:
    """A merge job's result: the checkpoint it fills and its file."""

    checkpoint_id: str
    key: str
    filename: str
    params: dict[str, Any]


@dataclass
class InferenceJob:
    id: str
    task: str  # a Task
    status: JobStatus
    endpoint: str
    created: float
    start_time: str
    params_key: str  # blob key of the request's A1111 parameters
    output_path: str
    models: list[JobModel] = field(default_factory=list)
    requested_models: dict[str, Any] | None = None  # the request's `models`, resolved again at `run`
    params_upload_key: str | None = None  # `run: false` jobs: where the caller may upload parameters
    callback_url: str | None = None
    callback: dict[str, Any] | None = None  # the webhook's deliveries
    merge: MergeSpec | None = None
    # Owned by the JobQueue: where the job is in its endpoint's queue.
    queue_state: str | None = None
    worker: str | None = None
    attempts: int = 0
    dispatched_at: float | None = None
    progress: float = 0.0
    # Set when it ends.
    complete_time: str | None = None
    image_names: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    worker_answer: str | None = None  # the worker's answer without images (the seed's `sagemakerRaw`)
    error: str | None = None
    cancel_reason: str | None = None
    owner: str | None = None
    # Owned by the JobQueue too: `live_owner` is the owner while the job has not ended (what the owner's
    # queued-jobs limit counts); `fair_slot` is `<endpoint>#<round>` while it is queued on a backend whose
    # dispatch is round-robin across owners (local compute: see queue.py).
    live_owner: str | None = None
    queue_round: int | None = None
    fair_slot: str | None = None


JOBS = Table("inference_jobs", indexed=("status", "task", "endpoint", "queue_state", "owner", "live_owner", "fair_slot"),
             pairs=(("status", "endpoint"),))


@dataclass
class TrainingModel:
    """A training base (`POST /model`): an Active Stable-diffusion checkpoint, or an upload that becomes one."""

    id: str
    name: str
    status: TrainingModelStatus
    created: float
    model_type: str  # Stable-diffusion (the only base the trainer takes)
    params: dict[str, Any] = field(default_factory=dict)
    checkpoint_id: str | None = None  # the catalogue checkpoint holding the file (uploads: made by POST /model)
    base_key: str | None = None  # blob key of the prepared base file, once Complete
    base_filename: str | None = None
    sha256: str | None = None
    extract_ema: bool = False
    error: str | None = None
    owner: str | None = None


TRAINING_MODELS = Table("training_models", indexed=("status", "model_type", "owner"))


@dataclass
class TrainingJob:
    id: str
    train_type: str  # Lora | Stable-diffusion
    status: TrainingStatus
    created: float
    model_id: str
    dataset_name: str
    instance_type: str
    params: dict[str, Any]  # the request's training_params and config_params, as sent
    hyperparameters: dict[str, str]  # TrainingConfig.to_hyperparameters(): what the trainer reads
    model_name: str  # the trained file's stem (and the checkpoint's name)
    total_steps: int = 0
    class_dataset_name: str | None = None
    # Owned by the training compute's reports.
    attempts: int = 0  # process starts since the job was last started by a user (a crash allows one more)
    progress: dict[str, Any] | None = None  # the last progress.json seen when the process ended
    checkpoint_id: str | None = None  # Complete: the Active checkpoint made from the result
    error: str | None = None
    start_time: str | None = None
    end_time: str | None = None
    run_name: str | None = None  # the compute's name of the current run (SageMaker's training job name)
    completing: str | None = None  # claim of the one report registering the trained model (a run name or "local")
    owner: str | None = None


TRAINING_JOBS = Table("training_jobs", indexed=("status", "train_type", "owner"))


# -- users, their keys, roles, the audit trail ---------------------------------------------------------------
@dataclass
class User:
    """A person (or program) with keys of its own. Deleting a user keeps its record as a tombstone."""

    id: str  # the username
    username: str
    status: UserStatus
    created: float
    roles: list[str]
    creator: str  # the username of who created it
    deleted: float | None = None
    deleted_by: str | None = None


USERS = Table("users", indexed=("status",))


@dataclass
class ApiKey:
    """One API key of a user: `sdk_<id>_<secret>`. Only a salted hash of the secret is kept."""

    id: str  # the key id, also inside the key
    username: str
    created: float
    salt: str  # hex
    secret_hash: str  # HMAC-SHA256(salt, secret), hex
    creator: str
    expires: float | None = None  # Unix seconds; None: never
    revoked: float | None = None
    revoked_by: str | None = None


API_KEYS = Table("api_keys", indexed=("username",))


@dataclass
class Role:
    """A named set of permissions (the built-in `admin` and `user` roles are not stored: see vocabulary)."""

    id: str  # the role name
    role_name: str
    created: float
    permissions: list[str]
    creator: str
    max_queued_jobs: int | None = None  # None: no limit
    max_concurrent_trainings: int | None = None


ROLES = Table("roles", indexed=())


@dataclass
class AuditEntry:
    """One successful change (POST, PUT or DELETE): who, what, when. Never a key, a URL or a body."""

    id: str
    created: float
    actor: str  # the username of the key
    key_id: str | None  # None: the bootstrap key
    action: str  # "<METHOD> <route template>", e.g. "DELETE /users/{username}"
    status: int
    path_params: dict[str, str] = field(default_factory=dict)
    record_ids: list[str] = field(default_factory=list)  # the path parameters' and the answer's ids


AUDIT = Table("audit", indexed=("actor",))
