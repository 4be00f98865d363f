"""The job queue: the one owner of a job's place in its endpoint's queue and of its ending.

An `inprogress` job is `queued` until a worker claims it, then `running`; `queue_state`, `worker`,
`attempts`, `dispatched_at` and `progress` are written only here, and so is the status change that ends a
job (`end`), so that two enders (a worker's answer, a cancel, a deleted endpoint) race on one conditional
write and exactly one wins.

Local compute owns its dispatch (`claim_next`, `requeue`, `report_progress`); a backend with its own queue
(SageMaker asynchronous endpoints) only submits, then marks a job `running` when its worker reports that
it started (`mark_running`). Both end jobs through the job service's completion path, which calls `end`.
"""

from __future__ import annotations

import time
from typing import Any

from aws_extension.middleware.records import JOBS, InferenceJob
from aws_extension.middleware.store.base import Store
from aws_extension.middleware.store.typed import Records
from aws_extension.vocabulary import JobStatus

QUEUED, RUNNING = "queued", "running"
# Statuses of a job that has not ended: `cancelling` is a running job asked to stop.
LIVE = (JobStatus.INPROGRESS, JobStatus.CANCELLING)


class JobQueue:
    def __init__(self, store: Store):
        self.jobs = Records(store, JOBS, InferenceJob)

    # -- entering and leaving the queue ------------------------------------------------------------------
    @staticmethod
    def queued_fields() -> dict[str, Any]:
        """The fields of a job that enters the queue now (a new job, or a `created` one that is run)."""
        return {"status": JobStatus.INPROGRESS, "queue_state": QUEUED, "worker": None, "progress": 0.0}

    @staticmethod
    def held_fields() -> dict[str, Any]:
        """The fields of a new job that waits for `run` (`created`: not in the queue yet)."""
        return {"status": JobStatus.CREATED, "queue_state": None}

    def enqueue(self, job_id: str) -> InferenceJob | None:
        """Queue a `created` job; None if it is no longer `created` (started or cancelled meanwhile)."""
        return self.jobs.update(job_id, self.queued_fields(), expect={"status": JobStatus.CREATED})

    def end(self, job_id: str, status: JobStatus, changes: dict[str, Any]) -> InferenceJob | None:
        """End a job that has not ended (`created`, `inprogress` or `cancelling`) with `status`; None when
        another ender won."""
        if not status.is_terminal:
            raise ValueError(f"{status} does not end a job")
        return self.jobs.update(job_id, {**changes, "status": status, "queue_state": None},
                                expect={"status": [JobStatus.CREATED, *LIVE]})

    def end_if_waiting(self, job_id: str, status: JobStatus, changes: dict[str, Any]) -> InferenceJob | None:
        """End a job only if no worker has it (`created`, or `inprogress` and queued)."""
        for expect in ({"status": JobStatus.CREATED}, {"status": JobStatus.INPROGRESS, "queue_state": QUEUED}):
            ended = self.jobs.update(job_id, {**changes, "status": status, "queue_state": None}, expect=expect)
            if ended:
                return ended
        return None

    def ask_to_stop(self, job_id: str, reason: str) -> InferenceJob | None:
        """A running job becomes `cancelling` (its worker is interrupted; its answer then ends it)."""
        return self.jobs.update(job_id, {"status": JobStatus.CANCELLING, "cancel_reason": reason},
                                expect={"status": JobStatus.INPROGRESS, "queue_state": RUNNING})

    # -- dispatch (backends that queue themselves) -------------------------------------------------------
    def claim_next(self, endpoint: str, worker: str) -> InferenceJob | None:
        """Mark the endpoint's oldest queued job as running on `worker` (a conditional update: another
        dispatcher may win a job, then the next one is tried)."""
        while True:
            waiting = self.jobs.page({"endpoint": [endpoint], "queue_state": [QUEUED]}, limit=8,
                                     oldest_first=True).records
            if not waiting:
                return None
            for job in waiting:
                claimed = self.jobs.update(job.id, {
                    "queue_state": RUNNING, "worker": worker, "dispatched_at": time.time(),
                    "attempts": job.attempts + 1}, expect={"queue_state": QUEUED, "status": JobStatus.INPROGRESS})
                if claimed:
                    return claimed

    def mark_running(self, job_id: str, worker: str, started: float | None = None) -> InferenceJob | None:
        """A job its backend started (the backend queued it itself, and runs it once), `started` when its
        worker says so."""
        return self.jobs.update(job_id, {"queue_state": RUNNING, "worker": worker, "attempts": 1,
                                         "dispatched_at": started or time.time()},
                                expect={"queue_state": QUEUED, "status": list(LIVE)})

    def requeue(self, job: InferenceJob, attempts: int) -> InferenceJob | None:
        """Put a running job back at its place in the queue (its worker was lost or stopped, or it failed while
        the middleware stops); None when it is no longer running (e.g. `cancelling`: its answer ends it)."""
        return self.jobs.update(job.id, {"queue_state": QUEUED, "worker": None, "progress": 0.0, "attempts": attempts},
                                expect={"queue_state": RUNNING, "status": JobStatus.INPROGRESS})

    def report_progress(self, job_id: str, fraction: float) -> None:
        self.jobs.update(job_id, {"progress": round(fraction, 4)},
                         expect={"queue_state": RUNNING, "status": list(LIVE)})

    # -- reading -----------------------------------------------------------------------------------------
    def backlog(self, endpoint: str) -> int:
        """Jobs waiting for a worker of `endpoint`."""
        return self.jobs.count({"endpoint": [endpoint], "queue_state": [QUEUED]})

    def position(self, job: InferenceJob) -> int | None:
        """How many jobs are ahead of `job` in its endpoint's queue; None when it is not waiting. With a
        backend that queues itself (SageMaker) a job is known to run once its worker's report was read
        (`Compute.observe`), so this counts the jobs submitted before it that are not known to have started."""
        if job.status != JobStatus.INPROGRESS or job.queue_state != QUEUED:
            return None
        return self.jobs.count({"endpoint": [job.endpoint], "queue_state": [QUEUED]}, before=job)

    def live_jobs(self, endpoints: list[str] | None = None) -> list[InferenceJob]:
        """Jobs that have not ended and are not `created`, of these endpoints (None: of every endpoint)."""
        where: dict[str, list[Any]] = {"status": list(LIVE)}
        if endpoints is not None:
            if not endpoints:
                return []
            where["endpoint"] = endpoints
        return self.jobs.all(where)

    @staticmethod
    def is_running(job: InferenceJob) -> bool:
        return job.queue_state == RUNNING

    def requeue_after_restart(self, job: InferenceJob) -> None:
        """A job that was running when the middleware stopped: its worker is gone; the run does not count."""
        self.jobs.update(job.id, {"queue_state": QUEUED, "worker": None, "progress": 0.0,
                                  "attempts": max(0, job.attempts - 1)},
                         expect={"status": JobStatus.INPROGRESS, "queue_state": RUNNING})
