"""Training: training bases (`/model`) and training jobs (`/train`), and their state machines.

Bases (API.md): `Initialed` → `Creating` → `Complete` | `Fail`. A base is an Active Stable-diffusion
checkpoint of the catalogue, named by `checkpoint_id` or uploaded through `POST /model` (the catalogue's own
upload, `CheckpointService.create_upload`); `PUT /model` `Creating` completes the upload and prepares the
file in the background (checked with `model_files`; `extract_ema`: the EMA weights written as the model's).

Jobs: `Initial` → `Training` → `Complete` | `Fail` | `Stopped`; `Stopped` → `Training` (resume). Everything
the trainer could refuse is checked at `POST /train` (`parse_training_config`, the base, the dataset, the
instance type), so a job fails later only for what only running shows (a broken image, NaN, a crash). The
training compute (`compute/base.py` `TrainingCompute`: local processes, or SageMaker training jobs) runs each
run of a job and reports its end (`run_ended`): a run that dies (a signal, a crash without a reason, SageMaker
stopping it) is started again once from its saved state, then the job fails with the reason. A `Complete`
job's model becomes an Active checkpoint (`Lora` or `Stable-diffusion`) of the catalogue.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import anyio

from aws_extension.middleware.blobs.base import BlobStore
from aws_extension.middleware.compute.base import (
    LOCAL_INSTANCE_TYPE,
    ChannelFile,
    TrainingCompute,
    TrainingEnded,
    TrainingRun,
)
from aws_extension.middleware.compute.sagemaker.instance_types import GPUS
from aws_extension.middleware.errors import InvalidRequest, ServiceError, UnknownRecord, WrongState
from aws_extension.middleware.principals import BOOTSTRAP_ADMIN, Principal
from aws_extension.middleware.records import (
    TRAINING_JOBS,
    TRAINING_MODELS,
    Dataset,
    TrainingJob,
    TrainingModel,
)
from aws_extension.middleware.services.checkpoints import CheckpointService, FileToUpload
from aws_extension.middleware.services.datasets import DatasetService
from aws_extension.middleware.services.names import check_name, new_id, now, time_text
from aws_extension.middleware.services.ownership import check_trainings, owned_page, sees_owner
from aws_extension.middleware.store.base import Store
from aws_extension.middleware.store.typed import Records
from aws_extension.model_files import (
    SAFETENSORS_SUFFIXES,
    ModelFileError,
    check_model_file,
    read_safetensors_header,
)
from aws_extension.training import (
    TrainingConfig,
    TrainingConfigError,
    concept_subfolder,
    parse_training_config,
    trained_indices,
)
from aws_extension.training_memory import DoesNotFit, base_model_size, check_fits
from aws_extension.vocabulary import (
    MODEL_SUFFIXES,
    CheckpointStatus,
    CheckpointType,
    DatasetStatus,
    TrainingModelStatus,
    TrainingStatus,
)

log = logging.getLogger(__name__)

SD = str(CheckpointType.STABLE_DIFFUSION)
IMAGE_SIGNATURES = {".png": (b"\x89PNG\r\n\x1a\n",), ".jpg": (b"\xff\xd8\xff",), ".jpeg": (b"\xff\xd8\xff",),
                    ".webp": (b"RIFF",)}
CAPTION_SUFFIX = ".txt"
PROCESS_STARTS = 2  # a job's run may die once and be started again from its state
COPY_CHUNK = 8 * 1024 * 1024
PREPARE_MODEL_TASK = "prepare-model"  # lambda_entry routes {"sd_aws_task": "prepare-model"} to prepare()
# A claim on registering a trained model older than this is taken over (its holder died): registering copies
# the model once, well within Lambda's 15 minutes.
COMPLETING_STALE_S = 1800.0


# -- training bases --------------------------------------------------------------------------------------
class TrainingModelService:
    """`launch`: how a preparation runs elsewhere (under Lambda: an asynchronous invocation of the function,
    which calls `prepare`); default: a thread of this process."""

    def __init__(self, store: Store, blobs: BlobStore, checkpoints: CheckpointService, wait_s: float,
                 launch: Callable[[str], None] | None = None):
        self.records = Records(store, TRAINING_MODELS, TrainingModel)
        self.blobs = blobs
        self.checkpoints = checkpoints
        self.wait_s = wait_s
        self.launch = launch
        self._preparations = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-preparation")

    def create(self, model_type: str, name: str | None, checkpoint_id: str | None, filenames: list[FileToUpload],
               params: dict[str, Any], principal: Principal = BOOTSTRAP_ADMIN,
               ) -> tuple[TrainingModel, dict[str, list[str]] | None]:
        """POST /model: an `Initialed` base from an Active checkpoint, or with part URLs to upload one."""
        create_params = params.get("create_model_params") or {}
        if not isinstance(create_params, dict):
            raise InvalidRequest("params.create_model_params must be an object.")
        if create_params.get("from_hub"):
            raise InvalidRequest("params.create_model_params.from_hub: models are not fetched from the Hugging Face "
                                 "Hub here; import the model by URL first (POST /upload_checkpoint with its file's "
                                 "URL), then create the training model from it with checkpoint_id.")
        if model_type != SD:
            raise InvalidRequest(f"model_type must be {SD} (the trainer trains on a Stable Diffusion checkpoint), "
                                 f"not {model_type!r}.")
        name = check_name(name or create_params.get("new_model_name") or "", "model name")
        if bool(checkpoint_id) == bool(filenames):
            raise InvalidRequest("give either checkpoint_id (an Active Stable-diffusion checkpoint) or filenames "
                                 "(one model file to upload).")
        urls: dict[str, list[str]] | None = None
        if checkpoint_id:
            checkpoint = self.checkpoints.get(checkpoint_id, principal)
            if checkpoint.type != SD or checkpoint.status != CheckpointStatus.ACTIVE:
                raise InvalidRequest(f"checkpoint {checkpoint_id} is a {checkpoint.status} {checkpoint.type} "
                                     f"checkpoint; a training model needs an Active {SD} one.")
            if len(checkpoint.files) != 1:
                raise InvalidRequest(f"checkpoint {checkpoint_id} has {len(checkpoint.files)} files; a training "
                                     "model is one model file.")
        else:
            if len(filenames) != 1:
                raise InvalidRequest(f"filenames lists {len(filenames)} files; a training model is one model file.")
            if not filenames[0].filename.lower().endswith(MODEL_SUFFIXES):
                raise InvalidRequest(f"filenames: {filenames[0].filename!r} is not a model file (they end in "
                                     f"{', '.join(MODEL_SUFFIXES)}); upload the checkpoint itself, not an archive.")
            checkpoint, urls = self.checkpoints.create_upload(SD, filenames, {"training_model": name}, principal)
        created = now()
        record = TrainingModel(id=new_id(), name=name, status=TrainingModelStatus.INITIALED, created=created,
                               model_type=SD, params={**params, "created": time_text(created)},
                               checkpoint_id=checkpoint.id, extract_ema=bool(create_params.get("extract_ema")),
                               owner=principal.username)
        self.records.create(record)
        return record, urls

    def get(self, model_id: str, principal: Principal = BOOTSTRAP_ADMIN) -> TrainingModel:
        """The base, if the principal sees it (its own, or any for administrators)."""
        record = self.records.get(model_id)
        if record is None or not sees_owner(principal, record.owner):
            raise UnknownRecord(f"model {model_id} does not exist.")
        return record

    def page(self, statuses: list[str], types: list[str], limit: int, last_key: str | None,
             principal: Principal = BOOTSTRAP_ADMIN, owner: str | None = None) -> tuple[list[TrainingModel], str | None]:
        """GET /models: one page of the principal's bases, newest first, and the next page's `last_key`."""
        return owned_page(self.records, {"status": statuses, "model_type": types}, limit, last_key, principal, owner,
                          "training model")

    def location(self, record: TrainingModel) -> str:
        return self.blobs.uri(record.base_key or f"training-models/{record.id}")

    async def start_creating(self, model_id: str, tags: dict[str, list[tuple[int, str]]],
                             principal: Principal = BOOTSTRAP_ADMIN) -> TrainingModel:
        """PUT /model `Creating`: complete the upload (if any), then prepare the base in the background; the
        answer waits for the preparation up to `wait_s`."""
        record = await anyio.to_thread.run_sync(self.get, model_id, principal)
        if record.status != TrainingModelStatus.INITIALED:
            raise WrongState(f"model {model_id} is {record.status}, not {TrainingModelStatus.INITIALED}: "
                             "it was already created.")
        checkpoint = await anyio.to_thread.run_sync(self.checkpoints.get, record.checkpoint_id)
        if checkpoint.status == CheckpointStatus.INITIALED:
            checkpoint = await self.checkpoints.update(checkpoint.id, CheckpointStatus.ACTIVE, tags)
        started = self.records.update(model_id, {"status": TrainingModelStatus.CREATING, "error": None},
                                      expect={"status": TrainingModelStatus.INITIALED})
        if started is None:
            raise WrongState(f"model {model_id} is being created by another request.")
        if self.launch is not None:  # the request ends before a preparation of GBs would
            await anyio.to_thread.run_sync(self.launch, model_id)
            return started
        preparation = self._preparations.submit(self.prepare, model_id)
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(preparation)), self.wait_s)
        except asyncio.TimeoutError:
            return await anyio.to_thread.run_sync(self.get, model_id)

    def prepare(self, model_id: str, checkpoint_wait_s: float = 3600.0) -> TrainingModel:
        """Check the base's file (after its upload's completion, which may still run) and extract its EMA
        weights if asked; `Complete`, or `Fail` with the reason."""
        record = self.get(model_id)
        try:
            checkpoint = self.checkpoints.get(record.checkpoint_id)
            deadline = time.monotonic() + checkpoint_wait_s
            while checkpoint.status == CheckpointStatus.INITIALED and checkpoint.completing \
                    and time.monotonic() < deadline:
                time.sleep(0.5)
                checkpoint = self.checkpoints.get(record.checkpoint_id)
            if checkpoint.status != CheckpointStatus.ACTIVE:
                raise InvalidRequest(f"its checkpoint {checkpoint.id} is {checkpoint.status}"
                                     + (f": {checkpoint.error}" if checkpoint.error else
                                        "; complete its upload (PUT /model with multi_parts_tags)."))
            (entry,) = checkpoint.files
            check_model_file(lambda start, length: self.blobs.read(entry.key, start, length), entry.size,
                             entry.filename, SD)
            base_key, sha256 = entry.key, entry.sha256
            if record.extract_ema:
                base_key = f"training-models/{record.id}/{entry.filename}"
                sha256 = extract_ema(self.blobs, entry.key, entry.size, entry.filename, base_key)
        except (ServiceError, ModelFileError, UnknownRecord) as exc:
            reason = exc.message if isinstance(exc, ServiceError) else str(exc)
            return self._fail(model_id, reason)
        except Exception as exc:  # noqa: BLE001 - the base must end with a reason, not stay Creating
            log.exception("model %s: preparation failed", model_id)
            return self._fail(model_id, f"the preparation failed: {type(exc).__name__}: {exc}")
        done = self.records.update(model_id, {"status": TrainingModelStatus.COMPLETE, "base_key": base_key,
                                              "base_filename": entry.filename, "sha256": sha256},
                                   expect={"status": TrainingModelStatus.CREATING})
        return done or self.get(model_id)

    def _fail(self, model_id: str, reason: str) -> TrainingModel:
        log.warning("model %s failed: %s", model_id, reason)
        failed = self.records.update(model_id, {"status": TrainingModelStatus.FAIL, "error": reason},
                                     expect={"status": TrainingModelStatus.CREATING})
        return failed or self.get(model_id)

    def restore(self) -> None:
        """At start: preparations a stopped middleware left `Creating` run again (they are repeatable)."""
        for record in self.records.iterate({"status": [TrainingModelStatus.CREATING]}):
            self._preparations.submit(self.prepare, record.id)

    def stop(self) -> None:
        self._preparations.shutdown(wait=False, cancel_futures=True)


def extract_ema(blobs: BlobStore, key: str, size: int, filename: str, out_key: str) -> str:
    """Write the checkpoint at `key` with its EMA weights (`model_ema.<name without dots>`, A1111's layout)
    in place of `model.diffusion_model.*`, and without the `model_ema.*` tensors; the new file's sha256."""
    if not filename.lower().endswith(SAFETENSORS_SUFFIXES):
        raise InvalidRequest(f"extract_ema needs a .safetensors checkpoint; {filename} is a pickle container, "
                             "which the middleware never unpickles.")
    header = read_safetensors_header(lambda start, length: blobs.read(key, start, length), size, filename)
    tensors = header.tensors
    ema_of = {name: "model_ema." + name[len("model."):].replace(".", "") for name in tensors
              if name.startswith("model.diffusion_model.")}
    swapped = {name: ema for name, ema in ema_of.items() if ema in tensors
               and tensors[ema]["shape"] == tensors[name]["shape"] and tensors[ema]["dtype"] == tensors[name]["dtype"]}
    if not swapped:
        raise InvalidRequest(f"{filename} has no EMA weights (model_ema.* tensors of the UNet's shapes); create "
                             "the model with extract_ema false.")
    kept = [name for name in tensors if not name.startswith("model_ema.")]
    data_start = 8 + header.header_length
    layout: dict[str, Any] = {}
    offset = 0
    sources: list[tuple[int, int]] = []
    for name in kept:
        source = tensors[swapped.get(name, name)]
        begin, end = source["data_offsets"]
        layout[name] = {"dtype": tensors[name]["dtype"], "shape": tensors[name]["shape"],
                        "data_offsets": [offset, offset + end - begin]}
        sources.append((data_start + begin, end - begin))
        offset += end - begin
    if header.metadata:
        layout["__metadata__"] = {**header.metadata, "sd_aws_extracted_ema": "true"}
    encoded = json.dumps(layout, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    digest = hashlib.sha256()
    with blobs.writer(out_key) as out:
        for chunk in (struct.pack("<Q", len(encoded)), encoded):
            out.write(chunk)
            digest.update(chunk)
        for start, length in sources:
            while length:
                chunk = blobs.read(key, start, min(length, COPY_CHUNK))
                out.write(chunk)
                digest.update(chunk)
                start, length = start + len(chunk), length - len(chunk)
    return digest.hexdigest()


# -- training jobs ---------------------------------------------------------------------------------------
def _dataset_name(reference: Any, field: str) -> str:
    """A dataset named by its name or by its location (the seed's `s3://<bucket>/dataset/<name>`)."""
    if not isinstance(reference, str) or not reference.strip():
        raise InvalidRequest(f"{field} must name a dataset of POST /dataset (its name, or its s3 location).")
    text = reference.strip().rstrip("/")
    if "/dataset/" in text:
        text = text.split("/dataset/", 1)[1]
    if "/" in text:
        raise InvalidRequest(f"{field}: {reference!r} is not a dataset: use a dataset's name or its location "
                             "(…/dataset/<name>, as GET /datasets shows in s3).")
    return text


DatasetReference = tuple[str, str]  # (dataset name, the body's field that named it)


def _concept_datasets(training_params: dict[str, Any], config: TrainingConfig, own: str, tar_list: str,
                      concept_fields: tuple[str, str], required: bool) -> list[DatasetReference | None]:
    """Each trained concept's dataset (`config.trained_concepts`, in order), from the concept's own fields
    (`concept_fields`: ours and the seed's), entry i of `training_params.<tar_list>` and, for the first
    concept, `training_params.<own>`; fields that name different datasets for one concept are refused."""
    indices = trained_indices(config.concepts_list)
    listed = training_params.get(tar_list)
    if listed is not None and not isinstance(listed, list):
        raise InvalidRequest(f"training_params.{tar_list} must be a list of dataset locations.")
    listed = listed or []
    if any(listed[len(indices):]):
        raise InvalidRequest(f"training_params.{tar_list} lists {len([x for x in listed if x])} datasets and the job "
                             f"trains {len(indices)} concept(s): give one per concept, in the order of concepts_list.")
    references: list[DatasetReference | None] = []
    for position, index in enumerate(indices):
        concept = config.concepts_list[index]
        named = []
        if position == 0 and training_params.get(own):
            named.append((training_params[own], f"training_params.{own}"))
        if position < len(listed) and listed[position]:
            named.append((listed[position], f"training_params.{tar_list}[{position}]"))
        named += [(getattr(concept, name), f"config_params.concepts_list[{index}].{name}")
                  for name in concept_fields if getattr(concept, name)]
        resolved = [(_dataset_name(value, field), field) for value, field in named]
        differing = next((other for other in resolved if other[0] != resolved[0][0]), None)
        if differing:
            raise InvalidRequest(f"{resolved[0][1]} and {differing[1]} name different datasets "
                                 f"({resolved[0][0]!r}, {differing[0]!r}); name one dataset per concept.")
        if not resolved and required:
            if position == 0:
                raise InvalidRequest(f"training_params.{own} is missing: name the dataset of training images "
                                     f"({own}, or the seed's {tar_list}).")
            raise InvalidRequest(f"config_params.concepts_list[{index}].{concept_fields[0]} is missing: name the "
                                 f"dataset of this concept's images ({concept_fields[0]}, the seed's "
                                 f"{concept_fields[1]}, or entry {position} of training_params.{tar_list}).")
        references.append(resolved[0] if resolved else None)
    return references


def _trained_name(config: TrainingConfig, job_id: str) -> str:
    """The trained file's stem, as the trainer writes it (`engine/train/trainer.py`)."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in config.model_name.strip())
    return name or f"{config.train_type.lower()}-{job_id[:8]}"


def _check_gpu_memory(config: TrainingConfig, instance_type: str, local_gpu_memory_gib: float, blobs: BlobStore,
                      model: TrainingModel) -> None:
    """InvalidRequest when the job's settings cannot fit the GPU it would run on (`training_memory.py`): an
    `ml.*` type's GPU, or for `local` the SD_AWS_LOCAL_TRAINING_GPU_MEMORY_GIB setting (0: not checked)."""
    if instance_type == LOCAL_INSTANCE_TYPE:
        gpu_gib, where, others = local_gpu_memory_gib, "this machine's GPU", {}
    else:  # a CPU type has no GPU to fit
        gpu_gib = GPUS[instance_type].memory_gib if instance_type in GPUS else 0
        where = instance_type
        others = {name: gpu.memory_gib for name, gpu in GPUS.items() if gpu.count == 1}  # the trainer uses one GPU
    if not gpu_gib:
        return
    size = base_model_size(lambda start, length: blobs.read(model.base_key, start, length),
                           blobs.size(model.base_key) or 0, model.base_filename)
    try:
        check_fits(config, where, gpu_gib, size, others)
    except DoesNotFit as exc:
        raise InvalidRequest(f"config_params: {exc}") from None


class TrainingService:
    def __init__(self, store: Store, blobs: BlobStore, models: TrainingModelService, datasets: DatasetService,
                 checkpoints: CheckpointService, compute: TrainingCompute, *, stop_wait_s: float, signed_url_ttl_s: int,
                 local_gpu_memory_gib: float = 0.0):
        self.records = Records(store, TRAINING_JOBS, TrainingJob)
        self.blobs = blobs
        self.models = models
        self.datasets = datasets
        self.checkpoints = checkpoints
        self.compute = compute
        self.stop_wait_s = stop_wait_s
        self.signed_url_ttl_s = signed_url_ttl_s
        self._ended_lock = threading.RLock()  # a refused submit reports while a report is being handled
        self.local_gpu_memory_gib = local_gpu_memory_gib  # the memory check of `local` jobs (0: none)

    # -- POST /train ----------------------------------------------------------------------------------
    def create(self, train_type: str, model_id: str, params: dict[str, Any],
               principal: Principal = BOOTSTRAP_ADMIN) -> TrainingJob:
        training_params = params.get("training_params") or {}
        config_params = params.get("config_params") or {}
        if not isinstance(training_params, dict) or not isinstance(config_params, dict):
            raise InvalidRequest("params.training_params and params.config_params must be objects.")
        instance_type = self._check_instance_type(training_params)
        try:
            config = parse_training_config(train_type, config_params)
        except TrainingConfigError as exc:
            where = exc.field if exc.field == "train_type" else f"config_params.{exc.field}"
            raise InvalidRequest(f"{where}: {exc}.") from None
        model = self.models.get(model_id, principal)
        if model.status != TrainingModelStatus.COMPLETE:
            raise InvalidRequest(f"model {model_id} is {model.status}"
                                 + (f" ({model.error})" if model.error else "")
                                 + f"; a training job needs a {TrainingModelStatus.COMPLETE} model (PUT /model).")
        instances = _concept_datasets(training_params, config, "dataset_name", "data_tar_list",
                                      ("dataset_name", "instance_data_dir"), required=True)
        classes = _concept_datasets(training_params, config, "class_dataset_name", "class_data_tar_list",
                                    ("class_dataset_name", "class_data_dir"), required=False)
        images = 0
        concepts = list(config.concepts_list)
        for index, (name, field), class_reference in zip(trained_indices(concepts), instances, classes, strict=True):
            images += len(self._images(self._usable_dataset(name, field, principal), field))
            if class_reference:
                self._images(self._usable_dataset(*class_reference, principal), class_reference[1])
            concepts[index] = dataclasses.replace(concepts[index], dataset_name=name,
                                                  class_dataset_name=class_reference[0] if class_reference else "")
        config = dataclasses.replace(config, concepts_list=tuple(concepts))
        dataset_name, class_name = instances[0][0], classes[0][0] if classes[0] else None
        _check_gpu_memory(config, instance_type, self.local_gpu_memory_gib, self.blobs, model)
        job_id, created = new_id(), now()
        model_name = _trained_name(config, job_id)
        config = dataclasses.replace(config, model_name=model_name)
        record = TrainingJob(id=job_id, train_type=config.train_type, status=TrainingStatus.INITIAL,
                             created=created, model_id=model_id, dataset_name=dataset_name, instance_type=instance_type,
                             params={**params, "created": time_text(created)},
                             hyperparameters=config.to_hyperparameters(), model_name=model_name,
                             total_steps=config.total_steps(images), class_dataset_name=class_name,
                             owner=principal.username)
        self.records.create(record)
        return record

    def _check_instance_type(self, training_params: dict[str, Any]) -> str:
        """Where the job trains (`training_instance_type`, with `use_spot`), as the backend's compute allows."""
        return self.compute.check_instance_type(training_params.get("training_instance_type", LOCAL_INSTANCE_TYPE),
                                                training_params.get("use_spot", False))

    def _usable_dataset(self, name: str, field: str, principal: Principal) -> Dataset:
        try:
            dataset = self.datasets.get(name, principal)
        except UnknownRecord:
            raise InvalidRequest(f"{field}: dataset {name!r} does not exist; create it with POST /dataset.") from None
        if dataset.status != DatasetStatus.ENABLED:
            raise InvalidRequest(f"{field}: dataset {name!r} is {dataset.status}; enable it first "
                                 f"(PUT /dataset with status {DatasetStatus.ENABLED}).")
        return dataset

    def _images(self, dataset: Dataset, field: str) -> list[str]:
        """The dataset's image file names; InvalidRequest naming a file that is neither an image nor a caption,
        or whose bytes are not the image its name says."""
        images = []
        for f in dataset.files:
            suffix = Path(f.filename).suffix.lower()
            if suffix == CAPTION_SUFFIX:
                continue
            if suffix not in IMAGE_SIGNATURES:
                raise InvalidRequest(f"{field}: dataset {dataset.name!r} has {f.filename}, which is not an image "
                                     f"(PNG, JPEG or WebP) or a {CAPTION_SUFFIX} caption; remove it from the dataset.")
            head = self.blobs.read(f.key, 0, 12)
            if not head.startswith(IMAGE_SIGNATURES[suffix]) or (suffix == ".webp" and head[8:12] != b"WEBP"):
                raise InvalidRequest(f"{field}: dataset {dataset.name!r}: {f.filename} is not a {suffix[1:]} image "
                                     "(its bytes say otherwise); upload the image again.")
            images.append(f.filename)
        if not images:
            raise InvalidRequest(f"{field}: dataset {dataset.name!r} has no images (PNG, JPEG or WebP) to train on.")
        return images

    # -- PUT /train -----------------------------------------------------------------------------------
    def get(self, job_id: str, principal: Principal = BOOTSTRAP_ADMIN) -> TrainingJob:
        """The job, if the principal sees it (its own, or any for administrators)."""
        record = self.records.get(job_id)
        if record is None or not sees_owner(principal, record.owner):
            raise UnknownRecord(f"training job {job_id} does not exist.")
        return record

    def start(self, job_id: str, principal: Principal = BOOTSTRAP_ADMIN) -> TrainingJob:
        """`Training`: start an `Initial` job or resume a `Stopped` one (from its saved state), within the
        principal's `max_concurrent_trainings`."""
        record = self.get(job_id, principal)
        if record.status == TrainingStatus.TRAINING:
            raise WrongState(f"training job {job_id} is already {TrainingStatus.TRAINING}.")
        if record.status not in (TrainingStatus.INITIAL, TrainingStatus.STOPPED):
            raise WrongState(f"training job {job_id} is {record.status}; only an {TrainingStatus.INITIAL} or "
                             f"{TrainingStatus.STOPPED} job can start training.")
        if self.compute.is_running(record):
            raise WrongState(f"training job {job_id} is still saving its state after Stop; try again in a moment.")
        if principal.max_concurrent_trainings is not None:
            check_trainings(principal, self.records.count({"owner": [principal.username],
                                                           "status": [TrainingStatus.TRAINING]}))
        started = self.records.update(job_id, {"status": TrainingStatus.TRAINING, "attempts": 1, "error": None,
                                                "start_time": record.start_time or time_text(now()),
                                                "run_name": self.compute.new_run_name(job_id), "completing": None},
                                      expect={"status": record.status})
        if started is None:
            raise WrongState(f"training job {job_id} changed while it was being started; try again.")
        self.compute.submit(self._run(started))
        return self.get(job_id)

    async def stop(self, job_id: str, principal: Principal = BOOTSTRAP_ADMIN) -> TrainingJob:
        """`Stopped`: a waiting job is Stopped at once; a running one saves its state and exits (the answer
        waits for that up to `stop_wait_s`, after which it shows `Training` until the process has ended)."""
        record = await anyio.to_thread.run_sync(self.get, job_id, principal)
        if record.status != TrainingStatus.TRAINING:
            raise WrongState(f"training job {job_id} is {record.status}; only a {TrainingStatus.TRAINING} job "
                             "can be stopped.")
        if await anyio.to_thread.run_sync(self.compute.stop, record):
            await anyio.to_thread.run_sync(self._end, job_id, TrainingStatus.STOPPED, {})
            return await anyio.to_thread.run_sync(self.get, job_id)
        deadline = time.monotonic() + self.stop_wait_s
        while time.monotonic() < deadline and await anyio.to_thread.run_sync(self.compute.is_running, record):
            await asyncio.sleep(0.2)
        return await anyio.to_thread.run_sync(self.get, job_id)

    def _run(self, record: TrainingJob) -> TrainingRun:
        """The job's channels: each concept's dataset in its folder (`worker/sagemaker_train.py`)."""
        model = self.models.get(record.model_id)
        concepts = TrainingConfig.from_hyperparameters(record.hyperparameters).trained_concepts
        instance: list[ChannelFile] = []
        class_images: list[ChannelFile] = []
        for index, concept in enumerate(concepts):
            folder = concept_subfolder(index, len(concepts))
            several = len(concepts) > 1  # one concept: the record's names (jobs from before concepts had names)
            class_name = concept.class_dataset_name if several else record.class_dataset_name
            instance += [ChannelFile(f.key, folder + f.filename)
                         for f in self.datasets.get(concept.dataset_name if several else record.dataset_name).files]
            if class_name:
                class_images += [ChannelFile(f.key, folder + f.filename) for f in self.datasets.get(class_name).files]
        return TrainingRun(job_id=record.id, hyperparameters=record.hyperparameters,
                           base=ChannelFile(model.base_key, model.base_filename), instance=instance,
                           class_images=class_images, instance_type=record.instance_type,
                           use_spot=(record.params.get("training_params") or {}).get("use_spot") is True,
                           run_name=record.run_name)

    # -- the compute's reports ------------------------------------------------------------------------
    def run_ended(self, job_id: str, ended: TrainingEnded) -> None:
        """A run ended (`TrainingReports`): Complete (the model registered), Fail with the reason, Stopped, or,
        for a run that died, once more from its saved state. A report of another run than the record's
        current one (late, or repeated after a new start) changes nothing."""
        with self._ended_lock:
            record = self.get(job_id)
            if record.status != TrainingStatus.TRAINING:
                return
            if ended.run_name != record.run_name:
                log.info("training %s: a report of run %s, not of its current run %s: ignored", job_id,
                         ended.run_name, record.run_name)
                return
            progress = {k: v for k, v in (ended.progress or {}).items() if k != "updated_at"}
            if ended.completed:
                self._complete(record, ended, progress)
            elif ended.failure:
                self._end(job_id, TrainingStatus.FAIL, {"progress": progress, "error": ended.failure})
            elif ended.stopped:  # stopped as asked (SIGTERM before the trainer listened to it: its last state)
                self._end(job_id, TrainingStatus.STOPPED, {"progress": progress})
            elif record.attempts < PROCESS_STARTS:
                log.warning("training %s: %s; starting it again from its last saved state", job_id, ended.death)
                again = self.records.update(job_id, {"attempts": record.attempts + 1, "progress": progress,
                                                     "run_name": self.compute.new_run_name(job_id)},
                                            expect={"status": TrainingStatus.TRAINING, "run_name": record.run_name})
                if again:
                    self.compute.submit(self._run(again))
            else:
                self._end(job_id, TrainingStatus.FAIL, {
                    "progress": progress,
                    "error": f"{ended.death} at step {progress.get('step', 0)}, after it had already been started "
                             f"again once from its saved state; {self.compute.logs}."})

    def _complete(self, record: TrainingJob, ended: TrainingEnded, progress: dict[str, Any]) -> None:
        """Register the trained model once: a claim (`completing`) keeps a repeated report from registering
        it twice; a claim whose holder died is taken over after COMPLETING_STALE_S."""
        claim = f"{record.run_name or 'local'}@{time.time():.0f}"
        held = record.completing
        if held and time.time() - float(held.rsplit("@", 1)[-1] or 0) < COMPLETING_STALE_S:
            return
        if self.records.update(record.id, {"completing": claim},
                               expect={"status": TrainingStatus.TRAINING, "completing": held}) is None:
            return  # another report claimed it first
        try:
            with self.compute.open_model(record, ended.model or "") as (name, stream):
                checkpoint_id = self._register(record, name, stream)
        except (ServiceError, OSError, ValueError) as exc:  # a tar that is not one, a model missing from it
            reason = exc.message if isinstance(exc, ServiceError) else str(exc)
            self._end(record.id, TrainingStatus.FAIL, {"progress": progress,
                                                       "error": f"the trained model could not be registered: {reason}"})
            return
        self._end(record.id, TrainingStatus.COMPLETE, {"progress": progress, "checkpoint_id": checkpoint_id})

    def _register(self, record: TrainingJob, trained_name: str, trained: BinaryIO) -> str:
        """The trained file as an Active checkpoint of the catalogue (a name already taken gets the job's id)."""
        suffix = Path(trained_name).suffix
        filename = f"{record.model_name}{suffix}"
        if filename in self.checkpoints.active_file_names(record.train_type):
            filename = f"{record.model_name}-{record.id[:8]}{suffix}"
        checkpoint = self.checkpoints.new_record(record.train_type, [filename],
                                                 {"training_job_id": record.id, "model_id": record.model_id},
                                                 source="train", owner=record.owner)
        self.checkpoints.records.create(checkpoint)
        entry = checkpoint.files[0]
        digest, size = hashlib.sha256(), 0
        with self.blobs.writer(entry.key) as out:
            while chunk := trained.read(COPY_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        done = dataclasses.replace(entry, sha256=digest.hexdigest(), size=size)
        return self.checkpoints.finish(checkpoint.id, [done], expect={"status": CheckpointStatus.INITIALED}).id

    def _end(self, job_id: str, status: TrainingStatus, changes: dict[str, Any]) -> None:
        ended = self.records.update(job_id, {**changes, "status": status, "end_time": time_text(now())},
                                    expect={"status": TrainingStatus.TRAINING})
        if ended is not None:
            log.info("training %s: %s%s", job_id, status, f" ({ended.error})" if ended.error else "")

    # -- reading --------------------------------------------------------------------------------------
    def describe(self, job_id: str, principal: Principal = BOOTSTRAP_ADMIN,
                 ) -> tuple[TrainingJob, dict[str, Any], list[str], int | None]:
        """The record, its progress (live while it trains), signed URLs of its samples, its queue position."""
        record = self.get(job_id, principal)
        if record.status == TrainingStatus.TRAINING:
            self.compute.reconcile(record)  # an end whose report was lost shows now
            record = self.get(job_id, principal)
        live = self.compute.progress(record) if record.status == TrainingStatus.TRAINING else None
        progress = {**(record.progress or {}), **(live or {})}
        return record, progress, self._sample_urls(record, progress.get("samples") or []), \
            self.compute.queue_position(job_id)

    def _sample_urls(self, record: TrainingJob, names: list[str]) -> list[str]:
        urls = []
        for name in names:
            if not isinstance(name, str) or Path(name).name != name or not name.endswith(".png"):
                continue  # the trainer writes plain PNG names; anything else is not read
            key = self.compute.sample_key(record, name)
            if key is not None:
                urls.append(self.blobs.signed_url(key, "GET", self.signed_url_ttl_s))
        return urls

    def page(self, statuses: list[str], types: list[str], limit: int, last_key: str | None,
             principal: Principal = BOOTSTRAP_ADMIN, owner: str | None = None) -> tuple[list[TrainingJob], str | None]:
        """GET /trains: one page of the principal's training jobs, newest first, and the next page's `last_key`."""
        return owned_page(self.records, {"status": statuses, "train_type": types}, limit, last_key, principal, owner,
                          "training job")

    def input_location(self, record: TrainingJob) -> str:
        return self.blobs.uri(f"train/{record.id}")

    def restore(self) -> None:
        """At start: jobs that were `Training` when the middleware stopped run again from their saved state
        (local processes died with it); SageMaker's ran on, and are reconciled."""
        if not self.compute.restarts_with_middleware:
            self.reconcile()
            return
        for record in self.records.all({"status": [TrainingStatus.TRAINING]}, oldest_first=True):
            log.info("training %s was running when the middleware stopped; resuming it", record.id)
            try:
                run = self._run(record)
            except ServiceError as exc:
                self._end(record.id, TrainingStatus.FAIL, {"error": f"it cannot resume: {exc.message}"})
                continue
            self.records.update(record.id, {"completing": None}, expect={"status": TrainingStatus.TRAINING})
            self.compute.submit(run)

    def reconcile(self) -> None:
        """Every `Training` job whose run ended unreported (a lost event) gets its end now (the sweep)."""
        for record in self.records.all({"status": [TrainingStatus.TRAINING]}, oldest_first=True):
            try:
                self.compute.reconcile(record)
            except Exception:  # one job's trouble must not stop the others'
                log.exception("training %s: reconciling it with its compute failed", record.id)
