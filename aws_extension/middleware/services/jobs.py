"""Inference jobs: their lifecycle from the request to the one completion path.

A job (`InferenceJob`) goes `created` → `inprogress` (→ `cancelling`) → `succeed` | `failed` |
`cancelled`. Its place in the queue and its ending are the `JobQueue`'s; what it is given and what it
leaves are `JobResults`'; the models it names are resolved by the `ModelResolver`. `complete()` is the one
completion path, whoever ran the job; `_after_end` runs once for every job that ends, however it ended.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import asdict
from typing import Any

from aws_extension.middleware.answers import (
    JobAnswer,
    JobStarted,
    MergeStarted,
    job_answer,
    job_started,
    merge_started,
)
from aws_extension.middleware.blobs.base import BlobStore
from aws_extension.middleware.compute.base import Compute
from aws_extension.middleware.errors import InvalidRequest, ServiceError, UnknownRecord, WrongState
from aws_extension.middleware.principals import Principal
from aws_extension.middleware.records import InferenceJob, JobModel, MergeSpec
from aws_extension.middleware.services.checkpoints import CheckpointService
from aws_extension.middleware.services.endpoints import EndpointService
from aws_extension.middleware.services.models import ModelResolver, check_models_field
from aws_extension.middleware.services.names import check_filename, new_id, now, time_text
from aws_extension.middleware.services.ownership import (
    OwnerLabel,
    as_named,
    check_queued_jobs,
    listed_owners,
    may_use_checkpoint,
    sees_owner,
)
from aws_extension.middleware.services.queue import JobQueue
from aws_extension.middleware.services.results import JobResults, params_key, params_upload_key, result_prefix
from aws_extension.middleware.services.webhooks import WebhookSender
from aws_extension.payload import PayloadError, PayloadLimits, validate_payload
from aws_extension.vocabulary import (
    GENERATION_TASKS,
    CheckpointType,
    JobStatus,
    MergeMethod,
    Task,
    model_stem,
)
from aws_extension.wire import InvocationAnswer

log = logging.getLogger(__name__)

# Body fields that route the job; everything else is an A1111 parameter passed to the engine.
ROUTING_FIELDS = ("task_type", "models", "sagemaker_endpoint_name", "callback_url", "run")


class JobService:
    def __init__(self, queue: JobQueue, blobs: BlobStore, compute: Compute, checkpoints: CheckpointService,
                 endpoints: EndpointService, webhooks: WebhookSender, limits: PayloadLimits, max_params_bytes: int,
                 owner_label: OwnerLabel = as_named):
        self.records = queue.jobs
        self.queue = queue
        self.blobs = blobs
        self.compute = compute
        self.checkpoints = checkpoints
        self.endpoints = endpoints
        self.webhooks = webhooks
        self.limits = limits
        self.models = ModelResolver(checkpoints.active)
        self.results = JobResults(blobs, checkpoints, max_params_bytes)
        self.owner_label = owner_label  # how answers name owners (UserService.owner_label)

    # -- creating and starting jobs -------------------------------------------------------------------------
    def _pick_endpoint(self, name: Any, principal: Principal) -> str:
        if name is not None:
            if not isinstance(name, str):
                raise InvalidRequest(f"sagemaker_endpoint_name must be an endpoint's name, not {name!r}.")
            return self.endpoints.in_service(name, principal).endpoint_name
        names = self.endpoints.in_service_names(principal)
        if not names:
            raise WrongState("No endpoint is InService; deploy one with POST /endpoints (or name one in "
                             "sagemaker_endpoint_name).")
        return min(names, key=lambda n: len(self.queue.live_jobs([n])) / max(1, self.compute.instance_count(n)))

    def _checked_params(self, task: str, params: dict[str, Any]) -> dict[str, Any]:
        try:
            validate_payload(task, params, self.limits)
        except PayloadError as exc:
            raise InvalidRequest(str(exc)) from None
        return params

    @staticmethod
    def _usable_by(principal: Principal):
        """The checkpoints a principal's jobs may use: those it sees (`allowed_roles`)."""
        return lambda record: may_use_checkpoint(principal, record)

    def _check_limit(self, principal: Principal) -> None:
        if principal.max_queued_jobs is not None:
            check_queued_jobs(principal, self.queue.owner_jobs_waiting(principal.username))

    def create(self, body: dict[str, Any], principal: Principal) -> JobStarted:
        """Check the request, resolve its models, store it and queue it (unless `run` is false)."""
        task = body.get("task_type")
        if task not in GENERATION_TASKS:
            raise InvalidRequest(f"task_type {task!r} is not supported; use txt2img or img2img "
                                 "(merges: POST /inference/run-model-merge).")
        if "train_type" in body:
            raise InvalidRequest("This is the inference route; training jobs go to POST /train.")
        run = body.get("run", True)
        if not isinstance(run, bool):
            raise InvalidRequest(f"run must be true or false, not {run!r}.")
        requested = check_models_field(body.get("models"))
        params = {k: v for k, v in body.items() if k not in ROUTING_FIELDS}
        if run:  # else the caller uploads the rest of the parameters before `run`, which checks them all
            self._checked_params(task, params)
        models = self.models.resolve(requested, params, self._usable_by(principal))
        endpoint = self._pick_endpoint(body.get("sagemaker_endpoint_name"), principal)
        callback_url = body.get("callback_url")
        if callback_url is not None:
            self.webhooks.check_url(callback_url)
        self._check_limit(principal)
        job = self._new_job(task, endpoint, models, callback_url, principal, queued=run, requested_models=requested)
        self.results.save_params(job.id, params)
        if not run:
            job.params_upload_key = params_upload_key(job.id)
        self.queue.add(job)
        if run:
            self.compute.submit(job)
        return job_started(job, self.blobs.signed_url(job.params_upload_key, "PUT") if not run else None)

    def _new_job(self, task: str, endpoint: str, models: list[JobModel], callback_url: str | None,
                 principal: Principal, queued: bool = True, **extra: Any) -> InferenceJob:
        job_id, created = new_id(), now()
        owner = principal.username
        place = self.queue.queued_fields(endpoint, owner) if queued else self.queue.held_fields(owner)
        return InferenceJob(id=job_id, task=task, endpoint=endpoint, created=created, start_time=time_text(created),
                            models=models, params_key=params_key(job_id), callback_url=callback_url,
                            output_path=self.blobs.uri(result_prefix(job_id)), owner=owner, **place, **extra)

    def run(self, job_id: str, principal: Principal) -> JobStarted:
        """Start a `created` job, with the parameters uploaded to its upload URL if any."""
        job = self.visible(job_id, principal)
        if job.status != JobStatus.CREATED:
            raise WrongState(f"job {job_id} is {job.status}; only a created job can be run.")
        uploaded = self.results.uploaded_params(job)
        if uploaded is not None:
            merged = self._checked_params(job.task, {**self.results.read_params(job.id),
                                                     **{k: v for k, v in uploaded.items() if k not in ROUTING_FIELDS}})
            models = self.models.resolve(check_models_field(job.requested_models), merged, self._usable_by(principal))
            self.results.save_params(job.id, merged)
            job = self.records.update(job_id, {"models": models}) or job
        started = self.queue.enqueue(job)
        if started is None:
            raise WrongState(f"job {job_id} was started or cancelled by another request.")
        self.compute.submit(started)
        return job_started(started, None)

    def merge(self, body: dict[str, Any], principal: Principal) -> MergeStarted:
        """Queue a checkpoint merge; its result becomes a new Active Stable-diffusion checkpoint."""
        method = body["interp_method"]
        names = {"primary_model_name": body["primary_model_name"], "secondary_model_name": body["secondary_model_name"],
                 "tertiary_model_name": body["tertiary_model_name"] or None}
        if method != MergeMethod.NO_INTERPOLATION and not names["secondary_model_name"]:
            raise InvalidRequest("primary_model_name and secondary_model_name are required.")
        if method == MergeMethod.ADD_DIFFERENCE and not names["tertiary_model_name"]:
            raise InvalidRequest("Add difference needs tertiary_model_name (A + (B - C) * M).")
        catalogue = self.models.catalogue(self._usable_by(principal))
        resolved = {role: catalogue.find(CheckpointType.STABLE_DIFFUSION, name) for role, name in names.items() if name}
        endpoint = self._pick_endpoint(body.get("sagemaker_endpoint_name"), principal)
        self._check_limit(principal)
        custom = body.get("custom_name") or "-".join(model_stem(r.name) for r in resolved.values()) + "-merged"
        filename = check_filename(custom if custom.endswith(".safetensors") else custom + ".safetensors")
        sources = {role: r.name for role, r in resolved.items()}
        record = self.checkpoints.new_record(CheckpointType.STABLE_DIFFUSION, [filename], {
            "merged_from": sources, "interp_method": method, "multiplier": body["multiplier"]}, source="merge",
            owner=principal.username)
        self.checkpoints.records.create(record)
        merge = MergeSpec(checkpoint_id=record.id, key=record.files[0].key, filename=filename,
                          params={**sources, "interp_method": method, "multiplier": body["multiplier"],
                                  "save_as_half": bool(body.get("save_as_half"))})
        job = self._new_job(Task.MERGE_CHECKPOINT, endpoint, list(resolved.values()), None, principal, merge=merge)
        self.results.save_params(job.id, merge.params)
        self.queue.add(job)
        self.compute.submit(job)
        return merge_started(job)

    # -- reading ------------------------------------------------------------------------------------------
    def get(self, job_id: str) -> InferenceJob:
        job = self.records.get(job_id)
        if job is None:
            raise UnknownRecord(f"inference job {job_id} does not exist.")
        return job

    def visible(self, job_id: str, principal: Principal) -> InferenceJob:
        """The job, if the principal may see it; another owner's job is answered as unknown."""
        job = self.records.get(job_id)
        if job is None or not sees_owner(principal, job.owner):
            raise UnknownRecord(f"inference job {job_id} does not exist.")
        return job

    def describe(self, job_id: str, principal: Principal) -> JobAnswer:
        job = self.compute.observe(self.visible(job_id, principal))
        return job_answer(job, self.queue.position(job), self.owner_label)

    def list(self, status: str | None, task_type: str | None, endpoint: str | None, limit: int,
             last_key: str | None, principal: Principal, owner: str | None = None) -> list[JobAnswer]:
        """Newest first: the principal's own jobs, or an administrator's choice of owner (None: everyone's)."""
        where = {"status": [status] if status else [], "task": [task_type] if task_type else [],
                 "endpoint": [endpoint] if endpoint else [], "owner": listed_owners(principal, owner)}
        after = None
        if last_key:  # the id of the last job of the previous page
            previous = self.records.get(last_key)
            if previous is None or not sees_owner(principal, previous.owner):
                raise InvalidRequest(f"last_key {last_key!r} is not the id of a job.")
            after = self.records.key_after(previous)
        label = functools.cache(self.owner_label)
        return [job_answer(j, self.queue.position(j), label)
                for j in self.records.page(where, limit=limit, after=after).records]

    def _finished(self, job_id: str, principal: Principal) -> InferenceJob:
        job = self.visible(job_id, principal)
        if job.status != JobStatus.SUCCEED:
            raise WrongState(f"job {job_id} is {job.status}, not succeed: it has no output"
                             + (f" ({job.error})." if job.error else " yet."))
        return job

    def image_urls(self, job_id: str, principal: Principal) -> list[str]:
        return self.results.image_urls(self._finished(job_id, principal))

    def param_urls(self, job_id: str, principal: Principal) -> list[str]:
        return self.results.param_urls(self._finished(job_id, principal))

    # -- ending -------------------------------------------------------------------------------------------
    def cancel(self, job_id: str, principal: Principal, reason: str = "Cancelled by the user.") -> JobAnswer:
        """A waiting job is cancelled at once; a running one becomes `cancelling` and its worker is
        interrupted (its answer then makes it `cancelled`). Answers at once either way."""
        job = self.visible(job_id, principal)
        if job.status == JobStatus.CANCELLING:
            raise WrongState(f"job {job_id} is already being cancelled.")
        if job.status.is_terminal:
            raise WrongState(f"job {job_id} is already {job.status}; it cannot be cancelled.")
        ended = self.queue.end_if_waiting(job_id, JobStatus.CANCELLED, {"error": reason, "complete_time": time_text(now())})
        if ended:
            if ended.status == JobStatus.CANCELLED and job.status == JobStatus.INPROGRESS:
                self.compute.interrupt(ended)  # a backend's own queue (SageMaker's) may still start it
            self._after_end(ended)
            return job_answer(ended, label=self.owner_label)
        stopping = self.queue.ask_to_stop(job_id, reason)
        if stopping is None:
            raise WrongState(f"job {job_id} is {self.get(job_id).status} now; it was not cancelled.")
        self.compute.interrupt(stopping)
        return job_answer(stopping, label=self.owner_label)

    def complete(self, job_id: str, answer: InvocationAnswer) -> None:
        """The one completion path: a worker's answer (or compute's report) settles the job."""
        job = self.records.get(job_id)
        if job is None or job.status.is_terminal:
            return
        timings = asdict(answer.timings)
        if job.dispatched_at:
            timings["queued_s"] = round(job.dispatched_at - job.created, 3)
        changes: dict[str, Any] = {"complete_time": time_text(now()), "timings": timings,
                                   "worker_answer": json.dumps(answer.summary())}
        if answer.status == JobStatus.SUCCEED:
            try:
                changes.update(image_names=self.results.store(job, answer), progress=1.0, error=None)
                status = JobStatus.SUCCEED
            except ServiceError as exc:
                status, changes["error"] = JobStatus.FAILED, exc.message
        elif answer.status == JobStatus.CANCELLED or job.cancel_reason:  # asked to stop: however it ended
            status, changes["error"] = JobStatus.CANCELLED, job.cancel_reason or answer.error or "Cancelled."
        else:
            status, changes["error"] = JobStatus.FAILED, answer.error or "The worker failed without a reason."
        ended = self.queue.end(job_id, status, changes)
        if ended:
            self._after_end(ended)

    def _after_end(self, job: InferenceJob) -> None:
        """Whatever ended the job (its worker, a cancel, a deleted or failed endpoint)."""
        if job.merge and job.status != JobStatus.SUCCEED:  # the merge's checkpoint will never arrive
            self.checkpoints.fail(job.merge.checkpoint_id, f"the merge job {job.id} ended {job.status}: {job.error}")
        if job.callback_url:
            self.webhooks.send(job.callback_url, job.id, job.status, job_answer(job, label=self.owner_label).model_dump(),
                               self.record_delivery)

    def record_delivery(self, job_id: str, delivery: dict[str, Any]) -> None:
        self.records.update(job_id, {"callback": delivery})

    def end_endpoint_jobs(self, endpoint: str, status: JobStatus, reason: str) -> None:
        """End every job of `endpoint` that has not ended (`created` ones stay: running them later answers
        that the endpoint is not in service)."""
        for job in self.queue.live_jobs([endpoint]):
            self.complete(job.id, InvocationAnswer(status=status, job_id=job.id, error=reason))

    def stop_endpoint_jobs(self, endpoint: str, reason: str) -> None:
        """Cancel the endpoint's waiting jobs; running ones become `cancelling` with the reason (their
        workers are about to be stopped)."""
        for job in self.records.all({"status": [JobStatus.CREATED, JobStatus.INPROGRESS], "endpoint": [endpoint]}):
            ended = self.queue.end_if_waiting(job.id, JobStatus.CANCELLED,
                                              {"error": reason, "complete_time": time_text(now())})
            if ended:
                self._after_end(ended)
            else:
                self.queue.ask_to_stop(job.id, reason)

    def restore(self) -> None:
        """After a restart: jobs that were running go back to the queue (their workers are gone), those
        being cancelled are cancelled, and jobs of endpoints no longer in service fail with the reason."""
        live = set(self.endpoints.in_service_names())
        for job in self.queue.live_jobs():
            if job.endpoint not in live:
                self.complete(job.id, InvocationAnswer.failed(
                    job.id, f"The endpoint {job.endpoint} is no longer in service (the middleware restarted)."))
            elif job.status == JobStatus.CANCELLING:
                self.complete(job.id, InvocationAnswer(status=JobStatus.CANCELLED, job_id=job.id))
            elif self.queue.is_running(job):
                self.queue.requeue_after_restart(job)
