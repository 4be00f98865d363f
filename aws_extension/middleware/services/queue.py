"""The job queue: the one owner of a job's place in its endpoint's queue and of its ending.

An `inprogress` job is `queued` until a worker claims it, then `running`; `queue_state`, `worker`,
`attempts`, `dispatched_at` and `progress` are written only here, and so is the status change that ends a
job (`end`), so that two enders (a worker's answer, a cancel, a deleted endpoint) race on one conditional
write and exactly one wins.

Local compute owns its dispatch (`claim_next`, `requeue`, `report_progress`); a backend with its own queue
(SageMaker asynchronous endpoints) only submits, then marks a job `running` when its worker reports that
it started (`mark_running`). Both end jobs through the job service's completion path, which calls `end`.

Round-robin across owners (`round_robin`, set by local compute, whose dispatchers claim jobs here): a
job entering the queue gets a round (`queue_round`): its owner's previous round on that endpoint + 1, and
at least the endpoint's current round (`_clock`), so an owner with nothing queued joins the round being
served. Dispatchers claim the oldest job of the lowest round (`fair_slot` = `<endpoint>#<round>`, indexed,
while queued), so owner A's 1,000 queued jobs take rounds 0..999 and owner B's one job, queued later,
takes the current round and runs before A's second; within an owner, jobs run oldest first. The round is
on the record, so the order survives restarts; the clock is this process's lower bound on the rounds
still queued (one middleware owns a local data dir), recomputed from the records at start. A claim is
still one conditional update, whatever the number of dispatchers.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from aws_extension.middleware.records import JOBS, InferenceJob
from aws_extension.middleware.services.ownership import owner_name
from aws_extension.middleware.store.base import Store
from aws_extension.middleware.store.typed import Records
from aws_extension.vocabulary import JobStatus

QUEUED, RUNNING = "queued", "running"
# Statuses of a job that has not ended: `cancelling` is a running job asked to stop.
LIVE = (JobStatus.INPROGRESS, JobStatus.CANCELLING)
# What every ending clears: the job leaves the queue and no longer counts against its owner's limit.
_LEFT = {"queue_state": None, "live_owner": None, "fair_slot": None}
_COUNT_CHUNK = 500  # rounds counted per query (SQLite's IN list)


def fair_slot(endpoint: str, queue_round: int) -> str:
    return f"{endpoint}#{queue_round:012d}"


class JobQueue:
    def __init__(self, store: Store):
        self.jobs = Records(store, JOBS, InferenceJob)
        self.round_robin = False  # local compute dispatches from here, round-robin across owners
        self._clock: dict[str, tuple[int, int]] = {}  # endpoint → (round at or below every queued one, version)
        self._clock_lock = threading.Lock()

    # -- entering and leaving the queue ------------------------------------------------------------------
    def queued_fields(self, endpoint: str, owner: str | None) -> dict[str, Any]:
        """The fields of a job that enters the queue now (a new job, or a `created` one that is run)."""
        fields = {"status": JobStatus.INPROGRESS, "queue_state": QUEUED, "worker": None, "progress": 0.0,
                  "live_owner": owner_name(owner)}
        if self.round_robin:
            queue_round = self._round_for(endpoint, owner_name(owner))
            fields.update(queue_round=queue_round, fair_slot=fair_slot(endpoint, queue_round))
        return fields

    @staticmethod
    def held_fields(owner: str | None) -> dict[str, Any]:
        """The fields of a new job that waits for `run` (`created`: not in the queue yet, but its owner's)."""
        return {"status": JobStatus.CREATED, "queue_state": None, "live_owner": owner_name(owner)}

    def add(self, job: InferenceJob) -> None:
        """Store a new job (queued or held, with the fields above)."""
        self.jobs.create(job)
        self._entered(job)

    def enqueue(self, job: InferenceJob) -> InferenceJob | None:
        """Queue a `created` job; None if it is no longer `created` (started or cancelled meanwhile)."""
        queued = self.jobs.update(job.id, self.queued_fields(job.endpoint, job.owner),
                                  expect={"status": JobStatus.CREATED})
        self._entered(queued)
        return queued

    def end(self, job_id: str, status: JobStatus, changes: dict[str, Any]) -> InferenceJob | None:
        """End a job that has not ended (`created`, `inprogress` or `cancelling`) with `status`; None when
        another ender won."""
        if not status.is_terminal:
            raise ValueError(f"{status} does not end a job")
        return self.jobs.update(job_id, {**changes, **_LEFT, "status": status},
                                expect={"status": [JobStatus.CREATED, *LIVE]})

    def end_if_waiting(self, job_id: str, status: JobStatus, changes: dict[str, Any]) -> InferenceJob | None:
        """End a job only if no worker has it (`created`, or `inprogress` and queued)."""
        for expect in ({"status": JobStatus.CREATED}, {"status": JobStatus.INPROGRESS, "queue_state": QUEUED}):
            ended = self.jobs.update(job_id, {**changes, **_LEFT, "status": status}, expect=expect)
            if ended:
                return ended
        return None

    def owner_jobs_waiting(self, owner: str) -> int:
        """The owner's jobs that have not ended (created, queued or running): what its limit counts."""
        return self.jobs.count({"live_owner": [owner]})

    def ask_to_stop(self, job_id: str, reason: str) -> InferenceJob | None:
        """A running job becomes `cancelling` (its worker is interrupted; its answer then ends it)."""
        return self.jobs.update(job_id, {"status": JobStatus.CANCELLING, "cancel_reason": reason},
                                expect={"status": JobStatus.INPROGRESS, "queue_state": RUNNING})

    # -- dispatch (backends that queue themselves) -------------------------------------------------------
    def claim_next(self, endpoint: str, worker: str) -> InferenceJob | None:
        """Mark the endpoint's next queued job as running on `worker` (a conditional update: another
        dispatcher may win a job, then the next one is tried): the oldest, or with `round_robin` the oldest
        of the lowest round."""
        if not self.round_robin:
            return self._claim_oldest(worker, {"endpoint": [endpoint], "queue_state": [QUEUED]})
        while True:
            queue_round, version = self._current(endpoint)
            claimed = self._claim_oldest(worker, {"fair_slot": [fair_slot(endpoint, queue_round)]})
            if claimed:
                return claimed
            waiting = self.jobs.page({"endpoint": [endpoint], "queue_state": [QUEUED]}, limit=8,
                                     oldest_first=True).records
            if not waiting:
                return None
            if any(job.fair_slot is None for job in waiting):  # queued before rounds existed: oldest first
                claimed = self._claim_oldest(worker, {"endpoint": [endpoint], "queue_state": [QUEUED]})
                if claimed:
                    return claimed
            self._advance(endpoint, queue_round, version, [j.queue_round for j in waiting if j.fair_slot])

    def _claim_oldest(self, worker: str, where: dict[str, list[Any]]) -> InferenceJob | None:
        while True:
            waiting = self.jobs.page(where, limit=8, oldest_first=True).records
            if not waiting:
                return None
            for job in waiting:
                claimed = self.jobs.update(job.id, {
                    "queue_state": RUNNING, "worker": worker, "dispatched_at": time.time(), "fair_slot": None,
                    "attempts": job.attempts + 1}, expect={"queue_state": QUEUED, "status": JobStatus.INPROGRESS,
                                                           "fair_slot": job.fair_slot})
                if claimed:
                    return claimed

    def mark_running(self, job_id: str, worker: str, started: float | None = None) -> InferenceJob | None:
        """A job its backend started (the backend queued it itself, and runs it once), `started` when its
        worker says so."""
        return self.jobs.update(job_id, {"queue_state": RUNNING, "worker": worker, "attempts": 1, "fair_slot": None,
                                         "dispatched_at": started or time.time()},
                                expect={"queue_state": QUEUED, "status": list(LIVE)})

    def requeue(self, job: InferenceJob, attempts: int) -> InferenceJob | None:
        """Put a running job back at its place in the queue (its worker was lost or stopped, or it failed while
        the middleware stops); None when it is no longer running (e.g. `cancelling`: its answer ends it)."""
        queued = self.jobs.update(job.id, {"queue_state": QUEUED, "worker": None, "progress": 0.0, "attempts": attempts,
                                           **self._slot_again(job)},
                                  expect={"queue_state": RUNNING, "status": JobStatus.INPROGRESS})
        self._entered(queued)
        return queued

    def report_progress(self, job_id: str, fraction: float) -> None:
        self.jobs.update(job_id, {"progress": round(fraction, 4)},
                         expect={"queue_state": RUNNING, "status": list(LIVE)})

    # -- reading -----------------------------------------------------------------------------------------
    def backlog(self, endpoint: str) -> int:
        """Jobs waiting for a worker of `endpoint`."""
        return self.jobs.count({"endpoint": [endpoint], "queue_state": [QUEUED]})

    def position(self, job: InferenceJob) -> int | None:
        """How many jobs are ahead of `job` in its endpoint's queue; None when it is not waiting. With
        `round_robin`, the queued jobs of the rounds before its own and those of its round queued before it.
        With a backend that queues itself (SageMaker) a job is known to run once its worker's report was read
        (`Compute.observe`), so this counts the jobs submitted before it that are not known to have started."""
        if job.status != JobStatus.INPROGRESS or job.queue_state != QUEUED:
            return None
        if not (self.round_robin and job.fair_slot and job.queue_round is not None):
            return self.jobs.count({"endpoint": [job.endpoint], "queue_state": [QUEUED]}, before=job)
        first, _ = self._current(job.endpoint)
        earlier = [fair_slot(job.endpoint, r) for r in range(min(first, job.queue_round), job.queue_round)]
        ahead = sum(self.jobs.count({"fair_slot": earlier[i:i + _COUNT_CHUNK]})
                    for i in range(0, len(earlier), _COUNT_CHUNK))
        return ahead + self.jobs.count({"fair_slot": [job.fair_slot]}, before=job)

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
        queued = self.jobs.update(job.id, {"queue_state": QUEUED, "worker": None, "progress": 0.0,
                                           "attempts": max(0, job.attempts - 1), **self._slot_again(job)},
                                  expect={"status": JobStatus.INPROGRESS, "queue_state": RUNNING})
        self._entered(queued)

    # -- rounds (round_robin) ----------------------------------------------------------------------------
    def _round_for(self, endpoint: str, owner: str) -> int:
        """A new queued job's round: after its owner's last one on the endpoint, and not before the round being
        served. (Two jobs of one owner queued at the same instant may share a round.)"""
        current, _ = self._current(endpoint)
        recent = self.jobs.page({"owner": [owner], "endpoint": [endpoint]}, limit=8).records
        rounds = [j.queue_round for j in recent if j.queue_round is not None]
        return max(current, max(rounds) + 1) if rounds else current

    def _slot_again(self, job: InferenceJob) -> dict[str, Any]:
        """A job going back to the queue keeps its round (its place)."""
        if self.round_robin and job.queue_round is not None:
            return {"fair_slot": fair_slot(job.endpoint, job.queue_round)}
        return {}

    def _current(self, endpoint: str) -> tuple[int, int]:
        """(the endpoint's clock, its version); at the first use in this process: the lowest round queued, or
        when nothing is, the newest round used."""
        with self._clock_lock:
            if endpoint in self._clock:
                return self._clock[endpoint]
        queued = [j.queue_round for j in self.jobs.iterate({"endpoint": [endpoint], "queue_state": [QUEUED]})
                  if j.queue_round is not None]
        recent = [j.queue_round for j in self.jobs.page({"endpoint": [endpoint]}, limit=8).records
                  if j.queue_round is not None]
        start = min(queued) if queued else max(recent, default=0)
        with self._clock_lock:
            return self._clock.setdefault(endpoint, (start, 0))

    def _entered(self, job: InferenceJob | None) -> None:
        """A job was written into the queue at its round: the clock goes back to it if it had passed it (a
        dispatcher that found the round empty just before the write must not skip it)."""
        if not (self.round_robin and job and job.fair_slot and job.queue_round is not None):
            return
        self._current(job.endpoint)  # known from here on
        with self._clock_lock:
            current, version = self._clock[job.endpoint]
            self._clock[job.endpoint] = (min(current, job.queue_round), version + 1)

    def _advance(self, endpoint: str, empty_round: int, version: int, later_rounds: list[int]) -> None:
        """`empty_round` has no queued job: the clock moves past it, straight to the lowest round that has one
        when the rounds between are empty too; unless a job entered the queue meanwhile (then the caller
        looks again)."""
        target = empty_round + 1
        if later_rounds and min(later_rounds) < empty_round:  # requeued behind the clock's back
            target = min(later_rounds)
        elif later_rounds and min(later_rounds) > target:
            between = [fair_slot(endpoint, r) for r in range(target, min(later_rounds))]
            if not any(self.jobs.count({"fair_slot": between[i:i + _COUNT_CHUNK]})
                       for i in range(0, len(between), _COUNT_CHUNK)):
                target = min(later_rounds)
        with self._clock_lock:
            if self._clock.get(endpoint) == (empty_round, version):
                self._clock[endpoint] = (target, version)
