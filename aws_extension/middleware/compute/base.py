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

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

from aws_extension.middleware.records import Endpoint, InferenceJob, TrainingJob
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


# -- training ---------------------------------------------------------------------------------------------
# A training compute runs `sd-aws sagemaker train` (worker/sagemaker_train.py) for each run of a job: the local
# backend as a process per job (compute/local/training.py), the aws backend as a SageMaker training job
# (compute/sagemaker/training.py). Either reports each run's end through `TrainingReports.run_ended`, and the
# service (services/training.py) decides what follows (Complete, Fail, Stopped, or once more from the state).


LOCAL_INSTANCE_TYPE = "local"  # training_instance_type of the local backend: this machine


@dataclass(frozen=True)
class ChannelFile:
    """A file of an input channel: its blob key and its name in the channel."""

    key: str
    filename: str


@dataclass(frozen=True)
class TrainingRun:
    """What one run of a training job needs: the channels' files, the hyperparameters, where it runs."""

    job_id: str
    hyperparameters: dict[str, str]
    base: ChannelFile
    instance: list[ChannelFile]
    class_images: list[ChannelFile]
    instance_type: str = LOCAL_INSTANCE_TYPE
    use_spot: bool = False
    run_name: str | None = None  # the compute's name for this run (`TrainingCompute.new_run_name`)


@dataclass(frozen=True)
class TrainingEnded:
    """How one run of a training job ended, as every training compute reports it. At most one of
    `completed`, `failure`, `stopped` holds; none: it died (`death` says how) and may run again from its state."""

    progress: dict[str, Any] | None  # the trainer's last progress record (progress.json)
    run_name: str | None = None  # which run (a report of an earlier run than the record's is ignored)
    completed: bool = False  # the trainer finished; its model is at `model` (`TrainingCompute.open_model`)
    model: str | None = None
    failure: str | None = None  # why it failed: the trainer's output/failure, or the platform's refusal
    stopped: bool = False  # it stopped as a user asked, its state saved
    death: str = "the training run ended without a result"  # in words, when nothing above holds


class TrainingReports(Protocol):
    def run_ended(self, job_id: str, ended: TrainingEnded) -> None:
        """A run of `job_id` ended (reports may repeat: the service ignores what it has seen)."""


class TrainingCompute(Protocol):
    # True when runs stop with the middleware (local processes: `TrainingService.restore` starts them again);
    # SageMaker's go on, and the records are brought up to date by `reconcile`.
    restarts_with_middleware: bool
    logs: str  # where a run's log is, in words, for failure messages

    def start(self, reports: TrainingReports) -> None:
        """Report through `reports` from now on (no background work is needed beyond the compute's own)."""

    def check_instance_type(self, instance_type: object, use_spot: object) -> str:
        """The instance type, or InvalidRequest saying which ones this backend trains on."""

    def new_run_name(self, job_id: str) -> str | None:
        """A fresh name for the next run of the job (stored on the record before `submit`), or None."""

    def submit(self, run: TrainingRun) -> None:
        """Start the run (from the job's saved state, if any); a refusal is reported as a failure."""

    def stop(self, job: TrainingJob) -> bool:
        """A user's Stop. True: the run had not started and never will (the job is Stopped now); False: it
        saves its state, and its end is reported."""

    def is_running(self, job: TrainingJob) -> bool:
        """A run of the job still holds resources (e.g. saving its state after a Stop)."""

    def queue_position(self, job_id: str) -> int | None:
        """0-based place among runs waiting for a slot; None when not waiting."""

    def progress(self, job: TrainingJob) -> dict[str, Any] | None:
        """The run's latest progress record, or None before the first."""

    def sample_key(self, job: TrainingJob, name: str) -> str | None:
        """The blob key of the sample image `name` (a plain PNG name) of the job, or None if there is none."""

    def open_model(self, job: TrainingJob, model: str) -> AbstractContextManager[tuple[str, BinaryIO]]:
        """The trained file that `TrainingEnded.model` names: (its file name, a stream of its bytes)."""

    def reconcile(self, job: TrainingJob) -> None:
        """Report the end of the job's run if it ended unreported (a lost event); nothing if still running."""

    def shutdown(self) -> None:
        """The middleware stops: end background work (local runs are stopped, to resume at the next start)."""
