"""Training on SageMaker: each run of a training job is a SageMaker training job (the `TrainingCompute` port
of compute/base.py on the AWS backend).

Run of API job J in stack S, named `S--<J's first 16 hex digits>-<start time, ms, base 36>` and tagged
`sd-aws:stack` / `sd-aws:training-job` (a new name per run: SageMaker never reuses one):
- the worker image (`worker_image`) with its `train` entry point (`AlgorithmSpecification`, input mode File),
  run as the stack's SageMaker role; `HyperParameters` = the record's (`TrainingConfig.to_hyperparameters()`);
- channels `base`, `instance`, `class`: manifest files `training/J/input/<channel>.manifest` that list exactly the
  record's files under their own keys (the base's, the dataset's): nothing is copied;
- output `s3://<bucket>/training/J/output/` (SageMaker writes `<run>/output/model.tar.gz` and names it in
  `ModelArtifacts`); checkpoints `s3://<bucket>/training/J/checkpoints/` (`CheckpointConfig`): the trainer's
  saved state, so every run of J (a resume after Stop, a spot interruption, a restart after a death) goes on
  from it, and its progress copy `progress/progress.json` + `progress/samples/` (worker/sagemaker_train.py);
- `StoppingCondition` (`sagemaker_training_max_runtime_s`; with `use_spot`, `EnableManagedSpotTraining` and
  `MaxWaitTimeInSeconds`).

Ends arrive as the "SageMaker Training Job State Change" event (the stack's rule → the events queue →
`SageMakerCompute.handle_event` → `handle_event` here) or are found by `reconcile` (DescribeTrainingJob, when a
job is read and in the sweep), and are reported as `TrainingEnded`: `Completed` → completed, the model at
`ModelArtifacts.S3ModelArtifacts` (streamed out of its tar by `open_model`); `Failed` → the failure is
SageMaker's `FailureReason` (the trainer's output/failure text); `Stopped` after a StopTrainingJob
(SecondaryStatus `Stopped`) → stopped; any other stop (MaxRuntimeExceeded, MaxWaitTimeExceeded) → a death,
which the service starts once more from the checkpoints. A run SageMaker does not know (deleted outside
sd-aws) fails the job with that reason. All SageMaker calls go through `TrainingJobsGateway`.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from aws_extension.middleware.aws_resources import StackResources
from aws_extension.middleware.blobs.base import BlobStore, key_of
from aws_extension.middleware.compute.base import (
    LOCAL_INSTANCE_TYPE,
    ChannelFile,
    TrainingEnded,
    TrainingReports,
    TrainingRun,
)
from aws_extension.middleware.compute.sagemaker import instance_types
from aws_extension.middleware.errors import InvalidRequest
from aws_extension.middleware.records import TrainingJob
from aws_extension.settings import MiddlewareSettings
from aws_extension.vocabulary import TrainingStatus
from aws_extension.worker.sagemaker_train import (
    BASE_CHANNEL,
    CLASS_CHANNEL,
    INSTANCE_CHANNEL,
    PROGRESS_FILE,
    SYNCED_PROGRESS_DIR,
)

log = logging.getLogger(__name__)

EVENT_DETAIL_TYPE = "SageMaker Training Job State Change"
TAG_STACK = "sd-aws:stack"
TAG_TRAINING_JOB = "sd-aws:training-job"
CHECKPOINTS_LOCAL_PATH = "/opt/ml/checkpoints"
RUNNING = ("InProgress", "Stopping")
USER_STOP = "Stopped"  # the SecondaryStatus of a job stopped by StopTrainingJob
MAX_HYPERPARAMETER_CHARS = 2500  # SageMaker's limit on one hyperparameter's value
MAX_PROGRESS_BYTES = 1 << 16


def is_training_job_state_change(event: dict[str, Any]) -> bool:
    return event.get("detail-type") == EVENT_DETAIL_TYPE and event.get("source") == "aws.sagemaker"


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        number, digit = divmod(number, 36)
        text = digits[digit] + text
        if number == 0:
            return text


def _started_s(run_name: str) -> float | None:
    """When the run was named (its name's last part), in epoch seconds."""
    try:
        return int(run_name.rsplit("-", 1)[1], 36) / 1000.0
    except (IndexError, ValueError):
        return None


def _tag_map(tags: Any) -> dict[str, str]:
    if isinstance(tags, dict):
        return {str(k): str(v) for k, v in tags.items()}
    if isinstance(tags, list):
        return {str(t.get("Key")): str(t.get("Value")) for t in tags if isinstance(t, dict)}
    return {}


class TrainingJobsGateway:
    """The SageMaker calls of training, nothing else (tests put a fake SageMaker behind them)."""

    def __init__(self, client: Any):
        self.client = client

    def create(self, request: dict[str, Any]) -> None:
        self.client.create_training_job(**request)

    def describe(self, name: str) -> dict[str, Any] | None:
        """DescribeTrainingJob's answer, or None when SageMaker has no such job."""
        try:
            return self.client.describe_training_job(TrainingJobName=name)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if error.get("Code") in ("ValidationException", "ResourceNotFound") and \
                    "not find" in error.get("Message", "").lower():
                return None
            raise

    def stop(self, name: str) -> None:
        self.client.stop_training_job(TrainingJobName=name)

    def tags(self, arn: str) -> dict[str, str]:
        return _tag_map(self.client.list_tags(ResourceArn=arn).get("Tags", []))


class _ChunkStream(io.RawIOBase):
    """A readable stream over an iterator of byte chunks (an S3 object read in parts)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._left = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._left:
            self._left = next(self._chunks, b"")
            if not self._left:
                return 0
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


class SageMakerTraining:
    """Runs of training jobs as SageMaker training jobs (a `TrainingCompute`)."""

    restarts_with_middleware = False  # SageMaker's training jobs go on while the middleware restarts
    logs = "see the SageMaker training job's log in CloudWatch Logs (/aws/sagemaker/TrainingJobs)"

    def __init__(self, blobs: BlobStore, resources: StackResources, settings: MiddlewareSettings,
                 session: boto3.Session | None = None, gateway: TrainingJobsGateway | None = None):
        self.blobs = blobs
        self.resources = resources
        self.settings = settings
        self.offered = tuple(t for t in instance_types.offered_types(settings.sagemaker_instance_types, resources.region).types
                             if t in instance_types.GPUS)
        if gateway is None:
            session = session or boto3.Session()
            gateway = TrainingJobsGateway(session.client("sagemaker", region_name=resources.region))
        self.gateway = gateway
        self._reports: TrainingReports | None = None

    # -- where things are -------------------------------------------------------------------------------
    @staticmethod
    def prefix(job_id: str) -> str:
        return f"training/{job_id}/"

    def checkpoints_uri(self, job_id: str) -> str:
        return f"s3://{self.resources.bucket}/{self.prefix(job_id)}checkpoints/"

    def _progress_key(self, job_id: str, name: str = PROGRESS_FILE) -> str:
        return f"{self.prefix(job_id)}checkpoints/{SYNCED_PROGRESS_DIR}/{name}"


    # -- the port ---------------------------------------------------------------------------------------
    def start(self, reports: TrainingReports) -> None:
        self._reports = reports  # no thread of its own: events come through SageMakerCompute's queue

    def check_instance_type(self, instance_type: object, use_spot: object) -> str:
        if not isinstance(use_spot, bool):
            raise InvalidRequest("training_params.use_spot must be true or false.")
        if instance_type in self.offered:
            return instance_type  # type: ignore[return-value]
        local = " (there is no local machine to train on behind the aws backend)" \
            if instance_type == LOCAL_INSTANCE_TYPE else ""
        raise InvalidRequest(f"training_params.training_instance_type {instance_type!r} is not a SageMaker training "
                             f"instance type offered here{local}; use one of {', '.join(self.offered)}.")

    def new_run_name(self, job_id: str) -> str:
        return f"{self.resources.stack_name}--{job_id.replace('-', '')[:16]}-{_base36(int(time.time() * 1000))}"

    def submit(self, run: TrainingRun) -> None:
        refusal = self._create(run)
        if refusal:
            log.warning("training %s: SageMaker training job %s not created: %s", run.job_id, run.run_name, refusal)
            self._report(run.job_id, TrainingEnded(None, run_name=run.run_name, failure=refusal))

    def _create(self, run: TrainingRun) -> str | None:
        """CreateTrainingJob for the run; the reason when it cannot run, else None."""
        if not self.settings.worker_image:
            return ("the aws backend has no worker image to train with: set SD_AWS_WORKER_IMAGE (the stack's "
                    "WorkerImage parameter) to the image `sd-aws aws build-image` pushed.")
        too_long = [name for name, value in run.hyperparameters.items() if len(value) > MAX_HYPERPARAMETER_CHARS]
        if too_long:
            return (f"config_params.{too_long[0]} is {len(run.hyperparameters[too_long[0]])} characters as a "
                    f"SageMaker hyperparameter, which holds at most {MAX_HYPERPARAMETER_CHARS}: shorten it.")
        try:
            channels = [self._channel(run.job_id, name, files) for name, files in
                        ((BASE_CHANNEL, [run.base]), (INSTANCE_CHANNEL, run.instance), (CLASS_CHANNEL, run.class_images))
                        if files]
        except ValueError as exc:
            return str(exc)
        stopping: dict[str, int] = {"MaxRuntimeInSeconds": self.settings.sagemaker_training_max_runtime_s}
        if run.use_spot:
            stopping["MaxWaitTimeInSeconds"] = max(self.settings.sagemaker_training_max_wait_s,
                                                   self.settings.sagemaker_training_max_runtime_s)
        request = {
            "TrainingJobName": run.run_name,
            "AlgorithmSpecification": {"TrainingImage": self.settings.worker_image, "TrainingInputMode": "File"},
            "RoleArn": self.resources.sagemaker_role_arn,
            "HyperParameters": run.hyperparameters,
            "InputDataConfig": channels,
            "OutputDataConfig": {"S3OutputPath": f"s3://{self.resources.bucket}/{self.prefix(run.job_id)}output/"},
            "ResourceConfig": {"InstanceType": run.instance_type, "InstanceCount": 1,
                               "VolumeSizeInGB": self.settings.sagemaker_training_volume_gib},
            "StoppingCondition": stopping,
            "EnableManagedSpotTraining": run.use_spot,
            "CheckpointConfig": {"S3Uri": self.checkpoints_uri(run.job_id), "LocalPath": CHECKPOINTS_LOCAL_PATH},
            "Environment": {"HF_HUB_OFFLINE": "1"},
            "Tags": [{"Key": TAG_STACK, "Value": self.resources.stack_name},
                     {"Key": TAG_TRAINING_JOB, "Value": run.job_id}],
        }
        try:
            self.gateway.create(request)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            hint = (" Ask for a higher quota of this instance type for training job usage in Service Quotas, or "
                    "choose another type.") if error.get("Code") == "ResourceLimitExceeded" else ""
            return f"SageMaker refused the training job: {error.get('Code', 'error')}: {error.get('Message', exc)}.{hint}"
        except BotoCoreError as exc:
            return f"calling SageMaker to create the training job failed: {exc}"
        log.info("training %s: SageMaker training job %s created (%s%s)", run.job_id, run.run_name,
                 run.instance_type, ", spot" if run.use_spot else "")
        return None

    def _channel(self, job_id: str, name: str, files: list[ChannelFile]) -> dict[str, Any]:
        """A channel whose manifest lists the files under their keys, when they are all in one folder under
        their channel names (one dataset); otherwise (several concepts: `<i>/<file>` from several datasets)
        the files are copied under the job's prefix first, where they are."""
        folders = {f.key[: -len(f.filename)] for f in files if f.key.endswith("/" + f.filename)}
        if len(folders) != 1 or not all(f.key.endswith("/" + f.filename) for f in files):
            files = [self._staged(job_id, name, f) for f in files]
            folders = {f"{self.prefix(job_id)}input/{name}/"}
        manifest = [{"prefix": self.blobs.uri(folders.pop().rstrip("/")) + "/"}, *(f.filename for f in files)]
        key = f"{self.prefix(job_id)}input/{name}.manifest"
        with self.blobs.writer(key) as out:
            out.write(json.dumps(manifest).encode())
        return {"ChannelName": name, "DataSource": {"S3DataSource": {
            "S3DataType": "ManifestFile", "S3Uri": self.blobs.uri(key), "S3DataDistributionType": "FullyReplicated"}}}

    def _staged(self, job_id: str, channel: str, file: ChannelFile) -> ChannelFile:
        key = f"{self.prefix(job_id)}input/{channel}/{file.filename}"
        if not self.blobs.exists(key):
            with self.blobs.writer(key) as out:
                for chunk in self.blobs.iter_chunks(file.key):
                    out.write(chunk)
        return ChannelFile(key, file.filename)

    def stop(self, job: TrainingJob) -> bool:
        if not job.run_name:
            return True
        try:
            self.gateway.stop(job.run_name)
        except ClientError as exc:
            if self.gateway.describe(job.run_name) is None:
                return True  # it never existed (or is gone): nothing runs
            log.info("training %s: StopTrainingJob of %s: %s (its end is reported as it comes)", job.id,
                     job.run_name, exc)
        return False

    def is_running(self, job: TrainingJob) -> bool:
        if job.status != TrainingStatus.TRAINING or not job.run_name:
            return False
        description = self.gateway.describe(job.run_name)
        return description is not None and description.get("TrainingJobStatus") in RUNNING

    def queue_position(self, job_id: str) -> int | None:
        return None  # SageMaker does not queue training jobs

    def progress(self, job: TrainingJob) -> dict[str, Any] | None:
        return self._read_progress(job.id)

    def _read_progress(self, job_id: str) -> dict[str, Any] | None:
        """The trainer's progress copy, as SageMaker's checkpoint sync last uploaded it."""
        key = self._progress_key(job_id)
        size = self.blobs.size(key)
        if size is None or size > MAX_PROGRESS_BYTES:
            return None
        try:
            progress = json.loads(self.blobs.read(key))
        except ValueError:
            return None
        return progress if isinstance(progress, dict) else None

    def sample_key(self, job: TrainingJob, name: str) -> str | None:
        key = self._progress_key(job.id, f"samples/{name}")
        return key if self.blobs.exists(key) else None

    @contextmanager
    def open_model(self, job: TrainingJob, model: str) -> Iterator[tuple[str, BinaryIO]]:
        """The .safetensors file in the run's model.tar.gz, streamed out of it (never all in memory)."""
        key = key_of(self.blobs, model)
        if key is None:
            raise ValueError(f"SageMaker's model artefact {model!r} is not in this stack's bucket")
        wanted = (self._read_progress(job.id) or {}).get("model")
        with tarfile.open(fileobj=io.BufferedReader(_ChunkStream(self.blobs.iter_chunks(key))), mode="r|gz") as tar:
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and name.endswith(".safetensors") and (not wanted or name == wanted):
                    stream = tar.extractfile(member)
                    assert stream is not None  # a regular file
                    yield name, stream
                    return
        raise ValueError(f"the trained model {wanted or '(a .safetensors file)'} is not in {model}")

    def reconcile(self, job: TrainingJob) -> None:
        if job.status != TrainingStatus.TRAINING or not job.run_name:
            return
        description = self.gateway.describe(job.run_name)
        if description is None:
            started = _started_s(job.run_name)
            if started is not None and time.time() - started < self.settings.sagemaker_training_vanished_grace_s:
                return
            self._report(job.id, TrainingEnded(self._read_progress(job.id), run_name=job.run_name, failure=(
                f"SageMaker has no training job {job.run_name} any more (it was deleted outside sd-aws, or never "
                "created); start this job again (PUT /train Training) to go on from its saved state.")))
            return
        self._report_end(job.id, job.run_name, description)

    def shutdown(self) -> None:
        """Nothing to stop: SageMaker's training jobs go on, and their ends wait in the events queue."""

    # -- SageMaker's reports ----------------------------------------------------------------------------
    def handle_event(self, event: dict[str, Any]) -> None:
        """A "SageMaker Training Job State Change" event; one of another stack's jobs is ignored."""
        detail = event.get("detail") if isinstance(event.get("detail"), dict) else {}
        name, arn = detail.get("TrainingJobName"), detail.get("TrainingJobArn")
        if not isinstance(name, str) or not name.startswith(f"{self.resources.stack_name}--"):
            return
        if detail.get("TrainingJobStatus") in RUNNING:
            return
        tags = _tag_map(detail.get("Tags"))
        if TAG_TRAINING_JOB not in tags and isinstance(arn, str):
            tags = self.gateway.tags(arn)
        job_id = tags.get(TAG_TRAINING_JOB)
        if tags.get(TAG_STACK) != self.resources.stack_name or not job_id:
            log.info("training job state change of %s, which is not one of this stack's jobs: ignored", name)
            return
        # The event carries DescribeTrainingJob's fields; read them again, so what counts is SageMaker's state.
        self._report_end(job_id, name, self.gateway.describe(name) or detail)

    def _report_end(self, job_id: str, name: str, description: dict[str, Any]) -> None:
        status = description.get("TrainingJobStatus")
        if status in RUNNING or status is None:
            return
        progress = self._read_progress(job_id)
        secondary = description.get("SecondaryStatus")
        if status == "Completed":
            artefact = (description.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
            if not artefact:
                ended = TrainingEnded(progress, run_name=name, failure="SageMaker reported the training job "
                                                                        "Completed without a model artefact.")
            else:
                ended = TrainingEnded(progress, run_name=name, completed=True, model=artefact)
        elif status == "Failed":
            ended = TrainingEnded(progress, run_name=name, failure=description.get("FailureReason")
                                  or "SageMaker reported the training job Failed without a reason.")
        elif status == "Stopped" and secondary == USER_STOP:
            ended = TrainingEnded(progress, run_name=name, stopped=True)
        else:  # Stopped by SageMaker (MaxRuntimeExceeded, MaxWaitTimeExceeded, ...), or a status new to us
            ended = TrainingEnded(progress, run_name=name,
                                  death=f"SageMaker ended the training job {name} ({status}, {secondary})")
        self._report(job_id, ended)

    def _report(self, job_id: str, ended: TrainingEnded) -> None:
        if self._reports is None:
            log.warning("training %s: an end with no one to report it to (compute not started)", job_id)
            return
        self._reports.run_ended(job_id, ended)
