"""The compute port: runs endpoints (sets of workers) and the jobs submitted to them.

The services own the records; compute brings endpoints up and down, runs jobs, and reports back through
the `ComputeEvents` it is started with (the services implement them). Which calls each backend makes:

- Local compute (`compute/local/`) queues itself: `submit` wakes the endpoint's dispatchers, which take
  jobs from the store through the `JobQueue` (`claim_next`, `requeue`, `report_progress`), ask
  `events.invocation_for(job)` for the request, POST it to a worker, and report `events.job_finished`
  with the worker's answer. Endpoints come up as worker processes; `events.endpoint_changed` reports
  InService, Failed and instance counts.
- SageMaker asynchronous endpoints queue inside SageMaker: `submit` writes `events.invocation_for(job)` to
  S3 and calls InvokeEndpointAsync; the worker reports its start and progress to a signed URL, which
  `observe` reads when a job is looked at (the backend then calls `JobQueue.mark_running` and
  `report_progress`); the SNS → SQS notification handler calls
  `events.job_finished` with the answer it reads from the output location; endpoint state-change events
  call `events.endpoint_changed`. `interrupt` writes the job's cancel object, which the worker reads
  between steps.

Either way the job ends in the one completion path behind `events.job_finished`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from aws_extension.middleware.records import Endpoint, InferenceJob
from aws_extension.vocabulary import EndpointStatus
from aws_extension.wire import InvocationAnswer, InvocationRequest


@dataclass(frozen=True)
class EndpointChange:
    """What compute reports about an endpoint: a new status (InService, or Failed with the reason),
    and/or a new instance count."""

    status: EndpointStatus | None = None
    instance_count: int | None = None
    error: str | None = None


class ComputeEvents(Protocol):
    def invocation_for(self, job: InferenceJob, url_lifetime_s: int | None = None) -> InvocationRequest:
        """The request that runs `job`, with fresh signed URLs (living `url_lifetime_s`, default the blob
        store's). Raises InvalidRequest when the job can no longer run (a model it names left the catalogue)."""

    def job_finished(self, job_id: str, answer: InvocationAnswer) -> None:
        """A job's worker answered (or compute gave up on it: a failed answer with the reason)."""

    def endpoint_changed(self, endpoint_name: str, change: EndpointChange) -> None: ...


class Compute(Protocol):
    # True when endpoints and jobs stop with the middleware (local worker processes): after a restart the
    # services repair their records (`JobService.restore`, `EndpointRetirement.restore`). SageMaker's run
    # on, and their records stay as they are.
    restarts_with_middleware: bool

    def start(self, events: ComputeEvents) -> None:
        """Begin background work (dispatch, autoscaling); everything is reported through `events`."""

    def check_instance_type(self, instance_type: object) -> None:
        """InvalidRequest (naming the types offered) unless endpoints of `instance_type` can be deployed."""

    def deploy(self, endpoint: Endpoint) -> None:
        """Bring an endpoint up in the background; reports InService or Failed."""

    def restore(self, endpoint: Endpoint) -> None:
        """Bring back an endpoint that was InService before the middleware restarted."""

    def delete(self, endpoint_name: str) -> None:
        """Stop every instance of the endpoint (running jobs are interrupted) and free its resources."""

    def submit(self, job: InferenceJob) -> None:
        """A job was queued on its endpoint (its record says `queued`): get it run."""

    def interrupt(self, job: InferenceJob) -> None:
        """Ask the worker running `job` to stop at its next step (or not to start it: a job cancelled
        while it waits may still be in the backend's own queue); returns at once."""

    def observe(self, job: InferenceJob) -> InferenceJob:
        """`job` with its queue fields brought up to date from what its worker reported (a backend whose
        workers report to storage, not to the middleware); local compute reports as it goes."""

    def instance_count(self, endpoint_name: str) -> int:
        """Instances in service now (for picking the least-loaded endpoint)."""

    def stop(self) -> None: ...
