"""Builds the middleware's parts for one backend and owns their background work (the sweeper)."""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aws_extension.middleware.blobs.base import BlobStore
from aws_extension.middleware.blobs.local import LocalBlobStore
from aws_extension.middleware.compute.base import Compute
from aws_extension.middleware.compute.local import LocalCompute
from aws_extension.middleware.services.checkpoints import CheckpointService
from aws_extension.middleware.services.datasets import DatasetService
from aws_extension.middleware.services.endpoints import EndpointService
from aws_extension.middleware.services.events import ComputeReports
from aws_extension.middleware.services.jobs import JobService
from aws_extension.middleware.services.model_import import ModelImporter
from aws_extension.middleware.services.queue import JobQueue
from aws_extension.middleware.services.retirement import EndpointRetirement
from aws_extension.middleware.services.training import TrainingModelService, TrainingService, local_training
from aws_extension.middleware.services.uploads import Uploads
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
    training_models: TrainingModelService | None = None
    training: TrainingService | None = None

    def start(self) -> None:
        self._stop = threading.Event()
        self.checkpoints.release_stale_claims()
        self.importer.resume_interrupted()
        self.jobs.restore()
        self.retirement.restore()
        self.compute.start(ComputeReports(self.jobs, self.endpoints, self.retirement))
        if self.training_models and self.training:
            self.training_models.restore()
            self.training.compute.start(self.training)
            self.training.restore()
        self._sweeper = threading.Thread(target=self._sweep_forever, name="sweeper", daemon=True)
        self._sweeper.start()

    def stop(self) -> None:
        self._stop.set()
        self.importer.stop()
        self.webhooks.stop()
        self.compute.stop()
        if self.training_models and self.training:
            self.training_models.stop()
            self.training.compute.shutdown()
        self._sweeper.join(5)

    def sweep(self) -> None:
        """Remove multipart uploads older than the TTL and fail the checkpoints that waited on them."""
        ttl = self.settings.multipart_ttl_s
        failed = self.checkpoints.expire_uploads(ttl)
        removed = self.blobs.sweep_incomplete_uploads(ttl)
        if failed or removed:
            log.info("sweeper: failed %d stale checkpoint uploads, removed %d incomplete uploads",
                     len(failed), len(removed))

    def _sweep_forever(self) -> None:
        while not self._stop.wait(self.settings.sweep_interval_s):
            try:
                self.sweep()
            except Exception:
                log.exception("sweeper failed; trying again at the next interval")


def build_services(settings: MiddlewareSettings) -> Services:
    if settings.backend != "local":
        raise ValueError(f"backend {settings.backend!r} is not available yet; use SD_AWS_BACKEND=local")
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    store = SQLiteStore(data_dir / "store.sqlite3")
    blobs = LocalBlobStore(
        data_dir, read_or_create_secret(data_dir / "blob_secret").encode(),
        public_url=settings.public_url or f"http://{settings.host}:{settings.port}",
        signed_url_ttl_s=settings.signed_url_ttl_s, min_part_bytes=settings.multipart_min_part_bytes,
        max_parts=settings.multipart_max_parts, max_part_bytes=settings.multipart_max_part_bytes,
        max_put_bytes=settings.blob_max_put_bytes)
    checkpoints = CheckpointService(store, blobs, max_parts=settings.multipart_max_parts,
                                    max_files=settings.max_files_per_checkpoint,
                                    completion_wait_s=settings.completion_wait_s)
    webhook_secret = settings.webhook_secret or read_or_create_secret(data_dir / "webhook_secret")
    webhooks = WebhookSender(webhook_secret.encode(), settings.webhook_attempts, settings.webhook_timeout_s,
                             settings.webhook_allow_private_addresses)
    queue = JobQueue(store)
    compute = LocalCompute(queue, settings)
    endpoints = EndpointService(store, compute, settings.max_instances_per_endpoint, settings.max_endpoints)
    jobs = JobService(queue, blobs, compute, checkpoints, endpoints, webhooks,
                      PayloadLimits.from_settings(load(WorkerSettings)), settings.max_body_bytes)
    datasets = DatasetService(store, blobs, settings.signed_url_ttl_s, settings.max_dataset_files)
    training_models, training = local_training(settings, store, blobs, checkpoints, datasets)
    return Services(settings=settings, store=store, blobs=blobs, checkpoints=checkpoints,
                    importer=ModelImporter(checkpoints, settings),
                    datasets=datasets, training_models=training_models, training=training,
                    uploads=Uploads(blobs),
                    compute=compute, endpoints=endpoints, webhooks=webhooks, jobs=jobs,
                    retirement=EndpointRetirement(endpoints, jobs))
