"""Compute on SageMaker asynchronous endpoints: the `Compute` port of `compute/base.py` for the AWS backend.

Endpoints are `SageMakerEndpoints`' (endpoints.py). Jobs: `submit` writes the request object and invokes the
endpoint (jobs.py); SageMaker queues it; its worker PUTs progress to a signed URL (read by `observe`, which
marks the job running through the `JobQueue`) and reads a cancel object between steps (`interrupt` writes
it); the notification (SNS → the events queue) is handled by `handle_event`, which reads the answer from the
location the notification names and calls `events.job_finished`, the one completion path: duplicates and
late notifications of an ended job change nothing. A job whose notification never comes is failed by `reap`
once the queue TTL, the invocation timeout and a margin have passed.

Where this runs: `sd-aws serve --backend aws` calls `start`, which long-polls the events queue in a thread
(a message is deleted only once handled; a handler error leaves it for redelivery) and reaps on a timer.
The Lambda calls `attach` instead, then `handle_event` for each SQS message and `reap` on its schedule.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from aws_extension.middleware.aws_resources import StackResources
from aws_extension.middleware.blobs.base import BlobStore, key_of
from aws_extension.middleware.compute.base import ComputeEvents, EndpointChange
from aws_extension.middleware.compute.sagemaker.endpoints import DeploymentRefused, SageMakerEndpoints
from aws_extension.middleware.compute.sagemaker.jobs import AsyncInvocations
from aws_extension.middleware.compute.sagemaker.notifications import (
    InferenceResult,
    UnknownEvent,
    inference_result,
    is_endpoint_state_change,
    unwrap,
)
from aws_extension.middleware.compute.sagemaker.training import is_training_job_state_change
from aws_extension.middleware.errors import ServiceError
from aws_extension.middleware.records import Endpoint, InferenceJob
from aws_extension.middleware.services.queue import LIVE, JobQueue
from aws_extension.middleware.services.results import invocation_key, progress_key
from aws_extension.settings import MiddlewareSettings
from aws_extension.vocabulary import EndpointStatus, JobStatus
from aws_extension.wire import InvocationAnswer, JobProgress, WireError

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 1 << 20  # a worker's answer is small (image count, info, timings)
MAX_PROGRESS_BYTES = 1 << 16
RETRY_AFTER_ERROR_S = 5.0
# How long a message this process received stays hidden from others: a middleware that dies holding one
# gets it back to its successor within this, not after the queue's 960 s (that is for the Lambda event
# source, which must outlast the function's 900 s). Handling twice changes nothing.
RECEIVE_VISIBILITY_S = 30  # SQS's default


class SageMakerCompute:
    # SageMaker's endpoints and jobs run on while the middleware restarts: their records stay as they are.
    restarts_with_middleware = False

    def __init__(self, queue: JobQueue, blobs: BlobStore, endpoints: SageMakerEndpoints, resources: StackResources,
                 settings: MiddlewareSettings, session: boto3.Session | None = None):
        session = session or boto3.Session()
        self.queue = queue
        self.blobs = blobs
        self.endpoints = endpoints
        self.resources = resources
        self.settings = settings
        self.invocations = AsyncInvocations(blobs, session.client("sagemaker-runtime"), resources, settings)
        self.sqs = session.client("sqs")
        self.events: ComputeEvents | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._queue_url: str | None = None
        # Training jobs' state changes arrive on the same queue: the wiring hands them to SageMakerTraining.
        self.training_events: Callable[[dict[str, Any]], None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------
    def attach(self, events: ComputeEvents) -> None:
        """Report through `events` without background work (the Lambda: its events arrive as invocations)."""
        self.events = events

    def start(self, events: ComputeEvents) -> None:
        self.attach(events)
        self._stop.clear()
        self._threads = [threading.Thread(target=self._poll_forever, name="sagemaker-events", daemon=True),
                         threading.Thread(target=self._reap_forever, name="sagemaker-reaper", daemon=True)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Ends both threads: the reaper at once, the poller after its current long poll (a message it
        received and did not handle stays in the queue for redelivery)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(0.5)

    # -- endpoints ---------------------------------------------------------------------------------------
    def deploy(self, endpoint: Endpoint) -> None:
        try:
            self.endpoints.deploy(endpoint)
        except DeploymentRefused as exc:
            self.events.endpoint_changed(endpoint.endpoint_name,
                                         EndpointChange(status=EndpointStatus.FAILED, error=exc.message))

    def restore(self, endpoint: Endpoint) -> None:
        self.events.endpoint_changed(endpoint.endpoint_name, self.endpoints.reconcile(endpoint.endpoint_name))

    def delete(self, endpoint_name: str) -> None:
        self.endpoints.delete(endpoint_name)

    def check_instance_type(self, instance_type: object) -> None:
        self.endpoints.check_instance_type(instance_type)

    def instance_count(self, endpoint_name: str) -> int:
        return self.endpoints.instance_count(endpoint_name)

    # -- jobs --------------------------------------------------------------------------------------------
    def submit(self, job: InferenceJob) -> None:
        try:
            refused = self.invocations.submit(self.events, job)
        except ServiceError as exc:  # e.g. a model it names left the catalogue
            refused = exc.message
        if refused:
            self.events.job_finished(job.id, InvocationAnswer.failed(job.id, refused))

    def interrupt(self, job: InferenceJob) -> None:
        self.invocations.ask_to_cancel(job.id)

    def observe(self, job: InferenceJob) -> InferenceJob:
        """The job with what its worker last reported: running from its first report, then its progress."""
        if job.status not in LIVE:
            return job
        size = self.blobs.size(progress_key(job.id))
        if size is None or size > MAX_PROGRESS_BYTES:
            return job
        try:
            progress = JobProgress.from_json(json.loads(self.blobs.read(progress_key(job.id))))
        except (ValueError, WireError) as exc:
            log.warning("job %s: its progress object is not readable: %s", job.id, exc)
            return job
        if progress.job_id != job.id:
            return job
        if not self.queue.is_running(job):
            job = self.queue.mark_running(job.id, progress.worker or "sagemaker", started=progress.started) or job
        if self.queue.is_running(job) and round(progress.fraction, 4) != job.progress:
            self.queue.report_progress(job.id, progress.fraction)
            job = self.queue.jobs.get(job.id) or job
        return job

    # -- events ------------------------------------------------------------------------------------------
    def handle_event(self, message: dict[str, Any]) -> None:
        """One message of the events queue (parsed): an inference notification or an endpoint's state
        change. Messages of no known kind are logged and dropped; an error (S3 unreachable) is raised, so
        the message is delivered again."""
        try:
            event = unwrap(message)
            if is_training_job_state_change(event) and self.training_events is not None:
                self.training_events(event)  # the training compute's (compute/sagemaker/training.py)
                return
            if is_endpoint_state_change(event):
                change = self.endpoints.state_change(event)
                if change is not None:
                    self.events.endpoint_changed(*change)
                return
            result = inference_result(event)
        except UnknownEvent as exc:
            log.warning("dropped a message of the events queue: %s", exc)
            return
        self._finish(result)

    def _finish(self, result: InferenceResult) -> None:
        job = self.queue.jobs.get(result.job_id)
        if job is None or job.status.is_terminal:
            log.info("notification for job %s, which is %s: nothing to do", result.job_id,
                     job.status if job else "unknown")
            return
        if result.input_location and result.input_location != self.blobs.uri(invocation_key(job.id)):
            log.warning("notification for job %s names another request (%s): ignored", job.id, result.input_location)
            return
        self.observe(job)  # its start, if nobody looked while it ran: when it ran, and that it ran once
        self.events.job_finished(job.id, self._answer(job.id, result))

    def _answer(self, job_id: str, result: InferenceResult) -> InvocationAnswer:
        """The worker's answer, read from where the notification says SageMaker wrote it."""
        reason = result.failure_reason or "SageMaker reported the job failed without a reason."
        if result.result_location is None:
            if result.succeeded:
                return InvocationAnswer.failed(job_id, "SageMaker's notification names no output location.")
            return InvocationAnswer.failed(job_id, reason)
        key = key_of(self.blobs, result.result_location)
        if key is None:
            return InvocationAnswer.failed(job_id, f"SageMaker wrote the result to {result.result_location}, "
                                                   "outside this stack's bucket.")
        raw = self.blobs.read(key, 0, MAX_ANSWER_BYTES)
        try:
            answer = InvocationAnswer.from_json(json.loads(raw))
        except (ValueError, WireError) as exc:
            if result.succeeded:
                return InvocationAnswer.failed(job_id, f"SageMaker's output for the job is not a worker's answer: {exc}")
            return InvocationAnswer.failed(job_id, f"{reason} {raw[:300].decode(errors='replace')}".strip())
        if not result.succeeded and answer.status == JobStatus.SUCCEED:
            return InvocationAnswer.failed(job_id, reason)
        return answer


    def reap(self) -> None:
        """Fail the jobs whose notification should have come by now: the queue TTL (for a job no worker
        reported starting), the invocation timeout and a margin. A worker still on one is asked to stop."""
        timeout, ttl = self.invocations.invocation_timeout_s, self.invocations.request_ttl_s
        margin = self.settings.sagemaker_notification_margin_s
        now = time.time()
        for job in self.queue.live_jobs():
            job = self.observe(job)
            if job.dispatched_at:
                deadline, waited = job.dispatched_at + timeout + margin, f"it started {now - job.dispatched_at:.0f} s ago"
            else:
                deadline, waited = job.created + ttl + timeout + margin, f"it was submitted {now - job.created:.0f} s ago"
            if now <= deadline:
                continue
            log.warning("job %s: no notification from SageMaker; failing it", job.id)
            self.events.job_finished(job.id, InvocationAnswer.failed(job.id, (
                f"SageMaker sent no result for this job: {waited}, past the invocation timeout ({timeout} s) "
                f"plus {margin:.0f} s.")))
            self.invocations.ask_to_cancel(job.id)

    # -- background work (server mode) -------------------------------------------------------------------
    def _poll_forever(self) -> None:
        while not self._stop.is_set():
            try:
                if self._queue_url is None:
                    self._queue_url = self.sqs.get_queue_url(QueueName=self.resources.events_queue)["QueueUrl"]
                messages = self.sqs.receive_message(
                    QueueUrl=self._queue_url, MaxNumberOfMessages=10, VisibilityTimeout=RECEIVE_VISIBILITY_S,
                    WaitTimeSeconds=int(self.settings.sagemaker_poll_wait_s)).get("Messages", [])
            except (ClientError, BotoCoreError) as exc:
                log.warning("reading the events queue %s failed: %s", self.resources.events_queue, exc)
                self._stop.wait(RETRY_AFTER_ERROR_S)
                continue
            for message in messages:
                if self._stop.is_set():
                    return  # not handled: delivered again once its visibility timeout ends
                self._handle_message(message)

    def _handle_message(self, message: dict[str, Any]) -> None:
        try:
            body = json.loads(message["Body"])
            if not isinstance(body, dict):
                raise UnknownEvent("not a JSON object")
        except (ValueError, UnknownEvent) as exc:
            log.warning("dropped a message of the events queue that is not JSON: %s", exc)
        else:
            try:
                self.handle_event(body)
            except Exception:  # the message stays in the queue and comes back after its visibility timeout
                log.exception("handling a message of the events queue failed; it will be delivered again")
                return
        try:
            self.sqs.delete_message(QueueUrl=self._queue_url, ReceiptHandle=message["ReceiptHandle"])
        except (ClientError, BotoCoreError) as exc:  # handled already: a redelivery changes nothing
            log.warning("could not delete a handled message: %s", exc)

    def _reap_forever(self) -> None:
        while not self._stop.wait(self.settings.sagemaker_reap_interval_s):
            try:
                self.reap()
            except Exception:
                log.exception("reaping SageMaker jobs failed; trying again at the next interval")
