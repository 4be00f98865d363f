"""Builds the middleware's parts for one backend and owns their background work (the sweeper).

`SD_AWS_BACKEND=local`: SQLite, a folder and worker processes, secrets in the data dir. `aws`: the
resources of the stack `SD_AWS_STACK_NAME` in the account and region of boto3's standard configuration
(`StackResources`): DynamoDB, S3, SageMaker, secrets from Secrets Manager unless set in the environment.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_extension.middleware.aws_resources import StackResources
from aws_extension.middleware.blobs.base import BlobStore
from aws_extension.middleware.blobs.local import LocalBlobStore
from aws_extension.middleware.compute.base import Compute, TrainingCompute
from aws_extension.middleware.compute.local import LocalCompute
from aws_extension.middleware.compute.local.training import LocalTraining
from aws_extension.middleware.services.audit import AuditLog
from aws_extension.middleware.services.checkpoints import CheckpointService
from aws_extension.middleware.services.datasets import DatasetService
from aws_extension.middleware.services.endpoints import EndpointService
from aws_extension.middleware.services.events import ComputeReports
from aws_extension.middleware.services.jobs import JobService
from aws_extension.middleware.services.model_import import ModelImporter
from aws_extension.middleware.services.queue import JobQueue
from aws_extension.middleware.services.retirement import EndpointRetirement
from aws_extension.middleware.services.training import (
    PREPARE_MODEL_TASK,
    TrainingModelService,
    TrainingService,
)
from aws_extension.middleware.services.uploads import Uploads
from aws_extension.middleware.services.users import UserService
from aws_extension.middleware.services.webhooks import WebhookSender
from aws_extension.middleware.store.base import Store
from aws_extension.middleware.store.sqlite import SQLiteStore
from aws_extension.payload import PayloadLimits
from aws_extension.settings import MiddlewareSettings, WorkerSettings, load

log = logging.getLogger(__name__)


def read_or_create_secret(path: Path, make: Callable[[], str] = lambda: secrets.token_hex(32)) -> str:
    """A secret kept in the data dir, created on first use with mode 0600."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = make()
    with open(path.with_suffix(".tmp"), "w", opener=lambda p, flags: os.open(p, flags, 0o600)) as out:
        out.write(value + "\n")
    path.with_suffix(".tmp").replace(path)
    return value


@dataclass
class Services:
    settings: MiddlewareSettings
    store: Store
    blobs: BlobStore
    checkpoints: CheckpointService
    importer: ModelImporter
    datasets: DatasetService
    uploads: Uploads
    compute: Compute
    endpoints: EndpointService
    webhooks: WebhookSender
    jobs: JobService
    retirement: EndpointRetirement
    users: UserService
    audit: AuditLog
    training_models: TrainingModelService
    training: TrainingService

    def start(self) -> None:
        self._stop = threading.Event()
        self.checkpoints.release_stale_claims()
        self.importer.resume_interrupted()
        if self.compute.restarts_with_middleware:
            self.jobs.restore()
            self.retirement.restore()
        else:  # SageMaker's jobs and endpoints went on without us; only our own deletions wait
            self.retirement.finish_pending()
        self.compute.start(self.reports())
        self.training_models.restore()
        self.training.compute.start(self.training)
        self.training.restore()
        self._sweeper = threading.Thread(target=self._sweep_forever, name="sweeper", daemon=True)
        self._sweeper.start()

    def reports(self) -> ComputeReports:
        """What compute reports to (the Lambda gives it to `SageMakerCompute.attach`)."""
        return ComputeReports(self.jobs, self.endpoints, self.retirement)

    def stop(self) -> None:
        self._stop.set()
        self.importer.stop()
        self.webhooks.stop()
        self.compute.stop()
        self.training_models.stop()
        self.training.compute.shutdown()
        self._sweeper.join(5)

    def sweep(self) -> None:
        """Remove multipart uploads older than the TTL and fail the checkpoints that waited on them; bring
        training jobs whose end was not reported (a lost SageMaker event) up to date."""
        ttl = self.settings.multipart_ttl_s
        failed = self.checkpoints.expire_uploads(ttl)
        removed = self.blobs.sweep_incomplete_uploads(ttl)
        if failed or removed:
            log.info("sweeper: failed %d stale checkpoint uploads, removed %d incomplete uploads",
                     len(failed), len(removed))
        self.training.reconcile()

    def _sweep_forever(self) -> None:
        while not self._stop.wait(self.settings.sweep_interval_s):
            try:
                self.sweep()
            except Exception:
                log.exception("sweeper failed; trying again at the next interval")


def build_services(settings: MiddlewareSettings, session: Any = None) -> Services:
    """The services of `settings.backend`; `session`: the boto3 session of the aws backend (default: boto3's
    standard configuration)."""
    if settings.backend == "local":
        store, blobs, webhook_secret, make_compute, training_compute = _local_parts(settings)
    elif settings.backend == "aws":
        store, blobs, webhook_secret, make_compute, training_compute = _aws_parts(settings, session)
    else:
        raise ValueError(f"backend {settings.backend!r} is unknown; use SD_AWS_BACKEND=local or aws")
    queue = JobQueue(store)
    compute = make_compute(queue)
    checkpoints = CheckpointService(store, blobs, max_parts=settings.multipart_max_parts,
                                    max_files=settings.max_files_per_checkpoint,
                                    completion_wait_s=settings.completion_wait_s)
    webhooks = WebhookSender(webhook_secret.encode(), settings.webhook_attempts, settings.webhook_timeout_s,
                             settings.webhook_allow_private_addresses)
    endpoints = EndpointService(store, compute, settings.max_instances_per_endpoint, settings.max_endpoints)
    users = UserService(store)
    jobs = JobService(queue, blobs, compute, checkpoints, endpoints, webhooks,
                      PayloadLimits.from_settings(load(WorkerSettings)), settings.max_body_bytes, users.owner_label)
    datasets = DatasetService(store, blobs, settings.signed_url_ttl_s, settings.max_dataset_files)
    training_models = TrainingModelService(store, blobs, checkpoints, settings.completion_wait_s,
                                           launch=_preparation_launcher(settings))
    # A local Stop is seconds (the answer waits for it); SageMaker's takes minutes: the answer does not wait.
    training = TrainingService(store, blobs, training_models, datasets, checkpoints, training_compute,
                               stop_wait_s=settings.completion_wait_s if training_compute.restarts_with_middleware
                               else 0.0, signed_url_ttl_s=settings.signed_url_ttl_s,
                               local_gpu_memory_gib=settings.local_training_gpu_memory_gib)
    return Services(settings=settings, store=store, blobs=blobs, checkpoints=checkpoints,
                    importer=ModelImporter(checkpoints, settings),
                    datasets=datasets, training_models=training_models, training=training,
                    uploads=Uploads(blobs),
                    compute=compute, endpoints=endpoints, webhooks=webhooks, jobs=jobs,
                    retirement=EndpointRetirement(endpoints, jobs), users=users, audit=AuditLog(store))


# A backend's parts: its store, its blobs, the webhooks' secret, how to make its compute over the queue, and
# its training compute.
Parts = tuple[Store, BlobStore, str, Callable[[JobQueue], Compute], TrainingCompute]


def _preparation_launcher(settings: MiddlewareSettings) -> Callable[[str], None] | None:
    """Under Lambda on the aws backend, a training base's preparation (reading a checkpoint of GBs) runs in
    an asynchronous invocation of the function itself (lambda_entry: `prepare-model`), not in the request;
    anywhere else in a thread of this process (None)."""
    function = os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
    if settings.backend != "aws" or not function:
        return None

    def launch(model_id: str) -> None:
        import boto3

        boto3.client("lambda").invoke(FunctionName=function, InvocationType="Event", Payload=json.dumps(
            {"sd_aws_task": PREPARE_MODEL_TASK, "model_id": model_id}).encode())

    return launch


def _local_parts(settings: MiddlewareSettings) -> Parts:
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    blobs = LocalBlobStore(
        data_dir, read_or_create_secret(data_dir / "blob_secret").encode(),
        public_url=settings.public_url or f"http://{settings.host}:{settings.port}",
        signed_url_ttl_s=settings.signed_url_ttl_s, min_part_bytes=settings.multipart_min_part_bytes,
        max_parts=settings.multipart_max_parts, max_part_bytes=settings.multipart_max_part_bytes,
        max_put_bytes=settings.blob_max_put_bytes)
    webhook_secret = settings.webhook_secret or read_or_create_secret(data_dir / "webhook_secret")
    training = LocalTraining(data_dir, blobs, settings.local_training_slots, settings.local_gpus)
    return (SQLiteStore(data_dir / "store.sqlite3"), blobs, webhook_secret, lambda queue: LocalCompute(queue, settings),
            training)


def stack_resources(settings: MiddlewareSettings, session: Any) -> StackResources:
    """The resources of `settings.stack_name` in the session's account (STS) and region."""
    if not session.region_name:  # before any call: the names are the region's
        raise ValueError("the aws backend needs a region: set AWS_REGION (or AWS_DEFAULT_REGION, or a profile's)")
    account = session.client("sts").get_caller_identity()["Account"]
    return StackResources(settings.stack_name, account, session.region_name)


def stack_secret(session: Any, secret_id: str) -> str:
    """A secret of the stack from Secrets Manager (`sd-aws aws init` or the template creates it)."""
    return session.client("secretsmanager").get_secret_value(SecretId=secret_id)["SecretString"].strip()


def stack_api_key(settings: MiddlewareSettings, session: Any = None) -> str:
    """The aws backend's API key: the stack's secret in Secrets Manager."""
    import boto3

    session = session or boto3.Session()
    return stack_secret(session, stack_resources(settings, session).api_key_secret)


def _aws_parts(settings: MiddlewareSettings, session: Any) -> Parts:
    # boto3 is the `aws` extra: imported only for this backend.
    import boto3
    from botocore.config import Config

    from aws_extension.middleware.blobs.s3 import S3BlobStore
    from aws_extension.middleware.compute.sagemaker.compute import SageMakerCompute
    from aws_extension.middleware.compute.sagemaker.endpoints import SageMakerEndpoints
    from aws_extension.middleware.compute.sagemaker.training import SageMakerTraining
    from aws_extension.middleware.store.dynamodb import DynamoDBStore

    session = session or boto3.Session()
    resources = stack_resources(settings, session)
    store = DynamoDBStore(resources.table_prefix, client=session.client("dynamodb"))
    blobs = S3BlobStore(
        resources.bucket, client=session.client("s3", config=Config(signature_version="s3v4")),
        signed_url_ttl_s=settings.signed_url_ttl_s, min_part_bytes=settings.multipart_min_part_bytes,
        max_parts=settings.multipart_max_parts, max_part_bytes=settings.multipart_max_part_bytes,
        max_put_bytes=settings.blob_max_put_bytes)
    webhook_secret = settings.webhook_secret or stack_secret(session, resources.webhook_secret)

    training = SageMakerTraining(blobs, resources, settings, session)

    def make_compute(queue: JobQueue) -> Compute:
        compute = SageMakerCompute(queue, blobs, SageMakerEndpoints(resources, settings, session), resources,
                                   settings, session)
        compute.training_events = training.handle_event  # the training jobs' state changes share its queue
        return compute

    return store, blobs, webhook_secret, make_compute, training
